"""The AI SDK transport, wsgate/web/wsgate-ai-sdk.js, driving the real `ai` package's chat.

The session installs the pinned `ai` (and `typescript`, for the declarations) from the npm
registry once (`web_helpers.install_npm_packages`, the `ai_sdk` fixture). Each test starts
a gateway on 127.0.0.1 (port 0, the built-in mock) and runs one test of
tests/web/js/ai_sdk.test.mjs against it by name, with `WSGATE_AI_SDK` naming the install;
the Python side then checks what only it can see (the mock's records of provider
disconnects) and validates every frame the client sent and received against the protocol's
schemas.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from web_helpers import (
    INSTALL_TIMEOUT_S,
    JS_DIR,
    WEB_DIR,
    node_binary,
    run_after_one_drop,
    run_gateway_test,
    tsc_binary,
)

from wsgate.app import App

AI_SDK_TESTS = JS_DIR / "ai_sdk.test.mjs"

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 60)  # the first test may install


async def run_ai_test(name: str, ai_sdk: Path, app: App | None = None, control=None):
    """Run one Node test of the transport (`web_helpers.run_gateway_test`) with `ai` at hand."""
    return await run_gateway_test(AI_SDK_TESTS, name, app, control, WSGATE_AI_SDK=str(ai_sdk))


def starts(run) -> list[dict[str, Any]]:
    return [frame for frame in run.sent() if frame["type"] == "start"]


# --- pure parts (no gateway) --------------------------------------------------------------


async def test_ui_messages_become_openai_shaped_wire_messages(ai_sdk):
    await run_ai_test("UI messages become the wire's OpenAI shaped messages", ai_sdk)


async def test_gateway_frames_map_to_ui_message_chunks_one_to_one(ai_sdk):
    await run_ai_test("gateway frames map to UI message chunks one to one", ai_sdk)


async def test_a_structured_section_closes_the_text_before_it(ai_sdk):
    await run_ai_test(
        "a structured section closes the text before it, so the parts keep the answer's order",
        ai_sdk,
    )


async def test_a_cancel_from_elsewhere_finishes_the_chat_message_and_is_no_abort(ai_sdk):
    await run_ai_test("a cancel from elsewhere finishes the chat's message; it is no abort", ai_sdk)


async def test_stop_while_the_first_connect_stalls_ends_the_request_at_once(ai_sdk):
    await run_ai_test("stop while the first connect stalls ends the request at once", ai_sdk)


def test_the_declarations_name_every_export_of_the_module():
    js = (WEB_DIR / "wsgate-ai-sdk.js").read_text(encoding="utf-8")
    dts = (WEB_DIR / "wsgate-ai-sdk.d.ts").read_text(encoding="utf-8")
    exports = re.compile(r"^export (?:async )?(?:function|class|const) (\w+)", re.MULTILINE)
    declarations = re.compile(r"^export declare (?:function|class|const) (\w+)", re.MULTILINE)
    exported = set(exports.findall(js))
    declared = set(declarations.findall(dts))
    assert exported == declared
    assert "WsgateChatTransport" in exported


async def test_the_declarations_make_a_chat_transport_of_the_pinned_ai(ai_sdk, tmp_path):
    """tsc --strict: WsgateChatTransport is an ai ChatTransport, its chunks UIMessageChunks."""
    for name in ("wsgate-ai-sdk.d.ts", "wsgate.d.ts", "protocol.d.ts"):
        shutil.copy(WEB_DIR / name, tmp_path / name)
    (tmp_path / "node_modules").symlink_to(ai_sdk / "node_modules")
    (tmp_path / "check.ts").write_text(
        'import type { ChatTransport, UIMessage, UIMessageChunk } from "ai";\n'
        'import { WsgateChatTransport, type WsgateUIMessageChunk } from "./wsgate-ai-sdk.js";\n'
        "export const transport: ChatTransport<UIMessage> =\n"
        '  new WsgateChatTransport<UIMessage>({ url: "ws://127.0.0.1:1/v1/ws", model: "mock" });\n'
        "export const chunk = (c: WsgateUIMessageChunk): UIMessageChunk => c;\n"
    )
    options = {
        "strict": True,
        "noEmit": True,
        "module": "nodenext",
        "moduleResolution": "nodenext",
        "target": "es2022",
        "lib": ["es2022", "dom"],
        "types": [],
        "skipLibCheck": True,
    }
    config = {"compilerOptions": options, "files": ["check.ts"]}
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    tsc = tsc_binary(ai_sdk)
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        str(tsc),
        "-p",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(120):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode(errors="replace")


async def test_an_unreachable_gateway_is_the_chat_error_and_the_next_request_connects_again(
    ai_sdk,
):
    run = await run_ai_test(
        "an unreachable gateway is the chat error and the next request connects again", ai_sdk
    )
    assert run.sent() == []


# --- against a gateway --------------------------------------------------------------------


async def test_the_answer_streams_into_one_text_part_equal_to_the_mock_text(ai_sdk, start_app):
    app = await start_app()
    run = await run_ai_test(
        "the answer streams into one text part equal to the mock's text", ai_sdk, app
    )
    (start,) = starts(run)
    assert start["request"]["model"] == "mock"
    assert start["options"] == {"on_disconnect": "continue"}


async def test_a_tool_call_round_trip_shows_one_tool_part_with_the_parsed_input(ai_sdk, start_app):
    app = await start_app()
    run = await run_ai_test(
        "a tool call round trip shows one tool part with the parsed input", ai_sdk, app
    )
    assert [s["request"]["messages"][-1]["role"] for s in starts(run)] == ["user", "user"]
    assert app.mock is not None
    assert app.mock.find("tool-1") is not None
    assert app.mock.find("tool-2") is not None


async def test_stop_cancels_the_stream_and_the_mock_sees_its_provider_disconnect(ai_sdk, start_app):
    app = await start_app()
    run = await run_ai_test("stop sends cancel and ends the chat stream at once", ai_sdk, app)
    (start,) = starts(run)
    cancels = [frame for frame in run.sent() if frame["type"] == "cancel"]
    assert cancels == [{"type": "cancel", "stream_id": start["stream_id"]}]
    assert app.mock is not None
    record = await app.mock.wait_disconnected("stop", timeout=2.0)
    assert record.completed_at is None


async def test_a_failure_mid_stream_becomes_the_chat_error(ai_sdk, start_app):
    app = await start_app()
    await run_ai_test(
        "a failure mid stream becomes the chat error and keeps the text so far", ai_sdk, app
    )


async def test_a_provider_http_error_and_an_unknown_model_become_the_chat_error(ai_sdk, start_app):
    app = await start_app()
    run = await run_ai_test(
        "a provider HTTP error and an unknown model become the chat error", ai_sdk, app
    )
    errors = [frame["code"] for frame in run.received() if frame["type"] == "error"]
    assert errors == ["upstream_rejected", "unknown_model"]


async def test_a_dropped_socket_is_resumed_and_the_final_text_is_exact(ai_sdk, start_app, control):
    run = await run_after_one_drop(
        AI_SDK_TESTS,
        "a dropped socket is resumed and the final text is exact",
        start_app,
        control,
        WSGATE_AI_SDK=str(ai_sdk),
    )
    assert run.sockets() == 2
    assert [frame["type"] for frame in run.sent()] == ["start", "resume"]


async def test_a_new_chat_with_the_same_id_resumes_the_unfinished_generation(ai_sdk, start_app):
    app = await start_app()
    run = await run_ai_test(
        "a new chat with the same id resumes the unfinished generation", ai_sdk, app
    )
    (resume,) = [frame for frame in run.sent() if frame["type"] == "resume"]
    assert resume["last_seq"] == 0


async def test_a_reloaded_page_resumes_the_generation_from_its_resume_store(ai_sdk, start_app):
    app = await start_app()
    run = await run_ai_test(
        "a reloaded page resumes the generation from its resume store", ai_sdk, app
    )
    assert run.sockets() == 2
    assert [frame["type"] for frame in run.sent()] == ["start", "resume"]
