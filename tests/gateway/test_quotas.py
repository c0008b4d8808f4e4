"""A connection's quota bookkeeping (gateway/quotas.py) against the memory limiter."""

from __future__ import annotations

import asyncio

import pytest

from wsgate.core.errors import RateLimited, StoreUnavailable
from wsgate.core.frames import ChatRequest, DeltaText, Message, UsageFrame
from wsgate.core.principal import Principal, Quota
from wsgate.core.ratelimit import Verdict
from wsgate.gateway.quotas import Quotas
from wsgate.store.limiter_memory import MemoryLimiter

REQUEST = ChatRequest(model="mock", messages=[Message(role="user", content="x" * 400)])


def quotas(limiter, quota: Quota, background=None, *, fail_open=False) -> Quotas:
    principal = Principal("key:k", "api_key", quota=quota)
    return Quotas(
        limiter, principal, background if background is not None else set(), fail_open=fail_open
    )


async def settle(background: set) -> None:
    while background:
        await asyncio.gather(*background)


async def test_concurrent_streams_past_the_quota_are_rate_limited_and_freed_at_their_end():
    limiter, background = MemoryLimiter(), set()
    q = quotas(limiter, Quota(concurrent_streams=2), background)
    await q.admit_stream("s1", "m1", REQUEST)
    await q.admit_stream("s2", "m2", REQUEST)
    with pytest.raises(RateLimited) as refused:
        await q.admit_stream("s3", "m3", REQUEST)
    assert refused.value.retry_after_ms >= 1000
    q.stream_ended("s1")
    await settle(background)
    await q.admit_stream("s3", "m3", REQUEST)
    assert limiter.held("streams:key:k") == 2


async def test_starts_per_minute_refuse_with_the_wait_until_the_next_start():
    q = quotas(MemoryLimiter(), Quota(starts_per_minute=3))
    for n in range(3):
        await q.admit_stream(f"s{n}", f"m{n}", REQUEST)
    with pytest.raises(RateLimited) as refused:
        await q.admit_stream("s9", "m9", REQUEST)
    assert 19_000 <= refused.value.retry_after_ms <= 20_000  # one start per 20 s


async def test_a_refused_start_gives_back_its_stream_slot():
    limiter, background = MemoryLimiter(), set()
    q = quotas(limiter, Quota(concurrent_streams=5, starts_per_minute=1), background)
    await q.admit_stream("s1", "m1", REQUEST)
    with pytest.raises(RateLimited):
        await q.admit_stream("s2", "m2", REQUEST)
    await settle(background)
    assert limiter.held("streams:key:k") == 1


async def test_tokens_are_estimated_at_the_start_and_corrected_from_usage_at_the_end():
    limiter, background = MemoryLimiter(), set()
    q = quotas(limiter, Quota(tokens_per_minute=1000), background)
    await q.admit_stream("s1", "m1", REQUEST)  # 400 chars: 100 tokens charged
    q.observe("s1", [DeltaText("s1", 1, "a"), UsageFrame("s1", 2, 100, 850)])
    q.stream_ended("s1")  # 950 in all: 850 more debited
    await settle(background)
    with pytest.raises(RateLimited):
        await q.admit_stream("s2", "m2", REQUEST)  # 100 more would pass the minute's 1000


async def test_without_usage_each_delta_counts_as_a_token():
    limiter, background = MemoryLimiter(), set()
    q = quotas(limiter, Quota(tokens_per_minute=250), background)
    await q.admit_stream("s1", "m1", REQUEST)  # 100
    q.observe("s1", [DeltaText("s1", n, "a") for n in range(1, 101)])  # +100
    q.stream_ended("s1")
    await settle(background)
    with pytest.raises(RateLimited):
        await q.admit_stream("s2", "m2", REQUEST)  # 300 > 250


async def test_the_connection_quota_counts_open_connections_of_the_principal():
    limiter, background = MemoryLimiter(), set()
    first = quotas(limiter, Quota(connections=1), background)
    second = quotas(limiter, Quota(connections=1), background)
    await first.admit_connection("c1")
    with pytest.raises(RateLimited):
        await second.admit_connection("c2")
    first.close()
    await settle(background)
    await second.admit_connection("c2")


class DownLimiter:
    """Redis is down: every call fails."""

    async def take(self, *_args: object) -> Verdict:
        raise StoreUnavailable("down")

    async def debit(self, *_args: object) -> None:
        raise StoreUnavailable("down")

    async def hold(self, *_args: object) -> Verdict:
        raise StoreUnavailable("down")

    async def release(self, *_args: object) -> None:
        raise StoreUnavailable("down")


async def test_a_limiter_that_cannot_answer_refuses_unless_fail_open():
    with pytest.raises(StoreUnavailable):
        await quotas(DownLimiter(), Quota(starts_per_minute=1)).admit_stream("s", "m", REQUEST)
    await quotas(DownLimiter(), Quota(starts_per_minute=1), fail_open=True).admit_stream(
        "s", "m", REQUEST
    )


class HangingHold(MemoryLimiter):
    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def hold(self, key, holder, limit) -> Verdict:
        self.entered.set()
        await self.gate.wait()
        return await super().hold(key, holder, limit)


async def test_a_start_cancelled_while_its_slot_is_taken_releases_the_slot():
    limiter, background = HangingHold(), set()
    q = quotas(limiter, Quota(concurrent_streams=1), background)
    admit = asyncio.ensure_future(q.admit_stream("s1", "m1", REQUEST))
    await limiter.entered.wait()
    admit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admit
    limiter.gate.set()  # the limiter answers after all: the slot must not stay taken
    for _ in range(5):
        await asyncio.sleep(0)
    await settle(background)
    assert limiter.held("streams:key:k") == 0
    assert not q.tracks("s1")


async def test_closing_keeps_the_slots_and_tallies_of_the_streams_that_detached():
    limiter, background = MemoryLimiter(), set()
    q = quotas(limiter, Quota(concurrent_streams=3, tokens_per_minute=1000), background)
    await q.admit_stream("gone", "m1", REQUEST)
    await q.admit_stream("detached", "m2", REQUEST)
    q.close(keep={"detached"})
    await settle(background)
    assert limiter.held("streams:key:k") == 1  # the detached stream still runs under it
    assert q.tracks("detached")
    assert not q.tracks("gone")
    q.observe("detached", [DeltaText("detached", 1, "t")])
    q.stream_ended("detached")
    await settle(background)
    assert limiter.held("streams:key:k") == 0
