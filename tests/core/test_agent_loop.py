"""The agent loop in the core: turns that end in tool calls, their results, the next turn."""

from __future__ import annotations

import itertools

import msgspec
import orjson
import pytest

from wsgate.core import events as ev
from wsgate.core.agent import LoopPolicy, ToolLoop
from wsgate.core.frames import (
    ChatRequest,
    DeltaText,
    ErrorFrame,
    FinishFrame,
    Message,
    StructuredFrame,
    ToolAwaiting,
    ToolError,
    ToolExecuting,
    ToolResultFrame,
    TurnStarted,
    UsageFrame,
)
from wsgate.core.quota import TokenTally
from wsgate.core.session import (
    CancelUpstream,
    ForwardToolResult,
    LogPolicy,
    NextTurn,
    SendControl,
    SendStream,
    Session,
    SessionLimits,
    StartUpstream,
)
from wsgate.core.state import State
from wsgate.testing import LOCAL, ParserTarget, ScriptedParser

SEARCH = {
    "type": "function",
    "function": {"name": "search", "description": "Search", "parameters": {"type": "object"}},
}


def calls_turn(*calls, text="Let me look.", reason="tool_calls"):
    """One provider turn: some text, then each (call_id, name, arguments) ended, then finish."""
    items: list = [ev.TextDelta(text)] if text else []
    for index, (call_id, name, arguments) in enumerate(calls):
        items.append(ev.ToolCallStart(call_id, index, name))
        items.append(ev.ToolCallEnd(call_id, name, arguments))
    items.append(ev.Finish(reason))
    return ScriptedParser([items])


def answer_turn(text="Done.", reason="stop"):
    return ScriptedParser([[ev.TextDelta(text), ev.Finish(reason)]])


class Turns:
    """A target whose parsers are the scripted turns, one per provider call."""

    def __init__(self, parsers):
        self.parsers = list(parsers)
        self.made = 0

    def __call__(self, _request, _options):
        return ParserTarget(self._next)

    def _next(self):
        self.made += 1
        return self.parsers.pop(0) if self.parsers else ScriptedParser()


def make_session(turns, *, max_tool_result_bytes=4 * 1024 * 1024, tools=None):
    ids = itertools.count(1)
    logged = LogPolicy(new_epoch=lambda: "e1", healthy=lambda: True)
    return Session(
        "conn_1",
        SessionLimits(max_frame_bytes=1 << 20, max_tool_result_bytes=max_tool_result_bytes),
        turns,
        lambda: f"msg_{next(ids)}",
        "test",
        logged,
        principal=LOCAL,
        tools=tools if tools is not None else {"search": SEARCH},
    )


def start(sid="s1", agent=None, **request):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **request}
    options = {} if agent is None else {"agent": agent}
    return orjson.dumps({"type": "start", "stream_id": sid, "request": body, "options": options})


def result(call_id, content="42", sid="s1", **extra):
    frame = {"type": "tool_result", "stream_id": sid, "call_id": call_id, **extra}
    if content is not None:
        frame["content"] = content
    return orjson.dumps(frame)


def frames_of(actions):
    return [f for a in actions if isinstance(a, SendStream) for f in a.output.frames]


def refusal(actions):
    (action,) = actions
    assert isinstance(action, SendControl)
    assert isinstance(action.frame, ErrorFrame)
    return action.frame


def started(session, agent, now=0.0, **request):
    actions = session.receive(start(agent=agent, **request), now)
    (upstream,) = [a for a in actions if isinstance(a, StartUpstream)]
    return upstream


def first_turn(session, agent, **request):
    """Start, feed turn 1 (it ends in calls); the frames of the turn."""
    started(session, agent, **request)
    return session.upstream_data("s1", b"x", 1.0)


def test_a_turn_that_ends_in_client_calls_awaits_their_results_and_does_not_finish():
    session = make_session(Turns([calls_turn(("c1", "lookup", {"q": "a"}))]))
    output = first_turn(session, {"client_tools": True, "tool_timeout_ms": 5000})
    kinds = [type(f) for f in output.frames]
    assert FinishFrame not in kinds
    awaiting = output.frames[-1]
    assert isinstance(awaiting, ToolAwaiting)
    assert (awaiting.turn, awaiting.call_ids, awaiting.timeout_ms) == (1, ["c1"], 5000)
    assert output.turn is not None
    assert output.turn.run == ()
    assert not output.closed
    assert session.streams["s1"].state is State.AWAITING_TOOLS


