"""One client connection: a reader task, a writer task and one task per stream.

Owns the asyncio side of a connection. The core `Session` decides; this module executes:
it feeds received frames to the session, queues what it returns in the connection's
`Outbox`, runs each stream's upstream call in its own task, and writes frames out.

- Backpressure: a stream task stops reading its upstream while its outbox queue is full
  and resumes when the writer has drained it below half (`Outbox.has_room`): real
  backpressure into the provider's TCP connection.
- Reader backpressure: refusals of bad frames and the frames of ended streams are bounded
  by `READER_BACKLOG_BYTES`; past it the reader stops reading the client until the writer
  has sent half of them.
- Slow clients: every send has `send_timeout`; past it the transport is aborted (a close
  handshake would wait behind the same full buffer, and so would a keepalive ping) and
  every stream of the connection is cancelled, so a client that stops reading pins neither
  memory nor tasks.
- Cancellation: a cancelled stream task leaves the upstream's `async with`, which closes the
  provider connection. `CancelledError` is always re-raised.

Does not import the upstream or mock packages: the upstream comes in as an `Upstream`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import websockets
from websockets.asyncio.server import ServerConnection

from wsgate.core.errors import WsgateError
from wsgate.core.frames import ChatRequest, FinishFrame, encode_frame
from wsgate.core.outbox import Outbox
from wsgate.core.session import (
    Action,
    CancelUpstream,
    SendControl,
    SendStream,
    Session,
    StartUpstream,
)
from wsgate.core.stream import StreamOutput
from wsgate.log import bound, get_logger

log = get_logger("wsgate.gateway")


READER_BACKLOG_BYTES = 256 * 1024
"""Most bytes of refusals and ended streams' frames queued before the reader pauses."""


