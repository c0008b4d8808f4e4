"""The Redis store: event logs, records and idempotency keys shared by the nodes of a cluster.

Owns `RedisStore`, the `core.store.Store` on Redis (standalone, or Redis Cluster with
`cluster=True`) through `redis.asyncio`: the key layout, the write buffer and its one round
trip per flush, the node's liveness lease, and the one pub/sub connection per node that
carries cancels and wake-ups. It keeps what it is given and decides nothing about streams
(what to log, when a resume is refused: the core's); no redis-py exception leaves it:
reads, claims and cancels raise `StoreUnavailable`, and buffered writes that fail are
logged, counted and dropped, and turn `healthy` False until a probe's PING answers.

Keys. One message's keys share a hash tag, so one cluster slot (one script may touch them
all): `{prefix}:{<message_id>}:ev`, a stream of its frames (entry id `<seq>-0`, field `d`;
created empty at `begin`), and `{prefix}:{<message_id>}:meta`, a hash (epoch, owner,
state, first, top, finish, key). An idempotency key is a key of its own (any slot),
`{prefix}:idem:{<key>}` = `"<message_id> <fingerprint>"` (message ids hold no space).
A node's lease is `{prefix}:node:<node_id>`, set for `lease_s`, refreshed every
`lease_s / 3`, deleted at `close`. Channels: `{prefix}:node:<node_id>:ctl` ("cancel <id>",
"watch <id> <node>") and `{prefix}:wake:<message_id>`.

Writes. `begin`, `append` and `end` only buffer (an append is one tuple on a list); the
first write of a loop turn creates the flush task (it starts at the next turn, as a
`call_soon` would), which sends all that is buffered in ONE round trip: standalone, one
EVALSHA of `_WRITE` for every message, packed here and sent over a connection of its own;
in a cluster, a pipeline (`transaction=False`) of one EVALSHA per message (its keys are one
slot) plus, at an end, one of `_EXPIRE_KEY` for the idempotency key (another slot). Per
message `_WRITE` makes the record and the empty log when missing (again after a Redis
restart), XADDs the new entries (a `seq` at or under `top` is skipped: a retried append is
a no-op), XTRIMs MINID the first kept `seq`, sets first and top; at the end it sets state
and finish and PEXPIREs the log and the key by `window_s`, the record by twice that; and
it PUBLISHes the wake of a watched message that logged frames or ended. Flushes never
overlap (a second could overtake the first): what is buffered meanwhile goes in the next,
so batches grow with the load. The trims are this node's `LogBound` per running message
(frames and bytes), so Redis and memory drop the same frames.

Bounds. The buffer holds at most `MAX_BUFFERED` appends (10_000 frames, plus one begin
and one end per message); past it appends are dropped and counted in `dropped_frames`
(the log gets a gap, which a resume refuses as `resume_trimmed`). Worst case: 10_000
buffered frames plus the 10_000 of the flush in flight. Per message running here: its
`LogBound` (one int per logged frame, at most `max_frames`), forgotten at its end or
`run_ttl_s` after its begin.

Pub/sub and clusters. A node reads one plain `redis.asyncio.Redis` pub/sub connection; in
a cluster it is to one node (the next known one when it fails): a classic PUBLISH reaches
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
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from wsgate.core.store import Claim, LogBound, Meta, Page, StoreLimits, StoreUnavailable
from wsgate.log import get_logger

log = get_logger("wsgate.store")

MAX_BUFFERED: Final = 10_000
"""Appends waiting for the next flush; past it they are dropped (and counted)."""
PROBE_INTERVAL_S: Final = 0.5
"""How often an unhealthy store PINGs (and a lost pub/sub connection is re-made)."""
CLAIM_GRACE: Final = 2
"""Socket timeouts a claim's record may take to follow its key (one retry each)."""

_ERRORS: Final = (RedisError, RedisClusterException, OSError)
_END: Final = -1  # the `seq` of an `end` in the buffer (its data is the finish)

