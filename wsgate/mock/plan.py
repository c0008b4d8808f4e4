"""The dialect interface and the plan of a streamed answer: its events, faults and due times.

Owns what every dialect shares: the `Dialect` interface (how a provider reads a request and
phrases an answer), the event kinds that drive pacing and fault injection, the order of tool
call fragments, and `plan_stream`, which turns a script into the list of byte strings to write
with their offsets from the request's origin. Rules:

1. A dialect renders events and tags each with a `Kind`: HEAD events (before the first
   content) and TAIL events (everything after it that is not paced) go with a paced event;
   CONTENT and TOOL events are paced, event i due at `ttft + i / tokens_per_s`.
2. Faults that count content chunks (`error_after`, `truncate_after`, `stall_after`) cut
   the event list at one point: right after the K-th CONTENT event, or right after the
   HEAD events for K = 0. A K above the number of content events is a script error.
3. Pure: no asyncio, no clock, no sockets; `server.py` writes the plan.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson

from wsgate.mock.script import (
    Answer,
    RawEvent,
    Script,
    ScriptError,
    ToolCallScript,
    resolve_answer,
    split_surrogate_pairs,
)
from wsgate.mock.turns import NO_HISTORY, History

STREAM_ERROR_MESSAGE: Final = "mock: scripted stream error"
JSON_ERROR_MESSAGE: Final = "mock: scripted error"
_PADDING: Final = b',"mock_padding":"'


class Kind(enum.Enum):
    """How an event is paced and counted (rule 1)."""

    HEAD = "head"
    CONTENT = "content"
    TOOL = "tool"
    TAIL = "tail"


_PACED: Final = (Kind.CONTENT, Kind.TOOL)


@dataclass(frozen=True, slots=True)
class Event:
    """One rendered event: its exact bytes (framing included) and its kind."""

    kind: Kind
    data: bytes


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One event's bytes and its due time, in seconds from the request's origin."""

    at_s: float
    data: bytes


@dataclass(frozen=True, slots=True)
class Plan:
    """What a streamed answer writes; `close_at` set: close the connection then, no end."""

    events: list[PlannedEvent]
    close_at: float | None = None


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a dialect needs to know of the request besides the script."""

    body: Mapping[str, Any]
    number: int = 0
    created: int = 0
    default_words: int = 48

    @property
    def model(self) -> str:
        """The request's model, `"mock"` when it is not a string."""
        model = self.body.get("model")
        return model if isinstance(model, str) else "mock"


@dataclass(frozen=True, slots=True)
class ToolStep:
    """One step of the tool calls: the opening of call `index` (`fragment` None) or a piece."""

    index: int
    call: ToolCallScript
    fragment: str | None


class ErrorBody(Protocol):
    """Builds a JSON error body in a provider's shape."""

    def __call__(
        self, message: str, *, kind: str, code: str | None = None, param: str | None = None
    ) -> bytes:
        """The body for `message`, with the error `type` (`kind`), `code` and `param`."""
        ...


Body = Mapping[str, Any]


def _messages(body: Body) -> object:
    return body.get("messages")


def _sse_entry(entry: str | RawEvent) -> bytes:
    return sse_raw(entry) if isinstance(entry, str) else sse_raw(entry.data, entry.event)


def _no_tail(script: Script) -> list[bytes]:
    del script
    return []


def _no_history(body: Body) -> History:
    del body
    return NO_HISTORY


