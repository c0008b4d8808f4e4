"""The interfaces the gateway depends on, in one place: what it needs from the outside.

Owns the gateway's view of its collaborators, as structural protocols that the composition
root (`app.py`) satisfies with real implementations and tests with fakes
(`wsgate.testing`):

- `Upstream`: opens a provider call for a request at the target its start resolved to
  (`core.session.Target`, made once per start); its context yields the open `Body`
  once the headers are in, and closing the context closes the provider's connection.
- `Body` / `BodySink`: one response's body and where its bytes go; the contract is the
  upstream side's (`wsgate/upstream/base.py`), restated here because shells do not import
  each other.
- `StreamHost`: what a stream's task needs from its connection (`stream_task.py`), so the
  stream task never imports the connection (no import cycle).
- `Store`: the resume store (`core/store.py`), implemented by `wsgate/store/`.
- `FollowerHost`: what a follower stream (`follower.py`) needs from its connection.

The authenticator of the security work joins this module. Interfaces only: no behaviour.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from wsgate.core.agent import ToolCall
from wsgate.core.errors import WsgateError
from wsgate.core.frames import ChatRequest, ToolError
from wsgate.core.session import Session, Target
from wsgate.core.store import Store
from wsgate.core.stream import StreamOutput
from wsgate.gateway.options import ConnectionOptions

__all__ = ["Body", "BodySink", "FollowerHost", "Store", "StreamHost", "Upstream"]


class BodySink(Protocol):
    """Where a body's bytes go."""

    def data(self, chunk: bytes) -> bool:
        """Take body bytes; True when the body must not be read any further."""


class Body(Protocol):
    """One open provider response's body (push or pull mode)."""

    async def run(self, sink: BodySink) -> None:
        """Hand the body to `sink` until it ends or the sink says stop.

        Raises `UpstreamBroken` when it breaks off, `UpstreamTimeout` past a read deadline.
        """

    def pause(self) -> None:
        """Stop reading the provider until `resume`."""

    def resume(self) -> None:
        """Read the provider again."""

    @property
    def paused(self) -> bool:
        """Reading is stopped by `pause`."""


class Upstream(Protocol):
    """What a connection needs from the upstream side."""

    def open(self, request: ChatRequest, target: Target) -> AbstractAsyncContextManager[Body]:
        """Open the provider call at the start's resolved `target`; the context yields its body."""


class StreamHost(Protocol):
    """What a stream's task needs from its connection."""

    @property
    def session(self) -> Session:
        """The connection's core."""

    @property
    def options(self) -> ConnectionOptions:
        """The connection's limits and timers."""

    def deliver(self, stream_id: str, output: StreamOutput) -> None:
        """Queue (or log, if detached) what a stream produced."""

    def hold(self, stream_id: str, body: Body) -> bool:
        """After a delivery: pause `body` if flow control says so (True when paused)."""

    def release(self, stream_id: str) -> None:
        """The stream's body is gone: forget it if held."""

    def expire(self, stream_id: str) -> None:
        """A detached stream's window passed."""

    def detached(self, stream_id: str) -> bool:
        """The stream's client left; its frames go to its log."""

    def adopt(self, task: asyncio.Task[None]) -> None:
        """A detached stream's task now belongs to the gateway until it ends."""

    def cancel_latency(self, seconds: float) -> None:
        """Account the time from a cancel decision to the provider's close."""

    def retried(self) -> None:
        """Account one retry of a provider call."""

    async def run_tool(
        self, stream_id: str, message_id: str, call: ToolCall
    ) -> tuple[Any, ToolError | None]:
        """Run a server-side tool's call once: its content, or why it has none."""


class FollowerHost(Protocol):
    """What a follower stream needs from its connection."""

    @property
    def session(self) -> Session:
        """The connection's core."""

    def control(self, data: bytes) -> None:
        """Queue a connection-level frame (a `stream.resumed`, a refusal)."""

    def push(self, stream_id: str, frames: list[bytes], *, ended: bool) -> None:
        """Queue a follower's frames; `ended` after its last."""

    async def room(self, stream_id: str) -> None:
        """Return once the stream's queue has room (below half its bounds)."""

    def refuse(self, stream_id: str, error: WsgateError) -> None:
        """End a follower with a typed refusal (an `error` without `seq`)."""

    def runs_here(self, message_id: str) -> bool:
        """Whether this node generates `message_id` now."""
