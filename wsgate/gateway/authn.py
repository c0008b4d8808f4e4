"""The authenticator: one token in, a `Principal` or an `AuthFailed` out.

Owns choosing how a token is checked (a token with two dots is a JWT when `[auth.jwt]` is
set, anything else an API key), giving the core the wall clock and the current keys, the
one refetch of the JWKS for a `kid` it does not know, and counting failed authentications
(logged through `LogThrottle("auth_failed")` with the reason and method, never the token).
Also builds itself from `[auth]` (`from_settings`): the API keys of the config and of
`api_keys_file` (`load_api_keys_file`, read again on SIGHUP by the caller), the HMAC secret,
the PEM public key or the JWKS cache (returned unstarted: `start` loads it). The file reads
here are small and happen at start-up or reload, not per connection. It must not decide
whether a token is valid (`core/auth.py` does) nor speak any wire protocol.
"""

from __future__ import annotations

import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NoReturn

import msgspec

from wsgate.config import ApiKeySettings, AuthSettings, ConfigError, JwtSettings, QuotaSettings
from wsgate.core.auth import (
    MAX_TOKEN_CHARS,
    PUBLIC_MESSAGE,
    ApiKeys,
    JwtVerifier,
    KeyEntry,
    KeySet,
    UnknownKid,
)
from wsgate.core.errors import AuthFailed
from wsgate.core.principal import Principal, Quota
from wsgate.gateway.jwks import JwksCache
from wsgate.gateway.throttle import LogThrottle