def test_the_last_result_sends_the_next_turn_with_the_conversation_so_far():
    turns = Turns([calls_turn(("c1", "lookup", {"q": "a"}), ("c2", "lookup", {"q": "b"}))])
    session = make_session(turns)
    first_turn(session, {"client_tools": True})
    one = session.receive(result("c1", {"hits": 3}), 2.0)
    assert [type(f) for f in frames_of(one)] == [ToolResultFrame]
    assert not any(isinstance(a, NextTurn) for a in one)
    two = session.receive(result("c2", "none"), 2.0)
    frames = frames_of(two)
    assert [type(f) for f in frames] == [ToolResultFrame, TurnStarted]
    assert frames[1].turn == 2
    (next_turn,) = [a for a in two if isinstance(a, NextTurn)]
    messages = next_turn.request.messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool"]
    assistant = messages[1]
    assert assistant.content == "Let me look."
    assert [c["id"] for c in assistant.tool_calls] == ["c1", "c2"]
    assert orjson.loads(assistant.tool_calls[0]["function"]["arguments"]) == {"q": "a"}
    assert [(m.tool_call_id, m.content) for m in messages[2:]] == [
        ("c1", '{"hits":3}'),
        ("c2", "none"),
    ]


def test_seq_continues_across_turns_and_one_finish_ends_the_stream():
    session = make_session(Turns([calls_turn(("c1", "t", {})), answer_turn("Sunny.")]))
    first_turn(session, {"client_tools": True})
    session.receive(result("c1"), 2.0)
    last = session.upstream_data("s1", b"x", 3.0)
    assert [type(f) for f in last.frames] == [DeltaText, FinishFrame]
    assert last.frames[-1].reason == "stop"
    assert last.closed
    assert last.frames[0].seq == last.frames[-1].seq - 1
    # stream.started 1, delta 2, start 3, end 4, awaiting 5, result 6, turn 7, delta 8, finish 9
    assert last.frames[-1].seq == 9


def test_a_result_for_an_unknown_call_is_refused_and_starts_no_turn():
    session = make_session(Turns([calls_turn(("c1", "t", {}))]))
    first_turn(session, {"client_tools": True})
    error = refusal(session.receive(result("c9"), 2.0))
    assert (error.code, error.stream_id, error.retryable) == ("unknown_tool_call", "s1", False)
    assert error.call_id == "c9"
    assert session.streams["s1"].state is State.AWAITING_TOOLS


def test_a_second_result_for_a_call_is_a_duplicate_even_during_the_next_turn():
    session = make_session(Turns([calls_turn(("c1", "t", {})), ScriptedParser()]))
    first_turn(session, {"client_tools": True})
    assert any(isinstance(a, NextTurn) for a in session.receive(result("c1"), 2.0))
    assert session.streams["s1"].state is State.OPEN
    error = refusal(session.receive(result("c1"), 2.5))
    assert error.code == "duplicate_tool_result"


def test_a_result_while_the_turn_still_runs_is_unknown():
    session = make_session(Turns([ScriptedParser()]))
    started(session, {"client_tools": True})
    assert refusal(session.receive(result("c1"), 1.0)).code == "unknown_tool_call"


def test_a_stream_without_client_tools_takes_no_result():
    session = make_session(Turns([calls_turn(("c1", "t", {}))]))
    started(session, None)
    assert refusal(session.receive(result("c1"), 1.0)).code == "unknown_tool_call"
    assert refusal(session.receive(result("c1", sid="zz"), 1.0)).code == "unknown_stream"


@pytest.mark.parametrize(
    "extra",
    [{"content": None, "error": None}, {"content": "x", "error": {"code": "e", "message": "m"}}],
)
def test_a_result_with_neither_or_both_of_content_and_error_is_a_bad_frame(extra):
    session = make_session(Turns([calls_turn(("c1", "t", {}))]))
    first_turn(session, {"client_tools": True})
    frame = {"type": "tool_result", "stream_id": "s1", "call_id": "c1"}
    if extra["content"] is not None:
        frame["content"] = extra["content"]
    if extra["error"] is not None:
        frame["error"] = extra["error"]
    assert refusal(session.receive(orjson.dumps(frame), 2.0)).code == "bad_frame"


