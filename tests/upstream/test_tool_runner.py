"""The server-side tool runner's ledger rules: a call already running or done is never run."""

from __future__ import annotations

import gzip

import msgspec
import pytest
from aiohttp import web
from e2e_helpers import serving

from wsgate.core.agent import ToolCall
from wsgate.core.errors import StoreUnavailable
from wsgate.core.frames import ToolError
from wsgate.mock import MockProvider
from wsgate.store.memory import MemoryStore
from wsgate.upstream.client import Timeouts, UpstreamClient
from wsgate.upstream.tools import HttpTool, ToolRunner

CALL = ToolCall("c1", "weather", {"city": "Paris"}, server=True, turn=1)
KEY = "m1:1:c1"


@pytest.fixture
async def runner(mock: MockProvider):
    store = MemoryStore(node_id="node-a")
    await store.start()
    upstream = UpstreamClient({}, Timeouts(1.0, 1.0, 1.0))
    spec = HttpTool(mock.tool_url("weather", result={"t": 1}), {"x-key": "k"}, 2.0, 2, 4096)
    tools = ToolRunner({"weather": spec}, store, upstream)
    await tools.start()
    yield tools, store
    await tools.close()
    await store.close()


async def test_a_call_runs_once_and_a_second_ask_gets_the_recorded_result(runner, mock):
    tools, store = runner
    assert await tools.run("m1", CALL) == ({"t": 1}, None)
    assert await tools.run("m1", CALL) == ({"t": 1}, None)
    assert mock.tools.count(call_id="c1") == 1
    assert await store.tool_claim(KEY) == b'done {"content":{"t":1}}'


async def test_the_tool_gets_the_arguments_its_headers_and_the_ledger_key(runner, mock):
    tools, _ = runner
    await tools.run("m1", CALL)
    (record,) = mock.tools.records.values()
    assert record.arguments == {"city": "Paris"}
    assert record.call_id == "c1"


async def test_a_call_found_running_elsewhere_is_an_unknown_outcome_and_is_not_run(runner, mock):
    tools, store = runner
    other = MemoryStore(node_id="node-b")
    await other.start()
    assert await store.tool_claim(KEY) is None  # as if a node that died had claimed it
    content, error = await tools.run("m1", CALL)
    assert content is None
    assert error is not None
    assert error.code == "tool_outcome_unknown"
    assert mock.tools.count("weather") == 0
    await other.close()


async def test_a_recorded_error_is_given_back_as_that_error(runner, mock):
    tools, store = runner
    assert await store.tool_claim(KEY) is None
    record = {"error": msgspec.to_builtins(ToolError("tool_failed", "HTTP 500"))}
    await store.tool_done(KEY, msgspec.json.encode(record))
    assert await tools.run("m1", CALL) == (None, ToolError("tool_failed", "HTTP 500"))
    assert mock.tools.count("weather") == 0


async def test_a_ledger_that_cannot_answer_runs_nothing(runner, mock, monkeypatch):
    tools, store = runner

    async def down(_key: str) -> bytes | None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(store, "tool_claim", down)
    _, error = await tools.run("m1", CALL)
    assert error is not None
    assert error.code == "tool_unavailable"
    assert mock.tools.count("weather") == 0


async def test_the_same_call_id_in_another_turn_is_another_call(runner, mock):
    tools, _ = runner
    await tools.run("m1", CALL)
    await tools.run("m1", ToolCall("c1", "weather", {}, server=True, turn=2))
    assert mock.tools.count(call_id="c1") == 2


async def test_a_redirect_is_a_failure_and_the_secret_headers_go_nowhere_else(mock):
    seen: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.headers.get("x-key", ""))
        return web.json_response({"stolen": True})

    async with serving(elsewhere) as other:

        async def redirect(_request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{other}/grab")

        async with serving(redirect) as root:
            store = MemoryStore(node_id="node-a")
            await store.start()
            spec = HttpTool(f"{root}/tool", {"x-key": "secret"}, 2.0, 1, 4096)
            tools = ToolRunner({"weather": spec}, store, UpstreamClient({}, Timeouts(1, 1, 1)))
            await tools.start()
            try:
                content, error = await tools.run("m1", CALL)
            finally:
                await tools.close()
                await store.close()
    assert content is None
    assert error is not None
    assert error.code == "tool_failed"
    assert seen == []


async def test_a_compressed_answer_is_not_expanded_past_the_cap(mock):
    big = gzip.compress(b'"' + b"x" * 100_000 + b'"')

    async def gzipped(_request: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=big, headers=headers)

    async with serving(gzipped) as root:
        store = MemoryStore(node_id="node-a")
        await store.start()
        spec = HttpTool(f"{root}/tool", {}, 2.0, 1, 4096)
        tools = ToolRunner({"weather": spec}, store, UpstreamClient({}, Timeouts(1, 1, 1)))
        await tools.start()
        try:
            _, error = await tools.run("m1", CALL)
        finally:
            await tools.close()
            await store.close()
    assert error is not None
    assert error.code == "tool_invalid_response"  # gzip bytes are not JSON; never inflated


async def test_a_call_id_with_control_characters_reaches_the_tool_percent_encoded(runner, mock):
    tools, _ = runner
    call = ToolCall("a\r\nX-Evil: 1", "weather", {}, server=True, turn=1)
    assert await tools.run("m1", call) == ({"t": 1}, None)
    (record,) = mock.tools.records.values()
    assert record.call_id == "a%0D%0AX-Evil%3A%201"


async def test_a_failure_inside_the_runner_is_a_typed_result_and_is_recorded(
    runner, mock, monkeypatch
):
    tools, store = runner

    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(tools, "_http", broken)
    _, error = await tools.run("m1", CALL)
    assert error is not None
    assert error.code == "tool_failed"
    assert (await store.tool_claim(KEY) or b"").startswith(b"done ")


async def test_a_large_result_is_recorded_as_done_without_it(mock):
    store = MemoryStore(node_id="node-a")
    await store.start()
    spec = HttpTool(mock.tool_url("weather", body_bytes=20_000), {}, 2.0, 1, 1 << 20)
    tools = ToolRunner({"weather": spec}, store, UpstreamClient({}, Timeouts(1, 1, 1)))
    await tools.start()
    try:
        content, _ = await tools.run("m1", CALL)
        assert len(content) == 20_000 - 2
        again, error = await tools.run("m1", CALL)
    finally:
        await tools.close()
        await store.close()
    assert again is None
    assert error is not None
    assert error.code == "tool_outcome_unknown"
    assert mock.tools.count("weather") == 1
