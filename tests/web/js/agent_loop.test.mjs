// The client library's agent loop (wsgate/web/wsgate.js: toolResult, toolError, `tools`)
// against a real gateway on the built-in mock's multi-turn scripts (protocol/MOCK.md).
//
// Run by tests/web/test_client_agent_loop.py, one test per pytest test (--test-name-pattern),
// with WSGATE_URL, WSGATE_CONTROL and WSGATE_FRAMES in the environment
// (tests/web/web_helpers.py). The mock checks the results it gets (`expect_tool_results`):
// a wrong or missing one fails the second turn (`upstream_rejected`), so an exact final text
// means each call's result reached the model as sent. The "fake gateway: " tests at the end
// script a gateway by hand and run without one.

import assert from "node:assert/strict";
import { test } from "node:test";

import { WsgateError, connect } from "../../../wsgate/web/wsgate.js";

import { CLOCK, TOOLS, WEATHER, control, recorder, sleep, until, weatherScript } from "./helpers.mjs";

const URL_ = process.env.WSGATE_URL;
const FAST = { minDelayMs: 10, maxDelayMs: 100 };
const TIMEOUT = { timeout: 20000 };
const ANSWER = "Let me look.Sunny, 21 °C at noon.";

/** The weather script (helpers.mjs) as a request; turn 1 expects what the handlers answer. */
function weatherRequest() {
  const script = weatherScript({ [WEATHER]: { temp_c: 21 }, [CLOCK]: "12:00" });
  const content = JSON.stringify({ mock: script });
  return { model: "mock", messages: [{ role: "user", content }], tools: TOOLS };
}

const FAKE_URL = "ws://fake.invalid/v1/ws";

function open(t, { url = URL_, ...options } = {}) {
  const gw = connect(url, options);
  t.after(() => gw.close());
  return gw;
}

/** The handlers of the weather script, counting their calls. */
function weatherTools(extra = {}) {
  const calls = { weather: [], clock: [] };
  const tools = {
    async weather(args, context) {
      calls.weather.push({ args, callId: context.callId, name: context.name });
      await extra.weather?.(context);
      return { temp_c: 21 };
    },
    async clock(args, context) {
      calls.clock.push({ args, callId: context.callId, name: context.name });
      await extra.clock?.(context);
      return "12:00";
    },
  };
  return { calls, tools };
}

function observe() {
  const seen = { frames: [], finishes: [], errors: [], refused: [] };
  const callbacks = {
    onFrame: (frame) => seen.frames.push(frame),
    onFinish: (finish) => seen.finishes.push(finish),
    onError: (error) => seen.errors.push(error),
    onToolResultRefused: (error, callId) => seen.refused.push([error.code, callId]),
  };
  return { seen, callbacks };
}

function assertGapless(frames) {
  let expected = 1;
  for (const frame of frames) {
    if (typeof frame.seq !== "number") continue;
    assert.equal(frame.first_seq ?? frame.seq, expected, `seq gap or repeat at ${JSON.stringify(frame)}`);
    expected = frame.seq + 1;
  }
}

const ofType = (frames, type) => frames.filter((f) => f.type === type);

// --- against a gateway --------------------------------------------------------------------

