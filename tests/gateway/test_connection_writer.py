"""The writer against a recording WebSocket: when frames leave, in how many writes, and waits.

A real sans-I/O protocol frames the bytes; the transport records every write and pauses
or fails on demand, so each case sees exactly which loop turn wrote what.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from wsgate.core.frames import DeltaText, Telemetry, encode_frame
from wsgate.core.outbox import Outbox
from wsgate.gateway.writer import WRITE_BATCH_BYTES, WRITE_BATCH_FRAMES, Batch, Writer
from wsgate.testing import RecordingWebSocket


class Recorder:
    """A writer over a recording WebSocket, with its callbacks recorded."""

    def __init__(self) -> None:
        self.ws = RecordingWebSocket()
        self.outbox = Outbox(10_000, 16 * 1024 * 1024)
        self.batches: list[Batch] = []
        self.drained = 0
        self.on_drained: Callable[[], None] = lambda: None
        self.failures: list[str] = []
        self.writer = Writer(
            self.ws,  # type: ignore[arg-type]
            self.outbox,
            self.batches.append,
            self._drained,
            self.failures.append,
        )

    def _drained(self) -> None:
        self.drained += 1
        self.on_drained()

    def queue(self, stream_id: str, seq: int, text: str = "tok") -> None:
        frame = DeltaText(stream_id, seq, text)
        self.outbox.push(stream_id, encode_frame(frame), frame)
        self.writer.wake()

    @property
    def writes(self) -> list[bytes]:
        return self.ws.transport.writes


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def writer_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "writer"]


def seqs(frames: list[dict[str, object]]) -> list[object]:
    return [frame["seq"] for frame in frames]


async def test_frames_queued_in_one_loop_turn_leave_in_one_transport_write():
    rec = Recorder()
    for seq in range(1, 4):
        rec.queue(f"s{seq}", seq)
    assert rec.writes == []  # nothing is written by the caller that queued
    await turns(1)
    assert len(rec.writes) == 1
    assert [f["stream_id"] for f in rec.ws.frames()] == ["s1", "s2", "s3"]
    assert not rec.writer.busy


async def test_frames_queued_in_two_loop_turns_leave_in_two_writes():
    rec = Recorder()
    rec.queue("s1", 1)
    await turns(1)
    rec.queue("s1", 2)
    await turns(1)
    assert [seqs(frames) for frames in rec.ws.frames_per_write()] == [[1], [2]]


async def test_a_write_that_pauses_the_transport_starts_a_writer_that_waits_for_room():
    rec = Recorder()
    rec.ws.transport.pause_on_write = True  # this write fills the socket
    rec.queue("s1", 1)
    await turns(2)
    assert len(rec.writes) == 1
    assert rec.writer.busy
    assert len(writer_tasks()) == 1
    assert rec.writer.send_since is not None  # the connection's send-timeout clock runs
    rec.queue("s1", 2)  # waits in the outbox, behind the full socket
    await turns(3)
    assert len(rec.writes) == 1

    rec.ws.transport.pause_on_write = False
    rec.ws.resume()
    await turns(3)
    assert rec.writer.send_since is None
    assert [seqs(frames) for frames in rec.ws.frames_per_write()] == [[1], [2]]
    assert not rec.writer.busy
    assert writer_tasks() == []


async def test_a_burst_over_the_frame_bound_is_written_in_batches_a_loop_turn_apart():
    rec = Recorder()
    total = 2 * WRITE_BATCH_FRAMES + 22
    for seq in range(1, total + 1):
        rec.queue(f"s{seq}", seq)
    written = []
    for _ in range(4):
        await turns(1)
        written.append(len(rec.writes))
    assert written == [1, 2, 3, 3]  # one batch per turn: the loop was yielded in between
    sizes = [len(frames) for frames in rec.ws.frames_per_write()]
    assert sizes == [WRITE_BATCH_FRAMES, WRITE_BATCH_FRAMES, 22]
    assert [f["stream_id"] for f in rec.ws.frames()] == [f"s{i}" for i in range(1, total + 1)]
    assert not rec.writer.busy


async def test_a_burst_over_the_byte_bound_is_written_in_batches_of_that_bound():
    rec = Recorder()
    text = "x" * 5000
    for seq in range(1, 11):
        rec.queue(f"s{seq:02d}", 1, text)  # one stream each: a stream's deltas would coalesce
    size = len(encode_frame(DeltaText("s01", 1, text)))
    per_batch = -(-WRITE_BATCH_BYTES // size)  # a batch stops once it reached the bound
    await turns(5)
    sizes = [len(frames) for frames in rec.ws.frames_per_write()]
    assert sizes[0] == per_batch
    assert sum(sizes) == 10
    assert len(sizes) == -(-10 // per_batch)
    assert "".join(str(f["text"]) for f in rec.ws.frames()) == text * 10


async def test_telemetry_left_behind_by_a_full_batch_is_still_sent():
    rec = Recorder()
    big = DeltaText("s1", 1, "x" * WRITE_BATCH_BYTES)  # fills a batch on its own
    rec.outbox.push("s1", encode_frame(big), big)
    rec.outbox.push_telemetry("s1", encode_frame(Telemetry("s1", tokens=1, tokens_per_s=1.0)))
    rec.writer.wake()
    await turns(3)
    types = [[f["type"] for f in frames] for frames in rec.ws.frames_per_write()]
    assert types == [["delta.text"], ["telemetry"]]
    assert rec.outbox.empty


async def test_on_sent_gets_every_batch_in_the_order_it_was_written():
    rec = Recorder()
    streams = [f"s{i}" for i in range(WRITE_BATCH_FRAMES + 5)]
    for stream_id in streams:
        rec.queue(stream_id, 1)
    await turns(3)
    assert len(rec.batches) == len(rec.writes) == 2
    for batch, frames in zip(rec.batches, rec.ws.frames_per_write(), strict=True):
        assert [stream_id for stream_id, _ in batch] == [f["stream_id"] for f in frames]
    assert [stream_id for batch in rec.batches for stream_id, _ in batch] == streams


async def test_on_drained_is_called_each_time_the_outbox_empties():
    rec = Recorder()
    rec.queue("s1", 1)
    await turns(1)
    assert rec.drained == 1  # by the flush
    for seq in range(2, WRITE_BATCH_FRAMES + 10):
        rec.queue(f"s{seq}", seq)
    await turns(1)
    assert rec.drained == 1  # a batch is left: not drained yet
    await turns(2)
    assert rec.drained == 2  # by the writer task, once the rest went out


@pytest.mark.parametrize(
    "burst",
    [
        pytest.param(1, id="drained-by-the-flush"),
        pytest.param(WRITE_BATCH_FRAMES + 6, id="drained-by-the-writer-task"),
    ],
)
async def test_frames_queued_from_on_drained_are_written_too(burst):
    # The connection's on_drained resumes held bodies, and a push body reads what waits
    # in its buffer at once (upstream/push.py: PushBody.resume -> drain): frames are queued,
    # and the writer woken, from inside the callback.
    rec = Recorder()

    def refill() -> None:
        if rec.drained == 1:
            rec.queue("late", 1)

    rec.on_drained = refill
    for seq in range(1, burst + 1):
        rec.queue(f"s{seq}", 1)
    await turns(6)
    assert rec.drained >= 1
    assert rec.ws.frames()[-1]["stream_id"] == "late"
    assert rec.outbox.empty


async def test_a_failing_write_reports_writer_crashed_and_nothing_is_written_afterwards():
    rec = Recorder()
    rec.ws.transport.fail_on_write = OSError("connection reset")
    rec.queue("s1", 1)
    await turns(1)
    assert rec.failures == ["writer_crashed"]
    rec.ws.transport.fail_on_write = None
    rec.queue("s1", 2)
    await turns(3)
    assert rec.writes == []
    assert rec.batches == []
    assert not rec.writer.busy


async def test_a_write_failing_in_the_writer_task_reports_writer_crashed_and_re_raises():
    rec = Recorder()
    rec.ws.transport.pause_on_write = True
    rec.queue("s1", 1)
    await turns(2)
    (task,) = writer_tasks()
    rec.ws.transport.pause_on_write = False
    rec.ws.transport.fail_on_write = OSError("connection reset")
    rec.queue("s1", 2)
    rec.ws.resume()
    with pytest.raises(OSError, match="connection reset"):
        await task
    assert rec.failures == ["writer_crashed"]
    assert rec.writer.send_since is None
    rec.ws.transport.fail_on_write = None
    rec.queue("s1", 3)
    await turns(3)
    assert len(rec.writes) == 1  # only the first frame, before the failure
    assert not rec.writer.busy


async def test_stop_cancels_a_scheduled_flush():
    rec = Recorder()
    rec.queue("s1", 1)
    assert rec.writer.busy
    await rec.writer.stop()
    assert not rec.writer.busy
    await turns(2)
    assert rec.writes == []
    rec.queue("s1", 2)  # a stopped writer schedules nothing
    assert not rec.writer.busy


async def test_stop_cancels_a_writer_task_waiting_for_room():
    rec = Recorder()
    rec.ws.transport.pause_on_write = True
    rec.queue("s1", 1)
    await turns(2)
    (task,) = writer_tasks()
    rec.queue("s1", 2)
    await rec.writer.stop()
    assert task.cancelled()
    assert not rec.writer.busy
    assert rec.writer.send_since is None
    rec.ws.transport.pause_on_write = False
    rec.ws.resume()
    await turns(3)
    assert len(rec.writes) == 1  # the waiting frame was never written
    assert rec.failures == []


async def test_an_idle_writer_holds_no_task():
    rec = Recorder()
    assert not rec.writer.busy
    rec.queue("s1", 1)
    await turns(1)
    assert len(rec.writes) == 1
    assert not rec.writer.busy
    assert writer_tasks() == []


async def test_frames_left_when_the_connection_drops_mid_burst_stay_in_the_outbox():
    # A detached stream's log is made of what the outbox still holds: the writer must not
    # take frames it can no longer send.
    ws = RecordingWebSocket()
    outbox = Outbox(10_000, 1 << 24)
    loop = asyncio.get_running_loop()
    batches: list[Batch] = []

    def on_sent(batch: Batch) -> None:
        batches.append(batch)
        if len(batches) == 2:  # the connection drops while the writer yields between batches
            loop.call_soon(ws.transport.abort)

    writer = Writer(ws, outbox, on_sent, lambda: None, lambda _why: None)  # type: ignore[arg-type]
    frames = 5 * WRITE_BATCH_FRAMES
    for n in range(frames):
        frame = DeltaText(f"s{n}", 1, "t")  # one frame per stream: nothing coalesces
        outbox.push(f"s{n}", encode_frame(frame), frame)
    writer.wake()
    for _ in range(20):
        await asyncio.sleep(0)
    await writer.stop()
    written = sum(len(batch) for batch in batches)
    assert written < frames  # the drop came mid-burst
    assert written + len(outbox) == frames
