"""Buffer: each mode delivers at its boundaries, within its caps, and loses nothing."""

from __future__ import annotations

import itertools

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core.buffering import DEFAULT_MAX_LATENCY_MS, MODES, Buffer


def feed(mode, pieces, **options):
    """Push every piece at t=0 (no cap fires); return the non-empty outputs and the flush."""
    buffer = Buffer(mode, **options)
    outputs = [out for piece in pieces if (out := buffer.push(piece, 0.0))]
    return outputs, buffer.flush()


# --- immediate and debounce ---------------------------------------------------------------


def test_immediate_delivers_every_delta_as_it_is():
    buffer = Buffer()
    piece = "Hel"
    assert buffer.push(piece, 0.0) is piece
    assert buffer.deadline() is None
    assert buffer.poll(9.0) == ""
    assert buffer.flush() == ""


def test_debounce_sends_the_first_text_at_once_then_at_most_one_frame_per_interval():
    buffer = Buffer("debounce", debounce_ms=100)
    assert buffer.push("a", 1.0) == "a"
    assert buffer.push("b", 1.02) == ""
    assert buffer.push("c", 1.05) == ""
    assert buffer.deadline() == pytest.approx(1.1)
    assert buffer.poll(1.09) == ""
    assert buffer.poll(1.1) == "bc"
    assert buffer.deadline() is None
    assert buffer.push("d", 1.15) == ""
    assert buffer.push("e", 1.21) == "de"  # a push past the deadline delivers without a poll


def test_debounce_does_not_spend_its_first_frame_on_an_empty_push():
    buffer = Buffer("debounce", debounce_ms=100)
    assert buffer.push("", 0.0) == ""
    assert buffer.push("x", 0.01) == "x"


def test_debounce_flushes_what_is_held_at_the_end():
    buffer = Buffer("debounce", debounce_ms=100)
    buffer.push("a", 0.0)
    buffer.push("b", 0.01)
    assert buffer.flush() == "b"
    assert buffer.deadline() is None


# --- word ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "outputs", "flushed"),
    [
        (["Hello wor", "ld again"], ["Hello ", "world "], "again"),
        (["one  ", "two\n", "\nthree"], ["one  ", "two\n", "\n"], "three"),
        # CJK has no spaces: every ideograph, kana and CJK punctuation ends a word
        (["\u4f60\u597d", "\u4e16\u754c\u3002"], ["\u4f60\u597d", "\u4e16\u754c\u3002"], ""),
        # a combining mark after a space belongs to the space: no boundary before it
        (["a \u0301b c"], ["a \u0301b "], "c"),
        (["http://example.com/a/very/long/path"], [], "http://example.com/a/very/long/path"),
    ],
)
def test_word_mode_delivers_up_to_the_last_word_boundary(pieces, outputs, flushed):
    assert feed("word", pieces) == (outputs, flushed)


def test_word_mode_delivers_a_long_word_at_the_latency_cap():
    buffer = Buffer("word", max_latency_ms=500)
    assert buffer.push("supercali", 0.0) == ""
    assert buffer.push("fragilistic", 0.3) == ""
    assert buffer.deadline() == 0.5
    assert buffer.poll(0.5) == "supercalifragilistic"


# --- sentence -----------------------------------------------------------------------------

SENTENCES = [
    # (text, sentences as delivered when fed one code point at a time, then the flush)
    ("Hello world. How are you? Fine", ["Hello world. ", "How are you? "], "Fine"),
    ("Pi is 3.14 today. Next", ["Pi is 3.14 today. "], "Next"),
    ("It costs $3. Then we go", ["It costs $3. "], "Then we go"),
    ("Wait... What now? Ok", ["Wait... ", "What now? "], "Ok"),
    ("Wait... what now? Ok", ["Wait... what now? "], "Ok"),
    ("Really?! Yes. No", ["Really?! ", "Yes. "], "No"),
    ("Use e.g. the cat. Then", ["Use e.g. the cat. "], "Then"),
    ("Dr. Smith left. The U.S. Army came. Go", ["Dr. Smith left. ", "The U.S. Army came. "], "Go"),
    ('He said "hi." Then left', ['He said "hi." '], "Then left"),
    ("This is **done.** Next", ["This is **done.** "], "Next"),
    ("Steps:\n1. Mix it.\n2. Bake", ["Steps:\n", "1. Mix it.\n"], "2. Bake"),
    ("# Title\n\nBody text", ["# Title\n", "\n"], "Body text"),
    (
        "\u4f60\u597d\u3002\u6211\u5f88\u597d\uff01\u8c22\u8c22",
        ["\u4f60\u597d\u3002", "\u6211\u5f88\u597d\uff01"],
        "\u8c22\u8c22",
    ),
    (
        "\u300c\u662f\u7684\u3002\u300d\u4ed6\u8bf4",
        ["\u300c\u662f\u7684\u3002\u300d"],
        "\u4ed6\u8bf4",
    ),
    (
        "\u0928\u092e\u0938\u094d\u0924\u0947\u0964 \u0920\u0940\u0915",
        ["\u0928\u092e\u0938\u094d\u0924\u0947\u0964 "],
        "\u0920\u0940\u0915",
    ),
    ("Line one\r\nLine two", ["Line one\r\n"], "Line two"),
    ("The end.", [], "The end."),
]