test("tool handlers answer each call once and the stream finishes with the exact text", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const { calls, tools } = weatherTools();
  const { seen, callbacks } = observe();
  const s = gw.stream(weatherRequest(), { ...callbacks, tools });
  const events = [];
  const iterated = (async () => {
    for await (const event of s) events.push(event.type);
  })();
  const done = await s.done;
  await iterated;

  assert.equal(done.reason, "stop");
  assert.equal(done.text, ANSWER);
  assert.equal(done.error, null);
  assert.deepEqual(calls.weather, [{ args: { city: "Paris" }, callId: WEATHER, name: "weather" }]);
  assert.deepEqual(calls.clock, [{ args: {}, callId: CLOCK, name: "clock" }]);
  assert.equal(seen.finishes.length, 1);
  assert.deepEqual(seen.errors, []);
  assert.deepEqual(seen.refused, []);
  assertGapless(seen.frames);
  assert.equal(s.turn, 2);
  assert.equal(s.awaiting, null);
  assert.deepEqual(
    s.toolResults.map((f) => [f.call_id, f.source]),
    [
      [WEATHER, "client"],
      [CLOCK, "client"],
    ],
  );
  // What the model got (the gateway need not repeat a client's own result).
  assert.deepEqual(
    s.sentResults,
    new Map([
      [WEATHER, { content: { temp_c: 21 } }],
      [CLOCK, { content: "12:00" }],
    ]),
  );
  assert.equal(s.toolCalls.length, 2);
  // `tools` turned the loop on; the results went out once each, with the stream's id.
  const start = rec.sockets[0].sentFrames[0];
  assert.deepEqual(start.options, { agent: { client_tools: true } });
  assert.deepEqual(
    rec.results().map((f) => [f.stream_id, f.call_id]),
    [
      [s.id, WEATHER],
      [s.id, CLOCK],
    ],
  );
  // The loop's frames reach the iterator in order, like any other frame.
  const loop = events.filter((e) => e.startsWith("tool.") || e === "turn.started" || e === "finish");
  assert.deepEqual(loop, ["tool.awaiting", "tool.result", "tool.result", "turn.started", "finish"]);
  assert.deepEqual(events.slice(0, 2), ["stream.started", "delta.role"]);
  assert.equal(rec.sockets.length, 1);
});

test("a refused duplicate result rejects its promise and the stream goes on", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const { seen, callbacks } = observe();
  const s = gw.stream(weatherRequest(), { ...callbacks, agent: { client_tools: true } });
  await until(() => s.awaiting !== null, "tool.awaiting");
  assert.deepEqual(s.awaiting.call_ids, [WEATHER, CLOCK]);
  const first = s.toolResult(WEATHER, { temp_c: 21 });
  const again = s.toolResult(WEATHER, { temp_c: 99 });
  const nobody = s.toolError("call_nobody", "not_mine", "no such call");
  const taken = await first;
  assert.equal(taken.type, "tool.result");
  assert.equal(taken.call_id, WEATHER);
  assert.equal(taken.source, "client");
  await assert.rejects(again, (error) => {
    assert.ok(error instanceof WsgateError);
    assert.equal(error.code, "duplicate_tool_result");
    assert.equal(error.streamId, s.id);
    return true;
  });
  await assert.rejects(nobody, (error) => error.code === "unknown_tool_call");
  assert.equal(s.phase, "running", "a refusal of a result does not end the stream");
  // The mock saw 21, not 99: the duplicate was not taken, and the clock completes the turn.
  await s.toolResult(CLOCK, "12:00");
  const done = await s.done;
  assert.equal(done.reason, "stop");
  assert.equal(done.text, ANSWER);
  assert.equal(done.error, null);
  assert.deepEqual(seen.refused, [
    ["duplicate_tool_result", WEATHER],
    ["unknown_tool_call", "call_nobody"],
  ]);
  assert.deepEqual(seen.errors, []);
  assert.equal(seen.finishes.length, 1);
  assertGapless(seen.frames);
  assert.deepEqual(s.sentResults.get(WEATHER), { content: { temp_c: 21 } }, "the taken one");
  // After the end a result is not sent: it rejects at once.
  await assert.rejects(s.toolResult(CLOCK, "late"), (error) => error.code === "stream_ended");
  assert.equal(rec.results().length, 4);
});

