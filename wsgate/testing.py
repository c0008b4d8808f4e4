"""Test helpers shipped with the package: fakes over mocks.

Owns the fakes the test suite (and users' own tests) build on: a scripted upstream parser
for driving the core without a provider, a scripted upstream for driving the gateway
without a provider, OpenAI SSE bytes for it, a manual clock, and the conversation
replayer's frame matcher. Nothing here opens sockets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from wsgate.core import events as ev
from wsgate.core.errors import UpstreamProtocolError, WsgateError


class ScriptedParser:
    """An `UpstreamParser` whose every `feed` returns the next scripted step.

    A step is a list of items (events, possibly ended by a `WsgateError` value, as a real
    parser returns them), or a `WsgateError` to raise. `eof` raises
    `UpstreamProtocolError` unless `finished_at_eof` is true, like a truncated stream.
    """

    def __init__(
        self,
        steps: Iterable[list[ev.UpstreamEvent | WsgateError] | WsgateError] = (),
        *,
        eof_events: list[ev.UpstreamEvent] | None = None,
        finished_at_eof: bool = True,
    ) -> None:
        self.steps = list(steps)
        self.fed: list[bytes] = []
        self._eof_events: list[ev.UpstreamEvent | WsgateError] = list(eof_events or [])
        self._finished_at_eof = finished_at_eof

    def feed(self, data: bytes) -> list[ev.UpstreamEvent | WsgateError]:
        """Return the next step's items (or raise its error)."""
        self.fed.append(data)
        if not self.steps:
            return []
        step = self.steps.pop(0)
        if isinstance(step, WsgateError):
            raise step
        return step

    def eof(self) -> list[ev.UpstreamEvent | WsgateError]:
        """The scripted end of the stream."""
        if not self._finished_at_eof:
            raise UpstreamProtocolError("upstream stream ended before it finished")
        return self._eof_events


class FakeClock:
    """A clock that moves only when told; pass `clock.now` where the core wants time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        """Move forward and return the new time."""
        self.now += seconds
        return self.now


ANY = "$any"
"""In a fixture's expected frame, matches any value of that field."""


def frame_matches(expected: Any, actual: Any) -> bool:
    """Whether `actual` matches `expected`, where the string `$any` matches anything."""
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(frame_matches(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(frame_matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual) and type(expected) is type(actual)


class ScriptedBody:
    """A provider body (`gateway.ports.Body`) that hands out scripted chunks, honouring pauses.

    Like a pull body: each chunk goes to the sink in turn; while paused, the task waits.
    `pulled` on its upstream counts the chunks handed out.
    """

    def __init__(self, upstream: ScriptedUpstream) -> None:
        self._upstream = upstream
        self._paused = False
        self._room: asyncio.Event | None = None

    @property
    def paused(self) -> bool:
        """Reading is stopped by `pause`."""
        return self._paused

    def pause(self) -> None:
        """Hand out no chunk until `resume`."""
        self._paused = True

    def resume(self) -> None:
        """Hand out chunks again."""
        self._paused = False
        if self._room is not None:
            self._room.set()

    async def run(self, sink: BodySink) -> None:
        """Hand every scripted chunk to `sink` (a loop turn apart) until it says stop."""
        for chunk in self._upstream.chunks:
            while self._paused:
                self._room = self._room or asyncio.Event()
                self._room.clear()
                await self._room.wait()
            await asyncio.sleep(0)  # a provider's chunks arrive in separate reads
            self._upstream.pulled += 1
            if sink.data(chunk):
                return


class BodySink(Protocol):
    """Where a body's bytes go (as `gateway.ports.BodySink`)."""

    def data(self, chunk: bytes) -> bool:
        """Take body bytes; True when the body must not be read any further."""


class ScriptedUpstream:
    """An `Upstream` for the gateway whose bodies hand out scripted byte chunks.

    `open()` ignores the request; each stream gets a fresh `ScriptedBody` over `chunks`.
    `pulled` counts chunks handed out over all streams; `closed` counts contexts exited.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = list(chunks)
        self.pulled = 0
        self.requests: list[object] = []
        self.opened = 0
        self.closed = 0

    def open(self, request: object) -> AbstractAsyncContextManager[ScriptedBody]:
        """Open one scripted response."""
        self.requests.append(request)
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[ScriptedBody]:
        self.opened += 1
        try:
            yield ScriptedBody(self)
        finally:
            self.closed += 1


async def read_body(body: RunnableBody) -> list[bytes]:
    """Every chunk of an open body (`Upstream.open`'s), read to its end."""
    chunks: list[bytes] = []

    class _Collect:
        def data(self, chunk: bytes) -> bool:
            chunks.append(chunk)
            return False

    await body.run(_Collect())
    return chunks


class RunnableBody(Protocol):
    """Anything with a body's `run` (push, pull or scripted)."""

    async def run(self, sink: BodySink) -> None:
        """Hand the body to `sink`."""


def openai_sse(texts: Iterable[str], *, finish: str = "stop") -> list[bytes]:
    """OpenAI chat-completions SSE events for these content pieces, one chunk per event."""
    out = [
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    ]
    out.extend(
        b"data: "
        + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode()
        + b"\n\n"
        for text in texts
    )
    out.append(
        b"data: "
        + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}).encode()
        + b"\n\n"
    )
    out.append(b"data: [DONE]\n\n")
    return out
