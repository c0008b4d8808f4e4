"""The aiohttp side: open a provider's streaming response and hand its bytes to the core.

Owns the upstream HTTP session (one pool for all streams, sized for thousands of concurrent
streams: aiohttp's default `limit=100` would silently queue the 101st), the timeouts
(connect, first byte, idle gap between chunks; no hidden 300 s total, so long generations
live), and the translation of aiohttp's exceptions into wsgate's typed upstream errors.
Bodies are read in the route's mode: push (`push.py`, the default: bytes reach the stream
in the socket's data callback, no task wake-up per chunk) or pull (`pull.py`, a task reads).

Cancellation reaches the provider because the response is closed in a `finally` whatever
ends the stream (a cancel is a `CancelledError` at an `await` here): the TCP connection is
closed, not returned to the pool, so the provider sees the disconnect at once. A call whose
body was read to its end has already gone back to aiohttp's pool by then (keep-alive: the
next call skips the TCP and TLS handshakes); closing it is then a no-op.

Does not parse anything (the core does) and does not know about WebSocket clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

import aiohttp
import msgspec
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from wsgate.core.errors import (
    BadRequest,
    UnknownModel,
    UpstreamBroken,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from wsgate.core.frames import ChatRequest, StartOptions
from wsgate.core.payloads import error_labels
from wsgate.core.providers import ProviderHTTP, kind, make_parser
from wsgate.core.session import Target
from wsgate.core.stream import UpstreamParser
from wsgate.log import scrub
from wsgate.upstream.base import READ_BUFSIZE, Body
from wsgate.upstream.pull import PullBody
from wsgate.upstream.push import PushBody, install


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts in seconds."""

    connect: float = 10.0
    first_byte: float = 60.0
    idle: float = 60.0


Reader = Literal["push", "pull"]
"""How a provider's body is read: from the socket's callback (push) or by a task (pull)."""

BODIES: dict[str, type[PushBody | PullBody]] = {"push": PushBody, "pull": PullBody}


@dataclass(frozen=True, slots=True)
class Route:
    """Where a model alias goes: the provider's kind, endpoint, key and model name.

    `max_concurrency` caps the provider's calls in flight across all streams (0: no cap; a
    stream over the cap waits for a slot, within its first-token timeout). `timeouts`
    overrides the client's defaults for this provider.
    """

    alias: str
    provider: str
    kind: str
    base_url: str
    upstream_model: str
    api_key: str | None = None
    max_concurrency: int = 0
    timeouts: Timeouts | None = None
    reader: Reader = "push"
    extra_headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may be keys
    query_params: Mapping[str, str] = field(default_factory=dict, repr=False)
    expose_errors: bool = False  # the provider's error message goes into the client's too


@dataclass(frozen=True, slots=True)
class Call:
    """One start's resolved route (the core's `Target`): its parsers and, in `open`, its call.

    Made once per accepted `start` by `UpstreamClient.resolve`; the stream's retries reuse
    it, so a start looks its route up once.
    """

    route: Route
    max_line_bytes: int
    tool_snapshots: bool = False

    def describe(self) -> dict[str, object]:
        """The provider and the model, for the operator's log lines."""
        return {"provider": self.route.provider, "model": self.route.upstream_model}

    def parser(self) -> UpstreamParser:
        """A fresh parser for the route's provider kind."""
        return make_parser(self.route.kind, self.max_line_bytes, tool_snapshots=self.tool_snapshots)


DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
"""The longest SSE or NDJSON line a parser accepts (`upstream.max_line_bytes`'s default)."""

MAX_ERROR_BODY = 64 * 1024
"""How much of an error answer is read to find the provider's error type."""

_encoder = msgspec.json.Encoder()
_NO_SLOT: Final = contextlib.nullcontext()


