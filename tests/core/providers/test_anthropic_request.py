"""Anthropic Messages request body: every mapping, and every refusal naming its field.

The stream's translation is tested in test_anthropic.py.
"""

from __future__ import annotations

import msgspec
import pytest

from wsgate.core.errors import BadRequest
from wsgate.core.frames import ChatRequest
from wsgate.core.providers.anthropic_request import DEFAULT_MAX_TOKENS, anthropic_body


def request(messages=None, **fields):
    messages = messages if messages is not None else [{"role": "user", "content": "hi"}]
    return msgspec.convert({"model": "alias", "messages": messages, **fields}, ChatRequest)


def body(messages=None, **fields):
    return anthropic_body(request(messages, **fields), "claude-x")


def test_the_minimal_body_streams_with_the_default_max_tokens():
    assert body() == {
        "model": "claude-x",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    assert DEFAULT_MAX_TOKENS == 4096


def test_leading_system_and_developer_messages_become_the_system_text():
    out = body(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "user", "content": "hi"},
        ]
    )
    assert out["system"] == "Be brief.\n\nUse French."
    assert out["messages"] == [{"role": "user", "content": "hi"}]


def test_a_system_message_after_the_conversation_started_is_refused():
    with pytest.raises(BadRequest, match=r"messages\[1\]"):
        body([{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}])


@pytest.mark.parametrize(
    "content", [None, [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]]
)
def test_a_system_message_needs_text(content):
    with pytest.raises(BadRequest, match=r"messages\[0\]"):
        body([{"role": "system", "content": content}, {"role": "user", "content": "hi"}])


def test_user_parts_become_text_and_image_blocks():
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "auto"}},
        {"type": "image_url", "image_url": "http://example.com/b.gif"},
    ]
    assert body([{"role": "user", "content": parts}])["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "image", "source": {"type": "url", "url": "http://example.com/b.gif"}},
    ]


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}, "image_url"),
        ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, "image_url"),
        ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, "image_url"),
        ({"type": "image_url", "image_url": {}}, "image_url"),
        (
            {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "high"}},
            "detail",
        ),
        ({"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}, "input_audio"),
        ({"type": "text", "text": None}, "text"),
    ],
)
def test_user_parts_anthropic_cannot_take_are_refused(part, field):
    with pytest.raises(BadRequest, match=rf"messages\[0\]\.content\[0\].*{field}"):
        body([{"role": "user", "content": [part]}])


def test_a_user_message_needs_content():
    with pytest.raises(BadRequest, match=r"messages\[0\]\.content: required"):
        body([{"role": "user"}])


def test_a_message_name_is_refused():
    with pytest.raises(BadRequest, match=r"messages\[0\]\.name"):
        body([{"role": "user", "content": "hi", "name": "bob"}])


def test_tool_calls_on_a_non_assistant_message_are_refused():
    with pytest.raises(BadRequest, match=r"messages\[0\]\.tool_calls"):
        body([{"role": "user", "content": "hi", "tool_calls": []}])


def call(call_id="call_1", name="get_weather", arguments='{"city": "Paris"}'):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_assistant_tool_calls_become_tool_use_blocks_after_the_text():
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call(), call("c2", "f", " ")]},
    ]
    assert body(messages)["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "c2", "name": "f", "input": {}},
        ],
    }


def test_assistant_content_without_calls_and_empty_text_with_calls():
    plain = body([{"role": "assistant", "content": "Hello"}])["messages"]
    assert plain == [{"role": "assistant", "content": "Hello"}]
    empty = body([{"role": "assistant", "content": "", "tool_calls": [call()]}])["messages"]
    assert [block["type"] for block in empty[0]["content"]] == ["tool_use"]
    parts = [{"type": "text", "text": "a"}]
    mixed = body([{"role": "assistant", "content": parts, "tool_calls": [call()]}])["messages"]
    assert [block["type"] for block in mixed[0]["content"]] == ["text", "tool_use"]
    listed = body([{"role": "assistant", "content": parts}])["messages"]
    assert listed == [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"role": "assistant"}, "needs content or tool_calls"),
        ({"role": "assistant", "tool_calls": [call(arguments='{"a": ')]}, "not valid JSON"),
        ({"role": "assistant", "tool_calls": [call(arguments="[1]")]}, "JSON object"),
        ({"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}, "function name"),
        ({"role": "assistant", "tool_calls": [{"type": "custom", "id": "c"}]}, "only function"),
        (
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            "'refusal'",
        ),
        (
            {
                "role": "assistant",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}],
            },
            "'image_url'",
        ),
    ],
)
def test_assistant_messages_anthropic_cannot_take_are_refused(message, match):
    with pytest.raises(BadRequest, match=match):
        body([message])


