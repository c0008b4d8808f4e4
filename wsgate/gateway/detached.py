"""Streams whose client left with `on_disconnect: continue`: their event logs, by message_id.

Owns what a detached generation leaves behind: the encoded frames it produced after its
client disconnected (from the frames not yet sent at that moment on), bounded by
`log_bytes` per stream, and whether it finished. The resume capability will read these
logs; today they are kept until the disconnect window of each stream has passed. Memory:
at most `log_bytes` per detached stream, and a stream whose log would overflow is
cancelled (recorded as `overflowed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class DetachedLog:
    """The frames one detached stream produced without a client."""

    message_id: str
    stream_id: str
    log_bytes: int
    frames: list[bytes] = field(default_factory=list)
    size: int = 0
    finished: bool = False
    overflowed: bool = False
    tokens: int = 0

    def append(self, data: bytes) -> bool:
        """Keep one encoded frame; False (and nothing kept) when it would overflow the log."""
        if self.size + len(data) > self.log_bytes:
            self.overflowed = True
            return False
        self.frames.append(data)
        self.size += len(data)
        return True


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
        """The log of a detached stream, if it is still kept."""
        return self._logs.get(message_id)

    def discard(self, message_id: str) -> None:
        """Forget a log (its window passed)."""
        self._logs.pop(message_id, None)
