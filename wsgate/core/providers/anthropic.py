"""Anthropic Messages stream translator: SSE events in, neutral events out.

Owns the meaning of Anthropic's `POST /v1/messages` streaming response (`message_start`,
`content_block_start|delta|stop`, `message_delta`, `message_stop`, `ping`, `error`). It does
no I/O and does not decode SSE (see `wsgate.core.sse`); the request body is built by
`wsgate.core.providers.anthropic_request`.

Rules:
1. The event's `type` in its JSON data decides (the SSE event name repeats it), except
   that an event named `ping` is skipped unread and one named `error` is an error even if
   its data is not JSON (as the SDK reads them). Types we do not know are ignored
   (Anthropic adds new ones); so is everything after the end.
2. `message_start` emits `RoleDelta("assistant")` once. `text_delta` is `TextDelta`,
   `thinking_delta` is `ReasoningDelta`, each through its own `SurrogateJoiner`, flushed
   at every `content_block_stop` (a pair never spans blocks). `signature_delta`,
   `citations_delta`, `redacted_thinking` blocks and every server-side tool block
   (`server_tool_use`, `web_search_tool_result`, ...) are not the client's: ignored.
3. A `tool_use` block is one call in the `ToolCallAccumulator`, reported with its position
   among the turn's tool calls (0, 1, ...; the content-block index also counts text and
   thinking blocks, so it is not what other providers call a tool call's index): started
   by `content_block_start` (id, name), fed by `input_json_delta.partial_json`, ended at
   once by its `content_block_stop`. A non-empty `input` in the start event counts only
   when no delta follows (as the SDK accumulates).
4. Usage is cumulative: `message_start`'s counts, overwritten field by field by each
   `message_delta`. Input tokens are `input_tokens + cache_creation_input_tokens +
   cache_read_input_tokens` (Anthropic's total; OpenAI's prompt tokens include the cache).
5. `message_stop` ends the turn: flushed text, open tool calls ended in index order, one
   `Usage`, then `Finish`. A body that ends without `message_stop` is truncated:
   `UpstreamProtocolError`, never a finish, even after a stop reason.
6. Stop reasons (`raw_finish_reason` keeps the provider's word). `pause_turn` means a
   server tool's long turn was paused for the caller to resend: not a completed answer,
   and wsgate cannot resend server-tool blocks, so it is `error`:

   | Anthropic `stop_reason`                       | finish                              |
   |-----------------------------------------------|-------------------------------------|
   | `end_turn`, `stop_sequence`                   | `stop`                              |
   | `max_tokens`, `model_context_window_exceeded` | `length`                            |
   | `tool_use`                                    | `tool_calls`                        |
   | `refusal`                                     | `content_filter`                    |
   | `pause_turn`                                  | `error`                             |
   | any other                                     | `error`                             |
   | none before `message_stop`                    | `tool_calls` if calls, else `stop`  |

7. An `error` event raises by its `error.type`: `overloaded_error`, `api_error`,
   `timeout_error` and unknown types -> `UpstreamError`; `rate_limit_error` ->
   `UpstreamRateLimited`; `invalid_request_error`, `authentication_error`,
   `billing_error`, `permission_error`, `not_found_error`, `request_too_large` ->
   `UpstreamRejected`. The message names only that type: provider text never reaches the
   wire.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from wsgate.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from wsgate.core.events import (
    Finish,
    FinishReason,
    RoleDelta,
    UpstreamEvent,
    Usage,
)
from wsgate.core.jsonio import loads
from wsgate.core.payloads import (
    DeltaText,
    error_labels,
    error_message,
    json_object,
    string,
    tool_events,
)
from wsgate.core.providers.anthropic_request import anthropic_body
from wsgate.core.providers.base import ProviderHTTP, ProviderKind, translating
from wsgate.core.sse import SSEDecoder
from wsgate.core.toolcalls import ToolCallAccumulator, ToolCallFragment

if TYPE_CHECKING:
    from collections.abc import Callable

    from wsgate.core.sse import SSEEvent

_REASONS: Final[dict[str, FinishReason]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "error",
}
_ERRORS: Final[dict[str, type[UpstreamError]]] = {
    "overloaded_error": UpstreamError,
    "api_error": UpstreamError,
    "timeout_error": UpstreamError,
    "rate_limit_error": UpstreamRateLimited,
    "invalid_request_error": UpstreamRejected,
    "authentication_error": UpstreamRejected,
    "billing_error": UpstreamRejected,
    "permission_error": UpstreamRejected,
    "not_found_error": UpstreamRejected,
    "request_too_large": UpstreamRejected,
}
_USAGE_KEYS: Final = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)


class AnthropicTranslator:
    """Feed the SSE events of one Anthropic Messages stream; collect upstream events."""

    __slots__ = (
        "_blocks",
        "_calls",
        "_calls_ended",
        "_counts",
        "_delta",
        "_done",
        "_reason",
        "_role_sent",
        "_start_input",
        "_tools",
    )

    def __init__(self, *, tool_snapshots: bool = False) -> None:
        self._done = False
        self._role_sent = False
        self._reason: str | None = None
        self._counts: dict[str, int] = {}
        self._blocks: dict[int, str] = {}  # open content blocks: index -> block type
        self._calls: dict[int, int] = {}  # open tool_use blocks: block index -> call ordinal
        self._calls_ended = 0
        self._start_input: dict[int, str] = {}  # a tool_use start's non-empty input, as JSON
        self._delta = DeltaText()
        self._tools = ToolCallAccumulator(snapshots=tool_snapshots)

    @property
    def done(self) -> bool:
        """True once the stream ended (`message_stop`, `finish()`, or an `error` event)."""
        return self._done

    @property
    def raw_finish_reason(self) -> str | None:
        """The provider's own stop reason, before normalization (for logs)."""
        return self._reason

    def feed(self, event: SSEEvent) -> list[UpstreamEvent]:
        """Translate one SSE event."""
        if self._done or event.event == "ping":
            return []
        if event.event == "error":
            self._done = True
            try:
                payload = loads(event.data)
            except ValueError:
                payload = None
            raise _error(payload.get("error") if isinstance(payload, dict) else None)
        payload = json_object(event.data)
        kind = payload.get("type")
        if kind == "error":
            self._done = True
            raise _error(payload.get("error"))
        out: list[UpstreamEvent] = []
        self._dispatch(kind, payload, out)
        return out

    def finish(self) -> list[UpstreamEvent]:
        """End of the upstream body: nothing if `message_stop` came, else raise."""
        if self._done:
            return []
        self._done = True
        raise UpstreamProtocolError("upstream stream ended before it finished")

    def _dispatch(self, kind: Any, payload: dict[str, Any], out: list[UpstreamEvent]) -> None:
        if kind == "message_start":
            self._message_start(payload, out)
        elif kind == "content_block_start":
            self._block_start(payload, out)
        elif kind == "content_block_delta":
            self._block_delta(payload, out)
        elif kind == "content_block_stop":
            self._block_stop(payload, out)
        elif kind == "message_delta":
            self._message_delta(payload)
        elif kind == "message_stop":
            self._message_stop(out)
        # Any other type (a new Anthropic event) is ignored: rule 1.

    def _message_start(self, payload: dict[str, Any], out: list[UpstreamEvent]) -> None:
        message = payload.get("message")
        if isinstance(message, dict):
            self._usage(message.get("usage"))
        if not self._role_sent:
            self._role_sent = True
            out.append(RoleDelta("assistant"))

    def _block_start(self, payload: dict[str, Any], out: list[UpstreamEvent]) -> None:
        index = _index(payload)
        block = _object(payload, "content_block")
        kind = string(block.get("type", ""))
        self._blocks[index] = kind
        if kind == "text":
            self._push(self._delta.text, block.get("text"), out)
        elif kind == "thinking":
            self._push(self._delta.reasoning, block.get("thinking"), out)
        elif kind == "tool_use":
            call_id, name, given = block.get("id"), block.get("name"), block.get("input")
            ordinal = self._calls[index] = len(self._calls) + self._calls_ended
            piece = ToolCallFragment(
                ordinal, string(call_id) if call_id else None, string(name) if name else None, ""
            )
            out.extend(tool_events(self._tools.feed(piece)))
            if isinstance(given, dict) and given:
                self._start_input[index] = json.dumps(given, ensure_ascii=False)

    def _block_delta(self, payload: dict[str, Any], out: list[UpstreamEvent]) -> None:
        index = _index(payload)
        delta = _object(payload, "delta")
        kind = delta.get("type")
        if kind == "text_delta":
            self._push(self._delta.text, delta.get("text"), out)
        elif kind == "thinking_delta":
            self._push(self._delta.reasoning, delta.get("thinking"), out)
        elif kind == "input_json_delta" and self._blocks.get(index) == "tool_use":
            partial = delta.get("partial_json")
            if partial:
                self._start_input.pop(index, None)  # the deltas carry the whole input
                self._fragment(self._calls[index], string(partial), out)

    def _block_stop(self, payload: dict[str, Any], out: list[UpstreamEvent]) -> None:
        index = _index(payload)
        self._flush(out)
        if self._blocks.pop(index, None) == "tool_use":
            ordinal = self._calls.pop(index)
            self._calls_ended += 1
            given = self._start_input.pop(index, None)
            if given is not None:
                self._fragment(ordinal, given, out)
            out.extend(tool_events(self._tools.end_call(index=ordinal)))

    def _message_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason") is not None:
            self._reason = string(delta["stop_reason"])
        self._usage(payload.get("usage"))

    def _usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            for key in _USAGE_KEYS:
                value = usage.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    self._counts[key] = value  # cumulative: the latest count wins

    @staticmethod
    def _push(
        add: Callable[[str, list[UpstreamEvent]], None], value: Any, out: list[UpstreamEvent]
    ) -> None:
        if value:
            add(string(value), out)

    def _fragment(self, index: int, arguments: str, out: list[UpstreamEvent]) -> None:
        out.extend(tool_events(self._tools.feed(ToolCallFragment(index, None, None, arguments))))

    def _flush(self, out: list[UpstreamEvent]) -> None:
        self._delta.flush_text(out)
        self._delta.flush_reasoning(out)

    def _message_stop(self, out: list[UpstreamEvent]) -> None:
        self._flush(out)
        out.extend(tool_events(self._tools.finish()))
        if self._counts:
            inputs = sum(self._counts.get(key, 0) for key in _USAGE_KEYS[:3])
            out.append(Usage(inputs, self._counts.get("output_tokens", 0)))
        self._done = True
        if self._reason is None:
            reason: FinishReason = "tool_calls" if self._tools.has_calls else "stop"
        else:
            reason = _REASONS.get(self._reason, "error")
        out.append(Finish(reason))


def _index(payload: dict[str, Any]) -> int:
    index = payload.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise UpstreamProtocolError("upstream event has no content block index")
    return index


def _object(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if not isinstance(value, dict):
        raise UpstreamProtocolError(f"upstream event has a malformed {key}")
    return value


def _error(error: Any) -> UpstreamError:
    labels = error_labels(error, ("type",))
    kind = _ERRORS.get(labels[0], UpstreamError) if labels else UpstreamError
    return kind(error_message(labels))


KIND = ProviderKind(
    "anthropic",
    http=ProviderHTTP(
        "/messages",
        "text/event-stream",
        key_header="x-api-key",
        headers=(("anthropic-version", "2023-06-01"),),
    ),
    body=anthropic_body,
    parser=translating(SSEDecoder, AnthropicTranslator),
)
"""Anthropic's Messages API: SSE."""
