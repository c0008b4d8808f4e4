// The AI SDK transport (wsgate/web/wsgate-ai-sdk.js) driving the REAL `ai` package's chat.
//
// Run by tests/web/test_ai_sdk.py, one test per pytest test (--test-name-pattern), with
// WSGATE_URL, WSGATE_CONTROL, WSGATE_FRAMES (tests/web/web_helpers.py) and WSGATE_AI_SDK (the
// npm prefix holding the pinned `ai`) in the environment. A chat is a subclass of ai's
// AbstractChat over a plain array state (what @ai-sdk/react's Chat does with React state);
// every chunk the transport produces is recorded and validated with ai's own
// `uiMessageChunkSchema`, and every socket message is appended to WSGATE_FRAMES for the
// Python side to validate against the protocol's schemas.

import assert from "node:assert/strict";
import { appendFileSync } from "node:fs";
import { test } from "node:test";

import {
  WsgateChatTransport,
  createChunkMapper,
  toFinishReason,
  toWireMessages,
} from "../../../wsgate/web/wsgate-ai-sdk.js";

import { TestChat, ai, assistant, chunkSchema } from "./ai_helpers.mjs";
import { control, sleep, until } from "./helpers.mjs";

// --- helpers ------------------------------------------------------------------------------

/** The user message that makes the mock answer as `script` says (protocol/MOCK.md). */
const ask = (script) => ({ text: JSON.stringify({ mock: script }) });

const words = (n, tag) =>
  Array.from({ length: n }, (_, i) => `${tag}${i}`).join(" ") + " 👩‍💻 🇫🇷 done.";

let sockets = 0;
const received = []; // every frame received, on every socket, parsed

/** Records every message both ways in WSGATE_FRAMES (the Python side validates them). */
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    this.index = sockets++;
    super.addEventListener("message", (event) => {
      this.record("in", event.data);
      received.push(JSON.parse(event.data));
    });
  }

  record(dir, data) {
    const line = JSON.stringify({ socket: this.index, dir, data });
    appendFileSync(process.env.WSGATE_FRAMES, line + "\n");
  }

  send(data) {
    this.record("out", data);
    super.send(data);
  }
}

function transportFor(init = {}) {
  return new WsgateChatTransport({
    url: process.env.WSGATE_URL,
    model: "mock",
    connect: { WebSocket: RecordingWebSocket, reconnect: { minDelayMs: 10, maxDelayMs: 100 } },
    ...init,
  });
}

/** A ChatTransport that records (and checks against ai's schema) what `inner` produces. */
function recording(inner) {
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
  const transport = {
    chunks,
    inner,
    get resumeStreamIsReplay() {
      return inner.resumeStreamIsReplay;
    },
    sendMessages: async (options) => tap(await inner.sendMessages(options)),
    reconnectToStream: async (options) => tap(await inner.reconnectToStream(options)),
    close: () => inner.close(),
    async validate() {
      for (const chunk of chunks) {
        const result = await chunkSchema.validate(chunk);
        assert.ok(result.success, `not a UIMessageChunk: ${JSON.stringify(chunk)}`);
      }
    },
  };
  return transport;
}

/** Close the transport's gateway when the test ends, passed or not (else Node waits on it). */
function closing(t, transport) {
  t.after(() => transport.close());
  return transport;
}

const textOf = (message) =>
  (message?.parts ?? [])
    .filter((p) => p.type === "text")
    .map((p) => p.text)
    .join("");
const toolParts = (chat) =>
  chat.messages.flatMap((m) => m.parts.filter((p) => p.type.startsWith("tool-")));

// --- pure parts (no gateway) --------------------------------------------------------------

