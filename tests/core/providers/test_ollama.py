"""Ollama /api/chat translation: each stream rule alone.

The fixtures at any split are tested for every provider in test_upstream_fixtures.py; here,
what is particular to this translator. The request body is tested in test_ollama_request.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsgate.core import events as ev
from wsgate.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from wsgate.core.providers import make_parser
from wsgate.core.providers.ollama import OllamaTranslator, _arguments
from wsgate.core.utf8 import has_lone_surrogate

FIXTURE_DIR = Path(__file__).parents[3] / "protocol" / "fixtures" / "upstream" / "ollama"


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
