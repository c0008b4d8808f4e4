"""Structured output: split a stream's answer text into plain text and parsed JSON sections.

Owns the recognition of delimited sections (`<<<JSON>>>` ... `<<<END>>>` by default) in text
that arrives in arbitrary pieces, and the `final_json` mode where the whole answer is JSON.
It does no I/O and never decides how text is buffered or framed; its input is text that is
already safe (no split code points, no lone surrogates) and its `Text` output stays so.

Rules (mode `sections`):
1. Text outside sections is returned as `Text` as soon as it is known not to start a
   delimiter: a trailing piece that is a proper prefix of the open delimiter is held back
   (at most `len(open_delim) - 1` characters) and never shown unless later text proves it
   is not one; `finish()` releases it as `Text`. Delimiters are found whatever the split.
2. Inside a section nothing is returned until the close delimiter arrives. Then the content
   (the exact text between the delimiters, kept in `Section.content` / `SectionError.raw`)
   is stripped of surrounding whitespace, unwrapped from one ``` fence if it is fenced
   (an optional `json` language tag), and parsed: `Section(content, value)` or
   `SectionError(raw, "section is not valid JSON")`. Partial JSON is never claimed valid.
3. A section longer than `max_section_chars` ends in `SectionError(raw cut to the cap,
   "section exceeds N characters")` as soon as that is certain; the rest of it is dropped
   up to its close delimiter. Held memory: the cap plus `len(close_delim) - 1` characters
   plus the piece being pushed.
4. A section still open at `finish()` is `SectionError(raw, "unclosed section")`.

Mode `final_json`: every piece is returned as `Text` at once (the answer streams as usual)
and is also kept (up to `max_section_chars`); `finish()` adds `Section(whole_text, value)`
when the whole answer, stripped and unwrapped from one fence as in rule 2, parses as JSON.
Otherwise it adds nothing: the client already has the text, and a plain-text answer is not
an error in this mode (nor is one over the cap, which is simply not parsed).

The outputs of any split of the same input are equal once adjacent `Text` pieces are joined.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal

from wsgate.core.errors import ProtocolError
from wsgate.core.toolcalls import parse_json

DEFAULT_OPEN: Final = "<<<JSON>>>"
DEFAULT_CLOSE: Final = "<<<END>>>"
DEFAULT_MAX_SECTION_CHARS: Final = 1 << 20
NOT_JSON: Final = "section is not valid JSON"
UNCLOSED: Final = "unclosed section"
_FENCE: Final = "```"

Mode = Literal["sections", "final_json"]


@dataclass(frozen=True, slots=True)
class Text:
    """Answer text outside any section: safe to stream as `delta.text`."""

    text: str


@dataclass(frozen=True, slots=True)
class Section:
    """A completed section whose content parsed as JSON."""

    content: str
    value: Any


@dataclass(frozen=True, slots=True)
class SectionError:
    """A section that did not yield JSON; `raw` is its text (up to the cap)."""

    raw: str
    reason: str


Piece = Text | Section | SectionError


class _State(Enum):
    OUTSIDE = "outside"
    INSIDE = "inside"
    SKIPPING = "skipping"  # an over-long section, already reported, up to its close


def _held_prefix(text: str, delim: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `delim`."""
    for size in range(min(len(text), len(delim) - 1), 0, -1):
        if text.endswith(delim[:size]):
            return size
    return 0


def parse_answer(text: str) -> Any:
    """Parse text that should be JSON: stripped, optionally in one fence; ValueError if not."""
    text = text.strip()
    # A fence is cut by hand: a lazy regex over a 1 MiB answer can backtrack quadratically.
    if len(text) >= 7 and text.startswith(_FENCE) and text.endswith(_FENCE):
        newline = text.find("\n")
        if newline > 0 and text[3:newline].strip().lower() in {"", "json"}:
            text = text[newline + 1 : -3]
    return parse_json(text)


def _whole_answer(whole: str) -> list[Piece]:
    try:
        return [Section(whole, parse_answer(whole))]
    except ValueError:
        return []  # a plain-text answer, already streamed: not an error in final_json mode


