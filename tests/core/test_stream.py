"""The stream core's token path: one text delta per provider token, numbered and encoded.

The token path (`Stream._text_delta`) skips the general event dispatch; these tests pin
that it still counts tokens, moves the state machine, keeps `seq` gapless and hands the
text pipeline's other outputs (held clusters, sections) to the general frame builder.
"""

from __future__ import annotations

from wsgate.core import events as ev
from wsgate.core.frames import (
    DeltaRole,
    DeltaText,
    FinishFrame,
    StartOptions,
    StructuredFrame,
    StructuredOptions,
    decode_server_frame,
)
from wsgate.core.state import TRANSITIONS, Event, State
from wsgate.core.stream import Stream
from wsgate.testing import ScriptedParser


def stream_of(steps, options=None):
    stream = Stream("s1", "m1", "mock", options or StartOptions(), ScriptedParser(steps), 0.0)
    stream.start()
    return stream


def test_the_state_shortcut_of_the_token_path_is_the_tables_answer():
    assert TRANSITIONS[State.STREAMING, Event.CONTENT] is State.STREAMING


def test_text_deltas_become_numbered_encoded_frames_and_count_as_tokens():
    stream = stream_of([[ev.RoleDelta("assistant"), ev.TextDelta("a"), ev.TextDelta(" b")]])
    out = stream.feed(b"x", 1.0)
    assert out.frames == [
        DeltaRole("s1", 2, "assistant"),
        DeltaText("s1", 3, "a"),
        DeltaText("s1", 4, " b"),
    ]
    assert [decode_server_frame(data) for data in out.data] == out.frames
    assert stream.state is State.STREAMING
    assert stream.tokens == 2
    assert stream.has_content
    assert not stream.may_retry


def test_a_first_text_delta_opens_the_stream_without_a_role():
    stream = stream_of([[ev.TextDelta("a")]])
    assert stream.state is State.OPEN
    stream.feed(b"x", 1.0)
    assert stream.state is State.STREAMING


def test_a_held_cluster_makes_no_frame_and_leaves_with_the_next_delta():
    stream = stream_of([[ev.TextDelta("1")], [ev.TextDelta("2 ")], [ev.Finish("stop")]])
    assert stream.feed(b"x", 1.0).frames == []  # a digit may start a keycap sequence
    assert stream.feed(b"x", 2.0).frames == [DeltaText("s1", 2, "12 ")]
    assert stream.tokens == 2
    assert stream.feed(b"x", 3.0).frames == [FinishFrame("s1", 3, "stop")]


def test_text_that_closes_a_section_goes_through_the_general_frame_builder():
    options = StartOptions(structured=StructuredOptions(open="<<", close=">>"))
    stream = stream_of([[ev.TextDelta("a <<"), ev.TextDelta('{"k": 1}>> b')]], options)
    frames = stream.feed(b"x", 1.0).frames
    assert frames == [
        DeltaText("s1", 2, "a "),
        StructuredFrame("s1", 3, {"k": 1}),
        DeltaText("s1", 4, " b"),
    ]
