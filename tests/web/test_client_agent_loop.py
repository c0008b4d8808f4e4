"""The browser client's agent loop (wsgate/web/wsgate.js) in Node against a real gateway.

Each test starts a gateway on 127.0.0.1 (port 0, the built-in mock, whose multi-turn scripts
check the results they are sent) and runs one test of tests/web/js/agent_loop.test.mjs by
name, dropping the client's connections when the Node side asks. Every frame the client
sent and received is validated against the protocol's schemas; the Python side then checks
what the gateway saw. The `fake gateway: ` tests script what a real gateway does not do on
demand (a refusal that crosses a drop, a bad_frame answering a result). The declarations of
the new API (wsgate.d.ts and wsgate-ai-sdk.d.ts) are type-checked with the pinned tsc,
without skipLibCheck.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from web_helpers import (
    JS_DIR,
    WEB_DIR,
    assert_passed,
    run_after_one_drop,
    run_gateway_test,
    run_node_test,
    tsc_binary,
)

from wsgate.app import App

AGENT_TESTS = JS_DIR / "agent_loop.test.mjs"


async def run_agent_test(name: str, app: App, control: Any = None):
    """Run one Node test of the agent loop (`web_helpers.run_gateway_test`)."""
    return await run_gateway_test(AGENT_TESTS, name, app, control)


def tool_results(run) -> list[dict[str, Any]]:
    return [frame for frame in run.sent() if frame["type"] == "tool_result"]


async def test_tool_handlers_answer_each_call_once_and_the_text_is_exact(start_app):
    app = await start_app()
    run = await run_agent_test(
        "tool handlers answer each call once and the stream finishes with the exact text", app
    )
    assert [f["call_id"] for f in tool_results(run)] == ["call_mock_0_0", "call_mock_0_1"]
    assert app.mock is not None
    assert len(app.mock.records) == 2, "one provider call per turn"


async def test_a_refused_duplicate_result_does_not_end_the_stream(start_app):
    app = await start_app()
    run = await run_agent_test(
        "a refused duplicate result rejects its promise and the stream goes on", app
    )
    refusals = [f["code"] for f in run.received() if f["type"] == "error" and "seq" not in f]
    assert refusals == ["duplicate_tool_result", "unknown_tool_call"]


async def test_results_that_are_no_valid_tool_result_are_not_sent(start_app):
    app = await start_app()
    run = await run_agent_test(
        "results that are no valid tool_result are refused before they are sent", app
    )
    (sent,) = tool_results(run)
    assert sent["error"]["code"] == "tool_error"


async def test_a_throwing_handler_sends_a_tool_error_result(start_app):
    app = await start_app()
    await run_agent_test("a throwing handler sends a tool_error result and the stream goes on", app)


async def test_a_stream_waiting_for_results_keeps_its_socket(start_app):
    app = await start_app(**{"limits.heartbeat_interval_s": 0.1})
    await run_agent_test(
        "a stream waiting for results is not given up by the heartbeat watchdog", app
    )


async def test_a_reconnect_while_results_are_awaited_answers_each_call_once(start_app, control):
    run = await run_after_one_drop(
        AGENT_TESTS,
        "a reconnect while results are awaited answers each call once and finishes exact",
        start_app,
        control,
    )
    assert run.sockets() == 2
    assert [f["call_id"] for f in tool_results(run)] == ["call_mock_0_0", "call_mock_0_1"]


async def test_a_result_lost_with_the_socket_is_sent_again(start_app, control):
    run = await run_after_one_drop(
        AGENT_TESTS,
        "a result lost with the socket is sent again after the resume",
        start_app,
        control,
    )
    # Recorded are the frames that reached a socket: the lost one is not among them.
    assert [f["call_id"] for f in tool_results(run)] == ["call_mock_0_0", "call_mock_0_1"]


USAGE = """
import { connect, WsgateError, type ToolResultFrame } from "./wsgate.js";
import { WsgateChatTransport, createChunkMapper } from "./wsgate-ai-sdk.js";

export async function use(): Promise<void> {
  const gw = connect("/v1/ws");
  const s = gw.stream(
    { model: "mock", messages: [{ role: "user", content: "hi" }] },
    {
      agent: { max_steps: 3 },
      tools: {
        weather: async (args: { city: string }, { callId, signal }) =>
          signal.aborted ? null : { city: args.city, callId },
      },
      onToolResultRefused: (error: WsgateError, callId: string | null) => error.code + callId,
    },
  );
  const taken: ToolResultFrame = await s.toolResult("call_1", { ok: true });
  taken.source.trim();
  await s.toolError("call_2", "tool_error", "failed");
  if (s.awaiting !== null) s.awaiting.call_ids.map((id) => id.trim());
  s.toolResults.map((f) => f.call_id);
  s.turn.toFixed();
  // @ts-expect-error: an error result needs a code and a message
  await s.toolError("call_3");
  gw.resume({ messageId: "m" }, { tools: {} });
  // @ts-expect-error: a resume starts nothing: no agent options
  gw.resume({ messageId: "m" }, { agent: {} });
  const sent = s.sentResults.get("call_1");
  if (sent?.error !== undefined) sent.error.code.trim();
  const transport = new WsgateChatTransport({
    gateway: gw,
    model: "mock",
    tools: { clock: () => "12:00" },
    options: { agent: { client_tools: true, server_tools: ["search"] } },
  });
  transport.close();
  const mapper = createChunkMapper({
    idPrefix: "p",
    serverTools: ["search"],
    resultOf: (callId: string) => s.sentResults.get(callId),
  });
  for (const chunk of mapper.frame(taken).chunks) {
    if (chunk.type === "tool-output-available") JSON.stringify(chunk.output);
    else if (chunk.type === "tool-output-error") chunk.errorText.trim();
  }
}
"""


def test_the_agent_loop_declarations_type_check_with_the_pinned_tsc(tmp_path, ai_sdk):
    for name in ("wsgate.d.ts", "protocol.d.ts", "wsgate.js", "wsgate-ai-sdk.d.ts"):
        shutil.copy(WEB_DIR / name, tmp_path / name)
    (tmp_path / "usage.ts").write_text(USAGE, encoding="utf-8")
    argv = [str(tsc_binary(ai_sdk)), "--noEmit", "--strict", "--target", "es2022"]
    argv += ["--module", "nodenext", "--moduleResolution", "nodenext"]
    argv += ["--lib", "es2022,dom,dom.asynciterable", "usage.ts"]
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


FAKE_PREFIX = "fake gateway: "


async def test_the_client_matches_refusals_to_results_on_a_fake_gateway():
    """Every `fake gateway: ` test (one Node run): a bad_frame answering a result in flight,
    a resent result the gateway had taken, a refusal with no result in flight."""
    run = await run_node_test(AGENT_TESTS, prefix=FAKE_PREFIX)
    assert_passed(run, expect=AGENT_TESTS.read_text().count(f'test("{FAKE_PREFIX}'))
