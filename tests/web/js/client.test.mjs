// The client library (wsgate/web/wsgate.js) against a real gateway on the built-in mock.
//
// Run by tests/web/test_node_client.py, one test per pytest test (--test-name-pattern), with
// WSGATE_URL, WSGATE_CONTROL and WSGATE_FRAMES in the environment (tests/web/web_helpers.py).
// Every socket is a RecordingWebSocket (helpers.mjs `recorder`): it appends each message,
// both ways, to WSGATE_FRAMES for the Python side to validate against the protocol's schemas,
// and can swallow what it receives (the frames in flight that die with a dropped connection)
// or refuse to reconnect for a while (a gateway that is unreachable).

import assert from "node:assert/strict";
import { test } from "node:test";

import { WsgateError, backoffDelay, closeAction, connect } from "../../../wsgate/web/wsgate.js";

import { control, recorder, sleep, until } from "./helpers.mjs";

const URL_ = process.env.WSGATE_URL;
const FAST = { minDelayMs: 10, maxDelayMs: 100 };
const TIMEOUT = { timeout: 20000 };

// --- helpers ------------------------------------------------------------------------------

function mock(script) {
  return { model: "mock", messages: [{ role: "user", content: JSON.stringify({ mock: script }) }] };
}

function words(n, tag = "word") {
  return Array.from({ length: n }, (_, i) => `${tag}${i}`).join(" ") + ".";
}

/** connect(), closed when the test ends however it ends (an open Gateway keeps Node alive). */
function open(t, options = {}, url = URL_) {
  const gw = connect(url, options);
  t.after(() => gw.close());
  return gw;
}

function streamOf(gw, text) {
  return gw.stream(mock({ text, tokens_per_s: 300 }), { options: { on_disconnect: "continue" } });
}

function wellFormed(text) {
  return text.isWellFormed() && !text.includes("\uFFFD");
}

/** Callbacks that record what a stream reported. */
function observe(extra = {}) {
  const seen = { texts: [], deltas: [], frames: [], toolCalls: [], finishes: [], errors: [] };
  const callbacks = {
    onText(text, delta) {
      seen.texts.push(text);
      seen.deltas.push(delta);
    },
    onFrame: (frame) => seen.frames.push(frame),
    onToolCall: (end) => seen.toolCalls.push(end),
    onFinish: (finish) => seen.finishes.push(finish),
    onError: (error) => seen.errors.push(error),
    ...extra,
  };
  return { seen, callbacks };
}

/** The frames a stream reported carry each seq once, in order, without a gap. */
function assertGapless(frames) {
  let expected = 1;
  for (const frame of frames) {
    if (typeof frame.seq !== "number") continue;
    assert.equal(frame.first_seq ?? frame.seq, expected, `seq gap or repeat at ${JSON.stringify(frame)}`);
    expected = frame.seq + 1;
  }
}

// --- pure parts ---------------------------------------------------------------------------

test("the backoff is full jitter under a doubling cap", () => {
  const policy = { minDelayMs: 250, maxDelayMs: 10000 };
  assert.equal(backoffDelay(1, policy, () => 0), 0);
  assert.equal(backoffDelay(1, policy, () => 0.999999), 249);
  assert.equal(backoffDelay(3, policy, () => 0.5), 500);
  assert.equal(backoffDelay(30, policy, () => 0.999999), 9999);
});

test("close codes split into reconnect and stop", () => {
  for (const code of [1000, 1001, 1006, 1009, 1011, 1013, 4000, 4499]) {
    assert.equal(closeAction(code), "reconnect", String(code));
  }
  for (const code of [1002, 1007, 1008, 4500, 4501, 4502, 4999]) {
    assert.equal(closeAction(code), "stop", String(code));
  }
});

// --- streaming ----------------------------------------------------------------------------

test("one stream gets its exact text", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  const ready = await gw.ready;
  assert.equal(ready.protocol, "wsgate.v1");
  const text = "Hello, world! This is one stream, word by word.";
  const { seen, callbacks } = observe();
  const s = gw.stream(mock({ text }), callbacks);
  const done = await s.done;
  assert.equal(done.reason, "stop");
  assert.equal(done.text, text);
  assert.equal(s.text, text);
  assert.equal(seen.texts.at(-1), text);
  assert.equal(seen.deltas.join(""), text);
  assert.equal(seen.finishes.length, 1);
  assert.equal(s.finish.reason, "stop");
  assert.match(s.messageId, /^msg_/);
  assert.equal(s.usage.type, "usage");
  assert.equal(s.id, "s1");
  assert.equal(seen.frames[0].type, "stream.started");
  assertGapless(seen.frames);
  assert.equal(rec.sockets.length, 1);
  assert.deepEqual(rec.last().sentFrames[0], { type: "start", stream_id: "s1", request: mock({ text }) });
  await gw.close();
});

test("five concurrent streams on one socket are each byte exact", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const scripts = [
    { text: "Family 👩‍👩‍👧 and 👨🏽‍💻 at work, 🧑‍🤝‍🧑 too.", chunk: 1 },
    { text: "Flags 🇺🇦🇯🇵🇫🇷 and a keycap 1️⃣ wave.", chunk: 1 },
    { text: "smile 😀, party 🎉, music 𝄞 and 👩‍👩‍👧", split_surrogates: true },
    { text: "日本語のテキスト, café, cafe\u0301, नमस्ते, 한국어", chunk: 2 },
    { text: words(80), tokens_per_s: 2000 },
  ];
  const runs = scripts.map((script) => {
    const { seen, callbacks } = observe();
    return { script, seen, s: gw.stream(mock(script), callbacks) };
  });
  const dones = await Promise.all(runs.map((r) => r.s.done));
  for (const [i, { script, seen, s }] of runs.entries()) {
    assert.equal(dones[i].reason, "stop", `stream ${i}`);
    assert.equal(s.text, script.text, `stream ${i}`);
    assert.equal(seen.deltas.join(""), script.text, `stream ${i}`);
    for (const delta of seen.deltas) assert.ok(wellFormed(delta), `stream ${i}: ${JSON.stringify(delta)}`);
    for (const text of seen.texts) assert.ok(wellFormed(text), `stream ${i}: ${JSON.stringify(text)}`);
    assertGapless(seen.frames);
  }
  assert.equal(new Set(runs.map((r) => r.s.id)).size, 5);
  assert.equal(rec.sockets.length, 1);
  await gw.close();
});

