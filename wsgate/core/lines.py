"""The line framing shared by the byte-stream decoders (SSE in sse.py, NDJSON in ndjson.py).

Owns what both formats do the same way once a chunk has been split at its line ends: the
one leading UTF-8 BOM, the unterminated tail carried from chunk to chunk, joining that tail
onto the next line, and the verdict on a line over the cap. It does not split chunks (each
format has its own line ends and splits inline, on the hot path) and never decodes text.

Rules:
1. One UTF-8 BOM at the very start of the body is dropped, also when it arrives split
   across chunks (held in `head` until 3 bytes settle the question); a BOM anywhere else is
   content. A body that ends while `head` still holds a BOM prefix keeps it as content.
2. The unterminated tail is kept as bytes, a list of chunks (appending is O(1), joining
   happens once, when the line ends), so a UTF-8 character split across chunks is whole
   again before any decode.
3. A line's size is every byte before the line end the decoder split at. A line longer
   than `max_line_bytes` ends the buffer: the lines before it are still returned, `failure`
   holds `UpstreamLineTooLong`, and the tail is dropped.
4. Memory: the tail holds at most `max_line_bytes` plus the one chunk that crossed the cap,
   which is dropped at once; the BOM head holds at most 2 bytes.
"""

from __future__ import annotations

import codecs
from typing import Final

from wsgate.core.errors import UpstreamLineTooLong

__all__ = ["DEFAULT_MAX_LINE_BYTES", "LineBuffer"]

DEFAULT_MAX_LINE_BYTES: Final = 4 * 1024 * 1024
_BOM: Final = codecs.BOM_UTF8


class LineBuffer:
    """The BOM, the unterminated tail and the cap of one body (rules above).

    A decoder calls `strip_bom` on each chunk while `started` is False, splits the chunk at
    its line ends itself, then hands the complete lines and the unterminated rest to `frame`.
    """

    __slots__ = ("_head", "_tail", "_tail_len", "failure", "max_line_bytes", "started")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.started = False  # False until the first 3 bytes settled the BOM question
        self._head = b""  # the first bytes while they may still be a split BOM
        self._tail: list[bytes] = []
        self._tail_len = 0
        self.failure: UpstreamLineTooLong | None = None

    def strip_bom(self, data: bytes) -> bytes:
        """The chunk without the body's leading BOM: b"" while it may still be a split one."""
        head = self._head + data if self._head else data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self.started = True
        self._head = b""
        return head.removeprefix(_BOM)

    def frame(self, lines: list[bytes], rest: bytes, chunk_size: int) -> list[bytes]:
        """The complete lines of one chunk, the held tail joined onto the first.

        `lines` are the chunk's terminated lines without their ends (reused and returned),
        `rest` its unterminated end (b"" when the chunk ends a line) and `chunk_size` its
        length. After a line over the cap, returns the lines before it and sets `failure`.
        """
        cap = self.max_line_bytes
        if lines:
            if self._tail:
                self._tail.append(lines[0])
                lines[0] = b"".join(self._tail)
                self._tail.clear()
                self._tail_len = 0
            # Only a chunk longer than the cap can hold a complete line longer than the cap
            # (beyond the first line, which carries the old tail): skip the scan otherwise.
            if len(lines[0]) > cap or chunk_size > cap:
                for i, line in enumerate(lines):
                    if len(line) > cap:
                        return self._fail(lines[:i])
        if rest:
            self._tail.append(rest)
            self._tail_len += len(rest)
            if self._tail_len > cap:
                return self._fail(lines)
        return lines

    def rest(self) -> bytes:
        """End of body: the unterminated last line (a lone split-BOM prefix is content)."""
        last = self._head + b"".join(self._tail)
        self.clear()
        return last

    def clear(self) -> None:
        """Drop the BOM head and the tail."""
        self._head = b""
        self._tail.clear()
        self._tail_len = 0

    def _fail(self, complete: list[bytes]) -> list[bytes]:
        self.failure = UpstreamLineTooLong(f"upstream line exceeds {self.max_line_bytes} bytes")
        self.clear()
        return complete
