"""Properties of the session core under random timing of cancels, failures and disconnects."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core import events as ev
from wsgate.core.errors import ShuttingDown, UpstreamError
from wsgate.core.frames import ErrorFrame, FinishFrame
from wsgate.core.session import SendControl, SendStream, Session, SessionLimits
from wsgate.testing import LOCAL, ScriptedParser, resolver

STREAMS = ["a", "b", "c"]

step = st.one_of(
    st.tuples(st.just("start"), st.sampled_from(STREAMS)),
    st.tuples(st.just("data"), st.sampled_from(STREAMS)),
    st.tuples(st.just("finish"), st.sampled_from(STREAMS)),
    st.tuples(st.just("cancel"), st.sampled_from(STREAMS)),
    st.tuples(st.just("fail"), st.sampled_from(STREAMS)),
    st.tuples(st.just("eof"), st.sampled_from(STREAMS)),
    st.tuples(st.just("shutdown"), st.none()),
    st.tuples(st.just("lost"), st.none()),
)


class Recorder:
    """Collects every stream frame the session produces, per stream run."""

    def __init__(self) -> None:
        self.runs: dict[str, list[list]] = {sid: [] for sid in STREAMS}

    def take(self, sid: str, frames: list) -> None:
        for frame in frames:
            if frame.seq == 1:
                self.runs[sid].append([])
            self.runs[sid][-1].append(frame)

    def actions(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, SendStream):
                self.take(action.stream_id, action.output.frames)
            elif isinstance(action, SendControl):
                assert isinstance(action.frame, ErrorFrame)
                assert action.frame.seq is None


def start(sid: str) -> bytes:
    request = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    return orjson.dumps({"type": "start", "stream_id": sid, "request": request})


@given(st.lists(step, max_size=60))
@settings(max_examples=400)
def test_every_stream_gets_exactly_one_finish_and_nothing_after_it(steps):
    def parser():
        return ScriptedParser([[ev.TextDelta("t")]] * 100)

    limits = SessionLimits(max_streams=8)
    session = Session("c", limits, resolver(parser), lambda: "m", principal=LOCAL)
    rec = Recorder()
    now = 0.0
    for kind, sid in steps:
        now += 0.01
        if kind == "start":
            rec.actions(session.receive(start(sid), now))
        elif kind == "data":
            rec.take(sid, session.upstream_data(sid, b"x", now).frames)
        elif kind == "finish":
            stream = session.streams.get(sid)
            if stream is not None:
                stream._parser.steps.insert(0, [ev.TextDelta("end"), ev.Finish("stop")])
            rec.take(sid, session.upstream_data(sid, b"x", now).frames)
        elif kind == "cancel":
            rec.actions(session.receive(b'{"type":"cancel","stream_id":"%s"}' % sid.encode(), now))
        elif kind == "fail":
            rec.take(sid, session.upstream_failed(sid, UpstreamError("boom")).frames)
        elif kind == "eof":
            rec.take(sid, session.upstream_eof(sid, now).frames)
        elif kind == "shutdown":
            session.drain()
            rec.actions(session.cancel_all(ShuttingDown("bye")))
        else:
            rec.actions(session.connection_lost())
    rec.actions(session.connection_lost())
    for runs in rec.runs.values():
        for frames in runs:
            finishes = [f for f in frames if isinstance(f, FinishFrame)]
            assert len(finishes) == 1
            assert isinstance(frames[-1], FinishFrame)
            assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    assert session.streams == {}
