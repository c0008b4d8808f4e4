"""A connection's outgoing frames: one bounded queue per stream, a control queue, telemetry slots.

Owns the order in which encoded frames leave a connection and the bounds on what waits:

1. Connection-level control frames (`ready`, refusals, `goaway`) leave first.
2. Then a stream whose next frame is terminal (`error`, `finish`): ending streams free their
   resources and their clients soonest.
3. Then the streams' data, by deficit round robin over *bytes*: each stream in turn may send
   up to `quantum` bytes, so a stream of large deltas cannot starve streams of small ones.
   A stream's own frames always keep their order.
4. `telemetry` leaves only when nothing else waits. Each stream holds at most one pending
   telemetry frame: a newer one replaces it, an ended stream's is dropped. Both count as
   shed, so telemetry is the first thing shed when the connection is backed up.

Lossless coalescing: when a stream's queue holds several consecutive `delta.text` frames
(the client is not keeping up), they leave as one `delta.text` whose `seq` is the last one
covered and `first_seq` the first, up to `coalesce_bytes` of text. Nothing is dropped; the
number of frames merged away is counted.

Bounds, per stream: `max_events` frames or `max_bytes` bytes. `push` never refuses (the
final `error`/`finish` of a stream must always fit); the stream's producer asks `is_full`
after each push and stops reading its upstream until `has_room` (below half of both
bounds): that is the backpressure into TCP. The connection as a whole is bounded on
`pending_bytes` (`core/flow.py`: providers pause at half the cap, a client past the cap is
a slow consumer); ended streams' frames count there too. What only the *reader* adds
(refusals of bad frames, connection-level frames) is tracked apart as `control_bytes`, so
the shell can stop reading a client that sends bad frames faster than it reads.

Lone frames: the common case at paced rates is one frame pushed into an empty outbox and
popped in the same loop turn. It waits in a slot of the outbox itself (`_lone_*`), with no
queue, deque or entry made for it; the moment anything could tell the difference (a second
stream frame) it moves into the structures above. Every method answers as if it were
queued (the tests hold the two paths equal, `lone_slot = False` turns the slot off).

Memory: queues exist only while frames wait. A stream's queue is dropped when it drains
and made again by its next frame (an empty queue and no queue mean the same), and so are
the control and scheduling queues: an idle connection, or a stream stalled on its provider,
holds no deque (each costs ~0.75 KiB, more than the rest of an idle connection's outbox).

Pure data structure: no asyncio, no clock; the gateway shell wakes tasks around it.
"""

from __future__ import annotations

from collections import deque

from wsgate.core.frames import DeltaText, ErrorFrame, FinishFrame, ServerFrame, encode_frame


class _Entry:
    __slots__ = ("data", "first_seq", "seq", "terminal", "text")

    def __init__(self, data: bytes, frame: ServerFrame | None) -> None:
        self.data = data
        self.terminal = isinstance(frame, ErrorFrame | FinishFrame)
        if isinstance(frame, DeltaText):
            self.text: str | None = frame.text
            self.seq = frame.seq
            self.first_seq = frame.first_seq or frame.seq
        else:
            self.text = None
            self.seq = self.first_seq = 0


class _StreamQueue:
    __slots__ = ("bytes", "deficit", "ended", "entries")

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self.bytes = 0
        self.deficit = 0
        self.ended = False


