"""A connection's write paths against a stand-in WebSocket: what an inline write leaves behind.

The e2e suites drive the writer through real sockets; these cases need a transport that
pauses on demand, or a batch that hits its size bound, at an exact moment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from websockets.protocol import State
from websockets.server import ServerProtocol

from wsgate.core.frames import DeltaText, Telemetry, encode_frame
from wsgate.core.session import Session, SessionLimits
from wsgate.core.stream import StreamOutput
from wsgate.gateway.connection import (
    WRITE_BATCH_BYTES,
    Connection,
    ConnectionOptions,
    InlineWindow,
    Shared,
)


class FakeTransport:
    """Records writes; can make a write pause the connection, like a full socket."""

    def __init__(self, ws: FakeWebSocket) -> None:
        self.ws = ws
        self.writes: list[bytes] = []
        self.pause_on_write = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        if self.pause_on_write:
            self.ws.paused = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 64 * 1024 if self.ws.paused else 0

    def abort(self) -> None:
        self.closing = True


class FakeWebSocket:
    """The parts of websockets' ServerConnection the writer uses."""

    def __init__(self) -> None:
        self.protocol = ServerProtocol()
        self.protocol.state = State.OPEN
        self.paused = False
        self.transport = FakeTransport(self)
        self.resumed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def send_context(self) -> AsyncIterator[None]:
        yield
        self.transport.write(b"".join(self.protocol.data_to_send()))
        while self.paused:  # drain: wait until the client reads
            self.resumed.clear()
            await self.resumed.wait()

    def resume(self) -> None:
        self.paused = False
        self.resumed.set()


def frames_of(writes: list[bytes]) -> list[dict[str, object]]:
    """The JSON frames in server-to-client WebSocket bytes (unmasked text frames)."""
    data = b"".join(writes)
    out = []
    while data:
        size, at = data[1] & 0x7F, 2
        if size == 126:
            size, at = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, at = int.from_bytes(data[2:10], "big"), 10
        out.append(orjson.loads(data[at : at + size]))
        data = data[at + size :]
    return out


def connection(ws: FakeWebSocket, inline: InlineWindow | None = None) -> Connection:
    session = Session("conn_t", SessionLimits(), lambda *_: None, lambda: "msg_1")  # type: ignore[arg-type, return-value]
    shared = Shared()
    if inline is not None:
        shared.inline = inline
    return Connection(ws, session, None, ConnectionOptions(), shared)  # type: ignore[arg-type]


async def test_telemetry_left_behind_by_a_full_inline_batch_is_still_sent():
    ws = FakeWebSocket()
    conn = connection(ws)
    big = DeltaText("s1", 1, "x" * WRITE_BATCH_BYTES)  # fills a batch on its own
    telemetry = Telemetry("s1", tokens=1, tokens_per_s=1.0)
    conn.deliver("s1", StreamOutput(frames=[big], data=[encode_frame(big)], telemetry=telemetry))
    for _ in range(5):
        await asyncio.sleep(0)
    sent = [frame["type"] for frame in frames_of(ws.transport.writes)]
    assert sent == ["delta.text", "telemetry"]


async def test_an_inline_write_that_fills_the_socket_starts_the_send_timeout_clock():
    ws = FakeWebSocket()
    conn = connection(ws)
    ws.transport.pause_on_write = True
    frame = DeltaText("s1", 1, "hello")
    conn.deliver("s1", StreamOutput(frames=[frame], data=[encode_frame(frame)]))
    assert ws.transport.writes  # written inline, and the write paused the transport
    for _ in range(5):
        await asyncio.sleep(0)
    # A writer now waits for the client to read, timed by the connection's tick.
    assert conn._send_since is not None  # the send-timeout clock
    ws.transport.pause_on_write = False
    ws.resume()
    for _ in range(5):
        await asyncio.sleep(0)
    assert conn._send_since is None  # the wait ended with the drain
    assert conn.stats.writes == 1  # waiting wrote nothing more


async def test_a_closed_inline_window_leaves_every_write_to_the_writer_task():
    ws = FakeWebSocket()
    conn = connection(ws, InlineWindow(0))
    frames = [DeltaText(f"s{i}", 1, "hi") for i in range(3)]
    for frame in frames:
        conn.deliver(frame.stream_id, StreamOutput(frames=[frame], data=[encode_frame(frame)]))
    assert ws.transport.writes == []  # queued, not written by the caller
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(ws.transport.writes) == 1  # the writer sent the three together
    assert [f["stream_id"] for f in frames_of(ws.transport.writes)] == ["s0", "s1", "s2"]
    assert conn.stats.inline_writes == 0
