"""The shared line buffer against its rules: BOM, tail, join, cap, and any split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wsgate.core.errors import UpstreamLineTooLong
from wsgate.core.lines import DEFAULT_MAX_LINE_BYTES, LineBuffer

BOM = b"\xef\xbb\xbf"


def feed(buffer: LineBuffer, chunk: bytes) -> list[bytes]:
    """What a decoder does with one chunk, splitting at LF only."""
    if not buffer.started:
        chunk = buffer.strip_bom(chunk)
    if not chunk:
        return []
    lines = chunk.split(b"\n")
    rest = lines.pop()
    return buffer.frame(lines, rest, len(chunk))


def feed_all(chunks: list[bytes], buffer: LineBuffer | None = None) -> list[bytes]:
    buffer = buffer or LineBuffer()
    out: list[bytes] = []
    for chunk in chunks:
        out += feed(buffer, chunk)
        if buffer.failure is not None:
            break  # as the decoders do: nothing more after the verdict
    return out


def test_the_default_cap_is_4_mib():
    assert DEFAULT_MAX_LINE_BYTES == 4 * 1024 * 1024
    assert LineBuffer().max_line_bytes == DEFAULT_MAX_LINE_BYTES


def test_complete_lines_pass_through_and_the_unterminated_rest_is_held():
    buffer = LineBuffer()
    assert feed(buffer, b"a\nb\nc") == [b"a", b"b"]
    assert buffer.rest() == b"c"
    assert buffer.rest() == b""


def test_the_held_tail_is_joined_onto_the_next_line():
    assert feed_all([b"ab", b"cd", b"e\nf\n"]) == [b"abcde", b"f"]


def test_a_character_split_across_chunks_is_whole_after_the_join():
    euro = "€".encode()
    (line,) = feed_all([b"x" + euro[:1], euro[1:2], euro[2:] + b"\n"])
    assert line.decode() == "x€"


def test_one_leading_bom_is_dropped_also_when_split_across_chunks():
    assert feed_all([BOM[:1], BOM[1:2], BOM[2:] + b"a\n"]) == [b"a"]
    assert feed_all([BOM + BOM + b"a\n"]) == [BOM + b"a"]
    assert feed_all([b"a\n" + BOM + b"b\n"]) == [b"a", BOM + b"b"]


def test_a_lone_bom_prefix_at_the_end_of_the_body_is_content():
    buffer = LineBuffer()
    assert feed(buffer, BOM[:2]) == []
    assert not buffer.started
    assert buffer.rest() == BOM[:2]


def test_a_body_that_does_not_start_with_a_bom_prefix_is_started_at_once():
    buffer = LineBuffer()
    assert feed(buffer, b"\xefa\n") == [b"\xefa"]
    assert buffer.started


def test_a_line_of_exactly_the_cap_is_accepted():
    buffer = LineBuffer(max_line_bytes=10)
    assert feed_all([b"x" * 10 + b"\n"], buffer) == [b"x" * 10]
    assert feed_all([b"x" * 4, b"x" * 6, b"\n"], buffer) == [b"x" * 10]
    assert buffer.failure is None


def test_a_complete_line_over_the_cap_fails_after_the_lines_before_it():
    buffer = LineBuffer(max_line_bytes=10)
    assert feed(buffer, b"ok\n" + b"x" * 11 + b"\nlater\n") == [b"ok"]
    assert isinstance(buffer.failure, UpstreamLineTooLong)
    assert buffer.failure.public_message == "upstream line exceeds 10 bytes"
    assert buffer.rest() == b""


def test_a_held_tail_over_the_cap_fails_and_keeps_the_chunks_complete_lines():
    buffer = LineBuffer(max_line_bytes=10)
    assert feed(buffer, b"x" * 6) == []
    assert feed(buffer, b"\nok\n" + b"y" * 11) == [b"x" * 6, b"ok"]
    assert isinstance(buffer.failure, UpstreamLineTooLong)
    assert buffer.rest() == b""


def test_a_tail_joined_over_the_cap_fails_when_its_line_ends():
    buffer = LineBuffer(max_line_bytes=10)
    assert feed(buffer, b"x" * 8) == []
    assert feed(buffer, b"x" * 3 + b"\n") == []
    assert buffer.failure is not None


def test_clear_drops_the_bom_head_and_the_tail():
    buffer = LineBuffer()
    feed(buffer, BOM[:1])
    buffer.clear()
    assert buffer.rest() == b""
    feed(buffer, b"abc")
    buffer.clear()
    assert feed(buffer, b"d\n") == [b"d"]


@given(
    body=st.lists(st.sampled_from([b"a", b"\n", BOM, b"\xe2\x82\xac", b"x" * 7])).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=200)),
    cap=st.integers(min_value=1, max_value=20),
)
def test_lines_and_the_cap_verdict_do_not_depend_on_the_split(body, cuts, cap):
    whole = LineBuffer(max_line_bytes=cap)
    expected = feed_all([body], whole)
    points = sorted({c for c in cuts if c < len(body)})
    chunks = [body[i:j] for i, j in zip([0, *points], [*points, len(body)], strict=True)]
    split = LineBuffer(max_line_bytes=cap)
    assert feed_all(chunks, split) == expected
    assert (split.failure is None) == (whole.failure is None)
    assert split.rest() == whole.rest()
