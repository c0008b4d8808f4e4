"""OpenAI chat-completions stream translator: decoded SSE events in, provider-neutral events out.

Owns the meaning of OpenAI's (and OpenAI-compatible servers') `chat.completion.chunk`
stream: role, text, refusals, parallel tool calls, usage, the finish reason, `[DONE]` and
in-stream error payloads. It does no I/O and does not decode SSE (see `wsgate.core.sse`).

Rules:
1. Only choice 0 is translated (chunks of other choices, when `n` > 1, are skipped); only
   SSE events named `message` are read; events after the end are ignored.
2. Text and refusal text are both `TextDelta` (a refusal is what the user reads instead of
   an answer), passed through one `SurrogateJoiner` so a pair split across chunks is joined
   and no lone surrogate escapes.
3. Tool-call fragments go to one `ToolCallAccumulator` (see `wsgate.core.toolcalls` for its
   rules: keyed by index, else id, else the latest call; start once the name is known; end
   exactly once, in index order, when the finish reason arrives or at the end). Arguments
   that never parse become `ToolCallFailed` with the raw text, never a silent `{}`.
   Reasoning deltas (`reasoning_content`, as vLLM and DeepSeek send it, or `reasoning`) are
   `ReasoningDelta`, kept apart from the text.
4. Order at the end: text, tool-call ends, usage, finish. Usage of a chunk with no choices is
   emitted at once; usage riding on a chunk with choices is kept and emitted before the
   finish if none was emitted.
5. Finish reasons: stop, length, tool_calls (and the legacy function_call), content_filter,
   plus the aliases of common compatible servers in `_REASONS`. A reason we do not know is
   reported as "error", never as a clean "stop"; `raw_finish_reason` keeps the provider's
   word for the logs. No reason at all before `[DONE]` counts as "tool_calls" when calls were
   made, else "stop" (the provider said it was done). A stream that ends with neither a
   reason nor `[DONE]` is truncated: `UpstreamProtocolError`, never a finish.
6. An `{"error": ...}` payload raises `UpstreamError` (`UpstreamRateLimited` for rate-limit
   codes) whose message names only the provider's `type`/`code` when they are short
   identifiers: provider text never reaches the wire.
7. Two readings, one meaning. A chunk is one token, so its reading is the hot path: a chunk
   that carries only role, text, reasoning and a finish reason (`_TextChunk`) is decoded
   by msgspec into typed structs, skipping the fields nobody reads (id, model, logprobs,
   ...) at half the cost of building their dict. Any other chunk, or any value of an
   unexpected type, fails that decoding and is read as a dict, which applies every rule
   above; both readings feed the same methods, so they cannot disagree. The price: a
   chunk with usage, an error or a tool call pays for one failed typed decoding first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec

from wsgate.core.errors import BadRequest, UpstreamProtocolError
from wsgate.core.events import (
    Finish,
    FinishReason,
    RoleDelta,
    UpstreamEvent,
    Usage,
)
from wsgate.core.frames import ChatRequest
from wsgate.core.payloads import DeltaText, error_from, json_object, string, tool_events
from wsgate.core.providers.base import ProviderHTTP, ProviderKind, translating
from wsgate.core.requests import merge_extra_body, output_cap
from wsgate.core.sse import SSEDecoder
from wsgate.core.toolcalls import (
    ToolCallAccumulator,
    ToolCallFragment,
)

if TYPE_CHECKING:
    from wsgate.core.sse import SSEEvent

_REASONS: Final[dict[str, FinishReason]] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    # Aliases seen from OpenAI-compatible servers (vLLM, TGI, proxies of other APIs).
    "eos": "stop",
    "eos_token": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_length": "length",
    "tool_use": "tool_calls",
}


# The chunks of answer text, typed (rule 7). Fields typed `None` admit only null: a chunk
# with usage, an error or tool calls fails this decoding and is read as a dict. Decoded
# JSON holds no reference cycles, hence `gc=False`.


class _TextDelta(msgspec.Struct, gc=False):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: None = None


class _TextChoice(msgspec.Struct, gc=False):
    index: int | None = 0
    delta: _TextDelta | None = None
    finish_reason: str | None = None


class _TextChunk(msgspec.Struct, gc=False):
    choices: list[_TextChoice] | None = None
    usage: None = None
    error: None = None


_text_chunk = msgspec.json.Decoder(_TextChunk)


class OpenAIChatTranslator:
    """Feed the SSE events of one OpenAI chat-completions stream; collect upstream events."""

    __slots__ = (
        "_delta",
        "_done",
        "_pending_usage",
        "_reason",
        "_role_sent",
        "_tools",
        "_usage_sent",
    )

    def __init__(self, *, tool_snapshots: bool = False) -> None:
        self._done = False
        self._role_sent = False
        self._usage_sent = False
        self._pending_usage: Usage | None = None
        self._reason: str | None = None
        self._delta = DeltaText()
        self._tools = ToolCallAccumulator(snapshots=tool_snapshots)

    @property
    def done(self) -> bool:
        """True once the stream ended (`[DONE]`, `finish()`, or an error payload)."""
        return self._done

    @property
    def raw_finish_reason(self) -> str | None:
        """The provider's own finish reason, before normalization (for logs)."""
        return self._reason

    def feed(self, event: SSEEvent) -> list[UpstreamEvent]:
        """Translate one SSE event."""
        if self._done or event.event != "message":
            return []
        data = event.data
        if data.strip() == "[DONE]":
            return self._end()
        try:
            text_chunk = _text_chunk.decode(data)
        except (msgspec.MsgspecError, ValueError, RecursionError):
            return self._chunk(json_object(data))
        out: list[UpstreamEvent] = []
        for choice in text_chunk.choices or ():
            if choice.index in (0, None):
                delta = choice.delta
                if delta is not None:
                    self._texts(
                        delta.role,
                        delta.content,
                        delta.refusal,
                        delta.reasoning_content,
                        delta.reasoning,
                        out,
                    )
                self._reason_seen(choice.finish_reason, out)
        return out

    def _chunk(self, chunk: dict[str, Any]) -> list[UpstreamEvent]:
        """Any chunk, read as a dict (rule 7)."""
        if chunk.get("error"):
            self._done = True
            raise error_from(chunk["error"])
        out: list[UpstreamEvent] = []
        choices = chunk.get("choices")
        if choices:
            if not isinstance(choices, list):
                raise UpstreamProtocolError("upstream chunk has malformed choices")
            for choice in choices:
                if isinstance(choice, dict) and choice.get("index", 0) in (0, None):
                    self._choice(choice, out)
        usage = chunk.get("usage")
        if isinstance(usage, dict) and not self._usage_sent:
            self._usage(_usage(usage), bool(choices), out)
        return out

    def finish(self) -> list[UpstreamEvent]:
        """End the turn at the end of the upstream body; raise if it was cut short."""
        if self._done:
            return []
        if self._reason is None:
            self._done = True
            raise UpstreamProtocolError("upstream stream ended before it finished")
        return self._end()

    def _choice(self, choice: dict[str, Any], out: list[UpstreamEvent]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            self._texts(
                delta.get("role"),
                delta.get("content"),
                delta.get("refusal"),
                delta.get("reasoning_content"),
                delta.get("reasoning"),
                out,
            )
            fragments = delta.get("tool_calls")
            if fragments:
                if not isinstance(fragments, list):
                    raise UpstreamProtocolError("upstream chunk has malformed tool_calls")
                for fragment in fragments:
                    self._fragment(fragment, out)
        self._reason_seen(choice.get("finish_reason"), out)

    def _texts(  # noqa: PLR0913, PLR0917 - a delta's text fields, from either reading
        self,
        role: Any,
        content: Any,
        refusal: Any,
        reasoning_content: Any,
        reasoning: Any,
        out: list[UpstreamEvent],
    ) -> None:
        if role and not self._role_sent:
            self._role_sent = True
            out.append(RoleDelta(string(role)))
        for value in (content, refusal):
            if value:
                self._delta.text(string(value), out)
        for value in (reasoning_content, reasoning):
            if value and isinstance(value, str):
                self._delta.reasoning(value, out)
                break  # servers that send both carry the same text twice

    def _reason_seen(self, reason: Any, out: list[UpstreamEvent]) -> None:
        if reason is not None and self._reason is None:
            self._reason = string(reason)
            self._close(out)

    def _usage(self, usage: Usage, with_choices: bool, out: list[UpstreamEvent]) -> None:
        if with_choices:
            self._pending_usage = usage  # the latest wins; emitted before the finish
        else:
            self._usage_sent = True
            out.append(usage)

    def _fragment(self, fragment: Any, out: list[UpstreamEvent]) -> None:
        if not isinstance(fragment, dict):
            raise UpstreamProtocolError("upstream chunk has malformed tool_calls")
        index = fragment.get("index")
        call_id = fragment.get("id")
        function = fragment.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        arguments = function.get("arguments")
        piece = ToolCallFragment(
            index=index if isinstance(index, int) and not isinstance(index, bool) else None,
            call_id=string(call_id) if call_id else None,
            name=string(name) if name else None,
            arguments=string(arguments) if arguments else "",
        )
        out.extend(tool_events(self._tools.feed(piece)))

    def _close(self, out: list[UpstreamEvent]) -> None:
        """Flush held text, then end every open tool call in index order."""
        self._delta.flush_text(out)
        self._delta.flush_reasoning(out)
        out.extend(tool_events(self._tools.finish()))

    def _end(self) -> list[UpstreamEvent]:
        out: list[UpstreamEvent] = []
        self._close(out)
        if self._pending_usage is not None and not self._usage_sent:
            self._usage_sent = True
            out.append(self._pending_usage)
        self._done = True
        out.append(Finish(self._finish_reason()))
        return out

    def _finish_reason(self) -> FinishReason:
        if self._reason is None:
            return "tool_calls" if self._tools.has_calls else "stop"
        return _REASONS.get(self._reason, "error")


def _usage(usage: dict[str, Any]) -> Usage:
    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return Usage(count("prompt_tokens"), count("completion_tokens"))


def openai_chat_body(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The chat-completions body: the client's request, streamed, with usage requested."""
    if request.thinking is not None:
        raise BadRequest("thinking: not supported by OpenAI chat (use reasoning_effort)")
    output_cap(request)  # one of max_tokens and max_completion_tokens, sent as given
    body: dict[str, Any] = msgspec.to_builtins(request)
    body.pop("extra_body", None)
    body["model"] = upstream_model
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return merge_extra_body(request, body)


KIND = ProviderKind(
    "openai_chat",
    http=ProviderHTTP("/chat/completions", "text/event-stream"),
    body=openai_chat_body,
    parser=translating(SSEDecoder, OpenAIChatTranslator),
)
"""OpenAI chat completions, and every OpenAI-compatible server: SSE."""