@pytest.mark.parametrize(("text", "sentences", "rest"), SENTENCES)
def test_sentence_mode_delivers_complete_sentences_fed_one_code_point_at_a_time(
    text, sentences, rest
):
    assert feed("sentence", list(text)) == (sentences, rest)


@pytest.mark.parametrize(("text", "sentences", "rest"), SENTENCES)
def test_sentence_mode_delivers_the_same_sentences_fed_whole(text, sentences, rest):
    outputs, flushed = feed("sentence", [text])
    assert ("".join(outputs), flushed) == ("".join(sentences), rest)


def test_sentence_mode_cap_delivers_a_long_sentence_up_to_its_last_word():
    buffer = Buffer("sentence", max_latency_ms=1000)
    assert buffer.push("A sentence that ", 0.0) == ""
    assert buffer.push("goes on and o", 0.6) == ""
    assert buffer.deadline() == 1.0
    assert buffer.poll(0.99) == ""
    assert buffer.poll(1.0) == "A sentence that goes on and "
    assert buffer.held == "o"
    assert buffer.deadline() == 1.6  # the partial word arrived at 0.6


def test_sentence_mode_cap_delivers_everything_when_the_overdue_text_has_no_later_boundary():
    buffer = Buffer("sentence", max_latency_ms=1000)
    buffer.push("Some words and a partial wo", 0.0)
    assert buffer.poll(1.0) == "Some words and a partial wo"
    assert buffer.deadline() is None


def test_sentence_mode_push_applies_the_cap_when_the_timer_was_late():
    buffer = Buffer("sentence", max_latency_ms=1000)
    buffer.push("Slow start", 0.0)
    assert buffer.push(" and more", 2.5) == "Slow start and "


def test_sentence_mode_size_cap_delivers_at_a_word_boundary():
    buffer = Buffer("sentence", max_held_chars=10)
    assert buffer.push("one two three fo", 0.0) == "one two three "
    assert buffer.held == "fo"


# --- paragraph ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "paragraphs", "rest"),
    [
        ("First para.\n\nSecond para.\n\nThird", ["First para.\n\n", "Second para.\n\n"], "Third"),
        ("Windows\r\n\r\nstyle\r\n\r\nend", ["Windows\r\n\r\n", "style\r\n\r\n"], "end"),
        ("A line\nanother line\n  \nNext", ["A line\nanother line\n  \n"], "Next"),
        ("One\u2029Two", ["One\u2029"], "Two"),
        ("Single\nnewlines\nonly", [], "Single\nnewlines\nonly"),
    ],
)
def test_paragraph_mode_delivers_up_to_a_blank_line(text, paragraphs, rest):
    assert feed("paragraph", list(text)) == (paragraphs, rest)
    outputs, flushed = feed("paragraph", [text])
    assert ("".join(outputs), flushed) == ("".join(paragraphs), rest)


def test_paragraph_mode_cap_prefers_a_sentence_then_a_word_boundary():
    buffer = Buffer("paragraph", max_latency_ms=1000)
    buffer.push("One. Tw", 0.0)
    buffer.push("o. Three fo", 0.5)
    assert buffer.poll(1.0) == "One. Two. "
    assert buffer.deadline() == 1.5
    buffer = Buffer("paragraph", max_latency_ms=1000)
    buffer.push("One two three fo", 0.0)
    buffer.push("ur five", 0.5)
    assert buffer.poll(1.0) == "One two three four "
    assert buffer.held == "five"


# --- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "options", "match"),
    [
        ("fast", {}, "mode"),
        ("debounce", {"debounce_ms": -1}, "debounce_ms"),
        ("sentence", {"max_latency_ms": 0}, "max_latency_ms"),
        ("word", {"max_held_chars": 0}, "max_held_chars"),
    ],
)
def test_buffer_rejects_bad_options(mode, options, match):
    with pytest.raises(ValueError, match=match):
        Buffer(mode, **options)


def test_every_holding_mode_has_a_default_latency_cap():
    assert {m for m in MODES if m not in ("immediate", "debounce")} == set(DEFAULT_MAX_LATENCY_MS)


# --- properties ---------------------------------------------------------------------------

