"""One client connection: its reader, the session's actions carried out, flow control applied.

Owns the asyncio side of a connection. The core `Session` decides what a client frame
means; this module executes: it feeds received frames to the session, has the session queue
what its streams produce in the session's outbox, starts and cancels stream tasks
(`stream_task.py`),
hands writing to the `Writer` (`writer.py`), and applies the flow verdicts of
`core/flow.py`:

- Backpressure: after each delivery a stream's provider body is paused while the stream's
  queue is full, or while the connection holds half of `buffer_bytes`; it is resumed when
  the writer has made room (rules 1 and 2 of `core/flow.py`). A push body pauses its
  provider's transport, a pull body its task.
- Slow consumers: past `buffer_bytes` buffered with the socket backed up (rule 3), the
  connection's streams are cancelled, a `slow_consumer` error is attempted and the
  connection closes with 4000. A send that waits longer than `send_timeout` (a client
  that stopped reading entirely) aborts the transport: a close handshake or a keepalive
  ping would wait behind the same full buffer.
- Reader backpressure: refusals of bad frames and the frames of ended streams are bounded
  (rule 4); past it the reader stops reading the client.
- Liveness: a `heartbeat` frame after `heartbeat_interval` of silence, for browsers, which
  cannot see WebSocket pings; one loop timer per connection does this and the send timeout.
- Deadlines: the streams' first-token and maximum-duration deadlines are the core's
  (`Stream.deadline`); one timer per connection is armed for the earliest, and when it fires
  the session ends what is past due (`Session.expire`) and the tasks are cancelled.
- Disconnect: streams that asked `on_disconnect: continue` are detached (`detached.py`)
  for the disconnect window instead of being cancelled.
- Authentication: the connection's principal comes from the handshake (`principal`), or
  from the client's first frame, `auth`, within `auth_timeout` (the session decides; this
  shell verifies the token with `Shared.authenticate` and arms the expiry timer). A
  principal with a connection quota takes a slot in the limiter first (`quotas.py`).
- Quotas: a start the session hands out as `AdmitStart` with `quota` is admitted by the
  limiter (concurrent streams, starts and tokens per minute) before it runs or claims.
- Resume: every frame of a logged stream (its `stream.started` carries an epoch) is
  appended to the resume store as it is produced, and its `finish` ends the message there.
  A `resume`, a keyed `start` and a `cancel` by `message_id` need the store's answer: each
  runs in a task of its own (`follower.py` for the first two), so the reader never waits.

Memory: connections are many and mostly idle, so an idle one holds only what it must: the
reader (websockets' handler task), the writer's state and one loop timer. Writer tasks,
stream tasks, the deadline timer and the outbox's queues exist only while used.

Every `await` here is cancellable; `CancelledError` is always re-raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
import websockets
from websockets.asyncio.server import ServerConnection

from wsgate.core.agent import ToolCall
from wsgate.core.errors import (
    ERROR_CODES,
    AuthFailed,
    AuthTimeout,
    CloseCode,
    IdempotencyConflict,
    RateLimited,
    ShuttingDown,
    SlowConsumer,
    StoreUnavailable,
    UnknownMessage,
    WsgateError,
)
from wsgate.core.flow import Pause
from wsgate.core.frames import (
    DeltaText,
    ErrorFrame,
    FinishFrame,
    GoAway,
    Heartbeat,
    ToolError,
    ToolResult,
    encode_frame,
)
from wsgate.core.principal import Principal
from wsgate.core.ratelimit import Limiter
from wsgate.core.session import (
    Action,
    AdmitStart,
    Authenticate,
    BeginLog,
    CancelMessage,
    CancelUpstream,
    CloseConnection,
    DetachStream,
    ForwardToolResult,
    NextTurn,
    ResumeStream,
    SendControl,
    SendStream,
    Session,
    StartUpstream,
)
from wsgate.core.store import Claim
from wsgate.core.stream import StreamOutput, TurnChange
from wsgate.gateway.accounting import Accounting
from wsgate.gateway.detached import DetachedLog, DetachedStreams
from wsgate.gateway.follower import Follow, follow
from wsgate.gateway.options import ConnectionOptions, ConnectionStats
from wsgate.gateway.ports import Body, Store, Upstream
from wsgate.gateway.quotas import Quotas
from wsgate.gateway.stream_task import StreamTasks
from wsgate.gateway.throttle import LogThrottle
from wsgate.gateway.writer import Batch, Writer
from wsgate.log import bind, get_logger

__all__ = ["Connection", "ConnectionOptions", "ConnectionStats", "Shared", "Upstream"]

log = get_logger("wsgate.gateway")

HEARTBEAT = encode_frame(Heartbeat())
MAX_PENDING_CANCELS = 16
"""Cancels by message_id waiting for the store, per connection; past it the reader waits."""


@dataclass
class Shared:
    """What every connection of a gateway shares."""

    accounting: Accounting = field(default_factory=Accounting)
    store: Store | None = None  # None: nothing is logged, nothing can be resumed
    generations: dict[str, tuple[Connection, str]] = field(default_factory=dict)
    """The logged generations running on this node: message_id -> (connection, stream_id)."""
    detached: DetachedStreams = field(default_factory=DetachedStreams)
    background: set[asyncio.Future[None]] = field(default_factory=set)  # store clean-ups
    detached_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    detached_owners: set[Connection] = field(default_factory=set)
    authenticate: Callable[[str], Awaitable[Principal]] | None = None  # None: no [auth]
    auth_timeout: float = 10.0  # s for the first `auth` frame of a connection without one
    limiter: Limiter | None = None  # quotas; None: none are enforced
    quota_fail_open: bool = False  # the limiter cannot answer: admit (True) or refuse
    policy_closes: LogThrottle = field(
        default_factory=lambda: LogThrottle("connection_closed_by_policy")
    )  # failed authentications, bad frames: clients cause them at will
    run_tool: Callable[[str, ToolCall], Awaitable[tuple[Any, ToolError | None]]] | None = None
    """Runs a server-side tool's call (message_id, call) once; None: no [tools] configured."""

    def cancel_here(self, message_id: str, principal: str | None = None) -> bool:
        """Cancel a logged generation if it runs on this node (for `principal`, if given)."""
        local = self.generations.get(message_id)
        if local is None:
            return False
        connection, stream_id = local
        owner = connection.session.principal
        if principal is not None and (owner is None or owner.id != principal):
            return False  # another principal's: it reads as unknown (rule 6)
        connection.apply(connection.session.cancel(stream_id))
        return True

    def tool_result_here(
        self, message_id: str, frame: ToolResult, principal: str
    ) -> list[SendControl] | None:
        """Hand a follower's `tool_result` to the stream generating `message_id` on this node.

        None when it does not run here (or is another principal's); else the refusals to
        send the follower's client (with its `stream_id`), if the result was not taken.
        """
        local = self.generations.get(message_id)
        if local is None:
            return None
        connection, stream_id = local
        owner = connection.session.principal
        if owner is None or owner.id != principal:
            return None
        forwarded = msgspec.structs.replace(frame, stream_id=stream_id)
        actions = connection.session.client_tool_result(forwarded, time.monotonic())
        connection.apply([a for a in actions if not isinstance(a, SendControl)])
        return [
            SendControl(msgspec.structs.replace(a.frame, stream_id=frame.stream_id))
            for a in actions
            if isinstance(a, SendControl)
        ]


