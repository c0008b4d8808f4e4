"""What only the memory store does: its bound over every log, and expiry without a timer."""

from __future__ import annotations

from wsgate.core.store import StoreLimits
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
