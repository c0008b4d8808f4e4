"""The outbox: order, fairness, bounds and telemetry shedding."""

from __future__ import annotations

import pytest

from wsgate.core.outbox import Outbox


def drain(outbox):
    out = []
    while (item := outbox.pop()) is not None:
        out.append(item)
    return out


def test_control_frames_leave_before_stream_frames():
    box = Outbox(10, 1000)
    box.push("a", b"a1")
    box.push_control(b"c1")
    assert drain(box) == [(None, b"c1"), ("a", b"a1")]


def test_streams_are_served_round_robin_and_keep_their_own_order():
    box = Outbox(10, 1000)
    for i in range(3):
        box.push("a", f"a{i}".encode())
    box.push("b", b"b0")
    box.push("b", b"b1")
    assert [d for _, d in drain(box)] == [b"a0", b"b0", b"a1", b"b1", b"a2"]


def test_telemetry_leaves_only_when_no_other_frame_waits():
    box = Outbox(10, 1000)
    box.push_telemetry("a", b"t")
    box.push("a", b"a0")
    box.push_control(b"c")
    assert [d for _, d in drain(box)] == [b"c", b"a0", b"t"]


def test_a_newer_telemetry_frame_sheds_the_older_one():
    box = Outbox(10, 1000)
    box.push_telemetry("a", b"t1")
    box.push_telemetry("a", b"t2")
    assert drain(box) == [("a", b"t2")]
    assert box.shed_telemetry == 1


def test_ending_a_stream_sheds_its_pending_telemetry_and_refuses_more():
    box = Outbox(10, 1000)
    box.push("a", b"a0")
    box.push_telemetry("a", b"t1")
    box.end_stream("a")
    box.push_telemetry("a", b"t2")
    assert drain(box) == [("a", b"a0")]
    assert box.shed_telemetry == 2


def test_a_stream_is_full_at_either_bound_and_has_room_below_half():
    box = Outbox(4, 1000)
    for _ in range(4):
        box.push("a", b"x")
    assert box.is_full("a")
    box.pop()
    assert not box.is_full("a")
    assert not box.has_room("a")
    box.pop()
    assert box.has_room("a")
    big = Outbox(100, 10)
    big.push("b", b"0123456789")
    assert big.is_full("b")


def test_push_never_refuses_so_final_frames_always_fit():
    box = Outbox(1, 1)
    for i in range(5):
        box.push("a", str(i).encode())
    assert len(box) == 5
    assert box.queued("a") == (5, 5)


def test_pending_bytes_tracks_control_and_stream_frames():
    box = Outbox(10, 1000)
    box.push_control(b"123")
    box.push("a", b"45")
    assert box.pending_bytes == 5
    drain(box)
    assert box.pending_bytes == 0


def test_an_ended_stream_is_forgotten_once_drained():
    box = Outbox(10, 1000)
    box.push("a", b"a0")
    box.end_stream("a")
    drain(box)
    assert box._streams == {}


def test_bounds_must_be_positive():
    with pytest.raises(ValueError):
        Outbox(0, 10)


def test_a_reused_stream_id_queues_behind_the_ended_stream_and_is_not_itself_ended():
    box = Outbox(10, 1000)
    box.push("a", b"old-finish")
    box.end_stream("a")
    box.push("a", b"new-started")
    box.push_telemetry("a", b"t")
    assert drain(box) == [("a", b"old-finish"), ("a", b"new-started"), ("a", b"t")]
    assert box.shed_telemetry == 0


def test_the_backlog_counts_control_frames_and_ended_queues_but_not_running_ones():
    box = Outbox(10, 1000)
    box.push_control(b"12345")
    box.push("a", b"123")
    box.push("b", b"1234567")
    assert box.backlog_bytes == 5
    box.end_stream("b")
    assert box.backlog_bytes == 12
    drain(box)
    assert box.backlog_bytes == 0
    assert box.pending_bytes == 0


def test_reusing_an_ended_id_moves_its_bytes_out_of_the_backlog():
    box = Outbox(10, 1000)
    box.push("a", b"old")
    box.end_stream("a")
    box.end_stream("a")
    assert box.backlog_bytes == 3
    box.push("a", b"new")
    assert box.backlog_bytes == 0
