"""The outbox's lone-frame slot: no allocation for a lone frame, and no difference otherwise.

A hypothesis property drives the outbox with and without the slot (`lone_slot`) through
the same random sequences of every public call and requires the same answers at each step.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core import outbox as outbox_module
from wsgate.core.frames import DeltaText, ErrorFrame, FinishFrame, UsageFrame, encode_frame
from wsgate.core.outbox import Outbox


class QueuedOutbox(Outbox):
    """The same outbox with every frame queued (no lone slot): the reference."""

    __slots__ = ()
    lone_slot = False


STREAMS = ("a", "b")


def frame_for(kind: str, stream_id: str, seq: int):
    if kind == "text":
        return DeltaText(stream_id, seq, "t" * (seq % 7 + 1))
    if kind == "usage":
        return UsageFrame(stream_id, seq, input_tokens=1, output_tokens=2)
    if kind == "error":
        return ErrorFrame("upstream_error", "failed", retryable=True, stream_id=stream_id, seq=seq)
    return FinishFrame(stream_id, seq, "stop")


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.sampled_from(STREAMS),
            st.sampled_from(["text", "text", "usage", "error", "finish"]),
        ),
        st.tuples(st.just("control"), st.integers(1, 40)),
        st.tuples(st.just("telemetry"), st.sampled_from(STREAMS)),
        st.tuples(st.just("end"), st.sampled_from(STREAMS)),
        st.tuples(st.just("take"), st.sampled_from(STREAMS)),
        st.just(("pop",)),
        st.just(("pop",)),
        st.just(("clear",)),
    ),
    max_size=40,
)


def observe(box: Outbox) -> tuple:
    return (
        len(box),
        box.pending_bytes,
        box.control_bytes,
        box.empty,
        box.shed_telemetry,
        box.coalesced,
        tuple((box.is_full(s), box.has_room(s), box.queued(s)) for s in STREAMS),
    )


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_the_lone_slot_answers_every_call_as_a_queued_frame_would(ops):
    fast, reference = Outbox(3, 60, quantum=16), QueuedOutbox(3, 60, quantum=16)
    for seq, op in enumerate(ops):
        results = []
        for box in (fast, reference):
            if op[0] == "push":
                _, stream_id, kind = op
                frame = frame_for(kind, stream_id, seq + 1)
                box.push(stream_id, encode_frame(frame), frame)
                result = None
            elif op[0] == "control":
                result = box.push_control(b"c" * op[1])
            elif op[0] == "telemetry":
                result = box.push_telemetry(op[1], b'{"type":"telemetry"}')
            elif op[0] == "end":
                result = box.end_stream(op[1])
            elif op[0] == "take":
                result = box.take_stream(op[1])
            elif op[0] == "pop":
                result = box.pop()
            else:
                result = box.clear()
            results.append((result, observe(box)))
        assert results[0] == results[1], op


def test_a_lone_frame_pushed_and_popped_makes_no_queue(monkeypatch):
    made = []
    original = outbox_module._StreamQueue

    class Counting(original):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def __init__(self) -> None:
            made.append(1)
            super().__init__()

    monkeypatch.setattr(outbox_module, "_StreamQueue", Counting)
    box = Outbox(256, 256 * 1024)
    for seq in range(1, 50):
        frame = DeltaText("s1", seq, "tok")
        box.push("s1", encode_frame(frame), frame)
        assert box.pop() == ("s1", encode_frame(frame))
    assert made == []
    assert box._streams == {}
    assert box._active is None
    assert box._urgent is None
    assert box._control is None


def test_a_second_frame_moves_the_lone_one_into_the_queues_in_order():
    box = Outbox(256, 256 * 1024)
    first, second = DeltaText("s1", 1, "a"), FinishFrame("s2", 1, "stop")
    box.push("s1", encode_frame(first), first)
    box.push("s2", encode_frame(second), second)
    assert box.pop() == ("s2", encode_frame(second))  # terminal frames first, as queued
    assert box.pop() == ("s1", encode_frame(first))
    assert box.pop() is None
