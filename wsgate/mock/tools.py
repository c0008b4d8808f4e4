"""The mock tool backend: the HTTP endpoint a server-side tool of kind `http` calls, with faults.

Owns `POST /tools/{name}` (the call's JSON arguments in, one JSON answer out), the per-call
tool script that picks the answer and the fault (from the query string and the arguments'
`"mock"` key): an echo or a given `result`, `delay_ms`, an HTTP `status`, an invalid JSON
body, a body of exactly `body_bytes` bytes; the count of calls per tool name and per call id
(exactly-once tests assert it), one `ToolRecord` per call, and `GET|DELETE /mock/tools`.
`protocol/MOCK.md` ("Tool backend") is its documentation; keep them equal. Served by the mock
provider's app (`MockProvider.tools`), or by any aiohttp app from `routes()` (run with
`handler_cancellation=True`, or a caller that leaves is only seen at the write). It must not
import any other wsgate package, and it decides nothing about the provider's answers.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec
import orjson
from aiohttp import web

from wsgate.mock.script import ScriptError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

CALL_ID_HEADERS: Final = ("x-wsgate-call-id", "idempotency-key")
"""Where a call's id is read, first match wins."""
TOOL_CALL_HEADER: Final = "x-mock-tool-call"
INVALID_JSON_BODY: Final = b'{"result": "mock tool: invalid JSON'
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
_NOT_JSON: Final = "mock tool: the request body is not JSON"


