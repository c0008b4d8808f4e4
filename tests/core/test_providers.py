"""The provider table: body builders and parsers that feed the stream core."""

from __future__ import annotations

from wsgate.core import events as ev
from wsgate.core.errors import UpstreamError
from wsgate.core.frames import ChatRequest, Message
from wsgate.core.providers import build_body, make_parser
from wsgate.testing import openai_sse


def test_the_openai_body_asks_for_a_stream_with_usage_and_the_upstream_model_name():
    request = ChatRequest(model="alias", messages=[Message(role="user", content="hi")])
    body = build_body("openai_chat", request, "gpt-real")
    assert body == {
        "model": "gpt-real",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_the_openai_parser_turns_sse_bytes_into_events():
    parser = make_parser("openai_chat", 1 << 20)
    events = [e for chunk in openai_sse(["Hel", "lo"]) for e in parser.feed(chunk)]
    assert events == [
        ev.RoleDelta("assistant"),
        ev.TextDelta("Hel"),
        ev.TextDelta("lo"),
        ev.Finish("stop"),
    ]
    assert parser.eof() == []


def test_events_decoded_before_an_error_in_the_same_read_are_kept_ahead_of_it():
    parser = make_parser("openai_chat", 1 << 20)
    data = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Part"}}]}\n\n'
        b'data: {"error":{"type":"server_error","message":"boom"}}\n\n'
    )
    *events, error = parser.feed(data)
    assert events == [ev.TextDelta("Part")]
    assert isinstance(error, UpstreamError)


def test_a_line_over_the_cap_ends_the_events_with_a_typed_error():
    parser = make_parser("openai_chat", 1024)
    out = parser.feed(b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n' + b"x" * 2048)
    assert out[0] == ev.TextDelta("ok")
    assert getattr(out[-1], "code", None) == "upstream_line_too_long"
