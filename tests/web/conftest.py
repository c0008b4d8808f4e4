"""Web test fixtures: the control channel of web_helpers and the npm install; gateways come
from tests/conftest.py's `start_app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from web_helpers import Control, install_npm_packages


@pytest.fixture
async def control() -> AsyncIterator[Control]:
    channel = Control()
    await channel.start()
    yield channel
    await channel.close()


@pytest.fixture(scope="session")
def ai_sdk() -> Path:
    """The npm prefix with the pinned `ai` and `typescript` (installed once, cached)."""
    return install_npm_packages()
