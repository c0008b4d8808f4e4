"""OpenAI Responses API request body: wsgate's chat request phrased for `POST /v1/responses`.

Owns the translation of wsgate's chat-completions-shaped request into the streaming
Responses body. It does no I/O and does not read the response stream (see
`wsgate.core.providers.openai_responses`).

Rules:
1. The body says everything the request says, or raises `BadRequest` naming the field:
   `stop`, `seed`, `presence_penalty`, `frequency_penalty` and a message `name` have no
   Responses equivalent.
2. Messages become `input` items: text parts are `input_text`, or `output_text` for the
   assistant; `image_url` is `input_image`; assistant `tool_calls` are `function_call`
   items; tool messages are `function_call_output`, their parts joined.
3. Function tools are flattened, with `strict: false` and an empty `parameters` schema
   unless given, as chat-completions assumes (Responses would make an omitted `strict`
   true).
4. `max_tokens` is `max_output_tokens` (at least 16, the API's minimum: a smaller value is
   `bad_request` here rather than an `upstream_rejected` after a round trip),
   `response_format` is `text.format`,
   `reasoning_effort` is `reasoning.effort`; `stream` is true and `store` false (the
   gateway keeps no state there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from wsgate.core.errors import BadRequest
from wsgate.core.requests import check_message, merge_extra_body, output_cap

if TYPE_CHECKING:
    from wsgate.core.frames import ChatRequest, Message

_UNSUPPORTED: Final = ("stop", "seed", "presence_penalty", "frequency_penalty")
_KEPT: Final = (
    ("parallel_tool_calls", "parallel_tool_calls"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("user", "user"),
)
_FUNCTION_KEYS: Final = frozenset({"name", "description", "parameters", "strict"})
_NO_PARAMETERS: Final = {"type": "object", "properties": {}}
MIN_OUTPUT_TOKENS: Final = 16
"""The Responses API refuses a smaller `max_output_tokens` (`integer_below_min_value`)."""


def openai_responses_body(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The streaming `POST /v1/responses` body for a chat-completions request (rules 1-4)."""
    for field in _UNSUPPORTED:
        if getattr(request, field) is not None:
            raise BadRequest(f"{field}: not supported by OpenAI Responses")
    body: dict[str, Any] = {"model": upstream_model, "input": _input(request.messages)}
    _output(request, body)
    if request.tools is not None:
        body["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.response_format is not None:
        body["text"] = {"format": _text_format(request.response_format)}
    if request.reasoning_effort is not None:
        body["reasoning"] = {"effort": request.reasoning_effort}
    for field, key in _KEPT:
        value = getattr(request, field)
        if value is not None:
            body[key] = value
    body["stream"] = True
    body["store"] = False
    return merge_extra_body(request, body)


def _output(request: ChatRequest, body: dict[str, Any]) -> None:
    """The output cap (either name; at least `MIN_OUTPUT_TOKENS`); no `thinking` here."""
    if request.thinking is not None:
        raise BadRequest("thinking: not supported by OpenAI Responses (use reasoning_effort)")
    cap = output_cap(request)
    if cap is not None and cap < MIN_OUTPUT_TOKENS:
        raise BadRequest(f"max_tokens: OpenAI Responses needs at least {MIN_OUTPUT_TOKENS}")
    if cap is not None:
        body["max_output_tokens"] = cap


def _input(messages: list[Message]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        check_message(message, where)
        if message.role == "tool":
            # `name` on a tool message is redundant: the call_id names the call.
            items.append(_tool_output(message, where))
            continue
        if message.name is not None:
            raise BadRequest(f"{where}.name: not supported by OpenAI Responses")
        if message.role != "assistant":
            items.append({"role": message.role, "content": _content(message, where)})
            continue
        if message.content:  # an assistant turn with only tool calls has no message item
            items.append({"role": "assistant", "content": _content(message, where)})
        for j, call in enumerate(message.tool_calls or ()):
            items.append(_function_call(call, f"{where}.tool_calls[{j}]"))
    return items


def _content(message: Message, where: str) -> str | list[dict[str, Any]]:
    content = message.content
    if isinstance(content, str):
        return content
    if content is None:
        raise BadRequest(f"{where}.content: required")
    text_type = "output_text" if message.role == "assistant" else "input_text"
    return [_part(part, f"{where}.content[{j}]", text_type) for j, part in enumerate(content)]


def _part(part: dict[str, Any], where: str, text_type: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        return {"type": text_type, "text": _string(part.get("text"), f"{where}.text")}
    if kind == "image_url" and text_type == "input_text":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail") if isinstance(image, dict) else None
        return {
            "type": "input_image",
            "image_url": _string(url, f"{where}.image_url.url"),
            "detail": detail if isinstance(detail, str) else "auto",
        }
    raise BadRequest(f"{where}: this content part type is not supported by OpenAI Responses")


def _function_call(call: dict[str, Any], where: str) -> dict[str, Any]:
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        raise BadRequest(f"{where}: only function tool calls are supported")
    return {
        "type": "function_call",
        "call_id": _string(call.get("id"), f"{where}.id"),
        "name": _string(function.get("name"), f"{where}.function.name"),
        "arguments": _string(function.get("arguments", ""), f"{where}.function.arguments"),
    }


def _tool_output(message: Message, where: str) -> dict[str, Any]:
    call_id = _string(message.tool_call_id, f"{where}.tool_call_id")
    content = message.content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if part.get("type") != "text":
                raise BadRequest(f"{where}.content[{j}]: a tool result must be text")
            texts.append(_string(part.get("text"), f"{where}.content[{j}].text"))
        content = "".join(texts)
    return {"type": "function_call_output", "call_id": call_id, "output": content or ""}


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        raise BadRequest(f"{where}: only function tools are supported by OpenAI Responses")
    if not _FUNCTION_KEYS.issuperset(function):
        raise BadRequest(f"{where}.function: has fields OpenAI Responses does not support")
    name = _string(function.get("name"), f"{where}.function.name")
    out: dict[str, Any] = {"type": "function", "name": name}
    if function.get("description") is not None:
        out["description"] = function["description"]
    # Chat functions take no arguments when `parameters` is absent and are not strict unless
    # asked; Responses needs `parameters` and makes an omitted `strict` true.
    out["parameters"] = function.get("parameters") or _NO_PARAMETERS
    out["strict"] = function.get("strict") is True
    return out


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return choice
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(function, dict):
        name = _string(function.get("name"), "tool_choice.function.name")
        return {"type": "function", "name": name}
    raise BadRequest("tool_choice: not supported by OpenAI Responses")


def _text_format(response_format: dict[str, Any]) -> dict[str, Any]:
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    schema = response_format.get("json_schema")
    if kind != "json_schema" or not isinstance(schema, dict):
        raise BadRequest("response_format: not supported by OpenAI Responses")
    if not isinstance(schema.get("schema"), dict):
        raise BadRequest("response_format.json_schema.schema: required by OpenAI Responses")
    out: dict[str, Any] = {
        "type": "json_schema",
        "name": _string(schema.get("name"), "response_format.json_schema.name"),
        "schema": schema["schema"],
        "strict": schema.get("strict") is True,
    }
    if schema.get("description") is not None:
        out["description"] = schema["description"]
    return out


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: must be a string")
    return value
