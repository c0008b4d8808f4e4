"""The Redis store: event logs, records and idempotency keys shared by the nodes of a cluster.

Owns `RedisStore`, the `core.store.Store` on Redis (standalone, or Redis Cluster with
`cluster=True`) through `redis.asyncio`: the key layout, the write buffer and its one round
trip per flush, the node's liveness lease, and the one pub/sub connection per node that
carries cancels and wake-ups. It keeps what it is given and decides nothing about streams
(what to log, when a resume is refused: the core's); no redis-py exception leaves it:
reads, claims and cancels raise `StoreUnavailable`. A buffered write that fails loses its
frames (counted in `dropped_frames`), never its message's begin or end: those are sent
again until Redis has them (see Resends). A Redis that does not answer turns `healthy`
False until a probe's PING does; writes are tried meanwhile all the same.

Keys. One message's keys share a hash tag, so one cluster slot (one script may touch them
all): `{prefix}:{<message_id>}:ev`, a stream of its frames (entry id `<seq>-0`, field `d`;
created empty at `begin`), and `{prefix}:{<message_id>}:meta`, a hash (epoch, owner,
principal, state, first, top, finish, key). An idempotency key is a key of its own (any slot),
`{prefix}:idem:{<key>}` = `"<message_id> <fingerprint>"` (message ids hold no space).
A node's lease is `{prefix}:node:<node_id>`, set for `lease_s`, refreshed every
`lease_s / 3`, deleted at `close`. Channels: `{prefix}:node:<node_id>:ctl` ("cancel <id>",
"watch <id> <node>") and `{prefix}:wake:<message_id>`.
`{prefix}:tool:<message_id>:<turn>:<call_id>` is a server-side tool call's ledger record
(`running <node>`, then `done <result>`), set NX for `run_ttl_s`. A ticket is
`{prefix}:ticket:<sha256 of the ticket, hex>` (the ticket itself is never stored), set with
its TTL and taken with GETDEL, so it is used once whichever node takes it. The rate
limiter (`limiter_redis.py`, over this store's client) keeps `{prefix}:rl:<key>`.

Writes. `begin`, `append` and `end` only buffer (an append is one tuple on a list); the
first write of a loop turn creates the flush task (it starts at the next turn, as a
`call_soon` would), which sends all that is buffered in ONE round trip: standalone, one
EVALSHA of `_WRITE` for every message, packed here and sent over a connection of its own;
in a cluster, a pipeline (`transaction=False`) of one EVALSHA per message (its keys are one
slot) plus, at an end, one of `_EXPIRE_KEY` for the idempotency key (another slot). Per
message (each under its own pcall, so one that Redis refuses holds back no other) `_WRITE`
makes the record and the empty log when missing (again after a Redis restart: then the
idempotency key too, SET NX for `run_ttl_s`, so no other node can claim it for a second
generation; a keyed message's every flush carries the key's name and value for that),
XADDs the new entries (a `seq` at or under `top` is skipped: a retried append is a
no-op), XTRIMs MINID the first kept `seq`, sets first and top; at the end it sets state
and finish (and top to the last `seq` generated, when frames before the end were lost: a
resume then sees the gap), PEXPIREs the log and the key by `window_s`, the record by twice
that (an end already written is a no-op); and it PUBLISHes the wake of a watched message
that logged frames or ended. In a cluster the key is another slot's: a record made again
is reported, and the next flush (at once) SETs NX its key in a call of its own. Flushes
never overlap (a second could overtake the first): what is buffered meanwhile goes in the
next, so batches grow with the load. The trims are this node's `LogBound` per running
message (frames and bytes), so Redis and memory drop the same frames.

Resends. A standalone flush whose connection turns out closed (Redis' idle `timeout`, a
restart) is sent once more, whole, on a new one: it costs nothing. A flush that fails
anyway (no answer, a timeout, an error reply: OOM, WRONGTYPE) loses the frames of the
messages it failed for (counted in `dropped_frames`; the log has a gap, which a resume
refuses as `resume_trimmed`), but such a message, if its begin or end was in it, stays
here until Redis has them: every later flush sends it again, and one comes
`PROBE_INTERVAL_S` after a failed one even if nothing else is written (and one at
`close`). Idle, Redis is thus tried every `PROBE_INTERVAL_S` while something is unsent.

Bounds. The buffer holds at most `MAX_BUFFERED` appends (10_000 frames, plus one begin
and one end per message); past it appends are dropped and counted in `dropped_frames`
(the log gets a gap, which a resume refuses as `resume_trimmed`). Worst case: 10_000
buffered frames plus the 10_000 of the flush in flight. Per message running here: its
`LogBound` (one int per logged frame, at most `max_frames`), forgotten at its end or
`run_ttl_s` after its begin. Kept to resend: no frame past one flush's retry; per message
whose begin or end Redis may lack, its record here (~0.3 KiB; an ended one's `LogBound`
released), until a flush writes them or `run_ttl_s` after its begin (its keys in Redis
are gone by then anyway): at most one per message begun here in the last `run_ttl_s`.

Pub/sub and clusters. A node reads one plain `redis.asyncio.Redis` pub/sub connection; in
a cluster it is to one node (the next known one when it fails; its pool built from the
URL's options, TLS for `rediss://`): a classic PUBLISH reaches
every node of a cluster, so one node's subscription hears all of them. redis-py 8 has an
asyncio `ClusterPubSub`, but it picks its node by the channel's slot and is built for
sharded pub/sub, which these broadcast channels do not need. A cluster pipeline refuses
PUBLISH: wakes go out from `_WRITE`, watch requests one command each. A claim spans two
slots (the key's, the message's): SET NX first, then the record, so another node may
briefly find a key whose message is not written yet; such a key is never taken for stale
before `CLAIM_GRACE` socket timeouts (see `claim`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from wsgate.core.store import (
    Claim,
    LogBound,
    Meta,
    Page,
    StoreLimits,
    StoreUnavailable,
    ticket_digest,
)
from wsgate.log import get_logger
from wsgate.store.limiter_redis import RedisLimiter, stop_tasks

log = get_logger("wsgate.store")

MAX_BUFFERED: Final = 10_000
"""Appends waiting for the next flush; past it they are dropped (and counted)."""
PROBE_INTERVAL_S: Final = 0.5
"""How often an unhealthy store PINGs (and a lost pub/sub connection is re-made)."""
CLAIM_GRACE: Final = 2
"""Socket timeouts a claim's record may take to follow its key (one retry each)."""
REFUSED_LOG_S: Final = 1.0
"""At most one `store_write_refused` warning this often (a refused message is resent)."""

