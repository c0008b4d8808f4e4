"""A connection's writer: every frame queued in one loop turn leaves in one transport write.

Owns the moment and the mechanics of writing a connection's `Outbox` to its WebSocket:

- Per loop turn: the first frame queued in a turn schedules one flush (`call_soon`); the
  flush frames what waits with websockets' sans-I/O protocol and hands it to the transport
  in one `write`. Frames queued by every provider callback of a turn (push mode) thus
  share one system call, and no task wakes per token.
- A writer task exists only while the transport is paused (the client is not reading) or
  a burst exceeds one batch (`WRITE_BATCH_FRAMES` / `WRITE_BATCH_BYTES`): it waits for room
  the way `ws.send` does (`send_context()`), writes batch after batch and yields every
  `WRITE_BATCH_FRAMES` frames so one connection cannot starve the loop, then ends.
- The time a send has been waiting (`send_since`) and the time of the last write
  (`last_send`) are kept for the connection's one timer (send timeout, heartbeat).

Built from callbacks (centrifuge's writer config): `on_sent(batch)` after every write (the
connection's accounting and flow control), `on_drained()` when the outbox is empty and
`on_failed(why)` when a write raised (the connection aborts its transport).
It decides nothing about flow control or slow consumers.

websockets internals relied on (17.x; pinned `<18` in pyproject.toml; each held by a test
in tests/gateway/test_websockets_internals.py): `Connection.send_context()` (undocumented;
the context `send`, `ping` and `close` use) and `Connection.paused` (set by the transport's
`pause_writing`), the `protocol` attribute (the sans-I/O `ServerProtocol`, whose `state`,
`send_text` and `data_to_send` are documented) and `transport`; and that the frames
`protocol.send_text` queues in the OPEN state are the only bytes pending in
`protocol.data_to_send()`. wsgate never sends fragmented messages, so `send`'s wait for one
to finish is not needed.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from wsgate.core.flow import SOCKET_BACKLOG_BYTES
from wsgate.core.outbox import Outbox
from wsgate.log import get_logger

log = get_logger("wsgate.gateway")

WRITE_BATCH_FRAMES = 64
"""Most frames the writer sends in one transport write (and between two yields)."""

WRITE_BATCH_BYTES = SOCKET_BACKLOG_BYTES // 2
"""A batch stops growing past this many bytes: under backpressure, frames wait in the
outbox (where a stream's deltas coalesce) rather than in the socket's buffer."""

Batch = list[tuple[str | None, bytes]]


class Writer:
    """Writes one connection's outbox: a flush per loop turn, a task only while it must wait."""

    __slots__ = (
        "_closed",
        "_context",
        "_flush",
        "_loop",
        "_on_drained",
        "_on_failed",
        "_on_sent",
        "_task",
        "last_send",
        "outbox",
        "send_since",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        outbox: Outbox,
        on_sent: Callable[[Batch], None],
        on_drained: Callable[[], None],
        on_failed: Callable[[str], None],
    ) -> None:
        self.ws = ws
        self.outbox = outbox
        self._on_sent = on_sent
        self._on_drained = on_drained
        self._on_failed = on_failed
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()  # the connection's, with `conn_id`
        self._flush: asyncio.Handle | None = None  # scheduled for this turn
        self._task: asyncio.Task[None] | None = None  # exists while a write must wait
        self._closed = False  # a send saw the connection closed: write nothing more
        self.last_send = self._loop.time()
        self.send_since: float | None = None  # a send waits for room since then

    @property
    def busy(self) -> bool:
        """A flush is scheduled or a writer task runs."""
        return self._flush is not None or self._task is not None

    def wake(self) -> None:
        """Frames were queued: write them at the end of this loop turn."""
        if self._flush is None and self._task is None and not self._closed:
            self._flush = self._loop.call_soon(self._flush_now, context=self._context)

    async def stop(self) -> None:
        """The connection is over: write nothing more; wait for the task to end."""
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _flush_now(self) -> None:
        self._flush = None
        if self._closed:
            return
        if not self._writable():
            self._start_task()  # closing, or the socket is full: `send_context()` waits
            return
        batch = self.take_batch()
        if batch:
            try:
                self._put(batch)
            except Exception:  # contained as in the writer task: logged, connection aborted
                log.exception("writer_crashed")
                self._closed = True
                self._on_failed("writer_crashed")
                return
            self.last_send = self._loop.time()
            self._on_sent(batch)
        if self.outbox.empty and not self.ws.paused:
            self._on_drained()
        else:
            self._start_task()  # more than a batch, or the write filled the socket

    def _start_task(self) -> None:
        if self._task is None and not self._closed:
            self._task = self._loop.create_task(
                self._run(), name="writer", context=self._context.copy()
            )

    async def _run(self) -> None:
        try:
            await self._write_loop()
        except Exception:
            log.exception("writer_crashed")
            self._closed = True
            self._on_failed("writer_crashed")
            raise
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _write_loop(self) -> None:
        loop = self._loop
        sent_since_yield = 0
        while not self._closed:
            if not self._writable():
                # Closing, or the socket is full: wait for room (timed) before taking a
                # frame, so what cannot be sent stays in the outbox (a detached stream's
                # log is made of it).
                if self.ws.transport.is_closing():
                    self._closed = True  # gone: no room will come (nor would a wait yield)
                    return
                self.send_since = loop.time()
                try:
                    await self._room()
                except websockets.ConnectionClosed:
                    self._closed = True  # what is queued from now on stays queued
                    return
                finally:
                    self.send_since = None
                continue
            batch = self.take_batch()
            if not batch:
                self._task = None  # first: a frame queued by on_drained needs a new flush
                self._on_drained()
                return
            self._put(batch)  # writable: the write needs no waiting and cannot fail
            self.last_send = loop.time()
            self._on_sent(batch)
            # A write never yields; yield now and then so one busy connection cannot
            # starve the others on the loop.
            sent_since_yield += len(batch)
            if sent_since_yield >= WRITE_BATCH_FRAMES:
                sent_since_yield = 0
                await asyncio.sleep(0)

    def take_batch(self) -> Batch:
        """The next frames to send together: up to the batch bounds."""
        outbox = self.outbox
        batch: Batch = []
        size = 0
        while len(batch) < WRITE_BATCH_FRAMES and size < WRITE_BATCH_BYTES:
            item = outbox.pop()
            if item is None:
                break
            batch.append(item)
            size += len(item[1])
        return batch

    async def _room(self) -> None:
        """Wait until the transport takes more, like `ws.send` does.

        Goes through `send_context()`: it checks the connection is open (raising
        `ConnectionClosed` if not) and waits on the transport's high-water mark.
        """
        async with self.ws.send_context():
            pass

    def _writable(self) -> bool:
        """Open, and the transport takes more: a write needs no waiting and cannot fail."""
        ws = self.ws
        return ws.protocol.state is State.OPEN and not ws.paused and not ws.transport.is_closing()

    def _put(self, batch: Batch) -> None:
        """Frame the batch (websockets' sans-I/O protocol) and hand it to the transport at once."""
        protocol = self.ws.protocol
        for _, data in batch:
            protocol.send_text(data)
        self.ws.transport.write(b"".join(protocol.data_to_send()))
