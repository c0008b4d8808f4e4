"""Shared fixtures: every async test runs on uvloop, as the gateway does in production."""

from __future__ import annotations

import os
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    return {"uvloop": uvloop.new_event_loop}


def require_or_skip(available: bool, reason: str) -> None:
    """Skip when an optional system component is missing, unless CI requires everything."""
    if available:
        return
    if os.environ.get("WSGATE_REQUIRE_ALL") == "1":
        pytest.fail(f"WSGATE_REQUIRE_ALL=1 but {reason}")
    pytest.skip(reason)
