"""The limiter contract (`wsgate.core.ratelimit.Limiter`), run unchanged on memory and Redis.

Each test gets the limiters of two nodes, `here` and `there`: for Redis those of two
`RedisStore`s sharing one private `redis-server` (so the counts below are one budget
across nodes); for memory the same limiter twice (a memory store is one node). Counts
under concurrency are exact. Redis' own cases (hold leases, keys, outages) follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from wsgate.core.ratelimit import Limiter
from wsgate.core.store import StoreLimits, StoreUnavailable
from wsgate.store.limiter_redis import RedisLimiter
from wsgate.store.memory import MemoryStore
from wsgate.store.redis import RedisStore
from wsgate.testing_redis import RedisServer

LEASE_S = 0.4  # holds live 0.8 s unrefreshed; refreshed every 0.2 s
LIMITS = StoreLimits(window_s=5.0, run_ttl_s=30.0, lease_s=LEASE_S)


@dataclass
class Nodes:
    here: Limiter
    there: Limiter


@pytest.fixture(params=["memory", "redis"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    if request.param == "memory":
        store = MemoryStore(LIMITS)
        await store.start()
        yield Nodes(store.limiter, store.limiter)
        await store.close()
        return
    redis_url: str = request.getfixturevalue("redis_url")
    here = RedisStore(redis_url, LIMITS, node_id="node-a")
    there = RedisStore(redis_url, LIMITS, node_id="node-b")
    await here.start()
    await there.start()
    yield Nodes(here.limiter, there.limiter)
    await here.close()
    await there.close()


def either(nodes: Nodes, n: int) -> Limiter:
    return nodes.here if n % 2 else nodes.there


# --- rates ------------------------------------------------------------------------------


async def test_two_hundred_concurrent_takes_of_fifty_per_minute_allow_exactly_fifty(
    nodes: Nodes,
) -> None:
    verdicts = await asyncio.gather(*(nodes.here.take("starts:p", 50) for _ in range(200)))
    assert sum(v.allowed for v in verdicts) == 50
    assert all(v.retry_after_ms > 0 for v in verdicts if not v.allowed)


async def test_two_nodes_taking_at_once_share_one_budget_exactly(nodes: Nodes) -> None:
    verdicts = await asyncio.gather(*(either(nodes, n).take("starts:p", 50) for n in range(200)))
    assert sum(v.allowed for v in verdicts) == 50


async def test_keys_have_budgets_of_their_own(nodes: Nodes) -> None:
    first = await asyncio.gather(*(nodes.here.take("starts:a", 3) for _ in range(5)))
    second = await asyncio.gather(*(nodes.there.take("starts:b", 3) for _ in range(5)))
    assert sum(v.allowed for v in first) == sum(v.allowed for v in second) == 3


async def test_a_refusal_says_about_one_interval_to_retry_and_nothing_remains(
    nodes: Nodes,
) -> None:
    for _ in range(60):
        assert (await nodes.here.take("starts:p", 60)).allowed
    refused = await nodes.there.take("starts:p", 60)
    assert not refused.allowed
    assert 900 < refused.retry_after_ms <= 1000
    assert refused.remaining == 0


async def test_the_remaining_count_goes_down_with_each_take(nodes: Nodes) -> None:
    counts = [(await either(nodes, n).take("starts:p", 5)).remaining for n in range(5)]
    assert counts == [4, 3, 2, 1, 0]


async def test_fractional_costs_fit_the_budget_exactly(nodes: Nodes) -> None:
    verdicts = await asyncio.gather(
        *(either(nodes, n).take("tokens:p", 10, 0.5) for n in range(30))
    )
    assert sum(v.allowed for v in verdicts) == 20


async def test_a_take_of_many_tokens_spends_them_all(nodes: Nodes) -> None:
    assert (await nodes.here.take("tokens:p", 1000, 600)).remaining == 400
    assert not (await nodes.there.take("tokens:p", 1000, 401)).allowed
    assert (await nodes.there.take("tokens:p", 1000, 400)).allowed


async def test_a_debit_past_the_budget_refuses_takes_until_time_repays_it(nodes: Nodes) -> None:
    await nodes.here.debit("tokens:p", 60, 100)  # 40 owed at one a second
    refused = await nodes.there.take("tokens:p", 60)
    assert not refused.allowed
    assert 40_000 < refused.retry_after_ms <= 41_000


async def test_a_negative_debit_refunds_what_was_taken(nodes: Nodes) -> None:
    for _ in range(10):
        assert (await nodes.here.take("starts:p", 10)).allowed
    assert not (await nodes.here.take("starts:p", 10)).allowed
    await nodes.there.debit("starts:p", 10, -3)
    verdicts = [await nodes.here.take("starts:p", 10) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]


async def test_a_refund_on_a_fresh_key_gives_no_credit_past_the_budget(nodes: Nodes) -> None:
    await nodes.here.debit("starts:p", 5, -100)
    verdicts = await asyncio.gather(*(nodes.there.take("starts:p", 5) for _ in range(8)))
    assert sum(v.allowed for v in verdicts) == 5


# --- holds ------------------------------------------------------------------------------


async def test_a_hundred_concurrent_holds_of_seven_slots_get_exactly_seven(nodes: Nodes) -> None:
    verdicts = await asyncio.gather(*(nodes.here.hold("streams:p", f"h{n}", 7) for n in range(100)))
    assert sum(v.allowed for v in verdicts) == 7
    assert all(v.retry_after_ms > 0 for v in verdicts if not v.allowed)


async def test_two_nodes_holding_at_once_share_one_set_of_slots_exactly(nodes: Nodes) -> None:
    verdicts = await asyncio.gather(
        *(either(nodes, n).hold("streams:p", f"h{n}", 7) for n in range(100))
    )
    assert sum(v.allowed for v in verdicts) == 7


async def test_holding_again_takes_no_second_slot(nodes: Nodes) -> None:
    assert (await nodes.here.hold("conns:p", "c1", 2)).remaining == 1
    assert (await nodes.here.hold("conns:p", "c1", 2)).remaining == 1
    assert (await nodes.there.hold("conns:p", "c2", 2)).allowed
    assert not (await nodes.there.hold("conns:p", "c3", 2)).allowed


async def test_a_released_slot_is_free_for_another_holder(nodes: Nodes) -> None:
    assert (await nodes.here.hold("streams:p", "m1", 1)).allowed
    assert not (await nodes.there.hold("streams:p", "m2", 1)).allowed
    await nodes.here.release("streams:p", "m1")
    assert (await nodes.there.hold("streams:p", "m2", 1)).allowed


async def test_release_is_idempotent_and_frees_only_its_holder(nodes: Nodes) -> None:
    await nodes.here.hold("streams:p", "m1", 2)
    await nodes.here.hold("streams:p", "m2", 2)
    await nodes.here.release("streams:p", "m1")
    await nodes.here.release("streams:p", "m1")
    await nodes.there.release("streams:p", "never-held")
    await nodes.there.release("nobody:p", "m1")
    assert (await nodes.there.hold("streams:p", "m3", 2)).allowed
    assert not (await nodes.there.hold("streams:p", "m4", 2)).allowed


# --- Redis only -------------------------------------------------------------------------


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    here = RedisStore(redis_url, LIMITS, node_id="node-a")
    there = RedisStore(redis_url, LIMITS, node_id="node-b")
    await here.start()
    await there.start()
    yield here, there
    await here.close()
    await there.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_holds_a_node_refreshes_outlive_their_lease(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    here, there = pair
    assert (await here.limiter.hold("streams:p", "m1", 1)).allowed
    await asyncio.sleep(LEASE_S * 4)
    assert not (await there.limiter.hold("streams:p", "m2", 1)).allowed


async def test_the_holds_of_a_node_that_stops_refreshing_vanish_after_two_leases(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    here, there = pair
    assert (await here.limiter.hold("streams:p", "m1", 1)).allowed
    refresher = here.limiter._refresher
    assert refresher is not None
    refresher.cancel()  # as a SIGKILLed node: nothing refreshes, nothing releases
    await asyncio.sleep(LEASE_S * 1.5)
    assert not (await there.limiter.hold("streams:p", "m2", 1)).allowed
    await asyncio.sleep(LEASE_S * 1.2)  # 2.7 leases: past 2 after the last refresh
    assert (await there.limiter.hold("streams:p", "m2", 1)).allowed


async def test_a_closed_node_gives_its_holds_back(redis_url: str) -> None:
    here = RedisStore(redis_url, LIMITS, node_id="node-a")
    there = RedisStore(redis_url, LIMITS, node_id="node-b")
    await here.start()
    await there.start()
    try:
        assert (await here.limiter.hold("conns:p", "c1", 1)).allowed
        await here.close()
        assert (await there.limiter.hold("conns:p", "c2", 1)).allowed
    finally:
        await here.close()
        await there.close()


async def test_a_release_overtaking_a_refresh_stays_released(
    pair: tuple[RedisStore, RedisStore], raw: aioredis.Redis
) -> None:
    here, there = pair
    limiter = here.limiter
    await limiter.hold("streams:p", "m1", 1)
    await limiter.release("streams:p", "m1")
    limiter._owned["streams:p"] = {"m1"}  # a refresh that read its holders before the release
    await limiter.refresh()
    assert await raw.zcard(b"wsg:rl:streams:p") == 0
    assert (await there.limiter.hold("streams:p", "m2", 1)).allowed


async def test_limiter_keys_are_the_prefix_rl_and_the_key_and_expire_by_themselves(
    pair: tuple[RedisStore, RedisStore], raw: aioredis.Redis
) -> None:
    here, _ = pair
    await here.limiter.take("starts:key:alice", 60)
    await here.limiter.hold("streams:key:alice", "m1", 3)
    assert await raw.type(b"wsg:rl:starts:key:alice") == b"string"
    assert 0 < await raw.pttl(b"wsg:rl:starts:key:alice") <= 1000  # one interval ahead
    assert await raw.type(b"wsg:rl:streams:key:alice") == b"zset"
    assert 0 < await raw.pttl(b"wsg:rl:streams:key:alice") <= LEASE_S * 2 * 1000
    assert await raw.zrange(b"wsg:rl:streams:key:alice", 0, -1) == [b"m1"]


async def test_a_refund_back_to_a_full_bucket_deletes_the_key(
    pair: tuple[RedisStore, RedisStore], raw: aioredis.Redis
) -> None:
    here, _ = pair
    await here.limiter.take("starts:p", 10)
    await here.limiter.debit("starts:p", 10, -1)
    assert not await raw.exists(b"wsg:rl:starts:p")


async def test_scripts_that_redis_forgot_are_sent_again(
    pair: tuple[RedisStore, RedisStore], raw: aioredis.Redis
) -> None:
    here, _ = pair
    assert (await here.limiter.take("starts:p", 5)).allowed
    await here.limiter.hold("streams:p", "m1", 5)
    await raw.script_flush()
    assert (await here.limiter.take("starts:p", 5)).remaining == 3
    assert (await here.limiter.hold("streams:p", "m2", 5)).remaining == 3
    await raw.script_flush()
    await here.limiter.refresh()
    assert await raw.zcard(b"wsg:rl:streams:p") == 2


async def test_a_take_cancelled_in_flight_leaves_the_limiter_usable(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    here, _ = pair
    calls = (
        lambda: here.limiter.take("starts:p", 5),
        lambda: here.limiter.hold("streams:p", "m1", 5),
    )
    for call in calls:
        task = asyncio.ensure_future(call())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await here.limiter.take("starts:p", 5)).allowed
    assert (await here.limiter.hold("streams:p", "m2", 5)).allowed


async def test_a_take_cancelled_before_its_batch_went_out_spends_nothing(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    here, _ = pair
    first = asyncio.ensure_future(here.limiter.take("starts:p", 2))
    await asyncio.sleep(0)  # queued; its batch goes out at the next turn
    second = asyncio.ensure_future(here.limiter.take("starts:p", 2))
    await asyncio.sleep(0)  # the first batch is in flight, the second take waits for the next
    second.cancel()
    assert (await first).allowed
    with pytest.raises(asyncio.CancelledError):
        await second
    assert (await here.limiter.take("starts:p", 2)).remaining == 0  # two spent, not three


async def test_a_limiter_whose_redis_is_down_raises_store_unavailable(
    pair: tuple[RedisStore, RedisStore], redis_server: RedisServer
) -> None:
    here, _ = pair
    limiter: RedisLimiter = here.limiter
    await limiter.hold("streams:p", "m1", 5)
    await asyncio.to_thread(redis_server.stop)
    for call in (
        lambda: limiter.take("starts:p", 5),
        lambda: limiter.debit("tokens:p", 5, 1),
        lambda: limiter.hold("streams:p", "m2", 5),
        limiter.refresh,
        lambda: limiter.release("streams:p", "m1"),
    ):
        with pytest.raises(StoreUnavailable):
            await call()
    assert not here.healthy  # the store probes until Redis is back


async def test_a_key_used_as_a_rate_and_as_slots_is_refused_as_store_unavailable(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    here, _ = pair
    await here.limiter.take("mixed", 5)
    with pytest.raises(StoreUnavailable):
        await here.limiter.hold("mixed", "m1", 5)
    assert here.healthy  # a refusal is not an outage
