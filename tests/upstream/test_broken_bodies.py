"""A provider body that breaks its own framing ends as `UpstreamBroken` at once, in both readers.

A chunk-size line that is not hex makes aiohttp's C parser close the connection and mark only
the protocol (the pure-Python parser fails the body itself): without `PushProtocol` failing
the body, a push body waited for its idle deadline and a pull body for a read that never
came (or, paused at that moment, crashed with aiohttp's "Connection closed.").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp.client_proto
import aiohttp.http_parser
import pytest
from upstream_helpers import opened, route

from wsgate.core.errors import UpstreamBroken
from wsgate.core.frames import ChatRequest, Message
from wsgate.upstream.client import Timeouts, UpstreamClient

REQUEST = ChatRequest(model="m", messages=[Message(role="user", content="x")])
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
EVENT = b"data: x\n\n"
FIRST = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
NOT_A_CHUNK = b"zz\r\ngarbage\r\n"


@pytest.fixture(params=["c-parser", "python-parser"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python-parser":
        python = aiohttp.http_parser.HttpResponseParserPy
        monkeypatch.setattr(aiohttp.client_proto, "HttpResponseParser", python)
    return str(request.param)


@asynccontextmanager
async def broken_provider() -> AsyncIterator[UpstreamClient]:
    """A provider that sends one good chunk, then a chunk-size line that is not hex."""
    done = asyncio.Event()
    handlers: list[asyncio.Task[None]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(HEAD + FIRST)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(NOT_A_CHUNK)
        await writer.drain()
        await done.wait()  # the provider stays: only the gateway may end the call
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    root = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = UpstreamClient(
        {"m": route("m", "p", "openai_chat", root + "/v1", "m")},
        Timeouts(connect=2, first_byte=10, idle=10),
    )
    await client.start()
    try:
        yield client
    finally:
        await client.close()
        done.set()
        await asyncio.gather(*handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()


async def test_a_chunk_size_that_is_not_hex_breaks_the_body_at_once(parser):
    received: list[bytes] = []

    class Sink:
        def data(self, chunk: bytes) -> bool:
            received.append(chunk)
            return False

    loop = asyncio.get_running_loop()
    async with broken_provider() as client:
        began = loop.time()
        with pytest.raises(UpstreamBroken):
            async with opened(client, REQUEST) as body:
                await asyncio.wait_for(body.run(Sink()), 5)
        assert loop.time() - began < 1  # not the idle deadline's 10 s
    assert b"".join(received) == EVENT


async def _read_slowly(client: UpstreamClient) -> None:
    loop = asyncio.get_running_loop()
    async with opened(client, REQUEST) as body:

        class Slow:
            def data(self, _chunk: bytes) -> bool:
                body.pause()  # the client is slow: hold the provider a moment
                loop.call_later(0.3, body.resume)
                return False

        await asyncio.wait_for(body.run(Slow()), 5)


async def test_a_body_paused_when_its_framing_breaks_ends_broken_when_resumed(parser):
    loop = asyncio.get_running_loop()
    async with broken_provider() as client:
        began = loop.time()
        with pytest.raises(UpstreamBroken):
            await _read_slowly(client)
        assert loop.time() - began < 1.5
