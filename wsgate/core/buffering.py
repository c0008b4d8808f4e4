r"""Buffering modes of a stream's text (`options.buffering`): when held text is delivered.

Owns the choice of *when* text deltas leave a stream: every delta (`immediate`), at word
boundaries (`word`), at most one frame per N ms (`debounce`), or only complete sentences or
paragraphs (`sentence`, `paragraph`: the accessible modes, for screen readers and
text-to-speech). It never reads the clock: time comes in as `now` (seconds, monotonic) and
the buffer answers with a `deadline` at which the shell calls `poll`. It does not number or
send frames; the stream does. Feed it text that `GraphemeGuard` made cluster-safe: the
buffer only splits held text after whitespace or a CJK character when the next code point
does not join it (a combining mark, a ZWJ), or at the end of what was pushed.

Rules:
1. Nothing is lost, duplicated or reordered: the outputs of `push` and `poll` followed by
   `flush` concatenate to the pushed text. Every mode delivers everything on `flush`.
2. `word`: a boundary follows a whitespace run, or a CJK ideograph, kana or CJK punctuation
   (these scripts put no spaces between words). Thai and other languages written without
   spaces wait for a space or the latency cap.
3. `sentence`: a sentence ends after a run of terminators (`. ! ? …`, `‼ ⁇ ⁈ ⁉`, the
   danda `। ॥` and the Arabic, Urdu, Armenian and Ethiopic stops U+061F U+06D4 U+0589
   U+1362), optional closers (quotes, brackets, `」 』`, fullwidth ones, Markdown `*` and
   `_`) and whitespace, confirmed by the next non-space code point, which must not be a
   lowercase letter (`e.g. the`, `... and then`); or after a CJK terminator (`。`, the
   fullwidth `!` `?` and the halfwidth stop: U+3002 U+FF01 U+FF1F U+FF61) and closers,
   confirmed by any next code point; or at a line break (headings, list items and code have
   no full stop). `3.14` never ends one (no whitespace after the dot). Known imperfections,
   English-centred: a dot after a single letter (`U.S.`, `J. Smith`, but also `plan B.`),
   after `Mr Mrs Ms Dr Prof Sr Jr St vs cf` or after a 1-3 digit number that starts the held
   text or a line (`1. Item`) ends no sentence; other abbreviations followed by a capital
   (`approx. Five`) end one too early; a sentence that ends exactly when the provider pauses
   waits for its next code point or the cap.
4. `paragraph`: a paragraph ends after a blank line (`\n\n`, `\r\n\r\n`, a line of spaces) or
   U+2029, with the whitespace that follows it.
5. Latency cap (`word`, `sentence`, `paragraph`): once the oldest held code point is
   `max_latency_ms` old (or more than `max_held_chars` are held), the buffer delivers at the
   last boundary of the next finer unit (paragraph -> sentence -> word) that covers every
   overdue code point, else everything held. After any `push` or `poll` at time `now`, no
   held code point arrived at or before `now - max_latency_ms`.
6. `debounce`: the first text goes out at once; later text is held until `debounce_ms` after
   the last delivery, then delivered whole by the first `push` or `poll` at or after that.
   Two deliveries other than `flush` are never closer than `debounce_ms`.

Worst-case holdback: `word`/`sentence`/`paragraph` hold at most `max_held_chars` code points
(8192, 32 KiB of UTF-8) for at most `max_latency_ms` (defaults 500/3000/8000 ms) plus the
shell's timer lateness; `debounce` holds what the provider sends within `debounce_ms`. A
boundary is looked for only in the text pushed since the last search plus a 64-code-point
tail, so a push costs O(pushed text); a terminator or blank-line run longer than that tail is
found by the cap instead.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal, get_args

import regex

from wsgate.core.graphemes import JOINING

BufferingMode = Literal["immediate", "word", "debounce", "sentence", "paragraph"]
MODES: Final[tuple[BufferingMode, ...]] = get_args(BufferingMode)
DEFAULT_DEBOUNCE_MS: Final = 50
DEFAULT_MAX_LATENCY_MS: Final[dict[BufferingMode, int]] = {
    "word": 500,
    "sentence": 3000,
    "paragraph": 8000,
}
"""Long enough that a unit of usual length (a word of 1-3 tokens, a sentence of ~40 tokens,
a paragraph of ~150) is not cut at 40-100 tokens/s; a slower model meets the cap sooner."""
MAX_HELD_CHARS: Final = 8192
_TAIL: Final = 64

_J = JOINING.pattern[1:-1]  # the class body, to splice into the patterns below
_WIDE = r"\p{Ideographic}\u3000-\u30ff\u31f0-\u31ff\uff01-\uff60"
_CLOSERS = (
    "\"'\u201d\u2019\u00bb\u203a)\\]}*_"  # quotes, brackets, Markdown emphasis
    "\u300d\u300f\u3009\u300b\u3011\u3015\u3017\u3019\u301b\uff02\uff07\uff09"  # CJK
)
_TERMS = "!?\u2026\u203c\u2047\u2048\u2049\u0964\u0965\u061f\u06d4\u0589\u1362"
_CJK_TERMS = "\u3002\uff01\uff1f\uff61"
_ABBREVIATIONS = "Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs|cf"
_NOT_A_FULL_STOP = (
    r"(?:^|\n)[ \t]*\d{1,3}"  # a list number: "1. Item"
    r"|(?<![\p{L}\p{N}])\p{L}"  # an initial: "U.S.", "e.g.", "J. Smith"
    rf"|(?<![\p{{L}}\p{{N}}])(?:{_ABBREVIATIONS})"
)

WORD: Final = regex.compile(rf"(?:\s+|[{_WIDE}])(?![{_J}])")
SENTENCE: Final = regex.compile(
    rf"(?:(?<!{_NOT_A_FULL_STOP})\.|[{_TERMS}])[.{_TERMS}]*[{_CLOSERS}]*\s+(?=[^\s\p{{Ll}}{_J}])"
    rf"|[{_CJK_TERMS}][{_CJK_TERMS}!?]*[{_CLOSERS}]*\s*(?=[^\s{_J}{_CLOSERS}{_CJK_TERMS}!?])"
    rf"|\n\s*(?![{_J}])"
)
PARAGRAPH: Final = regex.compile(rf"(?:\n[^\S\n]*\n|\u2029)\s*(?![{_J}])")

_UNITS: Final[dict[BufferingMode, tuple[regex.Pattern[str], ...]]] = {
    "word": (WORD,),
    "sentence": (SENTENCE, WORD),
    "paragraph": (PARAGRAPH, SENTENCE, WORD),
}


def last_boundary(pattern: regex.Pattern[str], text: str, pos: int = 0) -> int:
    """End of the last match of a unit `pattern` starting at or after `pos`; 0 if none."""
    end = 0
    for match in pattern.finditer(text, pos):
        end = match.end()
    return end


class Buffer:
    """One stream's text buffer in one buffering mode (see the module's rules)."""

    __slots__ = (
        "_base",
        "_cap",
        "_held",
        "_last_emit",
        "_max_held",
        "_mode",
        "_scan_from",
        "_times",
        "_units",
        "_wait",
    )

    def __init__(
        self,
        mode: BufferingMode = "immediate",
        *,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        max_latency_ms: int | None = None,
        max_held_chars: int = MAX_HELD_CHARS,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown buffering mode {mode!r}")
        if debounce_ms < 0:
            raise ValueError("debounce_ms must not be negative")
        latency = DEFAULT_MAX_LATENCY_MS.get(mode, 0) if max_latency_ms is None else max_latency_ms
        if latency <= 0 and mode in _UNITS:
            raise ValueError("max_latency_ms must be positive")
        if max_held_chars < 1:
            raise ValueError("max_held_chars must be at least 1")
        self._mode: BufferingMode = mode
        self._units = _UNITS.get(mode, ())
        self._wait = debounce_ms / 1000
        self._cap = latency / 1000
        self._max_held = max_held_chars
        self._held = ""
        self._base = 0  # code points delivered so far: the absolute offset of _held[0]
        self._times: deque[tuple[int, float]] = deque()  # (absolute end, arrival) per push
        self._scan_from = 0
        self._last_emit: float | None = None

    @property
    def mode(self) -> BufferingMode:
        """The buffering mode."""
        return self._mode

    @property
    def held(self) -> str:
        """Text pushed and not yet delivered."""
        return self._held

    def push(self, text: str, now: float) -> str:
        """Add `text` arrived at `now`; return what is due now (possibly "")."""
        if self._mode == "immediate":
            return text
        if text:
            self._held += text
            self._times.append((self._base + len(self._held), now))
        if self._mode == "debounce":
            return self._debounce(now) if self._held else ""
        unit = self._units[0]
        end = last_boundary(unit, self._held, self._scan_from)
        out = self._take(end) if end else ""
        self._scan_from = max(0, len(self._held) - _TAIL)
        return out + self._overdue(now) if self._held else out

    def poll(self, now: float) -> str:
        """The shell's timer fired: return what is due at `now` (possibly "")."""
        if not self._held:
            return ""
        if self._mode == "debounce":
            return self._debounce(now)
        return self._overdue(now)

    def deadline(self) -> float | None:
        """When `poll` has something to deliver; None while nothing is held."""
        if not self._held:
            return None
        if self._mode == "debounce":
            return (self._last_emit or 0.0) + self._wait
        return self._times[0][1] + self._cap

    def flush(self) -> str:
        """The text ended: return everything held."""
        return self._take(len(self._held))

    def _debounce(self, now: float) -> str:
        if self._last_emit is not None and now < self._last_emit + self._wait:
            return ""
        self._last_emit = now
        return self._take(len(self._held))

    def _overdue(self, now: float) -> str:
        need = len(self._held) - self._max_held
        for end, arrived in self._times:
            if arrived + self._cap > now:
                break
            need = max(need, end - self._base)
        if need <= 0:
            return ""
        for unit in self._units[1:]:
            end = last_boundary(unit, self._held)
            if end >= need:
                return self._take(end)
        return self._take(len(self._held))

    def _take(self, end: int) -> str:
        out = self._held[:end]
        self._held = self._held[end:]
        self._base += end
        self._scan_from = max(0, self._scan_from - end)
        times = self._times
        while times and times[0][0] <= self._base:
            times.popleft()
        return out
