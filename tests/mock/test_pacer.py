"""The Pacer releases waiters in deadline order from one timer, and forgets cancelled ones."""

from __future__ import annotations

import asyncio
import random

from wsgate.mock.pacer import Pacer


async def test_pacer_releases_waiters_in_deadline_order():
    pacer = Pacer()
    now = pacer.time()
    order: list[int] = []
    offsets = list(range(10))
    random.Random(7).shuffle(offsets)

    async def wait(offset: int) -> None:
        await pacer.wait_until(now + 0.01 + offset * 0.003)
        order.append(offset)

    await asyncio.gather(*(wait(offset) for offset in offsets))
    assert order == sorted(offsets)
    assert pacer.pending == 0


async def test_pacer_returns_at_once_for_a_deadline_in_the_past():
    pacer = Pacer()
    await pacer.wait_until(pacer.time() - 1.0)
    assert pacer.pending == 0
    assert pacer.fired == 0


async def test_pacer_waits_at_least_until_the_deadline():
    pacer = Pacer()
    start = pacer.time()
    await pacer.wait_until(start + 0.05)
    assert pacer.time() >= start + 0.05 - pacer.granularity


async def test_pacer_releases_co_due_waiters_in_one_timer_callback():
    pacer = Pacer()
    due = pacer.time() + 0.02
    await asyncio.gather(*(pacer.wait_until(due) for _ in range(1000)))
    assert pacer.fired <= 2  # one wakeup, or two if the timer fired a hair early


async def test_pacer_earlier_deadline_wakes_the_timer():
    pacer = Pacer()
    start = pacer.time()
    late = asyncio.create_task(pacer.wait_until(start + 5.0))
    await asyncio.sleep(0)
    await asyncio.wait_for(pacer.wait_until(start + 0.02), timeout=1.0)
    assert pacer.time() - start < 0.5
    assert not late.done()
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)


async def test_pacer_skips_cancelled_waiters_and_still_releases_the_rest():
    pacer = Pacer()
    due = pacer.time() + 0.03
    doomed = asyncio.create_task(pacer.wait_until(due - 0.02))
    kept = asyncio.create_task(pacer.wait_until(due))
    await asyncio.sleep(0)
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    await asyncio.wait_for(kept, timeout=1.0)
    assert doomed.cancelled()
    assert pacer.pending == 0


async def test_pacer_sweeps_cancelled_waiters_so_they_do_not_accumulate():
    pacer = Pacer()
    due = pacer.time() + 30.0
    tasks = [asyncio.create_task(pacer.wait_until(due + i)) for i in range(300)]
    await asyncio.sleep(0)
    assert pacer.pending == 300
    for task in tasks[:250]:
        task.cancel()
    await asyncio.gather(*tasks[:250], return_exceptions=True)
    assert pacer.pending < 300 // 2 + 64
    pacer.stop()
    await asyncio.gather(*tasks[250:], return_exceptions=True)
    assert all(task.cancelled() for task in tasks)
    assert pacer.pending == 0


async def test_pacer_stop_cancels_waiters_and_restarts_lazily():
    pacer = Pacer()
    waiter = asyncio.create_task(pacer.wait_until(pacer.time() + 10.0))
    await asyncio.sleep(0)
    pacer.stop()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    await asyncio.wait_for(pacer.wait_until(pacer.time() + 0.01), timeout=1.0)


async def test_pacer_runs_callbacks_from_its_timer_in_deadline_order():
    pacer = Pacer()
    now = pacer.time()
    order: list[int] = []
    finished = asyncio.get_running_loop().create_future()
    for offset in (3, 0, 2, 1):
        pacer.call_at(now + 0.01 + offset * 0.005, lambda o=offset: order.append(o))
    pacer.call_at(now + 0.04, lambda: finished.set_result(None))
    await asyncio.wait_for(finished, timeout=1.0)
    assert order == [0, 1, 2, 3]
    assert pacer.pending == 0


async def test_pacer_runs_co_due_callbacks_and_their_successors_without_extra_wakeups():
    pacer = Pacer()
    start = pacer.time()
    ran: list[int] = []
    finished = asyncio.get_running_loop().create_future()

    def tick(stream: int, token: int) -> None:
        ran.append(stream)
        if token < 4:
            pacer.call_at(start + 0.01 * (token + 1), lambda: tick(stream, token + 1))
        elif len(ran) == 500 and not finished.done():
            finished.set_result(None)

    for stream in range(100):
        pacer.call_at(start, lambda s=stream: tick(s, 0))
    await asyncio.wait_for(finished, timeout=2.0)
    assert len(ran) == 500
    assert pacer.fired <= 10  # one pass per due time (two where a timer fires a hair early)


async def test_pacer_callback_that_fails_does_not_stall_the_others():
    pacer = Pacer()
    loop = asyncio.get_running_loop()
    reported: list[object] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
    finished = loop.create_future()

    def broken() -> None:
        raise RuntimeError("boom")

    due = pacer.time() + 0.01
    pacer.call_at(due, broken)
    pacer.call_at(due, lambda: finished.set_result(None))
    await asyncio.wait_for(finished, timeout=1.0)
    loop.set_exception_handler(None)
    assert [str(exc) for exc in reported] == ["boom"]


async def test_pacer_stop_drops_pending_callbacks_unrun():
    pacer = Pacer()
    ran: list[int] = []
    pacer.call_at(pacer.time() + 0.02, lambda: ran.append(1))
    pacer.stop()
    await asyncio.sleep(0.05)
    assert ran == []
    assert pacer.pending == 0
