"""The mock's Writer: paced events leave from the pacer's timer, one HTTP chunk each, and hand
back to the awaiting path when the client stops reading or goes away."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from wsgate.mock.pacer import Pacer
from wsgate.mock.plan import PlannedEvent
from wsgate.mock.writer import FLOW_LIMIT, Writer


@dataclass
class FakeTransport:
    """Records writes with their loop times; can pretend to back up or to close."""

    writes: list[tuple[float, bytes]] = field(default_factory=list)
    backlog: int = 0
    closing: bool = False

    def write(self, data: bytes) -> None:
        self.writes.append((asyncio.get_running_loop().time(), data))

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def is_closing(self) -> bool:
        return self.closing


@dataclass
class FakeRequest:
    transport: FakeTransport | None


@dataclass
class FakeResponse:
    """The awaiting path: `write` records the bytes as they are, without chunk framing."""

    headers: dict[str, str]
    writes: list[bytes] = field(default_factory=list)

    async def write(self, data: bytes) -> None:
        self.writes.append(data)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def make_writer(*, chunked: bool = True) -> tuple[Writer, FakeTransport, FakeResponse, list[int]]:
    transport = FakeTransport()
    response = FakeResponse({"Transfer-Encoding": "chunked"} if chunked else {})
    sent: list[int] = []
    pacer = Pacer()
    request: Any = FakeRequest(transport)
    fake_response: Any = response
    writer = Writer(pacer, request, fake_response, pacer.time(), sent.append)
    return writer, transport, response, sent


def paced_events(count: int, step_s: float = 0.005) -> list[PlannedEvent]:
    return [PlannedEvent(i * step_s, b"event %d\n\n" % i) for i in range(count)]


async def test_writer_sends_paced_events_after_the_first_from_the_timer_one_chunk_each():
    writer, transport, response, sent = make_writer()
    events = paced_events(6)
    await asyncio.wait_for(writer.events(events, batched=False, split=None), timeout=2.0)
    assert response.writes == [events[0].data]  # the first one sends aiohttp's headers
    assert [data for _, data in transport.writes] == [chunk(e.data) for e in events[1:]]
    for (at, _), event in zip(transport.writes, events[1:], strict=True):
        assert at >= writer.origin + event.at_s - writer.pacer.granularity - 0.001
    assert sum(sent) == len(events)


async def test_writer_without_chunked_framing_writes_every_event_the_awaiting_way():
    writer, transport, response, sent = make_writer(chunked=False)
    events = paced_events(4)
    await asyncio.wait_for(writer.events(events, batched=False, split=None), timeout=2.0)
    assert response.writes == [e.data for e in events]
    assert transport.writes == []
    assert sum(sent) == len(events)


async def test_writer_pauses_while_the_client_stops_reading_and_then_sends_the_rest_in_order():
    writer, transport, response, sent = make_writer()
    transport.backlog = FLOW_LIMIT + 1  # the client has stopped reading
    events = paced_events(6, step_s=0.002)
    task = asyncio.create_task(writer.events(events, batched=False, split=None))
    await asyncio.sleep(0.05)  # every event is due by now
    assert len(transport.writes) == 1  # event 1 left from the timer; then the writer waits
    assert not task.done()
    transport.backlog = 0  # the client read everything
    await asyncio.wait_for(task, timeout=2.0)
    assert response.writes == [events[0].data]
    assert [data for _, data in transport.writes] == [chunk(e.data) for e in events[1:]]
    assert sum(sent) == len(events)


async def test_writer_run_fails_like_a_write_when_the_client_connection_is_closing():
    writer, transport, _, sent = make_writer()
    events = paced_events(5)
    task = asyncio.create_task(writer.events(events, batched=False, split=None))
    await asyncio.sleep(0.007)  # events 0 and 1 are out
    transport.closing = True
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(task, timeout=2.0)
    assert sum(sent) < len(events)


async def test_writer_stops_writing_from_the_timer_once_its_handler_is_cancelled():
    writer, transport, _, _ = make_writer()
    events = paced_events(20, step_s=0.01)
    task = asyncio.create_task(writer.events(events, batched=False, split=None))
    await asyncio.sleep(0.035)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    count = len(transport.writes)
    await asyncio.sleep(0.05)
    assert len(transport.writes) == count < len(events) - 1


async def test_writer_run_that_fails_in_the_timer_raises_in_its_handler_instead_of_hanging():
    writer, transport, _, _ = make_writer()
    failing = RuntimeError("the write failed")
    calls: list[bytes] = []

    def write(data: bytes) -> None:
        calls.append(data)
        if len(calls) == 2:
            raise failing

    transport.write = write  # type: ignore[method-assign]
    events = paced_events(5)
    with pytest.raises(RuntimeError, match="the write failed"):
        await asyncio.wait_for(writer.events(events, batched=False, split=None), timeout=2.0)


async def test_writer_run_sends_no_chunk_for_an_empty_event_which_would_end_the_body():
    writer, transport, _, sent = make_writer()
    events = paced_events(4)
    events[2] = PlannedEvent(events[2].at_s, b"")
    await asyncio.wait_for(writer.events(events, batched=False, split=None), timeout=2.0)
    assert [data for _, data in transport.writes] == [chunk(events[1].data), chunk(events[3].data)]
    assert sum(sent) == len(events)