test("UI messages become the wire's OpenAI shaped messages", () => {
  const part = (type, toolCallId, state, fields) => ({ type, toolCallId, state, ...fields });
  const messages = [
    { id: "s", role: "system", parts: [{ type: "text", text: "Be brief." }] },
    {
      id: "u1",
      role: "user",
      parts: [
        { type: "text", text: "What is " },
        { type: "text", text: "this?" },
        { type: "file", mediaType: "image/png", url: "data:image/png;base64,AAAA" },
      ],
    },
    {
      id: "a1",
      role: "assistant",
      parts: [
        { type: "step-start" },
        { type: "reasoning", text: "hmm", state: "done" },
        { type: "text", text: "Let me look.", state: "done" },
        part("tool-lookup", "c1", "output-available", { input: { q: 1 }, output: 2 }),
        part("tool-broken", "c2", "output-error", { input: '{"q": ', errorText: "x" }),
        part("tool-pending", "c3", "input-available", { input: {} }),
        { type: "step-start" },
        part("dynamic-tool", "c4", "output-available", { toolName: "dyn", output: "ok" }),
        { type: "step-start" },
        { type: "text", text: "It is ", state: "done" },
        { type: "text", text: "a cat.", state: "done" },
      ],
    },
    { id: "u2", role: "user", parts: [{ type: "text", text: "Thanks" }] },
  ];
  assert.deepEqual(toWireMessages(messages), [
    { role: "system", content: "Be brief." },
    {
      role: "user",
      content: [
        { type: "text", text: "What is " },
        { type: "text", text: "this?" },
        { type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } },
      ],
    },
    {
      role: "assistant",
      content: "Let me look.",
      tool_calls: [
        { id: "c1", type: "function", function: { name: "lookup", arguments: '{"q":1}' } },
        { id: "c2", type: "function", function: { name: "broken", arguments: '{"q": ' } },
      ],
    },
    { role: "tool", tool_call_id: "c1", content: "2" },
    { role: "tool", tool_call_id: "c2", content: "x" },
    {
      role: "assistant",
      tool_calls: [{ id: "c4", type: "function", function: { name: "dyn", arguments: "{}" } }],
    },
    { role: "tool", tool_call_id: "c4", content: "ok" },
    { role: "assistant", content: "It is a cat." },
    { role: "user", content: "Thanks" },
  ]);
});

test("gateway frames map to UI message chunks one to one", async () => {
  const f = (type, seq, fields = {}) => ({ type, stream_id: "s", seq, ...fields });
  const frames = [
    f("stream.started", 1, { message_id: "m1", model: "mock", epoch: "e" }),
    f("delta.role", 2, { role: "assistant" }),
    f("delta.reasoning", 3, { text: "think" }),
    f("delta.text", 5, { text: "Hel", first_seq: 4 }),
    f("delta.text", 6, { text: "lo" }),
    f("tool_call.start", 7, { call_id: "a", index: 0, name: "f" }),
    f("tool_call.arguments_chunk", 8, { call_id: "a", chunk: '{"x"' }),
    f("tool_call.snapshot", 9, { call_id: "a", partial: { x: null } }),
    f("tool_call.arguments_chunk", 10, { call_id: "a", chunk: ": 1}" }),
    f("tool_call.start", 11, { call_id: "b", index: 1, name: "g" }),
    f("tool_call.end", 12, { call_id: "a", name: "f", arguments: { x: 1 } }),
    f("tool_call.error", 13, { call_id: "b", name: "g", code: "bad", message: "no", raw: "{" }),
    f("structured", 14, { value: [1] }),
    f("usage", 15, { input_tokens: 3, output_tokens: 4 }),
    { type: "telemetry", stream_id: "s", tokens: 1, tokens_per_s: 1 },
    f("finish", 16, { reason: "tool_calls" }),
  ];
  const mapper = createChunkMapper({ idPrefix: "p" });
  const out = frames.map((frame) => mapper.frame(frame));
  assert.deepEqual(
    out.map((o) => o.terminal),
    frames.map((frame) => frame.type === "finish"),
  );
  const wsgate = { messageId: "m1", model: "mock" };
  const usage = { inputTokens: 3, outputTokens: 4, totalTokens: 7 };
  const chunks = out.flatMap((o) => o.chunks);
  assert.deepEqual(chunks, [
    { type: "start", messageMetadata: { wsgate } },
    { type: "start-step" },
    { type: "reasoning-start", id: "p-reasoning-0" },
    { type: "reasoning-delta", id: "p-reasoning-0", delta: "think" },
    { type: "reasoning-end", id: "p-reasoning-0" },
    { type: "text-start", id: "p-text-1" },
    { type: "text-delta", id: "p-text-1", delta: "Hel" },
    { type: "text-delta", id: "p-text-1", delta: "lo" },
    { type: "text-end", id: "p-text-1" },
    { type: "tool-input-start", toolCallId: "a", toolName: "f" },
    { type: "tool-input-delta", toolCallId: "a", inputTextDelta: '{"x"' },
    { type: "tool-input-delta", toolCallId: "a", inputTextDelta: ": 1}" },
    { type: "tool-input-start", toolCallId: "b", toolName: "g" },
    { type: "tool-input-available", toolCallId: "a", toolName: "f", input: { x: 1 } },
    { type: "tool-input-error", toolCallId: "b", toolName: "g", input: "{", errorText: "bad: no" },
    { type: "data-structured", data: [1] },
    { type: "finish-step" },
    {
      type: "finish",
      finishReason: "tool-calls",
      messageMetadata: { wsgate: { ...wsgate, usage, finishReason: "tool_calls" } },
    },
  ]);
  for (const chunk of chunks) {
    assert.ok((await chunkSchema.validate(chunk)).success, JSON.stringify(chunk));
  }

  const ended = (frame) => {
    const m = createChunkMapper({ idPrefix: "q", messageMetadata: false });
    m.frame(f("stream.started", 1, { message_id: "m", model: "mock" }));
    m.frame(f("delta.text", 2, { text: "x" }));
    return m.frame(frame);
  };
  // A cancel that reaches the mapper came from elsewhere (the chat's own stop ends its
  // stream with `abort` before): a finish, which ai 7's chat records.
  assert.deepEqual(ended(f("finish", 3, { reason: "cancelled" })), {
    chunks: [
      { type: "text-end", id: "q-text-0" },
      { type: "finish-step" },
      { type: "finish", finishReason: "other" },
    ],
    terminal: true,
  });
  const failure = { code: "upstream_error", message: "boom", retryable: true };
  assert.deepEqual(ended(f("error", 3, failure)), {
    chunks: [
      { type: "text-end", id: "q-text-0" },
      { type: "error", errorText: "upstream_error: boom" },
    ],
    terminal: true,
  });
  // A refusal (no seq) is left to wsgate.js, which ends or retries the stream.
  const refusal = { type: "error", stream_id: "s", ...failure };
  assert.deepEqual(ended(refusal), { chunks: [], terminal: false });
  assert.deepEqual(
    ["stop", "length", "tool_calls", "content_filter", "error", "timeout", "cancelled", "x"].map(
      toFinishReason,
    ),
    ["stop", "length", "tool-calls", "content-filter", "error", "error", "other", "other"],
  );
});