test("onText is called at most once per scheduled frame", TIMEOUT, async (t) => {
  const rec = recorder();
  const frames = [];
  const gw = open(t, { WebSocket: rec.WebSocket, scheduleFrame: (cb) => frames.push(cb) });
  await gw.ready;
  const texts = [words(150, "a"), words(150, "b")];
  const runs = texts.map((text) => {
    const calls = { n: 0, deltaFrames: 0, finishedWith: null };
    const s = gw.stream(mock({ text, tokens_per_s: 1500 }), {
      onText() {
        calls.n += 1;
      },
      onFrame(frame) {
        if (frame.type === "delta.text") calls.deltaFrames += 1;
      },
      onFinish() {
        calls.finishedWith = s.text;
      },
    });
    return { s, calls, text };
  });
  let ran = 0;
  let ended = false;
  Promise.all(runs.map((r) => r.s.done)).then(() => {
    ended = true;
  });
  while (!ended) {
    await sleep(8);
    assert.ok(frames.length <= 1, "one pending frame per Gateway, whatever the streams");
    for (const cb of frames.splice(0)) {
      const before = runs.map((r) => r.calls.n);
      cb();
      ran += 1;
      runs.forEach((r, i) => assert.ok(r.calls.n - before[i] <= 1, "two onText calls in one frame"));
    }
  }
  for (const { s, calls, text } of runs) {
    assert.equal(s.text, text);
    assert.equal(calls.finishedWith, text, "onText before onFinish carries the final text");
    assert.ok(calls.n <= ran + 1, `${calls.n} onText calls for ${ran} frames`);
    assert.ok(calls.n < calls.deltaFrames, `no coalescing: ${calls.n} calls, ${calls.deltaFrames} frames`);
  }
  await gw.close();
});

test("the async iterator yields coalesced text and every other frame in order", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const script = {
    text: "Let me look that up. ",
    tool_calls: [{ name: "lookup", arguments: '{"q": "wsgate"}' }],
    args_chunk: 3,
  };
  const events = [];
  for await (const event of gw.stream(mock(script))) events.push(event);
  const types = events.map((e) => e.type);
  assert.equal(types[0], "stream.started");
  assert.equal(types.at(-1), "finish");
  assert.ok(!types.includes("delta.text"), "text comes as coalesced text events");
  const texts = events.filter((e) => e.type === "text");
  assert.equal(texts.map((e) => e.delta).join(""), script.text);
  assert.equal(texts.at(-1).text, script.text);
  assert.ok(types.lastIndexOf("text") < types.indexOf("tool_call.start"), "text before the call");
  assert.equal(types.filter((t) => t === "tool_call.end").length, 1);
  assert.ok(types.includes("tool_call.arguments_chunk"));
  assert.equal(events.at(-1).reason, "tool_calls");
  await gw.close();
});

test("a tool call fires onToolCall exactly once", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const script = {
    text: "Checking the weather.",
    tool_calls: [
      { name: "get_weather", arguments: '{"city": "Paris", "unit": "c"}' },
      { name: "get_time", arguments: '{"tz": "Europe/Paris"}' },
    ],
    args_chunk: 4,
  };
  const { seen, callbacks } = observe();
  const s = gw.stream(mock(script), callbacks);
  const done = await s.done;
  assert.equal(done.reason, "tool_calls");
  assert.equal(seen.toolCalls.length, 2);
  assert.deepEqual(
    seen.toolCalls.map((c) => [c.name, c.arguments]),
    [
      ["get_weather", { city: "Paris", unit: "c" }],
      ["get_time", { tz: "Europe/Paris" }],
    ],
  );
  assert.equal(new Set(seen.toolCalls.map((c) => c.call_id)).size, 2);
  assert.deepEqual(s.toolCalls, seen.toolCalls);
  assert.equal(s.text, script.text);
  await gw.close();
});

test("a structured section reaches onStructured and leaves the text", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const structured = [];
  const text = 'Here it is: <<<JSON>>>{"city": "Paris", "temp": 21}<<<END>>> Done.';
  const s = gw.stream(mock({ text, chunk: 5 }), {
    options: { structured: {} },
    onStructured: (frame) => structured.push(frame.value),
  });
  const done = await s.done;
  assert.equal(done.text, "Here it is:  Done.");
  assert.deepEqual(structured, [{ city: "Paris", temp: 21 }]);
});

test("cancel ends the stream with finish cancelled", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const text = words(400);
  const { seen, callbacks } = observe();
  const s = gw.stream(mock({ text, tokens_per_s: 100, tag: "cancel-me" }), callbacks);
  await until(() => s.text.length > 0, "the first text");
  const done = await s.cancel();
  assert.equal(done.reason, "cancelled");
  assert.equal(done.finish.reason, "cancelled");
  assert.ok(text.startsWith(done.text) && done.text.length < text.length);
  const calls = seen.texts.length;
  await sleep(100);
  assert.equal(seen.texts.length, calls, "no text after the finish");
  assert.equal(s.text, done.text);
  assert.deepEqual(
    rec.last().sentFrames.map((f) => f.type),
    ["start", "cancel"],
  );
  await gw.close();
});

