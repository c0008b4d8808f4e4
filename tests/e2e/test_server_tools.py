"""Server-side tools end to end: the gateway runs each call once and loops to the answer.

A real gateway whose models are the built-in mock (four dialects), whose `[tools.NAME]`
call a second mock's tool backend (`MockProvider.tools`, counting calls per call id); the
mock's multi-turn scripts check the results the second turn received. Nested model tools
call the gateway's own mock and must never show on the user's stream.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from typing import Any

import pytest
from e2e_helpers import assert_gapless, drop, mock_request, raw_connect, stream_frames, stream_text

from wsgate import log as wsgate_log
from wsgate.app import MOCK_ROUTES
from wsgate.mock import MockProvider

MODELS = sorted(MOCK_ROUTES)
SCHEMA = '{ type = "object", properties = { city = { type = "string" } } }'


def tools_toml(mock: MockProvider, **tools: dict[str, Any]) -> str:
    """`[tools.NAME]` tables: each a dict of settings, `url` filled from the mock's backend."""
    out = []
    for name, settings in tools.items():
        merged = {"parameters": None, **settings}
        lines = [f"[tools.{name}]"]
        for key, value in merged.items():
            if key == "parameters":
                lines.append(f"parameters = {SCHEMA}")
            elif key == "query":
                lines.append(f'url = "{mock.tool_url(name, **value)}"')
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        if "query" not in merged and merged.get("kind", "http") == "http":
            lines.append(f'url = "{mock.tool_url(name)}"')
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def call_id(model: str, turn: int, k: int) -> str:
    return f"{'toolu' if model == 'mock-anthropic' else 'call'}_mock_{turn}_{k}"


def of_type(frames: list[dict], kind: str) -> list[dict]:
    return [frame for frame in frames if frame["type"] == kind]


def loop(*names: str, **extra: Any) -> dict:
    return {"agent": {"server_tools": list(names), **extra}}


def two_turns(first_calls: list[dict], answer: str, expect: Any = None, **turn2: Any) -> dict:
    second: dict[str, Any] = {"text": answer, **turn2}
    if expect is not None:
        second["expect_tool_results"] = expect
    return {"turns": [{"text": "Checking.", "tool_calls": first_calls}, second]}


@pytest.fixture
async def tool_app(start_app, mock: MockProvider):
    async def make(**tools: dict[str, Any]):
        return await start_app(tools_toml(mock, **tools))

    return make


@pytest.mark.parametrize("model", MODELS)
async def test_every_dialect_runs_parallel_server_tools_once_and_answers(tool_app, mock, model):
    app = await tool_app(
        weather={"query": {"result": {"temp_c": 21}}}, clock={"query": {"result": "12:00"}}
    )
    ids = [call_id(model, 0, 0), call_id(model, 0, 1)]
    script = two_turns(
        [{"name": "weather", "arguments": '{"city": "Paris"}'}, {"name": "clock"}],
        "Sunny at noon.",
        {ids[0]: {"temp_c": 21}, ids[1]: "12:00"},
    )
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script, model=model), loop("weather", "clock"))
        frames = (await conn.finishes({"s1"}))["s1"]
    assert_gapless(frames)
    assert stream_text(frames) == "Checking.Sunny at noon."
    assert sorted(f["call_id"] for f in of_type(frames, "tool.executing")) == ids
    results = {f["call_id"]: f for f in of_type(frames, "tool.result")}
    assert results[ids[0]]["content"] == {"temp_c": 21}
    assert results[ids[1]]["content"] == "12:00"
    assert {f["source"] for f in results.values()} == {"server"}
    assert frames[-1]["reason"] == "stop"
    assert [mock.tools.count(call_id=i) for i in ids] == [1, 1]
    accounting = app.gateway.shared.accounting
    assert (accounting.tool_calls["ok"], accounting.agent_turns) == (2, 1)


async def test_a_retry_of_the_second_turn_before_its_first_token_runs_no_tool_again(tool_app, mock):
    app = await tool_app(weather={"query": {"result": 21}})
    script = two_turns(
        [{"name": "weather", "arguments": "{}"}],
        "Warm.",
        [21],
        status=503,
        fail_first=1,
        tag="retry-turn",
    )
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), loop("weather"))
        frames = (await conn.finishes({"s1"}))["s1"]
    assert frames[-1]["reason"] == "stop"
    assert stream_text(frames) == "Checking.Warm."
    assert len(app.mock.find_all("retry-turn")) == 2  # turn 2 refused, turn 2 again
    assert mock.tools.count("weather") == 1


