"""Many streams over real sockets, each byte-exact against its mock script."""

from __future__ import annotations

import asyncio
import random

from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text

WORDS = ["alpha", "beta", "gamma", "δέλτα", "émoji😀", "中文", "end."]


def script_text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "\n"


async def test_one_connection_carries_100_concurrent_streams_byte_exact(app):
    rng = random.Random(7)
    texts = {f"s{i}": script_text(rng, rng.randint(5, 40)) for i in range(100)}
    async with raw_connect(app.url) as conn:
        for sid, text in texts.items():
            chunk = rng.choice(["word", 1, 3, 7])
            await conn.start(sid, mock_request({"text": text, "chunk": chunk, "tokens_per_s": 500}))
        by_stream = await conn.finishes(set(texts), timeout=30)
    for sid, frames in by_stream.items():
        assert frames[0]["type"] == "stream.started"
        assert stream_text(frames) == texts[sid]
        assert frames[-1]["reason"] == "stop"
        assert_gapless(frames)


async def test_ten_connections_with_ten_streams_each_are_byte_exact(app):
    async def one_connection(c: int) -> None:
        rng = random.Random(c)
        texts = {f"c{c}-s{i}": script_text(rng, rng.randint(5, 30)) for i in range(10)}
        async with raw_connect(app.url) as conn:
            for sid, text in texts.items():
                await conn.start(sid, mock_request({"text": text, "tokens_per_s": 300}))
            by_stream = await conn.finishes(set(texts), timeout=30)
        for sid, frames in by_stream.items():
            assert stream_text(frames) == texts[sid]
            assert_gapless(frames)

    await asyncio.gather(*(one_connection(c) for c in range(10)))


async def test_usage_and_role_frames_arrive_in_order_before_finish(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "Hi there", "tokens_per_s": 20}))
        frames = (await conn.finishes({"s1"}))["s1"]
    types = [f["type"] for f in frames]
    assert types == ["stream.started", "delta.role", "delta.text", "delta.text", "usage", "finish"]
    assert frames[0]["message_id"].startswith("msg_")
    assert frames[-2]["output_tokens"] == 2
