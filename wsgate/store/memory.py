"""The memory store: event logs, records and idempotency keys in this process (the default).

Owns the single-node implementation of `core.store.Store`: what `wsgate serve` uses with
no configuration. Everything is in dictionaries of this process; nothing survives it, and
a resume works only on the node that generated the message (cluster mode needs Redis).

Expiry is lazy and ordered: running messages in the order they began, ended ones in the
order they ended (one `window_s` for all, so that order is the expiry order); every call
first drops what is past its time, so the work is amortised over the calls and no timer is
needed.

Memory: per message its log (at most `max_frames` frames and `max_bytes` bytes, as
`LogBound` trims) plus ~0.5 KiB of record. Over all messages `max_total_bytes` of logs:
past it the oldest ended logs are dropped early (their records say `expired`), and while
the running ones alone exceed it the store reports itself unhealthy, so the gateway
starts no more logged streams (`store_unavailable`, or unlogged ones) until some end.
The worst case is thus `max_total_bytes` plus, per running stream, one log's bound.
Tombstones are a record each, kept one more window.

The tool ledger: at most `MAX_TOOL_CALLS` (100_000) entries, each for `run_ttl_s` from its
claim, dropped in claim order as they expire; past the bound a claim raises
`StoreUnavailable` (the call is not run) rather than forget a call that ran.
Tickets: at most `max_tickets` (10_000) waiting, each its digest and payload (a principal's
JSON, ~0.3 KiB: ~5 MiB at the bound) and an entry of the expiry heap (which also holds taken
tickets until their time, at most max(2 x the tickets kept, 2048) entries: past that it is
rebuilt); expired ones are dropped lazily, at the next ticket call, in expiry order; past
the bound `put_ticket` raises `StoreUnavailable` (a named refusal, not an eviction of
tickets already handed out). The rate limiter's bounds are
`limiter_memory.py`'s.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

from wsgate.core.store import (
    Claim,
    LogBound,
    Meta,
    Page,
    State,
    StoreLimits,
    StoreUnavailable,
    ticket_digest,
)
from wsgate.store.limiter_memory import MemoryLimiter

DEFAULT_TOTAL_BYTES = 256 * 1024 * 1024
MAX_TICKETS = 10_000
"""Tickets waiting to be used, at most (a `put_ticket` past it is refused)."""
MAX_TOOL_CALLS = 100_000
"""Tool ledger entries kept, at most (a `tool_claim` past it is refused: never evicted)."""


@dataclass(slots=True)
class _Message:
    """One message's log and record; its `Meta` is made when a read asks for it."""

    epoch: str
    owner: str
    bound: LogBound
    entries: deque[tuple[int, bytes]] = field(default_factory=deque)
    key: str | None = None
    top: int = 0
    state: State = "running"
    finish: str | None = None
    principal: str = ""

    def meta(self, *, expired: bool = False) -> Meta:
        first = self.top + 1 if expired or not self.entries else self.bound.first
        return Meta(
            self.epoch, self.owner, self.state, first, self.top, self.finish, expired,
            self.principal,
        )  # fmt: skip