async def test_a_client_that_drops_during_the_tool_call_resumes_and_the_tool_ran_once(
    tool_app, mock
):
    app = await tool_app(weather={"query": {"result": 21, "delay_ms": 600}})
    script = two_turns([{"name": "weather"}], "It is 21.", [21])
    options = {**loop("weather"), "on_disconnect": "continue"}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), options)
        await conn.until(lambda f: f["type"] == "tool.executing")
        before = stream_frames(conn, "s1")
        drop(conn)
    async with raw_connect(app.url) as conn:
        resume = {"type": "resume", "message_id": before[0]["message_id"], "stream_id": "r1"}
        await conn.send({**resume, "last_seq": before[-1]["seq"]})
        await conn.finishes({"r1"})
        after = stream_frames(conn, "r1")
    assert stream_text(before + after) == "Checking.It is 21."
    assert after[0]["seq"] == before[-1]["seq"] + 1
    assert after[-1]["reason"] == "stop"
    assert mock.tools.count("weather") == 1


async def test_a_cancel_during_the_tool_call_closes_the_tools_connection(tool_app, mock):
    app = await tool_app(weather={"query": {"result": 1, "delay_ms": 10_000}})
    script = two_turns([{"name": "weather"}], "never")
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), loop("weather"))
        await conn.until(lambda f: f["type"] == "tool.executing")
        await mock.tools.wait_for(lambda tools: tools.count("weather") == 1, timeout=5)
        await conn.send({"type": "cancel", "stream_id": "s1"})
        frames = (await conn.finishes({"s1"}))["s1"]
    assert frames[-1]["reason"] == "cancelled"
    assert of_type(frames, "tool.result") == []

    def disconnected(tools) -> bool:
        return any(r.disconnected_at is not None for r in tools.records.values())

    await mock.tools.wait_for(disconnected, timeout=5)
    assert mock.tools.count("weather") == 1


@pytest.mark.parametrize(
    ("query", "settings", "code"),
    [
        ({"result": 1, "delay_ms": 3000}, {"timeout_s": 0.3}, "tool_timeout"),
        ({"status": 500}, {}, "tool_failed"),
        ({"invalid_json": True}, {}, "tool_invalid_response"),
        ({"body_bytes": 5000}, {"max_response_bytes": 4096}, "tool_response_too_large"),
    ],
)
async def test_a_failing_tool_is_a_typed_result_the_model_reads_and_other_streams_stay_exact(
    tool_app, mock, query, settings, code
):
    app = await tool_app(weather={"query": query, **settings})
    script = two_turns([{"name": "weather"}], "Sorry, no weather.")
    other = "unaffected " * 40
    async with raw_connect(app.url) as conn:
        await conn.start("o1", mock_request({"text": other, "chunk": 2, "tokens_per_s": 300}))
        await conn.start("s1", mock_request(script), loop("weather"))
        frames = await conn.finishes({"s1", "o1"})
    (result,) = of_type(frames["s1"], "tool.result")
    assert result["error"]["code"] == code
    assert "content" not in result
    assert frames["s1"][-1]["reason"] == "stop"
    assert stream_text(frames["s1"]) == "Checking.Sorry, no weather."
    assert stream_text(frames["o1"]) == other
    assert_gapless(frames["o1"])
    assert mock.tools.count("weather") == 1
    second = app.mock.records[list(app.mock.records)[-1]]
    assert second.turn == 1
    (sent,) = second.tool_results
    assert json.loads(sent.content)["error"]["code"] == code
    assert app.gateway.shared.accounting.tool_calls == {code: 1}


async def test_max_steps_stops_a_model_that_keeps_calling_a_server_tool(tool_app, mock):
    app = await tool_app(weather={"query": {"result": 1}})
    looping = {"turns": [{"text": "", "tool_calls": [{"name": "weather"}]} for _ in range(4)]}
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(looping), loop("weather", max_steps=3))
        frames = (await conn.finishes({"s1"}))["s1"]
    error, finish = frames[-2:]
    assert (error["code"], finish["reason"]) == ("max_steps_exceeded", "error")
    assert mock.tools.count("weather") == 2  # turns 1 and 2 ran theirs; turn 3's is not run
    assert [f["turn"] for f in of_type(frames, "turn.started")] == [2, 3]


async def test_a_server_tool_that_is_not_configured_is_refused_at_start(tool_app):
    app = await tool_app(weather={})
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "x"}), loop("nope"))
        (refusal,) = await conn.until(lambda f: f.get("stream_id") == "s1")
    assert refusal["code"] == "bad_request"


