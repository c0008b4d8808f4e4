"""Lifecycle under stress: slow readers, caps, time limits, disconnect policy, accounting."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import orjson
from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text
from websockets.asyncio.client import connect


async def test_one_slow_reader_beside_twenty_fast_ones_leaves_the_fast_ones_whole_and_flowing(
    start_app,
):
    app = await start_app(**{"limits.send_timeout_s": 30})
    slow_script = {"words": 20_000, "seed": 3, "chunk": 2000, "tag": "slow-reader"}
    texts = {f"f{i}": f"fast {i} " + "token " * 200 for i in range(20)}

    async def fast(i: int) -> float:
        async with raw_connect(app.url) as conn:
            started = time.monotonic()
            sid = f"f{i}"
            await conn.start(sid, mock_request({"text": texts[sid], "tokens_per_s": 400}))
            frames = (await conn.finishes({sid}, timeout=20))[sid]
            assert stream_text(frames) == texts[sid]
            assert_gapless(frames)
            return time.monotonic() - started

    async with connect(app.url, subprotocols=["wsgate.v1"], max_queue=1, close_timeout=0.5) as slow:  # type: ignore[list-item]
        await slow.recv()  # ready; then it stops reading
        for i in range(4):
            frame = {"type": "start", "stream_id": f"s{i}", "request": mock_request(slow_script)}
            await slow.send(orjson.dumps(frame).decode())
        durations = await asyncio.gather(*(fast(i) for i in range(20)))
    # 200 tokens at 400/s take 0.5 s; a stalled neighbour must not stretch that much.
    assert max(durations) < 3.0


async def test_cancelling_a_stream_held_back_by_a_full_queue_closes_its_upstream_at_once(
    start_app,
):
    app = await start_app(**{"limits.send_timeout_s": 30})
    filler = {"words": 100_000, "chunk": 4000}
    # Still generating when cancelled (paced), so the provider can see the disconnect.
    script = {"words": 100_000, "seed": 5, "chunk": 4000, "tokens_per_s": 100, "tag": "full-queue"}
    async with connect(app.url, subprotocols=["wsgate.v1"], max_queue=1, close_timeout=0.5) as ws:  # type: ignore[list-item]
        await ws.recv()
        for i in range(12):  # ~7 MB: fill the kernel's buffers, then the gateway's
            fill = {**filler, "seed": i}
            start = {"type": "start", "stream_id": f"fill{i}", "request": mock_request(fill)}
            await ws.send(orjson.dumps(start).decode())
        await asyncio.sleep(0.5)
        start = {"type": "start", "stream_id": "x", "request": mock_request(script)}
        await ws.send(orjson.dumps(start).decode())
        (connection,) = app.gateway.connections
        soft = connection.options.buffer_bytes // 2
        async with asyncio.timeout(10):
            # x has frames waiting and may not read on: its queue or the connection is full.
            while not (  # noqa: ASYNC110 - polling gateway state
                connection.outbox.queued("x")[0]
                and (connection.outbox.is_full("x") or connection.outbox.pending_bytes >= soft)
            ):
                await asyncio.sleep(0.02)
        cancelled_at = time.monotonic()
        await ws.send('{"type":"cancel","stream_id":"x"}')
        record = await app.mock.wait_disconnected("full-queue", timeout=5)
    assert record.disconnected_at - cancelled_at < 0.5


async def test_a_stream_over_its_maximum_duration_ends_with_stream_timeout(start_app):
    app = await start_app(**{"limits.max_stream_duration_s": 0.5})
    script = {"text": "slow " * 100, "tokens_per_s": 20, "tag": "too-long"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script))
        frames = (await conn.finishes({"s1"}, timeout=5))["s1"]
    error, finish = frames[-2:]
    assert (error["code"], error["retryable"], finish["reason"]) == (
        "stream_timeout",
        False,
        "timeout",
    )
    assert_gapless(frames)
    await app.mock.wait_disconnected("too-long", timeout=5)


async def test_a_provider_that_sends_no_token_in_time_ends_with_upstream_timeout(start_app):
    app = await start_app(**{"upstream.first_token_timeout_s": 0.4})
    events = ['{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'] * 20
    script = {"events": events, "tokens_per_s": 10, "tag": "no-token"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script))
        frames = (await conn.finishes({"s1"}, timeout=5))["s1"]
    assert frames[-2]["code"] == "upstream_timeout"
    assert frames[-1]["reason"] == "timeout"
    await app.mock.wait_disconnected("no-token", timeout=5)


async def test_a_dropped_client_cancels_its_streams_by_default(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "x " * 200, "tokens_per_s": 20, "tag": "d1"}))
        await conn.until(lambda f: f["type"] == "delta.text")
    record = await app.mock.wait_disconnected("d1", timeout=5)
    assert record.completed_at is None


async def test_a_dropped_client_with_continue_keeps_generating_into_the_event_log(start_app):
    app = await start_app(**{"store.resume_window_s": 5})
    text = "kept " * 60
    script = {"text": text, "tokens_per_s": 200, "tag": "continue"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), {"on_disconnect": "continue"})
        started = await conn.until(lambda f: f["type"] == "delta.text")
    message_id = started[0]["message_id"]
    async with asyncio.timeout(5):
        while (log := app.gateway.shared.detached.get(message_id)) is None or not log.finished:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    record = app.mock.find("continue")
    assert record.completed_at is not None
    assert record.disconnected_at is None
    seen_seq = max(f["seq"] for f in conn.received if f.get("stream_id") == "s1" and "seq" in f)
    page = await app.store.read(message_id, seen_seq, 10_000)
    frames = [orjson.loads(data) for _, data in page.entries]
    assert frames[-1]["reason"] == "stop"
    seen = stream_text([f for f in conn.received if f.get("stream_id") == "s1"])
    assert seen + stream_text(frames) == text
    stats = app.gateway.shared.accounting
    assert stats.detached_streams == 1
    assert stats.wasted_tokens_after_cancel > 0


async def test_a_continue_window_that_expires_cancels_the_generation(start_app):
    app = await start_app(**{"store.resume_window_s": 0.5})
    script = {"text": "slow " * 200, "tokens_per_s": 20, "tag": "window"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), {"on_disconnect": "continue"})
        await conn.until(lambda f: f["type"] == "delta.text")
        dropped_at = time.monotonic()
    record = await app.mock.wait_disconnected("window", timeout=5)
    assert 0.4 < record.disconnected_at - dropped_at < 2.0
    assert app.gateway.shared.accounting.detached_expired == 1
    assert len(app.gateway.shared.detached) == 0


async def test_an_idle_connection_gets_heartbeat_frames(start_app):
    app = await start_app(**{"limits.heartbeat_interval_s": 0.1})
    async with raw_connect(app.url) as conn:
        frames = [await conn.recv(timeout=2) for _ in range(3)]
    assert [f["type"] for f in frames] == ["heartbeat"] * 3


async def test_stats_report_outcomes_and_cancel_latency(app):
    async with raw_connect(app.url) as conn:
        await conn.start("a", mock_request({"text": "done"}))
        await conn.start("b", mock_request({"text": "x " * 100, "tokens_per_s": 10}))
        await conn.until(lambda f: f.get("stream_id") == "b" and f["type"] == "delta.text")
        await conn.send({"type": "cancel", "stream_id": "b"})
        await conn.finishes({"a", "b"})
    base = app.url.replace("ws://", "http://").rsplit("/v1/ws", 1)[0]
    async with aiohttp.ClientSession() as http, http.get(base + "/stats") as resp:
        stats = json.loads(await resp.text())
    assert stats["finishes"] == {"stop": 1, "cancelled": 1}
    assert stats["cancels"] == 1
    latency = stats["cancel_to_upstream_close_ms"]
    assert latency["count"] == 1
    assert 0 <= latency["p99"] < 500


async def test_heartbeats_flow_while_the_provider_sends_bytes_that_make_no_frames(start_app):
    app = await start_app(**{"limits.heartbeat_interval_s": 0.2})
    empty = ['{"choices":[{"index":0,"delta":{"content":""}}]}'] * 12
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"events": empty, "tokens_per_s": 10}))
        frames = await conn.until(lambda f: f["type"] == "heartbeat", timeout=0.8)
    assert frames[-1]["type"] == "heartbeat"


async def test_shutdown_ends_detached_streams_into_their_logs_and_counts_them(start_app):
    app = await start_app(**{"store.resume_window_s": 30, "server.drain_timeout_s": 0.2})
    script = {"text": "slow " * 200, "tokens_per_s": 10, "tag": "detached-at-shutdown"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), {"on_disconnect": "continue"})
        await conn.until(lambda f: f["type"] == "delta.text")
    async with asyncio.timeout(5):
        while not app.gateway.shared.detached_tasks:  # noqa: ASYNC110 - polling
            await asyncio.sleep(0.02)
    await app.gateway.shutdown(0.2)
    stats = app.gateway.shared.accounting
    assert stats.finishes["cancelled"] == 1
    assert stats.cancels == 1
    assert len(app.gateway.shared.detached) == 0
    assert app.gateway.shared.detached_tasks == set()
    await app.mock.wait_disconnected("detached-at-shutdown", timeout=5)


async def test_a_drain_lets_a_detached_generation_finish_into_its_log(start_app):
    app = await start_app(**{"server.drain_timeout_s": 10})
    script = {"text": "finish me " * 20, "tokens_per_s": 50, "tag": "drained-detached"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), {"on_disconnect": "continue"})
        started = await conn.until(lambda f: f["type"] == "delta.text")
    message_id = started[0]["message_id"]
    async with asyncio.timeout(5):
        while not app.gateway.shared.detached_tasks:  # noqa: ASYNC110 - polling
            await asyncio.sleep(0.02)
    began = time.monotonic()
    await app.gateway.shutdown(10)
    assert time.monotonic() - began < 5  # it waited for the generation, not the deadline
    page = await app.store.read(message_id, 0, 10_000)
    frames = [orjson.loads(data) for _, data in page.entries]
    assert frames[-1]["reason"] == "stop"
    assert stream_text(frames) == script["text"]


async def test_past_the_gateway_wide_detach_cap_a_leaving_clients_stream_is_cancelled(start_app):
    app = await start_app(**{"limits.max_detached_streams": 2})
    options = {"on_disconnect": "continue"}
    async with raw_connect(app.url) as conn:
        for n in range(4):
            script = {"text": "slow " * 200, "tokens_per_s": 10, "tag": f"cap{n}"}
            await conn.start(f"s{n}", mock_request(script), options)
        for n in range(4):
            await conn.until(lambda f, n=n: f.get("stream_id") == f"s{n}" and "text" in f)
    records = [app.mock.find(f"cap{n}") for n in range(4)]
    async with asyncio.timeout(5):
        while sum(r.disconnected_at is not None for r in records) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert sum(r.disconnected_at is not None for r in records) == 2  # two were cancelled
    assert len(app.gateway.shared.detached) == 2  # two keep generating
    for frame in (f for f in conn.received if f["type"] == "stream.started"):
        assert await app.store.read(frame["message_id"], 0, 10) is not None  # all resumable
