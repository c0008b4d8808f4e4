"""Authentication end to end (PROTOCOL.md §6.2): Bearer, tickets, the first `auth` frame,
refresh and expiry, and the principal's scope, against a real gateway and its mock."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import aiohttp
import jwt
import pytest
from e2e_helpers import RawConn, mock_request, raw_connect, stream_frames
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wsgate.app import App

SECRET = "a-test-secret-of-at-least-32-bytes!!"
KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789", "old": "sk-old-0123456789"}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


BASE_TOML = f"""
[auth]
timeout_s = 0.5
[[auth.api_keys]]
principal = "alice"
sha256 = "{sha(KEYS["alice"])}"
[[auth.api_keys]]
principal = "bob"
sha256 = "{sha(KEYS["bob"])}"
models = ["mock-anthropic"]
[[auth.api_keys]]
principal = "old"
sha256 = "{sha(KEYS["old"])}"
revoked = true
[auth.jwt]
secret = "{SECRET}"
"""

NO_LEEWAY = BASE_TOML + "leeway_s = 0\n"  # in [auth.jwt]: a token's life is its exp


def claims(sub: str = "u1", exp_in: float = 60.0, **more: Any) -> dict[str, Any]:
    """Claims this gateway accepts but for what `more` changes (valid `exp`, `iat`)."""
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + exp_in, **more}


def token(sub: str = "u1", exp_in: float = 60.0, **more: Any) -> str:
    return jwt.encode(claims(sub, exp_in, **more), SECRET, "HS256")


@pytest.fixture
def start_auth_app(start_app):
    """Gateways with `BASE_TOML` (or another configuration) and the ticket API on a free port."""

    async def factory(toml: str = BASE_TOML, **overrides: Any) -> App:
        return await start_app(toml, **{"api.port": 0, **overrides})

    return factory


@pytest.fixture
async def auth_app(start_auth_app) -> App:
    return await start_auth_app()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def run_one(conn: RawConn, sid: str = "s1", model: str = "mock") -> list[dict[str, Any]]:
    await conn.start(sid, mock_request(model=model))
    await conn.finishes({sid})
    return stream_frames(conn, sid)


async def buy_ticket(app: App, key: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(app.api_url + "/v1/tickets", headers=bearer(key)) as resp,
    ):
        return resp.status, await resp.json()


async def handshake_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, subprotocols=["wsgate.v1"], **kwargs):  # type: ignore[list-item]
            pass
    return refused.value.response.status_code


# --- Bearer at the handshake -------------------------------------------------------------


async def test_an_api_key_in_the_authorization_header_authenticates_the_connection(auth_app):
    async with raw_connect(auth_app.url, additional_headers=bearer(KEYS["alice"])) as conn:
        ready = conn.received[0]
        assert ready["auth"] == {"principal": "key:alice", "method": "api_key"}
        frames = await run_one(conn)
        assert frames[-1]["reason"] == "stop"


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {KEYS['old']}",  # revoked
        "Bearer sk-nobody-knows-this",
        f"Basic {KEYS['alice']}",
        "Bearer ",
        f"Bearer {token(exp_in=-120)}",  # expired beyond the leeway
        f"Bearer {jwt.encode(claims(), 'another-secret-of-at-least-32-bytes', 'HS256')}",
    ],
    ids=["revoked", "unknown", "not-bearer", "empty", "expired-jwt", "bad-signature"],
)
async def test_refused_handshake_credentials_get_http_401_before_the_upgrade(auth_app, header):
    status = await handshake_status(auth_app.url, additional_headers={"Authorization": header})
    assert status == 401


async def test_a_jwt_in_the_authorization_header_carries_its_expiry_into_ready(auth_app):
    headers = bearer(token("carol", exp_in=120))
    async with raw_connect(auth_app.url, additional_headers=headers) as conn:
        auth = conn.received[0]["auth"]
        assert auth["principal"] == "jwt:carol"
        assert auth["method"] == "jwt"
        assert 140_000 < auth["expires_in_ms"] <= 150_000  # exp + leeway_s (30 s)


# --- the first frame ----------------------------------------------------------------------


async def open_raw(url: str) -> RawConn:
    ws = await connect(url, subprotocols=["wsgate.v1"])  # type: ignore[list-item]
    return RawConn(ws)


async def closed(conn: RawConn) -> tuple[int, list[dict[str, Any]]]:
    frames = []
    code = None
    while code is None:
        try:
            frames.append(await conn.recv(5.0))
        except ConnectionClosed as ended:
            code = ended.rcvd.code if ended.rcvd is not None else -1
    return code, frames


async def test_a_first_auth_frame_authenticates_and_then_ready_comes(auth_app):
    conn = await open_raw(auth_app.url)
    try:
        await conn.send({"type": "auth", "token": token("dave")})
        ready = await conn.recv()
        assert ready["type"] == "ready"
        assert ready["auth"]["principal"] == "jwt:dave"
        frames = await run_one(conn)
        assert frames[-1]["reason"] == "stop"
    finally:
        await conn.ws.close()


async def test_an_api_key_in_the_first_auth_frame_authenticates_too(auth_app):
    conn = await open_raw(auth_app.url)
    try:
        await conn.send({"type": "auth", "token": KEYS["alice"]})
        assert (await conn.recv())["auth"]["principal"] == "key:alice"
    finally:
        await conn.ws.close()


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ({"type": "start", "stream_id": "s1", "request": mock_request()}, "auth_required"),
        ({"type": "auth", "token": "sk-wrong"}, "auth_failed"),
        ({"type": "auth", "token": token(exp_in=-120)}, "auth_failed"),
        ('{"not json', "auth_required"),
    ],
    ids=["start-first", "bad-key", "expired", "garbage"],
)
async def test_a_connection_that_does_not_authenticate_first_is_closed_with_4501(
    auth_app, first, code
):
    conn = await open_raw(auth_app.url)
    await conn.send(first)
    close_code, frames = await closed(conn)
    assert close_code == 4501
    assert [f["code"] for f in frames] == [code]
    assert frames[0]["retryable"] is False


async def test_a_slow_auth_frame_is_closed_with_auth_timeout(auth_app):
    conn = await open_raw(auth_app.url)  # auth.timeout_s = 0.5
    began = time.monotonic()
    close_code, frames = await closed(conn)
    assert close_code == 4501
    assert [f["code"] for f in frames] == ["auth_timeout"]
    assert 0.4 < time.monotonic() - began < 3.0


async def test_auth_sent_twice_refreshes_the_same_principal(auth_app):
    conn = await open_raw(auth_app.url)
    try:
        await conn.send({"type": "auth", "token": token("erin", exp_in=30)})
        assert (await conn.recv())["type"] == "ready"
        await conn.send({"type": "auth", "token": token("erin", exp_in=300)})
        refreshed = await conn.recv()
        assert refreshed["type"] == "auth.refreshed"
        assert refreshed["principal"] == "jwt:erin"
        assert 320_000 < refreshed["expires_in_ms"] <= 330_000  # exp + leeway_s
    finally:
        await conn.ws.close()


async def test_a_refresh_naming_another_principal_closes_the_connection(auth_app):
    conn = await open_raw(auth_app.url)
    await conn.send({"type": "auth", "token": token("erin")})
    await conn.recv()
    await conn.send({"type": "auth", "token": token("mallory")})
    close_code, frames = await closed(conn)
    assert close_code == 4501
    assert [f["code"] for f in frames] == ["auth_failed"]


async def test_credentials_that_expire_without_a_refresh_close_with_4502_after_the_finish(
    start_auth_app,
):
    app = await start_auth_app(NO_LEEWAY)
    conn = await open_raw(app.url)
    # iat/exp are whole seconds: 2 s from now is 1-2 s of life.
    await conn.send({"type": "auth", "token": token("frank", exp_in=2)})
    await conn.recv()
    script = {"chunks": ["x"] * 1000, "tokens_per_s": 100}
    await conn.start("long", mock_request(script))
    close_code, frames = await closed(conn)
    assert close_code == 4502
    finish = next(f for f in frames if f["type"] == "finish")
    assert finish["reason"] == "cancelled"
    assert frames[-1]["code"] == "auth_expired"


async def test_a_refreshed_connection_outlives_its_first_token(start_auth_app):
    app = await start_auth_app(NO_LEEWAY)
    conn = await open_raw(app.url)
    try:
        await conn.send({"type": "auth", "token": token("gina", exp_in=2)})
        await conn.recv()
        await conn.send({"type": "auth", "token": token("gina", exp_in=60)})
        assert (await conn.recv())["type"] == "auth.refreshed"
        await asyncio.sleep(2.5)
        frames = await run_one(conn)
        assert frames[-1]["reason"] == "stop"
    finally:
        await conn.ws.close()


# --- tickets ------------------------------------------------------------------------------


async def test_a_ticket_authenticates_one_connection_once(auth_app):
    status, body = await buy_ticket(auth_app, KEYS["alice"])
    assert status == 200
    assert 0 < body["expires_in_s"] <= 30
    url = f"{auth_app.url}?ticket={body['ticket']}"
    async with raw_connect(url) as conn:
        assert conn.received[0]["auth"] == {"principal": "key:alice", "method": "ticket"}
        assert (await run_one(conn))[-1]["reason"] == "stop"
    assert await handshake_status(url) == 401  # used


async def test_an_expired_or_unknown_ticket_is_refused(start_auth_app):
    app = await start_auth_app(BASE_TOML.replace("timeout_s = 0.5", "ticket_ttl_s = 1.0"))
    _, body = await buy_ticket(app, KEYS["alice"])
    await asyncio.sleep(1.3)
    assert await handshake_status(f"{app.url}?ticket={body['ticket']}") == 401
    assert await handshake_status(f"{app.url}?ticket=tk_made-up") == 401


async def test_buying_a_ticket_needs_a_valid_key(auth_app):
    status, body = await buy_ticket(auth_app, "sk-wrong")
    assert status == 401
    assert body == {"error": "auth_failed"}
    status, _ = await buy_ticket(auth_app, KEYS["old"])
    assert status == 401


# --- scope --------------------------------------------------------------------------------


async def test_a_model_outside_the_keys_list_is_forbidden(auth_app):
    async with raw_connect(auth_app.url, additional_headers=bearer(KEYS["bob"])) as conn:
        await conn.start("s1", mock_request())
        refusal = await conn.recv()
        assert refusal["code"] == "forbidden"
        frames = await run_one(conn, "s2", model="mock-anthropic")
        assert frames[-1]["reason"] == "stop"


async def test_another_principals_message_reads_as_unknown_to_resume_and_cancel(auth_app):
    async with (
        raw_connect(auth_app.url, additional_headers=bearer(KEYS["alice"])) as alice,
        raw_connect(auth_app.url, additional_headers=bearer(token("eve"))) as eve,
    ):
        script = {"chunks": ["a"] * 400, "tokens_per_s": 200}
        await alice.start("s1", mock_request(script))
        started = await alice.until(lambda f: f["type"] == "stream.started")
        message_id = started[-1]["message_id"]
        await eve.send(
            {"type": "resume", "stream_id": "r1", "message_id": message_id, "last_seq": 0}
        )
        await eve.send({"type": "cancel", "message_id": message_id})
        await eve.send(
            {"type": "resume", "stream_id": "r2", "message_id": "msg_none", "last_seq": 0}
        )
        answers = [await eve.recv() for _ in range(3)]
        assert sorted(a["code"] for a in answers) == ["unknown_message"] * 3
        by_id = {a.get("stream_id"): a["message"] for a in answers}
        assert by_id["r1"] == by_id["r2"]  # indistinguishable from a message never made
        frames = (await alice.finishes({"s1"}))["s1"]
        assert frames[-1]["reason"] == "stop"  # eve's cancel did not touch it


async def test_idempotency_keys_are_scoped_to_their_principal(auth_app):
    options = {"idempotency_key": "same-key"}
    request = mock_request()
    async with (
        raw_connect(auth_app.url, additional_headers=bearer(KEYS["alice"])) as alice,
        raw_connect(auth_app.url, additional_headers=bearer(token("eve"))) as eve,
    ):
        await alice.start("s1", request, options)
        await eve.start("s1", request, options)
        a = (await alice.finishes({"s1"}))["s1"]
        e = (await eve.finishes({"s1"}))["s1"]
        assert a[0]["type"] == e[0]["type"] == "stream.started"
        assert a[0]["message_id"] != e[0]["message_id"]


# --- open relay, anonymous ---------------------------------------------------------------


async def test_with_allow_anonymous_a_client_without_credentials_runs_as_its_ip(start_auth_app):
    app = await start_auth_app(**{"server.allow_anonymous": True})
    async with raw_connect(app.url) as conn:
        assert "auth" not in conn.received[0]
        assert (await run_one(conn))[-1]["reason"] == "stop"
        await conn.send({"type": "auth", "token": KEYS["alice"]})
        code, frames = await closed(conn)
        assert code == 4501
        assert frames[-1]["code"] == "auth_failed"


async def test_a_gateway_without_auth_needs_no_credentials(start_app):
    app = await start_app()
    async with raw_connect(app.url) as conn:
        assert "auth" not in conn.received[0]
        assert (await run_one(conn))[-1]["reason"] == "stop"


# --- found by review ----------------------------------------------------------------------


async def test_idempotency_keys_of_principals_whose_names_share_a_prefix_never_collide(
    start_auth_app,
):
    team, team_ops = "sk-team-0123456789", "sk-team-ops-0123456789"
    app = await start_auth_app(
        f"""