test("an AbortSignal cancels the stream", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const controller = new AbortController();
  const s = gw.stream(mock({ text: words(400), tokens_per_s: 100 }), { signal: controller.signal });
  await until(() => s.text.length > 0, "the first text");
  controller.abort();
  const done = await s.done;
  assert.equal(done.reason, "cancelled");
  assert.equal(s.finish.reason, "cancelled");
  // Aborted before it is sent: it ends at once and never reaches the gateway.
  const early = new AbortController();
  early.abort();
  const never = gw.stream(mock({ text: "never" }), { signal: early.signal, streamId: "never" });
  assert.deepEqual(await never.done, { reason: "cancelled", text: "", finish: null, error: null });
  assert.ok(!rec.last().sentFrames.some((f) => f.stream_id === "never"));
  await gw.close();
});

test("close ends open streams as cancelled and does not reconnect", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST });
  await gw.ready;
  const closes = [];
  gw.on("close", (event) => closes.push(event));
  const { seen, callbacks } = observe();
  const s = gw.stream(mock({ text: words(400), tokens_per_s: 100 }), callbacks);
  await until(() => s.text.length > 0, "the first text");
  await gw.close();
  const done = await s.done;
  assert.equal(done.reason, "cancelled");
  assert.equal(done.finish, null);
  assert.equal(done.error, null);
  assert.equal(seen.finishes.length + seen.errors.length, 0);
  assert.deepEqual(closes.map((c) => c.code), [1000]);
  assert.equal(gw.state, "closed");
  assert.throws(() => gw.stream(mock({ text: "late" })), (e) => e instanceof WsgateError && e.code === "closed");
  await sleep(150);
  assert.equal(rec.sockets.length, 1);
});

// --- reconnecting -------------------------------------------------------------------------

test("a dropped socket reconnects and resumes with exact text and no duplicate", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST });
  await gw.ready;
  const events = [];
  gw.on("reconnecting", (e) => events.push(["reconnecting", e]));
  gw.on("reconnected", (f) => events.push(["reconnected", f]));
  const text = words(120);
  const { seen, callbacks } = observe();
  const s = gw.stream(mock({ text, tokens_per_s: 300 }), { ...callbacks, options: { on_disconnect: "continue" } });
  await until(() => seen.frames.filter((f) => f.type === "delta.text").length >= 10, "ten text frames");
  const lastSeq = s.lastSeq;
  await control("drop");
  const done = await s.done;
  assert.equal(done.reason, "stop");
  assert.equal(done.text, text);
  assert.equal(seen.deltas.join(""), text, "no text twice");
  assertGapless(seen.frames);
  assert.equal(seen.frames.filter((f) => f.type === "stream.started").length, 1);
  assert.equal(seen.frames.filter((f) => f.type === "stream.resumed").length, 1);
  assert.deepEqual(events.map((e) => e[0]), ["reconnecting", "reconnected"]);
  assert.equal(events[0][1].attempt, 1);
  assert.equal(events[0][1].code, 1006);
  assert.equal(rec.sockets.length, 2);
  const resume = rec.last().sentFrames[0];
  assert.equal(resume.type, "resume");
  assert.equal(resume.stream_id, s.id);
  assert.equal(resume.message_id, s.messageId);
  assert.equal(resume.epoch, s.epoch);
  assert.ok(resume.last_seq >= lastSeq);
  // The new socket serves new streams too.
  const after = gw.stream(mock({ text: "after the drop" }));
  assert.equal((await after.done).text, "after the drop");
  await gw.close();
});

test("a dropped stream with the default policy resumes to its cancelled finish", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST });
  await gw.ready;
  const text = words(400);
  const { seen, callbacks } = observe();
  const s = gw.stream(mock({ text, tokens_per_s: 200 }), callbacks);
  await until(() => s.text.length > 0, "the first text");
  await control("drop");
  const done = await s.done;
  assert.equal(done.reason, "cancelled");
  assert.ok(text.startsWith(done.text));
  assert.equal(seen.deltas.join(""), done.text);
  assertGapless(seen.frames);
  await gw.close();
});

test("a stream not yet acknowledged when the socket drops is lost unless it has an idempotency key", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST });
  await gw.ready;
  const first = rec.last();
  first.swallow = true; // every answer from here on dies with the connection
  const keyed = words(60, "keyed");
  const lost = observe();
  const s1 = gw.stream(mock({ text: words(60) }), lost.callbacks);
  const s2 = gw.stream(mock({ text: keyed, tokens_per_s: 200, tag: "keyed" }), {
    options: { idempotency_key: "k-1", on_disconnect: "continue" },
  });
  await until(
    () => first.received.filter((f) => f.type === "stream.started").length === 2,
    "both stream.started frames (swallowed)",
  );
  await control("drop");
  const done1 = await s1.done;
  assert.equal(done1.reason, "error");
  assert.ok(done1.error instanceof WsgateError);
  assert.equal(done1.error.code, "stream_lost");
  assert.equal(done1.error.retryable, true);
  assert.equal(done1.error.streamId, s1.id);
  assert.equal(lost.seen.errors.length, 1);
  const done2 = await s2.done;
  assert.equal(done2.reason, "stop");
  assert.equal(done2.text, keyed);
  const again = rec.last().sentFrames.filter((f) => f.type === "start");
  assert.deepEqual(again.map((f) => f.stream_id), [s2.id], "only the keyed start is sent again");
  await gw.close();
});

