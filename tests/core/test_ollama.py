"""Ollama /api/chat translation: each stream rule alone, then every body mapping and refusal.

The fixtures at any split are tested for every provider in test_upstream_fixtures.py; here,
what is particular to this translator and its request body.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from wsgate.core import events as ev
from wsgate.core.errors import (
    BadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from wsgate.core.frames import ChatRequest
from wsgate.core.ollama import OllamaTranslator, _arguments, ollama_body
from wsgate.core.providers import build_body, make_parser
from wsgate.core.utf8 import has_lone_surrogate

FIXTURE_DIR = Path(__file__).parents[2] / "protocol" / "fixtures" / "upstream" / "ollama"


def test_fixtures_cover_the_required_streams():
    names = {p.stem for p in FIXTURE_DIR.glob("*.ndjson")}
    assert {
        "text_with_usage",
        "multibyte_text",
        "split_surrogate_pair",
        "parallel_tool_calls",
        "tool_calls_legacy",
        "thinking",
        "length",
        "error_line",
        "truncated_without_done",
        "truncated_mid_line",
        "proxied_crlf_keepalive",
    } <= names


def test_the_ollama_kind_is_registered_with_an_ndjson_parser():
    parser = make_parser("ollama", 1 << 20)
    body = b'{"message":{"role":"assistant","content":"a"},"done":false}\n'
    assert parser.feed(body) == [ev.RoleDelta("assistant"), ev.TextDelta("a")]
    assert parser.feed(b'{"done":true,"done_reason":"stop"}') == []  # no LF yet
    assert parser.eof() == [ev.Finish("stop")]


def test_an_overlong_line_ends_the_parser_with_the_lines_before_it():
    parser = make_parser("ollama", 100)
    items = parser.feed(b'{"message":{"content":"a"}}\n' + b"x" * 101 + b"\n")
    assert items[0] == ev.TextDelta("a")
    assert items[1].code == "upstream_line_too_long"


# --- unit rules -------------------------------------------------------------------------------


def line(message=None, *, done=False, **extra):
    chunk = {"model": "llama3.2", "created_at": "2025-09-18T14:02:11.1Z"}
    if message is not None:
        chunk["message"] = {"role": "assistant", **message}
    return json.dumps({**chunk, "done": done, **extra})


def done(reason="stop", message=None, **extra):
    return line(message or {"content": ""}, done=True, done_reason=reason, **extra)


def run(*lines, finish=False, translator=None):
    translator = translator or OllamaTranslator()
    out = []
    for item in lines:
        out.extend(translator.feed(item))
    if finish:
        out.extend(translator.finish())
    return out


def test_role_is_emitted_once():
    out = run(line({"content": "a"}), line({"content": "b"}))
    assert out == [ev.RoleDelta("assistant"), ev.TextDelta("a"), ev.TextDelta("b")]


def test_empty_and_missing_content_produce_nothing_but_the_role():
    out = run(line({"content": ""}), line({"content": None}), line({}), line())
    assert out == [ev.RoleDelta("assistant")]


def test_thinking_is_reasoning_kept_apart_from_the_text():
    out = run(line({"thinking": "hmm", "content": "yes"}))
    assert out[1:] == [ev.ReasoningDelta("hmm"), ev.TextDelta("yes")]


def test_a_surrogate_pair_split_across_lines_is_joined():
    out = run('{"message":{"content":"a\\ud83d"}}', '{"message":{"content":"\\ude00b"}}')
    assert out == [ev.TextDelta("a"), ev.TextDelta("\U0001f600b")]


def test_held_surrogates_are_flushed_as_replacement_before_the_finish():
    out = run(
        '{"message":{"thinking":"\\ud83d"}}', '{"message":{"content":"\\ud83d"}}', '{"done":true}'
    )
    assert out == [ev.ReasoningDelta("\ufffd"), ev.TextDelta("\ufffd"), ev.Finish("stop")]
    assert not any(has_lone_surrogate(getattr(e, "text", "")) for e in out)


def test_usage_comes_from_the_done_line_counts_before_the_finish():
    out = run(done(prompt_eval_count=26, eval_count=298))
    assert out[-2:] == [ev.Usage(26, 298), ev.Finish("stop")]


def test_a_missing_count_is_zero_and_no_count_is_no_usage():
    assert run(done(eval_count=5))[-2] == ev.Usage(0, 5)
    assert run(done(prompt_eval_count=5, eval_count="many"))[-2] == ev.Usage(5, 0)
    assert ev.Usage not in {type(e) for e in run(done())}


def test_the_done_line_message_is_read_before_the_end():
    out = run(done(message={"content": "last"}, eval_count=1))
    assert out == [
        ev.RoleDelta("assistant"),
        ev.TextDelta("last"),
        ev.Usage(0, 1),
        ev.Finish("stop"),
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("load", "error"),
        ("unload", "error"),
        ("", "stop"),
        (None, "stop"),
        ("something_new", "error"),
    ],
)
def test_done_reason_is_normalized(raw, reason):
    translator = OllamaTranslator()
    assert run(json.dumps({"done": True, "done_reason": raw}), translator=translator) == [
        ev.Finish(reason)
    ]
    assert translator.raw_finish_reason == raw


def test_a_done_line_without_a_reason_is_stop():
    assert run('{"done":true}') == [ev.Finish("stop")]


def test_done_ends_the_turn_and_later_lines_are_ignored():
    translator = OllamaTranslator()
    assert translator.feed(line({"content": "a"})) == [ev.RoleDelta("assistant"), ev.TextDelta("a")]
    assert not translator.done
    assert translator.feed(done()) == [ev.Finish("stop")]
    assert translator.done
    assert translator.feed(line({"content": "late"})) == []
    assert translator.feed('{"error":"late"}') == []
    assert translator.finish() == []


@pytest.mark.parametrize("flag", ["false", "1", '"yes"', "null"])
def test_only_a_json_true_done_ends_the_turn(flag):
    assert run('{"done":' + flag + "}") == []


def test_a_body_without_a_done_line_is_a_protocol_error_not_stop():
    translator = OllamaTranslator()
    translator.feed(line({"content": "a"}))
    with pytest.raises(UpstreamProtocolError, match="ended before it finished"):
        translator.finish()
    assert translator.done
    assert translator.finish() == []


@pytest.mark.parametrize("payload", ["{", '{"done":tru', "NaN", "data: {}", ""])
def test_malformed_json_is_a_protocol_error(payload):
    with pytest.raises(UpstreamProtocolError, match="upstream sent malformed JSON"):
        run(payload)


@pytest.mark.parametrize("payload", ["[1]", '"text"', "3", "null"])
def test_a_line_that_is_not_an_object_is_a_protocol_error(payload):
    with pytest.raises(UpstreamProtocolError, match="not a JSON object"):
        run(payload)


@pytest.mark.parametrize(
    "payload",
    [
        '{"message":"text"}',
        '{"message":{"content":["a"]}}',
        '{"message":{"thinking":7}}',
        '{"message":{"role":1}}',
        '{"message":{"tool_calls":{"function":{}}}}',
        '{"message":{"tool_calls":["call"]}}',
        '{"message":{"tool_calls":[{"id":5,"function":{"name":"f"}}]}}',
        '{"message":{"tool_calls":[{"function":{"name":["f"]}}]}}',
        '{"done":true,"done_reason":5}',
    ],
)
def test_wrong_field_types_are_protocol_errors(payload):
    with pytest.raises(UpstreamProtocolError):
        run(payload)


def calls(*items, content=""):
    return line({"content": content, "tool_calls": list(items)})


def call(name="f", arguments=None, call_id=None, **function):
    entry = {"function": {"name": name, **function}}
    if arguments is not None:
        entry["function"]["arguments"] = arguments
    if call_id is not None:
        entry["id"] = call_id
    return entry


def test_a_tool_call_is_started_chunked_once_and_ended_at_the_done_line():
    out = run(calls(call("get_weather", {"city": "Paris", "days": [1, 2]}, "call_x")))
    assert out[1:] == [
        ev.ToolCallStart("call_x", 0, "get_weather"),
        ev.ToolCallChunk("call_x", '{"city":"Paris","days":[1,2]}'),
    ]
    assert run(calls(call("g", {"a": 1}, "c1")), done())[-2:] == [
        ev.ToolCallEnd("c1", "g", {"a": 1}),
        ev.Finish("tool_calls"),
    ]


def test_parallel_calls_in_one_message_end_in_order_before_usage():
    out = run(calls(call("f", {"a": 1}), call("g", {"b": 2})), done(eval_count=3))
    assert out[-4:] == [
        ev.ToolCallEnd("call_0", "f", {"a": 1}),
        ev.ToolCallEnd("call_1", "g", {"b": 2}),
        ev.Usage(0, 3),
        ev.Finish("tool_calls"),
    ]


def test_calls_on_separate_lines_without_ids_or_indexes_stay_separate():
    out = run(calls(call("f", {"a": 1})), calls(call("f", {"a": 2})), done())
    ends = [e for e in out if isinstance(e, ev.ToolCallEnd)]
    assert ends == [
        ev.ToolCallEnd("call_0", "f", {"a": 1}),
        ev.ToolCallEnd("call_1", "f", {"a": 2}),
    ]


def test_the_call_index_is_the_arrival_position_not_ollamas_index():
    out = run(calls(call("f", {}, index=0)), calls(call("g", {}, index=0)))
    starts = [e for e in out if isinstance(e, ev.ToolCallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "f"), (1, "g")]


def test_a_repeated_or_empty_ollama_id_is_replaced():
    out = run(calls(call("f", {}, "dup"), call("g", {}, "dup"), call("h", {}, "")), done())
    ends = [e for e in out if isinstance(e, ev.ToolCallEnd)]
    assert [e.call_id for e in ends] == ["dup", "call_1", "call_2"]


def test_string_arguments_are_sent_as_given_and_parsed_at_the_end():
    out = run(calls(call("f", '{"path": "/srv"}', "c1")), done())
    assert ev.ToolCallChunk("c1", '{"path": "/srv"}') in out
    assert ev.ToolCallEnd("c1", "f", {"path": "/srv"}) in out


def test_a_call_without_arguments_gets_an_empty_object_chunk():
    out = run(calls(call("f", call_id="c1")), done())
    assert out[1:4] == [
        ev.ToolCallStart("c1", 0, "f"),
        ev.ToolCallChunk("c1", "{}"),
        ev.ToolCallEnd("c1", "f", {}),
    ]


def test_string_arguments_that_do_not_parse_fail_that_call_only():
    out = run(calls(call("f", '{"a": ', "c1"), call("g", {"b": 1}, "c2")), done())
    assert ev.ToolCallFailed("c1", "f", '{"a": ', "arguments are not valid JSON") in out
    assert ev.ToolCallEnd("c2", "g", {"b": 1}) in out
    assert out[-1] == ev.Finish("tool_calls")


def test_a_call_without_a_name_fails_without_a_start():
    out = run(calls({"function": {"arguments": {}}}, {"id": "c2"}), done())
    failed = [e for e in out if isinstance(e, ev.ToolCallFailed)]
    assert [f.reason for f in failed] == ["tool call has no name"] * 2
    assert not any(isinstance(e, ev.ToolCallStart) for e in out)


def test_argument_values_with_lone_surrogate_escapes_are_scrubbed():
    payload = '{"message":{"tool_calls":[{"function":{"name":"f","arguments":{"s":"\\ud83d"}}}]}}'
    out = run(payload, done())
    assert ev.ToolCallEnd("call_0", "f", {"s": "\ufffd"}) in out


def test_argument_values_too_deep_for_orjson_are_written_by_the_stdlib():
    deep = "[" * 300 + "]" * 300
    payload = '{"message":{"tool_calls":[{"function":{"name":"f","arguments":' + deep + "}}]}}"
    assert ev.ToolCallChunk("call_0", deep) in run(payload)


def test_argument_values_too_deep_to_write_are_a_protocol_error():
    value = ["\ud800"]
    for _ in range(100_000):
        value = [value]
    with pytest.raises(UpstreamProtocolError, match="nest too deeply"):
        _arguments(value)


def test_a_turn_with_calls_that_hit_the_length_limit_is_length():
    assert run(calls(call("f", {})), done("length"))[-1] == ev.Finish("length")


def test_snapshots_are_passed_to_the_accumulator():
    translator = OllamaTranslator(tool_snapshots=True)
    out = run(calls(call("f", {"text": "x" * 100}, "c1")), translator=translator)
    assert ev.ToolCallSnapshot("c1", {"text": "x" * 100}) in out


def test_an_error_line_raises_a_generic_upstream_error_without_its_text():
    translator = OllamaTranslator()
    with pytest.raises(UpstreamError) as caught:
        translator.feed('{"error":"model runner crashed: /home/alice/secret.gguf"}')
    assert type(caught.value) is UpstreamError
    assert caught.value.public_message == "upstream reported an error"
    assert translator.done


def test_an_empty_error_line_is_still_an_error():
    with pytest.raises(UpstreamError):
        run('{"error":""}')


def test_an_error_object_names_only_short_identifiers_and_rate_limits():
    with pytest.raises(UpstreamRateLimited, match=r"\(rate_limit_exceeded\)"):
        run('{"error":{"type":"rate_limit_exceeded","message":"slow down, alice"}}')


def test_a_null_error_is_not_an_error():
    assert run('{"error":null,"message":{"content":"a"}}') == [ev.TextDelta("a")]


def test_openai_style_fields_are_not_read():
    chunk = {"choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}]}
    assert run(json.dumps(chunk)) == []


# --- the request body -------------------------------------------------------------------------


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
