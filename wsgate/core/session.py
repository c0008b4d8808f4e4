"""The per-connection session: client frames in, outbound frames and actions out.

Owns everything a connection decides without I/O: decoding client frames, enforcing the
connection's limits (streams per connection, frame size, `stream_id` charset and length via
the frame types), starting and cancelling streams, routing upstream bytes into the right
stream, and tearing all streams down when the connection goes. It owns the connection's
`outbox` (what waits for the client) and its `flow` verdicts (`core/flow.py`: when a
provider pauses or resumes, when the client is a slow consumer). The gateway shell executes
the returned actions (start or cancel an upstream task), drains the outbox to the socket,
applies the verdicts to its transports and passes time in.

Resume and idempotent starts need the store, which only the shell can ask: the session
hands them out as actions (`ResumeStream`, `AdmitStart`, `CancelMessage`) and holds their
`stream_id` in `attached` meanwhile and for as long as the shell follows the generation
there (a follower stream: its frames come from the log, not from a stream of this session).

Rules:
1. Every client frame gets exactly one answer path: a stream starts, a stream ends, or a
   typed `error` frame goes out. No client input raises out of `receive`.
2. A stream is in `streams` from its accepted `start` until its `finish` was produced; after
   that, nothing of it is produced again, whatever the upstream still delivers.
3. A `stream_id` names at most one stream of the connection, running or attached; both
   kinds count against `max_streams`.
4. A client that keeps sending frames that are refused as malformed (`bad_frame`,
   `frame_too_large`) is closed at the `max_bad_frames`-th: one `too_many_bad_frames`
   error and close 4500; from then on nothing it sends is read.
5. Nothing runs before the connection has a principal. The shell gives it one from the
   handshake (a Bearer token, a ticket, or anonymous) with `authenticated`, or the client's
   first frame is `auth` (`Authenticate`); any other first frame closes the connection
   (4501). Then `ready` goes out. A later `auth` refreshes the credentials of the same
   principal; past their expiry without one, the connection closes (4502).
6. Streams, resumes, cancels by `message_id` and idempotency keys act for the principal:
   a model outside its list is `forbidden`; the shell scopes the rest by its id.
7. A stream that opted into the agent loop (`options.agent`, core/agent.py) takes its
   turns' tool results here: a `tool_result` frame (`client_tool_result`, also for a
   follower, whose result the shell forwards to the session running the generation) or a
   server tool's outcome (`tool_finished`). A refused result changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from wsgate.core.agent import MAX_RESULT_DEPTH, LoopPolicy, Refused, ToolLoop, nests_deeper
from wsgate.core.errors import (
    ERROR_CODES,
    AuthExpired,
    AuthFailed,
    AuthRequired,
    BadRequest,
    CloseCode,
    Forbidden,
    ProtocolError,
    StoreUnavailable,
    WsgateError,
)
from wsgate.core.flow import FlowControl
from wsgate.core.frames import (
    MAX_STREAM_ID_LENGTH,
    PROTOCOL,
    Auth,
    AuthRefreshed,
    Cancel,
    ChatRequest,
    ErrorFrame,
    FrameRejected,
    Ready,
    ReadyAuth,
    ReadyLimits,
    Resume,
    ServerFrame,
    Start,
    StartOptions,
    ToolError,
    ToolResult,
    decode_client_frame,
    encode_frame,
)
from wsgate.core.outbox import Outbox
from wsgate.core.principal import Principal
from wsgate.core.resume import fingerprint
from wsgate.core.stream import Stream, StreamOutput, UpstreamParser


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The limits one connection enforces (frames, streams, bytes)."""

    max_streams: int = 256
    max_frame_bytes: int = 1024 * 1024
    telemetry_interval: float = 0.5
    queue_events: int = 256  # per stream: frames waiting before its provider pauses
    queue_bytes: int = 256 * 1024  # per stream: bytes waiting before its provider pauses
    buffer_bytes: int = 1024 * 1024  # per connection: the slow-consumer cap (core/flow.py)
    first_token_timeout: float = 120.0  # s from `start` to the first content delta
    max_duration: float = 900.0  # s from `start` to `finish`
    max_bad_frames: int = 100  # refused client frames before the connection is closed
    max_tool_result_bytes: int = 4 * 1024 * 1024  # per stream: all its tool results


