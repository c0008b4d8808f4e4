r"""Ollama `/api/chat` request body: wsgate's OpenAI-shaped chat request phrased for Ollama.

Owns the translation of wsgate's chat request (the OpenAI chat-completions shape) into a
streamed `/api/chat` body
(https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion). It does
no I/O and does not read the response stream (see `wsgate.core.providers.ollama`).

Rules:
1. Everything the body cannot send faithfully raises `BadRequest` naming the field.
2. messages: system and developer become `system`; content parts are joined (text parts
   with "\n"; base64 `data:` image URLs become the message's `images`; an image `detail`
   hint is not sent: Ollama sizes images itself); any other URL or part type is refused.
   Assistant `tool_calls` become `{"id", "function": {"name", "arguments"}}` with the
   arguments parsed into the object Ollama takes; a tool result becomes a `tool` message
   with `tool_name` when an earlier assistant call has its id. A message `name` is refused
   (Ollama has no participant names).
3. tools are sent as given (Ollama takes OpenAI's function shape); `tool_choice` may only be
   absent or "auto" and `parallel_tool_calls` only absent or true (Ollama cannot force,
   forbid or serialize calls).
4. options: temperature, top_p, seed, presence_penalty, frequency_penalty and stop (a list)
   keep their names; max_tokens is `num_predict`.
5. response_format: `json_object` is `"format": "json"`, `json_schema` is the schema itself
   as `format` (Ollama always enforces it, as `strict` asks), `text` is the default.
6. reasoning_effort: "none" is `"think": false`; minimal/low/medium/high/xhigh are
   `"think": true`. The level itself is not sent: most thinking models refuse a level
   ("think value ... is not supported for this model") and only gpt-oss reads one.
7. user is not sent: it is end-user metadata for abuse monitoring, which the model never
   sees, and Ollama has no such field.
"""

from __future__ import annotations

from typing import Any, Final

from wsgate.core.errors import BadRequest
from wsgate.core.frames import ChatRequest, Message
from wsgate.core.jsonio import loads
from wsgate.core.requests import check_message, merge_extra_body, output_cap, thinking_budget

_OPTIONS: Final = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
_REASONING_EFFORTS: Final = frozenset({"minimal", "low", "medium", "high", "xhigh"})
_DATA_URL: Final = "data:"
_BASE64: Final = ";base64,"


def ollama_body(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The `/api/chat` body for `request`, streamed (rules 1-7)."""
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": _messages(request.messages),
        "stream": True,
    }
    if request.tools:
        body["tools"] = _tools(request.tools)
    if request.tool_choice not in (None, "auto"):
        raise BadRequest('tool_choice: only "auto" is supported by Ollama')
    if request.parallel_tool_calls is False:
        raise BadRequest("parallel_tool_calls: false is not supported by Ollama")
    options = _options(request)
    if options:
        body["options"] = options
    if request.response_format is not None:
        body.update(_format(request.response_format))
    if request.reasoning_effort is not None and request.thinking is not None:
        raise BadRequest("reasoning_effort, thinking: set one of the two")
    if request.reasoning_effort is not None:
        body["think"] = _think(request.reasoning_effort)
    if request.thinking is not None:
        body["think"] = thinking_budget(request.thinking) is not None
    return merge_extra_body(request, body)


def _options(request: ChatRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in _OPTIONS:
        value = getattr(request, key)
        if value is not None:
            options[key] = value
    if request.stop is not None:
        options["stop"] = [request.stop] if isinstance(request.stop, str) else request.stop
    cap = output_cap(request)
    if cap is not None:
        options["num_predict"] = cap
    return options


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise BadRequest(f"tools[{i}]: only function tools are supported by Ollama")
    return tools


def _format(response_format: dict[str, Any]) -> dict[str, Any]:
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"format": "json"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema: a JSON schema object is needed")
        return {"format": schema}
    raise BadRequest("response_format: only text, json_object and json_schema are supported")


def _think(effort: str) -> bool:
    if effort == "none":
        return False
    if effort in _REASONING_EFFORTS:
        return True
    raise BadRequest("reasoning_effort: not one of none, minimal, low, medium, high, xhigh")


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # tool call id -> function name, from assistant messages
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        check_message(message, where)
        if message.name is not None:
            raise BadRequest(f"{where}.name: not supported by Ollama")
        role = "system" if message.role == "developer" else message.role
        item: dict[str, Any] = {"role": role}
        item.update(_content(message.content, where))
        if message.tool_calls:
            item["tool_calls"] = [
                _tool_call(call, f"{where}.tool_calls[{j}]", names)
                for j, call in enumerate(message.tool_calls)
            ]
        if message.role == "tool" and message.tool_call_id in names:
            item["tool_name"] = names[message.tool_call_id]
        out.append(item)
    return out


def _content(content: str | list[dict[str, Any]] | None, where: str) -> dict[str, Any]:
    if content is None or isinstance(content, str):
        return {"content": content or ""}
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise BadRequest(f"{where}.content[{j}].{kind}: a string is needed")
            texts.append(text)
        elif kind == "image_url":
            images.append(_image(part.get("image_url"), f"{where}.content[{j}].image_url"))
        else:
            raise BadRequest(f"{where}.content[{j}]: this part type is not supported by Ollama")
    item: dict[str, Any] = {"content": "\n".join(texts)}
    if images:
        item["images"] = images
    return item


def _image(image: Any, where: str) -> str:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith(_DATA_URL):
        header, sep, data = url.partition(",")
        if sep and (header + ",").endswith(_BASE64) and data:
            return data
    raise BadRequest(f"{where}: Ollama takes only base64 data: URLs")


def _tool_call(call: dict[str, Any], where: str, names: dict[str, str]) -> dict[str, Any]:
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        raise BadRequest(f"{where}: only function calls are supported by Ollama")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.function.name: a name is needed")
    text = function.get("arguments")
    if text is None or (isinstance(text, str) and not text.strip()):
        arguments: Any = {}
    else:
        try:
            arguments = loads(text, scrub=True) if isinstance(text, str) else None
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise BadRequest(f"{where}.function.arguments: not a JSON object")
    out: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    call_id = call.get("id")
    if isinstance(call_id, str) and call_id:
        out["id"] = call_id
        names[call_id] = name
    return out
