"""Test helpers shipped with the package: fakes over mocks.

Owns the fakes the test suite (and users' own tests) build on: a scripted upstream parser
for driving the core without a provider, a scripted upstream for driving the gateway
without a provider, OpenAI SSE bytes for it, a manual clock, and the conversation
replayer's frame matcher; for the gateway shell, a recording WebSocket (a real sans-I/O
protocol over a transport that records its writes and pauses on demand) and an upstream
that hangs at a chosen await point, for cancellation tests. Nothing here opens sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, Protocol

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from wsgate.core import events as ev
from wsgate.core.errors import UpstreamProtocolError, WsgateError
from wsgate.core.frames import ChatRequest, StartOptions
from wsgate.core.principal import Principal, Quota, anonymous
from wsgate.core.session import Resolver
from wsgate.core.stream import UpstreamParser

LOCAL: Principal = anonymous("127.0.0.1", Quota())
"""An anonymous principal without quotas, for sessions made in tests."""


class ParserTarget:
    """A start's `Target` without a route: its parsers come from `make`."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], UpstreamParser]) -> None:
        self.make = make

    def parser(self) -> UpstreamParser:
        """The next parser `make` gives."""
        return self.make()

    def describe(self) -> dict[str, object]:
        """No route: nothing to name."""
        return {}


def resolver(make: Callable[[], UpstreamParser]) -> Resolver:
    """A `Session` resolver for tests: every start resolves to a `ParserTarget` over `make`."""

    def resolve(_request: ChatRequest, _options: StartOptions) -> ParserTarget:
        return ParserTarget(make)

    return resolve


class ScriptedParser:
    """An `UpstreamParser` whose every `feed` returns the next scripted step.

    A step is a list of items (events, possibly ended by a `WsgateError` value, as a real
    parser returns them), or a `WsgateError` to raise. `eof` raises
    `UpstreamProtocolError` unless `finished_at_eof` is true, like a truncated stream.
    """

    def __init__(
        self,
        steps: Iterable[list[ev.UpstreamEvent | WsgateError] | WsgateError] = (),
        *,
        eof_events: list[ev.UpstreamEvent] | None = None,
        finished_at_eof: bool = True,
    ) -> None:
        self.steps = list(steps)
        self.fed: list[bytes] = []
        self._eof_events: list[ev.UpstreamEvent | WsgateError] = list(eof_events or [])
        self._finished_at_eof = finished_at_eof

    def feed(self, data: bytes) -> list[ev.UpstreamEvent | WsgateError]:
        """Return the next step's items (or raise its error)."""
        self.fed.append(data)
        if not self.steps:
            return []
        step = self.steps.pop(0)
        if isinstance(step, WsgateError):
            raise step
        return step

    def eof(self) -> list[ev.UpstreamEvent | WsgateError]:
        """The scripted end of the stream."""
        if not self._finished_at_eof:
            raise UpstreamProtocolError("upstream stream ended before it finished")
        return self._eof_events


class FakeClock:
    """A clock that moves only when told; pass `clock.now` where the core wants time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        """Move forward and return the new time."""
        self.now += seconds
        return self.now


ANY = "$any"
"""In a fixture's expected frame, matches any value of that field."""


