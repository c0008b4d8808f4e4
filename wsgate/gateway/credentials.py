"""The credentials a handshake brings: a Bearer token, a ticket, or none (PROTOCOL.md §6.2).

Owns the reading of the upgrade request's credentials and what they make: the
connection's principal, None when the client must authenticate with its first frame, or
`AuthFailed` (the server answers HTTP 401 before the upgrade). Tickets are single use:
taken from the store, so a ticket bought on one node is accepted once on any. Verification
itself is the authenticator's (`authn.py`); this module never logs a token or a ticket.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_plus, urlsplit

from wsgate.core.errors import AuthFailed
from wsgate.core.principal import Principal, Quota, anonymous
from wsgate.gateway.ports import Store

Authenticate = Callable[[str], Awaitable[Principal]]
TICKET_PREFIX = "tk_"
MAX_TICKET_CHARS = 128


@dataclass(frozen=True, slots=True)
class Credentials:
    """How this gateway turns a handshake into a principal."""

    authenticate: Authenticate | None = None  # None: no [auth], everyone is anonymous
    store: Store | None = None  # where tickets live
    allow_anonymous: bool = True  # clients without credentials are anonymous principals
    anonymous_quota: Quota = field(default_factory=Quota)
    ticket_ttl_s: float = 30.0

    async def from_handshake(
        self, authorization: Sequence[str], target: str, address: str
    ) -> Principal | None:
        """The principal of an upgrade request; None: its first frame must be `auth`.

        `authorization` is the request's `Authorization` headers (at most one is valid),
        `target` its path and query, `address` the client's IP. Raises `AuthFailed` for
        refused credentials.
        """
        if len(authorization) > 1:
            raise AuthFailed("more than one Authorization header", reason="malformed")
        if authorization:
            return await self.bearer(authorization[0])
        if self.authenticate is None:  # no [auth]: nothing to check, no ticket was ever sold
            return anonymous(address, self.anonymous_quota)
        ticket = _query_value(target, "ticket")
        if ticket is not None:
            return await self._ticket(ticket)
        if self.allow_anonymous:
            return anonymous(address, self.anonymous_quota)
        return None

    async def bearer(self, authorization: str) -> Principal:
        """The principal of an `Authorization: Bearer` header; raises `AuthFailed`."""
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailed("expected Authorization: Bearer <token>", reason="malformed")
        if self.authenticate is None:
            raise AuthFailed("this gateway has no authentication configured", reason="no_auth")
        return await self.authenticate(token.strip())

    async def _ticket(self, ticket: str) -> Principal:
        store = self.store
        if store is None or not ticket.startswith(TICKET_PREFIX) or len(ticket) > MAX_TICKET_CHARS:
            raise AuthFailed("the ticket is not valid", reason="ticket")
        payload = await store.take_ticket(ticket)
        if payload is None:
            raise AuthFailed("the ticket is not valid", reason="ticket")
        principal = Principal.from_json(payload, method="ticket")
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise AuthFailed("the ticket is not valid", reason="expired")
        return principal

    async def issue_ticket(self, principal: Principal) -> tuple[str, float]:
        """A new single-use ticket for `principal`, and its life in seconds.

        It never outlives the credentials that bought it. Raises `AuthFailed` when they
        expire before a ticket could be used.
        """
        store = self.store
        if store is None:
            raise RuntimeError("tickets need a store")
        ttl = self.ticket_ttl_s
        if principal.expires_at is not None:
            ttl = min(ttl, principal.expires_at - time.time())
        if ttl < 1.0:
            raise AuthFailed("the credentials expire too soon for a ticket", reason="expired")
        ticket = TICKET_PREFIX + secrets.token_urlsafe(32)
        await store.put_ticket(ticket, principal.to_json(), ttl)
        return ticket, ttl


def _query_value(target: str, name: str) -> str | None:
    """The first value of `name` in the request target's query, percent-decoded.

    A plain scan, bounded by the request line's size: it never raises, whatever the query
    holds (the rest of the query is not the gateway's to judge, §2.1).
    """
    query = urlsplit(target).query
    prefix = name + "="
    for pair in query.split("&"):
        if pair.startswith(prefix):
            return unquote_plus(pair[len(prefix) :])
    return None
