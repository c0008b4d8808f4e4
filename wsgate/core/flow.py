"""Flow-control verdicts of one connection: watermark pairs in bytes, applied by the shell.

Owns when a provider is paused or resumed and when the client is a slow consumer.

Rules (each a pair, so a level near one mark does not flap):
1. A stream's provider is paused while its own queue is full (`Outbox.is_full`: `max_events`
   frames or `max_bytes` bytes) and resumed when it is at half of both (`Outbox.has_room`).
2. Every provider of the connection is paused while the connection's queued bytes reach
   `high` (half of `buffer_bytes`) and resumed at `low` (a quarter of it). Worst case queued
   while paused: `high` plus one read's frames per running stream (a push read is at most
   `READ_BUFSIZE` = 16 KiB of provider bytes, a pull read 2 x that) — with 256 streams and
   the default 1 MiB cap, 512 KiB + 256 x 32 KiB = 8.5 MiB, the figure of README's memory
   bounds.
3. The client is a slow consumer when the queued bytes plus the socket's write buffer pass
   `buffer_bytes` *and* the socket holds at least `socket_backlog` (websockets' high-water
   mark): over the cap with an empty socket is our own burst (every paused provider's last
   read landing at once), which the writer is draining.
4. The reader stops reading the client while the connection-level frames it queued itself
   (refusals of bad frames) pass `reader_high` bytes, and reads again at half of it. Frames
   of ended streams do not count here: they are bounded by rule 3 (a client that reads
   nothing is closed past `buffer_bytes`), and a reader stopped for them would not see the
   `cancel` of a client that is behind on its reads.

Pure: numbers in, verdicts out; no clock, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from wsgate.core.outbox import Outbox

SOCKET_BACKLOG_BYTES = 32 * 1024
"""websockets' write high-water mark: above it, sends wait for the client to read."""

READER_BACKLOG_BYTES = 256 * 1024
"""Most bytes of refusals (connection-level frames) queued before the reader pauses."""


@dataclass(frozen=True, slots=True)
class Watermarks:
    """A high and a low mark in bytes: pause at `high` or more, resume at `low` or less."""

    high: int
    low: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError(f"watermarks need 0 <= low <= high, got {self.low}, {self.high}")

    def over(self, level: int) -> bool:
        """Pause: `level` reached the high mark."""
        return level >= self.high

    def under(self, level: int) -> bool:
        """Resume: `level` fell to the low mark."""
        return level <= self.low


class Pause(enum.Enum):
    """Why a stream's provider is paused."""

    QUEUE = "queue"  # rule 1: the stream's own queue is full
    CONNECTION = "connection"  # rule 2: the connection holds half of its byte cap


class FlowControl:
    """One connection's verdicts over its outbox, from its byte cap (`buffer_bytes`)."""

    __slots__ = ("buffer_bytes", "connection", "outbox", "reader", "socket_backlog")

    def __init__(
        self,
        outbox: Outbox,
        buffer_bytes: int,
        socket_backlog: int = SOCKET_BACKLOG_BYTES,
        reader_high: int = READER_BACKLOG_BYTES,
    ) -> None:
        if buffer_bytes < 1:
            raise ValueError("buffer_bytes must be positive")
        self.outbox = outbox
        self.buffer_bytes = buffer_bytes
        self.socket_backlog = socket_backlog
        self.connection = Watermarks(buffer_bytes // 2, buffer_bytes // 4)
        """Rule 2: queued bytes at which every provider of the connection pauses / resumes."""
        self.reader = Watermarks(reader_high, reader_high // 2)
        """Rule 4: reader backlog at which the client stops / starts being read."""

    def pause(self, stream_id: str) -> Pause | None:
        """After a stream's delivery: why its provider must pause now (None: read on)."""
        outbox = self.outbox
        if outbox.is_full(stream_id):
            return Pause.QUEUE
        if self.connection.over(outbox.pending_bytes):
            return Pause.CONNECTION
        return None

    def still_paused(self, stream_id: str, reason: Pause) -> Pause | None:
        """After a write: why a paused provider must stay paused (None: resume it now).

        A stream paused for its queue whose queue drained while the connection is still
        over its high mark stays paused for the connection, until the low mark.
        """
        outbox = self.outbox
        if not outbox.has_room(stream_id):
            return reason
        pending = outbox.pending_bytes
        if reason is Pause.CONNECTION:
            return None if self.connection.under(pending) else reason
        return Pause.CONNECTION if self.connection.over(pending) else None

    def reader_paused(self) -> bool:
        """Rule 4: stop reading the client."""
        return self.reader.over(self.outbox.control_bytes)

    def reader_may_resume(self) -> bool:
        """Rule 4: read the client again."""
        return self.reader.under(self.outbox.control_bytes)

    def slow_consumer(self, in_socket: int) -> bool:
        """Rule 3: the client is not keeping up; its streams end and it is closed (4000)."""
        queued = self.outbox.pending_bytes
        return queued + in_socket > self.buffer_bytes and in_socket >= self.socket_backlog
