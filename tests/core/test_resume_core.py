"""The resume core: judging a log, re-addressing its frames gaplessly, fingerprints, and the
session's resume, idempotent-start and cancel-by-message paths."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given
from hypothesis import strategies as st

from wsgate.core.errors import ResumeTrimmed, UnknownMessage
from wsgate.core.frames import (
    ChatRequest,
    DeltaText,
    ErrorFrame,
    FinishFrame,
    Message,
    StartOptions,
    encode_frame,
)
from wsgate.core.resume import FOLD_CHARS, Tail, fingerprint, judge, retarget
from wsgate.core.session import (
    AdmitStart,
    BeginLog,
    CancelMessage,
    LogPolicy,
    ResumeStream,
    SendControl,
    SendStream,
    Session,
    SessionLimits,
    StartUpstream,
)
from wsgate.core.store import Meta, Page
from wsgate.testing import LOCAL, ParserTarget, ScriptedParser


def text(seq: int, value: str, sid: str = "old") -> bytes:
    return encode_frame(DeltaText(sid, seq, value))


def finish(seq: int, sid: str = "old") -> bytes:
    return encode_frame(FinishFrame(sid, seq, "stop"))


def page(first: int = 1, top: int = 3, *, expired: bool = False, epoch: str = "e") -> Page:
    return Page(Meta(epoch, "n", "running", first, top, expired=expired))


def test_a_missing_log_is_an_unknown_message():
    error = judge(None, 0, None)
    assert error is not None
    assert error.code == "unknown_message"


def test_an_expired_log_is_refused_as_expired():
    error = judge(page(expired=True), 0, None)
    assert error is not None
    assert error.code == "resume_expired"


def test_a_different_epoch_is_refused():
    error = judge(page(epoch="e1"), 0, "e2")
    assert error is not None
    assert error.code == "resume_epoch_changed"


def test_a_log_trimmed_past_last_seq_is_refused():
    error = judge(page(first=5), 3, None)
    assert error is not None
    assert error.code == "resume_trimmed"
    assert judge(page(first=5), 4, None) is None


def test_retarget_replaces_only_the_frames_own_stream_id():
    frame = encode_frame(
        ErrorFrame("x", 'say "stream_id":"old" ok', retryable=False, stream_id="old", seq=4)
    )
    out = orjson.loads(retarget(frame, b"new"))
    assert out["stream_id"] == "new"
    assert out["message"] == 'say "stream_id":"old" ok'


def test_a_tail_sends_each_seq_once_in_order_and_knows_the_finish():
    tail = Tail("new", 1)
    first = tail.take([(1, text(1, "a")), (2, text(2, "b")), (3, text(3, "c"))])
    assert [orjson.loads(d)["seq"] for d in first] == [2, 3]
    assert all(orjson.loads(d)["stream_id"] == "new" for d in first)
    again = tail.take([(3, text(3, "c")), (4, finish(4))])
    assert [orjson.loads(d)["seq"] for d in again] == [4]
    assert tail.done
    assert tail.take([(5, text(5, "late"))]) == []


def test_a_tail_sends_what_comes_before_a_gap_then_says_so():
    tail = Tail("new", 0)
    out = tail.take([(1, text(1, "a")), (2, text(2, "b")), (4, text(4, "d"))])
    assert [orjson.loads(d)["seq"] for d in out] == [1, 2]
    assert isinstance(tail.gap, ResumeTrimmed)
    assert tail.take([(3, text(3, "c"))]) == []  # nothing after a gap


def test_a_snapshot_folds_runs_of_text_into_one_coalesced_frame():
    tail = Tail("new", 0, fold_until=5)
    usage = b'{"type":"usage","stream_id":"old","seq":4,"input_tokens":1,"output_tokens":2}'
    entries = [(1, text(1, "a")), (2, text(2, "b")), (3, text(3, "c")), (4, usage)]
    out = [orjson.loads(d) for d in tail.take([*entries, (5, text(5, "d"))])]
    assert out[0] == {
        "type": "delta.text",
        "stream_id": "new",
        "seq": 3,
        "text": "abc",
        "first_seq": 1,
    }
    assert out[1]["type"] == "usage"
    assert out[2] == {"type": "delta.text", "stream_id": "new", "seq": 5, "text": "d"}
    later = tail.take([(6, text(6, "e")), (7, text(7, "f"))])
    assert len(later) == 2  # only what was logged when the resume was asked is folded


def test_a_snapshot_folds_a_run_across_pages_and_caps_each_frame():
    tail = Tail("new", 0, fold_until=600)
    big = "x" * 100
    out: list[bytes] = []
    for lo in range(1, 601, 256):  # pages of 256
        out.extend(tail.take([(s, text(s, big)) for s in range(lo, min(lo + 256, 601))]))
    frames = [orjson.loads(d) for d in out]
    assert "".join(f["text"] for f in frames) == big * 600
    assert all(len(f["text"]) <= FOLD_CHARS for f in frames)
    assert len(frames) == -(-600 * 100 // FOLD_CHARS)  # as few frames as the cap allows
    expected = 1
    for frame in frames:
        assert frame["first_seq"] == expected
        expected = frame["seq"] + 1


@given(
    n=st.integers(1, 40),
    last=st.integers(0, 40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    overlap=st.integers(0, 3),
)
def test_any_paging_of_a_log_gives_every_frame_after_last_seq_once(n, last, cuts, overlap):
    log = [(seq, text(seq, f"t{seq}")) for seq in range(1, n)] + [(n, finish(n))]
    last = min(last, n)
    tail = Tail("new", last)
    sent: list[int] = []
    bounds = sorted({0, n, *(min(c, n) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        start = max(0, lo - overlap)  # pages may overlap what was sent: never twice
        sent.extend(orjson.loads(d)["seq"] for d in tail.take(log[start:hi]))
    assert sent == list(range(last + 1, n + 1))
    assert tail.done == (last < n)


def request(text_: str = "hi") -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(role="user", content=text_)])


def test_a_fingerprint_ignores_the_key_and_sees_the_request():
    a = fingerprint(request(), StartOptions(idempotency_key="k1"))
    b = fingerprint(request(), StartOptions(idempotency_key="k2"))
    c = fingerprint(request("other"), StartOptions(idempotency_key="k1"))
    d = fingerprint(request(), StartOptions(idempotency_key="k1", buffering="word"))
    assert a == b
    assert len({a, c, d}) == 3


# --- the session's side -------------------------------------------------------------------


def make_session(*, healthy: bool = True, without_log: bool = False, max_streams: int = 4):
    ids = itertools.count(1)
    epochs = itertools.count(1)
    return Session(
        "conn_1",
        SessionLimits(max_streams=max_streams),
        lambda _request, _options: ParserTarget(ScriptedParser),
        lambda: f"msg_{next(ids)}",
        log=LogPolicy(lambda: f"e{next(epochs)}", lambda: healthy, without_log),
        principal=LOCAL,
    )


def start(sid: str = "s1", **options: object) -> bytes:
    return orjson.dumps(
        {
            "type": "start",
            "stream_id": sid,
            "request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            "options": options,
        }
    )


def test_a_logged_start_begins_its_log_before_its_first_frame_and_carries_an_epoch():
    begin, sent, upstream = make_session().receive(start(), 0.0)
    assert begin == BeginLog("s1", "msg_1", "e1", claimed=False)
    assert isinstance(sent, SendStream)
    assert isinstance(upstream, StartUpstream)
    assert sent.output.frames[0].epoch == "e1"  # type: ignore[union-attr]


def test_an_unresumable_start_is_not_logged():
    sent, upstream = make_session().receive(start(resumable=False), 0.0)
    assert isinstance(upstream, StartUpstream)
    assert sent.output.frames[0].epoch is None  # type: ignore[union-attr]


def test_a_start_while_the_store_is_down_is_refused_as_retryable():
    (refusal,) = make_session(healthy=False).receive(start(), 0.0)
    assert isinstance(refusal, SendControl)
    assert isinstance(refusal.frame, ErrorFrame)
    assert (refusal.frame.code, refusal.frame.retryable) == ("store_unavailable", True)


def test_a_start_while_the_store_is_down_runs_unlogged_when_the_operator_chose_so():
    actions = make_session(healthy=False, without_log=True).receive(start(), 0.0)
    assert not any(isinstance(action, BeginLog) for action in actions)
    assert isinstance(actions[-1], StartUpstream)


def test_a_keyed_start_claims_its_key_before_anything_runs():
    session = make_session()
    (claim,) = session.receive(start(idempotency_key="k"), 0.0)
    assert isinstance(claim, AdmitStart)
    assert session.streams == {}
    assert session.attached == {"s1": None}
    begin, _, upstream = session.admitted(claim, 0.0)
    assert begin == BeginLog("s1", claim.message_id, claim.epoch, claimed=True)
    assert isinstance(upstream, StartUpstream)
    assert upstream.message_id == claim.message_id
    assert "s1" in session.streams
    assert session.attached == {}


def test_a_keyed_start_held_by_the_same_request_follows_it():
    session = make_session()
    (claim,) = session.receive(start(idempotency_key="k"), 0.0)
    assert isinstance(claim, AdmitStart)
    assert session.attach("s1", "msg_other") == []
    assert session.attached == {"s1": "msg_other"}
    (cancel,) = session.receive(orjson.dumps({"type": "cancel", "stream_id": "s1"}), 0.0)
    assert cancel == CancelMessage("msg_other")


def test_a_cancel_while_a_claim_pends_cancels_once_it_is_resolved():
    session = make_session()
    (claim,) = session.receive(start(idempotency_key="k"), 0.0)
    assert isinstance(claim, AdmitStart)
    assert session.receive(orjson.dumps({"type": "cancel", "stream_id": "s1"}), 0.0) == []
    actions = session.admitted(claim, 0.0)
    finish_out = [a for a in actions if isinstance(a, SendStream)][-1]
    assert finish_out.output.closed
    assert session.streams == {}


def test_a_resume_is_handed_to_the_shell_and_holds_its_stream_id():
    session = make_session()
    frame = {"type": "resume", "message_id": "msg_9", "last_seq": 3, "stream_id": "r1"}
    (action,) = session.receive(orjson.dumps(frame), 0.0)
    assert action == ResumeStream("r1", "msg_9", 3, snapshot=False, epoch=None)
    (again,) = session.receive(orjson.dumps(frame), 0.0)
    assert isinstance(again, SendControl)
    assert again.frame.code == "stream_exists"  # type: ignore[union-attr]
    session.follower_ended("r1")
    assert session.attached == {}


def test_followers_count_against_the_streams_limit():
    session = make_session(max_streams=1)
    frame = {"type": "resume", "message_id": "msg_9", "last_seq": 0, "stream_id": "r1"}
    session.receive(orjson.dumps(frame), 0.0)
    (refusal,) = session.receive(start("s2"), 0.0)
    assert refusal.frame.code == "too_many_streams"  # type: ignore[union-attr]


def test_a_cancel_names_exactly_one_of_stream_and_message():
    session = make_session()
    for body in ({}, {"stream_id": "s1", "message_id": "m"}):
        (refusal,) = session.receive(orjson.dumps({"type": "cancel", **body}), 0.0)
        assert refusal.frame.code == "bad_frame"  # type: ignore[union-attr]
    (by_message,) = session.receive(orjson.dumps({"type": "cancel", "message_id": "m"}), 0.0)
    assert by_message == CancelMessage("m")


def test_a_refused_resume_frees_its_stream_id():
    session = make_session()
    frame = {"type": "resume", "message_id": "msg_9", "last_seq": 0, "stream_id": "r1"}
    session.receive(orjson.dumps(frame), 0.0)
    (refusal,) = session.refuse("r1", UnknownMessage("no"))
    assert refusal.frame.code == "unknown_message"  # type: ignore[union-attr]
    assert session.attached == {}


def test_an_idempotency_key_on_an_unresumable_start_is_refused():
    (refusal,) = make_session().receive(start(idempotency_key="k", resumable=False), 0.0)
    assert isinstance(refusal, SendControl)
    assert refusal.frame.code == "bad_frame"  # type: ignore[union-attr]
