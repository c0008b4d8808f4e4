"""Verifying credentials: API keys by their SHA-256, JWTs by signature, claims and clock.

Owns the decision whether a token names a principal, and which: `ApiKeys.verify` looks a
key up by its hash; `JwtVerifier.verify` refuses a token before any cryptography when its
`alg` is off the allowlist (`none` included) or does not fit the key (an HMAC algorithm is
never tried against a public key: HS/RS confusion), lets PyJWT check the signature only,
then checks `exp`, `nbf`, `iat`, `aud` and `iss` itself against the `now` it is given, with
the leeway. Every refusal is an `AuthFailed` with a generic public message and a `reason`
for the operator; a token's text never goes into a message. Sans-I/O: it must not read the
clock, a file or the network; the shell (`gateway/authn.py`, `gateway/jwks.py`) does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import jwt
import msgspec
import orjson
from jwt.algorithms import get_default_algorithms

from wsgate.core.errors import AuthFailed
from wsgate.core.principal import Principal, Quota

PUBLIC_MESSAGE: Final = "invalid credentials"
MAX_TOKEN_CHARS: Final = 8192  # longer is refused unparsed: a bound on the work per attempt
MAX_LIFETIME_S: Final = 10 * 365 * 86400.0
"""The longest credentials are trusted for from now, whatever their `exp` says."""
MAX_PRINCIPAL_CHARS: Final = 256
HMAC_ALGORITHMS: Final = frozenset({"HS256"})
PUBLIC_KEY_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")
_JWK_TYPES: Final = frozenset({"RSA", "EC", "OKP"})  # no "oct": a JWKS holds public keys
# Refuse keys below PyJWT's minimum (RSA 2048 bits, HMAC 32 bytes) instead of warning.
_JWS: Final = jwt.PyJWS(options={"enforce_minimum_key_length": True})
_ALGORITHMS: Final = get_default_algorithms()


class UnknownKid(AuthFailed):
    """The token's `kid` is not in the JWKS: the shell may fetch the JWKS again and retry."""

    def __init__(self, kid: str) -> None:
        super().__init__(PUBLIC_MESSAGE, reason="unknown_kid")
        self.kid = kid  # for the refetch only; it came from the client, so it is not logged


class JwksError(Exception):
    """A JWKS document cannot be used (not JSON, no `keys`, no usable key)."""


def _fail(reason: str) -> AuthFailed:
    return AuthFailed(PUBLIC_MESSAGE, reason=reason)


def hash_key(key: str) -> str:
    """The SHA-256 hex of an API key, as `[[auth.api_keys]].sha256` holds it."""
    # surrogatepass: any str hashes, even one no real header or frame could carry.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


# --- API keys --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One API key: its principal, hash, allowed models (None: every one) and quota."""

    principal: str
    sha256: str
    models: frozenset[str] | None = None
    quota: Quota | None = None  # None: the default quota
    revoked: bool = False


class ApiKeys:
    """The known API keys, by hash. A revoked key stays known, so it is refused as revoked."""

    __slots__ = ("_by_hash", "default_quota")

    def __init__(self, entries: Iterable[KeyEntry], default_quota: Quota) -> None:
        self.default_quota = default_quota
        self._by_hash: dict[str, KeyEntry] = {}
        for entry in entries:
            if entry.sha256 in self._by_hash:
                raise ValueError(f"two API keys have the same sha256 ({entry.principal})")
            self._by_hash[entry.sha256] = entry

    def __len__(self) -> int:
        return len(self._by_hash)

    def verify(self, token: str) -> Principal | None:
        """The key's principal; None if the key is not known; AuthFailed if revoked."""
        if len(token) > MAX_TOKEN_CHARS:
            return None
        # A lookup by hash leaks no timing about the key: the client cannot steer the hash.
        digest = hash_key(token)
        entry = self._by_hash.get(digest)
        if entry is None:
            return None
        if entry.revoked:
            raise _fail("revoked")
        quota = self.default_quota if entry.quota is None else entry.quota
        return Principal(f"key:{entry.principal}", "api_key", entry.models, quota, None, digest)

    def valid(self, credential: str) -> bool:
        """Whether the key with this sha256 is known and not revoked (after a reload)."""
        entry = self._by_hash.get(credential)
        return entry is not None and not entry.revoked


