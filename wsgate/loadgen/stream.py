"""One stream of a load as it was received, and the slot that runs streams one after another.

Owns `Stream`: the text pieces that arrived, the arrival time of each expected chunk (a
chunk counts as arrived with its last character, so a coalesced frame completes several
at once), and the `seq` bookkeeping that counts gaps and duplicates. Called from the
WebSocket's `data_received` path, so nothing here awaits or allocates per token beyond one
float in an `array`. No I/O here.
"""

from __future__ import annotations

import array
from bisect import bisect_right
from itertools import repeat
from typing import Protocol

from wsgate.loadgen.plan import Plan


class Carrier(Protocol):
    """The connection a stream runs on (`conn.Conn`), as the run sees it: its streams."""

    streams: dict[str, Stream]


class Stream:
    """What arrived for one stream: text pieces, chunk arrival times, seq bookkeeping."""

    __slots__ = (
        "cancel_at",
        "chars",
        "conn",
        "dups",
        "end_at",
        "ends",
        "error",
        "first_at",
        "gaps",
        "intended",
        "next_seq",
        "outcome",
        "pieces",
        "plan",
        "recv",
        "sent_at",
        "sid",
        "slot",
        "slow",
        "tag",
    )

    def __init__(self, sid: str, tag: str, plan: Plan, slot: Slot, intended: float) -> None:
        self.sid, self.tag, self.plan, self.slot, self.intended = sid, tag, plan, slot, intended
        self.conn: Carrier | None = None
        self.slow = False
        self.sent_at = self.first_at = self.end_at = self.cancel_at = 0.0
        self.pieces: list[str] = []
        self.chars = 0
        self.recv = array.array("d")
        self.ends = plan.expected.ends
        self.next_seq = 1
        self.gaps = self.dups = 0
        self.error = ""
        self.outcome = ""

    def text(self, piece: str, now: float) -> int:
        """Take one text piece; return how many expected chunks it completed."""
        if not self.first_at:
            self.first_at = now
        self.pieces.append(piece)
        self.chars = chars = self.chars + len(piece)
        recv = self.recv
        # The chunks completed so far are the ends <= chars (ends only grow, and so does chars).
        added = bisect_right(self.ends, chars) - len(recv)
        if added == 1:
            recv.append(now)
        elif added:
            recv.extend(repeat(now, added))
        return added

    def seq(self, first: int, last: int) -> None:
        """Account for a frame covering `first`..`last` (a coalesced frame covers several)."""
        if first > self.next_seq:
            self.gaps += first - self.next_seq
        elif first < self.next_seq:
            self.dups += min(last, self.next_seq - 1) - first + 1
        self.next_seq = max(self.next_seq, last + 1)

    def cancel_due(self) -> bool:
        """Whether this stream's plan says to cancel it now."""
        after = self.plan.cancel_after
        return after is not None and not self.cancel_at and len(self.recv) >= after


class Slot:
    """A stream slot of a connection: runs one stream after another on a schedule."""

    __slots__ = ("conn", "next_at")

    def __init__(self, conn: int, first_at: float) -> None:
        self.conn = conn
        self.next_at = first_at


def finish_outcome(reason: str, error: str) -> str:
    """A finish reason, with the preceding error's code when the stream failed."""
    return f"{reason}:{error}" if reason in ("error", "timeout") else reason
