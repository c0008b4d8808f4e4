"""One timer for every paced stream of the mock provider.

Owns the schedule of all waiting streams: a heap of `(due, counter, future)` and a single
re-armed `TimerHandle` set to the earliest due time. Thousands of concurrent streams cost one
loop timer, not one `asyncio.sleep` per token per stream. When the timer fires it resolves every
waiter due within `granularity` seconds (1 ms), so tokens due at nearly the same instant are
released in one pass. Waiters cancelled while waiting (a client went away) are skipped when they
reach the head and swept out when they outnumber the live ones, so they never accumulate.
Times are `loop.time()` values; callers compute absolute deadlines (start + ttft + i / rate) so
pacing never drifts. It writes nothing and knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

# Rebuild the heap once at least this many cancelled waiters sit in it and they are the
# majority: bounds memory at about twice the live waiters without a sweep per cancel.
_SWEEP_MIN = 64


class Pacer:
    """Release awaiting coroutines at absolute `loop.time()` deadlines, from one timer.

    Starts lazily on the first `wait_until` in a running loop; `stop()` cancels every waiter
    and forgets the loop, and the next `wait_until` starts it again.
    """

    def __init__(self, *, granularity: float = 0.001) -> None:
        self.granularity = granularity
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")
        self._cancelled = 0
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
        heapq.heappush(self._heap, (due, next(self._counter), future))
        # Only an earlier deadline re-arms the timer; later ones wait for their turn.
        if due < self._timer_due - self.granularity:
            self._arm(due)
        try:
            await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                self._note_cancelled()
            raise

    def stop(self) -> None:
        """Cancel the timer and every pending waiter."""
        for _, _, future in self._heap:
            if not future.done():
                future.cancel()
        self._reset()

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
        while heap and heap[0][0] <= horizon:
            _, _, future = heapq.heappop(heap)
            if future.done():
                self._cancelled = max(0, self._cancelled - 1)
            else:
                future.set_result(None)
        # Cancelled heads would only re-arm the timer for nothing.
        while heap and heap[0][2].done():
            heapq.heappop(heap)
            self._cancelled = max(0, self._cancelled - 1)
        if heap:
            self._arm(heap[0][0])

    def _note_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled >= _SWEEP_MIN and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].done()]
            heapq.heapify(self._heap)
            self._cancelled = 0
