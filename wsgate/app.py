"""The composition root: the one place that wires settings, upstream, mock and gateway.

Owns the order of start-up and shutdown, and the process's signals: SIGINT and SIGTERM
drain, SIGHUP reloads what may change without a restart (`App.reload`). Every other package
receives its collaborators from here; none of them imports another shell.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import signal
from collections.abc import Awaitable, Mapping

from wsgate import __version__
from wsgate.config import ConfigError, Settings, ToolSettings, is_loopback
from wsgate.core.auth import JwksError
from wsgate.core.errors import UnknownModel
from wsgate.core.retry import RetryPolicy
from wsgate.core.store import Store, StoreLimits
from wsgate.gateway import authn
from wsgate.gateway.authn import Authenticator
from wsgate.gateway.connection import ConnectionOptions, Shared
from wsgate.gateway.credentials import Credentials
from wsgate.gateway.guard import FD_RESERVE, GuardOptions, fit_open_files
from wsgate.gateway.http_api import TicketApi
from wsgate.gateway.server import Gateway, GatewayOptions
from wsgate.gateway.tls import ServerTls, TlsError
from wsgate.log import get_logger
from wsgate.mock import MockProvider
from wsgate.store.memory import MemoryStore
from wsgate.store.redis import RedisStore
from wsgate.upstream.client import Route, Timeouts, UpstreamClient
from wsgate.upstream.tools import HttpTool, ModelTool, ToolRunner

log = get_logger("wsgate.app")

MOCK_MODEL = "mock"
MOCK_ROUTES = {  # alias -> (provider kind, path of its API under the mock's root)
    MOCK_MODEL: ("openai_chat", "/v1"),
    "mock-responses": ("openai_responses", "/v1"),
    "mock-anthropic": ("anthropic", "/v1"),
    "mock-ollama": ("ollama", ""),
}
"""With the built-in mock, one model alias per provider dialect the mock speaks."""
EXIT_ON_SECOND_SIGNAL = 1

__all__ = [
    "App",
    "JwksError",
    "TlsError",
    "build_routes",
    "build_store",
    "gateway_options",
    "tune_gc",
]


class ListenError(Exception):
    """A listener could not bind its address: the setting to change, in one line."""


async def listening(start: Awaitable[object], section: str, host: str, port: int) -> None:
    """Run a listener's `start`; a bind that fails is a `ListenError` naming the setting."""
    try:
        await start
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ListenError(
            f"{section}.host, {section}.port: cannot listen on {host}:{port}: {reason}"
        ) from exc


def build_tools(
    tools: Mapping[str, ToolSettings], environ: Mapping[str, str], upstream: UpstreamClient
) -> dict[str, HttpTool | ModelTool]:
    """The server-side tools' runtime specs: headers read, model tools' aliases routable."""
    specs: dict[str, HttpTool | ModelTool] = {}
    for name, tool in tools.items():
        if tool.kind == "http":
            assert tool.url is not None  # noqa: S101 - ToolSettings checks it
            headers = tool.resolve_headers(environ)
            specs[name] = HttpTool(
                tool.url, headers, tool.timeout_s, tool.max_concurrency, tool.max_response_bytes
            )
            continue
        assert tool.model is not None and tool.prompt is not None  # noqa: S101, PT018
        try:
            upstream.route(tool.model)
        except UnknownModel:
            raise ConfigError(f"tools.{name}.model: no model {tool.model!r} is routed") from None
        specs[name] = ModelTool(
            tool.model,
            tool.prompt,
            tool.max_tokens,
            tool.timeout_s,
            tool.max_concurrency,
            tool.max_response_bytes,
        )
    return specs