test("resume follows a generation by message id on a new Gateway as a reloaded page does", TIMEOUT, async (t) => {
  const rec = recorder();
  const page = open(t, { WebSocket: rec.WebSocket });
  await page.ready;
  const text = words(150);
  const first = streamOf(page, text);
  await until(() => first.text.length > 0, "the first text");
  const generation = { messageId: first.messageId, epoch: first.epoch, snapshot: true };
  await page.close(); // the page reloads; the generation goes on (on_disconnect: continue)
  const reloaded = open(t, { WebSocket: rec.WebSocket });
  const { seen, callbacks } = observe();
  const s = reloaded.resume(generation, callbacks); // before ready: sent once it comes
  assert.equal(s.phase, "detached");
  const done = await s.done;
  assert.equal(done.reason, "stop");
  assert.equal(done.text, text);
  assert.equal(seen.deltas.join(""), text);
  assert.equal(s.messageId, generation.messageId);
  assertGapless(seen.frames.filter((f) => f.type !== "stream.resumed"));
  const resume = rec.last().sentFrames[0];
  assert.deepEqual(resume, {
    type: "resume",
    stream_id: s.id,
    message_id: generation.messageId,
    last_seq: 0,
    epoch: generation.epoch,
    snapshot: true,
  });
  const unknown = reloaded.resume({ messageId: "msg_nothing" });
  const refused = await unknown.done;
  assert.equal(refused.reason, "error");
  assert.equal(refused.error.code, "unknown_message");
});

test("without reconnect a drop ends the Gateway and maxAttempts failures give up", TIMEOUT, async (t) => {
  const rec = recorder();
  const once = open(t, { WebSocket: rec.WebSocket, reconnect: false });
  await once.ready;
  const closes = [];
  once.on("close", (event) => closes.push(event));
  const s = once.stream(mock({ text: words(400), tokens_per_s: 100 }));
  await until(() => s.text.length > 0, "the first text");
  await control("drop");
  const done = await s.done;
  assert.equal(done.reason, "error");
  assert.equal(done.error.code, "connection_lost");
  assert.equal(done.error.closeCode, 1006);
  assert.equal(once.state, "closed");
  assert.equal(closes[0].error.code, "connection_lost");
  const few = recorder();
  const gw = open(t, { WebSocket: few.WebSocket, reconnect: { ...FAST, maxAttempts: 2 } });
  await gw.ready;
  const attempts = [];
  gw.on("reconnecting", (e) => attempts.push(e.attempt));
  const ended = new Promise((resolve) => gw.on("close", resolve));
  few.state.refuse = true;
  await control("drop");
  const close = await ended;
  assert.equal(close.error.code, "connection_lost");
  assert.deepEqual(attempts, [1, 2]);
  assert.equal(few.sockets.length, 3);
});

test("a resume refusal ends the stream with that error", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST });
  await gw.ready;
  const attempts = [];
  gw.on("reconnecting", (e) => attempts.push(e.attempt));
  const { seen, callbacks } = observe();
  const s = gw.stream(mock({ text: words(400), tokens_per_s: 200 }), callbacks);
  await until(() => s.text.length > 0, "the first text");
  rec.state.refuse = true; // the gateway is unreachable while the generation's log expires
  await control("drop");
  await sleep(400);
  rec.state.refuse = false;
  const done = await s.done;
  assert.equal(done.reason, "error");
  assert.equal(done.finish, null);
  assert.ok(["resume_expired", "unknown_message"].includes(done.error.code), done.error.code);
  assert.equal(done.error.stream_id, s.id, "the refusal frame itself");
  assert.deepEqual(seen.errors, [done.error]);
  assert.ok(attempts.length >= 2, `attempts ${attempts}`);
  assert.deepEqual(attempts, attempts.map((_, i) => i + 1));
  await gw.close();
});

test("a silent socket is given up after heartbeatTimeoutMs and its stream resumes", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST, heartbeatTimeoutMs: 300 });
  await gw.ready;
  const text = words(100);
  const s = gw.stream(mock({ text, tokens_per_s: 200 }), { options: { on_disconnect: "continue" } });
  await until(() => s.text.length > 0, "the first text");
  rec.last().swallow = true; // the network goes quiet
  const done = await s.done;
  assert.equal(done.reason, "stop");
  assert.equal(done.text, text);
  assert.equal(rec.sockets.length, 2);
  await gw.close();
});

test("heartbeat frames reach the heartbeat event", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket });
  await gw.ready;
  const beats = [];
  gw.on("heartbeat", (frame) => beats.push(frame));
  await until(() => beats.length >= 2, "two heartbeats", 3000);
  assert.deepEqual(beats[0], { type: "heartbeat" });
  await gw.close();
});

test("after goaway the open stream finishes on the old socket and a new one starts on a new connection", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST });
  await gw.ready;
  const events = [];
  for (const name of ["goaway", "reconnecting", "reconnected"]) gw.on(name, (e) => events.push([name, e]));
  const text = words(150, "old");
  const old = gw.stream(mock({ text, tokens_per_s: 150 }));
  await until(() => old.text.length > 0, "the first text");
  // Behind a load balancer, new connections reach another node (the drained one no longer listens).
  rec.state.redirect = await control("drain");
  await until(() => events.some((e) => e[0] === "goaway"), "goaway");
  const goawayAt = Date.now();
  assert.equal(gw.state, "draining");
  const fresh = gw.stream(mock({ text: "on the new gateway" }));
  assert.equal(fresh.phase, "queued", "no start on a socket after its goaway");
  const freshDone = await fresh.done;
  assert.equal(freshDone.reason, "stop");
  assert.equal(freshDone.text, "on the new gateway");
  assert.ok(Date.now() - goawayAt >= 150, "the new connection waits goaway.reconnect_after_ms");
  assert.equal(old.phase, "running", "§5.17: the new stream did not wait for the old socket's drain");
  assert.equal(gw.state, "open");
  const done = await old.done;
  assert.equal(done.reason, "stop");
  assert.equal(done.text, text);
  assert.equal(rec.sockets.length, 2);
  assert.ok(!rec.sockets[0].sentFrames.some((f) => f.stream_id === fresh.id), "not sent after goaway");
  assert.ok(rec.sockets[1].sentFrames.some((f) => f.type === "start" && f.stream_id === fresh.id));
  await until(() => rec.sockets[0].readyState === WebSocket.CLOSED, "the old socket closed once idle");
  assert.ok(!events.some((e) => e[0] === "reconnecting"), "a handover, not a reconnect");
  assert.ok(events.some((e) => e[0] === "reconnected"));
  await gw.close();
});

