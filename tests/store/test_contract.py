"""The store contract (`wsgate.core.store.Store`), run unchanged on memory and on Redis.

Each test gets two stores of one backend, `here` and `there`: for Redis two nodes sharing
one private `redis-server`; for memory the same store twice (a memory store is one node).
Lifetimes are short and real (the Redis store's are Redis's own TTLs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from wsgate.core.store import LogBound, Store, StoreLimits
from wsgate.store.memory import MemoryStore
from wsgate.store.redis import RedisStore

LIMITS = StoreLimits(window_s=0.4, max_frames=50, max_bytes=4096, run_ttl_s=1.2, lease_s=0.5)


@dataclass
class Pair:
    here: Store
    there: Store


@pytest.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    if request.param == "memory":
        store = MemoryStore(LIMITS)
        await store.start()
        yield Pair(store, store)
        await store.close()
        return
    redis_url: str = request.getfixturevalue("redis_url")
    here = RedisStore(redis_url, LIMITS, node_id="node-a")
    there = RedisStore(redis_url, LIMITS, node_id="node-b")
    await here.start()
    await there.start()
    yield Pair(here, there)
    await here.close()
    await there.close()


def frame(seq: int, text: str = "x") -> bytes:
    return b'{"type":"delta.text","stream_id":"s","seq":%d,"text":"%s"}' % (seq, text.encode())


async def logged(pair: Pair, message_id: str, frames: int) -> None:
    pair.here.begin(message_id, "e1")
    for seq in range(1, frames + 1):
        pair.here.append(message_id, seq, frame(seq))
    await pair.here.flush()


async def test_a_read_returns_the_frames_after_the_asked_seq_in_order(pair: Pair) -> None:
    await logged(pair, "m1", 5)
    page = await pair.there.read("m1", 2, 100)
    assert page is not None
    assert page.entries == [(3, frame(3)), (4, frame(4)), (5, frame(5))]
    assert (page.meta.state, page.meta.first, page.meta.top, page.meta.epoch) == (
        "running",
        1,
        5,
        "e1",
    )
    assert page.meta.owner == pair.here.node_id
    assert page.owner_alive


async def test_a_read_of_an_unknown_message_is_none(pair: Pair) -> None:
    assert await pair.there.read("nobody", 0, 10) is None


async def test_appending_a_seq_again_does_not_double_it(pair: Pair) -> None:
    await logged(pair, "m1", 3)
    pair.here.append("m1", 2, frame(2, "other"))
    pair.here.append("m1", 3, frame(3, "other"))
    await pair.here.flush()
    page = await pair.there.read("m1", 0, 100)
    assert page is not None
    assert page.entries == [(1, frame(1)), (2, frame(2)), (3, frame(3))]


async def test_a_read_pages_by_its_limit(pair: Pair) -> None:
    await logged(pair, "m1", 10)
    first = await pair.there.read("m1", 0, 4)
    assert first is not None
    assert [seq for seq, _ in first.entries] == [1, 2, 3, 4]
    second = await pair.there.read("m1", 4, 4)
    assert second is not None
    assert [seq for seq, _ in second.entries] == [5, 6, 7, 8]


async def test_an_ended_message_says_its_finish(pair: Pair) -> None:
    await logged(pair, "m1", 2)
    pair.here.end("m1", "stop")
    await pair.here.flush()
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.state, page.meta.finish, page.meta.top) == ("ended", "stop", 2)
    assert len(page.entries) == 2


async def test_an_ended_log_expires_after_the_window_then_its_record_after_another(
    pair: Pair,
) -> None:
    await logged(pair, "m1", 2)
    pair.here.end("m1", "stop")
    await pair.here.flush()
    await asyncio.sleep(LIMITS.window_s + 0.15)
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert page.meta.expired
    assert page.entries == []
    await asyncio.sleep(LIMITS.window_s + 0.15)
    assert await pair.there.read("m1", 0, 10) is None


async def test_a_running_message_that_nobody_ends_expires_after_the_run_ttl(pair: Pair) -> None:
    await logged(pair, "m1", 1)
    await asyncio.sleep(LIMITS.run_ttl_s + 0.2)
    page = await pair.there.read("m1", 0, 10)
    assert page is None or (page.meta.expired and page.entries == [])


async def test_a_log_past_its_frame_bound_drops_its_oldest_frames(pair: Pair) -> None:
    await logged(pair, "m1", LIMITS.max_frames + 10)
    page = await pair.there.read("m1", 0, 1000)
    assert page is not None
    assert page.meta.first == 11
    assert [seq for seq, _ in page.entries] == list(range(11, LIMITS.max_frames + 11))


async def test_a_log_past_its_byte_bound_drops_its_oldest_frames(pair: Pair) -> None:
    pair.here.begin("m1", "e1")
    big = [b"%04d" % seq + b"y" * 996 for seq in range(1, 11)]  # 1000 bytes each
    for seq, data in enumerate(big, 1):
        pair.here.append("m1", seq, data)
    await pair.here.flush()
    page = await pair.there.read("m1", 0, 100)
    assert page is not None
    assert page.meta.first == 7  # 4 x 1000 bytes fit in 4096
    assert [data for _, data in page.entries] == big[6:]


async def test_a_claim_binds_its_key_once_and_begins_the_message(pair: Pair) -> None:
    first = await pair.here.claim("k1", "fp1", "m1", "e1")
    assert (first.message_id, first.fingerprint, first.new) == ("m1", "fp1", True)
    again = await pair.there.claim("k1", "fp2", "m2", "e2")
    assert (again.message_id, again.fingerprint, again.new) == ("m1", "fp1", False)
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.state, page.meta.epoch, page.meta.owner) == (
        "running",
        "e1",
        pair.here.node_id,
    )
    assert await pair.there.read("m2", 0, 10) is None


async def test_concurrent_claims_of_one_key_make_one_message(pair: Pair) -> None:
    claims = await asyncio.gather(
        *((pair.here if n % 2 else pair.there).claim("k1", "fp", f"m{n}", "e") for n in range(10))
    )
    assert sum(claim.new for claim in claims) == 1
    assert len({claim.message_id for claim in claims}) == 1


async def test_a_key_is_free_again_once_its_message_log_expired(pair: Pair) -> None:
    await pair.here.claim("k1", "fp1", "m1", "e1")
    pair.here.end("m1", "stop")
    await pair.here.flush()
    await asyncio.sleep(LIMITS.window_s + 0.15)
    claim = await pair.there.claim("k1", "fp1", "m2", "e2")
    assert (claim.message_id, claim.new) == ("m2", True)


async def test_a_watcher_is_woken_after_frames_are_logged(pair: Pair) -> None:
    pair.here.begin("m1", "e1")
    await pair.here.flush()
    woken = asyncio.Event()
    unwatch = pair.there.watch("m1", pair.here.node_id, woken.set)
    await asyncio.sleep(0.05)  # a subscription takes a round trip to hold
    pair.here.append("m1", 1, frame(1))
    await pair.here.flush()
    await asyncio.wait_for(woken.wait(), 2.0)
    unwatch()


async def test_a_watcher_is_woken_when_the_message_ends(pair: Pair) -> None:
    await logged(pair, "m1", 1)
    woken = asyncio.Event()
    unwatch = pair.there.watch("m1", pair.here.node_id, woken.set)
    await asyncio.sleep(0.05)
    pair.here.end("m1", "stop")
    await pair.here.flush()
    await asyncio.wait_for(woken.wait(), 2.0)
    unwatch()


async def test_a_cancel_reaches_the_owner_nodes_handler(pair: Pair) -> None:
    got: list[str] = []
    arrived = asyncio.Event()

    def handler(message_id: str) -> None:
        got.append(message_id)
        arrived.set()

    pair.here.on_cancel(handler)
    await asyncio.sleep(0.05)
    await pair.there.cancel("m1", pair.here.node_id)
    await asyncio.wait_for(arrived.wait(), 2.0)
    assert got == ["m1"]


async def test_a_store_with_its_backend_up_is_healthy(pair: Pair) -> None:
    assert pair.here.healthy
    assert pair.there.healthy


def test_the_log_bound_keeps_the_newest_frame_whatever_its_size() -> None:
    bound = LogBound(max_frames=3, max_bytes=10)
    assert bound.add(1, 4) == 1
    assert bound.add(2, 4) == 1
    assert bound.add(3, 4) == 2  # 12 bytes > 10: the oldest goes
    assert bound.add(4, 100) == 4  # alone over the bound, and kept
    assert bound.bytes == 100


def test_the_log_bound_keeps_at_most_max_frames() -> None:
    bound = LogBound(max_frames=3, max_bytes=10_000)
    firsts = [bound.add(seq, 1) for seq in range(1, 8)]
    assert firsts == [1, 1, 1, 2, 3, 4, 5]


async def test_a_released_claim_frees_its_key_and_forgets_its_message(pair: Pair) -> None:
    await pair.here.claim("k1", "fp1", "m1", "e1")
    await pair.here.release("k1", "m1")
    assert await pair.there.read("m1", 0, 10) is None
    claim = await pair.there.claim("k1", "fp1", "m2", "e2")
    assert (claim.message_id, claim.new) == ("m2", True)


async def test_releasing_a_claim_leaves_a_key_that_names_another_message(pair: Pair) -> None:
    await pair.here.claim("k1", "fp1", "m1", "e1")
    await pair.here.release("k1", "m-other")
    claim = await pair.there.claim("k1", "fp1", "m2", "e2")
    assert (claim.message_id, claim.new) == ("m1", False)


async def test_a_message_records_the_principal_it_was_begun_for(pair: Pair) -> None:
    pair.here.begin("m1", "e1", principal="key:alice")
    pair.here.begin("m2", "e1")
    await pair.here.flush()
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert page.meta.principal == "key:alice"
    unnamed = await pair.there.read("m2", 0, 10)
    assert unnamed is not None
    assert unnamed.meta.principal == ""


async def test_a_claimed_message_records_its_principal_and_keeps_it_to_its_tombstone(
    pair: Pair,
) -> None:
    await pair.here.claim("k1", "fp1", "m1", "e1", principal="jwt:bob")
    pair.here.append("m1", 1, frame(1))
    pair.here.end("m1", "stop")
    await pair.here.flush()
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.principal, page.meta.state) == ("jwt:bob", "ended")
    await asyncio.sleep(LIMITS.window_s + 0.15)
    tomb = await pair.there.read("m1", 0, 10)
    assert tomb is not None
    assert (tomb.meta.expired, tomb.meta.principal) == (True, "jwt:bob")


async def test_a_ticket_is_taken_once(pair: Pair) -> None:
    await pair.here.put_ticket("wst_one", b'{"id":"key:alice"}', 5.0)
    assert await pair.here.take_ticket("wst_one") == b'{"id":"key:alice"}'
    assert await pair.here.take_ticket("wst_one") is None
    assert await pair.there.take_ticket("wst_one") is None


async def test_a_ticket_one_node_issued_is_taken_on_another(pair: Pair) -> None:
    await pair.here.put_ticket("wst_two", b"payload", 5.0)
    assert await pair.there.take_ticket("wst_two") == b"payload"
    assert await pair.here.take_ticket("wst_two") is None


async def test_an_unknown_ticket_is_none(pair: Pair) -> None:
    assert await pair.there.take_ticket("wst_never_issued") is None


async def test_an_expired_ticket_is_none(pair: Pair) -> None:
    await pair.here.put_ticket("wst_short", b"payload", 0.1)
    await asyncio.sleep(0.25)
    assert await pair.there.take_ticket("wst_short") is None


async def test_concurrent_takes_of_one_ticket_give_it_to_one(pair: Pair) -> None:
    await pair.here.put_ticket("wst_race", b"payload", 5.0)
    taken = await asyncio.gather(
        *((pair.here if n % 2 else pair.there).take_ticket("wst_race") for n in range(20))
    )
    assert taken.count(b"payload") == 1
    assert taken.count(None) == 19


# --- the tool ledger -----------------------------------------------------------------


async def test_a_tool_call_is_claimed_by_one_node_and_the_other_finds_it_running(
    pair: Pair,
) -> None:
    assert await pair.here.tool_claim("m1:1:c1") is None
    held = await pair.there.tool_claim("m1:1:c1")
    assert held == b"running " + pair.here.node_id.encode()
    assert await pair.here.tool_claim("m1:1:c1") == held  # its own claim again: still held


async def test_concurrent_claims_of_one_tool_call_let_exactly_one_run_it(pair: Pair) -> None:
    claims = await asyncio.gather(
        *(store.tool_claim("m1:1:c1") for store in (pair.here, pair.there) * 5)
    )
    assert claims.count(None) == 1


async def test_a_done_tool_call_gives_its_result_to_every_later_claim(pair: Pair) -> None:
    assert await pair.here.tool_claim("m1:2:c1") is None
    await pair.here.tool_done("m1:2:c1", b'{"temp_c":21}')
    assert await pair.there.tool_claim("m1:2:c1") == b'done {"temp_c":21}'
    assert await pair.there.tool_claim("m1:2:c2") is None  # another call, its own record


async def test_the_tool_ledger_forgets_a_call_after_the_run_ttl(pair: Pair) -> None:
    assert await pair.here.tool_claim("m1:1:c1") is None
    await asyncio.sleep(LIMITS.run_ttl_s + 0.2)
    assert await pair.there.tool_claim("m1:1:c1") is None


async def test_a_done_tool_call_is_forgotten_at_its_claims_run_ttl_too(pair: Pair) -> None:
    assert await pair.here.tool_claim("m1:1:c1") is None
    await asyncio.sleep(LIMITS.run_ttl_s / 2)
    await pair.here.tool_done("m1:1:c1", b"{}")
    await asyncio.sleep(LIMITS.run_ttl_s / 2 + 0.2)
    assert await pair.there.tool_claim("m1:1:c1") is None
