"""Cancel reaches the provider, ends the stream once, and leaves other streams intact."""

from __future__ import annotations

import asyncio
import time

from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text

BOTH_READERS = True  # the upstream contract: push and pull (conftest.py)


async def test_cancelling_one_stream_of_50_leaves_the_other_49_byte_exact(app):
    texts = {f"s{i}": f"stream {i} says " + "word " * 40 for i in range(50)}
    async with raw_connect(app.url) as conn:
        for sid, text in texts.items():
            script = {"text": text, "tokens_per_s": 200, "tag": f"cancel-test-{sid}"}
            await conn.start(sid, mock_request(script))
        # Wait until the victim is really streaming, then cancel it.
        await conn.until(lambda f: f.get("stream_id") == "s17" and f["type"] == "delta.text")
        cancelled_at = time.monotonic()
        await conn.send({"type": "cancel", "stream_id": "s17"})
        by_stream = await conn.finishes(set(texts), timeout=30)
        record = await app.mock.wait_disconnected("cancel-test-s17", timeout=5)
    assert record.disconnected_at is not None
    assert record.disconnected_at - cancelled_at < 1.0
    assert record.completed_at is None
    victim = [f for f in conn.received if f.get("stream_id") == "s17"]
    assert victim[-1] == {
        "type": "finish",
        "stream_id": "s17",
        "seq": victim[-1]["seq"],
        "reason": "cancelled",
    }
    assert [f["type"] for f in victim].count("finish") == 1
    assert_gapless(victim)
    for sid, frames in by_stream.items():
        if sid == "s17":
            continue
        assert stream_text(frames) == texts[sid]
        assert frames[-1]["reason"] == "stop"
        assert_gapless(frames)
    assert app.mock.find("cancel-test-s3").completed_at is not None


async def test_nothing_of_a_cancelled_stream_is_sent_after_its_finish(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "x " * 2000, "chunk": 1}))
        await conn.until(lambda f: f["type"] == "delta.text")
        await conn.send({"type": "cancel", "stream_id": "s1"})
        await conn.until(lambda f: f["type"] == "finish")
        # A second stream proves the connection is live; nothing of s1 may arrive meanwhile.
        await conn.start("s2", mock_request({"text": "after"}))
        frames = await conn.until(lambda f: f.get("stream_id") == "s2" and f["type"] == "finish")
    assert all(f.get("stream_id") != "s1" for f in frames)


async def test_a_closed_client_connection_cancels_all_of_its_streams(app):
    async with raw_connect(app.url) as conn:
        for i in range(5):
            script = {"text": "slow " * 100, "tokens_per_s": 20, "tag": f"drop-{i}"}
            await conn.start(f"s{i}", mock_request(script))
        await conn.until(lambda f: f["type"] == "delta.text")
    for i in range(5):
        record = await app.mock.wait_disconnected(f"drop-{i}", timeout=5)
        assert record.completed_at is None
    assert app.mock.open_connections == 0


async def test_cancel_of_an_unknown_stream_gets_unknown_stream_and_the_connection_carries_on(app):
    async with raw_connect(app.url) as conn:
        await conn.send({"type": "cancel", "stream_id": "ghost"})
        error = await conn.recv()
        assert error == {
            "type": "error",
            "code": "unknown_stream",
            "message": "no running stream has this id",
            "retryable": False,
            "stream_id": "ghost",
        }
        await conn.start("s1", mock_request({"text": "still here"}))
        frames = (await conn.finishes({"s1"}))["s1"]
    assert stream_text(frames) == "still here"


async def test_a_stream_id_reused_right_after_its_cancel_can_itself_be_cancelled(app):
    slow = "slow " * 200
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": slow, "tokens_per_s": 20, "tag": "first"}))
        await conn.until(lambda f: f["type"] == "delta.text")
        # Cancel and restart in one burst: the old stream's task winds down after the new
        # one is registered under the same id.
        await conn.send({"type": "cancel", "stream_id": "s1"})
        await conn.start("s1", mock_request({"text": slow, "tokens_per_s": 20, "tag": "second"}))
        await conn.until(lambda f: f["type"] == "finish")
        await conn.until(lambda f: f["type"] == "delta.text" and f["seq"] == 3)
        await conn.send({"type": "cancel", "stream_id": "s1"})
        frames = await conn.until(lambda f: f["type"] == "finish")
    assert frames[-1]["reason"] == "cancelled"
    await app.mock.wait_disconnected("first", timeout=5)
    record = await app.mock.wait_disconnected("second", timeout=5)
    assert record.completed_at is None


async def test_streams_cancelled_in_the_same_burst_as_their_start_leave_no_task_behind(app):
    count = 300
    async with raw_connect(app.url) as conn:
        for i in range(count):
            await conn.start(f"s{i}", mock_request({"text": "never " * 50, "tokens_per_s": 5}))
            await conn.send({"type": "cancel", "stream_id": f"s{i}"})
        by_stream = await conn.finishes({f"s{i}" for i in range(count)})
        (connection,) = app.gateway.connections
        for _ in range(100):
            if not connection.stream_tasks.tasks:
                break
            await asyncio.sleep(0.02)
        assert connection.stream_tasks.tasks == {}
        assert connection.stream_tasks._message_ids == {}
    assert all(frames[-1]["reason"] == "cancelled" for frames in by_stream.values())
