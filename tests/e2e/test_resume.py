"""Resume, idempotent start and cancel by message_id, end to end on one gateway (memory store).

A client drops its TCP connection (reset, no close handshake) at some point of a stream,
connects again and resumes the generation from the last `seq` it saw: it must get every
frame after it once, in order, then the live tail to exactly one `finish`, and the text
must be byte-exact. Every frame received is validated against the protocol's schema.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from e2e_helpers import drop, mock_request, raw_connect, stream_frames, stream_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wsgate.app as app_module
from wsgate.core.store import Claim, StoreUnavailable
from wsgate.store.memory import MemoryStore

PACED = {"tokens_per_s": 200}


def resume_frame(message_id: str, last_seq: int, stream_id: str = "r1", **extra: Any) -> dict:
    return {
        "type": "resume",
        "message_id": message_id,
        "last_seq": last_seq,
        "stream_id": stream_id,
        **extra,
    }


def assert_continues(before: list[dict], after: list[dict]) -> None:
    """`after` picks up at the seq after `before`'s last: gapless, no repeat, one finish."""
    expected = before[-1]["seq"] + 1
    for frame in after:
        assert frame.get("first_seq", frame["seq"]) == expected, (expected, frame)
        expected = frame["seq"] + 1
    finishes = [f for f in before + after if f["type"] == "finish"]
    assert len(finishes) == 1
    assert after[-1]["type"] == "finish"


async def drop_after(app: Any, script: dict, frames: int, options: dict | None = None):
    """Start a stream, take `frames` of its frames, drop the connection; what was seen."""
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), options)
        for _ in range(frames):
            await conn.until(lambda f: f.get("stream_id") == "s1" and "seq" in f)
        seen = stream_frames(conn, "s1")
        drop(conn)
    return seen


async def resume(app: Any, message_id: str, last_seq: int, **extra: Any) -> list[dict]:
    """Resume on a new connection; its `stream.resumed` then the stream's frames."""
    async with raw_connect(app.url) as conn:
        await conn.send(resume_frame(message_id, last_seq, **extra))
        answer = await conn.until(lambda f: f.get("stream_id") == "r1")
        assert answer[-1]["type"] == "stream.resumed", answer[-1]
        await conn.finishes({"r1"})
        return [answer[-1], *stream_frames(conn, "r1")]


@pytest.mark.parametrize("policy", ["continue", "cancel"])
async def test_a_dropped_stream_resumes_on_a_new_connection_byte_exact(app, policy):
    script = {"text": "resume me " * 40, **PACED}
    seen = await drop_after(app, script, 12, {"on_disconnect": policy})
    message_id = seen[0]["message_id"]
    resumed, *rest = await resume(app, message_id, seen[-1]["seq"])
    assert resumed["message_id"] == message_id
    assert resumed["epoch"] == seen[0]["epoch"]
    assert resumed["last_seq"] == seen[-1]["seq"]
    assert_continues(seen, rest)
    if policy == "continue":
        assert rest[-1]["reason"] == "stop"
        assert stream_text(seen) + stream_text(rest) == script["text"]
    else:  # cancelled at the drop: what was produced until then is still there
        assert rest[-1]["reason"] == "cancelled"
        assert script["text"].startswith(stream_text(seen) + stream_text(rest))


async def test_a_resume_before_the_first_token_gets_the_whole_answer(app):
    script = {"text": "late start", "ttft_ms": 400, **PACED}
    seen = await drop_after(app, script, 1, {"on_disconnect": "continue"})
    assert [f["type"] for f in seen] == ["stream.started"]
    _, *rest = await resume(app, seen[0]["message_id"], 1)
    assert_continues(seen, rest)
    assert stream_text(rest) == "late start"


async def test_a_resume_continues_live_while_the_generation_runs(app):
    script = {"text": "live " * 100, "tokens_per_s": 100, "tag": "live"}
    seen = await drop_after(app, script, 3, {"on_disconnect": "continue"})
    resumed, *rest = await resume(app, seen[0]["message_id"], seen[-1]["seq"])
    assert resumed["state"] == "running"
    assert resumed["top_seq"] < rest[-1]["seq"]  # frames arrived after the replay: live
    assert_continues(seen, rest)
    assert stream_text(seen) + stream_text(rest) == script["text"]
    assert len(app.mock.find_all("live")) == 1


