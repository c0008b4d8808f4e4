"""OpenAI Responses request body: every mapping, and every refusal naming its field.

The stream's translation is tested in test_openai_responses.py.
"""

from __future__ import annotations

import pytest

from wsgate.core.errors import BadRequest
from wsgate.core.frames import ChatRequest, Message
from wsgate.core.providers import build_body
from wsgate.core.providers.openai_responses_request import openai_responses_body


def request(*messages, **fields):
    return ChatRequest(model="alias", messages=list(messages) or [user("hi")], **fields)


def user(content, **fields):
    return Message(role="user", content=content, **fields)


def body(*messages, **fields):
    return openai_responses_body(request(*messages, **fields), "gpt-real")


def test_the_minimal_body_streams_without_storing():
    assert build_body("openai_responses", request(), "gpt-real") == {
        "model": "gpt-real",
        "input": [{"role": "user", "content": "hi"}],
        "stream": True,
        "store": False,
    }


def test_system_developer_user_and_assistant_string_messages_are_kept():
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="developer", content="No emoji."),
        user("Hi"),
        Message(role="assistant", content="Hello."),
    ]
    assert body(*messages)["input"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "No emoji."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]


def test_content_parts_become_input_and_output_parts():
    image = {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}}
    messages = [
        Message(role="system", content=[{"type": "text", "text": "S"}]),
        user([{"type": "text", "text": "What is this?"}, image]),
        user([{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]),
        Message(role="assistant", content=[{"type": "text", "text": "A cat."}]),
    ]
    assert body(*messages)["input"] == [
        {"role": "system", "content": [{"type": "input_text", "text": "S"}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"}
            ],
        },
        {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
    ]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (user([{"type": "input_audio", "input_audio": {}}]), r"messages\[0\]\.content\[0\]"),
        (user([{"type": "text", "text": 5}]), r"messages\[0\]\.content\[0\]\.text"),
        (user([{"type": "image_url", "image_url": {}}]), r"content\[0\]\.image_url\.url"),
        (
            Message(role="assistant", content=[{"type": "image_url", "image_url": "u"}]),
            r"messages\[0\]\.content\[0\]",
        ),
        (
            Message(role="assistant", content=[{"type": "refusal", "refusal": "no"}]),
            r"messages\[0\]\.content\[0\]",
        ),
        (user(None), r"messages\[0\]\.content: required"),
        (user("hi", name="ann"), r"messages\[0\]\.name"),
    ],
)
def test_content_that_cannot_be_sent_is_a_bad_request_naming_the_field(message, field):
    with pytest.raises(BadRequest, match=field):
        body(message)


def test_assistant_tool_calls_and_tool_results_become_call_items():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    messages = [
        user("go"),
        Message(role="assistant", content=None, tool_calls=[call]),
        Message(role="tool", tool_call_id="call_1", content="42", name="f"),
        Message(role="assistant", content="Also.", tool_calls=[{**call, "id": "call_2"}]),
        Message(
            role="tool",
            tool_call_id="call_2",
            content=[{"type": "text", "text": "4"}, {"type": "text", "text": "3"}],
        ),
        Message(role="tool", tool_call_id="call_3"),
        Message(role="assistant", content=""),
    ]
    assert body(*messages)["input"] == [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"role": "assistant", "content": "Also."},
        {"type": "function_call", "call_id": "call_2", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "call_2", "output": "43"},
        {"type": "function_call_output", "call_id": "call_3", "output": ""},
    ]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (
            Message(role="assistant", tool_calls=[{"type": "custom", "custom": {}}]),
            r"tool_calls\[0\]: only function",
        ),
        (
            Message(role="assistant", tool_calls=[{"function": {"name": "f"}}]),
            r"tool_calls\[0\]\.id",
        ),
        (
            Message(role="assistant", tool_calls=[{"id": "c", "function": {"arguments": "{}"}}]),
            r"tool_calls\[0\]\.function\.name",
        ),
        (
            Message(
                role="assistant",
                tool_calls=[{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}],
            ),
            r"tool_calls\[0\]\.function\.arguments",
        ),
        (Message(role="tool", content="x"), r"messages\[0\]\.tool_call_id"),
        (
            Message(role="tool", tool_call_id="c", content=[{"type": "image_url"}]),
            r"messages\[0\]\.content\[0\]: a tool result must be text",
        ),
    ],
)
def test_tool_calls_and_results_that_cannot_be_sent_are_bad_requests(message, field):
    with pytest.raises(BadRequest, match=field):
        body(message)


