"""The upstream client's read deadlines: the first byte's, then the idle gap per read.

One timer per loop watches them all (`watch.ReadWatch` over `core.deadlines`); these tests
pin, for both readers, what it must still mean: only time spent waiting on the provider
counts, a gap longer than the idle timeout ends the call about that long after its read
started, a cancel stays a cancel, and many bodies arm no timer per body or per read.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from e2e_helpers import serving
from upstream_helpers import OnData, opened, route

from wsgate.core.errors import UpstreamTimeout
from wsgate.core.frames import ChatRequest, Message
from wsgate.upstream.client import Timeouts, UpstreamClient
from wsgate.upstream.pull import ReadDeadline
from wsgate.upstream.watch import ReadWatch, Watched

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
REQUEST = ChatRequest(model="m", messages=[Message(role="user", content="x")])


@asynccontextmanager
async def provider(gaps: list[float], timeouts: Timeouts) -> AsyncIterator[UpstreamClient]:
    """A client of a provider that writes one event after each gap (seconds)."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for gap in gaps:
            await asyncio.sleep(gap)
            try:
                await response.write(EVENT)
            except ConnectionError:  # the client closed the call: that is the test's end
                break
        return response

    async with serving(stream) as root:
        to = route("m", "p", "openai_chat", root + "/v1", "m")
        client = UpstreamClient({"m": to}, timeouts)
        await client.start()
        try:
            yield client
        finally:
            await client.close()


async def read_all(
    client: UpstreamClient, hold: float = 0.0, reads: list[float] | None = None
) -> bytes:
    """Read the whole body, holding each chunk `hold` s; note when each next read began.

    Holding is what the gateway does under backpressure: pause the body, resume it later.
    """
    loop = asyncio.get_running_loop()
    received: list[bytes] = []
    async with opened(client, REQUEST) as body:

        def resume() -> None:
            if reads is not None:
                reads.append(loop.time())
            body.resume()

        class Holding:
            def data(self, chunk: bytes) -> bool:
                received.append(chunk)
                if hold:
                    body.pause()
                    loop.call_later(hold, resume)
                elif reads is not None:
                    reads.append(loop.time())
                return False

        await body.run(Holding())
    return b"".join(received)


async def test_time_the_reader_spends_between_chunks_is_not_an_idle_gap():
    # The reader holds every chunk for longer than the idle timeout (backpressure), while
    # the provider is never silent for long: the call must complete.
    async with provider([0.0] + [0.05] * 6, Timeouts(first_byte=5, idle=0.2)) as client:
        assert await read_all(client, hold=0.3) == EVENT * 7


async def test_a_stream_longer_than_the_idle_timeout_with_short_gaps_completes():
    async with provider([0.0] + [0.05] * 12, Timeouts(first_byte=5, idle=0.2)) as client:
        assert await read_all(client) == EVENT * 13


async def test_an_idle_gap_is_measured_from_the_start_of_its_read():
    # First byte at once, then the reader holds the chunk (not counted), then the provider
    # stays silent: the timeout comes one idle period after the read began, not earlier
    # (the time held) and not later (the first-byte deadline still armed).
    loop = asyncio.get_running_loop()
    reads: list[float] = []
    async with provider([0.0, 1.5], Timeouts(first_byte=5, idle=0.3)) as client:
        with pytest.raises(UpstreamTimeout):
            await read_all(client, hold=0.4, reads=reads)
        waited = loop.time() - reads[-1]
    assert 0.25 <= waited < 1.0


async def test_a_silent_provider_times_out_at_the_first_byte_deadline():
    loop = asyncio.get_running_loop()
    async with provider([1.5], Timeouts(first_byte=0.3, idle=10)) as client:
        began = loop.time()
        with pytest.raises(UpstreamTimeout):
            await read_all(client)
        waited = loop.time() - began
    assert 0.25 <= waited < 1.5


async def test_a_cancel_during_a_read_stays_a_cancel():
    async with provider([0.0, 1.0], Timeouts(first_byte=5, idle=5)) as client:
        first = asyncio.Event()

        async def read() -> None:
            async with opened(client, REQUEST) as body:
                await body.run(OnData(first.set))

        task = asyncio.create_task(read())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()


async def test_a_cancel_in_the_same_turn_as_an_expiry_is_still_a_cancel():
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    reader = loop.create_future()

    async def wait() -> None:
        deadline = ReadDeadline(loop)
        deadline.reading(loop.time())  # due at once
        started.set()
        try:
            await reader
        except asyncio.CancelledError:
            assert not deadline.expired()  # someone else cancelled too: not a timeout
            raise
        finally:
            deadline.close()

    task = asyncio.create_task(wait())
    await started.wait()
    task.cancel()  # before the deadline's timer runs, in the same turn of the loop
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_expired_read_deadline_tells_its_cancel_from_others():
    loop = asyncio.get_running_loop()
    reader = loop.create_future()
    deadline: ReadDeadline | None = None

    async def wait() -> str:
        nonlocal deadline
        deadline = ReadDeadline(loop)
        deadline.reading(loop.time() + 0.05)
        try:
            await reader
        except asyncio.CancelledError:
            return "timeout" if deadline.expired() else "cancel"
        finally:
            deadline.reading(None)
            deadline.close()
        return "read"

    assert await asyncio.create_task(wait()) == "timeout"
    assert deadline is not None


async def test_a_read_deadline_needs_a_task():
    loop = asyncio.get_running_loop()
    refused = loop.create_future()

    def outside_any_task() -> None:
        try:
            ReadDeadline(loop)
        except RuntimeError as exc:
            refused.set_result(str(exc))

    loop.call_soon(outside_any_task)
    assert "task" in await refused


async def test_many_bodies_reading_at_once_share_the_loops_one_timer(monkeypatch):
    loop = asyncio.get_running_loop()
    watch = ReadWatch.of(loop)
    arms = 0
    real_call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kwargs):
        nonlocal arms
        if getattr(callback, "__self__", None) is watch:
            arms += 1
        return real_call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    async with provider([0.0] + [0.01] * 20, Timeouts(first_byte=5, idle=5)) as client:
        watched: list[int] = []

        async def one() -> bytes:
            async with opened(client, REQUEST) as body:
                received: list[bytes] = []

                class Note:
                    def data(self, chunk: bytes) -> bool:
                        received.append(chunk)
                        watched.append(len(watch))
                        return False

                await body.run(Note())
            return b"".join(received)

        bodies = await asyncio.gather(*(one() for _ in range(20)))
    assert bodies == [EVENT * 21] * 20
    assert max(watched) >= 19  # the others' reads were watched while one took its chunk
    assert arms <= 2  # 20 bodies x 21 reads: the loop's timer was armed once or twice
    assert len(watch) == 0  # every body left the watch at its end


def test_a_closed_loop_and_its_watch_are_collected():
    loop = asyncio.new_event_loop()
    ReadWatch.of(loop)
    ref = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert ref() is None  # the watch refers to its loop weakly


async def test_a_removed_body_is_let_go_at_once_though_its_heap_entry_waits():
    watch = ReadWatch.of(asyncio.get_running_loop())

    class Body:
        def expired(self) -> None:
            raise AssertionError("a removed body is never called")

    body = Body()
    ref = weakref.ref(body)
    token = Watched(body.expired)
    watch.set(token, asyncio.get_running_loop().time() + 0.01)
    watch.remove(token)
    del body
    gc.collect()
    assert ref() is None  # the stale entry holds the token alone
    await asyncio.sleep(0.03)  # the entry comes due: nothing is called
