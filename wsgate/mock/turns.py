"""Multi-turn scripts: the turn a request is at, the tool results it carries, their check.

Owns the dialect-neutral half of a conversation that goes on after tool calls
(`protocol/MOCK.md`, "Multi-turn scripts"; keep them equal): the `turns` list of a script and
the choice of one turn by the number of assistant tool-call turns since the last user
message, the default call ids of a turn (`call_mock_<t>_<k>`), reading a conversation into a
`History` from the per-dialect accessors each dialect module passes in, and comparing the
tool results of the latest turn with a script's `expect_tool_results`. Each dialect module
knows its own request shape; this module must not. Pure: no asyncio, no clock, no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec
import orjson

from wsgate.mock.script import ScriptError, parse_script

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from wsgate.mock.script import Script

_PREFIX: Final = "bad mock script: "
# How much of a tool result's content a mismatch message quotes.
_QUOTE_CHARS: Final = 200

Entry = dict[str, Any]
Call = tuple[str | None, str | None]
"""An assistant tool call as a conversation carries it: its id and tool name."""
Result = tuple[str | None, str | None, str]
"""A tool result as a conversation carries it: its call id, its own tool name, its text."""


class ExpectationError(ScriptError):
    """The request's tool results differ from the script's `expect_tool_results`."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """One tool result of the latest turn: the call it answers, the tool, the text sent."""

    call_id: str | None
    name: str | None
    content: str


@dataclass(frozen=True, slots=True)
class History:
    """Where a request's conversation stands: the turn index and that turn's tool results."""

    turn: int = 0
    results: tuple[ToolResult, ...] = ()


NO_HISTORY: Final = History()


def read_history(
    entries: object,
    *,
    is_user: Callable[[Entry], bool],
    calls_of: Callable[[Entry], list[Call] | None],
    results_of: Callable[[Entry], list[Result]],
    by_position: bool = False,
) -> History:
    """Count the tool-call turns after the last user entry and read the latest results.

    A turn is a maximal run of consecutive entries for which `calls_of` gives calls (an
    assistant message with tool calls; Responses: `function_call` items). The results are
    those of the entries after the last turn. A result with no call id answers, `by_position`,
    the call at its position in the last turn (Ollama has no result ids) and takes its id; a
    result with no tool name takes the name of the call it answers.
    """
    if not isinstance(entries, list):
        return NO_HISTORY
    items = [entry for entry in entries if isinstance(entry, dict)]
    start = next((i + 1 for i in range(len(items) - 1, -1, -1) if is_user(items[i])), 0)
    turn, in_turn = 0, False
    calls: list[Call] = []
    results: list[Result] = []
    for item in items[start:]:
        found = calls_of(item)
        if found is None:
            in_turn = False
            results += results_of(item)
            continue
        if not in_turn:
            turn, calls, results, in_turn = turn + 1, [], [], True
        calls += found
    names = {call_id: name for call_id, name in calls if call_id is not None}
    out = []
    for position, (given_id, given_name, content) in enumerate(results):
        call_id, name = given_id, given_name or names.get(given_id or "")
        if given_id is None and by_position and position < len(calls):
            call_id, name = calls[position][0], given_name or calls[position][1]
        out.append(ToolResult(call_id, name, content))
    return History(turn, tuple(out))


def select_turn(raw: dict[str, Any], turn: int, check: Callable[[Mapping[str, Any]], None]) -> Any:
    """The raw script of turn `turn` of a `turns` script, with the outer `tag` if it has none.

    Every turn is validated (`parse_script`, then `check`, the dialect's refusals), so a
    mistake in a later turn is found at the first request. A turn past the last is an error.
    """
    turns = raw["turns"]
    if others := sorted(set(raw) - {"turns", "tag"}):
        raise ScriptError(f"{_PREFIX}turns take no other key than tag; drop {others}")
    if "tag" in raw and not isinstance(raw["tag"], str):
        raise ScriptError(f"{_PREFIX}tag must be a string")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise ScriptError(f"{_PREFIX}turns must be a non-empty list of objects")
    for index, entry in enumerate(turns):
        try:
            parse_script(entry)
            check(entry)
        except ScriptError as exc:
            problem = str(exc).removeprefix(_PREFIX)
            raise ScriptError(f"{_PREFIX}turns[{index}]: {problem}") from None
    if turn >= len(turns):
        message = f"the request is at turn {turn} but the script has {len(turns)} turns"
        raise ScriptError(_PREFIX + message)
    chosen: dict[str, Any] = turns[turn]
    return {**chosen, "tag": raw["tag"]} if "tag" in raw and "tag" not in chosen else chosen


def with_turn_ids(script: Script, prefix: str, turn: int) -> Script:
    """A turn's script whose tool calls without an `id` get `<prefix>_<turn>_<k>`."""
    calls = tuple(
        call if call.id is not None else msgspec.structs.replace(call, id=f"{prefix}_{turn}_{k}")
        for k, call in enumerate(script.tool_calls)
    )
    return msgspec.structs.replace(script, tool_calls=calls)


def check_expectations(expected: object, results: tuple[ToolResult, ...]) -> None:
    """Raise `ExpectationError` naming every difference between expected and received."""
    if isinstance(expected, dict):
        problems = _by_id(expected, results)
    elif isinstance(expected, list):
        problems = _in_order(expected, results)
    else:
        problems = []
    if problems:
        joined = "; ".join(problems)
        raise ExpectationError(f"mock: tool results differ from expect_tool_results: {joined}")


def _by_id(expected: dict[str, Any], results: tuple[ToolResult, ...]) -> list[str]:
    got = {result.call_id: result for result in results}
    problems = []
    for call_id, want in expected.items():
        result = got.get(call_id)
        if result is None:
            problems.append(f"no result for call {_show(call_id)}")
        elif not _matches(want, result.content):
            shown = f"expected {_show(want)}, got {_show(result.content)}"
            problems.append(f"call {_show(call_id)}: {shown}")
    extra = [r.call_id for r in results if r.call_id not in expected]
    problems += [f"unexpected result for call {_show(call_id)}" for call_id in extra]
    return problems


def _in_order(expected: list[Any], results: tuple[ToolResult, ...]) -> list[str]:
    problems = []
    if len(expected) != len(results):
        problems.append(f"expected {len(expected)} results, got {len(results)}")
    for index, (want, result) in enumerate(zip(expected, results, strict=False)):
        if not _matches(want, result.content):
            problems.append(f"result {index}: expected {_show(want)}, got {_show(result.content)}")
    return problems


def _matches(want: object, content: str) -> bool:
    """A string matches the text exactly; other JSON the text parsed, as canonical JSON."""
    if isinstance(want, str):
        return want == content
    try:
        got = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return _canonical(got) == _canonical(want)


def _canonical(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _show(value: object) -> str:
    """A string as a JSON string literal, other values as canonical JSON; long ones cut."""
    text = orjson.dumps(value).decode() if isinstance(value, str) else _canonical(value).decode()
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "..."
