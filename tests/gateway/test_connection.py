"""A connection against a recording WebSocket: a real session, a scripted provider.

The socket's flow control is in the test's hands (`pause`, `resume`, a reported write
buffer), so each flow verdict of `core/flow.py` is reached at a known moment. Every frame
the client would receive is checked against the protocol's JSON Schema.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import orjson
from e2e_helpers import assert_gapless, mock_request, stream_text, validate_server_frame
from gateway_helpers import make_connection, running, until

from wsgate.core.errors import CloseCode
from wsgate.core.flow import SOCKET_BACKLOG_BYTES, Pause
from wsgate.gateway.connection import ConnectionOptions, Shared
from wsgate.testing import HangingUpstream, RecordingWebSocket, ScriptedUpstream, openai_sse


def received(ws: RecordingWebSocket) -> list[dict[str, Any]]:
    """What the client got so far, each frame checked against the schema."""
    frames = ws.frames()
    for frame in frames:
        validate_server_frame(frame)
    return frames


def of_stream(ws: RecordingWebSocket, stream_id: str) -> list[dict[str, Any]]:
    return [frame for frame in received(ws) if frame.get("stream_id") == stream_id]


def finished(ws: RecordingWebSocket, stream_id: str) -> bool:
    return any(frame["type"] == "finish" for frame in of_stream(ws, stream_id))


def start(ws: RecordingWebSocket, stream_id: str, options: dict[str, Any] | None = None) -> None:
    frame: dict[str, Any] = {"type": "start", "stream_id": stream_id, "request": mock_request()}
    if options is not None:
        frame["options"] = options
    ws.client_sends(orjson.dumps(frame).decode())


async def test_ready_is_the_first_frame():
    ws = RecordingWebSocket()
    conn = make_connection(ws, ScriptedUpstream([]))
    async with running(conn):
        await until(lambda: bool(ws.transport.writes))
        (ready,) = received(ws)
    assert ready["type"] == "ready"
    assert ready["conn_id"] == "conn_t"


async def test_a_start_streams_the_scripted_text_and_finishes():
    ws = RecordingWebSocket()
    upstream = ScriptedUpstream(openai_sse(["Hel", "lo", " world"]))
    conn = make_connection(ws, upstream)
    async with running(conn):
        start(ws, "s1")
        await until(lambda: finished(ws, "s1"))
        await until(lambda: not conn.stream_tasks.tasks)
        frames = of_stream(ws, "s1")
        assert conn.session.streams == {}
    assert frames[0]["type"] == "stream.started"
    assert stream_text(frames) == "Hello world"
    assert frames[-1]["reason"] == "stop"
    assert_gapless(frames)
    assert upstream.opened == upstream.closed == 1
    assert conn.stats.pauses == 0


async def test_a_full_stream_queue_pauses_its_body_until_the_writer_makes_room():
    ws = RecordingWebSocket()
    pieces = [f"p{i} " for i in range(40)]
    upstream = ScriptedUpstream(openai_sse(pieces))
    options = ConnectionOptions(queue_events=4, queue_bytes=1 << 20, buffer_bytes=1 << 20)
    conn = make_connection(ws, upstream, options)
    async with running(conn):
        await until(lambda: bool(ws.transport.writes))  # ready
        ws.pause()  # the client stops reading
        start(ws, "s1")
        await until(lambda: "s1" in conn._held)
        body, reason = conn._held["s1"]
        assert reason is Pause.QUEUE  # rule 1: the stream's own queue is full
        assert body.paused
        assert conn.outbox.is_full("s1")
        pulled = upstream.pulled
        await asyncio.sleep(0.02)
        assert upstream.pulled == pulled < len(upstream.chunks)  # the provider is not read

        ws.resume()  # the writer sends what waits: the body reads again
        await until(lambda: finished(ws, "s1"))
        assert not body.paused
        assert conn._held == {}
    frames = of_stream(ws, "s1")
    assert stream_text(frames) == "".join(pieces)
    assert_gapless(frames)
    assert conn.stats.pauses >= 1
    assert upstream.pulled == len(upstream.chunks)


async def test_a_congested_connection_pauses_every_body_until_the_writer_drains_it():
    ws = RecordingWebSocket()
    pieces = [f"{i:03d}" + "y" * 600 for i in range(20)]
    upstream = ScriptedUpstream(openai_sse(pieces))
    # 8 KiB cap: the connection pauses its providers at 4 KiB queued, resumes at 2 KiB;
    # the streams' own queues (1000 frames, 1 MiB) never fill.
    options = ConnectionOptions(queue_events=1000, queue_bytes=1 << 20, buffer_bytes=8 * 1024)
    conn = make_connection(ws, upstream, options)
    async with running(conn):
        await until(lambda: bool(ws.transport.writes))
        ws.pause()
        start(ws, "s1")
        start(ws, "s2")
        await until(lambda: {"s1", "s2"} <= conn._held.keys())
        assert {reason for _, reason in conn._held.values()} == {Pause.CONNECTION}  # rule 2
        assert all(body.paused for body, _ in conn._held.values())
        assert conn.flow.connection.over(conn.outbox.pending_bytes)
        assert not conn.outbox.is_full("s1")
        assert not conn.outbox.is_full("s2")
        assert not conn.stats.slow_consumer  # the socket itself is not backed up

        ws.resume()
        await until(lambda: finished(ws, "s1") and finished(ws, "s2"))
        assert conn._held == {}
    for sid in ("s1", "s2"):
        frames = of_stream(ws, sid)
        assert stream_text(frames) == "".join(pieces)
        assert_gapless(frames)
    assert conn.stats.pauses >= 2


async def test_a_detached_streams_held_body_is_resumed_and_reads_into_its_log():
    ws = RecordingWebSocket()
    pieces = [f"d{i} " for i in range(30)]
    upstream = ScriptedUpstream(openai_sse(pieces))
    options = ConnectionOptions(queue_events=4, queue_bytes=1 << 20, buffer_bytes=1 << 20)
    conn = make_connection(ws, upstream, options)
    async with running(conn):
        await until(lambda: bool(ws.transport.writes))
        ws.pause()
        start(ws, "s1", {"on_disconnect": "continue"})
        await until(lambda: "s1" in conn._held)
        body, _ = conn._held["s1"]
        assert body.paused
    # The client left: the stream is detached, its body resumed, its task adopted.
    assert not body.paused
    assert conn._held == {}
    (task,) = conn.shared.detached_tasks
    async with asyncio.timeout(1):
        await task
    log = conn.logs["s1"]
    assert log.finished
    assert upstream.pulled == len(upstream.chunks)
    assert upstream.opened == upstream.closed == 1
    assert conn.stats.pauses == 1
    conn.expire_all()  # the disconnect window's timer
    assert conn.logs == {}


async def test_a_slow_consumer_is_closed_with_4000_and_its_streams_are_cancelled():
    ws = RecordingWebSocket()
    upstream = ScriptedUpstream(openai_sse(["x" * 40_000] * 3))
    options = ConnectionOptions(queue_events=1000, queue_bytes=1 << 20, buffer_bytes=64 * 1024)
    conn = make_connection(ws, upstream, options)
    async with running(conn) as run:
        await until(lambda: bool(ws.transport.writes))
        ws.pause()
        ws.transport.buffered = SOCKET_BACKLOG_BYTES  # the socket is backed up too (rule 3)
        start(ws, "s1")
        await until(lambda: conn.stats.slow_consumer)
        assert conn.session.streams == {}
        assert conn.outbox.empty
        await until(lambda: not conn.stream_tasks.tasks)
        assert upstream.opened == upstream.closed == 1

        ws.resume()  # the client reads again: the error and the close land
        async with asyncio.timeout(1):
            await run
    assert ws.close_code == CloseCode.SLOW_CONSUMER == 4000
    assert not conn.stats.aborted
    frames = received(ws)
    assert frames[-1]["type"] == "error"
    assert frames[-1]["code"] == "slow_consumer"
    assert not any(frame["type"] == "finish" for frame in frames)  # silenced, not queued
    assert upstream.pulled < len(upstream.chunks)


async def test_a_start_whose_first_frame_makes_the_client_a_slow_consumer_opens_no_upstream():
    ws = RecordingWebSocket()
    upstream = ScriptedUpstream(openai_sse(["never sent"]))
    conn = make_connection(ws, upstream, ConnectionOptions(buffer_bytes=16))
    async with running(conn) as run:
        await until(lambda: bool(ws.transport.writes))
        ws.pause()
        ws.transport.buffered = SOCKET_BACKLOG_BYTES  # over the tiny cap, socket backed up
        start(ws, "s1")  # its `stream.started` alone tips the connection over
        await until(lambda: conn.stats.slow_consumer)
        assert not run.done()  # the reader carries on to the close: nothing raised
        assert conn.stream_tasks.tasks == {}
        assert upstream.opened == 0
        ws.resume()
        async with asyncio.timeout(1):
            await run
    assert ws.close_code == CloseCode.SLOW_CONSUMER


async def test_the_heartbeat_tick_sends_a_heartbeat_after_an_interval_of_silence():
    ws = RecordingWebSocket()
    interval = 0.05
    conn = make_connection(ws, ScriptedUpstream([]), ConnectionOptions(heartbeat_interval=interval))
    loop = asyncio.get_running_loop()
    async with running(conn):
        await until(lambda: bool(ws.transport.writes))
        ready_at = loop.time()
        await until(lambda: len(ws.transport.writes) == 2)
        first_at = loop.time()
        await until(lambda: len(ws.transport.writes) == 3)
        second_at = loop.time()
        frames = received(ws)
    assert [frame["type"] for frame in frames] == ["ready", "heartbeat", "heartbeat"]
    assert first_at - ready_at >= interval - conn.options.tick
    assert second_at - first_at >= interval - conn.options.tick
    assert conn.options.tick < interval


async def test_a_send_waiting_past_send_timeout_makes_the_client_a_slow_consumer():
    ws = RecordingWebSocket()
    upstream = ScriptedUpstream(openai_sse([f"w{i} " for i in range(1000)]))
    conn = make_connection(ws, upstream, ConnectionOptions(send_timeout=0.05))
    async with running(conn) as run:
        await until(lambda: bool(ws.transport.writes))
        ws.transport.pause_on_write = True  # the client reads no more after this write
        start(ws, "s1")
        await until(lambda: conn.writer.send_since is not None)
        await until(lambda: conn.stats.slow_consumer, timeout=0.5)
        assert conn.shared.accounting.send_timeouts == 1
        await until(lambda: not conn.stream_tasks.tasks)
        assert conn.session.streams == {}

        ws.transport.pause_on_write = False
        ws.resume()  # the client reads again within the close's second: the close lands
        async with asyncio.timeout(1):
            await run
    assert ws.close_code == CloseCode.SLOW_CONSUMER
    assert received(ws)[-1]["code"] == "slow_consumer"
    assert upstream.opened == upstream.closed == 1


async def _detach_and_expire() -> tuple[weakref.ref[RecordingWebSocket], Shared]:
    ws = RecordingWebSocket()
    upstream = HangingUpstream("body", openai_sse(["a ", "b "])[:2])
    conn = make_connection(ws, upstream, ConnectionOptions(disconnect_window=0.05))
    async with running(conn):
        await until(lambda: bool(ws.transport.writes))
        ws.pause()  # frames stay queued: the stream still runs when the client goes
        start(ws, "s1", {"on_disconnect": "continue"})
        await upstream.hanging.wait()
    assert "s1" in conn.logs  # detached
    await until(lambda: not conn.logs, timeout=2)  # the window passed: the log is forgotten
    await until(lambda: not conn.shared.detached_tasks)
    return weakref.ref(ws), conn.shared


async def test_a_closed_connection_whose_detached_stream_expired_is_let_go():
    ref, shared = await _detach_and_expire()
    gc.collect()
    assert not shared.detached_owners  # nothing of the connection is needed any more
    assert ref() is None
