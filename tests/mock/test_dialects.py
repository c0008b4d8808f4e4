"""The four dialects over real sockets: exact bytes, shapes, usage, tool calls, limits, errors."""

from __future__ import annotations

import json

import orjson
import pytest
from mock_helpers import DIALECTS, ROUTES, decode, ndjson, post, request_body, sse_events

SCRIPTED_CALLS = [
    {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    {"name": "noop", "arguments": "{}", "id": "call_given"},
]
DEFAULT_IDS = {
    "openai_chat": "call_mock_0",
    "openai_responses": "call_mock_0",
    "anthropic": "toolu_mock_0",
    "ollama": "call_mock_0",
}
FINISH = {  # (stop, length, tool_calls) in each dialect's words
    "openai_chat": ("stop", "length", "tool_calls"),
    "openai_responses": ("completed", "incomplete", "completed"),
    "anthropic": ("end_turn", "max_tokens", "tool_use"),
    "ollama": ("stop", "length", "stop"),
}
LIMIT_FIELD = {
    "openai_chat": {"max_tokens": 2},
    "openai_responses": {"max_output_tokens": 2},
    "anthropic": {"max_tokens": 2},
    "ollama": {"options": {"num_predict": 2}},
}
USAGE = {"openai_chat": {"stream_options": {"include_usage": True}}}


def as_header(script):
    return {"x-mock-script": json.dumps(script)}


def body(dialect, script=None, **extra):
    return request_body(dialect, script, **USAGE.get(dialect, {}), **extra)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_every_dialect_streams_the_text_tool_calls_finish_and_usage(mock, session, dialect):
    script = {"text": "Héllo wörld, 日本 🎉!", "tool_calls": SCRIPTED_CALLS, "tag": "full"}
    status, _, raw = await post(mock, session, dialect, body(dialect, script))
    assert status == 200
    got = decode(dialect, raw)
    assert got.text == "Héllo wörld, 日本 🎉!"
    assert got.tool_calls == [
        (DEFAULT_IDS[dialect], "get_weather", '{"city":"Paris"}'),
        ("call_given", "noop", "{}"),
    ]
    assert got.finish == FINISH[dialect][2]
    prompt_words = len(json.dumps({"mock": script}).split())
    assert got.usage == (prompt_words, 4)  # the prompt's words; four word chunks
    assert got.ended
    assert got.error is None
    assert mock.find("full").dialect == dialect


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_text_answer_finishes_with_the_dialects_stop(mock, session, dialect):
    _, _, raw = await post(mock, session, dialect, body(dialect, {"text": "just text"}))
    got = decode(dialect, raw)
    assert (got.text, got.finish, got.tool_calls) == ("just text", FINISH[dialect][0], [])


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_the_token_limit_cuts_the_answer_drops_tools_and_says_length(mock, session, dialect):
    script = {"text": "one two three", "tool_calls": SCRIPTED_CALLS}
    extra = LIMIT_FIELD[dialect]
    _, _, raw = await post(mock, session, dialect, {**body(dialect, script), **extra})
    got = decode(dialect, raw)
    assert (got.text, got.tool_calls, got.finish) == ("one two", [], FINISH[dialect][1])


async def test_a_length_cut_responses_stream_ends_with_response_incomplete(mock, session):
    extra = {"max_output_tokens": 1}
    _, _, raw = await post(
        mock, session, "openai_responses", body("openai_responses", {"text": "a b"}, **extra)
    )
    name, data = sse_events(raw)[-1]
    assert name == "response.incomplete"
    response = json.loads(data)["response"]
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["max_output_tokens"] == 1
    assert response["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("given", "index"), [("stop", 0), ("length", 1), ("tool_calls", 2)])
async def test_neutral_finish_reasons_are_named_per_dialect(mock, session, dialect, given, index):
    script = {"text": "x", "finish_reason": given}
    got = decode(dialect, (await post(mock, session, dialect, body(dialect, script)))[2])
    assert got.finish == FINISH[dialect][index]


@pytest.mark.parametrize("dialect", ["openai_chat", "anthropic", "ollama"])
async def test_other_finish_reasons_are_sent_as_given(mock, session, dialect):
    script = {"text": "x", "finish_reason": "content_filter"}
    got = decode(dialect, (await post(mock, session, dialect, body(dialect, script)))[2])
    assert got.finish == "content_filter"


# --- exact bytes ------------------------------------------------------------------------


async def test_anthropic_stream_bytes_are_exactly_the_messages_sequence(mock, session):
    script = {"text": "Hi there", "tool_calls": [{"name": "f", "arguments": '{"a":1}'}]}
    _, headers, raw = await post(mock, session, "anthropic", body("anthropic"), as_header(script))
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    n = headers["x-mock-request-id"].removeprefix("req-")
    message = (
        f'{{"id":"msg_mock_{n}","type":"message","role":"assistant","content":[],'
        '"model":"claude-test","stop_reason":null,"stop_sequence":null,'
        '"usage":{"input_tokens":1,"output_tokens":1}}'
    )
    assert raw.decode() == (
        f'event: message_start\ndata: {{"type":"message_start","message":{message}}}\n\n'
        "event: content_block_start\n"
        'data: {"type":"content_block_start","index":0,'
        '"content_block":{"type":"text","text":""}}\n\n'
        'event: ping\ndata: {"type": "ping"}\n\n'
        "event: content_block_delta\n"
        'data: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        "event: content_block_delta\n"
        'data: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":" there"}}\n\n'
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        "event: content_block_start\n"
        'data: {"type":"content_block_start","index":1,"content_block":'
        '{"type":"tool_use","id":"toolu_mock_0","name":"f","input":{}}}\n\n'
        "event: content_block_delta\n"
        'data: {"type":"content_block_delta","index":1,"delta":'
        '{"type":"input_json_delta","partial_json":"{\\"a\\":1}"}}\n\n'
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n'
        "event: message_delta\n"
        'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
        '"usage":{"output_tokens":2}}\n\n'
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


async def test_an_anthropic_tool_only_answer_has_no_text_block(mock, session):
    script = {"text": "", "tool_calls": [{"name": "f"}]}
    _, _, raw = await post(mock, session, "anthropic", body("anthropic", script))
    names = [name for name, _ in sse_events(raw)]
    assert names == ["message_start", "ping", "content_block_start", "content_block_stop",
                     "message_delta", "message_stop"]  # fmt: skip
    assert json.loads(sse_events(raw)[2][1])["index"] == 0


async def test_ollama_stream_bytes_are_exactly_the_ndjson_lines(mock, session):
    script = {"text": "Hi there", "tool_calls": [{"name": "f", "arguments": '{"a": [1]}'}]}
    _, headers, raw = await post(mock, session, "ollama", body("ollama"), as_header(script))
    assert headers["Content-Type"] == "application/x-ndjson"
    assert "Cache-Control" not in headers
    created = ndjson(raw)[0]["created_at"]
    head = f'{{"model":"llama-test","created_at":"{created}","message":{{"role":"assistant",'
    assert raw.decode() == (
        f'{head}"content":"Hi"}},"done":false}}\n'
        f'{head}"content":" there"}},"done":false}}\n'
        f'{head}"content":"","tool_calls":[{{"id":"call_mock_0","function":{{"index":0,'
        '"name":"f","arguments":{"a":[1]}}}]},"done":false}\n'
        f'{head}"content":""}},"done":true,"done_reason":"stop","prompt_eval_count":1,'
        '"eval_count":2}\n'
    )
    assert created.endswith("Z")


async def test_ollama_streams_when_stream_is_absent(mock, session):
    request = body("ollama", {"text": "a b"})
    del request["stream"]
    _, _, raw = await post(mock, session, "ollama", request)
    assert [line["done"] for line in ndjson(raw)] == [False, False, True]


async def test_responses_events_are_named_numbered_and_complete(mock, session):
    script = {"text": "Hi there", "tool_calls": [{"name": "f", "arguments": '{"a":1}'}]}
    extra = {"instructions": "Be brief.", "store": False}
    request = body("openai_responses", **extra)
    _, headers, raw = await post(mock, session, "openai_responses", request, as_header(script))
    events = sse_events(raw)
    payloads = [json.loads(data) for _, data in events]
    assert [name for name, _ in events] == [p["type"] for p in payloads]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert [p["type"] for p in payloads] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    n = headers["x-mock-request-id"].removeprefix("req-")
    assert (
        events[4][1]
        == (
            f'{{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_mock_{n}",'
            '"output_index":0,"content_index":0,"delta":"Hi","logprobs":[]}'
        ).encode()
    )
    assert payloads[9]["item"] == {
        "id": f"fc_mock_{n}_0",
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": "call_mock_0",
        "name": "f",
    }
    final = payloads[-1]["response"]
    assert final["status"] == "completed"
    assert final["instructions"] == "Be brief."
    assert final["store"] is False
    assert final["usage"] == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 5,
    }
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Hi there"


# --- where the script is ----------------------------------------------------------------


def user_parts(kind):
    return [{"role": "user", "content": [{"type": "image"}, {"type": kind, "text": "S"}]}]


@pytest.mark.parametrize(
    ("dialect", "request_json"),
    [
        ("openai_chat", {"messages": user_parts("text")}),
        ("openai_responses", {"input": user_parts("input_text")}),
        ("openai_responses", {"input": [{"type": "message", "role": "user", "content": "S"}]}),
        ("anthropic", {"max_tokens": 9, "messages": user_parts("text")}),
        ("ollama", {"messages": [{"role": "user", "content": "S"}]}),
    ],
)
async def test_the_script_is_read_from_the_last_user_messages_text(
    mock, session, dialect, request_json
):
    script = json.dumps({"mock": {"text": "from the message", "tag": "where"}})
    request = json.loads(json.dumps(request_json).replace('"S"', json.dumps(script)))
    _, _, raw = await post(mock, session, dialect, {"model": "m", "stream": True, **request})
    assert decode(dialect, raw).text == "from the message"
    assert mock.find("where").dialect == dialect


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_the_header_script_works_in_every_dialect(mock, session, dialect):
    headers = {"x-mock-script": '{"text": "from header", "tag": "hdr"}'}
    _, _, raw = await post(mock, session, dialect, body(dialect), headers)
    assert decode(dialect, raw).text == "from header"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_unscripted_answers_are_generated_words_seeded_by_the_prompt(mock, session, dialect):
    first = decode(dialect, (await post(mock, session, dialect, body(dialect, prompt="tea")))[2])
    again = decode(dialect, (await post(mock, session, dialect, body(dialect, prompt="tea")))[2])
    other = decode(dialect, (await post(mock, session, dialect, body(dialect, prompt="rain")))[2])
    assert len(first.text.split()) == mock.default_words
    assert first.text == again.text != other.text


# --- non-streaming ----------------------------------------------------------------------


async def test_non_streaming_answers_hold_the_same_answer_in_each_dialects_shape(mock, session):
    script = {"text": "Hi there", "tool_calls": [{"name": "f", "arguments": '{"a":1}'}]}
    answers = {}
    for dialect in DIALECTS:
        status, headers, raw = await post(
            mock, session, dialect, body(dialect, script, stream=False)
        )
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        answers[dialect] = orjson.loads(raw)
    chat = answers["openai_chat"]["choices"][0]
    assert chat["message"]["content"] == "Hi there"
    assert chat["finish_reason"] == "tool_calls"
    response = answers["openai_responses"]
    assert response["object"] == "response"
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "Hi there"
    assert response["output"][1]["arguments"] == '{"a":1}'
    assert response["usage"]["output_tokens"] == 2
    message = answers["anthropic"]
    assert message["type"] == "message"
    assert message["content"] == [
        {"type": "text", "text": "Hi there"},
        {"type": "tool_use", "id": "toolu_mock_0", "name": "f", "input": {"a": 1}},
    ]
    assert (message["stop_reason"], message["usage"]["output_tokens"]) == ("tool_use", 2)
    ollama = answers["ollama"]
    assert ollama["message"]["content"] == "Hi there"
    assert ollama["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert (ollama["done"], ollama["done_reason"], ollama["eval_count"]) == (True, "stop", 2)


@pytest.mark.parametrize("dialect", ["anthropic", "ollama"])
async def test_whole_tool_calls_need_object_arguments(mock, session, dialect):
    script = {"tool_calls": [{"name": "f", "arguments": '{"a": '}]}
    stream = dialect == "ollama"  # Ollama sends calls whole even when streaming
    status, _, raw = await post(mock, session, dialect, body(dialect, script, stream=stream))
    assert status == 400
    assert "object arguments" in raw.decode()


# --- errors -----------------------------------------------------------------------------

ERROR_SHAPES = {
    "openai_chat": lambda e: e["error"]["type"],
    "openai_responses": lambda e: e["error"]["type"],
    "anthropic": lambda e: e["error"]["type"] if e["type"] == "error" else None,
    "ollama": lambda e: "error" if set(e) == {"error"} else None,
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("status", "types"),
    [
        (429, ("requests", "rate_limit_error", "error")),
        (500, ("server_error", "api_error", "error")),
        (529, ("server_error", "overloaded_error", "error")),
        (404, ("invalid_request_error", "not_found_error", "error")),
    ],
)
async def test_scripted_statuses_answer_in_the_dialects_error_shape(
    mock, session, dialect, status, types
):
    script = {"status": status, "retry_after": 0.5, "tag": "st"}
    got_status, headers, raw = await post(mock, session, dialect, body(dialect, script))
    assert got_status == status
    assert headers["Retry-After"] == "0.5"
    assert headers["Content-Type"] == "application/json"
    expected = {"openai_chat": types[0], "openai_responses": types[0]}.get(
        dialect, types[1] if dialect == "anthropic" else types[2]
    )
    assert ERROR_SHAPES[dialect](orjson.loads(raw)) == expected
    assert mock.find("st").status == status


async def test_error_type_overrides_the_type_of_a_scripted_status(mock, session):
    script = {"status": 400, "error_type": "context_length_exceeded"}
    _, _, raw = await post(mock, session, "openai_chat", body("openai_chat", script))
    assert orjson.loads(raw)["error"]["type"] == "context_length_exceeded"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_malformed_script_is_a_400_in_the_dialects_error_shape(mock, session, dialect):
    status, _, raw = await post(
        mock, session, dialect, body(dialect, {"colour": "red", "tag": "b"})
    )
    assert status == 400
    error = orjson.loads(raw)
    assert "unknown field `colour`" in json.dumps(error)
    expected = "error" if dialect == "ollama" else "invalid_request_error"
    assert ERROR_SHAPES[dialect](error) == expected
    if dialect.startswith("openai"):
        assert error["error"]["code"] == "mock_bad_script"
    assert mock.find("b").status == 400


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_body_that_is_not_a_json_object_is_a_400(mock, session, dialect):
    async with session.post(mock.root_url + ROUTES[dialect], data=b"[1]") as response:
        assert response.status == 400
        error = await response.json()
    assert ERROR_SHAPES[dialect](error) in ("invalid_request_error", "error")


async def test_anthropic_requires_max_tokens_as_anthropic_does(mock, session):
    request = body("anthropic", {"text": "x"})
    del request["max_tokens"]
    status, _, raw = await post(mock, session, "anthropic", request)
    assert status == 400
    assert orjson.loads(raw) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


async def test_anthropic_accepts_the_version_header_and_a_system_prompt(mock, session):
    request = body("anthropic", system=[{"type": "text", "text": "be kind"}])
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "k", **as_header({"text": "ok"})}
    _, _, raw = await post(mock, session, "anthropic", request, headers)
    assert decode("anthropic", raw).usage == (3, 1)


@pytest.mark.parametrize(
    ("dialect", "key"),
    [
        ("anthropic", "tool_index"),
        ("anthropic", "interleave_tools"),
        ("ollama", "interleave_tools"),
        ("ollama", "tool_index"),
        ("openai_responses", "tool_index"),
        ("openai_responses", "done"),
    ],
)
async def test_keys_a_dialect_cannot_honour_are_script_errors(mock, session, dialect, key):
    value = key != "tool_index"  # tool_index: false, the others: true
    script = {"tool_calls": [{"name": "f"}], key: value}
    status, _, raw = await post(mock, session, dialect, body(dialect, script))
    assert status == 400
    assert f"{key} not supported by the {dialect} dialect" in raw.decode()


# --- raw events -------------------------------------------------------------------------


async def test_raw_events_may_name_their_sse_event(mock, session):
    script = {"events": ["{}", {"event": "response.created", "data": '{"x":1}'}]}
    _, _, raw = await post(mock, session, "openai_responses", body("openai_responses", script))
    assert raw == b'data: {}\n\nevent: response.created\ndata: {"x":1}\n\n'


async def test_ollama_raw_events_are_lines(mock, session):
    script = {"events": ['{"not": "ollama"}', "garbage"]}
    _, _, raw = await post(mock, session, "ollama", body("ollama", script))
    assert raw == b'{"not": "ollama"}\ngarbage\n'
    script = {"events": [{"event": "x", "data": "{}"}]}
    status, _, _ = await post(mock, session, "ollama", body("ollama", script))
    assert status == 400
