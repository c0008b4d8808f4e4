r"""Grapheme safety for streamed text: never deliver part of a user-perceived character.

Owns the holdback of an unfinished grapheme cluster (UAX #29, as the `regex` module's `\X`
segments text) at the end of the text streamed so far, so that a client that renders each
delta on its own (a DOM node per delta, a screen reader per chunk) never shows half of 👩‍💻,
a lone regional indicator instead of 🇫🇷, or a vowel sign on a dotted circle. Pure: no I/O,
no clock. Feed it text that `utf8.SurrogateJoiner` already made free of lone surrogates.

Why only the end: a cluster boundary between two code points depends only on the text up to
the second one (GB1-GB999 look left, never right), so once a code point is known every
boundary before it is final. Only the boundary at the very end of the text can still vanish,
when the next code point extends the last cluster. The guard therefore holds back at most
the last cluster, and only when the rule below says it is still *open*.

Rule (default). Let C be the last cluster of held + pushed text and c its last code point.
C is held back when it has at most `max_cluster` code points and one of these holds:

1. c is a ZWJ, Extend, SpacingMark or Prepend code point: the cluster is being built from
   marks, emoji modifiers, variation selectors, tags or a ZWJ, and more may follow (GB9,
   GB9a, GB9b, GB9c conjuncts after a virama, GB11 after a ZWJ);
2. c is a regional indicator and C holds only one: half a flag (GB12, GB13);
3. c is Extended_Pictographic: a skin tone, VS16, ZWJ or tag sequence may follow;
4. c is a keycap base `0-9 # *` (VS16 + U+20E3 may follow) or CR (LF may follow, GB3);
5. c is a consonant or independent vowel of an abugida (Indic_Syllabic_Category Consonant,
   Consonant_Dead, Vowel_Independent: Devanagari, Bengali, Tamil, Thai, Lao, Khmer, Myanmar,
   Tibetan, Sinhala, ...), whose vowels and marks are always separate code points that
   byte-level tokenizers routinely put in the next delta; or a conjoining Hangul jamo (GB6-8).

Not held, although UAX #29 lets any of them take a following combining mark (GB9): ASCII
letters, punctuation and spaces, and bases of Latin, Greek, Cyrillic, Arabic, Hebrew, CJK,
Hangul syllables, and complete flags. In the NFC text models produce such a mark almost never
follows; holding these would delay the last character of nearly every delta. So with the
default rule a cluster of the whole text is split only right after one of these code points
(e.g. `e` + U+0301 in NFD text, a pointed Arabic letter + haraka) or when it is longer than
`max_cluster`. `strict=True` removes the first exception: it holds C unless c is LF or a
Control code point (GB4: nothing joins them), for providers known to send decomposed text.

Cost. Memory: one cluster, at most `max_cluster` (32) code points, 128 bytes of UTF-8. A held
cluster waits for the next push (one inter-delta gap, typically 10-50 ms at 20-100 deltas/s)
or `flush`; the number of pushes and of non-empty outputs is unchanged, except that a push
made of one open cluster outputs "". Default rule: English prose is held only on deltas ending
in a digit, `#`, `*`, CR or an emoji, which is a small fraction of deltas; Indic and Thai text
is held on most deltas (one syllable per delta waits one gap), the price of never showing a
detached vowel sign. Strict: every delta not ending in LF waits with its last cluster, about
one character in four of English, and the time to first token grows by one gap when the
first delta is a single cluster. Time: a push ending in ASCII other than a keycap base or CR
costs one comparison (~100 ns); otherwise one property lookup, and `\X` over the last word
when holding.
"""

from __future__ import annotations

from typing import Final

import regex

MAX_CLUSTER: Final = 32
"""Longest cluster held back, in code points. Longer ones (stacked "zalgo" marks) pass as
they come. UAX #15's stream-safe format allows 30 marks in a row; the longest emoji ZWJ
sequences are 10 code points."""

JOINING: Final = regex.compile(r"[\p{gcb=Extend}\p{gcb=ZWJ}\p{gcb=SpacingMark}]")
"""A code point that joins the cluster before it whatever that is (GB9, GB9a)."""

_CLUSTER: Final = regex.compile(r"\X")
_RI: Final = regex.compile(r"\p{gcb=Regional_Indicator}")
_OPEN_DEFAULT: Final = regex.compile(
    r"[\p{gcb=Extend}\p{gcb=ZWJ}\p{gcb=SpacingMark}\p{gcb=Prepend}"
    r"\p{gcb=Regional_Indicator}\p{Extended_Pictographic}"
    r"\p{InSC=Consonant}\p{InSC=Consonant_Dead}\p{InSC=Vowel_Independent}"
    r"\p{gcb=L}\p{gcb=V}\p{gcb=T}]"
)
_OPEN_STRICT: Final = regex.compile(r"[^\n\p{gcb=Control}]")
_ASCII_OPEN_DEFAULT: Final = frozenset("0123456789#*\r")
_ASCII_OPEN_STRICT: Final = frozenset(map(chr, range(0x20, 0x7F))) | {"\r"}


def last_cluster_start(text: str) -> int:
    r"""Index where the last grapheme cluster of non-empty `text` starts.

    `text` must start on a cluster boundary. `\X` runs from the last space or LF that is
    certainly a boundary (after an ASCII code point other than CR, only a joining code point
    can continue a cluster; no rule looks further left), so the cost is the last word.
    """
    n = len(text)
    if n == 1:
        return 0
    before = text[-2]
    if before < "\x80" and before != "\r" and not JOINING.match(text, n - 1):
        return n - 1
    j = max(text.rfind(" ", 0, n - 1), text.rfind("\n", 0, n - 1))
    lo = j + 1 if j >= 0 and not JOINING.match(text, j + 1) else 0
    return n - len(_CLUSTER.findall(text, lo)[-1])


class GraphemeGuard:
    """Holds back the last grapheme cluster of a text stream while it may still grow.

    The concatenation of every `push` output and the final `flush` equals the concatenation
    of the pushed texts. Every output except the flush ends on a cluster boundary of the
    whole text, except where the module's rule declines to wait (see its docstring).
    """

    __slots__ = ("_ascii_open", "_held", "_max_cluster", "_open", "_strict")

    def __init__(self, *, strict: bool = False, max_cluster: int = MAX_CLUSTER) -> None:
        if max_cluster < 1:
            raise ValueError("max_cluster must be at least 1")
        self._strict = strict
        self._max_cluster = max_cluster
        self._held = ""
        self._open = _OPEN_STRICT if strict else _OPEN_DEFAULT
        self._ascii_open = _ASCII_OPEN_STRICT if strict else _ASCII_OPEN_DEFAULT

    @property
    def held(self) -> str:
        """The cluster held back, "" when none."""
        return self._held

    def push(self, text: str) -> str:
        """Add `text`; return what can be delivered now (possibly "")."""
        if self._held:
            text = self._held + text
            self._held = ""
        elif not text:
            return text
        last = text[-1]
        if last < "\x80":
            if last not in self._ascii_open:
                return text
        elif self._open.match(last) is None:
            return text
        start = last_cluster_start(text)
        if len(text) - start > self._max_cluster:
            return text
        if not self._strict and len(text) - start >= 2 and _RI.match(last) and _RI.match(text[-2]):
            return text  # a complete flag: a cluster holds at most two indicators
        self._held = text[start:]
        return text[:start]

    def flush(self) -> str:
        """End of text: return what is held; nothing can extend it any more."""
        held, self._held = self._held, ""
        return held
