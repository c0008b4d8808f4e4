"""End-to-end fixtures: a real gateway and its in-process mock provider on 127.0.0.1.

The upstream contract (every fault of MOCK.md, every dialect, truncation, stalls, split
UTF-8, retries before the first token, cancel) runs against both body readers: the modules
holding it set `BOTH_READERS = True`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from wsgate.app import App
from wsgate.config import load_settings

READERS = ("push", "pull")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module with `BOTH_READERS = True` runs each test once per body reader."""
    if "upstream_reader" in metafunc.fixturenames and getattr(
        metafunc.module, "BOTH_READERS", False
    ):
        metafunc.parametrize("upstream_reader", READERS)


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


@pytest.fixture
async def app(start_app) -> App:
    return await start_app()
