"""One client connection: a reader task, a writer task while frames wait, a task per stream.

Owns the asyncio side of a connection. The core `Session` decides; this module executes:
it feeds received frames to the session, queues what it returns in the connection's
`Outbox`, runs each stream's upstream call in its own task (`streams.py`), and writes.

- Backpressure: a stream stops reading its provider while its own queue is full, or while
  the connection holds half of `buffer_bytes`; it resumes when the writer has drained.
- Slow consumers: past `buffer_bytes` buffered (outbox plus the socket's write buffer) the
  connection's streams are cancelled, a `slow_consumer` error is attempted and the
  connection closes with 4000. A send that waits longer than `send_timeout` (a client
  that stopped reading entirely) aborts the transport: a close handshake or a keepalive
  ping would wait behind the same full buffer.
- Reader backpressure: refusals of bad frames and the frames of ended streams are bounded
  by `READER_BACKLOG_BYTES`; past it the reader stops reading the client.
- Writing: a frame queued while no writer runs is written at once by the task that queued
  it (a stream's, or the reader's) during the first `INLINE_WINDOW_S` of a loop turn: no
  hop to another task under light load. Later in a long turn (a loaded loop), a writer
  task takes over and the frames waiting when it runs leave in one transport write (up to
  `WRITE_BATCH_FRAMES` / `WRITE_BATCH_BYTES`): one system call for the many streams'
  tokens a paced provider releases in the same instant, instead of one per frame.
- Liveness: a `heartbeat` frame after `heartbeat_interval` of silence, for browsers, which
  cannot see WebSocket pings.
- Disconnect: streams that asked `on_disconnect: continue` are detached into an event log
  (`detached.py`) for the disconnect window instead of being cancelled.

Memory: connections are many and mostly idle, so an idle one holds only what it must: the
reader (websockets' handler task) and one loop timer (send timeout, heartbeat). The writer
task exists while frames wait (the first frame queued starts it, it ends when the outbox is
empty); the stream runner, the backpressure events and the outbox's queues are made on
first use. A task with its coroutine costs ~1.5 KiB, an `asyncio.Event` ~0.85 KiB.

Every `await` here is cancellable; `CancelledError` is always re-raised.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from wsgate.core.errors import CloseCode, ShuttingDown, SlowConsumer
from wsgate.core.frames import (
    ChatRequest,
    DeltaText,
    ErrorFrame,
    FinishFrame,
    GoAway,
    Heartbeat,
    encode_frame,
)
from wsgate.core.outbox import Outbox
from wsgate.core.retry import RetryPolicy
from wsgate.core.session import (
    Action,
    CancelUpstream,
    DetachStream,
    SendControl,
    SendStream,
    Session,
    StartUpstream,
)
from wsgate.core.stream import StreamOutput
from wsgate.gateway.accounting import Accounting
from wsgate.gateway.detached import DetachedLog, DetachedStreams
from wsgate.gateway.streams import StreamRunner
from wsgate.log import get_logger

log = get_logger("wsgate.gateway")

READER_BACKLOG_BYTES = 256 * 1024
"""Most bytes of refusals and ended streams' frames queued before the reader pauses."""

SOCKET_BACKLOG_BYTES = 32 * 1024
"""websockets' write high-water mark: above it, sends wait for the client to read."""

INLINE_WINDOW_S = 0.001
"""How long into a loop turn a stream's task still writes its frames itself (InlineWindow)."""
WRITE_BATCH_FRAMES = 64
"""Most frames the writer sends in one transport write (and between two yields)."""

WRITE_BATCH_BYTES = SOCKET_BACKLOG_BYTES // 2
"""A batch stops growing past this many bytes: under backpressure, frames wait in the
outbox (where a stream's deltas coalesce) rather than in the socket's buffer."""

HEARTBEAT = encode_frame(Heartbeat())


class Upstream(Protocol):
    """What a connection needs from the upstream side."""

    def open(self, request: ChatRequest) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Open the provider call; the context yields response bytes."""


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """Per-connection limits and timers (seconds, bytes)."""

    queue_events: int = 256
    queue_bytes: int = 256 * 1024
    buffer_bytes: int = 1024 * 1024
    send_timeout: float = 10.0
    max_duration: float = 900.0
    first_token_timeout: float = 120.0
    heartbeat_interval: float = 15.0
    disconnect_window: float = 30.0
    disconnect_log_bytes: int = 1024 * 1024
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # before the first token only

    @property
    def tick(self) -> float:
        """How often a connection's timer checks the send timeout and the heartbeat (s)."""
        return min(1.0, max(0.01, min(self.send_timeout, self.heartbeat_interval) / 4))


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one connection, read by tests and the gateway's accounting."""

    frames_sent: int = 0
    bytes_sent: int = 0
    writes: int = 0  # transport writes: a batch of frames is one
    inline_writes: int = 0  # of which written by the task that queued the frames
    max_buffered: int = 0
    aborted: bool = False
    slow_consumer: bool = False


