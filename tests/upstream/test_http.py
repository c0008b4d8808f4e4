"""How the upstream client speaks HTTP to each provider kind: paths, headers, keys, caps.

A small recording aiohttp server stands in for the provider; what matters here is what the
client sends and how it reads an answer that is not a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from e2e_helpers import serving
from upstream_helpers import Stop, opened, route

from wsgate.core.errors import (
    UnknownModel,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from wsgate.core.frames import ChatRequest, Message, StartOptions
from wsgate.testing import ParserTarget, ScriptedParser, read_body
from wsgate.upstream.client import Route, Timeouts, UpstreamClient

REQUEST = ChatRequest(model="m", messages=[Message(role="user", content="hi")])


class Recorder:
    """An HTTP server that records requests and answers each from `self.answer`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        self.answer = self.sse
        self.queries: list[dict[str, str]] = []
        self.in_flight = 0
        self.peak = 0
        self.release = asyncio.Event()
        self.release.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append((request.path, dict(request.headers), body))
        self.queries.append(dict(request.query))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.release.wait()
            return await self.answer(request)
        finally:
            self.in_flight -= 1

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    async with serving(recorder.handle) as root:
        yield recorder, root


async def call(to: Route) -> None:
    client = UpstreamClient({"m": to}, Timeouts(connect=1, first_byte=2, idle=2))
    await client.start()
    try:
        async with opened(client, REQUEST) as body:
            await read_body(body)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("kind", "base", "path", "accept"),
    [
        ("openai_chat", "/v1", "/v1/chat/completions", "text/event-stream"),
        ("openai_responses", "/v1", "/v1/responses", "text/event-stream"),
        ("anthropic", "/v1", "/v1/messages", "text/event-stream"),
        ("ollama", "", "/api/chat", "application/x-ndjson"),
    ],
)
async def test_each_kind_posts_its_streaming_body_to_its_path(provider, kind, base, path, accept):
    recorder, root = provider
    await call(route("m", "p", kind, root + base, "upstream-name"))
    ((seen_path, headers, body),) = recorder.requests
    assert seen_path == path
    assert headers["Accept"] == accept
    assert headers["Content-Type"] == "application/json"
    assert body["model"] == "upstream-name"
    assert body["stream"] is True


async def test_openai_kinds_send_the_key_as_a_bearer_token(provider):
    recorder, root = provider
    await call(route("m", "p", "openai_chat", root + "/v1", "m", api_key="sk-openai"))
    headers = recorder.requests[0][1]
    assert headers["Authorization"] == "Bearer sk-openai"
    assert "x-api-key" not in {name.lower() for name in headers}


async def test_anthropic_gets_its_key_header_and_api_version(provider):
    recorder, root = provider
    await call(route("m", "p", "anthropic", root + "/v1", "m", api_key="sk-ant"))
    headers = recorder.requests[0][1]
    assert headers["x-api-key"] == "sk-ant"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in headers


async def test_a_providers_extra_headers_and_query_params_go_with_every_call(provider):
    recorder, root = provider
    extras = {"api-key": "azure-key", "anthropic-beta": "b1"}
    where = route(
        "m", "p", "openai_chat", root + "/v1", "m",
        extra_headers=extras, query_params={"api-version": "2025-01-01"},
    )  # fmt: skip
    await call(where)
    headers = recorder.requests[0][1]
    assert (headers["api-key"], headers["anthropic-beta"]) == ("azure-key", "b1")
    assert recorder.queries[0] == {"api-version": "2025-01-01"}
    assert "azure-key" not in repr(where)


async def test_no_key_sends_no_credentials(provider):
    recorder, root = provider
    await call(route("m", "p", "ollama", root, "m"))
    names = {name.lower() for name in recorder.requests[0][1]}
    assert not names & {"authorization", "x-api-key"}


def json_answer(status: int, payload: object, headers: dict[str, str] | None = None):
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.json_response(payload, status=status, headers=headers)

    return answer


OPENAI_ERROR = {"error": {"message": "secret text", "type": "server_error"}}
OPENAI_REJECT = {"error": {"message": "secret text", "type": "invalid_request_error"}}
ANTHROPIC_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
RATE_LIMITED = {"error": {"type": "rate_limit_error", "message": "x"}}
OLLAMA_ERROR = {"error": "model 'x' not found"}


