"""Push-mode backpressure through the whole gateway, measured on the provider's send side.

A client that stops reading must hold a provider that sends as fast as it can to what the
gateway may buffer: the paused stream's queue (`limits.stream_queue_bytes`) plus the piece
that filled it, one socket read held by aiohttp past the pause, and the socket buffers on
the way (provider -> gateway -> client). The provider, a stand-in aiohttp.web server,
counts the bytes its kernel took before its write blocked; every socket on the path gets
small buffers (Linux autotunes loopback buffers to several MiB, which would hide any leak),
and the bound is their sum from the sizes the kernel reports. Streams beside it, from the
real in-process mock, must stay byte-exact, and the paused stream must complete byte-exact
once the client reads again.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from e2e_helpers import assert_gapless, mock_request, raw_connect, serving, stream_text

from wsgate.core.flow import SOCKET_BACKLOG_BYTES
from wsgate.gateway.writer import WRITE_BATCH_BYTES
from wsgate.mock.script import generate_text
from wsgate.testing import openai_sse
from wsgate.upstream.push import READ_PIECE

SOCKET_BUFFER = 32 * 1024
"""SO_SNDBUF / SO_RCVBUF asked for on every socket of the path (Linux doubles it)."""
QUEUE_BYTES = 64 * 1024
CONNECTION_BYTES = 512 * 1024  # streams pause at half; slow consumer past all of it
HELD_TEXT = 8192 * 4  # a stream's text pipeline holds at most 8192 code points (PROTOCOL.md)
PIECES = [f"{i:05d}|" + "x" * 4090 for i in range(2000)]  # about 8 MB of SSE
TOTAL = sum(len(event) for event in openai_sse(PIECES))
FRAMING_MARGIN = 1.05
"""Provider bytes per frame byte: an SSE event wraps a 4 KiB piece in more JSON than the
`delta.text` frame that carries it, by less than 5 %."""

BYSTANDERS = {  # stream id -> (model, script): the real mock, beside the blocked stream
    "fast": ("mock", {"words": 3000, "seed": 11, "chunk": 48, "tag": "fast"}),
    "paced": ("mock-anthropic", {"words": 300, "seed": 12, "tokens_per_s": 150, "tag": "paced"}),
    "ndjson": ("mock-ollama", {"words": 800, "seed": 13, "chunk": 5, "tag": "ndjson"}),
}


class Blaster:
    """A provider that writes its whole answer as fast as its socket takes it."""

    def __init__(self) -> None:
        self.events = openai_sse(PIECES)
        self.written = 0  # handed to the transport
        self.blocked = False  # a write waits for the socket
        self.finished = False
        self.sndbuf = 0
        self.transport: asyncio.Transport | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        self.sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.transport = transport
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in self.events:
            self.written += len(event)
            self.blocked = True
            await response.write(event)
            self.blocked = False
        await response.write_eof()
        self.finished = True
        return response

    @property
    def sent(self) -> int:
        """Bytes the provider's kernel took: written minus what waits in its transport."""
        transport = self.transport
        waiting = 0 if transport is None else transport.get_write_buffer_size()
        return self.written - waiting


@pytest.fixture
def upstream_rcvbufs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Give the gateway's upstream sockets a small SO_RCVBUF; the sizes the kernel chose."""
    sizes: list[int] = []

    def small_socket(addr_info: tuple) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sizes.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        return sock

    class SmallBufferConnector(aiohttp.TCPConnector):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, socket_factory=small_socket, **kwargs)

    # UpstreamClient.start builds its connector as `aiohttp.TCPConnector(...)`.
    monkeypatch.setattr(aiohttp, "TCPConnector", SmallBufferConnector)
    return sizes


def small_buffers(transport: Any, option: int) -> int:
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    return sock.getsockopt(socket.SOL_SOCKET, option)


async def until_blocked(blaster: Blaster, timeout: float = 30.0) -> None:
    """Wait until the provider's write has been blocked, with no byte taken, for a second."""
    previous, still = -1, 0
    async with asyncio.timeout(timeout):
        while still < 4:
            await asyncio.sleep(0.25)
            sent = blaster.sent
            still = still + 1 if (sent == previous and blaster.blocked) else 0
            previous = sent
            assert not blaster.finished, "the provider wrote its whole answer: nothing held it"


