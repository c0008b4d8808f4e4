"""One timer per event loop for the read deadline of every provider body.

Owns `ReadWatch`: the shell around `core.deadlines.Deadlines`, holding the loop's single
`TimerHandle`, armed at the earliest deadline any body is watched for, and `Watched`, the
small token a body is watched by. A body `set`s its token's deadline as it reads (the first
byte's, then the idle gap's), `unset`s it while the gateway holds it paused (time the client
takes is not the provider's), and `remove`s it when it ends. When the timer fires, every
token past its deadline calls its `on_expiry` (the body's), then the timer is armed for
what is left. `ReadWatch.of(loop)` is the loop's watch: push and pull bodies share it,
however many connections and streams the loop serves.

Memory: `remove` cuts the token's link to its body at once, so the heap's stale entries
(bounded by `core/deadlines.py`) hold tokens of a few dozen bytes, never a body and its
unread buffer. The watch refers to its loop weakly: a closed loop and its watch go away.

The callbacks must not raise: a body's `on_expiry` only records the timeout and wakes
the task that runs the body (which raises `UpstreamTimeout`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import ClassVar

from wsgate.core.deadlines import Deadlines


class Watched:
    """What the watch keeps for one body: the callback its expiry calls (None once removed)."""

    __slots__ = ("on_expiry",)

    def __init__(self, on_expiry: Callable[[], None]) -> None:
        self.on_expiry: Callable[[], None] | None = on_expiry


class ReadWatch:
    """The read deadlines of one loop's bodies, on one timer."""

    __slots__ = ("__weakref__", "_armed", "_deadlines", "_handle", "_loop")

    _watches: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReadWatch]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the loop keys `_watches`: no strong way back to it
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

    def set(self, token: Watched, due: float) -> None:
        """The token's body must read again by `due` (loop time)."""
        if self._deadlines.set(token, due) and (self._handle is None or due < self._armed):
            self._arm()

    def unset(self, token: Watched) -> None:
        """The token's body is not waiting on its provider now (paused by the gateway)."""
        self._deadlines.unset(token)

    def remove(self, token: Watched) -> None:
        """The token's body ended: never call it again, and let go of it now."""
        token.on_expiry = None
        self._deadlines.remove(token)

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        due = self._deadlines.next_due()
        loop = self._loop()
        if due is not None and loop is not None:
            self._armed = due
            self._handle = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._handle = None
        loop = self._loop()
        if loop is None:  # pragma: no cover - a collected loop runs no timers
            return
        for token in self._deadlines.expired(loop.time()):
            if token.on_expiry is not None:
                token.on_expiry()
        self._arm()