class UpstreamClient:
    """Opens streaming provider responses for the gateway's streams."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        timeouts: Timeouts,
        pool_limit: int = 0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.routes = dict(routes)
        self.timeouts = timeouts
        self.max_line_bytes = max_line_bytes
        self._pool_limit = pool_limit
        self._session: aiohttp.ClientSession | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}

    def route(self, model: str) -> Route:
        """The route of a model alias; `UnknownModel` if there is none."""
        try:
            return self.routes[model]
        except KeyError:
            raise UnknownModel(f"no provider serves model {model!r}") from None

    def resolve(self, request: ChatRequest, options: StartOptions) -> Call:
        """The call a start makes (the core's resolver); `UnknownModel` if no route serves it.

        Anthropic's extended thinking with the agent loop is `BadRequest`: each later turn
        must carry the earlier turns' signed thinking blocks, which wsgate does not keep.
        """
        route = self.route(request.model)
        thinking = request.reasoning_effort not in {None, "none"} or (
            request.thinking is not None and request.thinking.get("type") != "disabled"
        )
        if options.agent is not None and thinking and route.kind == "anthropic":
            raise BadRequest(
                "thinking: not with options.agent on Anthropic (its tool turns need the "
                "signed thinking blocks, which the loop does not carry)"
            )
        return Call(route, self.max_line_bytes, options.tool_snapshots)

    async def start(self) -> None:
        """Create the shared connection pool (inside the running loop)."""
        connector = aiohttp.TCPConnector(
            limit=self._pool_limit, limit_per_host=0, enable_cleanup_closed=False
        )
        install(connector, asyncio.get_running_loop())  # push-mode protocols, pull works too
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect, sock_read=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            raise_for_status=False,
            read_bufsize=READ_BUFSIZE,
            cookie_jar=aiohttp.DummyCookieJar(),  # one pool for every principal: no cookies
        )

    async def close(self) -> None:
        """Close the pool and every connection in it."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def open(self, request: ChatRequest, target: Target) -> AsyncIterator[Body]:
        """Open the streaming call at `target` (`resolve`'s Call); yields the body after headers.

        Raises the typed `UpstreamError` subclasses for every failure, before or during the
        stream (and `BadRequest` for a request the provider's format cannot express).
        Leaving the context closes the response's connection. The body is run by the task
        that opened the call (`Body.run`), in the route's reader mode.
        """
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        if not isinstance(target, Call):
            raise TypeError(f"open() takes the Call that resolve() made, not {target!r}")
        route = target.route
        provider = kind(route.kind)
        http = provider.http
        body = _encoder.encode(provider.body(request, route.upstream_model))
        timeouts = route.timeouts or self.timeouts
        response: aiohttp.ClientResponse | None = None
        reading = False  # past the headers: a failure now is a truncation, never retried
        async with self._slot(route):  # waiting for a slot is not the provider's time
            # One deadline from the request to the first body byte, across headers and body.
            first_byte_deadline = asyncio.get_running_loop().time() + timeouts.first_byte
            try:
                async with asyncio.timeout_at(first_byte_deadline):
                    response = await self._session.post(
                        route.base_url.rstrip("/") + http.path,
                        data=body,
                        headers={**_headers(http, route.api_key), **route.extra_headers},
                        params=route.query_params or None,
                        timeout=_client_timeout(timeouts),
                    )
                    del body  # sent: not kept for the stream's life (it grows with the prompt)
                    if response.status != 200:
                        raise await _status_error(response, route)
                    if response.content_type == "application/json":
                        raise await _json_error(response, route)
                    _forget_headers(response)
                reading = True
                yield BODIES[route.reader](response, first_byte_deadline, timeouts.idle)
            except TimeoutError as exc:
                raise _named(UpstreamTimeout("the provider did not answer in time"), route) from exc
            except aiohttp.ClientError as exc:
                raise _named(_client_error(exc, reading=reading), route) from exc
            except UpstreamError as exc:  # a status, a JSON error, a broken or stalled body
                _named(exc, route)
                raise
            finally:
                if response is not None:
                    response.close()

    def _slot(self, route: Route) -> AbstractAsyncContextManager[object]:
        """One of the provider's `max_concurrency` call slots (waits for one); no-op uncapped.

        A semaphore or a shared null context, not a generator: nothing per call to keep.
        """
        if route.max_concurrency <= 0:
            return _NO_SLOT
        semaphore = self._slots.get(route.provider)
        if semaphore is None:
            semaphore = self._slots[route.provider] = asyncio.Semaphore(route.max_concurrency)
        return semaphore

    def in_flight(self, provider: str) -> int:
        """Calls holding a slot of a capped provider now (0 for an uncapped one)."""
        semaphore = self._slots.get(provider)
        if semaphore is None:
            return 0
        cap = next(r.max_concurrency for r in self.routes.values() if r.provider == provider)
        return cap - semaphore._value  # noqa: SLF001 - asyncio exposes no public count


_NO_HEADERS: Final = CIMultiDictProxy(CIMultiDict[str]())


def _forget_headers(response: aiohttp.ClientResponse) -> None:
    """Drop the response's parsed headers: checked, and then never read again.

    A provider sends 10 to 30 headers, dozens of objects once parsed, that would otherwise
    live as long as the stream. aiohttp keeps them in `_headers` and `_raw_headers`, and its
    `reify` properties cache them in `_cache` (pinned by
    tests/upstream/test_aiohttp_internals.py).
    """
    response._headers = _NO_HEADERS  # noqa: SLF001 - see above
    response._raw_headers = ()  # noqa: SLF001
    cache = response._cache  # noqa: SLF001
    cache.pop("headers", None)
    cache.pop("raw_headers", None)


def _headers(http: ProviderHTTP, api_key: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": http.accept, **dict(http.headers)}
    if api_key:
        if http.key_header == "authorization":
            headers["authorization"] = f"Bearer {api_key}"
        else:
            headers[http.key_header] = api_key
    return headers


def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """This provider's connect timeout; no total, no read timeout (our deadlines do that)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=None)


def _client_error(exc: aiohttp.ClientError, *, reading: bool) -> UpstreamError:
    if reading:  # the body broke off: a truncation, whatever the socket said
        return UpstreamBroken("the provider closed the stream unexpectedly")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientOSError):
        return UpstreamUnavailable("could not connect to the provider")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError("the provider closed the connection before answering")
    return UpstreamError("the provider call failed")


async def _status_error(response: aiohttp.ClientResponse, route: Route) -> UpstreamError:
    status = response.status
    label, text = await _error_info(response)
    detail = f"HTTP {status}, {label}" if label else f"HTTP {status}"
    retry_after_ms = _retry_after_ms(response)
    error: UpstreamError
    if status == 429 or label in RATE_LIMIT_TYPES:
        error = UpstreamRateLimited(
            f"the provider rate-limited the request ({detail})", retry_after_ms=retry_after_ms
        )
    elif 400 <= status < 500 and status not in TRANSIENT_4XX:
        error = UpstreamRejected(f"the provider refused the request ({detail})")
    else:  # 5xx, Anthropic's 529 (overloaded), 408 and 409: worth another try before any token
        error = UpstreamError(f"the provider failed ({detail})", retry_after_ms=retry_after_ms)
    return _described(error, response, route, label, text)


async def _json_error(response: aiohttp.ClientResponse, route: Route) -> UpstreamError:
    """HTTP 200 with a JSON body where a stream was asked for: the body is an error."""
    label, text = await _error_info(response)
    detail = f" ({label})" if label else ""
    error: UpstreamError
    if label in RATE_LIMIT_TYPES:
        error = UpstreamRateLimited(
            f"the provider rate-limited the request{detail}",
            retry_after_ms=_retry_after_ms(response),
        )
    elif label in REJECTION_TYPES:
        error = UpstreamRejected(f"the provider refused the request{detail}")
    else:
        error = UpstreamError(f"the provider answered with an error instead of a stream{detail}")
    return _described(error, response, route, label, text)


MAX_PROVIDER_MESSAGE = 300
"""How much of a provider's error message the log line (and, if exposed, the client) gets."""
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "apim-request-id")
"""Where providers put the id their support asks for (OpenAI, Anthropic, Bedrock, Azure)."""


def _described(
    error: UpstreamError,
    response: aiohttp.ClientResponse,
    route: Route,
    label: str | None,
    text: str | None,
) -> UpstreamError:
    """What the operator's log line says of a provider's error answer.

    The client's message says it too when the route exposes provider errors (the message
    cut and scrubbed of secrets).
    """
    message = None if text is None else _scrubbed(text, route)[:MAX_PROVIDER_MESSAGE]
    request_id = next(
        (response.headers[h] for h in REQUEST_ID_HEADERS if h in response.headers), None
    )
    if request_id is not None:
        kept = _scrubbed(request_id, route)[:MAX_REQUEST_ID]
        request_id = kept.encode("ascii", "replace").decode()
    error.log_fields.update(
        status=response.status,
        error_type=label,
        provider_message=message,
        request_id=request_id,
    )
    if route.expose_errors and message:
        error.public_message = f"{error.public_message}: {message}"
    return error


MAX_REQUEST_ID = 128


def _scrubbed(text: str, route: Route) -> str:
    """`text` without the route's own secrets, then anything else that looks like one.

    The route's: its key, its extra header and query values, a password in its URL.
    """
    secrets = [route.api_key, *route.extra_headers.values(), *route.query_params.values()]
    password = urlsplit(route.base_url).password
    for secret in sorted((s for s in [*secrets, password] if s and len(s) >= 4), key=len)[::-1]:
        text = text.replace(secret, "[redacted]")
    return scrub(text)


def _named(error: UpstreamError, route: Route) -> UpstreamError:
    """The provider and model go into every upstream failure's log line."""
    error.log_fields.setdefault("provider", route.provider)
    error.log_fields.setdefault("model", route.upstream_model)
    return error


RATE_LIMIT_TYPES = frozenset({"rate_limit_error", "rate_limit_exceeded", "requests"})
REJECTION_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "billing_error",
        "invalid_api_key",
        "insufficient_quota",
    }
)
"""Error types that say the request itself is wrong, whatever the HTTP status."""
TRANSIENT_4XX = frozenset({408, 409})


