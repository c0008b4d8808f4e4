"""Writing one planned response body: at the due times, whole, split, or dripped.

Owns the byte-level writing of a prepared `aiohttp.web.StreamResponse`: events (or runs of
co-due events, coalesced up to 16 KiB when unpaced) at their due times through the shared
`Pacer`; paced events after the first are written from the pacer's timer itself, each as one
HTTP chunk on the transport, with no task wake-up per token (the mock is a load-test instrument:
thousands of paced streams must not make it the bottleneck); `split_writes` pieces, each its own
transport write with the write buffer drained between them (so a piece leaves in its own
`send`); a one-byte-per-write drip; and the abrupt close of `truncate_after`. It decides nothing
about what is written (`plan.py` does) and keeps no records: it reports each finished event
through `on_sent`.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiohttp import web

    from wsgate.mock.pacer import Pacer
    from wsgate.mock.plan import PlannedEvent

# Unpaced events are coalesced into writes up to this size: the fastest the mock can go.
BATCH_BYTES: Final = 16 * 1024
# A paced run written from the timer stops once the transport holds this much unsent (aiohttp's
# own drain threshold); the handler drains the buffer, then starts the next run.
FLOW_LIMIT: Final = 64 * 1024
# How often a split stream looks whether the kernel took the last piece. Only polled while
# the client is not reading: asyncio has no "write buffer empty" event.
DRAIN_POLL_S: Final = 0.001


@dataclass(frozen=True, slots=True)
class Writer:
    """Writes one prepared response's events at `origin + at_s` (loop time)."""

    pacer: Pacer
    request: web.Request
    response: web.StreamResponse
    origin: float
    on_sent: Callable[[int], None]

    async def events(self, events: list[PlannedEvent], *, batched: bool, split: int | None) -> None:
        """Each event (or run of co-due events when `batched`) in one write, or in pieces.

        With `split`, every event is written alone, in pieces of `split` bytes, each piece
        its own write after the previous one left the transport's buffer.
        """
        index = 0
        timed = not batched and split is None
        while index < len(events):
            if index and timed and (run := self._timed_run(events, index)) is not None:
                index = await run
                if index < len(events):  # the client stopped reading: wait for room
                    await _room(self.request)
                continue
            await self.pacer.wait_until(self.origin + events[index].at_s)
            data, count = take(events, index, batched=batched and split is None)
            if split is None:
                await self.response.write(data)
            else:
                for start in range(0, len(data), split):
                    await self.response.write(data[start : start + split])
                    await drained(self.request)
            index += count
            self.on_sent(count)

    def _timed_run(self, events: list[PlannedEvent], index: int) -> asyncio.Future[int] | None:
        """Start writing `events[index:]` from the pacer's timer; None where that cannot be.

        Needs the headers sent (the first event went the awaiting way) and chunked framing,
        which the mock writes itself. The future gives the index reached: the end, or where
        the transport's buffer passed FLOW_LIMIT. A closing transport fails it with
        ConnectionResetError, as `response.write` would.
        """
        transport = self.request.transport
        if transport is None or self.response.headers.get("Transfer-Encoding") != "chunked":
            return None
        run = _TimedRun(self, transport, events, index, asyncio.get_running_loop().create_future())
        self.pacer.call_at(self.origin + events[index].at_s, run.step)
        return run.done

    async def drip(self, events: list[PlannedEvent], rate: float) -> None:
        """The whole body one byte per write, byte j due at the first event + j / rate.

        Each byte is drained like a `split_writes` piece before the next is due.
        """
        body = b"".join(event.data for event in events)
        ends = list(itertools.accumulate(len(event.data) for event in events))
        start = self.origin + (events[0].at_s if events else 0.0)
        done = 0
        for position in range(len(body)):
            await self.pacer.wait_until(start + position / rate)
            await self.response.write(body[position : position + 1])
            await drained(self.request)
            finished = done
            while finished < len(ends) and ends[finished] <= position + 1:
                finished += 1
            self.on_sent(finished - done)
            done = finished


@dataclass(slots=True)
class _TimedRun:
    """Paced events written one chunk per write from the pacer's timer callbacks."""

    writer: Writer
    transport: asyncio.Transport
    events: list[PlannedEvent]
    index: int
    done: asyncio.Future[int]

    def step(self) -> None:
        """Write every event due now (each its own write), then schedule the next one.

        Runs in the pacer's timer pass: any failure ends the run through `done` (the handler
        raises it), never into the pacer.
        """
        if self.done.done():  # the handler awaiting the run was cancelled: stop here
            return
        try:
            self._write_due()
        except Exception as exc:  # the handler sees it, as it would a failed write
            if not self.done.done():
                self.done.set_exception(exc)

    def _write_due(self) -> None:
        transport = self.transport
        if transport.is_closing():
            self.done.set_exception(ConnectionResetError("the client connection is closing"))
            return
        writer, events = self.writer, self.events
        pacer = writer.pacer
        horizon = pacer.time() + pacer.granularity
        while True:
            data = events[self.index].data
            if data:  # an empty chunk would be the body's last-chunk marker
                transport.write(b"%x\r\n%b\r\n" % (len(data), data))
            self.index += 1
            writer.on_sent(1)
            if self.index == len(events) or transport.get_write_buffer_size() > FLOW_LIMIT:
                self.done.set_result(self.index)
                return
            due = writer.origin + events[self.index].at_s
            if due > horizon:
                pacer.call_at(due, self.step)
                return


def take(plan: list[PlannedEvent], index: int, *, batched: bool) -> tuple[bytes, int]:
    """Return one write's bytes: one event when paced, a run of co-due events when not."""
    first = plan[index]
    if not batched:
        return first.data, 1
    parts = [first.data]
    size = len(first.data)
    end = index + 1
    while end < len(plan) and plan[end].at_s == first.at_s and size < BATCH_BYTES:
        parts.append(plan[end].data)
        size += len(plan[end].data)
        end += 1
    return b"".join(parts), end - index


async def drained(request: web.Request) -> None:
    """Return once the transport's write buffer is empty, after one turn of the loop.

    The kernel then has every byte written so far, and a reader in the same process (the
    gateway in the end-to-end tests) gets its turn to read them before the next write, so
    consecutive pieces reach it as separate reads.
    """
    while (transport := request.transport) is not None and transport.get_write_buffer_size():
        if transport.is_closing():
            raise ConnectionResetError("the client connection is closing")
        await asyncio.sleep(DRAIN_POLL_S)
    await asyncio.sleep(0)


async def _room(request: web.Request) -> None:
    """Return once the transport holds at most half of FLOW_LIMIT unsent.

    Polls with a growing interval (1 ms to 32 ms): a client that stopped reading for long
    costs the mock a few wake-ups a second, not a thousand.
    """
    pause = DRAIN_POLL_S
    while (transport := request.transport) is not None and (
        transport.get_write_buffer_size() > FLOW_LIMIT // 2
    ):
        if transport.is_closing():
            raise ConnectionResetError("the client connection is closing")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.032)


def close_abruptly(request: web.Request) -> None:
    """Close the connection with the body unfinished: no end chunk, no end marker.

    aiohttp's own `write_eof` after the handler then finds the transport closing and drops
    the response as a client disconnect; the client sees a body cut off mid-stream.
    """
    transport = request.transport
    if transport is not None:
        transport.close()