test("a structured section closes the text before it, so the parts keep the answer's order", async () => {
  const f = (type, seq, fields = {}) => ({ type, stream_id: "s", seq, ...fields });
  const frames = [
    f("stream.started", 1, { message_id: "m1", model: "mock" }),
    f("delta.text", 2, { text: "A " }),
    f("structured", 3, { value: { x: 1 } }),
    f("delta.text", 4, { text: " B" }),
    f("structured.error", 5, { code: "structured_invalid", message: "bad", raw: "{" }),
    f("delta.text", 6, { text: " C" }),
    f("finish", 7, { reason: "stop" }),
  ];
  const mapper = createChunkMapper({ idPrefix: "p" });
  const chunks = frames.flatMap((frame) => mapper.frame(frame).chunks);
  // Through ai's own message builder, as a chat does.
  const transport = {
    sendMessages: async () =>
      new ReadableStream({
        start(controller) {
          for (const chunk of chunks) controller.enqueue(chunk);
          controller.close();
        },
      }),
    reconnectToStream: async () => null,
  };
  const chat = new TestChat({ transport });
  await chat.sendMessage({ text: "hi" });
  const parts = assistant(chat).parts.filter((p) => p.type !== "step-start");
  assert.deepEqual(
    parts.map((p) => [p.type, p.text ?? p.data]),
    [
      ["text", "A "],
      ["data-structured", { x: 1 }],
      ["text", " B"],
      ["data-structured-error", { code: "structured_invalid", message: "bad", raw: "{" }],
      ["text", " C"],
    ],
  );
});

test("a cancel from elsewhere finishes the chat's message; it is no abort", async () => {
  const f = (type, seq, fields = {}) => ({ type, stream_id: "s", seq, ...fields });
  const mapper = createChunkMapper({ idPrefix: "p" });
  const chunks = [
    f("stream.started", 1, { message_id: "m1", model: "mock" }),
    f("delta.text", 2, { text: "half an ans" }),
    f("finish", 3, { reason: "cancelled" }),
  ].flatMap((frame) => mapper.frame(frame).chunks);
  const transport = {
    sendMessages: async () =>
      new ReadableStream({
        start(controller) {
          for (const chunk of chunks) controller.enqueue(chunk);
          controller.close();
        },
      }),
    reconnectToStream: async () => null,
  };
  let finished;
  const chat = new TestChat({ transport, onFinish: (info) => (finished = info) });
  await chat.sendMessage({ text: "hi" });
  assert.equal(chat.status, "ready");
  assert.equal(finished.isAbort, false);
  assert.equal(finished.finishReason, "other");
  assert.equal(finished.message.metadata.wsgate.finishReason, "cancelled");
  assert.equal(textOf(assistant(chat)), "half an ans");
});

