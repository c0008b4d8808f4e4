"""The upstream contract suite runs every test once per reader mode: push and pull."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from upstream_helpers import READER


@pytest.fixture(autouse=True, params=["push", "pull"])
def reader(request: pytest.FixtureRequest) -> Iterator[str]:
    READER["mode"] = request.param
    yield request.param
    READER["mode"] = "push"
