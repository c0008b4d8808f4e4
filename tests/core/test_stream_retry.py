"""Retrying a provider call before the first token: what the stream core allows and shows.

A transient failure (connect, 429, 5xx, overloaded) that arrives while the client has seen
only `stream.started` and `delta.role` is reported as `retry`, not as an `error`: the shell
may call the provider again with a fresh parser, and the client sees one `stream.started`,
one `delta.role`, gapless `seq` and no duplicate delta. Once anything else was produced,
the same failure ends the stream.
"""

from __future__ import annotations

import orjson

from wsgate.core import events as ev
from wsgate.core.errors import UpstreamError, UpstreamProtocolError, UpstreamRateLimited
from wsgate.core.frames import DeltaRole, DeltaText, ErrorFrame, FinishFrame
from wsgate.core.session import Session, SessionLimits, StartUpstream
from wsgate.testing import LOCAL, ParserTarget, ScriptedParser, resolver


def session_with(parsers, buffering="immediate"):
    queue = list(parsers)
    session = Session(
        "c1", SessionLimits(), resolver(lambda: queue.pop(0)), lambda: "m1", principal=LOCAL
    )
    frame = {
        "type": "start",
        "stream_id": "s1",
        "request": {"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
        "options": {"buffering": buffering},
    }
    actions = session.receive(orjson.dumps(frame), 0.0)
    assert isinstance(actions[-1], StartUpstream)
    return session


def test_a_transient_error_before_any_content_asks_for_a_retry_and_keeps_the_stream_open():
    overloaded = UpstreamError("upstream reported an error (overloaded_error)")
    session = session_with([ScriptedParser([[ev.RoleDelta("assistant"), overloaded]])])
    out = session.upstream_data("s1", b"x", 1.0)
    assert out.retry is overloaded
    assert not out.closed
    assert [type(f) for f in out.frames] == [DeltaRole]
    assert "s1" in session.streams


def test_after_a_retry_the_second_role_is_dropped_and_seq_stays_gapless():
    first = ScriptedParser([[ev.RoleDelta("assistant"), UpstreamRateLimited("429")]])
    second = ScriptedParser([[ev.RoleDelta("assistant"), ev.TextDelta("Hi"), ev.Finish("stop")]])
    session = session_with([first])
    assert session.upstream_data("s1", b"x", 1.0).retry is not None
    assert session.retry_upstream("s1", ParserTarget(lambda: second))
    out = session.upstream_data("s1", b"y", 2.0)
    assert [(type(f), f.seq) for f in out.frames] == [(DeltaText, 3), (FinishFrame, 4)]
    assert out.closed


def test_a_transient_error_at_the_end_of_the_body_asks_for_a_retry_too():
    parser = ScriptedParser(eof_events=[UpstreamError("boom")])
    session = session_with([parser])
    out = session.upstream_eof("s1", 1.0)
    assert out.retry is not None
    assert not out.closed


def test_a_transient_error_after_text_ends_the_stream_and_cannot_be_retried():
    parser = ScriptedParser([[ev.TextDelta("Hel")], [UpstreamError("boom")]])
    session = session_with([parser])
    session.upstream_data("s1", b"x", 1.0)
    out = session.upstream_data("s1", b"y", 2.0)
    assert out.retry is None
    assert [type(f) for f in out.frames] == [ErrorFrame, FinishFrame]
    assert not session.retry_upstream("s1", ParserTarget(ScriptedParser))


def test_text_held_by_a_buffering_mode_counts_as_content():
    parser = ScriptedParser([[ev.TextDelta("Hel")], [UpstreamError("boom")]])
    session = session_with([parser], buffering="word")
    assert session.upstream_data("s1", b"x", 1.0).frames == []  # "Hel" is held
    out = session.upstream_data("s1", b"y", 2.0)
    assert out.retry is None
    assert out.closed
    assert [f.text for f in out.frames if isinstance(f, DeltaText)] == ["Hel"]


def test_a_non_transient_error_before_content_ends_the_stream_at_once():
    parser = ScriptedParser([[UpstreamProtocolError("truncated")]])
    session = session_with([parser])
    out = session.upstream_data("s1", b"x", 1.0)
    assert out.retry is None
    assert out.closed
    assert [f.code for f in out.frames if isinstance(f, ErrorFrame)] == ["upstream_protocol"]


def test_a_raised_transient_error_is_treated_like_a_returned_one():
    session = session_with([ScriptedParser([UpstreamError("boom")])])
    assert session.upstream_data("s1", b"x", 1.0).retry is not None


def test_the_shell_reports_a_retry_it_will_not_make_with_upstream_failed():
    session = session_with([ScriptedParser([[UpstreamRateLimited("429", retry_after_ms=9000)]])])
    error = session.upstream_data("s1", b"x", 1.0).retry
    out = session.upstream_failed("s1", error)
    frames = out.frames
    assert [type(f) for f in frames] == [ErrorFrame, FinishFrame]
    assert frames[0].retry_after_ms == 9000
    assert frames[0].retryable
    assert frames[1].reason == "error"
    assert not session.retry_upstream("s1", ParserTarget(ScriptedParser))
