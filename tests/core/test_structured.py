"""StructuredSplitter: delimiters at any split, nothing partial shown, sections parsed once."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core.errors import ProtocolError
from wsgate.core.structured import (
    DEFAULT_CLOSE,
    DEFAULT_OPEN,
    NOT_JSON,
    UNCLOSED,
    Section,
    SectionError,
    StructuredSplitter,
    Text,
)

OPEN, CLOSE = DEFAULT_OPEN, DEFAULT_CLOSE


def merged(pieces):
    """Join adjacent Text pieces: the form in which every split must agree."""
    out = []
    for piece in pieces:
        if isinstance(piece, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + piece.text)
        else:
            out.append(piece)
    return out


def run(chunks, **options):
    splitter = StructuredSplitter(**options)
    out = [piece for chunk in chunks for piece in splitter.push(chunk)]
    return out + splitter.finish()


CASES = [
    ("plain text", [Text("plain text")]),
    (f'a{OPEN}{{"x": 1}}{CLOSE}b', [Text("a"), Section('{"x": 1}', {"x": 1}), Text("b")]),
    (f"{OPEN}\n  [1, 2]\n{CLOSE}", [Section("\n  [1, 2]\n", [1, 2])]),
    (f"{OPEN}\n```json\n{{}}\n```\n{CLOSE}", [Section("\n```json\n{}\n```\n", {})]),
    (f"{OPEN}```\n3\n```{CLOSE}", [Section("```\n3\n```", 3)]),
    (f'{OPEN}{{"x": 1{CLOSE}.', [SectionError('{"x": 1', NOT_JSON), Text(".")]),
    (f"{OPEN}{CLOSE}", [SectionError("", NOT_JSON)]),
    (f"{OPEN}1{CLOSE}{OPEN}2{CLOSE}", [Section("1", 1), Section("2", 2)]),
    (f'x{OPEN}{{"a":', [Text("x"), SectionError('{"a":', UNCLOSED)]),
    (f"<{OPEN}1{CLOSE}", [Text("<"), Section("1", 1)]),
    ("<<<JSON>>", [Text("<<<JSON>>")]),
    (f'{OPEN}"{OPEN}"{CLOSE}', [Section(f'"{OPEN}"', OPEN)]),
    (f"{OPEN}1<<<END{CLOSE}", [SectionError("1<<<END", NOT_JSON)]),
    (f"{OPEN}1<{CLOSE}<", [SectionError("1<", NOT_JSON), Text("<")]),
    (CLOSE, [Text(CLOSE)]),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_splitter_table_whole_byte_by_byte_and_with_trailing_text(text, expected):
    assert merged(run([text])) == expected
    assert merged(run(list(text))) == expected
    last = expected[-1]
    if isinstance(last, SectionError) and last.reason == UNCLOSED:
        with_tail = [*expected[:-1], SectionError(last.raw + " tail", UNCLOSED)]
    else:
        with_tail = merged([*expected, Text(" tail")])
    assert merged(run([text, " tail"])) == with_tail


def test_a_delimiter_prefix_at_the_end_of_a_chunk_is_held_then_released_as_text():
    splitter = StructuredSplitter()
    assert splitter.push("hello <<<JS") == [Text("hello ")]
    assert splitter.push("") == []
    assert splitter.push("ON and") == [Text("<<<JSON and")]
    assert splitter.push(" <<") == [Text(" ")]
    assert splitter.finish() == [Text("<<")]
    assert splitter.finish() == []


def test_inside_a_section_nothing_is_returned_until_the_close_delimiter():
    splitter = StructuredSplitter()
    assert splitter.push(f'Result: {OPEN}{{"ok": ') == [Text("Result: ")]
    assert splitter.inside
    assert splitter.push("true}<<<EN") == []
    assert splitter.push("D>>> done") == [Section('{"ok": true}', {"ok": True}), Text(" done")]
    assert not splitter.inside


def test_custom_delimiters_may_be_equal():
    out = run(["a```x", "ml\n[1]\n``", "`b"], open_delim="```xml", close_delim="```")
    assert merged(out) == [Text("a"), Section("\n[1]\n", [1]), Text("b")]


def test_an_over_long_section_fails_as_soon_as_it_is_certain_and_the_rest_is_skipped():
    splitter = StructuredSplitter(max_section_chars=5)
    assert splitter.push(f"{OPEN}12345<<<EN") == []
    assert splitter.push("X") == [SectionError("12345", "section exceeds 5 characters")]
    assert splitter.push("more text <<<E") == []
    assert splitter.push(f"ND>>>after{OPEN}1") == [Text("after")]
    assert splitter.push(CLOSE) == [Section("1", 1)]
    assert splitter.finish() == []


def test_an_over_long_section_fails_the_same_when_it_arrives_in_one_piece():
    out = run([f"{OPEN}1234567{CLOSE}z"], max_section_chars=5)
    assert out == [SectionError("12345", "section exceeds 5 characters"), Text("z")]


def test_a_section_of_exactly_the_cap_is_parsed():
    assert run([f"{OPEN}12345<<<", "END>>>"], max_section_chars=5) == [Section("12345", 12345)]


def test_an_over_long_section_left_open_is_reported_once():
    assert run([f"{OPEN}1234567"], max_section_chars=5) == [
        SectionError("12345", "section exceeds 5 characters")
    ]


def test_final_json_streams_everything_and_adds_the_parsed_answer_at_the_end():
    splitter = StructuredSplitter(mode="final_json")
    assert splitter.push('{"a": ') == [Text('{"a": ')]
    assert splitter.push("[1]}\n") == [Text("[1]}\n")]
    assert splitter.finish() == [Section('{"a": [1]}\n', {"a": [1]})]


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('  ```JSON\r\n{"a": 1}\r\n```  ', {"a": 1}),
        ("```\n[]\n```", []),
        ("  42 ", 42),
    ],
)
def test_final_json_accepts_one_fence_and_surrounding_whitespace(answer, value):
    out = run([answer[:3], answer[3:]], mode="final_json")
    assert out[-1] == Section(answer, value)


@pytest.mark.parametrize(
    "answer",
    ["Sure! Here it is: {}", '{"a": 1', "", "```python\n{}\n```", f"{OPEN}1{CLOSE}"],
)
def test_final_json_adds_nothing_when_the_answer_is_not_json(answer):
    assert merged(run([answer], mode="final_json")) == ([Text(answer)] if answer else [])


def test_final_json_over_the_cap_is_streamed_but_not_parsed():
    assert run(["[1,", " 2]"], mode="final_json", max_section_chars=3) == [
        Text("[1,"),
        Text(" 2]"),
    ]


def test_push_after_finish_is_a_bug():
    splitter = StructuredSplitter()
    splitter.finish()
    with pytest.raises(ProtocolError):
        splitter.push("x")


@pytest.mark.parametrize(
    "options",
    [
        {"open_delim": ""},
        {"close_delim": ""},
        {"mode": "xml"},
        {"max_section_chars": -1},
    ],
)
def test_splitter_rejects_nonsense_options(options):
    with pytest.raises(ValueError):
        StructuredSplitter(**options)


def test_delimiters_are_found_at_every_pair_of_split_offsets():
    text = f'ab<{OPEN} {{"k": "<<<"}} {CLOSE}<<c{OPEN}[]{CLOSE}'
    expected = merged(run([text]))
    assert expected == [
        Text("ab<"),
        Section(' {"k": "<<<"} ', {"k": "<<<"}),
        Text("<<c"),
        Section("[]", []),
    ]
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert merged(run([text[:i], text[i:j], text[j:]])) == expected, (i, j)


# --- properties ---------------------------------------------------------------------------

NOISE = st.text(alphabet=st.sampled_from("<>JSONEDx \n{}\u00e9\U0001f600"), max_size=12)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=5,
)


@st.composite
def documents(draw):
    """Answer text with sections; returns (text, outside text, [(close end offset, piece)])."""
    parts, outside, sections = [], [], []
    for _ in range(draw(st.integers(0, 4))):
        noise = draw(NOISE.filter(lambda t: "<<<" not in t))
        parts.append(noise)
        outside.append(noise)
        if draw(st.booleans()):
            value = draw(VALUES)
            content = json.dumps(value, ensure_ascii=draw(st.booleans()))
            piece = Section(content, value)
        else:
            content = draw(NOISE.filter(lambda t: "<<<" not in t and not _parses(t)))
            piece = SectionError(content, NOT_JSON)
        parts.append(OPEN + content + CLOSE)
        sections.append((len("".join(parts)), piece))
    tail = draw(NOISE.filter(lambda t: "<<<" not in t))
    # A trailing lone "<" or "<<" is a delimiter prefix until the end: still plain text.
    parts.append(tail)
    outside.append(tail)
    return "".join(parts), "".join(outside), sections


def _parses(text):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def splits(text):
    return st.lists(st.integers(0, len(text)), max_size=8).map(
        lambda cuts: [
            text[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(text)], strict=True)
        ]
    )


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_split_gives_the_same_text_and_sections(data):
    text, outside, sections = data.draw(documents())
    chunks = data.draw(splits(text))
    out = run(chunks)
    assert "".join(piece.text for piece in out if isinstance(piece, Text)) == outside
    assert [piece for piece in out if not isinstance(piece, Text)] == [s for _, s in sections]
    assert merged(out) == merged(run([text]))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_no_delimiter_character_or_partial_section_is_ever_emitted_early(data):
    text, outside, sections = data.draw(documents())
    chunks = data.draw(splits(text))
    splitter = StructuredSplitter()
    shown, seen_sections, consumed = "", 0, 0
    for chunk in chunks:
        pieces = splitter.push(chunk)
        consumed += len(chunk)
        shown += "".join(piece.text for piece in pieces if isinstance(piece, Text))
        seen_sections += sum(not isinstance(piece, Text) for piece in pieces)
        # Text shown so far is always a prefix of the outside text: a delimiter (or a
        # prefix of one) never leaks into it, not even for one chunk.
        assert outside.startswith(shown)
        # A section appears exactly when its close delimiter has fully arrived.
        assert seen_sections == sum(end <= consumed for end, _ in sections)


@settings(max_examples=100, deadline=None)
@given(value=VALUES, data=st.data())
def test_final_json_any_split_streams_the_answer_and_parses_it_once(value, data):
    answer = json.dumps(value, indent=data.draw(st.sampled_from([None, 2])))
    out = run(data.draw(splits(answer)), mode="final_json")
    assert "".join(piece.text for piece in out if isinstance(piece, Text)) == answer
    assert [piece for piece in out if not isinstance(piece, Text)] == [Section(answer, value)]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), cap=st.integers(0, 24))
def test_any_split_gives_the_same_result_under_a_small_section_cap(data, cap):
    text, _, _ = data.draw(documents())
    chunks = data.draw(splits(text))
    assert merged(run(chunks, max_section_chars=cap)) == merged(run([text], max_section_chars=cap))


def test_an_unterminated_fence_over_a_large_answer_is_rejected_in_linear_time():
    answer = "```\n" + " " * 500_000 + "x``"
    assert run([answer], mode="final_json") == [Text(answer)]
