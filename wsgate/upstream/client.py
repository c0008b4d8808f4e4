"""The aiohttp side: open a provider's streaming response and hand its bytes to the core.

Owns the upstream HTTP session (one pool for all streams, sized for thousands of concurrent
streams: aiohttp's default `limit=100` would silently queue the 101st), the timeouts
(connect, first byte, idle gap between chunks; no hidden 300 s total, so long generations
live), and the translation of aiohttp's exceptions into wsgate's typed upstream errors.

Cancellation reaches the provider because the response is closed in a `finally` whatever
ends the stream (a cancel is a `CancelledError` at an `await` here): the TCP connection is
closed, not returned to the pool, so the provider sees the disconnect at once.

Does not parse anything (the core does) and does not know about WebSocket clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import msgspec

from wsgate.core.errors import (
    UnknownModel,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from wsgate.core.frames import ChatRequest
from wsgate.core.providers import build_body


@dataclass(frozen=True, slots=True)
class Route:
    """Where a model alias goes: the provider's kind, endpoint, key and model name."""

    alias: str
    provider: str
    kind: str
    base_url: str
    upstream_model: str
    api_key: str | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts in seconds."""

    connect: float = 10.0
    first_byte: float = 60.0
    idle: float = 60.0


_encoder = msgspec.json.Encoder()

ENDPOINTS: dict[str, str] = {"openai_chat": "/chat/completions"}

READ_BUFSIZE = 16 * 1024
"""aiohttp buffers up to 2x this per response before it stops reading the socket; one
`iter_any()` chunk can hold all of it, so it bounds how far a stream may overshoot its
outbox queue in one read. Token events are small: 16 KiB keeps the overshoot small."""


class UpstreamClient:
    """Opens streaming provider responses for the gateway's streams."""

    def __init__(
        self, routes: Mapping[str, Route], timeouts: Timeouts, pool_limit: int = 0
    ) -> None:
        self.routes = dict(routes)
        self.timeouts = timeouts
        self._pool_limit = pool_limit
        self._session: aiohttp.ClientSession | None = None

    def route(self, model: str) -> Route:
        """The route of a model alias; `UnknownModel` if there is none."""
        try:
            return self.routes[model]
        except KeyError:
            raise UnknownModel(f"no provider serves model {model!r}") from None

    async def start(self) -> None:
        """Create the shared connection pool (inside the running loop)."""
        connector = aiohttp.TCPConnector(
            limit=self._pool_limit, limit_per_host=0, enable_cleanup_closed=False
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect, sock_read=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            raise_for_status=False,
            read_bufsize=READ_BUFSIZE,
        )

    async def close(self) -> None:
        """Close the pool and every connection in it."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def open(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open the streaming call for `request`; yields an iterator over response bytes.

        Raises the typed `UpstreamError` subclasses for every failure, before or during the
        stream. Leaving the context closes the response's connection.
        """
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        route = self.route(request.model)
        body = _encoder.encode(build_body(route.kind, request, route.upstream_model))
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if route.api_key:
            headers["authorization"] = f"Bearer {route.api_key}"
        url = route.base_url.rstrip("/") + ENDPOINTS[route.kind]
        response: aiohttp.ClientResponse | None = None
        # One deadline from the request to the first body byte, across headers and body.
        first_byte_deadline = asyncio.get_running_loop().time() + self.timeouts.first_byte
        try:
            async with asyncio.timeout_at(first_byte_deadline):
                response = await self._session.post(url, data=body, headers=headers)
            if response.status != 200:
                raise await _status_error(response)
            yield self._chunks(response, first_byte_deadline)
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError) as exc:
            raise UpstreamUnavailable("could not connect to the provider") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout("the provider did not answer in time") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise UpstreamError("the provider closed the stream unexpectedly") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("the provider call failed") from exc
        finally:
            if response is not None:
                response.close()

    async def _chunks(
        self, response: aiohttp.ClientResponse, first_byte_deadline: float
    ) -> AsyncIterator[bytes]:
        # A deadline per read: the first byte's, then the idle gap. Time spent waiting for
        # the client to make room (backpressure) is not counted against the provider.
        reader = response.content.iter_any().__aiter__()
        try:
            async with asyncio.timeout_at(first_byte_deadline):
                chunk = await reader.__anext__()
        except StopAsyncIteration:
            return
        yield chunk
        idle = self.timeouts.idle
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await reader.__anext__()
            except StopAsyncIteration:
                return
            yield chunk


async def _status_error(response: aiohttp.ClientResponse) -> UpstreamError:
    status = response.status
    if status == 429:
        return UpstreamRateLimited(
            "the provider rate-limited the request", retry_after_ms=_retry_after_ms(response)
        )
    if 400 <= status < 500:
        return UpstreamRejected(f"the provider refused the request (HTTP {status})")
    return UpstreamError(f"the provider failed (HTTP {status})")


def _retry_after_ms(response: aiohttp.ClientResponse) -> int | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0, int(seconds * 1000)) if seconds < 86400 else None