class Outbox:
    """Outgoing encoded frames of one connection, in the order they must leave."""

    lone_slot = True
    """A lone stream frame waits in a slot instead of a queue (see "Lone frames")."""

    __slots__ = (
        "_active",
        "_control",
        "_control_bytes",
        "_lone_data",
        "_lone_ended",
        "_lone_frame",
        "_lone_id",
        "_pending_bytes",
        "_streams",
        "_telemetry",
        "_urgent",
        "coalesce_bytes",
        "coalesced",
        "max_bytes",
        "max_events",
        "quantum",
        "shed_telemetry",
    )

    def __init__(
        self,
        max_events: int,
        max_bytes: int,
        *,
        quantum: int = 4096,
        coalesce_bytes: int = 16 * 1024,
    ) -> None:
        if max_events < 1 or max_bytes < 1 or quantum < 1:
            raise ValueError("outbox bounds must be positive")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.quantum = quantum
        self.coalesce_bytes = coalesce_bytes
        self.shed_telemetry = 0
        self.coalesced = 0
        # The deques are None while empty (see "Memory" above).
        self._control: deque[bytes] | None = None
        self._streams: dict[str, _StreamQueue] = {}  # only streams with frames waiting
        self._active: deque[str] | None = None  # streams with data waiting, round robin
        self._urgent: deque[str] | None = None  # streams whose next frame is terminal
        self._telemetry: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._control_bytes = 0
        # The lone frame, while it is the only stream frame waiting: (stream, data, frame).
        # The lone frame's slot (`_lone_id` None: empty): three fields, not a tuple per token.
        self._lone_id: str | None = None
        self._lone_data = b""
        self._lone_frame: ServerFrame | None = None
        self._lone_ended = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of control and stream frames waiting (telemetry excluded)."""
        return self._pending_bytes

    @property
    def empty(self) -> bool:
        """Nothing to pop: no frame and no telemetry waits."""
        return not self._pending_bytes and not self._telemetry

    @property
    def control_bytes(self) -> int:
        """Bytes of connection-level frames waiting (refusals of bad frames among them)."""
        return self._control_bytes

    def __len__(self) -> int:
        control = len(self._control) if self._control is not None else 0
        lone = 0 if self._lone_id is None else 1
        return control + lone + sum(len(q.entries) for q in self._streams.values())

    def push_control(self, data: bytes) -> None:
        """Queue a connection-level frame; it leaves before any stream frame."""
        if self._control is None:
            self._control = deque()
        self._control.append(data)
        self._pending_bytes += len(data)
        self._control_bytes += len(data)

    def push(self, stream_id: str, data: bytes, frame: ServerFrame | None = None) -> None:
        """Queue a stream's frame (its encoding, and the frame for kind and coalescing)."""
        if self._lone_id is not None:
            self._unlone()
        elif not self._streams and self.lone_slot:
            self._lone_id = stream_id
            self._lone_data = data
            self._lone_frame = frame
            self._lone_ended = False
            self._pending_bytes += len(data)
            return
        queue = self._streams.get(stream_id)
        if queue is None:
            queue = self._streams[stream_id] = _StreamQueue()
        elif queue.ended:
            # The id was reused while the ended stream's frames still wait: they share
            # the queue (and its order), and the new stream is not ended.
            queue.ended = False
        entry = _Entry(data, frame)
        if not queue.entries:
            self._schedule(stream_id, entry)
        queue.entries.append(entry)
        queue.bytes += len(data)
        self._pending_bytes += len(data)

    def push_telemetry(self, stream_id: str, data: bytes) -> None:
        """Offer a telemetry frame; it replaces (sheds) an older one of the same stream."""
        queue = self._streams.get(stream_id)
        if (queue is not None and queue.ended) or self._is_lone(stream_id, ended=True):
            self.shed_telemetry += 1
            return
        if stream_id in self._telemetry:
            self.shed_telemetry += 1
        self._telemetry[stream_id] = data

    def end_stream(self, stream_id: str) -> None:
        """The stream pushed its last frame; drop its pending telemetry, forget it once drained."""
        if self._telemetry.pop(stream_id, None) is not None:
            self.shed_telemetry += 1
        if self._is_lone(stream_id, ended=False):
            self._lone_ended = True
            return
        queue = self._streams.get(stream_id)
        if queue is None or queue.ended:
            return
        queue.ended = True

    def is_full(self, stream_id: str) -> bool:
        """True when the stream's producer must stop reading its upstream."""
        frames, size = self.queued(stream_id)
        return frames > 0 and (frames >= self.max_events or size >= self.max_bytes)

    def has_room(self, stream_id: str) -> bool:
        """True when a stopped producer may read again (below half of both bounds)."""
        frames, size = self.queued(stream_id)
        return frames <= self.max_events // 2 and size <= self.max_bytes // 2

    def queued(self, stream_id: str) -> tuple[int, int]:
        """(frames, bytes) waiting for a stream."""
        lone = self._lone_id
        if lone is not None:
            return (1, len(self._lone_data)) if lone == stream_id else (0, 0)
        queue = self._streams.get(stream_id)
        return (0, 0) if queue is None else (len(queue.entries), queue.bytes)

    def pop(self) -> tuple[str | None, bytes] | None:
        """The next frame to send with its stream id (None for control), or None if empty."""
        control = self._control
        if control is not None:
            data = control.popleft()
            if not control:
                self._control = None
            self._pending_bytes -= len(data)
            self._control_bytes -= len(data)
            return None, data
        lone = self._lone_id
        if lone is not None:
            data = self._lone_data
            self._lone_id, self._lone_data, self._lone_frame = None, b"", None
            self._pending_bytes -= len(data)
            return lone, data
        urgent = self._urgent
        if urgent is not None:
            stream_id = urgent.popleft()
            if not urgent:
                self._urgent = None
            return stream_id, self._take(stream_id, self._streams[stream_id], from_active=False)
        active = self._active
        while active is not None:
            stream_id = active[0]
            queue = self._streams[stream_id]
            head = queue.entries[0]
            if queue.deficit < len(head.data):
                queue.deficit += self.quantum
                active.rotate(-1)
                continue
            return stream_id, self._take(stream_id, queue, from_active=True)
        if self._telemetry:
            stream_id = next(iter(self._telemetry))
            return stream_id, self._telemetry.pop(stream_id)
        return None

    def take_stream(self, stream_id: str) -> list[bytes]:
        """Remove and return a stream's unsent frames, in order (its client is gone)."""
        if self._lone_id is not None and self._lone_id == stream_id:
            self._unlone()
        queue = self._streams.pop(stream_id, None)
        self._telemetry.pop(stream_id, None)
        if queue is None:
            return []
        self._pending_bytes -= queue.bytes
        if self._active is not None and stream_id in self._active:
            self._active.remove(stream_id)
            self._active = self._active or None
        if self._urgent is not None and stream_id in self._urgent:
            self._urgent.remove(stream_id)
            self._urgent = self._urgent or None
        return [entry.data for entry in queue.entries]

    def clear(self) -> None:
        """Drop everything (the connection is gone)."""
        self._control = self._active = self._urgent = None
        self._lone_id, self._lone_data, self._lone_frame = None, b"", None
        self._streams.clear()
        self._telemetry.clear()
        self._pending_bytes = self._control_bytes = 0

    def _is_lone(self, stream_id: str, *, ended: bool) -> bool:
        """The lone frame is this stream's, and its stream is (not) ended."""
        return self._lone_id == stream_id and self._lone_ended is ended

    def _unlone(self) -> None:
        """Move the lone frame into a queue of its own, exactly as `push` would have."""
        stream_id, data, frame = self._lone_id, self._lone_data, self._lone_frame
        assert stream_id is not None  # noqa: S101 - only called with a lone frame
        self._lone_id, self._lone_data, self._lone_frame = None, b"", None
        queue = self._streams[stream_id] = _StreamQueue()
        entry = _Entry(data, frame)
        self._schedule(stream_id, entry)
        queue.entries.append(entry)
        queue.bytes = len(data)
        queue.ended = self._lone_ended

    def _schedule(self, stream_id: str, head: _Entry) -> None:
        """Put a stream whose queue just got a new head where that head belongs."""
        if head.terminal:
            if self._urgent is None:
                self._urgent = deque()
            self._urgent.append(stream_id)
        else:
            if self._active is None:
                self._active = deque()
            self._active.append(stream_id)

    def _take(self, stream_id: str, queue: _StreamQueue, *, from_active: bool) -> bytes:
        """Remove the head (coalescing text), reschedule the stream; return the bytes.

        A stream served from the front of the round robin stays there while its deficit
        lasts; one served as urgent goes back to wherever its new head belongs.
        """
        if queue.entries[0].text is not None and len(queue.entries) > 1:
            data, taken = self._coalesce(stream_id, queue)
        else:
            entry = queue.entries.popleft()
            data, taken = entry.data, len(entry.data)
        queue.bytes -= taken
        self._pending_bytes -= taken
        if from_active:
            queue.deficit -= len(data)
        if not queue.entries:
            if from_active:
                self._leave_active()
            # Drained: forget the queue (its deficit restarts at 0 with the next frame).
            del self._streams[stream_id]
        elif not from_active:
            self._schedule(stream_id, queue.entries[0])
        elif queue.entries[0].terminal:
            self._leave_active()
            self._schedule(stream_id, queue.entries[0])
        return data

    def _leave_active(self) -> None:
        """Take the stream at the front of the round robin out of it."""
        active = self._active
        assert active is not None  # noqa: S101 - only called for a stream served from it
        active.popleft()
        if not active:
            self._active = None

    def _coalesce(self, stream_id: str, queue: _StreamQueue) -> tuple[bytes, int]:
        """Merge the leading run of text deltas into one frame; (its bytes, bytes removed)."""
        entries = queue.entries
        first = entries.popleft()
        texts = [first.text or ""]
        size = len(texts[0])
        last_seq, taken = first.seq, len(first.data)
        while entries and (text := entries[0].text) is not None and size < self.coalesce_bytes:
            entry = entries.popleft()
            texts.append(text)
            size += len(text)
            last_seq = entry.seq
            taken += len(entry.data)
        if len(texts) == 1:
            return first.data, taken
        self.coalesced += len(texts) - 1
        merged = DeltaText(stream_id, last_seq, "".join(texts), first_seq=first.first_seq)
        return encode_frame(merged), taken