test("results that are no valid tool_result are refused before they are sent", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const s = gw.stream(weatherRequest(), { agent: { client_tools: true } });
  await until(() => s.awaiting !== null, "tool.awaiting");
  await assert.rejects(s.toolResult(WEATHER, "\ud800"), TypeError);
  await assert.rejects(s.toolResult(WEATHER, 10n), TypeError);
  await assert.rejects(s.toolResult("", 1), TypeError);
  await assert.rejects(s.toolError(WEATHER, "Not A Code", "x"), TypeError);
  const huge = "x".repeat(gw.readyFrame.limits.max_frame_bytes);
  await assert.rejects(s.toolResult(WEATHER, huge), (error) => error.code === "frame_too_large");
  assert.equal(rec.results().length, 0);
  // A long error message is cut to the protocol's 4096 characters, not refused.
  const failed = await s.toolError(WEATHER, "tool_error", "é".repeat(5000));
  assert.equal(failed.call_id, WEATHER);
  assert.equal(s.sentResults.get(WEATHER).error.message, "é".repeat(4096));
  assert.equal(rec.results()[0].error.message.length, 4096);
  await s.cancel();
});

test("a throwing handler sends a tool_error result and the stream goes on", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const request = weatherRequest();
  // The second turn expects what the model gets for a failed weather call.
  const script = JSON.parse(request.messages[0].content).mock;
  script.turns[1].expect_tool_results[WEATHER] = { error: { code: "tool_error", message: "no network" } };
  request.messages[0].content = JSON.stringify({ mock: script });
  const tools = {
    weather: () => {
      throw new Error("no network");
    },
    clock: () => "12:00",
  };
  const s = gw.stream(request, { tools });
  const done = await s.done;
  assert.equal(done.reason, "stop", JSON.stringify(done.error));
  assert.equal(done.text, ANSWER);
  const weather = s.sentResults.get(WEATHER);
  assert.deepEqual(weather, { error: { code: "tool_error", message: "no network" } });
  assert.deepEqual(s.sentResults.get(CLOCK), { content: "12:00" });
});

test("a stream waiting for results is not given up by the heartbeat watchdog", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, heartbeatTimeoutMs: 400, reconnect: FAST });
  await gw.ready;
  const heartbeats = [];
  gw.on("heartbeat", (frame) => heartbeats.push(frame));
  const { calls, tools } = weatherTools({ clock: () => sleep(1500) });
  const s = gw.stream(weatherRequest(), { tools });
  const done = await s.done;
  assert.equal(done.reason, "stop");
  assert.equal(done.text, ANSWER);
  assert.ok(heartbeats.length >= 3, `heartbeats while waiting: ${heartbeats.length}`);
  assert.equal(rec.sockets.length, 1, "no reconnect: the quiet stream's socket was alive");
  assert.equal(calls.clock.length, 1);
});

// --- reconnecting -------------------------------------------------------------------------

test("a reconnect while results are awaited answers each call once and finishes exact", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST });
  await gw.ready;
  // The weather result goes out and is taken, but its tool.result is lost with the socket
  // (the socket swallows what it receives from then on); the clock handler drops the
  // connection and answers only once the new socket exists.
  rec.hooks.onSend = (frame, socket) => {
    if (frame.type === "tool_result" && frame.call_id === WEATHER) socket.swallow = true;
  };
  const { calls, tools } = weatherTools({
    clock: async () => {
      await until(() => rec.sockets[0].swallow, "the weather result sent");
      await sleep(50); // the gateway takes it and logs its tool.result
      await control("drop");
      await until(() => rec.sockets.length === 2, "a new socket");
    },
  });
  const { seen, callbacks } = observe();
  const s = gw.stream(weatherRequest(), {
    ...callbacks,
    tools,
    options: { on_disconnect: "continue" },
  });
  const done = await s.done;
  assert.equal(done.reason, "stop", JSON.stringify(done.error));
  assert.equal(done.text, ANSWER);
  assert.equal(calls.weather.length, 1);
  assert.equal(calls.clock.length, 1);
  assert.deepEqual(seen.refused, []);
  assert.equal(seen.finishes.length, 1);
  assertGapless(seen.frames);
  assert.equal(ofType(seen.frames, "stream.resumed").length, 1);
  assert.equal(ofType(seen.frames, "tool.result").length, 2);
  assert.equal(rec.sockets.length, 2);
  // Each call answered once: the weather result's tool.result came in the replay, so it was
  // not sent again; the clock's went out on the new socket, under the same stream id.
  assert.deepEqual(
    rec.sockets.map((socket) => socket.sentFrames.map((f) => f.call_id ?? f.type)),
    [
      ["start", WEATHER],
      ["resume", CLOCK],
    ],
  );
  assert.equal(rec.sockets[1].sentFrames[1].stream_id, s.id);
});