async def test_a_snapshot_resume_sends_the_text_so_far_in_one_frame(app):
    script = {"text": "snap " * 30, **PACED}
    seen = await drop_after(app, script, 1, {"on_disconnect": "continue"})
    await asyncio.sleep(0.5)  # the generation finishes meanwhile
    _, *rest = await resume(app, seen[0]["message_id"], 0, snapshot=True)
    kinds = [f["type"] for f in rest]
    assert kinds == ["stream.started", "delta.role", "delta.text", "usage", "finish"]
    assert rest[2]["text"] == script["text"]
    assert rest[2]["first_seq"] == 3
    assert rest[-1]["seq"] == rest[2]["seq"] + 2


async def test_resuming_at_the_finish_answers_and_sends_nothing_more(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "done"}))
        frames = (await conn.finishes({"s1"}))["s1"]
        await conn.send(resume_frame(frames[0]["message_id"], frames[-1]["seq"]))
        answer = await conn.until(lambda f: f.get("stream_id") == "r1")
        assert answer[-1]["type"] == "stream.resumed"
        assert answer[-1]["state"] == "ended"
        await conn.start("s2", mock_request({"text": "next"}))
        await conn.finishes({"s2"})
        assert stream_frames(conn, "r1") == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"message_id": "msg_nobody"}, "unknown_message"),
        ({"epoch": "ep_other"}, "resume_epoch_changed"),
    ],
)
async def test_a_resume_that_cannot_be_served_is_refused_with_its_reason(app, change, code):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "x"}))
        frames = (await conn.finishes({"s1"}))["s1"]
        await conn.send({**resume_frame(frames[0]["message_id"], 0), **change})
        (refusal,) = [
            f for f in await conn.until(lambda f: f["type"] == "error") if f["type"] == "error"
        ]
    assert (refusal["code"], refusal["stream_id"], refusal["retryable"]) == (code, "r1", False)
    assert "seq" not in refusal


async def test_a_resume_from_before_a_trimmed_log_is_refused(start_app):
    app = await start_app(**{"store.max_log_frames": 5})
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "a b c d e f g h i j"}))
        frames = (await conn.finishes({"s1"}))["s1"]
        await conn.send(resume_frame(frames[0]["message_id"], 1))
        refusal = (await conn.until(lambda f: f["type"] == "error"))[-1]
        assert refusal["code"] == "resume_trimmed"
        top = frames[-1]["seq"]
        await conn.send(resume_frame(frames[0]["message_id"], top - 3, "r2"))
        await conn.finishes({"r2"})
        assert [f["seq"] for f in stream_frames(conn, "r2")] == [top - 2, top - 1, top]


async def test_a_resume_after_the_window_is_refused_as_expired(start_app):
    app = await start_app(**{"store.resume_window_s": 0.3})
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "x"}))
        frames = (await conn.finishes({"s1"}))["s1"]
        await asyncio.sleep(0.5)
        await conn.send(resume_frame(frames[0]["message_id"], 0))
        refusal = (await conn.until(lambda f: f["type"] == "error"))[-1]
    assert refusal["code"] == "resume_expired"


async def test_an_unresumable_stream_carries_no_epoch_and_cannot_be_resumed(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "x"}), {"resumable": False})
        frames = (await conn.finishes({"s1"}))["s1"]
        assert "epoch" not in frames[0]
        await conn.send(resume_frame(frames[0]["message_id"], 0))
        refusal = (await conn.until(lambda f: f["type"] == "error"))[-1]
    assert refusal["code"] == "unknown_message"


async def test_ten_concurrent_starts_with_one_key_make_one_provider_request(app):
    script = {"text": "once only " * 10, "tag": "idem", **PACED}
    async with raw_connect(app.url) as conn:
        for n in range(10):
            await conn.start(f"s{n}", mock_request(script), {"idempotency_key": "k-1"})
        by_stream = await conn.finishes({f"s{n}" for n in range(10)})
    assert len(app.mock.find_all("idem")) == 1
    shapes = {
        tuple((f["type"], f["seq"], f.get("text"), f.get("message_id")) for f in frames)
        for frames in by_stream.values()
    }
    assert len(shapes) == 1  # ten identical streams
    assert stream_text(by_stream["s0"]) == script["text"]


