"""Gateway-wide counters: stream outcomes, cancels, waste, shedding, slow consumers, refusals.

Owns the figures an operator and the load tester read (`GET /stats` on the gateway port,
and later the Prometheus endpoint): plain counters plus a bounded sample of
cancel-to-upstream-close latencies. Only the gateway shell writes here; nothing here does
I/O or blocks.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

LATENCY_SAMPLES = 10_000
"""Cancel latencies kept for percentiles (the newest; older ones only count in totals)."""


@dataclass
class Accounting:
    """Counters of one gateway process."""

    connections_opened: int = 0
    connections_open: int = 0
    streams_started: int = 0
    finishes: Counter[str] = field(default_factory=Counter)
    cancels: int = 0
    wasted_tokens_after_cancel: int = 0
    telemetry_shed: int = 0
    coalesced_frames: int = 0
    slow_consumers: int = 0
    send_timeouts: int = 0
    detached_streams: int = 0
    detached_expired: int = 0
    upstream_retries: int = 0
    # What hostile or broken clients caused (gateway/guard.py), keyed by status, cap, code
    # or reason: a handful of keys each.
    handshakes_refused: Counter[str] = field(default_factory=Counter)  # HTTP status
    handshake_timeouts: int = 0
    pending_handshakes_refused: int = 0  # past max_pending_handshakes: aborted at accept
    connection_cap_refusals: Counter[str] = field(default_factory=Counter)  # which cap
    protocol_closes: Counter[str] = field(default_factory=Counter)  # 1002, 1007, 1009
    transport_overflows: Counter[str] = field(default_factory=Counter)  # buffer, paused
    auth_failures: Counter[str] = field(default_factory=Counter)  # by reason
    rate_limited: Counter[str] = field(default_factory=Counter)  # by what was refused
    tool_calls: Counter[str] = field(default_factory=Counter)  # server tools, by outcome code
    agent_turns: int = 0  # model turns after the first (turn.started), agent loops
    nested_calls: Counter[str] = field(default_factory=Counter)  # `model` tools, by outcome
    cancel_latency_count: int = 0
    cancel_latency_max_s: float = 0.0
    _latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def nested_call(self, outcome: str) -> None:
        """Count one nested model call (a `model` tool) by its outcome: `ok` or a code."""
        self.nested_calls[outcome] += 1

    def cancel_latency(self, seconds: float) -> None:
        """Record the time from a cancel decision to the upstream connection's close."""
        self.cancel_latency_count += 1
        self.cancel_latency_max_s = max(self.cancel_latency_max_s, seconds)
        self._latencies.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view, with cancel latency percentiles in milliseconds."""
        samples = sorted(self._latencies)
        return {
            "connections_opened": self.connections_opened,
            "connections_open": self.connections_open,
            "streams_started": self.streams_started,
            "finishes": dict(self.finishes),
            "cancels": self.cancels,
            "wasted_tokens_after_cancel": self.wasted_tokens_after_cancel,
            "telemetry_shed": self.telemetry_shed,
            "coalesced_frames": self.coalesced_frames,
            "slow_consumers": self.slow_consumers,
            "send_timeouts": self.send_timeouts,
            "detached_streams": self.detached_streams,
            "detached_expired": self.detached_expired,
            "upstream_retries": self.upstream_retries,
            "handshakes_refused": dict(self.handshakes_refused),
            "handshake_timeouts": self.handshake_timeouts,
            "pending_handshakes_refused": self.pending_handshakes_refused,
            "connection_cap_refusals": dict(self.connection_cap_refusals),
            "protocol_closes": dict(self.protocol_closes),
            "transport_overflows": dict(self.transport_overflows),
            "auth_failures": dict(self.auth_failures),
            "rate_limited": dict(self.rate_limited),
            "tool_calls": dict(self.tool_calls),
            "agent_turns": self.agent_turns,
            "nested_calls": dict(self.nested_calls),
            "cancel_to_upstream_close_ms": {
                "count": self.cancel_latency_count,
                "p50": _percentile(samples, 0.50),
                "p99": _percentile(samples, 0.99),
                "max": round(self.cancel_latency_max_s * 1000, 3),
            },
        }


def _percentile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    index = min(len(samples) - 1, int(q * len(samples)))
    return round(samples[index] * 1000, 3)