class Upstream(Protocol):
    """What a connection needs from the upstream side."""

    def open(self, request: ChatRequest) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Open the provider call; the context yields response bytes."""


@dataclass
class ConnectionStats:
    """Counters of one connection, read by tests and, later, metrics."""

    frames_sent: int = 0
    bytes_sent: int = 0
    aborted: bool = False


class Connection:
    """Runs one accepted WebSocket until it closes."""

    def __init__(  # noqa: PLR0913 - the connection's collaborators, wired by the server
        self,
        ws: ServerConnection,
        session: Session,
        upstream: Upstream,
        *,
        queue_events: int,
        queue_bytes: int,
        send_timeout: float,
    ) -> None:
        self.ws = ws
        self.session = session
        self.upstream = upstream
        self.outbox = Outbox(queue_events, queue_bytes)
        self.send_timeout = send_timeout
        self.stats = ConnectionStats()
        self._wake_writer = asyncio.Event()
        self._backlog_room = asyncio.Event()
        self._room: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._message_ids: dict[str, str] = {}
        self._closing = False

    async def run(self) -> None:
        """Serve the connection; returns when it is closed and every task has ended."""
        writer = asyncio.create_task(self._writer(), name=f"writer-{self.session.conn_id}")
        self._control(encode_frame(self.session.ready()))
        try:
            await self._reader()
        finally:
            self._closing = True
            self._apply(self.session.connection_lost())
            await self._reap_streams()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self.outbox.clear()

    async def _reader(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    actions = self.session.receive(message, time.monotonic())
                else:
                    actions = self.session.receive_binary()
                self._apply(actions)
                if self.outbox.backlog_bytes > READER_BACKLOG_BYTES:
                    await self._wait_for_backlog()
        except websockets.ConnectionClosed:
            pass

    async def _wait_for_backlog(self) -> None:
        # Stop reading the client until the writer has sent what the reader queued: a
        # client that sends faster than it reads gets TCP backpressure, not our memory.
        closed = asyncio.ensure_future(self.ws.wait_closed())
        try:
            while self.outbox.backlog_bytes > READER_BACKLOG_BYTES // 2:
                self._backlog_room.clear()
                room = asyncio.ensure_future(self._backlog_room.wait())
                done, _ = await asyncio.wait({room, closed}, return_when=asyncio.FIRST_COMPLETED)
                room.cancel()
                if closed in done:
                    return  # the reader's next read raises ConnectionClosed
        finally:
            closed.cancel()

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendControl):
                self._control(encode_frame(action.frame))
            elif isinstance(action, SendStream):
                self._deliver(action.stream_id, action.output)
            elif isinstance(action, StartUpstream):
                self._start_task(action)
            elif isinstance(action, CancelUpstream):
                task = self._tasks.get(action.stream_id)
                if task is not None:
                    task.cancel()

    def _start_task(self, start: StartUpstream) -> None:
        sid = start.stream_id
        self._message_ids[sid] = start.message_id
        task = asyncio.create_task(self._run_stream(start), name=f"stream-{sid}")
        self._tasks[sid] = task
        # A done-callback, not a `finally`: a task cancelled before it first runs never
        # executes its body, and must not stay in the table with its request.
        task.add_done_callback(lambda done: self._forget(sid, done))

    def _forget(self, stream_id: str, task: asyncio.Task[None]) -> None:
        # A cancelled stream's id may already name a new stream: forget only our own.
        if self._tasks.get(stream_id) is task:
            del self._tasks[stream_id]
            self._room.pop(stream_id, None)
            self._message_ids.pop(stream_id, None)

    def _control(self, data: bytes) -> None:
        self.outbox.push_control(data)
        self._wake_writer.set()

    def _deliver(self, stream_id: str, output: StreamOutput) -> None:
        outbox = self.outbox
        for data in output.data:
            outbox.push(stream_id, data)
        if output.telemetry is not None:
            outbox.push_telemetry(stream_id, encode_frame(output.telemetry))
        if output.closed:
            outbox.end_stream(stream_id)
            self._log_finish(stream_id, output)
        self._wake_writer.set()

    def _log_finish(self, stream_id: str, output: StreamOutput) -> None:
        last = output.frames[-1] if output.frames else None
        if isinstance(last, FinishFrame):
            log.info(
                "stream_finished",
                stream_id=stream_id,
                message_id=self._message_ids.pop(stream_id, None),
                reason=last.reason,
                last_seq=last.seq,
            )

    async def _run_stream(self, start: StartUpstream) -> None:
        sid = start.stream_id
        with bound(stream_id=sid, message_id=start.message_id):
            await self._stream_body(start)

    async def _stream_body(self, start: StartUpstream) -> None:
        sid = start.stream_id
        session = self.session
        try:
            async with self.upstream.open(start.request) as chunks:
                async for chunk in chunks:
                    output = session.upstream_data(sid, chunk, time.monotonic())
                    self._deliver(sid, output)
                    if output.closed:
                        return
                    if self.outbox.is_full(sid):
                        await self._wait_for_room(sid)
            self._deliver(sid, session.upstream_eof(sid, time.monotonic()))
        except WsgateError as exc:
            log.info("upstream_failed", stream_id=sid, code=exc.code)
            self._deliver(sid, session.upstream_failed(sid, exc))
        except Exception:
            log.exception("stream_crashed", stream_id=sid)
            self._deliver(sid, session.upstream_failed(sid, WsgateError("internal error")))

    async def _wait_for_room(self, stream_id: str) -> None:
        event = self._room.get(stream_id)
        if event is None:
            event = self._room[stream_id] = asyncio.Event()
        event.clear()
        while not self.outbox.has_room(stream_id):
            await event.wait()
            event.clear()

    async def _writer(self) -> None:
        try:
            await self._write_loop()
        except Exception:
            log.exception("writer_crashed")
            self._abort("writer_crashed")
            raise

    async def _write_loop(self) -> None:
        outbox = self.outbox
        ws = self.ws
        sent_since_yield = 0
        while True:
            item = outbox.pop()
            if item is None:
                self._wake_writer.clear()
                await self._wake_writer.wait()
                continue
            stream_id, data = item
            try:
                async with asyncio.timeout(self.send_timeout):
                    await ws.send(data, text=True)
            except TimeoutError:
                self._abort("send_timeout")
                return
            except websockets.ConnectionClosed:
                return
            self.stats.frames_sent += 1
            self.stats.bytes_sent += len(data)
            if stream_id is not None:
                room = self._room.get(stream_id)
                if room is not None and outbox.has_room(stream_id):
                    room.set()
            if outbox.backlog_bytes <= READER_BACKLOG_BYTES // 2:
                self._backlog_room.set()
            # send() only yields when the transport is paused; yield now and then so one
            # busy connection cannot starve the others on the loop.
            sent_since_yield += 1
            if sent_since_yield >= 64:
                sent_since_yield = 0
                await asyncio.sleep(0)

    def _abort(self, why: str) -> None:
        log.warning("connection_aborted", reason=why, queued_bytes=self.outbox.pending_bytes)
        self.stats.aborted = True
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    async def _reap_streams(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
