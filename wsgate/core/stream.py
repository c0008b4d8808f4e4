"""One stream's core: upstream bytes in, numbered wsgate frames out.

Owns the per-stream `seq` counter (gapless over durable frames, from 1), the stream's state
machine, the translation of provider-neutral events into frames, and the telemetry figures.
It never reads the clock: every call that needs time takes `now` (seconds, monotonic).
It does not queue or send anything; the session and the shells do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from wsgate.core import events as ev
from wsgate.core.agent import Accepted, LoopFails, Refused, ToolCall, ToolLoop, TurnEnded
from wsgate.core.errors import (
    AgentLoopFailed,
    ProtocolError,
    StreamTimeout,
    ToolTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    WsgateError,
)
from wsgate.core.frames import (
    ChatRequest,
    DeltaReasoning,
    DeltaRole,
    DeltaText,
    ErrorFrame,
    FinishFrame,
    FinishReason,
    FrameEncodeError,
    ServerFrame,
    StartOptions,
    StreamStarted,
    StructuredError,
    StructuredFrame,
    Telemetry,
    ToolAwaiting,
    ToolCallArgumentsChunk,
    ToolCallEndFrame,
    ToolCallError,
    ToolCallSnapshot,
    ToolCallStartFrame,
    ToolError,
    ToolExecuting,
    ToolResultFrame,
    TurnStarted,
    UsageFrame,
    encode_frame,
)
from wsgate.core.state import Event, State, transition
from wsgate.core.structured import UNCLOSED, Section
from wsgate.core.textpipe import TextPiece, TextPipeline

ORDERED_AFTER_TEXT = (
    ev.ToolCallStart,
    ev.ToolCallChunk,
    ev.ToolCallSnapshot,
    ev.ToolCallEnd,
    ev.ToolCallFailed,
    ev.Usage,
)
PROVIDER_FAILED = "the provider ended the turn with an error"
UNRELAYABLE = "the provider sent a value nested too deeply to relay"

TIMEOUT_CODES = frozenset({"upstream_timeout", "stream_timeout", "tool_timeout"})
"""Error codes whose stream ends with finish reason `timeout` rather than `error`."""


ParseItem = ev.UpstreamEvent | WsgateError
"""What a parser returns: events, possibly ended by the error that ended the stream."""


class UpstreamParser(Protocol):
    """Decodes one provider's byte stream into provider-neutral events.

    A failure is returned as the last item, after the events decoded before it; a parser
    may also raise `WsgateError` (then the events of that call are lost).
    """

    def feed(self, data: bytes) -> list[ParseItem]:
        """Consume bytes; return the events they complete."""

    def eof(self) -> list[ParseItem]:
        """The provider closed the stream; a cut-short stream ends with an error item."""


@dataclass(frozen=True, slots=True)
class TurnChange:
    """The agent loop moved (core/agent.py): a turn ended in calls, or the next one is ready.

    `run`: the turn's calls the gateway runs now (server-side tools). `request`: every call
    has its result; the next model turn is this request, read with the stream's new parser.
    """

    run: tuple[ToolCall, ...] = ()
    request: ChatRequest | None = None


@dataclass(slots=True)
class StreamOutput:
    """What one call into a stream produced: frames and their encodings, in order.

    The stream encodes every frame as it emits it, so a frame that cannot be encoded
    fails the stream here (with `seq` intact) instead of vanishing in a shell.
    """

    frames: list[ServerFrame] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    telemetry: Telemetry | None = None
    closed: bool = False
    deadline: float | None = None  # call `poll` then: buffered text waits on time
    retry: WsgateError | None = None  # a transient failure before the first token (below)
    turn: TurnChange | None = None  # the agent loop ended a turn or readied the next

    def add(self, frame: ServerFrame) -> None:
        """Append a frame and its encoding; raises `FrameEncodeError` (nothing appended)."""
        encoded = encode_frame(frame)
        self.frames.append(frame)
        self.data.append(encoded)

    def extend(self, other: StreamOutput) -> None:
        """Append another output's frames."""
        self.frames.extend(other.frames)
        self.data.extend(other.data)
        self.closed = self.closed or other.closed