@dataclass
class Shared:
    """What every connection of a gateway shares."""

    accounting: Accounting = field(default_factory=Accounting)
    detached: DetachedStreams = field(default_factory=DetachedStreams)
    detached_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    detached_owners: set[Connection] = field(default_factory=set)
    inline: InlineWindow = field(default_factory=lambda: InlineWindow(INLINE_WINDOW_S))


class InlineWindow:
    """Whether a frame may still be written by the task that queued it, in this loop turn.

    A frame queued while no writer runs is written at once by the stream's own task, as a
    relay would, during the first `window` seconds of a loop turn (timed from the first
    such write); later in a long turn, a writer task takes the connection's frames and
    sends them together in the next turn. A light load thus skips the hop to a writer task
    (about one loop turn of latency per token), and an overloaded loop still batches (one
    write for many streams' frames). Shared by every connection of a gateway.
    """

    __slots__ = ("_armed", "_clock", "_until", "window")

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._armed = False
        self._until = 0.0

    def open(self) -> bool:
        """True while the current turn is young enough to write inline (never if window <= 0)."""
        if self.window <= 0:
            return False
        now = self._clock()
        if not self._armed:
            self._armed = True
            self._until = now + self.window
            asyncio.get_running_loop().call_soon(self._next_turn)
            return True
        return now < self._until

    def _next_turn(self) -> None:
        self._armed = False


