"""Anthropic Messages request body: wsgate's chat request phrased for `POST /v1/messages`.

Owns the translation of wsgate's chat request (the OpenAI chat-completions shape) into a
streaming Messages body. It does no I/O and does not read the response stream (see
`wsgate.core.providers.anthropic`).

Rules:
1. Whatever Anthropic cannot express faithfully is a `BadRequest` naming the field, never a
   silent drop. Refused: `seed`, `presence_penalty`, `frequency_penalty`, a message
   `name`, a `json_object` response format, a temperature above 1.
2. Leading system/developer messages become `system` (texts joined by a blank line; one
   after the chat started is refused); runs of tool messages become one user message of
   `tool_result` blocks; assistant `tool_calls` become `tool_use` blocks (their arguments
   must be a JSON object); images (`image_url` parts of user messages) become base64 or
   URL image sources.
3. `max_tokens` defaults to `DEFAULT_MAX_TOKENS`; `stop` becomes `stop_sequences`, `user`
   `metadata.user_id`, a `json_schema` response format `output_config.format`.
4. Function tools become `name` + `input_schema` (an empty object schema unless given);
   `tool_choice` auto, required, none or one function becomes `auto`, `any`, `none` or
   `tool`, and `parallel_tool_calls: false` is `disable_parallel_tool_use`.
5. Extended thinking: `thinking` (`budget_tokens` at least 1024), or `reasoning_effort`
   mapped to a budget (`EFFORT_BUDGETS`), never both. `max_tokens` must exceed the budget
   (without one it is the budget plus `DEFAULT_MAX_TOKENS`); with thinking on, a temperature
   other than 1, a `top_p` below 0.95 and a forced `tool_choice` are refused (Anthropic
   refuses them). `max_completion_tokens` is `max_tokens`; `extra_body` is merged last.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from wsgate.core.errors import BadRequest
from wsgate.core.jsonio import loads
from wsgate.core.requests import check_message, merge_extra_body, output_cap, thinking_budget

if TYPE_CHECKING:
    from wsgate.core.frames import ChatRequest, Message

DEFAULT_MAX_TOKENS: Final = 4096
"""`max_tokens` sent when the client gave none: Anthropic requires the field."""

_UNSUPPORTED: Final = ("seed", "presence_penalty", "frequency_penalty")
MIN_THINKING_BUDGET: Final = 1024
"""Anthropic's smallest `thinking.budget_tokens`."""
EFFORT_BUDGETS: Final[dict[str, int]] = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32768,
}
"""`reasoning_effort` as an extended-thinking budget (tokens)."""
_IMAGE_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL: Final = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)
_TOOL_CHOICES: Final[dict[str, str]] = {"auto": "auto", "required": "any", "none": "none"}


def anthropic_body(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The streaming Messages body for `request` (rules 1-5); `BadRequest` names the field."""
    for field in _UNSUPPORTED:
        if getattr(request, field) is not None:
            raise BadRequest(f"{field}: not supported by Anthropic")
    system, messages = _messages(request.messages)
    budget = _thinking_budget(request)
    cap = output_cap(request)
    if budget and cap is not None and cap <= budget:
        name = "max_tokens" if request.max_tokens is not None else "max_completion_tokens"
        raise BadRequest(f"{name}: must exceed the thinking budget ({budget})")
    body: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": cap or (budget or 0) + DEFAULT_MAX_TOKENS,
        "messages": messages,
        "stream": True,
    }
    if system:
        body["system"] = system
    _tools(request, body)
    _sampling(request, body, budget)
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    if request.response_format is not None:
        _response_format(request.response_format, body)
    return merge_extra_body(request, body)


def _sampling(request: ChatRequest, body: dict[str, Any], budget: int | None) -> None:
    """Extended thinking, temperature and top_p (rules 1 and 5)."""
    if budget:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        _check_with_thinking(request, body)
    elif budget is not None:
        body["thinking"] = {"type": "disabled"}
    if request.temperature is not None:
        if request.temperature > 1:
            raise BadRequest("temperature: Anthropic accepts 0 to 1")
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p


def _thinking_budget(request: ChatRequest) -> int | None:
    """The extended-thinking budget (rule 5): None: not asked; 0: disabled."""
    if request.thinking is not None and request.reasoning_effort is not None:
        raise BadRequest("reasoning_effort, thinking: set one of the two")
    if request.reasoning_effort == "none":
        return 0  # thinking off
    if request.reasoning_effort is not None:
        budget = EFFORT_BUDGETS.get(request.reasoning_effort)
        if budget is None:
            known = ", ".join(["none", *EFFORT_BUDGETS])
            raise BadRequest(f"reasoning_effort: one of {known} for Anthropic")
        return budget
    if request.thinking is None:
        return None
    budget = thinking_budget(request.thinking)
    if budget is None:
        return 0
    if "budget_tokens" not in request.thinking:
        raise BadRequest("thinking.budget_tokens: required by Anthropic")
    if budget < MIN_THINKING_BUDGET:
        raise BadRequest(f"thinking.budget_tokens: Anthropic needs at least {MIN_THINKING_BUDGET}")
    return budget


def _check_with_thinking(request: ChatRequest, body: dict[str, Any]) -> None:
    """What Anthropic refuses beside extended thinking (rule 5)."""
    if request.temperature is not None and request.temperature != 1:
        raise BadRequest("temperature: with thinking, Anthropic takes only 1")
    if request.top_p is not None and request.top_p < 0.95:
        raise BadRequest("top_p: with thinking, Anthropic takes 0.95 to 1")
    if body.get("tool_choice", {}).get("type") in {"any", "tool"}:
        raise BadRequest("tool_choice: with thinking, Anthropic takes only auto or none")


def _messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the tool_result blocks of the last message
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.name is not None:
            raise BadRequest(f"{where}.name: not supported by Anthropic")
        check_message(message, where)
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
