"""GraphemeGuard: no delta ends inside a cluster the rule covers, and nothing is lost."""

from __future__ import annotations

import itertools

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.core.graphemes import MAX_CLUSTER, GraphemeGuard, last_cluster_start

ZWJ, VS16, KEYCAP, ACUTE = "\u200d", "\ufe0f", "\u20e3", "\u0301"
WOMAN, LAPTOP, TONE = "\U0001f469", "\U0001f4bb", "\U0001f3fd"
F, R = "\U0001f1eb", "\U0001f1f7"  # regional indicators: F + R is the flag of France


def run(pieces, **options):
    guard = GraphemeGuard(**options)
    outputs = [guard.push(piece) for piece in pieces]
    outputs.append(guard.flush())
    return outputs


def clusters(text):
    return regex.findall(r"\X", text)


def boundaries(text):
    return set(itertools.accumulate(len(c) for c in clusters(text)))


def cluster_around(text, p):
    """(start, cluster) of the cluster of `text` holding code point p-1."""
    start = 0
    for cluster in clusters(text):
        if start < p < start + len(cluster) or start + len(cluster) == p:
            return start, cluster
        start += len(cluster)
    raise AssertionError(p)


def output_ends(outputs):
    """Where each output but the flush ends, in the whole text, where something followed."""
    ends = list(itertools.accumulate(len(o) for o in outputs))
    total = ends[-1]
    return [e for e in ends[:-1] if 0 < e < total]


# --- the rule, case by case ---------------------------------------------------------------


def test_guard_passes_ascii_unchanged_without_copying():
    text = "Hello, world"
    assert GraphemeGuard().push(text) is text


@pytest.mark.parametrize(
    ("pieces", "outputs"),
    [
        # a ZWJ sequence split after the woman and after the ZWJ
        (["Hi " + WOMAN, ZWJ, LAPTOP + " ok"], ["Hi ", "", WOMAN + ZWJ + LAPTOP + " ok", ""]),
        # a flag split between its regional indicators, then a second flag split the same way
        ([F, R + F, R + "!"], ["", F + R, F + R + "!", ""]),
        # a skin tone after its base
        (["ok \U0001f44d", TONE + " yes"], ["ok ", "\U0001f44d" + TONE + " yes", ""]),
        # a keycap: digit, VS16, U+20E3 in three deltas
        (["Step 1", VS16, KEYCAP + " go"], ["Step ", "", "1" + VS16 + KEYCAP + " go", ""]),
        # a Devanagari conjunct built across deltas: ka, virama, ssa, vowel sign i
        (["\u0915", "\u094d", "\u0937", "\u093f "], ["", "", "", "\u0915\u094d\u0937\u093f ", ""]),
        # Thai consonant, vowel above, tone mark
        (["\u0e17", "\u0e35", "\u0e48"], ["", "", "", "\u0e17\u0e35\u0e48"]),
        # CR waits for LF
        (["line\r", "\nnext"], ["line", "\r\nnext", ""]),
        # an emoji at the very end waits for the flush
        (["done " + WOMAN], ["done ", WOMAN]),
    ],
)
def test_guard_holds_an_open_cluster_until_it_completes(pieces, outputs):
    assert run(pieces) == outputs


def test_guard_does_not_hold_a_complete_flag():
    assert run(["go " + F + R]) == ["go " + F + R, ""]


def test_guard_counts_regional_indicators_not_code_points_in_a_prepended_cluster():
    prepend = "\u0600"  # Arabic number sign: joins what follows (GB9b)
    assert run([prepend + F, R]) == ["", prepend + F + R, ""]


def test_guard_does_not_wait_for_a_mark_after_a_latin_letter_by_default():
    assert run(["cafe", ACUTE + " noir"]) == ["cafe", ACUTE + " noir", ""]


def test_guard_strict_waits_for_a_mark_after_any_base():
    assert run(["cafe", ACUTE + " noir"], strict=True) == ["caf", "e" + ACUTE + " noi", "r"]


@pytest.mark.parametrize("text", ["line\n", "tab\t", "x\x00"])
def test_guard_strict_releases_text_ending_in_lf_or_a_control(text):
    assert run([text], strict=True) == [text, ""]


def test_guard_holds_a_mark_that_may_be_followed_by_another():
    assert run(["e" + ACUTE, "\u0323 x"]) == ["", "e" + ACUTE + "\u0323 x", ""]


def test_guard_releases_a_cluster_longer_than_its_cap():
    zalgo = "a" + ACUTE * (MAX_CLUSTER + 5)
    # past the cap the cluster goes out as it comes; a further mark may wait for the next one
    assert run([zalgo[:-1], zalgo[-1]]) == [zalgo[:-1], "", ACUTE]
    assert run(["x" + WOMAN + ACUTE * 3], max_cluster=3) == ["x" + WOMAN + ACUTE * 3, ""]


def test_guard_keeps_holding_through_empty_pushes_and_flushes_once():
    guard = GraphemeGuard()
    assert guard.push("") == ""
    assert guard.push(WOMAN) == ""
    assert guard.push("") == ""
    assert guard.held == WOMAN
    assert guard.flush() == WOMAN
    assert guard.flush() == ""


