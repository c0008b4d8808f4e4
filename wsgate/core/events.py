"""Provider-neutral upstream events: what every translator produces.

A translator turns one provider's decoded stream (SSE events, NDJSON lines) into these
values; the stream pipeline turns them into numbered wire frames. They carry no `stream_id`
and no `seq`: numbering is the pipeline's job. Plain frozen dataclasses, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal[
    "stop", "length", "tool_calls", "content_filter", "cancelled", "timeout", "error"
]


@dataclass(frozen=True, slots=True)
class RoleDelta:
    """The assistant's role was announced (OpenAI sends it in the first chunk)."""

    role: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of answer text, already free of split code points and lone surrogates."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning (kept apart from the answer text)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A tool call began; `index` is the provider's position of the call in the turn."""

    call_id: str
    index: int
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallChunk:
    """A fragment of a tool call's JSON arguments, as the provider sent it."""

    call_id: str
    chunk: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """A tool call completed; `arguments` is the parsed JSON value."""

    call_id: str
    name: str
    arguments: Any


@dataclass(frozen=True, slots=True)
class ToolCallSnapshot:
    """The arguments of a running tool call parsed so far (partial JSON completed)."""

    call_id: str
    partial: Any


@dataclass(frozen=True, slots=True)
class ToolCallFailed:
    """A tool call ended without valid arguments; `raw` is what the provider sent."""

    call_id: str
    name: str | None
    raw: str
    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the provider."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The provider ended the turn with a normalized reason."""

    reason: FinishReason


UpstreamEvent = (
    RoleDelta
    | TextDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallChunk
    | ToolCallSnapshot
    | ToolCallEnd
    | ToolCallFailed
    | Usage
    | Finish
)
