"""The agent loop of one stream: model turns that end in tool calls, their results, the next turn.

Owns what a stream that opted in (`options.agent`) decides between two model turns, with no
I/O: which of a turn's calls the client answers (`tool_result`) and which the gateway runs
(server-side tools, `[tools.NAME]`), which results are accepted (a call of the pending turn,
once), when the turn is complete, and the next turn's request (the conversation so far, the
assistant's text and calls, one `tool` message per call in call order). The stream
(`core/stream.py`) owns the frames and the state; the shells run the calls and the turns.

Rules:
1. A turn continues the loop only when it finished (`tool_calls`, or `stop` with calls) and
   every call of it ended with arguments that are a JSON object; a call that did not parse
   (`tool_call.error`) or whose arguments are not an object ends the stream with
   `tool_calls_invalid`: no provider accepts such a call back.
2. A call of the pending turn takes one result; a second one for it (or for a call of an
   earlier turn) is `duplicate_tool_result`; an id no turn produced is `unknown_tool_call`.
   Neither starts a turn.
3. At most `max_steps` model turns: a turn that would need one more ends the stream with
   `max_steps_exceeded`, its calls shown but never run.
4. Results are bounded: all the results of one stream together at most
   `max_result_bytes` (UTF-8 of the text the model receives); the result that would pass
   it is refused (`tool_result_too_large`), and the call stays open. Errors do not count
   (a client's is at most 4 KiB, the gateway's a line), so a full stream can still say why.
5. A forced `tool_choice` (`required`, or a named function) applies to the first turn only;
   later turns are `auto`, so a forced call cannot loop until `max_steps`.
6. When the turn's calls include one to a tool the stream neither runs (server) nor lets
   the client answer (`client_tools: false`), or one that did not parse while the client
   answers none, the loop stops: the stream finishes `tool_calls` as it would without the
   loop, and the client acts on the calls.
7. Call ids are unique over the stream: a call whose id an earlier turn used (a provider
   that gives none gets `call_<index>` per turn) is shown and sent back as `<id>_t<turn>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from wsgate.core.frames import ChatRequest, Message, ToolError

FORCED_CHOICES = frozenset({"required", "any"})
"""`tool_choice` strings that force a call (besides a named function)."""


@dataclass(frozen=True, slots=True)
class LoopPolicy:
    """How one stream's loop runs: who answers calls, how many turns, how long, how much."""

    client_tools: bool
    server_tools: frozenset[str]
    max_steps: int
    result_timeout: float  # s a turn waits for the client's results
    max_result_bytes: int


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of a finished turn, as the gateway runs it or the client answers it."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    server: bool  # run by the gateway (a `[tools.NAME]`)
    turn: int  # the model turn that made it (a call id is unique within its turn only)


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The turn ended in calls the loop answers: the client's to await, the gateway's to run."""

    turn: int
    awaiting: tuple[str, ...]  # call ids the client answers
    run: tuple[ToolCall, ...]  # calls the gateway runs


@dataclass(frozen=True, slots=True)
class LoopStops:
    """The turn ended and the stream finishes as it would without the loop (rule 6)."""


@dataclass(frozen=True, slots=True)
class LoopFails:
    """The turn's calls cannot continue the loop: the stream ends with this error code."""

    code: Literal["tool_calls_invalid", "max_steps_exceeded"]
    message: str


TurnOutcome = TurnEnded | LoopStops | LoopFails


@dataclass(frozen=True, slots=True)
class Accepted:
    """A result was taken; `request` is the next turn's once every call has one."""

    call: ToolCall
    request: ChatRequest | None


@dataclass(frozen=True, slots=True)
class Refused:
    """A result that is not taken (rules 2 and 4); the loop is unchanged."""

    code: Literal["unknown_tool_call", "duplicate_tool_result", "tool_result_too_large"]
    message: str


