"""Fixtures of the mock provider's tests: an HTTP client session.

The started provider, `mock`, is shared with other tests: tests/conftest.py.
"""

from __future__ import annotations

import aiohttp
import pytest


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client
