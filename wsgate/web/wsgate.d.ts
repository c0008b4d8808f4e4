// Declarations of wsgate.js, the wsgate.v1 browser client (hand-written: keep them equal to
// the module; its header comment has the decisions). The frame types come from protocol.d.ts,
// which `wsgate schema` generates from the protocol's JSON Schemas.

import type {
  AgentOptions,
  AuthRefreshed,
  ChatRequest,
  DeltaText,
  ErrorFrame,
  FinishFrame,
  GoAway,
  Heartbeat,
  Ready,
  ServerFrame,
  StartOptions,
  StructuredFrame,
  ToolAwaiting,
  ToolCallEndFrame,
  ToolError,
  ToolResultFrame,
  UsageFrame,
} from "./protocol.js";

export * from "./protocol.js";

/** A frame of one stream: every gateway frame but the connection's own. */
export type StreamFrame = Exclude<ServerFrame, Ready | AuthRefreshed | GoAway | Heartbeat>;

/** Codes of the failures the client itself reports (the wire's are in PROTOCOL.md §9.2). */
export type LocalErrorCode =
  | "stream_lost" // the socket dropped before the start was acknowledged, or it is not resumable
  | "connect_failed" // the first connection failed or closed before its ready (final)
  | "connection_lost" // a later socket closed and will not be reopened: reconnect is false, a
  //                     fatal close code came without an error frame, or maxAttempts failed
  | "closed" // gw.close() before the first ready, or stream() on a closed Gateway
  | "auth_unavailable" // the auth option threw, rejected or took over authTimeoutMs
  | "ticket_unavailable" // the ticket option threw, rejected or took over authTimeoutMs
  | "stream_exists" // stream() with the streamId of an open stream
  | "bad_frame" // a coalesced frame repeated seqs already seen: its text cannot be cut by seq
  | "stream_ended" // toolResult()/toolError(): the stream ended before the gateway took it
  | "frame_too_large"; // toolResult(): the frame would pass ready.limits.max_frame_bytes

export declare class WsgateError extends Error {
  constructor(
    code: string,
    message: string,
    details?: {
      retryable?: boolean;
      closeCode?: number;
      streamId?: string;
      frame?: ErrorFrame;
      retryAfterMs?: number;
      cause?: unknown;
    },
  );
  /** The WsgateError of a wire `error` frame (and the close code that followed it). */
  static fromFrame(frame: ErrorFrame, closeCode?: number | null): WsgateError;
  readonly name: "WsgateError";
  /** A wire code (`auth_failed`, `slow_consumer`, ...) or a LocalErrorCode. */
  readonly code: LocalErrorCode | (string & {});
  readonly retryable: boolean;
  /** The WebSocket close code that ended the connection, when one did. */
  readonly closeCode: number | null;
  readonly streamId: string | null;
  /** The `error` frame this error reports, when it came from the wire. */
  readonly frame: ErrorFrame | null;
  readonly retryAfterMs: number | null;
}

/** Full-jitter exponential backoff (all optional; these are the defaults). */
export interface ReconnectOptions {
  /** Base of the backoff: attempt n waits below min(maxDelayMs, minDelayMs * 2^(n-1)). @defaultValue 250 */
  minDelayMs?: number;
  /** @defaultValue 10000 */
  maxDelayMs?: number;
  /** Failed attempts in a row before the Gateway gives up (`connection_lost`). @defaultValue Infinity */
  maxAttempts?: number;
  /** How long a connection must stay up after its `ready` to count as a success and reset
   * the attempt count; one that dies sooner is a failed attempt. @defaultValue 5000 */
  stableMs?: number;
}

/** What the client needs of a WebSocket (the browser's, Node's global one, `ws`, ...). */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open" | "message" | "close" | "error", listener: (event: any) => void): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectOptions {
  /** A token (API key or JWT) sent as the first `auth` frame on every (re)connect; a function
   * is asked again each time, and before `ready.auth.expires_in_ms` passes (a refresh). */
  auth?: string | (() => string | Promise<string>);
  /** Called before every (re)connect; the URL gets `?ticket=` (PROTOCOL.md §2.3). With it
   * (or an `auth` function) a 4502 `auth_expired` close reconnects with new credentials. */
  ticket?: () => string | Promise<string>;
  /** How long `ticket()` and `auth()` may take; one slower (or hung) is a failed attempt
   * (`ticket_unavailable`, `auth_unavailable`). Keep it below the gateway's auth.timeout_s.
   * @defaultValue 10000 */
  authTimeoutMs?: number;
  /** @defaultValue true (with the ReconnectOptions defaults) */
  reconnect?: boolean | ReconnectOptions;
  /** @defaultValue globalThis.WebSocket */
  WebSocket?: WebSocketConstructor;
  /** Runs text updates; @defaultValue requestAnimationFrame (with a 250 ms fallback for hidden
   * tabs) when present, else setTimeout(cb, 16). */
  scheduleFrame?: (callback: () => void) => void;
  /** No frame at all for this long (heartbeats included) gives the socket up and reconnects;
   * 0 turns the watchdog off. @defaultValue 45000 (three default heartbeat intervals) */
  heartbeatTimeoutMs?: number;
}