test("stop while the first connect stalls ends the request at once", async (t) => {
  // A socket that never opens, nor fails: only the 45 s watchdog would end the wait.
  class Stalled extends EventTarget {
    constructor() {
      super();
      this.readyState = 0;
    }
    send() {}
    close() {}
  }
  const url = "ws://127.0.0.1:9/v1/ws"; // never dialled: the socket is Stalled
  const transport = closing(t, recording(transportFor({ url, connect: { WebSocket: Stalled } })));
  const chat = new TestChat({ transport });
  const sent = chat.sendMessage({ text: "hello" });
  await sleep(50);
  const stoppedAt = Date.now();
  await chat.stop();
  await sent;
  assert.ok(Date.now() - stoppedAt < 1000, `stop took ${Date.now() - stoppedAt} ms`);
  assert.notEqual(chat.status, "streaming");
  assert.notEqual(chat.status, "submitted");
});

test("an unreachable gateway is the chat error and the next request connects again", async (t) => {
  let opened = 0;
  class Counting extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      opened += 1;
    }
  }
  const transport = closing(
    t,
    recording(transportFor({ url: "ws://127.0.0.1:9/v1/ws", connect: { WebSocket: Counting } })),
  );
  const chat = new TestChat({ transport });
  await chat.sendMessage({ text: "hello" });
  assert.equal(chat.status, "error");
  assert.equal(chat.error.code, "connect_failed");
  chat.clearError();
  await chat.sendMessage({ text: "again" });
  assert.equal(chat.error.code, "connect_failed");
  assert.equal(opened, 2);
});

// --- against a gateway --------------------------------------------------------------------

test("the answer streams into one text part equal to the mock's text", async (t) => {
  const text = "Hello, wsgate! 👩‍💻 日本語 and 🇫🇷, then a long tail of words.";
  const transport = closing(t, recording(transportFor()));
  const finishes = [];
  const chat = new TestChat({ transport, onFinish: (event) => finishes.push(event) });
  await chat.sendMessage(ask({ text, chunk: 3, tokens_per_s: 100, tag: "text" }));

  assert.equal(chat.status, "ready");
  assert.equal(chat.error, undefined);
  const message = assistant(chat);
  assert.deepEqual(
    message.parts.map((p) => p.type),
    ["step-start", "text"],
  );
  assert.equal(message.parts[1].text, text);
  assert.equal(message.parts[1].state, "done");
  assert.equal(message.metadata.wsgate.finishReason, "stop");
  assert.equal(message.metadata.wsgate.model, "mock");
  assert.match(message.metadata.wsgate.messageId, /./);
  assert.ok(message.metadata.wsgate.usage.outputTokens > 0);
  assert.equal(finishes.length, 1);
  assert.equal(finishes[0].finishReason, "stop");
  assert.equal(finishes[0].isError, false);

  const types = transport.chunks.map((c) => c.type);
  assert.deepEqual(types.slice(0, 3), ["start", "start-step", "text-start"]);
  assert.deepEqual(types.slice(-3), ["text-end", "finish-step", "finish"]);
  assert.equal(transport.chunks.filter((c) => c.type === "text-start").length, 1);
  const deltas = transport.chunks.filter((c) => c.type === "text-delta").map((c) => c.delta);
  assert.equal(deltas.join(""), text);
  // One text-delta per delta.text frame (not one per animation frame, as wsgate.js's onText).
  const frames = received.filter((f) => f.type === "delta.text").map((f) => f.text);
  assert.deepEqual(deltas, frames);
  assert.ok(frames.length > 1);
  await transport.validate();
});

