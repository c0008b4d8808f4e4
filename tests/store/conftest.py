"""Store fixtures: one private `redis-server` for the session, emptied before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from store_helpers import redis_server_binary

from wsgate.testing_redis import RedisServer


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