@dataclass(frozen=True, slots=True, kw_only=True)
class Dialect:
    """One provider's wire format: pure functions reading a request and phrasing answers.

    `invalid` gives the 400 message and param of a body that cannot be answered;
    `user_text` the text of the last user message (where a script may be); `conversation`
    the value a generated text's seed comes from; `render` every event of a stream with
    its kind; `raw_event` / `raw_tail` an `events` entry and what follows them;
    `stream_error` the in-band error event after `sent` events; `complete` the JSON answer;
    `status_kind` the error `type` and `code` of an HTTP status; `history` the turn and the
    latest tool results of the conversation (`turns.read_history`), `call_id_prefix` the
    start of the default call ids. `unsupported` script keys are errors here;
    `finish_names` names the neutral finish reasons in this dialect.
    """

    name: str
    invalid: Callable[[Body], tuple[str, str | None] | None]
    wants_stream: Callable[[Body], bool]
    user_text: Callable[[Body], str | None]
    prompt_tokens: Callable[[Body], int]
    token_limit: Callable[[Body], int | None]
    render: Callable[[Answer, Script, RequestInfo], list[Event]]
    stream_error: Callable[[RequestInfo, str, int], bytes]
    complete: Callable[[Answer, RequestInfo], bytes]
    error_body: ErrorBody
    status_kind: Callable[[int], tuple[str, str | None]]
    conversation: Callable[[Body], object] = _messages
    raw_event: Callable[[str | RawEvent], bytes] = _sse_entry
    raw_tail: Callable[[Script], list[bytes]] = _no_tail
    history: Callable[[Body], History] = _no_history
    call_id_prefix: str = "call_mock"
    content_type: str = "text/event-stream; charset=utf-8"
    default_error_type: str = "server_error"
    unsupported: frozenset[str] = frozenset()
    finish_names: Mapping[str, str] = field(default_factory=dict)

    def finish(self, neutral: str) -> str:
        """The finish reason in this dialect's words; other strings are sent as given."""
        return self.finish_names.get(neutral, neutral)

    def check(self, raw: Mapping[str, object]) -> None:
        """Reject script keys this dialect cannot honour."""
        if given := sorted(key for key in self.unsupported if key in raw):
            names = ", ".join(given)
            raise ScriptError(f"bad mock script: {names} not supported by the {self.name} dialect")


def sse(payload: bytes, event: str | None = None) -> bytes:
    """One SSE event: an optional `event:` line, the `data:` line and the blank line."""
    head = b"event: " + event.encode() + b"\n" if event is not None else b""
    return head + b"data: " + payload + b"\n\n"


def sse_raw(data: str, event: str | None = None) -> bytes:
    """A raw `events` entry, written verbatim."""
    return sse(data.encode(), event)


def dumps(value: object) -> bytes:
    """Compact JSON (orjson), the encoding of every generated payload."""
    return orjson.dumps(value)


def answer_for(dialect: Dialect, script: Script, info: RequestInfo) -> Answer:
    """The answer in this dialect: limit applied, finish named, surrogates split if asked."""
    chunks, tool_calls, finish = resolve_answer(
        script,
        dialect.conversation(info.body),
        dialect.token_limit(info.body),
        default_words=info.default_words,
    )
    pieces = split_surrogate_pairs(chunks) if script.split_surrogates else chunks
    return Answer(pieces, tool_calls, dialect.finish(finish), len(chunks))


def tool_steps(
    calls: tuple[ToolCallScript, ...], args_chunk: int, *, interleave: bool = False
) -> list[ToolStep]:
    """The tool-call steps in wire order: each call opened then its argument fragments.

    Interleaved: every call is opened first, then the fragments alternate between calls
    (call 0 fragment 0, call 1 fragment 0, call 0 fragment 1, ...).
    """
    fragments = [
        [c.arguments[i : i + args_chunk] for i in range(0, len(c.arguments), args_chunk)]
        for c in calls
    ]
    if not interleave:
        return [
            step
            for index, call in enumerate(calls)
            for step in [
                ToolStep(index, call, None),
                *(ToolStep(index, call, piece) for piece in fragments[index]),
            ]
        ]
    steps = [ToolStep(index, call, None) for index, call in enumerate(calls)]
    for row in range(max((len(f) for f in fragments), default=0)):
        steps += [
            ToolStep(index, call, fragments[index][row])
            for index, call in enumerate(calls)
            if row < len(fragments[index])
        ]
    return steps


def object_arguments(call: ToolCallScript) -> dict[str, Any]:
    """A tool call's arguments as a JSON object (`""` is `{}`), for whole-call dialects."""
    try:
        value = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ScriptError(f"bad mock script: tool call {call.name!r} needs object arguments here")
    return value


