"""gateway/jwks.py: the JWKS cache against a real aiohttp server on 127.0.0.1 and real files.

One cancellation test per await point: the first load in `start`, a caller waiting in
`refresh_for`, a fetch in flight at `close`, and the background refresh's sleep.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from structlog.testing import capture_logs

from wsgate.core.auth import JwksError
from wsgate.gateway.jwks import JwksCache
from wsgate.testing import FakeClock

RSA_PUBLIC = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
EC_PUBLIC = ec.generate_private_key(ec.SECP256R1()).public_key()


def document(*kids: str) -> bytes:
    """A JWKS with an RSA key for each kid starting with r, a P-256 one for the others."""
    keys = [
        {
            **(
                RSAAlgorithm.to_jwk(RSA_PUBLIC, as_dict=True)
                if kid.startswith("r")
                else ECAlgorithm.to_jwk(EC_PUBLIC, as_dict=True)
            ),
            "kid": kid,
        }
        for kid in kids
    ]
    return json.dumps({"keys": keys}).encode()


class JwksServer:
    """Serves `body` with `status`; holds every request while `hold` is set."""

    def __init__(self) -> None:
        self.body = document("r1")
        self.status = 200
        self.requests = 0
        self.hold = False
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, _request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.arrived.set()
        if self.hold:
            await self.release.wait()
        return web.Response(body=self.body, status=self.status, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def server():
    srv = JwksServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def cache_of():
    made: list[JwksCache] = []

    def make(source: str, **kw) -> JwksCache:
        made.append(cache := JwksCache(source, **kw))
        return cache

    yield make
    for cache in made:
        await cache.close()


def kids(cache: JwksCache) -> list[str]:
    jwks = cache.keys().jwks
    assert jwks is not None
    return sorted(jwks)


# --- loading ---------------------------------------------------------------------------


async def test_start_loads_the_keys_from_a_url(server, cache_of):
    cache = cache_of(server.url)
    await cache.start()
    assert kids(cache) == ["r1"]
    assert cache.keys().jwks["r1"].algorithm_name == "RS256"


async def test_start_loads_the_keys_from_a_file(tmp_path, cache_of):
    path = tmp_path / "jwks.json"
    path.write_bytes(document("r1", "e1"))
    cache = cache_of(str(path))
    await cache.start()
    assert kids(cache) == ["e1", "r1"]


def test_keys_before_start_is_a_programming_error():
    with pytest.raises(RuntimeError, match="before start"):
        JwksCache("/nowhere").keys()


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, b"oops", "HTTP 500"),
        (200, b"<html>", "not a JSON document"),
        (200, b'{"keys": []}', "no usable key"),
        (200, b"x" * 5000, "larger than 4096 bytes"),
    ],
)
async def test_a_first_load_that_fails_raises_one_line_naming_the_url(
    server, cache_of, status, body, message
):
    server.status, server.body = status, body
    cache = cache_of(server.url, max_bytes=4096)
    with pytest.raises(JwksError, match=message) as caught:
        await cache.start()
    assert server.url in str(caught.value)
    assert "\n" not in str(caught.value)
    assert cache._session is None


async def test_a_body_over_the_cap_without_content_length_is_refused_as_it_streams(cache_of):
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(10):
            await response.write(b" " * 1000)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/jwks.json", chunked)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        cache = cache_of(f"http://127.0.0.1:{port}/jwks.json", max_bytes=4096)
        with pytest.raises(JwksError, match="larger than 4096 bytes"):
            await cache.start()
    finally:
        await runner.cleanup()


async def test_a_first_load_that_times_out_raises_jwks_error(server, cache_of):
    server.hold = True
    cache = cache_of(server.url, timeout_s=0.2)
    with pytest.raises(JwksError, match="timed out"):
        await cache.start()


async def test_a_first_load_from_a_closed_port_raises_jwks_error(server, cache_of):
    url = server.url
    await server.stop()
    with pytest.raises(JwksError, match="cannot read it"):
        await cache_of(url).start()


async def test_a_missing_or_oversized_file_raises_jwks_error_naming_it(tmp_path, cache_of):
    missing = tmp_path / "missing.json"
    with pytest.raises(JwksError, match=f"{missing}: cannot read it"):
        await cache_of(str(missing)).start()
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 5000)
    with pytest.raises(JwksError, match="larger than 4096 bytes"):
        await cache_of(str(big), max_bytes=4096).start()


# --- refetch for a new kid -------------------------------------------------------------


async def test_refresh_for_an_unknown_kid_fetches_the_rotated_keys(server, cache_of):
    cache = cache_of(server.url, min_refetch_s=0)
    await cache.start()
    server.body = document("r2")
    await cache.refresh_for("r2")
    assert kids(cache) == ["r2"]
    assert server.requests == 2


async def test_refresh_for_a_known_kid_does_not_fetch(server, cache_of):
    cache = cache_of(server.url, min_refetch_s=0)
    await cache.start()
    await cache.refresh_for("r1")
    assert server.requests == 1


async def test_refetches_are_spaced_by_min_refetch_s(server, cache_of):
    clock = FakeClock()
    cache = cache_of(server.url, clock=lambda: clock.now)
    await cache.start()
    server.body = document("r2")
    clock.advance(4.9)
    await cache.refresh_for("r2")
    assert (server.requests, kids(cache)) == (1, ["r1"])
    clock.advance(0.1)
    await cache.refresh_for("r2")
    assert (server.requests, kids(cache)) == (2, ["r2"])
    await cache.refresh_for("r3")  # random kids: no fetch until 5 s have passed again
    assert server.requests == 2


async def test_concurrent_callers_share_one_fetch(server, cache_of):
    cache = cache_of(server.url, min_refetch_s=0)
    await cache.start()
    server.body, server.hold = document("r2"), True
    server.arrived.clear()
    waiters = [asyncio.create_task(cache.refresh_for(f"r{n}")) for n in range(2, 12)]
    await server.arrived.wait()
    server.release.set()
    await asyncio.gather(*waiters)
    assert server.requests == 2
    assert kids(cache) == ["r2"]


async def test_a_failed_refetch_keeps_the_keys_and_logs_a_warning(server, cache_of):
    cache = cache_of(server.url, min_refetch_s=0)
    await cache.start()
    server.status = 503
    with capture_logs() as logs:
        await cache.refresh_for("r2")
    assert kids(cache) == ["r1"]
    (line,) = [entry for entry in logs if entry["event"] == "jwks_fetch_failed"]
    assert line["log_level"] == "warning"
    assert "HTTP 503" in line["error"]
    assert line["kept"] == 1


async def test_the_background_refresh_picks_up_a_new_document(server, cache_of):
    cache = cache_of(server.url, refresh_s=0.05)
    await cache.start()
    server.body = document("r1", "r2")
    for _ in range(200):
        if kids(cache) == ["r1", "r2"]:
            break
        await asyncio.sleep(0.01)
    assert kids(cache) == ["r1", "r2"]


async def test_a_changed_key_set_is_logged_with_its_kids(server, cache_of):
    cache = cache_of(server.url, min_refetch_s=0)
    with capture_logs() as logs:
        await cache.start()
        await cache.refresh_for("r9")  # same document: nothing new to say
        server.body = document("r2")
        await cache.refresh_for("r2")
    loaded = [entry["kids"] for entry in logs if entry["event"] == "jwks_loaded"]
    assert loaded == [["r1"], ["r2"]]


# --- cancellation, one test per await point --------------------------------------------


async def test_start_cancelled_during_the_first_fetch_closes_the_session(server, cache_of):
    server.hold = True
    cache = cache_of(server.url)
    task = asyncio.create_task(cache.start())
    await server.arrived.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cache._session is None
    assert cache._refresher is None


async def test_a_cancelled_refresh_for_leaves_the_shared_fetch_running(server, cache_of):
    cache = cache_of(server.url, min_refetch_s=0)
    await cache.start()
    server.body, server.hold = document("r2"), True
    server.arrived.clear()
    first = asyncio.create_task(cache.refresh_for("r2"))
    second = asyncio.create_task(cache.refresh_for("r2"))
    await server.arrived.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    server.release.set()
    await second
    assert kids(cache) == ["r2"]
    assert server.requests == 2
    assert cache._fetching is None


async def test_close_during_a_fetch_cancels_it_and_its_waiters_return(server, cache_of):
    cache = cache_of(server.url, min_refetch_s=0)
    await cache.start()
    server.hold = True
    server.arrived.clear()
    waiter = asyncio.create_task(cache.refresh_for("r2"))
    await server.arrived.wait()
    fetch = cache._fetching
    await cache.close()
    await waiter  # returns: the fetch it waited for is gone, not its own cancellation
    assert fetch is not None
    assert fetch.cancelled()
    assert cache._session is None
    assert kids(cache) == ["r1"]


async def test_close_stops_the_background_refresh_while_it_sleeps(server, cache_of):
    cache = cache_of(server.url, refresh_s=3600)
    await cache.start()
    refresher = cache._refresher
    await asyncio.sleep(0)
    await cache.close()
    assert refresher is not None
    assert refresher.cancelled()
    assert cache._session is None
    await cache.close()  # twice is harmless
