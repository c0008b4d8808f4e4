"""Multi-turn scripts in the four dialects: the turn a request is at, the tool results it
carries (read from request bodies built by the gateway's own request builders), their check
against `expect_tool_results`, and what the records show."""

from __future__ import annotations

import json

import msgspec
import pytest
from mock_helpers import DIALECTS, decode, post

from wsgate.core.frames import ChatRequest
from wsgate.core.providers.anthropic_request import anthropic_body
from wsgate.core.providers.ollama_request import ollama_body
from wsgate.core.providers.openai_chat import openai_chat_body
from wsgate.core.providers.openai_responses_request import openai_responses_body
from wsgate.mock.dialects import ROUTES
from wsgate.mock.turns import ToolResult

BUILDERS = {
    "openai_chat": openai_chat_body,
    "openai_responses": openai_responses_body,
    "anthropic": anthropic_body,
    "ollama": ollama_body,
}
DIALECT = {dialect.name: dialect for dialect in ROUTES.values()}
PREFIX = {"openai_chat": "call_mock", "openai_responses": "call_mock",
          "anthropic": "toolu_mock", "ollama": "call_mock"}  # fmt: skip
STOP = {"openai_chat": "stop", "openai_responses": "completed",
        "anthropic": "end_turn", "ollama": "stop"}  # fmt: skip
WEATHER = {"name": "weather", "arguments": '{"city":"Paris"}'}
CLOCK = {"name": "clock", "arguments": "{}"}


def gateway_body(dialect, messages):
    """The body the gateway sends `dialect` for these chat-completions messages."""
    request = msgspec.convert({"model": "m", "messages": messages}, ChatRequest)
    return BUILDERS[dialect](request, "m")


def user(script):
    return {"role": "user", "content": json.dumps({"mock": script})}


def answered(calls, contents):
    """The assistant turn that made `calls` (id, name, arguments) and its tool messages."""
    tool_calls = [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in calls
    ]
    results = [
        {"role": "tool", "tool_call_id": call_id, "content": content}
        for (call_id, _, _), content in zip(calls, contents, strict=True)
    ]
    return [{"role": "assistant", "content": None, "tool_calls": tool_calls}, *results]


def error_of(dialect, raw):
    """(message, code) of an error body in the dialect's shape (Anthropic/Ollama: no code)."""
    body = json.loads(raw)
    if dialect == "ollama":
        return body["error"], None
    if dialect == "anthropic":
        assert body["type"] == "error"
        return body["error"]["message"], None
    return body["error"]["message"], body["error"]["code"]


def two_turns(dialect, expected, *, tag="two"):
    first = {"text": "Let me look.", "tool_calls": [WEATHER, CLOCK]}
    return {"turns": [first, {"text": "Sunny at noon.", "expect_tool_results": expected}],
            "tag": tag}  # fmt: skip


async def first_turn(mock, session, dialect, script):
    messages = [user(script)]
    status, _, raw = await post(mock, session, dialect, gateway_body(dialect, messages))
    assert status == 200, raw
    return messages, decode(dialect, raw)


