"""What every provider's request-body builder checks the same way.

Owns the rules of wsgate's request (the OpenAI chat-completions shape) that hold whatever
the provider, so that no builder drops a field the others refuse:
1. Only assistant messages carry `tool_calls`; only tool messages carry `tool_call_id`.
   Anywhere else the field would be dropped by the translation: `bad_request`.
2. The output cap is `max_tokens` or `max_completion_tokens` (OpenAI's newer name), never
   both; each builder sends it under its provider's name.
3. `thinking` is Anthropic's shape, `{"type": "enabled", "budget_tokens": N}` or
   `{"type": "disabled"}`; only Anthropic (the budget) and Ollama (`think`) take it.
4. `extra_body` is the per-provider pass-through: its members are added to the body the
   builder made, as they are. A member any builder may set (`RESERVED_BODY_KEYS`: the
   model, the conversation, tools and tool choice, sampling, caps, thinking, system
   prompts, streaming, server-side state) is `bad_request`, whatever the provider: it
   goes through the request's own fields and their checks, or not at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsgate.core.errors import BadRequest

if TYPE_CHECKING:
    from wsgate.core.frames import ChatRequest, Message


def check_message(message: Message, where: str) -> None:
    """Refuse fields the message's role cannot carry (rule 1)."""
    if message.tool_calls is not None and message.role != "assistant":
        raise BadRequest(f"{where}.tool_calls: only assistant messages make tool calls")
    if message.tool_call_id is not None and message.role != "tool":
        raise BadRequest(f"{where}.tool_call_id: only tool messages answer a tool call")


def output_cap(request: ChatRequest) -> int | None:
    """The request's output cap, by either name (rule 2)."""
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        raise BadRequest("max_tokens, max_completion_tokens: set one of the two")
    return request.max_tokens if request.max_tokens is not None else request.max_completion_tokens


RESERVED_BODY_KEYS = frozenset(
    {
        # what a chat request names itself (and every builder translates)
        "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "temperature",
        "top_p", "top_k", "max_tokens", "max_completion_tokens", "stop", "seed",
        "presence_penalty", "frequency_penalty", "response_format", "reasoning_effort",
        "user", "thinking", "n",
        # what the builders write in each provider's own words
        "stream", "stream_options", "system", "instructions", "input", "max_output_tokens",
        "stop_sequences", "metadata", "output_config", "reasoning", "text", "store",
        "background", "previous_response_id", "conversation", "prompt", "include",
        "options", "think", "format", "tool_resources",
    }
)  # fmt: skip
"""`extra_body` members refused for every provider kind (rule 4)."""


def merge_extra_body(request: ChatRequest, body: dict[str, Any]) -> dict[str, Any]:
    """The body with the request's `extra_body` members added (rule 4)."""
    for key, value in (request.extra_body or {}).items():
        if key in RESERVED_BODY_KEYS or key in body:
            raise BadRequest(f"extra_body.{key}: the gateway sets this field itself")
        body[key] = value
    return body


def thinking_budget(thinking: dict[str, Any]) -> int | None:
    """The budget of an enabled `thinking` (0 when it names none), None when disabled."""
    kind = thinking.get("type")
    extra = set(thinking) - {"type", "budget_tokens"}
    if extra or kind not in {"enabled", "disabled"}:
        shapes = '{"type": "enabled", "budget_tokens": N} or {"type": "disabled"}'
        raise BadRequest(f"thinking: {shapes}")
    if kind == "disabled":
        if "budget_tokens" in thinking:
            raise BadRequest("thinking.budget_tokens: only with type enabled")
        return None
    budget = thinking.get("budget_tokens", 0)
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        raise BadRequest("thinking.budget_tokens: a whole number of tokens")
    return budget
