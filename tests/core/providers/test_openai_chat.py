"""OpenAI chat-completions translation: recorded fixtures at any split, then each rule alone.

The fixtures at any split are tested for every provider in test_upstream_fixtures.py; here,
what is particular to this translator. Fixture events are compared in the JSON encoding
documented in protocol/fixtures/upstream/README.md (`encode_event`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core import events as ev
from wsgate.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    WsgateError,
)
from wsgate.core.providers import openai_chat
from wsgate.core.providers.openai_chat import OpenAIChatTranslator
from wsgate.core.sse import SSEDecoder, SSEEvent
from wsgate.core.utf8 import has_lone_surrogate

FIXTURE_DIR = Path(__file__).parents[3] / "protocol" / "fixtures" / "upstream" / "openai_chat"
FIXTURES = sorted(FIXTURE_DIR.glob("*.sse"))

_TAGS = {
    ev.RoleDelta: "role",
    ev.TextDelta: "text",
    ev.ToolCallStart: "tool_call.start",
    ev.ToolCallChunk: "tool_call.chunk",
    ev.ToolCallEnd: "tool_call.end",
    ev.Usage: "usage",
    ev.Finish: "finish",
}


def encode_event(event):
    """An upstream event as a fixture object: `{"event": tag, **fields}`."""
    return {"event": _TAGS[type(event)], **dataclasses.asdict(event)}


def replay(chunks):
    """Feed raw body chunks through decoder and translator; an error ends the list."""
    decoder, translator, out = SSEDecoder(), OpenAIChatTranslator(), []
    try:
        for chunk in chunks:
            for sse in decoder.feed(chunk):
                out.extend(translator.feed(sse))
        for sse in decoder.eof():
            out.extend(translator.feed(sse))
        out.extend(translator.finish())
    except WsgateError as exc:
        return [
            *map(encode_event, out),
            {"event": "error", "code": exc.code, "message": exc.public_message},
        ]
    return [encode_event(e) for e in out]


def expected_for(path):
    return json.loads(path.with_name(path.name.removesuffix(".sse") + ".expected.json").read_text())


def test_a_fixture_with_trailing_partial_data_keeps_its_events():
    for path in FIXTURES:
        body, expected = path.read_bytes(), expected_for(path)
        late = b'data: {"choices":[{"delta":{"content":"late'
        assert replay([body, late])[: len(expected)] == expected


def test_fixtures_cover_the_required_streams():
    names = {p.stem for p in FIXTURES}
    assert {
        "text_with_usage",
        "text_without_usage",
        "parallel_tool_calls",
        "split_surrogate_pair",
        "truncated_without_done",
        "usage_choices_null",
        "error_payload",
        "multibyte_text",
    } <= names


# --- unit rules -------------------------------------------------------------------------------


def sse(payload, event="message"):
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return SSEEvent(data, event)


def chunk(delta=None, finish=None, index=0, **extra):
    choice = {"index": index, "delta": delta or {}, "finish_reason": finish}
    return sse({"object": "chat.completion.chunk", "choices": [choice], **extra})


def run(*events, finish=False):
    translator = OpenAIChatTranslator()
    out = []
    for event in events:
        out.extend(translator.feed(event))
    if finish:
        out.extend(translator.finish())
    return out


DONE = sse("[DONE]")


def test_role_is_emitted_once():
    out = run(chunk({"role": "assistant"}), chunk({"role": "assistant", "content": "a"}))
    assert out == [ev.RoleDelta("assistant"), ev.TextDelta("a")]


def test_empty_and_null_content_produce_nothing():
    assert run(chunk({"content": ""}), chunk({"content": None}), chunk({})) == []


def test_refusal_is_text():
    assert run(chunk({"refusal": "I can't help with that."})) == [
        ev.TextDelta("I can't help with that.")
    ]


def test_lone_surrogate_escape_falls_back_to_stdlib_json_and_is_joined():
    high = sse('{"choices":[{"index":0,"delta":{"content":"a\\ud83d"}}]}')
    low = sse('{"choices":[{"index":0,"delta":{"content":"\\ude00b"}}]}')
    assert run(high, low) == [ev.TextDelta("a"), ev.TextDelta("\U0001f600b")]


def test_lone_surrogate_at_the_end_is_flushed_as_replacement_before_finish():
    out = run(sse('{"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}'), chunk(finish="stop"))
    assert out == [ev.TextDelta("\ufffd")]
    assert not any(has_lone_surrogate(e.text) for e in out if isinstance(e, ev.TextDelta))


@pytest.mark.parametrize("payload", ["{", '{"choices": [}', "NaN", "data", ""])
def test_malformed_json_is_a_protocol_error(payload):
    with pytest.raises(UpstreamProtocolError, match="upstream sent malformed JSON"):
        run(sse(payload))


@pytest.mark.parametrize("payload", ["[1]", '"text"', "3", "null"])
def test_a_chunk_that_is_not_an_object_is_a_protocol_error(payload):
    with pytest.raises(UpstreamProtocolError, match="not a JSON object"):
        run(sse(payload))


def test_deeply_nested_json_is_a_protocol_error_not_a_crash():
    with pytest.raises(UpstreamProtocolError, match="malformed JSON"):
        run(sse("[" * 100_000 + "]" * 100_000))


def test_wrong_field_types_are_protocol_errors():
    with pytest.raises(UpstreamProtocolError):
        run(chunk({"content": ["not", "text"]}))
    with pytest.raises(UpstreamProtocolError):
        run(sse({"choices": {"index": 0}}))


def test_done_finishes_and_later_events_are_ignored():
    translator = OpenAIChatTranslator()
    assert translator.feed(chunk({"content": "a"}, "stop")) == [ev.TextDelta("a")]
    assert not translator.done
    assert translator.feed(DONE) == [ev.Finish("stop")]
    assert translator.done
    assert translator.feed(chunk({"content": "late"})) == []
    assert translator.finish() == []


def test_events_not_named_message_are_ignored():
    assert run(sse({"choices": [{"index": 0, "delta": {"content": "x"}}]}, event="ping")) == []


def test_other_choices_are_ignored():
    assert run(chunk({"content": "one"}, index=1), chunk({"content": "zero"})) == [
        ev.TextDelta("zero")
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("content_filter", "content_filter"),
        ("eos", "stop"),
        ("max_tokens", "length"),
        ("something_new", "error"),
    ],
)
def test_finish_reason_is_normalized(raw, reason):
    translator = OpenAIChatTranslator()
    translator.feed(chunk(finish=raw))
    assert translator.feed(DONE) == [ev.Finish(reason)]
    assert translator.raw_finish_reason == raw


def test_done_without_a_finish_reason_is_stop():
    assert run(chunk({"content": "a"}), DONE) == [ev.TextDelta("a"), ev.Finish("stop")]


def test_done_without_a_finish_reason_after_tool_calls_is_tool_calls():
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}
    assert run(chunk({"tool_calls": [call]}), DONE)[-2:] == [
        ev.ToolCallEnd("c1", "f", {}),
        ev.Finish("tool_calls"),
    ]


def test_finish_after_a_finish_reason_without_done_is_a_clean_finish():
    assert run(chunk({"content": "a"}, "length"), finish=True) == [
        ev.TextDelta("a"),
        ev.Finish("length"),
    ]


def test_finish_of_a_truncated_stream_is_a_protocol_error_not_stop():
    translator = OpenAIChatTranslator()
    translator.feed(chunk({"content": "a"}))
    with pytest.raises(UpstreamProtocolError, match="ended before it finished"):
        translator.finish()
    assert translator.done


def test_usage_chunk_without_choices_is_emitted_at_once():
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert run(sse({"choices": [], "usage": usage})) == [ev.Usage(3, 4)]
    assert run(sse({"choices": None, "usage": usage})) == [ev.Usage(3, 4)]


def test_null_usage_is_ignored():
    assert run(chunk({"content": "a"}, usage=None), sse({"choices": [], "usage": None})) == [
        ev.TextDelta("a")
    ]


def test_usage_riding_on_choices_is_emitted_once_before_finish():
    out = run(
        chunk({"content": "a"}, usage={"prompt_tokens": 1, "completion_tokens": 1}),
        chunk(finish="stop", usage={"prompt_tokens": 1, "completion_tokens": 2}),
        DONE,
    )
    assert out == [ev.TextDelta("a"), ev.Usage(1, 2), ev.Finish("stop")]


def tool(index=None, call_id=None, name=None, arguments=None):
    fragment = {"function": {}}
    if index is not None:
        fragment["index"] = index
    if call_id is not None:
        fragment["id"] = call_id
    if name is not None:
        fragment["function"]["name"] = name
    if arguments is not None:
        fragment["function"]["arguments"] = arguments
    return chunk({"tool_calls": [fragment]})


def test_tool_call_is_started_chunked_and_ended_with_parsed_arguments():
    out = run(tool(0, "c1", "f", ""), tool(0, arguments='{"a": '), tool(0, arguments="1}"))
    assert out == [
        ev.ToolCallStart("c1", 0, "f"),
        ev.ToolCallChunk("c1", '{"a": '),
        ev.ToolCallChunk("c1", "1}"),
    ]
    assert run(tool(0, "c1", "f", '{"a": 1}'), chunk(finish="tool_calls"))[-1] == ev.ToolCallEnd(
        "c1", "f", {"a": 1}
    )


def test_tool_calls_end_in_index_order_when_the_finish_reason_arrives():
    out = run(tool(1, "b", "g", "[2]"), tool(0, "a", "f", "[1]"), chunk(finish="tool_calls"))
    assert out[-2:] == [ev.ToolCallEnd("a", "f", [1]), ev.ToolCallEnd("b", "g", [2])]


def test_tool_call_without_id_gets_a_synthetic_id():
    assert run(tool(3, name="f"))[0] == ev.ToolCallStart("call_3", 3, "f")


def test_tool_call_arguments_before_the_name_are_sent_after_the_start():
    out = run(tool(0, "c1", arguments='{"x"'), tool(0, name="f", arguments=":1}"))
    # The held text and the fragment that brought the name leave as one chunk.
    assert out == [ev.ToolCallStart("c1", 0, "f"), ev.ToolCallChunk("c1", '{"x":1}')]


def test_tool_call_without_index_goes_to_its_id_or_the_latest_call():
    out = run(
        tool(call_id="a", name="f", arguments="[1,"),
        tool(arguments="2"),  # no index, no id: the call of the previous fragment
        tool(call_id="b", name="g", arguments="[3"),
        tool(call_id="a", arguments="]"),
        tool(call_id="b", arguments="]"),
        DONE,
    )
    ends = [e for e in out if isinstance(e, ev.ToolCallEnd)]
    assert ends == [ev.ToolCallEnd("a", "f", [1, 2]), ev.ToolCallEnd("b", "g", [3])]
    assert [e.index for e in out if isinstance(e, ev.ToolCallStart)] == [0, 1]


def test_tool_call_with_empty_arguments_ends_with_an_empty_object():
    assert run(tool(0, "c1", "f"), DONE)[-2] == ev.ToolCallEnd("c1", "f", {})


def test_tool_call_with_invalid_arguments_fails_that_call_with_its_raw_text():
    out = run(tool(0, "c1", "f", '{"a": '), DONE)
    failed = [e for e in out if isinstance(e, ev.ToolCallFailed)]
    assert failed == [ev.ToolCallFailed("c1", "f", '{"a": ', "arguments are not valid JSON")]
    assert not any(isinstance(e, ev.ToolCallEnd) for e in out)
    assert out[-1] == ev.Finish("tool_calls")


def test_tool_call_that_never_got_a_name_fails_without_a_start():
    out = run(tool(0, "c1", arguments="{}"), DONE)
    assert [type(e) for e in out] == [ev.ToolCallFailed, ev.Finish]
    assert out[0].reason == "tool call has no name"


def test_reasoning_deltas_are_kept_apart_from_the_text():
    out = run(chunk({"reasoning_content": "think", "content": "say"}), DONE)
    assert out[:2] == [ev.TextDelta("say"), ev.ReasoningDelta("think")]


def test_tool_call_fragment_after_its_end_is_a_protocol_error():
    with pytest.raises(UpstreamProtocolError, match="after its end"):
        run(tool(0, "c1", "f", "{}"), chunk(finish="tool_calls"), tool(0, arguments="x"))


def test_error_payload_raises_a_generic_upstream_error():
    payload = {"error": {"message": "secret sk-123 leaked", "type": "server_error", "code": None}}
    translator = OpenAIChatTranslator()
    with pytest.raises(UpstreamError) as caught:
        translator.feed(sse(payload))
    assert type(caught.value) is UpstreamError
    assert caught.value.public_message == "upstream reported an error (server_error)"
    assert translator.done


def test_error_payload_with_a_rate_limit_code_is_rate_limited():
    payload = {"error": {"type": "requests", "code": "rate_limit_exceeded"}}
    with pytest.raises(UpstreamRateLimited, match=r"\(requests, rate_limit_exceeded\)"):
        run(sse(payload))


@pytest.mark.parametrize(
    "error", ["boom", {"type": "not an identifier!"}, {"code": "x" * 65}, {"type": 5}]
)
def test_error_payload_labels_only_short_identifiers(error):
    with pytest.raises(UpstreamError) as caught:
        run(sse({"error": error}))
    assert caught.value.public_message == "upstream reported an error"


def test_null_error_field_is_not_an_error():
    assert run(chunk({"content": "a"}, error=None)) == [ev.TextDelta("a")]


# --- the two readings (rule 7) -----------------------------------------------------------------

ODD = st.sampled_from(
    [None, "", "x", "\ud83d", 0, 1, False, True, 0.0, 2**70, [], {}, ["a"], {"a": 1}]
)
ABSENT = object()


def usually(*typical: object) -> st.SearchStrategy[object]:
    """A field of a usual chunk (the typed reading) most of the time; else absent or odd."""
    common = st.sampled_from(typical)
    return st.one_of(*[common] * 6, st.just(ABSENT), st.just(ABSENT), ODD)


def shape(**fields: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """A JSON object of these fields, the absent ones left out."""
    return st.fixed_dictionaries(fields).map(
        lambda value: {key: item for key, item in value.items() if item is not ABSENT}
    )


def obj(**fields: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """`shape`, or now and then an odd value instead of the object."""
    return st.one_of(*[shape(**fields)] * 8, ODD)


TEXT = st.one_of(
    usually("a", " b", "é", "👩\u200d", "", None), st.sampled_from(["\ud83d", "\ude00"])
)
FRAGMENT = obj(
    index=usually(0, 1, None, 2**70),
    id=usually("c1", None),
    function=obj(name=usually("f", None), arguments=TEXT),
)
DELTA = obj(
    role=usually("assistant", None),
    content=TEXT,
    refusal=TEXT,
    reasoning_content=TEXT,
    reasoning=TEXT,
    tool_calls=st.one_of(st.just(ABSENT), st.just(ABSENT), st.lists(FRAGMENT, max_size=2), ODD),
)
CHOICE = obj(
    index=usually(0, 1, None, 2**70),
    delta=DELTA,
    finish_reason=usually(None, None, "stop", "length", "weird"),
    logprobs=usually(None),
)
CHUNK = obj(
    id=st.just("chatcmpl-1"),
    choices=st.one_of(*[st.lists(CHOICE, min_size=1, max_size=2)] * 4, ODD),
    usage=usually(ABSENT, None, {"prompt_tokens": 3, "completion_tokens": 2}),
    error=usually(ABSENT, ABSENT, None, {"type": "server_error"}),
)

TYPED_TEXT = st.sampled_from(["a", " b", "é", "👩\u200d", "", None, ABSENT])
TYPED_CHUNK = shape(
    id=st.just("chatcmpl-1"),
    choices=st.lists(
        shape(
            index=st.sampled_from([0, 0, 0, None, 1, ABSENT]),
            delta=shape(
                role=st.sampled_from(["assistant", None, "", ABSENT]),
                content=TYPED_TEXT,
                refusal=TYPED_TEXT,
                reasoning_content=TYPED_TEXT,
                reasoning=TYPED_TEXT,
                tool_calls=st.sampled_from([None, ABSENT]),
            ),
            finish_reason=st.sampled_from([None, None, None, "stop", "length", "weird", ABSENT]),
        ),
        max_size=2,
    ),
    usage=st.sampled_from([None, ABSENT]),
    error=st.sampled_from([None, ABSENT]),
)
"""Chunks of the typed reading only: every field of its type."""
PAYLOAD = st.one_of(
    TYPED_CHUNK.map(json.dumps),
    TYPED_CHUNK.map(json.dumps),
    CHUNK.map(json.dumps),
    CHUNK.map(json.dumps),
    st.sampled_from(["[DONE]", "not json", '{"choices": [', '{"a": 1e999}', "[1, 2]"]),
)


class _Refuses:
    """Stands in for the typed decoder: every chunk takes the dict reading."""

    def decode(self, _data: str) -> None:
        raise ValueError("refused")


def _outcomes(translator, payloads):
    outcomes = []
    for payload in payloads:
        try:
            outcomes.append(translator.feed(SSEEvent(payload)))
        except WsgateError as exc:
            outcomes.append((type(exc), exc.public_message))
    try:
        outcomes.append(translator.finish())
    except WsgateError as exc:
        outcomes.append((type(exc), exc.public_message))
    return outcomes


@settings(max_examples=1000, deadline=None)
@given(st.lists(PAYLOAD, max_size=6))
def test_the_typed_reading_means_exactly_what_the_dict_reading_means(payloads):
    both = _outcomes(OpenAIChatTranslator(), payloads)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openai_chat, "_text_chunk", _Refuses())
        dict_only = _outcomes(OpenAIChatTranslator(), payloads)
    assert both == dict_only


def test_a_usual_text_chunk_takes_the_typed_reading():
    text = openai_chat._text_chunk.decode(
        '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        '"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,'
        '"finish_reason":null}],"usage":null}'
    )
    assert text.choices[0].delta.content == "hi"
