"""OpenAI Responses API stream translator: SSE events in, neutral events out.

Owns the meaning of `POST /v1/responses` with `stream: true`: the typed events (`type` and a
`sequence_number` in every JSON payload), role, text, refusals, reasoning, function calls,
usage, the end of the turn and in-stream errors. No I/O, no SSE framing
(`wsgate.core.sse`); the request body is built by `wsgate.core.providers.openai_responses_request`.
Shared helpers come from `wsgate.core.payloads`.

Rules:
1. Events are dispatched on the JSON `type` (servers that omit the `event:` line work too).
   `data: [DONE]` (sent by some proxies), the types not named below (`output_text.done`,
   `content_part.*`, annotations, hosted-tool progress, keep-alives...) and everything
   after the end are ignored.
2. `RoleDelta("assistant")` once: at `response.created`/`in_progress` or the first message
   item. Text and refusal deltas are `TextDelta` through one `SurrogateJoiner`; reasoning
   summary and reasoning text deltas are `ReasoningDelta` through another, a blank line
   between two summary parts or reasoning items (they would otherwise run together).
3. A `function_call` item is one call of the `ToolCallAccumulator`, found by `output_index`
   (by item id when a delta has no index). Its wsgate `call_id` is the item's `call_id`; its
   `index` is its rank among the turn's function calls (0, 1...), since `output_index` also
   counts message and reasoning items. `function_call_arguments.done` or `output_item.done`
   ends it, once. Their full `arguments` text is used only when no delta was streamed (a
   server that sends arguments whole): streamed deltas stand, because the client already
   holds them as chunks and `tool_call.end` must agree with those. The API defines the full
   text as the deltas joined, so no second copy is kept to compare.
4. End of the turn: flushed text, open calls ended in index order, `Usage` (when the
   response has `usage`), then `Finish`. `response.completed` is `tool_calls` when the turn
   made a function call, else `stop`; `response.incomplete` follows its reason:

   | provider                                       | wsgate                  |
   |------------------------------------------------|-------------------------|
   | `response.completed`, function calls made      | `tool_calls`            |
   | `response.completed`, no function call         | `stop`                  |
   | `response.incomplete`, `max_output_tokens`     | `length`                |
   | `response.incomplete`, `content_filter`        | `content_filter`        |
   | `response.incomplete`, any other reason / none | `error`                 |
   | body ends without completed/incomplete/failed  | `UpstreamProtocolError` |

5. `response.failed` (`response.error`) and the top-level `error` event (fields at the top
   or under `error`) raise a typed error naming only the provider's short `type`/`code`:

   | `code` / `type` (first matching row)                         | raised                |
   |--------------------------------------------------------------|-----------------------|
   | contains `rate_limit` (`rate_limit_exceeded`)                | `UpstreamRateLimited` |
   | `server_error`, `overloaded`, `api_error`, timeouts          | `UpstreamError`       |
   | `invalid_*`, `image_*`, policy, auth, not found, too large   | `UpstreamRejected`    |
   | anything else, or none                                       | `UpstreamError`       |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final

from wsgate.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from wsgate.core.events import Finish, FinishReason, RoleDelta, Usage
from wsgate.core.payloads import (
    DeltaText,
    error_labels,
    error_message,
    json_object,
    string,
    tool_events,
)
from wsgate.core.providers.base import ProviderHTTP, ProviderKind, translating
from wsgate.core.providers.openai_responses_request import openai_responses_body
from wsgate.core.sse import SSEDecoder
from wsgate.core.toolcalls import ToolCallAccumulator, ToolCallFragment

if TYPE_CHECKING:
    from wsgate.core.events import UpstreamEvent
    from wsgate.core.sse import SSEEvent

_INCOMPLETE: Final[dict[str, FinishReason]] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}
_TRANSIENT: Final = frozenset(
    {"server_error", "overloaded", "overloaded_error", "api_error", "internal_error"}
    | {"service_unavailable", "timeout", "vector_store_timeout"}
)
_REJECTED: Final = frozenset(
    {"invalid_request_error", "context_length_exceeded", "request_too_large"}
    | {"authentication_error", "permission_error", "not_found_error", "model_not_found"}
    | {"insufficient_quota", "bio_policy", "misalignment_policy_violation"}
    | {"content_policy_violation", "data_residency_mismatch", "empty_image_file"}
    | {"failed_to_download_image", "unsupported_image_media_type"}
)
_REJECTED_PREFIXES: Final = ("invalid_", "image_")
_BLANK_LINE: Final = "\n\n"


class OpenAIResponsesTranslator:
    """Feed the SSE events of one OpenAI Responses stream; collect upstream events."""

    __slots__ = (
        "_delta",
        "_done",
        "_ended",
        "_item_index",
        "_ranks",
        "_reason",
        "_reasoning_part",
        "_role_sent",
        "_streamed",
        "_tools",
    )

    def __init__(self, *, tool_snapshots: bool = False) -> None:
        self._done = False
        self._role_sent = False
        self._reason: str | None = None
        self._delta = DeltaText()
        self._reasoning_part: tuple[Any, ...] | None = None
        self._tools = ToolCallAccumulator(snapshots=tool_snapshots)
        self._ranks: dict[int, int] = {}  # output_index -> rank among the function calls
        self._item_index: dict[str, int] = {}  # item id -> output_index
        self._streamed: set[int] = set()  # ranks that received argument text
        self._ended: set[int] = set()

    @property
    def done(self) -> bool:
        """True once the turn ended (completed, incomplete, failed, error) or `finish()`."""
        return self._done

    @property
    def raw_finish_reason(self) -> str | None:
        """The provider's own word (`completed`, an incomplete reason, `failed`), for logs."""
        return self._reason

    def feed(self, event: SSEEvent) -> list[UpstreamEvent]:
        """Translate one SSE event."""
        if self._done or event.data.strip() == "[DONE]":
            return []
        chunk = json_object(event.data)
        out: list[UpstreamEvent] = []
        kind = chunk.get("type")
        handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            handler(self, chunk, out)
        return out

    def finish(self) -> list[UpstreamEvent]:
        """The body ended: nothing more if the turn ended, else raise (it was cut short)."""
        if not self._done:
            self._done = True
            raise UpstreamProtocolError("upstream stream ended before it finished")
        return []

    # --- one handler per event type (`_HANDLERS`) -----------------------------------------

    def _on_started(self, _chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        if not self._role_sent:
            self._role_sent = True
            out.append(RoleDelta("assistant"))

    def _on_item(self, chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        item = chunk.get("item")
        if not isinstance(item, dict):
            raise UpstreamProtocolError("upstream output item is not a JSON object")
        if item.get("type") == "message":
            self._on_started(chunk, out)
        elif item.get("type") == "function_call":
            rank = self._rank(_output_index(chunk), item.get("id"))
            if chunk.get("type") == "response.output_item.done":
                self._end_call(rank, item, out)
            else:
                self._call(rank, item, out)

    def _on_text(self, chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        self._delta.text(string(chunk.get("delta")), out)

    def _on_reasoning(self, chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        text = string(chunk.get("delta"))
        if not text:
            return
        part = (chunk.get("item_id"), chunk.get("summary_index"), chunk.get("content_index"))
        if self._reasoning_part is not None and part != self._reasoning_part:
            text = _BLANK_LINE + text
        self._reasoning_part = part
        self._delta.reasoning(text, out)

    def _on_arguments(self, chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        rank = self._rank(_output_index(chunk), chunk.get("item_id"))
        text = string(chunk.get("delta"))
        if text:  # text for an ended call: the accumulator raises
            self._streamed.add(rank)
            piece = ToolCallFragment(index=rank, call_id=None, name=None, arguments=text)
            out.extend(tool_events(self._tools.feed(piece)))

    def _on_arguments_done(self, chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        rank = self._rank(_output_index(chunk), chunk.get("item_id"))
        self._end_call(rank, {"arguments": chunk.get("arguments")}, out)

    def _on_completed(self, chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        reason: FinishReason = "tool_calls" if self._tools.has_calls else "stop"
        self._end(reason, "completed", _response(chunk), out)

    def _on_incomplete(self, chunk: dict[str, Any], out: list[UpstreamEvent]) -> None:
        response = _response(chunk)
        details = response.get("incomplete_details")
        raw = details.get("reason") if isinstance(details, dict) else None
        raw = raw if isinstance(raw, str) else "incomplete"
        self._end(_INCOMPLETE.get(raw, "error"), raw, response, out)

    def _on_failed(self, chunk: dict[str, Any], _out: list[UpstreamEvent]) -> None:
        self._done, self._reason = True, "failed"
        raise _error(_response(chunk).get("error"), ("type", "code"))

    def _on_error(self, chunk: dict[str, Any], _out: list[UpstreamEvent]) -> None:
        self._done, self._reason = True, "error"
        nested = chunk.get("error")
        # OpenAI puts code/message/param at the top; some proxies nest them under `error`.
        raise _error(nested, ("type", "code")) if nested else _error(chunk, ("code",))

    _HANDLERS: ClassVar[dict[str, _Handler]] = {
        "response.created": _on_started,
        "response.in_progress": _on_started,
        "response.output_item.added": _on_item,
        "response.output_item.done": _on_item,
        "response.output_text.delta": _on_text,
        "response.refusal.delta": _on_text,
        "response.reasoning_summary_text.delta": _on_reasoning,
        "response.reasoning_text.delta": _on_reasoning,
        "response.function_call_arguments.delta": _on_arguments,
        "response.function_call_arguments.done": _on_arguments_done,
        "response.completed": _on_completed,
        "response.incomplete": _on_incomplete,
        "response.failed": _on_failed,
        "error": _on_error,
    }

    # --- function calls and the end -------------------------------------------------------

    def _rank(self, output_index: int | None, item_id: Any) -> int:
        """The call's rank, found by output_index, else by item id; a new one when unseen."""
        if output_index is None and isinstance(item_id, str):
            output_index = self._item_index.get(item_id)
        if output_index is None:
            raise UpstreamProtocolError("upstream function call event names no output item")
        if isinstance(item_id, str):
            self._item_index.setdefault(item_id, output_index)
        return self._ranks.setdefault(output_index, len(self._ranks))

    def _call(self, rank: int, item: dict[str, Any], out: list[UpstreamEvent]) -> None:
        """Name and id of a call, and its whole arguments if none were streamed yet."""
        call_id, name = item.get("call_id"), item.get("name")
        arguments = item.get("arguments") if rank not in self._streamed else None
        piece = ToolCallFragment(
            index=rank,
            call_id=string(call_id) if call_id else None,
            name=string(name) if name else None,
            arguments=string(arguments) if arguments else "",
        )
        if piece.arguments:
            self._streamed.add(rank)
        out.extend(tool_events(self._tools.feed(piece)))

    def _end_call(self, rank: int, item: dict[str, Any], out: list[UpstreamEvent]) -> None:
        if rank in self._ended:
            return
        self._call(rank, item, out)
        self._ended.add(rank)
        out.extend(tool_events(self._tools.end_call(index=rank)))

    def _end(
        self, reason: FinishReason, raw: str, response: dict[str, Any], out: list[UpstreamEvent]
    ) -> None:
        self._reason = raw
        self._delta.flush_text(out)
        self._delta.flush_reasoning(out)
        out.extend(tool_events(self._tools.finish()))
        usage = response.get("usage")
        if isinstance(usage, dict):
            out.append(Usage(_count(usage, "input_tokens"), _count(usage, "output_tokens")))
        self._done = True
        out.append(Finish(reason))


_Handler = Callable[[OpenAIResponsesTranslator, dict[str, Any], list["UpstreamEvent"]], None]


def _output_index(chunk: dict[str, Any]) -> int | None:
    value = chunk.get("output_index")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _response(chunk: dict[str, Any]) -> dict[str, Any]:
    response = chunk.get("response")
    if not isinstance(response, dict):
        raise UpstreamProtocolError("upstream event has no response object")
    return response


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _error(error: Any, keys: tuple[str, ...]) -> UpstreamError:
    labels = error_labels(error, keys)
    message = error_message(labels)
    if any("rate_limit" in label for label in labels):
        return UpstreamRateLimited(message)
    if any(label in _TRANSIENT for label in labels):
        return UpstreamError(message)
    if any(label in _REJECTED or label.startswith(_REJECTED_PREFIXES) for label in labels):
        return UpstreamRejected(message)
    return UpstreamError(message)


KIND = ProviderKind(
    "openai_responses",
    http=ProviderHTTP("/responses", "text/event-stream"),
    body=openai_responses_body,
    parser=translating(SSEDecoder, OpenAIResponsesTranslator),
)
"""OpenAI's Responses API: SSE."""