class ToolScript(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How one tool call is answered; every key optional (see `protocol/MOCK.md`)."""

    delay_ms: Annotated[float, msgspec.Meta(ge=0, le=3_600_000)] = 0.0
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] | None = None
    invalid_json: bool = False
    body_bytes: Annotated[int, msgspec.Meta(ge=2, le=MAX_BODY_BYTES)] | None = None
    result: Any = msgspec.UNSET


# The faults a script can inject; at most one per call, and none with a `result`.
_FAULT_KEYS: Final = ("status", "invalid_json", "body_bytes")


def tool_script(query: Mapping[str, str], arguments: object) -> ToolScript:
    """The script of one call: query parameters, then the arguments' `"mock"` object over them.

    A query value is read as JSON when it parses (`500`, `true`, `{"a":1}`), else as the
    string itself (`result=hello`).
    """
    raw: dict[str, Any] = {key: _query_value(value) for key, value in query.items()}
    if isinstance(arguments, dict) and "mock" in arguments:
        given = arguments["mock"]
        if not isinstance(given, dict):
            raise ScriptError("bad mock tool script: the arguments' mock must be an object")
        raw.update(given)
    try:
        script = msgspec.convert(raw, ToolScript)
    except msgspec.ValidationError as exc:
        raise ScriptError(f"bad mock tool script: {exc}") from None
    chosen = [key for key in _FAULT_KEYS if _given(raw.get(key))]
    chosen += ["result"] if "result" in raw else []  # a given result may be null or false
    if len(chosen) > 1:
        raise ScriptError(f"bad mock tool script: {' and '.join(chosen)} exclude each other")
    return script


def _query_value(value: str) -> object:
    try:
        decoded: object = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    return decoded


def _given(value: object) -> bool:
    return value is not msgspec.UNSET and value is not False and value is not None


def fault_of(script: ToolScript) -> str | None:
    """The fault a tool script injects (a `_FAULT_KEYS` name), or None."""
    return next((key for key in _FAULT_KEYS if _given(getattr(script, key))), None)


@dataclass(slots=True)
class ToolRecord:
    """One `POST /tools/{name}`; times are `time.monotonic()`."""

    id: str
    name: str
    call_id: str | None
    count: int
    started_at: float
    arguments: Any = None
    fault: str | None = None
    delay_ms: float = 0.0
    status: int = 200
    bytes: int = 0
    completed_at: float | None = None
    disconnected_at: float | None = None


class ToolBackend:
    """Answers tool calls by script, counts them per tool and per call id, records each."""

    def __init__(self, *, max_records: int = 10_000) -> None:
        self.max_records = max_records
        self.records: dict[str, ToolRecord] = {}
        self.by_name: dict[str, int] = {}
        self.by_call_id: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None
        self._stopping = False

    def routes(self) -> list[web.RouteDef]:
        """`POST /tools/{name}`, `GET /mock/tools`, `DELETE /mock/tools`."""
        return [
            web.post("/tools/{name}", self._call),
            web.get("/mock/tools", self._list),
            web.delete("/mock/tools", self._clear),
        ]

    def count(self, name: str | None = None, *, call_id: str | None = None) -> int:
        """Calls of tool `name`, or with `call_id`, since the last reset (one of the two)."""
        if (name is None) == (call_id is None):
            raise ValueError("count takes a tool name or a call_id")
        if name is not None:
            return self.by_name.get(name, 0)
        return self.by_call_id.get(call_id or "", 0)

    def find(self, call_id: str) -> ToolRecord | None:
        """The newest record of a call with this id."""
        return next((r for r in reversed(self.records.values()) if r.call_id == call_id), None)

    def reset(self) -> None:
        """Forget every record and count."""
        self.records.clear()
        self.by_name.clear()
        self.by_call_id.clear()

    async def wait_for(self, predicate: Callable[[ToolBackend], bool], timeout: float) -> None:  # noqa: ASYNC109 - the published test API
        """Wait until `predicate(self)` holds, re-checked at every call's arrival and end."""
        async with asyncio.timeout(timeout):
            while True:
                event = self._changed_event()
                if predicate(self):
                    return
                await event.wait()

    async def stop(self) -> None:
        """Cancel the calls in flight (their records get no `disconnected_at`)."""
        self._stopping = True
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        self._stopping = False

    # --- handlers ----------------------------------------------------------------------

    async def _list(self, _request: web.Request) -> web.Response:
        listed = {
            "by_name": self.by_name,
            "by_call_id": self.by_call_id,
            "calls": list(self.records.values()),
        }
        return web.json_response(listed, dumps=_dumps)

    async def _clear(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True}, dumps=_dumps)

    async def _call(self, request: web.Request) -> web.Response:
        record = self._arrived(request)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            status, body = await self._answer(request, record)
        except asyncio.CancelledError:
            # The caller closed its socket (aiohttp's handler cancellation), e.g. the
            # gateway cancelled the tool call during `delay_ms`; not our own stop().
            if not self._stopping:
                record.disconnected_at = time.monotonic()
                self._notify()
            raise
        finally:
            if task is not None:
                self._tasks.discard(task)
        record.status, record.bytes = status, len(body)
        record.completed_at = time.monotonic()
        self._notify()
        headers = {"Content-Type": "application/json", TOOL_CALL_HEADER: record.id}
        return web.Response(status=status, body=body, headers=headers)

    def _arrived(self, request: web.Request) -> ToolRecord:
        """Count the call and record it: a call counts once it arrives, whatever follows."""
        name = request.match_info["name"]
        call_id = next((v for h in CALL_ID_HEADERS if (v := request.headers.get(h))), None)
        count = self.by_name[name] = self.by_name.get(name, 0) + 1
        if call_id is not None:
            count = self.by_call_id[call_id] = self.by_call_id.get(call_id, 0) + 1
        number = next(self._ids)
        record = ToolRecord(f"tool-{number}", name, call_id, count, time.monotonic())
        self.records[record.id] = record
        while len(self.records) > self.max_records:
            del self.records[next(iter(self.records))]
        self._notify()
        return record

    async def _answer(self, request: web.Request, record: ToolRecord) -> tuple[int, bytes]:
        try:
            arguments = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            record.fault = "bad_request"
            return 400, orjson.dumps({"error": _NOT_JSON})
        record.arguments = arguments
        try:
            script = tool_script(request.query, arguments)
        except ScriptError as exc:
            record.fault = "bad_request"
            return 400, orjson.dumps({"error": str(exc)})
        record.fault, record.delay_ms = fault_of(script), script.delay_ms
        if script.delay_ms > 0:
            await asyncio.sleep(script.delay_ms / 1000)
        return _reply(script, record)

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        # Wake every waiter, then give later waiters a fresh, unset event.
        if self._changed is not None:
            self._changed.set()
            self._changed = None


def _reply(script: ToolScript, record: ToolRecord) -> tuple[int, bytes]:
    """The status and body of a call past its delay."""
    if script.status is not None:
        return script.status, orjson.dumps({"error": f"mock tool: scripted HTTP {script.status}"})
    if script.invalid_json:
        return 200, INVALID_JSON_BODY
    if script.body_bytes is not None:
        return 200, b'"' + b"x" * (script.body_bytes - 2) + b'"'
    if script.result is not msgspec.UNSET:
        return 200, orjson.dumps(script.result)
    echo = {
        "tool": record.name,
        "call_id": record.call_id,
        "arguments": record.arguments,
        "count": record.count,
    }
    return 200, orjson.dumps(echo)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
