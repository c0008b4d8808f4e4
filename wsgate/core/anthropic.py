"""Anthropic Messages stream translator and request body: SSE events in, neutral events out.

Owns the meaning of Anthropic's `POST /v1/messages` streaming response (`message_start`,
`content_block_start|delta|stop`, `message_delta`, `message_stop`, `ping`, `error`) and the
phrasing of wsgate's chat request (the OpenAI chat-completions shape) as a Messages body.
It does no I/O and does not decode SSE (see `wsgate.core.sse`).

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

Body (`anthropic_body`): see its docstring; whatever Anthropic cannot express faithfully
is a `BadRequest` naming the field, never a silent drop.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final

from wsgate.core.errors import (
    BadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from wsgate.core.events import (
    Finish,
    FinishReason,
    ReasoningDelta,
    RoleDelta,
    TextDelta,
    UpstreamEvent,
    Usage,
)
from wsgate.core.jsonio import loads
from wsgate.core.payloads import IDENTIFIER, json_object, string, tool_events
from wsgate.core.toolcalls import ToolCallAccumulator, ToolCallFragment
from wsgate.core.utf8 import SurrogateJoiner

if TYPE_CHECKING:
    from wsgate.core.frames import ChatRequest, Message
    from wsgate.core.sse import SSEEvent

DEFAULT_MAX_TOKENS: Final = 4096
"""`max_tokens` sent when the client gave none: Anthropic requires the field."""

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
        "_done",
        "_joiner",
        "_reason",
        "_reasoning",
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
        self._joiner = SurrogateJoiner()
        self._reasoning = SurrogateJoiner()
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
            self._push(self._joiner, TextDelta, block.get("text"), out)
        elif kind == "thinking":
            self._push(self._reasoning, ReasoningDelta, block.get("thinking"), out)
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
            self._push(self._joiner, TextDelta, delta.get("text"), out)
        elif kind == "thinking_delta":
            self._push(self._reasoning, ReasoningDelta, delta.get("thinking"), out)
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

    def _push(
        self,
        joiner: SurrogateJoiner,
        kind: type[TextDelta | ReasoningDelta],
        value: Any,
        out: list[UpstreamEvent],
    ) -> None:
        if value:
            text = joiner.push(string(value))
            if text:
                out.append(kind(text))

    def _fragment(self, index: int, arguments: str, out: list[UpstreamEvent]) -> None:
        out.extend(tool_events(self._tools.feed(ToolCallFragment(index, None, None, arguments))))

    def _flush(self, out: list[UpstreamEvent]) -> None:
        for joiner, kind in ((self._joiner, TextDelta), (self._reasoning, ReasoningDelta)):
            tail = joiner.flush()
            if tail:
                out.append(kind(tail))

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
    kind = error.get("type") if isinstance(error, dict) else None
    if not isinstance(kind, str) or not IDENTIFIER.fullmatch(kind):
        return UpstreamError("upstream reported an error")
    return _ERRORS.get(kind, UpstreamError)(f"upstream reported an error ({kind})")


# --- request body ---------------------------------------------------------------------------

_UNSUPPORTED: Final = ("seed", "presence_penalty", "frequency_penalty", "reasoning_effort")
_IMAGE_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL: Final = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)
_TOOL_CHOICES: Final[dict[str, str]] = {"auto": "auto", "required": "any", "none": "none"}


def anthropic_body(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The streaming Messages body for `request`; `BadRequest` names what cannot be sent.

    Leading system/developer messages become `system` (texts joined by a blank line); runs
    of tool messages become one user message of `tool_result` blocks; assistant
    `tool_calls` become `tool_use` blocks; images (`image_url` parts) become base64 or URL
    image sources. `max_tokens` defaults to `DEFAULT_MAX_TOKENS`; `stop` becomes
    `stop_sequences`, `user` `metadata.user_id`, a `json_schema` response format
    `output_config.format`. Refused: `seed`, `presence_penalty`, `frequency_penalty`,
    `reasoning_effort`, a `json_object` response format, a temperature above 1.
    """
    for field in _UNSUPPORTED:
        if getattr(request, field) is not None:
            raise BadRequest(f"{field}: not supported by Anthropic")
    system, messages = _messages(request.messages)
    body: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": messages,
        "stream": True,
    }
    if system:
        body["system"] = system
    _tools(request, body)
    if request.temperature is not None:
        if request.temperature > 1:
            raise BadRequest("temperature: Anthropic accepts 0 to 1")
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    if request.response_format is not None:
        _response_format(request.response_format, body)
    return body


def _messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the tool_result blocks of the last message
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.name is not None:
            raise BadRequest(f"{where}.name: not supported by Anthropic")
        if message.tool_calls is not None and message.role != "assistant":
            raise BadRequest(f"{where}.tool_calls: only assistant messages make tool calls")
        if message.role in ("system", "developer"):
            if out:
                raise BadRequest(f"{where}: Anthropic takes system text only before the chat")
            system.append(_system_text(message.content, where))
        elif message.role == "tool":
            block = _tool_result(message, where)
            if results is None:
                results = [block]
                out.append({"role": "user", "content": results})
            else:
                results.append(block)
            continue
        elif message.role == "user":
            out.append({"role": "user", "content": _content(message.content, where, user=True)})
        else:
            out.append({"role": "assistant", "content": _assistant(message, where)})
        results = None
    return "\n\n".join(system), out