@dataclass(frozen=True, slots=True)
class LogPolicy:
    """Whether the session's streams are logged for resume, and what to do without a store."""

    new_epoch: Callable[[], str]
    healthy: Callable[[], bool]  # the store can take writes now
    without_log: bool = False  # while it cannot: run unlogged (True) or refuse the start


@dataclass(frozen=True, slots=True)
class SendControl:
    """Queue a connection-level frame (ahead of stream frames)."""

    frame: ServerFrame


@dataclass(frozen=True, slots=True)
class SendStream:
    """Queue frames of a stream, in order; `ended` when the last one is among them."""

    stream_id: str
    output: StreamOutput


class Target(Protocol):
    """Where a start goes, resolved once when it is accepted; opaque to the core.

    The composition root's resolver makes it from the request (the model's route, the
    parser's settings); the core asks it for the stream's parser (again for a retry), and
    the shell hands it back to the upstream with `StartUpstream`, so nothing looks the
    route up a second time.
    """

    def parser(self) -> UpstreamParser:
        """A fresh parser for this start's provider."""

    def describe(self) -> dict[str, object]:
        """What the operator's log lines name of it (the provider, the model)."""


Resolver = Callable[[ChatRequest, StartOptions], Target]
"""Resolves a start's request to its `Target`; raises `WsgateError` for an unknown model."""


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """End the connection: cancel its streams, send `frame` if it can, close with `code`."""

    code: int
    reason: str
    frame: ErrorFrame


@dataclass(frozen=True, slots=True)
class StartUpstream:
    """Open the upstream call of a newly accepted stream, at its resolved `target`."""

    stream_id: str
    message_id: str
    request: ChatRequest
    target: Target


@dataclass(frozen=True, slots=True)
class BeginLog:
    """Log this stream's frames from its first on (it comes before that frame's `SendStream`).

    `claimed`: an idempotency claim already began the message in the store.
    """

    stream_id: str
    message_id: str
    epoch: str
    claimed: bool = False


@dataclass(frozen=True, slots=True)
class AdmitStart:
    """A `start` the shell must admit before anything runs: quotas, then an idempotency claim.

    The shell checks the principal's rate limits (`quota`), then, with a `key`, claims it in
    the store. It answers with `admitted` (the stream starts as `message_id`), `attach`
    (the same request holds the key: follow that generation) or `refuse`.
    """

    start: Start
    target: Target
    key: str | None
    fingerprint: str | None
    message_id: str
    epoch: str | None
    quota: bool  # the principal's stream quotas apply


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Verify an `auth` frame's token; answer with `authenticated` or `auth_refused`."""

    token: str


@dataclass(frozen=True, slots=True)
class ResumeStream:
    """Follow a generation's log on this connection as `stream_id` (a `resume` frame)."""

    stream_id: str
    message_id: str
    last_seq: int
    snapshot: bool
    epoch: str | None


@dataclass(frozen=True, slots=True)
class CancelMessage:
    """Cancel a generation by `message_id`, wherever it runs."""

    message_id: str


@dataclass(frozen=True, slots=True)
class CancelUpstream:
    """Close a stream's upstream call now (the stream already produced its `finish`)."""

    stream_id: str


@dataclass(frozen=True, slots=True)
class NextTurn:
    """Every call of a stream's turn has its result: send the next model turn, `request`."""

    stream_id: str
    request: ChatRequest


@dataclass(frozen=True, slots=True)
class ForwardToolResult:
    """A follower's `tool_result`: the session running `message_id` takes it, or refuses."""

    stream_id: str
    message_id: str
    frame: ToolResult


@dataclass(frozen=True, slots=True)
class DetachStream:
    """The client left; keep this stream generating without it (`on_disconnect: continue`)."""

    stream_id: str
    message_id: str


