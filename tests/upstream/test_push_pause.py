"""Pausing a push body never leaves a pooled connection paused.

A body whose last bytes arrived before the stream paused is complete: aiohttp has put its
connection back in the pool, and the next call may use it at once. Stopping that
transport would stall a stranger's call until the paused stream resumed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from upstream_helpers import opened, route

from wsgate.core.frames import ChatRequest, Message
from wsgate.testing import read_body
from wsgate.upstream.client import Timeouts, UpstreamClient

REQUEST = ChatRequest(model="m", messages=[Message(role="user", content="x")])
BODY = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@asynccontextmanager
async def two_reads() -> AsyncIterator[str]:
    """A keep-alive provider: headers and a first event, then the rest and the end at once."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await reader.read(4096)  # the JSON body (small, one segment)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n" + chunk(BODY[:40])
                )
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(chunk(BODY[40:]) + b"0\r\n\r\n")  # the end in one read
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def test_a_body_paused_after_its_end_arrived_leaves_its_pooled_connection_reading(reader):
    async with two_reads() as root:
        client = UpstreamClient(
            {"m": route("m", "p", "openai_chat", root + "/v1", "m")}, Timeouts()
        )
        await client.start()
        try:
            held = asyncio.Event()
            async with opened(client, REQUEST) as body:

                class PauseAtTheEnd:
                    def data(self, data: bytes) -> bool:
                        if data.endswith(b"[DONE]\n\n"):
                            body.pause()  # the stream's queue is full: hold the provider
                            held.set()
                        return False

                first = asyncio.create_task(body.run(PauseAtTheEnd()))
                await held.wait()
                # The first body is complete and still held; the next call reuses its
                # connection from the pool and must not wait for the first to resume.
                async with asyncio.timeout(2):
                    async with opened(client, REQUEST) as second:
                        assert b"".join(await read_body(second)) == BODY
                body.resume()
                async with asyncio.timeout(2):
                    await first
        finally:
            await client.close()
