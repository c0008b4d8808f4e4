"""The Python client of wsgate: many generation streams over one WebSocket, resumed after drops.

Owns the client side of wsgate.v1: opening the connection and waiting for `ready`, one reader
task that routes gateway frames by `stream_id` into per-stream queues, stream handles that
start, cancel and iterate typed frames, the resume after a dropped connection (reconnect with
backoff, `resume` each open stream under its own id, drop replayed duplicates by `seq`), and
`chat`, the one-shot helper behind `wsgate chat`. Frames are the types of `wsgate.core.frames`,
so client and gateway cannot drift. websockets' exceptions are translated here into
`GatewayError`. Must not import the gateway, upstream, mock or app shells: a client needs none
of them.

Rules of the resume:
1. A drop resumes only when its close code says "reconnect" (PROTOCOL.md §12.3: 1001, 1006,
   1011-1014, 4000-4499) and the client did not close; a drop that leaves no stream to
   continue ends the `Gateway` as it always did.
2. A stream continues after a drop when it has `message_id` and `epoch` (a `resume` with the
   highest `seq` received), when its `start` never reached a socket (sent now), or when it
   has no `stream.started` yet but an `idempotency_key` (the same `start` again). Any other
   open stream ends with `ConnectionClosedError` at the drop.
3. The caller sees every `seq` once, in order: a frame whose `seq` is at most the highest
   received is a replayed duplicate and is dropped; `stream.resumed` is counted, not yielded.

Rules of tool results (the agent loop, PROTOCOL.md §4.5, §8.5):
4. A refusal of a `tool_result` (`unknown_tool_call`, `duplicate_tool_result`,
   `tool_result_too_large`, or a `bad_frame` naming the stream while a result is in flight:
   content the gateway cannot take) names no call, so a stream has one result in flight at a
   time and a refusal answers that one; it never ends the stream (it is yielded all the same).
5. Results are written only while the stream is live on the connection: acknowledged
   (`stream.started`, or `stream.resumed` and its replay up to `top_seq` received), so that a
   result taken before a drop is seen in the replay (its `tool.result`) rather than written
   twice; one still unanswered is written again on the new connection, under the stream's
   id (a resume keeps it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self, TextIO

import msgspec
from websockets.asyncio.client import connect as ws_connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.protocol import State
from websockets.typing import Subprotocol

from wsgate.core.errors import CloseCode
from wsgate.core.frames import (
    PROTOCOL,
    AuthRefreshed,
    Cancel,
    ChatRequest,
    DeltaText,
    ErrorFrame,
    FinishFrame,
    FinishReason,
    GoAway,
    Heartbeat,
    Ready,
    Resume,
    ServerFrame,
    Start,
    StartOptions,
    StreamEventFrame,
    StreamResumed,
    StreamStarted,
    Telemetry,
    ToolAwaiting,
    ToolCallEndFrame,
    ToolError,
    ToolResult,
    ToolResultFrame,
    TurnStarted,
    decode_server_frame,
    encode_frame,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from ssl import SSLContext

    from websockets.asyncio.client import ClientConnection
    from websockets.datastructures import HeadersLike

    _Dial = Callable[[float], Awaitable[tuple[ClientConnection, Ready]]]

StreamFrame = StreamEventFrame | Telemetry
# Gateway frames are not capped by ready.limits (that caps client frames); one tool_call.end
# carries a whole argument object, so allow more than websockets' 1 MiB default.
_MAX_SERVER_FRAME_BYTES: Final = 16 * 1024 * 1024
_MAX_CLOSE_REASON_BYTES: Final = 123  # RFC 6455 §5.5: control frame payload <= 125 bytes
_SUCCESS: Final = frozenset({"stop", "length", "tool_calls"})
# PROTOCOL.md §12.3, "Client should": reconnect after these; 4000-4499 are added below.
_RECONNECT_CODES: Final = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
_MAX_BACKOFF_EXPONENT: Final = 32  # 2**32 * base is past any cap; keeps the float finite
# Refusals of a tool_result (PROTOCOL.md §4.5): the stream goes on (rule 4).
TOOL_REFUSALS: Final = frozenset(
    {"unknown_tool_call", "duplicate_tool_result", "tool_result_too_large"}
)


class GatewayError(Exception):
    """Base of every error this client raises about the gateway or the connection."""


class ConnectError(GatewayError):
    """The connection could not be opened, or the gateway did not greet it with `ready`."""


class ConnectionClosedError(GatewayError):
    """The connection closed while a stream was open; `code` and `reason` are the close's.

    After a drop the client tried to resume from, `__cause__` says why it could not.
    """

    def __init__(self, code: int, reason: str) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"connection closed with code {code}{detail}")
        self.code = code
        self.reason = reason


class ToolResultRefusedError(GatewayError):
    """The gateway refused a tool result (`code`: one of `TOOL_REFUSALS`, or `bad_frame`).

    The stream goes on.
    """

    def __init__(self, frame: ErrorFrame) -> None:
        super().__init__(f"tool result refused: {frame.code}: {frame.message}")
        self.frame = frame
        self.code = frame.code


class _ViolationError(Exception):
    """The gateway broke wsgate.v1; the client closes the connection with 1002."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """How a resuming `Gateway` waits between reconnect attempts: exponential, full jitter.

    Attempt n (from 0) waits `jitter() * min(cap, base * 2**n)` seconds, a uniform draw below
    the exponential ("full jitter": clients dropped together do not come back together).
    Attempts stop `timeout` seconds after the drop; the streams then fail. `jitter` returns a
    draw in [0, 1); tests pass their own.
    """

    base: float = 0.2
    cap: float = 5.0
    timeout: float = 60.0
    jitter: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt `attempt` (0 for the first)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt, _MAX_BACKOFF_EXPONENT))
        return self.jitter() * ceiling


@dataclass(frozen=True, slots=True)
class _Broken:
    """Queued after a stream's last frame when the connection ended before its `finish`."""

    code: int
    reason: str
    cause: BaseException | None = None


