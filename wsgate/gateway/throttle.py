"""Log lines that cannot flood: the first of a kind at once, then one summary per interval.

Owns the counting of repeated events a hostile or broken client can cause at will (refused
handshakes, failed authentications, protocol closes): each is counted, the first is logged
with its details, and later ones are folded into one line per `interval` with how many were
not logged. Memory: one counter and one timestamp per event name.
"""

from __future__ import annotations

import time
from typing import Any

from wsgate.log import get_logger

log = get_logger("wsgate.gateway")


class LogThrottle:
    """At most one line per `interval` seconds for `event`; every occurrence counted."""

    __slots__ = ("_last", "_suppressed", "count", "event", "interval")

    def __init__(self, event: str, interval: float = 10.0) -> None:
        self.event = event
        self.interval = interval
        self.count = 0  # every occurrence, logged or not
        self._suppressed = 0
        self._last = float("-inf")

    def __call__(self, **fields: Any) -> None:
        """Count one occurrence; log it unless a line for `event` went out recently."""
        self.count += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        self._last = now
        suppressed, self._suppressed = self._suppressed, 0
        log.warning(self.event, suppressed=suppressed, total=self.count, **fields)