async def test_a_client_that_stops_reading_holds_a_push_provider_to_the_caps_plus_one_read(
    start_app, upstream_rcvbufs
):
    blaster = Blaster()
    async with serving(blaster.handle) as root:
        app = await start_app(
            **{
                "upstream.reader": "push",
                "mock.enabled": "on",
                "providers.blast.base_url": root + "/v1",
                "providers.blast.kind": "openai_chat",
                "models.blast.provider": "blast",
                "limits.stream_queue_events": 64,
                "limits.stream_queue_bytes": QUEUE_BYTES,
                "limits.connection_buffer_bytes": CONNECTION_BYTES,
                "limits.send_timeout_s": 60,  # the stall is the test, not a slow consumer
            }
        )
        # max_queue=1: the client stops reading its socket after one unread message.
        async with raw_connect(app.url, max_queue=1) as conn:
            (connection,) = app.gateway.connections
            client_rcvbuf = small_buffers(conn.ws.transport, socket.SO_RCVBUF)
            gateway_sndbuf = small_buffers(connection.ws.transport, socket.SO_SNDBUF)
            await conn.start("blast", mock_request(model="blast"))
            for sid, (model, script) in BYSTANDERS.items():
                await conn.start(sid, mock_request(script, model=model))

            await until_blocked(blaster)
            sent = blaster.sent
            queued_frames, queued_bytes = connection.outbox.queued("blast")
            paused = "blast" in connection._held
            up_rcvbuf = max(upstream_rcvbufs)
            terms = {
                "provider's send buffer": blaster.sndbuf,
                "gateway's upstream receive buffer": up_rcvbuf,
                # A read takes at most what the socket holds: the one read aiohttp keeps
                # (parsed or not) past the pause is bounded by the same buffer.
                "one socket read held past the pause": up_rcvbuf,
                "the stream's queue cap": QUEUE_BYTES,
                "the frames of the piece that filled it": READ_PIECE,
                "text the stream holds back": HELD_TEXT,
                # Its high-water mark plus one batch, whose last frame may carry a whole
                # coalesced queue.
                "websockets' write buffer": SOCKET_BACKLOG_BYTES
                + WRITE_BATCH_BYTES
                + QUEUE_BYTES
                + READ_PIECE,
                "gateway's WebSocket send buffer": gateway_sndbuf,
                "client's receive buffer": client_rcvbuf,
                "client's one read, parsed into its message queue": client_rcvbuf,
            }
            bound = int(sum(terms.values()) * FRAMING_MARGIN)
            breakdown = ", ".join(f"{name} {size}" for name, size in terms.items())

            assert paused, "the blocked provider's stream is not paused by the gateway"
            assert not connection.stats.slow_consumer
            assert queued_bytes <= QUEUE_BYTES + 2 * READ_PIECE, (queued_frames, queued_bytes)
            assert bound * 4 < TOTAL, "the bound must be far below the answer for this to test"
            assert sent <= bound, (
                f"the provider got {sent} bytes out before its write blocked, more than the "
                f"{bound} the gateway may hold ({breakdown}; x{FRAMING_MARGIN})"
            )

            # The client reads again: everything completes, byte-exact, in order.
            frames = await conn.finishes({"blast", *BYSTANDERS}, timeout=60)

    assert blaster.finished
    assert blaster.written == TOTAL
    blast = frames["blast"]
    assert stream_text(blast) == "".join(PIECES)
    assert blast[-1]["reason"] == "stop"
    assert_gapless(blast)
    for sid, (_model, script) in BYSTANDERS.items():
        assert stream_text(frames[sid]) == generate_text(script["words"], script["seed"]), sid
        assert frames[sid][-1]["reason"] == "stop", sid
        assert_gapless(frames[sid])
    assert app.mock is not None
    for sid in BYSTANDERS:
        record = app.mock.find(sid)
        assert record is not None
        assert record.completed_at is not None, sid
        assert record.disconnected_at is None, sid
