"""The Origin allowlist at the handshake: a browser page not allowed gets HTTP 403 before the
upgrade; native clients (no Origin) are never asked."""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import raw_connect
from websockets.exceptions import InvalidStatus

from wsgate.gateway.server import GatewayOptions, origin_allowed

REAL_PROVIDER = {
    "providers.p.kind": "openai_chat",
    "providers.p.base_url": "http://127.0.0.1:9/v1",
    "models.m.provider": "p",
}


async def refused(url: str, origin: str) -> bool:
    """True when the handshake from a page at `origin` is refused with HTTP 403."""
    try:
        async with raw_connect(url, origin=origin):
            return False
    except InvalidStatus as exc:
        return exc.response.status_code == 403


async def test_with_only_the_mock_on_loopback_the_gateways_own_page_may_connect(app):
    port = app.gateway.port
    assert not await refused(app.url, f"http://127.0.0.1:{port}")
    assert not await refused(app.url, f"http://localhost:{port}")
    assert await refused(app.url, "https://evil.example")
    assert await refused(app.url, f"http://127.0.0.1:{port + 1}")
    async with raw_connect(app.url):  # a native client sends no Origin
        pass


async def test_with_a_real_provider_no_page_may_connect_unless_listed(start_app):
    app = await start_app(**REAL_PROVIDER)
    assert await refused(app.url, "https://evil.example")
    assert await refused(app.url, f"http://127.0.0.1:{app.gateway.port}")
    async with raw_connect(app.url):
        pass


async def test_a_listed_origin_may_connect_and_an_unlisted_one_may_not(start_app):
    app = await start_app(**REAL_PROVIDER, **{"server.allowed_origins": "https://app.example"})
    assert not await refused(app.url, "https://app.example")
    assert await refused(app.url, "https://evil.example")


async def test_a_star_lets_any_page_connect(start_app):
    app = await start_app(**REAL_PROVIDER, **{"server.allowed_origins": "*"})
    assert not await refused(app.url, "https://anything.example")


@pytest.mark.parametrize(
    ("allowed", "exposed", "origin", "ok"),
    [
        ((), False, "http://127.0.0.1:8080", True),
        ((), False, "http://localhost:8080", True),
        ((), False, "http://127.0.0.1:8081", False),
        ((), False, "null", False),
        ((), True, "http://127.0.0.1:8080", False),
        (("https://a.example",), True, "https://a.example", True),
        (("https://a.example",), False, "http://127.0.0.1:8080", False),
        (("*",), True, "https://b.example", True),
    ],
)
def test_the_origin_policy(allowed, exposed, origin, ok):
    options = GatewayOptions(allowed_origins=allowed, exposed=exposed)
    assert origin_allowed(origin, options, 8080) is ok


async def test_a_handshake_with_two_origins_is_refused(app):
    port = app.gateway.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        + f"Origin: http://127.0.0.1:{port}\r\nOrigin: https://evil.example\r\n\r\n".encode()
    )
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 403")
