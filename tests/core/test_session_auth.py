"""The session's authentication rules (rule 5) and its principal's scope (rule 6)."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given
from hypothesis import strategies as st

from wsgate.core.errors import AuthFailed, AuthTimeout, CloseCode
from wsgate.core.frames import AuthRefreshed, ErrorFrame, Ready, StreamStarted
from wsgate.core.principal import Principal, Quota
from wsgate.core.session import (
    AdmitStart,
    Authenticate,
    CloseConnection,
    SendControl,
    SendStream,
    Session,
    SessionLimits,
    StartUpstream,
)
from wsgate.testing import ParserTarget, ScriptedParser

ALICE = Principal("key:alice", "api_key")
BOB = Principal("key:bob", "api_key")


def make_session(principal=None, *, admission=False):
    ids = itertools.count(1)
    return Session(
        "conn_1",
        SessionLimits(max_streams=4, max_frame_bytes=4096),
        lambda _request, _options: ParserTarget(ScriptedParser),
        lambda: f"msg_{next(ids)}",
        "test",
        principal=principal,
        admission=admission,
    )


def start_frame(sid="s1", model="mock"):
    return orjson.dumps(
        {
            "type": "start",
            "stream_id": sid,
            "request": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        }
    )


def auth_frame(token="t0k"):  # noqa: S107 - a test token
    return orjson.dumps({"type": "auth", "token": token})


def closed_with(actions, code, error_code):
    (action,) = actions
    assert isinstance(action, CloseConnection)
    assert action.code == code
    assert action.frame.code == error_code
    assert not action.frame.retryable
    return action


def test_the_first_frame_auth_is_handed_out_for_verification():
    session = make_session()
    assert session.receive(auth_frame("abc"), 0.0) == [Authenticate("abc")]


def test_a_start_before_auth_closes_the_connection_with_4501():
    closed_with(make_session().receive(start_frame(), 0.0), 4501, "auth_required")


def test_a_malformed_or_binary_frame_before_auth_closes_the_connection():
    closed_with(make_session().receive(b"{nope", 0.0), 4501, "auth_required")
    closed_with(make_session().receive_binary(), 4501, "auth_required")


def test_a_second_auth_before_the_first_was_verified_closes_the_connection_as_auth_required():
    session = make_session()
    session.receive(auth_frame(), 0.0)
    closed_with(session.receive(auth_frame(), 0.0), 4501, "auth_required")


def test_accepted_credentials_send_ready_with_the_principal_and_expiry():
    session = make_session()
    session.receive(auth_frame(), 0.0)
    principal = Principal("jwt:u1", "jwt", expires_at=1_000_060.0)
    (action,) = session.authenticated(principal, 5.0, 1_000_000.0)
    assert isinstance(action, SendControl)
    assert isinstance(action.frame, Ready)
    assert action.frame.auth is not None
    assert action.frame.auth.principal == "jwt:u1"
    assert action.frame.auth.method == "jwt"
    assert action.frame.auth.expires_in_ms == 60_000
    assert session.next_deadline() == 65.0


def test_an_anonymous_principal_gets_a_ready_without_auth():
    session = make_session(Principal("anon:1.2.3.4", "anonymous"))
    (action,) = session.authenticated(session.principal, 0.0, 0.0)
    assert action.frame.auth is None


def test_refused_credentials_close_the_connection_with_4501():
    session = make_session()
    session.receive(auth_frame(), 0.0)
    error = AuthFailed("invalid credentials", reason="signature")
    closed_with(session.auth_refused(error), CloseCode.AUTH_FAILED, "auth_failed")


def test_no_auth_in_time_closes_with_auth_timeout():
    closed_with(make_session().auth_refused(AuthTimeout("late")), 4501, "auth_timeout")


def test_a_refresh_of_the_same_principal_moves_the_expiry():
    session = make_session()
    session.receive(auth_frame(), 0.0)
    session.authenticated(Principal("jwt:u1", "jwt", expires_at=100.0), 0.0, 90.0)
    assert session.next_deadline() == 10.0
    assert session.receive(auth_frame("newer"), 5.0) == [Authenticate("newer")]
    (action,) = session.authenticated(Principal("jwt:u1", "jwt", expires_at=200.0), 5.0, 95.0)
    assert action.frame == AuthRefreshed("jwt:u1", 105_000)
    assert session.next_deadline() == 110.0


def test_a_refresh_naming_another_principal_closes_the_connection():
    session = make_session()
    session.receive(auth_frame(), 0.0)
    session.authenticated(ALICE, 0.0, 0.0)
    session.receive(auth_frame(), 1.0)
    closed_with(session.authenticated(BOB, 1.0, 1.0), 4501, "auth_failed")


def test_expired_credentials_close_the_connection_with_4502_once():
    session = make_session()
    session.receive(auth_frame(), 0.0)
    session.authenticated(Principal("jwt:u1", "jwt", expires_at=30.0), 0.0, 0.0)
    session.receive(start_frame(), 1.0)
    assert session.expire(29.9) == []
    closed_with(session.expire(30.0), CloseCode.AUTH_EXPIRED, "auth_expired")
    assert session.expire(31.0) == []  # once


def test_a_model_outside_the_principals_list_is_forbidden():
    session = make_session(Principal("key:k", "api_key", models=frozenset({"mock"})))
    session.authenticated(session.principal, 0.0, 0.0)
    (refusal,) = session.receive(start_frame(model="gpt-x"), 0.0)
    assert isinstance(refusal.frame, ErrorFrame)
    assert refusal.frame.code == "forbidden"
    assert session.streams == {}
    started = session.receive(start_frame(sid="s2", model="mock"), 0.0)
    assert any(isinstance(a, StartUpstream) for a in started)


def test_a_principal_with_stream_quotas_is_admitted_by_the_shell_first():
    quota = Quota(starts_per_minute=10)
    session = make_session(Principal("key:k", "api_key", quota=quota), admission=True)
    session.authenticated(session.principal, 0.0, 0.0)
    (admit,) = session.receive(start_frame(), 0.0)
    assert isinstance(admit, AdmitStart)
    assert admit.quota
    assert admit.key is None
    assert "s1" in session.attached  # the id is held meanwhile
    actions = session.admitted(admit, 0.0)
    (send,) = [a for a in actions if isinstance(a, SendStream)]
    assert isinstance(send.output.frames[0], StreamStarted)
    assert send.output.frames[0].message_id == admit.message_id


def test_a_principal_without_quotas_starts_at_once():
    session = make_session(ALICE, admission=True)
    session.authenticated(ALICE, 0.0, 0.0)
    actions = session.receive(start_frame(), 0.0)
    assert any(isinstance(a, StartUpstream) for a in actions)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_any_auth_frame_gets_a_typed_answer(token):
    """Whatever the token, the frame is handed out for verification or refused typed."""
    session = make_session()
    data = orjson.dumps({"type": "auth", "token": token if isinstance(token, str) else "x"})
    if isinstance(token, bytes):
        data = b'{"type":"auth","token":' + token + b"}"
    actions = session.receive(data, 0.0)
    (action,) = actions
    assert isinstance(action, Authenticate | CloseConnection)
    if isinstance(action, CloseConnection):
        assert action.code == 4501