test("a tool call round trip shows one tool part with the parsed input", async (t) => {
  const args = '{"city": "Paris", "days": 2}';
  const answer = "It is 21 °C in Paris.";
  const requests = [];
  const calls = [];
  const transport = closing(t, recording(
    transportFor({
      request: {
        tools: [{ type: "function", function: { name: "get_weather", parameters: {} } }],
      },
      prepareRequest: ({ request }) => {
        requests.push(request);
        if (request.messages.at(-1).role !== "tool") return undefined;
        // The mock reads its script from the last user message: script the second turn.
        const next = { role: "user", content: ask({ text: answer, tag: "tool-2" }).text };
        return { request: { ...request, messages: [...request.messages, next] } };
      },
    }),
  ));
  const chat = new TestChat({
    transport,
    sendAutomaticallyWhen: ai.lastAssistantMessageIsCompleteWithToolCalls,
    onToolCall: ({ toolCall }) => {
      calls.push(toolCall);
      // Not awaited: the chat applies it once the current chunk is processed.
      const { toolName: tool, toolCallId } = toolCall;
      chat.addToolOutput({ tool, toolCallId, output: { celsius: 21 } });
    },
  });
  const first = ask({
    text: "Checking the weather.",
    tool_calls: [{ name: "get_weather", arguments: args }],
    args_chunk: 5,
    tag: "tool-1",
  });
  await chat.sendMessage(first);
  const lastText = () => assistant(chat)?.parts.findLast((p) => p.type === "text")?.text;
  await until(() => chat.status === "ready" && lastText() === answer, "the second turn");

  assert.equal(calls.length, 1);
  assert.equal(calls[0].toolName, "get_weather");
  assert.deepEqual(calls[0].input, { city: "Paris", days: 2 });
  const callId = calls[0].toolCallId;
  assert.match(callId, /^call_mock_/);
  const tools = toolParts(chat);
  assert.equal(tools.length, 1, JSON.stringify(chat.messages));
  assert.equal(tools[0].type, "tool-get_weather");
  assert.equal(tools[0].state, "output-available");
  assert.deepEqual(tools[0].input, { city: "Paris", days: 2 });
  assert.deepEqual(tools[0].output, { celsius: 21 });
  // Both turns went into one assistant message, a step each.
  assert.deepEqual(
    assistant(chat).parts.map((p) => p.type),
    ["step-start", "text", "tool-get_weather", "step-start", "text"],
  );

  const inputs = transport.chunks
    .filter((c) => c.type === "tool-input-delta")
    .map((c) => c.inputTextDelta);
  assert.equal(inputs.join(""), args);
  assert.ok(inputs.length > 1);
  assert.equal(transport.chunks.filter((c) => c.type === "tool-input-available").length, 1);
  const finishes = transport.chunks.filter((c) => c.type === "finish").map((c) => c.finishReason);
  assert.deepEqual(finishes, ["tool-calls", "stop"]);

  assert.equal(requests.length, 2);
  assert.deepEqual(requests[1].messages, [
    { role: "user", content: first.text },
    {
      role: "assistant",
      content: "Checking the weather.",
      tool_calls: [
        {
          id: callId,
          type: "function",
          function: { name: "get_weather", arguments: '{"city":"Paris","days":2}' },
        },
      ],
    },
    { role: "tool", tool_call_id: callId, content: '{"celsius":21}' },
  ]);
  assert.equal(requests[1].tools[0].function.name, "get_weather");
  await transport.validate();
});

test("stop sends cancel and ends the chat stream at once", async (t) => {
  const transport = closing(t, recording(transportFor()));
  const chat = new TestChat({ transport });
  const sent = chat.sendMessage(ask({ words: 400, tokens_per_s: 50, tag: "stop" }));
  await until(() => textOf(assistant(chat)).length > 0, "the first text");
  const stopped = Date.now();
  await chat.stop();
  await sent;
  assert.ok(Date.now() - stopped < 1000, "stop() resolved within a second");
  assert.equal(chat.status, "ready");
  assert.equal(chat.error, undefined);
  const text = textOf(assistant(chat));
  assert.ok(text.length > 0);
  await sleep(200);
  assert.equal(textOf(assistant(chat)), text, "no text after stop");
  // The chat stops reading at the abort: what it read ends without a finish or an error.
  assert.equal(transport.chunks.filter((c) => c.type === "finish" || c.type === "error").length, 0);
  await transport.validate();
});