def test_an_error_result_reaches_the_model_as_an_error_object():
    session = make_session(Turns([calls_turn(("c1", "t", {}))]))
    first_turn(session, {"client_tools": True})
    error = {"code": "not_found", "message": "no such city"}
    actions = session.receive(result("c1", content=None, error=error), 2.0)
    (frame, _) = frames_of(actions)
    assert frame.source == "client"
    assert frame.error == ToolError("not_found", "no such city")
    (next_turn,) = [a for a in actions if isinstance(a, NextTurn)]
    assert orjson.loads(next_turn.request.messages[-1].content) == {"error": error}


def test_no_result_in_time_is_a_tool_timeout_and_the_upstream_is_closed():
    session = make_session(Turns([calls_turn(("c1", "t", {}))]))
    first_turn(session, {"client_tools": True, "tool_timeout_ms": 2000})
    stream = session.streams["s1"]
    assert stream.deadline() == pytest.approx(3.0)
    assert session.expire(2.9) == []
    actions = session.expire(3.0)
    frames = frames_of(actions)
    assert [type(f) for f in frames] == [ErrorFrame, FinishFrame]
    assert frames[0].code == "tool_timeout"
    assert frames[1].reason == "timeout"
    assert any(isinstance(a, CancelUpstream) for a in actions)


def test_cancel_while_awaiting_results_finishes_cancelled():
    session = make_session(Turns([calls_turn(("c1", "t", {}))]))
    first_turn(session, {"client_tools": True})
    actions = session.receive(orjson.dumps({"type": "cancel", "stream_id": "s1"}), 2.0)
    frames = frames_of(actions)
    assert [type(f) for f in frames] == [FinishFrame]
    assert frames[0].reason == "cancelled"
    assert any(isinstance(a, CancelUpstream) for a in actions)
    assert refusal(session.receive(result("c1"), 2.0)).code == "unknown_stream"


def test_the_turn_after_the_results_has_its_own_first_token_deadline():
    session = make_session(Turns([calls_turn(("c1", "t", {})), ScriptedParser()]))
    first_turn(session, {"client_tools": True})
    session.receive(result("c1"), 50.0)
    stream = session.streams["s1"]
    assert stream.first_token_left(50.0) == pytest.approx(session.limits.first_token_timeout)
    assert stream.may_retry  # nothing of turn 2 was produced yet


def test_max_steps_ends_the_stream_with_a_typed_error_instead_of_another_wait():
    turns = Turns([calls_turn(("c1", "t", {})), calls_turn(("c2", "t", {}))])
    session = make_session(turns)
    first_turn(session, {"client_tools": True, "max_steps": 2})
    session.receive(result("c1"), 2.0)
    output = session.upstream_data("s1", b"x", 3.0)
    kinds = [type(f) for f in output.frames]
    assert ToolAwaiting not in kinds
    assert output.closed
    assert output.frames[-2].code == "max_steps_exceeded"
    assert output.frames[-1].reason == "error"


@pytest.mark.parametrize("arguments", [[], None, 3, "text"])
def test_arguments_that_are_not_an_object_end_the_loop_with_tool_calls_invalid(arguments):
    session = make_session(Turns([calls_turn(("c1", "t", arguments))]))
    output = first_turn(session, {"client_tools": True})
    assert output.closed
    assert output.frames[-2].code == "tool_calls_invalid"


def test_a_call_that_did_not_parse_ends_the_loop_with_tool_calls_invalid():
    parser = ScriptedParser(
        [[ev.ToolCallFailed("c1", "not json", "{", "t"), ev.Finish("tool_calls")]]
    )
    session = make_session(Turns([parser]))
    output = first_turn(session, {"client_tools": True})
    assert output.closed
    assert output.frames[-2].code == "tool_calls_invalid"


def test_a_turn_with_no_calls_finishes_as_without_the_loop():
    session = make_session(Turns([answer_turn("Hi.")]))
    output = first_turn(session, {"client_tools": True})
    assert output.closed
    assert output.frames[-1].reason == "stop"


def test_calls_the_loop_does_not_answer_finish_the_stream_as_tool_calls():
    session = make_session(Turns([calls_turn(("c1", "client_side", {}))]))
    output = first_turn(session, {"server_tools": ["search"]})
    assert output.closed
    assert output.frames[-1].reason == "tool_calls"


def test_a_forced_tool_choice_applies_to_the_first_turn_only():
    session = make_session(Turns([calls_turn(("c1", "t", {}))]))
    first_turn(session, {"client_tools": True}, tool_choice="required")
    (next_turn,) = [a for a in session.receive(result("c1"), 2.0) if isinstance(a, NextTurn)]
    assert next_turn.request.tool_choice is None


