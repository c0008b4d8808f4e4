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
4. The reader stops reading the client while what it queued itself (refusals, frames of
   ended streams) passes `reader_high` bytes, and reads again at half of it.

Pure: numbers in, verdicts out; no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

SOCKET_BACKLOG_BYTES = 32 * 1024
"""websockets' write high-water mark: above it, sends wait for the client to read."""

READER_BACKLOG_BYTES = 256 * 1024
"""Most bytes of refusals and ended streams' frames queued before the reader pauses."""


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


class FlowControl:
    """One connection's verdicts, from its byte cap (`buffer_bytes`)."""

    __slots__ = ("buffer_bytes", "connection", "reader", "socket_backlog")

    def __init__(
        self,
        buffer_bytes: int,
        socket_backlog: int = SOCKET_BACKLOG_BYTES,
        reader_high: int = READER_BACKLOG_BYTES,
    ) -> None:
        if buffer_bytes < 1:
            raise ValueError("buffer_bytes must be positive")
        self.buffer_bytes = buffer_bytes
        self.socket_backlog = socket_backlog
        self.connection = Watermarks(buffer_bytes // 2, buffer_bytes // 4)
        """Rule 2: queued bytes at which every provider of the connection pauses / resumes."""
        self.reader = Watermarks(reader_high, reader_high // 2)
        """Rule 4: reader backlog at which the client stops / starts being read."""

    def slow_consumer(self, queued: int, in_socket: int) -> bool:
        """Rule 3: the client is not keeping up; its streams end and it is closed (4000)."""
        return queued + in_socket > self.buffer_bytes and in_socket >= self.socket_backlog
