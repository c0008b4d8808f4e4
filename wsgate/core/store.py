"""The resume store's contract: what every store (memory, Redis) keeps and answers.

Owns the interface the gateway programs against (`Store`), the records it returns (`Meta`,
`Page`, `Claim`), the limits every store enforces (`StoreLimits`) and the per-message bound
on a log (`LogBound`), so both implementations trim at the same frame. No I/O here: the
implementations live in `wsgate/store/` (one file each); one contract suite
(`tests/store/`) runs unchanged against both.

What a store keeps, per `message_id` (a generation):
- an event log: the encoded durable frames of the stream (those with `seq`), keyed by
  `seq`. Appending a `seq` already logged is a no-op, so a retried append never doubles.
- a small record (`Meta`): epoch, owner node, state (running or ended), the first and the
  last `seq` still logged, the finish reason.
- optionally one idempotency key pointing at the message (`claim`), kept as long as the
  message's log.
- the principal it was started for (`Meta.principal`, "" when none was given): a resume or
  a cancel by another principal is the gateway's to refuse.

Besides messages, a store keeps the agent loop's tool ledger (`tool_claim`, `tool_done`):
per server-side tool call (its key names the message, the turn and the call id) either
"running on node N" or "done, with this result", for `run_ttl_s`. Claiming is atomic (of
two nodes claiming one call, one runs it); a call found running or done is never run again
(the ledger's rule: at most once, and exactly once unless a node dies mid-call; then its
outcome is unknown and the call is not repeated). A store also keeps single-use tickets
(`put_ticket`, `take_ticket`: an opaque payload under the SHA-256 of a ticket, never the
ticket itself; taken once, atomically, by any node sharing the store; gone at their TTL)
and provides the nodes' shared rate limiter
(`limiter`, a `core.ratelimit.Limiter`, started and stopped with the store).

Writes are buffered: `begin`, `append` and `end` return at once and what one loop turn
buffered is written together (one round trip in Redis); `flush` waits for it. Reads are
async. A store that cannot reach its backend raises `StoreUnavailable` from reads and
claims and reports `healthy = False`. Frames whose write failed are dropped (the log then
has a gap, which a resume detects and refuses as `resume_trimmed`); a message's `begin`
and `end` are kept and written again once the backend answers, so every message ends.

Lifetimes (`StoreLimits`): a running message's keys live `run_ttl_s` (the longest a stream
may run plus one window, so a dead node's logs go away by themselves); when the message
ends, its log and idempotency key live `window_s` more and its record another `window_s`
(a tombstone: a late resume learns `resume_expired` rather than `resume_not_found`).
Bounds: a log keeps at most `max_frames` frames and `max_bytes` bytes; past either, its
oldest frames are dropped (a resume from before them gets `resume_trimmed`).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from wsgate.core.errors import StoreUnavailable
from wsgate.core.ratelimit import Limiter

__all__ = [
    "Claim",
    "Limiter",
    "LogBound",
    "Meta",
    "Page",
    "State",
    "Store",
    "StoreLimits",
    "StoreUnavailable",
    "ticket_digest",
]

State = Literal["running", "ended"]


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """How long and how much a store keeps (seconds, frames, bytes)."""

    window_s: float = 120.0
    max_frames: int = 10_000
    max_bytes: int = 1024 * 1024
    run_ttl_s: float = 1020.0  # limits.max_stream_duration_s + window_s
    lease_s: float = 5.0  # a node's liveness lease (Redis); a node silent this long is lost

    def __post_init__(self) -> None:
        if min(self.window_s, self.run_ttl_s, self.lease_s) <= 0:
            raise ValueError("store lifetimes must be positive")
        if self.max_frames < 1 or self.max_bytes < 1:
            raise ValueError("store bounds must be positive")


@dataclass(frozen=True, slots=True)
class Meta:
    """The record of one message."""

    epoch: str
    owner: str  # the node generating it
    state: State
    first: int  # the first `seq` still logged (top + 1 when the log is empty)
    top: int  # the last `seq` logged (0 before any)
    finish: str | None = None  # the finish reason, once ended
    expired: bool = False  # the log is gone; only this record is left
    principal: str = ""  # the principal id it was started for ("" when none was given)


@dataclass(frozen=True, slots=True)
class Page:
    """What a read found: the record and the frames after the asked `seq`, in order."""

    meta: Meta
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    owner_alive: bool = True  # the owner node's lease holds (always, for a local store)


@dataclass(frozen=True, slots=True)
class Claim:
    """Who holds an idempotency key: the message it names and the request's fingerprint."""

    message_id: str
    fingerprint: str
    new: bool  # this claim made it


