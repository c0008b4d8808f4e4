"""Shared fixtures: every async test runs on uvloop, as the gateway does in production; a
started mock provider that answers at once (no first-token delay, no pacing); one private
`redis-server` for the session (never the one at 127.0.0.1:6379), emptied before each test
that asks for `redis_url`; `start_app`, gateways with the in-process mock on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from store_helpers import redis_server_binary

from wsgate import log
from wsgate.app import App
from wsgate.config import load_settings
from wsgate.mock import MockProvider
from wsgate.testing_redis import RedisServer


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider(default_ttft_ms=0, default_tokens_per_s=0)
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture(autouse=True)
def unconfigured_logs() -> Iterator[None]:
    """Undo a test's `wsgate.log.configure`: its stream may be that test's captured output,
    closed once the test ends, and a later test's first warning would raise writing to it."""
    yield
    log.reset()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary())
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.start()  # a test may have stopped it
    assert redis_server.command("FLUSHALL") == b"+OK"
    return redis_server.url


@pytest.fixture
def upstream_reader() -> str:
    """How the gateway reads provider bodies (push, the default, unless parametrized)."""
    return "push"


@pytest.fixture
async def start_app(upstream_reader: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start gateways on free ports: `factory(toml=None, **overrides)`, stopped at the end.

    `toml` is a configuration file's text (written to a file of its own); `overrides` are
    dotted settings on top of it.
    """
    apps: list[App] = []

    async def factory(toml: str | None = None, **overrides: Any) -> App:
        path = None
        if toml is not None:
            path = tmp_path / f"wsgate-{len(apps)}.toml"
            path.write_text(toml, encoding="utf-8")
        merged = {
            "server.port": 0,
            "mock.ttft_ms": 0,
            "mock.tokens_per_s": 0,
            "upstream.reader": upstream_reader,
            **overrides,
        }
        app = App(load_settings(path, environ={}, overrides=merged), environ={})
        await app.start()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.stop()