_ERRORS: Final = (RedisError, RedisClusterException, OSError)
_END: Final = -1  # the `seq` of an `end` in the buffer (its data is the finish)

# Every message of one flush (standalone), or one (cluster: one slot per call). KEYS: per
# message ev, meta, and its idempotency key with flag 8. ARGV: run_ttl_ms, window_ms, owner,
# then per message "<entries> <first> <flags>", epoch, principal, the flagged extras in order
# (1 ended: the finish and the last `seq` generated; 2 watched: the wake channel; 4 keyed:
# the key as given, for a new record; 8 named: the key's value "<message_id> <fingerprint>"),
# then <entries> pairs of `seq`, frame in `seq` order. Each message is written under its own
# pcall: one Redis refuses (OOM, WRONGTYPE) holds back no other. Returns pairs of a message's
# place (from 1) and "made" (its record was missing: made, with its key when named) or the
# error that stopped it; none for a message written as it stood.
_WRITE: Final = b"""
local run_ttl, window, owner = ARGV[1], ARGV[2], ARGV[3]
local function write(ev, meta, epoch, who, n, first, from, finish, last, wake, key, idem, value)
  local held = redis.call('HMGET', meta, 'top', 'state')
  local top, made = tonumber(held[1]), false
  if not top then
    top, made = 0, true
    redis.call('HSET', meta, 'epoch', epoch, 'owner', owner, 'principal', who,
      'state', 'running', 'first', 1, 'top', 0, 'key', key)
    if redis.call('EXISTS', ev) == 0 then
      redis.call('XADD', ev, '0-1', 'd', '')
      redis.call('XTRIM', ev, 'MAXLEN', 0)
    end
    redis.call('PEXPIRE', ev, run_ttl)
    redis.call('PEXPIRE', meta, run_ttl)
    if idem and string.find(value, ' ', 1, true) < #value then
      redis.call('SET', idem, value, 'NX', 'PX', run_ttl)
    end
  end
  if held[2] == 'ended' then return made end
  local logged = 0
  for i = from, from + 2 * n - 1, 2 do
    local seq = tonumber(ARGV[i])
    if seq > top then
      local added = redis.pcall('XADD', ev, ARGV[i] .. '-0', 'd', ARGV[i + 1])
      if type(added) == 'string' then
        top, logged = seq, logged + 1
      elseif not string.find(added.err, 'equal or smaller', 1, true) then
        error(added)
      end
    end
  end
  if logged > 0 then
    redis.call('XTRIM', ev, 'MINID', first)
    redis.call('HSET', meta, 'first', first, 'top', top)
  end
  if finish then
    redis.call('HSET', meta, 'state', 'ended', 'finish', finish)
    if tonumber(last) > top then redis.call('HSET', meta, 'top', last) end
    redis.call('PEXPIRE', ev, window)
    redis.call('PEXPIRE', meta, 2 * window)
    if idem then
      local named = string.sub(value, 1, string.find(value, ' ', 1, true))
      local named_by = redis.call('GET', idem)
      if named_by and string.sub(named_by, 1, #named) == named then
        redis.call('PEXPIRE', idem, window)
      end
    end
  end
  if wake and (logged > 0 or finish) then
    redis.call('PUBLISH', wake, '')
  end
  return made
end
local out, k, a, m = {}, 1, 4, 0
while a <= #ARGV do
  m = m + 1
  local n, first, flags = string.match(ARGV[a], '^(%d+) (%d+) (%d+)$')
  n, flags = tonumber(n), tonumber(flags)
  local epoch, who, ev, meta = ARGV[a + 1], ARGV[a + 2], KEYS[k], KEYS[k + 1]
  a, k = a + 3, k + 2
  local finish, last, wake, key, idem, value = nil, nil, nil, '', nil, nil
  if bit.band(flags, 1) ~= 0 then finish, last = ARGV[a], ARGV[a + 1]; a = a + 2 end
  if bit.band(flags, 2) ~= 0 then wake = ARGV[a]; a = a + 1 end
  if bit.band(flags, 4) ~= 0 then key = ARGV[a]; a = a + 1 end
  if bit.band(flags, 8) ~= 0 then idem, value = KEYS[k], ARGV[a]; k, a = k + 1, a + 1 end
  local ok, made = pcall(
    write, ev, meta, epoch, who, n, first, a, finish, last, wake, key, idem, value)
  a = a + 2 * n
  if not ok then
    out[#out + 1] = m
    out[#out + 1] = type(made) == 'table' and made.err or tostring(made)
  elseif made then
    out[#out + 1] = m
    out[#out + 1] = 'made'
  end
end
return out
"""
_ENDED, _WATCHED, _KEYED, _NAMED = 1, 2, 4, 8  # the flags of a message in `_WRITE`
_KEYED_NAMED: Final = b"%d" % (_KEYED | _NAMED)
# KEYS: the idempotency key. ARGV: "<message_id> ", window_ms. Only while it names the message.
_EXPIRE_KEY: Final = b"""
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: the idempotency key. ARGV: the value seen, the new value, run_ttl_ms.
_SWAP_KEY: Final = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# KEYS: the idempotency key. ARGV: "<message_id> ". Deleted only while it names the message.
_RELEASE_KEY: Final = b"""
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_SCRIPTS: Final = {
    hashlib.sha1(body).hexdigest(): body  # noqa: S324 - Redis names scripts by SHA-1
    for body in (_WRITE, _EXPIRE_KEY, _SWAP_KEY, _RELEASE_KEY)
}
_SHA: Final = {body: sha for sha, body in _SCRIPTS.items()}