def test_guard_rejects_a_cap_below_one():
    with pytest.raises(ValueError, match="max_cluster"):
        GraphemeGuard(max_cluster=0)


@pytest.mark.parametrize(
    "text",
    ["a", "ab", "a b", "x " + WOMAN + ZWJ + LAPTOP, "\u0915\u094d\u0937", "a \u0301", "\r\n"],
)
def test_last_cluster_start_agrees_with_the_full_segmentation(text):
    assert last_cluster_start(text) == len(text) - len(clusters(text)[-1])


# --- properties ---------------------------------------------------------------------------

TRICKY = [
    ZWJ, VS16, KEYCAP, ACUTE, "\u0323", WOMAN, LAPTOP, TONE, "\U0001f44d", "\u2764", F, R,
    "\U0001f1e9", "\U0001f3f4", "\U000e0067", "\U000e007f", "\u0915", "\u094d", "\u0937",
    "\u093f", "\u0902", "\u0e17", "\u0e48", "\u1100", "\u1161", "\u11a8", "\uac00", "\u0600",
    "\r", "\n", " ", "a", "1", "#", "e", "\u00e9", "\u65e5", "\t",
]  # fmt: skip
_text = st.text(alphabet=st.one_of(st.sampled_from(TRICKY), st.characters(codec="utf-8")))


@st.composite
def split_text(draw, text=_text):
    whole = draw(text)
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), max_size=12)))
    return whole, [whole[a:b] for a, b in itertools.pairwise([0, *cuts, len(whole)])]


def default_rule_holds(partial):
    """The module's rule, restated: does the guard wait after this partial cluster?"""
    last = partial[-1]
    if regex.match(r"\p{gcb=Regional_Indicator}", last):
        return len(regex.findall(r"\p{gcb=Regional_Indicator}", partial)) == 1
    return bool(
        regex.match(
            r"[0-9#*\r\p{gcb=Extend}\p{gcb=ZWJ}\p{gcb=SpacingMark}\p{gcb=Prepend}"
            r"\p{Extended_Pictographic}\p{InSC=Consonant}\p{InSC=Consonant_Dead}"
            r"\p{InSC=Vowel_Independent}\p{gcb=L}\p{gcb=V}\p{gcb=T}]",
            last,
        )
    )


@settings(max_examples=200, deadline=None)
@given(case=split_text(), strict=st.booleans(), max_cluster=st.sampled_from([2, MAX_CLUSTER]))
def test_guard_output_is_the_input_for_any_split(case, strict, max_cluster):
    whole, pieces = case
    guard = GraphemeGuard(strict=strict, max_cluster=max_cluster)
    outputs = []
    for piece in pieces:
        outputs.append(guard.push(piece))
        assert len(guard.held) <= max_cluster
    outputs.append(guard.flush())
    assert "".join(outputs) == whole


@settings(max_examples=200, deadline=None)
@given(case=split_text())
def test_strict_guard_never_ends_an_output_inside_a_cluster_of_the_whole_text(case):
    whole, pieces = case
    cuts = boundaries(whole)
    for end in output_ends(run(pieces, strict=True)):
        _, cluster = cluster_around(whole, end)
        assert end in cuts or len(cluster) > MAX_CLUSTER


@settings(max_examples=200, deadline=None)
@given(case=split_text())
def test_default_guard_splits_a_cluster_only_where_its_rule_declines_to_wait(case):
    whole, pieces = case
    cuts = boundaries(whole)
    for end in output_ends(run(pieces)):
        if end in cuts:
            continue
        start, cluster = cluster_around(whole, end)
        assert len(cluster) > MAX_CLUSTER or not default_rule_holds(whole[start:end])


# Whole clusters and words the default rule covers completely: emoji sequences, flags,
# keycaps, tag flags, Indic conjuncts, Thai, conjoining jamo, CRLF, precomposed letters.
COVERED = [
    "hello", " ", "42", ". ", "\r\n", "\u00e9t\u00e9", "\u65e5\u672c", "\ud55c",
    WOMAN + ZWJ + LAPTOP, F + R, "\U0001f1e9\U0001f1ea", "\U0001f44d" + TONE,
    "\u2764" + VS16 + ZWJ + "\U0001f525", "1" + VS16 + KEYCAP, "#" + VS16 + KEYCAP,
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "\u0915\u094d\u0937\u093f", "\u0939\u093f\u0928\u094d\u0926\u0940", "\u0905\u0902",
    "\u0e17\u0e35\u0e48", "\u1112\u1161\u11ab", "\u0600" + "1",
    ZWJ.join(["\U0001f468", WOMAN, "\U0001f467", "\U0001f466"]),
]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(case=split_text(st.lists(st.sampled_from(COVERED)).map("".join)))
def test_default_guard_never_splits_covered_clusters_at_any_offset(case):
    whole, pieces = case
    cuts = boundaries(whole)
    assert all(end in cuts for end in output_ends(run(pieces)))


def test_default_guard_never_splits_covered_clusters_fed_one_code_point_at_a_time():
    whole = "".join(COVERED)
    outputs = run(list(whole))
    assert "".join(outputs) == whole
    assert set(output_ends(outputs)) <= boundaries(whole)
