"""What only the memory store does: its bound over every log and over tickets, and expiry
without a timer."""

from __future__ import annotations

import hashlib

import pytest

from wsgate.core.store import StoreLimits, StoreUnavailable
from wsgate.store.memory import MemoryStore
from wsgate.testing import FakeClock

LIMITS = StoreLimits(window_s=10, max_frames=1000, max_bytes=10_000, run_ttl_s=100)


def fill(store: MemoryStore, message_id: str, frames: int, size: int = 100) -> None:
    store.begin(message_id, "e")
    for seq in range(1, frames + 1):
        store.append(message_id, seq, b"x" * size)


def test_past_the_total_bound_the_oldest_ended_logs_are_dropped_first():
    store = MemoryStore(LIMITS, max_total_bytes=5_000)
    fill(store, "old", 20)
    store.end("old", "stop")
    fill(store, "new", 20)
    store.end("new", "stop")
    fill(store, "more", 20)
    assert store.total_bytes <= 5_000
    assert store.healthy


async def test_running_logs_over_the_total_bound_make_the_store_unhealthy_until_they_end():
    clock = FakeClock()
    store = MemoryStore(LIMITS, max_total_bytes=5_000, clock=lambda: clock.now)
    for n in range(8):
        fill(store, f"m{n}", 10)  # 8 x 1000 bytes, all running
    assert not store.healthy  # the gateway refuses new logged starts meanwhile
    for n in range(8):
        store.end(f"m{n}", "stop")
    fill(store, "next", 1)  # an append sheds ended logs
    assert store.healthy
    assert store.total_bytes <= 5_000


async def test_an_ended_log_expires_lazily_on_the_next_call():
    clock = FakeClock()
    store = MemoryStore(LIMITS, clock=lambda: clock.now)
    fill(store, "m1", 3)
    store.end("m1", "stop")
    clock.advance(LIMITS.window_s + 1)
    page = await store.read("m1", 0, 10)
    assert page is not None
    assert page.meta.expired
    assert store.total_bytes == 0


async def test_past_max_tickets_a_put_is_refused_and_no_ticket_handed_out_is_evicted():
    store = MemoryStore(LIMITS, max_tickets=3)
    for n in range(3):
        await store.put_ticket(f"t{n}", b"p", 30)
    with pytest.raises(StoreUnavailable):
        await store.put_ticket("t3", b"p", 30)
    assert [await store.take_ticket(f"t{n}") for n in range(3)] == [b"p"] * 3
    await store.put_ticket("t3", b"p", 30)  # taken ones free their room


async def test_expired_tickets_are_dropped_lazily_and_free_their_room():
    clock = FakeClock()
    store = MemoryStore(LIMITS, max_tickets=2, clock=lambda: clock.now)
    await store.put_ticket("short", b"p", 1)
    await store.put_ticket("long", b"p", 100)
    clock.advance(1)
    await store.put_ticket("next", b"p", 30)  # "short" went at its time
    assert await store.take_ticket("short") is None
    assert await store.take_ticket("long") == b"p"
    clock.advance(29.999)
    assert await store.take_ticket("next") == b"p"


async def test_a_ticket_is_kept_under_its_digest_only():
    store = MemoryStore(LIMITS)
    await store.put_ticket("wst_secret", b"p", 30)
    assert list(store._tickets) == [hashlib.sha256(b"wst_secret").hexdigest()]


async def test_the_ticket_expiry_heap_stays_bounded_while_tickets_are_taken():
    store = MemoryStore(LIMITS)
    for n in range(10_000):
        await store.put_ticket(f"t{n}", b"p", 30)
        assert await store.take_ticket(f"t{n}") == b"p"
    assert len(store._ticket_expiry) <= 2049


async def test_close_forgets_the_tickets_and_the_limiter():
    store = MemoryStore(LIMITS)
    await store.put_ticket("t", b"p", 30)
    await store.limiter.take("starts:p", 5)
    await store.limiter.hold("streams:p", "m1", 1)
    await store.close()
    assert await store.take_ticket("t") is None
    assert store.limiter.keys == 0
    assert store.limiter.held("streams:p") == 0
