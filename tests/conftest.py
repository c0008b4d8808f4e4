"""Shared fixtures: every async test runs on uvloop, as the gateway does in production; a
started mock provider that answers at once (no first-token delay, no pacing); one private
`redis-server` for the session (never the one at 127.0.0.1:6379), emptied before each test
that asks for `redis_url`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvloop
from store_helpers import redis_server_binary

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