# --- the round trip, in every dialect ---------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_second_turn_answers_when_the_tool_results_are_the_expected_ones(
    mock, session, dialect
):
    ids = [f"{PREFIX[dialect]}_0_0", f"{PREFIX[dialect]}_0_1"]
    script = two_turns(dialect, {ids[0]: {"temp_c": 21}, ids[1]: "12:00"})
    messages, got = await first_turn(mock, session, dialect, script)
    assert [(call_id, name) for call_id, name, _ in got.tool_calls] == [
        (ids[0], "weather"),
        (ids[1], "clock"),
    ]
    assert got.text == "Let me look."
    messages += answered(got.tool_calls, ['{"temp_c": 21}', "12:00"])
    status, _, raw = await post(mock, session, dialect, gateway_body(dialect, messages))
    assert status == 200, raw
    second = decode(dialect, raw)
    assert (second.text, second.tool_calls, second.finish) == ("Sunny at noon.", [], STOP[dialect])
    first_record, second_record = mock.find_all("two")
    assert (first_record.turn, first_record.tool_results) == (0, [])
    assert second_record.turn == 1
    assert second_record.tool_results == [
        ToolResult(ids[0], "weather", '{"temp_c": 21}'),
        ToolResult(ids[1], "clock", "12:00"),
    ]
    assert second_record.fault is None


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_tool_result_that_differs_is_a_400_naming_the_difference(mock, session, dialect):
    ids = [f"{PREFIX[dialect]}_0_0", f"{PREFIX[dialect]}_0_1"]
    script = two_turns(dialect, {ids[0]: {"temp_c": 21}, ids[1]: "12:00"}, tag="wrong")
    messages, got = await first_turn(mock, session, dialect, script)
    messages += answered(got.tool_calls, ['{"temp_c": 22}', "12:00"])
    status, headers, raw = await post(mock, session, dialect, gateway_body(dialect, messages))
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    message, code = error_of(dialect, raw)
    assert message == (
        "mock: tool results differ from expect_tool_results: "
        f'call "{ids[0]}": expected {{"temp_c":21}}, got "{{\\"temp_c\\": 22}}"'
    )
    assert code in (None, "mock_tool_results")
    record = mock.find("wrong")
    assert (record.status, record.fault, record.turn) == (400, "mock_tool_results", 1)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_expected_results_as_a_list_are_checked_in_order(mock, session, dialect):
    script = two_turns(dialect, ["sunny", "noon"], tag="ordered")
    messages, got = await first_turn(mock, session, dialect, script)
    swapped = [*messages, *answered(got.tool_calls, ["noon", "sunny"])]
    status, _, raw = await post(mock, session, dialect, gateway_body(dialect, swapped))
    assert status == 400
    assert error_of(dialect, raw)[0].endswith(
        'result 0: expected "sunny", got "noon"; result 1: expected "noon", got "sunny"'
    )
    messages += answered(got.tool_calls, ["sunny", "noon"])
    status, _, raw = await post(mock, session, dialect, gateway_body(dialect, messages))
    assert (status, decode(dialect, raw).text) == (200, "Sunny at noon.")


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_missing_and_an_unexpected_result_are_both_named(mock, session, dialect):
    script = two_turns(dialect, {"call_gone": "x", f"{PREFIX[dialect]}_0_0": "sunny"}, tag="m")
    messages, got = await first_turn(mock, session, dialect, script)
    messages += answered(got.tool_calls, ["sunny", "noon"])
    status, _, raw = await post(mock, session, dialect, gateway_body(dialect, messages))
    assert status == 400
    assert error_of(dialect, raw)[0].endswith(
        f'no result for call "call_gone"; unexpected result for call "{PREFIX[dialect]}_0_1"'
    )


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_three_turns_count_one_turn_per_assistant_tool_call_turn(mock, session, dialect):
    script = {
        "turns": [
            {"tool_calls": [WEATHER, CLOCK]},  # parallel calls: still one turn
            {"tool_calls": [{"name": "clock", "arguments": "{}", "id": "call_given"}],
             "expect_tool_results": ["sunny", "noon"]},
            {"text": "done", "expect_tool_results": {"call_given": "13:00"}},
        ],
        "tag": "three",
    }  # fmt: skip
    messages, got = await first_turn(mock, session, dialect, script)
    messages += answered(got.tool_calls, ["sunny", "noon"])
    status, _, raw = await post(mock, session, dialect, gateway_body(dialect, messages))
    assert status == 200, raw
    second = decode(dialect, raw)
    assert [c[0] for c in second.tool_calls] == ["call_given"]  # a given id is kept
    messages += answered(second.tool_calls, ["13:00"])
    status, _, raw = await post(mock, session, dialect, gateway_body(dialect, messages))
    assert (status, decode(dialect, raw).text) == (200, "done")
    assert [r.turn for r in mock.find_all("three")] == [0, 1, 2]
    messages += [{"role": "assistant", "content": "done"}]
    messages += answered([("call_more", "clock", "{}")], ["14:00"])
    status, _, raw = await post(mock, session, dialect, gateway_body(dialect, messages))
    assert status == 400
    assert error_of(dialect, raw)[0] == (
        "bad mock script: the request is at turn 3 but the script has 3 turns"
    )


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_tool_call_turns_before_the_last_user_message_do_not_count(dialect):
    earlier = [user({"text": "old"}), *answered([("old_call", "clock", "{}")], ["noon"])]
    body = gateway_body(dialect, [*earlier, {"role": "assistant", "content": "ok"}, user({})])
    assert DIALECT[dialect].history(body).turn == 0
    assert DIALECT[dialect].history(body).results == ()


