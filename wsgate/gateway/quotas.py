"""A connection's rate limits and quotas, asked of the shared limiter (memory or Redis).

Owns the bookkeeping of one connection against `core/ratelimit.py`'s `Limiter`: the
principal's connection slot, and for each start the concurrency slot, the start itself
and its estimated tokens, then the token correction once it ended (`core/quota.py`).
Keys are per principal (`streams:<id>`, `starts:<id>`, `tokens:<id>`, `conns:<id>`);
anonymous principals are per client IP. What is refused raises `RateLimited` with its
`retry_after_ms`. A limiter that cannot answer (Redis down) refuses with
`StoreUnavailable`, or admits when `fail_open` (`store.on_unavailable = "run_without_log"`).

Memory: one `TokenTally` per admitted running stream. Undoing (a slot released, a start
refunded) runs in the gateway's background set, so a connection that goes cannot leave a
slot held; a slot is released at most once (`release` is idempotent in the limiter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine
from typing import Any

from wsgate.core.errors import RateLimited, StoreUnavailable
from wsgate.core.frames import ChatRequest
from wsgate.core.principal import Principal
from wsgate.core.quota import TokenTally, estimate_tokens
from wsgate.core.ratelimit import Limiter, Verdict
from wsgate.log import get_logger

log = get_logger("wsgate.gateway")


class Quotas:
    """One connection's slots and tallies."""

    __slots__ = ("_background", "_conn_held", "_fail_open", "_limiter", "_streams", "principal")

    def __init__(
        self,
        limiter: Limiter,
        principal: Principal,
        background: set[asyncio.Future[None]],
        *,
        fail_open: bool = False,
    ) -> None:
        self._limiter = limiter
        self.principal = principal
        self._background = background
        self._fail_open = fail_open
        self._conn_held: str | None = None  # the holder id of this connection's slot
        self._streams: dict[str, tuple[str, TokenTally | None]] = {}  # sid -> (holder, tally)

    # --- connections -------------------------------------------------------------------

    async def admit_connection(self, conn_id: str) -> None:
        """Take the principal's connection slot; raises `RateLimited` when none is free."""
        limit = self.principal.quota.connections
        if not limit:
            return
        key = f"conns:{self.principal.id}"
        verdict = await self._ask(self._limiter.hold(key, conn_id, limit), undo=(key, conn_id))
        if verdict is not None and not verdict.allowed:
            raise RateLimited(
                f"this principal already has {limit} connections",
                retry_after_ms=max(verdict.retry_after_ms, 1000),
            )
        self._conn_held = conn_id if verdict is not None else None

    def close(self, keep: Collection[str] = ()) -> None:
        """The connection ended: give back its connection slot and its streams' slots.

        The streams in `keep` (detached: they go on generating after their client left)
        keep theirs, and their tokens go on counting, until they end (`stream_ended`).
        """
        if self._conn_held is not None:
            self._later(self._limiter.release(f"conns:{self.principal.id}", self._conn_held))
            self._conn_held = None
        for stream_id in list(self._streams):
            if stream_id not in keep:
                self.stream_ended(stream_id)

    # --- streams -----------------------------------------------------------------------

    async def admit_stream(self, stream_id: str, message_id: str, request: ChatRequest) -> None:
        """Admit a start: a concurrency slot, then the start, then its estimated tokens.

        Raises `RateLimited` (what was taken is given back) or `StoreUnavailable`.
        """
        quota = self.principal.quota
        pid = self.principal.id
        held = None
        if quota.concurrent_streams:
            key = f"streams:{pid}"
            verdict = await self._ask(
                self._limiter.hold(key, message_id, quota.concurrent_streams),
                undo=(key, message_id),
            )
            if verdict is not None and not verdict.allowed:
                limit = quota.concurrent_streams
                raise RateLimited(
                    f"this principal already runs {limit} streams",
                    retry_after_ms=max(verdict.retry_after_ms, 1000),
                )
            held = message_id if verdict is not None else None
        try:
            if quota.starts_per_minute:
                verdict = await self._ask(
                    self._limiter.take(f"starts:{pid}", quota.starts_per_minute)
                )
                _raise_if_refused(verdict, f"{quota.starts_per_minute} starts per minute")
            tally = None
            if quota.tokens_per_minute:
                tally = TokenTally(estimate_tokens(request))
                key = f"tokens:{pid}"
                verdict = await self._ask(
                    self._limiter.take(key, quota.tokens_per_minute, tally.estimate)
                )
                if verdict is not None and not verdict.allowed and quota.starts_per_minute:
                    self._later(self._limiter.debit(f"starts:{pid}", quota.starts_per_minute, -1))
                _raise_if_refused(verdict, f"{quota.tokens_per_minute} tokens per minute")
        except BaseException:
            if held is not None:
                self._later(self._limiter.release(f"streams:{pid}", held))
            raise
        self._streams[stream_id] = (held or "", tally)

    def observe(self, stream_id: str, frames: list[Any]) -> None:
        """A delivery of an admitted stream: count its tokens."""
        entry = self._streams.get(stream_id)
        if entry is not None and entry[1] is not None:
            entry[1].observe(frames)

    def turn_started(self, stream_id: str, request: ChatRequest) -> None:
        """An agent loop's next turn of an admitted stream: charge its request's estimate."""
        entry = self._streams.get(stream_id)
        per_minute = self.principal.quota.tokens_per_minute
        if entry is None or entry[1] is None or not per_minute:
            return
        estimate = estimate_tokens(request)
        entry[1].next_turn(estimate)
        key = f"tokens:{self.principal.id}"
        self._later(self._limiter.debit(key, per_minute, estimate))

    def tracks(self, stream_id: str) -> bool:
        """Whether the stream was admitted here and has not ended."""
        return stream_id in self._streams

    def stream_ended(self, stream_id: str) -> None:
        """An admitted stream ended (or was refused after admission): settle it."""
        entry = self._streams.pop(stream_id, None)
        if entry is None:
            return
        holder, tally = entry
        pid = self.principal.id
        if holder:
            self._later(self._limiter.release(f"streams:{pid}", holder))
        per_minute = self.principal.quota.tokens_per_minute
        if tally is not None and tally.correction and per_minute:
            self._later(self._limiter.debit(f"tokens:{pid}", per_minute, tally.correction))

    # --- mechanics ---------------------------------------------------------------------

    async def _ask(
        self, call: Coroutine[Any, Any, Verdict], undo: tuple[str, str] | None = None
    ) -> Verdict | None:
        """The limiter's verdict; None: it cannot answer and the quota is waived (fail open).

        Cancelled while a slot was being taken, the slot is released in the background.
        """
        task = asyncio.ensure_future(call)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if undo is not None:
                key, holder = undo
                task.add_done_callback(lambda _: self._later(self._limiter.release(key, holder)))
            raise
        except StoreUnavailable:
            if self._fail_open:
                log.warning("quota_waived", reason="limiter_unavailable")
                return None
            raise

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)


def _raise_if_refused(verdict: Verdict | None, what: str) -> None:
    if verdict is not None and not verdict.allowed:
        raise RateLimited(f"rate limited: {what}", retry_after_ms=max(1, verdict.retry_after_ms))


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("quota_settle_failed", error=type(task.exception()).__name__)
