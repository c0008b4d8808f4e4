"""The Anthropic Messages dialect (`POST /v1/messages`) of the mock provider.

Owns the named SSE events of a Messages stream (message_start, content blocks with their
deltas, ping, message_delta with the cumulative output tokens, message_stop), the `message`
JSON, and Anthropic's error shape `{"type": "error", "error": {"type", "message"}}` in bodies
and as the in-band `event: error`. `max_tokens` is required, as Anthropic requires it. Content
blocks cannot interleave, so `interleave_tools` is a script error here. Reads tool-call
turns (assistant `tool_use` blocks) and tool results (`tool_result` blocks, whose user
messages are not where a script is looked for) for `turns.py`. Pure: renders only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from wsgate.mock.plan import (
    STREAM_ERROR_MESSAGE,
    Body,
    Dialect,
    Event,
    Kind,
    RequestInfo,
    dumps,
    object_arguments,
    sse,
    tool_steps,
)
from wsgate.mock.script import (
    Answer,
    Script,
    ToolCallScript,
    content_text,
    count_words,
    int_limit,
    json_text,
)
from wsgate.mock.turns import History, read_history

if TYPE_CHECKING:
    from wsgate.mock.turns import Call, Entry, Result

# Anthropic's ping is the one payload written with spaces, byte for byte as the API sends it.
PING_EVENT: Final = b'event: ping\ndata: {"type": "ping"}\n\n'
# Anthropic's error `type` per HTTP status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_body(
    message: str, *, kind: str, code: str | None = None, param: str | None = None
) -> bytes:
    """Encode Anthropic's error object (it has no `code` or `param`)."""
    del code, param
    return dumps({"type": "error", "error": {"type": kind, "message": message}})


def _status_kind(status: int) -> tuple[str, str | None]:
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    return _ERROR_TYPES.get(status, fallback), None


def _invalid(body: Body) -> tuple[str, str | None] | None:
    if "max_tokens" not in body:
        return "max_tokens: Field required", "max_tokens"
    if int_limit(body["max_tokens"]) is None:
        return "max_tokens: Input should be a valid integer", "max_tokens"
    if not isinstance(body.get("messages"), list):
        return "messages: Field required", "messages"
    return None


def _blocks(message: Entry, kind: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def _is_user(message: Entry) -> bool:
    """A user message that is not only `tool_result` blocks (those answer the assistant)."""
    if message.get("role") != "user":
        return False
    content = message.get("content")
    return not (isinstance(content, list) and content and _only_results(content))


def _only_results(content: list[Any]) -> bool:
    return all(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _user_text(body: Body) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    users = [m for m in messages if isinstance(m, dict) and _is_user(m)]
    return content_text(users[-1].get("content")) if users else None


def _calls(message: Entry) -> list[Call] | None:
    uses = _blocks(message, "tool_use") if message.get("role") == "assistant" else []
    return [(_string(b.get("id")), _string(b.get("name"))) for b in uses] or None


def _results(message: Entry) -> list[Result]:
    if message.get("role") != "user":
        return []
    return [
        (_string(b.get("tool_use_id")), None, content_text(b.get("content")) or "")
        for b in _blocks(message, "tool_result")
    ]


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _history(body: Body) -> History:
    return read_history(
        body.get("messages"), is_user=_is_user, calls_of=_calls, results_of=_results
    )


def _prompt_tokens(body: Body) -> int:
    return count_words(body.get("system")) + count_words(body.get("messages"))


def _event(kind: Kind, payload: dict[str, Any]) -> Event:
    return Event(kind, sse(dumps(payload), payload["type"]))


def _block_start(kind: Kind, index: int, block: dict[str, Any]) -> Event:
    return _event(kind, {"type": "content_block_start", "index": index, "content_block": block})


def _block_delta(kind: Kind, index: int, delta: dict[str, Any]) -> Event:
    return _event(kind, {"type": "content_block_delta", "index": index, "delta": delta})


def _block_stop(index: int) -> Event:
    return _event(Kind.TAIL, {"type": "content_block_stop", "index": index})


def _tool_use(index: int, call: ToolCallScript) -> dict[str, Any]:
    call_id = call.id if call.id is not None else f"toolu_mock_{index}"
    return {"type": "tool_use", "id": call_id, "name": call.name}


def _render(answer: Answer, script: Script, info: RequestInfo) -> list[Event]:
    start = _message(info, [], None, output_tokens=1)
    events = [_event(Kind.HEAD, {"type": "message_start", "message": start})]
    has_text = bool(answer.chunks) or not answer.tool_calls
    if has_text:
        events.append(_block_start(Kind.HEAD, 0, {"type": "text", "text": ""}))
    events.append(Event(Kind.HEAD, PING_EVENT))
    events += [
        _block_delta(Kind.CONTENT, 0, {"type": "text_delta", "text": json_text(text)})
        for text in answer.chunks
    ]
    if has_text:
        events.append(_block_stop(0))
    base = 1 if has_text else 0
    steps = tool_steps(answer.tool_calls, script.args_chunk)
    for position, step in enumerate(steps):
        index = base + step.index
        if step.fragment is None:
            block = {**_tool_use(step.index, step.call), "input": {}}
            events.append(_block_start(Kind.TOOL, index, block))
        else:
            delta = {"type": "input_json_delta", "partial_json": step.fragment}
            events.append(_block_delta(Kind.TOOL, index, delta))
        if position + 1 == len(steps) or steps[position + 1].index != step.index:
            events.append(_block_stop(index))
    stop = {"stop_reason": answer.finish_reason, "stop_sequence": None}
    usage = {"output_tokens": answer.completion_tokens}
    events.append(_event(Kind.TAIL, {"type": "message_delta", "delta": stop, "usage": usage}))
    events.append(_event(Kind.TAIL, {"type": "message_stop"}))
    return events


def _stream_error(info: RequestInfo, error_type: str, sent: int) -> bytes:
    del info, sent
    return sse(anthropic_error_body(STREAM_ERROR_MESSAGE, kind=error_type), "error")


def _complete(answer: Answer, info: RequestInfo) -> bytes:
    content: list[dict[str, Any]] = []
    if answer.chunks or not answer.tool_calls:
        content.append({"type": "text", "text": answer.text})
    for index, call in enumerate(answer.tool_calls):
        content.append({**_tool_use(index, call), "input": object_arguments(call)})
    return dumps(_message(info, content, answer.finish_reason, answer.completion_tokens))


def _message(
    info: RequestInfo, content: list[dict[str, Any]], stop_reason: str | None, output_tokens: int
) -> dict[str, Any]:
    usage = {"input_tokens": _prompt_tokens(info.body), "output_tokens": output_tokens}
    return {
        "id": f"msg_mock_{info.number}",
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": info.model,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


ANTHROPIC: Final = Dialect(
    name="anthropic",
    invalid=_invalid,
    wants_stream=lambda body: body.get("stream") is True,
    user_text=_user_text,
    prompt_tokens=_prompt_tokens,
    token_limit=lambda body: int_limit(body.get("max_tokens")),
    render=_render,
    stream_error=_stream_error,
    complete=_complete,
    error_body=anthropic_error_body,
    status_kind=_status_kind,
    default_error_type="overloaded_error",
    history=_history,
    call_id_prefix="toolu_mock",
    unsupported=frozenset({"tool_index", "interleave_tools", "done"}),
    finish_names={"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"},
)
