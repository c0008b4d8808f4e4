"""The SSE decoder against the WHATWG rules: tables, fixtures, a reference parser, any split."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgate.core.errors import UpstreamLineTooLong
from wsgate.core.sse import SSEDecoder, SSEEvent

FIXTURES = sorted((Path(__file__).parents[2] / "protocol" / "fixtures" / "upstream").rglob("*.sse"))
MIB = 1024 * 1024


def feed_all(chunks, decoder=None):
    decoder = decoder or SSEDecoder()
    events = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.eof())
    return events


def reference(stream: bytes) -> list[SSEEvent]:
    """A literal reading of the spec: decode everything, split lines, interpret one by one."""
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = re.split("\r\n|\r|\n", text)[:-1]  # the last piece has no line end: discarded
    events, data, event, last_id, retry = [], None, "", None, None
    for line in lines:
        if not line:
            if data is not None:
                events.append(SSEEvent("\n".join(data), event or "message", last_id, retry))
            data, event = None, ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data = [*(data or []), value]
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isascii() and value.isdigit() and len(value) <= 15:
            retry = int(value)
    return events


CASES = [
    ("lf", b"data: a\n\n", [SSEEvent("a")]),
    ("crlf", b"data: a\r\n\r\n", [SSEEvent("a")]),
    ("cr only", b"data: a\r\r", [SSEEvent("a")]),
    ("mixed line ends", b"data: a\rdata: b\r\ndata: c\n\n", [SSEEvent("a\nb\nc")]),
    ("bom stripped", b"\xef\xbb\xbfdata: a\n\n", [SSEEvent("a")]),
    (
        "second bom kept",
        b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n",
        [SSEEvent("b")],
    ),
    ("comment", b": keep-alive\ndata: a\n: more\n\n", [SSEEvent("a")]),
    ("multi-line data", b"data: a\ndata:\ndata:  b\n\n", [SSEEvent("a\n\n b")]),
    ("no space after colon", b"data:a\n\n", [SSEEvent("a")]),
    ("field without colon", b"data\n\n", [SSEEvent("")]),
    ("event name", b"event: delta\ndata: a\n\n", [SSEEvent("a", "delta")]),
    ("empty event name", b"event:\ndata: a\n\n", [SSEEvent("a")]),
    ("event name resets", b"event: x\ndata: a\n\ndata: b\n\n", [SSEEvent("a", "x"), SSEEvent("b")]),
    (
        "id persists",
        b"id: 7\ndata: a\n\ndata: b\n\n",
        [SSEEvent("a", id="7"), SSEEvent("b", id="7")],
    ),
    (
        "empty id",
        b"id: 7\ndata: a\n\nid\ndata: b\n\n",
        [SSEEvent("a", id="7"), SSEEvent("b", id="")],
    ),
    ("id with nul ignored", b"id: 1\n\nid: a\0b\ndata: a\n\n", [SSEEvent("a", id="1")]),
    ("retry", b"retry: 3000\ndata: a\n\n", [SSEEvent("a", retry=3000)]),
    ("retry persists", b"retry: 5\n\ndata: a\n\n", [SSEEvent("a", retry=5)]),
    ("retry not digits", b"retry: 3s\nretry: -1\nretry:\ndata: a\n\n", [SSEEvent("a")]),
    ("retry too long", b"retry: " + b"9" * 5000 + b"\ndata: a\n\n", [SSEEvent("a")]),
    ("unknown field", b"foo: bar\ndata: a\n\n", [SSEEvent("a")]),
    ("blank line without data", b"event: x\nid: 3\n\n\n\ndata: a\n\n", [SSEEvent("a", id="3")]),
    ("incomplete event discarded", b"data: a\n\ndata: b\n", [SSEEvent("a")]),
    ("unterminated line discarded", b"data: a\n\ndata: b\n\ndata", [SSEEvent("a"), SSEEvent("b")]),
    ("invalid utf-8 replaced", b"data: \xff\xe2\x82\n\n", [SSEEvent("\ufffd\ufffd")]),
    (
        "non-sse line breaks kept",
        b"data: a\x0bb\x0c\x1c\xe2\x80\xa8c\n\n",
        [SSEEvent("a\x0bb\x0c\x1c\u2028c")],
    ),
]


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decoder_follows_the_spec_whole_byte_by_byte_and_with_a_suffix(stream, expected):
    assert feed_all([stream]) == expected
    assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == expected
    assert feed_all([stream, b"data: partial\nid: x"]) == expected
    assert reference(stream) == expected


def test_decoder_joins_crlf_split_across_chunks():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [SSEEvent("a")]
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [SSEEvent("b")]


def test_decoder_joins_a_character_split_across_chunks():
    decoder = SSEDecoder()
    encoded = "data: \U0001f600\n\n".encode()
    assert decoder.feed(encoded[:8]) == []
    assert decoder.feed(encoded[8:]) == [SSEEvent("\U0001f600")]


def test_decoder_strips_a_bom_split_across_chunks_once():
    assert feed_all([b"\xef", b"\xbb", b"\xbf", b"data: a\n\n"]) == [SSEEvent("a")]
    assert feed_all([b"\xef\xbb", b"data: a\n\n"]) == []  # not a BOM: a broken field name


def test_decoder_exposes_last_event_id_and_retry():
    decoder = SSEDecoder()
    decoder.feed(b"id: 42\nretry: 1500\n\n")
    assert (decoder.last_event_id, decoder.retry) == ("42", 1500)


def test_decoder_eof_discards_pending_state():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: b") == []
    assert decoder.eof() == []
    assert decoder.feed(b"\n\n") == []


def test_decoder_accepts_a_1_mib_line_under_a_4_mib_cap():
    line = b"data: " + b"x" * MIB
    assert feed_all([line[:100], line[100:], b"\n\n"]) == [SSEEvent("x" * MIB)]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: " + b"x" * 100 + b"\n\n"],
        [b"data: ", b"x" * 60, b"x" * 60],
        [b"data: ", b"x" * 60, b"x" * 60 + b"\n"],
        [b"data: a\n\n" + b"y" * 101 + b"\ndata: b\n\n"],
        [b"data: a\n\ndata: " + b"z" * 95],
    ],
    ids=["one chunk", "growing tail", "tail then line end", "middle line", "tail of a chunk"],
)
def test_decoder_rejects_a_line_over_the_cap(chunks):
    decoder = SSEDecoder(max_line_bytes=100)
    events = feed_all(chunks, decoder)
    assert isinstance(decoder.failure, UpstreamLineTooLong)
    assert decoder.failure.public_message == "upstream line exceeds 100 bytes"
    assert all(e.data in {"a", "b"} for e in events)
    assert decoder.feed(b"data: later\n\n") == []


def test_decoder_keeps_the_events_completed_before_an_overlong_line():
    decoder = SSEDecoder(max_line_bytes=100)
    events = decoder.feed(b"data: a\n\n" + b"y" * 101 + b"\ndata: b\n\n")
    assert events == [SSEEvent("a")]
    assert decoder.failure is not None


def test_decoder_accepts_a_line_of_exactly_the_cap():
    line = b"data: " + b"x" * 94
    decoder = SSEDecoder(max_line_bytes=100)
    assert feed_all([line[:50], line[50:], b"\n\n"], decoder) == [SSEEvent("x" * 94)]


def test_decoder_reads_a_4_mib_line_in_1_kib_chunks_in_linear_time():
    line = b"data: " + b"x" * (4 * MIB - 6)
    chunks = [line[i : i + 1024] for i in range(0, len(line), 1024)]
    started = time.perf_counter()
    events = feed_all([*chunks, b"\n\n"])
    assert time.perf_counter() - started < 1.0
    assert len(events) == 1
    assert len(events[0].data) == 4 * MIB - 6


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_fixture_decodes_the_same_whole_byte_by_byte_and_with_trailing_data(path):
    stream = path.read_bytes()
    whole = feed_all([stream])
    assert whole
    assert whole == reference(stream)
    assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == whole
    assert feed_all([stream, b'data: {"partial":']) == whole


# --- any split gives the same events ----------------------------------------------------------

_value_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=12
)
_value_bytes = st.one_of(
    _value_text.map(str.encode),
    st.binary(max_size=6).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.integers(0, 10**6).map(lambda n: str(n).encode()),
)
_field_line = st.tuples(
    st.sampled_from([b"data", b"event", b"id", b"retry", b"foo", b"", b"dat"]),
    st.sampled_from([b":", b": ", b":  ", b""]),
    _value_bytes,
).map(b"".join)
_line = st.one_of(_field_line, st.just(b""), _value_text.map(lambda t: b":" + t.encode()))
_eol = st.sampled_from([b"\n", b"\r", b"\r\n"])
_stream = st.tuples(
    st.sampled_from([b"", b"\xef\xbb\xbf"]),
    st.lists(st.tuples(_line, _eol).map(b"".join), max_size=25),
    st.one_of(st.just(b""), _field_line),  # an unterminated last line
).map(lambda t: t[0] + b"".join(t[1]) + t[2])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=_stream, data=st.data())
def test_decoder_gives_the_same_events_for_any_split(stream, data):
    # Besides random cuts, aim at the hard places: between CR and LF, inside a character.
    tricky = [i + 1 for i, byte in enumerate(stream) if byte == 13 or byte >= 0xC0]
    cuts = data.draw(st.sets(st.integers(0, len(stream)), max_size=12))
    if tricky:
        cuts |= data.draw(st.sets(st.sampled_from(tricky), max_size=12))
    cuts = sorted(cuts)
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    expected = reference(stream)
    assert feed_all([stream]) == expected
    assert feed_all(chunks) == expected


@settings(max_examples=100, deadline=None)
@given(stream=_stream)
def test_decoder_gives_the_same_events_byte_by_byte(stream):
    assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == reference(stream)
