"""The stream state machine's table."""

from __future__ import annotations

import pytest

from wsgate.core.errors import ProtocolError
from wsgate.core.state import TRANSITIONS, Event, State, transition


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (State.NEW, Event.START, State.OPEN),
        (State.OPEN, Event.CONTENT, State.STREAMING),
        (State.OPEN, Event.FINISH, State.CLOSED),
        (State.OPEN, Event.CANCEL, State.CLOSED),
        (State.STREAMING, Event.CONTENT, State.STREAMING),
        (State.STREAMING, Event.FAIL, State.CLOSED),
        (State.CLOSED, Event.CONTENT, None),
        (State.CLOSED, Event.CANCEL, None),
    ],
)
def test_transition_follows_the_table(state, event, expected):
    assert transition(state, event) is expected


@pytest.mark.parametrize(
    ("state", "event"),
    [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS],
)
def test_an_unlisted_transition_raises_a_protocol_error_naming_state_and_event(state, event):
    with pytest.raises(ProtocolError) as info:
        transition(state, event)
    assert state.value in str(info.value)
    assert event.value in str(info.value)


def test_nothing_leaves_the_closed_state():
    assert all(outcome == "drop" for (s, _), outcome in TRANSITIONS.items() if s is State.CLOSED)
