"""The stream state machine: a transition table and the one function that applies it.

Rules:
1. Everything that decides a stream's lifecycle lives in `TRANSITIONS`; code elsewhere asks
   `transition()` and obeys the answer.
2. This module knows nothing of frames, providers or sockets: only states and events.
3. A late event for a closed stream (an upstream delta that was in flight when the client
   cancelled) is *dropped*, which is a legal outcome; an event the table does not list is a
   bug and raises `ProtocolError` naming the state and the event.
"""

from __future__ import annotations

from enum import Enum

from wsgate.core.errors import ProtocolError


class State(Enum):
    """Where a stream is in its life."""

    NEW = "new"  # created, `stream.started` not yet emitted
    OPEN = "open"  # started, no content from upstream yet (TTFT is running)
    STREAMING = "streaming"  # content has arrived
    AWAITING_TOOLS = "awaiting_tools"  # a turn ended in tool calls; results are awaited
    CLOSED = "closed"  # `finish` emitted; nothing more is sent


class Event(Enum):
    """What can happen to a stream."""

    START = "start"  # the gateway accepted the `start` frame
    CONTENT = "content"  # a durable content event from upstream (role, text, tool, usage)
    FINISH = "finish"  # the provider ended the turn
    TOOLS = "tools"  # the turn ended in tool calls the agent loop answers (core/agent.py)
    NEXT_TURN = "next_turn"  # every call has a result: the next model turn starts
    FAIL = "fail"  # the upstream call failed or timed out
    CANCEL = "cancel"  # the client cancelled, or its connection closed


DROP = "drop"
"""Outcome of a legal event that must have no effect (late events after `finish`)."""

TRANSITIONS: dict[tuple[State, Event], State | str] = {
    (State.NEW, Event.START): State.OPEN,
    (State.OPEN, Event.CONTENT): State.STREAMING,
    (State.OPEN, Event.FINISH): State.CLOSED,
    (State.OPEN, Event.FAIL): State.CLOSED,
    (State.OPEN, Event.CANCEL): State.CLOSED,
    (State.STREAMING, Event.CONTENT): State.STREAMING,
    (State.STREAMING, Event.FINISH): State.CLOSED,
    (State.STREAMING, Event.FAIL): State.CLOSED,
    (State.STREAMING, Event.CANCEL): State.CLOSED,
    (State.OPEN, Event.TOOLS): State.AWAITING_TOOLS,
    (State.STREAMING, Event.TOOLS): State.AWAITING_TOOLS,
    (State.AWAITING_TOOLS, Event.NEXT_TURN): State.OPEN,
    (State.AWAITING_TOOLS, Event.FAIL): State.CLOSED,
    (State.AWAITING_TOOLS, Event.CANCEL): State.CLOSED,
    # The ended turn's provider call may still deliver bytes before it is closed.
    (State.AWAITING_TOOLS, Event.CONTENT): DROP,
    (State.AWAITING_TOOLS, Event.FINISH): DROP,
    (State.CLOSED, Event.CONTENT): DROP,
    (State.CLOSED, Event.FINISH): DROP,
    (State.CLOSED, Event.FAIL): DROP,
    (State.CLOSED, Event.CANCEL): DROP,
    (State.CLOSED, Event.TOOLS): DROP,
    (State.CLOSED, Event.NEXT_TURN): DROP,
}


def transition(state: State, event: Event) -> State | None:
    """Return the next state, or None when the event must be dropped.

    Raises `ProtocolError` for a pair the table does not list.
    """
    try:
        outcome = TRANSITIONS[state, event]
    except KeyError:
        raise ProtocolError(
            f"illegal stream event {event.value!r} in state {state.value!r}"
        ) from None
    if outcome == DROP:
        return None
    assert isinstance(outcome, State)  # noqa: S101 - the table holds states or DROP only
    return outcome
