"""Push-mode body reading: provider bytes reach the stream inside the socket's data callback.

Owns `PushProtocol`, the aiohttp response protocol every pooled connection is made with, and
`PushBody`, which hands one response's body to a `BodySink` from that protocol's
`data_received`: aiohttp's HTTP parser (status, headers, chunked framing, keep-alive) runs as
usual, and what it parsed is read out of the response's `StreamReader` in the same callback
and given to the sink, which turns it into client frames in the same loop turn. No task
wakes per chunk: the stream's task waits once, for the body's end.

- Backpressure: `pause()` stops the provider's transport (`transport.pause_reading()`); the
  sink calls it from `data` when its stream or connection is full. Bytes already parsed
  stay in the response's `StreamReader` until `resume()`: at most one socket read plus
  aiohttp's buffer (2 x `read_bufsize`), whatever the provider sends.
- Deadlines: the first byte and the idle gap between reads are watched by the loop's one
  timer (`watch.ReadWatch`): a read only moves the body's deadline; time spent paused is
  not counted. Expiry ends the body with `UpstreamTimeout`.
- Ends: the parser's end of body (`is_eof`), a broken body (aiohttp's `ClientPayloadError`,
  a truncated chunked body or a reset) -> `UpstreamBroken`, or the sink asking to stop.

aiohttp internals relied on (3.14.x, pinned `<3.15` in pyproject.toml; each held by a test
in tests/upstream/test_aiohttp_internals.py): the connector builds protocols with its
`_factory` (replaced by `PushProtocol` in `install`); `ResponseHandler.data_received` runs
the parser over every socket read, the parser calling the body's `feed_data`,
`begin_http_chunk_receiving` / `end_http_chunk_receiving` and `feed_eof` before it returns;
`connection_lost` sets a `ClientPayloadError` on an unfinished body, except after a framing
error, where only the protocol is marked (`PushProtocol` then fails the body; the
protocol's `_payload` is read for it); `read_nowait()` may call
`protocol.resume_reading()`, which re-enters `data_received(b"")` (hence the guard) unless
`_reading_paused` (set by `pause_reading`) is false, when `PushProtocol` skips it.

Does not parse provider formats (the core does) and knows nothing of WebSocket clients.
"""

from __future__ import annotations

import asyncio
import functools

import aiohttp
from aiohttp.client_proto import ResponseHandler

from wsgate.core.errors import UpstreamBroken, UpstreamTimeout
from wsgate.upstream.base import READ_BUFSIZE, BodySink
from wsgate.upstream.watch import ReadWatch, Watched

READ_PIECE = READ_BUFSIZE
"""Most body bytes handed to the sink in one call: between two pieces the sink may pause,
so a stream overshoots its queue by at most the frames of one piece."""


class PushProtocol(ResponseHandler):
    """aiohttp's response protocol, with a body that reads itself in `data_received`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.push_body: PushBody | None = None

    def data_received(self, data: bytes) -> None:
        """Parse a socket read (aiohttp), then push what it completed to the body's sink."""
        body = self.push_body  # read before parsing: the body's end detaches it
        super().data_received(data)
        if body is not None:
            body.drain()

    def resume_reading(self, resume_parser: bool = True) -> None:
        """Resume what aiohttp paused, and only then.

        aiohttp's `StreamReader` calls this after every read below its low-water mark,
        paused or not, and the base class then re-runs the parser on nothing and resumes
        the transport: per token, and past a pause that `PushBody.pause` made on the
        transport. Nothing is paused unless `pause_reading` ran: then it is a no-op.
        """
        if self._reading_paused:
            super().resume_reading(resume_parser)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The socket closed (aiohttp ends or fails the body); the sink learns which.

        A body aiohttp leaves neither ended nor failed is failed here: after a framing error
        (a chunk-size line that is not hex) the C parser closes the transport and marks
        only the protocol, so a reader of the body would wait for bytes that never come.
        """
        body = self.push_body
        payload = self._payload
        super().connection_lost(exc)
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            lost = aiohttp.ClientPayloadError("Response payload is not completed: connection lost")
            payload.set_exception(lost, exc or self.exception() or lost)
        if body is not None:
            body.drain()


def install(connector: aiohttp.BaseConnector, loop: asyncio.AbstractEventLoop) -> None:
    """Make the connector's new connections `PushProtocol`s (pull reads work on them too)."""
    if not hasattr(connector, "_factory"):  # pragma: no cover - held by the pinning tests
        raise RuntimeError("aiohttp's connector has no protocol factory: push mode unusable")
    factory = functools.partial(PushProtocol, loop=loop)
    connector._factory = factory  # type: ignore[assignment]  # noqa: SLF001 - a subclass