Command = tuple[Any, ...]


@dataclass(slots=True)
class _Running:
    """A message generated here (or ended, until Redis has its end), and its next flush."""

    ev: bytes
    meta: bytes
    epoch: bytes
    bound: LogBound
    principal: bytes = b""  # the principal id it was started for
    key: bytes = b""  # the idempotency key as given (b"" without one)
    idem: bytes = b""  # its Redis key
    value: bytes = b""  # the key's value, "<message_id> <fingerprint>" (no fingerprint: begun)
    top: int = 0  # the last `seq` generated
    finish: bytes | None = None
    watched: bool = False
    unsent: bool = True  # Redis may lack its record (a begin) or its end: sent until it has
    rekey: bool = False  # a cluster made its record again: its key is to be made again too
    out: list[Any] = field(default_factory=list)  # `seq`, frame, ... for the next flush
    began: float = 0.0  # loop time; in Redis its keys live `run_ttl_s` from about then


_SPENT: Final = LogBound(1, 1)  # the bound of an ended message (no frames follow its end)
# What one flush sent of a message: its id, itself, its frames, and whether it re-made its key.
_Sent = tuple[str, _Running, int, bool]


@dataclass(slots=True)
class _Watch:
    owner: str
    wakes: list[Callable[[], None]] = field(default_factory=list)


