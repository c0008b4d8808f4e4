"""End-to-end fixtures: a real gateway and its in-process mock provider on 127.0.0.1.

The upstream contract (every fault of MOCK.md, every dialect, truncation, stalls, split
UTF-8, retries before the first token, cancel) runs against both body readers: the modules
holding it set `BOTH_READERS = True`.
"""

from __future__ import annotations

import pytest

from wsgate.app import App

READERS = ("push", "pull")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module with `BOTH_READERS = True` runs each test once per body reader."""
    if "upstream_reader" in metafunc.fixturenames and getattr(
        metafunc.module, "BOTH_READERS", False
    ):
        metafunc.parametrize("upstream_reader", READERS)


@pytest.fixture
async def app(start_app) -> App:
    return await start_app()
