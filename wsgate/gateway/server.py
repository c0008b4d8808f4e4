"""The websockets server: handshake checks, one `Connection` per accepted client, shutdown.

Owns the listening socket and the handshake: the path (`/v1/ws`), the subprotocol
(`wsgate.v1`; a client offering only other subprotocols is refused with HTTP 400, one
offering none is accepted), the Origin allowlist (HTTP 403 before the upgrade;
`origin_allowed` has the default policy), compression (off unless configured: it
costs ~40% throughput and ~33 KiB per connection for token frames), and the frame-size
hard cap. Frames up to `max_frame_bytes` are decoded; frames between that and the hard cap
(4x) get a `frame_too_large` error and the connection carries on; beyond the hard cap
websockets closes with 1009 before buffering more. Also answers `/livez` and `/readyz`
on the same port, so a wedged listener fails its probe, and `/stats` (JSON counters: stream
outcomes, cancels and their latency, waste, shedding, coalescing, slow consumers, refused
handshakes). A header is read during the handshake or never: an accepted connection drops
them (memory). With an `ssl` context the listener speaks wss:// (`tls.py`). The transport's
limits (pending handshakes and their deadline, connection caps, every byte queued for a
client) are `guard.py`'s; this module hands it every connection and asks it at admission.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from wsgate.core.errors import AuthFailed, StoreUnavailable
from wsgate.core.frames import PROTOCOL
from wsgate.core.principal import Principal
from wsgate.core.session import LogPolicy, Resolver, Session
from wsgate.gateway.connection import Connection, ConnectionOptions, Shared, Upstream
from wsgate.gateway.credentials import Credentials
from wsgate.gateway.guard import (
    RETRY_AFTER_S,
    Guard,
    GuardedConnection,
    GuardOptions,
    client_address,
    client_ip,
)
from wsgate.gateway.options import session_limits
from wsgate.gateway.ports import Store
from wsgate.gateway.static import Asset, WebAssets
from wsgate.gateway.throttle import LogThrottle
from wsgate.log import bind, get_logger, unbind

log = get_logger("wsgate.gateway")

HARD_CAP_FACTOR = 4
FLUSH_S = 1.0
"""After the drain deadline, how long writers may flush the final frames before 1001."""
INCOMING_QUEUE = 4
"""Client messages websockets buffers while the reader is paused (each up to the hard cap)."""
PROBES = frozenset({"/livez", "/readyz", "/stats"})
"""Plain HTTP paths answered on the gateway's port, before any limit on connections."""


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """The gateway's listening and per-connection settings."""

    host: str = "127.0.0.1"
    port: int = 8080
    path: str = "/v1/ws"
    allowed_origins: tuple[str, ...] = ()  # empty: the default policy (`origin_allowed`)
    exposed: bool = True  # a real provider or a non-loopback bind: no Origin by default
    compression: bool = False
    max_streams: int = 256
    max_frame_bytes: int = 1024 * 1024
    telemetry_interval: float = 0.5
    ping_interval: float | None = 20.0
    run_without_log: bool = False  # store.on_unavailable = "run_without_log"
    demo: bool = True  # the demo page at `/` (the client library is always served)
    tools: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # server tools, as declared
    connection: ConnectionOptions = field(default_factory=ConnectionOptions)
    guard: GuardOptions = field(default_factory=GuardOptions)


def new_id(prefix: str) -> Callable[[], str]:
    """A factory of unguessable ids with a readable prefix."""
    return lambda: f"{prefix}_{secrets.token_urlsafe(12)}"


