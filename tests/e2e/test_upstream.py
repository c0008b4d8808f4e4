"""The upstream shell against the real mock: timeouts, failures and the pool size."""

from __future__ import annotations

import asyncio
import socket

import pytest
from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text

from wsgate.core.errors import UpstreamUnavailable
from wsgate.core.frames import ChatRequest, Message, StartOptions
from wsgate.upstream.client import Route, Timeouts, UpstreamClient

BOTH_READERS = True  # the upstream contract: push and pull (conftest.py)


async def test_a_provider_silent_before_its_first_byte_times_out_and_is_closed(start_app):
    app = await start_app(**{"upstream.first_byte_timeout_s": 0.3})
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "late", "ttft_ms": 5000, "tag": "ttfb"}))
        frames = (await conn.finishes({"s1"}, timeout=5))["s1"]
    error, finish = frames[-2:]
    assert (error["type"], error["code"], error["retryable"]) == ("error", "upstream_timeout", True)
    assert finish["reason"] == "timeout"
    assert_gapless(frames)
    record = await app.mock.wait_disconnected("ttfb", timeout=5)
    assert record.completed_at is None


async def test_an_idle_gap_longer_than_the_idle_timeout_ends_the_stream(start_app):
    app = await start_app(**{"upstream.idle_timeout_s": 0.3})
    script = {"chunks": ["a", "b", "c"], "tokens_per_s": 1, "tag": "idle"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script))
        frames = (await conn.finishes({"s1"}, timeout=5))["s1"]
    assert stream_text(frames) == "a"
    assert frames[-2]["code"] == "upstream_timeout"
    assert frames[-1]["reason"] == "timeout"
    await app.mock.wait_disconnected("idle", timeout=5)


async def test_an_unreachable_provider_is_a_retryable_upstream_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = UpstreamClient(
        {"m": Route("m", "p", "openai_chat", f"http://127.0.0.1:{port}/v1", "m")},
        Timeouts(connect=1, first_byte=1, idle=1),
    )
    await client.start()
    try:
        request = ChatRequest(model="m", messages=[Message(role="user", content="x")])
        with pytest.raises(UpstreamUnavailable) as info:
            async with client.open(request, client.resolve(request, StartOptions())):
                pass
        assert info.value.retryable
        assert "127.0.0.1" not in info.value.public_message
    finally:
        await client.close()


async def test_a_429_with_retry_after_reaches_the_client_typed(start_app):
    app = await start_app(**{"upstream.retry_attempts": 0})
    script = {"status": 429, "retry_after": 2}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script))
        frames = (await conn.finishes({"s1"}))["s1"]
    error = frames[-2]
    assert error["code"] == "upstream_rate_limited"
    assert error["retry_after_ms"] == 2000
    assert error["retryable"] is True
    assert frames[-1]["reason"] == "error"


async def test_a_400_from_the_provider_is_a_non_retryable_rejection(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"status": 400}))
        frames = (await conn.finishes({"s1"}))["s1"]
    assert (frames[-2]["code"], frames[-2]["retryable"]) == ("upstream_rejected", False)


async def test_a_truncated_provider_stream_is_an_error_never_a_stop(app):
    events = ['{"choices":[{"index":0,"delta":{"content":"half"}}]}']
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"events": events, "done": False}))
        frames = (await conn.finishes({"s1"}))["s1"]
    assert stream_text(frames) == "half"
    assert frames[-2]["code"] == "upstream_protocol"
    assert frames[-1]["reason"] == "error"


async def test_more_than_100_upstream_streams_are_open_at_once(app):
    count = 150
    async with raw_connect(app.url) as conn:
        for i in range(count):
            script = {"text": "one two three four five six", "tokens_per_s": 2}
            await conn.start(f"s{i}", mock_request(script))
        seen: set[str] = set()
        async with asyncio.timeout(15):
            while len(seen) < count:
                frame = await conn.recv()
                if frame["type"] == "delta.text":
                    seen.add(frame["stream_id"])
        # Every stream has its first token and none has finished: all are open together.
        assert app.mock.open_connections == count
        for i in range(count):
            await conn.send({"type": "cancel", "stream_id": f"s{i}"})
        await conn.finishes({f"s{i}" for i in range(count)})
