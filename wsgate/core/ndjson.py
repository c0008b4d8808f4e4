r"""Incremental newline-delimited JSON decoder: bytes in, one `str` per JSON line out.

Owns the framing of every NDJSON provider (`application/x-ndjson`, Ollama): line splitting
on LF and CRLF (also when a CRLF is split across two chunks), the one leading BOM, blank
lines, the unterminated last line and the line-size cap. It does no I/O, never reads the
clock and does not parse the JSON: each line goes to the provider's translator as text.

Rules (https://github.com/ndjson/ndjson-spec, JSON text per RFC 8259):
1. A line ends at LF; a CR right before the LF is part of the line end (CRLF). A lone CR is
   not a line end: JSON text cannot hold a raw CR inside a string and treats one outside a
   string as whitespace, so a lone CR either is whitespace the JSON parser skips or makes the
   line malformed, which the translator reports. Splitting at LF alone also makes a CRLF
   split across chunks free: the CR waits in the tail until its LF arrives.
2. Lines are split at the byte level: LF is ASCII and never occurs inside a UTF-8
   multibyte sequence, so a complete line holds whole characters and is decoded on its own
   with ``errors="replace"``; a character split across chunks is joined because the
   unterminated tail is kept as bytes until its LF arrives. One decode per line, no
   per-character Python loop: the same text as decoding the whole body first.
3. One UTF-8 BOM at the very start of the body is dropped (also when it arrives split
   across chunks); a BOM anywhere else is line content.
4. A line that is empty or holds only JSON whitespace (space, tab, CR) is skipped: NDJSON
   writers and proxies emit blank lines as keep-alives.
5. NDJSON allows the last line to lack its LF, so at EOF an unterminated last line is
   returned like any other (unless blank). If the body was cut inside a JSON value, that
   line is truncated JSON and the translator reports it as malformed.
6. Memory: the unterminated tail is a list of chunks (appending is O(1), joining happens
   once when the line ends), bounded by `max_line_bytes`. A line's size is every byte
   before its LF (the CR of a CRLF included, so the verdict does not depend on where the
   chunks were cut). A longer line ends the decoder: the lines completed before it are
   still returned, `failure` holds `UpstreamLineTooLong`, and every later `feed` and `eof`
   returns nothing. Worst case held: `max_line_bytes` + one chunk.
"""

from __future__ import annotations

import codecs
from typing import Final

from wsgate.core.errors import UpstreamLineTooLong
from wsgate.core.sse import DEFAULT_MAX_LINE_BYTES

__all__ = ["DEFAULT_MAX_LINE_BYTES", "NDJSONDecoder"]

_BOM: Final = codecs.BOM_UTF8
_LF: Final = b"\n"
_CR: Final = b"\r"
_JSON_WHITESPACE: Final = b" \t\r"  # RFC 8259 §2, less the LF that ends the line


class NDJSONDecoder:
    """Feed bytes as they arrive; get the non-blank lines each chunk completes."""

    __slots__ = ("_head", "_max", "_started", "_tail", "_tail_len", "failure")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._started = False  # False until the first 3 bytes settled the BOM question
        self._head = b""  # the first bytes while they may still be a split BOM
        self._tail: list[bytes] = []
        self._tail_len = 0
        self.failure: UpstreamLineTooLong | None = None

    def feed(self, data: bytes) -> list[str]:
        """Decode one chunk; return the lines it completes, in order.

        After a line over the cap, returns the lines before it and sets `failure`.
        """
        if self.failure is not None:
            return []
        if not self._started:
            data = self._strip_bom(data)
        if not data:
            return []
        lines = data.split(_LF)
        piece = lines.pop()  # the unterminated rest: b"" when the chunk ends with LF
        if lines:
            if self._tail:
                lines[0] = self._join_tail(lines[0])
            overlong = self._first_overlong(lines, len(data))
            if overlong is not None:
                return self._fail(lines[:overlong])
        if piece and self._keep(piece):
            return self._fail(lines)
        return _decode(lines) if lines else []

    def eof(self) -> list[str]:
        """End of body: the unterminated last line, if any and not blank (rule 5)."""
        if self.failure is not None:
            return []
        last = self._head + b"".join(self._tail)  # a lone split-BOM prefix is content
        self._clear()
        return _decode([last]) if last else []

    def _strip_bom(self, data: bytes) -> bytes:
        head = self._head + data if self._head else data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._started = True
        self._head = b""
        return head.removeprefix(_BOM)

    def _first_overlong(self, lines: list[bytes], chunk_size: int) -> int | None:
        # Only a chunk longer than the cap can hold a complete line longer than the cap
        # (beyond the first line, which carries the old tail): skip the scan otherwise.
        if len(lines[0]) <= self._max and chunk_size <= self._max:
            return None
        return next((i for i, line in enumerate(lines) if len(line) > self._max), None)

    def _keep(self, piece: bytes) -> bool:
        """Hold an unterminated piece; True when the line now exceeds the cap."""
        self._tail.append(piece)
        self._tail_len += len(piece)
        return self._tail_len > self._max

    def _fail(self, complete: list[bytes]) -> list[str]:
        self.failure = UpstreamLineTooLong(f"upstream line exceeds {self._max} bytes")
        self._clear()
        return _decode(complete)

    def _clear(self) -> None:
        self._head = b""
        self._tail.clear()
        self._tail_len = 0

    def _join_tail(self, first: bytes) -> bytes:
        self._tail.append(first)
        line = b"".join(self._tail)
        self._tail.clear()
        self._tail_len = 0
        return line


def _decode(lines: list[bytes]) -> list[str]:
    out: list[str] = []
    for raw in lines:
        line = raw[:-1] if raw.endswith(_CR) else raw
        # bytes.strip returns the same object when there is nothing to strip: no copy for
        # the usual line, which starts with "{" and ends with "}".
        if line.strip(_JSON_WHITESPACE):
            out.append(line.decode("utf-8", "replace"))
    return out
