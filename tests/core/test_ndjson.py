"""The NDJSON decoder against its rules: tables, fixtures, a reference reading, any split."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgate.core.errors import UpstreamLineTooLong
from wsgate.core.ndjson import DEFAULT_MAX_LINE_BYTES, NDJSONDecoder

FIXTURES = sorted(
    (Path(__file__).parents[2] / "protocol" / "fixtures" / "upstream").rglob("*.ndjson")
)
MIB = 1024 * 1024


def feed_all(chunks, decoder=None):
    decoder = decoder or NDJSONDecoder()
    lines = []
    for chunk in chunks:
        lines.extend(decoder.feed(chunk))
    lines.extend(decoder.eof())
    return lines


def reference(stream: bytes) -> list[str]:
    """A literal reading of the rules: drop one BOM, split at LF, drop CR of CRLF and blanks."""
    lines = []
    for raw in stream.removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        line = raw.removesuffix(b"\r")
        if line.strip(b" \t\r"):
            lines.append(line.decode("utf-8", "replace"))
    return lines


CASES = [
    ("lf", b'{"a":1}\n{"b":2}\n', ['{"a":1}', '{"b":2}']),
    ("crlf", b'{"a":1}\r\n{"b":2}\r\n', ['{"a":1}', '{"b":2}']),
    ("mixed line ends", b"1\n2\r\n3\n", ["1", "2", "3"]),
    ("lone cr is not a line end", b'{"a":\r1}\n', ['{"a":\r1}']),
    ("cr before crlf kept", b"1\r\r\n", ["1\r"]),
    ("no final newline", b'{"a":1}\n{"b":2}', ['{"a":1}', '{"b":2}']),
    ("truncated last line returned", b'{"a":1}\n{"b":', ['{"a":1}', '{"b":']),
    ("blank lines skipped", b"\n\n1\n\r\n \t \n\r\n2\n\n", ["1", "2"]),
    ("whitespace-only last line skipped", b"1\n  \r", ["1"]),
    ("surrounding whitespace kept", b"  1 \t\n", ["  1 \t"]),
    ("other whitespace is content", b"\x0b\x0c\n", ["\x0b\x0c"]),
    ("bom stripped", b'\xef\xbb\xbf{"a":1}\n', ['{"a":1}']),
    ("second bom kept", b"\xef\xbb\xbf\xef\xbb\xbf1\n", ["\ufeff1"]),
    ("bom after a line kept", b"1\n\xef\xbb\xbf2\n", ["1", "\ufeff2"]),
    ("lone bom", b"\xef\xbb\xbf", []),
    ("bom prefix alone is content", b"\xef\xbb", ["\ufffd"]),
    ("invalid utf-8 replaced", b'"\xff\xe2\x82"\n', ['"\ufffd\ufffd"']),
    ("unicode line separators are content", b'"a\xe2\x80\xa8b\x1c"\n', ['"a\u2028b\x1c"']),
    ("empty", b"", []),
]


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decoder_follows_its_rules_whole_byte_by_byte_and_with_a_suffix(stream, expected):
    assert feed_all([stream]) == expected
    assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == expected
    terminated = stream if stream.endswith(b"\n") or not expected else stream + b"\n"
    assert feed_all([terminated, b'{"partial":'])[: len(expected)] == expected
    assert reference(stream) == expected


def test_decoder_returns_lines_as_soon_as_their_line_feed_arrives():
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":') == []
    assert decoder.feed(b'1}\n{"b"') == ['{"a":1}']
    assert decoder.feed(b":2}\n") == ['{"b":2}']
    assert decoder.eof() == []


def test_decoder_joins_crlf_split_across_chunks():
    decoder = NDJSONDecoder()
    assert decoder.feed(b"1\r") == []
    assert decoder.feed(b"\n2\r") == ["1"]
    assert decoder.feed(b"\n") == ["2"]


def test_decoder_keeps_a_cr_at_eof_out_of_the_line():
    assert feed_all([b"1\r"]) == ["1"]


def test_decoder_joins_a_character_split_across_chunks():
    decoder = NDJSONDecoder()
    encoded = '"\U0001f600"\n'.encode()
    assert decoder.feed(encoded[:3]) == []
    assert decoder.feed(encoded[3:]) == ['"\U0001f600"']


def test_decoder_strips_a_bom_split_across_chunks_once():
    assert feed_all([b"\xef", b"\xbb", b"\xbf", b"1\n"]) == ["1"]
    assert feed_all([b"\xef\xbb", b"1\n"]) == ["\ufffd1"]  # not a BOM: content


def test_decoder_returns_the_unterminated_last_line_at_eof_once():
    decoder = NDJSONDecoder()
    assert decoder.feed(b"1\n2") == ["1"]
    assert decoder.eof() == ["2"]
    assert decoder.eof() == []


def test_default_cap_is_the_sse_cap():
    assert DEFAULT_MAX_LINE_BYTES == 4 * MIB
    assert NDJSONDecoder()._max == DEFAULT_MAX_LINE_BYTES


def test_decoder_accepts_a_1_mib_line_under_a_4_mib_cap():
    line = b"x" * MIB
    assert feed_all([line[:100], line[100:], b"\n"]) == ["x" * MIB]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"x" * 101 + b"\n"],
        [b"x" * 60, b"x" * 60],
        [b"x" * 60, b"x" * 60 + b"\n"],
        [b"a\n" + b"y" * 101 + b"\nb\n"],
        [b"a\n" + b"z" * 101],
        [b"a\n", b"z" * 101],
        [b"x" * 100 + b"\r\n"],  # the CR of a CRLF counts: the same verdict at any split
        [b"x" * 100 + b"\r", b"\n"],
    ],
    ids=[
        "one chunk",
        "growing tail",
        "tail then line end",
        "middle line",
        "tail of a chunk",
        "unterminated at eof",
        "crlf whole",
        "crlf split",
    ],
)
def test_decoder_rejects_a_line_over_the_cap(chunks):
    decoder = NDJSONDecoder(max_line_bytes=100)
    lines = feed_all(chunks, decoder)
    assert isinstance(decoder.failure, UpstreamLineTooLong)
    assert decoder.failure.public_message == "upstream line exceeds 100 bytes"
    assert all(line in {"a", "b"} for line in lines)
    assert decoder.feed(b"later\n") == []
    assert decoder.eof() == []


def test_decoder_keeps_the_lines_completed_before_an_overlong_line():
    decoder = NDJSONDecoder(max_line_bytes=100)
    assert decoder.feed(b"a\n" + b"y" * 101 + b"\nb\n") == ["a"]
    assert decoder.failure is not None


def test_decoder_keeps_the_lines_of_the_chunk_whose_tail_overflows():
    decoder = NDJSONDecoder(max_line_bytes=100)
    assert decoder.feed(b"x" * 50) == []
    assert decoder.feed(b"x" * 10 + b"\na\n" + b"z" * 101) == ["x" * 60, "a"]
    assert decoder.failure is not None


def test_decoder_accepts_a_line_of_exactly_the_cap():
    line = b"x" * 100
    decoder = NDJSONDecoder(max_line_bytes=100)
    assert feed_all([line[:50], line[50:], b"\n"], decoder) == ["x" * 100]
    assert decoder.failure is None
    assert feed_all([b"x" * 99 + b"\r\n"], NDJSONDecoder(max_line_bytes=100)) == ["x" * 99]


def test_decoder_reads_a_4_mib_line_in_1_kib_chunks_in_linear_time():
    line = b"x" * (4 * MIB)
    chunks = [line[i : i + 1024] for i in range(0, len(line), 1024)]
    started = time.perf_counter()
    lines = feed_all([*chunks, b"\n"])
    assert time.perf_counter() - started < 1.0
    assert len(lines) == 1
    assert len(lines[0]) == 4 * MIB


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_fixture_decodes_the_same_whole_byte_by_byte_and_with_trailing_data(path):
    stream = path.read_bytes()
    whole = feed_all([stream])
    assert whole
    assert whole == reference(stream)
    assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == whole
    if stream.endswith(b"\n"):
        assert feed_all([stream, b'{"partial":']) == [*whole, '{"partial":']


# --- any split gives the same lines -----------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=12
)
_content = st.one_of(
    _text.map(str.encode),
    st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")),  # lone CRs and broken UTF-8
    st.sampled_from([b"", b" ", b"\t \r", b'{"a":1}', b"\xef\xbb\xbf", b"\r"]),
)
_eol = st.sampled_from([b"\n", b"\r\n"])
_stream = st.tuples(
    st.sampled_from([b"", b"\xef\xbb\xbf", b"\xef\xbb"]),
    st.lists(st.tuples(_content, _eol).map(b"".join), max_size=25),
    _content,  # an unterminated last line (maybe empty)
).map(lambda t: t[0] + b"".join(t[1]) + t[2])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=_stream, data=st.data())
def test_decoder_gives_the_same_lines_for_any_split(stream, data):
    # Besides random cuts, aim at the hard places: between CR and LF, inside a character.
    tricky = [i + 1 for i, byte in enumerate(stream) if byte == 13 or byte >= 0xC0]
    cuts = data.draw(st.sets(st.integers(0, len(stream)), max_size=12))
    if tricky:
        cuts |= data.draw(st.sets(st.sampled_from(tricky), max_size=12))
    bounds = [0, *sorted(cuts), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    expected = reference(stream)
    assert feed_all([stream]) == expected
    assert feed_all(chunks) == expected


@settings(max_examples=100, deadline=None)
@given(stream=_stream)
def test_decoder_gives_the_same_lines_byte_by_byte(stream):
    assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == reference(stream)


@settings(max_examples=200, deadline=None)
@given(
    # No 0xEF bytes: a leading BOM would not count towards the cap.
    lines=st.lists(
        st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\xef", b"")),
        max_size=8,
    ),
    cap=st.integers(1, 24),
    data=st.data(),
)
def test_the_cap_verdict_and_the_lines_before_it_do_not_depend_on_the_split(lines, cap, data):
    stream = b"\n".join(lines)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
    whole, split = NDJSONDecoder(cap), NDJSONDecoder(cap)
    assert feed_all(chunks, split) == feed_all([stream], whole)
    assert (whole.failure is None) == (split.failure is None)
    over = next((i for i, line in enumerate(lines) if len(line) > cap), None)
    assert (whole.failure is None) == (over is None)
    if over is not None:
        assert feed_all([stream], NDJSONDecoder(cap)) == reference(b"\n".join(lines[:over]))