export interface ReconnectingEvent {
  /** 1 for the first attempt after a drop; reset once a connection has stayed up
   * `stableMs` after its `ready`. (A goaway handover is no attempt: no event.) */
  attempt: number;
  delayMs: number;
  /** The close code of the socket that dropped (1006 for a failed attempt). */
  code: number;
}

export interface CloseEvent {
  code: number;
  reason: string;
  /** Why the Gateway ended, or null after gw.close(). */
  error: WsgateError | null;
}

export interface GatewayEvents {
  /** Every `ready` frame, the first and each reconnect's (a goaway handover's too). */
  ready: Ready;
  reconnecting: ReconnectingEvent;
  /** A `ready` after the first, once the open streams' resumes are out. */
  reconnected: Ready;
  goaway: GoAway;
  heartbeat: Heartbeat;
  "auth.refreshed": AuthRefreshed;
  /** Once, when the Gateway ends for good. */
  close: CloseEvent;
  /** A connection-level `error` frame (no stream_id). */
  error: ErrorFrame;
}

export type GatewayState = "connecting" | "open" | "draining" | "reconnecting" | "closed";

/** queued: waiting for a connection; starting: start sent; running: has a message id;
 * detached: its socket dropped, a resume follows the next ready; resuming: resume sent. */
export type StreamPhase = "queued" | "starting" | "running" | "detached" | "resuming" | "ended";

/** What a `tools` handler is told besides the call's arguments. */
export interface ToolContext {
  callId: string;
  name: string;
  stream: Stream;
  /** Aborted when the stream ends (finish, cancel, loss, gw.close()). */
  signal: AbortSignal;
}

/**
 * Runs one client-side tool call (the agent loop, PROTOCOL.md §8.5): `args` are the call's
 * `tool_call.end` arguments (a JSON object). What it returns (or resolves to) is sent as the
 * call's result (`undefined` as null); a throw or rejection as an `error` result with code
 * `tool_error` and the error's message.
 */
export type ToolHandler = (args: any, context: ToolContext) => unknown;

export interface StreamOptions {
  /** The wire `options` of the `start` frame. */
  options?: StartOptions;
  /** The wire `options.agent` (merged over `options.agent`). With `tools`, `client_tools`
   * defaults to true. */
  agent?: AgentOptions;
  /** Handlers by tool name: at each `tool.awaiting`, every awaited call to one of them runs
   * once (per Stream object, across reconnects) and its result is sent. Calls to tools
   * without a handler are left to `toolResult()` / `toolError()`. Declare the tools in the
   * request (`request.tools`): the model needs their schemas. */
  tools?: Record<string, ToolHandler>;
  /** @defaultValue "s1", "s2", ... unique per Gateway */
  streamId?: string;
  /** Aborting it cancels the stream. */
  signal?: AbortSignal;
  /** The whole answer so far and what was added since the last call: at most once per
   * scheduled frame, and once more, synchronously, before onFinish or onError. */
  onText?(text: string, delta: string): void;
  /** The same for `delta.reasoning`. */
  onReasoning?(text: string, delta: string): void;
  /** Every frame of the stream as received, after dedupe, uncoalesced. */
  onFrame?(frame: StreamFrame): void;
  /** Each `tool_call.end`, exactly once per call_id. */
  onToolCall?(end: ToolCallEndFrame): void;
  onStructured?(frame: StructuredFrame): void;
  onFinish?(finish: FinishFrame): void;
  /** An `error` frame of the stream (a failure, before its finish; or a refusal, which ends
   * it), or a WsgateError (`stream_lost`, or the Gateway's end). Refusals of tool results
   * are not: they go to onToolResultRefused and the stream goes on. */
  onError?(error: ErrorFrame | WsgateError): void;
  /** A tool result was refused (`unknown_tool_call`, `duplicate_tool_result`,
   * `tool_result_too_large`; `bad_frame` while one is in flight): `callId` is the result's
   * call (null when no result was in flight); its promise rejects with the same error. The
   * stream goes on. */
  onToolResultRefused?(error: WsgateError, callId: string | null): void;
}

/** A generation to follow with `gw.resume()`, as its `stream.started` named it. */
export interface Generation {
  messageId: string;
  /** Sent back so that a different log is refused (`resume_epoch_changed`). */
  epoch?: string | null;
  /** The highest seq already seen; @defaultValue 0 (everything, from `stream.started`) */
  lastSeq?: number;
  /** Fold the replayed text into one `delta.text` (PROTOCOL.md §4.3). @defaultValue false */
  snapshot?: boolean;
}

/** A finish reason, or "error" for a stream that ended without a finish (refused or lost). */
export type EndReason = FinishFrame["reason"] | "error";

export interface StreamResult {
  reason: EndReason;
  text: string;
  finish: FinishFrame | null;
  error: ErrorFrame | WsgateError | null;
}

/** Coalesced answer text: at most one per scheduled frame, and before any later frame. */
export interface TextEvent {
  type: "text";
  text: string;
  delta: string;
}

