"""One stream's answer text on its way to the client: sections, grapheme safety, buffering.

Owns the order of the three text stages a stream may ask for in its `options`:

1. structured sections (`StructuredSplitter`): text between the delimiters is withheld and
   comes out as a parsed section (or a section error); delimiter prefixes are held back;
2. grapheme safety (`GraphemeGuard`, on by default): a cluster that may still grow is held;
3. buffering (`Buffer`): immediate, word, debounce, sentence or paragraph.

A section leaves only after every text before it: the later stages are flushed first, so
the client sees text and sections in the order the provider wrote them. Nothing is ever
dropped: `flush` at the end returns everything still held. Pure: time comes in as `now`.

A stage a stream did not ask for is not built: with the default options (immediate
buffering, no sections) only the guard exists. Streams are many and long-lived (a stalled
one costs its pipeline all the while), and an immediate `Buffer` holds nothing ever.
"""

from __future__ import annotations

from wsgate.core.buffering import Buffer
from wsgate.core.frames import StartOptions
from wsgate.core.graphemes import GraphemeGuard
from wsgate.core.structured import Section, SectionError, StructuredSplitter, Text

TextPiece = str | Section | SectionError
"""Text to show, a parsed section, or a section that failed."""


class TextPipeline:
    """The text stages of one stream, configured from its start options."""

    __slots__ = ("_buffer", "_guard", "_now", "_splitter")

    def __init__(self, options: StartOptions) -> None:
        structured = options.structured
        self._splitter = (
            None
            if structured is None
            else StructuredSplitter(structured.open, structured.close, mode=structured.mode)
        )
        self._guard = GraphemeGuard() if options.grapheme_safe else None
        self._buffer = (
            None
            if options.buffering == "immediate"
            else Buffer(
                options.buffering,
                debounce_ms=options.debounce_ms,
                max_latency_ms=options.max_latency_ms,
            )
        )
        self._now = 0.0

    def push(self, text: str, now: float) -> list[TextPiece]:
        """Provider text in; what may be shown now out."""
        self._now = now
        if self._splitter is None:
            return self._show(text, now)
        out: list[TextPiece] = []
        for piece in self._splitter.push(text):
            if isinstance(piece, Text):
                out.extend(self._show(piece.text, now))
            else:
                out.extend(self._drain())
                out.append(piece)
        return out

    def poll(self, now: float) -> list[TextPiece]:
        """Text whose buffering deadline has come."""
        text = self._buffer.poll(now) if self._buffer is not None else ""
        return [text] if text else []

    def deadline(self) -> float | None:
        """When `poll` should be called next, if anything waits on time."""
        return self._buffer.deadline() if self._buffer is not None else None

    def flush(self) -> list[TextPiece]:
        """The stream is ending: everything held, in order."""
        out: list[TextPiece] = []
        if self._splitter is not None:
            for piece in self._splitter.finish():
                if isinstance(piece, Text):
                    out.extend(self._show(piece.text, self._now))
                else:
                    out.extend(self._drain())
                    out.append(piece)
        out.extend(self._drain())
        return out

    def drain(self) -> list[TextPiece]:
        """Release held text now; an open structured section stays closed to the client.

        Called before a tool call or usage (order is kept) and when the stream fails.
        """
        return self._drain()

    def _show(self, text: str, now: float) -> list[TextPiece]:
        if self._guard is not None:
            text = self._guard.push(text)
        if not text:
            return []
        shown = self._buffer.push(text, now) if self._buffer is not None else text
        return [shown] if shown else []

    def _drain(self) -> list[TextPiece]:
        # The buffer holds older text than the guard (the guard feeds the buffer).
        held = self._buffer.flush() if self._buffer is not None else ""
        if self._guard is not None:
            held += self._guard.flush()
        return [held] if held else []
