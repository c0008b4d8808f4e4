"""Reading provider payloads: what every translator does the same way.

Owns the small, shared rules of turning one provider event's JSON into values: the event
must be a JSON object (read with `jsonio.loads`, so lone-surrogate escapes survive), text
fields must be strings, a provider's error `type`/`code` reaches the client only as a short
identifier, answer and reasoning text pass each through its own `SurrogateJoiner`
(`DeltaText`), and the tool-call accumulator's outputs become provider-neutral events. Every
violation is an `UpstreamProtocolError`; provider text never goes into a message.
"""

from __future__ import annotations

import re
from typing import Any, Final

from wsgate.core.errors import UpstreamError, UpstreamProtocolError, UpstreamRateLimited
from wsgate.core.events import (
    ReasoningDelta,
    TextDelta,
    ToolCallChunk,
    ToolCallEnd,
    ToolCallFailed,
    ToolCallSnapshot,
    ToolCallStart,
    UpstreamEvent,
)
from wsgate.core.jsonio import loads
from wsgate.core.toolcalls import ArgumentsChunk, Ended, Snapshot, Started, ToolCallOutput
from wsgate.core.utf8 import SurrogateJoiner

IDENTIFIER: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
"""A provider label safe to show: an error type or code, never free text."""


def json_object(data: str) -> dict[str, Any]:
    """One event's JSON payload, which must be an object."""
    try:
        chunk = loads(data)
    except ValueError:
        raise UpstreamProtocolError("upstream sent malformed JSON") from None
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError("upstream chunk is not a JSON object")
    return chunk


def string(value: Any) -> str:
    """A text field, which must be a string."""
    if not isinstance(value, str):
        raise UpstreamProtocolError("upstream chunk has a non-string text field")
    return value


class DeltaText:
    """A turn's answer text and reasoning text, each made safe by its own `SurrogateJoiner`.

    Every provider streams both in pieces: `text` / `reasoning` add what is safe to emit as a
    `TextDelta` / `ReasoningDelta` (nothing for a piece that only holds back a surrogate), and
    `flush_text` / `flush_reasoning` add the held tail when the turn ends.
    """

    __slots__ = ("_reasoning", "_text")

    def __init__(self) -> None:
        self._text = SurrogateJoiner()
        self._reasoning = SurrogateJoiner()

    def text(self, value: str, out: list[UpstreamEvent]) -> None:
        """Add answer text."""
        piece = self._text.push(value)
        if piece:
            out.append(TextDelta(piece))

    def reasoning(self, value: str, out: list[UpstreamEvent]) -> None:
        """Add reasoning text."""
        piece = self._reasoning.push(value)
        if piece:
            out.append(ReasoningDelta(piece))

    def flush_text(self, out: list[UpstreamEvent]) -> None:
        """End of the answer text: its held tail, if any."""
        tail = self._text.flush()
        if tail:
            out.append(TextDelta(tail))

    def flush_reasoning(self, out: list[UpstreamEvent]) -> None:
        """End of the reasoning text: its held tail, if any."""
        tail = self._reasoning.flush()
        if tail:
            out.append(ReasoningDelta(tail))


def tool_events(outputs: list[ToolCallOutput]) -> list[UpstreamEvent]:
    """The accumulator's outputs as provider-neutral events, in order."""
    events: list[UpstreamEvent] = []
    for output in outputs:
        if isinstance(output, Started):
            events.append(ToolCallStart(output.call_id, output.index, output.name))
        elif isinstance(output, ArgumentsChunk):
            events.append(ToolCallChunk(output.call_id, output.chunk))
        elif isinstance(output, Snapshot):
            events.append(ToolCallSnapshot(output.call_id, output.partial))
        elif isinstance(output, Ended):
            events.append(ToolCallEnd(output.call_id, output.name, output.arguments))
        else:
            events.append(ToolCallFailed(output.call_id, output.name, output.raw, output.reason))
    return events


def error_labels(error: Any, keys: tuple[str, ...] = ("type", "code")) -> list[str]:
    """The distinct short identifiers under `keys` of a provider's error object, in order.

    Anything else in the object (its message above all) is provider text and never kept.
    """
    labels: list[str] = []
    if isinstance(error, dict):
        for key in keys:
            value = error.get(key)
            if isinstance(value, str) and IDENTIFIER.fullmatch(value) and value not in labels:
                labels.append(value)
    return labels


def error_message(labels: list[str]) -> str:
    """The public message of an in-band provider error: its labels, nothing of its text."""
    if labels:
        return f"upstream reported an error ({', '.join(labels)})"
    return "upstream reported an error"


def error_from(error: Any) -> UpstreamError:
    """The typed error of an OpenAI-shaped `{"type", "code"}` error object."""
    labels = error_labels(error)
    message = error_message(labels)
    if any("rate_limit" in label for label in labels):
        return UpstreamRateLimited(message)
    return UpstreamError(message)