class MemoryStore:
    """A `Store` in this process's memory."""

    def __init__(
        self,
        limits: StoreLimits | None = None,
        *,
        node_id: str = "local",
        max_total_bytes: int = DEFAULT_TOTAL_BYTES,
        max_tickets: int = MAX_TICKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits or StoreLimits()
        self._node_id = node_id
        self.max_total_bytes = max_total_bytes
        self._clock = clock
        self._messages: dict[str, _Message] = {}
        self._running: OrderedDict[str, float] = OrderedDict()  # id -> when its keys expire
        self._ended: OrderedDict[str, float] = OrderedDict()  # id -> when its log expires
        self._tombs: OrderedDict[str, tuple[float, Meta]] = OrderedDict()
        self._keys: dict[str, Claim] = {}  # key -> holder; it lives as long as its log
        self._total = 0
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        self._woken: set[str] = set()
        self._cancel: Callable[[str], None] | None = None
        self.max_tickets = max_tickets
        self._tickets: dict[str, tuple[float, bytes]] = {}  # digest -> (expires, payload)
        self._tool_calls: dict[str, tuple[float, bytes]] = {}  # key -> (expires, record)
        self._ticket_expiry: list[tuple[float, str]] = []  # a heap; taken ones linger
        self._limiter = MemoryLimiter(clock)

    @property
    def node_id(self) -> str:
        """This node's name (one node: the owner of everything here)."""
        return self._node_id

    @property
    def limits(self) -> StoreLimits:
        """Lifetimes and bounds."""
        return self._limits

    @property
    def healthy(self) -> bool:
        """Whether logs still fit in `max_total_bytes` (there is no backend to lose)."""
        return self._total <= self.max_total_bytes

    @property
    def limiter(self) -> MemoryLimiter:
        """This node's rate limiter (in memory, like everything here)."""
        return self._limiter

    @property
    def total_bytes(self) -> int:
        """Bytes of every log kept."""
        return self._total

    async def start(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Forget everything."""
        self._messages.clear()
        self._running.clear()
        self._ended.clear()
        self._tombs.clear()
        self._keys.clear()
        self._watchers.clear()
        self._total = 0
        self._tickets.clear()
        self._ticket_expiry.clear()
        self._limiter.clear()

    # --- writes ---------------------------------------------------------------------

    def begin(
        self,
        message_id: str,
        epoch: str,
        idempotency_key: str | None = None,
        principal: str = "",
    ) -> None:
        """A message starts here (for `principal`): an empty log and a running record."""
        self._sweep()
        if message_id in self._messages:
            return
        limits = self._limits
        bound = LogBound(limits.max_frames, limits.max_bytes)
        self._messages[message_id] = _Message(
            epoch, self._node_id, bound, key=idempotency_key, principal=principal
        )
        self._running[message_id] = self._clock() + limits.run_ttl_s

    def append(self, message_id: str, seq: int, data: bytes) -> None:
        """Log one frame; trims the oldest past the bounds."""
        message = self._messages.get(message_id)
        if message is None or seq <= message.top or message.state == "ended":
            return
        message.entries.append((seq, data))
        self._total += len(data)
        first = message.bound.add(seq, len(data))
        entries = message.entries
        while entries[0][0] < first:
            self._total -= len(entries.popleft()[1])
        message.top = seq
        self._wake(message_id)
        if self._total > self.max_total_bytes:
            self._shed()

    def end(self, message_id: str, finish: str) -> None:
        """The message ended: its log and key live one window from now."""
        message = self._messages.get(message_id)
        if message is None or message.state == "ended":
            return
        message.state, message.finish = "ended", finish
        self._running.pop(message_id, None)
        self._ended[message_id] = self._clock() + self._limits.window_s
        self._wake(message_id)

    async def flush(self) -> None:
        """Writes are immediate here."""

    # --- reads ----------------------------------------------------------------------

    async def read(self, message_id: str, after: int, limit: int) -> Page | None:
        """The record and up to `limit` frames after `after`."""
        self._sweep()
        message = self._messages.get(message_id)
        if message is None:
            tomb = self._tombs.get(message_id)
            return None if tomb is None else Page(tomb[1])
        meta = message.meta()
        skip = max(0, after + 1 - meta.first)
        return Page(meta, list(islice(message.entries, skip, skip + limit)))

    async def claim(
        self, key: str, fingerprint: str, message_id: str, epoch: str, principal: str = ""
    ) -> Claim:
        """Bind `key` to `message_id` and begin it, unless `key` names a kept message."""
        self._sweep()
        held = self._keys.get(key)
        if held is not None and held.message_id in self._messages:
            return held
        self._keys[key] = Claim(message_id, fingerprint, new=False)
        self.begin(message_id, epoch, key, principal)
        return Claim(message_id, fingerprint, new=True)

    async def release(self, key: str, message_id: str) -> None:
        """Forget a claim whose stream never started: its key and its empty message."""
        held = self._keys.get(key)
        if held is not None and held.message_id == message_id:
            del self._keys[key]
        message = self._messages.pop(message_id, None)
        if message is not None:
            self._running.pop(message_id, None)
            self._ended.pop(message_id, None)
            self._total -= sum(len(data) for _, data in message.entries)

    # --- the tool ledger ----------------------------------------------------------------

    async def tool_claim(self, key: str) -> bytes | None:
        """None: this node runs the call now; else the record (running or done)."""
        now = self._clock()
        ledger = self._tool_calls
        while ledger:  # one TTL for every entry: insertion order is expiry order
            oldest = next(iter(ledger))
            if ledger[oldest][0] > now:
                break
            del ledger[oldest]
        kept = ledger.get(key)
        if kept is not None:
            return kept[1]
        if len(ledger) >= MAX_TOOL_CALLS:
            raise StoreUnavailable(f"{MAX_TOOL_CALLS} tool calls are in the ledger already")
        ledger[key] = (now + self._limits.run_ttl_s, b"running " + self._node_id.encode())
        return None

    async def tool_done(self, key: str, result: bytes) -> None:
        """Record a claimed call's result (its entry keeps its place and expiry)."""
        kept = self._tool_calls.get(key)
        if kept is not None:
            self._tool_calls[key] = (kept[0], b"done " + result)

    # --- tickets ----------------------------------------------------------------------

    async def put_ticket(self, ticket: str, payload: bytes, ttl_s: float) -> None:
        """Keep `payload` under the ticket's digest for `ttl_s`; refused past `max_tickets`."""
        now = self._clock()
        self._sweep_tickets(now)
        digest = ticket_digest(ticket)
        if len(self._tickets) >= self.max_tickets and digest not in self._tickets:
            raise StoreUnavailable(f"{self.max_tickets} tickets are waiting already")
        expires = now + ttl_s
        self._tickets[digest] = (expires, payload)
        heapq.heappush(self._ticket_expiry, (expires, digest))

    async def take_ticket(self, ticket: str) -> bytes | None:
        """The ticket's payload, once: taking it removes it; None if unknown or expired."""
        now = self._clock()
        self._sweep_tickets(now)
        kept = self._tickets.pop(ticket_digest(ticket), None)
        return None if kept is None or kept[0] <= now else kept[1]

    def _sweep_tickets(self, now: float) -> None:
        """Drop the expired tickets (and the heap entries of taken ones as they come due)."""
        tickets, heap = self._tickets, self._ticket_expiry
        while heap and heap[0][0] <= now:
            expires, digest = heapq.heappop(heap)
            kept = tickets.get(digest)
            if kept is not None and kept[0] == expires:
                del tickets[digest]
        if len(heap) > max(2 * len(tickets), 2048):  # (entries of taken tickets linger)
            self._ticket_expiry = [(expires, digest) for digest, (expires, _) in tickets.items()]
            heapq.heapify(self._ticket_expiry)

    # --- cancels and wake-ups (one node: both stay in this process) --------------------

    async def cancel(self, message_id: str, owner: str) -> None:
        """Hand the cancel to this node's handler (every message here is this node's)."""
        if self._cancel is not None and owner == self._node_id:
            self._cancel(message_id)

    def on_cancel(self, handler: Callable[[str], None]) -> None:
        """Where cancels go."""
        self._cancel = handler

    def watch(self, message_id: str, owner: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` after the next frames of `message_id` (once per loop turn)."""
        del owner  # one node: the owner is always this one
        self._watchers.setdefault(message_id, []).append(wake)

        def unwatch() -> None:
            wakes = self._watchers.get(message_id)
            if wakes is not None and wake in wakes:
                wakes.remove(wake)
                if not wakes:
                    del self._watchers[message_id]

        return unwatch

    def _wake(self, message_id: str) -> None:
        if message_id not in self._watchers or message_id in self._woken:
            return
        self._woken.add(message_id)
        asyncio.get_running_loop().call_soon(self._call_wakes, message_id)

    def _call_wakes(self, message_id: str) -> None:
        self._woken.discard(message_id)
        for wake in list(self._watchers.get(message_id, ())):
            wake()

    # --- expiry ---------------------------------------------------------------------

    def _sweep(self) -> None:
        now = self._clock()
        for order in (self._running, self._ended):
            while order:
                message_id, expires = next(iter(order.items()))
                if expires > now:
                    break
                del order[message_id]
                self._drop(message_id, now)
        while self._tombs:
            message_id, (expires, _) = next(iter(self._tombs.items()))
            if expires > now:
                break
            del self._tombs[message_id]

    def _drop(self, message_id: str, now: float) -> None:
        """A log's time is up (or memory is short): keep its record as a tombstone."""
        message = self._messages.pop(message_id, None)
        if message is None:
            return
        self._total -= sum(len(data) for _, data in message.entries)
        key = message.key
        if key is not None and key in self._keys and self._keys[key].message_id == message_id:
            del self._keys[key]
        tomb = message.meta(expired=True)
        self._tombs[message_id] = (now + self._limits.window_s, tomb)

    def _shed(self) -> None:
        """Over `max_total_bytes`: drop the oldest ended logs first."""
        now = self._clock()
        while self._total > self.max_total_bytes and self._ended:
            message_id, _ = self._ended.popitem(last=False)
            self._drop(message_id, now)
