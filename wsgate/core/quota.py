"""Token accounting for tokens-per-minute quotas: the estimate before, the count after.

Owns two decisions of the quota work: how many tokens a start is charged before anything
is known (its prompt's characters / 4, the common rule of thumb for English text with
OpenAI-style tokenizers, at least 1), and how many it really cost once it ended (the
provider's `usage` frames when they came; otherwise the estimate plus one token per text
or reasoning delta). An agent loop's stream is costed turn by turn, each turn by its own
usage or else its own request's estimate plus its deltas, and each later turn's estimate
is charged as the turn starts (`next_turn`), so a long loop spends the budget as it goes.
The gateway debits the difference after the stream ends, so a principal's balance may go
negative and its next starts wait (GCRA, `core/ratelimit.py`).
Pure: no clock, no store.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from wsgate.core.frames import ChatRequest, DeltaReasoning, DeltaText, UsageFrame

CHARS_PER_TOKEN = 4


def estimate_tokens(request: ChatRequest) -> int:
    """The tokens a start is charged up front: its prompt's characters / 4, at least 1."""
    chars = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            for part in content:
                text = part.get("text")
                chars += len(text) if isinstance(text, str) else 0
    if request.extra_body:  # provider fields may carry prompt text too
        chars += len(msgspec.json.encode(request.extra_body))
    return max(1, chars // CHARS_PER_TOKEN)


@dataclass(slots=True)
class TokenTally:
    """What one stream cost, from its frames as they pass."""

    estimate: int  # what the start was charged
    deltas: int = 0  # of the running turn
    usage: int | None = None  # input + output tokens of the running turn, when reported
    prompt: int = -1  # the running turn's request estimate (-1: the start's)
    settled: int = 0  # what the ended turns cost
    charged: int = 0  # what later turns were charged as they started

    def observe(self, frames: list[object]) -> None:
        """Count a delivery's frames."""
        for frame in frames:
            if isinstance(frame, DeltaText | DeltaReasoning):
                self.deltas += 1
            elif isinstance(frame, UsageFrame):
                self.usage = (self.usage or 0) + frame.input_tokens + frame.output_tokens

    def next_turn(self, estimate: int) -> None:
        """An agent loop's next turn starts with a request estimated at `estimate` tokens."""
        self.settled += self._turn_cost()
        self.deltas, self.usage, self.prompt = 0, None, estimate
        self.charged += estimate

    def _turn_cost(self) -> int:
        if self.usage is not None:
            return self.usage
        return (self.estimate if self.prompt < 0 else self.prompt) + self.deltas

    @property
    def correction(self) -> int:
        """Tokens still to debit (negative: to refund) once the stream ended."""
        actual = self.settled + self._turn_cost() - self.charged
        return actual - self.estimate
