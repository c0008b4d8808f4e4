"""Rules every request-body builder shares: no field is dropped because of a message's role."""

from __future__ import annotations

import pytest

from wsgate.core.errors import BadRequest
from wsgate.core.frames import ChatRequest, Message
from wsgate.core.providers import build_body

KINDS = ["openai_responses", "anthropic", "ollama"]
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("role", ["user", "system", "tool"])
def test_tool_calls_outside_an_assistant_message_are_a_bad_request(kind, role):
    message = Message(role=role, content="hi", tool_calls=[CALL], tool_call_id="c1")
    request = ChatRequest(model="m", messages=[message])
    with pytest.raises(BadRequest, match=r"messages\[0\]\.tool_calls"):
        build_body(kind, request, "m")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("role", ["user", "assistant", "system"])
def test_a_tool_call_id_outside_a_tool_message_is_a_bad_request(kind, role):
    request = ChatRequest(model="m", messages=[Message(role=role, content="hi", tool_call_id="c1")])
    with pytest.raises(BadRequest, match=r"messages\[0\]\.tool_call_id"):
        build_body(kind, request, "m")


def test_openai_responses_refuses_a_token_limit_below_its_minimum_naming_the_field():
    request = ChatRequest(model="m", messages=[Message(role="user", content="hi")], max_tokens=15)
    with pytest.raises(BadRequest, match="max_tokens"):
        build_body("openai_responses", request, "m")
    request = ChatRequest(model="m", messages=[Message(role="user", content="hi")], max_tokens=16)
    assert build_body("openai_responses", request, "m")["max_output_tokens"] == 16
