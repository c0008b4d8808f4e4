"""Who a connection acts for: its principal, how it proved it, and what it may spend.

Owns the `Principal` value every authentication method produces (`core/auth.py`: API keys,
JWTs; a ticket carries the principal of the key that bought it; anonymous clients are
principals too, one per client IP) and its `Quota`. Ids are namespaced by method
(`key:`, `jwt:`, `anon:`), so an API key named like a JWT subject is another principal.
Pure values: nothing here verifies, stores or reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import orjson

Method = Literal["api_key", "jwt", "ticket", "anonymous"]


@dataclass(frozen=True, slots=True)
class Quota:
    """A principal's rate limits and quotas; 0 means none (`config.QuotaSettings`)."""

    starts_per_minute: int = 0
    concurrent_streams: int = 0
    tokens_per_minute: int = 0
    connections: int = 0

    @property
    def limits_streams(self) -> bool:
        """Whether a start must be admitted by the limiter first."""
        return bool(self.starts_per_minute or self.concurrent_streams or self.tokens_per_minute)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated (or anonymous) party of a connection."""

    id: str
    method: Method
    models: frozenset[str] | None = None  # the model aliases it may use; None: every one
    quota: Quota = field(default_factory=Quota)
    expires_at: float | None = None  # wall-clock seconds (a JWT's `exp`); None: never
    credential: str | None = None  # the API key it came from (its sha256), for revocation

    def may_use(self, model: str) -> bool:
        """Whether this principal may start a stream on `model`."""
        return self.models is None or model in self.models

    def to_json(self) -> bytes:
        """The principal as JSON (a ticket keeps it in the store)."""
        return orjson.dumps(
            {
                "id": self.id,
                "method": self.method,
                "models": None if self.models is None else sorted(self.models),
                "quota": [
                    self.quota.starts_per_minute,
                    self.quota.concurrent_streams,
                    self.quota.tokens_per_minute,
                    self.quota.connections,
                ],
                "expires_at": self.expires_at,
                "credential": self.credential,
            }
        )

    @classmethod
    def from_json(cls, data: bytes, method: Method | None = None) -> Principal:
        """Read `to_json`'s output back (`method` overrides the stored one)."""
        raw = orjson.loads(data)
        models = raw["models"]
        return cls(
            id=str(raw["id"]),
            method=method or raw["method"],
            models=None if models is None else frozenset(str(m) for m in models),
            quota=Quota(*(int(n) for n in raw["quota"])),
            expires_at=raw["expires_at"],
            credential=raw.get("credential"),
        )


def anonymous(address: str, quota: Quota) -> Principal:
    """The principal of a client without credentials: its IP address."""
    return Principal(f"anon:{address}", "anonymous", None, quota)
