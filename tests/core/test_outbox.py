"""The outbox: order, fairness, bounds and telemetry shedding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core.frames import (
    DeltaRole,
    DeltaText,
    FinishFrame,
    decode_server_frame,
    encode_frame,
)
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
    box = Outbox(10, 1000, quantum=2)
    for i in range(3):
        box.push("a", f"a{i}".encode())
    box.push("b", b"b0")
    box.push("b", b"b1")
    assert [d for _, d in drain(box)] == [b"a0", b"b0", b"a1", b"b1", b"a2"]


def test_round_robin_is_by_bytes_so_big_frames_do_not_starve_small_ones():
    box = Outbox(100, 100_000, quantum=100)
    for _ in range(5):
        box.push("big", b"B" * 100)
    for _ in range(20):
        box.push("small", b"s" * 10)
    order = [sid for sid, _ in drain(box)]
    # In the time "big" sends its first 100 bytes, "small" sends 100 bytes too: ten frames.
    assert order[:11] == ["big"] + ["small"] * 10


def test_a_stream_whose_next_frame_ends_it_goes_before_other_streams_data():
    box = Outbox(10, 1000, quantum=1)
    box.push("a", b"a-data", DeltaText("a", 2, "x"))
    box.push("a", b"a-data2", DeltaText("a", 3, "y"))
    box.push("b", b"b-finish", FinishFrame("b", 2, "stop"))
    assert [d for _, d in drain(box)][:1] == [b"b-finish"]


def test_a_streams_finish_never_overtakes_its_own_data():
    box = Outbox(10, 1000)
    box.push("a", b"a-text", DeltaRole("a", 2, "assistant"))
    box.push("a", b"a-finish", FinishFrame("a", 3, "stop"))
    assert [d for _, d in drain(box)] == [b"a-text", b"a-finish"]


def text(sid, seq, chunk):
    frame = DeltaText(sid, seq, chunk)
    return encode_frame(frame), frame


def test_queued_text_deltas_leave_as_one_frame_naming_the_seqs_it_covers():
    box = Outbox(10, 1000)
    for seq, chunk in enumerate(["Hel", "lo", " wor", "ld"], start=2):
        box.push("a", *text("a", seq, chunk))
    box.push("a", b"finish", FinishFrame("a", 6, "stop"))
    out = drain(box)
    merged = decode_server_frame(out[0][1])
    assert merged == DeltaText("a", 5, "Hello world", first_seq=2)
    assert out[1] == ("a", b"finish")
    assert box.coalesced == 3
    assert box.pending_bytes == 0


def test_coalescing_stops_at_a_non_text_frame_and_at_the_size_cap():
    box = Outbox(100, 100_000, coalesce_bytes=5)
    box.push("a", *text("a", 2, "abc"))
    box.push("a", *text("a", 3, "def"))
    box.push("a", *text("a", 4, "ghi"))
    box.push("a", b"role", DeltaRole("a", 5, "assistant"))
    box.push("a", *text("a", 6, "jkl"))
    frames = [d for _, d in drain(box)]
    first = decode_server_frame(frames[0])
    assert (first.text, first.first_seq, first.seq) == ("abcdef", 2, 3)
    assert decode_server_frame(frames[1]) == DeltaText("a", 4, "ghi")
    assert frames[2] == b"role"
    assert decode_server_frame(frames[3]) == DeltaText("a", 6, "jkl")


def test_a_single_text_delta_leaves_unchanged():
    box = Outbox(10, 1000)
    data, frame = text("a", 2, "solo")
    box.push("a", data, frame)
    assert drain(box) == [("a", data)]
    assert box.coalesced == 0


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


def test_the_outbox_is_empty_only_when_no_frame_and_no_telemetry_waits():
    box = Outbox(10, 1000)
    assert box.empty
    box.push_telemetry("a", b"t")
    assert not box.empty
    assert box.pending_bytes == 0  # telemetry is not counted there
    box.push("a", b"a0")
    assert box.pop() == ("a", b"a0")
    assert not box.empty  # the telemetry still waits
    assert box.pop() == ("a", b"t")
    assert box.empty


def test_an_ended_stream_is_forgotten_once_drained():
    box = Outbox(10, 1000)
    box.push("a", b"a0")
    box.end_stream("a")
    drain(box)
    assert box._streams == {}


def test_a_drained_outbox_holds_no_queue_of_any_kind():
    # Memory: an idle connection, or a running stream with nothing waiting, holds no deque.
    box = Outbox(10, 1000)
    box.push_control(b"c")
    box.push("a", b"a0")  # a stream that goes on: not ended
    box.push("b", b"b-finish", FinishFrame("b", 2, "stop"))
    drain(box)
    assert box._streams == {}
    assert box._control is None
    assert box._active is None
    assert box._urgent is None
    assert box.queued("a") == (0, 0)
    assert box.has_room("a")
    assert not box.is_full("a")


def test_a_stream_that_drained_queues_again_in_its_own_order():
    box = Outbox(10, 1000, quantum=2)
    box.push("a", b"a0")
    assert drain(box) == [("a", b"a0")]
    box.push("a", b"a1")
    box.push("b", b"b0")
    box.push("a", b"a2")
    assert drain(box) == [("a", b"a1"), ("b", b"b0"), ("a", b"a2")]


def test_taking_the_only_waiting_stream_leaves_no_schedule_behind():
    box = Outbox(10, 1000)
    box.push("a", b"a0")
    box.push("b", b"b-finish", FinishFrame("b", 2, "stop"))
    box.take_stream("a")
    box.take_stream("b")
    assert box._active is None
    assert box._urgent is None
    assert box.pop() is None


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


def test_control_bytes_count_connection_frames_and_no_stream_ended_or_running():
    box = Outbox(10, 1000)
    box.push_control(b"12345")
    box.push("a", b"123")
    box.push("b", b"1234567")
    box.end_stream("b")
    assert box.control_bytes == 5
    assert box.pending_bytes == 15
    drain(box)
    assert box.control_bytes == 0
    assert box.pending_bytes == 0


def test_reusing_an_ended_id_keeps_its_frames_waiting_in_order_before_the_new_ones():
    box = Outbox(10, 1000)
    box.push("a", b"old")
    box.end_stream("a")
    box.end_stream("a")
    box.push("a", b"new")
    assert box.queued("a") == (2, 6)
    assert drain(box) == [("a", b"old"), ("a", b"new")]


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["text", "role", "pop"])),
        max_size=80,
    ),
    st.integers(1, 64),
    st.integers(1, 40),
)
@settings(max_examples=300)
def test_any_interleaving_of_pushes_and_pops_loses_nothing_and_keeps_seq_gapless(
    script, quantum, coalesce_bytes
):
    box = Outbox(1000, 1_000_000, quantum=quantum, coalesce_bytes=coalesce_bytes)
    seqs = dict.fromkeys("abc", 1)
    sent_text = dict.fromkeys("abc", "")
    received: list[tuple[str | None, bytes]] = []
    for sid, action in script:
        assert all(queue.entries for queue in box._streams.values())  # no empty queue kept
        if action == "pop":
            item = box.pop()
            if item is not None:
                received.append(item)
            continue
        seqs[sid] += 1
        if action == "text":
            chunk = f"{sid}{seqs[sid]};"
            sent_text[sid] += chunk
            box.push(sid, *text(sid, seqs[sid], chunk))
        else:
            frame = DeltaRole(sid, seqs[sid], "assistant")
            box.push(sid, encode_frame(frame), frame)
    for sid in "abc":
        seqs[sid] += 1
        frame = FinishFrame(sid, seqs[sid], "stop")
        box.push(sid, encode_frame(frame), frame)
        box.end_stream(sid)
    received.extend(drain(box))
    for sid in "abc":
        frames = [decode_server_frame(d) for s, d in received if s == sid]
        expected_next = 2
        for frame in frames:
            first = getattr(frame, "first_seq", None) or frame.seq
            assert first == expected_next
            expected_next = frame.seq + 1
        assert isinstance(frames[-1], FinishFrame)
        assert "".join(f.text for f in frames if isinstance(f, DeltaText)) == sent_text[sid]
    assert box.pending_bytes == 0
    assert box.control_bytes == 0
    assert box._streams == {}


def test_taking_a_streams_frames_removes_them_in_order_and_leaves_the_rest():
    box = Outbox(10, 1000)
    box.push("a", b"a1")
    box.push("b", b"b1")
    box.push("a", b"a2")
    box.push_telemetry("a", b"t")
    assert box.take_stream("a") == [b"a1", b"a2"]
    assert drain(box) == [("b", b"b1")]
    assert box.pending_bytes == 0
    assert box.take_stream("zz") == []