NESTED_PROMPT = '{{"mock": {{"text": "Cats purr and sleep {hours} hours a day."}}}}'


async def test_a_nested_model_call_is_the_tools_result_and_never_on_the_users_stream(tool_app):
    app = await tool_app(
        summarise={"kind": "model", "model": "mock", "prompt": NESTED_PROMPT, "parameters": None}
    )
    summary = "Cats purr and sleep 16 hours a day."
    script = two_turns(
        [{"name": "summarise", "arguments": '{"hours": 16}'}], "Here it is.", [summary]
    )
    lines = io.StringIO()
    wsgate_log.configure(stream=lines)
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), loop("summarise"))
        frames = (await conn.finishes({"s1"}))["s1"]
    (result,) = of_type(frames, "tool.result")
    assert result["content"] == summary
    assert stream_text(frames) == "Checking.Here it is."  # the nested answer is not a delta
    assert len(of_type(frames, "stream.started")) == 1
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    nested = [r for r in records if "internal_stream_id" in r]
    assert {r["event"] for r in nested} >= {"nested_call_started", "nested_call_finished"}
    assert {r["message_id"] for r in nested} == {frames[0]["message_id"]}
    assert all(r.get("stream_id") != "s1" for r in nested)
    assert len({r["internal_stream_id"] for r in nested}) == 1
    assert not any(r["internal_stream_id"] == "s1" for r in nested)
    accounting = app.gateway.shared.accounting
    assert (accounting.nested_calls, accounting.streams_started) == ({"ok": 1}, 1)
    (called,) = [r for r in records if r["event"] == "tool_called"]  # the user's line links it
    assert called["stream_id"] == "s1"
    assert called["nested_call"] == nested[0]["internal_stream_id"]
    assert {r["call_id"] for r in nested} == {called["call_id"]}


async def test_a_nested_model_call_with_an_argument_the_prompt_lacks_is_a_typed_result(
    tool_app,
):
    app = await tool_app(
        summarise={"kind": "model", "model": "mock", "prompt": "{missing}", "parameters": None}
    )
    script = two_turns([{"name": "summarise", "arguments": "{}"}], "Could not.")
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), loop("summarise"))
        frames = (await conn.finishes({"s1"}))["s1"]
    (result,) = of_type(frames, "tool.result")
    assert result["error"]["code"] == "tool_bad_arguments"
    assert frames[-1]["reason"] == "stop"


async def test_parallel_streams_share_a_tools_concurrency_cap(tool_app, mock):
    app = await tool_app(weather={"query": {"result": 1, "delay_ms": 300}, "max_concurrency": 1})
    script = two_turns([{"name": "weather", "id": "x"}], "ok")
    async with raw_connect(app.url) as conn:
        for sid in ("a", "b", "c"):
            request = mock_request({**script, "tag": sid})
            request["messages"][0]["content"] = request["messages"][0]["content"].replace(
                '"id": "x"', f'"id": "call_{sid}"'
            )
            await conn.start(sid, request, loop("weather"))
        started = asyncio.get_running_loop().time()
        frames = await conn.finishes({"a", "b", "c"})
        elapsed = asyncio.get_running_loop().time() - started
    assert all(f[-1]["reason"] == "stop" for f in frames.values())
    records = sorted(mock.tools.records.values(), key=lambda r: r.started_at)
    for first, second in itertools.pairwise(records):
        assert second.started_at >= first.completed_at - 0.01  # one at a time
    assert elapsed >= 0.8


@pytest.mark.parametrize("prompt", ["n={hours[0]}", "{hours:>3}", "{hours.real.x}"])
async def test_a_prompt_the_arguments_do_not_fit_is_tool_bad_arguments(tool_app, prompt):
    app = await tool_app(
        summarise={"kind": "model", "model": "mock", "prompt": prompt, "parameters": None}
    )
    script = two_turns([{"name": "summarise", "arguments": '{"hours": [1]}'}], "No.")
    if prompt != "n={hours[0]}":
        script["turns"][0]["tool_calls"][0]["arguments"] = '{"hours": {"a": 1}}'
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request(script), loop("summarise"))
        frames = (await conn.finishes({"s1"}))["s1"]
    if prompt == "n={hours[0]}":
        (result,) = of_type(frames, "tool.result")
        assert "error" not in result  # a list indexes: it fits
    else:
        (result,) = of_type(frames, "tool.result")
        assert result["error"]["code"] == "tool_bad_arguments"
    assert frames[-1]["reason"] == "stop"
