/**
 * wsgate.js: the browser (and Node 20+) client of the wsgate.v1 protocol (protocol/PROTOCOL.md).
 *
 * Owns one WebSocket to a gateway and the many generation streams multiplexed over it:
 * authentication by the first `auth` frame or a `?ticket=` (§6.2), `stream()` as callbacks
 * and as an async iterator, text coalesced to at most one update per animation frame per
 * stream, `cancel` and AbortSignal, `heartbeat` (a watchdog) and `goaway` (§5.17), and
 * reconnecting with full-jitter exponential backoff that RESUMES the open streams (§11.2)
 * from the last `seq` they saw, dropping every frame already seen (§8). One ES module, no
 * build step, no dependency; it must not touch the DOM (the page renders), slice answer text
 * (the gateway sends whole code points, §3, and pieces are only ever joined), or invent wire
 * frames (a stream that ends without a `finish` has `finish: null`).
 *
 * Decisions (see wsgate.d.ts for the whole API):
 * - Until the first `ready`, any failure is final: `gw.ready` rejects with a WsgateError
 *   (`auth_failed` and closeCode 4501, `connect_failed` and 1006, ...), streams already
 *   created end with it, and nothing reconnects; call `connect()` again to retry.
 * - After that, a dropped socket reconnects unless its close code is fatal (1002, 1003, 1007,
 *   1008, 1010, 4500-4999) or `reconnect` is false. Two fatal codes are not, §12.3: 4502
 *   (auth_expired: "reconnect with new credentials") when a `ticket` or an `auth` function
 *   can supply them, and 4501 `auth_timeout` (our own ticket/auth call was slow, nothing was
 *   refused). Each attempt waits a uniform random time below min(maxDelayMs,
 *   minDelayMs * 2^(attempt-1)), plus `goaway.reconnect_after_ms` after a goaway, and at
 *   least a connection-level error's `retry_after_ms` (1013). A connection counts as a
 *   success only once it has stayed up `stableMs` after its `ready` (5 s): a socket that
 *   reaches `ready` and dies at once (slow_consumer on every resume, a proxy that cuts it)
 *   is a failed attempt, so the backoff grows and maxAttempts failures in a row end the
 *   Gateway (`connection_lost`).
 * - `ticket()` and `auth()` get `authTimeoutMs` (10 s) to answer; one that throws, rejects or
 *   hangs is a failed attempt (`ticket_unavailable`, `auth_unavailable`), never a hang. A
 *   failed credentials refresh is tried again (3 times, halfway to the expiry each time).
 * - On the new `ready`, every stream that has a message id and an epoch (it is logged), or
 *   that gw.resume() made, sends `resume` with its last seq. A retryable refusal
 *   (`store_unavailable`, `too_many_streams`) sends it again after a backoff wait, 4 times at
 *   most; `shutting_down` resumes it on the next connection; any other refusal
 *   (`resume_expired`, `unknown_message`, `resume_owner_lost`, ...) ends it with that error
 *   frame. A stream whose start had no `stream.started` answer yet when the socket dropped
 *   is lost (WsgateError `stream_lost`, retryable), unless its options carry an
 *   `idempotency_key`: then the same `start` is sent again and attaches to the same
 *   generation (§11.3). A stream not logged
 *   (`resumable: false`) is lost too. Streams not yet sent simply wait for the connection.
 *   `gw.resume({messageId, epoch, lastSeq, snapshot})` follows a generation this Gateway
 *   did not start (a reloaded page) the same way.
 * - After `goaway` (§5.17), no stream starts on that socket; `reconnect_after_ms` later a new
 *   connection opens (behind a load balancer, to another node) and takes the new streams and
 *   resumes, while the old socket carries its running streams to their end and is closed
 *   (1000) once it has none; a stream cut from it (its close, or a resumed stream's
 *   `shutting_down` refusal at its node's deadline, §6.1(5)) resumes on the new one. This
 *   handover fires "ready" and "reconnected", not "reconnecting". A start refused with
 *   `shutting_down` created nothing (§4.1): it waits for the new connection, that socket
 *   starts nothing more (goaway or not), and cancel() ends it locally. With `reconnect:
 *   false` new streams wait for the old socket's close, which then ends the Gateway.
 * - The seq dedupe (§8) drops every frame whose seq was seen; a coalesced frame that repeats
 *   some of them (first_seq <= last seq seen < seq) cannot be cut by seq and ends the stream
 *   with WsgateError `bad_frame` rather than duplicating text.
 * - `gw.close()` closes with 1000, for good: open streams end at once with reason
 *   "cancelled", `finish: null` and no error (no onFinish, no onError); the gateway cancels
 *   them (or keeps `on_disconnect: continue` ones generating, resumable elsewhere).
 * - Breaking out of `for await (... of stream)` cancels the stream, as leaving an SDK's
 *   stream early does. An iterator sees the frames from when it is made (make it before
 *   awaiting anything else); its first text event carries all the text so far.
 * - A connection-level `error` frame goes to the "error" event; one that announces a close
 *   (auth_*, slow_consumer, rate_limited, ...) also becomes the WsgateError of that close.
 * - A callback that throws does not disturb the client: the exception is rethrown in a
 *   microtask (the host reports it as uncaught).
 * - The agent loop (§8.5): `stream.toolResult()` / `toolError()` queue a `tool_result` and
 *   return a promise of the `tool.result` that took it (`sentResults` keeps what was sent:
 *   the gateway need not repeat a client's own result). A refusal (`unknown_tool_call`,
 *   `duplicate_tool_result`, `tool_result_too_large`: an error without `seq`) names no call
 *   (§4.5), so a stream has ONE result in flight at a time and a refusal answers that one
 *   (a `bad_frame` naming the stream then too: content the gateway cannot take):
 *   its promise rejects, `onToolResultRefused` fires, and the stream goes on. Results are
 *   sent only while the stream is live on its socket: acknowledged, and after a resume once
 *   the replay reached `stream.resumed.top_seq`, so a result the gateway took before a drop
 *   is seen (its `tool.result` in the replay) instead of sent twice; one still unanswered is
 *   sent again on the new socket (same `stream_id`: a resume keeps the stream's id). The
 *   `tools` option runs a handler once per call of each `tool.awaiting` (per Stream object,
 *   across reconnects) with the call's `tool_call.end` arguments and sends what it returns,
 *   a throw as an `error` result `tool_error`. A stream waiting for results is quiet but
 *   the connection is not: heartbeats feed the watchdog (§5.18), so nothing times out here;
 *   the gateway's `tool_timeout_ms` does (`tool_timeout`).
 *
 * Memory, bounded by what the application keeps: per open stream its `start` frame (the
 * request, until `stream.started`, or for good with an idempotency key: a re-send), its
 * answer text, its reasoning text, its `tool_call.end` frames and their call ids, its
 * `tool.result` frames, the tool results it sent (until taken, and `sentResults`), the last
 * usage/finish/error frame, and the text received since the last animation frame; per async
 * iterator the events its consumer has not read yet (at most the stream's frames). A finished
 * stream is forgotten by the Gateway (only the Stream object the application holds keeps its
 * text). Per Gateway: the open streams, the streams waiting for a connection, one socket (two
 * during a goaway handover), a few timers.
 */

