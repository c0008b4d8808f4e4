"""core/auth.py: API keys by hash; JWTs by allowlist, signature, claims and leeway.

Real cryptography: the keys are made here with `cryptography`, the tokens signed with PyJWT
(or by hand, for the tokens PyJWT refuses to make: HS256 with a PEM as the secret).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from wsgate.core.auth import (
    MAX_LIFETIME_S,
    MAX_TOKEN_CHARS,
    ApiKeys,
    JwksError,
    JwtVerifier,
    KeyEntry,
    KeySet,
    UnknownKid,
    hash_key,
    parse_jwks,
)
from wsgate.core.errors import AuthFailed
from wsgate.core.principal import Principal, Quota

NOW = 1_800_000_000.0
SECRET = "s" * 32
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
SMALL_RSA_KEY = rsa.generate_private_key(65537, 1024)  # noqa: S505 - refusing it is the test
PRIVATE = {"RS256": RSA_KEY, "ES256": EC_KEY, "EdDSA": ED_KEY}
TO_JWK = {"RS256": RSAAlgorithm.to_jwk, "ES256": ECAlgorithm.to_jwk, "EdDSA": OKPAlgorithm.to_jwk}


def pem(private) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(family: str, kid: str, **extra) -> dict:
    """The public JWK of the test's `family` key ("RS256", "ES256", "EdDSA")."""
    return {**TO_JWK[family](PRIVATE[family].public_key(), as_dict=True), "kid": kid, **extra}


