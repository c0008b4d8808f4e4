"""When to call the provider again: retries before the first token, with jittered backoff.

Owns one decision: after attempt `n` failed with `error`, `elapsed` seconds after the first
request, wait how long before attempt `n + 1`, or give up. It does no I/O, keeps no clock and
draws no random numbers: the shell passes the time and a uniform `jitter` in [0, 1).

Rules:
1. Only `error.transient` errors are retried (connect failures, HTTP 429, 5xx and 529, the
   providers' in-band overloaded and server errors); the caller retries only while nothing
   but `stream.started` and `delta.role` reached the client, so there is never a duplicate
   delta. After the first token there is no retry.
2. At most `max_attempts` retries (so `max_attempts + 1` calls in all); 0 turns retries off.
3. The wait is "full jitter" exponential backoff, `jitter * min(max_delay, base * 2**(n-1))`,
   but never shorter than the provider's `Retry-After` (`error.retry_after_ms`), which is
   honoured as given, even beyond `max_delay`.
4. `budget` bounds the whole affair: a retry whose wait would end later than `budget`
   seconds after the first request is not made (a `Retry-After` of a minute with a 15 s
   budget gives up at once, and the client gets that `retry_after_ms`); nor is one that
   would not start before the stream's own deadline (`time_left`), so the client gets the
   provider's error rather than a timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsgate.core.errors import WsgateError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed provider call is retried before its first token."""

    max_attempts: int = 2
    base_delay: float = 0.25
    max_delay: float = 4.0
    budget: float = 15.0

    def delay(
        self,
        attempt: int,
        error: WsgateError,
        elapsed: float,
        jitter: float,
        time_left: float | None = None,
    ) -> float | None:
        """Seconds to wait before retry number `attempt` (from 1), or None to give up.

        `time_left`: seconds until the stream's own deadline (its first-token timeout), if
        it has one; a retry that would not start before it is not made (rule 4).
        """
        if not error.transient or attempt > self.max_attempts:
            return None
        backoff = jitter * min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        if error.retry_after_ms is not None:
            backoff = max(backoff, error.retry_after_ms / 1000)
        if elapsed + backoff > self.budget:
            return None
        if time_left is not None and backoff >= time_left:
            return None
        return backoff
