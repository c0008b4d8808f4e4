"""Streams whose client left with `on_disconnect: continue`: what the gateway knows of each.

Owns the record of a detached generation: its `message_id`, whether it finished, and the
tokens it produced with no client reading (what `wasted_tokens_after_cancel` counts unless a
`resume` reads them later). The frames themselves are in the resume store's event log
(`core/store.py`), which a `resume` reads; this module keeps no frame. Memory: one small
record per detached stream, for its window.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class DetachedLog:
    """One detached stream's record."""

    message_id: str
    stream_id: str
    finished: bool = False
    tokens: int = 0


class DetachedStreams:
    """The gateway's detached streams, by message_id."""

    def __init__(self) -> None:
        self._logs: dict[str, DetachedLog] = {}

    def __len__(self) -> int:
        return len(self._logs)

    def add(self, log: DetachedLog) -> None:
        """Register a stream that keeps generating without its client."""
        self._logs[log.message_id] = log

    def get(self, message_id: str) -> DetachedLog | None:
        """The record of a detached stream, if its window is still open."""
        return self._logs.get(message_id)

    def discard(self, message_id: str) -> None:
        """Forget a record (its window passed)."""
        self._logs.pop(message_id, None)
