"""The per-connection session and the stream core, driven with scripted parsers."""

from __future__ import annotations

import itertools

import orjson
import pytest

from wsgate.core import events as ev
from wsgate.core.errors import UnknownModel, UpstreamRateLimited
from wsgate.core.frames import (
    DeltaRole,
    DeltaText,
    ErrorFrame,
    FinishFrame,
    Start,
    StartOptions,
    StreamStarted,
    Telemetry,
    UsageFrame,
    encode_frame,
)
from wsgate.core.session import (
    CancelUpstream,
    CloseConnection,
    SendControl,
    SendStream,
    Session,
    SessionLimits,
    StartUpstream,
)
from wsgate.testing import LOCAL, FakeClock, ParserTarget, ScriptedParser


def make_session(parsers=None, max_streams=4, telemetry_interval=0.5):
    parsers = parsers if parsers is not None else {}
    ids = itertools.count(1)

    def factory(request, options):
        if request.model == "nope":
            raise UnknownModel("no provider serves model 'nope'")
        return ParserTarget(lambda: parsers.get(request.model) or ScriptedParser())

    return Session(
        "conn_1",
        SessionLimits(
            max_streams=max_streams, max_frame_bytes=4096, telemetry_interval=telemetry_interval
        ),
        factory,
        lambda: f"msg_{next(ids)}",
        "test",
        principal=LOCAL,
    )


def start_frame(sid="s1", model="mock", telemetry=False):
    return orjson.dumps(
        {
            "type": "start",
            "stream_id": sid,
            "request": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
            "options": {"telemetry": telemetry},
        }
    )


def refusal(actions):
    (action,) = actions
    assert isinstance(action, SendControl)
    assert isinstance(action.frame, ErrorFrame)
    assert action.frame.seq is None
    return action.frame


def test_ready_announces_the_limits():
    ready = make_session().ready()
    assert ready.protocol == "wsgate.v1"
    assert ready.limits.max_streams == 4
    assert ready.limits.max_stream_id_length == 64


def test_start_emits_stream_started_with_seq_1_and_asks_for_the_upstream():
    session = make_session()
    actions = session.receive(start_frame(), 0.0)
    send, up = actions
    assert isinstance(send, SendStream)
    assert send.output.frames == [StreamStarted("s1", 1, "msg_1", "mock")]
    assert isinstance(up, StartUpstream)
    assert up.message_id == "msg_1"
    assert "s1" in session.streams


def test_upstream_events_become_frames_with_gapless_seq_until_finish():
    parser = ScriptedParser(
        [
            [ev.RoleDelta("assistant"), ev.TextDelta("Hel")],
            [ev.TextDelta("lo"), ev.Usage(3, 2), ev.Finish("stop"), ev.TextDelta("late")],
        ]
    )
    session = make_session({"mock": parser})
    session.receive(start_frame(), 0.0)
    first = session.upstream_data("s1", b"x", 0.1)
    second = session.upstream_data("s1", b"y", 0.2)
    frames = first.frames + second.frames
    assert frames == [
        DeltaRole("s1", 2, "assistant"),
        DeltaText("s1", 3, "Hel"),
        DeltaText("s1", 4, "lo"),
        UsageFrame("s1", 5, 3, 2),
        FinishFrame("s1", 6, "stop"),
    ]
    assert second.closed
    assert "s1" not in session.streams
    assert session.upstream_data("s1", b"z", 0.3).frames == []


def test_cancel_produces_one_finish_cancelled_and_closes_the_upstream():
    session = make_session()
    session.receive(start_frame(), 0.0)
    actions = session.receive(b'{"type":"cancel","stream_id":"s1"}', 0.1)
    send, cancel = actions
    assert isinstance(send, SendStream)
    assert send.output.frames == [FinishFrame("s1", 2, "cancelled")]
    assert cancel == CancelUpstream("s1")
    assert session.upstream_data("s1", b"late", 0.2).frames == []
    assert session.upstream_eof("s1", 0.3).frames == []


def test_cancel_of_an_unknown_stream_is_refused_with_its_stream_id():
    error = refusal(make_session().receive(b'{"type":"cancel","stream_id":"zz"}', 0.0))
    assert (error.code, error.stream_id) == ("unknown_stream", "zz")


def test_a_duplicate_stream_id_is_refused_and_the_running_stream_is_untouched():
    session = make_session()
    session.receive(start_frame(), 0.0)
    error = refusal(session.receive(start_frame(), 0.1))
    assert (error.code, error.stream_id) == ("stream_exists", "s1")
    assert session.streams["s1"].last_seq == 1


def test_streams_past_the_limit_are_refused_as_retryable():
    session = make_session(max_streams=2)
    session.receive(start_frame("a"), 0.0)
    session.receive(start_frame("b"), 0.0)
    error = refusal(session.receive(start_frame("c"), 0.0))
    assert error.code == "too_many_streams"
    assert error.retryable


def test_an_unknown_model_is_refused_before_anything_starts():
    session = make_session()
    error = refusal(session.receive(start_frame(model="nope"), 0.0))
    assert error.code == "unknown_model"
    assert session.streams == {}


def test_a_tool_result_for_a_stream_that_is_not_running_is_unknown_stream():
    data = orjson.dumps({"type": "tool_result", "stream_id": "s", "call_id": "c", "content": 1})
    error = refusal(make_session().receive(data, 0.0))
    assert (error.code, error.stream_id) == ("unknown_stream", "s")


def test_binary_frames_are_refused_as_bad_frames():
    assert refusal(make_session().receive_binary()).code == "bad_frame"