@pytest.mark.parametrize(
    ("status", "payload", "error_type", "label"),
    [
        (200, OPENAI_ERROR, UpstreamError, "server_error"),
        (200, ANTHROPIC_OVERLOADED, UpstreamError, "overloaded_error"),
        (200, RATE_LIMITED, UpstreamRateLimited, "rate_limit_error"),
        (529, ANTHROPIC_OVERLOADED, UpstreamError, "HTTP 529, overloaded_error"),
        (400, OPENAI_REJECT, UpstreamRejected, "HTTP 400, invalid_request_error"),
        (404, OLLAMA_ERROR, UpstreamRejected, "HTTP 404"),
        (408, {}, UpstreamError, "HTTP 408"),
    ],
)
async def test_an_error_answer_is_typed_by_status_and_the_providers_error_type(
    provider, status, payload, error_type, label
):
    recorder, root = provider
    recorder.answer = json_answer(status, payload)
    with pytest.raises(UpstreamError) as info:
        await call(route("m", "p", "openai_chat", root + "/v1", "m"))
    assert type(info.value) is error_type
    assert label in info.value.public_message
    assert "secret" not in info.value.public_message
    assert "not found" not in info.value.public_message


async def test_retry_after_of_a_503_is_kept_for_the_retry_policy(provider):
    recorder, root = provider
    recorder.answer = json_answer(503, {}, {"Retry-After": "3"})
    with pytest.raises(UpstreamError) as info:
        await call(route("m", "p", "openai_chat", root + "/v1", "m"))
    assert info.value.retry_after_ms == 3000
    assert info.value.transient


async def test_a_capped_provider_never_has_more_calls_in_flight_than_its_cap(provider):
    recorder, root = provider
    recorder.release.clear()
    to = route("m", "p", "openai_chat", root + "/v1", "m", max_concurrency=2)
    client = UpstreamClient({"m": to}, Timeouts(connect=1, first_byte=5, idle=5))
    await client.start()

    async def one() -> None:
        async with opened(client, REQUEST) as body:
            await read_body(body)

    try:
        tasks = [asyncio.create_task(one()) for _ in range(5)]
        async with asyncio.timeout(5):
            while recorder.in_flight < 2:  # noqa: ASYNC110 - polling the recorder's counter
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert recorder.in_flight == 2
        assert client.in_flight("p") == 2
        recorder.release.set()
        await asyncio.gather(*tasks)
        assert recorder.peak == 2
        assert len(recorder.requests) == 5
        assert client.in_flight("p") == 0
    finally:
        await client.close()


async def test_per_provider_timeouts_override_the_client_defaults(provider):
    recorder, root = provider

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.2)
        return web.Response()

    recorder.answer = silent
    to = route("m", "p", "openai_chat", root + "/v1", "m", timeouts=Timeouts(1, 0.2, 1))
    client = UpstreamClient({"m": to}, Timeouts(connect=1, first_byte=30, idle=30))
    await client.start()
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamError) as info:
            async with opened(client, REQUEST):
                pass
        assert info.value.code == "upstream_timeout"
        assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        await client.close()


