"""Anthropic Messages translation: each rule alone.

The recorded fixtures (protocol/fixtures/upstream/anthropic/) are replayed whole, byte by
byte and at any split for every provider in test_upstream_fixtures.py; here, what is
particular to this translator. The request body is tested in test_anthropic_request.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from wsgate.core import events as ev
from wsgate.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from wsgate.core.frames import ChatRequest
from wsgate.core.providers import build_body, make_parser
from wsgate.core.providers.anthropic import AnthropicTranslator
from wsgate.core.sse import SSEEvent

FIXTURE_DIR = Path(__file__).parents[3] / "protocol" / "fixtures" / "upstream" / "anthropic"


def test_fixtures_cover_the_required_streams():
    names = {p.stem for p in FIXTURE_DIR.glob("*.sse")}
    assert {
        "text_with_usage",
        "multibyte_text",
        "split_surrogate_pair",
        "parallel_tool_calls",
        "thinking",
        "max_tokens",
        "error_overloaded",
        "truncated_without_message_stop",
        "server_tool_and_unknown_events",
    } <= names


def replay(*chunks):
    parser = make_parser("anthropic", 1 << 20)
    items = [item for chunk in chunks for item in parser.feed(chunk)]
    items += parser.eof()
    return [repr(item) for item in items]


def test_a_fixture_with_trailing_partial_data_gives_the_same_events():
    late = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta'
    for path in FIXTURE_DIR.glob("*.sse"):
        body = path.read_bytes()
        assert replay(body, late) == replay(body), path.name


# --- translator -------------------------------------------------------------------------------


def sse(payload, event=None):
    data = payload if isinstance(payload, str) else json.dumps(payload)
    if event is None:
        event = payload.get("type", "message") if isinstance(payload, dict) else "message"
    return SSEEvent(data, event)


def message_start(usage=None):
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    message["usage"] = usage if usage is not None else {"input_tokens": 5, "output_tokens": 1}
    return sse({"type": "message_start", "message": message})


def block_start(index, block):
    return sse({"type": "content_block_start", "index": index, "content_block": block})


def delta(index, **fields):
    return sse({"type": "content_block_delta", "index": index, "delta": fields})


def text(index, value):
    return delta(index, type="text_delta", text=value)


def json_delta(index, value):
    return delta(index, type="input_json_delta", partial_json=value)


def block_stop(index):
    return sse({"type": "content_block_stop", "index": index})


def message_delta(reason=None, usage=None):
    return sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": usage if usage is not None else {"output_tokens": 3},
        }
    )


STOP = sse({"type": "message_stop"})


def tool_block(index, call_id="toolu_1", name="f", given=None):
    return block_start(
        index, {"type": "tool_use", "id": call_id, "name": name, "input": given or {}}
    )


def run(*events, finish=False, translator=None):
    translator = translator or AnthropicTranslator()
    out = []
    for event in events:
        out.extend(translator.feed(event))
    if finish:
        out.extend(translator.finish())
    return out


def test_role_is_emitted_once_at_message_start():
    assert run(message_start(), message_start()) == [ev.RoleDelta("assistant")]


def test_a_whole_text_turn_ends_with_usage_then_finish():
    out = run(
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        text(0, "Hi"),
        block_stop(0),
        message_delta("end_turn"),
        STOP,
        finish=True,
    )
    assert out == [
        ev.RoleDelta("assistant"),
        ev.TextDelta("Hi"),
        ev.Usage(5, 3),
        ev.Finish("stop"),
    ]


def test_ping_events_are_skipped_unread():
    assert run(SSEEvent("not json", "ping")) == []


def test_unknown_event_types_and_delta_types_are_ignored():
    assert run(sse({"type": "message_annotation", "x": 1}), sse({"no": "type"})) == []
    assert run(delta(0, type="citations_delta", citation={"type": "char_location"})) == []
    assert run(delta(0, type="signature_delta", signature="EqQB")) == []
    assert run(delta(0, type="some_future_delta", value="x")) == []


def test_the_data_type_decides_not_the_event_name():
    unnamed = SSEEvent(text(0, "x").data)  # no `event:` line: named "message"
    assert unnamed.event == "message"
    assert run(unnamed) == [ev.TextDelta("x")]


def test_events_after_message_stop_are_ignored():
    translator = AnthropicTranslator()
    assert run(message_delta("end_turn"), STOP, translator=translator)[-1] == ev.Finish("stop")
    assert translator.done
    assert translator.feed(text(0, "late")) == []
    assert translator.finish() == []


def test_initial_text_of_a_block_start_is_text():
    assert run(block_start(0, {"type": "text", "text": "Hel"}), text(0, "lo")) == [
        ev.TextDelta("Hel"),
        ev.TextDelta("lo"),
    ]


def test_thinking_is_reasoning_and_its_signature_and_redactions_are_dropped():
    out = run(
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, type="thinking_delta", thinking="hmm"),
        delta(0, type="signature_delta", signature="EqQBCg"),
        block_stop(0),
        block_start(1, {"type": "redacted_thinking", "data": "EmwKAhgB"}),
        block_stop(1),
        block_start(2, {"type": "thinking", "thinking": "more"}),
    )
    assert out == [ev.ReasoningDelta("hmm"), ev.ReasoningDelta("more")]


def escaped(kind, field, value):
    """A delta whose JSON text carries `value` as written (escapes such as a lone surrogate)."""
    head = '{"type":"content_block_delta","index":0,"delta":'
    return SSEEvent(head + f'{{"type":"{kind}","{field}":"{value}"}}}}')


def test_a_split_surrogate_pair_is_joined():
    high = escaped("text_delta", "text", "a\\ud83d")
    low = escaped("text_delta", "text", "\\ude00b")
    assert run(high, low) == [ev.TextDelta("a"), ev.TextDelta("\U0001f600b")]


def test_a_lone_surrogate_is_flushed_as_replacement_when_its_block_stops():
    high = escaped("thinking_delta", "thinking", "\\ud83d")
    assert run(high, block_stop(0)) == [ev.ReasoningDelta("\ufffd")]


def test_a_tool_use_block_is_started_chunked_and_ended_at_its_stop():
    out = run(tool_block(1), json_delta(1, ""), json_delta(1, '{"a": '), json_delta(1, "1}"))
    assert out == [
        ev.ToolCallStart("toolu_1", 0, "f"),  # the turn's first call, whatever its block
        ev.ToolCallChunk("toolu_1", '{"a": '),
        ev.ToolCallChunk("toolu_1", "1}"),
    ]
    translator = AnthropicTranslator()
    run(tool_block(1), json_delta(1, '{"a": 1}'), translator=translator)
    assert translator.feed(block_stop(1)) == [ev.ToolCallEnd("toolu_1", "f", {"a": 1})]


def test_a_tool_use_block_without_input_deltas_ends_with_an_empty_object():
    assert run(tool_block(0), block_stop(0))[-1] == ev.ToolCallEnd("toolu_1", "f", {})


def test_the_input_of_the_block_start_counts_only_when_no_delta_follows():
    only_start = run(tool_block(0, given={"q": "x"}), json_delta(0, ""), block_stop(0))
    assert only_start[-1] == ev.ToolCallEnd("toolu_1", "f", {"q": "x"})
    with_deltas = run(tool_block(0, given={"q": "x"}), json_delta(0, '{"q": "y"}'), block_stop(0))
    assert with_deltas[-1] == ev.ToolCallEnd("toolu_1", "f", {"q": "y"})


def test_a_tool_use_block_with_invalid_input_fails_with_its_raw_text():
    out = run(
        tool_block(0), json_delta(0, '{"a": '), block_stop(0), message_delta("tool_use"), STOP
    )
    assert ev.ToolCallFailed("toolu_1", "f", '{"a": ', "arguments are not valid JSON") in out
    assert not any(isinstance(e, ev.ToolCallEnd) for e in out)
    assert out[-1] == ev.Finish("tool_calls")


def test_a_tool_use_block_without_a_name_fails_without_a_start():
    out = run(block_start(0, {"type": "tool_use", "id": "toolu_9", "input": {}}), block_stop(0))
    assert [type(e) for e in out] == [ev.ToolCallFailed]
    assert out[0].reason == "tool call has no name"


def test_tool_calls_still_open_at_message_stop_end_in_the_order_they_began():
    out = run(tool_block(2, "b", "g"), json_delta(2, "[2]"), tool_block(1, "a", "f"), STOP)
    ends = [ev.ToolCallEnd("b", "g", [2]), ev.ToolCallEnd("a", "f", {})]
    assert out[-3:] == [*ends, ev.Finish("tool_calls")]


def test_server_tool_blocks_are_not_client_tool_calls():
    out = run(
        block_start(1, {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search"}),
        json_delta(1, '{"query": "x"}'),
        block_stop(1),
        block_start(2, {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1"}),
        block_stop(2),
        json_delta(7, '{"never": "started"}'),
        message_delta("end_turn"),
        STOP,
    )
    assert out == [ev.Usage(0, 3), ev.Finish("stop")]


def test_tool_snapshots_are_emitted_when_asked_for():
    translator = AnthropicTranslator(tool_snapshots=True)
    out = run(tool_block(0), json_delta(0, '{"text": "' + "x" * 80), translator=translator)
    assert ev.ToolCallSnapshot("toolu_1", {"text": "x" * 80}) in out


def test_usage_is_cumulative_and_the_latest_count_wins():
    start = {"input_tokens": 10, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 30}
    out = run(
        message_start({**start, "output_tokens": 1}),
        message_delta(usage={"output_tokens": 4}),
        message_delta("end_turn", usage={"input_tokens": 11, "output_tokens": 9}),
        STOP,
    )
    assert out[-2:] == [ev.Usage(11 + 2 + 30, 9), ev.Finish("stop")]


def test_usage_counts_that_are_not_integers_are_ignored():
    start = message_start({"input_tokens": True, "output_tokens": "7"})
    out = run(start, message_delta("end_turn", usage={"output_tokens": None}), STOP)
    assert out == [ev.RoleDelta("assistant"), ev.Finish("stop")]  # no count at all: no usage
    start = message_start({"input_tokens": 2.5, "cache_read_input_tokens": 4})
    assert run(start, STOP)[-2] == ev.Usage(4, 0)


def test_a_turn_without_usage_has_no_usage_event():
    out = run(message_delta("end_turn", usage={}), STOP)
    assert out == [ev.Finish("stop")]
    assert run(sse({"type": "message_start", "message": None}), STOP) == [
        ev.RoleDelta("assistant"),
        ev.Finish("stop"),
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "error"),
        ("something_new", "error"),
    ],
)
def test_stop_reason_is_normalized(raw, reason):
    translator = AnthropicTranslator()
    assert run(message_delta(raw, usage={}), STOP, translator=translator) == [ev.Finish(reason)]
    assert translator.raw_finish_reason == raw


def test_message_stop_without_a_stop_reason_is_stop_or_tool_calls():
    assert run(STOP) == [ev.Finish("stop")]
    assert run(tool_block(0), block_stop(0), STOP)[-1] == ev.Finish("tool_calls")


def test_a_body_without_message_stop_is_a_protocol_error_even_after_a_stop_reason():
    translator = AnthropicTranslator()
    run(text(0, "a"), message_delta("end_turn"), translator=translator)
    with pytest.raises(UpstreamProtocolError, match="ended before it finished"):
        translator.finish()
    assert translator.done


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [
        ("overloaded_error", UpstreamError),
        ("api_error", UpstreamError),
        ("timeout_error", UpstreamError),
        ("a_future_error", UpstreamError),
        ("rate_limit_error", UpstreamRateLimited),
        ("invalid_request_error", UpstreamRejected),
        ("authentication_error", UpstreamRejected),
        ("billing_error", UpstreamRejected),
        ("permission_error", UpstreamRejected),
        ("not_found_error", UpstreamRejected),
        ("request_too_large", UpstreamRejected),
    ],
)
def test_an_error_event_raises_by_its_type_naming_only_the_type(kind, error_type):
    payload = {"type": "error", "error": {"type": kind, "message": "secret sk-123 leaked"}}
    translator = AnthropicTranslator()
    with pytest.raises(UpstreamError) as caught:
        translator.feed(sse(payload))
    assert type(caught.value) is error_type
    assert caught.value.public_message == f"upstream reported an error ({kind})"
    assert translator.done


@pytest.mark.parametrize(
    "event",
    [
        SSEEvent("Overloaded, try later", "error"),
        SSEEvent('{"type":"error","error":"boom"}', "error"),
        SSEEvent('{"type":"error","error":{"type":"not an identifier!"}}', "error"),
        SSEEvent('{"type":"error","error":{"type":5}}', "error"),
    ],
)
def test_an_error_event_without_a_usable_type_is_a_generic_upstream_error(event):
    with pytest.raises(UpstreamError) as caught:
        run(event)
    assert type(caught.value) is UpstreamError
    assert caught.value.public_message == "upstream reported an error"


def test_an_error_payload_in_an_unnamed_event_is_an_error():
    with pytest.raises(UpstreamRateLimited):
        run(SSEEvent('{"type":"error","error":{"type":"rate_limit_error"}}'))


@pytest.mark.parametrize("payload", ["{", "NaN", "", "[1]", '"text"', "null"])
def test_malformed_json_is_a_protocol_error(payload):
    with pytest.raises(UpstreamProtocolError):
        run(SSEEvent(payload, "content_block_delta"))


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x"}},
        {"type": "content_block_delta", "index": True, "delta": {"type": "text_delta"}},
        {"type": "content_block_delta", "index": 0, "delta": "x"},
        {"type": "content_block_start", "index": 0, "content_block": None},
        {"type": "content_block_start", "index": 0, "content_block": {"type": 3}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 1}},
        {"type": "content_block_stop"},
        {"type": "message_delta", "delta": {"stop_reason": ["x"]}},
    ],
)
def test_malformed_events_are_protocol_errors(payload):
    with pytest.raises(UpstreamProtocolError):
        run(sse(payload))


def test_the_provider_table_builds_this_parser_and_body():
    parser = make_parser("anthropic", 1 << 20)
    data = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    data += b'"delta":{"type":"text_delta","text":"ok"}}\n\n'
    assert parser.feed(data) == [ev.TextDelta("ok")]
    assert isinstance(parser.eof()[-1], UpstreamProtocolError)
    request = {"model": "alias", "messages": [{"role": "user", "content": "hi"}]}
    built = build_body("anthropic", msgspec.convert(request, ChatRequest), "claude-real")
    assert built["model"] == "claude-real"
