r"""Tool-call accumulation: provider fragments in, one start and exactly one end per call out.

Owns the assembly of streamed tool calls for every provider (OpenAI chat and compatible
servers, Anthropic `tool_use` blocks): which call a fragment belongs to, when a call starts,
its argument chunks, optional partial-JSON snapshots, and its single end: parsed arguments
or a typed failure carrying the raw text. It does no I/O and knows no wire format; a
translator turns provider chunks into `ToolCallFragment`s and the outputs into events.

Rules:
1. Which call a fragment belongs to: with an `index`, the call last opened at that index,
   unless both carry an id and the ids differ (some compatible servers send index 0 for
   every call): then a new call. Without an index: the call with that `call_id`, else a new
   call. With neither: the call the previous fragment went to, else a new call.
2. A call's reported `index` is the provider's index when no other call has it yet, else
   one past the highest index in use. Its `call_id` is the first id the provider gave it,
   else `call_{index}` (suffixed `_2`, `_3`... if a provider already sent that id).
3. `Started` is emitted once per call, as soon as its name is known (the first non-empty
   name wins). Argument text seen before that is emitted as one `ArgumentsChunk` right
   after it, then each fragment's text as it arrives (`stream_arguments=False` turns chunks
   off; the arguments are still accumulated and parsed).
4. Argument text goes through a per-call `SurrogateJoiner` before it is counted, streamed or
   parsed, so a surrogate pair split across fragments (`"\ud83d"` then `"\ude00"`) becomes
   one character and no lone surrogate escapes; chunk boundaries may shift by that one
   code point.
5. Each call ends exactly once, with `Ended` (arguments parsed as JSON; empty or blank text
   is `{}`, the providers' convention for a call without arguments) or `Failed` (raw text
   and a reason: not valid JSON, no name ever given, or over the cap). Never a silent `{}`
   for text that does not parse. A call with no name ends in `Failed` without a `Started`.
6. `finish()` (end of the turn) ends every open call in index order; `end_call()` ends one
   early (Anthropic's `content_block_stop`). Argument text for an ended call, or a fragment
   that would open a call after `finish()`, raises `UpstreamProtocolError`; a fragment
   without argument text for an ended call (a repeated id or name) is ignored.
7. Size cap: once a call's arguments pass `max_argument_bytes` (UTF-8), it fails at once
   with `reason="arguments exceed N bytes"` and `raw` cut to the cap; later fragments for
   it are ignored. Held memory is at most the cap per call, plus one fragment.
8. Snapshots (`snapshots=True`): after a fragment, a started call's whole argument text is
   parsed with jiter's partial mode and a `Snapshot` is emitted if the value changed. Each
   parse costs O(size), so parsing after every fragment would cost O(n^2) per call (1 MiB
   in 10-byte fragments: about 5e10 bytes parsed). A snapshot therefore waits until the
   text grew by `max(snapshot_min_bytes, size // 8)` bytes since the previous one; the
   sizes parsed then form a geometric series and the total work is at most about
   9n + 32 * snapshot_min_bytes bytes for n bytes of arguments: linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import jiter

from wsgate.core.errors import UpstreamProtocolError
from wsgate.core.jsonio import loads
from wsgate.core.utf8 import SurrogateJoiner

DEFAULT_MAX_ARGUMENT_BYTES: Final = 1 << 20
DEFAULT_SNAPSHOT_MIN_BYTES: Final = 64
_SNAPSHOT_GROWTH: Final = 8  # the next snapshot waits for size // 8 new bytes
_NOTHING: Final = object()  # no snapshot emitted yet (None is a JSON value)
NOT_JSON: Final = "arguments are not valid JSON"
NO_NAME: Final = "tool call has no name"


@dataclass(frozen=True, slots=True)
class ToolCallFragment:
    """One piece of a tool call as a provider sent it; any field may be missing."""

    index: int | None
    call_id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class Started:
    """A call began; emitted once, when its name is known."""

    call_id: str
    index: int
    name: str


@dataclass(frozen=True, slots=True)
class ArgumentsChunk:
    """A piece of a call's JSON argument text, free of lone surrogates."""

    call_id: str
    chunk: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The call's arguments so far, partially parsed (opt-in, throttled)."""

    call_id: str
    partial: Any


