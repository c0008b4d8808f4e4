"""Ollama `/api/chat` stream translator: NDJSON lines in, neutral events out.

Owns the meaning of Ollama's native chat stream (one JSON object per line,
https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion): text,
thinking, whole tool calls, the `done` line with its `done_reason` and token counts, and
in-stream `{"error": ...}` lines. It does no I/O and does not split lines (see
`wsgate.core.ndjson`); the request body is built by `wsgate.core.providers.ollama_request`.
Only Ollama's own format is read: OpenAI-style fields (`choices`, `finish_reason`) that an
OpenAI-compatible server would send are not looked for (use the `openai_chat` kind there).

Rules:
1. Each line is one JSON object (`chunk`); malformed JSON, including a last line cut short
   at the end of the body, is `UpstreamProtocolError`. Lines after the `done` line are
   ignored. `RoleDelta` once, from the first `message.role`.
2. `message.thinking` is `ReasoningDelta` and `message.content` is `TextDelta`, each
   through its own `SurrogateJoiner`.
3. Tool calls arrive whole (`message.tool_calls[].function.name` and `arguments`, an object
   or sometimes a JSON string), each as a new call of one `ToolCallAccumulator`: a start,
   one arguments chunk (compact JSON) and, at the end of the turn, exactly one end (or
   `ToolCallFailed` when the arguments do not parse or the name is missing). Several calls
   in one turn are parallel calls; a call's `index` is its arrival position (Ollama's
   `function.index` is missing from older servers and not needed); its id is Ollama's `id`
   when it sent a fresh one, else `call_<index>`.
4. The `done: true` line ends the turn: its message is read first, then: flushed text and
   reasoning, tool-call ends (index order), one `Usage(prompt_eval_count, eval_count)` if
   it holds either count (Ollama omits a zero count), then `Finish`. A body that ends
   without a `done: true` line is truncated: `UpstreamProtocolError`, never a finish.
5. Finish reasons (`done_reason`; `raw_finish_reason` keeps the provider's word):

   | done_reason             | finish                                     |
   |-------------------------|--------------------------------------------|
   | `stop`                  | `tool_calls` if calls were made, else `stop` |
   | absent or empty         | as `stop` (older servers send no reason)   |
   | `length`                | `length`                                   |
   | `load`, `unload`        | `error` (the model was (un)loaded, no turn was generated) |
   | anything else           | `error`                                    |

6. A line with a non-null `error` raises `UpstreamError` (`UpstreamRateLimited` for a
   rate-limit code), naming only short identifiers from an error object: Ollama's error is
   free text, which never reaches the wire.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

from wsgate.core.errors import UpstreamProtocolError
from wsgate.core.events import (
    Finish,
    FinishReason,
    RoleDelta,
    UpstreamEvent,
    Usage,
)
from wsgate.core.ndjson import NDJSONDecoder
from wsgate.core.payloads import DeltaText, error_from, json_object, string, tool_events
from wsgate.core.providers.base import ProviderHTTP, ProviderKind, translating
from wsgate.core.providers.ollama_request import ollama_body
from wsgate.core.toolcalls import ToolCallAccumulator, ToolCallFragment

_REASONS: Final[dict[str, FinishReason]] = {
    "stop": "stop",
    "length": "length",
    "load": "error",
    "unload": "error",
}


class OllamaTranslator:
    """Feed the NDJSON lines of one Ollama `/api/chat` stream; collect upstream events."""

    __slots__ = (
        "_calls",
        "_delta",
        "_done",
        "_ids",
        "_reason",
        "_role_sent",
        "_tools",
    )

    def __init__(self, *, tool_snapshots: bool = False) -> None:
        self._done = False
        self._role_sent = False
        self._reason: str | None = None
        self._calls = 0  # tool calls seen: the next call's index
        self._ids: set[str] = set()  # Ollama's call ids already used
        self._delta = DeltaText()
        self._tools = ToolCallAccumulator(snapshots=tool_snapshots)

    @property
    def done(self) -> bool:
        """True once the stream ended (the `done` line, `finish()`, or an error line)."""
        return self._done

    @property
    def raw_finish_reason(self) -> str | None:
        """Ollama's own `done_reason`, before normalization (for logs)."""
        return self._reason

    def feed(self, line: str) -> list[UpstreamEvent]:
        """Translate one NDJSON line."""
        if self._done:
            return []
        chunk = json_object(line)
        error = chunk.get("error")
        if error is not None:
            self._done = True
            raise error_from(error)
        out: list[UpstreamEvent] = []
        message = chunk.get("message")
        if message is not None:
            if not isinstance(message, dict):
                raise UpstreamProtocolError("upstream chunk has a malformed message")
            self._message(message, out)
        if chunk.get("done") is True:
            self._end(chunk, out)
        return out

    def finish(self) -> list[UpstreamEvent]:
        """End of the body: nothing if the `done` line came, else raise (truncated)."""
        if self._done:
            return []
        self._done = True
        raise UpstreamProtocolError("upstream stream ended before it finished")

    def _message(self, message: dict[str, Any], out: list[UpstreamEvent]) -> None:
        role = message.get("role")
        if role and not self._role_sent:
            self._role_sent = True
            out.append(RoleDelta(string(role)))
        thinking = message.get("thinking")
        if thinking:
            self._delta.reasoning(string(thinking), out)
        content = message.get("content")
        if content:
            self._delta.text(string(content), out)
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise UpstreamProtocolError("upstream chunk has malformed tool_calls")
            for call in calls:
                self._call(call, out)

    def _call(self, call: Any, out: list[UpstreamEvent]) -> None:
        if not isinstance(call, dict):
            raise UpstreamProtocolError("upstream chunk has malformed tool_calls")
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        call_id = call.get("id")
        if call_id is not None:
            call_id = string(call_id)
            if not call_id or call_id in self._ids:
                call_id = None  # a repeated id would make two calls one
            else:
                self._ids.add(call_id)
        piece = ToolCallFragment(
            index=self._calls,  # a fresh index: always a new call (rule 3)
            call_id=call_id,
            name=string(name) if name else None,
            arguments=_arguments(function.get("arguments")),
        )
        self._calls += 1
        out.extend(tool_events(self._tools.feed(piece)))

    def _end(self, chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        reason = chunk.get("done_reason")
        self._reason = string(reason) if reason is not None else None
        self._delta.flush_reasoning(out)
        self._delta.flush_text(out)
        out.extend(tool_events(self._tools.finish()))
        if "prompt_eval_count" in chunk or "eval_count" in chunk:
            out.append(Usage(_count(chunk, "prompt_eval_count"), _count(chunk, "eval_count")))
        self._done = True
        out.append(Finish(self._finish_reason()))

    def _finish_reason(self) -> FinishReason:
        if not self._reason or self._reason == "stop":
            return "tool_calls" if self._tools.has_calls else "stop"
        return _REASONS.get(self._reason, "error")


def _arguments(value: Any) -> str:
    """A call's arguments as JSON text: a string as sent, a value as compact JSON.

    No arguments at all are "{}", so every call still gets its one arguments chunk.
    """
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # lone surrogates from escapes (orjson refuses them)
        pass
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise UpstreamProtocolError("upstream tool call arguments nest too deeply") from None


def _count(chunk: dict[str, Any], key: str) -> int:
    value = chunk.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


KIND = ProviderKind(
    "ollama",
    http=ProviderHTTP("/api/chat", "application/x-ndjson"),
    body=ollama_body,
    parser=translating(NDJSONDecoder, OllamaTranslator),
)
"""Ollama's native /api/chat: NDJSON."""
