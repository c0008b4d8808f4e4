/**
 * wsgate-ai-sdk.js — an AI SDK `ChatTransport` that streams over one wsgate WebSocket.
 *
 * Owns three translations and nothing else: the AI SDK's UI messages (parts) into the wire's
 * OpenAI-shaped `messages` (`toWireMessages`); wsgate.v1 gateway frames into UI message
 * stream chunks, one frame to its chunks, in order (`createChunkMapper`, pure, no I/O); and
 * the `ChatTransport` methods onto a `Gateway` of `./wsgate.js` (`WsgateChatTransport`):
 * `sendMessages` is a `start`, the abort signal a `cancel`, `reconnectToStream` a `resume`
 * by `message_id`. It must not speak the wire itself (framing, reconnects, backoff, seq
 * dedup and resuming across socket drops belong to wsgate.js), and must not import `ai` (it
 * only produces plain chunk objects, so it runs with any AI SDK that has the chunk protocol
 * of ai 5 and later). Tools: without the agent loop the app runs them, in `onToolCall` /
 * `addToolOutput`, and the results go back to the model in the next request's messages.
 * With it (PROTOCOL.md §8.5; the `tools` option, handlers by name, which wsgate.js runs once
 * per call and whose results it sends as `tool_result`), one stream holds every turn: each
 * `tool.result` becomes the tool part's output and the next turn's text continues in the
 * same assistant message, a step per turn.
 *
 * Chunk protocol (ai 7, `UIMessageChunk`): `start`, `start-step`; `text-start`/`-delta`/`-end`
 * per run of `delta.text`; `reasoning-start`/`-delta`/`-end` per run of `delta.reasoning`;
 * `tool-input-start`/`-delta`/`-available` from `tool_call.start`/`arguments_chunk`/`end`;
 * `tool-input-error` from `tool_call.error`; `tool-output-available` / `tool-output-error`
 * from `tool.result` (its content, or its error as `code: message`; `providerExecuted` when a
 * server-side tool answered, and on the input chunks of `options.agent.server_tools`);
 * `finish-step` then `start-step` from `turn.started`; `data-structured` /
 * `data-structured-error` from `structured` / `structured.error`; `finish-step` and `finish`
 * (with `finishReason` and, by default, `messageMetadata.wsgate` holding the usage and the
 * wsgate finish reason, so a cancel from elsewhere is `finishReason: "other"` with
 * `finishReason: "cancelled"` there); `error`; `abort` only for the chat's own stop (its
 * abort signal) and for `close()`.
 *
 * Resume (PROTOCOL.md §11.2): wsgate.js already resumes every open stream after a dropped
 * socket, so a chat's stream survives drops with no help from here. `reconnectToStream`
 * covers a *new* chat instance with the same `chatId` on this transport (a remounted
 * `useChat`, or a page reload when `resumeStore` outlives the page): it resumes the chat's
 * last unfinished generation (`gw.resume`) from `seq` 0 with `snapshot: true` (its text so
 * far as one delta, then the live tail) and says so with `resumeStreamIsReplay`, so the SDK
 * rebuilds the message from the replay. `null` when the chat has no unfinished generation
 * (none started here, or it ended). Generations default to `on_disconnect: "continue"`, so
 * a generation outlives a dropped socket or a closed page (for `store.resume_window_s`) and
 * the resume ends with the full answer. Not covered: a page whose `resumeStore` did not
 * survive (the default Map dies with the page), a generation whose log expired or was
 * trimmed (the chat gets that refusal as its error), and a message the app persisted half
 * done (the replay adds a second assistant message after it).
 */

import { connect } from "./wsgate.js";

/** wsgate finish reason (PROTOCOL.md §10) -> AI SDK `FinishReason`. */
const FINISH_REASONS = Object.freeze({
  stop: "stop",
  length: "length",
  tool_calls: "tool-calls",
  content_filter: "content-filter",
  error: "error",
  timeout: "error",
});

/** Tool-part states whose call has an answer the model must see (OpenAI needs one per call). */
const ANSWERED = new Set(["output-available", "output-error", "output-denied"]);

/** The AI SDK's finish reason for a wsgate one; `other` for a reason this file predates. */
export function toFinishReason(reason) {
  return Object.hasOwn(FINISH_REASONS, reason) ? FINISH_REASONS[reason] : "other";
}

