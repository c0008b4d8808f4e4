"""Rate limits and quotas end to end (PROTOCOL.md §6.2): exact counts under concurrency.

Each case runs on one node with the memory store, and on two nodes sharing a test Redis
(the connections spread over both), where the nodes must enforce one budget between them.
Every refusal is `rate_limited` with `retry_after_ms`, retryable; a connection over its
principal's quota gets it and close 1013.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from e2e_helpers import RawConn, drop, mock_request, raw_connect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wsgate.app import App

KEY = "sk-rate-limits-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}
LONG = {"chunks": ["a"] * 300, "tokens_per_s": 100}  # 3 s: still running while others ask


def auth_toml(quota: str) -> str:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""
[[auth.api_keys]]
principal = "tenant"
sha256 = "{digest}"
[auth.quota]
{quota}
"""


Nodes = Callable[..., Any]


@pytest.fixture(params=["memory", "redis"])
def nodes(request, start_app) -> Nodes:
    """A factory of the gateway nodes under test: one (memory store) or two (one Redis)."""
    store: dict[str, Any] = {}
    count = 1
    if request.param == "redis":
        store = {"store.kind": "redis", "store.url": request.getfixturevalue("redis_url")}
        count = 2

    async def factory(toml: str, **overrides: Any) -> list[App]:
        return [
            await start_app(
                toml, **{"api.enabled": "off", "store.node_id": f"node-{n}", **store, **overrides}
            )
            for n in range(count)
        ]

    return factory