[[auth.api_keys]]
principal = "team"
sha256 = "{sha(team)}"
[[auth.api_keys]]
principal = "team:ops"
sha256 = "{sha(team_ops)}"
"""
    )
    async with (
        raw_connect(app.url, additional_headers=bearer(team_ops)) as ops,
        raw_connect(app.url, additional_headers=bearer(team)) as other,
    ):
        # key:team:ops + "job-1" and key:team + "ops:job-1" spell the same naive key.
        await ops.start("s1", mock_request({"text": "first"}), {"idempotency_key": "job-1"})
        assert (await ops.finishes({"s1"}))["s1"][-1]["reason"] == "stop"
        await other.start("s1", mock_request({"text": "other"}), {"idempotency_key": "ops:job-1"})
        frames = (await other.finishes({"s1"}))["s1"]
        assert frames[0]["type"] == "stream.started"
        assert frames[-1]["reason"] == "stop"
        assert "".join(f["text"] for f in frames if f["type"] == "delta.text") == "other"


async def test_a_query_string_of_many_fields_is_not_an_error(auth_app, start_app):
    query = "&".join(f"f{i}=1" for i in range(40))
    async with raw_connect(
        f"{auth_app.url}?{query}", additional_headers=bearer(KEYS["alice"])
    ) as conn:
        assert conn.received[0]["type"] == "ready"
    plain = await start_app()
    async with raw_connect(f"{plain.url}?{query}&ticket=tk_x") as conn:
        assert conn.received[0]["type"] == "ready"  # no [auth]: the ticket is not looked at


async def test_a_verification_slower_than_the_auth_timer_is_not_cut_by_it(auth_app):
    real = auth_app.gateway.shared.authenticate

    async def slow(token_: str):
        await asyncio.sleep(0.4)  # a JWKS fetch for a new kid, say
        return await real(token_)

    auth_app.gateway.shared.authenticate = slow
    conn = await open_raw(auth_app.url)  # auth.timeout_s = 0.5
    try:
        await asyncio.sleep(0.3)
        await conn.send({"type": "auth", "token": KEYS["alice"]})  # in time; verified late
        assert (await conn.recv())["type"] == "ready"
    finally:
        await conn.ws.close()


async def test_nothing_but_the_auth_answer_reaches_a_connection_before_its_ready(start_auth_app):
    app = await start_auth_app(**{"limits.heartbeat_interval_s": 0.1})
    conn = await open_raw(app.url)  # auth.timeout_s = 0.5: five heartbeat intervals
    code, frames = await closed(conn)
    assert code == 4501
    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["code"] == "auth_timeout"


async def test_a_jwt_accepted_within_its_leeway_lives_until_exp_plus_the_leeway(auth_app):
    headers = bearer(token("late", exp_in=-5))  # expired 5 s ago; leeway_s = 30
    async with raw_connect(auth_app.url, additional_headers=headers) as conn:
        assert 20_000 < conn.received[0]["auth"]["expires_in_ms"] <= 25_000
        assert (await run_one(conn))[-1]["reason"] == "stop"


async def test_a_reload_that_revokes_a_key_closes_the_connections_made_with_it(
    start_auth_app, tmp_path
):
    keys_file = tmp_path / "keys.toml"
    entry = '[[api_keys]]\nprincipal = "{name}"\nsha256 = "{digest}"\nrevoked = {revoked}\n'
    carol, dan = "sk-carol-0123456789", "sk-dan-0123456789"

    def write(carol_revoked: str) -> None:
        keys_file.write_text(
            entry.format(name="carol", digest=sha(carol), revoked=carol_revoked)
            + entry.format(name="dan", digest=sha(dan), revoked="false")
        )

    write("false")
    app = await start_auth_app(f'[auth]\napi_keys_file = "{keys_file}"\n')
    _, body = await buy_ticket(app, carol)
    async with (
        raw_connect(app.url, additional_headers=bearer(carol)) as by_key,
        raw_connect(f"{app.url}?ticket={body['ticket']}") as by_ticket,
        raw_connect(app.url, additional_headers=bearer(dan)) as other,
    ):
        write("true")
        app.reload()
        for conn in (by_key, by_ticket):
            code, frames = await closed(conn)
            assert code == 4501
            assert frames[-1]["code"] == "auth_failed"
        assert (await run_one(other))[-1]["reason"] == "stop"
    assert await handshake_status(app.url, additional_headers=bearer(carol)) == 401