async def _error_info(response: aiohttp.ClientResponse) -> tuple[str | None, str | None]:
    """The provider's error `type` or `code` (a short identifier) and its message text.

    OpenAI: `{"error": {"type", "code", "message"}}`; Anthropic: `{"type": "error", "error":
    {"type", "message"}}`; Ollama: `{"error": "text"}`. The text goes to the operator's log
    (and to the client only where the route exposes provider errors). The body is read to
    its end (or `MAX_ERROR_BODY`), however many TCP segments it takes.
    """
    try:
        raw = bytearray()
        while len(raw) < MAX_ERROR_BODY:
            piece = await response.content.read(MAX_ERROR_BODY - len(raw))
            if not piece:
                break
            raw += piece
        error = orjson.loads(raw).get("error")
    except (aiohttp.ClientError, orjson.JSONDecodeError, AttributeError):
        return None, None
    labels = error_labels(error)
    text = error if isinstance(error, str) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        text = error["message"]
    return (labels[0] if labels else None), text


def _retry_after_ms(response: aiohttp.ClientResponse) -> int | None:
    """How long the provider asked us to wait, in milliseconds.

    `retry-after-ms` (OpenAI), else `Retry-After` in seconds or as an HTTP date; None when
    absent, unreadable or a day or more.
    """
    headers = response.headers
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            milliseconds = float(value)
        except ValueError:
            milliseconds = math.nan
        if 0 <= milliseconds < DAY_MS:
            return int(milliseconds)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        milliseconds = float(value) * 1000
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        milliseconds = max(0.0, (when.timestamp() - time.time()) * 1000)
    return int(milliseconds) if 0 <= milliseconds < DAY_MS else None


DAY_MS = 86_400_000
