"""The browser client library, wsgate/web/wsgate.js, in Node against a real gateway.

Each test starts a gateway on 127.0.0.1 (port 0, the built-in mock) and runs one test of
tests/web/js/client.test.mjs against it (by name), acting on the gateway when the Node side
asks through the control channel (drop every connection, drain, start again). Every frame
the client received is then validated against server.schema.json, and every frame it sent
against client.schema.json.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
from web_helpers import (
    JS_DIR,
    WEB_DIR,
    assert_passed,
    register_drop,
    run_after_one_drop,
    run_gateway_test,
    run_node_test,
)

from wsgate.app import App

CLIENT_TESTS = JS_DIR / "client.test.mjs"
KEY = "sk-alice-0123456789"
AUTH_TOML = f"""
[auth]
timeout_s = 2.0
[[auth.api_keys]]
principal = "alice"
sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
"""


async def run_client_test(name: str, app: App | None = None, control=None, **env: str):
    """Run one Node test of the client (`web_helpers.run_gateway_test`)."""
    return await run_gateway_test(CLIENT_TESTS, name, app, control, **env)


# --- pure parts (no gateway) --------------------------------------------------------------


async def test_the_client_backoff_is_full_jitter_under_a_doubling_cap():
    await run_client_test("the backoff is full jitter under a doubling cap")


async def test_the_client_reconnects_after_retryable_close_codes_only():
    await run_client_test("close codes split into reconnect and stop")


# --- streaming ----------------------------------------------------------------------------


async def test_one_stream_gets_its_exact_text(start_app):
    app = await start_app()
    run = await run_client_test("one stream gets its exact text", app)
    assert run.sockets() == 1


async def test_five_concurrent_streams_on_one_socket_are_each_byte_exact(start_app):
    app = await start_app()
    run = await run_client_test("five concurrent streams on one socket are each byte exact", app)
    assert run.sockets() == 1
    texts = [f["text"] for f in run.received() if f["type"] == "delta.text"]
    assert all("\ufffd" not in t for t in texts)


async def test_on_text_is_called_at_most_once_per_scheduled_frame(start_app):
    app = await start_app()
    await run_client_test("onText is called at most once per scheduled frame", app)


async def test_the_async_iterator_yields_coalesced_text_and_every_other_frame(start_app):
    app = await start_app()
    await run_client_test(
        "the async iterator yields coalesced text and every other frame in order", app
    )


async def test_a_tool_call_fires_on_tool_call_exactly_once(start_app):
    app = await start_app()
    await run_client_test("a tool call fires onToolCall exactly once", app)


async def test_a_structured_section_reaches_on_structured(start_app):
    app = await start_app()
    await run_client_test("a structured section reaches onStructured and leaves the text", app)


async def test_cancel_ends_the_stream_cancelled_and_closes_the_provider_call(start_app):
    app = await start_app()
    await run_client_test("cancel ends the stream with finish cancelled", app)
    assert app.mock is not None
    record = await app.mock.wait_disconnected("cancel-me", timeout=2.0)
    assert record.completed_at is None


async def test_an_abort_signal_cancels_the_stream(start_app):
    app = await start_app()
    run = await run_client_test("an AbortSignal cancels the stream", app)
    assert [f["type"] for f in run.sent()] == ["start", "cancel"]


async def test_closing_the_gateway_object_ends_its_streams_as_cancelled(start_app):
    app = await start_app()
    await run_client_test("close ends open streams as cancelled and does not reconnect", app)


# --- reconnecting -------------------------------------------------------------------------


async def test_a_dropped_socket_reconnects_and_resumes_with_exact_text(start_app, control):
    run = await run_after_one_drop(
        CLIENT_TESTS,
        "a dropped socket reconnects and resumes with exact text and no duplicate",
        start_app,
        control,
    )
    assert run.sockets() == 2


async def test_a_dropped_stream_with_the_default_policy_ends_cancelled(start_app, control):
    app = await start_app()
    register_drop(control, app)
    await run_client_test(
        "a dropped stream with the default policy resumes to its cancelled finish", app, control
    )


async def test_an_unacknowledged_stream_is_lost_but_a_keyed_one_starts_again(start_app, control):
    app = await start_app()
    register_drop(control, app)
    await run_client_test(
        "a stream not yet acknowledged when the socket drops is lost unless it has an "
        "idempotency key",
        app,
        control,
    )
    assert app.mock is not None
    assert len(app.mock.find_all("keyed")) == 1, "the keyed start attached; no second call"


async def test_resume_follows_a_generation_by_message_id_after_a_reload(start_app):
    app = await start_app()
    run = await run_client_test(
        "resume follows a generation by message id on a new Gateway as a reloaded page does", app
    )
    folded = [f for f in run.received() if f["type"] == "delta.text" and "first_seq" in f]
    assert folded, "snapshot: the replayed text came folded"


async def test_without_reconnect_a_drop_ends_the_gateway_object(start_app, control):
    app = await start_app()
    register_drop(control, app)
    await run_client_test(
        "without reconnect a drop ends the Gateway and maxAttempts failures give up", app, control
    )


async def test_a_refused_resume_ends_the_stream_with_its_error(start_app, control):
    app = await start_app(**{"store.resume_window_s": 0.05})
    register_drop(control, app)
    await run_client_test("a resume refusal ends the stream with that error", app, control)


async def test_a_silent_socket_is_given_up_and_its_stream_resumes(start_app):
    app = await start_app()
    await run_client_test(
        "a silent socket is given up after heartbeatTimeoutMs and its stream resumes", app
    )


async def test_heartbeat_frames_reach_the_heartbeat_event(start_app):
    app = await start_app(**{"limits.heartbeat_interval_s": 0.1})
    await run_client_test("heartbeat frames reach the heartbeat event", app)


async def test_after_goaway_new_streams_go_to_a_new_connection(start_app, control):
    overrides = {"server.drain_timeout_s": 5.0, "server.reconnect_after_ms": 200}
    app = await start_app(**overrides)
    draining: list[asyncio.Task[Any]] = []

    @control.action("drain")
    async def drain() -> Any:
        other = await start_app(**overrides)  # the next node behind the load balancer
        draining.append(asyncio.create_task(app.drain()))
        return other.url

    run = await run_client_test(
        "after goaway the open stream finishes on the old socket and a new one starts on a new "
        "connection",
        app,
        control,
    )
    async with asyncio.timeout(5):
        await draining[0]  # the old socket closed once its stream finished: the drain ended
    assert run.sockets() == 2


# --- authentication -----------------------------------------------------------------------


async def test_auth_by_the_first_frame_authenticates_every_connection(start_app, control):
    app = await start_app(AUTH_TOML, **{"api.port": 0})
    register_drop(control, app)
    await run_client_test(
        "auth by the first frame authenticates every connection", app, control, WSGATE_KEY=KEY
    )


async def test_a_ticket_is_bought_before_every_connect(start_app, control):
    app = await start_app(AUTH_TOML, **{"api.port": 0})
    register_drop(control, app)
    await run_client_test(
        "a ticket is bought before every connect",
        app,
        control,
        WSGATE_KEY=KEY,
        WSGATE_API=app.api_url,
    )


async def test_a_refused_key_rejects_ready_with_4501_and_does_not_reconnect(start_app):
    app = await start_app(AUTH_TOML, **{"api.port": 0})
    run = await run_client_test(
        "a refused key rejects ready with close code 4501 and does not reconnect", app
    )
    assert [f["type"] for f in run.sent()] == ["auth"]
    assert [f["code"] for f in run.received()] == ["auth_failed"]


# --- served by the gateway ----------------------------------------------------------------


async def test_the_gateway_serves_the_client_library_and_its_declarations(start_app):
    app = await start_app()
    assert app.gateway is not None
    root = f"http://127.0.0.1:{app.gateway.port}/v1/"
    async with aiohttp.ClientSession() as http:
        for name in ("wsgate.js", "wsgate.d.ts", "protocol.d.ts"):
            async with http.get(root + name) as resp:
                assert resp.status == 200, name
                assert await resp.read() == (WEB_DIR / name).read_bytes(), name
                assert resp.headers["Cache-Control"] == "no-cache"
        async with http.get(root + "wsgate.js") as resp:
            assert resp.headers["Content-Type"].startswith("text/javascript")


# --- protocol corner cases, on a fake gateway ---------------------------------------------

FAKE_PREFIX = "fake gateway: "


async def test_the_client_handles_protocol_corner_cases_of_a_fake_gateway():
    """Every `fake gateway: ` test (one Node run): ready-then-die backoff, hung ticket and
    auth calls, 4502, refresh retries, cross-node drain, seq dedupe, resume refusals, ..."""
    run = await run_node_test(CLIENT_TESTS, prefix=FAKE_PREFIX)
    assert_passed(run, expect=CLIENT_TESTS.read_text().count(f'test("{FAKE_PREFIX}'))


async def test_a_gateway_that_cannot_be_reached_rejects_ready():
    run = await run_client_test(
        "a gateway that cannot be reached rejects ready with connect_failed"
    )
    assert run.sent() == []