async def outcomes(conn: RawConn, stream_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each stream's first decisive frame: `stream.started`, or the error refusing it."""
    seen: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(10):
        while len(seen) < len(stream_ids):
            frame = await conn.recv()
            sid = frame.get("stream_id")
            if (
                sid in stream_ids
                and sid not in seen
                and frame["type"] in {"stream.started", "error"}
            ):
                seen[sid] = frame
    return seen


def assert_rate_limited(frame: dict[str, Any], most_ms: int) -> None:
    assert frame["type"] == "error"
    assert frame["code"] == "rate_limited"
    assert frame["retryable"] is True
    assert 0 < frame["retry_after_ms"] <= most_ms


async def test_starts_per_minute_admit_exactly_the_budget_across_concurrent_connections(nodes):
    apps = await nodes(auth_toml("starts_per_minute = 10"))
    urls = [apps[i % len(apps)].url for i in range(4)]
    async with (
        raw_connect(urls[0], additional_headers=HEADERS) as a,
        raw_connect(urls[1], additional_headers=HEADERS) as b,
        raw_connect(urls[2], additional_headers=HEADERS) as c,
        raw_connect(urls[3], additional_headers=HEADERS) as d,
    ):
        conns = [a, b, c, d]
        sids = [f"s{i}" for i in range(10)]
        for conn in conns:  # 40 starts in flight at once, 10 per connection
            for sid in sids:
                await conn.start(sid, mock_request())
        results = await asyncio.gather(*(outcomes(conn, sids) for conn in conns))
    frames = [frame for result in results for frame in result.values()]
    kinds = Counter(frame["type"] for frame in frames)
    assert kinds == {"stream.started": 10, "error": 30}
    for frame in frames:
        if frame["type"] == "error":
            assert_rate_limited(frame, 60_000)


async def test_concurrent_streams_cap_the_running_streams_and_free_their_slots_at_the_end(nodes):
    apps = await nodes(auth_toml("concurrent_streams = 3"))
    async with (
        raw_connect(apps[0].url, additional_headers=HEADERS) as a,
        raw_connect(apps[-1].url, additional_headers=HEADERS) as b,
    ):
        sids = [f"s{i}" for i in range(6)]
        for sid in sids:
            await a.start(sid, mock_request(LONG))
            await b.start(sid, mock_request(LONG))
        first = await asyncio.gather(outcomes(a, sids), outcomes(b, sids))
        running = [
            (conn, sid)
            for conn, result in zip((a, b), first, strict=True)
            for sid, frame in result.items()
            if frame["type"] == "stream.started"
        ]
        refused = [f for result in first for f in result.values() if f["type"] == "error"]
        assert len(running) == 3
        assert len(refused) == 9
        for frame in refused:
            assert_rate_limited(frame, 5_000)
        for conn, sid in running:
            await conn.send({"type": "cancel", "stream_id": sid})
        for conn, sid in running:
            await conn.finishes({sid})
        # The slots are given back in the background: within a moment three run again.
        admitted = 0
        for attempt in range(20):
            sid = f"again{attempt}"
            await a.start(sid, mock_request(LONG))
            if (await outcomes(a, [sid]))[sid]["type"] == "stream.started":
                admitted += 1
                if admitted == 3:
                    break
            else:
                await asyncio.sleep(0.1)
        assert admitted == 3
        await a.start("one-too-many", mock_request(LONG))
        assert_rate_limited((await outcomes(a, ["one-too-many"]))["one-too-many"], 5_000)


async def test_a_connection_past_the_principals_connection_quota_is_closed_with_1013(nodes):
    apps = await nodes(auth_toml("connections = 2"))
    async with (
        raw_connect(apps[0].url, additional_headers=HEADERS),
        raw_connect(apps[-1].url, additional_headers=HEADERS),
        connect(
            apps[0].url,
            subprotocols=["wsgate.v1"],  # type: ignore[list-item]
            additional_headers=HEADERS,
        ) as ws,
    ):
        third = RawConn(ws)
        refusal = await third.recv()
        assert_rate_limited(refusal, 60_000)
        with pytest.raises(ConnectionClosed) as closed:
            await third.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013
    # Both slots are given back when their connections close.
    await asyncio.sleep(0.3)
    async with (
        raw_connect(apps[-1].url, additional_headers=HEADERS) as again,
        raw_connect(apps[0].url, additional_headers=HEADERS) as again2,
    ):
        assert again.received[0]["type"] == again2.received[0]["type"] == "ready"


async def test_tokens_per_minute_are_debited_from_the_usage_and_refuse_the_next_start(nodes):
    apps = await nodes(auth_toml("tokens_per_minute = 40"))
    script = {"chunks": ["tok "] * 60}  # 60 output tokens, and its prompt: past the 40
    async with raw_connect(apps[0].url, additional_headers=HEADERS) as a:
        await a.start("big", mock_request(script))
        frames = (await a.finishes({"big"}))["big"]
        assert frames[-1]["reason"] == "stop"
    usage = next(f for f in frames if f["type"] == "usage")
    spent = usage["input_tokens"] + usage["output_tokens"]
    assert spent > 60
    await asyncio.sleep(0.3)  # the correction is debited in the background
    async with raw_connect(apps[-1].url, additional_headers=HEADERS) as b:
        await b.start("next", mock_request())
        refusal = (await outcomes(b, ["next"]))["next"]
    # The debt: what was spent past the minute's 40, at 1.5 s a token (the next start's
    # few estimated tokens on top).
    debt_ms = (spent - 40) * 1500
    assert_rate_limited(refusal, debt_ms + 10 * 1500)
    assert refusal["retry_after_ms"] >= debt_ms - 2000


async def test_anonymous_clients_are_limited_per_ip_on_a_gateway_without_auth(nodes):
    apps = await nodes("[auth.anonymous_quota]\nstarts_per_minute = 3\n")
    async with raw_connect(apps[0].url) as a, raw_connect(apps[-1].url) as b:
        sids = ["s0", "s1", "s2"]
        for sid in sids:
            await a.start(sid, mock_request())
            await b.start(sid, mock_request())
        results = await asyncio.gather(outcomes(a, sids), outcomes(b, sids))
    kinds = Counter(f["type"] for result in results for f in result.values())
    assert kinds == {"stream.started": 3, "error": 3}


async def test_a_detached_stream_keeps_its_concurrency_slot_until_it_ends(nodes):
    apps = await nodes(auth_toml("concurrent_streams = 1"))
    script = {"chunks": ["a"] * 100, "tokens_per_s": 100}  # 1 s
    async with raw_connect(apps[0].url, additional_headers=HEADERS) as gone:
        await gone.start("s1", mock_request(script), {"on_disconnect": "continue"})
        assert (await outcomes(gone, ["s1"]))["s1"]["type"] == "stream.started"
        drop(gone)
    async with raw_connect(apps[-1].url, additional_headers=HEADERS) as conn:
        await conn.start("s2", mock_request())
        assert_rate_limited((await outcomes(conn, ["s2"]))["s2"], 5_000)
        admitted = False
        for attempt in range(40):  # the detached stream ends within ~1 s: then its slot is free
            sid = f"again{attempt}"
            await conn.start(sid, mock_request())
            if (await outcomes(conn, [sid]))[sid]["type"] == "stream.started":
                admitted = True
                break
            await asyncio.sleep(0.1)
        assert admitted


async def test_a_keyed_retry_at_the_concurrency_cap_attaches_to_its_generation(nodes):
    apps = await nodes(auth_toml("concurrent_streams = 1"))
    request, options = mock_request(LONG), {"idempotency_key": "retry-me"}
    async with (
        raw_connect(apps[0].url, additional_headers=HEADERS) as first,
        raw_connect(apps[-1].url, additional_headers=HEADERS) as retry,
    ):
        await first.start("s1", request, options)
        started = (await outcomes(first, ["s1"]))["s1"]
        assert started["type"] == "stream.started"
        await retry.start("s1", request, options)  # the same generation: no new slot needed
        attached = (await outcomes(retry, ["s1"]))["s1"]
        assert attached["type"] == "stream.started"
        assert attached["message_id"] == started["message_id"]
        await first.send({"type": "cancel", "stream_id": "s1"})