def test_an_upstream_failure_ends_the_stream_with_error_then_finish():
    session = make_session(
        {"mock": ScriptedParser([UpstreamRateLimited("slow down", retry_after_ms=1500)])}
    )
    session.receive(start_frame(), 0.0)
    retry = session.upstream_data("s1", b"x", 0.1).retry  # before any token: retryable
    assert retry is not None
    out = session.upstream_failed("s1", retry)  # the shell gave up retrying
    error, finish = out.frames
    assert isinstance(error, ErrorFrame)
    assert (error.code, error.seq, error.retryable, error.retry_after_ms) == (
        "upstream_rate_limited",
        2,
        True,
        1500,
    )
    assert finish == FinishFrame("s1", 3, "error")
    assert out.closed


def test_a_truncated_upstream_is_an_error_never_a_stop():
    session = make_session({"mock": ScriptedParser([[ev.TextDelta("a")]], finished_at_eof=False)})
    session.receive(start_frame(), 0.0)
    session.upstream_data("s1", b"x", 0.1)
    out = session.upstream_eof("s1", 0.2)
    assert [type(f) for f in out.frames] == [ErrorFrame, FinishFrame]
    assert out.frames[-1].reason == "error"


def test_an_upstream_that_ends_cleanly_without_finish_is_still_an_error():
    session = make_session({"mock": ScriptedParser([[ev.TextDelta("a")]], eof_events=[])})
    session.receive(start_frame(), 0.0)
    out = session.upstream_eof("s1", 0.2)
    assert out.frames[0].code == "upstream_protocol"


def test_connection_lost_cancels_every_running_stream():
    session = make_session()
    session.receive(start_frame("a"), 0.0)
    session.receive(start_frame("b"), 0.0)
    actions = session.connection_lost()
    assert {a.stream_id for a in actions if isinstance(a, CancelUpstream)} == {"a", "b"}
    assert session.streams == {}


def test_telemetry_is_produced_at_most_once_per_interval_when_asked_for():
    clock = FakeClock(0.0)
    parser = ScriptedParser([[ev.TextDelta("a")]] * 4)
    session = make_session({"mock": parser}, telemetry_interval=0.5)
    session.receive(start_frame(telemetry=True), clock.now)
    seen = []
    for step in (0.1, 0.6, 0.1, 0.6):
        out = session.upstream_data("s1", b"x", clock.advance(step))
        seen.append(out.telemetry)
    assert seen[0] is None
    assert isinstance(seen[1], Telemetry)
    assert seen[1].tokens == 2
    assert seen[1].ttft_ms == pytest.approx(100.0)
    assert seen[2] is None
    assert isinstance(seen[3], Telemetry)


def test_no_telemetry_unless_the_stream_asked_for_it():
    session = make_session({"mock": ScriptedParser([[ev.TextDelta("a")]] * 3)})
    session.receive(start_frame(), 0.0)
    assert all(session.upstream_data("s1", b"x", t).telemetry is None for t in (1.0, 2.0, 3.0))


def test_start_options_default_to_no_telemetry():
    frame = Start("s", request=None)  # type: ignore[arg-type]
    assert frame.options == StartOptions()


def test_the_encoded_ready_frame_names_the_protocol():
    assert orjson.loads(encode_frame(make_session().ready()))["protocol"] == "wsgate.v1"


def test_a_provider_finish_of_error_is_explained_by_an_error_frame_first():
    session = make_session({"mock": ScriptedParser([[ev.TextDelta("a"), ev.Finish("error")]])})
    session.receive(start_frame(), 0.0)
    frames = session.upstream_data("s1", b"x", 0.1).frames
    assert [type(f) for f in frames] == [DeltaText, ErrorFrame, FinishFrame]
    assert frames[1].code == "upstream_error"
    assert frames[2].reason == "error"


def test_an_error_item_after_events_keeps_the_events_and_then_fails_the_stream():
    parser = ScriptedParser([[ev.TextDelta("Part"), UpstreamRateLimited("later")]])
    session = make_session({"mock": parser})
    session.receive(start_frame(), 0.0)
    frames = session.upstream_data("s1", b"x", 0.1).frames
    assert frames[0] == DeltaText("s1", 2, "Part")
    assert (frames[1].code, frames[1].seq, frames[2].reason) == (
        "upstream_rate_limited",
        3,
        "error",
    )


def test_a_tool_call_too_deep_to_encode_fails_the_stream_with_seq_intact():
    arguments: list = []
    for _ in range(5000):
        arguments = [arguments]
    steps = [
        [ev.ToolCallStart("c1", 0, "f")],
        [ev.ToolCallEnd("c1", "f", arguments), ev.Finish("tool_calls")],
    ]
    session = make_session({"mock": ScriptedParser(steps)})
    session.receive(start_frame(), 0.0)
    first = session.upstream_data("s1", b"x", 0.1)
    out = session.upstream_data("s1", b"y", 0.2)
    error, finish = out.frames
    assert (error.code, error.seq, finish.seq, finish.reason) == (
        "upstream_protocol",
        3,
        4,
        "error",
    )
    assert len(out.data) == 2
    assert [f.seq for f in first.frames] == [2]
    assert "s1" not in session.streams


def test_the_bad_frame_that_reaches_the_limit_closes_the_connection_and_nothing_more_is_read():
    session = Session(
        "c",
        SessionLimits(max_bad_frames=3),
        lambda _r, _o: ParserTarget(ScriptedParser),
        str,
        principal=LOCAL,
    )
    assert refusal(session.receive("[]", 0.0)).code == "bad_frame"
    assert refusal(session.receive_binary()).code == "bad_frame"
    (close,) = session.receive("{", 0.0)
    assert isinstance(close, CloseConnection)
    assert (close.code, close.frame.code) == (4500, "too_many_bad_frames")
    assert session.receive(start_frame(), 0.0) == []  # closing: nothing more is read
