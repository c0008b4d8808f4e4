"""Ollama /api/chat request body: every mapping, and every refusal naming its field.

The stream's translation is tested in test_ollama.py.
"""

from __future__ import annotations

import msgspec
import pytest

from wsgate.core.errors import BadRequest
from wsgate.core.frames import ChatRequest
from wsgate.core.providers import build_body
from wsgate.core.providers.ollama_request import ollama_body


def request(**fields):
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return msgspec.convert({"model": "m", **fields}, ChatRequest)


def body(**fields):
    return ollama_body(request(**fields), "llama3.2")


def test_a_minimal_request_is_a_streamed_chat_with_the_upstream_model():
    assert body() == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    assert build_body("ollama", request(), "llama3.2") == body()


def test_system_and_developer_messages_are_system_messages():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "use French"},
        {"role": "user", "content": "hi"},
    ]
    assert body(messages=messages)["messages"][:2] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "use French"},
    ]


def test_a_message_without_content_has_empty_content():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant"}]
    assert body(messages=messages)["messages"][1] == {"role": "assistant", "content": ""}


def test_text_parts_are_joined_and_data_urls_become_images():
    content = [
        {"type": "text", "text": "What is"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0K", "detail": "low"},
        },
        {"type": "text", "text": "in this picture?"},
        {"type": "image_url", "image_url": "data:image/jpeg;base64,/9j/4AAQ"},
    ]
    assert body(messages=[{"role": "user", "content": content}])["messages"] == [
        {
            "role": "user",
            "content": "What is\nin this picture?",
            "images": ["iVBORw0K", "/9j/4AAQ"],
        }
    ]


def test_an_assistant_refusal_part_is_text():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
    ]
    assert body(messages=messages)["messages"][1] == {"role": "assistant", "content": "I can't."}


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "data:image/svg+xml,%3Csvg%3E",
        "data:image/png;base64,",
        "data:image/png;base64",
        None,
    ],
)
def test_an_image_that_is_not_a_base64_data_url_is_refused(url):
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(BadRequest, match=r"messages\[0\]\.content\[0\]\.image_url: .*base64"):
        body(messages=[{"role": "user", "content": content}])


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f"}},
        {"text": "no type"},
    ],
)
def test_other_content_parts_are_refused(part):
    with pytest.raises(BadRequest, match=r"messages\[0\]\.content\[1\]: .*not supported"):
        body(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, part]}])


def test_a_text_part_without_a_string_is_refused():
    with pytest.raises(BadRequest, match=r"content\[0\]\.text: a string"):
        body(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])


def test_a_participant_name_is_refused():
    with pytest.raises(BadRequest, match=r"messages\[0\]\.name: not supported by Ollama"):
        body(messages=[{"role": "user", "content": "hi", "name": "alice"}])


def tool_turn(arguments='{"city": "Paris"}', call_id="call_1", **call_fields):
    return [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                    **call_fields,
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]


def test_assistant_tool_calls_carry_parsed_arguments_and_results_name_their_tool():
    messages = body(messages=tool_turn())["messages"]
    assert messages[1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    "id": "call_1",
                }
            ],
        },
        {"role": "tool", "content": "18 C", "tool_name": "get_weather"},
    ]


def test_a_tool_result_for_an_unknown_call_has_no_tool_name():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "x", "content": "1"},
    ]
    assert body(messages=messages)["messages"][1] == {"role": "tool", "content": "1"}


def test_a_tool_result_with_text_parts_is_joined():
    messages = tool_turn()
    messages[2]["content"] = [{"type": "text", "text": "18"}, {"type": "text", "text": "C"}]
    assert body(messages=messages)["messages"][2]["content"] == "18\nC"


