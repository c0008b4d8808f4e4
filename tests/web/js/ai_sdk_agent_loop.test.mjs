// The AI SDK transport's agent loop (wsgate/web/wsgate-ai-sdk.js with `tools`) driving the
// REAL `ai` package's chat against a real gateway on the mock's multi-turn scripts.
//
// Run by tests/web/test_ai_sdk_agent_loop.py, one test per pytest test, with WSGATE_URL,
// WSGATE_FRAMES (tests/web/web_helpers.py) and WSGATE_AI_SDK (the npm prefix holding the
// pinned `ai`) in the environment. Every chunk is validated with ai's own
// `uiMessageChunkSchema`; every socket message goes to WSGATE_FRAMES for the schemas.

import assert from "node:assert/strict";
import { appendFileSync } from "node:fs";
import { test } from "node:test";

import {
  WsgateChatTransport,
  createChunkMapper,
  toWireMessages,
} from "../../../wsgate/web/wsgate-ai-sdk.js";

import { TestChat, ai, assistant, chunkSchema } from "./ai_helpers.mjs";
import { CLOCK, TOOLS, WEATHER, until, weatherScript } from "./helpers.mjs";

/** The user message of a weather script whose second turn expects `results`. */
function weatherAsk(results) {
  return { text: JSON.stringify({ mock: weatherScript(results) }) };
}

class RecordingWebSocket extends WebSocket {
  static count = 0;

  constructor(url, protocols) {
    super(url, protocols);
    this.index = RecordingWebSocket.count++;
    super.addEventListener("message", (event) => this.record("in", event.data));
  }

  record(dir, data) {
    appendFileSync(process.env.WSGATE_FRAMES, JSON.stringify({ socket: this.index, dir, data }) + "\n");
  }

  send(data) {
    this.record("out", data);
    super.send(data);
  }
}

/** A transport whose chunks are recorded (and checked against ai's schema). */
function recordingTransport(t, init) {
  const inner = new WsgateChatTransport({
    url: process.env.WSGATE_URL,
    model: "mock",
    request: { tools: TOOLS },
    connect: { WebSocket: RecordingWebSocket },
    ...init,
  });
  t.after(() => inner.close());
  const chunks = [];
  const tap = (stream) =>
    stream?.pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          chunks.push(chunk);
          controller.enqueue(chunk);
        },
      }),
    ) ?? null;
  return {
    chunks,
    sends: 0,
    sendMessages(options) {
      this.sends += 1;
      return inner.sendMessages(options).then(tap);
    },
    reconnectToStream: async (options) => tap(await inner.reconnectToStream(options)),
    async validate() {
      for (const chunk of chunks) {
        const result = await chunkSchema.validate(chunk);
        assert.ok(result.success, `not a UIMessageChunk: ${JSON.stringify(chunk)}`);
      }
    },
  };
}

// --- pure parts ---------------------------------------------------------------------------

test("the agent loop's frames map to tool outputs and a step per turn", async () => {
  const f = (type, seq, fields = {}) => ({ type, stream_id: "s", seq, ...fields });
  const frames = [
    f("stream.started", 1, { message_id: "m1", model: "mock" }),
    f("delta.text", 2, { text: "Look." }),
    f("tool_call.start", 3, { call_id: "a", index: 0, name: "weather" }),
    f("tool_call.start", 4, { call_id: "b", index: 1, name: "search" }),
    f("tool_call.end", 5, { call_id: "a", name: "weather", arguments: { city: "P" } }),
    f("tool_call.end", 6, { call_id: "b", name: "search", arguments: {} }),
    f("tool.executing", 7, { call_id: "b", name: "search" }),
    f("tool.awaiting", 8, { turn: 1, call_ids: ["a"], timeout_ms: 60000 }),
    f("tool.result", 9, { call_id: "b", name: "search", source: "server", content: [1] }),
    f("tool.result", 10, {
      call_id: "a",
      name: "weather",
      source: "client",
      error: { code: "tool_error", message: "down" },
    }),
    f("turn.started", 11, { turn: 2 }),
    f("delta.text", 12, { text: "Done." }),
    f("finish", 13, { reason: "stop" }),
  ];
  const mapper = createChunkMapper({ idPrefix: "p", messageMetadata: false, serverTools: ["search"] });
  const out = frames.map((frame) => mapper.frame(frame));
  assert.deepEqual(
    out.map((o) => o.terminal),
    frames.map((frame) => frame.type === "finish"),
  );
  const chunks = out.flatMap((o) => o.chunks);
  assert.deepEqual(chunks, [
    { type: "start" },
    { type: "start-step" },
    { type: "text-start", id: "p-text-0" },
    { type: "text-delta", id: "p-text-0", delta: "Look." },
    { type: "text-end", id: "p-text-0" },
    { type: "tool-input-start", toolCallId: "a", toolName: "weather" },
    { type: "tool-input-start", toolCallId: "b", toolName: "search", providerExecuted: true },
    { type: "tool-input-available", toolCallId: "a", toolName: "weather", input: { city: "P" } },
    { type: "tool-input-available", toolCallId: "b", toolName: "search", input: {}, providerExecuted: true },
    { type: "tool-output-available", toolCallId: "b", output: [1], providerExecuted: true },
    { type: "tool-output-error", toolCallId: "a", errorText: "tool_error: down" },
    { type: "finish-step" },
    { type: "start-step" },
    { type: "text-start", id: "p-text-1" },
    { type: "text-delta", id: "p-text-1", delta: "Done." },
    { type: "text-end", id: "p-text-1" },
    { type: "finish-step" },
    { type: "finish", finishReason: "stop" },
  ]);
  for (const chunk of chunks) {
    assert.ok((await chunkSchema.validate(chunk)).success, JSON.stringify(chunk));
  }

  // A tool.result that does not repeat the client's own result: `resultOf` knows it; one
  // nobody knows (a replay of another page's result) gives no chunk.
  const known = new Map([["a", { content: { temp_c: 21 } }], ["b", { error: { code: "x", message: "y" } }]]);
  const quiet = createChunkMapper({ idPrefix: "q", messageMetadata: false, resultOf: (id) => known.get(id) });
  const bare = (id) => f("tool.result", 9, { call_id: id, name: "t", source: "client" });
  assert.deepEqual(quiet.frame(bare("a")).chunks, [], "no tool part for it yet: no chunk");
  for (const [index, id] of ["a", "b", "c"].entries()) {
    quiet.frame(f("tool_call.start", 2 + index, { call_id: id, index, name: "t" }));
  }
  assert.deepEqual(
    ["a", "b", "c"].map((id) => quiet.frame(bare(id)).chunks),
    [
      [{ type: "tool-output-available", toolCallId: "a", output: { temp_c: 21 } }],
      [{ type: "tool-output-error", toolCallId: "b", errorText: "x: y" }],
      [],
    ],
  );
  // An echoed null is a result (null), not a missing one.
  const echoedNull = f("tool.result", 9, { call_id: "c", name: "t", source: "client", content: null });
  assert.deepEqual(quiet.frame(echoedNull).chunks, [{ type: "tool-output-available", toolCallId: "c", output: null }]);
});

