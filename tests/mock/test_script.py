"""The script: parsing and its errors, the deterministic text, chunking, and the event plan."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.mock.script import (
    DONE_EVENT,
    Script,
    ScriptError,
    completion_body,
    extract_script,
    generate_text,
    parse_script,
    plan_events,
    prompt_tokens,
    split_chunks,
)

BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "say hi"}]}


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
    assert extract_script('{"text": "from header"}', body) == {"text": "from header"}
    assert extract_script(None, body) == {"text": "from message"}


def test_only_the_last_user_message_is_searched_for_a_script():
    scripted = user('{"mock": {"text": "old"}}')
    body = {"messages": [scripted, {"role": "assistant", "content": "ok"}, user("plain")]}
    assert extract_script(None, body) is None
    body = {"messages": [user("plain"), scripted, {"role": "assistant", "content": "x"}]}
    assert extract_script(None, body) == {"text": "old"}


@pytest.mark.parametrize(
    "content", ["hello", '{"other": 1}', "{not json", '["mock"]', None, [{"type": "text"}]]
)
def test_messages_without_a_mock_object_are_unscripted(content):
    assert extract_script(None, {"messages": [user(content)]}) is None


@pytest.mark.parametrize("header", ["not json", "[1]", '"text"', ""])
def test_a_header_that_is_not_a_json_object_is_a_script_error(header):
    with pytest.raises(ScriptError):
        extract_script(header, BODY)


def test_prompt_tokens_count_words_in_string_and_text_part_contents():
    body = {
        "messages": [
            {"role": "system", "content": "be  brief\n"},
            user([{"type": "text", "text": "one two three"}, {"type": "image_url"}]),
            {"role": "assistant", "content": None},
        ]
    }
    assert prompt_tokens(body) == 5


# --- the plan ---------------------------------------------------------------------------


def test_plan_is_role_contents_finish_done_with_openai_fields():
    plan = plan_events(Script(text="Hi there"), BODY, completion_id="chatcmpl-x", created=7)
    events = decoded(plan)
    assert events[-1] == b"[DONE]"
    role, first, second, finish = events[:-1]
    for event in events[:-1]:
        assert event["id"] == "chatcmpl-x"
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
    body = orjson.loads(completion_body(script, BODY, completion_id="chatcmpl-y", created=3))
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
