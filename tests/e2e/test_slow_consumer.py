"""A client that stops reading is cut off within the send timeout and pins nothing."""

from __future__ import annotations

import asyncio
import time

import orjson
from e2e_helpers import mock_request
from websockets.asyncio.client import connect


async def test_a_client_that_stops_reading_is_disconnected_and_its_upstreams_closed(start_app):
    app = await start_app(**{"limits.send_timeout_s": 1.0})
    tags = [f"stalled-{i}" for i in range(24)]
    # max_queue=1 makes the client stop reading its socket after one unread message.
    async with connect(app.url, subprotocols=["wsgate.v1"], max_queue=1, close_timeout=0.5) as ws:  # type: ignore[list-item]
        for i, tag in enumerate(tags):
            script = {"words": 100_000, "seed": i, "chunk": 4000, "tokens_per_s": 0, "tag": tag}
            frame = {"type": "start", "stream_id": f"s{i}", "request": mock_request(script)}
            await ws.send(orjson.dumps(frame).decode())
        # A slow stream that cannot have completed: the gateway must close its upstream.
        paced = {"text": "tick " * 500, "tokens_per_s": 10, "tag": "paced"}
        frame = {"type": "start", "stream_id": "paced", "request": mock_request(paced)}
        await ws.send(orjson.dumps(frame).decode())
        # Never read again. The gateway must give up within send_timeout of the stall,
        # which starts once the kernel's buffers are full and the gateway's transport holds
        # bytes it cannot write. How long filling them takes (the mock renders 24 answers of
        # 100k words, the kernel takes megabytes) depends on the machine, not the gateway.
        (connection,) = app.gateway.connections
        stalled: float | None = None
        async with asyncio.timeout(30):
            while app.gateway.connections:
                transport = connection.ws.transport
                if stalled is None and transport is not None and transport.get_write_buffer_size():
                    stalled = time.monotonic()
                await asyncio.sleep(0.01)
        gone = time.monotonic()
    # One send_timeout (1 s) after the stall, then at most a second for the close to land.
    assert stalled is not None
    assert gone - stalled < 1.0 + 3
    record = await app.mock.wait_disconnected("paced", timeout=5)
    assert record.completed_at is None
    for tag in tags:
        # Bulk streams may have been written whole into the kernel buffers before the stall;
        # none may still be open.
        record = app.mock.find(tag)
        assert record is not None
        assert (record.completed_at is None) != (record.disconnected_at is None)
    assert app.mock.open_connections == 0
    assert app.gateway.connections == set()
    # Memory held for the client never passed the documented bound: the connection cap
    # plus what one push can add before the check (a provider read: <= 32 KiB of frames).
    accounting = app.gateway.shared.accounting
    assert accounting.slow_consumers == 1  # by the byte cap or by the send timeout
    cap = connection.options.buffer_bytes
    assert connection.stats.max_buffered <= cap + 48 * 1024