/** The default `messageMetadata`: `{wsgate: {messageId, model, usage?, finishReason?}}`. */
export function defaultMessageMetadata(info) {
  const wsgate = { messageId: info.messageId, model: info.model };
  if (info.usage !== undefined) wsgate.usage = info.usage;
  if (info.reason !== undefined) wsgate.finishReason = info.reason;
  return { wsgate };
}

function textOf(parts) {
  return (parts ?? [])
    .filter((p) => p.type === "text")
    .map((p) => p.text)
    .join("");
}

function userContent(parts) {
  const list = parts ?? [];
  if (list.every((p) => p.type !== "file")) return textOf(list);
  const content = [];
  for (const part of list) {
    if (part.type === "text") content.push({ type: "text", text: part.text });
    else if (part.type === "file" && String(part.mediaType).startsWith("image/")) {
      content.push({ type: "image_url", image_url: { url: part.url } });
    } else if (part.type === "file") {
      const file = { file_data: part.url };
      if (part.filename) file.filename = part.filename;
      content.push({ type: "file", file });
    }
  }
  return content;
}

function isToolPart(part) {
  return part.type === "dynamic-tool" || part.type.startsWith("tool-");
}

function toolCallOf(part) {
  const name = part.type === "dynamic-tool" ? part.toolName : part.type.slice("tool-".length);
  // A `tool-input-error` part keeps the raw argument text, which never parsed (§5.10).
  const args = typeof part.input === "string" ? part.input : JSON.stringify(part.input ?? {});
  return { id: part.toolCallId, type: "function", function: { name, arguments: args } };
}

function toolAnswerOf(part) {
  let content;
  if (part.state === "output-available") {
    content = typeof part.output === "string" ? part.output : JSON.stringify(part.output ?? null);
  } else if (part.state === "output-error") {
    content = part.errorText ?? "The tool call failed.";
  } else {
    content = "The tool call was denied.";
  }
  return { role: "tool", tool_call_id: part.toolCallId, content };
}

/** One assistant UI message -> wire messages: per step, an assistant message then its answers. */
function assistantMessages(parts) {
  const steps = [[]];
  for (const part of parts ?? []) {
    if (part.type === "step-start") steps.push([]);
    else steps[steps.length - 1].push(part);
  }
  const out = [];
  for (const step of steps) {
    const text = textOf(step);
    const answered = step.filter((p) => isToolPart(p) && ANSWERED.has(p.state));
    if (text === "" && answered.length === 0) continue;
    const message = { role: "assistant" };
    if (text !== "" || answered.length === 0) message.content = text;
    if (answered.length > 0) message.tool_calls = answered.map(toolCallOf);
    out.push(message, ...answered.map(toolAnswerOf));
  }
  return out;
}

/**
 * AI SDK UI messages -> the wire's `messages` (PROTOCOL.md §4.1, the OpenAI chat shape).
 *
 * Text parts are joined into a string `content` (with file parts: OpenAI content parts,
 * `image_url` for images, `file` otherwise). An assistant message becomes one wire message
 * per step (`step-start` parts separate them) with its text and `tool_calls`, each answered
 * call followed by its `role: "tool"` message (output as JSON text, or the error text).
 * Calls still waiting for an answer are left out, as are reasoning, source and data parts.
 */
export function toWireMessages(messages) {
  const out = [];
  for (const message of messages) {
    if (message.role === "system") out.push({ role: "system", content: textOf(message.parts) });
    else if (message.role === "user") {
      out.push({ role: "user", content: userContent(message.parts) });
    } else if (message.role === "assistant") out.push(...assistantMessages(message.parts));
  }
  return out;
}

/**
 * A pure mapper from one stream's gateway frames to UI message chunks.
 *
 * `frame(f)` returns `{chunks, terminal}`: the chunks `f` stands for, and whether the stream
 * is over for the chat (its `finish`, or an `error` frame with `seq`: the chat stops at the
 * error, so the `finish` `error` that follows is not waited for). Other frames (`delta.role`,
 * `tool_call.snapshot`, `tool.awaiting`, `tool.executing`, `telemetry`, refusals, types this
 * file predates) give no chunk. State: the open text and reasoning part, the names of the
 * calls, the usage: O(calls) per stream. `serverTools`: the names the gateway runs
 * (`options.agent.server_tools`): their calls are `providerExecuted`. `resultOf(callId)`:
 * the client's own result (`{content}` or `{error}`, wsgate.js `sentResults`), for a
 * `tool.result` that does not repeat it; one known nowhere (a replay of another page's
 * result) gives no chunk: the part keeps its input, and no invented output reaches the
 * next request's history.
 *
 * @param {{idPrefix: string, dynamicTools?: boolean, messageMetadata?: false | Function,
 *   serverTools?: Iterable<string>, resultOf?: Function}} init
 */