def frame_matches(expected: Any, actual: Any) -> bool:
    """Whether `actual` matches `expected`, where the string `$any` matches anything."""
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(frame_matches(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(frame_matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual) and type(expected) is type(actual)


class ScriptedBody:
    """A provider body (`gateway.ports.Body`) that hands out scripted chunks, honouring pauses.

    Like a pull body: each chunk goes to the sink in turn; while paused, the task waits.
    `pulled` on its upstream counts the chunks handed out.
    """

    def __init__(self, upstream: ScriptedUpstream) -> None:
        self._upstream = upstream
        self._paused = False
        self._room: asyncio.Event | None = None

    @property
    def paused(self) -> bool:
        """Reading is stopped by `pause`."""
        return self._paused

    def pause(self) -> None:
        """Hand out no chunk until `resume`."""
        self._paused = True

    def resume(self) -> None:
        """Hand out chunks again."""
        self._paused = False
        if self._room is not None:
            self._room.set()

    async def run(self, sink: BodySink) -> None:
        """Hand every scripted chunk to `sink` (a loop turn apart) until it says stop."""
        for chunk in self._upstream.chunks:
            while self._paused:
                self._room = self._room or asyncio.Event()
                self._room.clear()
                await self._room.wait()
            await asyncio.sleep(0)  # a provider's chunks arrive in separate reads
            self._upstream.pulled += 1
            if sink.data(chunk):
                return


class BodySink(Protocol):
    """Where a body's bytes go (as `gateway.ports.BodySink`)."""

    def data(self, chunk: bytes) -> bool:
        """Take body bytes; True when the body must not be read any further."""


class ScriptedUpstream:
    """An `Upstream` for the gateway whose bodies hand out scripted byte chunks.

    `open()` ignores the request; each stream gets a fresh `ScriptedBody` over `chunks`.
    `pulled` counts chunks handed out over all streams; `closed` counts contexts exited.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = list(chunks)
        self.pulled = 0
        self.requests: list[object] = []
        self.targets: list[object] = []
        self.opened = 0
        self.closed = 0

    def open(
        self, request: object, target: object = None
    ) -> AbstractAsyncContextManager[ScriptedBody]:
        """Open one scripted response (the request and target are only recorded)."""
        self.requests.append(request)
        self.targets.append(target)
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[ScriptedBody]:
        self.opened += 1
        try:
            yield ScriptedBody(self)
        finally:
            self.closed += 1


async def read_body(body: RunnableBody) -> list[bytes]:
    """Every chunk of an open body (`Upstream.open`'s), read to its end."""
    chunks: list[bytes] = []

    class _Collect:
        def data(self, chunk: bytes) -> bool:
            chunks.append(chunk)
            return False

    await body.run(_Collect())
    return chunks


class RunnableBody(Protocol):
    """Anything with a body's `run` (push, pull or scripted)."""

    async def run(self, sink: BodySink) -> None:
        """Hand the body to `sink`."""


def openai_sse(texts: Iterable[str], *, finish: str = "stop") -> list[bytes]:
    """OpenAI chat-completions SSE events for these content pieces, one chunk per event."""
    out = [
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    ]
    out.extend(
        b"data: "
        + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode()
        + b"\n\n"
        for text in texts
    )
    out.append(
        b"data: "
        + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}).encode()
        + b"\n\n"
    )
    out.append(b"data: [DONE]\n\n")
    return out


class RecordingTransport:
    """The transport of a `RecordingWebSocket`: records every write, sends nothing.

    `writes` holds each `write` call's bytes. While `pause_on_write` is set, every write
    pauses the connection, like a write that crossed the socket's high-water mark; while
    `fail_on_write` holds an exception, every write raises it. `buffered` is what
    `get_write_buffer_size` reports (set it to show a backed-up socket; `resume` empties
    it). `abort` drops the connection as a reset would.
    """

    def __init__(self, ws: RecordingWebSocket) -> None:
        self._ws = ws
        self.writes: list[bytes] = []
        self.pause_on_write = False
        self.fail_on_write: BaseException | None = None
        self.buffered = 0
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        """Record one write (or raise `fail_on_write`)."""
        if self.fail_on_write is not None:
            raise self.fail_on_write
        self.writes.append(data)
        if self.pause_on_write:
            self._ws.paused = True

    def is_closing(self) -> bool:
        """Closed or aborted."""
        return self.closing

    def get_write_buffer_size(self) -> int:
        """The bytes the socket is said to hold (`buffered`)."""
        return self.buffered

    def abort(self) -> None:
        """Drop the connection without a close handshake."""
        self.closing = self.aborted = True
        self._ws.connection_lost()


_CLIENT_CLOSED = object()
"""Queued by `client_closes`: the message iteration ends."""


class RecordingWebSocket:
    """A stand-in for websockets' `ServerConnection`: the parts the writer and connection use.

    `protocol` is a real sans-I/O `ServerProtocol` in the OPEN state, so frames are encoded
    exactly as on a socket; `transport` (`RecordingTransport`) records the bytes, and
    `frames()` decodes them back. `paused` is the transport's flow control: `pause()` is a
    client that stopped reading, `resume()` one that read everything. `send_context()`
    behaves like websockets': it raises `ConnectionClosed` unless the connection is open,
    writes what the body queued, and waits while paused (an error in between aborts the
    connection and becomes `ConnectionClosed`, as there). The client's messages are
    scripted: `client_sends(text)` queues one for `async for`, `client_closes()` ends the
    iteration (a clean close), an abort makes it raise `ConnectionClosedError`.
    Differences from a socket: `close` completes the handshake at once (the client echoes
    it), and nothing reaches a peer.
    """

    def __init__(self) -> None:
        self.protocol = ServerProtocol(max_size=None)
        self.protocol.state = State.OPEN
        self.paused = False
        self.transport = RecordingTransport(self)
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._incoming: asyncio.Queue[str | bytes | object] = asyncio.Queue()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed = asyncio.Event()

    # --- what the gateway calls ---------------------------------------------------------

    @asynccontextmanager
    async def send_context(self) -> AsyncIterator[None]:
        """Check the connection is open; on exit write what was queued, wait while paused."""
        if self.protocol.state is not State.OPEN or self.transport.closing:
            raise ConnectionClosed(None, None)
        try:
            yield
            data = b"".join(self.protocol.data_to_send())
            if data:
                self.transport.write(data)
            while self.paused:
                waiter = asyncio.get_running_loop().create_future()
                self._drain_waiters.append(waiter)
                try:
                    await waiter
                finally:
                    self._drain_waiters.remove(waiter)
        except ConnectionClosed:
            raise
        except Exception as exc:  # as websockets: a failed write terminates the connection
            self.transport.abort()
            raise ConnectionClosed(None, None) from exc

    async def send(self, message: str | bytes, text: bool = True) -> None:
        """Send one text message (wsgate sends text only; `text` is accepted for the API)."""
        del text
        data = message.encode() if isinstance(message, str) else message
        async with self.send_context():
            self.protocol.send_text(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame; the client's echo is taken as received at once."""
        if self.protocol.state is State.OPEN and not self.transport.closing:
            with contextlib.suppress(ConnectionClosed):
                async with self.send_context():
                    self.protocol.send_close(code, reason)
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._end(None)

    async def wait_closed(self) -> None:
        """Wait until the connection is closed (cleanly or aborted)."""
        await self._closed.wait()

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        """The scripted client messages, until the client closes."""
        while True:
            item = await self._incoming.get()
            if item is _CLIENT_CLOSED:
                if self.transport.aborted:
                    raise ConnectionClosedError(None, None)
                return
            assert isinstance(item, str | bytes)  # noqa: S101 - only `client_sends` queues
            yield item

    # --- what a test calls --------------------------------------------------------------

    def client_sends(self, message: str | bytes) -> None:
        """The client sends one message (text as `str`, binary as `bytes`)."""
        self._incoming.put_nowait(message)

    def client_closes(self) -> None:
        """The client closes the connection: the message iteration ends."""
        if self.close_code is None:
            self.close_code, self.close_reason = 1000, ""
        self._end(None)

    def pause(self) -> None:
        """The client stopped reading: sends wait until `resume`."""
        self.paused = True

    def resume(self) -> None:
        """The client read everything: the socket is empty and sends go on."""
        self.paused = False
        self.transport.buffered = 0
        self._wake_drain_waiters(None)

    def connection_lost(self) -> None:
        """The TCP connection is gone (called by the transport's `abort`)."""
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, ""  # ABNORMAL_CLOSURE, as websockets
        self._end(ConnectionClosedError(None, None))

    def frames(self) -> list[dict[str, Any]]:
        """Every text frame written so far, decoded from JSON (close frames left out)."""
        return [frame for write in self.frames_per_write() for frame in write]

    def frames_per_write(self) -> list[list[dict[str, Any]]]:
        """The text frames of each transport write, decoded from JSON."""
        return [_decode_server_frames(data) for data in self.transport.writes]

    def _end(self, exc: BaseException | None) -> None:
        """Closed: as websockets' `connection_lost`, a waiting send wakes (with `exc`)."""
        if self._closed.is_set():
            return
        self.protocol.state = State.CLOSED
        self.transport.closing = True
        self.paused = False
        self._wake_drain_waiters(exc)
        self._incoming.put_nowait(_CLIENT_CLOSED)
        self._closed.set()

    def _wake_drain_waiters(self, exc: BaseException | None) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)


def _decode_server_frames(data: bytes) -> list[dict[str, Any]]:
    """The JSON text frames in bytes a server wrote, parsed by websockets' client side."""
    client = ClientProtocol(parse_uri("ws://wsgate.test/"), state=State.OPEN, max_size=None)
    client.receive_data(data)
    frames = [
        json.loads(bytes(event.data))
        for event in client.events_received()
        if isinstance(event, Frame) and event.opcode is Opcode.TEXT
    ]
    if client.parser_exc is not None:
        raise client.parser_exc
    return frames


HangPoint = Literal["connect", "body", "close"]
"""Where a `HangingUpstream` waits until cancelled."""


class HangingBody(ScriptedBody):
    """A `ScriptedBody` whose `run`, after its chunks, waits until cancelled ("body")."""

    def __init__(self, upstream: HangingUpstream) -> None:
        super().__init__(upstream)
        self._hanging = upstream

    async def run(self, sink: BodySink) -> None:
        """Hand out the scripted chunks (honouring pauses), then hang if told to here."""
        await super().run(sink)
        if self._hanging.at == "body":
            await self._hanging.hang()


class HangingUpstream(ScriptedUpstream):
    """An `Upstream` that waits until cancelled at one point of a provider call.

    For cancellation tests (one per await point, as httpcore's `test_cancellations.py`):

    - "connect": `open()`'s context never yields (cancelled before the headers came);
    - "body": the body hands out `chunks`, then its `run` never returns;
    - "close": the body hands out `chunks` and returns, then leaving the context awaits
      (a provider connection slow to close).

    `hanging` is set once a call reaches its hang point. `failures` are raised by the
    first calls, one per call, before any hang (a transient one provokes a retry).
    `opened` counts calls, `closed` the contexts that finished, by cancellation included.
    """

    def __init__(
        self, at: HangPoint, chunks: Iterable[bytes] = (), *, failures: Iterable[WsgateError] = ()
    ) -> None:
        super().__init__(chunks)
        self.at: HangPoint = at
        self.failures = list(failures)
        self.hanging = asyncio.Event()

    def open(
        self, request: object, target: object = None
    ) -> AbstractAsyncContextManager[HangingBody]:
        """Open one call that hangs at `at` (or fails with the next of `failures`)."""
        self.requests.append(request)
        self.targets.append(target)
        return self._open_hanging()

    async def hang(self) -> None:
        """Wait until cancelled, with `hanging` set."""
        self.hanging.set()
        await asyncio.get_running_loop().create_future()

    @asynccontextmanager
    async def _open_hanging(self) -> AsyncIterator[HangingBody]:
        self.opened += 1
        entered = False
        try:
            if self.failures:
                raise self.failures.pop(0)
            if self.at == "connect":
                await self.hang()
            entered = True
            yield HangingBody(self)
        finally:
            try:
                if entered and self.at == "close":
                    await self.hang()
            finally:
                self.closed += 1