async def test_a_retried_keyed_start_on_a_new_connection_attaches_to_the_generation(app):
    script = {"text": "retried " * 30, "tag": "retry", **PACED}
    options = {"idempotency_key": "k-2", "on_disconnect": "continue"}
    seen = await drop_after(app, script, 4, options)
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), options)
        frames = (await conn.finishes({"s1"}))["s1"]
    assert frames[0]["message_id"] == seen[0]["message_id"]
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert stream_text(frames) == script["text"]
    assert len(app.mock.find_all("retry")) == 1


async def test_the_same_key_with_a_different_request_is_a_conflict(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "one"}), {"idempotency_key": "k-3"})
        await conn.finishes({"s1"})
        await conn.start("s2", mock_request({"text": "two"}), {"idempotency_key": "k-3"})
        refusal = (await conn.until(lambda f: f["type"] == "error"))[-1]
    assert (refusal["code"], refusal["stream_id"]) == ("idempotency_conflict", "s2")


async def test_a_cancel_by_message_id_from_another_connection_ends_every_attached_stream(app):
    script = {"text": "stop me " * 200, "tokens_per_s": 50, "tag": "far-cancel"}
    async with raw_connect(app.url) as owner, raw_connect(app.url) as other:
        await owner.start("s1", mock_request(script))
        started = await owner.until(lambda f: f["type"] == "delta.text")
        message_id = started[0]["message_id"]
        await other.send(resume_frame(message_id, 0))
        await other.until(lambda f: f.get("type") == "delta.text")
        async with raw_connect(app.url) as third:
            await third.send({"type": "cancel", "message_id": message_id})
            await owner.finishes({"s1"})
            await other.finishes({"r1"})
    assert owner.received[-1]["reason"] == "cancelled"
    assert stream_frames(other, "r1")[-1]["reason"] == "cancelled"
    record = await app.mock.wait_disconnected("far-cancel", timeout=5)
    assert record.completed_at is None


async def test_a_cancel_of_an_unknown_message_is_refused(app):
    async with raw_connect(app.url) as conn:
        await conn.send({"type": "cancel", "message_id": "msg_nobody"})
        refusal = await conn.recv()
    assert refusal["code"] == "unknown_message"
    assert "stream_id" not in refusal


