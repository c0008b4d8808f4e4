r"""The Ollama dialect (`POST /api/chat`) of the mock provider.

Owns Ollama's NDJSON stream: one compact JSON object per `\n`-terminated line, a line per
content chunk, the tool calls whole in one line (arguments as a JSON object, so they must
parse as one), and a final `done: true` line with `done_reason` and the token counts. Errors
are `{"error": "..."}`, in a body or as a line. Ollama streams unless `stream` is false. It
has no tool-call fragments, so `interleave_tools` is a script error. Reads tool-call turns
and `role: "tool"` results for `turns.py`; results carry no call id, so they answer the
calls by position. Pure: renders only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from wsgate.mock.openai_chat import message_calls
from wsgate.mock.plan import (
    STREAM_ERROR_MESSAGE,
    Body,
    Dialect,
    Event,
    Kind,
    RequestInfo,
    dumps,
    object_arguments,
)
from wsgate.mock.script import (
    Answer,
    RawEvent,
    Script,
    ScriptError,
    content_text,
    count_words,
    int_limit,
    json_text,
    last_user_content,
)
from wsgate.mock.turns import History, read_history

if TYPE_CHECKING:
    from wsgate.mock.turns import Entry, Result


def ollama_error_body(
    message: str, *, kind: str, code: str | None = None, param: str | None = None
) -> bytes:
    """Encode Ollama's error object: only the message."""
    del kind, code, param
    return dumps({"error": message})


def _invalid(body: Body) -> tuple[str, str | None] | None:
    if not isinstance(body.get("messages"), list):
        return "messages must be a list", "messages"
    return None


def _prompt_tokens(body: Body) -> int:
    return count_words(body.get("messages"))


def _results(message: Entry) -> list[Result]:
    if message.get("role") != "tool":
        return []
    name = message.get("tool_name")
    text = content_text(message.get("content")) or ""
    return [(None, name if isinstance(name, str) else None, text)]


def _history(body: Body) -> History:
    # Ollama's tool messages carry no call id: the i-th result answers the i-th call.
    return read_history(
        body.get("messages"),
        is_user=lambda message: message.get("role") == "user",
        calls_of=message_calls,
        results_of=_results,
        by_position=True,
    )


def _token_limit(body: Body) -> int | None:
    options = body.get("options")
    return int_limit(options.get("num_predict")) if isinstance(options, dict) else None


def _tool_calls(answer: Answer) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id if call.id is not None else f"call_mock_{index}",
            "function": {"index": index, "name": call.name, "arguments": object_arguments(call)},
        }
        for index, call in enumerate(answer.tool_calls)
    ]


def _object(info: RequestInfo, message: dict[str, Any], final: Answer | None) -> dict[str, Any]:
    """One response object: a `done: false` line, or with `final` the closing one."""
    created_at = datetime.fromtimestamp(info.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    head = {"model": info.model, "created_at": created_at, "message": message}
    if final is None:
        return {**head, "done": False}
    return {
        **head,
        "done": True,
        "done_reason": final.finish_reason,
        "prompt_eval_count": _prompt_tokens(info.body),
        "eval_count": final.completion_tokens,
    }


def _line(info: RequestInfo, message: dict[str, Any], final: Answer | None = None) -> bytes:
    return dumps(_object(info, {"role": "assistant", **message}, final)) + b"\n"


def _render(answer: Answer, script: Script, info: RequestInfo) -> list[Event]:
    del script
    events = [Event(Kind.CONTENT, _line(info, {"content": json_text(t)})) for t in answer.chunks]
    if answer.tool_calls:
        message = {"content": "", "tool_calls": _tool_calls(answer)}
        events.append(Event(Kind.TOOL, _line(info, message)))
    events.append(Event(Kind.TAIL, _line(info, {"content": ""}, answer)))
    return events


def _raw_event(entry: str | RawEvent) -> bytes:
    if not isinstance(entry, str):
        raise ScriptError("bad mock script: ollama events are lines (strings), not SSE events")
    return entry.encode() + b"\n"


def _stream_error(info: RequestInfo, error_type: str, sent: int) -> bytes:
    del info, error_type, sent
    return ollama_error_body(STREAM_ERROR_MESSAGE, kind="error") + b"\n"


def _complete(answer: Answer, info: RequestInfo) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.tool_calls:
        message["tool_calls"] = _tool_calls(answer)
    return dumps(_object(info, message, answer))


OLLAMA: Final = Dialect(
    name="ollama",
    invalid=_invalid,
    wants_stream=lambda body: body.get("stream") is not False,
    user_text=lambda body: content_text(last_user_content(body.get("messages"))),
    prompt_tokens=_prompt_tokens,
    token_limit=_token_limit,
    render=_render,
    stream_error=_stream_error,
    complete=_complete,
    error_body=ollama_error_body,
    status_kind=lambda _status: ("error", None),
    raw_event=_raw_event,
    history=_history,
    content_type="application/x-ndjson",
    default_error_type="error",
    unsupported=frozenset({"tool_index", "interleave_tools", "done"}),
    finish_names={"tool_calls": "stop"},
)
