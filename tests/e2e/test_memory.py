"""What an idle connection and a stalled stream keep alive: only what they must.

Connections are many and mostly idle, and a stream may wait minutes for its provider's next
token; the gateway's per-connection and per-stream memory is a budget (issue 6: 16 KiB per
idle connection, 24 KiB per open stream). These tests hold the structure of that budget:
no writer task, event, outbox queue or handshake header outlives its use.
"""

from __future__ import annotations

import asyncio

from e2e_helpers import mock_request, raw_connect


def _writers() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "writer"]


async def _until_no_writer() -> None:
    async with asyncio.timeout(5):
        while _writers():  # noqa: ASYNC110 - polling gateway state
            await asyncio.sleep(0.01)


async def test_an_idle_connection_keeps_no_writer_task_queue_event_or_handshake_header(app):
    async with raw_connect(app.url):  # it has read `ready`
        await _until_no_writer()
        (connection,) = app.gateway.connections
        assert len(connection.outbox) == 0
        assert connection.outbox._control is None
        assert connection._tasks is None
        assert connection._held == {}
        assert not connection.writer.busy
        assert connection._backlog_room is None
        assert len(connection.ws.request.headers) == 0
        assert len(connection.ws.response.headers) == 0


async def test_a_connection_idle_again_after_its_stream_keeps_no_writer(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "one two three"}))
        await conn.finishes({"s1"})
        await _until_no_writer()
        await conn.start("s2", mock_request({"text": "four five"}))
        frames = await conn.finishes({"s2"})
    assert frames["s2"][-1]["reason"] == "stop"


async def test_a_stream_waiting_for_its_next_token_holds_no_outbox_queue(app):
    script = {"words": 3, "ttft_ms": 0, "tokens_per_s": 0.05}  # the second token in 20 s
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script))
        await conn.until(lambda f: f["type"] == "delta.text")
        await _until_no_writer()
        (connection,) = app.gateway.connections
        assert "s1" in connection.session.streams
        assert connection.outbox._streams == {}
        assert connection.outbox._active is None
