"""End-to-end fixtures: a real gateway and its in-process mock provider on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from wsgate.app import App
from wsgate.config import load_settings


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[..., Any]]:
    apps: list[App] = []

    async def factory(**overrides: Any) -> App:
        merged = {"server.port": 0, "mock.ttft_ms": 0, "mock.tokens_per_s": 0, **overrides}
        app = App(load_settings(None, environ={}, overrides=merged), environ={})
        await app.start()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.stop()


@pytest.fixture
async def app(start_app) -> App:
    return await start_app()
