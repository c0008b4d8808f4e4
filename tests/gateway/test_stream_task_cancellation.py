"""A cancellation test for every await point of a stream's task (httpcore's shape).

Each case parks the task at one await of `StreamTasks._run` / `_attempts` / `_pump` with an
upstream that hangs exactly there, cancels it, and checks that everything is consistent
afterwards: the task ended *cancelled* (its `CancelledError` was re-raised, not
swallowed), the provider call's context was left, and neither the stream tasks, the
connection's held bodies nor the session remember the stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from e2e_helpers import mock_request, validate_server_frame
from gateway_helpers import make_connection, running, until

from wsgate.core.errors import UpstreamUnavailable
from wsgate.core.providers import make_parser
from wsgate.gateway.connection import Connection, ConnectionOptions
from wsgate.testing import (
    HangingUpstream,
    ParserTarget,
    RecordingWebSocket,
    ScriptedUpstream,
    openai_sse,
)

# A provider's answer cut short: content, but no finish and no `[DONE]`.
PARTIAL = openai_sse(["Hel", "lo"])[:-2]


def send(ws: RecordingWebSocket, frame: dict[str, Any]) -> None:
    ws.client_sends(orjson.dumps(frame).decode())


def start(ws: RecordingWebSocket, stream_id: str) -> None:
    send(ws, {"type": "start", "stream_id": stream_id, "request": mock_request()})


def cancel(ws: RecordingWebSocket, stream_id: str) -> None:
    send(ws, {"type": "cancel", "stream_id": stream_id})


async def stream_task(conn: Connection, stream_id: str) -> asyncio.Task[None]:
    await until(lambda: stream_id in conn.stream_tasks.tasks)
    return conn.stream_tasks.tasks[stream_id]


async def cancelled_by_the_client(
    conn: Connection, task: asyncio.Task[None], stream_id: str
) -> None:
    """The client cancels the stream; its task must end cancelled, leaving nothing behind."""
    cancel(conn.ws, stream_id)  # type: ignore[arg-type]
    async with asyncio.timeout(1):
        await asyncio.wait({task})
    assert task.cancelled()  # CancelledError went out of the task: not swallowed
    assert stream_id not in conn.stream_tasks.tasks
    assert stream_id not in conn._held
    assert stream_id not in conn.session.streams
    assert conn.shared.accounting.cancel_latency_count == 1


def has_finish(ws: RecordingWebSocket, stream_id: str) -> bool:
    return any(f["type"] == "finish" and f["stream_id"] == stream_id for f in ws.frames())


def finish_of(ws: RecordingWebSocket, stream_id: str) -> dict[str, Any]:
    frames = ws.frames()
    for frame in frames:
        validate_server_frame(frame)
    (finish,) = [f for f in frames if f["type"] == "finish" and f["stream_id"] == stream_id]
    return finish


async def test_a_stream_cancelled_while_its_upstream_opens_ends_cancelled():
    ws = RecordingWebSocket()
    upstream = HangingUpstream("connect")
    conn = make_connection(ws, upstream)
    async with running(conn):
        start(ws, "s1")
        task = await stream_task(conn, "s1")
        await upstream.hanging.wait()  # before the provider's headers
        await cancelled_by_the_client(conn, task, "s1")
        await until(lambda: has_finish(ws, "s1"))
    assert finish_of(ws, "s1")["reason"] == "cancelled"
    assert upstream.opened == upstream.closed == 1


async def test_a_stream_cancelled_while_its_body_waits_for_the_provider_ends_cancelled():
    ws = RecordingWebSocket()
    upstream = HangingUpstream("body", PARTIAL)
    conn = make_connection(ws, upstream)
    async with running(conn):
        start(ws, "s1")
        task = await stream_task(conn, "s1")
        await upstream.hanging.wait()  # in `body.run`, the content delivered
        await cancelled_by_the_client(conn, task, "s1")
        await until(lambda: has_finish(ws, "s1"))
    assert finish_of(ws, "s1")["reason"] == "cancelled"
    assert upstream.opened == upstream.closed == 1
    assert upstream.pulled == len(PARTIAL)


async def test_a_stream_cancelled_while_its_body_is_held_by_flow_control_ends_cancelled():
    ws = RecordingWebSocket()
    upstream = ScriptedUpstream(openai_sse([f"h{i} " for i in range(40)]))
    options = ConnectionOptions(queue_events=4, queue_bytes=1 << 20, buffer_bytes=1 << 20)
    conn = make_connection(ws, upstream, options)
    async with running(conn):
        await until(lambda: bool(ws.transport.writes))
        ws.pause()  # the client stops reading: the stream's queue fills, its body pauses
        start(ws, "s1")
        task = await stream_task(conn, "s1")
        await until(lambda: "s1" in conn._held)  # `body.run` waits for room
        await cancelled_by_the_client(conn, task, "s1")
        ws.resume()
        await until(lambda: has_finish(ws, "s1"))
    assert finish_of(ws, "s1")["reason"] == "cancelled"
    assert upstream.opened == upstream.closed == 1
    assert upstream.pulled < len(upstream.chunks)


async def test_a_stream_cancelled_while_it_sleeps_before_a_retry_ends_cancelled():
    ws = RecordingWebSocket()
    # A transient failure whose Retry-After (10 s, inside the 15 s budget) fixes the wait.
    down = UpstreamUnavailable("connect failed", retry_after_ms=10_000)
    upstream = HangingUpstream("connect", failures=[down])
    conn = make_connection(ws, upstream)
    async with running(conn):
        start(ws, "s1")
        task = await stream_task(conn, "s1")
        await until(lambda: conn.shared.accounting.upstream_retries == 1)  # now sleeping
        assert upstream.opened == upstream.closed == 1
        await cancelled_by_the_client(conn, task, "s1")
        await until(lambda: has_finish(ws, "s1"))
    assert finish_of(ws, "s1")["reason"] == "cancelled"
    assert upstream.opened == upstream.closed == 1  # no second call after the cancel
    assert not upstream.hanging.is_set()


async def test_a_retried_call_goes_to_the_target_its_start_resolved_without_resolving_again():
    resolved = []

    def resolve(request, options):
        resolved.append(request.model)
        return ParserTarget(lambda: make_parser("openai_chat", 1 << 20))

    ws = RecordingWebSocket()
    upstream = HangingUpstream("connect", failures=[UpstreamUnavailable("down", retry_after_ms=1)])
    conn = make_connection(ws, upstream, resolve=resolve)
    async with running(conn):
        start(ws, "s1")
        task = await stream_task(conn, "s1")
        await until(upstream.hanging.is_set)  # the retry's call
        assert upstream.opened == 2
        first, second = upstream.targets
        assert first is second is not None
        assert resolved == ["mock"]  # one lookup for the start and its retry
        await cancelled_by_the_client(conn, task, "s1")


async def test_a_stream_cancelled_while_its_upstream_closes_ends_cancelled():
    ws = RecordingWebSocket()
    upstream = HangingUpstream("close", PARTIAL)
    conn = make_connection(ws, upstream)
    async with running(conn):
        start(ws, "s1")
        task = await stream_task(conn, "s1")
        await upstream.hanging.wait()  # the body ended; leaving the provider call awaits
        assert upstream.closed == 0
        await cancelled_by_the_client(conn, task, "s1")
        await until(lambda: has_finish(ws, "s1"))
    assert finish_of(ws, "s1")["reason"] == "cancelled"
    assert upstream.opened == upstream.closed == 1


async def test_a_connection_closing_while_a_stream_opens_its_upstream_cancels_the_task():
    ws = RecordingWebSocket()
    upstream = HangingUpstream("connect")
    conn = make_connection(ws, upstream)
    async with running(conn):
        start(ws, "s1")
        task = await stream_task(conn, "s1")
        await upstream.hanging.wait()
    # The run ended: the connection reaped its stream task before returning.
    assert task.cancelled()
    assert conn.stream_tasks.tasks == {}
    assert conn.session.streams == {}
    assert conn._held == {}
    assert upstream.opened == upstream.closed == 1


async def test_a_first_token_timeout_while_the_upstream_opens_closes_the_call_and_says_why():
    ws = RecordingWebSocket()
    upstream = HangingUpstream("connect")
    conn = make_connection(ws, upstream, ConnectionOptions(first_token_timeout=0.05))
    async with running(conn):
        start(ws, "s1")
        task = await stream_task(conn, "s1")
        async with asyncio.timeout(1):
            await asyncio.wait({task})
        await until(lambda: has_finish(ws, "s1"))
        assert task.done()  # the session ended the stream; its task was cancelled
        assert conn.stream_tasks.tasks == {}
        assert conn.session.streams == {}
        assert conn._held == {}
    (error,) = [f for f in ws.frames() if f["type"] == "error"]
    assert error["code"] == "upstream_timeout"
    assert upstream.opened == upstream.closed == 1


async def test_the_max_duration_passing_while_the_body_waits_closes_the_call_and_says_why():
    ws = RecordingWebSocket()
    upstream = HangingUpstream("body", PARTIAL)
    conn = make_connection(ws, upstream, ConnectionOptions(max_duration=0.05))
    async with running(conn):
        start(ws, "s1")
        task = await stream_task(conn, "s1")
        async with asyncio.timeout(1):
            await asyncio.wait({task})
        await until(lambda: has_finish(ws, "s1"))
        assert task.done()
        assert conn.stream_tasks.tasks == {}
        assert conn.session.streams == {}
        assert conn._held == {}
    (error,) = [f for f in ws.frames() if f["type"] == "error"]
    assert error["code"] == "stream_timeout"
    assert finish_of(ws, "s1")["reason"] == "timeout"
    assert upstream.opened == upstream.closed == 1
