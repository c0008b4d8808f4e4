"""Request fields every builder translates: the output cap's two names, extended thinking,
and the `extra_body` pass-through, for each provider kind."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from wsgate.core.errors import BadRequest
from wsgate.core.frames import ChatRequest
from wsgate.core.providers.registry import KIND_NAMES, build_body

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def request(**fields: Any) -> ChatRequest:
    return msgspec.convert({**BASE, **fields}, ChatRequest)


def body(kind: str, **fields: Any) -> dict[str, Any]:
    return build_body(kind, request(**fields), "up")


CAP_AT = {
    "openai_chat": ("max_completion_tokens",),
    "openai_responses": ("max_output_tokens",),
    "anthropic": ("max_tokens",),
    "ollama": ("options", "num_predict"),
}


def at(payload: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        payload = payload[key]
    return payload


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_max_completion_tokens_is_each_providers_output_cap(kind):
    assert at(body(kind, max_completion_tokens=321), CAP_AT[kind]) == 321


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_both_names_of_the_output_cap_are_refused(kind):
    with pytest.raises(BadRequest, match="set one of the two"):
        body(kind, max_tokens=100, max_completion_tokens=100)


def test_anthropic_takes_extended_thinking_and_raises_max_tokens_above_the_budget():
    payload = body("anthropic", thinking={"type": "enabled", "budget_tokens": 2048})
    assert payload["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert payload["max_tokens"] == 2048 + 4096
    assert body("anthropic", thinking={"type": "disabled"})["thinking"] == {"type": "disabled"}


def test_anthropic_maps_reasoning_effort_to_a_thinking_budget():
    payload = body("anthropic", reasoning_effort="high")
    assert payload["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    with pytest.raises(BadRequest, match="reasoning_effort: one of"):
        body("anthropic", reasoning_effort="extreme")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 500}}, "at least 1024"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}, "max_tokens": 2048}, "exceed"),
        ({"thinking": {"type": "on"}}, "thinking:"),
        ({"thinking": {"type": "disabled", "budget_tokens": 1}}, "only with type enabled"),
        ({"thinking": {"type": "enabled", "budget_tokens": True}}, "whole number"),
        ({"reasoning_effort": "low", "thinking": {"type": "disabled"}}, "set one of the two"),
        ({"reasoning_effort": "low", "temperature": 0.5}, "temperature"),
        ({"reasoning_effort": "low", "top_p": 0.5}, "top_p"),
        (
            {"reasoning_effort": "low", "tools": [{"type": "function", "function": {"name": "f"}}],
             "tool_choice": "required"},
            "tool_choice",
        ),
    ],
)  # fmt: skip
def test_anthropic_refuses_thinking_it_cannot_run_naming_the_field(fields, message):
    with pytest.raises(BadRequest, match=message):
        body("anthropic", **fields)


def test_ollama_turns_thinking_into_think():
    assert body("ollama", thinking={"type": "enabled"})["think"] is True
    assert body("ollama", thinking={"type": "disabled"})["think"] is False


@pytest.mark.parametrize("kind", ["openai_chat", "openai_responses"])
def test_openai_refuses_anthropics_thinking_and_points_at_reasoning_effort(kind):
    with pytest.raises(BadRequest, match="use reasoning_effort"):
        body(kind, thinking={"type": "enabled", "budget_tokens": 2048})


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_extra_body_members_reach_the_body_as_they_are(kind):
    payload = body(kind, extra_body={"service_tier": "flex", "metadata_x": {"a": [1]}})
    assert payload["service_tier"] == "flex"
    assert payload["metadata_x"] == {"a": [1]}
    assert "extra_body" not in payload


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_extra_body_cannot_override_what_the_gateway_sets(kind):
    with pytest.raises(BadRequest, match=r"extra_body\.stream"):
        body(kind, extra_body={"stream": False})


@pytest.mark.parametrize("key", ["tools", "system", "thinking", "tool_choice", "max_tokens", "n"])
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_extra_body_cannot_smuggle_what_the_request_has_fields_and_checks_for(kind, key):
    with pytest.raises(BadRequest, match=rf"extra_body\.{key}"):
        body(kind, extra_body={key: 1})


def test_anthropic_reasoning_effort_none_turns_thinking_off_and_a_budget_is_required():
    assert body("anthropic", reasoning_effort="none")["thinking"] == {"type": "disabled"}
    with pytest.raises(BadRequest, match="budget_tokens: required"):
        body("anthropic", thinking={"type": "enabled"})
