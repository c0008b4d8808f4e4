"""A connection's settings and counters, shared by the connection, its writer and its streams.

Owns `ConnectionOptions` (limits and timers, built by the composition root from the
settings), the core `SessionLimits` derived from them (`session_limits`), and
`ConnectionStats` (what tests and the gateway's accounting read). Data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsgate.core.retry import RetryPolicy
from wsgate.core.session import SessionLimits


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """Per-connection limits and timers (seconds, bytes)."""

    queue_events: int = 256
    queue_bytes: int = 256 * 1024
    buffer_bytes: int = 1024 * 1024
    send_timeout: float = 10.0
    max_duration: float = 900.0
    first_token_timeout: float = 120.0
    heartbeat_interval: float = 15.0
    disconnect_window: float = 120.0  # store.resume_window_s
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # before the first token only
    max_bad_frames: int = 100  # refused client frames before the connection is closed
    max_detached: int = 1024  # gateway-wide: streams kept generating after their client left
    max_tool_result_bytes: int = 4 * 1024 * 1024  # per stream: all its tool results

    @property
    def tick(self) -> float:
        """How often a connection's timer checks the send timeout and the heartbeat (s)."""
        return min(1.0, max(0.01, min(self.send_timeout, self.heartbeat_interval) / 4))


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one connection, read by tests and the gateway's accounting."""

    frames_sent: int = 0
    bytes_sent: int = 0
    writes: int = 0  # transport writes: a batch of frames is one
    max_buffered: int = 0
    pauses: int = 0  # provider bodies paused by flow control
    aborted: bool = False
    slow_consumer: bool = False


def session_limits(
    options: ConnectionOptions,
    *,
    max_streams: int = 256,
    max_frame_bytes: int = 1024 * 1024,
    telemetry_interval: float = 0.5,
) -> SessionLimits:
    """The core's limits for a connection with these options (its byte caps and deadlines)."""
    return SessionLimits(
        max_streams,
        max_frame_bytes,
        telemetry_interval,
        queue_events=options.queue_events,
        queue_bytes=options.queue_bytes,
        buffer_bytes=options.buffer_bytes,
        first_token_timeout=options.first_token_timeout,
        max_duration=options.max_duration,
        max_bad_frames=options.max_bad_frames,
        max_tool_result_bytes=options.max_tool_result_bytes,
    )
