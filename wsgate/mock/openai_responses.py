"""The OpenAI Responses dialect (`POST /v1/responses`) of the mock provider.

Owns the named SSE events of a Responses stream (`event: <type>` + `data: <json>` with the
same `type` and a `sequence_number` counting every event from 0), the `response` object of
`response.created` / `.in_progress` / `.completed` / `.incomplete` / `.failed`, and reading
`input` (a string or a list of items) and `instructions`. A mid-stream server error is
`response.failed` with `response.error` (what OpenAI sends when generation fails); error
bodies are OpenAI's. Reads tool-call turns (runs of `function_call` items) and tool
results (`function_call_output` items) for `turns.py`. Pure: renders, never writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from wsgate.mock.openai_chat import openai_error_body, openai_status_kind
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
from wsgate.mock.turns import NO_HISTORY, History, read_history

if TYPE_CHECKING:
    from wsgate.mock.turns import Call, Entry, Result

_OUTPUT_PARTS: Final = ("input_text", "output_text", "text")


def _invalid(body: Body) -> tuple[str, str | None] | None:
    if not isinstance(body.get("input", ""), str | list):
        return "Invalid type for 'input': expected a string or an array.", "input"
    return None


def _user_text(body: Body) -> str | None:
    given = body.get("input")
    if isinstance(given, str):
        return given
    return content_text(last_user_content(given), ("input_text", "text"))


def _calls(item: Entry) -> list[Call] | None:
    if item.get("type") != "function_call":
        return None
    return [(_string_or_none(item.get("call_id")), _string_or_none(item.get("name")))]


def _results(item: Entry) -> list[Result]:
    if item.get("type") != "function_call_output":
        return []
    text = content_text(item.get("output"), _OUTPUT_PARTS) or ""
    return [(_string_or_none(item.get("call_id")), None, text)]


def _history(body: Body) -> History:
    given = body.get("input")
    if not isinstance(given, list):
        return NO_HISTORY
    return read_history(
        given,
        is_user=lambda item: item.get("role") == "user",
        calls_of=_calls,
        results_of=_results,
    )


def _prompt_tokens(body: Body) -> int:
    return count_words(body.get("instructions")) + count_words(body.get("input"))


def _token_limit(body: Body) -> int | None:
    return int_limit(body.get("max_output_tokens"))


def _status(answer: Answer) -> str:
    return "completed" if answer.finish_reason == "completed" else "incomplete"


def _has_message(answer: Answer) -> bool:
    return bool(answer.chunks) or not answer.tool_calls


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


class _Events:
    """The events of one stream as they are rendered, numbered by `sequence_number`."""

    def __init__(self) -> None:
        self.out: list[Event] = []

    def emit(self, kind: Kind, event_type: str, **fields: Any) -> None:
        payload = {"type": event_type, "sequence_number": len(self.out), **fields}
        self.out.append(Event(kind, sse(dumps(payload), event_type)))

    def close_call(self, item: dict[str, Any], index: int) -> None:
        self.emit(Kind.TAIL, "response.function_call_arguments.done",
                  item_id=item["id"], output_index=index, arguments=item["arguments"])  # fmt: skip
        self.emit(Kind.TAIL, "response.output_item.done", output_index=index, item=item)


def _render(answer: Answer, script: Script, info: RequestInfo) -> list[Event]:
    events = _Events()
    status = _status(answer)
    events.emit(Kind.HEAD, "response.created", response=_response(info, "in_progress"))
    events.emit(Kind.HEAD, "response.in_progress", response=_response(info, "in_progress"))
    output = _output(answer, info, status)
    base = 0
    if _has_message(answer):
        base = 1
        where = {"item_id": output[0]["id"], "output_index": 0, "content_index": 0}
        added = {**output[0], "status": "in_progress", "content": []}
        events.emit(Kind.HEAD, "response.output_item.added", output_index=0, item=added)
        events.emit(Kind.HEAD, "response.content_part.added", **where, part=_text_part(""))
        for text in answer.chunks:
            events.emit(Kind.CONTENT, "response.output_text.delta", **where,
                        delta=json_text(text), logprobs=[])  # fmt: skip
        events.emit(Kind.TAIL, "response.output_text.done", **where,
                    text=answer.text, logprobs=[])  # fmt: skip
        events.emit(Kind.TAIL, "response.content_part.done", **where,
                    part=_text_part(answer.text))  # fmt: skip
        events.emit(Kind.TAIL, "response.output_item.done", output_index=0, item=output[0])
    steps = tool_steps(answer.tool_calls, script.args_chunk, interleave=script.interleave_tools)
    for position, step in enumerate(steps):
        index = base + step.index
        if step.fragment is None:
            added = {**output[index], "status": "in_progress", "arguments": ""}
            events.emit(Kind.TOOL, "response.output_item.added", output_index=index, item=added)
        else:
            events.emit(Kind.TOOL, "response.function_call_arguments.delta",
                        item_id=output[index]["id"], output_index=index,
                        delta=step.fragment)  # fmt: skip
        call_ends = position + 1 == len(steps) or steps[position + 1].index != step.index
        if call_ends and not script.interleave_tools:
            events.close_call(output[index], index)
    if script.interleave_tools:
        for index in range(base, len(output)):
            events.close_call(output[index], index)
    terminal = "response.completed" if status == "completed" else "response.incomplete"
    events.emit(Kind.TAIL, terminal, response=_response(info, status, output, answer))
    return events.out


def _stream_error(info: RequestInfo, error_type: str, sent: int) -> bytes:
    error = {"code": error_type, "message": STREAM_ERROR_MESSAGE}
    response = _response(info, "failed", error=error)
    payload = {"type": "response.failed", "sequence_number": sent, "response": response}
    return sse(dumps(payload), "response.failed")


def _complete(answer: Answer, info: RequestInfo) -> bytes:
    status = _status(answer)
    return dumps(_response(info, status, _output(answer, info, status), answer))


def _output(answer: Answer, info: RequestInfo, status: str) -> list[dict[str, Any]]:
    """The finished output items: the message (unless only tool calls), then the calls."""
    items: list[dict[str, Any]] = []
    if _has_message(answer):
        items.append(
            {
                "id": f"msg_mock_{info.number}",
                "type": "message",
                "status": status,
                "content": [_text_part(answer.text)],
                "role": "assistant",
            }
        )
    for index, call in enumerate(answer.tool_calls):
        items.append(
            {
                "id": f"fc_mock_{info.number}_{index}",
                "type": "function_call",
                "status": "completed",
                "arguments": call.arguments,
                "call_id": call.id if call.id is not None else f"call_mock_{index}",
                "name": call.name,
            }
        )
    return items


def _usage(body: Body, answer: Answer) -> dict[str, Any]:
    prompt, completion = _prompt_tokens(body), answer.completion_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _response(
    info: RequestInfo,
    status: str,
    output: list[dict[str, Any]] | None = None,
    answer: Answer | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The `response` object; `answer` given: finished, with usage (and why, if incomplete)."""
    body = info.body
    incomplete = None
    if answer is not None and status == "incomplete":
        reason = answer.finish_reason
        incomplete = {"reason": "max_output_tokens" if reason == "incomplete" else reason}
    tools = body.get("tools")
    return {
        "id": f"resp_mock_{info.number}",
        "object": "response",
        "created_at": info.created,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": _string_or_none(body.get("instructions")),
        "max_output_tokens": _token_limit(body),
        "model": info.model,
        "output": output or [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store") is not False,
        "temperature": _number(body.get("temperature"), 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": tools if isinstance(tools, list) else [],
        "top_p": _number(body.get("top_p"), 1.0),
        "truncation": "disabled",
        "usage": _usage(body, answer) if answer is not None else None,
        "user": None,
        "metadata": {},
    }


def _number(value: object, default: float) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else default


def _string_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


OPENAI_RESPONSES: Final = Dialect(
    name="openai_responses",
    invalid=_invalid,
    wants_stream=lambda body: body.get("stream") is True,
    user_text=_user_text,
    conversation=lambda body: body.get("input"),
    prompt_tokens=_prompt_tokens,
    token_limit=_token_limit,
    render=_render,
    stream_error=_stream_error,
    complete=_complete,
    error_body=openai_error_body,
    status_kind=openai_status_kind,
    history=_history,
    unsupported=frozenset({"tool_index", "done"}),
    finish_names={"stop": "completed", "tool_calls": "completed", "length": "incomplete"},
)
