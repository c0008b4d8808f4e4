"""The HTTP API listener: `POST /v1/tickets` (PROTOCOL.md §2.3).

Owns a small aiohttp web server of its own: the WebSocket listener's HTTP parser answers
only GET, and ticket issuing is a POST from an app's backend. A request authenticates with
`Authorization: Bearer` (an API key or a JWT, as a WebSocket handshake would) and gets a
single-use ticket for the same principal. Bodies are not read (capped at 4 KiB); failed
authentications are counted and logged by the authenticator, never with the token.
"""

from __future__ import annotations

import ssl

from aiohttp import web

from wsgate.core.errors import AuthFailed, StoreUnavailable
from wsgate.gateway.credentials import Credentials
from wsgate.log import get_logger

log = get_logger("wsgate.gateway")


class TicketApi:
    """Serves `POST /v1/tickets` on its own host and port."""

    def __init__(
        self,
        credentials: Credentials,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.credentials = credentials
        self.host = host
        self._port = port
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.issued = 0

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the API listener is not started")
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        """Bind and serve."""
        app = web.Application(client_max_size=4096)
        app.router.add_route("*", "/v1/tickets", self._tickets)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, ssl_context=self._ssl)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("api_listening", host=self.host, port=self.port)

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _tickets(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.json_response(
                {"error": "method_not_allowed"}, status=405, headers={"Allow": "POST"}
            )
        authorization = request.headers.get("Authorization")
        if authorization is None:
            return _unauthorized()
        try:
            principal = await self.credentials.bearer(authorization)
            ticket, ttl = await self.credentials.issue_ticket(principal)
        except AuthFailed:
            return _unauthorized()
        except StoreUnavailable:
            return web.json_response({"error": "store_unavailable"}, status=503)
        self.issued += 1
        log.info("ticket_issued", principal=principal.id, ttl_s=round(ttl, 1))
        return web.json_response(
            {"ticket": ticket, "expires_in_s": round(ttl, 3)},
            headers={"Cache-Control": "no-store"},
        )


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": "auth_failed"}, status=401, headers={"WWW-Authenticate": "Bearer"}
    )
