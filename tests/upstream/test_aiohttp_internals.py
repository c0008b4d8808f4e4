"""Pinning tests: the aiohttp internals push-mode body reading (upstream/push.py) relies on.

Push mode reads a provider's body inside aiohttp's `ResponseHandler.data_received`, which
works only while aiohttp 3.14 behaves as below. Each test holds one assumption, against a
real server on 127.0.0.1 (a raw asyncio server where the exact bytes and their cut points
matter), and fails with a message that names it and the pinned range. If one fails after
an aiohttp upgrade, push mode is not safe on that release: fix push.py (or run every
provider with `reader = "pull"`) before widening the pin in pyproject.toml.

The parser-dependent tests run against both of aiohttp's HTTP response parsers: the C one
(the default) and the pure-Python one, which aiohttp uses instead when
`AIOHTTP_NO_EXTENSIONS=1` is set at import (patched in here where aiohttp builds it).

Not a contract test: nothing here depends on the reader mode, so the module overrides the
suite's parametrized `reader` fixture (conftest.py) and runs each test once.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import socket
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiohttp.client_proto
import aiohttp.http_parser
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from e2e_helpers import serving

from wsgate.upstream.base import READ_BUFSIZE
from wsgate.upstream.client import _forget_headers
from wsgate.upstream.push import READ_PIECE, PushBody, PushProtocol, install

PIN = "aiohttp>=3.14,<3.15"
PIN_NOTE = f"(pinned {PIN} in pyproject.toml; see the internals listed in upstream/push.py)"

CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
UNTIL_CLOSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
)


def length_head(length: int) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % length
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


@pytest.fixture(autouse=True)
def reader() -> str:
    """Overrides the contract suite's push/pull parametrization: these pins run once."""
    return "push"


# --- harness ---------------------------------------------------------------------------


class RawProvider:
    """A TCP server on 127.0.0.1 that reads each request's head; the test writes the answer."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")  # a GET: the head is the whole request
        self.accepted.put_nowait(writer)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RawProvider]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        try:
            yield self
        finally:
            for writer in self._writers:
                writer.close()
            server.close()
            await server.wait_closed()

    async def answer(
        self, session: aiohttp.ClientSession, head: bytes
    ) -> tuple[aiohttp.ClientResponse, asyncio.StreamWriter]:
        """Send a GET, answer it with `head` (status line and headers); the open response."""
        pending = asyncio.create_task(session.get(self.url))
        writer = await asyncio.wait_for(self.accepted.get(), 5)
        writer.write(head)
        response = await asyncio.wait_for(pending, 5)
        return response, writer


@asynccontextmanager
async def raw_provider() -> AsyncIterator[RawProvider]:
    async with RawProvider().running() as provider:
        yield provider


def rcvbuf_socket(size: int) -> Callable[..., socket.socket]:
    """A connector `socket_factory` whose sockets get SO_RCVBUF `size` before they connect."""

    def factory(addr_info: tuple) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return sock

    return factory


@asynccontextmanager
async def push_session(
    protocol: type[PushProtocol] = PushProtocol, **connector_options: object
) -> AsyncIterator[aiohttp.ClientSession]:
    """A session like UpstreamClient's: `install()`ed connector, the same `read_bufsize`."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(**connector_options)  # type: ignore[arg-type]
    install(connector, loop)
    if protocol is not PushProtocol:
        connector._factory = functools.partial(protocol, loop=loop)
    session = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, read_bufsize=READ_BUFSIZE
    )
    async with session:
        yield session