const PROTOCOL = "wsgate.v1";
const RECONNECT_DEFAULTS = Object.freeze({
  minDelayMs: 250,
  maxDelayMs: 10000,
  maxAttempts: Infinity,
  stableMs: 5000,
});
const HEARTBEAT_TIMEOUT_MS = 45000; // three default heartbeat intervals (§2.1, §5.18)
const AUTH_TIMEOUT_MS = 10000; // the gateway's default auth.timeout_s (§6.2)
const MAX_RESUME_RETRIES = 4; // a retryable refusal of a resume (store_unavailable, ...)
const REFRESH_RETRIES = 3; // a failed credentials refresh, before the expiry
const HIDDEN_FRAME_FALLBACK_MS = 250; // requestAnimationFrame does not run in a hidden tab
const REFRESH_AT = 0.8; // refresh credentials at 80% of their announced life
const ERROR_CLOSE_GRACE_MS = 200; // after a socket error, how long its close may take to come
const MAX_TIMEOUT_MS = 2 ** 31 - 1; // setTimeout fires at once beyond this (~24.8 days)
// Refusals of a `tool_result` (§4.5): the stream goes on; the result's promise rejects.
const TOOL_REFUSALS = new Set([
  "unknown_tool_call",
  "duplicate_tool_result",
  "tool_result_too_large",
]);
const TOOL_ERROR_CODE = /^[a-z][a-z0-9_]{0,63}$/; // tool_result.error.code (§4.5)
const MAX_TOOL_MESSAGE = 4096; // code points of tool_result.error.message
const MAX_CALL_ID = 256; // code points of tool_result.call_id
// Connection-level errors that the gateway sends just before it closes (§9.2, §12.3).
const CLOSING_ERRORS = new Set([
  "auth_required",
  "auth_failed",
  "auth_timeout",
  "auth_expired",
  "slow_consumer",
  "too_many_bad_frames",
  "rate_limited",
]);

/** A failure the client reports: a wire `error` frame's code, or a local one. */
export class WsgateError extends Error {
  /**
   * @param {string} code  a wire code (§9.2) or a local one: stream_lost, connect_failed,
   *   connection_lost, closed, auth_unavailable, ticket_unavailable, stream_exists, bad_frame
   * @param {string} message
   * @param {{retryable?: boolean, closeCode?: number, streamId?: string, frame?: object,
   *   retryAfterMs?: number, cause?: unknown}} [details]
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "WsgateError";
    this.code = code;
    this.retryable = details.retryable ?? false;
    this.closeCode = details.closeCode ?? null;
    this.streamId = details.streamId ?? null;
    this.frame = details.frame ?? null;
    this.retryAfterMs = details.retryAfterMs ?? null;
  }

  /** The WsgateError of a wire `error` frame (and the close code that followed it). */
  static fromFrame(frame, closeCode = null) {
    return new WsgateError(frame.code, frame.message, {
      retryable: frame.retryable,
      closeCode: closeCode ?? undefined,
      streamId: frame.stream_id,
      frame,
      retryAfterMs: frame.retry_after_ms,
    });
  }
}

/**
 * What a close code tells the client (PROTOCOL.md §12.3): "stop" for the codes after which
 * it must not reconnect without a change, else "reconnect" (unknown 4000-4499 like 4000).
 * The Gateway makes two exceptions (Gateway._final): 4502 with a source of new credentials,
 * and 4501 after `auth_timeout`.
 */
export function closeAction(code) {
  if (code === 1002 || code === 1003 || code === 1007 || code === 1008 || code === 1010) {
    return "stop";
  }
  return code >= 4500 && code <= 4999 ? "stop" : "reconnect";
}

/** Full jitter: a uniform wait below min(maxDelayMs, minDelayMs * 2^(attempt - 1)). */
export function backoffDelay(attempt, policy = RECONNECT_DEFAULTS, random = Math.random) {
  const cap = Math.min(policy.maxDelayMs, policy.minDelayMs * 2 ** Math.max(0, attempt - 1));
  return Math.floor(random() * cap);
}

/** Open a Gateway: the socket connects at once; `await gw.ready` for its first `ready`. */
export function connect(url, options = {}) {
  return new Gateway(url, options);
}

function report(error) {
  queueMicrotask(() => {
    throw error;
  });
}

function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (error) {
    report(error);
  }
}

function reconnectPolicy(option) {
  if (option === false) return null;
  if (option === true || option === undefined) return RECONNECT_DEFAULTS;
  return { ...RECONNECT_DEFAULTS, ...option };
}

/** A start's wire `options`: `options` with `agent` merged in (`tools`: client_tools on). */
function startOptions({ options, agent, tools }) {
  if (agent === undefined && tools === undefined) return options;
  const base = tools === undefined ? {} : { client_tools: true };
  return { ...options, agent: { ...base, ...options?.agent, ...agent } };
}

const codePoints = (text) => {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
};

/** A `tool_result` frame's text; a TypeError for what the gateway would refuse as bad_frame. */
function toolResultText(streamId, callId, body) {
  if (typeof callId !== "string" || callId === "" || codePoints(callId) > MAX_CALL_ID) {
    throw new TypeError(`wsgate: a call id is a string of 1 to ${MAX_CALL_ID} characters`);
  }
  const frame = { type: "tool_result", stream_id: streamId, call_id: callId, ...body };
  // A lone surrogate is refused (§3): say so here rather than lose the result to a bad_frame.
  return JSON.stringify(frame, (key, value) => {
    if ((typeof value === "string" && !wellFormed(value)) || !wellFormed(key)) {
      throw new TypeError("wsgate: a tool result holds a lone surrogate");
    }
    return value;
  });
}

const wellFormed = (text) => typeof text.isWellFormed !== "function" || text.isWellFormed();

/** A thrown value as a tool error's message: well formed, at most MAX_TOOL_MESSAGE code points. */
function toolMessage(error) {
  let text = String(error instanceof Error ? error.message || error.name : error);
  if (typeof text.toWellFormed === "function") text = text.toWellFormed();
  if (codePoints(text) <= MAX_TOOL_MESSAGE) return text;
  return Array.from(text).slice(0, MAX_TOOL_MESSAGE).join("");
}

