"""Flow verdicts (core/flow.py): watermark pairs over a connection's outbox."""

from __future__ import annotations

import pytest

from wsgate.core.flow import FlowControl, Pause, Watermarks
from wsgate.core.frames import DeltaText, encode_frame
from wsgate.core.outbox import Outbox


def frame(stream_id: str, seq: int, size: int) -> tuple[bytes, DeltaText]:
    delta = DeltaText(stream_id, seq, "x" * size)
    return encode_frame(delta), delta


def fill(outbox: Outbox, stream_id: str, count: int, size: int = 10) -> None:
    """Queue `count` frames that do not coalesce (each pop takes one)."""
    for seq in range(1, count + 1):
        data, _ = frame(stream_id, seq, size)
        outbox.push(stream_id, data, None)


def test_watermarks_pause_at_the_high_mark_and_resume_at_the_low_mark():
    marks = Watermarks(high=100, low=25)
    assert not marks.over(99)
    assert marks.over(100)
    assert not marks.under(26)
    assert marks.under(25)


def test_watermarks_refuse_a_low_mark_above_the_high_mark():
    with pytest.raises(ValueError, match="low <= high"):
        Watermarks(high=10, low=11)


def test_a_stream_with_a_full_queue_pauses_for_its_queue():
    outbox = Outbox(max_events=4, max_bytes=1 << 20)
    flow = FlowControl(outbox, buffer_bytes=1 << 20)
    fill(outbox, "s1", 3)
    assert flow.pause("s1") is None
    fill(outbox, "s1", 1)
    assert flow.pause("s1") is Pause.QUEUE


def test_a_stream_of_a_connection_over_half_its_cap_pauses_for_the_connection():
    outbox = Outbox(max_events=1000, max_bytes=1 << 20)
    flow = FlowControl(outbox, buffer_bytes=4000)
    fill(outbox, "s1", 10, size=190)  # ~2 KB: half of the cap
    assert outbox.pending_bytes >= 2000
    assert flow.pause("s2") is Pause.CONNECTION


def test_a_stream_paused_for_its_queue_resumes_at_half_of_both_bounds():
    outbox = Outbox(max_events=4, max_bytes=1 << 20)
    flow = FlowControl(outbox, buffer_bytes=1 << 20)
    fill(outbox, "s1", 4)
    assert flow.still_paused("s1", Pause.QUEUE) is Pause.QUEUE
    outbox.pop()
    assert flow.still_paused("s1", Pause.QUEUE) is Pause.QUEUE  # 3 of 4: not yet half
    outbox.pop()
    assert flow.still_paused("s1", Pause.QUEUE) is None


def test_a_drained_stream_of_a_congested_connection_stays_paused_for_the_connection():
    outbox = Outbox(max_events=2, max_bytes=1 << 20)
    flow = FlowControl(outbox, buffer_bytes=4000)
    fill(outbox, "other", 2, size=990)  # ~2 KB queued by another stream
    assert flow.still_paused("s1", Pause.QUEUE) is Pause.CONNECTION


def test_a_connection_pause_holds_until_the_low_mark_not_the_high_one():
    outbox = Outbox(max_events=1000, max_bytes=1 << 20)
    flow = FlowControl(outbox, buffer_bytes=4000)
    fill(outbox, "s1", 10, size=190)
    while outbox.pending_bytes > 1000:  # below the high mark, above the low one
        assert flow.still_paused("s2", Pause.CONNECTION) is Pause.CONNECTION
        outbox.pop()
    assert flow.still_paused("s2", Pause.CONNECTION) is None


def test_a_client_is_a_slow_consumer_only_over_the_cap_with_its_socket_backed_up():
    outbox = Outbox(max_events=1000, max_bytes=1 << 20)
    flow = FlowControl(outbox, buffer_bytes=4000, socket_backlog=1000)
    fill(outbox, "s1", 20, size=190)  # ~4 KB queued
    assert not flow.slow_consumer(in_socket=0)  # our own burst: the socket is empty
    assert not flow.slow_consumer(in_socket=999)
    assert flow.slow_consumer(in_socket=1000)


def test_the_reader_pauses_over_its_backlog_and_resumes_at_half_of_it():
    outbox = Outbox(max_events=10, max_bytes=1 << 20)
    flow = FlowControl(outbox, buffer_bytes=1 << 20, reader_high=100)
    for _ in range(3):
        outbox.push_control(b"x" * 40)
    assert flow.reader_paused()
    outbox.pop()
    assert not flow.reader_paused()
    assert not flow.reader_may_resume()
    outbox.pop()
    assert flow.reader_may_resume()


def test_frames_of_ended_streams_never_stop_the_reader_so_a_lagging_client_can_cancel():
    outbox = Outbox(max_events=10, max_bytes=1 << 20)
    flow = FlowControl(outbox, buffer_bytes=1 << 20, reader_high=100)
    for n in range(5):
        outbox.push(f"s{n}", b"x" * 300)
        outbox.end_stream(f"s{n}")
    assert outbox.pending_bytes == 1500
    assert not flow.reader_paused()
    assert flow.reader_may_resume()


def test_a_connection_needs_a_positive_cap():
    with pytest.raises(ValueError, match="positive"):
        FlowControl(Outbox(1, 1), buffer_bytes=0)