class StructuredSplitter:
    """Split one stream's answer text into `Text` and sections; see the module rules."""

    __slots__ = (
        "_close",
        "_finished",
        "_held",
        "_max",
        "_mode",
        "_open",
        "_parts",
        "_size",
        "_state",
        "_tail",
    )

    def __init__(
        self,
        open_delim: str = DEFAULT_OPEN,
        close_delim: str = DEFAULT_CLOSE,
        *,
        mode: Mode = "sections",
        max_section_chars: int = DEFAULT_MAX_SECTION_CHARS,
    ) -> None:
        if mode not in {"sections", "final_json"}:
            raise ValueError(f"unknown structured mode {mode!r}")
        if mode == "sections" and not (open_delim and close_delim):
            raise ValueError("structured delimiters must not be empty")
        if max_section_chars < 0:
            raise ValueError("max_section_chars must be >= 0")
        self._open = open_delim
        self._close = close_delim
        self._mode = mode
        self._max = max_section_chars
        self._state = _State.OUTSIDE
        self._held = ""  # a possible open-delimiter prefix, outside
        self._tail = ""  # the last len(close) - 1 characters of the section, inside
        self._parts: list[str] = []
        self._size = 0
        self._finished = False

    @property
    def inside(self) -> bool:
        """True while a section is open (its text is being withheld)."""
        return self._state is not _State.OUTSIDE

    def push(self, text: str) -> list[Piece]:
        """Consume a piece of answer text; return what it completes, in order."""
        if self._finished:
            raise ProtocolError("structured text pushed after finish")
        out: list[Piece] = []
        if self._mode == "final_json":
            if text:
                out.append(Text(text))
                self._keep(text)
            return out
        while text:
            if self._state is _State.OUTSIDE:
                text = self._outside(text, out)
            else:
                text = self._inside(text, out)
        return out

    def finish(self) -> list[Piece]:
        """End of the answer: release held text, report an open section (idempotent)."""
        if self._finished:
            return []
        self._finished = True
        out: list[Piece] = []
        if self._mode == "final_json":
            if self._size <= self._max:
                out += _whole_answer("".join(self._parts))
        elif self._state is _State.OUTSIDE:
            if self._held:
                out.append(Text(self._held))
        elif self._state is _State.INSIDE:
            raw = "".join(self._parts)
            out.append(self._too_long(raw) if len(raw) > self._max else SectionError(raw, UNCLOSED))
        self._parts.clear()
        self._held = self._tail = ""
        return out

    def _keep(self, text: str) -> None:
        self._size += len(text)
        if self._size <= self._max:
            self._parts.append(text)
        else:
            self._parts.clear()

    def _outside(self, text: str, out: list[Piece]) -> str:
        """Emit text up to an open delimiter; return what follows it ('' if none)."""
        text = self._held + text
        self._held = ""
        start = text.find(self._open)
        if start >= 0:
            if start:
                out.append(Text(text[:start]))
            self._state = _State.INSIDE
            return text[start + len(self._open) :]
        keep = _held_prefix(text, self._open)
        if keep < len(text):
            out.append(Text(text[: len(text) - keep]))
        self._held = text[len(text) - keep :]
        return ""

    def _inside(self, text: str, out: list[Piece]) -> str:
        """Collect section text up to the close delimiter; return what follows it."""
        window = self._tail + text
        found = window.find(self._close)
        if found < 0:
            self._tail = window[max(0, len(window) - len(self._close) + 1) :]
            if self._state is _State.INSIDE:
                self._parts.append(text)
                self._size += len(text)
                # The trailing characters that may start the close delimiter are not content yet.
                if self._size - _held_prefix(self._tail, self._close) > self._max:
                    self._overflow(out)
            return ""
        if self._state is _State.INSIDE:
            content = "".join(self._parts) + text
            content = content[: len(content) - len(window) + found]
            out.append(self._section(content))
        self._state = _State.OUTSIDE
        self._parts.clear()
        self._size = 0
        self._tail = ""
        return window[found + len(self._close) :]

    def _overflow(self, out: list[Piece]) -> None:
        out.append(self._too_long("".join(self._parts)))
        self._state = _State.SKIPPING
        self._parts.clear()

    def _too_long(self, content: str) -> SectionError:
        return SectionError(content[: self._max], f"section exceeds {self._max} characters")

    def _section(self, content: str) -> Piece:
        if len(content) > self._max:
            return self._too_long(content)
        try:
            return Section(content, parse_answer(content))
        except ValueError:
            return SectionError(content, NOT_JSON)
