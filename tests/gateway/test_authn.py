"""gateway/authn.py: tokens to principals, built from real `[auth]` settings.

Real keys made here with `cryptography`; the JWKS comes from a real aiohttp server on
127.0.0.1, whose document the tests rotate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from structlog.testing import capture_logs

from wsgate.config import ConfigError, load_settings
from wsgate.core.auth import ApiKeys, JwtVerifier, KeyEntry, KeySet, hash_key
from wsgate.core.errors import AuthFailed
from wsgate.core.principal import Principal, Quota
from wsgate.gateway.authn import Authenticator, from_settings, load_api_keys_file
from wsgate.gateway.jwks import JwksCache
from wsgate.testing import FakeClock

NOW = time.time()  # from_settings builds authenticators on the real wall clock
SECRET = "a-test-secret-of-at-least-32-bytes!"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SHA_A = hash_key("key-a")


def token(key=SECRET, alg="HS256", kid=None, **overrides) -> str:
    claims = {"sub": "alice", "iat": NOW, "exp": NOW + 600, **overrides}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def public_jwk(public, kid: str) -> dict:
    to_jwk = {
        rsa.RSAPublicKey: RSAAlgorithm.to_jwk,
        ec.EllipticCurvePublicKey: ECAlgorithm.to_jwk,
        ed25519.Ed25519PublicKey: OKPAlgorithm.to_jwk,
    }
    (convert,) = [f for kind, f in to_jwk.items() if isinstance(public, kind)]
    return {**convert(public, as_dict=True), "kid": kid}


def jwks(**keys) -> bytes:
    return json.dumps(
        {"keys": [public_jwk(k.public_key(), kid) for kid, k in keys.items()]}
    ).encode()


def settings_from(tmp_path: Path, text: str, environ: dict | None = None):
    path = tmp_path / "wsgate.toml"
    path.write_text(text)
    return load_settings(path, environ=environ or {}).auth


async def failed(authenticator: Authenticator, text: str) -> str:
    with pytest.raises(AuthFailed) as caught:
        await authenticator.authenticate(text)
    assert str(caught.value) == "invalid credentials"
    return caught.value.reason


class JwksServer:
    """Serves `body` as the JWKS; counts the requests; holds them while `gate` is unset."""

    def __init__(self) -> None:
        self.body = b""
        self.requests = 0
        self.url = ""
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def handle(self, _request: web.Request) -> web.Response:
        self.requests += 1
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        return web.Response(body=self.body, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = (
            f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/.well-known/jwks.json"
        )


@pytest.fixture
async def idp():
    server = JwksServer()
    await server.start()
    yield server
    if server.gate is not None:
        server.gate.set()
    assert server.runner is not None
    await server.runner.cleanup()


def static(*entries: KeyEntry, jwt_keys: KeySet | None = None, **verifier) -> Authenticator:
    verifier_ = JwtVerifier(["HS256"], **verifier) if jwt_keys is not None else None
    return Authenticator(ApiKeys(entries, Quota()), verifier_, jwt_keys, clock=lambda: NOW)


# --- API keys --------------------------------------------------------------------------


async def test_a_known_api_key_authenticates_as_its_principal():
    authenticator = static(KeyEntry("alice", SHA_A))
    expected = Principal("key:alice", "api_key", credential=SHA_A)
    assert await authenticator.authenticate("key-a") == expected


async def test_an_unknown_api_key_is_refused_and_counted():
    authenticator = static(KeyEntry("alice", SHA_A))
    assert await failed(authenticator, "key-b") == "unknown_key"
    assert authenticator.failures == {"unknown_key": 1}
    assert authenticator.failed.count == 1


async def test_a_revoked_api_key_is_refused_as_revoked():
    authenticator = static(KeyEntry("alice", SHA_A, revoked=True))
    assert await failed(authenticator, "key-a") == "revoked"


async def test_without_any_api_keys_every_key_is_unknown():
    authenticator = Authenticator(None, JwtVerifier(["HS256"]), KeySet.from_secret(SECRET))
    assert await failed(authenticator, "key-a") == "unknown_key"


async def test_a_key_with_two_dots_is_an_api_key_when_no_jwt_is_configured():
    authenticator = static(KeyEntry("dotted", hash_key("a.b.c")))
    assert (await authenticator.authenticate("a.b.c")).id == "key:dotted"


async def test_replace_keys_swaps_the_api_keys_at_once():
    authenticator = static(KeyEntry("alice", SHA_A))
    authenticator.replace_keys([KeyEntry("bob", hash_key("key-b"))])
    assert (await authenticator.authenticate("key-b")).id == "key:bob"
    assert await failed(authenticator, "key-a") == "unknown_key"


async def test_replace_keys_with_a_collision_keeps_the_old_keys():
    authenticator = static(KeyEntry("alice", SHA_A))
    with pytest.raises(ValueError, match="same sha256"):
        authenticator.replace_keys([KeyEntry("b", SHA_A), KeyEntry("c", SHA_A)])
    assert (await authenticator.authenticate("key-a")).id == "key:alice"


async def test_failures_are_logged_with_reason_and_method_never_the_token():
    authenticator = static(KeyEntry("alice", SHA_A), jwt_keys=KeySet.from_secret(SECRET))
    expired = token(exp=NOW - 100)
    with capture_logs() as logs:
        await failed(authenticator, "sk-secret-key-value")
        await failed(authenticator, expired)  # within the throttle's interval: counted only
    (line,) = [entry for entry in logs if entry["event"] == "auth_failed"]
    assert (line["reason"], line["method"]) == ("unknown_key", "api_key")
    assert "sk-secret-key-value" not in repr(logs)
    assert expired not in repr(logs)
    assert authenticator.failures == {"unknown_key": 1, "expired": 1}


# --- JWTs ------------------------------------------------------------------------------


async def test_a_token_with_two_dots_is_checked_as_a_jwt_when_jwt_is_configured():
    authenticator = static(KeyEntry("alice", SHA_A), jwt_keys=KeySet.from_secret(SECRET))
    principal = await authenticator.authenticate(token())
    assert (principal.id, principal.method) == ("jwt:alice", "jwt")
    assert principal.expires_at == NOW + 600 + 30  # exp plus the default leeway
    assert await failed(authenticator, "x.y.z") == "malformed"  # no fallback to the API keys


async def test_the_clock_decides_expiry():
    clock = FakeClock(NOW)
    authenticator = Authenticator(
        None,
        JwtVerifier(["HS256"], leeway_s=0),
        KeySet.from_secret(SECRET),
        clock=lambda: clock.now,
    )
    text = token(exp=NOW + 60)
    assert (await authenticator.authenticate(text)).id == "jwt:alice"
    clock.advance(60)
    assert await failed(authenticator, text) == "expired"


async def test_an_oversized_or_non_string_token_is_malformed():
    authenticator = static(KeyEntry("alice", SHA_A))
    assert await failed(authenticator, "k" * 100_000) == "malformed"
    assert await failed(authenticator, None) == "malformed"  # type: ignore[arg-type]


@pytest.mark.parametrize(("alg", "key"), [("RS256", RSA_KEY), ("ES256", EC_KEY), ("EdDSA", ED_KEY)])
async def test_from_settings_with_a_public_key_file_accepts_its_tokens(tmp_path, alg, key):
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "idp.pem").write_bytes(pem)
    auth = settings_from(tmp_path, f'[auth.jwt]\npublic_key_file = "{tmp_path / "idp.pem"}"\n')
    authenticator = from_settings(auth, {})
    assert authenticator is not None
    assert (await authenticator.authenticate(token(key, alg))).id == "jwt:alice"
    assert await failed(authenticator, token(SECRET)) == "algorithm"


async def test_from_settings_reads_the_hmac_secret_from_the_named_variable(tmp_path):
    auth = settings_from(tmp_path, '[auth.jwt]\nsecret_env = "IDP_SECRET"\naudience = "gw"\n')
    authenticator = from_settings(auth, {"IDP_SECRET": SECRET})
    assert authenticator is not None
    assert (await authenticator.authenticate(token(aud="gw"))).id == "jwt:alice"
    assert await failed(authenticator, token(aud="other")) == "audience"


async def test_jwks_rotation_accepts_the_new_kid_after_one_refetch_and_drops_the_old(idp):
    idp.body = jwks(k1=RSA_KEY)
    monotonic = FakeClock()
    cache = JwksCache(idp.url, clock=lambda: monotonic.now)
    authenticator = Authenticator(None, JwtVerifier(["RS256"]), jwks=cache)
    await authenticator.start()
    try:
        old = token(RSA_KEY, "RS256", "k1")
        assert (await authenticator.authenticate(old)).id == "jwt:alice"
        idp.body = jwks(k2=RSA_KEY_2)  # the provider rotates: k1 is gone
        monotonic.advance(5)
        new = token(RSA_KEY_2, "RS256", "k2")
        assert (await authenticator.authenticate(new)).id == "jwt:alice"
        assert idp.requests == 2
        assert await failed(authenticator, old) == "unknown_kid"
        assert idp.requests == 2  # within 5 s of the last fetch: no second refetch
    finally:
        await authenticator.close()


async def test_an_unknown_kid_is_refused_after_one_refetch(idp):
    idp.body = jwks(k1=EC_KEY)
    authenticator = Authenticator(
        None, JwtVerifier(["ES256"]), jwks=JwksCache(idp.url, min_refetch_s=0)
    )
    await authenticator.start()
    try:
        assert await failed(authenticator, token(EC_KEY, "ES256", "nope")) == "unknown_kid"
        assert idp.requests == 2
        assert (await authenticator.authenticate(token(EC_KEY, "ES256", "k1"))).id == "jwt:alice"
    finally:
        await authenticator.close()


async def test_from_settings_with_a_jwks_url_loads_it_at_start(tmp_path, idp):
    idp.body = jwks(e=ED_KEY)
    auth = settings_from(tmp_path, f'[auth.jwt]\njwks_url = "{idp.url}"\n')
    authenticator = from_settings(auth, {})
    assert authenticator is not None
    assert idp.requests == 0  # not yet started
    await authenticator.start()
    try:
        assert (await authenticator.authenticate(token(ED_KEY, "EdDSA", "e"))).id == "jwt:alice"
    finally:
        await authenticator.close()


async def test_a_cancelled_authentication_during_the_refetch_leaves_the_cache_usable(idp):
    idp.body = jwks(k1=RSA_KEY)
    cache = JwksCache(idp.url, min_refetch_s=0)
    authenticator = Authenticator(None, JwtVerifier(["RS256"]), jwks=cache)
    await authenticator.start()
    try:
        idp.gate = asyncio.Event()
        idp.arrived.clear()
        idp.body = jwks(k2=RSA_KEY_2)
        task = asyncio.create_task(authenticator.authenticate(token(RSA_KEY_2, "RS256", "k2")))
        await idp.arrived.wait()
        fetch = cache._fetching
        assert fetch is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not fetch.done()  # the shared fetch goes on without the cancelled caller
        idp.gate.set()
        await asyncio.wait([fetch])
        assert cache._fetching is None
        assert (await authenticator.authenticate(token(RSA_KEY_2, "RS256", "k2"))).id == "jwt:alice"
    finally:
        await authenticator.close()


# --- settings and the keys file --------------------------------------------------------


def test_auth_off_builds_no_authenticator(tmp_path):
    assert from_settings(settings_from(tmp_path, ""), {}) is None


async def test_api_keys_come_from_the_config_and_the_keys_file(tmp_path):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        f'[[api_keys]]\nprincipal = "bob"\nsha256 = "{hash_key("key-b")}"\nmodels = ["mock"]\n'
        "[api_keys.quota]\nconcurrent_streams = 1\n"
    )
    auth = settings_from(
        tmp_path,
        f'[auth]\napi_keys_file = "{keys_file}"\n[auth.quota]\nstarts_per_minute = 9\n'
        f'[[auth.api_keys]]\nprincipal = "alice"\nsha256 = "{SHA_A}"\n',
    )
    authenticator = from_settings(auth, {})
    assert authenticator is not None
    alice = await authenticator.authenticate("key-a")
    bob = await authenticator.authenticate("key-b")
    assert (alice.quota, alice.models) == (Quota(starts_per_minute=9), None)
    assert (bob.quota, bob.models) == (Quota(concurrent_streams=1), frozenset({"mock"}))


def test_the_keys_file_may_be_empty(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text("")
    assert load_api_keys_file(str(path)) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[api_keys]\n", "invalid TOML"),
        ('[[api_keys]]\nprincipal = "a"\nsha256 = "nothex"\n', r"at `\$\.api_keys\[0\]\.sha256`"),
        (f'[[api_keys]]\nprincipal = "a"\nsha256 = "{SHA_A}"\nkey = "k"\n', "unknown field"),
        ("[server]\nport = 1\n", "unknown field `server`"),
    ],
)
def test_a_bad_keys_file_is_one_config_error_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_api_keys_file(str(path))
    assert str(caught.value).startswith(f"auth.api_keys_file {path}: ")
    assert "\n" not in str(caught.value)


def test_a_missing_or_binary_keys_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_api_keys_file(str(tmp_path / "nope.toml"))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_api_keys_file(str(tmp_path / "bin.toml"))


def test_two_configured_keys_with_one_hash_are_a_config_error(tmp_path):
    entry = f'[[auth.api_keys]]\nprincipal = "a"\nsha256 = "{SHA_A}"\n'
    with pytest.raises(ConfigError, match=r"auth\.api_keys: two API keys"):
        from_settings(settings_from(tmp_path, entry + entry), {})


@pytest.mark.parametrize(
    ("jwt_table", "environ", "message"),
    [
        ('secret_env = "IDP_SECRET"', {}, r"auth.jwt.secret_env \(IDP_SECRET\): the variable"),
        ('secret_env = "IDP_SECRET"', {"IDP_SECRET": "short"}, "at least 32 bytes"),
        ('secret = "short"', {}, "auth.jwt.secret: an HS256 secret must be at least 32"),
        ('public_key_file = "/nonexistent/idp.pem"', {}, "idp.pem: cannot read it"),
    ],
)
def test_an_unusable_jwt_key_is_a_config_error(tmp_path, jwt_table, environ, message):
    auth = settings_from(tmp_path, f"[auth.jwt]\n{jwt_table}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        from_settings(auth, environ)
    assert "short" not in str(caught.value)  # a secret is never repeated


def test_a_public_key_file_that_is_not_a_public_key_is_a_config_error(tmp_path):
    (tmp_path / "idp.pem").write_text("hello")
    auth = settings_from(tmp_path, f'[auth.jwt]\npublic_key_file = "{tmp_path / "idp.pem"}"\n')
    with pytest.raises(ConfigError, match=r"idp\.pem: not a PEM"):
        from_settings(auth, {})


# --- any input -------------------------------------------------------------------------

ANY_TOKEN = (
    st.text(alphabet=st.characters(exclude_categories=()))
    | st.text(alphabet="abcXYZ019-_=.", max_size=60)
    | st.sampled_from([token(), token(exp=NOW - 1000), token(RSA_KEY, "RS256")])
)


@settings(max_examples=200, deadline=None)
@given(ANY_TOKEN)
def test_any_token_gives_a_principal_or_auth_failed(text):
    authenticator = static(KeyEntry("alice", SHA_A), jwt_keys=KeySet.from_secret(SECRET))

    async def attempt():
        with contextlib.suppress(AuthFailed):
            assert isinstance(await authenticator.authenticate(text), Principal)

    asyncio.run(attempt())