def chunked_json(status: int, body: bytes, pieces: int, headers: dict[str, str] | None = None):
    """An error answer written in `pieces` TCP writes, 20 ms apart."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            status=status, headers={"content-type": "application/json", **(headers or {})}
        )
        await response.prepare(request)
        step = max(1, len(body) // pieces)
        for start in range(0, len(body), step):
            await response.write(body[start : start + step])
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    return answer


@pytest.mark.parametrize("status", [200, 429, 400])
async def test_an_error_body_split_across_writes_is_still_typed(provider, status):
    recorder, root = provider
    body = orjson.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "x" * 200}}
    )
    recorder.answer = chunked_json(status, body, pieces=4)
    with pytest.raises(UpstreamError) as info:
        await call(route("m", "p", "anthropic", root + "/v1", "m"))
    assert type(info.value) is UpstreamRateLimited
    assert "rate_limit_error" in info.value.public_message


@pytest.mark.parametrize(
    "label", ["invalid_request_error", "authentication_error", "permission_error"]
)
async def test_a_json_rejection_with_status_200_is_a_rejection_not_a_retryable_failure(
    provider, label
):
    recorder, root = provider
    recorder.answer = json_answer(200, {"type": "error", "error": {"type": label}})
    with pytest.raises(UpstreamError) as info:
        await call(route("m", "p", "anthropic", root + "/v1", "m"))
    assert type(info.value) is UpstreamRejected
    assert not info.value.transient


@pytest.mark.parametrize(
    ("headers", "expected_ms"),
    [
        ({"Retry-After": "2"}, 2000),
        ({"Retry-After": "0.25"}, 250),
        ({"retry-after-ms": "1500"}, 1500),
        ({"retry-after-ms": "1500", "Retry-After": "2"}, 1500),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0),  # a date in the past: now
        ({"Retry-After": "soon"}, None),
    ],
)
async def test_retry_after_is_read_in_seconds_milliseconds_or_as_an_http_date(
    provider, headers, expected_ms
):
    recorder, root = provider
    recorder.answer = json_answer(429, {}, headers)
    with pytest.raises(UpstreamRateLimited) as info:
        await call(route("m", "p", "openai_chat", root + "/v1", "m"))
    assert info.value.retry_after_ms == expected_ms


async def test_waiting_for_a_concurrency_slot_is_not_charged_to_the_providers_first_byte(
    provider,
):
    recorder, root = provider

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return await recorder.sse(request)

    recorder.answer = slow
    to = route("m", "p", "openai_chat", root + "/v1", "m", max_concurrency=1)
    client = UpstreamClient({"m": to}, Timeouts(connect=1, first_byte=0.5, idle=5))
    await client.start()

    async def one() -> None:
        async with opened(client, REQUEST) as body:
            await read_body(body)

    try:
        # Three calls through one slot: the third waits ~0.6 s, longer than the first-byte
        # timeout, but its provider answers in 0.3 s once called.
        await asyncio.gather(one(), one(), one())
    finally:
        await client.close()


async def test_a_providers_own_connect_timeout_is_applied():
    # A listener with a full backlog that never accepts: a new connect hangs.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)  # noqa: FBT003 - the socket API
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    to = route(
        "m", "p", "openai_chat", f"http://127.0.0.1:{port}", "m", timeouts=Timeouts(0.3, 10, 10)
    )
    client = UpstreamClient({"m": to}, Timeouts(connect=3, first_byte=10, idle=10))
    await client.start()
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamError):
            async with opened(client, REQUEST):
                pass
        assert asyncio.get_running_loop().time() - started < 1.5
    finally:
        await client.close()
        server.close()
        for filler in fillers:
            filler.close()


async def test_a_finished_call_returns_its_connection_to_the_pool_and_a_cancelled_one_does_not(
    provider,
):
    recorder, root = provider
    client = UpstreamClient(
        {"m": route("m", "p", "openai_chat", root + "/v1", "m")}, Timeouts(1, 2, 2)
    )
    await client.start()
    ports = []

    async def sse_with_port(request: web.Request) -> web.StreamResponse:
        ports.append(request.transport.get_extra_info("peername")[1])
        return await recorder.sse(request)

    async def endless(request: web.Request) -> web.StreamResponse:
        ports.append(request.transport.get_extra_info("peername")[1])
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[]}\n\n')
        await asyncio.sleep(1)
        return response

    try:
        recorder.answer = sse_with_port
        for _ in range(3):
            async with opened(client, REQUEST) as body:
                await read_body(body)
        assert len(set(ports)) == 1  # one TCP connection served all three calls
        recorder.answer = endless
        async with opened(client, REQUEST) as body:
            await body.run(Stop())  # the stream ends (a cancel, a finish) before the body does
        recorder.answer = sse_with_port
        async with opened(client, REQUEST) as body:
            await read_body(body)
        assert ports[3] == ports[0]  # the pooled connection served the endless call
        assert ports[4] != ports[0]  # which was closed: the provider saw the stream end
    finally:
        await client.close()


async def call_with(client: UpstreamClient, request: ChatRequest) -> None:
    async with opened(client, request) as body:
        await read_body(body)


async def test_the_upstream_pool_has_no_total_timeout_and_no_connection_cap():
    client = UpstreamClient({}, Timeouts())
    await client.start()
    try:
        session = client._session
        assert session is not None
        assert session.timeout.total is None
        assert session.connector is not None
        assert session.connector.limit == 0
        assert session.connector.limit_per_host == 0
    finally:
        await client.close()


async def test_the_first_byte_deadline_covers_headers_and_body_together():
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.6)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(0.6)
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')
        await asyncio.sleep(0.5)
        return response

    async with serving(slow) as root:
        client = UpstreamClient(
            {"m": route("m", "p", "openai_chat", root + "/v1", "m")},
            Timeouts(connect=1, first_byte=1.0, idle=5),
        )
        await client.start()
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamTimeout):
                await call_with(client, REQUEST)
            assert asyncio.get_running_loop().time() - started < 1.15
        finally:
            await client.close()


def test_a_start_resolves_its_route_once_into_a_call_that_makes_its_parsers():
    client = UpstreamClient({"m": route("m", "p", "anthropic", "http://x", "claude")}, Timeouts())
    call = client.resolve(REQUEST, StartOptions(tool_snapshots=True))
    assert call.route is client.routes["m"]
    assert call.tool_snapshots
    assert call.parser() is not call.parser()  # a fresh parser for each attempt


def test_a_model_no_route_serves_is_refused_when_the_start_is_resolved():
    client = UpstreamClient({}, Timeouts())
    with pytest.raises(UnknownModel):
        client.resolve(REQUEST, StartOptions())


async def test_opening_a_target_that_resolve_did_not_make_is_a_type_error():
    client = UpstreamClient({"m": route("m", "p", "openai_chat", "http://x", "m")}, Timeouts())
    await client.start()
    try:
        with pytest.raises(TypeError, match="resolve"):
            async with client.open(REQUEST, ParserTarget(ScriptedParser)):
                pass
    finally:
        await client.close()
