// Declarations of wsgate-ai-sdk.js: an AI SDK `ChatTransport` over one wsgate WebSocket.
//
// The types are structural, so this file needs no `ai` package: the chunk union below is a
// subset of ai's `UIMessageChunk` (ai 7), and `WsgateChatTransport` is assignable to ai's
// `ChatTransport<UIMessage>` (tests/web/test_ai_sdk.py type-checks exactly that against the
// pinned `ai`). Wire types come from protocol.d.ts (generated from the JSON Schemas), the
// Gateway from wsgate.d.ts.

import type { ChatRequest, ServerFrame, StartOptions, ToolError } from "./protocol.js";
import type { ConnectOptions, Gateway, ToolHandler } from "./wsgate.js";

/** AI SDK finish reasons (ai 7 `FinishReason`). */
export type UIFinishReason =
  | "stop"
  | "length"
  | "content-filter"
  | "tool-calls"
  | "error"
  | "interrupted"
  | "other";

/** What the default `messageMetadata` attaches to `start` and `finish`. */
export interface WsgateMessageMetadata {
  wsgate: {
    messageId?: string;
    model?: string;
    usage?: { inputTokens: number; outputTokens: number; totalTokens: number };
    /** The wire finish reason (PROTOCOL.md §10), on `finish` only. */
    finishReason?: string;
  };
}

/** What a `messageMetadata` function is told, at `start` and at `finish`. */
export interface WsgateMetadataInfo {
  messageId: string | undefined;
  model: string | undefined;
  usage: { inputTokens: number; outputTokens: number; totalTokens: number } | undefined;
  /** The wire finish reason; undefined at `start`. */
  reason: string | undefined;
}

/** The UI message stream chunks this transport produces (a subset of ai's UIMessageChunk). */
export type WsgateUIMessageChunk =
  | { type: "start"; messageMetadata?: unknown }
  | { type: "start-step" }
  | { type: "text-start"; id: string }
  | { type: "text-delta"; id: string; delta: string }
  | { type: "text-end"; id: string }
  | { type: "reasoning-start"; id: string }
  | { type: "reasoning-delta"; id: string; delta: string }
  | { type: "reasoning-end"; id: string }
  | {
      type: "tool-input-start";
      toolCallId: string;
      toolName: string;
      providerExecuted?: boolean;
      dynamic?: boolean;
    }
  | { type: "tool-input-delta"; toolCallId: string; inputTextDelta: string }
  | {
      type: "tool-input-available";
      toolCallId: string;
      toolName: string;
      input: unknown;
      providerExecuted?: boolean;
      dynamic?: boolean;
    }
  | {
      type: "tool-input-error";
      toolCallId: string;
      toolName: string;
      input: unknown;
      errorText: string;
      providerExecuted?: boolean;
      dynamic?: boolean;
    }
  | {
      type: "tool-output-available";
      toolCallId: string;
      output: unknown;
      providerExecuted?: boolean;
      dynamic?: boolean;
    }
  | {
      type: "tool-output-error";
      toolCallId: string;
      errorText: string;
      providerExecuted?: boolean;
      dynamic?: boolean;
    }
  | { type: "data-structured"; data: unknown }
  | { type: "data-structured-error"; data: { code: string; message: string; raw: string } }
  | { type: "finish-step" }
  | { type: "finish"; finishReason?: UIFinishReason; messageMetadata?: unknown }
  | { type: "error"; errorText: string }
  | { type: "abort"; reason?: string };

/** The parts of an AI SDK UI message that the transport reads (ai's UIMessage fits). */
export interface UIMessageLike {
  id: string;
  role: "system" | "user" | "assistant";
  parts: Array<{ type: string; [key: string]: unknown }>;
}

/** One wire message, as `toWireMessages` builds it. */
export type WireMessage = ChatRequest["messages"][number];

/** What `prepareRequest` is given; it may return the request and options to send instead. */
export interface WsgatePrepareRequestContext<UI_MESSAGE extends UIMessageLike = UIMessageLike> {
  trigger: "submit-message" | "regenerate-message";
  chatId: string;
  messageId: string | undefined;
  messages: UI_MESSAGE[];
  headers: Record<string, string> | Headers | undefined;
  body: object | undefined;
  metadata: unknown;
  /** The wire request built from the defaults, the body and `toWireMessages(messages)`. */
  request: ChatRequest;
  options: StartOptions;
}

/** Where a chat's unfinished generation is kept for `reconnectToStream` (a Map fits). */
export interface WsgateResumeStore {
  get(chatId: string): { messageId: string; epoch?: string } | undefined;
  set(chatId: string, generation: { messageId: string; epoch?: string }): unknown;
  delete(chatId: string): unknown;
}