// --- against a gateway --------------------------------------------------------------------

test("a chat with tools runs the loop on one stream into one assistant message", async (t) => {
  const calls = [];
  const transport = recordingTransport(t, {
    tools: {
      weather: async (input) => {
        calls.push(["weather", input]);
        return { temp_c: 21 };
      },
      clock: (input) => {
        calls.push(["clock", input]);
        return "12:00";
      },
    },
  });
  const toolCalls = [];
  const finishes = [];
  const chat = new TestChat({
    transport,
    // Would send a second request if the loop left a step of answered calls last.
    sendAutomaticallyWhen: ai.lastAssistantMessageIsCompleteWithToolCalls,
    onToolCall: ({ toolCall }) => toolCalls.push(toolCall.toolCallId),
    onFinish: (event) => finishes.push(event),
  });
  const ask = weatherAsk({ [WEATHER]: { temp_c: 21 }, [CLOCK]: "12:00" });
  await chat.sendMessage(ask);
  await until(() => chat.status === "ready", "the chat to finish");

  assert.equal(chat.error, undefined);
  assert.deepEqual(calls, [
    ["weather", { city: "Paris" }],
    ["clock", {}],
  ]);
  assert.deepEqual(toolCalls, [WEATHER, CLOCK]);
  const message = assistant(chat);
  assert.deepEqual(
    message.parts.map((p) => p.type),
    ["step-start", "text", "tool-weather", "tool-clock", "step-start", "text"],
  );
  const [, first, weather, clock, , second] = message.parts;
  assert.equal(first.text, "Let me look.");
  assert.equal(second.text, "Sunny, 21 °C at noon.");
  assert.equal(second.state, "done");
  assert.deepEqual([weather.state, weather.input, weather.output], ["output-available", { city: "Paris" }, { temp_c: 21 }]);
  assert.deepEqual([clock.state, clock.output], ["output-available", "12:00"]);
  assert.equal(message.metadata.wsgate.finishReason, "stop");
  assert.equal(finishes.length, 1);
  assert.equal(finishes[0].finishReason, "stop");
  assert.equal(transport.sends, 1, "the whole loop was one request");
  assert.equal(chat.messages.filter((m) => m.role === "assistant").length, 1);
  const types = transport.chunks.map((c) => c.type);
  assert.equal(types.filter((c) => c === "finish").length, 1);
  assert.equal(types.filter((c) => c === "start-step").length, 2);
  await transport.validate();
  // The next request's history is the conversation the model saw in turn 2, plus its answer.
  assert.deepEqual(toWireMessages(chat.messages).slice(1), [
    {
      role: "assistant",
      content: "Let me look.",
      tool_calls: [
        { id: WEATHER, type: "function", function: { name: "weather", arguments: '{"city":"Paris"}' } },
        { id: CLOCK, type: "function", function: { name: "clock", arguments: "{}" } },
      ],
    },
    { role: "tool", tool_call_id: WEATHER, content: '{"temp_c":21}' },
    { role: "tool", tool_call_id: CLOCK, content: "12:00" },
    { role: "assistant", content: "Sunny, 21 °C at noon." },
  ]);
});

test("a failing tool becomes the tool part's error and the loop goes on", async (t) => {
  const transport = recordingTransport(t, {
    tools: {
      weather: async () => {
        throw new Error("no network");
      },
      clock: () => "12:00",
    },
  });
  const chat = new TestChat({ transport });
  const failed = { error: { code: "tool_error", message: "no network" } };
  await chat.sendMessage(weatherAsk({ [WEATHER]: failed, [CLOCK]: "12:00" }));
  await until(() => chat.status === "ready", "the chat to finish");

  assert.equal(chat.error, undefined);
  const parts = assistant(chat).parts;
  const weather = parts.find((p) => p.type === "tool-weather");
  assert.equal(weather.state, "output-error");
  assert.equal(weather.errorText, "tool_error: no network");
  assert.equal(parts.at(-1).text, "Sunny, 21 °C at noon.");
  await transport.validate();
});