def _system_text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        raise BadRequest(f"{where}.content: required")
    return "\n\n".join(block["text"] for block in _parts(content, where, user=False))


def _content(
    content: str | list[dict[str, Any]] | None, where: str, *, user: bool
) -> str | list[dict[str, Any]]:
    """A message's content: a string as is, parts as text (and, for users, image) blocks."""
    if isinstance(content, str):
        return content
    if content is None:
        raise BadRequest(f"{where}.content: required")
    return _parts(content, where, user=user)


def _parts(content: list[dict[str, Any]], where: str, *, user: bool) -> list[dict[str, Any]]:
    return [_part(part, f"{where}.content[{j}]", user=user) for j, part in enumerate(content)]


def _part(part: dict[str, Any], where: str, *, user: bool) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url" and user:
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if isinstance(image, dict) and image.get("detail", "auto") != "auto":
            raise BadRequest(f"{where}.image_url.detail: not supported by Anthropic")
        return {"type": "image", "source": _image_source(url, where)}
    raise BadRequest(f"{where}: part type {kind!r} is not supported by Anthropic here")


def _image_source(url: Any, where: str) -> dict[str, Any]:
    if isinstance(url, str):
        data = _DATA_URL.fullmatch(url)
        if data is not None:
            if data[1] not in _IMAGE_TYPES:
                raise BadRequest(f"{where}.image_url: Anthropic takes jpeg, png, gif, webp")
            return {"type": "base64", "media_type": data[1], "data": data[2]}
        if url.startswith(("https://", "http://")):
            return {"type": "url", "url": url}
    raise BadRequest(f"{where}.image_url: needs an http(s) URL or a base64 data URL")


def _assistant(message: Message, where: str) -> str | list[dict[str, Any]]:
    if not message.tool_calls:
        if message.content is None:
            raise BadRequest(f"{where}: an assistant message needs content or tool_calls")
        return _content(message.content, where, user=False)
    blocks: list[dict[str, Any]] = []
    if isinstance(message.content, str):
        if message.content:
            blocks.append({"type": "text", "text": message.content})
    elif message.content is not None:
        blocks.extend(_parts(message.content, where, user=False))
    for j, call in enumerate(message.tool_calls):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{j}]"))
    return blocks


def _tool_use(call: dict[str, Any], where: str) -> dict[str, Any]:
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        raise BadRequest(f"{where}: only function tool calls are supported")
    call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise BadRequest(f"{where}: needs an id and a function name")
    if not isinstance(arguments, str) or not arguments.strip():
        arguments = "{}"
    try:
        value = loads(arguments, scrub=True)
    except ValueError:
        raise BadRequest(f"{where}.function.arguments: not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{where}.function.arguments: Anthropic needs a JSON object")
    return {"type": "tool_use", "id": call_id, "name": name, "input": value}


def _tool_result(message: Message, where: str) -> dict[str, Any]:
    if message.tool_call_id is None:
        raise BadRequest(f"{where}.tool_call_id: required")
    return {
        "type": "tool_result",
        "tool_use_id": message.tool_call_id,
        "content": _content(message.content, where, user=True),
    }


def _tools(request: ChatRequest, body: dict[str, Any]) -> None:
    choice = request.tool_choice
    if not request.tools:
        if choice is not None and choice != "none":
            raise BadRequest("tool_choice: needs tools")
        return  # no tools: "none" and parallel_tool_calls change nothing
    body["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(request.tools)]
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        translated: dict[str, Any] = {"type": _TOOL_CHOICES[choice]}
    elif choice is None:
        translated = {"type": "auto"}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        translated = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise BadRequest("tool_choice: Anthropic takes auto, required, none or one function")
    if request.parallel_tool_calls is False and translated["type"] != "none":
        translated["disable_parallel_tool_use"] = True
    if choice is not None or "disable_parallel_tool_use" in translated:
        body["tool_choice"] = translated


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        raise BadRequest(f"{where}: only function tools are supported by Anthropic")
    if not isinstance(function.get("name"), str):
        raise BadRequest(f"{where}.function.name: required")
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description") is not None:
        out["description"] = function["description"]
    if function.get("strict") is not None:
        out["strict"] = function["strict"]
    return out


def _response_format(response_format: dict[str, Any], body: dict[str, Any]) -> None:
    kind = response_format.get("type")
    if kind == "text":
        return  # Anthropic's default
    spec = response_format.get("json_schema")
    if kind == "json_schema" and isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        body["output_config"] = {"format": {"type": "json_schema", "schema": spec["schema"]}}
        return
    raise BadRequest(f"response_format: type {kind!r} is not supported by Anthropic")