class Connection:
    """Runs one accepted WebSocket until it closes."""

    __slots__ = (
        "_auth_timer",
        "_auth_token",
        "_backlog_room",
        "_cancels",
        "_closer",
        "_deadline",
        "_deadline_at",
        "_followers",
        "_held",
        "_logged",
        "_principal",
        "_quotas",
        "_room",
        "_silenced",
        "_tasks",
        "_timer",
        "_upstream",
        "flow",
        "logs",
        "options",
        "outbox",
        "session",
        "shared",
        "stats",
        "writer",
        "ws",
    )

    def __init__(  # noqa: PLR0913 - the connection and what it shares with the gateway
        self,
        ws: ServerConnection,
        session: Session,
        upstream: Upstream,
        options: ConnectionOptions,
        shared: Shared,
        *,
        principal: Principal | None = None,
    ) -> None:
        self.ws = ws
        self.session = session
        self.options = options
        self.shared = shared
        self.outbox = session.outbox  # the session's: it decides, this shell drains
        self.flow = session.flow
        self.stats = ConnectionStats()
        self.writer = Writer(ws, self.outbox, self._sent, self._drained, self.abort)
        self.logs: dict[str, DetachedLog] = {}  # detached streams of this connection
        self._held: dict[str, tuple[Body, Pause]] = {}  # paused bodies, and why
        self._upstream = upstream
        self._tasks: StreamTasks | None = None  # made by the first stream
        self._backlog_room: asyncio.Event | None = None  # exists while the reader waits
        self._timer: asyncio.TimerHandle | None = None
        self._silenced = False  # no more output: slow consumer, or the connection is gone
        self._closer: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None  # the streams' earliest deadline
        self._deadline_at = 0.0
        self._logged: dict[str, str] = {}  # logged running streams: stream_id -> message_id
        self._followers: dict[str, asyncio.Task[None]] = {}  # resumes and keyed starts
        self._cancels: set[asyncio.Task[None]] = set()  # cancels by message_id (bounded)
        self._room: asyncio.Event | None = None  # exists while a follower waits for room
        self._principal = principal  # from the handshake; None: the first frame is `auth`
        self._auth_token: str | None = None  # an `auth` frame's token, verified by the reader
        self._auth_timer: asyncio.TimerHandle | None = None  # the first `auth`'s deadline
        self._quotas: Quotas | None = None  # made with the principal, when quotas apply

    @property
    def stream_tasks(self) -> StreamTasks:
        """The stream tasks of this connection (made when the first stream starts)."""
        if self._tasks is None:
            self._tasks = StreamTasks(self, self._upstream)
        return self._tasks

    @property
    def idle(self) -> bool:
        """No running or followed stream and nothing left to send."""
        session = self.session
        return not session.streams and not session.attached and self.outbox.pending_bytes == 0

    async def run(self) -> None:
        """Serve the connection; returns when it is closed and its own tasks have ended."""
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.options.tick, self._tick)
        try:
            if self._principal is not None:
                await self._authenticated(self._principal)
            else:
                self._auth_timer = loop.call_later(self.shared.auth_timeout, self._auth_late)
            await self._reader()
        finally:
            self._silenced = True
            self._timer.cancel()
            if self._auth_timer is not None:
                self._auth_timer.cancel()
            await self._stop_followers()
            self.apply(self.session.connection_lost())
            if self._quotas is not None:  # detached streams keep their slots until they end
                self._quotas.close(keep=self.logs.keys())
            if not self.logs and self._deadline is not None:
                self._deadline.cancel()  # detached streams keep it: their deadlines still hold
                self._deadline = None
            if self._tasks is not None:
                await self._tasks.reap()
            await self.writer.stop()
            if self._closer is not None:
                await asyncio.gather(self._closer, return_exceptions=True)
            accounting = self.shared.accounting
            accounting.telemetry_shed += self.outbox.shed_telemetry
            accounting.coalesced_frames += self.outbox.coalesced
            self.outbox.clear()

    # --- reading ---------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    actions = self.session.receive(message, time.monotonic())
                else:
                    actions = self.session.receive_binary()
                self.apply(actions)
                if self._auth_token is not None:
                    await self._verify()
                if self.flow.reader_paused():
                    await self._wait_for_backlog()
                if len(self._cancels) >= MAX_PENDING_CANCELS:
                    await asyncio.wait(self._cancels, return_when=asyncio.FIRST_COMPLETED)
        except websockets.ConnectionClosed:
            pass

    # --- authentication (the session's rule 5) -----------------------------------------

    async def _verify(self) -> None:
        """Verify an `auth` frame's token; the session takes the verdict."""
        token, self._auth_token = self._auth_token, None
        assert token is not None  # noqa: S101 - called when one waits
        authenticate = self.shared.authenticate
        if authenticate is None:
            self.apply(self.session.auth_refused(AuthFailed("this gateway has no [auth]")))
            return
        try:
            async with asyncio.timeout(self.shared.auth_timeout):
                principal = await authenticate(token)
        except TimeoutError:
            self.shared.accounting.auth_failures["timeout"] += 1
            late = AuthTimeout(
                f"the credentials were not verified within {self.shared.auth_timeout:g} s"
            )
            self.apply(self.session.auth_refused(late))
            return
        except AuthFailed as exc:
            self.shared.accounting.auth_failures[exc.reason] += 1
            self.apply(self.session.auth_refused(exc))
            return
        except Exception:  # a bug must not leave the connection waiting
            log.exception("authenticate_crashed")
            self.apply(self.session.auth_refused(AuthFailed("the credentials were refused")))
            return
        await self._authenticated(principal)

    async def _authenticated(self, principal: Principal) -> None:
        """Credentials were accepted: a connection slot first, then the session's `ready`."""
        first = not self.session.greeted
        if first:
            if self._auth_timer is not None:
                self._auth_timer.cancel()
                self._auth_timer = None
            if not await self._admit_connection(principal):
                return
            bind(principal=principal.id, auth_method=principal.method)
            log.info("connection_authenticated")
        self.apply(self.session.authenticated(principal, time.monotonic(), time.time()))
        due = self.session.next_deadline()
        if due is not None:
            self._watch(due)

    async def _admit_connection(self, principal: Principal) -> bool:
        """Take the principal's connection slot (its quota); False: refused and closing."""
        limiter = self.shared.limiter
        quota = principal.quota
        if limiter is None or not (quota.limits_streams or quota.connections):
            return True
        background = self.shared.background
        self._quotas = Quotas(limiter, principal, background, fail_open=self.shared.quota_fail_open)
        try:
            await self._quotas.admit_connection(self.session.conn_id)
        except (RateLimited, StoreUnavailable) as exc:
            self._quotas = None
            if isinstance(exc, RateLimited):
                self.shared.accounting.rate_limited["connection"] += 1
            retryable = ERROR_CODES[exc.code].retryable
            frame = ErrorFrame(
                exc.code, exc.public_message, retryable, retry_after_ms=exc.retry_after_ms
            )
            self._end_connection(CloseConnection(CloseCode.TRY_AGAIN_LATER, exc.code, frame))
            return False
        return True

    def _auth_late(self) -> None:
        """No `auth` frame came within `auth_timeout`."""
        self._auth_timer = None
        session = self.session
        if session.principal is None and self._auth_token is None and not session.authenticating:
            self.shared.accounting.auth_failures["timeout"] += 1
            timeout = AuthTimeout(f"no auth frame within {self.shared.auth_timeout:g} s")
            self.apply(self.session.auth_refused(timeout))

    async def _wait_for_backlog(self) -> None:
        # Stop reading the client until the writer has sent what the reader queued: a
        # client that sends faster than it reads gets TCP backpressure, not our memory.
        closed = asyncio.ensure_future(self.ws.wait_closed())
        backlog_room = self._backlog_room = asyncio.Event()
        try:
            while not self.flow.reader_may_resume():
                backlog_room.clear()
                room = asyncio.ensure_future(backlog_room.wait())
                done, _ = await asyncio.wait({room, closed}, return_when=asyncio.FIRST_COMPLETED)
                room.cancel()
                if closed in done:
                    return  # the reader's next read raises ConnectionClosed
        finally:
            closed.cancel()
            self._backlog_room = None

    # --- executing the session's actions ------------------------------------------------

    def apply(self, actions: list[Action]) -> None:
        """Carry out what the session decided."""
        for action in actions:
            if isinstance(action, SendControl):
                self._control(encode_frame(action.frame))
            elif isinstance(action, SendStream):
                self.deliver(action.stream_id, action.output)
            elif isinstance(action, StartUpstream):
                stream = self.session.streams.get(action.stream_id)
                if stream is None:
                    continue  # ended while its `stream.started` was queued (a slow consumer)
                self.shared.accounting.streams_started += 1
                self.stream_tasks.start(action)
                self._watch(stream.deadline())
            elif isinstance(action, CancelUpstream):
                self.shared.accounting.cancels += 1
                self.stream_tasks.cancel(action.stream_id)
            elif isinstance(action, DetachStream | BeginLog):
                self._apply_log(action)
            elif isinstance(action, CloseConnection | Authenticate):
                self._apply_connection(action)
            elif isinstance(action, NextTurn | ForwardToolResult):
                self._apply_agent(action)
            else:
                self._apply_stored(action)

    def _apply_agent(self, action: NextTurn | ForwardToolResult) -> None:
        """The agent loop: a turn's results are in, or a follower's result is to forward.

        A follower's result goes to the generation it follows, if it runs on this node.
        """
        if isinstance(action, NextTurn):
            self.stream_tasks.next_turn(action.stream_id, action.request)
            return
        refusals = self.shared.tool_result_here(action.message_id, action.frame, self._principal_id)
        if refusals is None:
            message = "the generation does not run on this node: send tool results to its node"
            refusals = [
                SendControl(
                    ErrorFrame(
                        "unknown_tool_call",
                        message,
                        retryable=False,
                        stream_id=action.stream_id,
                        call_id=action.frame.call_id,
                    )
                )
            ]
        self.apply(list(refusals))

    def _apply_log(self, action: DetachStream | BeginLog) -> None:
        if isinstance(action, DetachStream):
            self._detach(action)
        else:
            self._begin_log(action)

    def _apply_connection(self, action: CloseConnection | Authenticate) -> None:
        if isinstance(action, Authenticate):
            self._auth_token = action.token  # the reader verifies it next
        else:
            self._end_connection(action)

    def _apply_stored(self, action: ResumeStream | AdmitStart | CancelMessage) -> None:
        """The actions that need the store's (or limiter's) answer: each in a task of its own."""
        if isinstance(action, ResumeStream):
            what = Follow(
                action.stream_id,
                action.message_id,
                action.last_seq,
                action.snapshot,
                action.epoch,
                principal=self._principal_id,
            )
            self._spawn(action.stream_id, self._follow(what))
        elif isinstance(action, AdmitStart):
            self._spawn(action.start.stream_id, self._admit(action))
        else:
            self._cancel_message(action.message_id)

    @property
    def _principal_id(self) -> str:
        principal = self.session.principal
        assert principal is not None  # noqa: S101 - nothing runs before it (session rule 5)
        return principal.id

    def _control(self, data: bytes) -> None:
        if self._silenced:
            return
        self.outbox.push_control(data)
        self.writer.wake()

    def deliver(self, stream_id: str, output: StreamOutput) -> None:
        """Log a stream's frames (if it is logged), then queue them (unless it is detached)."""
        message_id = self._logged.get(stream_id)
        if message_id is not None:
            self._log(stream_id, message_id, output)
        quotas = self._quotas
        if quotas is not None and quotas.tracks(stream_id):
            quotas.observe(stream_id, output.frames)
            if output.closed:
                quotas.stream_ended(stream_id)
        if output.closed:
            self._count_finish(output)
        else:
            if output.deadline is not None:
                self.stream_tasks.schedule_poll(stream_id, output.deadline)
            if output.turn is not None:
                self._turn_moved(stream_id, output.turn)
        detached = self.logs.get(stream_id)
        if detached is not None:
            self._log_detached(detached, output)
            return
        if not self._silenced:
            self._queue(stream_id, output)

    def _turn_moved(self, stream_id: str, turn: TurnChange) -> None:
        """The agent loop ended a turn or readied the next: the stream's deadline moved."""
        if turn.request is not None:
            self.shared.accounting.agent_turns += 1
            quotas = self._quotas
            if quotas is not None:
                quotas.turn_started(stream_id, turn.request)
        stream = self.session.streams.get(stream_id)
        if stream is not None:
            self._watch(stream.deadline())

    def _queue(self, stream_id: str, output: StreamOutput) -> None:
        if self.session.queue(stream_id, output):
            self.writer.wake()
        in_transport = self._transport_buffered()
        buffered = self.outbox.pending_bytes + in_transport
        self.stats.max_buffered = max(self.stats.max_buffered, buffered)
        if self.flow.slow_consumer(in_transport):
            self._slow_consumer(buffered)

    def _count_finish(self, output: StreamOutput) -> None:
        last = output.frames[-1] if output.frames else None
        if isinstance(last, FinishFrame):
            self.shared.accounting.finishes[last.reason] += 1
            error = next((f for f in reversed(output.frames) if type(f) is ErrorFrame), None)
            log.info(
                "stream_finished",
                stream_id=last.stream_id,
                message_id=self.stream_tasks.message_id(last.stream_id),
                reason=last.reason,
                last_seq=last.seq,
                error_code=error.code if isinstance(error, ErrorFrame) else None,
            )

    def _transport_buffered(self) -> int:
        transport = self.ws.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    # --- flow control (the verdicts are core/flow.py's) ---------------------------------

    def hold(self, stream_id: str, body: Body) -> bool:
        """After a delivery: pause the stream's body while its queue or the connection is full."""
        if stream_id in self.logs:
            return False  # detached: its log, not the client, takes the frames
        reason = self.flow.pause(stream_id)
        if reason is None:
            return False
        body.pause()
        self._held[stream_id] = (body, reason)
        self.stats.pauses += 1
        return True

    def release(self, stream_id: str) -> None:
        """The stream's body is gone (its call ended): forget it."""
        self._held.pop(stream_id, None)

    def _resume_held(self) -> None:
        """Resume every paused body whose reason has passed (the verdicts of core/flow.py)."""
        flow = self.flow
        for stream_id, (body, reason) in list(self._held.items()):
            still = flow.still_paused(stream_id, reason)
            if still is not None:
                self._held[stream_id] = (body, still)
                continue
            del self._held[stream_id]
            body.resume()  # a push body reads what waits at once: this may hold it again

    def _sent(self, batch: Batch) -> None:
        """The writer wrote a batch: account it, and resume what the room allows."""
        stats = self.stats
        stats.writes += 1
        stats.frames_sent += len(batch)
        stats.bytes_sent += sum(len(data) for _, data in batch)
        if self._held:
            self._resume_held()
        if self._backlog_room is not None and self.flow.reader_may_resume():
            self._backlog_room.set()
        if self._room is not None:
            self._room.set()

    def _drained(self) -> None:
        """The outbox is empty: everything paused may read again."""
        if self._room is not None:
            self._room.set()
        if self._held:
            self._resume_held()
        if self._backlog_room is not None:
            self._backlog_room.set()

    # --- stream deadlines: one timer per connection --------------------------------------

    def _watch(self, due: float) -> None:
        """Arm the connection's deadline timer for `due` (monotonic s) if it is earlier."""
        if self._deadline is not None:
            if self._deadline_at <= due:
                return
            self._deadline.cancel()
        self._deadline_at = due
        delay = max(0.0, due - time.monotonic())
        self._deadline = asyncio.get_running_loop().call_later(delay, self._deadline_passed)

    def _deadline_passed(self) -> None:
        """End the streams past their deadline (the session decides), then watch the next."""
        self._deadline = None
        self.apply(self.session.expire(time.monotonic()))
        due = self.session.next_deadline()
        if due is not None:
            self._watch(due)

    # --- what a stream task needs of its connection (ports.StreamHost) -----------------

    def detached(self, stream_id: str) -> bool:
        """The stream's client left; its frames go to its log."""
        return stream_id in self.logs

    def adopt(self, task: asyncio.Task[None]) -> None:
        """A detached stream's task belongs to the gateway until it ends."""
        self.shared.detached_tasks.add(task)
        task.add_done_callback(self.shared.detached_tasks.discard)

    def cancel_latency(self, seconds: float) -> None:
        """Account the time from a cancel decision to the provider's close."""
        self.shared.accounting.cancel_latency(seconds)

    def retried(self) -> None:
        """Account one retry of a provider call."""
        self.shared.accounting.upstream_retries += 1

    async def run_tool(
        self,
        stream_id: str,  # noqa: ARG002 - the port's signature; the runner keys by message_id
        message_id: str,
        call: ToolCall,
    ) -> tuple[Any, ToolError | None]:
        """Run a server-side tool's call (the gateway's runner: its ledger, its limits)."""
        run = self.shared.run_tool
        if run is None:  # pragma: no cover - a stream names only configured tools
            return None, ToolError("tool_unavailable", "no tools are configured")
        content, error = await run(message_id, call)
        self.shared.accounting.tool_calls["ok" if error is None else error.code] += 1
        return content, error

    # --- the event log, resumes and cancels by message_id --------------------------------

    def _begin_log(self, begin: BeginLog) -> None:
        store = self.shared.store
        if store is None:
            return
        if not begin.claimed:  # a claim began its message already
            store.begin(begin.message_id, begin.epoch, principal=self._principal_id)
        self._logged[begin.stream_id] = begin.message_id
        self.shared.generations[begin.message_id] = (self, begin.stream_id)

    def _log(self, stream_id: str, message_id: str, output: StreamOutput) -> None:
        store = self.shared.store
        assert store is not None  # noqa: S101 - only logged with a store
        append = store.append
        for frame, data in zip(output.frames, output.data, strict=True):
            append(message_id, frame.seq, data)  # type: ignore[union-attr, arg-type]
        if output.closed:
            last = output.frames[-1] if output.frames else None
            store.end(message_id, last.reason if isinstance(last, FinishFrame) else "error")
            del self._logged[stream_id]
            self.shared.generations.pop(message_id, None)

    def _spawn(self, stream_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"follow-{stream_id}")
        self._followers[stream_id] = task
        task.add_done_callback(lambda done: self._forget_follower(stream_id, done))

    def _forget_follower(self, stream_id: str, task: asyncio.Task[None]) -> None:
        if self._followers.get(stream_id) is task:
            del self._followers[stream_id]

    async def _follow(self, what: Follow) -> None:
        store = self.shared.store
        try:
            if store is None:
                self.refuse(what.stream_id, UnknownMessage("this gateway keeps no logs"))
                return
            await follow(self, store, what, self.apply)
        except Exception:  # a bug must not leave the stream id held, nor die unseen
            log.exception("follower_crashed", stream_id=what.stream_id)
            self.refuse(what.stream_id, WsgateError("internal error"))

    async def _admit(self, action: AdmitStart) -> None:
        """Admit a start: the principal's quotas, then its idempotency claim; then it runs."""
        sid = action.start.stream_id
        quotas = self._quotas if action.quota else None
        started = False
        try:
            if action.key is None:
                if quotas is not None:
                    await quotas.admit_stream(sid, action.message_id, action.start.request)
                actions = self.session.admitted(action, time.monotonic())
                started = bool(actions)  # empty: cancelled or gone meanwhile
                self.apply(actions)
            else:  # a retry that attaches to its generation spends no quota
                started = await self._claim(action, action.key, quotas)
        except (RateLimited, StoreUnavailable) as exc:
            if isinstance(exc, RateLimited):
                self.shared.accounting.rate_limited["start"] += 1
            self.refuse(sid, exc)
        except Exception:  # a bug must not leave the stream id held, nor die unseen
            log.exception("admission_crashed", stream_id=sid)
            self.refuse(sid, WsgateError("internal error"))
        finally:
            if quotas is not None and not started:
                quotas.stream_ended(sid)  # nothing generates under its slot here

    async def _claim(self, action: AdmitStart, client_key: str, quotas: Quotas | None) -> bool:
        """Claim the idempotency key, then (a new one) the quotas; True when the stream runs."""
        store = self.shared.store
        sid = action.start.stream_id
        assert store is not None  # noqa: S101 - a claim is made only with a store
        assert action.epoch is not None  # noqa: S101 - a key needs a logged stream
        assert action.fingerprint is not None  # noqa: S101 - made with the key
        principal = self._principal_id
        key = scoped_key(principal, client_key)  # idempotency keys are the principal's (rule 6)
        claiming = asyncio.ensure_future(
            store.claim(key, action.fingerprint, action.message_id, action.epoch, principal)
        )
        try:
            claim = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # The connection went while the store answered: a claim it made must not
            # stand for a generation that will never run (a retry would wait on it).
            claiming.add_done_callback(lambda done: self._abandon(store, key, action, done))
            raise
        except WsgateError as exc:
            # The store may have taken the claim before failing to answer: undo it, or a
            # retry would attach to a record nothing here will ever generate.
            self._release(store, key, action.message_id)
            self.refuse(sid, exc)
            return False
        if claim.new:
            if quotas is not None:
                try:
                    await quotas.admit_stream(sid, action.message_id, action.start.request)
                except BaseException:  # refused, or gone: nothing will run under the key
                    self._release(store, key, action.message_id)
                    raise
            actions = self.session.admitted(action, time.monotonic())
            if not actions:  # refused or gone meanwhile: nothing will run under the key
                self._release(store, key, action.message_id)
            self.apply(actions)
            return bool(actions)
        if claim.fingerprint != action.fingerprint:
            conflict = IdempotencyConflict("this idempotency_key names a different request")
            self.refuse(sid, conflict)
        else:
            log.info("idempotent_start_attached", stream_id=sid, message_id=claim.message_id)
            attach = Follow(sid, claim.message_id, 0, announce=False, principal=principal)
            await self._follow(attach)
        return False

    def _abandon(
        self, store: Store, key: str, action: AdmitStart, done: asyncio.Future[Claim]
    ) -> None:
        if not done.cancelled() and done.exception() is None and done.result().new:
            self._release(store, key, action.message_id)

    def _release(self, store: Store, key: str, message_id: str) -> None:
        """Undo a claim whose stream will not run, in the gateway's background."""
        task = asyncio.ensure_future(store.release(key, message_id))
        self.shared.background.add(task)
        task.add_done_callback(self.shared.background.discard)
        task.add_done_callback(_log_failure)

    def _cancel_message(self, message_id: str) -> None:
        principal = self._principal_id
        if self.shared.cancel_here(message_id, principal):
            return
        task = asyncio.create_task(
            self._cancel_remote(message_id, principal), name="cancel-by-message"
        )
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel_remote(self, message_id: str, principal: str) -> None:
        store = self.shared.store
        try:
            page = None if store is None else await store.read(message_id, 0, 1)
            if page is None or page.meta.expired or page.meta.principal != principal:
                raise UnknownMessage("no generation with this message_id is known")
            if store is not None and page.meta.state == "running":
                await store.cancel(message_id, page.meta.owner)
        except WsgateError as exc:
            self.apply(self.session.refuse(None, exc))

    async def _stop_followers(self) -> None:
        tasks = [*self._followers.values(), *self._cancels]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- what a follower needs of its connection (ports.FollowerHost) --------------------

    def control(self, data: bytes) -> None:
        """Queue a connection-level frame."""
        self._control(data)

    def push(self, stream_id: str, frames: list[bytes], *, ended: bool) -> None:
        """Queue a follower's frames; `ended` after its last."""
        if self._silenced:
            return
        outbox = self.outbox
        for data in frames:
            outbox.push(stream_id, data)
        if ended:
            outbox.end_stream(stream_id)  # the follower frees the id as it returns
        if frames:
            self.writer.wake()
            in_transport = self._transport_buffered()
            if self.flow.slow_consumer(in_transport):
                self._slow_consumer(self.outbox.pending_bytes + in_transport)

    async def room(self, stream_id: str) -> None:
        """Return once the stream's queue has room."""
        while not self.outbox.has_room(stream_id):
            room = self._room = self._room or asyncio.Event()
            room.clear()
            await room.wait()

    def refuse(self, stream_id: str, error: WsgateError) -> None:
        """End a pending or follower stream with a typed refusal, after what it queued.

        The refusal goes into the stream's own queue, not ahead of it as a connection-level
        frame would: a follower's last frames must reach the client before the error that
        says nothing more comes. (A new stream reusing the id shares that queue, in order.)
        """
        for action in self.session.refuse(stream_id, error):
            if isinstance(action, SendControl) and not self._silenced:
                self.outbox.push(stream_id, encode_frame(action.frame), action.frame)
                self.outbox.end_stream(stream_id)
                self.writer.wake()

    def runs_here(self, message_id: str) -> bool:
        """Whether this node generates `message_id` now."""
        return message_id in self.shared.generations

    # --- disconnect policy -----------------------------------------------------------------

    def _detach(self, action: DetachStream) -> None:
        sid = action.stream_id
        if len(self.shared.detached) >= self.options.max_detached:
            # The gateway-wide cap: what clients that left may keep running is bounded.
            log.warning("detach_refused", stream_id=sid, cap=self.options.max_detached)
            self.apply(self.session.cancel(sid))
            return
        detached = DetachedLog(action.message_id, sid)
        self.outbox.take_stream(sid)  # unsent: a resume reads them from the store's log
        self.logs[sid] = detached
        self.shared.detached.add(detached)
        self.shared.detached_owners.add(self)
        self.shared.accounting.detached_streams += 1
        self.stream_tasks.detach(sid, self.options.disconnect_window)
        held = self._held.pop(sid, None)
        if held is not None:
            held[0].resume()
        log.info("stream_detached", stream_id=sid, message_id=action.message_id)

    def _log_detached(self, detached: DetachedLog, output: StreamOutput) -> None:
        tokens = sum(isinstance(frame, DeltaText) for frame in output.frames)
        detached.tokens += tokens
        # Spent after the client left: read only if a resume reads them from the log.
        self.shared.accounting.wasted_tokens_after_cancel += tokens
        detached.finished = detached.finished or output.closed

    def expire(self, stream_id: str) -> None:
        """A detached stream's window passed: cancel it if running, forget its log."""
        detached = self.logs.get(stream_id)
        if stream_id in self.session.streams:
            self.shared.accounting.detached_expired += 1
            self.apply(self.session.cancel(stream_id))  # its finish goes to the log
        self.logs.pop(stream_id, None)
        if not self.logs and self._silenced:
            self._let_go()  # the client left and no detached stream is left
        if detached is not None:
            self.shared.detached.discard(detached.message_id)
            log.info(  # the per-stream waste; /stats has the aggregate
                "detached_stream_ended",
                stream_id=stream_id,
                message_id=detached.message_id,
                wasted_tokens_after_disconnect=detached.tokens,
                finished=detached.finished,
            )

    def expire_all(self) -> None:
        """The gateway stops: end every detached stream of this connection as if expired."""
        for stream_id in list(self.logs):
            self.stream_tasks.cancel_expiry(stream_id)  # a detached stream's tasks exist
            self.expire(stream_id)
        self._let_go()

    def _let_go(self) -> None:
        """Nothing of this connection runs any more: the gateway forgets it, its timer stops."""
        self.shared.detached_owners.discard(self)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # --- shutdown and slow consumers ---------------------------------------------------

    def goaway(self, drain_ms: int, reconnect_after_ms: int) -> None:
        """Tell the client the gateway is leaving; refuse new streams from now on.

        A connection still waiting for its `auth` gets nothing (no frame goes before
        `ready`); the final close reaches it with the others.
        """
        self.session.drain()
        if not self.session.greeted:
            return
        frame = GoAway("shutting down", reconnect_after_ms=reconnect_after_ms, drain_ms=drain_ms)
        self._control(encode_frame(frame))

    def cancel_remaining(self) -> None:
        """The drain deadline passed: end every running stream (`shutting_down`).

        Followers end with a `shutting_down` refusal: resume them on another node.
        """
        error = ShuttingDown("the gateway shut down before the stream finished")
        self.apply(self.session.cancel_all(error))
        for stream_id, task in list(self._followers.items()):
            task.cancel()
            if stream_id in self.session.attached:
                self.refuse(stream_id, ShuttingDown("the gateway shut down; resume elsewhere"))

    def _end_connection(self, action: CloseConnection) -> None:
        """The session closes the connection (a client past `max_bad_frames`)."""
        if self._silenced:
            return
        self.shared.policy_closes(code=int(action.code), reason=action.reason)
        self.session.drain()
        self.apply(self.session.cancel_all())  # their `finish` frames go out first
        self._silenced = True
        last = encode_frame(action.frame)
        self._closer = asyncio.create_task(self._close_when_sent(action.code, action.reason, last))

    async def _close_when_sent(self, code: int, reason: str, last: bytes) -> None:
        """Once what is queued went out (answers, finishes), the last error, then the close.

        The last error is sent here, not queued: control frames go ahead of stream frames
        in the outbox, and it must follow the streams' `finish` frames. Within 1 s.
        """
        try:
            async with asyncio.timeout(1.0):
                while not self.outbox.empty:  # noqa: ASYNC110 - the writer empties it
                    await asyncio.sleep(0.01)
                await self.ws.send(last, text=True)
                await self.ws.close(code, reason)
        except (TimeoutError, websockets.ConnectionClosed):
            self.abort("close_timeout")

    def revoke(self) -> None:
        """The API key this connection authenticated with was revoked or removed: close 4501."""
        self.apply(self.session.auth_refused(AuthFailed("the credentials were revoked")))

    def overflowed(self, reason: str, buffered: int) -> None:
        """The guard's hook: the transport holds too much for this client, whoever queued it.

        `reason` is `buffer_full` (frames, pongs and close frames past the connection's
        cap) or `send_timeout` (the transport stayed paused); either way a slow consumer.
        """
        if reason == "send_timeout":
            self.shared.accounting.send_timeouts += 1
        self._slow_consumer(buffered)

    def _slow_consumer(self, buffered: int) -> None:
        if self._silenced:
            return
        log.warning("slow_consumer", buffered_bytes=buffered, cap=self.options.buffer_bytes)
        self.stats.slow_consumer = True
        self.shared.accounting.slow_consumers += 1
        self._silenced = True
        self.session.drain()  # refuse what the client still sends until the close lands
        self.apply(self.session.cancel_all())
        self.outbox.clear()
        verdict = SlowConsumer("the client did not read its frames fast enough")
        error = ErrorFrame(verdict.code, verdict.public_message, verdict.retryable)
        self._closer = asyncio.create_task(
            self._close(CloseCode.SLOW_CONSUMER, "slow consumer", encode_frame(error))
        )

    async def _close(self, code: int, reason: str, last: bytes | None) -> None:
        try:
            async with asyncio.timeout(1.0):
                if last is not None:
                    await self.ws.send(last, text=True)
                await self.ws.close(code, reason)
        except (TimeoutError, websockets.ConnectionClosed):
            self.abort("close_timeout")

    def abort(self, why: str) -> None:
        """Drop the TCP connection without a close handshake."""
        log.warning("connection_aborted", reason=why, queued_bytes=self.outbox.pending_bytes)
        self.stats.aborted = True
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    def _tick(self) -> None:
        """Every `options.tick`: the send timeout and the heartbeat, by one loop timer."""
        if self._silenced:
            return
        options = self.options
        loop = asyncio.get_running_loop()
        now = loop.time()
        since = self.writer.send_since
        if since is not None and now - since >= options.send_timeout:
            # The client has not read for send_timeout: a slow consumer. Its close can
            # only land if it reads again within a second; otherwise the TCP is aborted.
            self.shared.accounting.send_timeouts += 1
            self._slow_consumer(self.outbox.pending_bytes + self._transport_buffered())
            return
        if since is None and now - self.writer.last_send >= options.heartbeat_interval:
            self.writer.last_send = now  # one heartbeat per interval of silence
            if self.session.greeted:  # nothing goes out before `ready` (§6.2)
                self._control(HEARTBEAT)
        self._timer = loop.call_later(options.tick, self._tick)


def scoped_key(principal: str, client_key: str) -> str:
    """The store's name of a principal's idempotency key: unambiguous, whatever either holds.

    Both may contain `:` (`anon:2001:db8::1`, a client's `ops:job-1`): the principal's
    length comes first, so no two (principal, key) pairs share a name.
    """
    return f"{len(principal)}:{principal}:{client_key}"


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("store_cleanup_failed", error=type(task.exception()).__name__)
