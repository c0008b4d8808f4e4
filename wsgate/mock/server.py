"""The mock provider's HTTP server: routes, scripts, faults on the connection, and records.

Owns the HTTP surface (one `POST` route per dialect from `dialects.ROUTES`, `GET /v1/models`,
`GET|DELETE /mock/requests`, `GET /healthz`, and the tool backend's routes from `tools.py`),
choosing the script (a `turns` script's turn by the conversation's history, `turns.py`) and
between a JSON answer and a stream, the faults that act on the exchange (`headers_delay_ms`,
`fail_first`'s per-tag counter, `truncate_after`'s close), the connection counts, and the
`RequestRecord` that tells tests when each client went away and what tool results it sent.
Runs with `handler_cancellation=True`, so a client that closes its socket cancels the
handler at once, even while it waits for a token seconds away. What is answered is decided
by `script.py`, `plan.py`, `turns.py` and the dialect modules, how the bytes go out by
`writer.py`; this module must not import any other wsgate package.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.parse
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from wsgate.mock.dialects import ROUTES
from wsgate.mock.pacer import Pacer
from wsgate.mock.plan import (
    Plan,
    RequestInfo,
    complete_body,
    json_error_body,
    plan_stream,
    status_body,
)
from wsgate.mock.script import (
    SCRIPT_HEADER,
    Script,
    ScriptError,
    check_streaming,
    extract_script,
    failure_of,
    parse_script,
    script_tag,
    unscripted,
    without_failure,
)
from wsgate.mock.tools import ToolBackend
from wsgate.mock.turns import (
    ExpectationError,
    check_expectations,
    select_turn,
    with_turn_ids,
)
from wsgate.mock.writer import DRAIN_POLL_S, Writer, close_abruptly

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from wsgate.mock.plan import Dialect
    from wsgate.mock.turns import ToolResult

_REQUEST_ID_HEADER: Final = "x-mock-request-id"
_BAD_JSON: Final = "We could not parse the JSON body of your request."


@dataclass(slots=True)
class RequestRecord:
    """What happened to one dialect `POST`; times are `time.monotonic()`."""

    id: str
    tag: str | None
    model: str
    started_at: float
    dialect: str = "openai_chat"
    fault: str | None = None
    first_byte_at: float | None = None
    completed_at: float | None = None
    disconnected_at: float | None = None
    chunks_sent: int = 0
    status: int = 200
    turn: int = 0
    tool_results: list[ToolResult] = field(default_factory=list)


class MockProvider:
    """A provider server (four dialects) whose every answer is scripted or seeded.

    `records` keeps the last `max_records` requests in arrival order. `start()` binds a real
    socket; `app` can also be mounted by a caller's own runner (with `handler_cancellation`).
    """

    def __init__(
        self,
        *,
        default_ttft_ms: float = 150.0,
        default_tokens_per_s: float = 40.0,
        default_words: int = 48,
        max_records: int = 10_000,
    ) -> None:
        self.default_ttft_ms = default_ttft_ms
        self.default_tokens_per_s = default_tokens_per_s
        self.default_words = default_words
        self.max_records = max_records
        self.records: dict[str, RequestRecord] = {}
        self.open_connections = 0
        self.port = 0
        self.base_url = ""
        self.root_url = ""
        self.pacer = Pacer()
        self._ids = itertools.count(1)
        self._failures: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._disconnects: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.tools = ToolBackend(max_records=max_records)
        self.app = web.Application()
        self.app.add_routes([web.post(path, self._route(d)) for path, d in ROUTES.items()])
        self.app.add_routes(self.tools.routes())
        self.app.add_routes(
            [
                web.get("/v1/models", self._models),
                web.get("/mock/requests", self._list_records),
                web.delete("/mock/requests", self._clear_records),
                web.get("/healthz", self._health),
            ]
        )

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind and serve; return the base URL, e.g. `http://127.0.0.1:8123/v1`."""
        self._stopping = False
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        # Load tests open thousands of connections at once; the default backlog of 128
        # turns a burst into SYN retries a second apart.
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.root_url = f"http://{shown}:{self.port}"
        self.base_url = f"{self.root_url}/v1"
        return self.base_url

    async def stop(self) -> None:
        """Cancel in-flight responses, stop serving and stop the pacer. Idempotent."""
        self._stopping = True
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        await self.tools.stop()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self.pacer.stop()

    def tool_url(self, name: str, **query: object) -> str:
        """The URL of tool `name` on the tool backend, its script in the query string.

        Values are written as JSON (`delay_ms=500`, `invalid_json=true`), strings as given.
        """
        url = f"{self.root_url}/tools/{urllib.parse.quote(name, safe='')}"
        if not query:
            return url
        return url + "?" + urllib.parse.urlencode({k: _query_text(v) for k, v in query.items()})

    @property
    def tcp_connections(self) -> int:
        """Client TCP connections open right now (0 unless served by `start()`).

        aiohttp's low-level `web.Server` keeps one handler per accepted connection and drops
        it once the connection is lost and its handler task has finished.
        """
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def wait_tcp_connections(self, count: int, timeout: float) -> None:  # noqa: ASYNC109 - the published test API
        """Wait until exactly `count` client connections are open; TimeoutError after `timeout`.

        Polls every millisecond: aiohttp offers no event when a connection closes.
        """
        async with asyncio.timeout(timeout):
            while self.tcp_connections != count:  # noqa: ASYNC110 - no event to wait for
                await asyncio.sleep(DRAIN_POLL_S)

    # --- records -----------------------------------------------------------------------

    def find(self, tag: str) -> RequestRecord | None:
        """Return the most recent record with this tag."""
        return next((r for r in reversed(self.records.values()) if r.tag == tag), None)

    def find_all(self, tag: str) -> list[RequestRecord]:
        """Return every kept record with this tag, oldest first (retries share a tag)."""
        return [r for r in self.records.values() if r.tag == tag]

    async def wait_disconnected(self, tag: str, timeout: float) -> RequestRecord:  # noqa: ASYNC109 - the published test API
        """Wait until the latest request tagged `tag` has `disconnected_at`.

        Raises TimeoutError after `timeout`, or at once if that request already completed.
        """
        async with asyncio.timeout(timeout):
            while True:
                event = self._disconnect_event()
                record = self.find(tag)
                if record is not None and record.disconnected_at is not None:
                    return record
                if record is not None and record.completed_at is not None:
                    # Finished answers never disconnect: fail now, and say why.
                    message = f"{record.id} (tag {tag!r}) completed without a disconnect"
                    raise TimeoutError(message)
                await event.wait()

    def _disconnect_event(self) -> asyncio.Event:
        if self._disconnects is None:
            self._disconnects = asyncio.Event()
        return self._disconnects

    def _mark_disconnected(self, record: RequestRecord) -> None:
        if record.disconnected_at is None:
            record.disconnected_at = time.monotonic()
        # Wake every waiter, then give later waiters a fresh, unset event.
        if self._disconnects is not None:
            self._disconnects.set()
            self._disconnects = None

    def _new_record(self, dialect: str) -> tuple[int, RequestRecord]:
        number = next(self._ids)
        record = RequestRecord(
            id=f"req-{number}", tag=None, model="", started_at=time.monotonic(), dialect=dialect
        )
        self.records[record.id] = record
        while len(self.records) > self.max_records:
            del self.records[next(iter(self.records))]
        return number, record

    # --- small handlers ----------------------------------------------------------------

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, dumps=_dumps)

    async def _models(self, _request: web.Request) -> web.Response:
        model = {"id": "mock", "object": "model", "created": 0, "owned_by": "wsgate"}
        return web.json_response({"object": "list", "data": [model]}, dumps=_dumps)

    async def _list_records(self, _request: web.Request) -> web.Response:
        return web.json_response(list(self.records.values()), dumps=_dumps)

    async def _clear_records(self, _request: web.Request) -> web.Response:
        self.records.clear()
        self._failures.clear()
        return web.json_response({"ok": True}, dumps=_dumps)

    # --- dialect routes ----------------------------------------------------------------

    def _route(self, dialect: Dialect) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, dialect)

        return handle

    async def _handle(self, request: web.Request, dialect: Dialect) -> web.StreamResponse:
        arrived = self.pacer.time()
        number, record = self._new_record(dialect.name)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await self._answer(request, dialect, record, number, arrived)
        except web.HTTPException as exc:  # e.g. 413 from request.read() past client_max_size
            record.status = exc.status
            raise
        except asyncio.CancelledError:
            # aiohttp's handler cancellation: the client's socket closed, possibly while we
            # waited for a token seconds away. A cancel from our own stop() is not that.
            if not self._stopping:
                self._mark_disconnected(record)
            raise
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _answer(
        self,
        request: web.Request,
        dialect: Dialect,
        record: RequestRecord,
        number: int,
        arrived: float,
    ) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return self._whole(record, 400, dialect.error_body(_BAD_JSON, kind=_INVALID))
        info = RequestInfo(body, number, int(time.time()), self.default_words)
        record.model = info.model
        if (problem := dialect.invalid(body)) is not None:
            message, param = problem
            return self._whole(record, 400, dialect.error_body(message, kind=_INVALID, param=param))
        stream = dialect.wants_stream(body)
        status, data, plan = 200, b"", None
        try:
            script = self._script(request, body, record, dialect, stream=stream)
            if script.status is not None:
                status, data = script.status, status_body(dialect, script, script.status)
            elif script.json_error:
                data = json_error_body(dialect, script)
            elif not stream:
                data = complete_body(dialect, script, info)
            else:
                plan = plan_stream(dialect, script, info)
        except ScriptError as exc:
            code = "mock_bad_script"
            if isinstance(exc, ExpectationError):
                code = record.fault = "mock_tool_results"
            error = dialect.error_body(str(exc), kind=_INVALID, code=code)
            return self._whole(record, 400, error)
        origin = arrived + script.headers_delay_ms / 1000
        if plan is not None:
            return await self._stream(request, dialect, record, _Stream(script, plan, origin))
        await self.pacer.wait_until(origin + script.ttft_ms / 1000)
        return self._whole(record, status, data, _retry_after(script))

    def _script(
        self,
        request: web.Request,
        body: dict[str, Any],
        record: RequestRecord,
        dialect: Dialect,
        *,
        stream: bool,
    ) -> Script:
        history = dialect.history(body)
        record.turn, record.tool_results = history.turn, list(history.results)
        raw = extract_script(request.headers.get(SCRIPT_HEADER), dialect.user_text(body))
        if raw is None:
            return unscripted(
                words=self.default_words,
                ttft_ms=self.default_ttft_ms,
                tokens_per_s=self.default_tokens_per_s,
            )
        record.tag = script_tag(raw)
        turn: int | None = None
        if isinstance(raw, dict) and "turns" in raw:  # a multi-turn script: pick the turn
            turn = history.turn
            raw = select_turn(raw, turn, dialect.check)
            record.tag = script_tag(raw)
        script = parse_script(raw)
        assert isinstance(raw, dict)  # noqa: S101 - parse_script accepted it
        dialect.check(raw)
        check_streaming(raw, stream=stream)
        if turn is not None:
            script = with_turn_ids(script, dialect.call_id_prefix, turn)
        if script.expect_tool_results is not None:
            check_expectations(script.expect_tool_results, history.results)
        if script.fail_first is not None and script.tag is not None:
            seen = self._failures[script.tag] = self._failures.get(script.tag, 0) + 1
            if seen > script.fail_first:
                script = without_failure(script)
        record.fault = failure_of(script)
        return script

    # --- writing -----------------------------------------------------------------------

    async def _stream(
        self, request: web.Request, dialect: Dialect, record: RequestRecord, stream: _Stream
    ) -> web.StreamResponse:
        headers = {"Content-Type": dialect.content_type, _REQUEST_ID_HEADER: record.id}
        if dialect.content_type.startswith("text/event-stream"):
            headers["Cache-Control"] = "no-cache"
        response = web.StreamResponse(headers=headers)
        plan, origin = stream.plan, stream.origin
        self.open_connections += 1
        try:
            await self.pacer.wait_until(origin)  # headers_delay_ms: nothing at all before
            await response.prepare(request)
            script = stream.script
            writer = Writer(self.pacer, request, response, origin, partial(_sent, record))
            if script.drip_bytes_per_s is not None:
                await writer.drip(plan.events, script.drip_bytes_per_s)
            else:
                batched = script.tokens_per_s == 0
                await writer.events(plan.events, batched=batched, split=script.split_writes)
            if plan.close_at is not None:
                await self.pacer.wait_until(origin + plan.close_at)
                record.completed_at = time.monotonic()
                close_abruptly(request)
                return response
            await response.write_eof()
            record.completed_at = time.monotonic()
        except ConnectionError:
            # The transport was already closing when we wrote: the same client departure,
            # seen by the writer before aiohttp cancelled us.
            self._mark_disconnected(record)
        finally:
            self.open_connections -= 1
        return response

    def _whole(
        self, record: RequestRecord, status: int, data: bytes, extra: dict[str, str] | None = None
    ) -> web.Response:
        """A whole JSON answer: an error, a `json_error`, or a non-streaming completion."""
        record.status = status
        record.first_byte_at = record.completed_at = time.monotonic()
        headers = {"Content-Type": "application/json", _REQUEST_ID_HEADER: record.id}
        return web.Response(status=status, body=data, headers={**headers, **(extra or {})})


_INVALID: Final = "invalid_request_error"


@dataclass(frozen=True, slots=True)
class _Stream:
    """A planned stream: its script, its plan, and the loop time its offsets count from."""

    script: Script
    plan: Plan
    origin: float


def _sent(record: RequestRecord, count: int) -> None:
    record.chunks_sent += count
    if record.first_byte_at is None:
        record.first_byte_at = time.monotonic()


def _retry_after(script: Script) -> dict[str, str]:
    if script.status is None or script.retry_after is None:
        return {}
    seconds = script.retry_after
    return {"Retry-After": str(int(seconds)) if seconds.is_integer() else repr(seconds)}


def _query_text(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