def test_a_call_without_an_id_is_sent_without_one():
    call_out = body(messages=tool_turn(call_id=None))["messages"][1]["tool_calls"][0]
    assert call_out == {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.mark.parametrize("arguments", ["", "  ", None])
def test_empty_call_arguments_are_an_empty_object(arguments):
    call_out = body(messages=tool_turn(arguments))["messages"][1]["tool_calls"][0]
    assert call_out["function"]["arguments"] == {}


@pytest.mark.parametrize("arguments", ['{"city": ', "[1, 2]", '"Paris"', "NaN", {"city": "Paris"}])
def test_call_arguments_that_are_not_a_json_object_are_refused(arguments):
    with pytest.raises(BadRequest, match=r"messages\[1\]\.tool_calls\[0\]\.function\.arguments"):
        body(messages=tool_turn(arguments))


def test_a_call_that_is_not_a_function_call_is_refused():
    with pytest.raises(BadRequest, match=r"tool_calls\[0\]: only function calls"):
        body(messages=tool_turn(type="custom"))


def test_a_call_without_a_name_is_refused():
    messages = tool_turn()
    messages[1]["tool_calls"][0]["function"] = {"arguments": "{}"}
    with pytest.raises(BadRequest, match=r"function\.name: a name is needed"):
        body(messages=messages)


def test_tool_calls_outside_an_assistant_message_are_refused():
    messages = [{"role": "user", "content": "hi", "tool_calls": [{"function": {"name": "f"}}]}]
    with pytest.raises(BadRequest, match=r"messages\[0\]\.tool_calls: only assistant"):
        body(messages=messages)


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_tools_are_sent_in_openais_function_shape():
    assert body(tools=[TOOL])["tools"] == [TOOL]
    assert "tools" not in body(tools=[])


@pytest.mark.parametrize(
    "tool", [{"type": "custom", "custom": {"name": "f"}}, {"type": "function"}]
)
def test_tools_that_are_not_functions_are_refused(tool):
    with pytest.raises(BadRequest, match=r"tools\[1\]: only function tools"):
        body(tools=[TOOL, tool])


def test_tool_choice_auto_or_absent_is_accepted():
    assert "tool_choice" not in body(tools=[TOOL], tool_choice="auto")


@pytest.mark.parametrize(
    "choice", ["none", "required", {"type": "function", "function": {"name": "f"}}]
)
def test_other_tool_choices_are_refused(choice):
    with pytest.raises(BadRequest, match=r'tool_choice: only "auto"'):
        body(tools=[TOOL], tool_choice=choice)


def test_parallel_tool_calls_false_is_refused_and_true_accepted():
    assert "parallel_tool_calls" not in body(parallel_tool_calls=True)
    with pytest.raises(BadRequest, match="parallel_tool_calls: false"):
        body(parallel_tool_calls=False)


def test_sampling_fields_are_options_and_max_tokens_is_num_predict():
    options = body(
        temperature=0.2,
        top_p=0.9,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        stop=["\n\n", "END"],
        max_tokens=128,
    )["options"]
    assert options == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "stop": ["\n\n", "END"],
        "num_predict": 128,
    }


def test_a_single_stop_string_becomes_a_list_and_zero_values_are_kept():
    assert body(stop="END", temperature=0, seed=0)["options"] == {
        "stop": ["END"],
        "temperature": 0,
        "seed": 0,
    }


def test_json_object_is_format_json_and_json_schema_is_the_schema():
    assert body(response_format={"type": "json_object"})["format"] == "json"
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    spec = {"name": "person", "schema": schema, "strict": True}
    assert body(response_format={"type": "json_schema", "json_schema": spec})["format"] == schema
    assert "format" not in body(response_format={"type": "text"})


@pytest.mark.parametrize(
    ("response_format", "field"),
    [
        ({"type": "json_schema"}, "json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"schema": True}}, "json_schema.schema"),
        ({"type": "grammar"}, "response_format: only"),
        ({}, "response_format: only"),
    ],
)
def test_other_response_formats_are_refused(response_format, field):
    with pytest.raises(BadRequest, match=field):
        body(response_format=response_format)


@pytest.mark.parametrize(
    ("effort", "think"),
    [("none", False), ("minimal", True), ("low", True), ("medium", True), ("high", True)],
)
def test_reasoning_effort_turns_thinking_on_or_off(effort, think):
    assert body(reasoning_effort=effort)["think"] is think


def test_an_unknown_reasoning_effort_is_refused():
    with pytest.raises(BadRequest, match="reasoning_effort: not one of"):
        body(reasoning_effort="maximum")


def test_user_is_not_sent():
    assert body(user="user-1234") == body()