# --- JWT keys --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys tokens are checked against: one HMAC secret, one public key, or a JWKS.

    Build it with `from_secret`, `from_pem` or `from_jwks`; each refuses a key PyJWT would
    only warn about, so verification never warns.
    """

    secret: bytes | None = None
    public: Mapping[str, Any] = field(default_factory=dict)  # algorithm -> prepared key
    jwks: Mapping[str, jwt.PyJWK] | None = None  # kid -> key

    @classmethod
    def from_secret(cls, secret: str | bytes) -> KeySet:
        """An HS256 secret (at least 32 bytes, RFC 7518 §3.2); ValueError otherwise."""
        raw = secret.encode() if isinstance(secret, str) else secret
        algorithm = _ALGORITHMS["HS256"]
        try:
            prepared = algorithm.prepare_key(raw)
        except jwt.InvalidKeyError:
            raise ValueError("an HMAC secret must not be empty or a PEM/SSH key") from None
        if algorithm.check_key_length(prepared):
            raise ValueError("an HS256 secret must be at least 32 bytes (RFC 7518 §3.2)")
        return cls(secret=raw)

    @classmethod
    def from_pem(cls, pem: bytes) -> KeySet:
        """One PEM public key, usable with the algorithms its type allows; ValueError else."""
        public: dict[str, Any] = {}
        for name in PUBLIC_KEY_ALGORITHMS:
            algorithm = _ALGORITHMS[name]
            try:
                prepared = algorithm.prepare_key(pem)
            except Exception:  # noqa: S112 - the key is not of this algorithm's type
                continue
            if algorithm.check_key_length(prepared):
                raise ValueError(f"the key is too short for {name}")
            public[name] = prepared
        if not public:
            raise ValueError("not a PEM RSA, P-256 EC or Ed25519 public key")
        return cls(public=public)

    @classmethod
    def from_jwks(cls, keys: Mapping[str, jwt.PyJWK]) -> KeySet:
        """The keys of a JWKS document, by `kid` (`parse_jwks`)."""
        return cls(jwks=dict(keys))

    def key_for(self, algorithm: str, kid: object) -> Any:
        """The key to check a token of `algorithm` with; refuses a mismatch before crypto."""
        symmetric = algorithm in HMAC_ALGORITHMS
        if self.secret is not None:
            if not symmetric:
                raise _fail("algorithm")
            return self.secret
        if symmetric:  # HS/RS confusion: a public key is never an HMAC secret
            raise _fail("algorithm")
        if self.jwks is None:
            if algorithm not in self.public:
                raise _fail("algorithm")
            return self.public[algorithm]
        if not isinstance(kid, str):
            raise _fail("malformed")
        key = self.jwks.get(kid)
        if key is None:
            raise UnknownKid(kid)
        if key.algorithm_name != algorithm:
            raise _fail("algorithm")
        return key


def parse_jwks(data: bytes) -> dict[str, jwt.PyJWK]:
    """The usable keys of a JWKS (RFC 7517 §5) by `kid`; JwksError if there is none.

    Skipped: keys without a `kid`, of another type than RSA/EC/OKP (so no `oct` secret),
    for another use than `sig`, for an algorithm off `PUBLIC_KEY_ALGORITHMS`, too short, or
    that PyJWT cannot load. The first of two keys with one `kid` wins.
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise JwksError("not a JSON document") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWKS: no `keys` list")
    found: dict[str, jwt.PyJWK] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(kid := jwk.get("kid"), str) or not kid:
            continue
        if kid in found or jwk.get("kty") not in _JWK_TYPES or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("alg") is not None and jwk.get("alg") not in PUBLIC_KEY_ALGORITHMS:
            continue
        try:
            key = jwt.PyJWK(jwk)
        except (jwt.PyJWTError, TypeError, ValueError):
            continue
        if key.algorithm_name in PUBLIC_KEY_ALGORITHMS and not key.Algorithm.check_key_length(
            key.key
        ):
            found[kid] = key
    if not found:
        raise JwksError("no usable key (RSA, P-256 EC or Ed25519 with a kid)")
    return found


# --- JWTs ------------------------------------------------------------------------------

_Count = Annotated[int, msgspec.Meta(ge=0, le=2**31)]


