"""Fixtures of the mock provider's tests: a started provider and an HTTP client session."""

from __future__ import annotations

import aiohttp
import pytest

from wsgate.mock import MockProvider


@pytest.fixture
async def mock():
    provider = MockProvider(default_ttft_ms=0, default_tokens_per_s=0)
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client
