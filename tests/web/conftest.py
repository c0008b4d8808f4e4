"""Web test fixtures: gateways on 127.0.0.1 (port 0, the built-in mock answering at once unless
a script paces it), optionally from a TOML file, and the control channel of web_helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from web_helpers import Control, install_npm_packages

from wsgate.app import App
from wsgate.config import load_settings


@pytest.fixture
async def start_web_app(tmp_path) -> AsyncIterator[Callable[..., Any]]:
    """`await start_web_app(toml=None, **overrides)`: a started App, stopped after the test."""
    apps: list[App] = []

    async def factory(toml: str | None = None, **overrides: Any) -> App:
        path = None
        if toml is not None:
            path = tmp_path / f"wsgate-{len(apps)}.toml"
            path.write_text(toml)
        merged = {"server.port": 0, "mock.ttft_ms": 0, "mock.tokens_per_s": 0, **overrides}
        app = App(load_settings(path, environ={}, overrides=merged), environ={})
        await app.start()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.stop()


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