// --- authentication -----------------------------------------------------------------------

test("auth by the first frame authenticates every connection", TIMEOUT, async (t) => {
  const rec = recorder();
  let asked = 0;
  const gw = open(t, {
    WebSocket: rec.WebSocket,
    reconnect: FAST,
    auth: async () => {
      asked += 1;
      return process.env.WSGATE_KEY;
    },
  });
  const ready = await gw.ready;
  assert.deepEqual(ready.auth, { principal: "key:alice", method: "api_key" });
  assert.deepEqual(rec.last().sentFrames[0], { type: "auth", token: process.env.WSGATE_KEY });
  const s = gw.stream(mock({ text: words(100), tokens_per_s: 300 }), { options: { on_disconnect: "continue" } });
  await until(() => s.text.length > 0, "the first text");
  await control("drop");
  assert.equal((await s.done).text, words(100));
  assert.equal(asked, 2, "the auth option is asked again on the reconnect");
  assert.deepEqual(
    rec.last().sentFrames.map((f) => f.type),
    ["auth", "resume"],
  );
  const plain = open(t, { WebSocket: rec.WebSocket, auth: process.env.WSGATE_KEY });
  assert.equal((await plain.ready).auth.principal, "key:alice");
  await Promise.all([gw.close(), plain.close()]);
});

test("a ticket is bought before every connect", TIMEOUT, async (t) => {
  const rec = recorder();
  const bought = [];
  const ticket = async () => {
    const answer = await fetch(`${process.env.WSGATE_API}/v1/tickets`, {
      method: "POST",
      headers: { Authorization: `Bearer ${process.env.WSGATE_KEY}` },
    });
    assert.equal(answer.status, 200);
    const { ticket } = await answer.json();
    bought.push(ticket);
    return ticket;
  };
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST, ticket });
  const ready = await gw.ready;
  assert.deepEqual(ready.auth, { principal: "key:alice", method: "ticket" });
  const text = words(100);
  const s = gw.stream(mock({ text, tokens_per_s: 300 }), { options: { on_disconnect: "continue" } });
  await until(() => s.text.length > 0, "the first text");
  await control("drop");
  assert.equal((await s.done).text, text);
  assert.equal(bought.length, 2, "a ticket is single use: a new one for the reconnect");
  assert.notEqual(bought[0], bought[1]);
  assert.equal(rec.sockets.length, 2);
  assert.ok(rec.sockets.every((ws, i) => new URL(ws.url).searchParams.get("ticket") === bought[i]));
});

test("a refused key rejects ready with close code 4501 and does not reconnect", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST, auth: "sk-not-a-key" });
  const closes = [];
  gw.on("close", (event) => closes.push(event));
  const s = gw.stream(mock({ text: "never" }));
  await assert.rejects(gw.ready, (error) => {
    assert.ok(error instanceof WsgateError);
    assert.equal(error.code, "auth_failed");
    assert.equal(error.closeCode, 4501);
    assert.equal(error.retryable, false);
    return true;
  });
  const done = await s.done;
  assert.equal(done.reason, "error");
  assert.equal(done.error.code, "auth_failed");
  await sleep(200);
  assert.equal(rec.sockets.length, 1);
  assert.equal(gw.state, "closed");
  assert.deepEqual(closes.map((c) => c.code), [4501]);
  assert.ok(!rec.last().sentFrames.some((f) => f.type === "start"), "no start before ready");
});

test("a gateway that cannot be reached rejects ready with connect_failed", TIMEOUT, async (t) => {
  const rec = recorder();
  const gw = open(t, { WebSocket: rec.WebSocket, reconnect: FAST }, "ws://127.0.0.1:9/v1/ws");
  const s = gw.stream(mock({ text: "never" }));
  await assert.rejects(gw.ready, (error) => {
    assert.ok(error instanceof WsgateError);
    assert.equal(error.code, "connect_failed");
    assert.equal(error.closeCode, 1006);
    return true;
  });
  assert.equal((await s.done).error.code, "connect_failed");
  await sleep(100);
  assert.equal(rec.sockets.length, 1, "the first connection's failure is final");
  assert.equal(gw.state, "closed");
});

// --- a fake gateway: protocol corner cases a real one does not produce on demand ----------
//
// These run without a gateway (one pytest test runs every "fake gateway: " test). Each
// socket of a fakeGateway is scripted by `serve(socket, index)`: it opens, answers the
// frames the client sends (`socket.onframe`, a tick later, as a network would), and closes
// with any code.

const FAKE_URL = "ws://fake.invalid/v1/ws";