# --- the history each dialect reads -----------------------------------------------------


def test_responses_counts_a_run_of_function_call_items_as_one_turn():
    body = {
        "input": [
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "a", "output": "1"},
            {"type": "function_call_output", "call_id": "b",
             "output": [{"type": "input_text", "text": "2"}]},
        ]
    }  # fmt: skip
    history = DIALECT["openai_responses"].history(body)
    assert history.turn == 1
    assert history.results == (ToolResult("a", "f", "1"), ToolResult("b", "g", "2"))
    assert DIALECT["openai_responses"].history({"input": "a string"}).turn == 0


def test_anthropic_skips_tool_result_messages_when_it_looks_for_the_script():
    body = anthropic_body(
        msgspec.convert(
            {
                "model": "m",
                "messages": [user({"text": "hi"}), *answered([("t1", "f", "{}")], ["r"])],
            },
            ChatRequest,
        ),
        "m",
    )
    assert body["messages"][-1]["content"][0]["type"] == "tool_result"
    assert DIALECT["anthropic"].user_text(body) == json.dumps({"mock": {"text": "hi"}})
    assert DIALECT["anthropic"].history(body).results == (ToolResult("t1", "f", "r"),)


def test_ollama_pairs_results_with_the_calls_by_position_and_keeps_its_tool_name():
    body = {
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": {}}},
                {"function": {"name": "g", "arguments": {}}},
            ]},
            {"role": "tool", "content": "1", "tool_name": "f"},
            {"role": "tool", "content": "2"},
            {"role": "tool", "content": "3", "tool_name": "h"},
        ]
    }  # fmt: skip
    assert DIALECT["ollama"].history(body).results == (
        ToolResult("a", "f", "1"),
        ToolResult(None, "g", "2"),  # the second call had no id
        ToolResult(None, "h", "3"),  # more results than calls
    )


def test_chat_reads_text_part_tool_contents_and_the_name_of_the_call_answered():
    body = {
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "a",
             "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
        ]
    }  # fmt: skip
    assert DIALECT["openai_chat"].history(body).results == (ToolResult("a", "f", "xy"),)


# --- the script format ------------------------------------------------------------------


async def test_a_malformed_later_turn_is_refused_at_the_first_request(mock, session):
    script = {"turns": [{"text": "ok"}, {"text": "a", "words": 3}]}
    status, _, raw = await post(
        mock, session, "openai_chat", gateway_body("openai_chat", [user(script)])
    )
    assert status == 400
    assert error_of("openai_chat", raw) == (
        "bad mock script: turns[1]: text and words exclude each other",
        "mock_bad_script",
    )


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"turns": [], "tag": "t"}, "turns must be a non-empty list of objects"),
        ({"turns": ["x"]}, "turns must be a non-empty list of objects"),
        ({"turns": [{}], "text": "x"}, "turns take no other key than tag; drop ['text']"),
        ({"turns": [{}], "tag": 3}, "tag must be a string"),
        ({"turns": [{"turns": []}]}, "turns[0]: Object contains unknown field `turns`"),
        ({"turns": [{"interleave_tools": True}]}, "turns[0]: interleave_tools not supported"),
        ({"expect_tool_results": "x"}, "Expected `object | array | null`, got `str`"),
    ],
)
async def test_malformed_multi_turn_scripts_are_400s(mock, session, script, message):
    body = gateway_body("anthropic", [user(script)])
    status, _, raw = await post(mock, session, "anthropic", body)
    assert status == 400
    assert message in error_of("anthropic", raw)[0]