async def test_a_hundred_streams_dropped_at_random_points_all_resume_byte_exact(app):
    rng = random.Random(1337)
    texts = {f"s{n}": f"stream {n} says " * rng.randint(5, 30) for n in range(100)}
    options = {"on_disconnect": "continue"}
    async with raw_connect(app.url) as conn:
        for sid, text in texts.items():
            await conn.start(sid, mock_request({"text": text, "tokens_per_s": 300}), options)
        started: set[str] = set()
        while len(started) < len(texts):
            frame = await conn.recv()
            if frame["type"] == "stream.started":
                started.add(frame["stream_id"])
        for _ in range(rng.randint(0, 800)):
            await conn.recv()
        drop(conn)
    seen = {sid: stream_frames(conn, sid) for sid in texts}
    open_ = {sid for sid, frames in seen.items() if frames[-1]["type"] != "finish"}
    assert open_, "the drop came after every stream had finished: nothing was resumed"
    async with raw_connect(app.url) as again:
        for sid in sorted(open_):
            await again.send(resume_frame(seen[sid][0]["message_id"], seen[sid][-1]["seq"], sid))
        resumed = await again.finishes(open_, timeout=30)
    for sid, frames in seen.items():
        rest = [f for f in resumed.get(sid, []) if "seq" in f]
        if sid in open_:
            assert_continues(frames, rest)
        assert stream_text(frames) + stream_text(rest) == texts[sid], sid


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_any_drop_point_and_any_resume_point_give_the_exact_rest(app, data):
    words = data.draw(st.integers(3, 40), label="words")
    text = "".join(f"w{n} " for n in range(words))
    options = {"on_disconnect": data.draw(st.sampled_from(["continue", "cancel"]))}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": text, "tokens_per_s": 400}), options)
        frames_before_drop = data.draw(st.integers(1, words + 3), label="drop after")
        for _ in range(frames_before_drop):
            frame = await conn.until(lambda f: f.get("stream_id") == "s1" and "seq" in f)
            if frame[-1]["type"] == "finish":
                break
        drop(conn)
    seen = stream_frames(conn, "s1")
    # A client may resume from before what it saw (it lost part of its own buffer).
    share = data.draw(st.integers(0, 100), label="resume after, percent of what was seen")
    kept = seen[: len(seen) * share // 100]  # what was seen depends on timing: draw a share
    last = kept[-1]["seq"] if kept else 0
    async with raw_connect(app.url) as again:
        await again.send(resume_frame(seen[0]["message_id"], last))
        answer = await again.until(lambda f: f.get("stream_id") == "r1")
        assert answer[-1]["type"] == "stream.resumed"
        ended = answer[-1]["state"] == "ended" and last >= answer[-1]["top_seq"]
        if not ended:
            await again.finishes({"r1"})
    rest = stream_frames(again, "r1")
    expected = 1
    for frame in kept + rest:  # gapless from 1, no repeat (a coalesced frame covers a run)
        assert frame.get("first_seq", frame["seq"]) == expected, (expected, frame)
        expected = frame["seq"] + 1
    assert [f["type"] for f in kept + rest].count("finish") == 1
    produced = stream_text(kept + rest)
    if (kept + rest)[-1]["reason"] == "stop":
        assert produced == text
    else:
        assert text.startswith(produced)


async def test_a_keyed_start_whose_client_left_during_the_claim_does_not_block_its_retry(
    start_app, monkeypatch
):
    class SlowClaims(MemoryStore):  # the claim's answer takes a round trip, as with Redis
        async def claim(
            self, key: str, fingerprint: str, message_id: str, epoch: str, principal: str = ""
        ) -> Claim:
            claim = await super().claim(key, fingerprint, message_id, epoch, principal)
            await asyncio.sleep(0.1)
            return claim

    build = app_module.build_store
    monkeypatch.setattr(app_module, "build_store", lambda s: SlowClaims(build(s).limits))
    app = await start_app()
    request, options = (
        mock_request({"text": "hello there", "tag": "ghost"}),
        {"idempotency_key": "k"},
    )
    async with raw_connect(app.url) as conn:
        await conn.start("s1", request, options)
        await asyncio.sleep(0.02)  # the claim is in flight
        drop(conn)
    await asyncio.sleep(0.3)
    async with raw_connect(app.url) as conn:  # the retry: same key, same request
        await conn.start("s1", request, options)
        frames = (await conn.finishes({"s1"}, timeout=5))["s1"]
    assert stream_text(frames) == "hello there"
    assert len(app.mock.find_all("ghost")) == 1


async def test_a_claim_that_failed_after_it_was_taken_is_undone_so_its_retry_runs(
    start_app, monkeypatch
):
    class LostAnswer(MemoryStore):  # takes the claim, then loses the answer (a timeout)
        failed = False

        async def claim(
            self, key: str, fingerprint: str, message_id: str, epoch: str, principal: str = ""
        ) -> Claim:
            claim = await super().claim(key, fingerprint, message_id, epoch, principal)
            if not self.failed:
                self.failed = True
                raise StoreUnavailable("the answer was lost")
            return claim

    build = app_module.build_store
    monkeypatch.setattr(app_module, "build_store", lambda s: LostAnswer(build(s).limits))
    app = await start_app()
    request = mock_request({"text": "second time", "tag": "lost-answer"})
    options = {"idempotency_key": "k"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", request, options)
        refusal = (await conn.until(lambda f: f.get("stream_id") == "s1"))[-1]
        assert (refusal["code"], refusal["retryable"]) == ("store_unavailable", True)
        await asyncio.sleep(0.05)  # the undo runs in the background
        await conn.start("s1", request, options)
        frames = (await conn.finishes({"s1"}, timeout=5))["s1"]
    assert stream_text(frames) == "second time"
    assert len(app.mock.find_all("lost-answer")) == 1