test("a result lost with the socket is sent again after the resume", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST });
  await gw.ready;
  // The first socket loses the weather result (it never reaches the gateway), then drops.
  let lost = 0;
  rec.hooks.onSend = (frame, socket) => {
    if (frame.type !== "tool_result" || frame.call_id !== WEATHER || socket.index !== 0) return true;
    lost += 1;
    setTimeout(() => control("drop"), 20);
    return false;
  };
  const { calls, tools } = weatherTools();
  const s = gw.stream(weatherRequest(), { tools, options: { on_disconnect: "continue" } });
  const done = await s.done;
  assert.equal(done.reason, "stop", JSON.stringify(done.error));
  assert.equal(done.text, ANSWER);
  assert.equal(lost, 1);
  assert.equal(calls.weather.length, 1, "the handler ran once; its result was sent again");
  assert.equal(calls.clock.length, 1);
  const second = rec.sockets[1].sentFrames.map((f) => f.call_id ?? f.type);
  assert.deepEqual(second, ["resume", WEATHER, CLOCK]);
});

// --- a fake gateway: what a real one does not produce on demand ---------------------------
//
// These run without a gateway (one pytest test runs every "fake gateway: " test). Each
// socket opens, says `ready`, and hands the frames the client sends to `serve(frame, socket)`
// a tick later, as a network would.

function fakeGateway(serve) {
  const sockets = [];
  class FakeSocket {
    constructor() {
      this.listeners = new Map();
      this.sent = [];
      this.closed = false;
      this.index = sockets.length;
      sockets.push(this);
      setTimeout(() => {
        this.emit("open", {});
        this.deliver({ type: "ready", protocol: "wsgate.v1", limits: { max_frame_bytes: 65536 } });
      }, 0);
    }

    addEventListener(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, []);
      this.listeners.get(type).push(fn);
    }

    emit(type, event) {
      for (const fn of this.listeners.get(type) ?? []) fn(event);
    }

    send(data) {
      const frame = JSON.parse(data);
      this.sent.push(frame);
      setTimeout(() => !this.closed && serve(frame, this), 0);
    }

    deliver(...frames) {
      for (const frame of frames) if (!this.closed) this.emit("message", { data: JSON.stringify(frame) });
    }

    close(code = 1000) {
      if (this.closed) return;
      this.closed = true;
      setTimeout(() => this.emit("close", { code, reason: "" }), 0);
    }
  }
  return { WebSocket: FakeSocket, sockets };
}

const fake = {
  started: (id) => ({ type: "stream.started", stream_id: id, seq: 1, message_id: "m1", model: "mock", epoch: "e1" }),
  end: (id, seq, callId) => ({ type: "tool_call.end", stream_id: id, seq, call_id: callId, name: "t", arguments: {} }),
  awaiting: (id, seq, ids) => ({ type: "tool.awaiting", stream_id: id, seq, turn: 1, call_ids: ids, timeout_ms: 60000 }),
  result: (id, seq, callId) => ({ type: "tool.result", stream_id: id, seq, call_id: callId, name: "t", source: "client" }),
  refusal: (id, code) => ({ type: "error", stream_id: id, code, message: code, retryable: false }),
  finish: (id, seq) => ({ type: "finish", stream_id: id, seq, reason: "stop" }),
};