class RedisStore:
    """A `Store` in Redis, shared by every node that names the same Redis and prefix."""

    def __init__(  # noqa: PLR0913 - where Redis is and how this node uses it ([store])
        self,
        url: str,
        limits: StoreLimits,
        *,
        node_id: str,
        prefix: str = "wsg",
        cluster: bool = False,
        socket_timeout: float = 1.0,
    ) -> None:
        self._url = url
        self._limits = limits
        self._node_id = node_id
        self._prefix = prefix
        self._cluster = cluster
        self._socket_timeout = socket_timeout
        self._options: dict[str, Any] = {
            "decode_responses": False,
            "protocol": 2,  # no HELLO round trip at connect; replies in their classic shapes
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
        }
        retry = Retry(NoBackoff(), 1)  # a stale connection is re-made once; no waiting
        self._client: Redis | RedisCluster = (
            RedisCluster.from_url(url, retry=retry, **self._options)
            if cluster
            else Redis.from_url(url, retry=retry, **self._options)
        )  # connects lazily, at `start`
        # Standalone, flushes go over one connection of their own, with no per-call timeout
        # (one `asyncio.timeout` bounds a whole flush): the cheapest redis-py path.
        self._write_client = (
            None
            if cluster
            else Redis.from_url(
                url, retry=Retry(NoBackoff(), 0), **{**self._options, "socket_timeout": None}
            )
        )
        self._writer: AbstractConnection | None = None
        self._run_ttl_ms = round(limits.run_ttl_s * 1000)
        self._window_ms = round(limits.window_s * 1000)
        self._lease_ms = round(limits.lease_s * 1000)
        self._owner = node_id.encode()
        self._node_key = f"{prefix}:node:{node_id}".encode()
        self._ctl = self._ctl_channel(node_id)
        self._wake_prefix = f"{prefix}:wake:".encode()
        self._healthy = False
        self._started = False
        self._closed = False
        # The write buffer: appends and ends in call order, begins apart.
        self._buf: list[tuple[str, int, bytes]] = []
        self._begun: list[str] = []
        self._running: dict[str, _Running] = {}
        # Messages whose begin or end (or, in a cluster, re-made key) a flush failed to
        # write: every flush sends them again until one does.
        self._resend: dict[str, _Running] = {}
        self._due = False  # a flush is wanted with nothing buffered (to resend)
        self._resend_at: asyncio.TimerHandle | None = None
        self._refused_at = -REFUSED_LOG_S  # loop time of the last refusal logged
        self._refused = 0  # refused messages since
        self._drainer: asyncio.Task[None] | None = None
        self._pending: asyncio.Future[None] | None = None  # the flush of what is buffered
        self._inflight: asyncio.Future[None] | None = None  # the flush being written
        self.dropped_frames = 0  # appends dropped: buffer full, or the flush failed
        self._overflowing = False  # appends dropped since the last flush began (logged once)
        # Pub/sub: one connection, its wanted channels, and the watches behind them.
        self._cancel: Callable[[str], None] | None = None
        self._watches: dict[str, _Watch] = {}
        self._pubsub_client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._subscribed: set[bytes] = set()
        self._sub_lock = asyncio.Lock()
        self._sub_changed = asyncio.Event()
        self._pubsub_nodes: list[tuple[str, int]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe: asyncio.Task[None] | None = None
        self._limiter = RedisLimiter(
            self._client, prefix=prefix, lease_s=limits.lease_s, on_lost=self._lost
        )

    @property
    def node_id(self) -> str:
        """This node's name, recorded as the owner of what it generates."""
        return self._node_id

    @property
    def limits(self) -> StoreLimits:
        """Lifetimes and bounds."""
        return self._limits

    @property
    def healthy(self) -> bool:
        """False while Redis cannot be reached (a probe sets it back)."""
        return self._healthy

    @property
    def limiter(self) -> RedisLimiter:
        """The rate limiter every node of this Redis and prefix shares (started with it)."""
        return self._limiter

    # --- keys -----------------------------------------------------------------------

    def _ev(self, message_id: str) -> bytes:
        return f"{self._prefix}:{{{message_id}}}:ev".encode()

    def _meta(self, message_id: str) -> bytes:
        return f"{self._prefix}:{{{message_id}}}:meta".encode()

    def _idem(self, key: str) -> bytes:
        return f"{self._prefix}:idem:{{{key}}}".encode()

    def _ctl_channel(self, node_id: str) -> bytes:
        return f"{self._prefix}:node:{node_id}:ctl".encode()

    def _owner_key(self, node_id: str) -> bytes:
        return f"{self._prefix}:node:{node_id}".encode()

    def _ticket(self, ticket: str) -> bytes:
        return f"{self._prefix}:ticket:{ticket_digest(ticket)}".encode()

    # --- life -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, take this node's lease, subscribe to its control channel."""
        try:
            if isinstance(self._client, RedisCluster):
                await self._client.initialize()
                self._pubsub_nodes = [(n.host, int(n.port)) for n in self._client.get_nodes()]
            await self._client.set(self._node_key, b"1", px=self._lease_ms)
            if self._write_client is not None:
                pool = self._write_client.connection_pool
                self._writer = await pool.get_connection()  # type: ignore[no-untyped-call]
            await self._connect_pubsub()
        except (*_ERRORS, TypeError, ValueError) as exc:  # (the last two: a URL's options)
            await self._disconnect()
            raise StoreUnavailable(f"redis: {exc}") from exc
        self._healthy = self._started = True
        await self._limiter.start()
        self._spawn(self._hold_lease())
        self._spawn(self._listen())
        self._spawn(self._sync_subscriptions())

    async def close(self) -> None:
        """Write what is buffered or to resend, stop every task, release the lease, disconnect.

        Then every message and watch is forgotten.
        """
        if self._closed:
            return
        if self._resend_at is not None:
            self._resend_at.cancel()
        if self._resend:
            self._resend_soon()  # one last try
        self._closed = True  # writes from now on are dropped
        await self.flush()
        tasks = [*self._tasks, *(t for t in (self._probe, self._drainer) if t is not None)]
        await stop_tasks(tasks, "redis store")
        await self._limiter.close()
        if self._resend:
            log.warning("store_unsent_at_close", backend="redis", messages=len(self._resend))
        self._buf, self._begun = [], []
        self._running.clear()
        self._resend.clear()
        self._watches.clear()
        for done in (self._pending, self._inflight):
            if done is not None and not done.done():  # (a drainer cancelled mid-write)
                done.set_result(None)
        if self._started:
            with contextlib.suppress(*_ERRORS):
                await self._client.delete(self._node_key)
        await self._disconnect()

    async def _disconnect(self) -> None:
        await self._close_pubsub()
        if self._write_client is not None:
            if self._writer is not None:
                await self._write_client.connection_pool.release(self._writer)
                self._writer = None
            await self._write_client.aclose()
        await self._client.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hold_lease(self) -> None:
        """Refresh this node's lease; forget messages nobody ended past their run TTL."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(self._limits.lease_s / 3)
            self._forget_expired(loop.time() - self._limits.run_ttl_s)
            try:
                await self._client.set(self._node_key, b"1", px=self._lease_ms)
            except _ERRORS as exc:
                self._lost(exc)

    def _forget_expired(self, began_before: float) -> None:
        """Drop what this node keeps of messages begun before `began_before` (none ended)."""
        stale = []
        for mid, message in self._running.items():  # in the order they began
            if message.began >= began_before:
                break
            stale.append(mid)
        for mid in stale:
            del self._running[mid]
            self._resend.pop(mid, None)

    def _lost(self, exc: BaseException) -> None:
        """Redis did not answer: unhealthy until a PING does."""
        if self._healthy:
            self._healthy = False
            log.warning("store_unavailable", backend="redis", error=repr(exc))
        if self._probe is None and not self._closed:
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_healthy())

    async def _probe_until_healthy(self) -> None:
        try:
            while not self._closed:
                await asyncio.sleep(PROBE_INTERVAL_S)
                with contextlib.suppress(*_ERRORS):
                    await self._client.ping()
                    break
            self._healthy = True
            log.info("store_available", backend="redis", dropped_frames=self.dropped_frames)
        finally:
            self._probe = None

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """redis-py's errors become `StoreUnavailable` (and start the probe)."""
        try:
            yield
        except _ERRORS as exc:
            self._lost(exc)
            raise StoreUnavailable(f"redis: {exc}") from exc

    # --- writes ---------------------------------------------------------------------

    def begin(
        self,
        message_id: str,
        epoch: str,
        idempotency_key: str | None = None,
        principal: str = "",
    ) -> None:
        """A message starts here: its record and empty log go out with the next flush."""
        if message_id in self._running:
            return
        self._running[message_id] = self._new_running(
            message_id, epoch, idempotency_key, principal=principal
        )
        self._begun.append(message_id)
        if self._drainer is None:
            self._schedule()

    def append(self, message_id: str, seq: int, data: bytes) -> None:
        """Buffer one frame (checked, bounded and trimmed at the flush)."""
        buf = self._buf
        if len(buf) >= MAX_BUFFERED:
            if not self._overflowing:
                self._overflowing = True
                log.warning("store_buffer_full", backend="redis", frames=MAX_BUFFERED)
            self.dropped_frames += 1
            return
        buf.append((message_id, seq, data))
        if self._drainer is None:
            self._schedule()

    def end(self, message_id: str, finish: str) -> None:
        """Buffer the end: the next flush starts the message's lifetimes."""
        self._buf.append((message_id, _END, finish.encode()))
        if self._drainer is None:
            self._schedule()

    def _new_running(
        self,
        message_id: str,
        epoch: str,
        key: str | None,
        fingerprint: str = "",
        *,
        principal: str = "",
    ) -> _Running:
        limits = self._limits
        return _Running(
            self._ev(message_id),
            self._meta(message_id),
            epoch.encode(),
            LogBound(limits.max_frames, limits.max_bytes),
            principal=principal.encode(),
            key=b"" if key is None else key.encode(),
            idem=b"" if key is None else self._idem(key),
            value=b"" if key is None else f"{message_id} {fingerprint}".encode(),
            began=asyncio.get_running_loop().time(),
        )

    def _schedule(self) -> None:
        if self._closed or not self._started:
            self._buf.clear()
            self._begun.clear()
            return
        self._drainer = asyncio.get_running_loop().create_task(self._drain())

    def _resend_soon(self) -> None:
        """Flush now though nothing is buffered: what is to be resent goes out."""
        self._resend_at = None
        if self._resend and not self._closed:
            self._due = True
            if self._drainer is None:
                self._schedule()

    async def flush(self) -> None:
        """Wait until every write buffered so far was sent (or failed: never raises)."""
        if self._buf or self._begun or self._due:
            if self._pending is None:
                self._pending = asyncio.get_running_loop().create_future()
            done = self._pending
        elif self._inflight is not None:
            done = self._inflight
        else:
            return
        await asyncio.shield(done)

    async def _drain(self) -> None:
        """Write what is buffered, one pipeline at a time, until nothing is."""
        try:
            while self._buf or self._begun or self._due:
                batch, begun = self._buf, self._begun
                self._buf, self._begun, self._overflowing, self._due = [], [], False, False
                done = self._pending or asyncio.get_running_loop().create_future()
                self._pending, self._inflight = None, done
                try:
                    await self._write(batch, begun)
                finally:
                    done.set_result(None)
        finally:
            self._drainer = self._inflight = None

    async def _write(self, batch: list[tuple[str, int, bytes]], begun: list[str]) -> None:
        """Send one flush; what failed is counted (frames) or kept to resend, never raised.

        Tried whatever `healthy` says: a write that fails costs no more than a probe.
        """
        sent: list[_Sent] = []
        failed: set[int] | None = None  # the places in `sent` that failed (None: all)
        made: list[int] = []
        try:
            commands, owners = self._commands(batch, begun, sent)
            if commands:
                failed, made = await self._send(commands, owners)
        except Exception:
            log.exception("store_flush_failed", backend="redis")
        finally:
            if sent:
                self._settle(sent, failed, made)

    def _commands(
        self, batch: list[tuple[str, int, bytes]], begun: list[str], sent: list[_Sent]
    ) -> tuple[list[Command], list[int] | None]:
        """The commands of one flush, and (cluster) the place in `sent` each one is for.

        Standalone: one command for every message; `sent` gets each message in its order.
        """
        touched = self._advance(batch, begun)
        if self._resend:
            running = self._running
            for mid, message in self._resend.items():
                if running.get(mid) is message:
                    touched.setdefault(mid, message)
            self._resend = {}
        cluster = self._cluster
        commands: list[Command] = []
        owners: list[int] | None = [] if cluster else None
        keys: list[bytes] = []
        args: list[Any] = []
        for mid, message in touched.items():
            out = message.out
            frames = len(out) >> 1
            head = b"%d %d " % (frames, message.bound.first)
            rekeyed = message.rekey
            plain = message.finish is None and not message.watched and not rekeyed
            if plain and not message.key:  # the common case: frames only
                keys += (message.ev, message.meta)
                args += (head + b"0", message.epoch, message.principal, *out)
            elif plain and owners is None:  # frames of a keyed message (standalone)
                keys += (message.ev, message.meta, message.idem)
                args += (
                    head + _KEYED_NAMED, message.epoch, message.principal, message.key,
                    message.value, *out,
                )  # fmt: skip
            else:
                keys += (message.ev, message.meta)
                flags, extras = self._extras(
                    mid, message, keys, commands=commands, owners=owners, place=len(sent)
                )
                args += (head + b"%d" % flags, message.epoch, message.principal, *extras, *out)
            out.clear()
            if owners is not None:  # a script's keys must share a slot: one per message
                commands.append(self._write_command(keys, args))
                owners.append(len(sent))
                keys, args = [], []
            sent.append((mid, message, frames, rekeyed))
        if keys:
            commands.append(self._write_command(keys, args))
        return commands, owners

    def _advance(
        self, batch: list[tuple[str, int, bytes]], begun: list[str]
    ) -> dict[str, _Running]:
        """Apply a batch to the running messages (top, bounds, end): those it touched."""
        running = self._running
        touched = {mid: running[mid] for mid in begun if mid in running}
        for mid, seq, data in batch:
            message = running.get(mid)
            if message is None or message.finish is not None:
                continue  # not begun here, or ended: as the memory store, ignored
            if seq == _END:
                message.finish = data
                message.unsent = True
            elif seq > message.top:
                message.top = seq
                message.bound.add(seq, len(data))
                message.out += (seq, data)
            else:
                continue  # logged already
            touched[mid] = message
        return touched

    def _extras(  # noqa: PLR0913 - one message's part of a flush, where it goes
        self,
        mid: str,
        message: _Running,
        keys: list[bytes],
        *,
        commands: list[Command],
        owners: list[int] | None,
        place: int,
    ) -> tuple[int, list[Any]]:
        """A message's `_WRITE` flags and the arguments they add (its end, wake-up, key).

        In a cluster, the calls on its idempotency key (another slot) go to `commands`.
        """
        flags, extras = 0, list[Any]()
        if message.finish is not None:
            flags |= _ENDED
            extras += (message.finish, message.top)
            message.bound = _SPENT  # no frame follows the end: its sizes can go
        if message.watched:
            flags |= _WATCHED
            extras.append(self._wake_prefix + mid.encode())
        if message.key:
            flags |= _KEYED
            extras.append(message.key)
            if owners is None:
                flags |= _NAMED
                keys.append(message.idem)
                extras.append(message.value)
            else:
                named = mid.encode() + b" "
                if message.finish is not None:
                    commands.append(
                        ("EVALSHA", _SHA[_EXPIRE_KEY], 1, message.idem, named, self._window_ms)
                    )
                    owners.append(place)
                elif message.rekey:
                    ttl = self._run_ttl_ms
                    commands.append(("SET", message.idem, message.value, "NX", "PX", ttl))
                    owners.append(place)
                message.rekey = False
        return flags, extras

    def _write_command(self, keys: list[bytes], args: list[Any]) -> Command:
        limits = (self._run_ttl_ms, self._window_ms, self._owner)
        return ("EVALSHA", _SHA[_WRITE], len(keys), *keys, *limits, *args)

    async def _send(
        self, commands: list[Command], owners: list[int] | None
    ) -> tuple[set[int] | None, list[int]]:
        """Send one flush: the places that failed (None: all) and those whose record was made.

        Scripts Redis does not know (it restarted) go again as EVAL.
        """
        try:
            results = await self._execute(commands)
            again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if again:
                redo = [("EVAL", _SCRIPTS[commands[i][1]], *commands[i][2:]) for i in again]
                for i, result in zip(again, await self._execute(redo), strict=True):
                    results[i] = result
        except _ERRORS as exc:
            self._lost(exc)
            return None, []
        return self._outcomes(results, owners)

    def _outcomes(
        self, results: list[Any], owners: list[int] | None
    ) -> tuple[set[int] | None, list[int]]:
        """What a flush's replies say: the places that failed (None: all), those made."""
        failed: set[int] = set()
        made: list[int] = []
        refused: object = None
        for c, result in enumerate(results):
            if isinstance(result, Exception):
                refused = refused or result
                if not isinstance(result, ResponseError):
                    self._lost(result)  # (a cluster: one node did not answer)
                if owners is None:
                    return self._refusal(refused, None), []
                failed.add(owners[c])
            elif isinstance(result, list):  # a `_WRITE`'s (place, outcome) pairs
                for place, outcome in zip(result[::2], result[1::2], strict=True):
                    i = place - 1 if owners is None else owners[c]
                    if outcome == b"made":
                        made.append(i)
                    else:
                        failed.add(i)
                        refused = refused or outcome
        return self._refusal(refused, failed) if refused is not None else failed, made

    def _refusal(self, refused: object, failed: set[int] | None) -> set[int] | None:
        """Log what Redis refused (at most once a `REFUSED_LOG_S`); `failed` unchanged."""
        self._refused += 1 if failed is None else len(failed)
        now = asyncio.get_running_loop().time()
        if now - self._refused_at >= REFUSED_LOG_S:
            self._refused_at = now
            error = refused.decode() if isinstance(refused, bytes) else repr(refused)
            log.warning("store_write_refused", backend="redis", error=error, writes=self._refused)
            self._refused = 0
        return failed

    def _settle(self, sent: list[_Sent], failed: set[int] | None, made: list[int]) -> None:
        """After a flush: forget the messages whose end is written, keep what is to resend.

        A failed message's frames are lost (counted); its begin and end are sent again by
        every flush until one writes them, the first `PROBE_INTERVAL_S` after this one.
        """
        running, resend = self._running, self._resend
        dropped = 0
        for i, (mid, message, frames, rekeyed) in enumerate(sent):
            if failed is None or i in failed:
                dropped += frames
                message.rekey = message.rekey or rekeyed
                if (message.unsent or message.rekey) and running.get(mid) is message:
                    resend[mid] = message
            else:
                message.unsent = False
                if message.finish is not None and running.get(mid) is message:
                    del running[mid]  # its end is written: nothing more here
        if self._cluster:
            for i in made:
                mid, message, _, _ = sent[i]
                fingerprinted = not message.value.endswith(b" ")  # (else never SET)
                if fingerprinted and message.finish is None and running.get(mid) is message:
                    message.rekey = True  # its key is another slot's: a call of its own,
                    resend[mid] = message  # in the next flush, at once
                    self._due = True
        self.dropped_frames += dropped
        if resend and not self._due and self._resend_at is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._resend_at = loop.call_later(PROBE_INTERVAL_S, self._resend_soon)

    async def _execute(self, commands: list[Command]) -> list[Any]:
        """The replies (an error reply as its exception) of commands sent at once.

        Standalone: over this node's write connection, packed here (a third of redis-py's
        cost per argument) and bounded by one timeout; sent once more on a new connection
        when that one was closed (Redis' idle `timeout`, a restart). A cluster: a redis-py
        pipeline (it retries on a new connection itself).
        """
        conn = self._writer
        if conn is None:
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))
        packed = b"".join(map(_pack, commands))
        try:
            return await self._exchange(conn, packed, len(commands))
        except RedisConnectionError:  # (a timeout is not retried: Redis may be just slow)
            await conn.disconnect()
            return await self._exchange(conn, packed, len(commands))

    async def _exchange(self, conn: AbstractConnection, packed: bytes, count: int) -> list[Any]:
        replies: list[Any] = []
        async with asyncio.timeout(self._socket_timeout):  # a timeout drops the connection
            await conn.send_packed_command(packed, check_health=False)
            for _ in range(count):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        return replies

    async def _run(self, command: Command) -> Any:
        """Run one script call now (as EVAL when Redis does not know it)."""
        try:
            return await self._client.execute_command(*command)
        except NoScriptError:
            return await self._client.execute_command("EVAL", _SCRIPTS[command[1]], *command[2:])

    # --- reads ----------------------------------------------------------------------

    async def read(self, message_id: str, after: int, limit: int) -> Page | None:
        """The record and up to `limit` frames after `after` (this node's writes first)."""
        await self.flush()
        ev = self._ev(message_id)
        with self._translated():
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(self._meta(message_id))
            pipe.exists(ev)
            if limit > 0:
                pipe.xrange(ev, b"%d" % (after + 1) if after >= 0 else b"-", b"+", count=limit)
            fields, logged, *entries = await pipe.execute()
        if not fields:
            return None
        meta = _parse_meta(fields)
        if not logged:
            return Page(Meta(meta.epoch, meta.owner, meta.state, meta.top + 1, meta.top,
                             meta.finish, expired=True, principal=meta.principal))  # fmt: skip
        page = [(int(eid.partition(b"-")[0]), v[b"d"]) for eid, v in entries[0]] if entries else []
        alive = True
        if meta.state == "running" and meta.owner != self._node_id:
            with self._translated():
                alive = bool(await self._client.exists(self._owner_key(meta.owner)))
        return Page(meta, page, alive)

    async def claim(
        self, key: str, fingerprint: str, message_id: str, epoch: str, principal: str = ""
    ) -> Claim:
        """Bind `key` to `message_id` and begin it, unless `key` names a kept message.

        SET NX, then (a new claim) the record. A held key whose message has no log is
        stale (its message expired) and is taken over, unless it is so young that its
        record may still be on the way (`CLAIM_GRACE` socket timeouts; its TTL says).
        """
        idem = self._idem(key)
        value = f"{message_id} {fingerprint}".encode()
        young_ms = self._run_ttl_ms - CLAIM_GRACE * self._socket_timeout * 1000
        with self._translated():
            while True:
                pipe = self._client.pipeline(transaction=False)
                pipe.set(idem, value, nx=True, px=self._run_ttl_ms, get=True)
                pipe.pttl(idem)
                held, ttl_ms = await pipe.execute()
                if held is None:
                    break
                held_id, _, held_fp = held.decode().partition(" ")
                if ttl_ms > young_ms or await self._client.exists(self._ev(held_id)):
                    return Claim(held_id, held_fp, new=False)
                swap = ("EVALSHA", _SHA[_SWAP_KEY], 1, idem, held, value, self._run_ttl_ms)
                if await self._run(swap):
                    break
            message = self._new_running(message_id, epoch, key, fingerprint, principal=principal)
            keys = [message.ev, message.meta]
            side: list[int] | None = [] if self._cluster else None  # (no call of its own)
            flags, extras = self._extras(
                message_id, message, keys, commands=[], owners=side, place=0
            )
            reply = await self._run(
                self._write_command(
                    keys, [b"0 1 %d" % flags, message.epoch, message.principal, *extras]
                )
            )
            refused = [outcome for outcome in reply[1::2] if outcome != b"made"]
            if refused:
                raise ResponseError(refused[0].decode(errors="replace"))
            message.unsent = False
        self._running.setdefault(message_id, message)
        return Claim(message_id, fingerprint, new=True)

    async def release(self, key: str, message_id: str) -> None:
        """Forget a claim whose stream never started.

        Its key (while it still names the message) and the message's empty record and log.
        """
        self._running.pop(message_id, None)
        self._resend.pop(message_id, None)
        named = message_id.encode() + b" "
        with self._translated():
            await self._run(("EVALSHA", _SHA[_RELEASE_KEY], 1, self._idem(key), named))
            await self._client.delete(self._ev(message_id), self._meta(message_id))

    # --- the tool ledger --------------------------------------------------------------

    async def tool_claim(self, key: str) -> bytes | None:
        """SET NX GET: None when this node now runs the call, else the record there."""
        value = b"running " + self._owner
        with self._translated():
            held = await self._client.set(
                self._tool(key), value, nx=True, px=self._run_ttl_ms, get=True
            )
        return None if held is None else bytes(held)  # type: ignore[arg-type]

    async def tool_done(self, key: str, result: bytes) -> None:
        """SET XX KEEPTTL: the claimed call's record becomes its result."""
        with self._translated():
            await self._client.set(self._tool(key), b"done " + result, xx=True, keepttl=True)

    def _tool(self, key: str) -> bytes:
        return f"{self._prefix}:tool:{key}".encode()

    # --- tickets --------------------------------------------------------------------

    async def put_ticket(self, ticket: str, payload: bytes, ttl_s: float) -> None:
        """Keep `payload` under the ticket's digest for `ttl_s` (Redis expires it)."""
        with self._translated():
            await self._client.set(self._ticket(ticket), payload, px=max(1, round(ttl_s * 1000)))

    async def take_ticket(self, ticket: str) -> bytes | None:
        """The ticket's payload, once (GETDEL: of two nodes taking it, one gets it)."""
        with self._translated():
            payload = await self._client.getdel(self._ticket(ticket))
        return None if payload is None else bytes(payload)  # type: ignore[arg-type]

    # --- cancels and wake-ups -------------------------------------------------------

    async def cancel(self, message_id: str, owner: str) -> None:
        """Ask `owner` (over its control channel) to cancel `message_id`."""
        with self._translated():
            await self._client.publish(self._ctl_channel(owner), b"cancel " + message_id.encode())

    def on_cancel(self, handler: Callable[[str], None]) -> None:
        """Where cancels for this node go."""
        self._cancel = handler

    def watch(self, message_id: str, owner: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` on each wake-up of `message_id` (its owner publishes them)."""
        watch = self._watches.get(message_id)
        if watch is None:
            watch = self._watches[message_id] = _Watch(owner)
            self._sub_changed.set()
        watch.wakes.append(wake)

        def unwatch() -> None:
            held = self._watches.get(message_id)
            if held is not None and wake in held.wakes:
                held.wakes.remove(wake)
                if not held.wakes:
                    del self._watches[message_id]
                    self._sub_changed.set()

        return unwatch

    def _wanted(self) -> set[bytes]:
        return {self._ctl} | {self._wake_prefix + mid.encode() for mid in self._watches}

    async def _connect_pubsub(self) -> None:
        """Connect pub/sub (in a cluster to the next node) and subscribe what is wanted.

        Then the owners of the watched messages are asked for wake-ups again.
        """
        await self._close_pubsub()
        if self._pubsub_nodes:
            host, port = self._pubsub_nodes[0]
            self._pubsub_nodes.append(self._pubsub_nodes.pop(0))
            where: dict[str, Any] = {**parse_url(self._url), "host": host, "port": port}
            # (`parse_url` names the connection class, TLS for rediss://: a pool's argument)
            pool = ConnectionPool(**where, retry=Retry(NoBackoff(), 0), **self._options)
            client = Redis.from_pool(pool)
        else:
            client = Redis.from_url(self._url, retry=Retry(NoBackoff(), 0), **self._options)
        self._pubsub_client, self._pubsub = client, client.pubsub()
        wanted = self._wanted()
        await self._pubsub.subscribe(*wanted)
        self._subscribed = wanted
        await self._ask_for_wakes(list(self._watches))

    async def _close_pubsub(self) -> None:
        pubsub, client = self._pubsub, self._pubsub_client
        self._pubsub = self._pubsub_client = None
        self._subscribed = set()
        with contextlib.suppress(*_ERRORS):
            if pubsub is not None:
                await pubsub.aclose()
            if client is not None:
                await client.aclose()

    async def _ask_for_wakes(self, message_ids: list[str]) -> None:
        if not message_ids:
            return
        asks = [
            self._client.publish(self._ctl_channel(watch.owner), f"watch {mid} {self._node_id}")
            for mid in message_ids
            if (watch := self._watches.get(mid)) is not None  # (an unwatch may have come)
        ]  # one at a time: a cluster pipeline refuses PUBLISH
        await asyncio.gather(*asks)

    async def _sync_subscriptions(self) -> None:
        """Subscribe to what `watch` asked for, unsubscribe what `unwatch` let go."""
        while not self._closed:
            await self._sub_changed.wait()
            self._sub_changed.clear()
            async with self._sub_lock:
                pubsub = self._pubsub
                if pubsub is None:
                    continue
                wanted = self._wanted()
                new, gone = wanted - self._subscribed, self._subscribed - wanted
                try:
                    if new:
                        await pubsub.subscribe(*new)
                        self._subscribed |= new
                        prefix = len(self._wake_prefix)
                        await self._ask_for_wakes(
                            [c[prefix:].decode() for c in new if c.startswith(self._wake_prefix)]
                        )
                    if gone:
                        await pubsub.unsubscribe(*gone)
                        self._subscribed -= gone
                except _ERRORS as exc:  # the listener re-makes the connection
                    log.info("store_subscribe_failed", backend="redis", error=repr(exc))

    async def _listen(self) -> None:
        """Read the pub/sub connection; re-make it (and resubscribe) when it breaks."""
        lost = False
        while not self._closed:
            try:
                pubsub = self._pubsub
                if pubsub is None:
                    async with self._sub_lock:
                        await self._connect_pubsub()
                    pubsub = self._pubsub
                    if lost:
                        lost = False
                        log.info("store_pubsub_back", backend="redis")
                assert pubsub is not None  # noqa: S101 - just connected
                message = await pubsub.get_message(timeout=None)
            except _ERRORS as exc:
                if not lost:
                    lost = True
                    log.warning("store_pubsub_lost", backend="redis", error=repr(exc))
                async with self._sub_lock:
                    await self._close_pubsub()
                await asyncio.sleep(PROBE_INTERVAL_S)
                continue
            if message is not None and message["type"] == "message":
                self._dispatch(message["channel"], message["data"])

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        try:
            if channel.startswith(self._wake_prefix):
                watch = self._watches.get(channel[len(self._wake_prefix) :].decode())
                for wake in list(watch.wakes if watch is not None else ()):
                    wake()
            elif channel == self._ctl:
                verb, _, rest = data.decode().partition(" ")
                if verb == "cancel" and self._cancel is not None:
                    self._cancel(rest)
                elif verb == "watch":
                    self._watched(rest.partition(" ")[0])
        except Exception:
            log.exception("store_message_failed", backend="redis", channel=channel.decode())

    def _watched(self, message_id: str) -> None:
        """Another node follows `message_id`: wake it after each flush that logs frames."""
        message = self._running.get(message_id)
        if message is not None:
            message.watched = True
        else:  # ended (or never here): one wake-up, so the follower reads what is left
            self._spawn(self._wake_now(message_id))

    async def _wake_now(self, message_id: str) -> None:
        with contextlib.suppress(*_ERRORS):
            await self._client.publish(self._wake_prefix + message_id.encode(), b"")


def _pack(command: Command) -> bytes:
    """A command in RESP, as redis-py's `pack_command` makes it (bytes, str, int, buffers)."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if type(arg) is bytes else _as_bytes(arg)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _as_bytes(arg: Any) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    return b"%d" % arg if isinstance(arg, int) else bytes(arg)


def _parse_meta(fields: dict[bytes, bytes]) -> Meta:
    finish = fields.get(b"finish")
    principal = fields.get(b"principal")
    return Meta(
        epoch=fields[b"epoch"].decode(),
        owner=fields[b"owner"].decode(),
        state="ended" if fields.get(b"state") == b"ended" else "running",
        first=int(fields[b"first"]),
        top=int(fields[b"top"]),
        finish=None if finish is None else finish.decode(),
        principal="" if principal is None else principal.decode(),
    )