/** Resolve as `promise` does, or fail the test after `ms` (the bug being a hang). */
function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function fakeGateway(serve) {
  const sockets = [];
  class FakeSocket {
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      this.sent = [];
      this.listeners = new Map();
      this.closedWith = null;
      this.onframe = null;
      sockets.push(this);
      const index = sockets.length - 1;
      setTimeout(() => serve(this, index), 0);
    }

    addEventListener(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, []);
      this.listeners.get(type).push(fn);
    }

    send(data) {
      if (this.closedWith !== null) return;
      const frame = JSON.parse(data);
      this.sent.push(frame);
      setTimeout(() => {
        if (this.closedWith === null) this.onframe?.(frame);
      }, 0);
    }

    close(code = 1000) {
      this.hangUp(code);
    }

    // --- the gateway's side ---
    emit(type, event) {
      for (const fn of this.listeners.get(type) ?? []) fn(event);
    }

    ready(extra = {}) {
      this.emit("open", {});
      this.deliver({ type: "ready", protocol: "wsgate.v1", ...extra });
    }

    deliver(...frames) {
      for (const frame of frames) {
        if (this.closedWith === null) this.emit("message", { data: JSON.stringify(frame) });
      }
    }

    hangUp(code, reason = "") {
      if (this.closedWith !== null) return;
      this.closedWith = code;
      setTimeout(() => this.emit("close", { code, reason }), 0);
    }

    starts() {
      return this.sent.filter((f) => f.type === "start");
    }
  }
  return { WebSocket: FakeSocket, sockets };
}

const wire = {
  started: (id, seq = 1) => ({ type: "stream.started", stream_id: id, seq, message_id: "msg_1", epoch: "e1" }),
  resumed: (f, extra = {}) => ({
    type: "stream.resumed",
    stream_id: f.stream_id,
    message_id: f.message_id,
    epoch: "e1",
    state: "running",
    last_seq: f.last_seq,
    top_seq: f.last_seq,
    ...extra,
  }),
  text: (id, seq, text, extra = {}) => ({ type: "delta.text", stream_id: id, seq, text, ...extra }),
  finish: (id, seq) => ({ type: "finish", stream_id: id, seq, reason: "stop" }),
  refusal: (id, code, extra = {}) => ({ type: "error", stream_id: id, code, message: code, retryable: true, ...extra }),
  closing: (code) => ({ type: "error", code, message: code, retryable: code === "slow_consumer" }),
};

test("fake gateway: a socket that dies after each ready backs off and maxAttempts gives up", TIMEOUT, async (t) => {
  const fake = fakeGateway((ws, i) => {
    ws.ready();
    const upMs = i === 3 ? 150 : 5; // the fourth stays up past stableMs
    setTimeout(() => {
      ws.deliver(wire.closing("slow_consumer"));
      ws.hangUp(4000);
    }, upMs);
  });
  const reconnect = { minDelayMs: 1, maxDelayMs: 4, maxAttempts: 3, stableMs: 60 };
  const gw = open(t, { WebSocket: fake.WebSocket, reconnect }, FAKE_URL);
  const attempts = [];
  gw.on("reconnecting", (e) => attempts.push(e.attempt));
  const closed = new Promise((resolve) => gw.on("close", resolve));
  await gw.ready;
  const close = await within(closed, 3000, "the Gateway to give up");
  assert.deepEqual(attempts, [1, 2, 3, 1, 2, 3], "a ready that dies at once is a failed attempt");
  assert.equal(close.error.code, "connection_lost");
  assert.equal(close.error.cause.code, "slow_consumer");
  assert.equal(fake.sockets.length, 7);
});

test("fake gateway: a ticket that never settles is a failed attempt and ends the streams", TIMEOUT, async (t) => {
  const fake = fakeGateway((ws) => {
    ws.ready();
    ws.onframe = (f) => {
      if (f.type !== "start") return;
      ws.deliver(wire.started(f.stream_id));
      setTimeout(() => ws.hangUp(1006), 5);
    };
  });
  let asked = 0;
  const ticket = () => (++asked === 1 ? "t1" : new Promise(() => {}));
  const reconnect = { ...FAST, maxAttempts: 2 };
  const gw = open(t, { WebSocket: fake.WebSocket, ticket, authTimeoutMs: 50, reconnect }, FAKE_URL);
  await gw.ready;
  const s = gw.stream(mock({ text: "x" }));
  const done = await within(s.done, 3000, "the stream to end");
  assert.equal(done.error.code, "connection_lost");
  assert.equal(done.error.cause.cause.code, "ticket_unavailable");
  assert.equal(gw.state, "closed");
  assert.equal(asked, 3);
  assert.equal(fake.sockets.length, 1);
});

test("fake gateway: a slow auth on a reconnect is a failed attempt, not the end", TIMEOUT, async (t) => {
  const fake = fakeGateway((ws, i) => {
    ws.emit("open", {});
    if (i === 2) {
      // The gateway's auth.timeout_s runs out before the auth option answers.
      setTimeout(() => {
        ws.deliver(wire.closing("auth_timeout"));
        ws.hangUp(4501);
      }, 30);
    }
    ws.onframe = (f) => {
      if (f.type === "auth") ws.deliver({ type: "ready", protocol: "wsgate.v1" });
      if (f.type === "start") {
        ws.deliver(wire.started(f.stream_id), wire.text(f.stream_id, 2, "a"));
        setTimeout(() => ws.hangUp(1006), 5);
      }
      if (f.type === "resume") ws.deliver(wire.resumed(f), wire.text(f.stream_id, 3, "b"), wire.finish(f.stream_id, 4));
    };
  });
  let asked = 0;
  const answers = [() => "k", () => new Promise(() => {}), () => sleep(150).then(() => "k"), () => "k"];
  const auth = () => answers[asked++]();
  const gw = open(t, { WebSocket: fake.WebSocket, auth, authTimeoutMs: 60, reconnect: FAST }, FAKE_URL);
  const codes = [];
  gw.on("reconnecting", (e) => codes.push(e.code));
  await gw.ready;
  const s = gw.stream(mock({ text: "ab" }), { options: { on_disconnect: "continue" } });
  const done = await within(s.done, 3000, "the stream to end");
  assert.equal(done.reason, "stop");
  assert.equal(done.text, "ab");
  assert.deepEqual(codes, [1006, 1006, 4501], "a hung auth, then the gateway's auth_timeout");
  assert.equal(fake.sockets.length, 4);
  assert.equal(fake.sockets[3].sent.find((f) => f.type === "resume").last_seq, 2);
});

