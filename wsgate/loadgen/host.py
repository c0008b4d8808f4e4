"""What a load-generator connection or direct reader needs from the run that owns it.

Owns one structural protocol, `RunHost`, satisfied by `runner.Runner`: the run's
configuration and counters, and the calls that end a stream or spawn a task. `conn.py` and
`direct.py` depend on it instead of importing the runner (which imports them): no cycle.
Interface only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Coroutine
from typing import Any, Protocol

from wsgate.loadgen.config import LoadConfig
from wsgate.loadgen.stream import Stream


class RunHost(Protocol):
    """The run, as its connections and direct reader see it."""

    config: LoadConfig
    closing: bool
    errors: Counter[str]
    checks: Counter[str]
    frames: int
    bytes: int
    last_at: float

    def end(self, stream: Stream, outcome: str, now: float) -> None:
        """A stream ended: verify and record it."""

    def delivered(self, tokens: int) -> None:
        """Count tokens delivered to the client."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine as a task the run waits for or cancels."""
