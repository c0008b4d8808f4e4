"""The Redis limiter: rate limits and concurrency slots shared by every node of a cluster.

Owns the `core.ratelimit.Limiter` on Redis (`RedisStore.limiter`, over the store's client
and prefix): one atomic Lua script per call, so N nodes enforce one budget and concurrent
calls count exactly. It decides nothing of its own: the rate scripts are a port of
`core.ratelimit.gcra` and `debit`, on Redis' clock (`TIME` inside the script), so every
node's calls are judged on one clock whatever their own says. No redis-py exception
leaves it: calls raise `StoreUnavailable` (and a Redis that does not answer turns the
store unhealthy); whether to admit or refuse then is the gateway's choice.

Keys (one per call, so Redis Cluster routes each to its slot): `<prefix>:rl:<key>`.
A rate is a string, its TAT in seconds since `CLOCK_BASE` on Redis' clock, expiring (PX)
when the TAT is reached, since a TAT in the past is the same as none. A set of slots is a
sorted set of holders scored by their expiry (ms on Redis' clock): each call first removes
the expired members, and the key expires with its last member. A key is one or the other
(the callers' keys say their kind); the same key used both ways is refused (WRONGTYPE).

Holds. A holder's slot lives `2 * lease_s`; this node refreshes the holds it took every
`lease_s / 2` (one script per key, all in one pipeline), so holds of a node that died
without releasing (SIGKILL) vanish between `2 * lease_s` and `2.5 * lease_s` after it.
A refresh only extends members still there (ZADD XX): a release that overtakes a refresh
in flight is not undone by it. A `hold` whose answer was lost (a timeout) is not refreshed
and so expires by itself. `close` releases this node's holds.

Calls. The calls of one loop turn go out together, in one pipeline (one round trip; in a
cluster redis-py splits it by node), and a batch waits for the one in flight: what comes
meanwhile goes in the next, so a burst of calls needs one connection, not one each (the
pool's default is 100). A call cancelled before its batch is sent is dropped (a take
cancelled then spends nothing); one cancelled after is applied all the same.

Memory: one entry per slot this node holds (key and holder), until released; at most
`MAX_QUEUED` calls waiting for their batch (past it a call raises `StoreUnavailable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from wsgate.core.errors import StoreUnavailable
from wsgate.core.ratelimit import HOLD_RETRY_MS, SLACK_S, WINDOW_S, Verdict
from wsgate.log import get_logger

log = get_logger("wsgate.store")

CLOCK_BASE: Final = 1_700_000_000
"""Seconds subtracted from Redis' `TIME` (2023-11-14): smaller TATs keep ns precision."""

MAX_QUEUED: Final = 10_000
"""Calls waiting for the next batch, at most; past it a call is refused (`StoreUnavailable`)."""

_ERRORS: Final = (RedisError, RedisClusterException, OSError)

# KEYS: the TAT. ARGV: per_minute, cost, "1" to take (refused when short) or "0" to debit.
# Returns {allowed, retry_after_ms, remaining}: `core.ratelimit.gcra` / `debit`, line by line.
_RATE: Final = b"""
local clock = redis.call('TIME')
local now = (tonumber(clock[1]) - %d) + tonumber(clock[2]) / 1000000
local per_minute, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local t, window, slack = %r / per_minute, %r, %r
local base = tonumber(redis.call('GET', KEYS[1]) or '') or now
if base < now then base = now end
local function remaining(ahead)
  return math.max(0, math.floor((window - ahead + slack) / t))
end
if ARGV[3] == '1' then
  local wait = base - now + math.min(cost, per_minute) * t - window
  if wait > slack then
    return {0, math.max(1, math.ceil((wait - slack) * 1000)), remaining(base - now)}
  end
end
local new = math.max(now, base + cost * t)
if new > now then
  redis.call('SET', KEYS[1], string.format('%%.17g', new), 'PX', math.ceil((new - now) * 1000))
else
  redis.call('DEL', KEYS[1])
end
return {1, 0, remaining(new - now)}
""" % (CLOCK_BASE, WINDOW_S, WINDOW_S, SLACK_S)
_NOW_MS: Final = b"""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""
_EXPIRE_WITH_LAST: Final = b"""
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[1], last[2]) end
"""
# KEYS: the slots. ARGV: holder, limit, ttl_ms. Returns {allowed, held}.
_HOLD: Final = (
    _NOW_MS
    + b"""