/** A stream that ended by a client-side failure (`stream_lost`, the Gateway's end). */
export interface ClientErrorEvent {
  type: "client_error";
  error: WsgateError;
}

export type StreamEvent = TextEvent | ClientErrorEvent | Exclude<StreamFrame, DeltaText>;

export declare class Stream implements AsyncIterable<StreamEvent> {
  private constructor();
  readonly id: string;
  /** From `stream.started`. */
  readonly messageId: string | null;
  readonly epoch: string | null;
  readonly text: string;
  readonly reasoning: string;
  /** The `tool_call.end` frames, in order (of every turn). */
  readonly toolCalls: ToolCallEndFrame[];
  /** The `tool.result` frames, in order (of every turn). */
  readonly toolResults: ToolResultFrame[];
  /** The results this Stream object sent that the gateway took, by call id: what the model
   * got (a `tool.result` answering the client's own result need not repeat it). */
  readonly sentResults: ReadonlyMap<string, { content?: unknown; error?: ToolError }>;
  /** The model turn (1, then each `turn.started`'s). */
  readonly turn: number;
  /** The last `tool.awaiting`, until the next `turn.started` (or the end); else null. */
  readonly awaiting: ToolAwaiting | null;
  readonly usage: UsageFrame | null;
  readonly finish: FinishFrame | null;
  readonly error: ErrorFrame | WsgateError | null;
  /** The highest seq received (a coalesced frame counts as its seq). */
  readonly lastSeq: number;
  readonly phase: StreamPhase;
  /** Resolves when the stream ends (finish, refusal, loss, gw.close()); never rejects. */
  readonly done: Promise<StreamResult>;
  /** Sends `cancel` (or, not sent yet, drops the start); returns `done`. */
  cancel(): Promise<StreamResult>;
  /**
   * Answers a call of the stream's `tool.awaiting` (PROTOCOL.md §4.5) with `content` (any
   * JSON; undefined is null). Results go out one at a time, in the order they were given,
   * only while the stream is live (after a resume: once its replay is complete), and again
   * after a reconnect until one is taken. Resolves with the `tool.result` that took it (what
   * was sent is in `sentResults`); rejects with a WsgateError (a refusal: `unknown_tool_call`,
   * `duplicate_tool_result`, `tool_result_too_large`, or a `bad_frame` for it, the stream
   * going on; `frame_too_large`; `stream_ended`) or a TypeError (no valid result: a lone
   * surrogate, a BigInt, a bad call id). An unhandled rejection is not reported.
   */
  toolResult(callId: string, content: unknown): Promise<ToolResultFrame>;
  /** Answers a call with an error (`code` matches `^[a-z][a-z0-9_]{0,63}$`; `message` is cut
   * to 4096 characters): the model reads `{"error": {"code", "message"}}`. As toolResult. */
  toolError(callId: string, code: string, message: string): Promise<ToolResultFrame>;
  /** Text events and every other frame; ends after the finish, a refusal or a loss.
   * Leaving the loop early cancels the stream. */
  [Symbol.asyncIterator](): AsyncIterator<StreamEvent>;
}

export declare class Gateway {
  private constructor();
  readonly url: string;
  readonly state: GatewayState;
  /** The latest `ready` frame. */
  readonly readyFrame: Ready | null;
  /** The first `ready`; rejects with a WsgateError when the first connection fails. */
  readonly ready: Promise<Ready>;
  on<E extends keyof GatewayEvents>(event: E, listener: (payload: GatewayEvents[E]) => void): this;
  off<E extends keyof GatewayEvents>(event: E, listener: (payload: GatewayEvents[E]) => void): this;
  /** Start a stream: now, or once a connection may start it. Throws WsgateError `closed` on a
   * closed Gateway and `stream_exists` for the streamId of an open stream. */
  stream(request: ChatRequest, options?: StreamOptions): Stream;
  /** Follow a generation this Gateway did not start (a reloaded page, another tab) by its
   * message id: a `resume` from `lastSeq`, as soon as a connection may send it. The Stream
   * then behaves as one from `stream()` (a refusal such as `unknown_message` ends it). */
  resume(generation: Generation, options?: Omit<StreamOptions, "options" | "agent">): Stream;
  /** Close with 1000 for good: open streams end with reason "cancelled", no finish, no error. */
  close(): Promise<void>;
}

/** Open a Gateway; `url` may be ws(s)://, http(s):// or, in a page, relative ("/v1/ws"). */
export declare function connect(url: string | URL, options?: ConnectOptions): Gateway;

/** What a close code tells the client (PROTOCOL.md §12.3), before credentials: a Gateway
 * with a `ticket` or an `auth` function still reconnects after 4502, and any after 4501
 * `auth_timeout`. */
export declare function closeAction(code: number): "reconnect" | "stop";

/** A full-jitter backoff wait, in ms, for attempt n (from 1). */
export declare function backoffDelay(
  attempt: number,
  policy?: { minDelayMs: number; maxDelayMs: number },
  random?: () => number,
): number;
