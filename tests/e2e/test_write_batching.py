"""Write batching through real sockets: every frame queued in a loop turn leaves in one write.

Many streams' frames share a transport write; each stream's frames still arrive whole, in
order and schema-valid (`RawConn` validates every frame). A lone paced stream writes about
once per token, from the flush of the turn its token came in: no writer task is needed.
The writer's exact mechanics against a recording socket are in tests/gateway/test_writer.py.
"""

from __future__ import annotations

import asyncio

from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text


def writer_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "writer"]


async def test_many_streams_share_writes_and_each_arrives_whole_and_in_order(app):
    texts = {f"s{i}": " ".join(f"w{i}.{j}" for j in range(60)) for i in range(80)}
    async with raw_connect(app.url) as conn:
        (connection,) = app.gateway.connections
        for sid, text in texts.items():
            await conn.start(sid, mock_request({"text": text, "chunk": "word", "tokens_per_s": 0}))
        by_stream = await conn.finishes(set(texts), timeout=30)
        stats = connection.stats
    for sid, frames in by_stream.items():
        assert frames[0]["type"] == "stream.started"
        assert stream_text(frames) == texts[sid]
        assert frames[-1]["reason"] == "stop"
        assert_gapless(frames)
    assert 0 < stats.writes < stats.frames_sent


async def test_paced_streams_released_together_arrive_whole_and_in_order(app):
    texts = {f"p{i}": " ".join(f"t{i}.{j}" for j in range(20)) for i in range(50)}
    async with raw_connect(app.url) as conn:
        (connection,) = app.gateway.connections
        await asyncio.gather(
            *(
                conn.start(sid, mock_request({"text": text, "tokens_per_s": 200}))
                for sid, text in texts.items()
            )
        )
        by_stream = await conn.finishes(set(texts), timeout=30)
        stats = connection.stats
    for sid, frames in by_stream.items():
        assert stream_text(frames) == texts[sid]
        assert_gapless(frames)
    assert 0 < stats.writes < stats.frames_sent


async def test_a_lone_paced_stream_makes_about_one_write_per_token_without_a_writer_task(app):
    words = [f"tick{j}" for j in range(20)]
    text = " ".join(words)
    async with raw_connect(app.url) as conn:
        (connection,) = app.gateway.connections
        await conn.start("solo", mock_request({"text": text, "tokens_per_s": 100}))
        frames = (await conn.finishes({"solo"}, timeout=10))["solo"]
        stats = connection.stats
        assert not connection.writer.busy
        assert writer_tasks() == []  # every flush wrote at once: no write had to wait
    assert stream_text(frames) == text
    assert_gapless(frames)
    # One token per loop turn on an idle loop: each is written by that turn's flush
    # (`ready`, `stream.started`, the role delta and `finish` may share a neighbour's).
    assert len(words) <= stats.writes <= stats.frames_sent
