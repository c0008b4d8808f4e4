"""The mock OpenAI-compatible provider: aiohttp.web routes, pacing, and a record per request.

Owns the HTTP surface (`POST /v1/chat/completions`, `GET /v1/models`, `GET|DELETE
/mock/requests`, `GET /healthz`), the writing of planned SSE events at their due times through
the shared `Pacer`, and the `RequestRecord` that tells tests when each client went away. Runs
with `handler_cancellation=True`, so a client that closes its socket cancels the handler at
once, even while it waits for a token seconds away. What it answers is decided in `script.py`;
this module must not import the gateway, the upstream client or the composition root.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from wsgate.mock.pacer import Pacer
from wsgate.mock.script import (
    SCRIPT_HEADER,
    PlannedEvent,
    Script,
    ScriptError,
    completion_body,
    extract_script,
    parse_script,
    plan_events,
    script_tag,
    unscripted,
)

# Unpaced events are coalesced into writes up to this size: the fastest the mock can go.
_BATCH_BYTES = 16 * 1024
_REQUEST_ID_HEADER = "x-mock-request-id"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# OpenAI's error `type` and `code` per HTTP status, for scripted failures.
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(slots=True)
class RequestRecord:
    """What happened to one `POST /v1/chat/completions`; times are `time.monotonic()`."""

    id: str
    tag: str | None
    model: str
    started_at: float
    first_byte_at: float | None = None
    completed_at: float | None = None
    disconnected_at: float | None = None
    chunks_sent: int = 0
    status: int = 200


def error_body(message: str, *, kind: str, code: str | None, param: str | None = None) -> bytes:
    """Encode an OpenAI-style error object."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return orjson.dumps({"error": error})


class MockProvider:
    """An OpenAI chat-completions server whose every answer is scripted or seeded.

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
        self.pacer = Pacer()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._disconnects: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat),
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
        self.base_url = f"http://{shown}:{self.port}/v1"
        return self.base_url

    async def stop(self) -> None:
        """Cancel in-flight responses, stop serving and stop the pacer. Idempotent."""
        self._stopping = True
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self.pacer.stop()

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

    def _new_record(self) -> tuple[int, RequestRecord]:
        number = next(self._ids)
        record = RequestRecord(id=f"req-{number}", tag=None, model="", started_at=time.monotonic())
        self.records[record.id] = record
        while len(self.records) > self.max_records:
            del self.records[next(iter(self.records))]
        return number, record

    # --- handlers ----------------------------------------------------------------------

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, dumps=_dumps)

    async def _models(self, _request: web.Request) -> web.Response:
        model = {"id": "mock", "object": "model", "created": 0, "owned_by": "wsgate"}
        return web.json_response({"object": "list", "data": [model]}, dumps=_dumps)

    async def _list_records(self, _request: web.Request) -> web.Response:
        return web.json_response(list(self.records.values()), dumps=_dumps)

    async def _clear_records(self, _request: web.Request) -> web.Response:
        self.records.clear()
        return web.json_response({"ok": True}, dumps=_dumps)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        arrived = self.pacer.time()
        number, record = self._new_record()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await self._answer(request, record, number, arrived)
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
        self, request: web.Request, record: RequestRecord, number: int, arrived: float
    ) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            return self._error(record, 400, _bad_request(message))
        model = body.get("model")
        record.model = model if isinstance(model, str) else "mock"
        if not isinstance(body.get("messages"), list):
            return self._error(record, 400, _bad_request("'messages' must be a list", "messages"))
        stream = body.get("stream") is True
        try:
            script = self._script(request, body, record, stream=stream)
        except ScriptError as exc:
            return self._error(record, 400, _bad_request(str(exc), code="mock_bad_script"))
        completion_id, created = f"chatcmpl-mock-{number}", int(time.time())
        if script.status is not None or not stream:
            await self.pacer.wait_until(arrived + script.ttft_ms / 1000)
        if script.status is not None:
            return self._scripted_error(record, script)
        if not stream:
            data = completion_body(
                script,
                body,
                completion_id=completion_id,
                created=created,
                default_words=self.default_words,
            )
            record.first_byte_at = record.completed_at = time.monotonic()
            return web.Response(body=data, headers=_headers(record, "application/json"))
        plan = plan_events(
            script,
            body,
            completion_id=completion_id,
            created=created,
            default_words=self.default_words,
        )
        batched = script.tokens_per_s == 0
        return await self._stream(request, record, plan, arrived, batched=batched)

    def _script(
        self, request: web.Request, body: dict[str, Any], record: RequestRecord, *, stream: bool
    ) -> Script:
        raw = extract_script(request.headers.get(SCRIPT_HEADER), body)
        if raw is None:
            return unscripted(
                words=self.default_words,
                ttft_ms=self.default_ttft_ms,
                tokens_per_s=self.default_tokens_per_s,
            )
        record.tag = script_tag(raw)
        script = parse_script(raw)
        if script.events is not None and not stream:
            raise ScriptError("bad mock script: events need a streaming request")
        return script

    async def _stream(
        self,
        request: web.Request,
        record: RequestRecord,
        plan: list[PlannedEvent],
        arrived: float,
        *,
        batched: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={**_SSE_HEADERS, _REQUEST_ID_HEADER: record.id})
        self.open_connections += 1
        try:
            await response.prepare(request)
            index = 0
            while index < len(plan):
                await self.pacer.wait_until(arrived + plan[index].at_s)
                data, count = _take(plan, index, batched=batched)
                await response.write(data)
                index += count
                record.chunks_sent += count
                if record.first_byte_at is None:
                    record.first_byte_at = time.monotonic()
            await response.write_eof()
            record.completed_at = time.monotonic()
        except ConnectionError:
            # The transport was already closing when we wrote: the same client departure,
            # seen by the writer before aiohttp cancelled us.
            self._mark_disconnected(record)
        finally:
            self.open_connections -= 1
        return response

    def _error(
        self, record: RequestRecord, status: int, data: bytes, extra: dict[str, str] | None = None
    ) -> web.Response:
        record.status = status
        record.first_byte_at = record.completed_at = time.monotonic()
        headers = {**_headers(record, "application/json"), **(extra or {})}
        return web.Response(status=status, body=data, headers=headers)

    def _scripted_error(self, record: RequestRecord, script: Script) -> web.Response:
        status = script.status or 500
        kind, code = _ERROR_KINDS.get(
            status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
        )
        extra: dict[str, str] = {}
        if script.retry_after is not None:
            seconds = script.retry_after
            extra["Retry-After"] = str(int(seconds)) if seconds.is_integer() else repr(seconds)
        data = error_body(f"mock: scripted HTTP {status}", kind=kind, code=code)
        return self._error(record, status, data, extra)


def _take(plan: list[PlannedEvent], index: int, *, batched: bool) -> tuple[bytes, int]:
    """Return one write's bytes: one event when paced, a run of co-due events when not."""
    first = plan[index]
    if not batched:
        return first.data, 1
    parts = [first.data]
    size = len(first.data)
    end = index + 1
    while end < len(plan) and plan[end].at_s == first.at_s and size < _BATCH_BYTES:
        parts.append(plan[end].data)
        size += len(plan[end].data)
        end += 1
    return b"".join(parts), end - index


def _bad_request(message: str, param: str | None = None, code: str | None = None) -> bytes:
    return error_body(message, kind="invalid_request_error", code=code, param=param)


def _headers(record: RequestRecord, content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, _REQUEST_ID_HEADER: record.id}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
