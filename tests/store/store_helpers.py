"""What the store tests share: the component check and a private `redis-server` per module.

`require` skips a test whose component is missing, except under `WSGATE_REQUIRE_ALL=1` (CI),
where a missing component fails the test instead: the suite must really run it there.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(component: str, present: bool, why: str) -> None:
    """Skip (or, with `WSGATE_REQUIRE_ALL=1`, fail) a test whose component is missing."""
    if present:
        return
    message = f"missing system component {component} (CI installs it, .ci/run): {why}"
    if os.environ.get("WSGATE_REQUIRE_ALL") == "1":
        pytest.fail(f"{message} (WSGATE_REQUIRE_ALL=1: every component is required)")
    pytest.skip(message)


def redis_server_binary() -> str:
    """The `redis-server` to start for a test, or a skip (a failure under CI)."""
    found = shutil.which("redis-server")
    require("redis-server", found is not None, "install Debian's redis-server (.ci/run does)")
    assert found is not None
    return found