export interface WsgateChatTransportInit<UI_MESSAGE extends UIMessageLike = UIMessageLike> {
  /** A Gateway to share; `close()` leaves it open. One of `gateway` and `url`. */
  gateway?: Gateway;
  /** The gateway's WebSocket URL: the transport connects at first use and owns the Gateway. */
  url?: string | URL;
  /** wsgate.js `connect()` options (auth, ticket, reconnect, WebSocket, ...) with `url`. */
  connect?: ConnectOptions;
  /** The model alias of every request, unless the request's `body.model` names another. */
  model?: string;
  /** More wire request fields for every request (`tools`, `temperature`, ...). */
  request?: Partial<Omit<ChatRequest, "messages">>;
  /** Wire start options; `on_disconnect` defaults to "continue" here (resumable reloads). */
  options?: StartOptions;
  prepareRequest?: (
    context: WsgatePrepareRequestContext<UI_MESSAGE>,
  ) =>
    | { request?: ChatRequest; options?: StartOptions }
    | undefined
    | PromiseLike<{ request?: ChatRequest; options?: StartOptions } | undefined>;
  /** The agent loop (PROTOCOL.md §8.5): handlers by tool name, run by wsgate.js once per
   * awaited call, their results sent on the same stream (the start's
   * `options.agent.client_tools` defaults to true). Each `tool.result` is the tool part's
   * output; the next turn is a new step of the same assistant message. Answer a call here or
   * in the chat's `onToolCall`, not both. */
  tools?: Record<string, ToolHandler>;
  /** Mark tool parts `dynamic` (for apps that declare no tools). Default false. */
  dynamicTools?: boolean;
  /** The metadata of `start` and `finish`; `false` for none. Default: WsgateMessageMetadata. */
  messageMetadata?: false | ((info: WsgateMetadataInfo) => unknown);
  /** Keeps each chat's unfinished generation (default: a Map, this page's life). */
  resumeStore?: WsgateResumeStore;
}

/** An AI SDK ChatTransport streaming over one wsgate WebSocket. */
export declare class WsgateChatTransport<UI_MESSAGE extends UIMessageLike = UIMessageLike> {
  constructor(init: WsgateChatTransportInit<UI_MESSAGE>);
  /** Always true: a reconnect replays the generation from its start. */
  readonly resumeStreamIsReplay: boolean;
  /** The Gateway (connected at first use when the transport was made from `url`). */
  readonly gateway: Gateway;
  /** The chat's unfinished generation, or undefined. */
  activeGeneration(
    chatId: string,
  ): { messageId: string | undefined; epoch?: string; lastSeq: number } | undefined;
  sendMessages: (
    options: {
      trigger: "submit-message" | "regenerate-message";
      chatId: string;
      messageId: string | undefined;
      messages: UI_MESSAGE[];
      abortSignal: AbortSignal | undefined;
    } & WsgateChatRequestOptions,
  ) => Promise<ReadableStream<WsgateUIMessageChunk>>;
  reconnectToStream: (
    options: { chatId: string; abortSignal?: AbortSignal } & WsgateChatRequestOptions,
  ) => Promise<ReadableStream<WsgateUIMessageChunk> | null>;
  /**
   * Closes the Gateway if the transport made it; a later request connects again. The AI SDK
   * never calls this (ai 7's AbstractChat has no dispose): the app must.
   */
  close: () => void;
}

/** ai's ChatRequestOptions: `body.model` and `body.options` override the defaults. */
export interface WsgateChatRequestOptions {
  headers?: Record<string, string> | Headers;
  body?: object;
  metadata?: unknown;
}

/** UI messages -> the wire's OpenAI-shaped messages (PROTOCOL.md §4.1). */
export declare function toWireMessages(messages: UIMessageLike[]): WireMessage[];

/** The AI SDK's finish reason for a wsgate one (`other` for one this file predates). */
export declare function toFinishReason(reason: string): UIFinishReason;

export declare function defaultMessageMetadata(info: WsgateMetadataInfo): WsgateMessageMetadata;

/** A pure mapper of one stream's gateway frames to UI message chunks. */
export declare function createChunkMapper(init: {
  idPrefix: string;
  dynamicTools?: boolean;
  /** Tools the gateway runs (`options.agent.server_tools`): their calls are providerExecuted. */
  serverTools?: Iterable<string>;
  /** The client's own result of a call (wsgate.js `Stream.sentResults`), for a `tool.result`
   * that does not repeat it. */
  resultOf?: (callId: string) => { content?: unknown; error?: ToolError } | undefined;
  messageMetadata?: false | ((info: WsgateMetadataInfo) => unknown);
}): {
  frame(frame: ServerFrame): { chunks: WsgateUIMessageChunk[]; terminal: boolean };
  close(): WsgateUIMessageChunk[];
};
