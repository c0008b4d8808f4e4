"""Transport-level limits on hostile clients, below the WebSocket protocol.

Owns what a client can do to the gateway before and beneath its frames:

- Write buffer: every byte queued in a connection's transport counts against
  `buffer_bytes`, whoever queued it (wsgate's frames, websockets' pongs and close frames).
  websockets answers pings inside `data_received` with no flow control, so a client that
  pings and never reads would grow it without bound. Before each chunk is handed on, and
  after, the transport's buffer is checked: past the cap, or with the transport paused for
  `send_timeout`, the connection overflows. Worst case per connection: `buffer_bytes` plus
  the answers to one read (uvloop reads at most 256 KiB; a pong is never longer than its
  ping), plus the writer's last batch.
- Overflow: `on_overflow(reason, buffered)` is called once (`reason` is `buffer_full` or
  `send_timeout`); from then on nothing more is read from the client, and the transport is
  aborted after `OVERFLOW_GRACE_S` if the hook has not closed it. The default hook counts
  a slow consumer and aborts at once; the connection sets its own.
- Pending handshakes: at most `max_pending_handshakes` connections accepted and not yet
  upgraded (nor refused); past it a new one is aborted at once. Each has a deadline of
  `handshake_timeout` from its TCP accept, TLS included.
- Connection caps: `admit` (called from `process_request`) refuses the upgrade with HTTP
  503 and `Retry-After` past `max_connections` open, or `max_connections_per_ip` from one
  address (0: no cap). A slot is taken at admission, not at the upgrade, so an asynchronous
  check after it (authentication) cannot let a burst through, and given back when the
  connection is lost.
- Open files: `fit_open_files` raises the soft RLIMIT_NOFILE to the hard one and caps
  `max_connections` to what fits, so a full gateway answers 503, not EMFILE.
- Refused handshakes (HTTP 4xx/5xx) and protocol closes (1002, 1007, 1009) are counted in
  the gateway's accounting and logged through `LogThrottle`.

Must not: read or decide anything about wsgate frames (the session's), nor write to the
client (it only refuses before the upgrade and aborts).

websockets internals relied on (17.x, pinned `<18` in pyproject.toml; each held by a test in
tests/gateway/test_guard.py): `serve(create_connection=...)` builds every connection as
`create_connection(protocol, server, **options)` at TCP accept, before a TLS handshake; the
`ServerConnection` is the asyncio protocol (`connection_made`, `data_received`,
`pause_writing`, `resume_writing`, `connection_lost`), and websockets writes its pongs into
the transport inside `data_received`; `handshake()` is awaited once per connection and
returns with `protocol.state` OPEN when upgraded, else with `response` set (a refusal or a
probe's answer) or with `protocol.handshake_exc` set (a request it could not parse); with
TLS, a connection whose TLS handshake fails never sees `connection_made` nor
`connection_lost` (so its pending slot is given back at its deadline); and
`protocol.close_sent` is the close frame websockets sent when it failed the connection.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from wsgate.gateway.accounting import Accounting
from wsgate.gateway.throttle import LogThrottle
from wsgate.log import get_logger

log = get_logger("wsgate.gateway")

OVERFLOW_GRACE_S = 2.0
"""After `on_overflow`, how long the hook has to close the connection before it is aborted
(the connection's own slow-consumer path gives its close one second)."""
RETRY_AFTER_S = 5
"""`Retry-After` of a 503 for a connection cap."""
NEAR_CAP = 0.9
"""Past this share of `max_connections` open, a (throttled) warning."""
FD_RESERVE = 64
"""Open files kept for what is not a client connection: the listener, the mock, the store,
the logs, a `/livez` probe."""
PROTOCOL_CLOSES = frozenset({1002, 1007, 1009})
"""Close codes websockets sends when a client breaks the protocol (RFC 6455 §7.4.1)."""

Overflow = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class GuardOptions:
    """The transport-level caps (settings `[limits]`; `max_connections` as fitted)."""

    max_connections: int = 10_000
    max_connections_per_ip: int = 256  # 0: no cap
    max_pending_handshakes: int = 256
    handshake_timeout: float = 10.0  # s from TCP accept (TLS included) to the upgrade


class Guard:
    """The gateway-wide side of the limits: counts, caps and throttled log lines."""

    def __init__(
        self,
        options: GuardOptions,
        accounting: Accounting,
        *,
        buffer_bytes: int,
        send_timeout: float,
        probe_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.options = options
        self.accounting = accounting
        self.buffer_bytes = buffer_bytes
        self.send_timeout = send_timeout
        self.probe_paths = probe_paths  # answered without an upgrade: not refusals
        self.pending = 0  # accepted, not yet upgraded nor refused
        self.open = 0  # admitted and not yet lost
        self.per_ip: dict[str, int] = {}  # admitted connections by address (none at 0)
        self._log_pending = LogThrottle("pending_handshakes_full")
        self._log_timeout = LogThrottle("handshake_timeout")
        self._log_refused = LogThrottle("handshake_refused")
        self._log_capped = LogThrottle("connection_cap_reached")
        self._log_near = LogThrottle("connections_near_cap", interval=60.0)
        self._log_protocol = LogThrottle("protocol_close")
        self._log_overflow = LogThrottle("transport_overflow")

    def connection_class(self) -> type[GuardedConnection]:
        """The `create_connection` for `serve`: connections that report to this guard."""
        return type("GuardedConnection", (GuardedConnection,), {"guard": self})

    # --- admission (process_request) ------------------------------------------------------

    def admit(self, ws: ServerConnection) -> Response | None:
        """Take a connection slot (None: go on), or HTTP 503 past a cap."""
        if not isinstance(ws, GuardedConnection) or ws.slot is not None:
            return None
        options = self.options
        ip = client_ip(ws)
        if self.open >= options.max_connections:
            return self._capped(ws, "max_connections", options.max_connections, ip)
        per_ip = options.max_connections_per_ip
        if per_ip and self.per_ip.get(ip, 0) >= per_ip:
            return self._capped(ws, "max_connections_per_ip", per_ip, ip)
        ws.slot = ip
        self.open += 1
        if per_ip:
            self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        if self.open >= NEAR_CAP * options.max_connections:
            self._log_near(open=self.open, cap=options.max_connections)
        return None

    def _capped(self, ws: ServerConnection, cap: str, value: int, ip: str) -> Response:
        self.accounting.connection_cap_refusals[cap] += 1
        self._log_capped(cap=cap, limit=value, remote_ip=ip)
        response = ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    def _release(self, ip: str) -> None:
        self.open -= 1
        count = self.per_ip.get(ip)
        if count is not None:
            if count <= 1:
                del self.per_ip[ip]
            else:
                self.per_ip[ip] = count - 1

    # --- what the connections report ------------------------------------------------------

    def _begin_pending(self) -> bool:
        if self.pending >= self.options.max_pending_handshakes:
            self.accounting.pending_handshakes_refused += 1
            self._log_pending(cap=self.options.max_pending_handshakes)
            return False
        self.pending += 1
        return True

    def _timed_out(self, ws: GuardedConnection, stage: str) -> None:
        self.accounting.handshake_timeouts += 1
        remote = client_address(ws) if stage == "http" else "?"  # no transport yet during TLS
        self._log_timeout(stage=stage, remote=remote, timeout_s=self.options.handshake_timeout)

    def _handshake_over(self, ws: GuardedConnection) -> None:
        """Count a handshake that ended without an upgrade by its HTTP status."""
        protocol = ws.protocol
        if protocol.state is State.OPEN:
            return
        path = ""
        if ws.response is not None:
            status: int | None = ws.response.status_code
            if ws.request is not None:
                path = ws.request.path.split("?", 1)[0]  # never the query: it may hold a ticket
        else:
            status = _unparsed_status(protocol)
        if status is None or status < 400 or path in self.probe_paths:
            return  # the client left before a request, or a probe's answer
        self.accounting.handshakes_refused[str(status)] += 1
        self._log_refused(status=status, path=path[:100], remote=client_address(ws))

    def _protocol_close(self, ws: GuardedConnection) -> None:
        protocol = ws.protocol
        close = protocol.close_sent
        if close is None or close.code not in PROTOCOL_CLOSES or protocol.close_rcvd_then_sent:
            return  # not a close of ours for a broken protocol (or the client's echoed)
        self.accounting.protocol_closes[str(close.code)] += 1
        self._log_protocol(code=close.code, reason=close.reason[:100], remote=client_address(ws))

    def _overflowed(self, reason: str) -> None:
        self.accounting.transport_overflows[reason] += 1

    def default_overflow(self, ws: ServerConnection, reason: str, buffered: int) -> None:
        """Without a connection's own hook: a slow consumer, cut at once."""
        self.accounting.slow_consumers += 1
        self._log_overflow(reason=reason, buffered_bytes=buffered, cap=self.buffer_bytes)
        ws.transport.abort()


class GuardedConnection(ServerConnection):
    """A websockets server connection that reports to its `Guard` and obeys its limits."""

    guard: ClassVar[Guard]

    def __init__(self, protocol: ServerProtocol, server: Server, **options: Any) -> None:
        super().__init__(protocol, server, **options)
        guard = self.guard
        self.on_overflow: Overflow = self._default_overflow
        """Called once when the transport overflows; the connection replaces it."""
        self.slot: str | None = None  # the address whose connection slot this holds
        self._refused = not guard._begin_pending()  # noqa: SLF001 - the guard's own class
        self._pending = not self._refused
        self._made = False  # connection_made was called: `transport` exists
        self._cut = False  # overflowed: nothing more is read
        self._paused_timer: asyncio.TimerHandle | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        if self._pending:
            self._deadline = self.loop.call_later(
                guard.options.handshake_timeout, self._deadline_passed
            )

    # --- the handshake ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with websockets (its handler task), then abort one past the pending cap."""
        super().connection_made(transport)
        self._made = True
        if self._refused:
            self.transport.abort()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """Run websockets' handshake and report its outcome to the guard."""
        try:
            await super().handshake(*args, **kwargs)
        except asyncio.CancelledError:  # websockets' open_timeout, or the server closing
            if self._end_pending():
                self.guard._timed_out(self, "http")  # noqa: SLF001
            raise
        self._handshake_ended()

    def _handshake_ended(self) -> None:
        # A refusal waits for the client to close before `handshake()` returns, so the
        # first of `handshake()` and `connection_lost` to get here reports the outcome.
        if self._end_pending():
            self.guard._handshake_over(self)  # noqa: SLF001

    def _deadline_passed(self) -> None:
        self._deadline = None
        if not self._end_pending():
            return
        self.guard._timed_out(self, "http" if self._made else "tls")  # noqa: SLF001
        if self._made:  # else still in its TLS handshake, which ends at the same deadline
            self.transport.abort()

    def _end_pending(self) -> bool:
        """Give the pending slot back; whether this call did (the first one does)."""
        if not self._pending:
            return False
        self._pending = False
        self.guard.pending -= 1
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        return True

    # --- the write buffer ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Hand the client's bytes to websockets unless the transport holds too much."""
        if self._cut:
            return  # overflowed: the client gets nothing more answered
        cap = self.guard.buffer_bytes
        buffered = self.transport.get_write_buffer_size()
        if buffered > cap:
            self._overflow("buffer_full", buffered)
            return
        super().data_received(data)  # may write pongs, a close frame, a handshake answer
        buffered = self.transport.get_write_buffer_size()
        if buffered > cap:
            self._overflow("buffer_full", buffered)

    def pause_writing(self) -> None:
        """The transport is above its high-water mark: time how long it stays there."""
        super().pause_writing()
        self._paused_timer = self.loop.call_later(self.guard.send_timeout, self._paused_long)

    def resume_writing(self) -> None:
        """The client reads again."""
        super().resume_writing()
        if self._paused_timer is not None:
            self._paused_timer.cancel()
            self._paused_timer = None

    def _paused_long(self) -> None:
        self._paused_timer = None
        if self.paused and not self.transport.is_closing():
            self._overflow("send_timeout", self.transport.get_write_buffer_size())

    def _overflow(self, reason: str, buffered: int) -> None:
        if self._cut:
            return
        self._cut = True
        transport = self.transport
        if not transport.is_closing():
            transport.pause_reading()  # the client's bytes wait in its own buffers
        self.guard._overflowed(reason)  # noqa: SLF001
        self.on_overflow(reason, buffered)
        if not transport.is_closing():
            self._grace = self.loop.call_later(OVERFLOW_GRACE_S, transport.abort)

    def _default_overflow(self, reason: str, buffered: int) -> None:
        self.guard.default_overflow(self, reason, buffered)

    # --- the end ---------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        """Let websockets clean up, then give back every slot and timer."""
        super().connection_lost(exc)
        self._handshake_ended()
        for timer in (self._paused_timer, self._grace):
            if timer is not None:
                timer.cancel()
        self._paused_timer = self._grace = None
        guard = self.guard
        if self.slot is not None:
            guard._release(self.slot)  # noqa: SLF001
            self.slot = None
        guard._protocol_close(self)  # noqa: SLF001


def fit_open_files(max_connections: int, reserve: int) -> int:
    """Raise the soft open-file limit to the hard one; the connection cap that fits under it.

    Every connection holds one file descriptor; `reserve` more are kept for everything else
    (pending handshakes, provider sockets, the store, probes). A cap above what fits is
    lowered, with one warning, so a full gateway refuses with 503 instead of failing
    `accept` with EMFILE (which asyncio logs and retries, and `/livez` cannot get through).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    raised = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            raised = target
        except (ValueError, OSError):
            raised = soft
    log.info("open_files_limit", soft=soft, hard=hard, now=raised)
    if raised == resource.RLIM_INFINITY:
        return max_connections
    fits = max(1, raised - reserve)
    if max_connections <= fits:
        return max_connections
    log.warning(
        "max_connections_lowered",
        configured=max_connections,
        effective=fits,
        open_files=raised,
        reserve=reserve,
    )
    return fits


def _unparsed_status(protocol: ServerProtocol) -> int | None:
    """The status websockets answered a request it could not parse with (400: none sent)."""
    exc = protocol.handshake_exc
    if exc is None:
        return None
    if isinstance(exc, RequestLineTooLong):
        return HTTPStatus.REQUEST_URI_TOO_LONG.value
    if isinstance(exc, HeaderLineTooLong | TooManyHeaders):
        return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE.value
    return HTTPStatus.BAD_REQUEST.value


def client_ip(ws: ServerConnection) -> str:
    """The client's address (without its port), or "?" once the transport is gone."""
    address = ws.remote_address
    return str(address[0]) if address else "?"


def client_address(ws: ServerConnection) -> str:
    """The client's address and port, for logs."""
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