async def test_a_turn_takes_the_outer_tag_unless_it_has_its_own(mock, session):
    script = {"turns": [{"tool_calls": [CLOCK], "tag": "own"}, {"text": "x"}], "tag": "outer"}
    messages, got = await first_turn(mock, session, "ollama", script)
    messages += answered(got.tool_calls, ["noon"])
    await post(mock, session, "ollama", gateway_body("ollama", messages))
    assert [(r.tag, r.turn) for r in mock.records.values()] == [("own", 0), ("outer", 1)]


async def test_a_single_turn_script_can_check_tool_results_and_keeps_its_plain_ids(mock, session):
    messages = [user({"tool_calls": [CLOCK]})]
    _, _, raw = await post(mock, session, "openai_chat", gateway_body("openai_chat", messages))
    calls = decode("openai_chat", raw).tool_calls
    assert [c[0] for c in calls] == ["call_mock_0"]  # not a turns script: ids as before
    script = {"text": "ok", "expect_tool_results": {"call_mock_0": "noon"}}
    messages = [user(script), *answered(calls, ["noon"])]
    status, _, raw = await post(mock, session, "openai_chat", gateway_body("openai_chat", messages))
    assert (status, decode("openai_chat", raw).text) == (200, "ok")


async def test_expected_json_matches_the_text_as_canonical_json(mock, session):
    script = two_turns("openai_chat", {"call_mock_0_0": {"b": [1, 2], "a": None},
                                       "call_mock_0_1": 12})  # fmt: skip
    messages, got = await first_turn(mock, session, "openai_chat", script)
    messages += answered(got.tool_calls, ['{ "a": null, "b": [1,2] }', "12.0"])
    status, _, raw = await post(mock, session, "openai_chat", gateway_body("openai_chat", messages))
    assert status == 400
    assert error_of("openai_chat", raw)[0].endswith('call "call_mock_0_1": expected 12, got "12.0"')


async def test_the_header_script_may_have_turns_too(mock, session):
    script = {"turns": [{"tool_calls": [CLOCK]}, {"text": "done"}]}
    headers = {"x-mock-script": json.dumps(script)}
    messages = [{"role": "user", "content": "what time is it?"}]
    _, _, raw = await post(mock, session, "openai_responses",
                           gateway_body("openai_responses", messages), headers)  # fmt: skip
    calls = decode("openai_responses", raw).tool_calls
    messages += answered(calls, ["noon"])
    _, _, raw = await post(mock, session, "openai_responses",
                           gateway_body("openai_responses", messages), headers)  # fmt: skip
    assert decode("openai_responses", raw).text == "done"


async def test_the_record_endpoint_lists_the_turn_and_the_tool_results(mock, session):
    script = {"turns": [{"tool_calls": [CLOCK]}, {"text": "done"}], "tag": "listed"}
    messages, got = await first_turn(mock, session, "anthropic", script)
    messages += answered(got.tool_calls, ["noon"])
    await post(mock, session, "anthropic", gateway_body("anthropic", messages))
    async with session.get(mock.root_url + "/mock/requests") as response:
        listed = await response.json()
    assert [(r["turn"], r["tool_results"]) for r in listed] == [
        (0, []),
        (1, [{"call_id": "toolu_mock_0_0", "name": "clock", "content": "noon"}]),
    ]