def test_consecutive_tool_messages_become_one_user_message_of_tool_results():
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [call("a"), call("b")]},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "12:00"}]},
        {"role": "user", "content": "thanks"},
        {"role": "tool", "tool_call_id": "c", "content": "late"},
    ]
    out = body(messages)["messages"]
    assert out[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "a", "content": "sunny"},
            {
                "type": "tool_result",
                "tool_use_id": "b",
                "content": [{"type": "text", "text": "12:00"}],
            },
        ],
    }
    assert out[3] == {"role": "user", "content": "thanks"}
    assert out[4]["content"] == [{"type": "tool_result", "tool_use_id": "c", "content": "late"}]


def test_a_tool_message_needs_its_call_id():
    with pytest.raises(BadRequest, match=r"messages\[0\]\.tool_call_id"):
        body([{"role": "tool", "content": "x"}])


def function_tool(name="get_weather", **extra):
    return {"type": "function", "function": {"name": name, **extra}}


def test_function_tools_become_anthropic_tools():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [
        function_tool(description="Weather now.", parameters=schema, strict=True),
        function_tool("ping"),
    ]
    assert body(tools=tools)["tools"] == [
        {
            "name": "get_weather",
            "input_schema": schema,
            "description": "Weather now.",
            "strict": True,
        },
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(
    ("tool", "match"),
    [
        ({"type": "web_search"}, "only function tools"),
        ({"type": "function", "function": {"description": "x"}}, "name: required"),
    ],
)
def test_tools_anthropic_cannot_take_are_refused(tool, match):
    with pytest.raises(BadRequest, match=rf"tools\[0\].*{match}"):
        body(tools=[tool])


@pytest.mark.parametrize(
    ("choice", "translated"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice_is_translated(choice, translated):
    assert body(tools=[function_tool()], tool_choice=choice)["tool_choice"] == translated


def test_no_tool_choice_sends_none():
    assert "tool_choice" not in body(tools=[function_tool()])


@pytest.mark.parametrize("choice", ["sometimes", {"type": "function"}, {"type": "allowed_tools"}])
def test_an_unknown_tool_choice_is_refused(choice):
    with pytest.raises(BadRequest, match="tool_choice"):
        body(tools=[function_tool()], tool_choice=choice)


def test_parallel_tool_calls_false_disables_parallel_tool_use():
    tools = [function_tool()]
    assert body(tools=tools, parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert body(tools=tools, tool_choice="required", parallel_tool_calls=False)["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }
    assert body(tools=tools, tool_choice="none", parallel_tool_calls=False)["tool_choice"] == {
        "type": "none"
    }
    assert "tool_choice" not in body(tools=tools, parallel_tool_calls=True)


def test_without_tools_tool_choice_none_and_parallel_tool_calls_change_nothing():
    assert body(tool_choice="none", parallel_tool_calls=False) == body()
    with pytest.raises(BadRequest, match="tool_choice: needs tools"):
        body(tool_choice="required")


def test_sampling_fields_are_translated():
    out = body(max_tokens=100, temperature=0.5, top_p=0.9, stop="END", user="user-42")
    assert out["max_tokens"] == 100
    assert out["temperature"] == 0.5
    assert out["top_p"] == 0.9
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "user-42"}
    assert body(stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in body(stop=[])


def test_a_temperature_above_one_is_refused():
    assert body(temperature=1.0)["temperature"] == 1.0
    with pytest.raises(BadRequest, match="temperature"):
        body(temperature=1.5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 7),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.5),
    ],
)
def test_fields_anthropic_cannot_take_are_refused_by_name(field, value):
    with pytest.raises(BadRequest, match=rf"^{field}: not supported by Anthropic$"):
        body(**{field: value})


def test_response_format_text_is_the_default_and_json_schema_is_output_format():
    assert body(response_format={"type": "text"}) == body()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"name": "answer", "strict": True, "schema": schema}
    out = body(response_format={"type": "json_schema", "json_schema": spec})
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


@pytest.mark.parametrize(
    "response_format", [{"type": "json_object"}, {"type": "json_schema", "json_schema": {}}]
)
def test_other_response_formats_are_refused(response_format):
    with pytest.raises(BadRequest, match="response_format"):
        body(response_format=response_format)
