"""Rate limits: the GCRA arithmetic, its verdicts, and the `Limiter` every store provides.

Owns the decision of a rate limit (GCRA, the Generic Cell Rate Algorithm of ATM's traffic
policing, with redis-cell's `CL.THROTTLE` semantics) as pure functions of a stored
theoretical arrival time (TAT) and `now`, and the `Limiter` interface the gateway asks
(`wsgate/store/limiter_memory.py`, `wsgate/store/limiter_redis.py`, whose Lua is a port of
`gcra` and `debit` here). No I/O and no clock: `now` comes in (seconds, on any one clock).

The rule. A limit of `per_minute` has an emission interval T = 60 / per_minute seconds and
a burst of `per_minute`: a fresh key (no TAT, or one in the past) may spend `per_minute`
at once, then one every T. A call of `cost` moves the TAT to max(TAT, now) + cost * T; it
is allowed while the TAT stays within one minute (`WINDOW_S`) of `now`. Costs may be
fractional or above 1 (tokens); a cost above the whole burst is admitted only into a full
bucket (its TAT not ahead of `now`), else it could never run. `debit` always applies (the
tokens a stream really used, known after it): it may push the TAT past the window (the
balance is negative, and takes are refused until time repays it); a negative cost refunds,
never past a full bucket. A TAT at or before `now` is the same as none: stores drop it.

`SLACK_S` absorbs float rounding: the TAT is a sum of many T's (60 / 7 is not exact), and
the last request of an exact burst must not be refused for 1e-14 s. A request 1 µs early
is thus admitted; a retry after `retry_after_ms` is always admitted (same rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["HOLD_RETRY_MS", "SLACK_S", "WINDOW_S", "Limiter", "Verdict", "debit", "gcra"]

WINDOW_S: Final = 60.0
"""How far ahead of `now` a TAT may be: one minute, the unit of every limit."""
SLACK_S: Final = 1e-6
"""How early a request may come and still be admitted (float rounding of the TAT sums)."""
HOLD_RETRY_MS: Final = 1000
"""The `retry_after_ms` of a refused `hold`: when a slot frees is unknown, so a hint."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A limiter's answer: allowed or not, when to retry (ms; 0 if allowed), what is left.

    `remaining`: for a rate, the cost-1 calls still allowed now; for a hold, free slots.
    """

    allowed: bool
    retry_after_ms: int
    remaining: int

    @classmethod
    def allow(cls, remaining: int) -> Verdict:
        """Allowed, with `remaining` left."""
        return cls(allowed=True, retry_after_ms=0, remaining=remaining)

    @classmethod
    def refuse(cls, retry_after_ms: int, remaining: int = 0) -> Verdict:
        """Refused: retry in `retry_after_ms`."""
        return cls(allowed=False, retry_after_ms=retry_after_ms, remaining=remaining)


def interval(per_minute: int) -> float:
    """The emission interval T of a limit: seconds between two calls of cost 1."""
    if per_minute < 1:
        raise ValueError("a rate limit is at least 1 per minute")
    return WINDOW_S / per_minute


def gcra(
    tat: float | None, now: float, per_minute: int, cost: float = 1.0
) -> tuple[float, Verdict]:
    """A call of `cost` against the TAT `tat` (None: a fresh key): the new TAT and the verdict.

    Refused, the TAT is unchanged and `retry_after_ms` is the wait until the same call
    would pass (rounded up to the ms).
    """
    t = interval(per_minute)
    base = now if tat is None or tat < now else tat
    wait = base - now + min(cost, per_minute) * t - WINDOW_S
    if wait > SLACK_S:
        return base, Verdict.refuse(retry_ms(wait), remaining(base - now, t))  # (base is tat)
    new = max(now, base + cost * t)
    return new, Verdict.allow(remaining(new - now, t))


def debit(tat: float | None, now: float, per_minute: int, cost: float) -> float:
    """Charge `cost` whatever the balance (negative: refund, up to a full bucket)."""
    t = interval(per_minute)
    base = now if tat is None or tat < now else tat
    return max(now, base + cost * t)


def remaining(ahead: float, t: float) -> int:
    """Cost-1 calls still allowed with the TAT `ahead` seconds ahead of now (at least 0)."""
    return max(0, math.floor((WINDOW_S - ahead + SLACK_S) / t))


def retry_ms(wait: float) -> int:
    """A wait of `wait` seconds (past the slack) in whole ms, rounded up, at least 1."""
    return max(1, math.ceil((wait - SLACK_S) * 1000))


class Limiter(Protocol):
    """Rate limits and concurrency slots by key, shared by the nodes of one store.

    Keys are the caller's (`starts:<principal>`, `streams:<principal>`, ...); a key is
    either a rate (`take`, `debit`) or a set of slots (`hold`, `release`), never both.
    A limiter that cannot reach its backend raises `StoreUnavailable`.
    """

    async def take(self, key: str, per_minute: int, cost: float = 1.0) -> Verdict:
        """Spend `cost` of the key's `per_minute` budget; refused (nothing spent) when short."""

    async def debit(self, key: str, per_minute: int, cost: float) -> None:
        """Spend `cost` whatever is left (the balance may go negative); negative refunds."""

    async def hold(self, key: str, holder: str, limit: int) -> Verdict:
        """Take one of the key's `limit` slots for `holder` (held already: allowed again)."""

    async def release(self, key: str, holder: str) -> None:
        """Give `holder`'s slot back (idempotent: nothing held is nothing to do)."""
