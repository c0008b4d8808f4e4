"""Writing: inline from the queuing task early in a loop turn, else batched by a writer.

A frame queued on an idle loop is written by the task that queued it; under load the writer
sends the frames waiting on a connection in one transport write. Many streams' frames share
a write; each stream's frames still arrive whole, in order and schema-valid (`RawConn`
validates every frame), and a stalled client is still cut off.
"""

from __future__ import annotations

import asyncio

from e2e_helpers import assert_gapless, mock_request, raw_connect, stream_text

from wsgate.gateway.connection import InlineWindow


async def test_many_streams_share_writes_and_each_arrives_whole_and_in_order(app):
    texts = {f"s{i}": " ".join(f"w{i}.{j}" for j in range(60)) for i in range(80)}
    app.gateway.shared.inline = InlineWindow(0)  # every write by the writer task
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
    assert stats.inline_writes == 0
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


async def test_a_lone_paced_stream_is_written_by_its_own_task_without_a_writer_hop(app):
    text = " ".join(f"tick{j}" for j in range(20))
    async with raw_connect(app.url) as conn:
        (connection,) = app.gateway.connections
        await conn.start("solo", mock_request({"text": text, "tokens_per_s": 100}))
        frames = (await conn.finishes({"solo"}, timeout=10))["solo"]
        stats = connection.stats
    assert stream_text(frames) == text
    assert_gapless(frames)
    # One token at a time on an otherwise idle loop: every turn is young, so no frame
    # waits for a writer task (the `ready` frame and the stream's own frames alike).
    assert stats.inline_writes == stats.writes
    assert stats.writes >= 20


def test_the_inline_window_is_open_for_the_first_part_of_each_loop_turn():
    clock = [100.0]
    window = InlineWindow(0.001, clock=lambda: clock[0])
    loop = asyncio.new_event_loop()
    try:

        async def turns() -> list[bool]:
            seen = [window.open()]  # the turn's first inline write arms the window
            clock[0] += 0.0005
            seen.append(window.open())
            clock[0] += 0.001  # a long turn: the rest goes to a writer task
            seen.append(window.open())
            await asyncio.sleep(0)  # the next turn opens it again
            seen.append(window.open())
            return seen

        assert loop.run_until_complete(turns()) == [True, True, False, True]
    finally:
        loop.close()
