"""The AI SDK transport's agent loop (wsgate/web/wsgate-ai-sdk.js `tools`) with the real `ai`.

Each test starts a gateway on 127.0.0.1 (the built-in mock, whose multi-turn scripts check
the results they get) and runs one test of tests/web/js/ai_sdk_agent_loop.test.mjs by name,
with the pinned `ai` (the `ai_sdk` fixture); every frame the client sent and received is
validated against the protocol's schemas, and the Python side checks the wire.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from web_helpers import INSTALL_TIMEOUT_S, JS_DIR, run_gateway_test

from wsgate.app import App

LOOP_TESTS = JS_DIR / "ai_sdk_agent_loop.test.mjs"

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 60)  # the first test may install


async def run_loop_test(name: str, ai_sdk: Path, app: App | None = None):
    return await run_gateway_test(LOOP_TESTS, name, app, WSGATE_AI_SDK=str(ai_sdk))


def sent(run, kind: str) -> list[dict[str, Any]]:
    return [frame for frame in run.sent() if frame["type"] == kind]


async def test_the_agent_loop_frames_map_to_tool_outputs_and_steps(ai_sdk):
    await run_loop_test("the agent loop's frames map to tool outputs and a step per turn", ai_sdk)


async def test_a_chat_with_tools_runs_the_loop_on_one_stream(ai_sdk, start_app):
    app = await start_app()
    run = await run_loop_test(
        "a chat with tools runs the loop on one stream into one assistant message", ai_sdk, app
    )
    (start,) = sent(run, "start")
    assert start["options"] == {"on_disconnect": "continue", "agent": {"client_tools": True}}
    results = sent(run, "tool_result")  # in the order the handlers finished
    assert sorted((f["stream_id"], f["call_id"]) for f in results) == [
        (start["stream_id"], "call_mock_0_0"),
        (start["stream_id"], "call_mock_0_1"),
    ]


async def test_a_failing_tool_becomes_the_tool_parts_error(ai_sdk, start_app):
    app = await start_app()
    run = await run_loop_test(
        "a failing tool becomes the tool part's error and the loop goes on", ai_sdk, app
    )
    (weather,) = [f for f in sent(run, "tool_result") if f["call_id"] == "call_mock_0_0"]
    assert weather["error"] == {"code": "tool_error", "message": "no network"}