# Every message of one flush (standalone), or one (cluster: one slot per call). KEYS: per
# message ev, meta, and its idempotency key with flag 4. ARGV: run_ttl_ms, window_ms, owner,
# then per message "<entries> <first> <flags>", epoch, the flagged extras in flag order
# (1 ended: the finish; 2 watched: the wake channel; 4: "<message_id> " the key must start
# with; 8: the key, for a new record), then <entries> pairs of `seq`, frame in `seq` order.
_WRITE: Final = b"""
local run_ttl, window, owner = ARGV[1], ARGV[2], ARGV[3]
local k, a = 1, 4
while a <= #ARGV do
  local n, first, flags = string.match(ARGV[a], '^(%d+) (%d+) (%d+)$')
  n, flags = tonumber(n), tonumber(flags)
  local epoch, ev, meta = ARGV[a + 1], KEYS[k], KEYS[k + 1]
  a, k = a + 2, k + 2
  local finish, wake, idem, named, key = nil, nil, nil, nil, ''
  if bit.band(flags, 1) ~= 0 then finish = ARGV[a]; a = a + 1 end
  if bit.band(flags, 2) ~= 0 then wake = ARGV[a]; a = a + 1 end
  if bit.band(flags, 4) ~= 0 then idem, named = KEYS[k], ARGV[a]; k, a = k + 1, a + 1 end
  if bit.band(flags, 8) ~= 0 then key = ARGV[a]; a = a + 1 end
  local from = a
  a = a + 2 * n
  local held = redis.call('HMGET', meta, 'top', 'state')
  local top = tonumber(held[1])
  if not top then
    top = 0
    redis.call('HSET', meta, 'epoch', epoch, 'owner', owner, 'state', 'running',
      'first', 1, 'top', 0, 'key', key)
    if redis.call('EXISTS', ev) == 0 then
      redis.call('XADD', ev, '0-1', 'd', '')
      redis.call('XTRIM', ev, 'MAXLEN', 0)
    end
    redis.call('PEXPIRE', ev, run_ttl)
    redis.call('PEXPIRE', meta, run_ttl)
  end
  if held[2] ~= 'ended' then
    local logged = 0
    for i = from, a - 1, 2 do
      local seq = tonumber(ARGV[i])
      if seq > top and type(redis.pcall('XADD', ev, ARGV[i] .. '-0', 'd', ARGV[i + 1]))
        == 'string' then
        top, logged = seq, logged + 1
      end
    end
    if logged > 0 then
      redis.call('XTRIM', ev, 'MINID', first)
      redis.call('HSET', meta, 'first', first, 'top', top)
    end
    if finish then
      redis.call('HSET', meta, 'state', 'ended', 'finish', finish)
      redis.call('PEXPIRE', ev, window)
      redis.call('PEXPIRE', meta, 2 * window)
      local named_by = idem and redis.call('GET', idem)
      if named_by and string.sub(named_by, 1, #named) == named then
        redis.call('PEXPIRE', idem, window)
      end
    end
    if wake and (logged > 0 or finish) then
      redis.call('PUBLISH', wake, '')
    end
  end
end
return 0
"""
_ENDED, _WATCHED, _NAMED, _KEYED = 1, 2, 4, 8  # the flags of a message in `_WRITE`
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
    """A message this node generates: its keys and what the next flush sends of it."""

    ev: bytes
    meta: bytes
    epoch: bytes
    bound: LogBound
    key: bytes = b""  # the idempotency key as given (b"" without one)
    idem: bytes = b""  # its Redis key
    key_new: bool = False  # the key goes into the record at the next flush
    top: int = 0
    finish: bytes | None = None
    watched: bool = False
    out: list[Any] = field(default_factory=list)  # `seq`, frame, ... for the next flush
    began: float = 0.0  # loop time; in Redis its keys live `run_ttl_s` from about then


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
        except _ERRORS as exc:
            await self._disconnect()
            raise StoreUnavailable(f"redis: {exc}") from exc
        self._healthy = self._started = True
        self._spawn(self._hold_lease())
        self._spawn(self._listen())
        self._spawn(self._sync_subscriptions())

    async def close(self) -> None:
        """Write what is buffered, stop every task, release the lease, disconnect."""
        if self._closed:
            return
        self._closed = True  # writes from now on are dropped
        await self.flush()
        tasks = [*self._tasks, *(t for t in (self._probe, self._drainer) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._buf, self._begun = [], []
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
        while True:
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

    def _lost(self, exc: BaseException) -> None:
        """Redis did not answer: unhealthy until a PING does."""
        if self._healthy:
            self._healthy = False
            log.warning("store_unavailable", backend="redis", error=repr(exc))
        if self._probe is None and not self._closed:
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_healthy())

    async def _probe_until_healthy(self) -> None:
        try:
            while True:
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

    def begin(self, message_id: str, epoch: str, idempotency_key: str | None = None) -> None:
        """A message starts here: its record and empty log go out with the next flush."""
        if message_id in self._running:
            return
        self._running[message_id] = self._new_running(message_id, epoch, idempotency_key)
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

    def _new_running(self, message_id: str, epoch: str, key: str | None) -> _Running:
        limits = self._limits
        return _Running(
            self._ev(message_id),
            self._meta(message_id),
            epoch.encode(),
            LogBound(limits.max_frames, limits.max_bytes),
            key=b"" if key is None else key.encode(),
            idem=b"" if key is None else self._idem(key),
            key_new=key is not None,
            began=asyncio.get_running_loop().time(),
        )

    def _schedule(self) -> None:
        if self._closed or not self._started:
            self._buf.clear()
            self._begun.clear()
            return
        self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        """Wait until every write buffered so far was sent (or failed: never raises)."""
        if self._buf or self._begun:
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
            while self._buf or self._begun:
                batch, begun = self._buf, self._begun
                self._buf, self._begun, self._overflowing = [], [], False
                done = self._pending or asyncio.get_running_loop().create_future()
                self._pending, self._inflight = None, done
                try:
                    await self._write(batch, begun)
                finally:
                    done.set_result(None)
        finally:
            self._drainer = self._inflight = None

    async def _write(self, batch: list[tuple[str, int, bytes]], begun: list[str]) -> None:
        """Send one flush; a failure is logged and counted, never raised."""
        frames = 0
        try:
            commands, frames = self._commands(batch, begun)
            if not commands:
                return
            if not self._healthy:  # the probe says when to try again; until then, drop
                self.dropped_frames += frames
                return
            await self._send(commands)
        except _ERRORS as exc:
            self.dropped_frames += frames
            self._lost(exc)
        except Exception:
            self.dropped_frames += frames
            log.exception("store_flush_failed", backend="redis")

    def _commands(
        self, batch: list[tuple[str, int, bytes]], begun: list[str]
    ) -> tuple[list[Command], int]:
        """The commands of one flush, and how many frames they log."""
        touched, frames = self._advance(batch, begun)
        commands: list[Command] = []
        keys: list[bytes] = []
        args: list[Any] = []
        for mid, message in touched.items():
            if keys and self._cluster:  # a script's keys must share a slot
                commands.append(self._write_command(keys, args))
                keys, args = [], []
            out = message.out
            head = b"%d %d " % (len(out) >> 1, message.bound.first)
            keys += (message.ev, message.meta)
            if message.finish is None and not message.watched and not message.key_new:
                args += (head + b"0", message.epoch, *out)  # the common case: frames only
            else:
                flags, extras = self._extras(mid, message, keys, commands)
                args += (head + b"%d" % flags, message.epoch, *extras, *out)
            out.clear()
        if keys:
            commands.append(self._write_command(keys, args))
        return commands, frames

    def _advance(
        self, batch: list[tuple[str, int, bytes]], begun: list[str]
    ) -> tuple[dict[str, _Running], int]:
        """Apply a batch to the running messages (top, bounds, end): those it touched."""
        running = self._running
        touched = {mid: running[mid] for mid in begun if mid in running}
        frames = 0
        for mid, seq, data in batch:
            message = running.get(mid)
            if message is None or message.finish is not None:
                continue  # not begun here, or ended: as the memory store, ignored
            if seq == _END:
                message.finish = data
            elif seq > message.top:
                message.top = seq
                message.bound.add(seq, len(data))
                message.out += (seq, data)
                frames += 1
            else:
                continue  # logged already
            touched[mid] = message
        return touched, frames

    def _extras(
        self, mid: str, message: _Running, keys: list[bytes], commands: list[Command]
    ) -> tuple[int, list[bytes]]:
        """A message's `_WRITE` flags and the arguments they add (its end, wake-up, key)."""
        flags, extras = 0, []
        if message.finish is not None:
            flags |= _ENDED
            extras.append(message.finish)
            del self._running[mid]
        if message.watched:
            flags |= _WATCHED
            extras.append(self._wake_prefix + mid.encode())
        if message.finish is not None and message.idem:
            named = mid.encode() + b" "
            if self._cluster:  # the key is in another slot: a call of its own
                commands.append(
                    ("EVALSHA", _SHA[_EXPIRE_KEY], 1, message.idem, named, self._window_ms)
                )
            else:
                flags |= _NAMED
                keys.append(message.idem)
                extras.append(named)
        if message.key_new:
            flags |= _KEYED
            extras.append(message.key)
            message.key_new = False
        return flags, extras

    def _write_command(self, keys: list[bytes], args: list[Any]) -> Command:
        limits = (self._run_ttl_ms, self._window_ms, self._owner)
        return ("EVALSHA", _SHA[_WRITE], len(keys), *keys, *limits, *args)

    async def _send(self, commands: list[Command]) -> None:
        """Send one flush; scripts Redis does not know (it restarted) go again as EVAL."""
        results = await self._execute(commands)
        again = [c for c, r in zip(commands, results, strict=True) if isinstance(r, NoScriptError)]
        if again:
            results = await self._execute([("EVAL", _SCRIPTS[c[1]], *c[2:]) for c in again])
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            log.warning("store_write_refused", backend="redis", error=repr(failed[0]))

    async def _execute(self, commands: list[Command]) -> list[Any]:
        """The replies (an error reply as its exception) of commands sent at once.

        Standalone: over this node's write connection, packed here (a third of redis-py's
        cost per argument) and bounded by one timeout; a cluster: a redis-py pipeline.
        """
        conn = self._writer
        if conn is None:
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))
        replies: list[Any] = []
        async with asyncio.timeout(self._socket_timeout):  # a timeout drops the connection
            await conn.send_packed_command(b"".join(map(_pack, commands)), check_health=False)
            for _ in commands:
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
                             meta.finish, expired=True))  # fmt: skip
        page = [(int(eid.partition(b"-")[0]), v[b"d"]) for eid, v in entries[0]] if entries else []
        alive = True
        if meta.state == "running" and meta.owner != self._node_id:
            with self._translated():
                alive = bool(await self._client.exists(self._owner_key(meta.owner)))
        return Page(meta, page, alive)

    async def claim(self, key: str, fingerprint: str, message_id: str, epoch: str) -> Claim:
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
            message = self._new_running(message_id, epoch, key)
            head = b"0 1 %d" % _KEYED
            await self._run(
                self._write_command([message.ev, message.meta], [head, message.epoch, message.key])
            )
            message.key_new = False
        self._running.setdefault(message_id, message)
        return Claim(message_id, fingerprint, new=True)

    async def release(self, key: str, message_id: str) -> None:
        """Forget a claim whose stream never started.

        Its key (while it still names the message) and the message's empty record and log.
        """
        self._running.pop(message_id, None)
        named = message_id.encode() + b" "
        with self._translated():
            await self._run(("EVALSHA", _SHA[_RELEASE_KEY], 1, self._idem(key), named))
            await self._client.delete(self._ev(message_id), self._meta(message_id))

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
            client = Redis(**where, retry=Retry(NoBackoff(), 0), **self._options)
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
        while True:
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
        while True:
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
    return Meta(
        epoch=fields[b"epoch"].decode(),
        owner=fields[b"owner"].decode(),
        state="ended" if fields.get(b"state") == b"ended" else "running",
        first=int(fields[b"first"]),
        top=int(fields[b"top"]),
        finish=None if finish is None else finish.decode(),
    )
