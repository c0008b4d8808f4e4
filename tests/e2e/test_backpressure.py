"""Backpressure: a full stream queue stops the upstream read; telemetry is sheddable."""

from __future__ import annotations

import asyncio
import socket

import orjson
from e2e_helpers import mock_request, raw_connect, stream_text
from websockets.asyncio.client import connect

from wsgate.core.providers import make_parser
from wsgate.gateway.connection import ConnectionOptions
from wsgate.gateway.server import Gateway, GatewayOptions
from wsgate.testing import ScriptedUpstream, openai_sse, resolver


async def test_a_stream_whose_client_does_not_read_stops_pulling_its_upstream():
    piece = "x" * 16_000
    upstream = ScriptedUpstream(openai_sse([piece] * 5_000))  # ~80 MB if pulled whole
    options = GatewayOptions(
        port=0,
        connection=ConnectionOptions(queue_events=64, queue_bytes=128 * 1024, send_timeout=30),
    )
    gateway = Gateway(options, upstream, resolver(lambda: make_parser("openai_chat", 1 << 20)), "t")
    await gateway.start()
    url = f"ws://127.0.0.1:{gateway.port}/v1/ws"
    try:
        async with connect(url, subprotocols=["wsgate.v1"], max_queue=1, close_timeout=0.5) as ws:  # type: ignore[list-item]
            start = {"type": "start", "stream_id": "s1", "request": mock_request()}
            await ws.send(orjson.dumps(start).decode())
            # Let the pipe fill: kernel buffers, then the outbox queue, then the upstream stops.
            previous = -1
            async with asyncio.timeout(20):
                while upstream.pulled != previous:
                    previous = upstream.pulled
                    await asyncio.sleep(0.5)
            (connection,) = gateway.connections
            frames, queued_bytes = connection.outbox.queued("s1")
            # Only what the kernel buffers hold plus one bounded queue was pulled: far from all.
            assert upstream.pulled < 1_500
            assert queued_bytes <= options.connection.queue_bytes + 2 * 16_100
            assert frames <= options.connection.queue_events + 2
    finally:
        await gateway.close()
    assert upstream.closed == upstream.opened == 1


async def test_telemetry_frames_arrive_without_seq_when_the_stream_asks_for_them(start_app):
    app = await start_app(**{"limits.telemetry_interval_s": 0.05})
    script = {"text": "tick " * 40, "tokens_per_s": 100}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), {"telemetry": True})
        await conn.finishes({"s1"})
    telemetry = [f for f in conn.received if f["type"] == "telemetry"]
    assert telemetry
    assert all("seq" not in f for f in telemetry)
    assert telemetry[-1]["tokens"] > telemetry[0]["tokens"] >= 1
    assert telemetry[0]["ttft_ms"] >= 0
    finish_index = max(i for i, f in enumerate(conn.received) if f["type"] == "finish")
    assert all(f["type"] != "telemetry" for f in conn.received[finish_index:])
    assert stream_text([f for f in conn.received if f.get("stream_id") == "s1"]) == "tick " * 40


async def test_telemetry_is_shed_and_counted_while_the_client_lags_and_text_is_whole():
    pieces = [f"{i:05d}|" + "y" * 2000 for i in range(3000)]
    upstream = ScriptedUpstream(openai_sse(pieces))
    options = GatewayOptions(
        port=0,
        telemetry_interval=0,
        connection=ConnectionOptions(queue_events=32, queue_bytes=64 * 1024),
    )
    gateway = Gateway(options, upstream, resolver(lambda: make_parser("openai_chat", 1 << 20)), "t")
    await gateway.start()
    url = f"ws://127.0.0.1:{gateway.port}/v1/ws"
    try:
        async with raw_connect(url, max_queue=1) as conn:
            # Small socket buffers at both ends, so the lag backs the gateway up on any
            # machine (Linux autotunes loopback buffers to several MiB: all 6 MB could fit).
            (connection,) = gateway.connections
            for transport in (conn.ws.transport, connection.ws.transport):
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            await conn.start("s1", mock_request(), {"telemetry": True})
            await asyncio.sleep(1.0)  # lag: the kernel buffers and the queue fill up
            # While the client lags, at most one telemetry frame per stream waits: each
            # newer one replaces (sheds) the one before. Text frames are never dropped.
            shed_while_lagging = connection.outbox.shed_telemetry
            waiting_telemetry = len(connection.outbox._telemetry)
            await conn.finishes({"s1"}, timeout=30)
            shed = connection.outbox.shed_telemetry
    finally:
        await gateway.close()
    frames = [f for f in conn.received if f.get("stream_id") == "s1"]
    telemetry = [f for f in frames if f["type"] == "telemetry"]
    assert stream_text(frames) == "".join(pieces)
    assert shed_while_lagging > 0
    assert waiting_telemetry <= 1
    assert shed >= shed_while_lagging
    assert len(telemetry) + shed >= len(pieces) - 1
