"""Client-side tools end to end: a turn ends in calls, the client answers, the next turn runs.

Against a real gateway and the built-in mock in each of its four dialects: the mock's
multi-turn scripts check (`expect_tool_results`) that the results reached the provider in
its own request shape, so a wrong translation fails the second turn with HTTP 400.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from e2e_helpers import assert_gapless, drop, mock_request, raw_connect, stream_frames, stream_text

from wsgate.app import MOCK_ROUTES

MODELS = sorted(MOCK_ROUTES)
LOOP = {"agent": {"client_tools": True}}


def call_id(model: str, turn: int, k: int) -> str:
    return f"{'toolu' if model == 'mock-anthropic' else 'call'}_mock_{turn}_{k}"


def weather_script(model: str, **extra: Any) -> dict:
    """Turn 0 calls two tools in parallel; turn 1 answers once it got both results."""
    return {
        "turns": [
            {
                "text": "Let me look.",
                "tool_calls": [
                    {"name": "weather", "arguments": '{"city": "Paris"}'},
                    {"name": "clock", "arguments": "{}"},
                ],
            },
            {
                "text": "Sunny, 21 °C at noon.",
                "expect_tool_results": {
                    call_id(model, 0, 0): {"temp_c": 21},
                    call_id(model, 0, 1): "12:00",
                },
            },
        ],
        **extra,
    }


def of_type(frames: list[dict], kind: str) -> list[dict]:
    return [frame for frame in frames if frame["type"] == kind]


def result(stream_id: str, call: str, content: Any = None, **extra: Any) -> dict:
    frame = {"type": "tool_result", "stream_id": stream_id, "call_id": call, **extra}
    if "error" not in extra:
        frame["content"] = content
    return frame


async def answer_weather(conn, sid: str, awaiting: dict) -> None:
    weather, clock = awaiting["call_ids"]
    await conn.send(result(sid, weather, {"temp_c": 21}))
    await conn.send(result(sid, clock, "12:00"))


@pytest.mark.parametrize("model", MODELS)
async def test_every_dialect_runs_a_client_tool_round_trip_with_parallel_calls(app, model):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(weather_script(model), model=model), LOOP)
        (*_, awaiting) = await conn.until(lambda f: f["type"] == "tool.awaiting")
        assert awaiting["call_ids"] == [call_id(model, 0, 0), call_id(model, 0, 1)]
        assert awaiting["turn"] == 1
        await answer_weather(conn, "s1", awaiting)
        frames = (await conn.finishes({"s1"}))["s1"]
    assert_gapless(frames)
    assert stream_text(frames) == "Let me look.Sunny, 21 °C at noon."
    assert [f["source"] for f in of_type(frames, "tool.result")] == ["client", "client"]
    assert [f["turn"] for f in of_type(frames, "turn.started")] == [2]
    assert len(of_type(frames, "tool_call.end")) == 2
    assert len(of_type(frames, "finish")) == 1
    assert frames[-1]["reason"] == "stop"
    assert len(of_type(frames, "stream.started")) == 1


async def test_a_wrong_result_reaches_the_mock_and_fails_the_second_turn(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(weather_script("mock")), LOOP)
        (*_, awaiting) = await conn.until(lambda f: f["type"] == "tool.awaiting")
        weather, clock = awaiting["call_ids"]
        await conn.send(result("s1", weather, {"temp_c": 22}))
        await conn.send(result("s1", clock, "12:00"))
        frames = (await conn.finishes({"s1"}))["s1"]
    error = of_type(frames, "error")[-1]
    assert error["code"] == "upstream_rejected"
    assert frames[-1]["reason"] == "error"


async def test_unknown_and_duplicate_results_are_refused_and_other_streams_stay_exact(app):
    text = "other stream " * 30
    async with raw_connect(app.url) as conn:
        await conn.start("o1", mock_request({"text": text, "chunk": 3, "tokens_per_s": 400}))
        await conn.start("s1", mock_request(weather_script("mock")), LOOP)
        (*_, awaiting) = await conn.until(lambda f: f["type"] == "tool.awaiting")
        weather, clock = awaiting["call_ids"]
        await conn.send(result("s1", "call_nobody", 1))
        unknown = (await conn.until(lambda f: f["type"] == "error" and "seq" not in f))[-1]
        assert unknown["code"] == "unknown_tool_call"
        assert unknown["stream_id"] == "s1"
        await conn.send(result("s1", weather, {"temp_c": 21}))
        await conn.send(result("s1", weather, {"temp_c": 99}))
        duplicate = (await conn.until(lambda f: f["type"] == "error" and "seq" not in f))[-1]
        assert duplicate["code"] == "duplicate_tool_result"
        await conn.send(result("s1", clock, "12:00"))
        frames = await conn.finishes({"s1", "o1"})
    assert frames["s1"][-1]["reason"] == "stop"  # the mock saw the first result, not the 99
    assert len(of_type(frames["s1"], "tool.result")) == 2
    assert stream_text(frames["o1"]) == text
    assert_gapless(frames["o1"])


async def test_results_that_do_not_come_in_time_end_the_stream_with_tool_timeout(app):
    options = {"agent": {"client_tools": True, "tool_timeout_ms": 300}}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(weather_script("mock")), options)
        await conn.until(lambda f: f["type"] == "tool.awaiting")
        frames = (await conn.finishes({"s1"}, timeout=5.0))["s1"]
        error, finish = frames[-2:]
        assert error["code"] == "tool_timeout"
        assert finish["reason"] == "timeout"
        await conn.send(result("s1", call_id("mock", 0, 0), 1))
        late = (await conn.until(lambda f: f["type"] == "error" and "seq" not in f))[-1]
        assert late["code"] == "unknown_stream"


async def test_a_cancel_while_results_are_awaited_finishes_cancelled(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(weather_script("mock")), LOOP)
        await conn.until(lambda f: f["type"] == "tool.awaiting")
        await conn.send({"type": "cancel", "stream_id": "s1"})
        frames = (await conn.finishes({"s1"}))["s1"]
    assert frames[-1]["reason"] == "cancelled"
    assert_gapless(frames)


async def test_max_steps_ends_a_loop_that_keeps_calling_tools_with_a_typed_error(app):
    looping = {"turns": [{"text": "", "tool_calls": [{"name": "t"}]} for _ in range(3)]}
    options = {"agent": {"client_tools": True, "max_steps": 2}}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(looping), options)
        (*_, awaiting) = await conn.until(lambda f: f["type"] == "tool.awaiting")
        await conn.send(result("s1", awaiting["call_ids"][0], "ok"))
        frames = (await conn.finishes({"s1"}))["s1"]
    error, finish = frames[-2:]
    assert error["code"] == "max_steps_exceeded"
    assert finish["reason"] == "error"
    assert len(of_type(frames, "tool.awaiting")) == 1
    assert len(of_type(frames, "tool_call.end")) == 2  # the last turn's call shown, not run


async def test_a_client_that_drops_while_results_are_awaited_resumes_and_answers(app):
    options = {"agent": {"client_tools": True}, "on_disconnect": "continue"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(weather_script("mock")), options)
        (*_, awaiting) = await conn.until(lambda f: f["type"] == "tool.awaiting")
        before = stream_frames(conn, "s1")
        drop(conn)
    await asyncio.sleep(0.1)
    message_id = before[0]["message_id"]
    async with raw_connect(app.url) as conn:
        resume = {"type": "resume", "message_id": message_id, "stream_id": "r1"}
        await conn.send({**resume, "last_seq": before[-1]["seq"]})
        await conn.until(lambda f: f["type"] == "stream.resumed")
        await answer_weather(conn, "r1", awaiting)
        await conn.finishes({"r1"})
        after = stream_frames(conn, "r1")
    assert stream_text(before + after) == "Let me look.Sunny, 21 °C at noon."
    assert after[0]["seq"] == before[-1]["seq"] + 1
    assert after[-1]["reason"] == "stop"


async def test_a_followers_result_for_a_generation_that_ended_is_refused(app):
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "done"}))
        frames = (await conn.finishes({"s1"}))["s1"]
    async with raw_connect(app.url) as conn:
        resume = {"type": "resume", "message_id": frames[0]["message_id"], "stream_id": "r1"}
        await conn.send({**resume, "last_seq": frames[-1]["seq"]})
        await conn.until(lambda f: f["type"] == "stream.resumed")
        await conn.send(result("r1", "call_x", 1))
        refusal = (await conn.until(lambda f: f["type"] == "error" and "seq" not in f))[-1]
    assert refusal["code"] in {"unknown_tool_call", "unknown_stream"}


async def test_a_keyed_retry_that_sends_its_result_at_once_continues_the_generation(app):
    script = {"turns": [{"text": "A.", "tool_calls": [{"name": "t"}]}, {"text": "B."}]}
    options = {**LOOP, "on_disconnect": "continue", "idempotency_key": "k-tools"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), options)
        (*_, awaiting) = await conn.until(lambda f: f["type"] == "tool.awaiting")
        drop(conn)
    async with raw_connect(app.url) as conn:
        await conn.start("s2", mock_request(script), options)  # attaches: same key, request
        await conn.send(result("s2", awaiting["call_ids"][0], "x"))  # before any frame of it
        frames = (await conn.finishes({"s2"}))["s2"]
    assert stream_text(frames) == "A.B."
    assert frames[-1]["reason"] == "stop"
    assert [f for f in conn.received if f["type"] == "error"] == []


async def test_a_turn_whose_end_comes_with_the_end_of_the_body_still_awaits_results(app):
    script = {
        "turns": [{"text": "A.", "tool_calls": [{"name": "t"}], "done": False}, {"text": "B."}]
    }  # no `data: [DONE]`: the turn ends when the body does
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), LOOP)
        (*_, awaiting) = await conn.until(lambda f: f["type"] == "tool.awaiting")
        await conn.send(result("s1", awaiting["call_ids"][0], "x"))
        frames = (await conn.finishes({"s1"}))["s1"]
    assert_gapless(frames)
    assert of_type(frames, "error") == []
    assert stream_text(frames) == "A.B."