def jwks_bytes(*keys: dict) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def claims(**overrides) -> dict:
    base = {"sub": "alice", "iat": NOW - 10, "exp": NOW + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(alg: str = "HS256", kid: str | None = None, **overrides) -> str:
    key = SECRET if alg == "HS256" else PRIVATE[alg]
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict, payload: dict, secret: bytes | None) -> str:
    """A compact JWS made without PyJWT (which refuses some of these on purpose)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = (
        b"" if secret is None else hmac.new(secret, signing_input.encode(), "sha256").digest()
    )
    return f"{signing_input}.{b64(signature)}"


HS = JwtVerifier(["HS256"])
ASYMMETRIC = JwtVerifier(["RS256", "ES256", "EdDSA"])
SECRET_KEYS = KeySet.from_secret(SECRET)
JWKS_KEYS = KeySet.from_jwks(
    parse_jwks(jwks_bytes(jwk("RS256", "r1"), jwk("ES256", "e1"), jwk("EdDSA", "d1")))
)


def refused(verifier: JwtVerifier, token: str, keys: KeySet, now: float = NOW) -> str:
    with pytest.raises(AuthFailed) as caught:
        verifier.verify(token, now, keys)
    # The one generic message: nothing of the token, nothing of which check failed.
    assert caught.value.public_message == str(caught.value) == "invalid credentials"
    return caught.value.reason


# --- API keys --------------------------------------------------------------------------


def test_hash_key_is_the_sha256_hex_of_the_key():
    assert hash_key("sk-test") == hashlib.sha256(b"sk-test").hexdigest()


def test_a_known_api_key_gives_its_principal_with_the_default_quota():
    default = Quota(starts_per_minute=5)
    keys = ApiKeys([KeyEntry("alice", hash_key("k1"), frozenset({"mock"}))], default)
    expected = Principal(
        "key:alice", "api_key", frozenset({"mock"}), default, credential=hash_key("k1")
    )
    assert keys.verify("k1") == expected
    assert keys.valid(hash_key("k1"))


def test_an_api_key_with_its_own_quota_keeps_it():
    own = Quota(concurrent_streams=2)
    keys = ApiKeys([KeyEntry("bob", hash_key("k2"), quota=own)], Quota(starts_per_minute=5))
    principal = keys.verify("k2")
    assert principal is not None
    assert principal.quota == own
    assert principal.models is None


def test_an_unknown_or_oversized_api_key_is_not_known():
    keys = ApiKeys([KeyEntry("alice", hash_key("k1"))], Quota())
    assert keys.verify("k2") is None
    assert keys.verify("k1" * MAX_TOKEN_CHARS) is None


def test_a_revoked_api_key_is_refused_as_revoked():
    keys = ApiKeys([KeyEntry("alice", hash_key("old"), revoked=True)], Quota())
    with pytest.raises(AuthFailed) as caught:
        keys.verify("old")
    assert caught.value.reason == "revoked"
    assert "old" not in str(caught.value)


def test_two_api_keys_with_one_hash_are_refused_at_construction():
    with pytest.raises(ValueError, match="same sha256"):
        ApiKeys([KeyEntry("a", hash_key("k")), KeyEntry("b", hash_key("k"))], Quota())


# --- JWT: success ----------------------------------------------------------------------


def test_an_hs256_token_gives_a_jwt_principal_expiring_at_exp_plus_the_leeway():
    principal = HS.verify(sign(), NOW, SECRET_KEYS)
    assert principal == Principal("jwt:alice", "jwt", None, Quota(), NOW + 600 + HS.leeway_s)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_an_asymmetric_token_is_accepted_with_its_pem_public_key(alg):
    principal = ASYMMETRIC.verify(sign(alg), NOW, KeySet.from_pem(pem(PRIVATE[alg])))
    assert principal.id == "jwt:alice"


@pytest.mark.parametrize(("alg", "kid"), [("RS256", "r1"), ("ES256", "e1"), ("EdDSA", "d1")])
def test_an_asymmetric_token_is_accepted_with_the_jwks_key_its_kid_names(alg, kid):
    assert ASYMMETRIC.verify(sign(alg, kid), NOW, JWKS_KEYS).id == "jwt:alice"


def test_a_token_without_exp_is_refused():
    assert refused(HS, sign(exp=None), SECRET_KEYS) == "no_expiry"


def test_the_principal_claim_may_be_another_claim():
    verifier = JwtVerifier(["HS256"], principal_claim="email")
    assert verifier.verify(sign(email="a@example.com"), NOW, SECRET_KEYS).id == "jwt:a@example.com"


def test_the_wsgate_claim_overrides_the_quota_fields_it_names_and_the_models():
    verifier = JwtVerifier(["HS256"], default_quota=Quota(1, 2, 3, 4))
    token = sign(wsgate={"models": ["mock"], "rpm": 10, "max_streams": 0})
    principal = verifier.verify(token, NOW, SECRET_KEYS)
    assert principal.models == frozenset({"mock"})
    assert principal.quota == Quota(
        starts_per_minute=10, concurrent_streams=0, tokens_per_minute=3, connections=4
    )


# --- JWT: every refusal ----------------------------------------------------------------


def test_an_expired_token_is_refused_as_expired():
    assert refused(HS, sign(exp=NOW - 31), SECRET_KEYS) == "expired"


def test_the_leeway_accepts_a_token_just_past_exp_and_refuses_it_once_past_the_leeway():
    token = sign(exp=NOW)
    assert HS.verify(token, NOW + 29.9, SECRET_KEYS).expires_at == NOW + 30  # accepted till then
    assert refused(HS, token, SECRET_KEYS, now=NOW + 30) == "expired"


def test_the_leeway_accepts_a_token_just_before_nbf_and_refuses_one_earlier():
    token = sign(nbf=NOW + 30)
    assert HS.verify(token, NOW, SECRET_KEYS).id == "jwt:alice"
    assert refused(HS, token, SECRET_KEYS, now=NOW - 0.1) == "not_yet_valid"


def test_a_far_exp_is_held_to_ten_years_from_now():
    principal = HS.verify(sign(exp=NOW + 1e300), NOW, SECRET_KEYS)
    assert principal.expires_at == NOW + MAX_LIFETIME_S


def test_a_token_issued_in_the_future_beyond_the_leeway_is_refused():
    assert HS.verify(sign(iat=NOW + 30), NOW, SECRET_KEYS).id == "jwt:alice"
    assert refused(HS, sign(iat=NOW + 31), SECRET_KEYS) == "issued_in_future"


def test_a_zero_leeway_refuses_a_token_at_exp():
    assert refused(JwtVerifier(["HS256"], leeway_s=0), sign(exp=NOW), SECRET_KEYS) == "expired"


@pytest.mark.parametrize("aud", ["gw", ["other", "gw"]])
def test_the_audience_is_found_in_a_string_or_a_list(aud):
    verifier = JwtVerifier(["HS256"], audience="gw")
    assert verifier.verify(sign(aud=aud), NOW, SECRET_KEYS).id == "jwt:alice"


@pytest.mark.parametrize("aud", ["other", ["other"], None, 7])
def test_a_wrong_or_missing_audience_is_refused(aud):
    verifier = JwtVerifier(["HS256"], audience="gw")
    assert refused(verifier, sign(aud=aud), SECRET_KEYS) == "audience"


def test_without_a_configured_audience_a_token_for_some_audience_is_refused():
    assert refused(HS, sign(aud="anything"), SECRET_KEYS) == "audience"
    assert HS.verify(sign(), NOW, SECRET_KEYS).id == "jwt:alice"


@pytest.mark.parametrize("iss", ["https://evil.example", None])
def test_a_wrong_or_missing_issuer_is_refused(iss):
    verifier = JwtVerifier(["HS256"], issuer="https://idp.example")
    assert refused(verifier, sign(iss=iss), SECRET_KEYS) == "issuer"
    assert verifier.verify(sign(iss="https://idp.example"), NOW, SECRET_KEYS).id == "jwt:alice"


def test_a_tampered_payload_fails_the_signature():
    header, _, signature = sign().split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    assert refused(HS, f"{header}.{forged}.{signature}", SECRET_KEYS) == "signature"


def test_a_token_signed_with_another_key_fails_the_signature():
    token = jwt.encode(claims(), "t" * 32, algorithm="HS256")
    assert refused(HS, token, SECRET_KEYS) == "signature"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "r1"})
    assert refused(ASYMMETRIC, token, JWKS_KEYS) == "signature"


def test_alg_none_is_refused_even_when_unsigned_tokens_are_well_formed():
    token = hand_signed({"alg": "none", "typ": "JWT"}, claims(), None)
    assert refused(HS, token, SECRET_KEYS) == "algorithm"
    assert refused(ASYMMETRIC, token, JWKS_KEYS) == "algorithm"


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS384", None, 3])
def test_an_algorithm_off_the_allowlist_is_refused(alg):
    token = hand_signed({"alg": alg}, claims(), SECRET.encode())
    assert refused(HS, token, SECRET_KEYS) == "algorithm"


def test_an_hs256_token_signed_with_the_rs256_public_key_is_refused():
    public_pem = pem(RSA_KEY)
    token = hand_signed({"alg": "HS256", "kid": "r1"}, claims(), public_pem)
    # Even a verifier that allows both families never takes a public key as a secret.
    both = JwtVerifier(["HS256", "RS256"])
    assert refused(both, token, KeySet.from_pem(public_pem)) == "algorithm"
    assert refused(both, token, JWKS_KEYS) == "algorithm"


def test_an_rs256_token_against_an_hmac_secret_is_refused():
    both = JwtVerifier(["HS256", "RS256"])
    assert refused(both, sign("RS256"), SECRET_KEYS) == "algorithm"


def test_a_token_whose_alg_does_not_fit_the_public_key_is_refused():
    assert refused(ASYMMETRIC, sign("ES256"), KeySet.from_pem(pem(RSA_KEY))) == "algorithm"
    ec_token = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "r1"})
    assert refused(ASYMMETRIC, ec_token, JWKS_KEYS) == "algorithm"


def test_an_unknown_kid_raises_unknown_kid_with_the_kid():
    with pytest.raises(UnknownKid) as caught:
        ASYMMETRIC.verify(sign("RS256", "r9"), NOW, JWKS_KEYS)
    assert (caught.value.kid, caught.value.reason) == ("r9", "unknown_kid")


def test_a_token_without_a_kid_against_a_jwks_is_malformed():
    assert refused(ASYMMETRIC, sign("RS256"), JWKS_KEYS) == "malformed"


@pytest.mark.parametrize("sub", [None, 42, "", ["alice"], "x" * 257])
def test_a_missing_or_non_string_principal_claim_is_refused(sub):
    assert refused(HS, sign(sub=sub), SECRET_KEYS) == "claims"


def test_the_principal_claim_is_checked_before_the_signature():
    token = hand_signed({"alg": "HS256"}, claims(sub=None), b"wrong")
    assert refused(HS, token, SECRET_KEYS) == "claims"


@pytest.mark.parametrize("field", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["soon", True, [1]])
def test_a_time_claim_that_is_not_a_number_is_refused(field, value):
    assert refused(HS, sign(**{field: value}), SECRET_KEYS) == "claims"


@pytest.mark.parametrize(
    "grants",
    [{"rpm": "10"}, {"rpm": -1}, {"rpm": True}, {"tpm": 2**40}, {"models": "mock"}, {"x": 1}, []],
)
def test_a_malformed_wsgate_claim_is_refused(grants):
    assert refused(HS, sign(wsgate=grants), SECRET_KEYS) == "claims"


@pytest.mark.parametrize(
    "token",
    ["", "a.b.c", "...", "eyJ.eyJ.", "x" * (MAX_TOKEN_CHARS + 1), "é.é.é", "\ud800.a.b"],
)
def test_a_token_that_is_not_a_compact_jws_is_malformed(token):
    assert refused(HS, token, SECRET_KEYS) == "malformed"


def test_a_payload_that_is_not_a_json_object_is_malformed():
    header = b64(b'{"alg":"HS256"}')
    assert refused(HS, f"{header}.{b64(b'[1]')}.{b64(b'sig')}", SECRET_KEYS) == "malformed"


# --- keys ------------------------------------------------------------------------------


def test_an_hmac_secret_shorter_than_32_bytes_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        KeySet.from_secret("short")


def test_a_pem_public_key_is_not_accepted_as_an_hmac_secret():
    with pytest.raises(ValueError, match="PEM"):
        KeySet.from_secret(pem(RSA_KEY))


def test_a_pem_file_that_holds_no_usable_public_key_is_refused():
    with pytest.raises(ValueError, match="not a PEM"):
        KeySet.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="too short"):
        KeySet.from_pem(pem(SMALL_RSA_KEY))


def test_parse_jwks_keeps_the_usable_keys_by_kid_and_skips_the_rest():
    document = jwks_bytes(
        jwk("RS256", "r1"),
        jwk("ES256", "e1", alg="ES256"),
        {k: v for k, v in jwk("RS256", "x").items() if k != "kid"},
        jwk("RS256", "enc", use="enc"),
        jwk("RS256", "rs384", alg="RS384"),
        {"kty": "oct", "k": b64(SECRET.encode()), "kid": "oct"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        {**RSAAlgorithm.to_jwk(SMALL_RSA_KEY.public_key(), as_dict=True), "kid": "small"},
        jwk("EdDSA", "r1"),  # the first key with a kid wins
        "not a key",
    )
    keys = parse_jwks(document)
    assert sorted(keys) == ["e1", "r1"]
    assert keys["r1"].algorithm_name == "RS256"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "not a JSON document"),
        (b"[]", "no `keys` list"),
        (b'{"keys": {}}', "no `keys` list"),
        (b'{"keys": []}', "no usable key"),
    ],
)
def test_a_jwks_that_cannot_be_used_raises_jwks_error(document, message):
    with pytest.raises(JwksError, match=message):
        parse_jwks(document)


# --- any input -------------------------------------------------------------------------

ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
B64_TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["HS256", "RS256", "ES256", "EdDSA", "none", "HS512"]) | JSON,
        "kid": st.sampled_from(["r1", "e1", "d1", "zz"]) | JSON,
        "crit": JSON,
        "b64": JSON,
    },
)
CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        name: JSON | st.integers(0, 2**40) | st.floats()
        for name in ("sub", "exp", "nbf", "iat", "aud", "iss", "wsgate")
    },
)
VERIFIERS = [
    (HS, SECRET_KEYS),
    (ASYMMETRIC, JWKS_KEYS),
    (ASYMMETRIC, KeySet.from_pem(pem(RSA_KEY))),
    (JwtVerifier(["HS256"], audience="gw", issuer="i"), SECRET_KEYS),
]


def gives_a_principal_or_auth_failed(token: str) -> None:
    for verifier, keys in VERIFIERS:
        try:
            result = verifier.verify(token, NOW, keys)
        except AuthFailed:
            continue
        assert isinstance(result, Principal)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ANY_CHAR) | B64_TEXT.map(lambda s: f"{s}.{s[::-1]}.{s}"))
def test_any_text_gives_a_principal_or_auth_failed(token):
    gives_a_principal_or_auth_failed(token)
    ApiKeys([KeyEntry("a", hash_key("k"))], Quota()).verify(token)


@settings(max_examples=300, deadline=None)
@given(HEADERS, CLAIMS, st.binary(max_size=80), st.booleans())
def test_any_structured_token_gives_a_principal_or_auth_failed(header, payload, sig, signed):
    try:
        token = hand_signed(header, payload, SECRET.encode() if signed else None)
    except (TypeError, ValueError):  # json cannot write it (NaN is fine, keys must be str)
        return
    if not signed:
        token = f"{token}{b64(sig)}"
    gives_a_principal_or_auth_failed(token)


@pytest.mark.parametrize("size", [MAX_TOKEN_CHARS, 10 * MAX_TOKEN_CHARS, 1_000_000])
def test_a_huge_token_is_refused_as_malformed_without_being_parsed(size):
    token = f"{'a' * (size // 2)}.{'b' * (size // 2)}.c"
    assert refused(HS, token, SECRET_KEYS) == "malformed"