def test_function_tools_are_flattened_not_strict_unless_asked():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [
        {
            "type": "function",
            "function": {"name": "w", "description": "Weather", "parameters": schema},
        },
        {"type": "function", "function": {"name": "now"}},
        {"type": "function", "function": {"name": "s", "parameters": schema, "strict": True}},
    ]
    assert body(tools=tools)["tools"] == [
        {
            "type": "function",
            "name": "w",
            "description": "Weather",
            "parameters": schema,
            "strict": False,
        },
        {
            "type": "function",
            "name": "now",
            "parameters": {"type": "object", "properties": {}},
            "strict": False,
        },
        {"type": "function", "name": "s", "parameters": schema, "strict": True},
    ]


@pytest.mark.parametrize(
    ("tool", "field"),
    [
        ({"type": "web_search"}, r"tools\[0\]: only function tools"),
        ({"type": "function"}, r"tools\[0\]: only function tools"),
        (
            {"type": "function", "function": {"description": "d"}},
            r"tools\[0\]\.function\.name: must be",
        ),
        (
            {"type": "function", "function": {"name": "f", "examples": []}},
            r"tools\[0\]\.function: has fields",
        ),
    ],
)
def test_tools_that_cannot_be_sent_are_bad_requests(tool, field):
    with pytest.raises(BadRequest, match=field):
        body(tools=[tool])


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_words_are_kept(choice):
    assert body(tool_choice=choice)["tool_choice"] == choice


def test_a_named_tool_choice_is_flattened():
    choice = {"type": "function", "function": {"name": "f"}}
    assert body(tool_choice=choice)["tool_choice"] == {"type": "function", "name": "f"}


@pytest.mark.parametrize(
    "choice", ["any", {"type": "allowed_tools"}, {"type": "function", "function": "f"}]
)
def test_other_tool_choices_are_bad_requests(choice):
    with pytest.raises(BadRequest, match="tool_choice"):
        body(tool_choice=choice)


def test_sampling_limits_and_identity_fields_are_mapped():
    mapped = body(
        parallel_tool_calls=False,
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        reasoning_effort="low",
        user="u-1",
    )
    assert mapped["parallel_tool_calls"] is False
    assert mapped["max_output_tokens"] == 64
    assert "max_tokens" not in mapped
    assert mapped["temperature"] == 0.2
    assert mapped["top_p"] == 0.9
    assert mapped["reasoning"] == {"effort": "low"}
    assert mapped["user"] == "u-1"


@pytest.mark.parametrize(
    ("response_format", "text_format"),
    [
        ({"type": "text"}, {"type": "text"}),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
            {"type": "json_schema", "name": "r", "schema": {"type": "object"}, "strict": False},
        ),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "r",
                    "description": "A result.",
                    "schema": {"type": "object"},
                    "strict": True,
                },
            },
            {
                "type": "json_schema",
                "name": "r",
                "schema": {"type": "object"},
                "strict": True,
                "description": "A result.",
            },
        ),
    ],
)
def test_response_format_becomes_text_format(response_format, text_format):
    assert body(response_format=response_format)["text"] == {"format": text_format}


@pytest.mark.parametrize(
    ("response_format", "field"),
    [
        ({"type": "grammar"}, "response_format: not supported"),
        ({"type": "json_schema"}, "response_format: not supported"),
        ({"type": "json_schema", "json_schema": {"name": "r"}}, r"json_schema\.schema: required"),
        (
            {"type": "json_schema", "json_schema": {"schema": {}}},
            r"response_format\.json_schema\.name",
        ),
    ],
)
def test_response_formats_that_cannot_be_sent_are_bad_requests(response_format, field):
    with pytest.raises(BadRequest, match=field):
        body(response_format=response_format)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stop", ["\n"]),
        ("stop", "END"),
        ("seed", 7),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.0),
    ],
)
def test_parameters_responses_does_not_have_are_bad_requests_naming_the_field(field, value):
    with pytest.raises(BadRequest, match=f"^{field}: not supported by OpenAI Responses$"):
        body(**{field: value})