def build_routes(settings: Settings, environ: Mapping[str, str]) -> dict[str, Route]:
    """Model alias -> route, from the configured providers and models."""
    routes: dict[str, Route] = {}
    for alias, model in settings.models.items():
        provider = settings.providers[model.provider]
        routes[alias] = Route(
            alias=alias,
            provider=model.provider,
            kind=provider.kind,
            base_url=provider.base_url,
            upstream_model=model.upstream_model or alias,
            api_key=provider.resolve_api_key(environ),
            max_concurrency=provider.max_concurrency,
            timeouts=Timeouts(
                provider.connect_timeout_s or settings.upstream.connect_timeout_s,
                provider.first_byte_timeout_s or settings.upstream.first_byte_timeout_s,
                provider.idle_timeout_s or settings.upstream.idle_timeout_s,
            ),
            reader=provider.reader or settings.upstream.reader,
            expose_errors=bool(settings.upstream.expose_provider_errors),
            extra_headers={k: v.get() for k, v in provider.extra_headers.items()},
            query_params={k: v.get() for k, v in provider.query_params.items()},
        )
    return routes


def gateway_options(settings: Settings, max_connections: int | None = None) -> GatewayOptions:
    """The gateway's options from the settings (`max_connections`: as fitted to open files)."""
    server, limits = settings.server, settings.limits
    exposed = settings.real_providers or not is_loopback(server.host)
    # The demo page only where it can work: it has no sign-in, and an exposed gateway
    # refuses its own pages unless allowed_origins lets them in.
    demo = (
        server.demo and not settings.auth.enabled and (not exposed or bool(server.allowed_origins))
    )
    return GatewayOptions(
        host=server.host,
        port=server.port,
        path=server.path,
        allowed_origins=tuple(server.allowed_origins),
        exposed=exposed,
        compression=server.compression,
        demo=demo,
        tools={name: tool.definition(name) for name, tool in settings.tools.items()},
        max_streams=limits.max_streams_per_connection,
        max_frame_bytes=limits.max_frame_bytes,
        telemetry_interval=limits.telemetry_interval_s,
        ping_interval=limits.ping_interval_s,
        run_without_log=settings.store.on_unavailable == "run_without_log",
        guard=GuardOptions(
            max_connections=max_connections or limits.max_connections,
            max_connections_per_ip=limits.max_connections_per_ip,
            max_pending_handshakes=limits.max_pending_handshakes,
            handshake_timeout=limits.handshake_timeout_s,
        ),
        connection=ConnectionOptions(
            queue_events=limits.stream_queue_events,
            queue_bytes=limits.stream_queue_bytes,
            buffer_bytes=limits.connection_buffer_bytes,
            send_timeout=limits.send_timeout_s,
            max_duration=limits.max_stream_duration_s,
            first_token_timeout=settings.upstream.first_token_timeout_s,
            heartbeat_interval=limits.heartbeat_interval_s,
            disconnect_window=settings.store.resume_window_s,
            max_bad_frames=limits.max_bad_frames,
            max_detached=limits.max_detached_streams,
            max_tool_result_bytes=limits.max_tool_result_bytes,
            retry=RetryPolicy(
                max_attempts=settings.upstream.retry_attempts,
                base_delay=settings.upstream.retry_base_ms / 1000,
                max_delay=settings.upstream.retry_max_ms / 1000,
                budget=settings.upstream.retry_budget_s,
            ),
        ),
    )


def open_files_reserve(settings: Settings) -> int:
    """File descriptors kept for what is not an open client connection."""
    return FD_RESERVE + settings.limits.max_pending_handshakes + settings.upstream.pool_limit


def build_store(settings: Settings) -> Store:
    """The resume store `[store]` asks for (not started)."""
    store = settings.store
    limits = StoreLimits(
        window_s=store.resume_window_s,
        max_frames=store.max_log_frames,
        max_bytes=store.max_log_bytes,
        run_ttl_s=settings.limits.max_stream_duration_s + store.resume_window_s,
        lease_s=store.lease_s,
    )
    node_id = store.node_id or f"node-{secrets.token_hex(6)}"
    if store.kind == "redis":
        return RedisStore(
            store.url, limits, node_id=node_id, prefix=store.prefix, cluster=store.cluster
        )
    return MemoryStore(limits, node_id=node_id, max_total_bytes=store.memory_max_bytes)