def test_results_past_the_streams_byte_cap_are_refused_and_the_call_stays_open():
    session = make_session(Turns([calls_turn(("c1", "t", {}))]), max_tool_result_bytes=10)
    first_turn(session, {"client_tools": True})
    assert refusal(session.receive(result("c1", "x" * 11), 2.0)).code == "tool_result_too_large"
    assert any(isinstance(a, NextTurn) for a in session.receive(result("c1", "x" * 10), 2.0))


def test_structured_sections_are_split_per_turn():
    opts = {"client_tools": True}
    turn_one = ScriptedParser(
        [[ev.TextDelta("<<<JSON>>>{}<<<END>>>"), ev.ToolCallStart("c1", 0, "t"),
          ev.ToolCallEnd("c1", "t", {}), ev.Finish("tool_calls")]]
    )  # fmt: skip
    turn_two = ScriptedParser([[ev.TextDelta('<<<JSON>>>{"a": 1}<<<END>>>'), ev.Finish("stop")]])
    session = make_session(Turns([turn_one, turn_two]))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    frame = {"type": "start", "stream_id": "s1", "request": body}
    frame["options"] = {"agent": opts, "structured": {"mode": "sections"}}
    session.receive(orjson.dumps(frame), 0.0)
    session.upstream_data("s1", b"x", 1.0)
    session.receive(result("c1"), 2.0)
    last = session.upstream_data("s1", b"x", 3.0)
    sections = [f.value for f in last.frames if isinstance(f, StructuredFrame)]
    assert sections == [{"a": 1}]
    assert last.frames[-1].reason == "stop"


def test_server_tools_are_declared_to_the_model_and_their_calls_are_run_not_awaited():
    session = make_session(Turns([calls_turn(("c1", "search", {"q": "x"}))]))
    upstream = started(session, {"server_tools": ["search"]})
    assert upstream.request.tools == [SEARCH]
    output = session.upstream_data("s1", b"x", 1.0)
    assert [type(f) for f in output.frames][-1] is ToolExecuting
    assert output.turn is not None
    assert [c.call_id for c in output.turn.run] == ["c1"]
    assert refusal(session.receive(result("c1"), 2.0)).code == "unknown_tool_call"
    done = session.tool_finished("s1", "c1", {"top": "x"}, None, 2.0)
    assert [type(f) for f in done.frames] == [ToolResultFrame, TurnStarted]
    assert done.frames[0].source == "server"
    assert done.turn.request is not None


@pytest.mark.parametrize(
    ("tools", "code"),
    [(["nope"], "bad_request"), (["search"], "bad_request")],
)
def test_an_unknown_or_redeclared_server_tool_is_refused_at_start(tools, code):
    session = make_session(Turns([]))
    request = {"tools": [SEARCH]} if tools == ["search"] else {}
    error = refusal(session.receive(start(agent={"server_tools": tools}, **request), 0.0))
    assert error.code == code


def test_a_followers_result_is_forwarded_to_the_generation_it_follows():
    session = make_session(Turns([]))
    session.receive(
        orjson.dumps({"type": "resume", "stream_id": "f1", "message_id": "msg_9", "last_seq": 0}),
        0.0,
    )
    session.attach("f1", "msg_9")
    (action,) = session.receive(result("c1", sid="f1"), 1.0)
    assert isinstance(action, ForwardToolResult)
    assert action.message_id == "msg_9"


def test_the_tally_costs_each_turn_by_its_usage_or_its_own_estimate():
    tally = TokenTally(100)
    tally.observe([UsageFrame("s", 1, 10, 5)])
    tally.next_turn(300)  # charged as the turn starts
    tally.observe([UsageFrame("s", 3, 30, 7)])
    assert tally.correction == (15 + 37) - 100 - 300
    cut = TokenTally(100)
    cut.observe([UsageFrame("s", 1, 100, 10)])
    cut.next_turn(400)
    cut.observe([DeltaText("s", 3, "a")] * 500)  # cancelled before its usage came
    assert cut.correction == (110 + 400 + 500) - 100 - 400


def test_the_loop_builds_requests_from_the_chat_request_it_was_given():
    request = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    policy = LoopPolicy(
        client_tools=True,
        server_tools=frozenset(),
        max_steps=4,
        result_timeout=1.0,
        max_result_bytes=1 << 20,
    )
    loop = ToolLoop(request, policy)
    loop.call_ended("c1", "t", {"a": 1})
    loop.end_turn()
    accepted = loop.accept("c1", [1, 2], None, client=True)
    assert accepted.request is not None
    assert msgspec.json.decode(msgspec.json.encode(accepted.request))["messages"][-1] == {
        "role": "tool",
        "content": "[1,2]",
        "tool_call_id": "c1",
    }
    assert request.messages == [Message(role="user", content="hi")]  # never mutated


