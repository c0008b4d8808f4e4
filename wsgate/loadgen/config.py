"""One load test's configuration, with its bounds, and the loopback rule of the load tools.

Owns `LoadConfig` (every knob of a run, checked by `validate`) and `require_loopback`: the
load tools open thousands of connections and talk to 127.0.0.1 only, so a target off
loopback is refused before anything is opened. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# The gateway's default `limits.max_frame_bytes`, until its `ready` frame says otherwise.
DEFAULT_MAX_FRAME = 1_048_576


def require_loopback(url: str) -> tuple[str, int]:
    """Return (host, port) of `url`; raise ValueError unless it names a loopback host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"{url}: the load tools talk to loopback hosts only")
    default = 443 if parts.scheme in ("https", "wss") else 80
    return host, parts.port or default


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load test; every bound is checked by `validate`."""

    url: str = "ws://127.0.0.1:8080/v1/ws"
    direct: str | None = None
    mock_url: str | None = None
    connections: int = 10
    streams_per_connection: int = 10
    tokens_per_s: float = 20.0
    ttft_ms: float = 100.0
    words: int = 60
    duration_s: float = 10.0
    max_streams: int | None = None
    ramp_s: float = 1.0
    warmup_s: float = 0.0
    think_ms: float | None = None
    cancel_fraction: float = 0.0
    drop_fraction: float = 0.0
    slow_fraction: float = 0.0
    oversized_fraction: float = 0.0
    fault_fraction: float = 0.0
    slow_pause_ms: float = 200.0
    slow_every_ms: float = 500.0
    drain_s: float = 30.0
    seed: int = 1
    model: str = "mock"
    start_options: dict[str, Any] | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError for a target off loopback or a bound out of range."""
        require_loopback(self.direct or self.url)
        if self.mock_url:
            require_loopback(self.mock_url)
        checks = {
            "connections must be 1..20000": 1 <= self.connections <= 20_000,
            "streams per connection must be 1..1000": 1 <= self.streams_per_connection <= 1000,
            "duration must be 0..3600 s": 0 < self.duration_s <= 3600,
            "drain must be 0..600 s": 0 <= self.drain_s <= 600,
            "words must be 1..100000": 1 <= self.words <= 100_000,
            "rate must be 0..1000000": 0 <= self.tokens_per_s <= 1_000_000,
            "ramp must be 0..duration": 0 <= self.ramp_s <= self.duration_s,
            "warmup must be 0..duration": 0 <= self.warmup_s < self.duration_s,
            "fractions must be 0..1": all(0 <= f <= 1 for f in self._fractions()),
            "cancel + fault + oversized must be <= 1": sum(self._fractions()[:3]) <= 1,
        }
        for message, passed in checks.items():
            if not passed:
                raise ValueError(message)

    def _fractions(self) -> tuple[float, ...]:
        return (
            self.cancel_fraction,
            self.fault_fraction,
            self.oversized_fraction,
            self.drop_fraction,
            self.slow_fraction,
        )

    @property
    def stream_seconds(self) -> float:
        """How long one stream should take by its script: first token to last."""
        paced = (self.words - 1) / self.tokens_per_s if self.tokens_per_s else 0.0
        return self.ttft_ms / 1000 + paced

    @property
    def period_s(self) -> float:
        """The interval between a slot's scheduled stream starts (paced load)."""
        think = self.think_ms / 1000 if self.think_ms is not None else None
        if think is None:
            think = max(0.05, 0.1 * self.stream_seconds)
        return self.stream_seconds + think
