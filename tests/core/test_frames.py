"""Frames: decoding never escapes, encoding is always UTF-8, limits hold."""

from __future__ import annotations

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core.errors import ERROR_CODES
from wsgate.core.frames import (
    Cancel,
    ClientFrame,
    DeltaText,
    ErrorFrame,
    FrameEncodeError,
    FrameRejected,
    Start,
    Telemetry,
    ToolCallEndFrame,
    decode_client_frame,
    decode_server_frame,
    encode_frame,
)

MAX = 64 * 1024


def start(stream_id="s1", **request):
    body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], **request}
    return orjson.dumps({"type": "start", "stream_id": stream_id, "request": body})


def test_a_valid_start_decodes_to_a_typed_frame():
    frame = decode_client_frame(start(temperature=0.5, max_tokens=10), MAX)
    assert isinstance(frame, Start)
    assert frame.request.temperature == 0.5
    assert frame.options.telemetry is False


def test_a_cancel_decodes_from_text_and_from_bytes():
    assert decode_client_frame('{"type":"cancel","stream_id":"a"}', MAX) == Cancel("a")
    assert decode_client_frame(b'{"type":"cancel","stream_id":"a"}', MAX) == Cancel("a")


@pytest.mark.parametrize(
    ("data", "message_part"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"start"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"stream_id": "a"}', "no string `type`"),
        (b'{"type": 3}', "no string `type`"),
        (b'{"type": "launch", "stream_id": "a"}', "unknown frame type"),
        (b'{"type": "resume", "message_id": "m", "last_seq": 0}', "missing required field"),
        (b'{"type": "cancel", "stream_id": ""}', "stream_id"),
        (b'{"type": "cancel", "stream_id": "has space"}', "stream_id"),
        (b'{"type": "cancel", "stream_id": "' + b"x" * 65 + b'"}', "stream_id"),
        (b'{"type": "cancel", "stream_id": "a", "extra": 1}', "unknown field `extra`"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "must be a JSON object"),
        (
            b'{"type":"tool_result","stream_id":"a","call_id":"c","content":' + b"[" * 100000,
            "nests too deeply",
        ),
        (
            b'{"type":"tool_result","stream_id":"a","call_id":"c","content":'
            + b"[" * 5000
            + b"]" * 5000
            + b"}",
            "nests too deeply",
        ),
        (b'{"type":"start","stream_id":"a","request":{"model":"m","messages":[]}}', "length"),
        (
            b'{"type":"start","stream_id":"a","request":{"model":"m","seed":1'
            + b"0" * 5000
            + b"}}",
            "",
        ),
        (
            b'{"type":"start","stream_id":"a","request":{"model":"m","n":2,"messages":[{"role":"user"}]}}',
            "unknown field `n`",
        ),
        (
            b'{"type":"start","stream_id":"a","request":{"model":"m","messages":[{"role":"wizard"}]}}',
            "role",
        ),
        (
            b'{"type":"start","stream_id":"a","request":{"model":"m","messages":[{"role":"user"}]},"options":{"colour":"red"}}',
            "colour",
        ),
        (b'{"type":"cancel","stream_id":"a\\ud800"}', "not valid JSON"),
        (b'{"type": NaN}', "not valid JSON"),
    ],
)
def test_each_malformed_frame_is_a_typed_bad_frame(data, message_part):
    rejected = decode_client_frame(data, 10 * 1024 * 1024)
    assert isinstance(rejected, FrameRejected)
    assert rejected.code == "bad_frame"
    assert message_part in rejected.message


def test_a_rejected_frame_keeps_a_valid_stream_id_so_the_client_can_match_it():
    rejected = decode_client_frame(b'{"type":"start","stream_id":"s9","request":{}}', MAX)
    assert isinstance(rejected, FrameRejected)
    assert rejected.stream_id == "s9"
    bad_id = decode_client_frame(b'{"type":"start","stream_id":"s 9","request":{}}', MAX)
    assert isinstance(bad_id, FrameRejected)
    assert bad_id.stream_id is None


def test_a_frame_over_the_size_limit_is_refused_before_parsing():
    rejected = decode_client_frame(start(), 20)
    assert isinstance(rejected, FrameRejected)
    assert rejected.code == "frame_too_large"


def test_the_size_limit_counts_utf8_bytes_not_characters():
    text = '{"type":"cancel","stream_id":"a","x":"' + "é" * 20 + '"}'
    assert len(text) < 70 < len(text.encode())
    rejected = decode_client_frame(text, 70)
    assert isinstance(rejected, FrameRejected)
    assert rejected.code == "frame_too_large"


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_any_bytes_decode_to_a_frame_or_a_typed_rejection(data):
    result = decode_client_frame(data, MAX)
    assert isinstance(result, ClientFrame | FrameRejected)
    if isinstance(result, FrameRejected):
        assert result.code in ERROR_CODES


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_any_text_decodes_to_a_frame_or_a_typed_rejection(text):
    result = decode_client_frame(text, MAX)
    assert isinstance(result, ClientFrame | FrameRejected)
    if isinstance(result, FrameRejected):
        assert result.code in ERROR_CODES


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["type", "stream_id", "request", "options", "message_id", "last_seq"]),
        json_values,
        max_size=5,
    )
)
@settings(max_examples=300)
def test_any_json_object_decodes_to_a_frame_or_a_typed_rejection(obj):
    result = decode_client_frame(orjson.dumps(obj), MAX)
    assert isinstance(result, ClientFrame | FrameRejected)
    if isinstance(result, FrameRejected):
        assert result.code in ERROR_CODES


@given(st.text(), st.text())
@settings(max_examples=300)
def test_encoded_frames_always_encode_as_utf8(text, name):
    for frame in (
        DeltaText("s", 1, text),
        ToolCallEndFrame("s", 2, "c", name, {text: [text, {"k": text}]}),
        ErrorFrame(code="internal", message=text, retryable=True),
        Telemetry("s", 1, 1.0),
    ):
        data = encode_frame(frame)
        data.decode("utf-8")  # strict: raises on surrogates
        assert decode_server_frame(data) is not None


def test_a_lone_surrogate_becomes_a_replacement_character_and_pairs_survive():
    data = encode_frame(DeltaText("s", 1, "a\ud83db\ud83d\ude00"))
    assert orjson.loads(data)["text"] == "a\ufffdb\U0001f600"


def test_encoding_a_normal_frame_omits_absent_optional_fields():
    data = encode_frame(ErrorFrame(code="bad_frame", message="m", retryable=False))
    assert orjson.loads(data) == {
        "type": "error",
        "code": "bad_frame",
        "message": "m",
        "retryable": False,
    }


def test_server_frames_round_trip_through_the_decoder():
    frame = DeltaText("s", 3, "héllo")
    assert decode_server_frame(encode_frame(frame)) == frame
    with pytest.raises(msgspec.DecodeError):
        decode_server_frame(b"{")


def deep(n, leaf):
    value = leaf
    for _ in range(n):
        value = [value]
    return value


def test_a_frame_nested_too_deeply_raises_only_frame_encode_error():
    with pytest.raises(FrameEncodeError):
        encode_frame(ToolCallEndFrame("s", 2, "c", "f", deep(5000, 1)))


def test_deep_nesting_with_a_lone_surrogate_is_scrubbed_without_recursion():
    data = encode_frame(ToolCallEndFrame("s", 2, "c", "f", deep(600, "\ud800")))
    assert data.decode("utf-8").count("\ufffd") == 1