def plan_stream(dialect: Dialect, script: Script, info: RequestInfo) -> Plan:
    """Every byte string of a streamed answer with its due time, faults applied."""
    if script.events is not None:
        data = [dialect.raw_event(entry) for entry in script.events]
        times = [_due(i, script) for i in range(len(data))]
        planned = [PlannedEvent(t, d) for t, d in zip(times, data, strict=True)]
        end = times[-1] if times else _due(0, script)
        return Plan(planned + [PlannedEvent(end, d) for d in dialect.raw_tail(script)])
    events = dialect.render(answer_for(dialect, script, info), script, info)
    if script.pad_line is not None:
        events = _pad_first_content(events, script.pad_line)
    planned = [
        PlannedEvent(t, e.data) for t, e in zip(_schedule(events, script), events, strict=True)
    ]
    if script.stall_after is not None and script.stall_ms is not None:
        cut = _cut(events, script.stall_after, "stall_after")
        stall = script.stall_ms / 1000
        planned[cut:] = [PlannedEvent(p.at_s + stall, p.data) for p in planned[cut:]]
    if script.error_after is not None:
        cut = _cut(events, script.error_after, "error_after")
        error_type = script.error_type or dialect.default_error_type
        error = dialect.stream_error(info, error_type, cut)
        return Plan([*planned[:cut], PlannedEvent(_at(planned, cut), error)])
    if script.truncate_after is not None:
        cut = _cut(events, script.truncate_after, "truncate_after")
        return Plan(planned[:cut], close_at=_at(planned, cut))
    return Plan(planned)


def complete_body(dialect: Dialect, script: Script, info: RequestInfo) -> bytes:
    """The non-streaming JSON answer to a script."""
    return dialect.complete(answer_for(dialect, script, info), info)


def status_body(dialect: Dialect, script: Script, status: int) -> bytes:
    """The error body of a scripted HTTP status (`error_type` overrides the type)."""
    kind, code = dialect.status_kind(status)
    message = f"mock: scripted HTTP {status}"
    return dialect.error_body(message, kind=script.error_type or kind, code=code)


def json_error_body(dialect: Dialect, script: Script) -> bytes:
    """The error body a `json_error` script sends with HTTP 200."""
    kind = script.error_type or dialect.default_error_type
    return dialect.error_body(JSON_ERROR_MESSAGE, kind=kind)


def _due(index: int, script: Script) -> float:
    rate = script.tokens_per_s
    return script.ttft_ms / 1000 + (index / rate if rate > 0 else 0.0)


def _schedule(events: list[Event], script: Script) -> list[float]:
    """Due times: paced events by number; the others with the paced event before them."""
    times: list[float] = []
    paced = 0
    last: float | None = None
    for event in events:
        if event.kind in _PACED:
            last = _due(paced, script)
            paced += 1
        times.append(last if last is not None else _due(0, script))
    return times


def _cut(events: list[Event], count: int, key: str) -> int:
    """The index right after the `count`-th content event (after the head for 0)."""
    if count == 0:
        return next((i for i, e in enumerate(events) if e.kind is not Kind.HEAD), len(events))
    seen = 0
    for index, event in enumerate(events):
        if event.kind is Kind.CONTENT:
            seen += 1
            if seen == count:
                return index + 1
    raise ScriptError(f"bad mock script: {key} {count} exceeds the {seen} content events")


def _at(planned: list[PlannedEvent], index: int) -> float:
    return planned[min(index, len(planned) - 1)].at_s if planned else 0.0


def _pad_first_content(events: list[Event], width: int) -> list[Event]:
    """Pad the first content event's JSON line to `width` bytes with a `mock_padding` field."""
    index = next((i for i, e in enumerate(events) if e.kind is Kind.CONTENT), None)
    if index is None:
        raise ScriptError("bad mock script: pad_line needs a content event")
    data = events[index].data
    close = data.rindex(b"}")
    line_start = data.rfind(b"\n", 0, close) + 1
    length = data.index(b"\n", close) - line_start
    if length >= width:
        return events
    fill = max(0, width - length - len(_PADDING) - 1)
    padded = data[:close] + _PADDING + b"x" * fill + b'"' + data[close:]
    return [*events[:index], Event(Kind.CONTENT, padded), *events[index + 1 :]]
