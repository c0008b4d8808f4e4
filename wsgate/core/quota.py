"""Token accounting for tokens-per-minute quotas: the estimate before, the count after.

Owns two decisions of the quota work: how many tokens a start is charged before anything
is known (its prompt's characters / 4, the common rule of thumb for English text with
OpenAI-style tokenizers, at least 1), and how many it really cost once it ended (the
provider's `usage` frames when they came, summed over the turns of an agent loop;
otherwise the estimate once per model turn, as each turn sends the prompt again, plus one
token per text or reasoning delta). The gateway debits the difference after the stream ends, so a
principal's balance may go negative and its next starts wait (GCRA, `core/ratelimit.py`).
Pure: no clock, no store.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsgate.core.frames import ChatRequest, DeltaReasoning, DeltaText, TurnStarted, UsageFrame

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
    return max(1, chars // CHARS_PER_TOKEN)


@dataclass(slots=True)
class TokenTally:
    """What one stream cost, from its frames as they pass."""

    estimate: int
    deltas: int = 0
    usage: int | None = None  # input + output tokens of every turn, when the provider said
    turns: int = 1

    def observe(self, frames: list[object]) -> None:
        """Count a delivery's frames."""
        for frame in frames:
            if isinstance(frame, DeltaText | DeltaReasoning):
                self.deltas += 1
            elif isinstance(frame, UsageFrame):
                self.usage = (self.usage or 0) + frame.input_tokens + frame.output_tokens
            elif isinstance(frame, TurnStarted):
                self.turns += 1

    @property
    def correction(self) -> int:
        """Tokens still to debit (negative: to refund) once the stream ended."""
        guess = self.estimate * self.turns + self.deltas
        actual = self.usage if self.usage is not None else guess
        return actual - self.estimate
