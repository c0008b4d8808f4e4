"""SurrogateJoiner: split pairs join, nothing lone escapes, whatever the pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core.utf8 import SurrogateJoiner, has_lone_surrogate

HIGH, LOW, GRIN = "\ud83d", "\ude00", "\U0001f600"


def run(pieces):
    joiner = SurrogateJoiner()
    outputs = [joiner.push(piece) for piece in pieces]
    outputs.append(joiner.flush())
    return outputs


def test_joiner_passes_text_without_surrogates_unchanged():
    text = "héllo 日本 🎉"
    assert SurrogateJoiner().push(text) is text


def test_joiner_joins_a_pair_split_across_pushes():
    assert run(["I feel " + HIGH, LOW + " today"]) == ["I feel ", GRIN + " today", ""]


def test_joiner_joins_a_pair_written_as_two_code_points():
    assert run([HIGH + LOW]) == [GRIN, ""]


def test_joiner_holds_a_lone_high_at_the_end_then_flushes_it_as_replacement():
    joiner = SurrogateJoiner()
    assert joiner.push("bye" + HIGH) == "bye"
    assert joiner.flush() == "\ufffd"
    assert joiner.flush() == ""


def test_joiner_keeps_holding_through_empty_pushes():
    assert run([HIGH, "", LOW]) == ["", "", GRIN, ""]


@pytest.mark.parametrize(
    ("pieces", "joined"),
    [
        ([LOW + "x"], "\ufffdx"),
        (["a" + HIGH, "b"], "a\ufffdb"),
        ([HIGH, HIGH, LOW], "\ufffd" + GRIN),
        ([LOW, LOW], "\ufffd\ufffd"),
        (["x" + LOW + HIGH], "x\ufffd\ufffd"),
    ],
)
def test_joiner_replaces_every_lone_surrogate(pieces, joined):
    assert "".join(run(pieces)) == joined


def test_has_lone_surrogate_sees_any_surrogate_code_point():
    assert not has_lone_surrogate("plain 🎉")
    assert has_lone_surrogate("a" + HIGH)
    assert has_lone_surrogate(LOW)
    assert has_lone_surrogate(HIGH + LOW)  # two code points in a str: not the astral character


_pieces = st.lists(
    st.text(alphabet=st.one_of(st.characters(), st.sampled_from([HIGH, LOW, "\ud800", "\udfff"])))
)


@settings(max_examples=200, deadline=None)
@given(pieces=_pieces)
def test_joiner_output_is_the_input_with_pairs_joined_and_never_lone(pieces):
    outputs = run(pieces)
    assert not any(has_lone_surrogate(out) for out in outputs)
    text = "".join(pieces)
    utf16 = text.encode("utf-16-le", "surrogatepass")
    try:
        well_formed = utf16.decode("utf-16-le")
    except UnicodeDecodeError:
        well_formed = None
    if well_formed is not None:
        assert "".join(outputs) == well_formed
    assert "".join(outputs) == utf16.decode("utf-16-le", "replace")