function defaultScheduleFrame() {
  const raf = globalThis.requestAnimationFrame;
  if (typeof raf !== "function") return (cb) => setTimeout(cb, 16);
  return (cb) => {
    let ran = false;
    const run = () => {
      if (!ran) {
        ran = true;
        cb();
      }
    };
    const timer = setTimeout(run, HIDDEN_FRAME_FALLBACK_MS);
    raf(() => {
      clearTimeout(timer);
      run();
    });
  };
}

function socketUrl(url) {
  const base = globalThis.location?.href;
  const resolved = base === undefined ? new URL(url) : new URL(url, base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved;
}

// A stream's phases. queued: waiting for a connection that may start it; starting: its
// `start` is out, no `stream.started` yet; running: it has a message id; detached: its
// socket dropped, a `resume` will go out on the next `ready`; resuming: the `resume` is out.
const QUEUED = "queued";
const STARTING = "starting";
const RUNNING = "running";
const DETACHED = "detached";
const RESUMING = "resuming";
const ENDED = "ended";

// phase -> event -> next phase; Stream._move applies it. "end" (finish, refusal, loss,
// gw.close()) is legal in every phase but ENDED, where every event is dropped.
const TRANSITIONS = {
  [QUEUED]: { send: STARTING, adopt: DETACHED, end: ENDED }, // adopt: gw.resume()
  [STARTING]: { started: RUNNING, requeue: QUEUED, end: ENDED }, // requeue: goaway, or a key
  [RUNNING]: { started: RUNNING, drop: DETACHED, end: ENDED }, // started: a replay from seq 1
  [DETACHED]: { resume: RESUMING, end: ENDED },
  [RESUMING]: { resumed: RUNNING, drop: DETACHED, end: ENDED },
  [ENDED]: {},
};

/** One generation stream; made by `Gateway.stream()`. */
class Stream {
  constructor(gateway, id, request, options) {
    this.id = id;
    this.messageId = null;
    this.epoch = null;
    this.text = "";
    this.reasoning = "";
    this.toolCalls = [];
    this.toolResults = [];
    this.sentResults = new Map(); // call_id -> {content} or {error}: this Stream's, taken
    this.turn = 1;
    this.awaiting = null; // the last tool.awaiting, until its turn.started
    this.usage = null;
    this.finish = null;
    this.error = null;
    this.lastSeq = 0;
    this.phase = QUEUED;
    this.done = new Promise((resolve) => {
      this._resolveDone = resolve;
    });
    this._gateway = gateway;
    this._frame = request === null ? null : { type: "start", stream_id: id, request };
    const wire = startOptions(options);
    if (this._frame !== null && wire !== undefined) this._frame.options = wire;
    this._snapshot = false; // resume with `snapshot` (gw.resume's option)
    this._callbacks = options;
    this._callIds = new Set(); // "turn:call_id" of the tool_call.end frames (ids may recur)
    this._turnCalls = new Map(); // call_id -> tool_call.end of the last turn that ended
    this._turnAnswered = new Set(); // call_ids of that turn with their tool.result
    this._tools = options.tools ?? null;
    this._handled = new Set(); // "turn:call_id" whose handler ran
    this._toolAbort = null; // aborted at the end: the handlers' signal
    this._results = []; // tool results not yet taken, oldest first; the first may be in flight
    this._echoes = new Map(); // call_id -> a result resent after a drop, taken before it
    this._replayTo = 0; // a resume's top_seq: the stream is live once lastSeq reaches it
    this._pendingText = [];
    this._pendingReasoning = [];
    this._iterators = new Set();
    this._record = null; // the socket record this stream's frames come from, while on one
    this._adopted = request === null; // made by gw.resume(): resumable without an epoch
    this._starts = 0; // `start`s sent and not refused: the generation may exist
    this._resumeRetries = 0;
    this._retryTimer = null;
    this._cancelRequested = false;
    this._signal = options.signal ?? null;
    this._onAbort = () => this.cancel();
    this._signal?.addEventListener("abort", this._onAbort, { once: true });
  }

  /** Send `cancel`; resolves as `done` does. */
  cancel() {
    if (this.phase === ENDED) return this.done;
    if (this.phase === QUEUED && this._starts === 0) {
      this._gateway._unqueue(this);
      this._end("cancelled");
      return this.done;
    }
    if (!this._cancelRequested) {
      this._cancelRequested = true;
      // Detached or waiting to be sent again: the cancel follows its resume or start.
      if (this.phase === STARTING || this.phase === RUNNING || this.phase === RESUMING) {
        this._gateway._send({ type: "cancel", stream_id: this.id }, this._record);
      }
    }
    return this.done;
  }

  /**
   * Answer a call of the stream's `tool.awaiting` with `content` (any JSON; undefined is
   * null), §4.5. Resolves with the `tool.result` that took it; rejects with a WsgateError:
   * the gateway's refusal (`unknown_tool_call`, `duplicate_tool_result`,
   * `tool_result_too_large`; the stream goes on), `frame_too_large` (not sent), or
   * `stream_ended`; with a TypeError for what is no valid result (a lone surrogate, a
   * BigInt). A rejection nobody handles is not reported as unhandled.
   */
  toolResult(callId, content) {
    return this._queueResult(callId, { content: content === undefined ? null : content });
  }

  /** Answer a call with an error: the model reads `{"error": {"code", "message"}}`. */
  toolError(callId, code, message) {
    if (typeof code !== "string" || !TOOL_ERROR_CODE.test(code)) {
      const error = new TypeError(`wsgate: a tool error code matches ${TOOL_ERROR_CODE}`);
      return Promise.reject(error);
    }
    return this._queueResult(callId, { error: { code, message: toolMessage(message) } });
  }

  [Symbol.asyncIterator]() {
    const it = { queue: [], pending: this.text ? [this.text] : [], waiter: null, closed: false };
    if (this.phase === ENDED) {
      // Made after the end: the text so far, then how it ended.
      this._iterFlush(it);
      if (this.error !== null) it.queue.push(this._iterEvent(this.error));
      if (this.finish !== null) it.queue.push(this.finish);
      it.closed = true;
    } else {
      this._iterators.add(it);
    }
    return {
      next: () => {
        if (it.queue.length) return Promise.resolve({ value: it.queue.shift(), done: false });
        if (it.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          it.waiter = resolve;
        });
      },
      return: () => {
        this._iterators.delete(it);
        it.closed = true;
        it.queue.length = 0;
        if (this.phase !== ENDED) this.cancel();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  // --- what the Gateway calls -------------------------------------------------------------

  _receive(frame) {
    this._take(frame);
    if (this.phase === ENDED) return;
    this._pumpResults();
    this._runTools();
  }

  _take(frame) {
    if (this.phase === ENDED) return;
    if (typeof frame.seq === "number") {
      if (frame.seq <= this.lastSeq) return; // already seen: a resume's replay, a re-attach (§8)
      if (typeof frame.first_seq === "number" && frame.first_seq <= this.lastSeq) {
        return this._overlap(frame); // text cannot be cut by seq: never duplicate it silently
      }
      this.lastSeq = frame.seq;
    }
    if (frame.type === "tool.result") this._took(frame); // sentResults, before onFrame reads it
    call(this._callbacks.onFrame, frame);
    switch (frame.type) {
      case "stream.started":
        this.messageId = frame.message_id;
        this.epoch = frame.epoch ?? null;
        // Only a keyed start is ever sent again (§11.3): drop the request and its history.
        if (this._frame?.options?.idempotency_key == null) this._frame = null;
        this._replayTo = 0;
        this._move("started");
        return this._iterPush(frame);
      case "stream.resumed":
        this.messageId = frame.message_id;
        this.epoch = frame.epoch;
        this._resumeRetries = 0;
        this._replayTo = frame.top_seq; // tool results wait for the replay (module header)
        this._move("resumed");
        this._iterPush(frame);
        if (frame.state === "ended" && frame.last_seq >= frame.top_seq) {
          // The log ended without a finish we could still get: nothing more will come.
          this._lose("the generation ended without a finish to replay");
        }
        return undefined;
      case "delta.text":
        this.text += frame.text;
        this._pendingText.push(frame.text);
        for (const it of this._iterators) it.pending.push(frame.text);
        return this._gateway._dirty(this);
      case "delta.reasoning":
        this.reasoning += frame.text;
        this._pendingReasoning.push(frame.text);
        this._gateway._dirty(this);
        return this._iterPush(frame);
      case "tool_call.end": {
        const key = `${this.turn}:${frame.call_id}`;
        if (this._callIds.has(key)) return undefined;
        this._callIds.add(key);
        this._turnCalls.set(frame.call_id, frame);
        this.toolCalls.push(frame);
        this._iterPush(frame);
        return call(this._callbacks.onToolCall, frame);
      }
      case "tool.awaiting":
        this.awaiting = frame;
        return this._iterPush(frame);
      case "tool.result":
        return this._iterPush(frame);
      case "turn.started":
        this.turn = frame.turn;
        this.awaiting = null;
        this._turnCalls.clear();
        this._turnAnswered.clear();
        return this._iterPush(frame);
      case "structured":
        this._iterPush(frame);
        return call(this._callbacks.onStructured, frame);
      case "usage":
        this.usage = frame;
        return this._iterPush(frame);
      case "error":
        return typeof frame.seq === "number" ? this._failed(frame) : this._refused(frame);
      case "finish":
        this.finish = frame;
        this._iterPush(frame);
        return this._end(frame.reason, { finish: frame });
      default: // delta.role, tool_call.start/.../error, tool.executing, telemetry, ...
        return this._iterPush(frame);
    }
  }

  /** An error with `seq`: the stream failed; its `finish` follows (§9.1). */
  _failed(frame) {
    this.error = frame;
    this._flush(); // the final text before the error
    this._iterPush(frame);
    call(this._callbacks.onError, frame);
  }

  /** An error without `seq` naming this stream: a refusal of its start, resume or cancel. */
  _refused(frame) {
    // A tool result's refusal; a bad_frame while one is in flight is its too (content the
    // gateway cannot take, e.g. nested too deeply). The stream goes on.
    const ofResult = this._results[0]?.sentOn === this._record && frame.code === "bad_frame";
    if (TOOL_REFUSALS.has(frame.code) || ofResult) return this._toolRefused(frame);
    if (frame.code === "unknown_stream") return; // a cancel that crossed the finish (§11)
    if (frame.code === "shutting_down") {
      // This socket starts nothing more (§5.17), goaway or not.
      if (this._record !== null) this._record.draining = true;
      if (this.phase === STARTING) {
        this._starts -= 1; // a refused start created nothing (§4.1): cancel() ends it locally
        this._gateway._requeue(this); // start it on the next connection
        return;
      }
      if (this.phase === RESUMING || (this.phase === RUNNING && this._resumable())) {
        // A resume, or a resumed stream at its node's drain deadline (§6.1(5)): resume it
        // on the next connection (another node).
        this._gateway._reattach(this);
        return;
      }
    } else if (
      this.phase === RESUMING &&
      frame.retryable === true &&
      this._resumeRetries < MAX_RESUME_RETRIES
    ) {
      this._resumeRetries += 1; // store_unavailable, too_many_streams: the same resume later
      this._gateway._retryResume(this, frame);
      return;
    }
    this.error = frame;
    this._iterPush(frame);
    this._end("error", { error: frame });
  }

  // --- the agent loop's results (§4.5, §8.5) ---------------------------------------------

  _queueResult(callId, body) {
    let text;
    try {
      text = toolResultText(this.id, callId, body);
    } catch (error) {
      return Promise.reject(error);
    }
    const limit = this._gateway.readyFrame?.limits?.max_frame_bytes;
    let promise;
    if (this.phase === ENDED) {
      promise = Promise.reject(this._endedError(callId));
    } else if (typeof limit === "number" && new TextEncoder().encode(text).length > limit) {
      // The gateway would refuse it without naming the stream: it would stay in flight.
      const message = `the tool result for ${callId} exceeds max_frame_bytes (${limit})`;
      promise = Promise.reject(new WsgateError("frame_too_large", message, { streamId: this.id }));
    } else {
      promise = new Promise((resolve, reject) => {
        const sent = { sentOn: null, sentAtSeq: 0, sends: 0 }; // where and when it went out
        this._results.push({ callId, body, text, resolve, reject, ...sent });
      });
      this._pumpResults();
    }
    promise.catch(() => {}); // fire and forget is fine: the caller's own chain still rejects
    return promise;
  }

  _endedError(callId) {
    const message = `stream ${this.id} ended before the gateway took the result for ${callId}`;
    return new WsgateError("stream_ended", message, { streamId: this.id });
  }

  /** Its frames are live on its socket: acknowledged, and a resume's replay is complete. */
  _live() {
    return this.phase === RUNNING && this._record !== null && this.lastSeq >= this._replayTo;
  }

  /** Send the oldest result not taken yet, unless it is in flight on this socket already. */
  _pumpResults() {
    const head = this._results[0];
    if (head === undefined || !this._live() || head.sentOn === this._record) return;
    if (head.sends === 0) head.sentAtSeq = this.lastSeq; // its tool.result comes after this
    head.sentOn = this._record;
    head.sends += 1;
    this._gateway._send(head.text, this._record);
  }

  /**
   * A `tool.result`: the answer to the result in flight for its call, if one is. (The
   * gateway may not repeat a client's own result in it: `sentResults` keeps what was sent.)
   */
  _took(frame) {
    this.toolResults.push(frame);
    this._turnAnswered.add(frame.call_id);
    let taken = null;
    const head = this._results[0];
    if (head?.sentOn != null && head.callId === frame.call_id && frame.seq > head.sentAtSeq) {
      taken = this._results.shift();
    }
    const echo = this._echoes.get(frame.call_id);
    if (echo !== undefined && frame.seq > echo.sentAtSeq) {
      this._echoes.delete(frame.call_id);
      taken = echo;
    }
    if (taken !== null) {
      this.sentResults.set(frame.call_id, taken.body);
      taken.resolve(frame);
    }
  }

  /** A refusal answers the result in flight (one at a time: refusals name no call). */
  _toolRefused(frame) {
    const error = WsgateError.fromFrame(frame);
    const head = this._results[0];
    if (head === undefined || head.sentOn !== this._record) {
      call(this._callbacks.onToolResultRefused, error, null); // none in flight: not ours
      return;
    }
    this._results.shift();
    if (frame.code === "duplicate_tool_result" && head.sends > 1) {
      // Sent again after a drop, but the gateway took the first: its tool.result follows.
      this._echoes.set(head.callId, head);
      return;
    }
    call(this._callbacks.onToolResultRefused, error, head.callId);
    head.reject(error);
  }

  /** The `tools` option: run each call of the awaited turn once, when the stream is live. */
  _runTools() {
    const awaiting = this.awaiting;
    if (this._tools === null || awaiting === null || !this._live()) return;
    for (const callId of awaiting.call_ids) {
      const key = `${awaiting.turn}:${callId}`;
      const end = this._turnCalls.get(callId);
      if (end === undefined || this._handled.has(key) || this._turnAnswered.has(callId)) continue;
      const handler = Object.hasOwn(this._tools, end.name) ? this._tools[end.name] : undefined;
      if (typeof handler !== "function") continue; // the application answers it
      if (this._results.some((r) => r.callId === callId)) continue; // it did already
      this._handled.add(key);
      this._runTool(handler, end);
    }
  }

  _runTool(handler, end) {
    this._toolAbort ??= new AbortController();
    const { call_id: callId, name } = end;
    const context = { callId, name, stream: this, signal: this._toolAbort.signal };
    const fallback = (code, message) => this.toolError(callId, code, message).catch(() => {});
    Promise.resolve()
      .then(() => handler(end.arguments, context))
      .then(
        (output) => this.toolResult(callId, output),
        (error) => this.toolError(callId, "tool_error", toolMessage(error)),
      )
      .catch((error) => {
        // What cannot go back as it is goes back as an error: the model is not left waiting.
        // (A refusal such as duplicate_tool_result reached onToolResultRefused.)
        if (error instanceof TypeError) return fallback("tool_error", toolMessage(error));
        if (error?.code === "frame_too_large" || error?.code === "tool_result_too_large") {
          return fallback("tool_result_too_large", "the tool's result was too large to send");
        }
        if (error?.code === "bad_frame") {
          return fallback("tool_error", "the gateway could not take the tool's result");
        }
        return undefined;
      });
  }

  /** Apply one event of TRANSITIONS; an illegal one is reported and changes nothing. */
  _move(event) {
    const next = TRANSITIONS[this.phase][event];
    if (next === undefined) {
      if (this.phase !== ENDED) {
        report(new WsgateError("internal", `stream ${this.id}: ${event} in phase ${this.phase}`));
      }
      return false;
    }
    this.phase = next;
    return true;
  }

  /** Whether a `resume` can follow it: logged (an epoch), or made by gw.resume(). */
  _resumable() {
    return this.messageId !== null && (this.epoch !== null || this._adopted);
  }

  /** A coalesced frame that repeats seqs already seen (first_seq <= lastSeq < seq). */
  _overlap(frame) {
    const message = `frame seq ${frame.first_seq}..${frame.seq} repeats seq up to ${this.lastSeq}`;
    this._end("error", { error: new WsgateError("bad_frame", message, { streamId: this.id }) });
  }

  /** Its socket dropped: what becomes of this stream (the Gateway will reconnect). */
  _detach() {
    if (this.phase === QUEUED || this.phase === DETACHED) return;
    this._record = null;
    if (this._resumable()) {
      this._move("drop");
    } else if (this.messageId === null && this._frame?.options?.idempotency_key != null) {
      this._gateway._requeue(this); // the same start attaches to the same generation (§11.3)
    } else {
      this._lose(
        this.messageId === null
          ? "the connection dropped before the gateway acknowledged the start"
          : "the connection dropped and the stream is not resumable",
      );
    }
  }

  /** On a new `ready`: resume a detached stream. */
  _attach() {
    const record = this._gateway._conn;
    if (this.phase !== DETACHED || record === null) return;
    this._move("resume");
    this._record = record;
    const resume = { type: "resume", stream_id: this.id, message_id: this.messageId };
    resume.last_seq = this.lastSeq;
    if (this.epoch !== null) resume.epoch = this.epoch;
    if (this._snapshot) resume.snapshot = true;
    this._gateway._send(resume, record);
    if (this._cancelRequested) this._gateway._send({ type: "cancel", stream_id: this.id }, record);
  }

  /** Sent `start` on `record` (again, with an idempotency key). */
  _started(record) {
    this._move("send");
    this._starts += 1;
    this._record = record;
    if (this._cancelRequested) this._gateway._send({ type: "cancel", stream_id: this.id }, record);
  }

  /** The Gateway ended for good with `error`: end this stream with its own copy of it. */
  _abort(error) {
    const own = new WsgateError(error.code, error.message, {
      retryable: error.retryable,
      closeCode: error.closeCode ?? undefined,
      streamId: this.id,
      frame: error.frame ?? undefined,
      retryAfterMs: error.retryAfterMs ?? undefined,
      cause: error,
    });
    this._end("error", { error: own });
  }

  _lose(message) {
    const error = new WsgateError("stream_lost", message, { retryable: true, streamId: this.id });
    this._end("error", { error });
  }

  /** Deliver the text received since the last call (an animation frame, or the end). */
  _flush() {
    if (this._pendingText.length) {
      const delta = this._pendingText.join("");
      this._pendingText = [];
      call(this._callbacks.onText, this.text, delta);
    }
    if (this._pendingReasoning.length) {
      const delta = this._pendingReasoning.join("");
      this._pendingReasoning = [];
      call(this._callbacks.onReasoning, this.reasoning, delta);
    }
    for (const it of this._iterators) this._iterFlush(it);
  }

  /**
   * End the stream (finish, refusal, loss, gw.close()): flush the text, then onError or
   * onFinish, end the iterators, resolve `done`, and let the Gateway forget it.
   */
  _end(reason, { finish = null, error = null, notify = true } = {}) {
    if (this.phase === ENDED) return;
    this._flush();
    this._move("end");
    clearTimeout(this._retryTimer);
    if (error !== null) this.error = error;
    if (notify && error !== null) {
      if (error instanceof WsgateError) {
        for (const it of this._iterators) this._push(it, this._iterEvent(error));
      }
      call(this._callbacks.onError, error);
    }
    if (finish !== null) call(this._callbacks.onFinish, finish);
    for (const it of this._iterators) {
      it.closed = true;
      if (it.waiter !== null && it.queue.length === 0) {
        const waiter = it.waiter;
        it.waiter = null;
        waiter({ value: undefined, done: true });
      }
    }
    this._iterators.clear();
    this._signal?.removeEventListener("abort", this._onAbort);
    for (const result of [...this._results, ...this._echoes.values()]) {
      result.reject(this._endedError(result.callId));
    }
    this._results = [];
    this._echoes.clear();
    this._toolAbort?.abort();
    this._gateway._forget(this);
    this._resolveDone({ reason, text: this.text, finish: this.finish, error: this.error });
  }

  _iterEvent(item) {
    return item instanceof WsgateError ? { type: "client_error", error: item } : item;
  }

  _iterPush(frame) {
    for (const it of this._iterators) {
      this._iterFlush(it); // text received before this frame comes before it
      this._push(it, frame);
    }
  }

  _iterFlush(it) {
    if (it.pending.length === 0) return;
    const delta = it.pending.join("");
    it.pending = [];
    this._push(it, { type: "text", text: this.text, delta });
  }

  _push(it, value) {
    if (it.waiter !== null) {
      const waiter = it.waiter;
      it.waiter = null;
      waiter({ value, done: false });
    } else {
      it.queue.push(value);
    }
  }
}

/** One connection to a gateway (reconnected as needed) and the streams over it. */
class Gateway {
  constructor(url, options) {
    this.url = String(url);
    this.state = "connecting"; // connecting, open, draining, reconnecting, closed
    this.readyFrame = null;
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    this.ready.catch(() => {}); // a rejection nobody awaits is not an unhandled one
    this._options = options;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError(
        "wsgate: no WebSocket: pass options.WebSocket, or run Node with --experimental-websocket",
      );
    }
    this._reconnect = reconnectPolicy(options.reconnect);
    this._scheduleFrame = options.scheduleFrame ?? defaultScheduleFrame();
    this._heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? HEARTBEAT_TIMEOUT_MS;
    this._authTimeoutMs = options.authTimeoutMs ?? AUTH_TIMEOUT_MS;
    this._listeners = new Map();
    this._streams = new Map(); // id -> open Stream
    this._queue = []; // Streams waiting for a connection that may start them, oldest first
    this._conn = null; // the current socket's record: the one new streams and resumes use
    this._old = new Set(); // records after a goaway, kept only for their running streams
    this._everReady = false;
    this._attempt = 0; // failed connections since one last stayed up for stableMs
    this._nextId = 1;
    this._timer = null; // the reconnect wait
    this._dirtyStreams = new Set();
    this._frameScheduled = false;
    this._closed = null;
    this._open();
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }

  /** Start a stream; it goes out now, or as soon as a connection may start it. */
  stream(request, options = {}) {
    const stream = this._newStream(request, options);
    if (stream.phase === ENDED) return stream;
    this._queue.push(stream);
    this._drainQueue();
    return stream;
  }

  /**
   * Follow a generation this Gateway did not start (a reloaded page, another tab) by its
   * message id: a `resume` from `lastSeq` (0: from its `stream.started`), as soon as a
   * connection may send it. `snapshot` folds the replayed text into one frame (§4.3).
   */
  resume(generation, options = {}) {
    const stream = this._newStream(null, options);
    if (stream.phase === ENDED) return stream;
    stream.messageId = generation.messageId;
    stream.epoch = generation.epoch ?? null;
    stream.lastSeq = generation.lastSeq ?? 0;
    stream._snapshot = generation.snapshot ?? false;
    stream._move("adopt");
    if (this._usable()) stream._attach();
    return stream;
  }

  _newStream(request, options) {
    if (this.state === "closed") {
      throw new WsgateError("closed", "this Gateway is closed; connect() again");
    }
    let id = options.streamId;
    if (id === undefined) {
      do id = `s${this._nextId++}`;
      while (this._streams.has(id));
    } else if (this._streams.has(id)) {
      throw new WsgateError("stream_exists", `stream ${id} is still open`, { streamId: id });
    }
    const stream = new Stream(this, id, request, options);
    this._streams.set(id, stream);
    if (options.signal?.aborted) stream._end("cancelled");
    return stream;
  }

  /** Close with 1000, for good; open streams end as "cancelled". Resolves once closed. */
  close() {
    if (this._closed !== null) return this._closed;
    const sockets = [this._conn, ...this._old].filter((r) => r !== null && r.ws !== null);
    this._closed = Promise.all(sockets.map((r) => r.closed)).then(() => undefined);
    this._shutdown(null, 1000, "closed by the client");
    return this._closed;
  }

  // --- connections ------------------------------------------------------------------------

  async _open() {
    this._timer = null;
    const record = { ws: null, ready: false, draining: false, goaway: null, closingError: null };
    record.closed = new Promise((resolve) => {
      record.resolveClosed = resolve;
    });
    this._conn = record;
    let url;
    try {
      url = socketUrl(this.url);
    } catch (cause) {
      const error = new WsgateError("connect_failed", `bad URL ${this.url}`, { cause });
      return this._shutdown(error, 1006, "bad URL");
    }
    if (this._options.ticket) {
      try {
        url.searchParams.set("ticket", await this._deadline(this._options.ticket, "ticket"));
      } catch (cause) {
        const error = new WsgateError("ticket_unavailable", "the ticket option failed", {
          retryable: true,
          cause,
        });
        return this._lost(record, 1006, "no ticket", error);
      }
      if (this._conn !== record) return undefined; // closed meanwhile
    }
    let ws;
    try {
      ws = new this._WebSocket(url.href, PROTOCOL);
    } catch (cause) {
      const error = new WsgateError("connect_failed", String(cause?.message ?? cause), { cause });
      return this._lost(record, 1006, "", error);
    }
    record.ws = ws;
    record.lastFrameAt = Date.now();
    ws.addEventListener("open", () => this._onOpen(record));
    ws.addEventListener("message", (event) => this._onMessage(record, event));
    ws.addEventListener("close", (event) => {
      record.resolveClosed();
      this._lost(record, event.code, event.reason);
    });
    // An error is a failed connection (1006). Browsers fire close next; Node 20's WebSocket
    // fires no close after a failed handshake, so the error alone must end the socket. It
    // waits a moment for the close (and the frames before it, e.g. the error frame of a
    // 4501), which carries the real code: a close seen first makes this a no-op.
    ws.addEventListener("error", () => {
      setTimeout(() => {
        record.resolveClosed();
        this._lost(record, 1006, "connection failed");
      }, ERROR_CLOSE_GRACE_MS);
    });
    this._watch(record);
    return undefined;
  }

  /** Call the ticket or auth option, failing after authTimeoutMs (a hung fetch, a login). */
  _deadline(option, what) {
    const ms = this._authTimeoutMs;
    return new Promise((resolve, reject) => {
      const timer =
        ms > 0 && ms < MAX_TIMEOUT_MS
          ? setTimeout(() => reject(new Error(`the ${what} option took over ${ms} ms`)), ms)
          : null;
      Promise.resolve()
        .then(() => (typeof option === "function" ? option.call(this._options) : option))
        .then(resolve, reject)
        .finally(() => clearTimeout(timer));
    });
  }

  async _onOpen(record) {
    if (this._conn !== record || !this._options.auth) return;
    let token;
    try {
      token = await this._deadline(this._options.auth, "auth");
    } catch (cause) {
      const error = new WsgateError("auth_unavailable", "the auth option failed", {
        retryable: true,
        cause,
      });
      this._abandon(record, "the auth option failed", error);
      return;
    }
    if (this._conn === record) this._send({ type: "auth", token }, record);
  }

  _onMessage(record, event) {
    if (!this._live(record) || typeof event.data !== "string") return; // binary never comes
    record.lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return; // the gateway sends JSON (§3)
    }
    const streamId = frame.stream_id;
    if (typeof streamId === "string") {
      // Unknown, or on another socket now: a stream already forgotten, or a stale frame.
      const stream = this._streams.get(streamId);
      if (stream?._record === record) stream._receive(frame);
      return;
    }
    switch (frame.type) {
      case "ready":
        return this._onReady(record, frame);
      case "goaway":
        return this._onGoaway(record, frame);
      case "heartbeat":
        return this._emit("heartbeat", frame);
      case "auth.refreshed":
        this._refreshAuth(record, frame.expires_in_ms);
        return this._emit("auth.refreshed", frame);
      case "error": // connection-level (§9.1); some of them announce the close (§12.3)
        if (CLOSING_ERRORS.has(frame.code)) record.closingError = frame;
        return this._emit("error", frame);
      default:
        return undefined; // a frame type from a later release (§3)
    }
  }

  _onReady(record, frame) {
    if (this._conn !== record) return;
    record.ready = true;
    this.readyFrame = frame;
    this.state = "open";
    const reconnected = this._everReady;
    this._everReady = true;
    if (this._reconnect !== null) {
      // Only a connection that stays up ends a run of failures (a ready-then-die is one).
      record.stable = setTimeout(() => {
        if (this._conn === record) this._attempt = 0;
      }, this._reconnect.stableMs);
    }
    this._refreshAuth(record, frame.auth?.expires_in_ms);
    for (const stream of [...this._streams.values()]) stream._attach();
    this._drainQueue();
    if (!reconnected) this._resolveReady(frame);
    this._emit("ready", frame);
    if (reconnected) this._emit("reconnected", frame);
  }

  /** §5.17: no new stream on this socket; after reconnect_after_ms, a new connection. */
  _onGoaway(record, frame) {
    record.draining = true;
    record.goaway = frame;
    if (this._conn === record) {
      this.state = "draining";
      if (this._reconnect !== null) {
        const delayMs = Math.min(frame.reconnect_after_ms ?? 0, MAX_TIMEOUT_MS);
        record.handover = setTimeout(() => this._handover(record), delayMs);
      }
    }
    this._emit("goaway", frame);
  }

  /** Keep a draining socket for its running streams only; open the next one for the rest. */
  _handover(record) {
    if (this._conn !== record) return;
    clearTimeout(record.refresh);
    clearTimeout(record.stable);
    this._old.add(record);
    this._open();
    this._closeIfIdle(record);
  }

  /** An old (draining) socket with no stream left on it is closed (1000). */
  _closeIfIdle(record) {
    if (!this._old.has(record)) return;
    for (const stream of this._streams.values()) if (stream._record === record) return;
    try {
      record.ws?.close(1000);
    } catch {
      // already closing
    }
  }

  /** The socket is gone (closed, failed, or abandoned by the watchdog). */
  _lost(record, code, reason, error = null) {
    if (this._old.delete(record)) {
      // A draining socket: its streams move to the current connection (resume, keyed start).
      this._release(record);
      for (const stream of [...this._streams.values()]) {
        if (stream._record === record) stream._detach();
      }
      if (this._usable()) for (const stream of [...this._streams.values()]) stream._attach();
      return;
    }
    if (this._conn !== record) return;
    this._conn = null;
    this._release(record);
    const cause = record.closingError;
    let failure = error ?? (cause === null ? null : WsgateError.fromFrame(cause, code));
    if (failure === null) {
      const what = this._everReady ? "connection_lost" : "connect_failed";
      const message = `the connection closed (${code}${reason ? `: ${reason}` : ""})`;
      failure = new WsgateError(what, message, { retryable: true, closeCode: code });
    } else if (failure.closeCode === null) {
      failure.closeCode = code;
    }
    if (!this._everReady || this._reconnect === null || this._final(code, cause)) {
      this._shutdown(failure, code, reason);
      return;
    }
    for (const stream of [...this._streams.values()]) {
      if (stream._record === record) stream._detach();
    }
    this._attempt += 1;
    if (this._attempt > this._reconnect.maxAttempts) {
      const given = new WsgateError("connection_lost", "gave up reconnecting", {
        retryable: true,
        closeCode: code,
        cause: failure,
      });
      this._shutdown(given, code, reason);
      return;
    }
    let delayMs = backoffDelay(this._attempt, this._reconnect);
    delayMs += record.goaway?.reconnect_after_ms ?? 0;
    delayMs = Math.max(delayMs, cause?.retry_after_ms ?? 0);
    this.state = "reconnecting";
    this._emit("reconnecting", { attempt: this._attempt, delayMs, code });
    this._timer = setTimeout(() => this._open(), delayMs);
  }

  /**
   * Whether a close code ends the Gateway (§12.3), beyond closeAction: 4502 means "reconnect
   * with new credentials", which a ticket or an auth function supplies; 4501 auth_timeout
   * means our own ticket/auth was slow, not refused.
   */
  _final(code, cause) {
    if (closeAction(code) === "reconnect") return false;
    if (code === 4502) {
      return typeof this._options.ticket !== "function" && typeof this._options.auth !== "function";
    }
    return !(code === 4501 && cause?.code === "auth_timeout");
  }

  _release(record) {
    clearTimeout(record.watchdog);
    clearTimeout(record.refresh);
    clearTimeout(record.stable);
    clearTimeout(record.handover);
  }

  _live(record) {
    return record === this._conn || this._old.has(record);
  }

  /** The current connection may send starts and resumes. */
  _usable() {
    const conn = this._conn;
    return conn !== null && conn.ready && !conn.draining;
  }

  /** Give a socket up without waiting for its close (dead network, failed auth option). */
  _abandon(record, reason, error = null) {
    try {
      record.ws?.close(1000);
    } catch {
      // already closing
    }
    this._lost(record, 1006, reason, error);
  }

  /** The heartbeat watchdog: no frame at all for heartbeatTimeoutMs means a dead socket. */
  _watch(record) {
    const timeout = this._heartbeatTimeoutMs;
    if (!(timeout > 0)) return;
    const check = () => {
      if (!this._live(record)) return;
      const silent = Date.now() - record.lastFrameAt;
      if (silent < timeout) {
        record.watchdog = setTimeout(check, timeout - silent);
        return;
      }
      this._abandon(record, `no frame for ${silent} ms`);
    };
    record.watchdog = setTimeout(check, timeout);
  }

  /**
   * Send a fresh `auth` before the credentials expire, when `auth` is a function; a failed
   * call is tried again (REFRESH_RETRIES times, halfway to the expiry each time).
   */
  _refreshAuth(record, expiresInMs) {
    clearTimeout(record.refresh);
    const auth = this._options.auth;
    if (typeof auth !== "function" || typeof expiresInMs !== "number") return;
    const expiresAt = Date.now() + expiresInMs;
    const refresh = async (retries) => {
      if (this._conn !== record) return;
      try {
        const token = await this._deadline(auth, "auth");
        if (this._conn === record) this._send({ type: "auth", token }, record);
      } catch (error) {
        if (retries === 0 || this._conn !== record) {
          report(error); // the gateway closes with 4502 at the expiry; we reconnect then
          return;
        }
        const waitMs = Math.max(0, (expiresAt - Date.now()) / 2);
        record.refresh = setTimeout(() => refresh(retries - 1), waitMs);
      }
    };
    const firstMs = Math.min(expiresInMs * REFRESH_AT, MAX_TIMEOUT_MS);
    record.refresh = setTimeout(() => refresh(REFRESH_RETRIES), firstMs);
  }

  /** End the Gateway for good: streams end (with `error`, or as cancelled), "close" fires. */
  _shutdown(error, code, reason) {
    this.state = "closed";
    clearTimeout(this._timer);
    const records = [this._conn, ...this._old].filter((r) => r !== null);
    this._conn = null;
    this._old.clear();
    for (const record of records) {
      this._release(record);
      try {
        record.ws?.close(1000);
      } catch {
        // already closing
      }
    }
    this._queue = [];
    for (const stream of [...this._streams.values()]) {
      if (error === null) stream._end("cancelled");
      else stream._abort(error);
    }
    if (!this._everReady) {
      this._rejectReady(error ?? new WsgateError("closed", "closed before the first ready"));
    }
    this._emit("close", { code, reason: reason ?? "", error });
  }

  // --- what the Streams call --------------------------------------------------------------

  _send(frame, record = this._conn) {
    if (record === null || record.ws === null) return;
    try {
      record.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
    } catch {
      // a socket that is closing: its close event comes next
    }
  }

  /** Send the waiting starts, oldest first, when the connection may start streams. */
  _drainQueue() {
    if (!this._usable()) return;
    const conn = this._conn;
    const queue = this._queue;
    this._queue = [];
    for (const stream of queue) {
      this._send(stream._frame, conn);
      stream._started(conn);
    }
  }

  /** Wait for a connection that may start it (a refused or keyed start). */
  _requeue(stream) {
    this._leave(stream);
    stream._move("requeue");
    this._queue.unshift(stream);
    this._drainQueue();
  }

  /** Resume it on the current connection (now, if it may), not on the one that refused. */
  _reattach(stream) {
    this._leave(stream);
    stream._move("drop");
    if (this._usable()) stream._attach();
  }

  /** Resume it again after a backoff wait (at least the refusal's retry_after_ms). */
  _retryResume(stream, frame) {
    this._leave(stream);
    stream._move("drop");
    const policy = this._reconnect ?? RECONNECT_DEFAULTS;
    const backoffMs = backoffDelay(stream._resumeRetries, policy);
    const delayMs = Math.max(backoffMs, frame.retry_after_ms ?? 0);
    stream._retryTimer = setTimeout(() => {
      if (this._usable()) stream._attach(); // else the next ready resumes it
    }, delayMs);
  }

  /** The stream leaves its socket; an old socket left with none is closed. */
  _leave(stream) {
    const record = stream._record;
    stream._record = null;
    if (record !== null) this._closeIfIdle(record);
  }

  _unqueue(stream) {
    this._queue = this._queue.filter((s) => s !== stream);
  }

  _forget(stream) {
    if (this._streams.get(stream.id) === stream) this._streams.delete(stream.id);
    this._unqueue(stream);
    this._dirtyStreams.delete(stream);
    this._leave(stream);
  }

  /** A stream has text to deliver: one scheduled frame flushes every such stream. */
  _dirty(stream) {
    this._dirtyStreams.add(stream);
    if (this._frameScheduled) return;
    this._frameScheduled = true;
    this._scheduleFrame(() => {
      this._frameScheduled = false;
      const streams = [...this._dirtyStreams];
      this._dirtyStreams.clear();
      for (const s of streams) s._flush();
    });
  }

  _emit(event, payload) {
    const listeners = this._listeners.get(event);
    if (listeners === undefined) return;
    for (const fn of [...listeners]) call(fn, payload);
  }
}

export { Gateway, Stream };