class _PendingResult:
    """A tool result not taken yet: its frame, its caller's future, where it was written."""

    __slots__ = ("call_id", "data", "future", "sends", "sent_at_seq", "sent_gen")

    def __init__(self, call_id: str, data: bytes, future: asyncio.Future[ToolResultFrame]) -> None:
        self.call_id = call_id
        self.data = data
        self.future = future
        self.sent_gen: int | None = None  # the connection it was last written to
        self.sent_at_seq = 0  # the stream's highest seq when first written: its answer is later
        self.sends = 0

    def settle(self, outcome: ToolResultFrame | BaseException) -> None:
        if self.future.done():
            return  # its caller stopped waiting
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


def _close_info(exc: ConnectionClosed) -> tuple[int, str]:
    if exc.rcvd is not None:
        return exc.rcvd.code, exc.rcvd.reason
    return 1006, "connection lost without a close frame"


def _close_reason(text: str) -> str:
    return text.encode()[:_MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


def _may_reconnect(code: int) -> bool:
    return code in _RECONNECT_CODES or 4000 <= code < 4500


def _seq_span(frame: StreamFrame) -> tuple[int, int] | None:
    """The `seq`s a frame covers, first and last (a coalesced `delta.text` covers several)."""
    if isinstance(frame, Telemetry) or frame.seq is None:
        return None
    if isinstance(frame, DeltaText) and frame.first_seq is not None:
        return frame.first_seq, frame.seq
    return frame.seq, frame.seq


class _Route:
    """The reader's side of one stream: its queue, and what a resume of it needs.

    The queue is unbounded on purpose: its consumer is the app itself, and a full queue would
    block the one reader that feeds every stream of the connection, so one stream read slowly
    would stall all the others. Worst case: one stream's whole output (bounded by its
    max_tokens) waits here; an app that stops reading a stream should cancel it. A resume adds
    nothing to that: nothing arrives while disconnected, and replayed duplicates are dropped
    before they are queued, so only `seq`s never queued before get in. The rest of the route
    is fixed-size: its start frame (at most `max_frame_bytes`), the last frame it sent to
    attach (a `resume` or that start) and a few counters; plus the tool results the app
    sent that were not taken yet (each at most `max_frame_bytes`).
    """

    __slots__ = (
        "acked_gen",
        "echoes",
        "epoch",
        "final",
        "follower",
        "gen",
        "key",
        "last_seq",
        "message_id",
        "queue",
        "replay_to",
        "result_refusals",
        "results",
        "resumed",
        "resumes",
        "retries",
        "sent",
        "start",
        "started",
        "stream_id",
    )

    def __init__(self, stream_id: str, start: bytes, key: str | None) -> None:
        self.queue: asyncio.Queue[StreamFrame | _Broken] = asyncio.Queue()
        self.stream_id = stream_id
        self.start = start
        self.key = key
        self.started = False
        self.message_id: str | None = None
        self.epoch: str | None = None
        self.last_seq = 0  # the highest seq received (rule 3)
        self.final: StreamFrame | None = None  # the frame that ended the stream
        # A follower attached to a generation (resume or keyed start): an error without seq
        # is its end. A keyed start may attach to a running generation even the first time.
        self.follower = key is not None
        self.gen: int | None = None  # the connection its start or resume was written to
        self.sent: bytes | None = None  # what that was, for a retry after store_unavailable
        self.resumes = 0
        self.resumed: StreamResumed | None = None
        self.retries = 0
        self.acked_gen: int | None = None  # the connection that acknowledged it (rule 5)
        self.replay_to = 0  # a resume's top_seq: live once last_seq reaches it
        self.results: collections.deque[_PendingResult] = collections.deque()  # rule 4
        self.echoes: dict[str, _PendingResult] = {}  # written again, taken before: answer due
        self.result_refusals: set[int] = set()  # id() of queued refusals that answered one

    def can_continue(self) -> bool:
        """Whether the stream may go on after a drop (rule 2)."""
        if self.message_id is not None:
            return self.epoch is not None
        return self.gen is None or self.key is not None

    def attach(self, gen: int) -> bytes:
        """The frame that carries the stream on to connection `gen`: a resume, or its start."""
        self.gen = gen
        if self.message_id is None:
            self.follower = self.key is not None
            self.sent = self.start
            return self.start
        self.follower = True
        resume = Resume(
            message_id=self.message_id,
            last_seq=self.last_seq,
            stream_id=self.stream_id,
            epoch=self.epoch,
        )
        self.sent = encode_frame(resume)
        return self.sent

    def on_resumed(self, frame: StreamResumed) -> None:
        known = self.message_id  # None: a keyed start, attached before its stream.started
        if not self.follower or (known is not None and frame.message_id != known):
            raise _ViolationError(f"stream.resumed for {self.stream_id!r}, which is not resuming")
        self.resumes += 1
        self.resumed = frame
        self.retries = 0
        self.acked_gen, self.replay_to = self.gen, frame.top_seq

    def push(self, frame: StreamFrame, *, of_result: bool = False) -> bool:
        """Queue a frame unless it is a replayed duplicate; True when it is the stream's last.

        `of_result`: a refusal that answered a tool result (rule 4); it ends nothing.
        """
        span = _seq_span(frame)
        if span is not None:
            first, last = span
            if last <= self.last_seq:
                return False  # replayed: queued already
            if first <= self.last_seq:  # part seen, part not: the text cannot be split
                raise _ViolationError(f"delta.text {first}..{last} overlaps {self.last_seq}")
            self.last_seq = last
        if isinstance(frame, StreamStarted):
            self.started = True
            self.message_id, self.epoch = frame.message_id, frame.epoch
            self.acked_gen, self.replay_to = self.gen, 0
        elif isinstance(frame, ToolResultFrame):
            self.took(frame)
        self.queue.put_nowait(frame)
        # A refusal (error without seq) ends a stream the gateway never started, and a follower;
        # a refusal of a tool result ends none (rule 4).
        if of_result:
            self.result_refusals.add(id(frame))
        refused = (
            isinstance(frame, ErrorFrame)
            and frame.seq is None
            and frame.code not in TOOL_REFUSALS
            and not of_result
        )
        if isinstance(frame, FinishFrame) or (refused and (self.follower or not self.started)):
            self.final = frame
            return True
        return False

    def took(self, frame: ToolResultFrame) -> None:
        """A `tool.result`: the answer to the result in flight for its call, if one is."""
        head = self.results[0] if self.results else None
        # Written before this frame was logged (`sent_at_seq`): then this is its answer.
        sent = head is not None and head.sent_gen is not None and frame.seq > head.sent_at_seq
        if sent and head is not None and head.call_id == frame.call_id:
            self.results.popleft()
            head.settle(frame)
        echo = self.echoes.get(frame.call_id)
        if echo is not None and frame.seq > echo.sent_at_seq:
            del self.echoes[frame.call_id]
            echo.settle(frame)

    def result_refused(self, frame: ErrorFrame, gen: int) -> bool:
        """Whether a refusal answers the tool result in flight on connection `gen` (rule 4)."""
        if frame.code not in TOOL_REFUSALS and frame.code != "bad_frame":
            return False
        head = self.results[0] if self.results else None
        if head is None or head.sent_gen != gen:
            return False  # none in flight: not one of ours (it is yielded all the same)
        self.results.popleft()
        if frame.code == "duplicate_tool_result" and head.sends > 1:
            # Written again after a drop, but the first was taken: its tool.result follows.
            self.echoes[head.call_id] = head
        else:
            head.settle(ToolResultRefusedError(frame))
        return True

    def refused_a_result(self, frame: ErrorFrame) -> bool:
        """Whether a refusal being yielded was about a tool result, not about the stream."""
        if id(frame) in self.result_refusals:
            self.result_refusals.discard(id(frame))
            return True
        return frame.code in TOOL_REFUSALS

    def abandon(self, error: GatewayError) -> None:
        """The stream ended: its tool results not taken fail with `error`."""
        for pending in (*self.results, *self.echoes.values()):
            pending.settle(error)
        self.results.clear()
        self.echoes.clear()


def _ended(stream_id: str) -> GatewayError:
    return GatewayError(f"stream {stream_id!r} ended before the gateway took the tool result")


class _Mux:
    """What a Gateway and its streams share: the connection, the routes, the reader's outcome.

    With a `dial` (resume on), a drop is followed by a reconnect and the routes that can
    continue are carried over to the new connection (`_recover`); without one, a drop ends
    every open stream, as it always did.
    """

    def __init__(
        self, ws: ClientConnection, ready: Ready, dial: _Dial | None, backoff: Backoff
    ) -> None:
        self.ws = ws
        self.ready = ready
        self.dial = dial
        self.backoff = backoff
        self.routes: dict[str, _Route] = {}  # started streams whose last frame has not come
        self.connection_errors: list[ErrorFrame] = []
        self.goaway: GoAway | None = None
        self.auth_refreshed: AuthRefreshed | None = None  # the last refresh's answer
        self.closed: tuple[int, str] | None = None  # once the connection ended for good
        self.stopping = False  # the client is closing: a drop now is no reason to reconnect
        self.live = True  # `ws` is the connection to send on (False while reconnecting)
        self.gen = 0  # which connection `ws` is, counted from 0
        self._wake = asyncio.Event()  # set (and replaced) when `ws` or `closed` changes
        self._deadline = 0.0  # loop time when the current recovery gives up
        self._cause: BaseException | None = None  # why the last recovery failed
        self._retries: set[asyncio.Task[None]] = set()  # at most one per route
        self._writes: set[asyncio.Task[None]] = set()  # tool results: one per route at most

    def add(self, stream_id: str, route: _Route) -> None:
        if self.closed is not None:
            raise ConnectionClosedError(*self.closed)
        if stream_id in self.routes:
            raise ValueError(f"stream {stream_id!r} is already open on this connection")
        self.routes[stream_id] = route

    async def send_start(self, route: _Route) -> None:
        """Write a route's start, or leave it to the reconnect when there is no connection."""
        ws = self.ws
        if self.dial is not None and (not self.live or ws.state is not State.OPEN):
            return  # not written (`gen` stays None): the reconnect writes it
        route.gen, route.sent = self.gen, route.start
        try:
            await ws.send(route.start, text=True)
        except ConnectionClosed as exc:
            if self.dial is None:
                raise ConnectionClosedError(*_close_info(exc)) from exc
            # It may have left: the recovery decides (rule 2).

    async def send(self, encoded: bytes, route: _Route | None = None) -> None:
        """Send a frame, waiting for the new connection while reconnecting.

        With `route`, nothing is sent once that stream has ended. Raises
        `ConnectionClosedError` once the connection has ended for good.
        """
        stale: ClientConnection | None = None
        while True:
            ws = await self._connection(stale)
            if route is not None and self.routes.get(route.stream_id) is not route:
                return
            try:
                await ws.send(encoded, text=True)
            except ConnectionClosed as exc:
                if self.dial is None:
                    raise ConnectionClosedError(*_close_info(exc)) from exc
                stale = ws  # the reader is about to see the drop: wait for what follows
            else:
                return

    async def _connection(self, stale: ClientConnection | None) -> ClientConnection:
        while True:
            if self.closed is not None:
                raise ConnectionClosedError(*self.closed)
            if self.live and self.ws is not stale:
                return self.ws
            await self._wake.wait()

    def _changed(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def read(self) -> None:
        """Route frames until the connection ends for good, then end every open stream."""
        closed: tuple[int, str] = (CloseCode.NORMAL, "reader stopped by the client")
        cause: BaseException | None = None
        try:
            closed = await self._pump()
            while await self._recover(closed):
                closed = await self._pump()
            cause = self._cause
        except Exception as exc:
            cause = exc
            closed = (CloseCode.INTERNAL, f"client reader failed: {type(exc).__name__}")
            await self.ws.close(*closed)
            raise
        finally:
            self.closed, self.live = closed, False
            for task in (*self._retries, *self._writes):
                task.cancel()
            if self.ws.state is State.OPEN:  # cancelled while carrying streams over
                self.ws.transport.abort()
            for route in self.routes.values():
                route.queue.put_nowait(_Broken(*closed, cause))
                route.abandon(ConnectionClosedError(*closed))
            self.routes.clear()
            self._changed()

    async def _recover(self, closed: tuple[int, str]) -> bool:
        """After a drop: reconnect and carry the streams over; False when the reader ends."""
        self.live = False
        for task in (*self._retries, *self._writes):
            task.cancel()  # for the old connection: the resume (and a result) is written again
        resuming = self.dial is not None and not self.stopping and _may_reconnect(closed[0])
        for sid, route in list(self.routes.items()):
            if not (resuming and route.can_continue()):
                route.queue.put_nowait(_Broken(*closed))
                route.abandon(ConnectionClosedError(*closed))
                del self.routes[sid]
        if not self.routes:
            return False
        self._deadline = asyncio.get_running_loop().time() + self.backoff.timeout
        connection = await self._reconnect()
        if connection is None:
            return False
        self.ws, self.ready = connection
        self.gen += 1
        self.goaway = None  # the old connection's
        await self._reattach()
        self.live = True
        self._changed()
        return True

    async def _reconnect(self) -> tuple[ClientConnection, Ready] | None:
        assert self.dial is not None  # noqa: S101 - only a resuming mux recovers
        loop = asyncio.get_running_loop()
        # PROTOCOL.md §12.3: after goaway, reconnect after its reconnect_after_ms, with backoff.
        floor = self.goaway.reconnect_after_ms / 1000 if self.goaway is not None else 0.0
        last: ConnectError | None = None
        for attempt in itertools.count():
            remaining = self._deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(floor + self.backoff.delay(attempt), remaining))
            floor = 0.0
            try:
                return await self.dial(self._deadline - loop.time())
            except ConnectError as exc:
                last = exc
        self._cause = ConnectError(f"no reconnect within {self.backoff.timeout} s")
        self._cause.__cause__ = last
        return None

    async def _reattach(self) -> None:
        """Write each route's resume (or start) to the new connection, new routes included."""
        ws = self.ws
        while pending := [r for r in self.routes.values() if r.gen != self.gen]:
            for route in pending:
                try:
                    await ws.send(route.attach(self.gen), text=True)
                except ConnectionClosed:
                    return  # the reader sees the drop next and recovers again

    def _retry(self, route: _Route, frame: ErrorFrame) -> bool:
        """Resend a follower's attach refused with `store_unavailable`, if time remains."""
        if frame.code != "store_unavailable" or not route.follower or route.sent is None:
            return False
        loop = asyncio.get_running_loop()
        delay = max((frame.retry_after_ms or 0) / 1000, self.backoff.delay(route.retries))
        if self.dial is None or loop.time() + delay > self._deadline:
            return False
        route.retries += 1
        task = loop.create_task(self._resend(route, route.sent, delay))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)
        return True

    async def _resend(self, route: _Route, data: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.live and self.routes.get(route.stream_id) is route:
            # A drop cancels this task, so a failed send here is the reader's to handle.
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(data, text=True)

    def send_result(self, route: _Route) -> None:
        """Write a route's oldest tool result not taken yet, if it may go now (rules 4, 5)."""
        results = route.results
        while results and results[0].sent_gen is None and results[0].future.cancelled():
            results.popleft()  # its caller stopped waiting before it was written
        if not results or not self.live or self.routes.get(route.stream_id) is not route:
            return
        if route.acked_gen != self.gen or route.last_seq < route.replay_to:
            return  # not live on this connection yet; its ack, or the replay's end, calls again
        head = results[0]
        if head.sent_gen == self.gen:
            return  # in flight
        if head.sends == 0:
            head.sent_at_seq = route.last_seq
        head.sent_gen = self.gen
        head.sends += 1
        task = asyncio.get_running_loop().create_task(self._write(self.ws, head.data))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, ws: ClientConnection, data: bytes) -> None:
        # A drop cancels this task or fails the send: the reader recovers, the result is
        # written again on the next connection (rule 5).
        with contextlib.suppress(ConnectionClosed):
            await ws.send(data, text=True)

    async def _pump(self) -> tuple[int, str]:
        while True:
            try:
                data = await self.ws.recv()
            except ConnectionClosed as exc:
                return _close_info(exc)
            try:
                frame = decode_server_frame(data)
            except (ValueError, RecursionError) as exc:  # msgspec.DecodeError is a ValueError
                return await self._violated(f"undecodable frame: {exc}")
            try:
                self.dispatch(frame)
            except _ViolationError as exc:
                return await self._violated(str(exc))

    async def _violated(self, what: str) -> tuple[int, str]:
        # The gateway broke wsgate.v1: nothing after this frame can be trusted.
        reason = _close_reason(f"protocol violation: {what}")
        await self.ws.close(1002, reason)
        return 1002, reason

    def _connection_frame(self, frame: GoAway | Heartbeat | Ready | AuthRefreshed) -> None:
        if isinstance(frame, GoAway):
            self.goaway = frame
        elif isinstance(frame, AuthRefreshed):
            self.auth_refreshed = frame
        elif isinstance(frame, Ready):
            raise _ViolationError("a second ready frame")
        # a heartbeat: liveness only

    def dispatch(self, frame: ServerFrame) -> None:
        if isinstance(frame, GoAway | Heartbeat | Ready | AuthRefreshed):
            self._connection_frame(frame)
            return
        sid = frame.stream_id
        route = self.routes.get(sid) if sid is not None else None
        if route is None or sid is None:
            if isinstance(frame, ErrorFrame):
                self.connection_errors.append(frame)
            elif not isinstance(frame, Telemetry):  # telemetry is sheddable; late is harmless
                raise _ViolationError(f"{type(frame).__name__} for {sid!r}, not open")
            return
        if isinstance(frame, StreamResumed):
            route.on_resumed(frame)
            self.send_result(route)
            return
        of_result = False
        if isinstance(frame, ErrorFrame) and frame.seq is None:
            if self._retry(route, frame):
                return
            of_result = route.result_refused(frame, self.gen)
        if route.push(frame, of_result=of_result):
            del self.routes[sid]
            route.abandon(_ended(sid))
        else:
            self.send_result(route)


