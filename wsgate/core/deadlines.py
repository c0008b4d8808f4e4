"""Many moving deadlines behind one timer: which keys are past due, lazily re-armed.

Owns `Deadlines`, the bookkeeping that lets one timer (per loop, in the upstream shell:
`upstream/watch.py`) watch the read deadline of every provider body: the first byte's,
then the idle gap after each read. A read only moves its key's deadline later (a dict
store, no heap work, no timer); the heap keeps, per key, the deadline it was armed for.
When the timer fires, `expired(now)` pops what is due: a key whose deadline moved on is
pushed again at its new deadline, a key really past it is returned. So a paced stream costs
one heap push per idle timeout, whatever its token rate.

Rules:
1. A key is never reported late: the heap holds, for every key with a deadline, an entry at
   or before that deadline (an earlier deadline than the armed one pushes a new entry).
2. A key is reported at most once per deadline, and never after `unset` or `remove`.
3. Memory: a live key has one entry (plus stale ones from earlier deadlines or removed
   keys); the heap is rebuilt when stale entries outnumber live ones (and 64), so it holds at
   most 2 x live + 64 entries.

Pure: times are numbers the caller passes in; no clock, no I/O.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

K = TypeVar("K")

STALE_SLACK = 64
"""Stale heap entries tolerated beyond the number of live keys before a rebuild."""


class Deadlines(Generic[K]):
    """The deadlines of many keys, for one timer armed at `next_due()`."""

    __slots__ = ("_armed", "_due", "_heap", "_order")

    def __init__(self) -> None:
        self._due: dict[K, float] = {}  # the key's current deadline
        self._armed: dict[K, float] = {}  # the key's earliest entry in the heap
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()  # ties: first set, first reported; keys never compared

    def __len__(self) -> int:
        """Keys with a deadline now."""
        return len(self._due)

    def set(self, key: K, due: float) -> bool:
        """`key` is due at `due`; True when that is now the earliest entry (re-arm the timer)."""
        self._due[key] = due
        armed = self._armed.get(key)
        if armed is not None and armed <= due:
            return False  # the common case: a read moved the deadline later
        self._armed[key] = due
        heapq.heappush(self._heap, (due, next(self._order), key))
        self._compact()
        return self._heap[0][0] == due

    def unset(self, key: K) -> None:
        """`key` has no deadline for now (it may `set` one again soon: its entry stays)."""
        self._due.pop(key, None)

    def remove(self, key: K) -> None:
        """Forget `key` for good (its heap entries go at the next rebuild or when due)."""
        self._due.pop(key, None)
        if self._armed.pop(key, None) is not None:
            self._compact()

    def next_due(self) -> float | None:
        """When the timer must fire next (it may find nothing due then); None: nothing waits."""
        return self._heap[0][0] if self._heap else None

    def expired(self, now: float) -> list[K]:
        """Keys whose deadline is `now` or earlier; they lose their deadline."""
        heap, due_of, armed_of = self._heap, self._due, self._armed
        out: list[K] = []
        while heap and heap[0][0] <= now:
            armed, _, key = heapq.heappop(heap)
            if armed_of.get(key) != armed:
                continue  # stale: an earlier entry of the key, or a removed key
            due = due_of.get(key)
            if due is None:
                del armed_of[key]  # unset: nothing to watch until the next `set`
            elif due <= now:
                del armed_of[key]
                del due_of[key]
                out.append(key)
            else:
                armed_of[key] = due
                heapq.heappush(heap, (due, next(self._order), key))
        return out

    def _compact(self) -> None:
        heap = self._heap
        if len(heap) <= 2 * len(self._armed) + STALE_SLACK:
            return
        armed = self._armed
        self._heap = [entry for entry in heap if armed.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)
