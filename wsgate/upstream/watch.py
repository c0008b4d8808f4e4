"""One timer per event loop for the read deadline of every provider body.

Owns `ReadWatch`: the shell around `core.deadlines.Deadlines`, holding the loop's single
`TimerHandle`, armed at the earliest deadline any body is watched for. A body `set`s its
deadline as it reads (the first byte's, then the idle gap's), `unset`s it while the gateway
holds it paused (time the client takes is not the provider's), and `remove`s itself when
it ends. When the timer fires, every body past its deadline gets `read_expired()`, then
the timer is armed for what is left. `ReadWatch.of(loop)` is the loop's watch: push and
pull bodies share it, however many connections and streams the loop serves.

The callbacks must not raise: a body's `read_expired` only records the timeout and wakes
the task that runs the body (which raises `UpstreamTimeout`).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import ClassVar, Protocol

from wsgate.core.deadlines import Deadlines


class Watched(Protocol):
    """A body whose read deadline the watch keeps."""

    def read_expired(self) -> None:
        """The deadline passed with no read: end the body with `UpstreamTimeout`."""


class ReadWatch:
    """The read deadlines of one loop's bodies, on one timer."""

    __slots__ = ("_armed", "_deadlines", "_handle", "_loop")

    _watches: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReadWatch]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._deadlines: Deadlines[Watched] = Deadlines()
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> ReadWatch:
        """The watch of `loop` (made on first use, gone with the loop)."""
        watch = cls._watches.get(loop)
        if watch is None:
            watch = cls._watches[loop] = cls(loop)
        return watch

    def __len__(self) -> int:
        """Bodies watched now."""
        return len(self._deadlines)

    @property
    def armed(self) -> bool:
        """The timer is armed (tests: it is dropped when nothing is left to watch)."""
        return self._handle is not None

    def set(self, body: Watched, due: float) -> None:
        """`body` must read again by `due` (loop time)."""
        if self._deadlines.set(body, due) and (self._handle is None or due < self._armed):
            self._arm()

    def unset(self, body: Watched) -> None:
        """`body` is not waiting on its provider now (paused by the gateway)."""
        self._deadlines.unset(body)

    def remove(self, body: Watched) -> None:
        """`body` ended."""
        self._deadlines.remove(body)

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        due = self._deadlines.next_due()
        if due is not None:
            self._armed = due
            self._handle = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._handle = None
        for body in self._deadlines.expired(self._loop.time()):
            body.read_expired()
        self._arm()
