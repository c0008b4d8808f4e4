"""Web test fixtures: gateways on 127.0.0.1 (port 0, the built-in mock answering at once unless
a script paces it), optionally from a TOML file, and the control channel of web_helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from web_helpers import Control, install_npm_packages


@pytest.fixture
def start_web_app(start_app: Callable[..., Any]) -> Callable[..., Any]:
    """`await start_web_app(toml=None, **overrides)`: tests/conftest.py's `start_app`."""
    return start_app


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