class StreamHandle:
    """One generation stream on a `Gateway`: start it, iterate its frames, cancel it.

    Iteration sends the start frame on first use and yields the stream's frames in order,
    telemetry included; it ends after `finish`, or after a refusal of a stream that never
    started or of its resume (the `ErrorFrame` is yielded first; after `resume_owner_lost`,
    the frames the lost node logged come before it). If the connection ends before that and
    the stream cannot be resumed, the frames that arrived are yielded, then
    `ConnectionClosedError` is raised. A resumed stream yields one gapless sequence across
    connections: no `seq` twice, no `stream.resumed` (`resumes` counts them). The attributes
    (`text`, `events`, `finish_reason`, `awaiting`, ...) reflect the frames yielded so far.
    In the agent loop, `send_tool_result` answers the calls of a `tool.awaiting`; a refusal
    of a result is yielded too (an `ErrorFrame` without `seq`) but does not end the stream.
    """

    def __init__(self, mux: _Mux, start: Start, encoded: bytes) -> None:
        self.stream_id: str = start.stream_id
        self.request: ChatRequest = start.request
        self.options: StartOptions = start.options
        self.message_id: str | None = None
        self.model: str | None = None
        self.finish_reason: FinishReason | None = None
        self.error: ErrorFrame | None = None
        self.awaiting: ToolAwaiting | None = None  # the last tool.awaiting, until turn.started
        self.events: list[StreamFrame] = []
        self._mux = mux
        self._route = _Route(start.stream_id, encoded, start.options.idempotency_key)
        self._texts: list[str] = []
        self._start_sent = False
        self._cancel_sent = False
        self._done = False  # the last frame was yielded
        self._broken: _Broken | None = None

    @property
    def text(self) -> str:
        """All `delta.text` yielded so far, concatenated."""
        if len(self._texts) > 1:
            self._texts[:] = ["".join(self._texts)]
        return self._texts[0] if self._texts else ""

    @property
    def done(self) -> bool:
        """Whether the stream's last frame was yielded (or it was cancelled before starting)."""
        return self._done

    @property
    def epoch(self) -> str | None:
        """The generation's epoch from `stream.started`: None when it is not resumable."""
        return self._route.epoch

    @property
    def resumes(self) -> int:
        """How many `stream.resumed` the gateway sent for this stream (accepted resumes)."""
        return self._route.resumes

    @property
    def resumed(self) -> StreamResumed | None:
        """The last `stream.resumed` (its `state` and `top_seq`), if the stream was resumed."""
        return self._route.resumed

    async def start(self) -> None:
        """Send the start frame; later calls, and calls after `cancel`, do nothing.

        While the gateway reconnects, the start is written to the new connection instead.
        Raises `ValueError` if another stream with this id is open, `ConnectionClosedError`
        if the connection has ended.
        """
        if self._start_sent:
            return
        try:
            # Routed before sending: the gateway may answer before send() returns.
            self._mux.add(self.stream_id, self._route)
        except ConnectionClosedError as exc:
            self._start_sent, self._broken = True, _Broken(exc.code, exc.reason)
            raise
        self._start_sent = True
        await self._mux.send_start(self._route)

    async def cancel(self) -> None:
        """Ask the gateway to stop the stream; iterate on to read its `finish` (cancelled).

        Before `start`, the stream is dropped without sending anything. On an ended stream or
        a closed connection it does nothing: iteration reports how the stream ended. While the
        gateway reconnects, it waits for the new connection (the stream is resumed first),
        at most `Backoff.timeout` seconds.
        """
        if not self._start_sent:
            self._start_sent = self._done = True
            return
        if self._cancel_sent or self._mux.routes.get(self.stream_id) is not self._route:
            return
        self._cancel_sent = True
        with contextlib.suppress(ConnectionClosedError):
            await self._mux.send(encode_frame(Cancel(stream_id=self.stream_id)), self._route)

    async def send_tool_result(
        self,
        call_id: str,
        content: Any = msgspec.UNSET,
        *,
        error: ToolError | dict[str, str] | None = None,
    ) -> ToolResultFrame:
        """Answer a call of the stream's `tool.awaiting` with `content` (any JSON) or `error`.

        Returns the `tool.result` that took it. The result waits its turn (one in flight per
        stream) and for the stream to be live on the connection, and is written again after
        a reconnect until it is taken (module rules 4 and 5); the reader answers it, so the
        stream need not be iterated meanwhile. Raises `ValueError` for an invalid result
        (neither or both of `content` and `error`, a bad code, a frame over
        `max_frame_bytes`), `ToolResultRefusedError` when the gateway refuses it (the stream
        goes on), `ConnectionClosedError` or `GatewayError` when the stream ends first.
        Cancelled before it was written, it is not written.
        """
        encoded = self._tool_result(call_id, content, error)
        if not self._start_sent:
            raise ValueError(f"stream {self.stream_id!r} has not started")
        if self._mux.routes.get(self.stream_id) is not self._route:
            if self._mux.closed is not None and not self._route.final:
                raise ConnectionClosedError(*self._mux.closed)
            raise _ended(self.stream_id)
        future: asyncio.Future[ToolResultFrame] = asyncio.get_running_loop().create_future()
        self._route.results.append(_PendingResult(call_id, encoded, future))
        self._mux.send_result(self._route)
        return await future

    def _tool_result(
        self, call_id: str, content: Any, error: ToolError | dict[str, str] | None
    ) -> bytes:
        if (content is msgspec.UNSET) == (error is None):
            raise ValueError("a tool result carries exactly one of content and error")
        try:
            if error is not None and not isinstance(error, ToolError):
                error = msgspec.convert(error, ToolError)
            frame = ToolResult(
                stream_id=self.stream_id, call_id=call_id, content=content, error=error
            )
            encoded = encode_frame(frame)
            msgspec.json.decode(encoded, type=ToolResult)  # the constraints, as the gateway's
        except (msgspec.MsgspecError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid tool_result frame: {exc}") from exc
        limit = self._mux.ready.limits.max_frame_bytes
        if len(encoded) > limit:
            raise ValueError(f"tool_result frame of {len(encoded)} bytes exceeds max {limit}")
        return encoded

    async def collect(self) -> Self:
        """Iterate to the end of the stream and return this handle."""
        async for _ in self:
            pass
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamFrame:
        await self.start()
        if self._broken is not None:
            raise ConnectionClosedError(self._broken.code, self._broken.reason)
        if self._done:
            raise StopAsyncIteration
        item = await self._route.queue.get()
        if isinstance(item, _Broken):
            self._broken = item
            raise ConnectionClosedError(item.code, item.reason) from item.cause
        self._record(item)
        return item

    def _record(self, frame: StreamFrame) -> None:
        self._done = frame is self._route.final
        self.events.append(frame)
        if isinstance(frame, StreamStarted):
            self.message_id, self.model = frame.message_id, frame.model
        elif isinstance(frame, DeltaText):
            self._texts.append(frame.text)
        elif isinstance(frame, ToolAwaiting):
            self.awaiting = frame
        elif isinstance(frame, TurnStarted):
            self.awaiting = None
        elif isinstance(frame, ErrorFrame):
            if frame.seq is not None or not self._route.refused_a_result(frame):
                self.error = frame  # a refused tool result is no error of the stream
        elif isinstance(frame, FinishFrame):
            self.finish_reason = frame.reason


class Gateway:
    """One wsgate connection: creates streams and runs the reader that feeds them.

    With `resume` (the default of `open`), a dropped connection is reopened to the same URL
    with `backoff` and every open stream that can continue is resumed on it (see the module's
    rules); `reconnects` counts the connections opened so, `reconnecting` is true meanwhile.
    `ready` is the current connection's greeting; `connection_errors` collects error frames
    about no open stream (connection-level refusals, and refusals about streams that already
    ended); `goaway` is set when the gateway announces its shutdown (and cleared by a
    reconnect: it was the old connection's).
    """

    def __init__(
        self,
        ws: ClientConnection,
        ready: Ready,
        *,
        dial: _Dial | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._mux = _Mux(ws, ready, dial, Backoff() if backoff is None else backoff)
        self.connection_errors: list[ErrorFrame] = self._mux.connection_errors
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._mux.read(), name=f"wsgate-read-{ready.conn_id}")

    @classmethod
    async def open(  # noqa: PLR0913 - the connection's options, keyword-only
        cls,
        url: str,
        *,
        open_timeout: float = 10,
        additional_headers: HeadersLike | None = None,
        resume: bool = True,
        backoff: Backoff | None = None,
        token: str | None = None,
        ssl: SSLContext | None = None,
    ) -> Self:
        """Open a connection and wait for `ready`, all within `open_timeout` seconds.

        `resume`: reconnect after a drop and resume the open streams (False: a drop ends
        them). `backoff`: the reconnect's waits and time limit (`Backoff()` by default:
        0.2 s base, 5 s cap, 60 s in all); each attempt also has `open_timeout`.
        `token`: an API key or JWT, sent as `Authorization: Bearer` at every handshake.
        `ssl`: the TLS context for a `wss://` URL (default: the system's trust store).
        """
        headers: dict[str, str] = dict(Headers(additional_headers or {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        ws, ready = await _open_connection(url, open_timeout, headers, ssl)

        async def dial(budget: float) -> tuple[ClientConnection, Ready]:
            return await _open_connection(url, min(open_timeout, budget), headers, ssl)

        return cls(ws, ready, dial=dial if resume else None, backoff=backoff)

    @property
    def ready(self) -> Ready:
        """The current connection's `ready` frame."""
        return self._mux.ready

    @property
    def goaway(self) -> GoAway | None:
        """The gateway's shutdown notice, once it sent one on the current connection."""
        return self._mux.goaway

    @property
    def resume(self) -> bool:
        """Whether this Gateway reconnects and resumes its streams after a drop."""
        return self._mux.dial is not None

    @property
    def reconnects(self) -> int:
        """How many times the connection was reopened after a drop."""
        return self._mux.gen

    @property
    def reconnecting(self) -> bool:
        """Whether the connection dropped and a new one is not ready yet."""
        return not self._mux.live and self._mux.closed is None

    @property
    def closed(self) -> bool:
        """Whether the connection has ended for good (no reconnect follows)."""
        return self._mux.closed is not None

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code, once the connection has ended."""
        return self._mux.closed[0] if self._mux.closed else None

    @property
    def close_reason(self) -> str | None:
        """The WebSocket close reason, once the connection has ended."""
        return self._mux.closed[1] if self._mux.closed else None

    def stream(
        self,
        request: ChatRequest | dict[str, Any],
        options: StartOptions | dict[str, Any] | None = None,
        *,
        stream_id: str | None = None,
    ) -> StreamHandle:
        """Prepare a stream; nothing is sent until it is started or iterated.

        Raises `ValueError` when the request, options or stream id are invalid, when the
        stream id is open on this connection, or when the start frame exceeds the gateway's
        `max_frame_bytes`.
        """
        if stream_id is None:
            stream_id = next(f"s{n}" for n in self._ids if f"s{n}" not in self._mux.routes)
        elif stream_id in self._mux.routes:
            raise ValueError(f"stream {stream_id!r} is already open on this connection")
        try:
            if not isinstance(request, ChatRequest):
                request = msgspec.convert(request, ChatRequest)
            if options is None:
                options = StartOptions()
            elif not isinstance(options, StartOptions):
                options = msgspec.convert(options, StartOptions)
            start = Start(stream_id=stream_id, request=request, options=options)
            encoded = encode_frame(start)
            # Struct constructors skip constraints (patterns, lengths, ranges); decoding the
            # encoded frame applies them exactly as the gateway will.
            msgspec.json.decode(encoded, type=Start)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid start frame: {exc}") from exc
        limit = self.ready.limits.max_frame_bytes
        if len(encoded) > limit:
            raise ValueError(f"start frame of {len(encoded)} bytes exceeds max {limit}")
        return StreamHandle(self._mux, start, encoded)

    async def close(self) -> None:
        """Close the connection, then stop the reader; open streams raise on iteration.

        Re-raises an exception the reader failed with: it is never swallowed.
        """
        self._mux.stopping = True
        try:
            await self._mux.ws.close()
        finally:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise


async def _open_connection(
    url: str,
    open_timeout: float,
    additional_headers: HeadersLike | None,
    ssl: SSLContext | None = None,
) -> tuple[ClientConnection, Ready]:
    """Open a connection and wait for `ready` within `open_timeout`; raises `ConnectError`."""
    ws: ClientConnection | None = None
    tls: dict[str, Any] = {} if ssl is None else {"ssl": ssl}
    try:
        async with asyncio.timeout(open_timeout):
            ws = await ws_connect(
                url,
                subprotocols=[Subprotocol(PROTOCOL)],
                additional_headers=additional_headers,
                compression=None,  # token frames are tiny; deflate costs more than it saves
                max_size=_MAX_SERVER_FRAME_BYTES,
                open_timeout=None,
                **tls,
            )
            ready = await _receive_ready(ws)
    except BaseException as exc:
        if ws is not None:
            ws.transport.abort()  # a gateway that did not greet us gets no close handshake
        if isinstance(exc, TimeoutError):
            raise ConnectError(f"{url}: no ready frame within {open_timeout} s") from exc
        if isinstance(exc, OSError | WebSocketException):
            raise ConnectError(f"cannot open {url}: {exc}") from exc
        raise
    return ws, ready


async def _receive_ready(ws: ClientConnection) -> Ready:
    if ws.subprotocol != PROTOCOL:
        raise ConnectError(f"the gateway did not agree to subprotocol {PROTOCOL}")
    data = await ws.recv()
    try:
        frame = decode_server_frame(data)
    except (ValueError, RecursionError) as exc:
        raise ConnectError(f"the gateway's first frame is not wsgate.v1: {exc}") from exc
    if not isinstance(frame, Ready):
        raise ConnectError(f"the gateway's first frame is {type(frame).__name__}, not ready")
    return frame


@contextlib.asynccontextmanager
async def connect(  # noqa: PLR0913 - the connection's options, keyword-only
    url: str,
    *,
    open_timeout: float = 10,
    additional_headers: HeadersLike | None = None,
    resume: bool = True,
    backoff: Backoff | None = None,
    token: str | None = None,
    ssl: SSLContext | None = None,
) -> AsyncIterator[Gateway]:
    """Open a `Gateway` (waiting for `ready`) and close it on exit; see `Gateway.open`."""
    gateway = await Gateway.open(
        url,
        open_timeout=open_timeout,
        additional_headers=additional_headers,
        resume=resume,
        backoff=backoff,
        token=token,
        ssl=ssl,
    )
    try:
        yield gateway
    finally:
        await gateway.close()


async def chat(  # noqa: PLR0913 - the chat command's flags, all keywords
    url: str,
    prompt: str,
    *,
    model: str = "mock",
    out: TextIO | None = None,
    system: str | None = None,
    options: Mapping[str, Any] | None = None,
    err: TextIO | None = None,
) -> int:
    """Stream one answer to `out` (stdout by default) as it arrives; return an exit code.

    `options` are the stream's start options (`on_disconnect` defaults to `continue`). Tool
    calls and a `length` finish are reported on `err` (stderr by default), one line each,
    so `out` holds the answer text alone.

    The connection resumes after a drop (`connect`'s default), and the stream asks the
    gateway to keep generating meanwhile (`on_disconnect: continue`): when the gateway logs
    the generation (`stream.started` carries an epoch; across a restart, with its logs in
    Redis), the answer goes on where it stopped.

    0 when the stream finishes with stop, length or tool_calls; 1 on any error, reported on
    stderr as `wsgate: error <code>: <message>`; 130 on KeyboardInterrupt, after sending
    cancel. On task cancellation (how `asyncio.run` and `uvloop.run` deliver Ctrl-C) it sends
    cancel and re-raises; the runner then raises KeyboardInterrupt, which the CLI maps to 130.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    stream: StreamHandle | None = None
    try:
        async with connect(url) as gateway:
            # `continue`: a drop must not cancel the generation the resume is about to follow;
            # Ctrl-C still cancels it (below).
            chosen = {"on_disconnect": "continue", **(options or {})}
            stream = gateway.stream({"model": model, "messages": messages}, chosen)
            try:
                async for event in stream:
                    _show(event, out, err)
            except (KeyboardInterrupt, asyncio.CancelledError):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):  # a stuck socket must not hold Ctrl-C
                        await stream.cancel()
                raise
            return _outcome(out, stream)
    except KeyboardInterrupt:
        _end_line(out, stream)
        return 130
    except asyncio.CancelledError:
        _end_line(out, stream)
        raise
    except ValueError as exc:
        return _fail(out, stream, "bad_request", str(exc))
    except GatewayError as exc:
        code = "connection_closed" if isinstance(exc, ConnectionClosedError) else "connect_failed"
        return _fail(out, stream, code, str(exc))


def _show(event: object, out: TextIO, err: TextIO) -> None:
    """One event of `chat`: answer text to `out`; tool calls and a `length` finish to `err`."""
    if isinstance(event, DeltaText):
        out.write(event.text)
        out.flush()
    elif isinstance(event, ToolCallEndFrame):
        arguments = msgspec.json.encode(event.arguments).decode()
        err.write(f"[tool call {event.call_id}: {event.name}({arguments})]\n")
        err.flush()
    elif isinstance(event, FinishFrame) and event.reason == "length":
        err.write("[finish: length: the answer was cut at max_tokens]\n")
        err.flush()


def _outcome(out: TextIO, stream: StreamHandle) -> int:
    if stream.finish_reason in _SUCCESS:
        out.write("\n")
        out.flush()
        return 0
    if stream.error is not None:
        return _fail(out, stream, stream.error.code, stream.error.message)
    reason = stream.finish_reason or "unfinished"
    return _fail(out, stream, reason, f"the stream finished with reason {reason}")


def _end_line(out: TextIO, stream: StreamHandle | None) -> None:
    if stream is not None and stream.text:
        out.write("\n")
        out.flush()


def _fail(out: TextIO, stream: StreamHandle | None, code: str, message: str) -> int:
    _end_line(out, stream)
    sys.stderr.write(f"wsgate: error {code}: {message}\n")
    sys.stderr.flush()
    return 1