class Stream:
    """The core of one generation stream on a connection."""

    def __init__(  # noqa: PLR0913, PLR0917 - the stream's identity and policy, all required
        self,
        stream_id: str,
        message_id: str,
        model: str,
        options: StartOptions,
        parser: UpstreamParser,
        now: float,
        telemetry_interval: float = 0.5,
        first_token_timeout: float = math.inf,
        max_duration: float = math.inf,
        epoch: str | None = None,
        loop: ToolLoop | None = None,
        new_parser: Callable[[], UpstreamParser] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.message_id = message_id
        self.model = model
        self.epoch = epoch  # set when the stream is logged for resume
        self.options = options
        self.state = State.NEW
        self.finish_reason: FinishReason | None = None
        self._parser = parser
        self._seq = 0
        self._started_at = now
        self._first_token_at: float | None = None
        self._tokens = 0
        self._telemetry_interval = telemetry_interval
        self._last_telemetry = now
        self._text = TextPipeline(options)
        self._committed = False  # something beyond `stream.started`/`delta.role` was produced
        self._role_sent = False
        self._first_token_timeout = first_token_timeout
        self._max_duration = max_duration
        # The agent loop (None: one turn). Per turn: when it began, whether it had content.
        self.loop = loop
        self._new_parser = new_parser
        self._turn_began = now
        self._turn_content = False
        self._awaiting_since = 0.0  # when the last turn ended in calls

    @property
    def closed(self) -> bool:
        """True once `finish` has been produced."""
        return self.state is State.CLOSED

    @property
    def awaiting_tools(self) -> bool:
        """A turn ended in tool calls the agent loop answers; the next turn waits for them."""
        return self.state is State.AWAITING_TOOLS

    @property
    def last_seq(self) -> int:
        """The `seq` of the last frame produced (0 before `stream.started`)."""
        return self._seq

    def start(self) -> StreamOutput:
        """Produce `stream.started`."""
        self._apply(Event.START)
        out = StreamOutput()
        out.add(
            StreamStarted(self.stream_id, self._next(), self.message_id, self.model, self.epoch)
        )
        return out

    def feed(self, data: bytes, now: float) -> StreamOutput:
        """Consume upstream bytes; a parse failure ends the stream with `error` + `finish`."""
        if self.closed:
            return StreamOutput(closed=True)
        if self.state is State.AWAITING_TOOLS:
            return StreamOutput()  # the ended turn's call, read past its finish: dropped
        try:
            events: list[ParseItem] = self._parser.feed(data)
        except WsgateError as exc:
            events = [exc]
        return self._translate(events, now)

    def eof(self, now: float) -> StreamOutput:
        """The upstream response ended; a cut-short stream fails, it is never `stop`."""
        if self.closed:
            return StreamOutput(closed=True)
        if self.state is State.AWAITING_TOOLS:
            return StreamOutput()
        try:
            events: list[ParseItem] = self._parser.eof()
        except WsgateError as exc:
            events = [exc]
        out = self._translate(events, now)
        if not (self.closed or self.awaiting_tools) and out.retry is None:
            out.extend(self.fail(UpstreamProtocolError("upstream stream ended before it finished")))
        return out

    def fail(self, error: WsgateError) -> StreamOutput:
        """End the stream with a typed `error` then `finish` (reason `error` or `timeout`)."""
        if transition(self.state, Event.FAIL) is None:
            return StreamOutput(closed=True)
        out = self._drain_text()
        out.add(self._error_frame(error))
        reason: FinishReason = "timeout" if error.code in TIMEOUT_CODES else "error"
        out.add(self._finish(Event.FAIL, reason))
        out.closed = True
        return out

    def cancel(self, error: WsgateError | None = None) -> StreamOutput:
        """End the stream with `finish` reason `cancelled` (idempotent).

        With `error` (a shutdown, a time limit), a typed `error` frame explains the cancel.
        """
        if transition(self.state, Event.CANCEL) is None:
            return StreamOutput(closed=True)
        out = self._drain_text()  # what the provider said before the cancel is not lost
        if error is not None:
            out.add(self._error_frame(error))
        out.add(self._finish(Event.CANCEL, "cancelled"))
        out.closed = True
        return out

    def poll(self, now: float) -> StreamOutput:
        """Text whose buffering deadline has come (the shell calls at `deadline`)."""
        out = StreamOutput()
        if not self.closed:
            self._add_all(out, self._text_frames(self._text.poll(now)))
            out.deadline = self._text.deadline()
        return out

    @property
    def may_retry(self) -> bool:
        """True while a new provider call cannot duplicate anything the client has seen.

        Only `stream.started` and `delta.role` were produced: no text (held or sent), no
        reasoning, tool call or usage. A retry's `delta.role` is dropped.
        """
        return not self._committed and not self.closed

    def restart(self, parser: UpstreamParser) -> None:
        """Read a new provider call with `parser` (the previous one failed transiently)."""
        if not self.may_retry:
            raise ProtocolError("a stream that produced content cannot be retried")
        self._parser = parser

    @property
    def tokens(self) -> int:
        """Text deltas produced so far."""
        return self._tokens

    def deadline(self) -> float:
        """When this stream times out unless it produces content (or ends) first.

        The first-token deadline until a text or tool-call delta arrived, and the maximum
        duration throughout; the shell arms one timer per connection for its streams'
        earliest deadline and calls `Session.expire` when it fires.
        """
        end = self._started_at + self._max_duration
        tools = self._tools_deadline()
        if tools is not None:
            return min(end, tools)
        if self._turn_content or self.state is State.AWAITING_TOOLS:
            return end
        return min(end, self._turn_began + self._first_token_timeout)

    def first_token_left(self, now: float) -> float | None:
        """Seconds until the turn's first-token deadline; None once content arrived."""
        if self._turn_content or self.state is State.AWAITING_TOOLS:
            return None
        return self._turn_began + self._first_token_timeout - now

    def _tools_deadline(self) -> float | None:
        """When the client's results for the ended turn are due, while some are awaited."""
        loop = self.loop
        if self.state is not State.AWAITING_TOOLS or loop is None or not loop.awaiting_client:
            return None
        return self._awaiting_since + loop.policy.result_timeout

    def timed_out(self, now: float) -> WsgateError | None:
        """The error that ends this stream at `now`, if one of its deadlines has passed."""
        if now >= self._started_at + self._max_duration:
            return StreamTimeout(f"the stream ran longer than {self._max_duration:g} s")
        tools = self._tools_deadline()
        if tools is not None and now >= tools:
            return ToolTimeout("the client's tool results did not come in time")
        left = self.first_token_left(now)
        if left is not None and left <= 0:
            return UpstreamTimeout(
                f"no token within {self._first_token_timeout:g} s of the request"
            )
        return None

    @property
    def has_content(self) -> bool:
        """True once a text or tool-call delta arrived (a role alone is not a token)."""
        return self._first_token_at is not None

    def _error_frame(self, error: WsgateError) -> ErrorFrame:
        return ErrorFrame(
            code=error.code,
            message=error.public_message,
            retryable=error.retryable,
            stream_id=self.stream_id,
            seq=self._next(),
            retry_after_ms=error.retry_after_ms,
        )

    def _translate(self, events: list[ParseItem], now: float) -> StreamOutput:
        out = StreamOutput()
        for event in events:
            if self.state is State.CLOSED:
                break
            if type(event) is ev.TextDelta:  # the token path first
                going = self._text_delta(out, event.text, now)
            else:
                going = self._event(out, event, now)
            if not going:
                break
        out.closed = closed = self.state is State.CLOSED
        if not closed:
            out.deadline = self._text.deadline()
            if self.options.telemetry and self._tokens:
                out.telemetry = self._telemetry(now)
        return out

    def _event(self, out: StreamOutput, event: ParseItem, now: float) -> bool:
        """Any event but a text delta; False when the stream ended or failed."""
        if isinstance(event, WsgateError | ev.Finish):
            self._end(event, out, now)
            return False
        if isinstance(event, ev.RoleDelta):
            if self._role_sent:
                return True  # a retried call (or a chatty provider) announces it again
            self._role_sent = True
        else:
            self._committed = True
        self._apply(Event.CONTENT)
        return self._add_all(out, self._frames_for(event, now))

    def _text_delta(self, out: StreamOutput, text: str, now: float) -> bool:
        """The token path, once per provider token; False when the stream failed.

        The only place text deltas are handled, without `_event`'s type dispatch: the text
        pipeline nearly always returns one string, which becomes one `delta.text` directly
        (text never fails to encode); anything else goes through `_add_all`.
        """
        self._committed = True
        if self.state is not State.STREAMING:
            self._apply(Event.CONTENT)
        if not self._turn_content:
            self._content_began(now)
        if self.loop is not None:
            self.loop.text(text)
        self._tokens += 1
        pieces = self._text.push(text, now)
        if len(pieces) == 1 and type(piece := pieces[0]) is str:
            self._seq += 1
            frame = DeltaText(self.stream_id, self._seq, piece)
            out.frames.append(frame)
            out.data.append(encode_frame(frame))
            return True
        return self._add_all(out, self._text_frames(pieces))

    def _content_began(self, now: float) -> None:
        """The turn's first text or tool-call delta (the stream's first one: its TTFT)."""
        self._turn_content = True
        if self._first_token_at is None:
            self._first_token_at = now

    def _end(self, event: WsgateError | ev.Finish, out: StreamOutput, now: float) -> None:
        """The provider's turn ended: a finish, a failure, or a failure worth a retry."""
        if isinstance(event, WsgateError):
            if event.transient and not self._committed:
                out.retry = event  # the shell retries the call (`restart`) or `fail`s
            else:
                out.extend(self.fail(event))
        elif event.reason == "error":
            # Every `finish: error` is explained by an `error` frame before it.
            out.extend(self.fail(UpstreamError(PROVIDER_FAILED)))
        else:
            looping = self.loop is not None and event.reason in {"tool_calls", "stop"}
            if looping and self._end_turn(out, now):
                return
            out.extend(self._flush_text())
            out.add(self._finish(Event.FINISH, event.reason))

    def _end_turn(self, out: StreamOutput, now: float) -> bool:
        """The agent loop's verdict on a finished turn; False: the stream finishes as usual."""
        loop = self.loop
        assert loop is not None  # noqa: S101 - only called with a loop
        outcome = loop.end_turn()
        if isinstance(outcome, LoopFails):
            out.extend(self.fail(AgentLoopFailed(outcome.code, outcome.message)))
            return True
        if not isinstance(outcome, TurnEnded):
            return False
        structured = self.options.structured
        if structured is not None and structured.mode == "final_json":
            out.extend(self._drain_text())  # only the last turn's answer is the JSON
        else:
            out.extend(self._flush_text())  # this turn's sections close (or are unclosed)
        sid = self.stream_id
        self._apply(Event.TOOLS)
        self._awaiting_since = now
        self._text = TextPipeline(self.options)  # each turn's text is split on its own
        for call in outcome.run:
            out.add(ToolExecuting(sid, self._next(), call.call_id, call.name))
        if outcome.awaiting:
            timeout_ms = round(loop.policy.result_timeout * 1000)
            out.add(
                ToolAwaiting(sid, self._next(), outcome.turn, list(outcome.awaiting), timeout_ms)
            )
        out.turn = TurnChange(run=outcome.run)
        return True

    def tool_result(
        self, call_id: str, content: Any, error: ToolError | None, *, client: bool, now: float
    ) -> StreamOutput | Refused:
        """A call's result (`client`: from a `tool_result` frame; else a server tool's).

        Taken: its `tool.result` frame, and once the turn's calls all have one, the next
        turn's `turn.started` and request (`out.turn`). Refused: nothing changes.
        """
        loop = self.loop
        if loop is None or self.closed:
            return Refused("unknown_tool_call", "this stream awaits no tool results")
        verdict = loop.accept(call_id, content, error, client=client)
        if isinstance(verdict, Refused):
            return verdict
        assert isinstance(verdict, Accepted)  # noqa: S101 - the two outcomes
        out = StreamOutput()
        call = verdict.call
        result = ToolResultFrame(
            self.stream_id, self._next(), call_id, call.name, "client" if client else "server"
        )
        if error is not None:
            result.error = error
        else:
            result.content = content
        out.add(result)
        if verdict.request is not None:
            self._apply(Event.NEXT_TURN)
            self._turn_began = now
            self._turn_content = self._committed = False
            if self._new_parser is not None:
                self._parser = self._new_parser()
            out.add(TurnStarted(self.stream_id, self._next(), loop.turn))
            out.turn = TurnChange(request=verdict.request)
        return out

    def _add_all(self, out: StreamOutput, frames: list[ServerFrame]) -> bool:
        """Add frames; a frame that cannot be encoded fails the stream (False)."""
        for frame in frames:
            try:
                data = encode_frame(frame)  # `out.add`, inline: this runs once per token
            except FrameEncodeError:
                # Neither this frame nor those after it were emitted: their seqs are free.
                self._seq = getattr(frame, "seq", self._seq) - 1
                out.extend(self.fail(UpstreamProtocolError(UNRELAYABLE)))
                return False
            out.frames.append(frame)
            out.data.append(data)
        return True

    def _flush_text(self) -> StreamOutput:
        """The turn completed: every held piece, sections closed (or reported unclosed)."""
        out = StreamOutput()
        self._add_all(out, self._text_frames(self._text.flush()))
        return out

    def _drain_text(self) -> StreamOutput:
        """The stream fails or is cancelled: held text goes out, partial sections do not."""
        out = StreamOutput()
        self._add_all(out, self._text_frames(self._text.drain()))
        return out

    def _text_frames(self, pieces: list[TextPiece]) -> list[ServerFrame]:
        sid = self.stream_id
        frames: list[ServerFrame] = []
        for piece in pieces:
            if isinstance(piece, str):
                frames.append(DeltaText(sid, self._next(), piece))
            elif isinstance(piece, Section):
                frames.append(StructuredFrame(sid, self._next(), piece.value))
            else:
                code = "structured_unclosed" if piece.reason == UNCLOSED else "structured_invalid"
                frames.append(StructuredError(sid, self._next(), code, piece.reason, piece.raw))
        return frames

    def _frames_for(self, event: ev.UpstreamEvent, now: float) -> list[ServerFrame]:
        # Text deltas never come here: `_translate` sends them down `_text_delta`.
        sid = self.stream_id
        if isinstance(event, ev.RoleDelta):
            return [DeltaRole(sid, self._next(), event.role)]
        if isinstance(event, ORDERED_AFTER_TEXT):
            if isinstance(event, ev.ToolCallStart) and not self._turn_content:
                self._content_began(now)  # a tool call is the answer's first token too
            loop = self.loop
            if loop is not None and not isinstance(event, ev.Usage):
                shown = loop.call_id(event.call_id)
                if shown != event.call_id:
                    event = dataclasses.replace(event, call_id=shown)
                if isinstance(event, ev.ToolCallEnd):
                    loop.call_ended(event.call_id, event.name, event.arguments)
                elif isinstance(event, ev.ToolCallFailed):
                    loop.call_failed()
            # Held text was written before this frame: it leaves first, order is kept.
            return [*self._text_frames(self._text.drain()), *self._content_frames(event)]
        return self._content_frames(event)

    def _content_frames(self, event: ev.UpstreamEvent) -> list[ServerFrame]:  # noqa: PLR0911 - a dispatch over event types
        sid = self.stream_id
        options = self.options
        if isinstance(event, ev.ReasoningDelta):
            return [DeltaReasoning(sid, self._next(), event.text)] if options.reasoning else []
        if isinstance(event, ev.ToolCallStart):
            return [ToolCallStartFrame(sid, self._next(), event.call_id, event.index, event.name)]
        if isinstance(event, ev.ToolCallChunk):
            if not options.tool_arguments:
                return []
            return [ToolCallArgumentsChunk(sid, self._next(), event.call_id, event.chunk)]
        if isinstance(event, ev.ToolCallSnapshot):
            if not options.tool_snapshots:
                return []
            return [ToolCallSnapshot(sid, self._next(), event.call_id, event.partial)]
        if isinstance(event, ev.ToolCallEnd):
            return [ToolCallEndFrame(sid, self._next(), event.call_id, event.name, event.arguments)]
        if isinstance(event, ev.ToolCallFailed):
            return [
                ToolCallError(
                    sid,
                    self._next(),
                    event.call_id,
                    "tool_arguments_invalid",
                    event.reason,
                    event.raw,
                    event.name,
                )
            ]
        if isinstance(event, ev.Usage):
            return [UsageFrame(sid, self._next(), event.input_tokens, event.output_tokens)]
        raise TypeError(f"unhandled upstream event {type(event).__name__}")  # pragma: no cover

    def _telemetry(self, now: float) -> Telemetry | None:
        if now - self._last_telemetry < self._telemetry_interval:
            return None
        self._last_telemetry = now
        first = self._first_token_at
        ttft_ms = None if first is None else round((first - self._started_at) * 1000, 3)
        elapsed = 0.0 if first is None else now - first
        rate = self._tokens / elapsed if elapsed > 0 else 0.0
        return Telemetry(self.stream_id, self._tokens, round(rate, 3), ttft_ms)

    def _finish(self, event: Event, reason: FinishReason) -> FinishFrame:
        self._apply(event)
        self.finish_reason = reason
        return FinishFrame(self.stream_id, self._next(), reason)

    def _apply(self, event: Event) -> None:
        if self.state is State.STREAMING and event is Event.CONTENT:
            # `TRANSITIONS` keeps a streaming stream streaming on content: skip the lookup,
            # which runs for every frame and hashes two enums (a Python-level `__hash__`).
            return
        new = transition(self.state, event)
        if new is not None:
            self.state = new

    def _next(self) -> int:
        self._seq += 1
        return self._seq
