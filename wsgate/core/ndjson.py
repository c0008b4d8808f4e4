r"""Incremental newline-delimited JSON decoder: bytes in, one `str` per JSON line out.

Owns the framing of every NDJSON provider (`application/x-ndjson`, Ollama): line splitting
on LF and CRLF (also when a CRLF is split across two chunks), blank lines and the
unterminated last line. The leading BOM, the unterminated tail, its cap and the
`UpstreamLineTooLong` verdict are lines.py's `LineBuffer` (its rules hold here). It does
no I/O, never reads the clock and does not parse the JSON: each line goes to the
provider's translator as text.

Rules (https://github.com/ndjson/ndjson-spec, JSON text per RFC 8259):
1. A line ends at LF; a CR right before the LF is part of the line end (CRLF). A lone CR is
   not a line end: JSON text cannot hold a raw CR inside a string and treats one outside a
   string as whitespace, so a lone CR either is whitespace the JSON parser skips or makes the
   line malformed, which the translator reports. Splitting at LF alone also makes a CRLF
   split across chunks free: the CR waits in the tail until its LF arrives.
2. Lines are split at the byte level: LF is ASCII and never occurs inside a UTF-8
   multibyte sequence, so a complete line holds whole characters and is decoded on its own
   with ``errors="replace"`` (a character split across chunks is whole again once
   `LineBuffer` joins the tail). One decode per line, no per-character Python loop: the
   same text as decoding the whole body first.
3. A line that is empty or holds only JSON whitespace (space, tab, CR) is skipped: NDJSON
   writers and proxies emit blank lines as keep-alives.
4. NDJSON allows the last line to lack its LF, so at EOF an unterminated last line is
   returned like any other (unless blank). If the body was cut inside a JSON value, that
   line is truncated JSON and the translator reports it as malformed.
5. A line's size for the `max_line_bytes` cap is every byte before its LF (the CR of a
   CRLF included, so the verdict does not depend on where the chunks were cut). A longer
   line ends the decoder: the lines completed before it are still returned, `failure`
   holds `UpstreamLineTooLong`, and every later `feed` and `eof` returns nothing.
"""

from __future__ import annotations

from typing import Final

from wsgate.core.errors import UpstreamLineTooLong
from wsgate.core.lines import DEFAULT_MAX_LINE_BYTES, LineBuffer

__all__ = ["DEFAULT_MAX_LINE_BYTES", "NDJSONDecoder"]

_LF: Final = b"\n"
_CR: Final = b"\r"
_JSON_WHITESPACE: Final = b" \t\r"  # RFC 8259 §2, less the LF that ends the line


class NDJSONDecoder:
    """Feed bytes as they arrive; get the non-blank lines each chunk completes."""

    __slots__ = ("_buffer", "failure")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._buffer = LineBuffer(max_line_bytes)
        self.failure: UpstreamLineTooLong | None = None

    @property
    def _max(self) -> int:
        """The line cap (the buffer owns it; kept under this name for the tests)."""
        return self._buffer.max_line_bytes

    def feed(self, data: bytes) -> list[str]:
        """Decode one chunk; return the lines it completes, in order.

        After a line over the cap, returns the lines before it and sets `failure`.
        """
        if self.failure is not None:
            return []
        buffer = self._buffer
        if not buffer.started:
            data = buffer.strip_bom(data)
        if not data:
            return []
        lines = data.split(_LF)
        rest = lines.pop()  # the unterminated rest: b"" when the chunk ends with LF
        lines = buffer.frame(lines, rest, len(data))
        self.failure = buffer.failure
        return _decode(lines) if lines else []

    def eof(self) -> list[str]:
        """End of body: the unterminated last line, if any and not blank (rule 4)."""
        if self.failure is not None:
            return []
        last = self._buffer.rest()
        return _decode([last]) if last else []


def _decode(lines: list[bytes]) -> list[str]:
    out: list[str] = []
    for raw in lines:
        line = raw[:-1] if raw.endswith(_CR) else raw
        # bytes.strip returns the same object when there is nothing to strip: no copy for
        # the usual line, which starts with "{" and ends with "}".
        if line.strip(_JSON_WHITESPACE):
            out.append(line.decode("utf-8", "replace"))
    return out