test("fake gateway: 4502 reconnects with a new ticket, and ends a Gateway with a fixed token", TIMEOUT, async (t) => {
  const expiring = (ws) => {
    ws.onframe = (f) => {
      if (f.type === "auth") ws.deliver({ type: "ready", protocol: "wsgate.v1", auth: { expires_in_ms: 40 } });
      if (f.type === "start") {
        ws.deliver(wire.started(f.stream_id), wire.text(f.stream_id, 2, "a"));
        setTimeout(() => {
          ws.deliver(wire.closing("auth_expired"));
          ws.hangUp(4502);
        }, 40);
      }
      if (f.type === "resume") ws.deliver(wire.resumed(f), wire.text(f.stream_id, 3, "b"), wire.finish(f.stream_id, 4));
    };
  };
  const fake = fakeGateway((ws, i) => {
    expiring(ws);
    if (i === 0) ws.ready({ auth: { expires_in_ms: 40 } });
    else ws.ready();
  });
  let bought = 0;
  const gw = open(t, { WebSocket: fake.WebSocket, ticket: () => `t${++bought}`, reconnect: FAST }, FAKE_URL);
  await gw.ready;
  const s = gw.stream(mock({ text: "ab" }), { options: { on_disconnect: "continue" } });
  const done = await within(s.done, 3000, "the stream to end");
  assert.equal(done.reason, "stop");
  assert.equal(done.text, "ab");
  assert.equal(new URL(fake.sockets[1].url).searchParams.get("ticket"), "t2");
  // A fixed token is no source of new credentials: 4502 ends the Gateway (§12.3).
  const fixed = fakeGateway((ws) => {
    expiring(ws);
    ws.emit("open", {});
  });
  const once = open(t, { WebSocket: fixed.WebSocket, auth: "k", reconnect: FAST }, FAKE_URL);
  await once.ready;
  const ended = await within(once.stream(mock({ text: "a" })).done, 3000, "the stream to end");
  assert.equal(ended.error.code, "auth_expired");
  assert.equal(ended.error.closeCode, 4502);
  assert.equal(once.state, "closed");
  assert.equal(fixed.sockets.length, 1);
});

test("fake gateway: a failed auth refresh is tried again before the expiry", TIMEOUT, async (t) => {
  const fake = fakeGateway((ws) => {
    ws.emit("open", {});
    ws.onframe = (f) => {
      if (f.type === "auth" && f.token === "k1") {
        ws.deliver({ type: "ready", protocol: "wsgate.v1", auth: { expires_in_ms: 200 } });
      }
    };
  });
  let asked = 0;
  const auth = async () => {
    asked += 1;
    if (asked === 2) throw new Error("the token endpoint failed once");
    return `k${asked}`;
  };
  const gw = open(t, { WebSocket: fake.WebSocket, auth, reconnect: FAST }, FAKE_URL);
  await gw.ready;
  await within(
    until(() => fake.sockets[0].sent.length === 2, "the refresh"),
    1000,
    "a second auth frame",
  );
  assert.deepEqual(fake.sockets[0].sent, [
    { type: "auth", token: "k1" },
    { type: "auth", token: "k3" },
  ]);
});

test("fake gateway: a running resumed stream refused with shutting_down resumes on the next connection", TIMEOUT, async (t) => {
  const fake = fakeGateway((ws, i) => {
    ws.ready();
    ws.onframe = (f) => {
      if (f.type !== "resume") return;
      if (i === 0) {
        // Its node reaches the drain deadline (§6.1(5)); the generation runs on elsewhere.
        ws.deliver(wire.resumed(f), wire.text(f.stream_id, 1, "a"), wire.text(f.stream_id, 2, "b"));
        ws.deliver(wire.refusal(f.stream_id, "shutting_down"));
        setTimeout(() => ws.hangUp(1001), 20);
      } else {
        ws.deliver(wire.resumed(f), wire.text(f.stream_id, 3, "c"), wire.finish(f.stream_id, 4));
      }
    };
  });
  const gw = open(t, { WebSocket: fake.WebSocket, reconnect: FAST }, FAKE_URL);
  await gw.ready;
  const { seen, callbacks } = observe();
  const s = gw.resume({ messageId: "msg_1", epoch: "e1" }, callbacks);
  const done = await within(s.done, 3000, "the stream to end");
  assert.equal(done.reason, "stop");
  assert.equal(done.text, "abc");
  assert.equal(seen.errors.length, 0);
  assert.equal(fake.sockets[1].sent[0].last_seq, 2);
});

test("fake gateway: a resume() without an epoch survives a drop before stream.resumed", TIMEOUT, async (t) => {
  const fake = fakeGateway((ws, i) => {
    ws.ready();
    ws.onframe = (f) => {
      if (f.type !== "resume") return;
      if (i === 0) ws.hangUp(1006);
      else ws.deliver(wire.resumed(f), wire.text(f.stream_id, 1, "a"), wire.finish(f.stream_id, 2));
    };
  });
  const gw = open(t, { WebSocket: fake.WebSocket, reconnect: FAST }, FAKE_URL);
  const s = gw.resume({ messageId: "msg_1" });
  const done = await within(s.done, 3000, "the stream to end");
  assert.equal(done.reason, "stop");
  assert.equal(done.text, "a");
  assert.deepEqual(fake.sockets[1].sent, [{ type: "resume", stream_id: s.id, message_id: "msg_1", last_seq: 0 }]);
});

