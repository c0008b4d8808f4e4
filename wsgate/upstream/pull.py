"""Pull-mode body reading: the stream's task reads the body chunk by chunk (the fallback).

Owns `PullBody`, the same interface as `push.PushBody` (`run(sink)`, `pause`, `resume`) over
aiohttp's public `readany()`: one task wake-up per provider chunk, and no reliance on aiohttp
internals. Selected per provider with `reader = "pull"`, for a provider (or an aiohttp
release) the push reader does not suit.

- Backpressure: `pause()` makes the task wait before its next read, so aiohttp's buffer
  fills (2 x `read_bufsize`) and it stops reading the socket: the provider is slowed
  through TCP.
- Deadlines: the first byte, then the idle gap, watched by the loop's one timer
  (`watch.ReadWatch`) through `ReadDeadline`, which tells the task's timeout from other
  cancels; time spent paused is not counted.

Does not parse anything and knows nothing of WebSocket clients.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from wsgate.core.errors import UpstreamBroken, UpstreamTimeout
from wsgate.upstream.base import BodySink
from wsgate.upstream.watch import ReadWatch, Watched


class PullBody:
    """One response's body, read by the task that awaits `run`."""

    __slots__ = ("_content", "_first", "_idle", "_paused", "_room")

    def __init__(
        self, response: aiohttp.ClientResponse, first_byte_deadline: float, idle: float
    ) -> None:
        self._content = response.content
        self._first = first_byte_deadline
        self._idle = idle
        self._paused = False
        self._room: asyncio.Event | None = None  # made by the first pause

    @property
    def paused(self) -> bool:
        """Reading is stopped by `pause`."""
        return self._paused

    def pause(self) -> None:
        """Read no more until `resume` (the task waits before its next read)."""
        self._paused = True

    def resume(self) -> None:
        """Read again."""
        self._paused = False
        if self._room is not None:
            self._room.set()

    async def run(self, sink: BodySink) -> None:
        """Read the body into `sink` until it ends or the sink says stop."""
        loop = asyncio.get_running_loop()
        deadline = ReadDeadline(loop)
        content = self._content
        when = self._first
        try:
            while True:
                try:
                    deadline.reading(when)
                    chunk = await content.readany()  # b"" at the end of the body
                except asyncio.CancelledError:
                    if deadline.expired():
                        raise UpstreamTimeout("the provider did not answer in time") from None
                    raise
                except aiohttp.EofStream:
                    return
                except (aiohttp.ClientError, HttpProcessingError) as exc:
                    # (aiohttp's pure-Python parser fails a body with its own framing error)
                    raise UpstreamBroken("the provider closed the stream unexpectedly") from exc
                finally:
                    deadline.reading(None)
                if not chunk or sink.data(chunk):
                    return
                while self._paused:  # time waiting for the client is not the provider's
                    room = self._room
                    if room is None:
                        room = self._room = asyncio.Event()
                    room.clear()
                    await room.wait()
                when = loop.time() + self._idle
        finally:
            deadline.close()


class ReadDeadline:
    """The deadline of the read in progress, kept by the loop's `ReadWatch`.

    `asyncio.timeout` around every read creates and cancels a timer handle per chunk, i.e.
    per token of a paced stream. Here a read only stores its deadline in the loop's watch
    (one timer for all bodies); when the watch finds it past due while the read still
    waits, the task is cancelled, and `expired()` tells that cancel from any other (the
    same bookkeeping as `asyncio.Timeout`). While no read waits (the consumer holds a
    chunk, e.g. under backpressure), nothing is watched.
    """

    __slots__ = ("_cancelling", "_expired", "_task", "_token", "_watch")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("ReadDeadline must be created in the task that reads")
        self._watch = ReadWatch.of(loop)
        self._token = Watched(self._read_expired)
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False

    def reading(self, deadline: float | None) -> None:
        """A read starts that must end by `deadline` (loop time); None: no read waits."""
        if deadline is None:
            self._watch.unset(self._token)
        else:
            self._watch.set(self._token, deadline)

    def expired(self) -> bool:
        """True when this deadline cancelled the task and no one else did."""
        if not self._expired:
            return False
        self._expired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        """Stop watching (the body ended)."""
        self._watch.remove(self._token)

    def _read_expired(self) -> None:
        """The watch's verdict: the waiting read is past its deadline."""
        self._expired = True
        self._task.cancel()
