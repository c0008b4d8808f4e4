"""What only the memory limiter does: its clock is the caller's, and past TATs are swept."""

from __future__ import annotations

from wsgate.store.limiter_memory import MIN_SWEEP, MemoryLimiter
from wsgate.testing import FakeClock


async def test_the_memory_limiter_judges_on_its_clock():
    clock = FakeClock()
    limiter = MemoryLimiter(lambda: clock.now)
    assert [(await limiter.take("k", 60)).allowed for _ in range(61)] == [True] * 60 + [False]
    refused = await limiter.take("k", 60)
    assert refused.retry_after_ms == 1000
    clock.advance(1)
    assert (await limiter.take("k", 60)).allowed
    assert not (await limiter.take("k", 60)).allowed


async def test_a_full_bucket_keeps_no_tat():
    clock = FakeClock()
    limiter = MemoryLimiter(lambda: clock.now)
    await limiter.take("k", 10)
    assert limiter.keys == 1
    await limiter.debit("k", 10, -1)
    assert limiter.keys == 0


async def test_tats_in_the_past_are_swept_so_memory_follows_the_active_keys():
    clock = FakeClock()
    limiter = MemoryLimiter(lambda: clock.now)
    for round_ in range(5):
        for n in range(3 * MIN_SWEEP):
            await limiter.take(f"r{round_}:k{n}", 60)
        assert limiter.keys <= 2 * 3 * MIN_SWEEP
        clock.advance(2)  # every TAT (1 s ahead) is in the past now
    await limiter.take("last", 60)
    assert limiter.keys <= 2 * 3 * MIN_SWEEP


async def test_a_key_with_no_holder_left_is_forgotten():
    limiter = MemoryLimiter()
    await limiter.hold("streams:p", "m1", 2)
    await limiter.release("streams:p", "m1")
    assert limiter._holds == {}
    assert not (await limiter.hold("streams:p", "m1", 0)).allowed
    assert limiter._holds == {}