class Gateway:
    """The listening WebSocket gateway."""

    def __init__(  # noqa: PLR0913 - the gateway's collaborators, wired by the root
        self,
        options: GatewayOptions,
        upstream: Upstream,
        resolve: Resolver,
        server_version: str,
        store: Store | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        shared: Shared | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.options = options
        self.upstream = upstream
        self.resolve = resolve
        self.server_version = server_version
        self.connections: set[Connection] = set()
        self.shared = Shared(store=store) if shared is None else shared
        self.credentials = Credentials(store=store) if credentials is None else credentials
        # The principal each upgrade request's credentials made, read once by `_handle`
        # (weak: a handshake that fails after `_process_request` leaves nothing behind).
        self._principals: weakref.WeakKeyDictionary[ServerConnection, Principal | None] = (
            weakref.WeakKeyDictionary()
        )
        self.ssl_context = ssl_context  # None: ws://; reloaded in place by its owner
        self.guard = Guard(
            options.guard,
            self.shared.accounting,
            buffer_bytes=options.connection.buffer_bytes,
            send_timeout=options.connection.send_timeout,
            probe_paths=PROBES,
        )
        self.web = WebAssets(demo=options.demo)
        self._origin_refused = LogThrottle("origin_refused")  # any page can cause it at will
        self._log_policy: LogPolicy | None = None
        if store is not None:
            self._log_policy = LogPolicy(
                new_id("ep"), lambda: store.healthy, without_log=options.run_without_log
            )
            store.on_cancel(self._cancel_here)
        self.ready = False
        self._server: Server | None = None
        self._new_conn_id = new_id("conn")
        self._new_message_id = new_id("msg")
        self._limits = session_limits(  # one for every session: it is frozen
            options.connection,
            max_streams=options.max_streams,
            max_frame_bytes=options.max_frame_bytes,
            telemetry_interval=options.telemetry_interval,
        )

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections."""
        opts = self.options
        deadline = opts.guard.handshake_timeout  # the guard's from TCP accept, TLS included
        tls: dict[str, Any] = {}  # loop.create_server's, through serve()
        if self.ssl_context is not None:
            tls = {"ssl": self.ssl_context, "ssl_handshake_timeout": deadline}
        self._server = await serve(
            self._handle,
            opts.host,
            opts.port,
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            compression="deflate" if opts.compression else None,
            max_size=opts.max_frame_bytes * HARD_CAP_FACTOR,
            max_queue=INCOMING_QUEUE,
            ping_interval=opts.ping_interval,
            ping_timeout=opts.ping_interval,
            close_timeout=2,
            open_timeout=deadline,
            create_connection=self.guard.connection_class(),
            **tls,
        )
        self.ready = True
        log.info(
            "gateway_listening",
            host=opts.host,
            port=self.port,
            path=opts.path,
            tls=self.ssl_context is not None,
            max_connections=opts.guard.max_connections,
        )

    async def close(self) -> None:
        """Stop accepting, close every connection with 1001 and wait for their tasks."""
        self.ready = False
        if self._server is None:
            return
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        self._server = None
        for owner in list(self.shared.detached_owners):
            owner.expire_all()  # finish into their logs, counted, timers dropped
        tasks = list(self.shared.detached_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.shared.background:  # the store's clean-ups: short, let them land
            await asyncio.wait(self.shared.background, timeout=2.0)

    async def shutdown(self, drain_timeout: float, reconnect_after_ms: int = 1000) -> None:
        """Graceful stop: not ready, stop accepting, `goaway`, drain, cancel the rest, 1001.

        Running streams may finish until `drain_timeout`; then each remaining one ends
        with `error` `shutting_down` and `finish` `cancelled`, the writers get a moment to
        flush, and every connection is closed with 1001.
        """
        self.ready = False
        if self._server is None:
            return
        log.info("gateway_draining", connections=len(self.connections), timeout_s=drain_timeout)
        # Stop listening but keep the connections (websockets' own close() is one-shot, and
        # the final close(close_connections=True) below must still do its work).
        self._server.server.close()
        for connection in self.connections:
            connection.goaway(int(drain_timeout * 1000), reconnect_after_ms)
        await self._until_idle(drain_timeout)
        for connection in self.connections:
            connection.cancel_remaining()
        await self._until_idle(FLUSH_S)
        await self.close()

    async def _until_idle(self, within: float) -> None:
        # Idleness is a condition over every connection; polling it during a shutdown is
        # simpler than an event per connection, and bounded by the deadline.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline and not self._idle():  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    def _idle(self) -> bool:
        """Nothing left to drain: no stream runs, is followed or has a frame to send.

        Detached generations count: their clients may be following them from another node.
        """
        return not self.shared.detached_tasks and all(c.idle for c in self.connections)

    def _cancel_here(self, message_id: str) -> None:
        """Another node asked for a cancel of a generation running here."""
        if self.shared.cancel_here(message_id):
            log.info("cancel_from_another_node", message_id=message_id)

    def _check_origin(self, connection: ServerConnection, request: Request) -> Response | None:
        """None to go on with the upgrade; HTTP 403 for a page that may not connect."""
        origins = request.headers.get_all("Origin")
        if not origins:
            return None
        origin = origins[0]
        if len(origins) == 1 and origin_allowed(origin, self.options, self.port):
            return None
        self._origin_refused(origin=origin[:200], origins=len(origins))
        return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """None to upgrade; else the HTTP response (a probe's answer, or a refusal).

        The checks run cheapest first, each refusing before the upgrade: the page's Origin,
        then the connection caps (which take this connection's slot), then the handshake's
        credentials (HTTP 401 with `WWW-Authenticate: Bearer`): a refused page costs no
        signature check, and a capped client none at all.
        """
        path = request.path.split("?", 1)[0]
        if path != self.options.path:
            return self._probe(connection, path, request)
        refusal = self._check_origin(connection, request)
        if refusal is None:
            refusal = self.guard.admit(connection)
        if refusal is None:
            refusal = await self._check_credentials(connection, request)
        return refusal

    async def _check_credentials(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Keep the handshake's principal for `_handle`; HTTP 401 for refused credentials."""
        try:
            principal = await self.credentials.from_handshake(
                request.headers.get_all("Authorization"), request.path, client_ip(connection)
            )
        except AuthFailed as exc:
            # Counted by reason here; the guard counts and logs the 401 (throttled), and
            # the authenticator logs a refused token's reason (throttled, never the token).
            self.shared.accounting.auth_failures[exc.reason] += 1
            response = connection.respond(HTTPStatus.UNAUTHORIZED, f"{exc.public_message}\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="wsgate"'
            return response
        except StoreUnavailable:  # a ticket cannot be looked up: try again shortly
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "store unavailable\n")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        self._principals[connection] = principal
        return None

    def _probe(self, connection: ServerConnection, path: str, request: Request) -> Response:
        """The plain HTTP endpoints on the gateway's port: probes, counters, web assets."""
        if path == "/livez":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/stats":
            stats = self.shared.accounting.snapshot()
            # Counters of open connections are folded in at close; add them live here.
            stats["telemetry_shed"] += sum(c.outbox.shed_telemetry for c in self.connections)
            stats["coalesced_frames"] += sum(c.outbox.coalesced for c in self.connections)
            stats["detached_open"] = len(self.shared.detached)
            stats["pending_handshakes"] = self.guard.pending
            stats["max_connections"] = self.options.guard.max_connections
            body = orjson.dumps(stats)
            response = connection.respond(HTTPStatus.OK, body.decode())
            response.headers["Content-Type"] = "application/json"
            return response
        if path == "/readyz":
            if self.ready:
                return connection.respond(HTTPStatus.OK, "ready\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
        asset = self.web.find(path)
        if asset is not None:
            return _asset_response(connection, asset, request.headers.get("If-None-Match"))
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")

    async def _handle(self, ws: ServerConnection) -> None:
        _drop_handshake_headers(ws)
        conn_id = self._new_conn_id()
        # websockets runs each handler in a task of its own, whose context dies with it:
        # `bind` is enough, where `bound` would hold two generator frames (~1.4 KiB) per
        # connection all its life. Tasks started from here (writer, streams) inherit it.
        bind(conn_id=conn_id)
        session = Session(
            conn_id,
            self._limits,
            self.resolve,
            self._new_message_id,
            self.server_version,
            self._log_policy,
            admission=self.shared.limiter is not None,
            accepts_auth=self.shared.authenticate is not None,
            tools=self.options.tools,
        )
        connection = Connection(
            ws,
            session,
            self.upstream,
            self.options.connection,
            self.shared,
            principal=self._principals.pop(ws, None),
        )
        # The guard (guard.py) calls this once when the bytes queued in the transport
        # (frames, pongs, close frames) pass the connection's cap, or stay paused too long.
        if isinstance(ws, GuardedConnection):
            ws.on_overflow = connection.overflowed
        accounting = self.shared.accounting
        accounting.connections_opened += 1
        accounting.connections_open += 1
        self.connections.add(connection)
        log.info("connection_open", remote=client_address(ws))
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            accounting.connections_open -= 1
            log.info(
                "connection_closed",
                code=ws.close_code,
                frames_sent=connection.stats.frames_sent,
                telemetry_shed=connection.outbox.shed_telemetry,
                slow_consumer=connection.stats.slow_consumer,
                aborted=connection.stats.aborted,
            )
            unbind("conn_id")  # as `bound` did: websockets' later lines in this task are not ours


def origin_allowed(origin: str, options: GatewayOptions, port: int) -> bool:
    """Whether a browser page from `origin` may open a WebSocket here.

    Native clients send no Origin and are not asked. `allowed_origins` lists the pages
    that may (`*`: any). Without a list: none when the gateway is exposed (a real provider
    or a non-loopback bind: any web page a user visits could otherwise spend the
    operator's key), else only the gateway's own origin on loopback (its demo page).
    """
    allowed = options.allowed_origins
    if allowed:
        return "*" in allowed or origin in allowed
    if options.exposed:
        return False
    own = {f"http://{host}:{port}" for host in ("127.0.0.1", "localhost", "[::1]")}
    return origin in own


def _asset_response(
    connection: ServerConnection, asset: Asset, if_none_match: str | None
) -> Response:
    """200 with the asset, or 304 when the client's copy is current (its ETag matches)."""
    fresh = asset.fresh(if_none_match)
    response = connection.respond(HTTPStatus.NOT_MODIFIED if fresh else HTTPStatus.OK, "")
    body = b"" if fresh else asset.body
    response.body = body
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    for name, value in asset.headers().items():
        response.headers[name] = value
    if not fresh:
        response.headers["Content-Length"] = str(len(body))
    return response


def _select_subprotocol(
    _connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Pick `wsgate.v1`; accept a client offering none; refuse one offering only others.

    Browsers' `new WebSocket(url)` offers none. A client offering only other subprotocols
    speaks something else, and gets HTTP 400.
    """
    if not offered:
        return None
    if PROTOCOL in offered:
        return Subprotocol(PROTOCOL)
    raise NegotiationError(f"unsupported subprotocols; this gateway speaks {PROTOCOL}")


def _drop_handshake_headers(ws: ServerConnection) -> None:
    """Let go of the opening handshake's headers once the connection is accepted.

    websockets keeps the request and response of the handshake on the connection for its
    whole life: ~3 KiB of headers per connection from a load generator, more from a
    browser (cookies, user agent), the largest part of an idle connection after websockets'
    own buffers. The gateway reads them only during the handshake (path, subprotocol,
    Origin, `_process_request`): a check that needs a header must be made there.
    """
    for message in (ws.request, ws.response):
        if message is not None:
            message.headers.clear()
