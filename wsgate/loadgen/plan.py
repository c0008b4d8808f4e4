"""What each stream of a load asks for and must receive: scripts, expected answers, the mix.

Owns `Planner`, which draws every stream's role (normal, cancelled, oversized or an upstream
fault) from the configured fractions, reproducibly from the run's seed; the mock script each
role sends (`protocol/MOCK.md`); the exact answer that script makes the mock send, computed
with the mock's own text generator and chunker (`wsgate.mock.script`, the one mock module
the load generator may import), so a stream is checked byte for byte; and `request_body`.
No I/O here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson

from wsgate.loadgen.config import DEFAULT_MAX_FRAME, LoadConfig
from wsgate.mock.script import Script, generate_text, split_chunks

_SEED_POOL = 64


@dataclass(frozen=True, slots=True)
class Expected:
    """A script's exact answer and the code-point offset where each paced chunk ends."""

    text: str
    ends: tuple[int, ...]

    @classmethod
    def of(cls, chunks: list[str]) -> Expected:
        """From the content chunks, in order."""
        ends, total = [], 0
        for chunk in chunks:
            total += len(chunk)
            ends.append(total)
        return cls("".join(chunks), tuple(ends))


def _event(text: str) -> str:
    delta = {"content": text}
    return orjson.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}).decode()


_ERROR_EVENT = orjson.dumps({"error": {"message": "overloaded", "type": "server_error"}}).decode()
# name -> (script keys, the error code a gateway must report, the chunks sent before it)
FAULTS: dict[str, tuple[dict[str, Any], str, list[str]]] = {
    "http_500": ({"status": 500}, "upstream_error", []),
    "http_429": ({"status": 429, "retry_after": 1}, "upstream_rate_limited", []),
    "error_event": (
        {"events": [_event("Partial"), _event(" answer"), _ERROR_EVENT], "done": False},
        "upstream_error",
        ["Partial", " answer"],
    ),
    "truncated": (
        {"events": [_event("Cut"), _event(" short")], "done": False},
        "upstream_protocol",
        ["Cut", " short"],
    ),
}
# An oversized start is refused by a gateway; a relay without limits forwards it, and the
# mock's 1 MiB body limit answers 413.
_OVERSIZED_OUTCOMES = frozenset(
    {"refused:frame_too_large", "stop", "error:upstream_error", "error:upstream_rejected"}
)


@dataclass(frozen=True, slots=True)
class Plan:
    """One stream's script, expected answer, acceptable outcomes and unhappy-path role."""

    kind: str
    script: dict[str, Any]
    expected: Expected
    outcomes: frozenset[str]
    cancel_after: int | None = None
    oversized: bool = False


class Planner:
    """Draws each stream's plan from the configured mix, reproducibly from `seed`."""

    def __init__(self, config: LoadConfig, rng: random.Random, *, direct: bool) -> None:
        self.config = config
        self.rng = rng
        self.oversized = 0.0 if direct else config.oversized_fraction
        self._texts: dict[int, Expected] = {}

    def plan(self, tag: str) -> Plan:
        """The next stream's plan; `tag` marks its mock request record."""
        c, draw = self.config, self.rng.random()
        pacing = {"ttft_ms": c.ttft_ms, "tokens_per_s": c.tokens_per_s, "tag": tag}
        if draw < c.fault_fraction:
            name = self.rng.choice(sorted(FAULTS))
            keys, code, chunks = FAULTS[name]
            outcome = frozenset({f"error:{code}"})
            return Plan(f"fault:{name}", {**keys, **pacing}, Expected.of(chunks), outcome)
        seed = self.rng.randrange(_SEED_POOL)
        script = {"words": c.words, "seed": seed, **pacing}
        expected = self._expected(seed)
        draw -= c.fault_fraction
        if draw < c.cancel_fraction:
            after = self.rng.randrange(c.words)
            return Plan("cancel", script, expected, frozenset({"cancelled", "stop"}), after)
        draw -= c.cancel_fraction
        if draw < self.oversized:
            return Plan("oversized", script, expected, _OVERSIZED_OUTCOMES, oversized=True)
        return Plan("normal", script, expected, frozenset({"stop"}))

    def _expected(self, seed: int) -> Expected:
        if seed not in self._texts:
            words = self.config.words
            chunks = split_chunks(Script(words=words, seed=seed), generate_text(words, seed))
            self._texts[seed] = Expected.of(chunks)
        return self._texts[seed]


def request_body(config: LoadConfig, plan: Plan, max_frame_bytes: int = 0) -> dict[str, Any]:
    """The chat request: the script as the last user message, padding in a system one."""
    messages: list[dict[str, Any]] = []
    if plan.oversized:
        size = (max_frame_bytes or DEFAULT_MAX_FRAME) + 1024
        messages.append({"role": "system", "content": "x" * size})
    messages.append({"role": "user", "content": orjson.dumps({"mock": plan.script}).decode()})
    return {"model": config.model, "messages": messages}