export function createChunkMapper(init) {
  const { idPrefix, dynamicTools = false, messageMetadata, serverTools, resultOf } = init;
  const metadataOf =
    messageMetadata === false ? () => undefined : (messageMetadata ?? defaultMessageMetadata);
  const names = new Map();
  const info = { messageId: undefined, model: undefined, usage: undefined, reason: undefined };
  let started = false;
  let parts = 0;
  let text = null;
  let reasoning = null;

  const withMetadata = (chunk) => {
    const metadata = metadataOf({ ...info });
    return metadata === undefined ? chunk : { ...chunk, messageMetadata: metadata };
  };
  const begin = (out) => {
    if (started) return;
    started = true;
    out.push(withMetadata({ type: "start" }), { type: "start-step" });
  };
  const closeText = (out) => {
    if (text !== null) out.push({ type: "text-end", id: text });
    text = null;
  };
  const closeReasoning = (out) => {
    if (reasoning !== null) out.push({ type: "reasoning-end", id: reasoning });
    reasoning = null;
  };
  const nextId = (kind) => `${idPrefix}-${kind}-${parts++}`;
  const dynamic = dynamicTools ? { dynamic: true } : {};
  const server = new Set(serverTools ?? []);
  const executed = (name) => (server.has(name) ? { providerExecuted: true } : {});

  const handlers = {
    "stream.started"(f, out) {
      info.messageId = f.message_id;
      info.model = f.model;
      begin(out);
    },
    "stream.resumed"(f) {
      info.messageId = f.message_id; // `start` waits for the replayed `stream.started` (seq 1)
    },
    "delta.text"(f, out) {
      begin(out);
      closeReasoning(out);
      if (text === null) {
        text = nextId("text");
        out.push({ type: "text-start", id: text });
      }
      out.push({ type: "text-delta", id: text, delta: f.text });
    },
    "delta.reasoning"(f, out) {
      begin(out);
      closeText(out);
      if (reasoning === null) {
        reasoning = nextId("reasoning");
        out.push({ type: "reasoning-start", id: reasoning });
      }
      out.push({ type: "reasoning-delta", id: reasoning, delta: f.text });
    },
    "tool_call.start"(f, out) {
      begin(out);
      closeText(out);
      closeReasoning(out);
      names.set(f.call_id, f.name);
      const chunk = { type: "tool-input-start", toolCallId: f.call_id, toolName: f.name };
      out.push({ ...chunk, ...executed(f.name), ...dynamic });
    },
    "tool_call.arguments_chunk"(f, out) {
      if (names.has(f.call_id)) {
        out.push({ type: "tool-input-delta", toolCallId: f.call_id, inputTextDelta: f.chunk });
      }
    },
    "tool_call.end"(f, out) {
      begin(out);
      out.push({
        type: "tool-input-available",
        toolCallId: f.call_id,
        toolName: f.name,
        input: f.arguments,
        ...executed(f.name),
        ...dynamic,
      });
    },
    "tool_call.error"(f, out) {
      begin(out);
      closeText(out);
      const toolName = f.name ?? names.get(f.call_id) ?? "unknown";
      out.push({
        type: "tool-input-error",
        toolCallId: f.call_id,
        toolName,
        input: f.raw,
        errorText: `${f.code}: ${f.message}`,
        ...executed(toolName),
        ...dynamic,
      });
    },
    // The agent loop (§8.5): a call's result, taken for the next turn, is the tool's output.
    "tool.result"(f, out) {
      const toolCallId = f.call_id;
      if (!names.has(toolCallId)) return; // no tool part to put it in (the chat would throw)
      begin(out);
      closeText(out);
      closeReasoning(out);
      const by = f.source === "server" ? { providerExecuted: true } : {};
      const echoed = f.error != null || Object.hasOwn(f, "content");
      const result = echoed ? f : f.source === "client" ? resultOf?.(toolCallId) : undefined;
      if (result == null) return;
      if (result.error != null) {
        const errorText = `${result.error.code}: ${result.error.message}`;
        out.push({ type: "tool-output-error", toolCallId, errorText, ...by, ...dynamic });
      } else {
        const output = result.content ?? null;
        out.push({ type: "tool-output-available", toolCallId, output, ...by, ...dynamic });
      }
    },
    // The next turn of the same stream: a new step of the same assistant message.
    "turn.started"(f, out) {
      begin(out);
      closeText(out);
      closeReasoning(out);
      out.push({ type: "finish-step" }, { type: "start-step" });
    },
    // A section ends the text before it: the text after it is a new part, so `parts` keep
    // the answer's order (text, section, text).
    structured(f, out) {
      begin(out);
      closeText(out);
      closeReasoning(out);
      out.push({ type: "data-structured", data: f.value });
    },
    "structured.error"(f, out) {
      begin(out);
      closeText(out);
      closeReasoning(out);
      const data = { code: f.code, message: f.message, raw: f.raw };
      out.push({ type: "data-structured-error", data });
    },
    usage(f) {
      const { input_tokens: inputTokens, output_tokens: outputTokens } = f;
      info.usage = { inputTokens, outputTokens, totalTokens: inputTokens + outputTokens };
    },
    error(f, out) {
      // Only a failure (with `seq`) ends the stream here; a refusal (no `seq`) ends it through
      // wsgate.js, which also retries a start that crossed a goaway or ignores a late cancel.
      if (typeof f.seq !== "number") return false;
      closeText(out);
      closeReasoning(out);
      out.push({ type: "error", errorText: errorText(f) });
      return true;
    },
    finish(f, out) {
      begin(out);
      closeText(out);
      closeReasoning(out);
      info.reason = f.reason;
      // Also for `cancelled`: this chat's own stop never gets here (the transport ends its
      // stream with `abort` at once), so this cancel came from elsewhere (another tab by
      // message_id, a drain deadline). ai 7's chat ignores an `abort` chunk, which would
      // leave the message with no finish; `other`, with the wsgate reason in the metadata.
      const finish = { type: "finish", finishReason: toFinishReason(f.reason) };
      out.push({ type: "finish-step" }, withMetadata(finish));
      return true;
    },
  };

  return {
    frame(f) {
      const out = [];
      const handler = Object.hasOwn(handlers, f.type) ? handlers[f.type] : undefined;
      const terminal = handler === undefined ? false : handler(f, out) === true;
      return { chunks: out, terminal };
    },
    /** The chunks that close what is open, when the stream ends without a frame saying so. */
    close() {
      const out = [];
      closeText(out);
      closeReasoning(out);
      return out;
    },
  };
}

