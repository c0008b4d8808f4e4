"""The mock tool backend: the echo, each fault, the per-tool and per-call-id counts, records."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from wsgate.mock import MockProvider
from wsgate.mock.script import Script
from wsgate.mock.tools import INVALID_JSON_BODY, ToolScript


async def call(session, url, arguments=None, *, call_id=None, header="x-wsgate-call-id"):
    headers = {header: call_id} if call_id is not None else {}
    body = orjson.dumps({} if arguments is None else arguments)
    content_type = {"Content-Type": "application/json"}
    async with session.post(url, data=body, headers={**content_type, **headers}) as response:
        return response.status, response.headers, await response.read()


async def test_a_call_echoes_its_arguments_with_its_count_per_call_id(mock, session):
    url = mock.tool_url("weather")
    status, headers, raw = await call(session, url, {"city": "Paris"}, call_id="c1")
    assert (status, headers["Content-Type"], headers["x-mock-tool-call"]) == (
        200,
        "application/json",
        "tool-1",
    )
    assert json.loads(raw) == {
        "tool": "weather",
        "call_id": "c1",
        "arguments": {"city": "Paris"},
        "count": 1,
    }
    _, _, raw = await call(session, url, {"city": "Paris"}, call_id="c1", header="Idempotency-Key")
    assert json.loads(raw)["count"] == 2  # the same call, executed twice: the echo says so
    await call(session, url, {"city": "Rome"}, call_id="c2")
    _, _, raw = await call(session, url)
    assert json.loads(raw)["count"] == 4  # no call id: counted per tool name
    assert mock.tools.count("weather") == 4
    assert (mock.tools.count(call_id="c1"), mock.tools.count(call_id="c2")) == (2, 1)
    assert mock.tools.count("other") == 0
    assert mock.tools.count(call_id="c9") == 0
    assert mock.tools.find("c1").id == "tool-2"


def test_count_takes_exactly_one_of_a_name_and_a_call_id():
    tools = MockProvider().tools
    with pytest.raises(ValueError, match="a tool name or a call_id"):
        tools.count()
    with pytest.raises(ValueError, match="a tool name or a call_id"):
        tools.count("a", call_id="b")


async def test_a_slow_tool_answers_after_its_delay(mock, session):
    started = time.monotonic()
    status, _, raw = await call(session, mock.tool_url("slow", delay_ms=150), {"n": 1})
    assert time.monotonic() - started >= 0.15
    assert (status, json.loads(raw)["arguments"]) == (200, {"n": 1})
    record = mock.tools.records["tool-1"]
    assert (record.delay_ms, record.fault, record.completed_at is not None) == (150, None, True)


async def test_a_caller_leaving_a_slow_tool_is_recorded_and_still_counted(mock, session):
    url = mock.tool_url("slow", delay_ms=60_000)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await call(session, url, call_id="c1")
    await mock.tools.wait_for(lambda tools: tools.find("c1").disconnected_at is not None, 2.0)
    record = mock.tools.find("c1")
    assert record.completed_at is None
    assert mock.tools.count(call_id="c1") == 1  # a call counts once it arrives


async def test_a_scripted_status_is_that_status_with_a_json_error(mock, session):
    status, headers, raw = await call(session, mock.tool_url("f", status=500))
    assert (status, headers["Content-Type"]) == (500, "application/json")
    assert json.loads(raw) == {"error": "mock tool: scripted HTTP 500"}
    assert (mock.tools.records["tool-1"].status, mock.tools.records["tool-1"].fault) == (
        500,
        "status",
    )


async def test_invalid_json_is_a_200_json_answer_that_does_not_parse(mock, session):
    status, headers, raw = await call(session, mock.tool_url("f", invalid_json=True))
    assert (status, headers["Content-Type"], raw) == (200, "application/json", INVALID_JSON_BODY)
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


@pytest.mark.parametrize("size", [2, 3, 1_048_577])
async def test_body_bytes_is_a_json_string_of_exactly_that_many_bytes(mock, session, size):
    status, _, raw = await call(session, mock.tool_url("f", body_bytes=size))
    assert (status, len(raw)) == (200, size)
    assert json.loads(raw) == "x" * (size - 2)
    assert mock.tools.records["tool-1"].bytes == size


async def test_a_given_result_is_the_answer_byte_for_byte(mock, session):
    _, _, raw = await call(session, mock.tool_url("f", result={"temp_c": 21, "sky": None}))
    assert raw == b'{"temp_c":21,"sky":null}'
    _, _, raw = await call(session, mock.tool_url("f", result="plain words"))
    assert raw == b'"plain words"'


async def test_the_arguments_mock_object_overrides_the_query(mock, session):
    url = mock.tool_url("f", status=500, delay_ms=0)
    status, _, raw = await call(session, url, {"x": 1, "mock": {"status": 503}})
    assert (status, json.loads(raw)["error"]) == (503, "mock tool: scripted HTTP 503")
    assert mock.tools.records["tool-1"].arguments == {"x": 1, "mock": {"status": 503}}


@pytest.mark.parametrize(
    ("query", "arguments", "message"),
    [
        ({"colour": "red"}, {}, "Object contains unknown field `colour`"),
        ({"status": 200}, {}, "Expected `int` >= 400"),
        ({"body_bytes": 1}, {}, "Expected `int` >= 2"),
        ({"status": 500, "invalid_json": True}, {}, "status and invalid_json exclude each other"),
        ({"result": None, "body_bytes": 9}, {}, "body_bytes and result exclude each other"),
        ({}, {"mock": 3}, "the arguments' mock must be an object"),
    ],
)
async def test_a_malformed_tool_script_is_a_400_and_still_counted(
    mock, session, query, arguments, message
):
    status, _, raw = await call(session, mock.tool_url("f", **query), arguments)
    assert status == 400
    error = json.loads(raw)["error"]
    assert error.startswith("bad mock tool script: ")
    assert message in error
    assert (mock.tools.count("f"), mock.tools.records["tool-1"].fault) == (1, "bad_request")


async def test_a_body_that_is_not_json_is_a_400(mock, session):
    async with session.post(mock.tool_url("f"), data=b"{nope") as response:
        assert response.status == 400
        assert await response.json() == {"error": "mock tool: the request body is not JSON"}
    assert mock.tools.records["tool-1"].arguments is None


async def test_the_tools_endpoint_lists_counts_and_calls_and_delete_resets(mock, session):
    await call(session, mock.tool_url("a"), {"k": 1}, call_id="c1")
    await call(session, mock.tool_url("b", status=500), call_id="c2")
    async with session.get(mock.root_url + "/mock/tools") as response:
        listed = await response.json()
    assert (listed["by_name"], listed["by_call_id"]) == ({"a": 1, "b": 1}, {"c1": 1, "c2": 1})
    assert [(c["id"], c["name"], c["call_id"], c["status"]) for c in listed["calls"]] == [
        ("tool-1", "a", "c1", 200),
        ("tool-2", "b", "c2", 500),
    ]
    assert set(listed["calls"][0]) == {
        "id", "name", "call_id", "count", "started_at", "arguments", "fault", "delay_ms",
        "status", "bytes", "completed_at", "disconnected_at",
    }  # fmt: skip
    async with session.delete(mock.root_url + "/mock/tools") as response:
        assert await response.json() == {"ok": True}
    assert (mock.tools.records, mock.tools.by_name, mock.tools.by_call_id) == ({}, {}, {})


async def test_clearing_the_provider_records_leaves_the_tool_counts(mock, session):
    await call(session, mock.tool_url("a"), call_id="c1")
    async with session.delete(mock.root_url + "/mock/requests"):
        pass
    assert mock.tools.count(call_id="c1") == 1


def test_tool_url_writes_the_script_as_json_query_values():
    mock = MockProvider()
    mock.root_url = "http://127.0.0.1:9"
    assert mock.tool_url("get weather") == "http://127.0.0.1:9/tools/get%20weather"
    assert mock.tool_url("f", delay_ms=5, invalid_json=True, result="a b") == (
        "http://127.0.0.1:9/tools/f?delay_ms=5&invalid_json=true&result=a+b"
    )


async def test_stop_cancels_slow_tool_calls_promptly():
    mock = MockProvider()
    await mock.start()
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(call(session, mock.tool_url("slow", delay_ms=60_000)))
        await mock.tools.wait_for(lambda tools: tools.count("slow") == 1, 2.0)
        started = time.monotonic()
        await mock.stop()
        assert time.monotonic() - started < 2.0
        with pytest.raises(aiohttp.ClientError):
            await pending
    assert mock.tools.records["tool-1"].disconnected_at is None  # our stop, not the caller


def test_mock_md_documents_every_script_and_tool_script_key():
    page = (Path(__file__).parents[2] / "protocol" / "MOCK.md").read_text()
    first_cells = [line.split("|")[1] for line in page.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in cell.split("`")[1::2]}
    for struct in (Script, ToolScript):
        missing = set(struct.__struct_fields__) - documented
        assert not missing, f"{struct.__name__} keys missing from MOCK.md's tables: {missing}"
