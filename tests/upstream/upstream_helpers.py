"""Helpers of the upstream contract suite: routes in the reader mode under test, calls, sinks."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from wsgate.core.frames import ChatRequest, StartOptions
from wsgate.upstream.base import Body
from wsgate.upstream.client import Route, UpstreamClient

READER = {"mode": "push"}
"""The reader mode the running test is parametrized with (set by conftest's fixture)."""


def route(*args: Any, **kwargs: Any) -> Route:
    """A `Route` read in the mode under test."""
    return Route(*args, reader=READER["mode"], **kwargs)  # type: ignore[arg-type]


def opened(client: UpstreamClient, request: ChatRequest) -> AbstractAsyncContextManager[Body]:
    """Open `request` as a start does: resolved once, then opened at that target."""
    return client.open(request, client.resolve(request, StartOptions()))


class Stop:
    """A sink that stops the body at its first bytes (a stream that ended, a cancel)."""

    def data(self, _chunk: bytes) -> bool:
        return True


class OnData:
    """A sink that calls `callback` for every chunk and reads on."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def data(self, _chunk: bytes) -> bool:
        self.callback()
        return False
