"""A connection's outgoing frames: one bounded queue per stream, a control queue, telemetry slots.

Owns the order in which encoded frames leave a connection and the bounds on what waits:

- control frames (connection-level `ready`, `error`, `goaway`) leave first;
- then the streams' queues, round-robin one frame at a time, so a chatty stream cannot
  starve the others; a stream's own frames keep their order;
- `telemetry` leaves only when no other frame waits. Each stream holds at most one pending
  telemetry frame: a newer one replaces it, and a closed stream's is dropped. Both count as
  shed. Telemetry therefore is the first thing shed when the connection is backed up.

Bounds, per stream: `max_events` frames or `max_bytes` bytes. `push` never refuses (the
final `error`/`finish` of a stream must always fit); the stream's producer asks `is_full`
after each push and stops reading its upstream until `has_room` (below half of both
bounds) — that is the backpressure into TCP. Worst case per running stream is therefore
`max_bytes` plus one upstream chunk's worth of frames plus its final two frames.

What the *reader* adds is tracked apart as `backlog_bytes`: control frames (refusals of bad
frames) plus the queues of streams that have ended but not drained. The shell stops reading
the client while that backlog is over its bound, so a client that sends faster than it reads
cannot grow it.

Pure data structure: no asyncio; the gateway shell wakes tasks around it.
"""

from __future__ import annotations

from collections import deque


class _StreamQueue:
    __slots__ = ("bytes", "ended", "frames")

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()
        self.bytes = 0
        self.ended = False


class Outbox:
    """Outgoing encoded frames of one connection, in the order they must leave."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("outbox bounds must be positive")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.shed_telemetry = 0
        self._control: deque[bytes] = deque()
        self._streams: dict[str, _StreamQueue] = {}
        self._ready: deque[str] = deque()  # streams with frames waiting, in round-robin order
        self._telemetry: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._control_bytes = 0
        self._ended_bytes = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of control and stream frames waiting (telemetry excluded)."""
        return self._pending_bytes

    @property
    def backlog_bytes(self) -> int:
        """Bytes the reader is answerable for: control frames and ended streams' queues."""
        return self._control_bytes + self._ended_bytes

    def __len__(self) -> int:
        return len(self._control) + sum(len(q.frames) for q in self._streams.values())

    def push_control(self, data: bytes) -> None:
        """Queue a connection-level frame; it leaves before any stream frame."""
        self._control.append(data)
        self._pending_bytes += len(data)
        self._control_bytes += len(data)

    def push(self, stream_id: str, data: bytes) -> None:
        """Queue a frame of a stream (created on first push)."""
        queue = self._streams.get(stream_id)
        if queue is None:
            queue = self._streams[stream_id] = _StreamQueue()
        elif queue.ended:
            # The id was reused while the ended stream's frames still wait: they share
            # the queue (and its order), and the new stream is not ended.
            queue.ended = False
            self._ended_bytes -= queue.bytes
        if not queue.frames:
            self._ready.append(stream_id)
        queue.frames.append(data)
        queue.bytes += len(data)
        self._pending_bytes += len(data)

    def push_telemetry(self, stream_id: str, data: bytes) -> None:
        """Offer a telemetry frame; it replaces (sheds) an older one of the same stream."""
        queue = self._streams.get(stream_id)
        if queue is not None and queue.ended:
            self.shed_telemetry += 1
            return
        if stream_id in self._telemetry:
            self.shed_telemetry += 1
        self._telemetry[stream_id] = data

    def end_stream(self, stream_id: str) -> None:
        """The stream pushed its last frame; drop its pending telemetry, forget it once drained."""
        if self._telemetry.pop(stream_id, None) is not None:
            self.shed_telemetry += 1
        queue = self._streams.get(stream_id)
        if queue is None:
            return
        if queue.ended:
            return
        queue.ended = True
        self._ended_bytes += queue.bytes
        if not queue.frames:
            del self._streams[stream_id]

    def is_full(self, stream_id: str) -> bool:
        """True when the stream's producer must stop reading its upstream."""
        queue = self._streams.get(stream_id)
        if queue is None:
            return False
        return len(queue.frames) >= self.max_events or queue.bytes >= self.max_bytes

    def has_room(self, stream_id: str) -> bool:
        """True when a stopped producer may read again (below half of both bounds)."""
        queue = self._streams.get(stream_id)
        if queue is None:
            return True
        return len(queue.frames) <= self.max_events // 2 and queue.bytes <= self.max_bytes // 2

    def queued(self, stream_id: str) -> tuple[int, int]:
        """(frames, bytes) waiting for a stream."""
        queue = self._streams.get(stream_id)
        return (0, 0) if queue is None else (len(queue.frames), queue.bytes)

    def pop(self) -> tuple[str | None, bytes] | None:
        """The next frame to send with its stream id (None for control), or None if empty."""
        if self._control:
            data = self._control.popleft()
            self._pending_bytes -= len(data)
            self._control_bytes -= len(data)
            return None, data
        if self._ready:
            stream_id = self._ready.popleft()
            queue = self._streams[stream_id]
            data = queue.frames.popleft()
            queue.bytes -= len(data)
            self._pending_bytes -= len(data)
            if queue.ended:
                self._ended_bytes -= len(data)
            if queue.frames:
                self._ready.append(stream_id)
            elif queue.ended:
                del self._streams[stream_id]
            return stream_id, data
        if self._telemetry:
            stream_id = next(iter(self._telemetry))
            return stream_id, self._telemetry.pop(stream_id)
        return None

    def clear(self) -> None:
        """Drop everything (the connection is gone)."""
        self._control.clear()
        self._streams.clear()
        self._ready.clear()
        self._telemetry.clear()
        self._pending_bytes = 0
        self._control_bytes = 0
        self._ended_bytes = 0