class Authenticator:
    """Checks tokens against the configured API keys and JWT keys."""

    def __init__(
        self,
        api_keys: ApiKeys | None = None,
        jwt: JwtVerifier | None = None,
        keys: KeySet | None = None,
        jwks: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if jwt is not None and (keys is None) == (jwks is None):
            raise ValueError("a JWT verifier needs exactly one of keys and jwks")
        self.api_keys = api_keys
        self.jwt = jwt
        self._keys = keys
        self._jwks = jwks
        self._clock = clock  # wall clock: `exp` and `nbf` are epoch seconds
        self.failed = LogThrottle("auth_failed")
        self.failures: Counter[str] = Counter()  # by reason, for /stats

    async def start(self) -> None:
        """Load the JWKS, if any; JwksError (one line naming the source) if it fails."""
        if self._jwks is not None:
            await self._jwks.start()

    async def close(self) -> None:
        """Stop the JWKS cache's refresh."""
        if self._jwks is not None:
            await self._jwks.close()

    async def authenticate(self, token: str) -> Principal:
        """The token's principal; AuthFailed (with a `reason` for the log) if refused."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            self._refuse(AuthFailed(PUBLIC_MESSAGE, reason="malformed"), "unknown")
        as_jwt = self.jwt is not None and token.count(".") == 2
        try:
            return await self._jwt(token) if as_jwt else self._api_key(token)
        except AuthFailed as exc:
            self._refuse(exc, "jwt" if as_jwt else "api_key")

    def replace_keys(self, entries: Iterable[KeyEntry]) -> None:
        """Swap the API keys at once (SIGHUP); ValueError, keys unchanged, if two collide."""
        quota = self.api_keys.default_quota if self.api_keys is not None else Quota()
        self.api_keys = ApiKeys(entries, quota)

    def _api_key(self, token: str) -> Principal:
        principal = self.api_keys.verify(token) if self.api_keys is not None else None
        if principal is None:
            raise AuthFailed(PUBLIC_MESSAGE, reason="unknown_key")
        return principal

    async def _jwt(self, token: str) -> Principal:
        assert self.jwt is not None  # noqa: S101 - authenticate() checked
        try:
            return self.jwt.verify(token, self._clock(), self._current_keys())
        except UnknownKid as exc:
            if self._jwks is None:
                raise
            await self._jwks.refresh_for(exc.kid)  # rotation: the provider has a new key
        return self.jwt.verify(token, self._clock(), self._current_keys())

    def _current_keys(self) -> KeySet:
        if self._jwks is not None:
            return self._jwks.keys()
        assert self._keys is not None  # noqa: S101 - __init__ checked
        return self._keys

    def _refuse(self, exc: AuthFailed, method: str) -> NoReturn:
        self.failures[exc.reason] += 1
        self.failed(reason=exc.reason, method=method)
        raise exc


# --- building it from [auth] -----------------------------------------------------------


def quota_of(settings: QuotaSettings) -> Quota:
    """The core's `Quota` for a `[auth.quota]`-shaped table."""
    return Quota(
        starts_per_minute=settings.starts_per_minute,
        concurrent_streams=settings.concurrent_streams,
        tokens_per_minute=settings.tokens_per_minute,
        connections=settings.connections,
    )


def key_entry(settings: ApiKeySettings) -> KeyEntry:
    """One `[[auth.api_keys]]` table as the core's `KeyEntry`."""
    return KeyEntry(
        principal=settings.principal,
        sha256=settings.sha256,
        models=frozenset(settings.models) if settings.models else None,
        quota=None if settings.quota is None else quota_of(settings.quota),
        revoked=settings.revoked,
    )


class _KeysFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    api_keys: list[ApiKeySettings] = []


def load_api_keys_file(path: str) -> list[KeyEntry]:
    """The `[[api_keys]]` tables of a TOML file; ConfigError naming the file if unusable."""
    where = f"auth.api_keys_file {path}"
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read it: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message has a position, never the text
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    try:
        parsed = msgspec.convert(table, _KeysFile, strict=True)
    except msgspec.ValidationError as exc:  # names the field and the type, not the value
        raise ConfigError(f"{where}: {exc}") from None
    return [key_entry(entry) for entry in parsed.api_keys]


def api_key_entries(auth: AuthSettings) -> list[KeyEntry]:
    """The keys of `[[auth.api_keys]]` and of `auth.api_keys_file` (what SIGHUP reloads)."""
    entries = [key_entry(entry) for entry in auth.api_keys]
    if auth.api_keys_file is not None:
        entries += load_api_keys_file(auth.api_keys_file)
    return entries


def from_settings(auth: AuthSettings, environ: Mapping[str, str]) -> Authenticator | None:
    """The authenticator `[auth]` describes (its JWKS not loaded yet); None when auth is off."""
    if not auth.enabled:
        return None
    default_quota = quota_of(auth.quota)
    api_keys = None
    if auth.api_keys or auth.api_keys_file is not None:
        try:
            api_keys = ApiKeys(api_key_entries(auth), default_quota)
        except ValueError as exc:
            raise ConfigError(f"auth.api_keys: {exc}") from None
    if auth.jwt is None:
        return Authenticator(api_keys)
    settings = auth.jwt
    verifier = JwtVerifier(
        settings.allowed_algorithms,
        audience=settings.audience,
        issuer=settings.issuer,
        leeway_s=settings.leeway_s,
        principal_claim=settings.principal_claim,
        default_quota=default_quota,
    )
    source = settings.jwks_url or settings.jwks_file
    if source is not None:
        jwks = JwksCache(source, refresh_s=settings.jwks_refresh_s)
        return Authenticator(api_keys, verifier, jwks=jwks)
    return Authenticator(api_keys, verifier, keys=_static_keys(settings, environ))


def _static_keys(settings: JwtSettings, environ: Mapping[str, str]) -> KeySet:
    if settings.public_key_file is not None:
        where = f"auth.jwt.public_key_file {settings.public_key_file}"
        try:
            pem = Path(settings.public_key_file).read_bytes()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"{where}: cannot read it: {reason}") from None
        try:
            return KeySet.from_pem(pem)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if settings.secret is not None:
        where, secret = "auth.jwt.secret", settings.secret.get()
    else:
        name = settings.secret_env
        where, secret = f"auth.jwt.secret_env ({name})", environ.get(name or "", "")
        if not secret:
            raise ConfigError(f"{where}: the variable is not set")
    try:
        return KeySet.from_secret(secret)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
