"""The memory limiter: rate limits and concurrency slots of one node, in this process.

Owns the single-node `core.ratelimit.Limiter` (`MemoryStore.limiter`): one TAT per rate key
and one set of holders per slot key, in dictionaries. Every decision is `core.ratelimit`'s
(`gcra`, `debit`), on this limiter's clock (monotonic unless a test passes a fake one);
nothing here awaits, so concurrent calls are serialised by the loop and counts are exact.
Nothing is shared with another process: in cluster mode the Redis limiter is the one.

Memory. TATs: a TAT at or behind `now` is the same as none and is dropped, at the call on
its key or by a sweep of every key, run when the dictionary reaches twice its size after
the previous sweep (at least `MIN_SWEEP` keys): amortised O(1) per call, and at most
max(`MIN_SWEEP`, 2 x the keys whose TAT was ahead of `now` at the last sweep) TATs, about
0.2 KiB each. A key's TAT is ahead for at most a minute plus what a debit charged past it.
Holds: one entry per held slot (a running stream, an open connection), so at most the
sum of the limits over the keys in use; a key's set goes with its last holder. Holds do
not expire here: the node that holds them is this process, and its callers release.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from wsgate.core.ratelimit import HOLD_RETRY_MS, Verdict, debit, gcra

MIN_SWEEP: Final = 1024
"""The fewest TATs kept before a sweep drops those in the past."""


class MemoryLimiter:
    """A `Limiter` in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._holds: dict[str, set[str]] = {}
        self._sweep_at = MIN_SWEEP

    @property
    def keys(self) -> int:
        """Rate keys whose TAT is kept (some may be in the past until the next sweep)."""
        return len(self._tats)

    async def take(self, key: str, per_minute: int, cost: float = 1.0) -> Verdict:
        """Spend `cost` of the key's budget, unless it is short (then nothing is spent)."""
        now = self._clock()
        tat, verdict = gcra(self._tats.get(key), now, per_minute, cost)
        if verdict.allowed:
            self._keep(key, tat, now)
        return verdict

    async def debit(self, key: str, per_minute: int, cost: float) -> None:
        """Spend `cost` whatever is left (negative: refund)."""
        now = self._clock()
        self._keep(key, debit(self._tats.get(key), now, per_minute, cost), now)

    async def hold(self, key: str, holder: str, limit: int) -> Verdict:
        """Take a slot of `key` for `holder`, while fewer than `limit` are held."""
        holders = self._holds.get(key)
        if holders is None:
            if limit < 1:
                return Verdict.refuse(HOLD_RETRY_MS)
            holders = self._holds[key] = set()
        if holder not in holders:
            if len(holders) >= limit:
                return Verdict.refuse(HOLD_RETRY_MS)
            holders.add(holder)
        return Verdict.allow(max(0, limit - len(holders)))

    async def release(self, key: str, holder: str) -> None:
        """Give `holder`'s slot back (idempotent)."""
        holders = self._holds.get(key)
        if holders is not None:
            holders.discard(holder)
            if not holders:
                del self._holds[key]

    def held(self, key: str) -> int:
        """How many slots of `key` are held."""
        return len(self._holds.get(key, ()))

    def clear(self) -> None:
        """Forget every TAT and hold (the store closed)."""
        self._tats.clear()
        self._holds.clear()
        self._sweep_at = MIN_SWEEP

    def _keep(self, key: str, tat: float, now: float) -> None:
        tats = self._tats
        if tat > now:
            tats[key] = tat
        else:
            tats.pop(key, None)  # a full bucket: the same as no TAT
        if len(tats) >= self._sweep_at:
            for stale in [k for k, t in tats.items() if t <= now]:
                del tats[stale]
            self._sweep_at = max(MIN_SWEEP, 2 * len(tats))
