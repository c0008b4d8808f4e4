"""Server-side tools of the agent loop: each call run at most once, over HTTP or a model.

Owns what running a `[tools.NAME]` call means (PROTOCOL.md §8.5): the ledger first (the
store's `tool_claim`: a call already running or done anywhere is never run again), then the
call, then its outcome recorded (`tool_done`), so a retried turn, a resumed client, or a
second node asking for the same call gets the recorded result instead of a second run.

- Kind `http`: the arguments POSTed as JSON to the tool's URL with its headers, the call's
  id in `x-wsgate-call-id` and `Idempotency-Key: <ledger key>` (so the tool itself can
  deduplicate a call the ledger could not: one whose node died mid-call), within
  `timeout_s` (waiting for a concurrency slot included), the answer read up to
  `max_response_bytes` and parsed as JSON.
- Kind `model`: a configured model alias called with the tool's prompt (the arguments
  filled in), its streamed answer read to the end here and never shown on the user's
  stream; its result is the answer's text. Its log lines carry `internal_stream_id` (and
  the user's `message_id`), never the user's `stream_id`: it runs in a context of its own.

Every failure is an outcome, not an exception: `ToolError` with a code the model reads
(`tool_timeout`, `tool_failed`, `tool_invalid_response`, `tool_response_too_large`,
`tool_unavailable`, `tool_bad_arguments`, `tool_outcome_unknown`). A cancel (the stream's
task cancelled) closes the tool's HTTP connection or provider call at once; its ledger
record stays `running`, so the call is not repeated.

A node that dies after the tool ran and before `tool_done` leaves `running <node>` for
`run_ttl_s`: whoever asks for that call meanwhile gets `tool_outcome_unknown` (the tool may
or may not have acted), never a second run. Only the tool, by the `Idempotency-Key`, can
tell; the ledger promises at most once, and exactly once when no node dies mid-call.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from wsgate.core import events as ev
from wsgate.core.agent import MAX_RESULT_DEPTH, ToolCall, nests_deeper
from wsgate.core.errors import StoreUnavailable, WsgateError
from wsgate.core.frames import ChatRequest, Message, StartOptions, ToolError
from wsgate.core.store import Store
from wsgate.log import bind, get_logger, unbind
from wsgate.upstream.client import UpstreamClient

log = get_logger("wsgate.tools")

Outcome = tuple[Any, ToolError | None]

LEDGER_RESULT_BYTES = 16 * 1024
"""A result up to this size is kept in the ledger for whoever asks again; a larger one is
recorded as done without it (the ledger stays small: it is asked again only rarely)."""


@dataclass(frozen=True, slots=True)
class HttpTool:
    """A tool of kind `http`, its headers resolved."""

    url: str
    headers: Mapping[str, str] = field(repr=False)  # secrets
    timeout: float
    max_concurrency: int
    max_response_bytes: int


@dataclass(frozen=True, slots=True)
class ModelTool:
    """A tool of kind `model`: a model alias and its prompt template."""

    model: str
    prompt: str
    max_tokens: int | None
    timeout: float
    max_concurrency: int
    max_response_bytes: int


@dataclass(slots=True)
class _Slot:
    spec: HttpTool | ModelTool
    gate: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.gate = asyncio.Semaphore(self.spec.max_concurrency)


class ToolRunner:
    """Runs the configured tools' calls, each once (the ledger in `store`)."""

    def __init__(
        self,
        tools: Mapping[str, HttpTool | ModelTool],
        store: Store,
        upstream: UpstreamClient,
        on_nested: Callable[[str], None] | None = None,
    ) -> None:
        self._slots = {name: _Slot(spec) for name, spec in tools.items()}
        self._store = store
        self._upstream = upstream
        self._on_nested = on_nested  # counts each nested model call by outcome (/stats)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP pool the `http` tools share."""
        if any(isinstance(slot.spec, HttpTool) for slot in self._slots.values()):
            # No redirects (a tool's headers carry its secrets; a 3xx is a failure) and no
            # decompression (the size cap is on the bytes that arrive: no expansion).
            # No cookies either: one session serves every principal's calls.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None),
                raise_for_status=False,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )

    async def close(self) -> None:
        """Close the pool (calls in flight end with their streams)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self, message_id: str, call: ToolCall) -> Outcome:
        """Run `call` of `message_id` once: its content, or why it has none."""
        key = f"{message_id}:{call.turn}:{call.call_id}"
        slot = self._slots.get(call.name)
        if slot is None:  # a stream names only configured tools (the session checks)
            return None, ToolError("tool_unavailable", f"no tool {call.name!r} is configured")
        try:
            held = await self._store.tool_claim(key)
        except StoreUnavailable:
            log.warning("tool_ledger_unavailable", tool=call.name, call_id=call.call_id)
            return None, ToolError("tool_unavailable", "the tool ledger is unavailable; not run")
        if held is not None:
            return _recorded(held, call)
        try:
            outcome = await self._call(slot, message_id, key, call)
        except Exception:  # a bug here must not end the stream nor leave siblings running
            log.exception("tool_crashed", tool=call.name, call_id=call.call_id)
            outcome = None, ToolError("tool_failed", "the tool call failed inside the gateway")
        content, error = outcome
        record = {"error": msgspec.to_builtins(error)} if error else {"content": content}
        encoded = msgspec.json.encode(record)
        if len(encoded) > LEDGER_RESULT_BYTES:
            encoded = b'{"kept":false}'
        try:
            await self._store.tool_done(key, encoded)
        except StoreUnavailable:  # the result still goes to the model; a re-ask finds `running`
            log.warning("tool_result_unrecorded", tool=call.name, call_id=call.call_id)
        return outcome

    async def _call(self, slot: _Slot, message_id: str, key: str, call: ToolCall) -> Outcome:
        spec = slot.spec
        internal = None if isinstance(spec, HttpTool) else f"int_{secrets.token_urlsafe(9)}"
        try:
            async with asyncio.timeout(spec.timeout), slot.gate:
                if isinstance(spec, HttpTool):
                    outcome = await self._http(spec, key, call)
                else:
                    assert internal is not None  # noqa: S101 - a model tool's id, above
                    outcome = await self._nested(spec, message_id, internal, call)
        except TimeoutError:
            message = f"no answer within {spec.timeout:g} s (the tool may have acted)"
            outcome = None, ToolError("tool_timeout", message)
        error = outcome[1]
        if internal is not None and self._on_nested is not None:
            self._on_nested("ok" if error is None else error.code)
        log.info(
            "tool_called",
            tool=call.name,
            call_id=call.call_id,
            turn=call.turn,
            nested_call=internal,  # the nested call's internal_stream_id (its own lines')
            outcome="ok" if error is None else error.code,
        )
        return outcome

    async def _http(self, spec: HttpTool, key: str, call: ToolCall) -> Outcome:
        assert self._session is not None  # noqa: S101 - started with an http tool
        headers = {
            **spec.headers,
            "content-type": "application/json",
            # Call ids come from the provider: percent-encoded, so no byte can break a header.
            "x-wsgate-call-id": urllib.parse.quote(call.call_id, safe=""),
            "idempotency-key": urllib.parse.quote(key, safe=":"),
            "accept-encoding": "identity",
        }
        body = msgspec.json.encode(call.arguments)
        try:
            post = self._session.post(spec.url, data=body, headers=headers, allow_redirects=False)
            async with post as response:
                if response.status >= 300:
                    message = f"the tool answered HTTP {response.status}"
                    return None, ToolError("tool_failed", message)
                data = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > spec.max_response_bytes:
                        cap = spec.max_response_bytes
                        message = f"the tool's answer passed {cap} bytes"
                        return None, ToolError("tool_response_too_large", message)
        except aiohttp.ClientError as exc:
            message = f"the tool could not be reached ({type(exc).__name__})"
            return None, ToolError("tool_unavailable", message)
        try:
            content = msgspec.json.decode(bytes(data))
        except (msgspec.DecodeError, RecursionError):
            return None, ToolError("tool_invalid_response", "the tool's answer is not JSON")
        if nests_deeper(content, MAX_RESULT_DEPTH):
            message = f"the tool's answer nests deeper than {MAX_RESULT_DEPTH} levels"
            return None, ToolError("tool_invalid_response", message)
        return content, None

    async def _nested(
        self, spec: ModelTool, message_id: str, internal: str, call: ToolCall
    ) -> Outcome:
        """The model call, in a context of its own: its logs name the internal id only."""
        context = contextvars.copy_context()
        context.run(unbind, "stream_id")
        context.run(bind, internal_stream_id=internal, message_id=message_id, call_id=call.call_id)
        task = asyncio.get_running_loop().create_task(
            self._model_call(spec, internal, call), context=context
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()  # the stream was cancelled: its nested call is closed too
            raise

    async def _model_call(self, spec: ModelTool, internal: str, call: ToolCall) -> Outcome:
        try:
            prompt = spec.prompt.format_map(call.arguments)
        except Exception as exc:
            message = f"the prompt cannot be filled ({type(exc).__name__})"
            return None, ToolError("tool_bad_arguments", message)
        request = ChatRequest(
            model=spec.model,
            messages=[Message(role="user", content=prompt)],
            max_tokens=spec.max_tokens,
        )
        log.info("nested_call_started", tool=call.name, model=spec.model)
        try:
            target = self._upstream.resolve(request, StartOptions())
            sink = _Collect(target.parser(), spec.max_response_bytes)
            async with self._upstream.open(request, target) as body:
                await body.run(sink)
            if not sink.done:
                sink.items(sink.parser.eof())
        except WsgateError as exc:
            log.info("nested_call_failed", code=exc.code)
            return None, ToolError("tool_failed", f"the model failed: {exc.code}")
        if sink.error is not None:
            log.info("nested_call_failed", code=sink.error.code)
            return None, sink.error
        text = "".join(sink.text)
        log.info("nested_call_finished", internal_stream_id=internal, chars=len(text))
        return text, None


class _Collect:
    """A nested call's body sink: its answer text, never a frame."""

    __slots__ = ("done", "error", "max_bytes", "parser", "size", "text")

    def __init__(self, parser: Any, max_bytes: int) -> None:
        self.parser = parser
        self.max_bytes = max_bytes
        self.text: list[str] = []
        self.size = 0
        self.done = False
        self.error: ToolError | None = None

    def data(self, chunk: bytes) -> bool:
        self.items(self.parser.feed(chunk))
        return self.done

    def items(self, items: list[Any]) -> None:
        for item in items:
            if isinstance(item, WsgateError):
                self.error = ToolError("tool_failed", f"the model failed: {item.code}")
                self.done = True
            elif isinstance(item, ev.TextDelta):
                self.size += len(item.text.encode())
                if self.size > self.max_bytes:
                    message = f"the model's answer passed {self.max_bytes} bytes"
                    self.error = ToolError("tool_response_too_large", message)
                    self.done = True
                self.text.append(item.text)
            elif isinstance(item, ev.Finish):
                self.done = True
            if self.done:
                return


def _recorded(held: bytes, call: ToolCall) -> Outcome:
    """What the ledger holds for a call asked again: its result, or an unknown outcome."""
    state, _, record = held.partition(b" ")
    if state == b"done":
        try:
            kept = msgspec.json.decode(record)
            if isinstance(kept, dict) and "error" in kept:
                log.info("tool_result_from_ledger", tool=call.name, call_id=call.call_id)
                return None, msgspec.convert(kept["error"], ToolError)
            if isinstance(kept, dict) and "content" in kept:
                log.info("tool_result_from_ledger", tool=call.name, call_id=call.call_id)
                return kept["content"], None
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        message = "the call ran before and its result was not kept; it is not run twice"
        log.warning("tool_result_not_kept", tool=call.name, call_id=call.call_id)
        return None, ToolError("tool_outcome_unknown", message)
    log.warning("tool_outcome_unknown", tool=call.name, call_id=call.call_id, record=state)
    message = "the call was started before and its outcome is unknown; it is not run twice"
    return None, ToolError("tool_outcome_unknown", message)
