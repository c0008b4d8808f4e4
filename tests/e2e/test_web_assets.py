"""The browser client and the demo page over HTTP on the gateway's own port."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from wsgate.app import gateway_options
from wsgate.config import load_settings
from wsgate.gateway import static


@pytest.fixture
def web_root(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()
    (tmp_path / "wsgate.js").write_text("export const version = 1;\n")
    (tmp_path / "demo" / "index.html").write_text("<!doctype html><title>wsgate</title>\n")
    monkeypatch.setattr(static, "WEB_ROOT", tmp_path)
    return tmp_path


def base(app) -> str:
    return f"http://127.0.0.1:{app.gateway.port}"


async def test_the_client_module_is_served_with_its_type_and_revalidated_with_304(
    start_app, web_root
):
    app = await start_app()
    async with aiohttp.ClientSession() as http:
        async with http.get(base(app) + "/v1/wsgate.js") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert resp.headers["Cache-Control"] == "no-cache"
            assert await resp.read() == (web_root / "wsgate.js").read_bytes()
            etag = resp.headers["ETag"]
        async with http.get(base(app) + "/v1/wsgate.js", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
            assert await resp.read() == b""
        async with http.get(base(app) + "/v1/wsgate.js", headers={"If-None-Match": '"x"'}) as resp:
            assert resp.status == 200


async def test_the_demo_page_is_the_root_with_a_content_security_policy(start_app, web_root):
    app = await start_app()
    async with aiohttp.ClientSession() as http, http.get(base(app) + "/") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert await resp.text() == (web_root / "demo" / "index.html").read_text()


async def test_server_demo_off_leaves_the_root_a_404_and_the_client_served(start_app, web_root):
    app = await start_app(**{"server.demo": False})
    async with aiohttp.ClientSession() as http:
        async with http.get(base(app) + "/") as resp:
            assert resp.status == 404
        async with http.get(base(app) + "/v1/wsgate.js") as resp:
            assert resp.status == 200


async def test_the_shipped_client_module_is_served(start_app):
    app = await start_app()
    shipped = static.WEB_ROOT / "wsgate.js"
    async with aiohttp.ClientSession() as http, http.get(base(app) + "/v1/wsgate.js") as resp:
        assert resp.status == 200
        assert await resp.read() == shipped.read_bytes()


async def raw_get(port: int, target: str) -> bytes:
    """One GET with the request target written as given (no client normalises `..`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_paths_that_climb_out_of_the_web_folder_are_not_found(start_app, web_root):
    (web_root.parent / "secret.txt").write_text("outside the web folder")
    app = await start_app()
    port = app.gateway.port
    for target in [
        "/demo/../../secret.txt",
        "/demo/%2e%2e/%2e%2e/secret.txt",
        "/v1/../secret.txt",
        "/v1/..%2fsecret.txt",
        "//secret.txt",
    ]:
        answer = await raw_get(port, target)
        assert answer.startswith(b"HTTP/1.1 404"), (target, answer[:80])
        assert b"outside the web folder" not in answer


def test_the_demo_is_served_only_where_its_page_can_connect_and_sign_in():
    def demo(overrides):
        return gateway_options(load_settings(None, environ={}, overrides=overrides)).demo

    assert demo({})  # the mock on loopback: its own origin may connect
    assert not demo({"server.demo": False})
    assert not demo({"server.host": "0.0.0.0", "server.allow_anonymous": True})  # 403s
    exposed = {"server.host": "0.0.0.0", "server.allowed_origins": ["https://app.example"]}
    assert demo(exposed)  # the operator lets pages in
    with_keys = {"auth.api_keys": [{"principal": "p", "sha256": "0" * 64}]}
    assert not demo(with_keys)  # the page has no sign-in