class Store(Protocol):
    """Event logs, message records and idempotency keys, shared by the nodes that use it."""

    @property
    def node_id(self) -> str:
        """This node's name, recorded as the owner of what it generates."""

    @property
    def limits(self) -> StoreLimits:
        """Lifetimes and bounds."""

    @property
    def healthy(self) -> bool:
        """False while the backend is unreachable (a probe sets it back)."""

    async def start(self) -> None:
        """Connect, and (Redis) hold this node's lease and listen for cancels."""

    async def close(self) -> None:
        """Write what is buffered, release the lease, disconnect."""

    def begin(
        self,
        message_id: str,
        epoch: str,
        idempotency_key: str | None = None,
        principal: str = "",
    ) -> None:
        """A message started for `principal` on this node (buffered)."""

    def append(self, message_id: str, seq: int, data: bytes) -> None:
        """Log one durable frame (buffered; a `seq` already logged is ignored)."""

    def end(self, message_id: str, finish: str) -> None:
        """The message produced its `finish` (buffered): its lifetimes start to run."""

    async def flush(self) -> None:
        """Wait until every write buffered so far reached the backend (or failed)."""

    async def read(self, message_id: str, after: int, limit: int) -> Page | None:
        """The record and up to `limit` frames with `seq` > `after`; None if unknown."""

    async def claim(
        self, key: str, fingerprint: str, message_id: str, epoch: str, principal: str = ""
    ) -> Claim:
        """Bind an idempotency key to `message_id` and `begin` it (for `principal`), in one step.

        Unless the key names a message whose log is still kept: then that one's `Claim`.
        """

    async def release(self, key: str, message_id: str) -> None:
        """Undo a `claim` whose stream never started (its client left meanwhile).

        Drops the key if it still names `message_id`, and the message's empty record.
        """

    async def cancel(self, message_id: str, owner: str) -> None:
        """Ask the owner node to cancel a message it generates."""

    def on_cancel(self, handler: Callable[[str], None]) -> None:
        """Call `handler(message_id)` when another node asks this one to cancel."""

    def watch(self, message_id: str, owner: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake()` soon after frames of `message_id` are logged; returns an unwatch."""

    async def tool_claim(self, key: str) -> bytes | None:
        """Claim a tool call's run: None when this node runs it now; else the ledger's record.

        The record is `b"running " + node_id` or `b"done " + result`.
        """

    async def tool_done(self, key: str, result: bytes) -> None:
        """Record the result of a call this node claimed (`b"done " + result` from now on)."""

    async def put_ticket(self, ticket: str, payload: bytes, ttl_s: float) -> None:
        """Keep `payload` under `ticket` (by its SHA-256) for `ttl_s` seconds."""

    async def take_ticket(self, ticket: str) -> bytes | None:
        """The payload of `ticket`, removed in the same step; None if unknown, taken, expired."""

    @property
    def limiter(self) -> Limiter:
        """The rate limiter shared by the nodes of this store (started with it)."""


def ticket_digest(ticket: str) -> str:
    """The name a ticket is kept under: its SHA-256, hex (a store never keeps the ticket)."""
    return hashlib.sha256(ticket.encode()).hexdigest()


class LogBound:
    """The per-message bound on a log: which old frames to drop as new ones arrive.

    Frames are appended in `seq` order; `add` returns the first `seq` to keep once the
    log holds at most `max_frames` frames and `max_bytes` bytes (the newest frame is always
    kept, whatever its size). Memory: one int per logged frame.
    """

    __slots__ = ("_first", "_sizes", "bytes", "max_bytes", "max_frames")

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._sizes: deque[int] = deque()
        self._first = 1
        self.bytes = 0

    @property
    def first(self) -> int:
        """The first `seq` kept."""
        return self._first

    def add(self, seq: int, size: int) -> int:
        """Account a frame of `size` bytes at `seq`; the first `seq` to keep after it."""
        if not self._sizes:
            self._first = seq
        self._sizes.append(size)
        self.bytes += size
        sizes = self._sizes
        while len(sizes) > 1 and (len(sizes) > self.max_frames or self.bytes > self.max_bytes):
            self.bytes -= sizes.popleft()
            self._first += 1
        return self._first
