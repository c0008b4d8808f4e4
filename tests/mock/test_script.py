"""The script: parsing and its errors, the deterministic text, chunking, and the event plan."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.mock.openai_chat import DONE_EVENT, OPENAI_CHAT
from wsgate.mock.plan import RequestInfo, complete_body, plan_stream
from wsgate.mock.script import (
    Script,
    ScriptError,
    check_streaming,
    extract_script,
    generate_text,
    join_surrogates,
    json_text,
    parse_script,
    split_chunks,
    split_surrogate_pairs,
)

BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "say hi"}]}


def plan_events(script, body, *, number=0, created=0):
    return plan_stream(OPENAI_CHAT, script, RequestInfo(body, number, created)).events


def completion_body(script, body, *, number=0, created=0):
    return complete_body(OPENAI_CHAT, script, RequestInfo(body, number, created))


def chat_script(header, body):
    return extract_script(header, OPENAI_CHAT.user_text(body))


def payloads(plan):
    return [event.data for event in plan]


def decoded(plan):
    out = []
    for event in plan:
        assert event.data.startswith(b"data: ")
        assert event.data.endswith(b"\n\n")
        body = event.data[len(b"data: ") : -2]
        out.append(body if body == b"[DONE]" else orjson.loads(body))
    return out


# --- chunking ---------------------------------------------------------------------------


def test_word_chunks_carry_their_leading_whitespace():
    assert split_chunks(Script(), "Hello, world!") == ["Hello,", " world!"]


def test_word_chunks_keep_leading_and_trailing_whitespace_and_newlines():
    text = "  Hi\nthere \t you  \n"
    chunks = split_chunks(Script(), text)
    assert chunks == ["  Hi", "\nthere", " \t you", "  \n"]
    assert "".join(chunks) == text


def test_word_chunks_of_empty_text_are_none():
    assert split_chunks(Script(), "") == []


def test_int_chunks_count_code_points_not_bytes():
    text = "héllo 世界🎉!"
    assert split_chunks(Script(chunk=3), text) == ["hél", "lo ", "世界🎉", "!"]


def test_explicit_chunks_are_kept_as_given_including_empty_ones():
    script = parse_script({"chunks": ["Hel", "", "lo 世", "界"]})
    assert split_chunks(script, "ignored") == ["Hel", "", "lo 世", "界"]


@given(st.text(), st.one_of(st.just("word"), st.integers(min_value=1, max_value=9)))
def test_any_chunking_joins_back_to_the_text(text, rule):
    assert "".join(split_chunks(Script(chunk=rule), text)) == text


# --- generated text ---------------------------------------------------------------------


def test_generated_text_is_deterministic_per_seed():
    assert generate_text(30, 5) == generate_text(30, 5)
    assert generate_text(30, 5) != generate_text(30, 6)


def test_generated_text_has_exactly_the_asked_number_of_words_in_sentences():
    text = generate_text(48, 123)
    assert len(text.split()) == 48
    assert text[0].isupper()
    assert text.endswith(".")
    assert generate_text(0, 1) == ""


# --- parsing ----------------------------------------------------------------------------


def test_parse_script_accepts_every_documented_key():
    script = parse_script(
        {
            "words": 5,
            "seed": 2,
            "chunk": 4,
            "ttft_ms": 10,
            "tokens_per_s": 100.5,
            "finish_reason": "length",
            "tool_calls": [{"id": "call_1", "name": "f", "arguments": "{}"}],
            "args_chunk": 2,
            "done": False,
            "tag": "t",
        }
    )
    assert script.ttft_ms == 10.0
    assert script.tool_calls[0].name == "f"
    assert parse_script({"status": 429, "retry_after": 1.5}).retry_after == 1.5
    assert parse_script({"events": ["{}"]}).events == ("{}",)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ([], "must be a JSON object"),
        ({"txt": "x"}, "unknown field `txt`"),
        ({"text": 3}, "$.text"),
        ({"chunk": "char"}, "$.chunk"),
        ({"chunk": 0}, "$.chunk"),
        ({"done": "yes"}, "$.done"),
        ({"words": True}, "$.words"),
        ({"ttft_ms": -1}, "$.ttft_ms"),
        ({"status": 200}, "$.status"),
        ({"text": "a", "words": 3}, "text and words"),
        ({"chunks": ["a"], "chunk": 2}, "chunk and chunks"),
        ({"seed": 3}, "seed needs words"),
        ({"retry_after": 1}, "retry_after needs status"),
        ({"events": ["{}"], "text": "a"}, "events replace generated chunks"),
        ({"tool_calls": [{"arguments": "{}"}]}, "name"),
        ({"tool_calls": [{"name": "f", "extra": 1}]}, "unknown field `extra`"),
    ],
)
def test_parse_script_rejects_malformed_scripts_naming_the_problem(raw, fragment):
    with pytest.raises(ScriptError) as caught:
        parse_script(raw)
    assert fragment in str(caught.value)


def test_parse_script_rejects_strings_that_are_not_unicode():
    with pytest.raises(ScriptError):
        parse_script({"text": "\ud83d"})


# --- finding the script -----------------------------------------------------------------


def user(content):
    return {"role": "user", "content": content}


def test_the_header_script_wins_over_the_message_script():
    body = {"messages": [user('{"mock": {"text": "from message"}}')]}
    assert chat_script('{"text": "from header"}', body) == {"text": "from header"}
    assert chat_script(None, body) == {"text": "from message"}


def test_only_the_last_user_message_is_searched_for_a_script():
    scripted = user('{"mock": {"text": "old"}}')
    body = {"messages": [scripted, {"role": "assistant", "content": "ok"}, user("plain")]}
    assert chat_script(None, body) is None
    body = {"messages": [user("plain"), scripted, {"role": "assistant", "content": "x"}]}
    assert chat_script(None, body) == {"text": "old"}


@pytest.mark.parametrize(
    "content", ["hello", '{"other": 1}', "{not json", '["mock"]', None, [{"type": "text"}]]
)
def test_messages_without_a_mock_object_are_unscripted(content):
    assert chat_script(None, {"messages": [user(content)]}) is None


@pytest.mark.parametrize("header", ["not json", "[1]", '"text"', ""])
def test_a_header_that_is_not_a_json_object_is_a_script_error(header):
    with pytest.raises(ScriptError):
        chat_script(header, BODY)


def test_prompt_tokens_count_words_in_string_and_text_part_contents():
    body = {
        "messages": [
            {"role": "system", "content": "be  brief\n"},
            user([{"type": "text", "text": "one two three"}, {"type": "image_url"}]),
            {"role": "assistant", "content": None},
        ]
    }
    assert OPENAI_CHAT.prompt_tokens(body) == 5


# --- the plan ---------------------------------------------------------------------------


def test_plan_is_role_contents_finish_done_with_openai_fields():
    plan = plan_events(Script(text="Hi there"), BODY, number=9, created=7)
    events = decoded(plan)
    assert events[-1] == b"[DONE]"
    role, first, second, finish = events[:-1]
    for event in events[:-1]:
        assert event["id"] == "chatcmpl-mock-9"
        assert event["object"] == "chat.completion.chunk"
        assert event["created"] == 7
        assert event["model"] == "gpt-test"
        assert event["system_fingerprint"] == "fp_mock"
        assert "usage" not in event
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [first["choices"][0]["delta"], second["choices"][0]["delta"]] == [
        {"content": "Hi"},
        {"content": " there"},
    ]
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]


def test_plan_with_include_usage_adds_usage_chunk_and_null_usage_everywhere_else():
    body = {**BODY, "stream_options": {"include_usage": True}}
    events = decoded(plan_events(Script(text="a b c"), body))
    assert all(event["usage"] is None for event in events[:-2])
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_plan_offsets_follow_ttft_and_rate_from_absolute_times():
    plan = plan_events(Script(text="a b c d", ttft_ms=100, tokens_per_s=10), BODY)
    assert [round(event.at_s, 6) for event in plan] == [0.1, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4]


def test_plan_streams_tool_calls_after_text_in_openai_shape():
    script = parse_script(
        {"text": "ok", "tool_calls": [{"name": "get", "arguments": '{"city":"Paris"}'}]}
    )
    events = decoded(plan_events(script, BODY))
    deltas = [event["choices"][0]["delta"] for event in events[:-1]]
    assert deltas[1] == {"content": "ok"}
    assert deltas[2] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_mock_0",
                "type": "function",
                "function": {"name": "get", "arguments": ""},
            }
        ]
    }
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[3:-1]]
    assert fragments == ['{"city":', '"Paris"}']
    assert all(set(d["tool_calls"][0]) == {"index", "function"} for d in deltas[3:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_plan_of_raw_events_writes_them_verbatim_and_honours_done_false():
    raw = '{"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}'
    plan = plan_events(parse_script({"events": [raw, "not json"], "done": False}), BODY)
    assert payloads(plan) == [b"data: " + raw.encode() + b"\n\n", b"data: not json\n\n"]
    plan = plan_events(parse_script({"events": []}), BODY)
    assert payloads(plan) == [DONE_EVENT]


def test_max_tokens_below_the_answer_cuts_it_with_finish_length():
    body = {**BODY, "max_tokens": 2}
    script = parse_script({"text": "one two three", "tool_calls": [{"name": "f"}]})
    events = decoded(plan_events(script, body))
    contents = [e["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert contents == ["one", " two"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_completion_body_holds_the_same_answer_as_the_stream():
    script = Script(text="Hi there")
    body = orjson.loads(completion_body(script, BODY, number=4, created=3))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hi there",
        "refusal": None,
    }
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_completion_body_with_only_tool_calls_has_null_content():
    script = parse_script({"text": "", "tool_calls": [{"name": "f", "arguments": "{}"}]})
    body = orjson.loads(completion_body(script, BODY))
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"


# --- fault keys: parsing ----------------------------------------------------------------


def test_parse_script_accepts_every_fault_key():
    script = parse_script(
        {
            "text": "a",
            "tag": "t",
            "fail_first": 2,
            "status": 529,
            "error_type": "overloaded_error",
            "headers_delay_ms": 5,
            "stall_after": 1,
            "stall_ms": 10,
            "split_writes": 3,
            "split_surrogates": True,
            "tool_index": False,
            "pad_line": 1024,
        }
    )
    assert (script.fail_first, script.status, script.split_writes) == (2, 529, 3)
    assert parse_script({"error_after": 0}).error_after == 0
    assert parse_script({"truncate_after": 4}).truncate_after == 4
    assert parse_script({"json_error": True, "error_type": "x"}).json_error is True
    assert parse_script({"interleave_tools": True}).interleave_tools is True
    assert parse_script({"drip_bytes_per_s": 1}).drip_bytes_per_s == 1.0
    events = parse_script({"events": ["{}", {"event": "ping", "data": "{}"}]}).events
    assert events[1].event == "ping"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"fail_first": -1, "tag": "t", "status": 500}, "$.fail_first"),
        ({"error_after": -1}, "$.error_after"),
        ({"error_after": 1.5}, "$.error_after"),
        ({"split_writes": 0}, "$.split_writes"),
        ({"pad_line": 0}, "$.pad_line"),
        ({"drip_bytes_per_s": 0}, "$.drip_bytes_per_s"),
        ({"headers_delay_ms": -1}, "$.headers_delay_ms"),
        ({"json_error": "yes"}, "$.json_error"),
        ({"events": [{"event": "x"}]}, "data"),
        ({"fail_first": 1, "status": 500}, "fail_first needs tag"),
        ({"fail_first": 1, "tag": "t"}, "fail_first needs tag"),
        ({"status": 500, "error_after": 1}, "status and error_after exclude each other"),
        ({"json_error": True, "truncate_after": 1}, "json_error and truncate_after exclude"),
        ({"error_type": "x"}, "error_type needs"),
        ({"error_type": "x", "truncate_after": 1}, "error_type needs"),
        ({"stall_after": 1}, "stall_after and stall_ms go together"),
        ({"stall_ms": 1}, "stall_after and stall_ms go together"),
        ({"drip_bytes_per_s": 5, "tokens_per_s": 5}, "drip_bytes_per_s writes its own"),
        ({"drip_bytes_per_s": 5, "split_writes": 1}, "drip_bytes_per_s writes its own"),
        ({"tool_index": False, "interleave_tools": True}, "interleaved tool calls need"),
        ({"events": ["{}"], "error_after": 0}, "events replace generated chunks"),
        ({"events": ["{}"], "pad_line": 9}, "events replace generated chunks"),
    ],
)
def test_parse_script_rejects_malformed_fault_keys_naming_the_problem(raw, fragment):
    with pytest.raises(ScriptError) as caught:
        parse_script(raw)
    assert fragment in str(caught.value)


def test_json_error_false_is_no_failure():
    assert parse_script({"json_error": False, "status": 500}).status == 500


@pytest.mark.parametrize(
    "key", ["events", "error_after", "truncate_after", "split_writes", "pad_line", "tool_index"]
)
def test_stream_shaping_keys_need_a_streaming_request(key):
    with pytest.raises(ScriptError, match="need a streaming request"):
        check_streaming({key: 1}, stream=False)
    check_streaming({key: 1}, stream=True)


# --- surrogates -------------------------------------------------------------------------


def test_split_surrogate_pairs_ends_a_piece_with_the_high_half():
    assert split_surrogate_pairs(["a🎉b", " c"]) == ["a\ud83c", "\udf89b", " c"]
    assert split_surrogate_pairs(["🎉🎉"]) == ["\ud83c", "\udf89\ud83c", "\udf89"]
    assert split_surrogate_pairs(["日本"]) == ["日本"]


@given(st.lists(st.text()))
def test_split_surrogate_pairs_join_back_to_the_text(chunks):
    assert join_surrogates("".join(split_surrogate_pairs(chunks))) == "".join(chunks)


def test_json_text_escapes_lone_surrogates_and_leaves_other_text_to_orjson():
    assert json_text("plain ü") == "plain ü"
    assert orjson.dumps({"t": json_text('a"\ud83c')}) == b'{"t":"a\\"\\ud83c"}'
    assert json.loads(orjson.dumps(json_text("\udf89 ü\n"))) == "\udf89 ü\n"


# --- the plan: cuts, padding, stalls ----------------------------------------------------


def test_error_after_zero_cuts_right_after_the_head():
    events = decoded(plan_events(parse_script({"text": "a b", "error_after": 0}), BODY))
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[1]["error"]["type"] == "server_error"
    assert len(events) == 2


def test_truncate_after_the_last_content_keeps_no_tool_call_and_no_finish():
    script = parse_script({"text": "a b", "tool_calls": [{"name": "f"}], "truncate_after": 2})
    plan = plan_stream(OPENAI_CHAT, script, RequestInfo(BODY))
    assert len(plan.events) == 3
    assert plan.close_at == plan.events[-1].at_s


def test_stall_after_delays_every_later_event():
    script = parse_script({"text": "a b c", "stall_after": 1, "stall_ms": 500, "tokens_per_s": 10})
    times = [round(event.at_s, 6) for event in plan_events(script, BODY)]
    assert times == [0.0, 0.0, 0.6, 0.7, 0.7, 0.7]


def test_pad_line_pads_the_first_content_event_to_exactly_the_width():
    script = parse_script({"text": "a b", "pad_line": 500})
    events = plan_events(script, BODY)
    assert len(events[1].data) == len(b"\n\n") + 500
    assert orjson.loads(events[1].data[len(b"data: ") :])["mock_padding"].strip("x") == ""
    assert b"mock_padding" not in events[2].data


def test_pad_line_needs_a_content_event():
    with pytest.raises(ScriptError, match="pad_line needs a content event"):
        plan_events(parse_script({"text": "", "pad_line": 100}), BODY)