class Connection:
    """Runs one accepted WebSocket until it closes."""

    __slots__ = (
        "_backlog_room",
        "_closer",
        "_context",
        "_last_send",
        "_runner",
        "_send_since",
        "_silenced",
        "_timer",
        "_uncongested",
        "_upstream",
        "_write_closed",
        "_writer",
        "logs",
        "options",
        "outbox",
        "room",
        "session",
        "shared",
        "stats",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        session: Session,
        upstream: Upstream,
        options: ConnectionOptions,
        shared: Shared,
    ) -> None:
        self.ws = ws
        self.session = session
        self.options = options
        self.shared = shared
        self.outbox = Outbox(options.queue_events, options.queue_bytes)
        self.stats = ConnectionStats()
        self.logs: dict[str, DetachedLog] = {}  # detached streams of this connection
        self.room: dict[str, asyncio.Event] = {}
        self._upstream = upstream
        self._runner: StreamRunner | None = None  # made by the first stream
        self._uncongested: asyncio.Event | None = None  # made by the first stream to wait
        self._backlog_room: asyncio.Event | None = None  # exists while the reader waits
        self._writer: asyncio.Task[None] | None = None  # exists while frames wait
        self._write_closed = False  # a send saw the connection closed: start no writer
        self._context = contextvars.copy_context()  # with `conn_id`: the writer logs in it
        self._timer: asyncio.TimerHandle | None = None
        self._silenced = False  # no more output: slow consumer, or the connection is gone
        self._closer: asyncio.Task[None] | None = None
        self._last_send = asyncio.get_running_loop().time()
        self._send_since: float | None = None

    @property
    def runner(self) -> StreamRunner:
        """The stream tasks of this connection (made when the first stream starts)."""
        if self._runner is None:
            self._runner = StreamRunner(self, self._upstream)
        return self._runner

    @property
    def uncongested(self) -> asyncio.Event:
        """Set when the connection's buffered bytes fell to a quarter of `buffer_bytes`.

        Streams paused by the connection-wide cap clear it and wait; it is made for the
        first one and dropped when the outbox empties (after waking every waiter).
        """
        if self._uncongested is None:
            self._uncongested = asyncio.Event()
        return self._uncongested

    @property
    def idle(self) -> bool:
        """No running stream and nothing left to send."""
        return not self.session.streams and self.outbox.pending_bytes == 0

    async def run(self) -> None:
        """Serve the connection; returns when it is closed and its own tasks have ended."""
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.options.tick, self._tick)
        self._control(encode_frame(self.session.ready()))
        try:
            await self._reader()
        finally:
            self._silenced = True
            self._timer.cancel()
            self.apply(self.session.connection_lost())
            if self._runner is not None:
                await self._runner.reap()
            if self._writer is not None:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
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
                if self.outbox.backlog_bytes > READER_BACKLOG_BYTES:
                    await self._wait_for_backlog()
        except websockets.ConnectionClosed:
            pass

    async def _wait_for_backlog(self) -> None:
        # Stop reading the client until the writer has sent what the reader queued: a
        # client that sends faster than it reads gets TCP backpressure, not our memory.
        closed = asyncio.ensure_future(self.ws.wait_closed())
        backlog_room = self._backlog_room = asyncio.Event()
        try:
            while self.outbox.backlog_bytes > READER_BACKLOG_BYTES // 2:
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
                self.shared.accounting.streams_started += 1
                self.runner.start(action)
            elif isinstance(action, CancelUpstream):
                self.shared.accounting.cancels += 1
                self.runner.cancel(action.stream_id)
            elif isinstance(action, DetachStream):
                self._detach(action)

    def _control(self, data: bytes) -> None:
        if self._silenced:
            return
        self.outbox.push_control(data)
        self._wake_writer()

    def deliver(self, stream_id: str, output: StreamOutput) -> None:
        """Queue a stream's frames (or log them, for a detached stream)."""
        if output.closed:
            self._count_finish(output)
        elif output.deadline is not None:
            self.runner.schedule_poll(stream_id, output.deadline)
        detached = self.logs.get(stream_id)
        if detached is not None:
            self._log_detached(detached, output)
            return
        if self._silenced:
            return
        outbox = self.outbox
        for frame, data in zip(output.frames, output.data, strict=True):
            outbox.push(stream_id, data, frame)
        if output.telemetry is not None:
            outbox.push_telemetry(stream_id, encode_frame(output.telemetry))
        if output.closed:
            outbox.end_stream(stream_id)
        if output.frames or output.telemetry is not None:
            self._wake_writer()
        in_transport = self._transport_buffered()
        buffered = outbox.pending_bytes + in_transport
        self.stats.max_buffered = max(self.stats.max_buffered, buffered)
        # Over the cap *and* the socket is backed up: the client is not keeping up. Over the
        # cap with an empty socket buffer is our own burst (every paused stream's one read
        # landing together), which the writer is already draining.
        if buffered > self.options.buffer_bytes and in_transport >= SOCKET_BACKLOG_BYTES:
            self._slow_consumer(buffered)

    def _count_finish(self, output: StreamOutput) -> None:
        last = output.frames[-1] if output.frames else None
        if isinstance(last, FinishFrame):
            self.shared.accounting.finishes[last.reason] += 1
            log.info(
                "stream_finished",
                stream_id=last.stream_id,
                message_id=self.runner.message_id(last.stream_id),
                reason=last.reason,
                last_seq=last.seq,
            )

    def _transport_buffered(self) -> int:
        transport = self.ws.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    # --- disconnect policy -----------------------------------------------------------------

    def _detach(self, action: DetachStream) -> None:
        sid = action.stream_id
        detached = DetachedLog(action.message_id, sid, self.options.disconnect_log_bytes)
        # Frames queued but unsent go first in the log: the client never got them.
        kept = all(detached.append(data) for data in self.outbox.take_stream(sid))
        self.logs[sid] = detached
        self.shared.detached.add(detached)
        self.shared.detached_owners.add(self)
        self.shared.accounting.detached_streams += 1
        self.runner.detach(sid, self.options.disconnect_window)
        room = self.room.get(sid)
        if room is not None:
            room.set()
        if self._uncongested is not None:
            self._uncongested.set()
        log.info("stream_detached", stream_id=sid, message_id=action.message_id)
        if not kept:  # a log with a gap could never be resumed: stop paying for it
            self.apply(self.session.cancel(sid))

    def _log_detached(self, detached: DetachedLog, output: StreamOutput) -> None:
        tokens = sum(isinstance(frame, DeltaText) for frame in output.frames)
        detached.tokens += tokens
        # Nobody reads these tokens until resume exists: they are spent after the client left.
        self.shared.accounting.wasted_tokens_after_cancel += tokens
        if all(detached.append(data) for data in output.data):
            detached.finished = detached.finished or output.closed
            return
        if not output.closed:
            self.apply(self.session.cancel(detached.stream_id))

    def expire(self, stream_id: str) -> None:
        """A detached stream's window passed: cancel it if running, forget its log."""
        detached = self.logs.get(stream_id)
        if stream_id in self.session.streams:
            self.shared.accounting.detached_expired += 1
            self.apply(self.session.cancel(stream_id))  # its finish goes to the log
        self.logs.pop(stream_id, None)
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
            self.runner.cancel_expiry(stream_id)  # a detached stream's runner exists
            self.expire(stream_id)
        self.shared.detached_owners.discard(self)

    # --- shutdown and slow consumers ---------------------------------------------------

    def goaway(self, drain_ms: int, reconnect_after_ms: int) -> None:
        """Tell the client the gateway is leaving; refuse new streams from now on."""
        self.session.drain()
        frame = GoAway("shutting down", reconnect_after_ms=reconnect_after_ms, drain_ms=drain_ms)
        self._control(encode_frame(frame))

    def cancel_remaining(self) -> None:
        """The drain deadline passed: end every running stream (`shutting_down`)."""
        error = ShuttingDown("the gateway shut down before the stream finished")
        self.apply(self.session.cancel_all(error))

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

    # --- writing -------------------------------------------------------------------------

    def _wake_writer(self) -> None:
        """Start the writer unless it runs: it sends until the outbox is empty, then ends.

        A writer per burst instead of one per connection waiting on an event: an idle
        connection then holds no task. It runs in the connection's log context, not in
        that of the stream that queued the frame.
        """
        if self._writer is not None or self._write_closed:
            return
        if self.shared.inline.open() and self._write_now():
            return
        self._writer = asyncio.create_task(
            self._write(), name=f"writer-{self.session.conn_id}", context=self._context.copy()
        )

    def _write_now(self) -> bool:
        """Write what waits from the caller's task; False: a writer task must (still) send.

        Only while the connection is open and its transport takes more (then a write never
        waits): one batch, as the writer would send it. False when it cannot write, or when
        frames remain after the batch or the write filled the transport.
        """
        if not self._writable():
            return False
        batch = self._take_batch()
        if not batch:
            self._drained()
            return True
        try:
            self._put(batch)
        except Exception:  # contained as in the writer task, not raised into the caller's
            log.exception("writer_crashed")
            self._write_closed = True
            self.abort("writer_crashed")
            return True
        self._last_send = asyncio.get_running_loop().time()
        self.stats.inline_writes += 1
        self._sent(batch)
        if not self.outbox.empty or _paused(self.ws):
            return False  # more to send, or a full socket to wait on: a writer task does
        self._drained()
        return True

    async def _write(self) -> None:
        try:
            await self._write_loop()
        except Exception:
            log.exception("writer_crashed")
            self.abort("writer_crashed")
            raise  # `_writer` keeps the failed task: no writer starts again

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        sent_since_yield = 0
        while True:
            batch = self._take_batch()
            if not batch and not _paused(self.ws):
                self._drained()
                return
            # (An empty batch here: an inline write filled the socket; wait for room, timed.)
            # No timer per send: the connection's timer checks `_send_since` (one timer per
            # connection instead of one per frame, which dominated the cost of paced streams).
            self._send_since = loop.time()
            try:
                await self._send_batch(batch)
            except websockets.ConnectionClosed:
                self._write_closed = True  # what is queued from now on stays queued
                return
            finally:
                self._send_since = None
            if batch:
                self._last_send = loop.time()
                self._sent(batch)
            # A send only yields when the transport is paused; yield now and then so one
            # busy connection cannot starve the others on the loop.
            sent_since_yield += len(batch)
            if sent_since_yield >= WRITE_BATCH_FRAMES:
                sent_since_yield = 0
                await asyncio.sleep(0)

    def _sent(self, batch: list[tuple[str | None, bytes]]) -> None:
        """Account a written batch and wake whoever waits for the room it made."""
        outbox, stats = self.outbox, self.stats
        stats.writes += 1
        for stream_id, data in batch:
            stats.frames_sent += 1
            stats.bytes_sent += len(data)
            if stream_id is not None:
                room = self.room.get(stream_id)
                if room is not None and outbox.has_room(stream_id):
                    room.set()
        if self._uncongested is not None and outbox.pending_bytes <= self.options.buffer_bytes // 4:
            self._uncongested.set()
        if self._backlog_room is not None and outbox.backlog_bytes <= READER_BACKLOG_BYTES // 2:
            self._backlog_room.set()

    def _take_batch(self) -> list[tuple[str | None, bytes]]:
        """The next frames to send together: at least one, then up to the batch bounds."""
        outbox = self.outbox
        batch: list[tuple[str | None, bytes]] = []
        size = 0
        while len(batch) < WRITE_BATCH_FRAMES and size < WRITE_BATCH_BYTES:
            item = outbox.pop()
            if item is None:
                break
            batch.append(item)
            size += len(item[1])
        return batch

    async def _send_batch(self, batch: list[tuple[str | None, bytes]]) -> None:
        """Send the batch's frames as text frames in one transport write.

        Paced streams queue a few frames per connection per loop turn, and `ws.send` makes
        one `transport.write` per message, which uvloop turns into one system call each:
        the largest per-token cost of the shell. Here every frame is framed by websockets'
        sans-I/O protocol and the bytes are written at once. Nothing awaits between the
        frames, so another sender (a close) cannot interleave.

        While the connection is open and the transport takes more (not paused, not
        closing), the write needs nothing else: no waiting, no failure to turn into
        `ConnectionClosed`. Only then, when the write filled the transport, or when the
        connection is not open, does the batch go through `send_context()`, the context
        `send` itself uses: it checks the connection is open, turns a failure into
        `ConnectionClosed`, and waits on the transport's high-water mark (flow control).
        Skipping that context (an async generator entered and left per write) when there
        is nothing to wait for is ~10% of the gateway's CPU per token at 200 paced streams.

        websockets internals relied on (17.x; pinned `<18` in pyproject.toml):
        `Connection.send_context()` (undocumented; the context `send`, `ping` and `close`
        use) and `Connection.paused` (set by the transport's `pause_writing`), the
        `protocol` attribute (the sans-I/O `ServerProtocol`, whose `state`, `send_text` and
        `data_to_send` are documented) and `transport`; and that the frames
        `protocol.send_text` queues in the OPEN state are the only bytes pending in
        `protocol.data_to_send()` (the asyncio connection flushes after every event, and an
        OPEN protocol queues no EOF marker). wsgate never sends fragmented messages, so
        `send`'s wait for one to finish (`send_in_progress`) is not needed.
        """
        ws = self.ws
        if self._writable():
            self._put(batch)
            if _paused(ws):  # this write filled the transport: wait for room, as `send` does
                async with ws.send_context():
                    pass
            return
        async with ws.send_context():  # an empty batch only waits for room
            if batch:
                self._put(batch)

    def _writable(self) -> bool:
        """Open, and the transport takes more: a write needs no waiting and cannot fail."""
        ws = self.ws
        return ws.protocol.state is State.OPEN and not _paused(ws) and not ws.transport.is_closing()

    def _put(self, batch: list[tuple[str | None, bytes]]) -> None:
        """Frame the batch (websockets' sans-I/O protocol) and hand it to the transport at once."""
        protocol = self.ws.protocol
        for _, data in batch:
            protocol.send_text(data)
        self.ws.transport.write(b"".join(protocol.data_to_send()))

    def _drained(self) -> None:
        """The outbox is empty: wake whoever waits for room, and end the writer."""
        self._writer = None  # no `await` between the empty pop and here: no frame is missed
        if self._uncongested is not None:
            self._uncongested.set()  # wakes every waiter; a later one makes a new event
            self._uncongested = None
        if self._backlog_room is not None:
            self._backlog_room.set()

    def _tick(self) -> None:
        """Every `options.tick`: the send timeout and the heartbeat, by one loop timer."""
        if self._silenced:
            return
        options = self.options
        loop = asyncio.get_running_loop()
        now = loop.time()
        since = self._send_since
        if since is not None and now - since >= options.send_timeout:
            # The client has not read for send_timeout: a slow consumer. Its close can
            # only land if it reads again within a second; otherwise the TCP is aborted.
            self.shared.accounting.send_timeouts += 1
            self._slow_consumer(self.outbox.pending_bytes + self._transport_buffered())
            return
        if since is None and now - self._last_send >= options.heartbeat_interval:
            self._last_send = now  # one heartbeat per interval of silence
            self._control(HEARTBEAT)
        self._timer = loop.call_later(options.tick, self._tick)


def _paused(ws: ServerConnection) -> bool:
    """The transport is past its high-water mark: a writer must wait (websockets' flag)."""
    return ws.paused
