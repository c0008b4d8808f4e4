"""OpenAI Responses translation: fixtures with a suffix, then each rule alone.

The fixtures whole, byte by byte and at any split are tested for every provider in
test_upstream_fixtures.py; here, what is particular to this translator. The request body is
tested in test_openai_responses_request.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from wsgate.core import events as ev
from wsgate.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    WsgateError,
)
from wsgate.core.providers import make_parser
from wsgate.core.providers.openai_responses import OpenAIResponsesTranslator
from wsgate.core.sse import SSEEvent
from wsgate.core.utf8 import has_lone_surrogate

FIXTURE_DIR = Path(__file__).parents[3] / "protocol" / "fixtures" / "upstream" / "openai_responses"
FIXTURES = sorted(FIXTURE_DIR.glob("*.sse"))


def test_fixtures_cover_the_required_streams():
    assert {
        "text_with_usage",
        "multibyte_text",
        "split_surrogate_pair",
        "parallel_tool_calls",
        "reasoning_summary",
        "max_output_tokens",
        "response_failed",
        "error_event",
        "truncated",
        "keepalives_and_ignored_events",
        "data_only_crlf",
    } <= {p.stem for p in FIXTURES}


def test_the_readme_lists_every_fixture():
    readme = (FIXTURE_DIR / "README.md").read_text()
    for path in FIXTURES:
        assert f"`{path.stem}`" in readme


TAGS = {
    ev.RoleDelta: "role",
    ev.TextDelta: "text",
    ev.ReasoningDelta: "reasoning",
    ev.ToolCallStart: "tool_call.start",
    ev.ToolCallChunk: "tool_call.chunk",
    ev.ToolCallEnd: "tool_call.end",
    ev.ToolCallFailed: "tool_call.failed",
    ev.Usage: "usage",
    ev.Finish: "finish",
}


def encode(item):
    """A parser item in the fixture encoding of protocol/fixtures/upstream/README.md."""
    if isinstance(item, WsgateError):
        return {"event": "error", "code": item.code, "message": item.public_message}
    return {"event": TAGS[type(item)], **dataclasses.asdict(item)}


def test_a_fixture_with_trailing_partial_data_keeps_its_events():
    late = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","del'
    for path in FIXTURES:
        expected = json.loads(path.with_name(path.stem + ".expected.json").read_text())
        parser = make_parser("openai_responses", 1 << 20)
        items = parser.feed(path.read_bytes() + late)
        if not any(isinstance(item, WsgateError) for item in items):
            items += parser.eof()
        assert [encode(item) for item in items] == expected, path.stem


# --- unit rules -------------------------------------------------------------------------------


def sse(payload, event=None):
    data = payload if isinstance(payload, str) else json.dumps(payload)
    name = event or (payload.get("type", "message") if isinstance(payload, dict) else "message")
    return SSEEvent(data, name)


def evt(kind, **fields):
    return sse({"type": kind, "sequence_number": 0, **fields})


def response(status="completed", **fields):
    return {"id": "resp_1", "object": "response", "status": status, "output": [], **fields}


def completed(**fields):
    return evt("response.completed", response=response(**fields))


def incomplete(reason, **fields):
    details = {"reason": reason} if reason is not None else None
    return evt(
        "response.incomplete", response=response("incomplete", incomplete_details=details, **fields)
    )


def text(delta, kind="response.output_text.delta"):
    return evt(kind, item_id="msg_1", output_index=0, content_index=0, delta=delta)


def message_item(index=0):
    item = {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant"}
    return evt("response.output_item.added", output_index=index, item={**item, "content": []})


def call_added(index, call_id="call_a", name="f", item_id=None, arguments=""):
    item = {
        "id": item_id or f"fc_{index}",
        "type": "function_call",
        "status": "in_progress",
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }
    return evt("response.output_item.added", output_index=index, item=item)


def call_done_item(index, arguments, call_id="call_a", name="f"):
    item = {
        "id": f"fc_{index}",
        "type": "function_call",
        "status": "completed",
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }
    return evt("response.output_item.done", output_index=index, item=item)


def args(index, delta, item_id=None):
    fields = {"item_id": item_id or f"fc_{index}", "delta": delta}
    if index is not None:
        fields["output_index"] = index
    return evt("response.function_call_arguments.delta", **fields)


def args_done(index, arguments):
    return evt(
        "response.function_call_arguments.done",
        item_id=f"fc_{index}",
        output_index=index,
        arguments=arguments,
    )


def run(*events, finish=False, translator=None):
    translator = translator or OpenAIResponsesTranslator()
    out = []
    for event in events:
        out.extend(translator.feed(event))
    if finish:
        out.extend(translator.finish())
    return out


def test_role_is_sent_once_at_created_in_progress_or_the_first_message_item():
    created = evt("response.created", response=response("in_progress"))
    progress = evt("response.in_progress", response=response("in_progress"))
    assert run(created, progress, message_item()) == [ev.RoleDelta("assistant")]
    assert run(message_item(), created) == [ev.RoleDelta("assistant")]


def test_text_and_refusal_deltas_are_text():
    out = run(text("Hi"), text("I can't help.", "response.refusal.delta"), text(""))
    assert out == [ev.TextDelta("Hi"), ev.TextDelta("I can't help.")]


def test_dispatch_is_on_the_json_type_not_the_sse_event_name():
    assert run(sse({"type": "response.output_text.delta", "delta": "a"}, event="message")) == [
        ev.TextDelta("a")
    ]
    assert run(sse({"delta": "a"}, event="response.output_text.delta")) == []


def test_unknown_and_ignored_event_types_produce_nothing():
    assert (
        run(
            evt("keepalive"),
            evt("response.output_text.done", text="all"),
            evt("response.content_part.added", part={"type": "output_text", "text": ""}),
            evt("response.web_search_call.searching", output_index=0, item_id="ws_1"),
            evt("response.mcp_call_arguments.delta", output_index=0, item_id="mcp_1", delta="{"),
            evt(
                "response.output_item.added", output_index=0, item={"id": "rs", "type": "reasoning"}
            ),
            evt("response.queued", response=response("queued")),
            evt("something.new"),
        )
        == []
    )


def test_a_type_that_is_not_a_string_is_ignored():
    assert run(sse({"type": ["response.output_text.delta"], "delta": "a"})) == []


def test_done_marker_is_ignored():
    assert run(sse("[DONE]"), text("a")) == [ev.TextDelta("a")]


def test_split_surrogate_pair_is_joined_and_a_lone_one_becomes_replacement_at_the_end():
    high = sse('{"type":"response.output_text.delta","delta":"a\\ud83d"}')
    low = sse('{"type":"response.output_text.delta","delta":"\\ude00b \\ud83d"}')
    out = run(high, low, completed())
    assert out == [
        ev.TextDelta("a"),
        ev.TextDelta("\U0001f600b "),
        ev.TextDelta("\ufffd"),
        ev.Finish("stop"),
    ]
    assert not any(has_lone_surrogate(e.text) for e in out if isinstance(e, ev.TextDelta))


def test_reasoning_summary_and_reasoning_text_are_reasoning_kept_apart_from_text():
    def summary(delta, index=0, item_id="rs_1"):
        return evt(
            "response.reasoning_summary_text.delta",
            item_id=item_id,
            output_index=0,
            summary_index=index,
            delta=delta,
        )

    out = run(
        summary("Plan"),
        summary(" more"),
        summary("Second", index=1),
        summary(""),
        evt("response.reasoning_text.delta", item_id="rs_2", content_index=0, delta="raw"),
        text("answer"),
    )
    assert out == [
        ev.ReasoningDelta("Plan"),
        ev.ReasoningDelta(" more"),
        ev.ReasoningDelta("\n\nSecond"),
        ev.ReasoningDelta("\n\nraw"),
        ev.TextDelta("answer"),
    ]


def test_a_lone_high_surrogate_in_reasoning_is_flushed_before_the_finish():
    high = sse('{"type":"response.reasoning_text.delta","delta":"\\ud83d"}')
    assert run(high, completed()) == [ev.ReasoningDelta("\ufffd"), ev.Finish("stop")]


def test_completed_emits_usage_then_stop():
    usage = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    translator = OpenAIResponsesTranslator()
    assert run(text("a"), completed(usage=usage), translator=translator) == [
        ev.TextDelta("a"),
        ev.Usage(3, 4),
        ev.Finish("stop"),
    ]
    assert translator.done
    assert translator.raw_finish_reason == "completed"
    assert translator.feed(text("late")) == []
    assert translator.finish() == []


def test_usage_with_missing_or_odd_counts_reads_them_as_zero():
    out = run(completed(usage={"input_tokens": True, "output_tokens": "4"}))
    assert out == [ev.Usage(0, 0), ev.Finish("stop")]
    assert run(completed(usage=None)) == [ev.Finish("stop")]


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("max_output_tokens", "length"),
        ("content_filter", "content_filter"),
        ("max_messages", "error"),
        ("steered", "error"),
        ("something_new", "error"),
        (None, "error"),
    ],
)
def test_incomplete_reason_is_normalized_and_an_unknown_one_is_never_stop(reason, finish):
    translator = OpenAIResponsesTranslator()
    usage = {"input_tokens": 1, "output_tokens": 2}
    out = run(incomplete(reason, usage=usage), translator=translator)
    assert out == [ev.Usage(1, 2), ev.Finish(finish)]
    assert translator.raw_finish_reason == (reason or "incomplete")


def test_incomplete_ends_an_open_tool_call_which_fails_when_cut_short():
    out = run(call_added(0), args(0, '{"a": '), incomplete("max_output_tokens"))
    assert out[-2:] == [
        ev.ToolCallFailed("call_a", "f", '{"a": ', "arguments are not valid JSON"),
        ev.Finish("length"),
    ]


def test_a_body_that_ends_without_completed_is_a_protocol_error_not_stop():
    translator = OpenAIResponsesTranslator()
    translator.feed(text("a"))
    with pytest.raises(UpstreamProtocolError, match="ended before it finished"):
        translator.finish()
    assert translator.done


def test_a_function_call_starts_streams_and_ends_at_arguments_done():
    added, done = call_added(0, "call_x", "get"), args_done(0, '{"a":1}')
    out = run(added, args(0, '{"a"'), args(0, ":1}"), done)
    assert out == [
        ev.ToolCallStart("call_x", 0, "get"),
        ev.ToolCallChunk("call_x", '{"a"'),
        ev.ToolCallChunk("call_x", ":1}"),
        ev.ToolCallEnd("call_x", "get", {"a": 1}),
    ]


def test_output_item_done_ends_a_call_once():
    out = run(
        call_added(0),
        args(0, "[1]"),
        args_done(0, "[1]"),
        call_done_item(0, "[1]"),
        completed(),
    )
    assert [type(e) for e in out] == [
        ev.ToolCallStart,
        ev.ToolCallChunk,
        ev.ToolCallEnd,
        ev.Finish,
    ]
    assert out[-1] == ev.Finish("tool_calls")


def test_output_item_done_alone_ends_a_call():
    out = run(call_added(0), args(0, "{}"), call_done_item(0, "{}"))
    assert out[-1] == ev.ToolCallEnd("call_a", "f", {})


def test_arguments_sent_whole_are_used_when_no_delta_was_streamed():
    out = run(call_added(0), args_done(0, '{"q":"x"}'))
    assert out == [
        ev.ToolCallStart("call_a", 0, "f"),
        ev.ToolCallChunk("call_a", '{"q":"x"}'),
        ev.ToolCallEnd("call_a", "f", {"q": "x"}),
    ]


def test_a_call_seen_only_in_output_item_done_starts_and_ends_there():
    out = run(call_done_item(2, '{"n":1}', call_id="call_z", name="g"))
    assert out == [
        ev.ToolCallStart("call_z", 0, "g"),
        ev.ToolCallChunk("call_z", '{"n":1}'),
        ev.ToolCallEnd("call_z", "g", {"n": 1}),
    ]


def test_streamed_deltas_stand_when_the_done_text_differs():
    out = run(call_added(0), args(0, "[1]"), args_done(0, "[2]"))
    assert out[-1] == ev.ToolCallEnd("call_a", "f", [1])


def test_arguments_already_in_the_added_item_are_used():
    out = run(call_added(0, arguments="[7]"), args_done(0, "[7]"))
    assert out[-1] == ev.ToolCallEnd("call_a", "f", [7])


def test_call_index_is_its_rank_among_function_calls_not_the_output_index():
    out = run(
        message_item(0),
        call_added(1, "call_a", "f"),
        call_added(3, "call_b", "g"),
        args(3, "[2]"),
        args(1, "[1]"),
        completed(),
    )
    starts = [e for e in out if isinstance(e, ev.ToolCallStart)]
    assert starts == [ev.ToolCallStart("call_a", 0, "f"), ev.ToolCallStart("call_b", 1, "g")]
    assert out[-3:] == [
        ev.ToolCallEnd("call_a", "f", [1]),
        ev.ToolCallEnd("call_b", "g", [2]),
        ev.Finish("tool_calls"),
    ]


def test_a_delta_without_output_index_is_found_by_item_id():
    out = run(call_added(4, item_id="fc_abc"), args(None, "[1]", item_id="fc_abc"), completed())
    assert ev.ToolCallChunk("call_a", "[1]") in out
    assert ev.ToolCallEnd("call_a", "f", [1]) in out


def test_a_delta_naming_no_known_item_is_a_protocol_error():
    with pytest.raises(UpstreamProtocolError, match="names no output item"):
        run(args(None, "[1]", item_id="fc_unknown"))


def test_a_delta_for_an_ended_call_is_a_protocol_error():
    with pytest.raises(UpstreamProtocolError, match="after its end"):
        run(call_added(0), args_done(0, "{}"), args(0, "x"))


def test_a_delta_for_a_call_never_added_fails_without_a_name():
    out = run(args(0, "{}"), completed())
    assert [type(e) for e in out] == [ev.ToolCallFailed, ev.Finish]
    assert out[0].reason == "tool call has no name"
    assert out[-1] == ev.Finish("tool_calls")


def test_tool_snapshots_are_passed_to_the_accumulator():
    translator = OpenAIResponsesTranslator(tool_snapshots=True)
    out = run(call_added(0), args(0, '{"text": "' + "x" * 80), translator=translator)
    assert any(isinstance(e, ev.ToolCallSnapshot) for e in out)


def test_response_failed_raises_by_error_code_and_never_carries_provider_text():
    error = {"code": "server_error", "message": "secret sk-123 leaked"}
    translator = OpenAIResponsesTranslator()
    with pytest.raises(UpstreamError) as caught:
        translator.feed(evt("response.failed", response=response("failed", error=error)))
    assert type(caught.value) is UpstreamError
    assert caught.value.public_message == "upstream reported an error (server_error)"
    assert translator.done
    assert translator.raw_finish_reason == "failed"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("rate_limit_exceeded", UpstreamRateLimited),
        ("server_error", UpstreamError),
        ("overloaded", UpstreamError),
        ("vector_store_timeout", UpstreamError),
        ("invalid_prompt", UpstreamRejected),
        ("bio_policy", UpstreamRejected),
        ("image_too_large", UpstreamRejected),
        ("failed_to_download_image", UpstreamRejected),
        ("context_length_exceeded", UpstreamRejected),
        ("something_new", UpstreamError),
        (None, UpstreamError),
    ],
)
def test_error_codes_map_to_typed_errors(code, kind):
    error = {"code": code, "message": "text"}
    with pytest.raises(UpstreamError) as failed:
        run(evt("response.failed", response=response("failed", error=error)))
    assert type(failed.value) is kind
    with pytest.raises(UpstreamError) as top:
        run(evt("error", code=code, message="text", param=None))
    assert type(top.value) is kind


def test_the_top_level_error_event_names_its_code_not_its_type():
    with pytest.raises(UpstreamRateLimited) as caught:
        run(evt("error", code="rate_limit_exceeded", message="slow down", param=None))
    assert caught.value.public_message == "upstream reported an error (rate_limit_exceeded)"


def test_an_error_event_with_a_nested_error_object_is_read_too():
    nested = {"type": "invalid_request_error", "code": "context_length_exceeded", "message": "m"}
    with pytest.raises(UpstreamRejected) as caught:
        run(evt("error", error=nested))
    assert caught.value.public_message == (
        "upstream reported an error (invalid_request_error, context_length_exceeded)"
    )


@pytest.mark.parametrize("error", [None, "boom", {"code": "not an identifier!"}, {"code": 5}])
def test_error_labels_only_short_identifiers(error):
    with pytest.raises(UpstreamError) as caught:
        run(evt("response.failed", response=response("failed", error=error)))
    assert caught.value.public_message == "upstream reported an error"


@pytest.mark.parametrize("payload", ["{", "NaN", ""])
def test_malformed_json_is_a_protocol_error(payload):
    with pytest.raises(UpstreamProtocolError, match="malformed JSON"):
        run(sse(payload))


def test_malformed_shapes_are_protocol_errors():
    with pytest.raises(UpstreamProtocolError, match="not a JSON object"):
        run(sse("[1]"))
    with pytest.raises(UpstreamProtocolError, match="non-string"):
        run(text(["not", "text"]))
    with pytest.raises(UpstreamProtocolError, match="output item"):
        run(evt("response.output_item.added", output_index=0, item="x"))
    with pytest.raises(UpstreamProtocolError, match="no response object"):
        run(evt("response.completed"))
    with pytest.raises(UpstreamProtocolError, match="non-string"):
        run(call_added(0, name=7))


def test_the_parser_is_registered_and_reads_bytes():
    parser = make_parser("openai_responses", 1 << 20)
    body = (
        b'data: {"type":"response.created","response":{"status":"in_progress"}}\n\n'
        b'data: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
        b'data: {"type":"response.completed","response":{"status":"completed"}}\n\n'
    )
    assert parser.feed(body) == [ev.RoleDelta("assistant"), ev.TextDelta("Hi"), ev.Finish("stop")]
    assert parser.eof() == []