@dataclass(frozen=True, slots=True)
class Ended:
    """A call completed; `arguments` is the parsed JSON value."""

    call_id: str
    name: str
    arguments: Any


@dataclass(frozen=True, slots=True)
class Failed:
    """A call ended without usable arguments; `raw` is the text received (up to the cap)."""

    call_id: str
    name: str | None
    raw: str
    reason: str


ToolCallOutput = Started | ArgumentsChunk | Snapshot | Ended | Failed


def parse_json(text: str) -> Any:
    r"""Parse strict JSON (no NaN/Infinity); raise ValueError otherwise.

    Escaped lone surrogates (`"\ud83d"`) are valid JSON; each becomes U+FFFD here, so the
    value can always be encoded as UTF-8.
    """
    return loads(text, scrub=True)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


@dataclass(slots=True)
class _Call:
    index: int
    provider_id: str | None = None
    call_id: str = ""  # the id emitted; set when the call starts or ends
    name: str | None = None
    started: bool = False
    done: bool = False
    failed: bool = False
    size: int = 0  # UTF-8 bytes of argument text
    parts: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)  # text seen before `Started`
    joiner: SurrogateJoiner = field(default_factory=SurrogateJoiner)
    snapshot_size: int = 0
    snapshot: Any = _NOTHING

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""


