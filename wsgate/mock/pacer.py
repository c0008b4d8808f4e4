"""One timer for every paced stream of the mock provider.

Owns the schedule of all waiting streams: a heap of `(due, counter, waiter)` and a single
re-armed `TimerHandle` set to the earliest due time. Thousands of concurrent streams cost one
loop timer, not one `asyncio.sleep` per token per stream. When the timer fires it releases every
waiter due within `granularity` seconds (1 ms), so tokens due at nearly the same instant are
released in one pass. A waiter is a future (`wait_until`: a coroutine resumes) or a plain
callback (`call_at`: it runs inside the timer's pass, no task wake-up at all; the paced writer
uses it for one write per token). Waiters cancelled while waiting (a client went away) are
skipped when they reach the head and swept out when they outnumber the live ones, so they never
accumulate. Times are `loop.time()` values; callers compute absolute deadlines (start + ttft + i
/ rate) so pacing never drifts. It writes nothing and knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable

# Rebuild the heap once at least this many cancelled waiters sit in it and they are the
# majority: bounds memory at about twice the live waiters without a sweep per cancel.
_SWEEP_MIN = 64

Waiter: TypeAlias = "asyncio.Future[None] | Callable[[], None]"


class Pacer:
    """Release awaiting coroutines at absolute `loop.time()` deadlines, from one timer.

    Starts lazily on the first `wait_until` in a running loop; `stop()` cancels every waiter
    and forgets the loop, and the next `wait_until` starts it again.
    """

    def __init__(self, *, granularity: float = 0.001) -> None:
        self.granularity = granularity
        self._heap: list[tuple[float, int, Waiter]] = []
        self._counter = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")
        self._cancelled = 0
        self._firing = False
        self.fired = 0  # timer callbacks run; tests use it to see that waiters share wakeups

    @property
    def pending(self) -> int:
        """Heap entries, live or cancelled-but-not-yet-swept."""
        return len(self._heap)

    def time(self) -> float:
        """Return the clock that deadlines are measured on: the running loop's `time()`."""
        return asyncio.get_running_loop().time()

    async def wait_until(self, due: float) -> None:
        """Return at `due` (loop time), within `granularity`; at once if it has passed.

        Cancellation propagates; the abandoned heap entry is skipped and later swept.
        """
        loop = asyncio.get_running_loop()
        if due <= loop.time():
            return
        if self._loop is not loop:
            self._reset()
            self._loop = loop
        future: asyncio.Future[None] = loop.create_future()
        self._push(due, future)
        try:
            await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                self._note_cancelled()
            raise

    def call_at(self, due: float, callback: Callable[[], None]) -> None:
        """Run `callback()` from the timer at `due` (loop time), within `granularity`.

        The callback runs inside the timer's pass, so it must not raise and should be short;
        it may schedule its successor with `call_at`. There is no handle to cancel it: a caller
        that gives up keeps its own flag and lets the callback return at once. `stop()` drops
        pending callbacks unrun.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._reset()
            self._loop = loop
        self._push(due, callback)

    def stop(self) -> None:
        """Cancel the timer and every pending waiter."""
        for _, _, waiter in self._heap:
            if isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.cancel()
        self._reset()

    def _push(self, due: float, waiter: Waiter) -> None:
        heapq.heappush(self._heap, (due, next(self._counter), waiter))
        # Only an earlier deadline re-arms the timer; later ones wait for their turn. A pass in
        # progress arms the timer once when it ends.
        if not self._firing and due < self._timer_due - self.granularity:
            self._arm(due)

    def _reset(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_due = float("inf")
        self._heap = []
        self._cancelled = 0
        self._loop = None

    def _arm(self, due: float) -> None:
        assert self._loop is not None  # noqa: S101 - only called after wait_until set it
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None  # noqa: S101 - the timer is cancelled when the loop is reset
        self.fired += 1
        self._timer = None
        self._timer_due = float("inf")
        horizon = self._loop.time() + self.granularity
        heap = self._heap
        self._firing = True
        try:
            while heap is self._heap and heap and heap[0][0] <= horizon:
                _, _, waiter = heapq.heappop(heap)
                if not isinstance(waiter, asyncio.Future):
                    _run(self._loop, waiter)
                elif waiter.done():
                    self._cancelled = max(0, self._cancelled - 1)
                else:
                    waiter.set_result(None)
        finally:
            self._firing = False
        heap = self._heap  # a callback may have stopped the pacer
        # Cancelled heads would only re-arm the timer for nothing.
        while heap and _is_done(heap[0][2]):
            heapq.heappop(heap)
            self._cancelled = max(0, self._cancelled - 1)
        if heap and self._loop is not None:
            self._arm(heap[0][0])

    def _note_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled >= _SWEEP_MIN and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not _is_done(entry[2])]
            heapq.heapify(self._heap)
            self._cancelled = 0


def _run(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run one callback; a failure is reported like a failing loop callback, not raised."""
    try:
        callback()
    except Exception as exc:  # one broken callback must not stall the others
        loop.call_exception_handler({"message": "Pacer callback failed", "exception": exc})


def _is_done(waiter: Waiter) -> bool:
    """A future that was cancelled or released; a callback is never done before it runs."""
    return isinstance(waiter, asyncio.Future) and waiter.done()
