"""Shared fixtures: every async test runs on uvloop, as the gateway does in production; a
started mock provider that answers at once (no first-token delay, no pacing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvloop

from wsgate.mock import MockProvider


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider(default_ttft_ms=0, default_tokens_per_s=0)
    await provider.start()
    yield provider
    await provider.stop()