class ToolLoop:
    """The loop state of one stream."""

    __slots__ = (
        "_answered",
        "_calls",
        "_failed",
        "_ids",
        "_messages",
        "_pending",
        "_request",
        "_result_bytes",
        "_results",
        "_text",
        "_used",
        "policy",
        "turn",
    )

    def __init__(self, request: ChatRequest, policy: LoopPolicy) -> None:
        self.policy = policy
        self.turn = 1
        self._request = request
        self._messages: list[Message] = list(request.messages)
        self._text: list[str] = []  # the turn's answer text, as the provider sent it
        self._calls: list[ToolCall] = []  # the turn's ended calls, in end (index) order
        self._failed = False  # a call of the turn did not parse, or is not an object
        self._pending: dict[str, ToolCall] = {}  # the ended turn's calls without a result
        self._results: dict[str, str] = {}  # call id -> the text the model receives
        self._answered: set[str] = set()  # every call id that took a result, all turns
        self._ids: dict[str, str] = {}  # the running turn's renamed call ids (rule 7)
        self._used: set[str] = set()  # the call ids of the earlier turns
        self._result_bytes = 0

    @property
    def awaiting(self) -> bool:
        """A turn ended and some of its calls have no result yet."""
        return bool(self._pending)

    @property
    def awaiting_client(self) -> bool:
        """Some pending call is the client's to answer (its results have a deadline)."""
        return any(not call.server for call in self._pending.values())

    @property
    def pending(self) -> tuple[str, ...]:
        """The call ids still without a result, in call order."""
        return tuple(self._pending)

    def call_id(self, given: str) -> str:
        """The call id the stream shows for `given` in the running turn (rule 7)."""
        shown = self._ids.get(given)
        if shown is None:
            shown = given
            if given in self._used:
                suffix = self.turn
                while f"{given}_t{suffix}" in self._used:
                    suffix += 1
                shown = f"{given}_t{suffix}"
            self._ids[given] = shown
        return shown

    def text(self, text: str) -> None:
        """Answer text of the running turn (it goes back to the model with the calls)."""
        self._text.append(text)

    def call_ended(self, call_id: str, name: str, arguments: Any) -> None:
        """A call of the running turn ended with parsed arguments."""
        if not isinstance(arguments, dict):
            self._failed = True
            return
        server = name in self.policy.server_tools
        self._calls.append(ToolCall(call_id, name, arguments, server, self.turn))

    def call_failed(self) -> None:
        """A call of the running turn ended without usable arguments (`tool_call.error`)."""
        self._failed = True

    def end_turn(self) -> TurnOutcome:
        """The provider finished the turn (not with an error): what the loop does now."""
        if not self._calls and not self._failed:
            return LoopStops()
        if not self.policy.client_tools and (
            self._failed or not all(call.server for call in self._calls)
        ):
            return LoopStops()  # rule 6: the client acts on this turn's calls itself
        if self._failed:
            return LoopFails(
                "tool_calls_invalid",
                "a tool call of the turn has arguments that are not a JSON object",
            )
        if self.turn >= self.policy.max_steps:
            return LoopFails(
                "max_steps_exceeded",
                f"the model asked for tools after {self.policy.max_steps} turns (max_steps)",
            )
        self._pending = {call.call_id: call for call in self._calls}
        awaiting = tuple(call.call_id for call in self._calls if not call.server)
        run = tuple(call for call in self._calls if call.server)
        return TurnEnded(self.turn, awaiting, run)

    def accept(
        self, call_id: str, content: Any, error: ToolError | None, *, client: bool
    ) -> Accepted | Refused:
        """A call's result (`content`, or `error`): taken, or refused (rules 2 and 4).

        `client`: the result came in a `tool_result` frame; a server tool's call takes none.
        """
        call = self._pending.get(call_id)
        if call is None:
            if call_id in self._answered:
                return Refused("duplicate_tool_result", "this tool call already has a result")
            return Refused("unknown_tool_call", "no pending tool call of this stream has this id")
        if client and call.server:
            return Refused("unknown_tool_call", "the gateway runs this tool call itself")
        text = model_text(content, error)
        size = 0 if error is not None else len(text.encode())
        if self._result_bytes + size > self.policy.max_result_bytes:
            cap = self.policy.max_result_bytes
            return Refused(
                "tool_result_too_large",
                f"the stream's tool results would pass {cap} bytes; send a shorter one",
            )
        self._result_bytes += size
        del self._pending[call_id]
        self._answered.add(call_id)
        self._results[call_id] = text
        return Accepted(call, self._next_request() if not self._pending else None)

    def _next_request(self) -> ChatRequest:
        """The conversation with this turn appended; the loop moves to the next turn."""
        text = "".join(self._text)
        self._messages.append(
            Message(
                role="assistant",
                content=text or None,
                tool_calls=[
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {
                            "name": call.name,
                            "arguments": msgspec.json.encode(call.arguments).decode(),
                        },
                    }
                    for call in self._calls
                ],
            )
        )
        for call in self._calls:
            self._messages.append(
                Message(role="tool", tool_call_id=call.call_id, content=self._results[call.call_id])
            )
        self.turn += 1
        self._used.update(self._ids.values())
        self._text, self._calls, self._results, self._ids = [], [], {}, {}
        choice = self._request.tool_choice
        forced = isinstance(choice, dict) or choice in FORCED_CHOICES
        return msgspec.structs.replace(
            self._request,
            messages=list(self._messages),
            tool_choice=None if forced else choice,
        )


MAX_RESULT_DEPTH = 64
"""How deeply a `tool_result`'s content may nest (arrays and objects)."""


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether `value` has arrays or objects nested more than `limit` levels (iteratively)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def model_text(content: Any, error: ToolError | None) -> str:
    """The text a `tool` message carries to the model: a string as is, else its JSON.

    An error is `{"error": {"code", "message"}}`, so the model can tell it from a result.
    """
    if error is not None:
        payload = {"error": {"code": error.code, "message": error.message}}
        return msgspec.json.encode(payload).decode()
    if isinstance(content, str):
        return content
    return msgspec.json.encode(content).decode()
