"""Incremental Server-Sent Events decoder: bytes in, `SSEEvent` values out (WHATWG rules).

Owns the `text/event-stream` framing of every SSE provider: line splitting on CR, LF and
CRLF (also when a CRLF is split across two chunks), comments, fields, dispatch on a blank
line, the persistent last event id and the reconnection time. The leading BOM, the
unterminated tail, its cap and the `UpstreamLineTooLong` verdict are lines.py's
`LineBuffer` (its rules hold here). It does no I/O, never reads the clock and knows
nothing of any provider's JSON.

Rules (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
1. Lines are split at the byte level: CR and LF are ASCII and never occur inside a UTF-8
   multibyte sequence, so a complete line always holds whole characters and is decoded on its
   own with ``errors="replace"`` (a character split across chunks is whole again once
   `LineBuffer` joins the tail). This gives exactly what decoding the whole stream first
   would give, with one decode per line and no per-character Python loop.
2. A chunk that ends in CR has ended its line; a LF opening the next chunk is the rest of
   that CRLF and ends nothing.
3. A line is dispatched only when complete; an unterminated line at EOF and an event without
   its closing blank line are discarded, as the spec says.
4. A line over `max_line_bytes` ends the decoder: the events completed before it are still
   returned, `failure` holds `UpstreamLineTooLong`, and every later `feed` returns nothing.
5. Cost: a token stream is one event per token, so everything here runs per token. An event
   is a frozen `msgspec.Struct` (built in C: a tenth of a frozen dataclass's cost), and the
   split stays inline in `feed`.
"""

from __future__ import annotations

from typing import Final

import msgspec

from wsgate.core.errors import UpstreamLineTooLong
from wsgate.core.lines import DEFAULT_MAX_LINE_BYTES, LineBuffer

__all__ = ["DEFAULT_MAX_LINE_BYTES", "SSEDecoder", "SSEEvent"]

_CR: Final = 13
_LF: Final = 10
_EOL: Final = (_LF, _CR)
# Longer digit strings are ignored: int() refuses over 4300 digits, and no sane reconnection
# delay needs more than 15 (about 31,000 years in milliseconds).
_MAX_RETRY_DIGITS: Final = 15


class SSEEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event (immutable; `gc=False`: it holds only strings and an int).

    `id` is the stream's last event id when the event was dispatched (it persists across
    events; None until an `id` field was seen). `retry` is likewise the latest valid `retry`
    field seen so far on the stream (None until one was seen), since the spec applies it at
    once, even in a block that dispatches nothing.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed bytes as they arrive; get the events each chunk completes."""

    __slots__ = ("_buffer", "_data", "_event", "_last_id", "_pending_cr", "_retry", "failure")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._buffer = LineBuffer(max_line_bytes)
        self._pending_cr = False  # the last chunk ended in CR: a leading LF ends nothing
        self._data: list[str] | None = None  # None: no data field since the last dispatch
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self.failure: UpstreamLineTooLong | None = None

    @property
    def last_event_id(self) -> str | None:
        """The last event id set by the stream (for a reconnect's `Last-Event-ID`)."""
        return self._last_id

    @property
    def retry(self) -> int | None:
        """The reconnection time in milliseconds the stream asked for, if any."""
        return self._retry

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Decode one chunk; return the events it completes, in order.

        After a line over the cap, returns the events before it and sets `failure`.
        """
        if self.failure is not None:
            return []
        buffer = self._buffer
        if not buffer.started:
            data = buffer.strip_bom(data)
        if self._pending_cr and data:
            self._pending_cr = False
            if data[0] == _LF:
                data = data[1:]
        if not data:
            return []
        lines = data.splitlines()
        last = data[-1]
        if last in _EOL:
            self._pending_cr = last == _CR
            lines = buffer.frame(lines, b"", len(data))
        else:
            lines = buffer.frame(lines, lines.pop(), len(data))
        if buffer.failure is not None:
            events = self._lines(lines)
            self.failure = buffer.failure
            self.eof()
            return events
        return self._lines(lines) if lines else []

    def eof(self) -> list[SSEEvent]:
        """End of stream: an unterminated line and an undispatched event are discarded."""
        self._buffer.clear()
        self._data = None
        self._event = ""
        return []

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:  # noqa: C901, PLR0912 - the field table, inline on the hot path
        events: list[SSEEvent] = []
        for raw in lines:
            if raw[:6] == b"data: ":
                # The line of nearly every event, first: the field is `data` exactly when
                # the line starts so, and the one space after the colon is dropped.
                text = raw[6:].decode("utf-8", "replace")
                if self._data is None:
                    self._data = [text]
                else:
                    self._data.append(text)
                continue
            if not raw:
                if self._data is not None:
                    events.append(
                        SSEEvent(
                            "\n".join(self._data),
                            self._event or "message",
                            self._last_id,
                            self._retry,
                        )
                    )
                    self._data = None
                self._event = ""
                continue
            name, _, value = raw.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                text = value.decode("utf-8", "replace")
                if self._data is None:
                    self._data = [text]
                else:
                    self._data.append(text)
            elif not name:
                continue  # a comment (keep-alive): the line starts with a colon
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"id":
                if b"\0" not in value:
                    self._last_id = value.decode("utf-8", "replace")
            elif name == b"retry" and value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
                self._retry = int(value)
        return events