@pytest.fixture(params=["c", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """aiohttp's response parser under test, as `ResponseHandler.set_response_params` builds it."""
    if request.param == "python":
        cls = aiohttp.http_parser.HttpResponseParserPy
        monkeypatch.setattr(aiohttp.client_proto, "HttpResponseParser", cls)
        return cls
    assert not aiohttp.http_parser.NO_EXTENSIONS, (
        "AIOHTTP_NO_EXTENSIONS is set: the C parser the gateway runs on cannot be pinned"
    )
    cls = getattr(aiohttp.http_parser, "HttpResponseParserC", None)
    assert cls is not None, f"aiohttp's C response parser is missing {PIN_NOTE}"
    assert aiohttp.client_proto.HttpResponseParser is cls, (
        f"aiohttp's client no longer builds the C parser by default {PIN_NOTE}"
    )
    return cls


def parser_of(response: aiohttp.ClientResponse) -> object:
    connection = response.connection
    assert connection is not None
    return connection.protocol._parser  # type: ignore[union-attr]


@dataclass
class Seen:
    """What was readable from the body right after one `data_received` had returned."""

    data: bytes
    total_bytes: int
    chunk_ends: list[int] | None
    eof: bool


class ReadProbe(PushProtocol):
    """After each socket read, reads out what aiohttp made readable by then (no PushBody)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.content: aiohttp.StreamReader | None = None
        self.seen: asyncio.Queue[Seen] = asyncio.Queue()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        content = self.content
        if data and content is not None:
            splits = content._http_chunk_splits
            ends = None if splits is None else list(splits)
            total, eof = content.total_bytes, content.is_eof()
            self.seen.put_nowait(Seen(content.read_nowait(-1), total, ends, eof))


class CallLog(PushProtocol):
    """Notes every `data_received` call: its depth (re-entry), size, and a drain in progress."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.calls: list[tuple[int, int, bool]] = []
        self.resumes = 0
        self._depth = 0

    def data_received(self, data: bytes) -> None:
        body = self.push_body
        self.calls.append((self._depth, len(data), body is not None and body._draining))
        self._depth += 1
        try:
            super().data_received(data)
        finally:
            self._depth -= 1

    def resume_reading(self, resume_parser: bool = True) -> None:
        self.resumes += 1
        super().resume_reading(resume_parser)


class Collect:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def data(self, chunk: bytes) -> bool:
        self.chunks.append(chunk)
        return False


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling transport and reader state
            await asyncio.sleep(0.005)


# --- the pins --------------------------------------------------------------------------


def test_the_installed_aiohttp_is_the_pinned_range():
    major, minor = (int(part) for part in aiohttp.__version__.split(".")[:2])
    assert (major, minor) == (3, 14), (
        f"aiohttp {aiohttp.__version__} is installed, but push mode was verified for {PIN} "
        "only: run this module against it, then move the pin"
    )
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'"{PIN}"' in pyproject, f"pyproject.toml no longer pins {PIN}: update PIN here"


async def test_the_connector_builds_every_connection_protocol_with_its_factory():
    connector = aiohttp.TCPConnector()
    try:
        assert callable(getattr(connector, "_factory", None)), (
            f"aiohttp.TCPConnector has no `_factory`: install() cannot replace the protocol "
            f"{PIN_NOTE}"
        )
        assert isinstance(connector._factory(), ResponseHandler), (
            f"TCPConnector._factory no longer builds a ResponseHandler {PIN_NOTE}"
        )
    finally:
        await connector.close()

    built: list[ResponseHandler] = []

    class Recorded(PushProtocol):
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__(loop)
            built.append(self)

    async with raw_provider() as provider, push_session(Recorded) as session:
        response, _ = await provider.answer(session, CHUNKED_HEAD)
        connection = response.connection
        assert connection is not None
        assert connection.protocol is built[-1], (
            f"a response's connection.protocol is not the protocol the connector's "
            f"_factory built {PIN_NOTE}"
        )
        response.close()

    async with raw_provider() as provider, push_session() as session:
        response, _ = await provider.answer(session, CHUNKED_HEAD)
        connection = response.connection
        assert connection is not None
        assert isinstance(connection.protocol, PushProtocol), (
            f"after install(), a response is not read by a PushProtocol {PIN_NOTE}"
        )
        response.close()


async def test_response_handler_takes_a_subclass_with_an_added_attribute():
    loop = asyncio.get_running_loop()
    protocol = PushProtocol(loop)  # an added attribute must not clash with aiohttp's __slots__
    assert protocol.push_body is None
    protocol.push_body = None
    for name in ("data_received", "resume_reading", "connection_lost", "pause_reading"):
        assert callable(getattr(ResponseHandler, name, None)), (
            f"ResponseHandler.{name} is gone: PushProtocol overrides or calls it {PIN_NOTE}"
        )
    parameters = inspect.signature(ResponseHandler.resume_reading).parameters
    assert list(parameters) == ["self", "resume_parser"], (
        f"ResponseHandler.resume_reading(resume_parser) changed its signature: PushProtocol "
        f"overrides it {PIN_NOTE}"
    )
    assert protocol._reading_paused is False, (
        f"ResponseHandler has no `_reading_paused` flag: PushProtocol.resume_reading reads it "
        f"{PIN_NOTE}"
    )


@pytest.mark.parametrize(
    ("head", "pieces", "ends"),
    [
        pytest.param(
            CHUNKED_HEAD,
            [
                (b"5\r\nhello\r\n", b"hello", True),
                (b"6\r\n wo", b" wo", False),  # a chunk cut in the middle
                (b"rld\r\n", b"rld", True),
                (b"0\r\n\r\n", b"", True),
            ],
            True,
            id="chunked",
        ),
        pytest.param(
            length_head(11),
            [(b"hello", b"hello", None), (b" world", b" world", None)],
            True,
            id="content-length",
        ),
        pytest.param(
            UNTIL_CLOSE_HEAD,
            [(b"hello", b"hello", None), (b" world", b" world", None)],
            False,  # its end is the connection's close (the next test)
            id="read-to-close",
        ),
    ],
)
async def test_the_parser_makes_each_read_readable_before_data_received_returns(
    parser, head, pieces, ends
):
    async with raw_provider() as provider, push_session(ReadProbe) as session:
        response, writer = await provider.answer(session, head)
        assert isinstance(parser_of(response), parser)
        connection = response.connection
        assert connection is not None
        probe = connection.protocol
        assert isinstance(probe, ReadProbe)
        probe.content = response.content
        total = 0
        for number, (raw, body, chunk_complete) in enumerate(pieces, 1):
            writer.write(raw)  # one small write: one socket read on loopback
            seen = await asyncio.wait_for(probe.seen.get(), 5)
            total += len(body)
            assert (seen.data, seen.total_bytes) == (body, total), (
                f"read {number}: the parser had not fed this read's body bytes to the "
                f"StreamReader (feed_data) by the time data_received returned {PIN_NOTE}"
            )
            if chunk_complete is not None:
                assert seen.chunk_ends is not None, (
                    f"read {number}: begin_http_chunk_receiving was not called inside "
                    f"data_received {PIN_NOTE}"
                )
                assert (total in seen.chunk_ends) is chunk_complete, (
                    f"read {number}: end_http_chunk_receiving did not run inside "
                    f"data_received for exactly the completed chunks {PIN_NOTE}"
                )
            last = number == len(pieces)
            assert seen.eof is (ends and last), (
                f"read {number}: feed_eof {'did not run' if last else 'ran'} inside the "
                f"data_received of the body's last read {PIN_NOTE}"
            )
        response.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_twice_read_bufsize_in_one_read_reenters_and_arrives_in_order(
    parser, framing
):
    # Numbered lines: a duplicated or reordered byte range cannot go unnoticed.
    body = b"".join(b"%07d\n" % i for i in range(25_000))  # 200 000 bytes
    if framing == "chunked":
        head = CHUNKED_HEAD
        raw = b"".join(chunk(body[i : i + 100]) for i in range(0, len(body), 100)) + b"0\r\n\r\n"
    else:
        head, raw = length_head(len(body)), body
    # A receive buffer that holds the whole body while the test keeps the transport paused.
    factory = rcvbuf_socket(1 << 20)
    async with raw_provider() as provider, push_session(CallLog, socket_factory=factory) as s:
        response, writer = await provider.answer(s, head)
        assert isinstance(parser_of(response), parser)
        connection = response.connection
        assert connection is not None
        transport, log = connection.transport, connection.protocol
        assert transport is not None
        assert isinstance(log, CallLog)
        transport.pause_reading()
        writer.write(raw)
        await until(lambda: not writer.transport.get_write_buffer_size())
        await asyncio.sleep(0.05)  # loopback: the kernel has it all for the client now
        loop = asyncio.get_running_loop()
        push = PushBody(response, loop.time() + 10, 10)
        sink = Collect()
        running = asyncio.create_task(push.run(sink))
        await asyncio.sleep(0)  # the body is attached to its protocol
        transport.resume_reading()
        await asyncio.wait_for(running, 10)
        response.close()
    assert max(size for _, size, _ in log.calls) > 2 * READ_BUFSIZE, (
        "the test's premise failed: the body did not arrive in one large read"
    )
    # The parser stops at aiohttp's high-water mark and keeps the rest of the read unparsed
    # (the C parser always; the Python one between chunks); a read below the low-water mark
    # then resumes it from inside PushBody.drain. The Python parser hands a content-length
    # read to the StreamReader whole, and its feed_eof lifts the pause: nothing re-enters.
    if not (parser is aiohttp.http_parser.HttpResponseParserPy and framing == "content-length"):
        assert any(depth and not size and draining for depth, size, draining in log.calls), (
            f"read_nowait() -> resume_reading() no longer re-enters data_received(b'') while "
            f"the body drains: the re-entrancy PushBody.drain guards against changed {PIN_NOTE}"
        )
    assert b"".join(sink.chunks) == body, (
        f"a body larger than 2 x read_bufsize in one read came out duplicated, reordered or "
        f"short through the re-entrant read_nowait path {PIN_NOTE}"
    )
    assert max(len(piece) for piece in sink.chunks) <= READ_PIECE


@pytest.mark.parametrize(
    ("head", "sent", "broken"),
    [
        pytest.param(CHUNKED_HEAD, chunk(b"hello") + b"6\r\n wo", True, id="chunked-mid-chunk"),
        pytest.param(CHUNKED_HEAD, chunk(b"hello"), True, id="chunked-between-chunks"),
        pytest.param(length_head(11), b"hello", True, id="content-length-short"),
        pytest.param(UNTIL_CLOSE_HEAD, b"hello", False, id="read-to-close"),
    ],
)
async def test_connection_loss_mid_body_fails_a_framed_body_and_ends_a_read_to_close_one(
    parser, head, sent, broken
):
    async with raw_provider() as provider, push_session() as session:
        response, writer = await provider.answer(session, head)
        assert isinstance(parser_of(response), parser)
        writer.write(sent)
        await writer.drain()
        writer.close()  # a FIN after the bytes: the provider went away mid-body
        content = response.content
        if broken:
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(content.wait_eof(), 5)
            assert isinstance(content.exception(), aiohttp.ClientPayloadError), (
                f"connection_lost did not set a ClientPayloadError on a cut-short body: "
                f"PushBody.drain would not see the truncation {PIN_NOTE}"
            )
        else:
            await asyncio.wait_for(content.wait_eof(), 5)
            assert content.is_eof(), f"a read-to-close body did not end at the close {PIN_NOTE}"
            assert content.exception() is None, (
                f"a read-to-close body's close was taken for a truncation {PIN_NOTE}"
            )
            assert content.read_nowait() == b"hello"
        response.close()


async def test_a_framing_error_fails_the_body_through_push_protocol_with_either_parser(parser):
    # The C parser closes the transport and marks only the protocol (the Python one fails
    # the body too); PushProtocol.connection_lost reads `_payload` and fails the body, so a
    # reader sees a ClientPayloadError, not a wait that never ends.
    async with raw_provider() as provider, push_session() as session:
        response, writer = await provider.answer(session, CHUNKED_HEAD)
        assert isinstance(parser_of(response), parser)
        connection = response.connection
        assert connection is not None
        protocol = connection.protocol
        assert protocol is not None
        assert protocol._payload is response.content, (
            f"ResponseHandler no longer keeps the body in `_payload`: PushProtocol reads it "
            f"{PIN_NOTE}"
        )
        writer.write(chunk(b"hello") + b"zz\r\ngarbage\r\n")
        await writer.drain()
        with pytest.raises((aiohttp.ClientPayloadError, HttpProcessingError)):
            await asyncio.wait_for(response.content.wait_eof(), 5)
        response.close()


async def test_a_responses_parsed_headers_live_in_two_attributes_the_client_drops():
    # UpstreamClient.open drops them once checked (`_forget_headers`): a real provider's
    # 20-odd headers would otherwise live as long as the stream.
    async with raw_provider() as provider, push_session() as session:
        response, writer = await provider.answer(session, CHUNKED_HEAD)
        assert response.headers is response._headers, (
            f"ClientResponse.headers no longer reads `_headers` {PIN_NOTE}"
        )
        assert response.raw_headers is response._raw_headers, (
            f"ClientResponse.raw_headers no longer reads `_raw_headers` {PIN_NOTE}"
        )
        assert "Transfer-Encoding" in response.headers
        assert response._cache.get("headers") is response._headers, (
            f"ClientResponse.headers is no longer cached in `_cache` {PIN_NOTE}"
        )
        held = weakref.ref(response._headers)
        _forget_headers(response)
        assert not response.headers
        gc.collect()
        assert held() is None  # nothing else holds the parsed headers
        writer.write(chunk(b"hello") + b"0\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(response.content.read(), 5) == b"hello"  # unaffected
        response.close()


async def test_a_body_read_to_its_end_gives_its_connection_back_to_the_pool(parser):
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(b"data: %d\n\n" % i)
            await asyncio.sleep(0.01)
        return response

    async with serving(stream) as root, push_session() as session:
        response = await session.post(root + "/v1/chat/completions")
        assert isinstance(parser_of(response), parser)
        connection = response.connection
        assert connection is not None
        protocol = connection.protocol
        ended: list[bool] = []
        response.content.on_eof(lambda: ended.append(response.connection is None))
        loop = asyncio.get_running_loop()
        await PushBody(response, loop.time() + 5, 5).run(Collect())
        assert ended == [True], (
            f"the response's own eof callback (release) did not run before ours: the "
            f"connection was not released when the body ended {PIN_NOTE}"
        )
        assert response.connection is None, (
            f"a response whose body was read to its end still holds its connection {PIN_NOTE}"
        )
        again = await session.post(root + "/v1/chat/completions")
        assert again.connection is not None
        assert again.connection.protocol is protocol, (
            f"the connection of a body read to its end did not go back to the pool {PIN_NOTE}"
        )
        again.close()
        response.close()


async def test_a_body_that_came_with_its_headers_has_already_released_its_connection(parser):
    async def whole(_request: web.Request) -> web.Response:
        return web.Response(body=b"data: [DONE]\n\n", content_type="text/event-stream")

    async with serving(whole) as root, push_session() as session:
        response = await session.post(root + "/v1/chat/completions")
        assert await response.content.read() == b"data: [DONE]\n\n"
        assert response.content.is_eof()
        assert response.connection is None, (
            f"a response whose whole body came with its headers kept its connection: "
            f"PushBody's no-protocol case assumes it is back in the pool {PIN_NOTE}"
        )
        response.close()


async def test_pausing_a_responses_transport_stops_and_resuming_restarts_data_received():
    async with raw_provider() as provider, push_session(CallLog) as session:
        response, writer = await provider.answer(session, CHUNKED_HEAD)
        connection = response.connection
        assert connection is not None
        log, transport = connection.protocol, connection.transport
        assert isinstance(log, CallLog)
        assert transport is log.transport, (
            f"a response's connection.transport is not its protocol's transport {PIN_NOTE}"
        )
        assert transport is not None
        before = len(log.calls)
        transport.pause_reading()
        writer.write(chunk(b"hello"))
        await writer.drain()
        await asyncio.sleep(0.2)
        assert len(log.calls) == before, (
            f"transport.pause_reading() did not stop data_received calls {PIN_NOTE}"
        )
        transport.resume_reading()
        await until(lambda: len(log.calls) > before, timeout=2)
        assert response.content.read_nowait() == b"hello", (
            f"transport.resume_reading() did not restart data_received calls {PIN_NOTE}"
        )
        response.close()


async def test_a_read_below_low_water_calls_resume_reading_and_keeps_a_transport_pause():
    async with raw_provider() as provider, push_session(CallLog) as session:
        response, writer = await provider.answer(session, CHUNKED_HEAD)
        connection = response.connection
        assert connection is not None
        log, transport = connection.protocol, connection.transport
        assert isinstance(log, CallLog)
        assert transport is not None
        writer.write(chunk(b"hello"))
        await until(lambda: response.content.total_bytes == 5)
        transport.pause_reading()  # what PushBody.pause does
        resumes = log.resumes
        assert response.content.read_nowait(READ_PIECE) == b"hello"
        assert log.resumes > resumes, (
            f"StreamReader.read_nowait() no longer calls protocol.resume_reading() below its "
            f"low-water mark: PushProtocol.resume_reading's skip may be obsolete {PIN_NOTE}"
        )
        assert not transport.is_reading(), (
            "a read below the low-water mark undid a transport pause: PushProtocol's skip "
            f"of aiohttp's resume_reading no longer holds {PIN_NOTE}"
        )
        transport.resume_reading()
        response.close()