def test_a_turn_whose_finish_comes_only_at_the_end_of_the_body_awaits_its_results():
    parser = ScriptedParser(
        [[ev.ToolCallStart("c1", 0, "t"), ev.ToolCallEnd("c1", "t", {})]],
        eof_events=[ev.Finish("tool_calls")],
    )
    session = make_session(Turns([parser]))
    started(session, {"client_tools": True})
    session.upstream_data("s1", b"x", 1.0)
    output = session.upstream_eof("s1", 1.0)
    assert [type(f) for f in output.frames] == [ToolAwaiting]
    assert not output.closed
    assert session.streams["s1"].awaiting_tools


def test_call_ids_an_earlier_turn_used_are_renamed_so_no_result_answers_two_calls():
    turns = Turns([calls_turn(("call_0", "t", {})), calls_turn(("call_0", "t", {}))])
    session = make_session(turns)
    first_turn(session, {"client_tools": True})
    session.receive(result("call_0"), 2.0)
    output = session.upstream_data("s1", b"x", 3.0)
    (awaiting,) = [f for f in output.frames if isinstance(f, ToolAwaiting)]
    assert awaiting.call_ids == ["call_0_t2"]
    assert refusal(session.receive(result("call_0"), 3.5)).code == "duplicate_tool_result"
    (next_turn,) = [a for a in session.receive(result("call_0_t2"), 4.0) if isinstance(a, NextTurn)]
    ids = [c["id"] for m in next_turn.request.messages if m.tool_calls for c in m.tool_calls]
    assert ids == ["call_0", "call_0_t2"]


def test_a_malformed_call_in_a_turn_the_loop_does_not_answer_finishes_as_tool_calls():
    parser = ScriptedParser(
        [[ev.ToolCallFailed("c1", "not json", "{", "x"), ev.Finish("tool_calls")]]
    )
    session = make_session(Turns([parser]))
    output = first_turn(session, {"server_tools": ["search"]})
    assert output.frames[-1].reason == "tool_calls"


def test_final_json_parses_only_the_last_turns_answer():
    turn_one = ScriptedParser(
        [[ev.TextDelta("{}"), ev.ToolCallStart("c1", 0, "t"), ev.ToolCallEnd("c1", "t", {}),
          ev.Finish("tool_calls")]]
    )  # fmt: skip
    turn_two = ScriptedParser([[ev.TextDelta('{"a": 1}'), ev.Finish("stop")]])
    session = make_session(Turns([turn_one, turn_two]))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    options = {"agent": {"client_tools": True}, "structured": {"mode": "final_json"}}
    frame = {"type": "start", "stream_id": "s1", "request": body, "options": options}
    session.receive(orjson.dumps(frame), 0.0)
    one = session.upstream_data("s1", b"x", 1.0)
    assert not [f for f in one.frames if isinstance(f, StructuredFrame)]
    session.receive(result("c1"), 2.0)
    two = session.upstream_data("s1", b"x", 3.0)
    assert [f.value for f in two.frames if isinstance(f, StructuredFrame)] == [{"a": 1}]


def test_a_result_sent_while_a_resume_pends_is_forwarded_once_it_attaches():
    session = make_session(Turns([]))
    resume = {"type": "resume", "stream_id": "f1", "message_id": "msg_9", "last_seq": 0}
    session.receive(orjson.dumps(resume), 0.0)
    assert session.receive(result("c1", sid="f1"), 0.5) == []
    (action,) = session.attach("f1", "msg_9")
    assert isinstance(action, ForwardToolResult)
    assert (action.message_id, action.frame.call_id) == ("msg_9", "c1")


def test_content_nested_too_deeply_is_a_bad_frame_not_a_crash():
    session = make_session(Turns([calls_turn(("c1", "t", {}))]))
    first_turn(session, {"client_tools": True})
    deep: object = 1
    for _ in range(65):
        deep = [deep]
    assert refusal(session.receive(result("c1", deep), 2.0)).code == "bad_frame"
    shallow: object = 1
    for _ in range(63):
        shallow = [shallow]
    assert any(isinstance(a, NextTurn) for a in session.receive(result("c1", shallow), 2.0))