local limit = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local held = redis.call('ZCARD', KEYS[1])
  if held >= limit then return {0, held} end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
"""
    + _EXPIRE_WITH_LAST
    + b"""
return {1, redis.call('ZCARD', KEYS[1])}
"""
)
# KEYS: the slots. ARGV: ttl_ms, then the holders this node refreshes (only those still there).
_REFRESH: Final = (
    _NOW_MS
    + b"""
local expires = now + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expires, ARGV[i]) end
"""
    + _EXPIRE_WITH_LAST
    + b"""
return 0
"""
)
_SCRIPTS: Final = {
    hashlib.sha1(body).hexdigest(): body  # noqa: S324 - Redis names scripts by SHA-1
    for body in (_RATE, _HOLD, _REFRESH)
}
_SHA: Final = {body: sha for sha, body in _SCRIPTS.items()}


class RedisLimiter:
    """A `Limiter` in Redis, shared by every node that names the same Redis and prefix."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str,
        lease_s: float,
        on_lost: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._client = client
        self._prefix = f"{prefix}:rl:"
        self._lease_s = lease_s
        self._ttl_ms = max(1, round(2 * lease_s * 1000))
        self._on_lost = on_lost
        self._owned: dict[str, set[str]] = {}  # key -> this node's holders of it
        self._refresher: asyncio.Task[None] | None = None
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    def redis_key(self, key: str) -> bytes:
        """The Redis key of a limiter key."""
        return (self._prefix + key).encode()

    @property
    def owned(self) -> int:
        """Slots this node holds (and refreshes)."""
        return sum(map(len, self._owned.values()))

    async def start(self) -> None:
        """Refresh this node's holds from now on."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        """Stop refreshing and release this node's holds (best effort)."""
        refresher, self._refresher = self._refresher, None
        await stop_tasks([t for t in (refresher, self._sender) if t is not None], "limiter")
        for _, waiter in self._queue:
            waiter.cancel()
        self._queue = []
        owned, self._owned = self._owned, {}
        if owned:
            with contextlib.suppress(*_ERRORS):
                pipe = self._client.pipeline(transaction=False)
                for key, holders in owned.items():
                    pipe.zrem(self.redis_key(key), *holders)
                await pipe.execute(raise_on_error=False)

    # --- the Limiter -----------------------------------------------------------------

    async def take(self, key: str, per_minute: int, cost: float = 1.0) -> Verdict:
        """Spend `cost` of the key's budget, unless it is short (then nothing is spent)."""
        return _verdict(await self._rate(key, per_minute, cost, b"1"))

    async def debit(self, key: str, per_minute: int, cost: float) -> None:
        """Spend `cost` whatever is left (negative: refund)."""
        await self._rate(key, per_minute, cost, b"0")

    async def hold(self, key: str, holder: str, limit: int) -> Verdict:
        """Take a slot of `key` for `holder`, while fewer than `limit` are held."""
        command = ("EVALSHA", _SHA[_HOLD], 1, self.redis_key(key), holder, limit, self._ttl_ms)
        allowed, held = await self._call(command)
        if not allowed:
            return Verdict.refuse(HOLD_RETRY_MS)
        self._owned.setdefault(key, set()).add(holder)
        return Verdict.allow(max(0, limit - int(held)))

    async def release(self, key: str, holder: str) -> None:
        """Give `holder`'s slot back (idempotent)."""
        holders = self._owned.get(key)
        if holders is not None:
            holders.discard(holder)
            if not holders:
                del self._owned[key]
        await self._call(("ZREM", self.redis_key(key), holder))

    # --- mechanics -------------------------------------------------------------------

    async def _rate(self, key: str, per_minute: int, cost: float, take: bytes) -> Any:
        if per_minute < 1:
            raise ValueError("a rate limit is at least 1 per minute")
        command = ("EVALSHA", _SHA[_RATE], 1, self.redis_key(key), per_minute, repr(cost), take)
        return await self._call(command)

    async def _call(self, command: tuple[Any, ...]) -> Any:
        """Run one command in the next batch; its reply."""
        if len(self._queue) >= MAX_QUEUED:
            raise StoreUnavailable(f"{MAX_QUEUED} limiter calls are waiting already")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, waiter))
        if self._sender is None:
            self._sender = loop.create_task(self._send_batches())
        with self._translated():
            return await waiter

    async def _send_batches(self) -> None:
        """Send what is queued, one pipeline at a time, until nothing is."""
        try:
            while self._queue:
                batch = [(c, w) for c, w in self._queue if not w.done()]  # (cancelled: dropped)
                self._queue = []
                if not batch:
                    continue
                try:
                    replies = await self._execute([command for command, _ in batch])
                except _ERRORS as exc:
                    replies = [exc] * len(batch)
                except BaseException:  # cancelled (close) or a bug: no waiter is left hanging
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.cancel()
                    raise
                for (_, waiter), reply in zip(batch, replies, strict=True):
                    if waiter.done():
                        continue
                    if isinstance(reply, Exception):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
        finally:
            self._sender = None

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies (an error as its exception) of a pipeline of commands.

        Scripts Redis does not know (it restarted) go again as EVAL.
        """
        replies = await self._pipeline(commands)
        again = [i for i, reply in enumerate(replies) if _no_script(reply)]
        if again:
            redo = [("EVAL", _SCRIPTS[str(commands[i][1])], *commands[i][2:]) for i in again]
            for i, reply in zip(again, await self._pipeline(redo), strict=True):
                replies[i] = reply
        return replies

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """redis-py's errors become `StoreUnavailable` (one that is not a reply: unhealthy)."""
        try:
            yield
        except _ERRORS as exc:
            if self._on_lost is not None and not isinstance(exc, ResponseError):
                self._on_lost(exc)
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 2)
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                log.info("limiter_refresh_failed", backend="redis", error=str(exc))

    async def refresh(self) -> None:
        """Extend the life of every slot this node holds: one script per key, one pipeline."""
        owned = [(key, list(holders)) for key, holders in self._owned.items()]
        if not owned:
            return
        commands = [
            ("EVALSHA", _SHA[_REFRESH], 1, self.redis_key(key), self._ttl_ms, *holders)
            for key, holders in owned
        ]
        with self._translated():
            results = await self._execute(commands)
            failed = next((r for r in results if isinstance(r, Exception)), None)
            if failed is not None:
                raise failed

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))


def _no_script(result: Any) -> bool:
    return isinstance(result, NoScriptError) or (
        isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT")
    )


def _verdict(reply: Any) -> Verdict:
    allowed, retry_after_ms, remaining = reply
    return Verdict(
        allowed=bool(allowed), retry_after_ms=int(retry_after_ms), remaining=int(remaining)
    )


async def stop_tasks(tasks: list[asyncio.Task[Any]], owner: str, grace: float = 2.0) -> None:
    """Cancel `tasks` and wait for them, a bounded time: a close never hangs on one.

    A task whose cancel was swallowed somewhere below it (a client library that turns the
    cancel into a connection error its loop retries) is cancelled again; the stores' loops
    also end by themselves once closed. What still runs after three tries is logged.
    """
    pending = {task for task in tasks if not task.done()}
    for _ in range(3):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a failed task is the close's to forget
    if pending:
        log.warning("tasks_not_stopping", owner=owner, tasks=sorted(t.get_name() for t in pending))
