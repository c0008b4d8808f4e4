r"""Text safety for streamed deltas: no lone surrogate ever leaves a translator.

Owns the joining of UTF-16 surrogate pairs that a provider split across two JSON events
(`"\ud83d"` then `"\ude00"`: stdlib `json.loads` turns each into a lone surrogate code
point) and the replacement of every other surrogate with U+FFFD. A Python `str` holds code
points, so a surrogate code point in it is always "lone": a well-formed astral character is
one code point, and a surrogate would make the frame unencodable as UTF-8. Pure functions and
one small state object; no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_REPLACEMENT: Final = "\ufffd"


def has_lone_surrogate(text: str) -> bool:
    """Whether `text` holds any surrogate code point (U+D800-U+DFFF)."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def scrub_text(text: str) -> str:
    """Join surrogate pairs into their character and replace every other surrogate by U+FFFD."""
    # UTF-16 round trip: "surrogatepass" writes each surrogate code point as its 16-bit unit,
    # and decoding reads a high+low unit pair back as one astral character and each unpaired
    # unit as U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def scrub_value(value: Any) -> Any:
    """`scrub_text` every string of a JSON value (keys too), in place and without recursion.

    Lists and dicts are modified in place: pass fresh builtins (a decoder's result).
    """
    stack: list[Any] = []
    value = _clean(value, stack)
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            node[:] = [_clean(item, stack) for item in node]
        else:
            items = list(node.items())
            node.clear()
            node.update((_clean(key, stack), _clean(item, stack)) for key, item in items)
    return value


def _clean(item: Any, stack: list[Any]) -> Any:
    if isinstance(item, str):
        return scrub_text(item) if has_lone_surrogate(item) else item
    if isinstance(item, list | dict):
        stack.append(item)
    return item


class SurrogateJoiner:
    """Makes a sequence of text pieces safe to emit, one piece at a time.

    A trailing high surrogate is held back (one code point at most) to meet the low
    surrogate at the start of the next piece; `flush` turns a held one into U+FFFD. The
    concatenation of the outputs equals the concatenation of the inputs with pairs joined and
    every other surrogate replaced by U+FFFD, however the input was split.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def push(self, text: str) -> str:
        """Return the safe part of everything pushed so far that was not returned yet."""
        if not self._held:
            if text.isascii() or _SURROGATE.search(text) is None:
                return text
        else:
            text = self._held + text
            self._held = ""
        if "\ud800" <= text[-1] <= "\udbff":
            self._held = text[-1]
            text = text[:-1]
        return scrub_text(text) if text else text

    def flush(self) -> str:
        """End of text: a held high surrogate can no longer be paired; return U+FFFD or ''."""
        if self._held:
            self._held = ""
            return _REPLACEMENT
        return ""
