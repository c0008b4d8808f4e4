"""Any split of a provider's answer over TCP writes reads the same in push and in pull mode.

The real path: a raw asyncio TCP server on 127.0.0.1 answers `UpstreamClient`'s POST with a
recorded provider body (protocol/fixtures/upstream), framed chunked (HTTP chunk boundaries
drawn too) or with a Content-Length, and writes the whole response (status line and
headers included) in the pieces hypothesis draws, letting the loop turn between writes so
each piece is its own socket read. Each read chunk goes into the provider parser as the
gateway's stream sink does (`feed` per chunk, stop at the first error, `eof` at the end),
and both readers must give the same bytes and the same events as the whole body fed at once.

Not a contract test: each example compares both readers itself, so the module overrides the
suite's parametrized `reader` fixture (conftest.py) and runs once, not once per reader.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsgate.core import providers
from wsgate.core.errors import WsgateError
from wsgate.core.frames import ChatRequest, Message, StartOptions
from wsgate.core.providers import make_parser
from wsgate.upstream.client import Route, Timeouts, UpstreamClient

UPSTREAM_DIR = Path(__file__).parents[2] / "protocol" / "fixtures" / "upstream"
CASES = [
    "openai_chat/text_with_usage.sse",
    "openai_chat/parallel_tool_calls.sse",
    "openai_chat/error_payload.sse",  # the sink stops at the error, mid-body
    "anthropic/multibyte_text.sse",
    "anthropic/thinking.sse",
    "ollama/multibyte_text.ndjson",
    "ollama/truncated_mid_line.ndjson",  # the error comes with the end of the body
]
BASE = {"openai_chat": "/v1", "openai_responses": "/v1", "anthropic": "/v1", "ollama": ""}
REQUEST = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
SCALE = 10_000
"""Cut points are drawn in [1, SCALE) and scaled to the length of what is cut."""


@pytest.fixture(autouse=True)
def reader() -> str:
    """Overrides the suite's push/pull parametrization: every example runs both readers."""
    return "both"


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` cut at `points` (fractions of SCALE), every piece non-empty."""
    at = sorted({len(data) * p // SCALE for p in points} - {0, len(data)})
    return [data[a:b] for a, b in zip([0, *at], [*at, len(data)], strict=True)]


def response_bytes(kind: str, body: bytes, framing: str, chunk_points: list[int]) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {providers.kind(kind).http.accept}\r\n"
    if framing == "content-length":
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in cut(body, chunk_points))
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"


def encode(item: Any) -> dict[str, Any]:
    if isinstance(item, WsgateError):
        return {"event": "error", "code": item.code, "message": item.public_message}
    return {"event": type(item).__name__, **dataclasses.asdict(item)}


class Feed:
    """The gateway's sink, minus the WebSocket: each read into the parser, stop at an error."""

    def __init__(self, kind: str) -> None:
        self.parser = make_parser(kind, 1 << 20)
        self.received: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self.ended = False

    def data(self, chunk: bytes) -> bool:
        self.received.append(chunk)
        return self._take(self.parser.feed(chunk))

    def eof(self) -> None:
        if not self.ended:
            self._take(self.parser.eof())

    def _take(self, items: list[Any]) -> bool:
        for item in items:
            self.events.append(encode(item))
            if isinstance(item, WsgateError):
                self.ended = True  # the stream is over: the gateway reads no further
                return True
        return False


def whole(kind: str, body: bytes) -> Feed:
    feed = Feed(kind)
    feed.data(body)
    feed.eof()
    return feed


class SplitProvider:
    """Answers each POST with its `pieces` of response bytes, one write (one read) each."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:  # keep-alive: one answer per request on the connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                for piece in self.pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.001)  # the client reads this piece on its own
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the call (a stopped body) or the connection

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            for writer in self.writers:
                writer.close()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            server.close()
            await server.wait_closed()


async def read_through(root: str, kind: str, mode: str) -> Feed:
    route = Route("m", "p", kind, root + BASE[kind], "m", reader=mode)  # type: ignore[arg-type]
    client = UpstreamClient({"m": route}, Timeouts(connect=2, first_byte=5, idle=5))
    await client.start()
    feed = Feed(kind)
    try:
        async with client.open(REQUEST, client.resolve(REQUEST, StartOptions())) as body:
            await body.run(feed)
        feed.eof()
    finally:
        await client.close()
    return feed


@settings(max_examples=35, deadline=None)
@given(
    case=st.sampled_from(CASES),
    framing=st.sampled_from(["chunked", "content-length"]),
    tcp_points=st.lists(st.integers(1, SCALE - 1), max_size=40),
    chunk_points=st.lists(st.integers(1, SCALE - 1), max_size=12),
)
@example(case=CASES[0], framing="chunked", tcp_points=[], chunk_points=[])  # all in one read
@example(
    case=CASES[5],
    framing="content-length",
    tcp_points=list(range(250, SCALE, 250)),
    chunk_points=[],
)
async def test_any_split_over_tcp_gives_the_same_events_in_push_and_pull(
    case, framing, tcp_points, chunk_points
):
    kind = case.split("/")[0]
    body = (UPSTREAM_DIR / case).read_bytes()
    provider = SplitProvider()
    provider.pieces = cut(response_bytes(kind, body, framing, chunk_points), tcp_points)
    expected = whole(kind, body)
    async with provider.running() as root:
        push = await read_through(root, kind, "push")
        pull = await read_through(root, kind, "pull")
    for mode, feed in (("push", push), ("pull", pull)):
        received = b"".join(feed.received)
        if feed.ended and not expected.ended:
            raise AssertionError(f"{mode}: the stream ended early: {feed.events[-1]}")
        if not feed.ended:  # read to the end: every byte, none twice, in order
            assert received == body, f"{mode}: the body bytes differ"
        else:  # stopped at the error: a prefix of the body, as the gateway reads it
            assert body.startswith(received), f"{mode}: the body bytes differ"
    assert push.events == pull.events == expected.events