test("fake gateway: a bad_frame while a result is in flight refuses that result, not the stream", TIMEOUT, async (t) => {
  const gw = fakeGateway((frame, ws) => {
    if (frame.type === "start") {
      ws.deliver(fake.started(frame.stream_id), fake.end(frame.stream_id, 2, "c1"), fake.awaiting(frame.stream_id, 3, ["c1"]));
    } else if (frame.type === "tool_result" && "error" in frame) {
      ws.deliver(fake.result(frame.stream_id, 4, "c1"), fake.finish(frame.stream_id, 5));
    } else if (frame.type === "tool_result") {
      ws.deliver(fake.refusal(frame.stream_id, "bad_frame")); // content it cannot take
    }
  });
  const client = open(t, { WebSocket: gw.WebSocket, url: FAKE_URL });
  const { seen, callbacks } = observe();
  const s = client.stream(weatherRequest(), { ...callbacks, tools: { t: () => [[[]]] } });
  const done = await s.done;
  assert.equal(done.reason, "stop");
  assert.equal(done.error, null);
  assert.deepEqual(seen.refused, [["bad_frame", "c1"]]);
  // The handler's result was refused: the model was told the call failed instead.
  const results = gw.sockets[0].sent.filter((f) => f.type === "tool_result");
  assert.deepEqual(results.map((f) => ("error" in f ? f.error.code : "content")), ["content", "tool_error"]);
});

test("fake gateway: a result resent after a drop that the gateway had taken resolves with its tool.result", TIMEOUT, async (t) => {
  const gw = fakeGateway((frame, ws) => {
    if (frame.type === "start") {
      ws.deliver(fake.started(frame.stream_id), fake.end(frame.stream_id, 2, "c1"), fake.awaiting(frame.stream_id, 3, ["c1"]));
    } else if (frame.type === "tool_result" && ws.index === 0) {
      ws.close(1006); // taken, but the connection dies before its tool.result goes out
    } else if (frame.type === "resume") {
      ws.deliver({ type: "stream.resumed", stream_id: frame.stream_id, message_id: "m1", epoch: "e1", state: "running", last_seq: 3, top_seq: 3 });
    } else if (frame.type === "tool_result") {
      // The first was taken: this one is a duplicate, and the first's tool.result follows.
      ws.deliver(fake.refusal(frame.stream_id, "duplicate_tool_result"), fake.result(frame.stream_id, 4, "c1"), fake.finish(frame.stream_id, 5));
    }
  });
  const client = open(t, { WebSocket: gw.WebSocket, url: FAKE_URL, reconnect: FAST });
  const { seen, callbacks } = observe();
  const s = client.stream(weatherRequest(), { ...callbacks, agent: { client_tools: true } });
  await until(() => s.awaiting !== null, "tool.awaiting");
  const taken = await s.toolResult("c1", 42);
  assert.equal(taken.call_id, "c1");
  assert.deepEqual(s.sentResults.get("c1"), { content: 42 });
  assert.equal((await s.done).reason, "stop");
  assert.deepEqual(seen.refused, [], "the duplicate answered a resend: no refusal to report");
  assert.equal(gw.sockets.length, 2);
});

test("fake gateway: a refusal with no result in flight is reported without a call id", TIMEOUT, async (t) => {
  const gw = fakeGateway((frame, ws) => {
    if (frame.type === "start") {
      ws.deliver(fake.started(frame.stream_id), fake.refusal(frame.stream_id, "unknown_tool_call"), fake.finish(frame.stream_id, 2));
    }
  });
  const client = open(t, { WebSocket: gw.WebSocket, url: FAKE_URL });
  const { seen, callbacks } = observe();
  const s = client.stream(weatherRequest(), callbacks);
  assert.equal((await s.done).reason, "stop");
  assert.deepEqual(seen.refused, [["unknown_tool_call", null]]);
  assert.deepEqual(seen.errors, []);
});