GC_THRESHOLDS = (20_000, 20, 50)
"""Young-generation collections every 20 000 allocations instead of 700. A gateway allocates
a few short-lived objects per token and almost never makes reference cycles; with Python's
default the collector took about 10% of the CPU of a token burst (profiled, BENCHMARKS.md)."""


def tune_gc() -> None:
    """Collector settings for a serving process: freeze what start-up made, collect rarely.

    `gc.freeze()` moves every object alive after start-up (modules, settings, pools) out of
    the collector's sight, so later full collections do not walk them again. Only
    `wsgate serve` calls this: libraries embedding wsgate keep their own settings.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class App:
    """A running wsgate: gateway, upstream pool and, when enabled, the in-process mock."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self.mock: MockProvider | None = None
        self.upstream: UpstreamClient | None = None
        self.store: Store | None = None
        self.gateway: Gateway | None = None
        self.tls: ServerTls | None = None
        self.authenticator: Authenticator | None = None
        self.api: TicketApi | None = None
        self.tools: ToolRunner | None = None
        self.routes: dict[str, Route] = {}

    async def start(self) -> None:
        """Start the mock (if enabled), the upstream pool and the gateway, in that order.

        The TLS certificate and the credentials' keys are loaded first: a missing or
        unreadable one raises `TlsError`, `ConfigError` or `JwksError` (one line) before
        anything serves, and nothing started is left running.
        """
        settings = self.settings
        server = settings.server
        if server.tls_cert is not None and server.tls_key is not None:
            self.tls = ServerTls(server.tls_cert, server.tls_key)
        self.authenticator = authn.from_settings(settings.auth, self.environ)
        if self.authenticator is not None:
            await self.authenticator.start()
        try:
            await self._start_serving()
        except BaseException:
            await self.stop()
            raise
        log.info("wsgate_started", version=__version__, models=sorted(self.routes))

    async def _start_serving(self) -> None:
        settings = self.settings
        max_connections = fit_open_files(
            settings.limits.max_connections, open_files_reserve(settings)
        )
        routes = self.routes = build_routes(settings, self.environ)
        up = settings.upstream
        if settings.mock_enabled:
            self.mock = MockProvider(
                default_ttft_ms=settings.mock.ttft_ms,
                default_tokens_per_s=settings.mock.tokens_per_s,
            )
            await self.mock.start("127.0.0.1", 0)
            root = f"http://127.0.0.1:{self.mock.port}"
            for alias, (kind, path) in MOCK_ROUTES.items():
                expose = up.expose_provider_errors is not False
                route = Route(
                    alias, "mock", kind, root + path, alias, reader=up.reader, expose_errors=expose
                )
                routes.setdefault(alias, route)
        self.upstream = UpstreamClient(
            routes,
            Timeouts(up.connect_timeout_s, up.first_byte_timeout_s, up.idle_timeout_s),
            pool_limit=up.pool_limit,
            max_line_bytes=up.max_line_bytes,
        )
        await self.upstream.start()
        store = build_store(settings)
        await store.start()  # StoreUnavailable: stop() closes what started before it
        self.store = store
        auth = settings.auth
        authenticate = None if self.authenticator is None else self.authenticator.authenticate
        credentials = Credentials(
            authenticate,
            store,
            allow_anonymous=self.authenticator is None or settings.server.allow_anonymous,
            anonymous_quota=authn.quota_of(auth.anonymous_quota),
            ticket_ttl_s=auth.ticket_ttl_s,
        )
        shared = Shared(
            store=store,
            authenticate=authenticate,
            auth_timeout=auth.timeout_s,
            limiter=store.limiter,
            quota_fail_open=settings.store.on_unavailable == "run_without_log",
        )
        if settings.tools:
            specs = build_tools(settings.tools, self.environ, self.upstream)
            nested = shared.accounting.nested_call
            self.tools = ToolRunner(specs, store, self.upstream, on_nested=nested)
            await self.tools.start()
            shared.run_tool = self.tools.run
        ssl_context = None if self.tls is None else self.tls.context
        self.gateway = Gateway(
            gateway_options(settings, max_connections),
            self.upstream,
            self.upstream.resolve,
            __version__,
            store,
            ssl_context=ssl_context,
            shared=shared,
            credentials=credentials,
        )
        await listening(self.gateway.start(), "server", settings.server.host, settings.server.port)
        if settings.api_enabled:
            api = settings.api
            self.api = TicketApi(credentials, api.host, api.port, ssl_context)
            await listening(self.api.start(), "api", api.host, api.port)

    @property
    def url(self) -> str:
        """The gateway's WebSocket URL."""
        assert self.gateway is not None  # noqa: S101 - only meaningful after start()
        host = self.settings.server.host
        scheme = "ws" if self.tls is None else "wss"
        return f"{scheme}://{host}:{self.gateway.port}{self.settings.server.path}"

    @property
    def api_url(self) -> str:
        """The HTTP API's root (`POST {api_url}/v1/tickets`)."""
        assert self.api is not None  # noqa: S101 - only meaningful with the API started
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.settings.api.host}:{self.api.port}"

    def reload(self) -> None:
        """SIGHUP: re-read what may change without a restart.

        The TLS certificate and key, and the API keys (`[[auth.api_keys]]` as loaded, and
        `auth.api_keys_file` read again: a key added, revoked or removed there applies to
        the next authentication). Each part that fails keeps what it had and logs one line;
        nothing here stops serving.
        """
        log.info("reload_requested")
        if self.tls is not None:
            self.tls.reload()
        if self.authenticator is not None and self.authenticator.api_keys is not None:
            try:
                entries = authn.api_key_entries(self.settings.auth)
                self.authenticator.replace_keys(entries)
            except (ConfigError, ValueError) as exc:
                log.error("api_keys_reload_failed", error=str(exc))  # noqa: TRY400
            else:
                revoked = self._close_revoked()
                log.info("api_keys_reloaded", count=len(entries), connections_closed=revoked)

    def _close_revoked(self) -> int:
        """Close (4501) the connections made with an API key that is now revoked or gone."""
        keys = None if self.authenticator is None else self.authenticator.api_keys
        if keys is None or self.gateway is None:
            return 0
        closed = 0
        for connection in list(self.gateway.connections):
            principal = connection.session.principal
            credential = None if principal is None else principal.credential
            if credential is not None and not keys.valid(credential):
                connection.revoke()
                closed += 1
        return closed

    async def stop(self) -> None:
        """Close the API and the connections (1001), then the store, upstream pool, mock."""
        if self.api is not None:
            await self.api.close()
        if self.gateway is not None:
            await self.gateway.close()
        if self.tools is not None:
            await self.tools.close()
        if self.store is not None:
            await self.store.close()
        if self.upstream is not None:
            await self.upstream.close()
        if self.mock is not None:
            await self.mock.stop()
        if self.authenticator is not None:
            await self.authenticator.close()
        log.info("wsgate_stopped")

    async def drain(self) -> None:
        """Graceful stop: `goaway`, let streams finish until the drain deadline, then stop."""
        if self.gateway is not None:
            server = self.settings.server
            await self.gateway.shutdown(server.drain_timeout_s, server.reconnect_after_ms)
        await self.stop()

    async def run_until_signal(self) -> None:
        """Serve until SIGINT or SIGTERM, then drain; a second signal exits at once.

        SIGHUP calls `reload` (the default action would end the process).
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("second_signal_exit")
                os._exit(EXIT_ON_SECOND_SIGNAL)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            tune_gc()
            await stop.wait()
            log.info("signal_received_draining")
            await self.drain()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