Action = (
    SendControl
    | BeginLog
    | SendStream
    | StartUpstream
    | CancelUpstream
    | DetachStream
    | AdmitStart
    | Authenticate
    | ResumeStream
    | CancelMessage
    | NextTurn
    | ForwardToolResult
    | CloseConnection
)


class Session:
    """The core of one client connection."""

    # One per connection, and connections are many: no per-instance dict.
    __slots__ = (
        "_accepts_auth",
        "_admission",
        "_auth_deadline",
        "_authenticating",
        "_bad_frames",
        "_cancel_after",
        "_expires_in_ms",
        "_greeted",
        "_log",
        "_new_message_id",
        "_resolve",
        "_results_after",
        "_server_version",
        "_tools",
        "attached",
        "conn_id",
        "draining",
        "flow",
        "limits",
        "outbox",
        "principal",
        "streams",
    )

    def __init__(  # noqa: PLR0913, PLR0917 - the connection's identity and policy
        self,
        conn_id: str,
        limits: SessionLimits,
        resolve: Resolver,
        new_message_id: Callable[[], str],
        server_version: str = "0",
        log: LogPolicy | None = None,
        *,
        principal: Principal | None = None,
        admission: bool = False,
        accepts_auth: bool = True,
        tools: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.limits = limits
        self.streams: dict[str, Stream] = {}
        self.attached: dict[str, str | None] = {}
        """Follower streams: `stream_id` -> the followed `message_id` (None while pending)."""
        self._cancel_after: set[str] = set()  # cancelled while their claim or resume pends
        self._results_after: dict[str, list[ToolResult]] = {}  # sent while those pend
        self._bad_frames = 0  # refused client frames so far (rule 4)
        self.principal = principal  # rule 5: None until an `auth` frame authenticates it
        self._greeted = False  # `ready` went out (`authenticated` was told once)
        self._authenticating = False  # an `auth` frame is being verified
        self._auth_deadline: float | None = None  # when the credentials expire (monotonic)
        self._expires_in_ms: int | None = None
        self._admission = admission  # a limiter admits quota-bound starts (`AdmitStart`)
        self._accepts_auth = accepts_auth  # False: no [auth], an `auth` frame is unsupported
        self._log = log
        self._resolve = resolve
        self._new_message_id = new_message_id
        self._server_version = server_version
        self._tools = tools or {}  # server-side tools: name -> the definition the model sees
        self.draining = False
        self.outbox = Outbox(limits.queue_events, limits.queue_bytes)
        """What waits for the client; the shell drains it (`pop`), as websockets' shell
        drains `data_to_send()`."""
        self.flow = FlowControl(self.outbox, limits.buffer_bytes)
        """Every flow verdict over that outbox: pause, resume, slow consumer."""

    @property
    def authenticating(self) -> bool:
        """An `auth` frame's token is being verified."""
        return self._authenticating

    @property
    def greeted(self) -> bool:
        """Whether `ready` went out (the connection was authenticated once)."""
        return self._greeted

    def ready(self) -> Ready:
        """The first frame of the connection, once it has its principal."""
        principal = self.principal
        auth = None
        if principal is not None and principal.method != "anonymous":
            auth = ReadyAuth(principal.id, principal.method, self._expires_in_ms)
        return Ready(
            protocol=PROTOCOL,
            conn_id=self.conn_id,
            server_version=self._server_version,
            limits=ReadyLimits(
                max_streams=self.limits.max_streams,
                max_frame_bytes=self.limits.max_frame_bytes,
                max_stream_id_length=MAX_STREAM_ID_LENGTH,
            ),
            auth=auth,
        )

    def receive(self, data: str | bytes, now: float) -> list[Action]:  # noqa: PLR0911 - per type
        """Handle one client text frame."""
        if self._bad_frames >= self.limits.max_bad_frames:
            return []  # closing: nothing more is read
        frame = decode_client_frame(data, self.limits.max_frame_bytes)
        if self.principal is None:
            return self._before_auth(frame)
        if isinstance(frame, FrameRejected):
            return self._bad_frame(_refuse(frame.code, frame.message, frame.stream_id))
        if isinstance(frame, Start):
            return self._start(frame, now)
        if isinstance(frame, Cancel):
            return self._cancel_frame(frame)
        if isinstance(frame, Resume):
            return self._resume(frame)
        if isinstance(frame, Auth):
            return self._authenticate(frame)
        if isinstance(frame, ToolResult):
            return self._tool_result_frame(frame, now)
        raise TypeError(type(frame).__name__)  # pragma: no cover - the union is exhaustive

    def receive_binary(self) -> list[Action]:
        """Binary frames carry nothing in wsgate.v1; refuse them, keep the connection."""
        if self._bad_frames >= self.limits.max_bad_frames:
            return []
        if self.principal is None:
            return self._before_auth(None)
        message = "binary frames are not accepted; send JSON text frames"
        return self._bad_frame(_refuse("bad_frame", message))

    # --- authentication (rule 5) ------------------------------------------------------

    def _before_auth(self, frame: object) -> list[Action]:
        """The only frame accepted before the principal is known is one `auth`."""
        if isinstance(frame, Auth) and not self._authenticating:
            return self._authenticate(frame)
        message = "authenticate first: send an `auth` frame, a Bearer token or a ticket"
        return [_close(CloseCode.AUTH_FAILED, "auth required", AuthRequired(message))]

    def _authenticate(self, frame: Auth) -> list[Action]:
        if not self._accepts_auth:
            message = "this gateway has no authentication configured: `auth` is not needed"
            return [_refuse("unsupported", message)]
        if self._authenticating:
            return [_refuse("bad_frame", "an `auth` frame is being verified already")]
        self._authenticating = True
        return [Authenticate(frame.token)]

    def authenticated(self, principal: Principal, now: float, wall: float) -> list[Action]:
        """Credentials were accepted (`now` monotonic, `wall` epoch seconds): `ready` first.

        A refresh must name the principal the connection has; it moves the expiry.
        """
        self._authenticating = False
        first = not self._greeted
        if self.principal is not None and principal.id != self.principal.id:
            refused = AuthFailed("a refresh must authenticate the same principal")
            return [_close(CloseCode.AUTH_FAILED, "auth failed", refused)]
        self.principal = principal
        if principal.expires_at is None:
            self._auth_deadline = self._expires_in_ms = None
        else:
            left = max(0.0, principal.expires_at - wall)
            self._auth_deadline = now + left
            self._expires_in_ms = int(left * 1000)
        if first:
            self._greeted = True
            return [SendControl(self.ready())]
        return [SendControl(AuthRefreshed(principal.id, self._expires_in_ms))]

    def auth_refused(self, error: WsgateError) -> list[Action]:
        """Credentials were refused, or none came in time: the connection closes (4501)."""
        self._authenticating = False
        return [_close(CloseCode.AUTH_FAILED, error.code.replace("_", " "), error)]

    def _bad_frame(self, refusal: SendControl) -> list[Action]:
        """A refused frame; the one that reaches `max_bad_frames` closes the connection."""
        self._bad_frames += 1
        if self._bad_frames < self.limits.max_bad_frames:
            return [refusal]
        code = ERROR_CODES["too_many_bad_frames"]
        error = ErrorFrame(
            "too_many_bad_frames",
            f"{self.limits.max_bad_frames} frames were refused on this connection",
            code.retryable,
        )
        return [CloseConnection(CloseCode.PROTOCOL_VIOLATION, "too many bad frames", error)]

    def cancel(
        self,
        stream_id: str,
        *,
        unknown_is_error: bool = False,
        error: WsgateError | None = None,
    ) -> list[Action]:
        """Cancel a running stream: its `finish` (cancelled) and the upstream close.

        With `error`, a typed `error` frame (with `seq`) says why, before the `finish`.
        """
        stream = self.streams.pop(stream_id, None)
        if stream is None and stream_id in self.attached:
            message_id = self.attached[stream_id]
            if message_id is None:
                self._cancel_after.add(stream_id)
                return []
            return [CancelMessage(message_id)]
        if stream is None:
            if unknown_is_error:
                return [_refuse("unknown_stream", "no running stream has this id", stream_id)]
            return []
        return [SendStream(stream_id, stream.cancel(error)), CancelUpstream(stream_id)]

    # --- the agent loop (rule 7) -------------------------------------------------------

    def _tool_result_frame(self, frame: ToolResult, now: float) -> list[Action]:
        sid = frame.stream_id
        if (frame.content is msgspec.UNSET) == (frame.error is None):
            message = "a tool_result carries exactly one of content and error"
            return self._bad_frame(_refuse("bad_frame", message, sid, call_id=frame.call_id))
        if nests_deeper(frame.content, MAX_RESULT_DEPTH):
            message = f"a tool_result's content nests deeper than {MAX_RESULT_DEPTH} levels"
            return self._bad_frame(_refuse("bad_frame", message, sid, call_id=frame.call_id))
        if sid in self.streams or sid not in self.attached:
            return self.client_tool_result(frame, now)  # (an unknown id: unknown_stream)
        message_id = self.attached[sid]
        if message_id is not None:
            return [ForwardToolResult(sid, message_id, frame)]
        # Its resume or keyed start is pending: the result goes where that one leads.
        queued = self._results_after.setdefault(sid, [])
        if len(queued) >= MAX_QUEUED_RESULTS:
            message = f"{MAX_QUEUED_RESULTS} results wait for this stream's attach already"
            return [_refuse("unknown_tool_call", message, sid, call_id=frame.call_id)]
        queued.append(frame)
        return []

    def client_tool_result(self, frame: ToolResult, now: float) -> list[Action]:
        """A client's result for a call of a stream of this session (or a forwarded one).

        Its refusal is a `SendControl`; the shell that forwarded it sends that to the
        follower's client.
        """
        sid, call = frame.stream_id, frame.call_id
        stream = self.streams.get(sid)
        if stream is None:
            return [_refuse("unknown_stream", "no running stream has this id", sid, call_id=call)]
        if stream.loop is None or not stream.loop.policy.client_tools:
            message = "this stream takes no tool results (agent.client_tools is not on)"
            return [_refuse("unknown_tool_call", message, sid, call_id=call)]
        output = stream.tool_result(frame.call_id, frame.content, frame.error, client=True, now=now)
        if isinstance(output, Refused):
            return [_refuse(output.code, output.message, sid, call_id=call)]
        actions: list[Action] = [SendStream(sid, output)]
        if output.turn is not None and output.turn.request is not None:
            actions.append(NextTurn(sid, output.turn.request))
        return actions

    def tool_finished(
        self, stream_id: str, call_id: str, content: Any, error: ToolError | None, now: float
    ) -> StreamOutput:
        """A server tool's outcome for a call it ran; `turn.request` once the turn is whole."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return StreamOutput(closed=True)
        output = stream.tool_result(call_id, content, error, client=False, now=now)
        if isinstance(output, Refused) and output.code == "tool_result_too_large":
            # The stream's results are full: the model hears why instead of the result.
            error = ToolError("tool_response_too_large", output.message)
            output = stream.tool_result(call_id, None, error, client=False, now=now)
        if isinstance(output, Refused):  # pragma: no cover - the shell runs each call once
            raise ProtocolError(f"a server tool's result was refused: {output.code}")
        return output

    def drain(self) -> None:
        """The gateway is shutting down: refuse new streams, let running ones finish."""
        self.draining = True

    def cancel_all(self, error: WsgateError | None = None) -> list[Action]:
        """Cancel every running stream (shutdown deadline, slow consumer)."""
        actions: list[Action] = []
        for stream_id in list(self.streams):
            actions.extend(self.cancel(stream_id, error=error))
        return actions

    def queue(self, stream_id: str, output: StreamOutput) -> bool:
        """Queue a stream's output for the client; True when something now waits to be sent.

        The terminal frame (the output is `closed`) ends the stream's queue: what follows
        for that stream is never sent.
        """
        outbox = self.outbox
        for frame, data in zip(output.frames, output.data, strict=True):
            outbox.push(stream_id, data, frame)
        if output.telemetry is not None:
            outbox.push_telemetry(stream_id, encode_frame(output.telemetry))
        if output.closed:
            outbox.end_stream(stream_id)
        return bool(output.frames) or output.telemetry is not None

    def upstream_data(self, stream_id: str, data: bytes, now: float) -> StreamOutput:
        """Bytes from a stream's upstream; frames for that stream (none once it ended)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return StreamOutput(closed=True)
        return self._settle(stream, stream.feed(data, now))

    def upstream_eof(self, stream_id: str, now: float) -> StreamOutput:
        """The upstream response ended."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return StreamOutput(closed=True)
        return self._settle(stream, stream.eof(now))

    def poll(self, stream_id: str, now: float) -> StreamOutput:
        """A stream's buffering deadline came: the text due now."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return StreamOutput(closed=True)
        return stream.poll(now)

    def upstream_failed(self, stream_id: str, error: WsgateError) -> StreamOutput:
        """The upstream call failed with a typed error."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return StreamOutput(closed=True)
        return self._settle(stream, stream.fail(error))

    def next_deadline(self) -> float | None:
        """The earliest deadline: of the running streams (`Stream.deadline`), of the credentials."""
        due = min((stream.deadline() for stream in self.streams.values()), default=None)
        auth = self._auth_deadline
        if auth is not None and (due is None or auth < due):
            return auth
        return due

    def expire(self, now: float) -> list[Action]:
        """End every stream past a deadline: its error and `finish`, and its upstream closed.

        Credentials past their expiry close the connection (4502), its streams cancelled.
        """
        if self._auth_deadline is not None and now >= self._auth_deadline:
            self._auth_deadline = None
            expired = AuthExpired("the credentials expired; reconnect with new ones")
            return [_close(CloseCode.AUTH_EXPIRED, "auth expired", expired)]
        actions: list[Action] = []
        for stream_id, stream in list(self.streams.items()):
            error = stream.timed_out(now)
            if error is not None:
                actions.append(SendStream(stream_id, self._settle(stream, stream.fail(error))))
                actions.append(CancelUpstream(stream_id))
        return actions

    def first_token_left(self, stream_id: str, now: float) -> float | None:
        """Seconds until a stream's first-token deadline (None: it has content, or ended)."""
        stream = self.streams.get(stream_id)
        return None if stream is None else stream.first_token_left(now)

    def retry_upstream(self, stream_id: str, target: Target) -> bool:
        """A transient provider failure before the first token: read a new call.

        True when the stream took a fresh parser and the shell may call the provider again;
        False when it must not (the stream ended, or it produced content): then the shell
        reports the failure with `upstream_failed`.
        """
        stream = self.streams.get(stream_id)
        if stream is None or not stream.may_retry:
            return False
        stream.restart(target.parser())
        return True

    # --- what the shell reports of claims, resumes and followers --------------------------

    def admitted(self, claim: AdmitStart, now: float) -> list[Action]:
        """The start was admitted (quotas, and the idempotency key was free): it runs."""
        sid = claim.start.stream_id
        if sid not in self.attached:
            return []  # refused or gone meanwhile
        del self.attached[sid]
        cancelled = sid in self._cancel_after
        self._cancel_after.discard(sid)
        actions = self._open(claim.start, claim.target, claim.message_id, claim.epoch, now)
        if cancelled:
            actions.extend(self.cancel(sid))
        for frame in self._results_after.pop(sid, ()):  # (none can be for a new stream's
            actions.extend(self.client_tool_result(frame, now))  # calls: each is refused)
        return actions

    def attach(self, stream_id: str, message_id: str) -> list[Action]:
        """The shell follows `message_id` as `stream_id` now (a resume or a keyed retry)."""
        if stream_id not in self.attached:
            return []
        self.attached[stream_id] = message_id
        if stream_id in self._cancel_after:
            self._cancel_after.discard(stream_id)
            self._results_after.pop(stream_id, None)
            return [CancelMessage(message_id)]
        queued = self._results_after.pop(stream_id, ())
        return [ForwardToolResult(stream_id, message_id, frame) for frame in queued]

    def refuse(self, stream_id: str | None, error: WsgateError) -> list[Action]:
        """A pending claim or resume failed (or a cancel by message_id): its refusal."""
        if stream_id is not None:
            self.follower_ended(stream_id)
        return [_refuse(error.code, error.public_message, stream_id, error.retry_after_ms)]

    def follower_ended(self, stream_id: str) -> None:
        """A follower stream sent its generation's `finish`, or its refusal: the id is free."""
        self.attached.pop(stream_id, None)
        self._cancel_after.discard(stream_id)
        self._results_after.pop(stream_id, None)

    def connection_lost(self) -> list[Action]:
        """The client is gone: cancel its streams, or detach those that asked to continue."""
        actions: list[Action] = []
        for stream_id, stream in list(self.streams.items()):
            if stream.options.on_disconnect == "continue":
                actions.append(DetachStream(stream_id, stream.message_id))
            else:
                actions.extend(self.cancel(stream_id))
        return actions

    def _start(self, frame: Start, now: float) -> list[Action]:  # noqa: PLR0911 - one per check
        sid = frame.stream_id
        refusal = self._admit(sid)
        if refusal is not None:
            return [refusal]
        principal = self.principal
        assert principal is not None  # noqa: S101 - rule 5: nothing is started before it
        if not principal.may_use(frame.request.model):
            forbidden = Forbidden(f"this principal may not use model {frame.request.model!r}")
            return [_refuse(forbidden.code, forbidden.public_message, sid)]
        try:
            if frame.options.agent is not None:
                frame = msgspec.structs.replace(frame, request=self._with_tools(frame))
            target = self._resolve(frame.request, frame.options)
        except WsgateError as exc:
            return [_refuse(exc.code, exc.public_message, sid)]
        options = frame.options
        if options.idempotency_key is not None and (not options.resumable or self._log is None):
            message = "idempotency_key needs a logged stream: drop it or resumable: false"
            return [_refuse("bad_frame", message, sid)]
        epoch: str | None = None
        if options.resumable and self._log is not None:
            if self._log.healthy():
                epoch = self._log.new_epoch()
            elif not self._log.without_log or options.idempotency_key is not None:
                error = StoreUnavailable("the resume store is unavailable; retry shortly")
                return [_refuse(error.code, error.public_message, sid, 1000)]
        key = options.idempotency_key if epoch is not None else None
        quota = self._admission and principal.quota.limits_streams
        if key is not None or quota:
            self.attached[sid] = None
            digest = None if key is None else fingerprint(frame.request, options)
            message_id = self._new_message_id()
            return [AdmitStart(frame, target, key, digest, message_id, epoch, quota)]
        return self._open(frame, target, self._new_message_id(), epoch, now)

    def _with_tools(self, frame: Start) -> ChatRequest:
        """The request with the stream's server-side tools declared to the model.

        Raises `BadRequest` for a tool that is not configured, or a name the request
        declares already.
        """
        agent = frame.options.agent
        request = frame.request
        assert agent is not None  # noqa: S101 - only called for a loop
        if not agent.server_tools:
            return request
        declared = {_tool_name(tool) for tool in request.tools or ()}
        added: list[dict[str, Any]] = []
        for name in dict.fromkeys(agent.server_tools):
            definition = self._tools.get(name)
            if definition is None:
                raise BadRequest(f"agent.server_tools: no tool {name!r} is configured")
            if name in declared:
                raise BadRequest(f"agent.server_tools: the request declares {name!r} itself")
            added.append(definition)
        return msgspec.structs.replace(request, tools=[*(request.tools or ()), *added])

    def _resume(self, frame: Resume) -> list[Action]:
        sid = frame.stream_id
        refusal = self._admit(sid)
        if refusal is not None:
            return [refusal]
        if self._log is None:
            return [_refuse("unknown_message", "this gateway keeps no logs to resume", sid)]
        self.attached[sid] = None
        return [ResumeStream(sid, frame.message_id, frame.last_seq, frame.snapshot, frame.epoch)]

    def _cancel_frame(self, frame: Cancel) -> list[Action]:
        if (frame.stream_id is None) == (frame.message_id is None):
            message = "a cancel names exactly one of stream_id and message_id"
            return [_refuse("bad_frame", message, frame.stream_id)]
        if frame.message_id is not None:
            return [CancelMessage(frame.message_id)]
        assert frame.stream_id is not None  # noqa: S101 - one of the two, checked above
        return self.cancel(frame.stream_id, unknown_is_error=True)

    def _admit(self, sid: str) -> SendControl | None:
        """Why a new stream (started or resumed) cannot take `sid` now, if it cannot."""
        if self.draining:
            return _refuse("shutting_down", "the gateway is shutting down; reconnect", sid)
        if sid in self.streams or sid in self.attached:
            return _refuse("stream_exists", "a stream with this id is running", sid)
        if len(self.streams) + len(self.attached) >= self.limits.max_streams:
            message = f"the connection already runs {self.limits.max_streams} streams"
            return _refuse("too_many_streams", message, sid)
        return None

    def _open(
        self, frame: Start, target: Target, message_id: str, epoch: str | None, now: float
    ) -> list[Action]:
        sid = frame.stream_id
        try:
            parser = target.parser()
        except WsgateError as exc:
            return [_refuse(exc.code, exc.public_message, sid)]
        agent = frame.options.agent
        loop = None
        if agent is not None:
            policy = LoopPolicy(
                client_tools=agent.client_tools,
                server_tools=frozenset(agent.server_tools),
                max_steps=agent.max_steps,
                result_timeout=agent.tool_timeout_ms / 1000,
                max_result_bytes=self.limits.max_tool_result_bytes,
            )
            loop = ToolLoop(frame.request, policy)
        stream = Stream(
            sid,
            message_id,
            frame.request.model,
            frame.options,
            parser,
            now,
            self.limits.telemetry_interval,
            self.limits.first_token_timeout,
            self.limits.max_duration,
            epoch,
            loop,
            target.parser,
        )
        self.streams[sid] = stream
        actions: list[Action] = [
            SendStream(sid, stream.start()),
            StartUpstream(sid, message_id, frame.request, target),
        ]
        if epoch is not None:
            claimed = frame.options.idempotency_key is not None
            actions.insert(0, BeginLog(sid, message_id, epoch, claimed))
        return actions

    def _settle(self, stream: Stream, output: StreamOutput) -> StreamOutput:
        if output.closed:
            self.streams.pop(stream.stream_id, None)
        return output


MAX_QUEUED_RESULTS = 64
"""`tool_result` frames held for one stream while its resume or keyed start pends."""


def _tool_name(tool: dict[str, Any]) -> object:
    """The name a request's tool declares (chat shape `function.name`, or flat `name`)."""
    function = tool.get("function")
    return function.get("name") if isinstance(function, dict) else tool.get("name")


def frame_type(frame: object) -> str:
    """The wire `type` of a frame instance."""
    return str(type(frame).__struct_config__.tag)  # type: ignore[attr-defined]


def _refuse(
    code: str,
    message: str,
    stream_id: str | None = None,
    retry_after_ms: int | None = None,
    call_id: str | None = None,
) -> SendControl:
    return SendControl(
        ErrorFrame(
            code=code,
            message=message,
            retryable=ERROR_CODES[code].retryable,
            stream_id=stream_id,
            retry_after_ms=retry_after_ms,
            call_id=call_id,
        )
    )


def _close(code: int, reason: str, error: WsgateError) -> CloseConnection:
    frame = ErrorFrame(error.code, error.public_message, ERROR_CODES[error.code].retryable)
    return CloseConnection(code, reason, frame)
