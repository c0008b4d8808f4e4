"""What the upstream side hands the gateway: an open provider body and the sink it fills.

Owns the two interfaces between a provider's response and a stream: `Body`, one open
response's body, read in push mode (`push.PushBody`, from the socket's data callback) or
pull mode (`pull.PullBody`, by the stream's task), and `BodySink`, where its bytes go.
Both readers keep the same contract, held by one contract suite (tests/upstream/):

- `run(sink)` hands the body's bytes to `sink.data` in order and returns at the body's end
  or as soon as `sink.data` returns True; it raises `UpstreamBroken` when the body breaks
  off (a reset, a truncated chunked body) and `UpstreamTimeout` when the first byte or the
  next read is later than its deadline.
- `pause()` stops reading the provider (TCP backpressure) until `resume()`; bytes already
  read wait, and time spent paused is not counted against the idle deadline.
- Cancelling the task awaiting `run` stops the body at once; closing the response (the
  caller's `async with`) is what closes the provider's connection.

No I/O here; nothing about WebSocket clients.
"""

from __future__ import annotations

from typing import Protocol

READ_BUFSIZE = 16 * 1024
"""aiohttp's `read_bufsize` for provider calls: it buffers up to 2x this per response before
it stops reading the socket, and a pull read returns at most that. Token events are small:
16 KiB keeps a paused stream's overshoot small."""


class BodySink(Protocol):
    """Where a body's bytes go (the gateway's stream)."""

    def data(self, chunk: bytes) -> bool:
        """Take body bytes; True when the body must not be read any further."""


class Body(Protocol):
    """One open provider response's body."""

    async def run(self, sink: BodySink) -> None:
        """Hand the body to `sink` until it ends or the sink says stop."""

    def pause(self) -> None:
        """Stop reading the provider until `resume`."""

    def resume(self) -> None:
        """Read the provider again."""

    @property
    def paused(self) -> bool:
        """Reading is stopped by `pause`."""