class ToolCallAccumulator:
    """Assemble the tool calls of one assistant turn; see the module rules."""

    __slots__ = (
        "_by_id",
        "_by_index",
        "_calls",
        "_finished",
        "_last",
        "_max_bytes",
        "_next_index",
        "_snapshot_min",
        "_snapshots",
        "_stream_arguments",
    )

    def __init__(
        self,
        *,
        stream_arguments: bool = True,
        snapshots: bool = False,
        snapshot_min_bytes: int = DEFAULT_SNAPSHOT_MIN_BYTES,
        max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
    ) -> None:
        if snapshot_min_bytes < 1 or max_argument_bytes < 0:
            raise ValueError("snapshot_min_bytes must be >= 1 and max_argument_bytes >= 0")
        self._stream_arguments = stream_arguments
        self._snapshots = snapshots
        self._snapshot_min = snapshot_min_bytes
        self._max_bytes = max_argument_bytes
        self._calls: list[_Call] = []
        self._by_index: dict[int, _Call] = {}
        self._by_id: dict[str, _Call] = {}
        self._last: _Call | None = None
        self._next_index = 0
        self._finished = False

    @property
    def has_calls(self) -> bool:
        """True once any fragment opened a call (a turn with calls ends as `tool_calls`)."""
        return bool(self._calls)

    def feed(self, fragment: ToolCallFragment) -> list[ToolCallOutput]:
        """Consume one fragment; return what it completes, in order."""
        call = self._find(fragment.index, fragment.call_id)
        if call is None:
            if self._finished:
                raise UpstreamProtocolError("tool call fragment after the end of the turn")
            call = self._open(fragment.index)
        self._last = call
        if call.done:
            if call.failed or not fragment.arguments:
                return []  # rules 6 and 7
            raise UpstreamProtocolError(f"tool call {call.call_id} got a fragment after its end")
        if fragment.call_id and call.provider_id is None:
            call.provider_id = fragment.call_id
            self._by_id.setdefault(fragment.call_id, call)
        if fragment.name and call.name is None:
            call.name = fragment.name
        out: list[ToolCallOutput] = []
        if fragment.arguments:
            self._append(call, call.joiner.push(fragment.arguments), out)
        if not call.done and not call.started and call.name is not None:
            self._start(call, call.name, out)
        if self._snapshots and call.started and not call.done:
            self._snapshot(call, out)
        return out

    def end_call(
        self, index: int | None = None, call_id: str | None = None
    ) -> list[ToolCallOutput]:
        """End one call now (found as a fragment would find it); [] if none or already ended."""
        call = self._find(index, call_id)
        out: list[ToolCallOutput] = []
        if call is not None and not call.done:
            self._end(call, out)
        return out

    def finish(self) -> list[ToolCallOutput]:
        """End of the turn: end every open call in index order (idempotent)."""
        self._finished = True
        out: list[ToolCallOutput] = []
        for call in sorted(self._calls, key=lambda c: c.index):
            if not call.done:
                self._end(call, out)
        return out

    def _find(self, index: int | None, call_id: str | None) -> _Call | None:
        """Rule 1, without opening a call."""
        if index is not None:
            call = self._by_index.get(index)
            if call is not None and call_id and call.provider_id not in {None, call_id}:
                return None  # the server reused the index for a new call
            return call
        if call_id:
            return self._by_id.get(call_id)
        return self._last

    def _open(self, index: int | None) -> _Call:
        free = index is not None and all(c.index != index for c in self._calls)
        call = _Call(index if free and index is not None else self._next_index)
        self._next_index = max(self._next_index, call.index + 1)
        if index is not None:
            self._by_index[index] = call
        self._calls.append(call)
        return call

    def _assign_id(self, call: _Call) -> str:
        if not call.call_id:
            # A provider id another call of the turn already shows (a provider that repeats
            # one) gets a suffix too: a call id names one call.
            base = candidate = call.provider_id or f"call_{call.index}"
            taken = {c.call_id for c in self._calls if c is not call and c.call_id}
            suffix = 1
            while candidate in taken or (
                candidate != call.provider_id and candidate in self._by_id
            ):
                suffix += 1
                candidate = f"{base}_{suffix}"
            call.call_id = candidate
        return call.call_id

    def _append(self, call: _Call, text: str, out: list[ToolCallOutput]) -> None:
        if not text:
            return
        call.size += _utf8_len(text)
        call.parts.append(text)
        if call.size > self._max_bytes:
            raw = call.text().encode()[: self._max_bytes].decode(errors="ignore")
            self._fail(call, raw, f"arguments exceed {self._max_bytes} bytes", out)
        elif not self._stream_arguments:
            pass
        elif call.started:
            out.append(ArgumentsChunk(call.call_id, text))
        else:
            call.unsent.append(text)

    def _start(self, call: _Call, name: str, out: list[ToolCallOutput]) -> None:
        call.started = True
        out.append(Started(self._assign_id(call), call.index, name))
        if call.unsent:
            out.append(ArgumentsChunk(call.call_id, "".join(call.unsent)))
            call.unsent.clear()

    def _snapshot(self, call: _Call, out: list[ToolCallOutput]) -> None:
        grown = call.size - call.snapshot_size
        if grown < max(self._snapshot_min, call.snapshot_size // _SNAPSHOT_GROWTH):
            return
        call.snapshot_size = call.size
        try:
            partial = jiter.from_json(
                call.text().encode(), partial_mode="trailing-strings", allow_inf_nan=False
            )
        except ValueError:
            return  # not even a JSON prefix yet (or never): the end will say which
        if call.snapshot is _NOTHING or partial != call.snapshot:
            call.snapshot = partial
            out.append(Snapshot(call.call_id, partial))

    def _end(self, call: _Call, out: list[ToolCallOutput]) -> None:
        self._append(call, call.joiner.flush(), out)
        if call.done:
            return
        text = call.text()
        if call.name is None:
            self._fail(call, text, NO_NAME, out)
            return
        if not text.strip():
            arguments: Any = {}
        else:
            try:
                arguments = parse_json(text)
            except ValueError:
                self._fail(call, text, NOT_JSON, out)
                return
        call.done = True
        out.append(Ended(call.call_id, call.name, arguments))
        call.parts.clear()

    def _fail(self, call: _Call, raw: str, reason: str, out: list[ToolCallOutput]) -> None:
        call.done = call.failed = True
        out.append(Failed(self._assign_id(call), call.name, raw, reason))
        call.parts.clear()
        call.unsent.clear()
