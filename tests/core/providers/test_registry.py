"""The registry of provider kinds: body builders, HTTP details and parsers, one row a kind."""

from __future__ import annotations

from typing import get_args

import msgspec
import pytest

from wsgate.config import ProviderSettings
from wsgate.core import events as ev
from wsgate.core.errors import UpstreamError
from wsgate.core.frames import ChatRequest, Message
from wsgate.core.providers import KIND_NAMES, KINDS, build_body, kind, make_parser
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


def test_every_registered_kind_has_its_http_details_a_body_and_a_parser():
    request = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    for name, row in KINDS.items():
        assert row.name == name
        assert row.http.path.startswith("/")
        assert row.http.accept in ("text/event-stream", "application/x-ndjson")
        assert isinstance(row.body(request, "upstream-name"), dict)
        assert row.parser(1024).eof() is not None


def test_the_configuration_accepts_exactly_the_registered_kinds():
    field = next(f for f in msgspec.structs.fields(ProviderSettings) if f.name == "kind")
    assert set(get_args(field.type)) == set(KIND_NAMES)


def test_an_unknown_kind_is_a_key_error_naming_the_known_ones():
    with pytest.raises(KeyError, match="openai_chat"):
        kind("gemini")
