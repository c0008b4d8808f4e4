"""Failures an operator can diagnose: the log line of an upstream failure names the
provider, the model, the HTTP status, the provider's error type, message and request id;
the client's `error.message` carries the provider's message where that is exposed (the
built-in mock by default, `upstream.expose_provider_errors` for real providers), and
`stream_finished` says the error code."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from aiohttp import web
from e2e_helpers import mock_request, raw_connect, serving

from wsgate import log as wsgate_log

SECRET = "sk-live-abcdefgh0123456789"


def provider_toml(root: str, **upstream: Any) -> str:
    lines = [
        "[providers.acme]",
        'kind = "openai_chat"',
        f'base_url = "{root}/v1"',
        "[models.gpt]",
        'provider = "acme"',
        'upstream_model = "acme-large"',
    ]
    if upstream:
        lines.append("[upstream]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in upstream.items())
    return "\n".join(lines) + "\n"


async def refuse(_request: web.Request) -> web.Response:
    body = {
        "error": {
            "message": f"Incorrect API key provided: {SECRET}. Check your key.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    return web.json_response(body, status=401, headers={"x-request-id": "req_123"})


def logged(lines: io.StringIO, event: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    return [r for r in records if r["event"] == event]


async def run_one(url: str, request: dict) -> list[dict]:
    async with raw_connect(url) as conn:
        await conn.start("s1", request)
        return (await conn.finishes({"s1"}))["s1"]


@pytest.mark.parametrize("expose", [None, True])
async def test_a_refused_call_names_provider_model_status_type_message_and_request_id(
    start_app, expose
):
    async with serving(refuse) as root:
        settings = {} if expose is None else {"expose_provider_errors": expose}
        app = await start_app(provider_toml(root, **settings))
        lines = io.StringIO()
        wsgate_log.configure(stream=lines)
        frames = await run_one(
            app.url, {"model": "gpt", "messages": [{"role": "user", "content": "x"}]}
        )
    error, finish = frames[-2:]
    assert (error["code"], finish["reason"]) == ("upstream_rejected", "error")
    (failed,) = logged(lines, "upstream_failed")
    assert failed["provider"] == "acme"
    assert failed["model"] == "acme-large"
    assert failed["status"] == 401
    assert failed["error_type"] == "invalid_request_error"
    assert failed["request_id"] == "req_123"
    assert "Incorrect API key provided" in failed["provider_message"]
    assert SECRET not in lines.getvalue()
    if expose:
        assert "Incorrect API key provided" in error["message"]
        assert SECRET not in error["message"]
    else:
        assert "Incorrect" not in error["message"]  # real providers' text stays in the log
    (finished,) = logged(lines, "stream_finished")
    assert (finished["reason"], finished["error_code"]) == ("error", "upstream_rejected")


async def test_a_wrong_base_url_is_a_404_the_operator_can_read(start_app, mock):
    app = await start_app(provider_toml(mock.root_url + "/nowhere"))
    lines = io.StringIO()
    wsgate_log.configure(stream=lines)
    frames = await run_one(
        app.url, {"model": "gpt", "messages": [{"role": "user", "content": "x"}]}
    )
    assert frames[-2]["code"] == "upstream_rejected"
    (failed,) = logged(lines, "upstream_failed")
    assert (failed["provider"], failed["model"], failed["status"]) == ("acme", "acme-large", 404)


async def test_an_unreachable_provider_is_logged_with_its_name(start_app):
    app = await start_app(provider_toml("http://127.0.0.1:9", retry_attempts=0))
    lines = io.StringIO()
    wsgate_log.configure(stream=lines)
    frames = await run_one(
        app.url, {"model": "gpt", "messages": [{"role": "user", "content": "x"}]}
    )
    assert frames[-2]["code"] == "upstream_unavailable"
    (failed,) = logged(lines, "upstream_failed")
    assert (failed["provider"], failed["model"]) == ("acme", "acme-large")


async def test_a_mock_script_error_reaches_the_client(app):
    frames = await run_one(app.url, mock_request({"txet": "typo"}))
    error = frames[-2]
    assert error["code"] == "upstream_rejected"
    assert "bad mock script" in error["message"]
    assert "txet" in error["message"]


async def test_the_routes_own_secrets_never_reach_the_log_or_the_client(start_app):
    key, token = "gsk_4fJ9kQ2mXw8zR1tY6uP3aB7cD0eF", "QPSECRET123"

    async def echo(request: web.Request) -> web.Response:
        text = f"Invalid API Key: {request.headers['Authorization']} for {request.url}"
        return web.json_response({"error": {"message": text, "type": "auth"}}, status=401)

    async with serving(echo) as root:
        toml = provider_toml(root, expose_provider_errors=True).replace(
            'upstream_model = "acme-large"',
            'upstream_model = "acme-large"\n',
        )
        toml = toml.replace(
            'kind = "openai_chat"',
            f'kind = "openai_chat"\napi_key = "{key}"\nquery_params = {{ key = "{token}" }}',
        )
        app = await start_app(toml)
        lines = io.StringIO()
        wsgate_log.configure(stream=lines)
        frames = await run_one(
            app.url, {"model": "gpt", "messages": [{"role": "user", "content": "x"}]}
        )
    error = frames[-2]
    assert "Invalid API Key" in error["message"]
    for secret in (key, token):
        assert secret not in error["message"]
        assert secret not in lines.getvalue()


async def test_a_failure_the_provider_reports_inside_its_stream_is_logged_with_its_names(app):
    lines = io.StringIO()
    wsgate_log.configure(stream=lines)
    script = {"text": "one two three four", "error_after": 2}
    frames = await run_one(app.url, mock_request(script, model="mock-anthropic"))
    assert frames[-1]["reason"] == "error"
    (failed,) = logged(lines, "upstream_failed")
    assert (failed["provider"], failed["model"], failed["in_band"]) == (
        "mock",
        "mock-anthropic",
        True,
    )


async def test_extended_thinking_with_the_agent_loop_on_anthropic_is_refused_at_start(app):
    request = mock_request({"text": "x"}, model="mock-anthropic", reasoning_effort="low")
    async with raw_connect(app.url) as conn:
        await conn.start("s1", request, {"agent": {"client_tools": True}})
        (refusal,) = await conn.until(lambda f: f.get("stream_id") == "s1")
    assert refusal["code"] == "bad_request"
    assert "thinking" in refusal["message"]