test("fake gateway: frames already seen are dropped by seq and a coalesced overlap is refused", TIMEOUT, async (t) => {
  const fake = fakeGateway((ws) => {
    ws.ready();
    ws.onframe = (f) => {
      const id = f.stream_id;
      if (f.type !== "start") return;
      if (id === "dup") {
        ws.deliver(wire.started(id), wire.text(id, 2, "a"), wire.text(id, 3, "b"));
        ws.deliver(wire.started(id), wire.text(id, 2, "a"), wire.text(id, 3, "b")); // a replay
        ws.deliver(wire.text(id, 3, "ab", { first_seq: 2 })); // the same, coalesced
        ws.deliver(wire.text(id, 4, "c"), wire.finish(id, 5), wire.finish(id, 5));
      } else {
        ws.deliver(wire.started(id), wire.text(id, 2, "x"));
        ws.deliver(wire.text(id, 3, "xy", { first_seq: 2 })); // seq 2 again, with seq 3
        ws.deliver(wire.text(id, 4, "z"), wire.finish(id, 5));
      }
    };
  });
  const gw = open(t, { WebSocket: fake.WebSocket }, FAKE_URL);
  await gw.ready;
  const { seen, callbacks } = observe();
  const dup = await gw.stream(mock({ text: "abc" }), { ...callbacks, streamId: "dup" }).done;
  assert.equal(dup.reason, "stop");
  assert.equal(dup.text, "abc");
  assert.deepEqual(seen.frames.map((f) => f.seq), [1, 2, 3, 4, 5]);
  assert.equal(seen.finishes.length, 1);
  const overlap = await gw.stream(mock({ text: "xyz" }), { streamId: "overlap" }).done;
  assert.equal(overlap.reason, "error");
  assert.equal(overlap.error.code, "bad_frame");
  assert.equal(overlap.text, "x", "no text twice");
});

test("fake gateway: a retryable resume refusal is retried with backoff, a bounded number of times", TIMEOUT, async (t) => {
  const resumes = { retried: 0, refused: 0 };
  const fake = fakeGateway((ws, i) => {
    ws.ready();
    ws.onframe = (f) => {
      const id = f.stream_id;
      if (f.type === "start") {
        ws.deliver(wire.started(id), wire.text(id, 2, "a"));
        if (id === "refused") setTimeout(() => ws.hangUp(1006), 5);
      }
      if (f.type !== "resume") return;
      resumes[id] += 1;
      if (id === "refused" || resumes[id] <= 2) {
        ws.deliver(wire.refusal(id, "store_unavailable", { retry_after_ms: 5 }));
      } else {
        ws.deliver(wire.resumed(f), wire.text(id, 3, "b"), wire.finish(id, 4));
      }
    };
  });
  const gw = open(t, { WebSocket: fake.WebSocket, reconnect: FAST }, FAKE_URL);
  await gw.ready;
  const retried = gw.stream(mock({ text: "ab" }), { streamId: "retried" });
  const refused = gw.stream(mock({ text: "ab" }), { streamId: "refused" });
  const [ok, no] = await within(Promise.all([retried.done, refused.done]), 3000, "both streams to end");
  assert.equal(ok.reason, "stop");
  assert.equal(ok.text, "ab");
  assert.equal(resumes.retried, 3);
  assert.equal(no.reason, "error");
  assert.equal(no.error.code, "store_unavailable");
  assert.equal(resumes.refused, 5, "the resume and four retries");
  assert.deepEqual(fake.sockets[1].sent.filter((f) => f.stream_id === "retried").map((f) => f.last_seq), [2, 2, 2]);
});

test("fake gateway: a start refused with shutting_down is not sent again on that socket and cancel ends it", TIMEOUT, async (t) => {
  const fake = fakeGateway((ws) => {
    ws.ready();
    ws.onframe = (f) => {
      if (f.type === "start") ws.deliver(wire.refusal(f.stream_id, "shutting_down")); // no goaway first
    };
  });
  const gw = open(t, { WebSocket: fake.WebSocket }, FAKE_URL);
  await gw.ready;
  const s = gw.stream(mock({ text: "x" }));
  await sleep(60);
  assert.equal(fake.sockets[0].starts().length, 1);
  assert.equal(s.phase, "queued");
  const done = await within(s.cancel(), 500, "cancel to end the refused start");
  assert.deepEqual(done, { reason: "cancelled", text: "", finish: null, error: null });
  assert.ok(!fake.sockets[0].sent.some((f) => f.type === "cancel"), "nothing to cancel on the gateway");
});

test("fake gateway: a stream forgets its request once started unless it has an idempotency key", TIMEOUT, async (t) => {
  const fake = fakeGateway((ws) => {
    ws.ready();
    ws.onframe = (f) => {
      if (f.type === "start") ws.deliver(wire.started(f.stream_id));
    };
  });
  const gw = open(t, { WebSocket: fake.WebSocket }, FAKE_URL);
  await gw.ready;
  const plain = gw.stream(mock({ text: "x" }));
  const keyed = gw.stream(mock({ text: "y" }), { options: { idempotency_key: "k" } });
  await until(() => plain.phase === "running" && keyed.phase === "running", "both started");
  // The request (the whole conversation) is held only while it may be sent again (§11.3).
  assert.equal(plain._frame, null);
  assert.equal(keyed._frame.request.messages.length, 1);
});