class PushBody:
    """One response's body, pushed to a sink from the socket's callbacks."""

    __slots__ = (
        "_content",
        "_done",
        "_draining",
        "_idle",
        "_loop",
        "_paused",
        "_protocol",
        "_sink",
        "_stopped",
        "_token",
        "_transport",
        "_watch",
    )

    def __init__(
        self, response: aiohttp.ClientResponse, first_byte_deadline: float, idle: float
    ) -> None:
        connection = response.connection
        protocol = None if connection is None else connection.protocol
        content = response.content
        if protocol is None and not content.is_eof():
            raise TypeError("a response body without its connection cannot be read")
        if protocol is not None and not isinstance(protocol, PushProtocol):
            raise TypeError("the response was not read by a PushProtocol (see install())")
        # None: the whole body came with the headers and the connection is back in the pool.
        self._protocol = protocol
        self._transport = None if protocol is None else protocol.transport
        self._content = response.content
        loop = self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = loop.create_future()
        self._idle = idle
        self._watch = ReadWatch.of(loop)
        self._token = Watched(self._read_expired)
        self._watch.set(self._token, first_byte_deadline)
        self._sink: BodySink | None = None
        self._paused = False
        self._stopped = False  # this body paused its transport (and must resume it)
        self._draining = False

    async def run(self, sink: BodySink) -> None:
        """Push the body to `sink` until it ends; raises `UpstreamBroken` / `UpstreamTimeout`.

        Returns at the end of the body or when the sink said stop. Cancelling the waiting
        task detaches the sink at once (the caller then closes the response).
        """
        self._sink = sink
        self._content.on_eof(self._detach)  # the connection may go back to the pool now
        if self._protocol is not None and not self._content.is_eof():
            self._protocol.push_body = self
        try:
            self.drain()  # what arrived with the headers
            await self._done
        finally:
            self._close()

    def pause(self) -> None:
        """Stop reading the provider (its TCP window fills) until `resume`.

        A body whose end has arrived only stops handing out what it holds: its connection
        is back in aiohttp's pool, and its transport belongs to the next call.
        """
        if self._paused or self._done.done():
            return
        self._paused = True
        self._watch.unset(self._token)  # the gateway, not the provider, holds the body
        transport = self._transport
        if transport is not None and not transport.is_closing() and not self._content.is_eof():
            self._stopped = True
            transport.pause_reading()

    def resume(self) -> None:
        """Read the provider again: first what waits in aiohttp's buffer."""
        if not self._paused or self._done.done():
            return
        self._paused = False
        self._watch.set(self._token, self._loop.time() + self._idle)
        self._restart_transport()
        self.drain()

    def _restart_transport(self) -> None:
        if self._stopped:
            self._stopped = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()

    @property
    def paused(self) -> bool:
        """Reading is stopped by `pause`."""
        return self._paused

    def drain(self) -> None:
        """Hand what aiohttp parsed to the sink, piece by piece, until empty, paused or ended."""
        if self._draining or self._done.done():
            return  # re-entered from read_nowait -> resume_reading -> data_received
        sink, content = self._sink, self._content
        if sink is None:
            return
        self._draining = True
        try:
            while True:
                if content.exception() is not None:
                    self._finish(UpstreamBroken("the provider closed the stream unexpectedly"))
                    return
                if self._paused:
                    return
                data = content.read_nowait(READ_PIECE)
                if data:
                    self._watch.set(self._token, self._loop.time() + self._idle)
                    if sink.data(data):
                        self._finish(None)
                        return
                    continue
                if content.is_eof():
                    self._finish(None)
                return
        except Exception as exc:  # the sink's own failure ends the body, in the waiting task
            self._finish(exc)
        finally:
            self._draining = False

    def _read_expired(self) -> None:
        """The watch's verdict: no byte came by the deadline."""
        self._finish(UpstreamTimeout("the provider did not answer in time"))

    def _finish(self, error: BaseException | None) -> None:
        done = self._done
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
        self._close()

    def _detach(self) -> None:
        if self._protocol is not None and self._protocol.push_body is self:
            self._protocol.push_body = None

    def _close(self) -> None:
        self._detach()
        self._watch.remove(self._token)
        self._sink = None
        self._restart_transport()  # a connection that may go back to the pool reads again