TOKENS = [
    "Hello", " world", ".", " ", "  ", "How", " are", " you", "?", "!", "\u2026", "...", "3",
    ".14", " e.g.", " the", " Dr.", '"', ")", "**", "\n", "\n\n", "\r\n", "\r\n\r\n", "\u2029",
    "\u4f60\u597d", "\u3002", "\uff01", "\u300d", "1.", " a", "\u0301", "\t", "x" * 30,
]  # fmt: skip
_piece = st.one_of(st.lists(st.sampled_from(TOKENS), max_size=4).map("".join), st.text())
_op = st.one_of(
    st.tuples(st.just("push"), _piece, st.integers(0, 400)),
    st.tuples(st.just("poll"), st.just(""), st.integers(0, 400)),
    st.tuples(st.just("deadline"), st.just(""), st.just(0)),
)

CLOSERS = (
    "\"'\u201d\u2019\u00bb\u203a)\\]}*_"
    "\u300d\u300f\u3009\u300b\u3011\u3015\u3017\u3019\u301b\uff02\uff07\uff09"
)
LATIN_STOP = regex.compile(
    rf"[.!?\u2026\u203c\u2047-\u2049\u0964\u0965\u061f\u06d4\u0589\u1362][{CLOSERS}]*\s+\Z"
)
CJK_STOP = regex.compile(
    rf"[\u3002\uff01\uff1f\uff61][\u3002\uff01\uff1f\uff61!?]*[{CLOSERS}]*\s*\Z"
)
LINE_END = regex.compile(r"\n\s*\Z")
WORD_END = regex.compile(r"[\s\p{Ideographic}\u3000-\u30ff\u31f0-\u31ff\uff01-\uff60]\Z")
PARAGRAPH_END = regex.compile(r"(?:\n[^\S\n]*\n|\u2029)\s*\Z")


def ends_a_unit(mode, delivered, whole):
    if mode == "word":
        return WORD_END.search(delivered) is not None
    if mode == "paragraph":
        return PARAGRAPH_END.search(delivered) is not None
    if CJK_STOP.search(delivered) or LINE_END.search(delivered):
        return True
    if LATIN_STOP.search(delivered) is None:
        return False
    # after a Latin-style terminator the next word must not start with a lowercase letter
    after = whole[len(delivered) :].lstrip()
    return not (after and regex.match(r"\p{Ll}", after[0]))


def drive(mode, ops, **options):
    """Run ops against a buffer, checking every invariant after every call."""
    buffer = Buffer(mode, **options)
    cap = buffer._cap
    pushed, arrivals, delivered, emissions = "", [], "", []
    now = 0.0
    whole = "".join(text for kind, text, _ in ops if kind == "push")
    for kind, text, step_ms in ops:
        if kind == "deadline":
            due = buffer.deadline()
            if due is None:
                continue
            now = max(now, due)
        else:
            now += step_ms / 1000
        before = arrivals[len(delivered) :] + [now] * len(text)
        forced = any(a + cap <= now for a in before) or len(before) > buffer._max_held
        if kind == "push":
            out = buffer.push(text, now)
            pushed += text
            arrivals += [now] * len(text)
        else:
            out = buffer.poll(now)
        delivered += out
        if out:
            emissions.append(now)
            if mode in ("word", "sentence", "paragraph") and not forced:
                assert ends_a_unit(mode, delivered, whole), (mode, delivered)
        assert buffer.held == pushed[len(delivered) :]
        assert (buffer.deadline() is None) == (buffer.held == "")
        if mode in ("word", "sentence", "paragraph"):
            # the latency cap: nothing held arrived max_latency_ms or more ago
            assert all(a + cap > now for a in arrivals[len(delivered) :])
            if buffer.held:
                assert buffer.deadline() == arrivals[len(delivered)] + cap
    if mode == "debounce":
        wait = buffer._wait
        assert all(b >= a + wait for a, b in itertools.pairwise(emissions))
    assert delivered + buffer.flush() == pushed
    assert buffer.held == ""
    assert buffer.deadline() is None


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=120, deadline=None)
@given(ops=st.lists(_op, max_size=25))
def test_every_mode_loses_nothing_and_keeps_its_promises(mode, ops):
    drive(mode, ops, debounce_ms=100, max_latency_ms=1000)


@pytest.mark.parametrize("mode", ["word", "sentence", "paragraph"])
@settings(max_examples=100, deadline=None)
@given(ops=st.lists(_op, max_size=25))
def test_holding_modes_keep_their_promises_under_a_small_size_cap(mode, ops):
    drive(mode, ops, max_latency_ms=300, max_held_chars=16)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=100, deadline=None)
@given(text=st.lists(st.sampled_from(TOKENS), max_size=30).map("".join), data=st.data())
def test_every_mode_delivers_the_same_text_for_any_split(mode, text, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    outputs, flushed = feed(mode, pieces)
    assert "".join(outputs) + flushed == text