test("a failure mid stream becomes the chat error and keeps the text so far", async (t) => {
  const transport = closing(t, recording(transportFor()));
  const errors = [];
  const finishes = [];
  const chat = new TestChat({
    transport,
    onError: (e) => errors.push(e),
    onFinish: (e) => finishes.push(e),
  });
  await chat.sendMessage(ask({ text: "one two three", error_after: 2, tag: "fail" }));
  assert.equal(chat.status, "error");
  assert.match(chat.error.message, /^upstream_error: /);
  assert.equal(errors.length, 1);
  assert.equal(finishes.length, 1);
  assert.equal(finishes[0].isError, true);
  assert.equal(textOf(assistant(chat)), "one two");
  assert.deepEqual(
    transport.chunks.slice(-2).map((c) => c.type),
    ["text-end", "error"],
  );
  await transport.validate();
});

test("a provider HTTP error and an unknown model become the chat error", async (t) => {
  const transport = closing(t, recording(transportFor()));
  const chat = new TestChat({ transport });
  await chat.sendMessage(ask({ status: 400, tag: "http" }));
  assert.equal(chat.status, "error");
  assert.match(chat.error.message, /^upstream_rejected: /);

  chat.clearError();
  await chat.sendMessage({ text: "hello" }, { body: { model: "no-such-model" } });
  assert.equal(chat.status, "error");
  assert.match(chat.error.message, /^unknown_model: /);
  assert.equal(transport.chunks.at(-1).type, "error");
  await transport.validate();
});

test("a dropped socket is resumed and the final text is exact", async (t) => {
  const text = words(60, "drop");
  const transport = closing(t, recording(transportFor()));
  const reconnects = [];
  transport.inner.gateway.on("reconnected", (ready) => reconnects.push(ready));
  const chat = new TestChat({ transport });
  const sent = chat.sendMessage(ask({ text, tokens_per_s: 40, tag: "drop" }));
  await until(() => textOf(assistant(chat)).length > 20, "some text");
  assert.equal(await control("drop"), 1);
  await sent;
  assert.equal(reconnects.length, 1);
  assert.equal(chat.status, "ready");
  assert.equal(textOf(assistant(chat)), text);
  assert.equal(transport.chunks.filter((c) => c.type === "start").length, 1);
  assert.equal(transport.chunks.at(-1).finishReason, "stop");
  await transport.validate();
});

test("a new chat with the same id resumes the unfinished generation", async (t) => {
  const text = words(50, "again");
  const transport = closing(t, recording(transportFor()));
  const first = new TestChat({ transport });
  const sent = first.sendMessage(ask({ text, tokens_per_s: 40, tag: "again" }));
  await until(() => textOf(assistant(first)).length > 20, "some text");
  const generation = transport.inner.activeGeneration(first.id);
  assert.match(generation.messageId, /./);
  assert.ok(generation.lastSeq > 2);

  // A remounted useChat: a new Chat with the same id and the messages it was given.
  const second = new TestChat({ id: first.id, transport, messages: [first.messages[0]] });
  await second.resumeStream();
  assert.equal(second.status, "ready");
  assert.equal(second.messages.length, 2);
  assert.equal(textOf(assistant(second)), text);
  await sent;
  assert.equal(textOf(assistant(first)), text);

  // Nothing left to resume: reconnectToStream says null and resumeStream changes nothing.
  assert.equal(transport.inner.activeGeneration(first.id), undefined);
  assert.equal(await transport.inner.reconnectToStream({ chatId: first.id }), null);
  const idle = new TestChat({ transport });
  await idle.resumeStream();
  assert.equal(idle.status, "ready");
  assert.equal(idle.messages.length, 0);
  await transport.validate();
});

test("a reloaded page resumes the generation from its resume store", async (t) => {
  const text = words(50, "reload");
  const store = new Map(); // what sessionStorage would keep across the reload
  const before = closing(t, recording(transportFor({ resumeStore: store })));
  const chat = new TestChat({ transport: before });
  const sent = chat.sendMessage(ask({ text, tokens_per_s: 40, tag: "reload" }));
  await until(() => textOf(assistant(chat)).length > 20, "some text");
  before.close(); // the page goes away: its socket closes, the generation goes on
  await sent;
  assert.notEqual(textOf(assistant(chat)), text);
  assert.ok(store.has(chat.id));

  const after = closing(t, recording(transportFor({ resumeStore: store })));
  const reloaded = new TestChat({ id: chat.id, transport: after, messages: [chat.messages[0]] });
  await reloaded.resumeStream();
  assert.equal(reloaded.status, "ready");
  assert.equal(textOf(assistant(reloaded)), text);
  assert.equal(store.size, 0);
  await before.validate();
  await after.validate();
});
