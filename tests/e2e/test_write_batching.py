"""The writer sends the frames waiting on a connection in one transport write.

Many streams' frames share a write; each stream's frames still arrive whole, in order and
schema-valid (`RawConn` validates every frame), and a stalled client is still cut off.
"""

from __future__ import annotations

import asyncio

from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text


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
        await asyncio.gather(
            *(
                conn.start(sid, mock_request({"text": text, "tokens_per_s": 200}))
                for sid, text in texts.items()
            )
        )
        by_stream = await conn.finishes(set(texts), timeout=30)
    for sid, frames in by_stream.items():
        assert stream_text(frames) == texts[sid]
        assert_gapless(frames)