/** A wsgate error (a wire `error` frame or a WsgateError) as the chat's error text. */
function errorText(error) {
  return `${error.code}: ${error.message}`;
}

/**
 * Local WsgateError codes that mean the connection, not the request, failed: the stream
 * errors with a `TypeError` naming the network, which AbstractChat records as a disconnect
 * (`isDisconnect`) and may resume with `resumeStream()`.
 */
const CONNECTION_LOST = new Set(["stream_lost", "connect_failed", "connection_lost"]);

/**
 * `new Chat({transport: new WsgateChatTransport({url, model: "mock"})})`.
 *
 * `gateway` (a `Gateway` of wsgate.js, shared and not closed by `close()`) or `url` (and
 * `connect`: its options; the transport then owns the gateway and connects at first use).
 * `model`, `request` (more wire request fields: `tools`, `temperature`, ...) and `options`
 * (wire `StartOptions`, `on_disconnect: "continue"` unless given) are the defaults of every
 * request; a request's `body` overrides them (`body.model`, `body.options`, any other key a
 * request field). `prepareRequest(ctx)` may return `{request, options}` to replace what was
 * built. `tools` (handlers by name, wsgate.js's StreamOptions.tools) runs the agent loop:
 * the start's `options.agent.client_tools` defaults to true, and each awaited call to one
 * of them runs once and is answered on the same stream (answer the calls either there or in
 * the chat's `onToolCall`, not both). `dynamicTools` marks tool parts `dynamic` (for apps
 * that declare no tools).
 * `messageMetadata(info)` (or `false`) replaces the default metadata of `start`/`finish`.
 * `resumeStore` (a Map by default; any object with `get`/`set`/`delete` of plain objects,
 * e.g. over `sessionStorage`) keeps each chat's unfinished generation, `{messageId, epoch}`,
 * written at its `stream.started` and deleted at its end. Headers are not used (a WebSocket
 * sends none after the upgrade; authenticate with the gateway's `auth` or `ticket`).
 */