class _Grants(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The optional `wsgate` claim: models and quota fields overriding the defaults."""

    models: list[Annotated[str, msgspec.Meta(max_length=256)]] | None = None
    rpm: _Count | None = None
    tpm: _Count | None = None
    max_streams: _Count | None = None
    connections: _Count | None = None


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail("claims")  # RFC 7519 §2: a NumericDate is a JSON number
    return float(value)


class JwtVerifier:
    """Checks a JWT against a `KeySet`, the allowlist, and the claims the operator set.

    `exp` is required: a bearer credential that spends a provider's money must expire.
    `iss` is checked when `issuer` is set; a token carrying an `aud` is refused unless
    `audience` is set and among them (RFC 7519 §4.1.3: a recipient that does not identify
    itself with the audience MUST reject the token), and with `audience` set, `aud` is
    required.
    """

    __slots__ = (
        "algorithms",
        "audience",
        "default_quota",
        "issuer",
        "leeway_s",
        "principal_claim",
    )

    def __init__(  # noqa: PLR0913 - one parameter per setting of [auth.jwt]
        self,
        algorithms: Iterable[str],
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 30.0,
        principal_claim: str = "sub",
        default_quota: Quota | None = None,
    ) -> None:
        self.algorithms = frozenset(algorithms) & (HMAC_ALGORITHMS | set(PUBLIC_KEY_ALGORITHMS))
        if not self.algorithms:
            raise ValueError("no supported algorithm allowed")
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.principal_claim = principal_claim
        self.default_quota = Quota() if default_quota is None else default_quota

    def verify(self, token: str, now: float, keys: KeySet) -> Principal:
        """The token's principal, or AuthFailed (UnknownKid for a `kid` not in the JWKS)."""
        header, claims = _split(token)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise _fail("algorithm")
        key = keys.key_for(algorithm, header.get("kid"))
        subject = claims.get(self.principal_claim)
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_PRINCIPAL_CHARS:
            raise _fail("claims")
        try:
            _JWS.decode(token, key, algorithms=[algorithm])
        except jwt.InvalidSignatureError:
            raise _fail("signature") from None
        except jwt.PyJWTError:
            raise _fail("malformed") from None
        expires_at = self._check_time(claims, now)
        self._check_audience_and_issuer(claims)
        models, quota = self._grants(claims.get("wsgate"))
        return Principal(f"jwt:{subject}", "jwt", models, quota, expires_at)

    def _check_time(self, claims: dict[str, Any], now: float) -> float:
        """RFC 7519 §4.1.4-6, each with the leeway; returns when the credentials expire.

        That is `exp` plus the leeway: the token is accepted until then, so a connection
        made with it lives until then too (an accepted token never gets a `ready` and an
        immediate close). A far `exp` is held to `MAX_LIFETIME_S` from now.
        """
        exp, nbf, iat = (_number(claims, name) for name in ("exp", "nbf", "iat"))
        if exp is None:
            raise _fail("no_expiry")
        if now >= exp + self.leeway_s:
            raise _fail("expired")
        if nbf is not None and now < nbf - self.leeway_s:
            raise _fail("not_yet_valid")
        if iat is not None and iat > now + self.leeway_s:
            raise _fail("issued_in_future")
        return min(exp + self.leeway_s, now + MAX_LIFETIME_S)

    def _check_audience_and_issuer(self, claims: dict[str, Any]) -> None:
        aud = claims.get("aud")
        if self.audience is not None or aud is not None:
            audiences = aud if isinstance(aud, list) else [aud]  # RFC 7519 §4.1.3
            if self.audience is None or self.audience not in audiences:
                raise _fail("audience")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise _fail("issuer")

    def _grants(self, raw: object) -> tuple[frozenset[str] | None, Quota]:
        if raw is None:
            return None, self.default_quota
        try:
            grants = msgspec.convert(raw, _Grants, strict=True)
        except msgspec.ValidationError:
            raise _fail("claims") from None
        base = self.default_quota
        quota = Quota(
            starts_per_minute=base.starts_per_minute if grants.rpm is None else grants.rpm,
            concurrent_streams=(
                base.concurrent_streams if grants.max_streams is None else grants.max_streams
            ),
            tokens_per_minute=base.tokens_per_minute if grants.tpm is None else grants.tpm,
            connections=base.connections if grants.connections is None else grants.connections,
        )
        return (None if grants.models is None else frozenset(grants.models)), quota


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unverified header and claims of a compact JWS (RFC 7515 §7.1); AuthFailed else."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii() or token.count(".") != 2:
        raise _fail("malformed")
    try:
        parts = _JWS.decode_complete(token, options={"verify_signature": False})
        claims = orjson.loads(parts["payload"])
    except (jwt.PyJWTError, orjson.JSONDecodeError):
        raise _fail("malformed") from None
    if not isinstance(claims, dict):
        raise _fail("malformed")
    return parts["header"], claims
