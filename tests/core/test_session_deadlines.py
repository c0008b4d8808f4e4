"""Stream deadlines in the core: the first token's and the maximum duration's.

The session returns them (`next_deadline`) and ends the streams past them (`expire`); the
shell arms one timer per connection for the earliest. Time is passed in, never read.
"""

from __future__ import annotations

import orjson

from wsgate.core import events as ev
from wsgate.core.frames import ErrorFrame, FinishFrame
from wsgate.core.session import CancelUpstream, SendStream, Session, SessionLimits
from wsgate.testing import LOCAL, ScriptedParser, resolver

TEXT = [[ev.TextDelta("hello")]]


def session(parser: ScriptedParser | None = None) -> Session:
    limits = SessionLimits(first_token_timeout=10.0, max_duration=100.0)
    make = resolver(lambda: parser or ScriptedParser())
    return Session("c", limits, make, lambda: "msg_1", principal=LOCAL)


def start(s: Session, now: float = 0.0, sid: str = "s1") -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    s.receive(orjson.dumps({"type": "start", "stream_id": sid, "request": request}), now)


def ended_with(actions: list, code: str, reason: str) -> None:
    send, cancel = actions
    assert isinstance(send, SendStream)
    error, finish = send.output.frames[-2:]
    assert isinstance(error, ErrorFrame)
    assert error.code == code
    assert isinstance(finish, FinishFrame)
    assert finish.reason == reason
    assert cancel == CancelUpstream("s1")


def test_a_stream_without_content_is_due_at_its_first_token_deadline():
    s = session()
    start(s, now=5.0)
    assert s.next_deadline() == 15.0
    assert s.first_token_left("s1", 7.0) == 8.0


def test_a_stream_past_its_first_token_deadline_ends_with_upstream_timeout():
    s = session()
    start(s)
    assert s.expire(9.99) == []
    ended_with(s.expire(10.0), "upstream_timeout", "timeout")
    assert s.streams == {}
    assert s.next_deadline() is None


def test_content_moves_the_deadline_to_the_maximum_duration():
    s = session(ScriptedParser(TEXT))
    start(s)
    s.upstream_data("s1", b"x", 1.0)
    assert s.first_token_left("s1", 2.0) is None
    assert s.next_deadline() == 100.0
    assert s.expire(50.0) == []
    ended_with(s.expire(100.0), "stream_timeout", "timeout")


def test_the_earliest_deadline_of_several_streams_is_the_sessions():
    s = session()
    start(s, now=3.0, sid="late")
    start(s, now=1.0, sid="early")
    assert s.next_deadline() == 11.0