export class WsgateChatTransport {
  #gateway;
  #owned;
  #url;
  #connectOptions;
  #defaults;
  #prepareRequest;
  #mapperOptions;
  #tools;
  #resumeStore;
  #live = new Map();
  #count = 0;

  constructor(init = {}) {
    const { gateway, url, connect: connectOptions, model, request, options, prepareRequest } = init;
    if (gateway === undefined && url === undefined) {
      throw new TypeError("WsgateChatTransport needs a `gateway` or a `url`");
    }
    this.#gateway = gateway;
    this.#owned = gateway === undefined;
    this.#url = url;
    this.#connectOptions = connectOptions ?? {};
    this.#defaults = {
      model,
      request: request ?? {},
      options: { on_disconnect: "continue", ...options },
    };
    this.#prepareRequest = prepareRequest;
    this.#mapperOptions = {
      dynamicTools: init.dynamicTools ?? false,
      messageMetadata: init.messageMetadata,
    };
    this.#tools = init.tools;
    this.#resumeStore = init.resumeStore ?? new Map();
  }

  /** A reconnect replays the generation from its start (`seq` 0): the SDK resets the message. */
  get resumeStreamIsReplay() {
    return true;
  }

  /**
   * The gateway this transport streams over. Made from `url`, it connects at first use, and
   * again at the next use once it has closed for good (wsgate.js never retries a connection
   * that failed before its first `ready`).
   */
  get gateway() {
    if (this.#owned && this.#gateway?.state === "closed") this.#gateway = undefined;
    this.#gateway ??= connect(this.#url, this.#connectOptions);
    return this.#gateway;
  }

  /** `{messageId, epoch, lastSeq}` of the chat's unfinished generation, or undefined. */
  activeGeneration(chatId) {
    const live = this.#live.get(chatId);
    if (live !== undefined) return { ...live };
    const kept = this.#resumeStore.get(chatId);
    return kept === undefined ? undefined : { ...kept, lastSeq: 0 };
  }

  async sendMessages(sendOptions) {
    const { trigger, chatId, messageId, messages, abortSignal, body } = sendOptions;
    abortSignal?.throwIfAborted();
    const { model, options, ...fields } = body ?? {};
    let request = {
      model: model ?? this.#defaults.model,
      messages: toWireMessages(messages),
      ...this.#defaults.request,
      ...fields,
    };
    let startOptions = { ...this.#defaults.options, ...options };
    if (this.#prepareRequest !== undefined) {
      const { headers, metadata } = sendOptions;
      const ctx = { trigger, chatId, messageId, messages, headers, body, metadata };
      const prepared = await this.#prepareRequest({ ...ctx, request, options: startOptions });
      request = prepared?.request ?? request;
      startOptions = prepared?.options ?? startOptions;
    }
    if (typeof request.model !== "string") {
      throw new TypeError("WsgateChatTransport: no `model` for the request");
    }
    const gw = await this.#ready(abortSignal);
    const serverTools = startOptions?.agent?.server_tools;
    const tools = this.#tools === undefined ? {} : { tools: this.#tools };
    const stream = { options: startOptions, signal: abortSignal, ...tools };
    return this.#pipe(chatId, abortSignal, serverTools, (handlers) =>
      gw.stream(request, { ...stream, ...handlers }),
    );
  }

  async reconnectToStream({ chatId, abortSignal }) {
    abortSignal?.throwIfAborted();
    const kept = this.#resumeStore.get(chatId);
    if (kept === undefined || typeof kept.messageId !== "string") return null;
    const gw = await this.#ready(abortSignal);
    const generation = { messageId: kept.messageId, epoch: kept.epoch, lastSeq: 0, snapshot: true };
    const tools = this.#tools === undefined ? {} : { tools: this.#tools };
    return this.#pipe(chatId, abortSignal, undefined, (handlers) =>
      gw.resume(generation, { signal: abortSignal, ...tools, ...handlers }),
    );
  }

  /**
   * Releases the gateway when this transport made it. The AI SDK never calls this (ai 7's
   * `AbstractChat` has no dispose): the app must, when it is done with the transport.
   */
  close() {
    if (this.#owned && this.#gateway !== undefined) {
      this.#gateway.close();
      this.#gateway = undefined;
    }
  }

  /** The gateway once `ready`; rejects at once when the chat stops during the wait. */
  async #ready(abortSignal) {
    const gw = this.gateway;
    if (abortSignal === undefined) {
      await gw.ready;
      return gw;
    }
    abortSignal.throwIfAborted();
    let onAbort;
    const aborted = new Promise((_, reject) => {
      onAbort = () => reject(abortSignal.reason);
      abortSignal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      await Promise.race([gw.ready, aborted]);
    } finally {
      abortSignal.removeEventListener("abort", onAbort);
    }
    return gw;
  }

  #remember(chatId, live, frame) {
    if (frame.type === "stream.started" || frame.type === "stream.resumed") {
      live.messageId = frame.message_id;
      live.epoch = frame.epoch ?? undefined;
      this.#live.set(chatId, live);
      this.#resumeStore.set(chatId, { messageId: live.messageId, epoch: live.epoch });
    }
    if (typeof frame.seq === "number" && frame.seq > live.lastSeq) live.lastSeq = frame.seq;
  }

  #forget(chatId, live) {
    if (this.#live.get(chatId) !== live) return;
    this.#live.delete(chatId);
    if (this.#resumeStore.get(chatId)?.messageId === live.messageId) {
      this.#resumeStore.delete(chatId);
    }
  }

  /**
   * One wsgate stream as a `ReadableStream<UIMessageChunk>`.
   *
   * Chunks are enqueued as frames arrive: AbstractChat reads continuously, and a consumer
   * that stops reading holds at most one stream's chunks. The stream ends at the mapper's
   * terminal frame; at the abort, with an `abort` chunk (the gateway's `finish` is not waited
   * for: wsgate.js sends the `cancel`); or when wsgate.js ends the stream without such a
   * frame: a refusal becomes an `error` chunk, `gw.close()` an `abort`, and a lost connection
   * errors the stream with a `TypeError` and keeps the generation for `reconnectToStream`.
   */
  #pipe(chatId, abortSignal, serverTools, open) {
    const idPrefix = `wsg${++this.#count}`;
    let handle;
    const resultOf = (callId) => handle?.sentResults?.get(callId);
    const mapper = createChunkMapper({ idPrefix, serverTools, resultOf, ...this.#mapperOptions });
    const live = { messageId: undefined, epoch: undefined, lastSeq: 0 };
    let controller;
    let closed = false;
    let ended = false;
    const readable = new ReadableStream({
      start: (c) => {
        controller = c;
      },
      cancel: () => {
        closed = true;
        if (!ended) handle?.cancel();
      },
    });
    const emit = (chunks) => {
      if (closed) return;
      for (const chunk of chunks) controller.enqueue(chunk);
    };
    const end = (chunks, forget = true) => {
      ended = true;
      if (forget) this.#forget(chatId, live);
      emit(chunks);
      if (!closed) {
        closed = true;
        controller.close();
      }
    };
    const onFrame = (frame) => {
      if (ended) return;
      this.#remember(chatId, live, frame);
      const { chunks, terminal } = mapper.frame(frame);
      if (terminal) end(chunks);
      else emit(chunks);
    };
    const onAbort = () => {
      if (!ended) end([...mapper.close(), { type: "abort", reason: "aborted" }]);
    };
    handle = open({ onFrame });
    abortSignal?.addEventListener("abort", onAbort, { once: true });
    handle.done.then(({ reason, error }) => {
      abortSignal?.removeEventListener("abort", onAbort);
      if (ended) return;
      if (error && CONNECTION_LOST.has(error.code) && live.messageId !== undefined) {
        ended = true;
        if (!closed) {
          closed = true;
          controller.error(new TypeError(`wsgate: network connection lost (${errorText(error)})`));
        }
      } else if (error) {
        end([...mapper.close(), { type: "error", errorText: errorText(error) }]);
      } else {
        // gw.close(): this page let go, the generation may go on (`on_disconnect: continue`)
        // and stays resumable from `resumeStore`, as after a page reload.
        end([...mapper.close(), { type: "abort", reason: reason ?? "cancelled" }], false);
      }
    });
    return readable;
  }
}
