"""The OpenAI chat-completions dialect (`POST /v1/chat/completions`) of the mock provider.

Owns the exact bytes of `chat.completion.chunk` SSE events, the `chat.completion` JSON, and
OpenAI's error bodies (shared with the Responses dialect). The stream must stay byte-identical
to what tests and recorded load-test baselines pin: field order, compact JSON, `"usage": null`
on every chunk when usage is requested, `data: [DONE]`. Reads a conversation's tool-call
turns (assistant `tool_calls`) and tool results (`role: "tool"` messages) for `turns.py`;
the call shape is shared with Ollama. Pure: renders, never writes.
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
    sse,
    tool_steps,
)
from wsgate.mock.script import (
    Answer,
    Script,
    content_text,
    count_words,
    int_limit,
    json_text,
    last_user_content,
)
from wsgate.mock.turns import History, read_history

if TYPE_CHECKING:
    from wsgate.mock.plan import ToolStep
    from wsgate.mock.turns import Call, Entry, Result

DONE_EVENT: Final = b"data: [DONE]\n\n"
SYSTEM_FINGERPRINT: Final = "fp_mock"
# OpenAI's error `type` and `code` per HTTP status, for scripted failures.
_ERROR_KINDS: Final[dict[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def openai_error_body(
    message: str, *, kind: str, code: str | None = None, param: str | None = None
) -> bytes:
    """Encode an OpenAI-style error object."""
    return dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def openai_status_kind(status: int) -> tuple[str, str | None]:
    """OpenAI's error `type` and `code` for an HTTP status."""
    fallback = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    return _ERROR_KINDS.get(status, fallback)


def _invalid(body: Body) -> tuple[str, str | None] | None:
    if not isinstance(body.get("messages"), list):
        return "'messages' must be a list", "messages"
    return None


def _prompt_tokens(body: Body) -> int:
    return count_words(body.get("messages"))


def function_call(call: object) -> Call:
    """The id and name of a `{"id", "function": {"name"}}` call (chat and Ollama)."""
    if not isinstance(call, dict):
        return None, None
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    call_id = call.get("id")
    return (
        call_id if isinstance(call_id, str) else None,
        name if isinstance(name, str) else None,
    )


def message_calls(message: Entry) -> list[Call] | None:
    """The calls of an assistant message with `tool_calls` (chat and Ollama), else None."""
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or not isinstance(calls, list) or not calls:
        return None
    return [function_call(call) for call in calls]


def _results(message: Entry) -> list[Result]:
    if message.get("role") != "tool":
        return []
    call_id = message.get("tool_call_id")
    text = content_text(message.get("content")) or ""
    return [(call_id if isinstance(call_id, str) else None, None, text)]


def _history(body: Body) -> History:
    return read_history(
        body.get("messages"),
        is_user=lambda message: message.get("role") == "user",
        calls_of=message_calls,
        results_of=_results,
    )


def _head(info: RequestInfo, kind: str = "chat.completion.chunk") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-mock-{info.number}",
        "object": kind,
        "created": info.created,
        "model": info.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _usage(info: RequestInfo, completion: int) -> dict[str, Any]:
    prompt = _prompt_tokens(info.body)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return {"usage": {**usage, "total_tokens": prompt + completion}}


def _tool_call_delta(step: ToolStep, *, with_index: bool) -> dict[str, Any]:
    """One `tool_calls` entry: the opening (id, type, name) or an arguments fragment."""
    call: dict[str, Any] = {"index": step.index} if with_index else {}
    if step.fragment is not None:
        return {**call, "function": {"arguments": step.fragment}}
    call_id = step.call.id if step.call.id is not None else f"call_mock_{step.index}"
    function = {"name": step.call.name, "arguments": ""}
    return {**call, "id": call_id, "type": "function", "function": function}


def _render(answer: Answer, script: Script, info: RequestInfo) -> list[Event]:
    options = info.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    head = _head(info)

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        event: dict[str, Any] = {**head, "choices": [choice]}
        if include_usage:
            event["usage"] = None
        return sse(dumps(event))

    role = {"role": "assistant", "content": "", "refusal": None}
    events = [Event(Kind.HEAD, chunk(role))]
    events += [Event(Kind.CONTENT, chunk({"content": json_text(t)})) for t in answer.chunks]
    steps = tool_steps(answer.tool_calls, script.args_chunk, interleave=script.interleave_tools)
    events += [
        Event(Kind.TOOL, chunk({"tool_calls": [_tool_call_delta(s, with_index=script.tool_index)]}))
        for s in steps
    ]
    events.append(Event(Kind.TAIL, chunk({}, answer.finish_reason)))
    if include_usage:
        usage = _usage(info, answer.completion_tokens)
        events.append(Event(Kind.TAIL, sse(dumps({**head, "choices": [], **usage}))))
    if script.done:
        events.append(Event(Kind.TAIL, DONE_EVENT))
    return events


def _raw_tail(script: Script) -> list[bytes]:
    return [DONE_EVENT] if script.done else []


def _stream_error(info: RequestInfo, error_type: str, sent: int) -> bytes:
    del info, sent
    return sse(openai_error_body(STREAM_ERROR_MESSAGE, kind=error_type))


def _complete(answer: Answer, info: RequestInfo) -> bytes:
    text = answer.text
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not answer.tool_calls else None,
        "refusal": None,
    }
    if answer.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id if call.id is not None else f"call_mock_{index}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for index, call in enumerate(answer.tool_calls)
        ]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": answer.finish_reason,
    }
    return dumps(
        {
            **_head(info, "chat.completion"),
            "choices": [choice],
            **_usage(info, answer.completion_tokens),
        }
    )


OPENAI_CHAT: Final = Dialect(
    name="openai_chat",
    invalid=_invalid,
    wants_stream=lambda body: body.get("stream") is True,
    user_text=lambda body: content_text(last_user_content(body.get("messages"))),
    prompt_tokens=_prompt_tokens,
    token_limit=lambda body: int_limit(body.get("max_completion_tokens", body.get("max_tokens"))),
    render=_render,
    stream_error=_stream_error,
    complete=_complete,
    error_body=openai_error_body,
    status_kind=openai_status_kind,
    raw_tail=_raw_tail,
    history=_history,
)
