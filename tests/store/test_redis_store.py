"""The Redis store beyond the contract: its key layout, its one call per flush, a Redis that
goes away and comes back (and what is resent then), writes Redis refuses, node leases, stale
idempotency keys, the write buffer's bound, and (a subset of the contract) a real three-node
Redis Cluster, and a one-node cluster over TLS."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
import test_contract as contract
from redis.crc import key_slot
from store_helpers import redis_server_binary, require
from test_contract import LIMITS, Pair, frame

from wsgate.core.store import StoreLimits, StoreUnavailable
from wsgate.store.redis import MAX_BUFFERED, RedisStore
from wsgate.testing_redis import RedisServer


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[Pair]:
    here = RedisStore(redis_url, LIMITS, node_id="node-a")
    there = RedisStore(redis_url, LIMITS, node_id="node-b")
    await here.start()
    await there.start()
    yield Pair(here, there)
    await here.close()
    await there.close()


# Lifetimes long enough to outlast a Redis restart and a resend (LIMITS' end in 1.2 s).
KEEP = StoreLimits(window_s=5.0, max_frames=50, max_bytes=4096, run_ttl_s=30.0, lease_s=0.5)


@pytest.fixture
async def kept(redis_url: str) -> AsyncIterator[Pair]:
    here = RedisStore(redis_url, KEEP, node_id="node-a")
    there = RedisStore(redis_url, KEEP, node_id="node-b")
    await here.start()
    await there.start()
    yield Pair(here, there)
    await here.close()
    await there.close()


async def state_of(store, message_id: str) -> str | None:
    """The record's state as `store` reads it now; None while unknown or unreachable."""
    try:
        page = await store.read(message_id, 0, 10)
    except StoreUnavailable:
        return None
    return None if page is None else page.meta.state


async def eventually(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def test_the_keys_of_one_message_share_one_hash_slot(pair: Pair, raw: aioredis.Redis) -> None:
    await pair.here.claim("k1", "fp", "msg_a1", "e1")
    for seq in range(1, 4):
        pair.here.append("msg_a1", seq, frame(seq))
    await pair.here.flush()
    keys = {key async for key in raw.scan_iter(match=b"wsg:{msg_a1}*")}
    assert keys == {b"wsg:{msg_a1}:ev", b"wsg:{msg_a1}:meta"}
    assert len({key_slot(key) for key in keys}) == 1
    assert await raw.type(b"wsg:{msg_a1}:ev") == b"stream"
    assert await raw.xrange(b"wsg:{msg_a1}:ev", count=1) == [(b"1-0", {b"d": frame(1)})]
    meta = await raw.hgetall(b"wsg:{msg_a1}:meta")
    assert (meta[b"state"], meta[b"top"], meta[b"owner"], meta[b"key"]) == (
        b"running",
        b"3",
        b"node-a",
        b"k1",
    )
    assert await raw.get(b"wsg:idem:{k1}") == b"msg_a1 fp"
    assert await raw.exists(b"wsg:node:node-a", b"wsg:node:node-b") == 2


async def test_the_appends_of_one_loop_turn_go_out_in_one_round_trip(
    pair: Pair, raw: aioredis.Redis
) -> None:
    store = pair.here
    assert isinstance(store, RedisStore)
    streams, appends = 8, 5
    for n in range(streams):
        store.begin(f"m{n}", "e1")
    await store.flush()
    writer = store._writer
    assert writer is not None
    sends = 0
    send = writer.send_packed_command

    async def counted(*args, **kwargs):
        nonlocal sends
        sends += 1
        return await send(*args, **kwargs)

    writer.send_packed_command = counted  # type: ignore[method-assign]
    await raw.config_resetstat()
    for seq in range(1, appends + 1):
        for n in range(streams):
            store.append(f"m{n}", seq, frame(seq))
    await store.flush()
    stats = await raw.info("commandstats")
    assert sends == 1
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_xadd"]["calls"] == streams * appends
    for n in range(streams):
        page = await pair.there.read(f"m{n}", 0, 100)
        assert page is not None
        assert [seq for seq, _ in page.entries] == list(range(1, appends + 1))


async def test_a_stopped_redis_drops_writes_and_refuses_reads_until_it_is_back(
    pair: Pair, redis_server: RedisServer
) -> None:
    await contract.logged(pair, "m1", 2)
    cancels: list[str] = []
    pair.here.on_cancel(cancels.append)
    await asyncio.to_thread(redis_server.stop)
    pair.here.append("m1", 3, frame(3))
    await pair.here.flush()  # does not raise
    assert not pair.here.healthy
    assert isinstance(pair.here, RedisStore)
    assert pair.here.dropped_frames == 1
    with pytest.raises(StoreUnavailable):
        await pair.there.read("m1", 0, 10)
    with pytest.raises(StoreUnavailable):
        await pair.there.claim("k1", "fp", "m2", "e1")
    with pytest.raises(StoreUnavailable):
        await pair.there.cancel("m1", pair.here.node_id)
    assert not pair.there.healthy

    await asyncio.to_thread(redis_server.start)  # empty: it kept nothing on disk
    await eventually(lambda: pair.here.healthy and pair.there.healthy)
    pair.here.begin("m3", "e1")
    pair.here.append("m3", 1, frame(1))
    await pair.here.flush()
    page = await pair.there.read("m3", 0, 10)
    assert page is not None
    assert page.entries == [(1, frame(1))]
    # The pub/sub connection came back too: cancels reach the node again.
    deadline = time.monotonic() + 5.0
    while not cancels:
        assert time.monotonic() < deadline, "no cancel after the restart"
        await pair.there.cancel("m3", pair.here.node_id)
        await asyncio.sleep(0.1)
    assert cancels[0] == "m3"


async def test_a_message_running_when_redis_restarted_is_logged_again_from_its_next_frames(
    pair: Pair, redis_server: RedisServer
) -> None:
    await contract.logged(pair, "m1", 2)
    await asyncio.to_thread(redis_server.stop)
    await asyncio.to_thread(redis_server.start)
    pair.here.append("m1", 3, frame(3))
    await pair.here.flush()  # a stale connection: sent again on a new one
    await eventually(lambda: pair.here.healthy)
    pair.here.append("m1", 4, frame(4))
    await pair.here.flush()
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.epoch, page.meta.state, page.meta.top) == ("e1", "running", 4)
    assert page.entries[-1] == (4, frame(4))  # the frames before are gone: a gap


async def test_scripts_that_redis_forgot_are_sent_again(pair: Pair, raw: aioredis.Redis) -> None:
    await contract.logged(pair, "m1", 1)
    await raw.script_flush()
    pair.here.append("m1", 2, frame(2))
    pair.here.end("m1", "stop")
    await pair.here.flush()
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.state, page.meta.top) == ("ended", 2)


async def test_a_node_whose_tasks_died_loses_its_lease_and_its_owner_is_seen_lost(
    pair: Pair, raw: aioredis.Redis
) -> None:
    await contract.logged(pair, "m1", 1)
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert page.owner_alive
    assert isinstance(pair.here, RedisStore)
    for task in list(pair.here._tasks):  # as if the node were SIGKILLed: nothing refreshes
        task.cancel()
    await asyncio.sleep(0)
    assert await raw.pttl(b"wsg:node:node-a") <= LIMITS.lease_s * 1000
    await asyncio.sleep(LIMITS.lease_s + 0.1)
    assert not await raw.exists(b"wsg:node:node-a")
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert page.meta.state == "running"
    assert not page.owner_alive


async def test_the_lease_is_refreshed_while_the_node_runs_and_released_at_close(
    redis_url: str, raw: aioredis.Redis
) -> None:
    store = RedisStore(redis_url, LIMITS, node_id="node-c")
    await store.start()
    await asyncio.sleep(LIMITS.lease_s * 2)
    assert await raw.exists(b"wsg:node:node-c")
    await store.close()
    assert not await raw.exists(b"wsg:node:node-c")
    assert {task for task in asyncio.all_tasks() if not task.done()} == {asyncio.current_task()}


async def test_a_stale_idempotency_key_is_taken_over_but_a_young_one_is_not(
    redis_url: str, raw: aioredis.Redis
) -> None:
    store = RedisStore(redis_url, LIMITS, node_id="node-a", socket_timeout=0.2)
    await store.start()
    try:
        # Young: its message's record may still be on the way from another node.
        await raw.set(b"wsg:idem:{k1}", b"m0 fp0", px=round(LIMITS.run_ttl_s * 1000))
        claim = await store.claim("k1", "fp1", "m1", "e1")
        assert (claim.message_id, claim.fingerprint, claim.new) == ("m0", "fp0", False)
        # Old (its TTL ran down) and its message has no log: the key is free.
        await raw.pexpire(b"wsg:idem:{k1}", 300)
        claim = await store.claim("k1", "fp1", "m1", "e1")
        assert (claim.message_id, claim.new) == ("m1", True)
        assert await raw.get(b"wsg:idem:{k1}") == b"m1 fp1"
        page = await store.read("m1", 0, 10)
        assert page is not None
        assert page.meta.state == "running"
    finally:
        await store.close()


async def test_the_end_expires_the_idempotency_key_only_while_it_names_the_message(
    pair: Pair, raw: aioredis.Redis
) -> None:
    await pair.here.claim("k1", "fp", "m1", "e1")
    await pair.here.claim("k2", "fp", "m2", "e1")
    await raw.set(b"wsg:idem:{k2}", b"other fp")  # taken over meanwhile, without expiry
    pair.here.end("m1", "stop")
    pair.here.end("m2", "stop")
    await pair.here.flush()
    assert 0 < await raw.pttl(b"wsg:idem:{k1}") <= LIMITS.window_s * 1000
    assert await raw.pttl(b"wsg:idem:{k2}") == -1


async def test_a_full_write_buffer_drops_appends_and_counts_them(pair: Pair) -> None:
    store = pair.here
    assert isinstance(store, RedisStore)
    store.begin("m1", "e1")
    for seq in range(1, MAX_BUFFERED + 11):
        store.append("m1", seq, b"f")
    store.end("m1", "stop")  # an end is never dropped
    await store.flush()
    assert store.dropped_frames == 10
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.state, page.meta.top) == ("ended", MAX_BUFFERED)


async def test_a_message_nobody_ended_is_forgotten_by_its_node_after_the_run_ttl(
    pair: Pair,
) -> None:
    store = pair.here
    assert isinstance(store, RedisStore)
    await contract.logged(pair, "m1", 1)
    assert "m1" in store._running
    await asyncio.sleep(LIMITS.run_ttl_s + LIMITS.lease_s)
    assert "m1" not in store._running
    store.append("m1", 2, frame(2))  # as for any message not begun here: ignored
    await store.flush()
    assert await pair.there.read("m1", 0, 10) is None


async def test_a_read_cancelled_in_flight_leaves_the_store_usable(
    pair: Pair, raw: aioredis.Redis
) -> None:
    await contract.logged(pair, "m1", 2)
    await raw.execute_command("CLIENT", "PAUSE", "300", "ALL")
    read = asyncio.ensure_future(pair.there.read("m1", 0, 10))
    await asyncio.sleep(0.05)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert [seq for seq, _ in page.entries] == [1, 2]


async def test_a_cancelled_flush_does_not_cancel_the_write(pair: Pair, raw: aioredis.Redis) -> None:
    await contract.logged(pair, "m1", 1)
    await raw.execute_command("CLIENT", "PAUSE", "300", "ALL")
    pair.here.append("m1", 2, frame(2))
    flush = asyncio.ensure_future(pair.here.flush())
    await asyncio.sleep(0.05)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    await pair.here.flush()
    page = await pair.there.read("m1", 0, 10)
    assert page is not None
    assert [seq for seq, _ in page.entries] == [1, 2]
    assert pair.here.healthy


async def test_a_watch_of_a_message_that_already_ended_wakes_at_once(pair: Pair) -> None:
    await contract.logged(pair, "m1", 1)
    pair.here.end("m1", "stop")
    await pair.here.flush()
    woken = asyncio.Event()
    unwatch = pair.there.watch("m1", pair.here.node_id, woken.set)
    await asyncio.wait_for(woken.wait(), 2.0)
    unwatch()


async def test_the_last_unwatch_unsubscribes(pair: Pair, raw: aioredis.Redis) -> None:
    pair.here.begin("m1", "e1")
    await pair.here.flush()
    first = pair.there.watch("m1", pair.here.node_id, lambda: None)
    second = pair.there.watch("m1", pair.here.node_id, lambda: None)
    channel = b"wsg:wake:m1"
    await eventually(lambda: channel in pair.there._subscribed)  # type: ignore[attr-defined]
    first()
    await asyncio.sleep(0.05)
    assert (await raw.pubsub_numsub(channel))[0][1] == 1
    second()
    await eventually(lambda: channel not in pair.there._subscribed)  # type: ignore[attr-defined]
    await eventually_async(lambda: raw.pubsub_numsub(channel), [(channel, 0)])


async def eventually_async(read, expected, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await read()) != expected:
        assert time.monotonic() < deadline, f"{got} != {expected}"
        await asyncio.sleep(0.02)


async def test_a_store_that_cannot_reach_redis_at_start_raises_store_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    store = RedisStore(f"redis://127.0.0.1:{port}/0", LIMITS, node_id="n", socket_timeout=0.2)
    with pytest.raises(StoreUnavailable):
        await store.start()
    await store.close()


# --- what a failed flush keeps and sends again --------------------------------------------


async def test_an_end_buffered_while_redis_was_down_reaches_it_once_it_is_back(
    kept: Pair, redis_server: RedisServer
) -> None:
    store = kept.here
    assert isinstance(store, RedisStore)
    await contract.logged(kept, "m1", 2)
    await asyncio.to_thread(redis_server.stop)
    store.append("m1", 3, frame(3))
    store.end("m1", "stop")
    await store.flush()  # fails: the frame is lost, the end is kept
    assert store.dropped_frames == 1
    await asyncio.to_thread(redis_server.start)  # empty: it kept nothing on disk
    deadline = time.monotonic() + 5.0
    while await state_of(kept.there, "m1") != "ended":  # nothing else is written meanwhile
        assert time.monotonic() < deadline, "the end never reached Redis"
        await asyncio.sleep(0.05)
    page = await kept.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.finish, page.meta.top, page.entries) == ("stop", 3, [])
    await eventually(lambda: "m1" not in store._running)


async def test_a_write_connection_that_redis_closed_while_idle_costs_no_flush(
    kept: Pair, raw: aioredis.Redis
) -> None:
    store = kept.here
    assert isinstance(store, RedisStore)
    store.begin("m1", "e1")
    await store.flush()
    await raw.client_kill_filter(_type="normal", skipme=True)  # as Redis' `timeout` does
    store.append("m1", 1, frame(1))
    store.end("m1", "stop")
    await store.flush()
    assert (store.dropped_frames, store.healthy) == (0, True)
    page = await kept.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.state, page.entries) == ("ended", [(1, frame(1))])


async def test_writes_are_still_tried_while_the_store_is_unhealthy(kept: Pair) -> None:
    store = kept.here
    assert isinstance(store, RedisStore)
    await contract.logged(kept, "m1", 1)
    store._lost(RuntimeError("a read timed out"))  # Redis itself is fine
    assert not store.healthy
    store.append("m1", 2, frame(2))
    store.end("m1", "stop")
    await store.flush()
    assert store.dropped_frames == 0
    page = await kept.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.state, page.meta.top) == ("ended", 2)


async def test_a_flush_redis_refuses_counts_its_frames_and_its_end_is_written_once_it_can(
    kept: Pair, raw: aioredis.Redis
) -> None:
    store = kept.here
    assert isinstance(store, RedisStore)
    await contract.logged(kept, "m1", 1)
    await raw.config_set("maxmemory", 1)
    try:
        store.append("m1", 2, frame(2))
        store.end("m1", "stop")
        await store.flush()  # OOM
        assert (store.dropped_frames, store.healthy) == (1, True)
    finally:
        await raw.config_set("maxmemory", 0)
    await eventually_async(lambda: state_of(kept.there, "m1"), "ended", timeout=5.0)
    page = await kept.there.read("m1", 0, 10)
    assert page is not None
    # The end says where the stream ended: a resume from 1 finds frame 2 missing.
    assert (page.meta.top, page.entries) == (2, [(1, frame(1))])


async def test_a_message_redis_refuses_holds_back_no_other_of_its_flush(
    kept: Pair, raw: aioredis.Redis
) -> None:
    store = kept.here
    assert isinstance(store, RedisStore)
    await raw.set(b"wsg:{m2}:meta", b"not a hash")  # WRONGTYPE for m2's writes
    for mid in ("m2", "m1"):
        store.begin(mid, "e1")
        store.append(mid, 1, frame(1))
    await store.flush()
    assert store.dropped_frames == 1
    page = await kept.there.read("m1", 0, 10)
    assert page is not None
    assert page.entries == [(1, frame(1))]


async def test_a_record_made_again_after_a_redis_restart_holds_its_idempotency_key_again(
    kept: Pair, redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    await kept.here.claim("k1", "fp", "m1", "e1")
    kept.here.append("m1", 1, frame(1))
    await kept.here.flush()
    await asyncio.to_thread(redis_server.stop)
    await asyncio.to_thread(redis_server.start)  # empty
    kept.here.append("m1", 2, frame(2))
    await kept.here.flush()
    assert await raw.get(b"wsg:idem:{k1}") == b"m1 fp"
    assert 0 < await raw.pttl(b"wsg:idem:{k1}") <= KEEP.run_ttl_s * 1000
    assert (await raw.hgetall(b"wsg:{m1}:meta"))[b"key"] == b"k1"
    claim = await kept.there.claim("k1", "fp", "m2", "e2")
    assert (claim.message_id, claim.new) == ("m1", False)


async def test_the_principal_is_a_field_of_the_meta_hash(pair: Pair, raw: aioredis.Redis) -> None:
    pair.here.begin("m1", "e1", principal="key:alice")
    await pair.here.claim("k1", "fp", "m2", "e1", principal="jwt:bob")
    await pair.here.flush()
    assert (await raw.hgetall(b"wsg:{m1}:meta"))[b"principal"] == b"key:alice"
    assert (await raw.hgetall(b"wsg:{m2}:meta"))[b"principal"] == b"jwt:bob"


async def test_a_record_made_again_after_a_redis_restart_keeps_its_principal(
    kept: Pair, redis_server: RedisServer
) -> None:
    kept.here.begin("m1", "e1", principal="key:alice")
    await kept.here.claim("k1", "fp", "m2", "e1", principal="jwt:bob")
    kept.here.append("m1", 1, frame(1))
    kept.here.append("m2", 1, frame(1))
    await kept.here.flush()
    await asyncio.to_thread(redis_server.stop)
    await asyncio.to_thread(redis_server.start)  # empty
    kept.here.append("m1", 2, frame(2))
    kept.here.append("m2", 2, frame(2))
    await kept.here.flush()
    await eventually(lambda: kept.here.healthy)
    kept.here.append("m1", 3, frame(3))
    kept.here.append("m2", 3, frame(3))
    await kept.here.flush()
    for message_id, principal in (("m1", "key:alice"), ("m2", "jwt:bob")):
        page = await kept.there.read(message_id, 0, 10)
        assert page is not None
        assert page.meta.principal == principal


async def test_a_ticket_is_kept_under_its_sha256_and_never_as_itself(
    pair: Pair, raw: aioredis.Redis
) -> None:
    ticket = "wst_secret-ticket-value"
    await pair.here.put_ticket(ticket, b"payload", 30.0)
    digest = hashlib.sha256(ticket.encode()).hexdigest()
    keys = [key async for key in raw.scan_iter(match=b"wsg:ticket:*")]
    assert keys == [f"wsg:ticket:{digest}".encode()]
    assert 29_000 < await raw.pttl(keys[0]) <= 30_000
    for key in [key async for key in raw.scan_iter()]:
        assert ticket.encode() not in key
    assert await pair.there.take_ticket(ticket) == b"payload"
    assert await raw.exists(keys[0]) == 0


async def test_tickets_while_redis_is_down_raise_store_unavailable(
    pair: Pair, redis_server: RedisServer
) -> None:
    await asyncio.to_thread(redis_server.stop)
    with pytest.raises(StoreUnavailable):
        await pair.here.put_ticket("wst_x", b"payload", 30.0)
    with pytest.raises(StoreUnavailable):
        await pair.here.take_ticket("wst_x")


async def test_close_forgets_the_running_messages_and_the_watches(redis_url: str) -> None:
    store = RedisStore(redis_url, KEEP, node_id="node-c")
    await store.start()
    store.begin("m1", "e1")
    store.append("m1", 1, frame(1))
    store.watch("m9", "node-b", lambda: None)
    await store.flush()
    await store.close()
    assert (store._running, store._watches) == ({}, {})


# --- a real Redis Cluster (three primaries, no replicas) ---------------------------------


def cluster_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    for port in range(21000, 55000, 7):
        if len(ports) == count:
            break
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        ports.append(port)
    return ports


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[list[int]]:
    binary = redis_server_binary()
    cli = shutil.which("redis-cli")
    require("redis-cli", cli is not None, "it creates the test cluster")
    assert cli is not None
    ports = cluster_ports(3)
    with tempfile.TemporaryDirectory(prefix="wsgate-cluster-") as root:
        processes = []
        try:
            for port in ports:
                where = Path(root, str(port))
                where.mkdir()
                args = [
                    binary, "--bind", "127.0.0.1", "--port", str(port),
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--save", "", "--appendonly", "no", "--dir", str(where),
                    "--logfile", str(where / "redis.log"),
                ]  # fmt: skip
                processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
            for port in ports:
                wait_for_ping(port)
            nodes = [f"127.0.0.1:{port}" for port in ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=30,
            )
            for port in ports:
                wait_for(port, ["CLUSTER", "INFO"], b"cluster_state:ok")
            yield ports
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(10)


def wait_for_ping(port: int) -> None:
    wait_for(port, ["PING"], b"PONG")


def wait_for(port: int, command: list[str], expected: bytes, timeout: float = 20.0) -> None:
    payload = b"*%d\r\n" % len(command) + b"".join(
        b"$%d\r\n%s\r\n" % (len(arg), arg.encode()) for arg in command
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(payload)
                if expected in sock.recv(65536):
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{port}: {command} did not say {expected!r}"
        time.sleep(0.05)


@pytest.fixture
async def cluster_pair(redis_cluster: list[int]) -> AsyncIterator[Pair]:
    for port in redis_cluster:
        client = aioredis.Redis(port=port)
        await client.flushall()
        await client.aclose()
    first, second = (f"redis://127.0.0.1:{port}/0" for port in redis_cluster[:2])
    here = RedisStore(first, LIMITS, node_id="node-a", cluster=True)
    there = RedisStore(second, LIMITS, node_id="node-b", cluster=True)
    await here.start()
    await there.start()
    yield Pair(here, there)
    await here.close()
    await there.close()


CLUSTER_CASES = [
    contract.test_a_read_returns_the_frames_after_the_asked_seq_in_order,
    contract.test_appending_a_seq_again_does_not_double_it,
    contract.test_a_log_past_its_frame_bound_drops_its_oldest_frames,
    contract.test_a_log_past_its_byte_bound_drops_its_oldest_frames,
    contract.test_an_ended_log_expires_after_the_window_then_its_record_after_another,
    contract.test_a_claim_binds_its_key_once_and_begins_the_message,
    contract.test_concurrent_claims_of_one_key_make_one_message,
    contract.test_a_key_is_free_again_once_its_message_log_expired,
    contract.test_a_watcher_is_woken_after_frames_are_logged,
    contract.test_a_watcher_is_woken_when_the_message_ends,
    contract.test_a_cancel_reaches_the_owner_nodes_handler,
    contract.test_a_message_records_the_principal_it_was_begun_for,
    contract.test_a_claimed_message_records_its_principal_and_keeps_it_to_its_tombstone,
    contract.test_a_ticket_one_node_issued_is_taken_on_another,
    contract.test_an_expired_ticket_is_none,
]


@pytest.mark.parametrize("case", CLUSTER_CASES, ids=lambda case: case.__name__[5:])
async def test_a_redis_cluster_keeps_the_contract(cluster_pair: Pair, case) -> None:
    await case(cluster_pair)


async def test_scripts_that_a_cluster_forgot_are_sent_again(
    cluster_pair: Pair, redis_cluster: list[int]
) -> None:
    await contract.logged(cluster_pair, "m1", 1)
    for port in redis_cluster:
        client = aioredis.Redis(port=port)
        await client.script_flush()
        await client.aclose()
    cluster_pair.here.append("m1", 2, frame(2))
    cluster_pair.here.end("m1", "stop")
    await cluster_pair.here.flush()
    page = await cluster_pair.there.read("m1", 0, 10)
    assert page is not None
    assert (page.meta.state, page.meta.top) == ("ended", 2)


async def test_two_nodes_on_a_redis_cluster_share_one_rate_budget_and_one_set_of_slots(
    cluster_pair: Pair,
) -> None:
    here, there = cluster_pair.here, cluster_pair.there
    assert isinstance(here, RedisStore)
    assert isinstance(there, RedisStore)
    nodes = (here.limiter, there.limiter)
    takes = await asyncio.gather(*(nodes[n % 2].take(f"starts:p{n % 3}", 50) for n in range(600)))
    assert sum(v.allowed for v in takes) == 150  # three keys, in (likely) three slots
    holds = await asyncio.gather(*(nodes[n % 2].hold("streams:p", f"m{n}", 7) for n in range(100)))
    assert sum(v.allowed for v in holds) == 7
    await here.limiter.refresh()  # one pipeline over the cluster
    held = next(n for n, verdict in enumerate(holds) if verdict.allowed)
    await nodes[held % 2].release("streams:p", f"m{held}")
    assert (await nodes[1 - held % 2].hold("streams:p", "m-next", 7)).allowed


async def test_a_flush_in_a_cluster_spreads_messages_over_the_slots(cluster_pair: Pair) -> None:
    slots = set()
    for n in range(20):
        cluster_pair.here.begin(f"m{n}", "e1")
        cluster_pair.here.append(f"m{n}", 1, frame(1))
        slots.add(key_slot(f"wsg:{{m{n}}}:ev".encode()))
    await cluster_pair.here.flush()
    assert len(slots) > 1
    for n in range(20):
        page = await cluster_pair.there.read(f"m{n}", 0, 10)
        assert page is not None
        assert page.entries == [(1, frame(1))]


async def test_a_cluster_makes_a_lost_idempotency_key_again_with_its_record(
    redis_cluster: list[int],
) -> None:
    here, there = await kept_cluster(redis_cluster)
    try:
        await here.claim("k1", "fp", "m1", "e1")
        here.append("m1", 1, frame(1))
        await here.flush()
        await flush_cluster(redis_cluster)  # Redis lost everything (as a restart would)
        here.append("m1", 2, frame(2))
        await here.flush()
        idem = aioredis.RedisCluster(host="127.0.0.1", port=redis_cluster[0])
        try:
            await eventually_async(lambda: idem.get(b"wsg:idem:{k1}"), b"m1 fp")
        finally:
            await idem.aclose()
        claim = await there.claim("k1", "fp", "m2", "e2")
        assert (claim.message_id, claim.new) == ("m1", False)
    finally:
        await here.close()
        await there.close()


async def test_a_cluster_flush_refused_for_one_message_writes_the_others_and_that_end_later(
    redis_cluster: list[int],
) -> None:
    client = aioredis.RedisCluster(host="127.0.0.1", port=redis_cluster[0])
    here, there = await kept_cluster(redis_cluster)
    try:
        await client.set(b"wsg:{m2}:meta", b"not a hash")
        for mid in ("m2", "m1"):
            here.begin(mid, "e1")
            here.append(mid, 1, frame(1))
            here.end(mid, "stop")
        await here.flush()
        assert here.dropped_frames == 1
        page = await there.read("m1", 0, 10)
        assert page is not None
        assert (page.meta.state, page.entries) == ("ended", [(1, frame(1))])
        await client.delete(b"wsg:{m2}:meta")
        await eventually_async(lambda: state_of(there, "m2"), "ended", timeout=5.0)
    finally:
        await client.aclose()
        await here.close()
        await there.close()


async def kept_cluster(ports: list[int]) -> tuple[RedisStore, RedisStore]:
    await flush_cluster(ports)
    first, second = (f"redis://127.0.0.1:{port}/0" for port in ports[:2])
    here = RedisStore(first, KEEP, node_id="node-a", cluster=True)
    there = RedisStore(second, KEEP, node_id="node-b", cluster=True)
    await here.start()
    await there.start()
    return here, there


async def flush_cluster(ports: list[int]) -> None:
    for port in ports:
        client = aioredis.Redis(port=port)
        await client.flushall()
        await client.aclose()


# --- a one-node Redis Cluster over TLS ----------------------------------------------------


@pytest.fixture
def tls_cluster() -> Iterator[int]:
    binary = redis_server_binary()
    openssl = shutil.which("openssl")
    require("openssl", openssl is not None, "it makes the test's TLS certificate")
    assert openssl is not None
    (port,) = cluster_ports(1)
    with tempfile.TemporaryDirectory(prefix="wsgate-tls-") as root:
        cert, key = Path(root, "cert.pem"), Path(root, "key.pem")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        args = [
            binary, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--tls-cluster", "yes",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--save", "", "--appendonly", "no", "--dir", root, "--logfile", f"{root}/redis.log",
        ]  # fmt: skip
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            client = sync_redis.Redis(port=port, ssl=True, ssl_cert_reqs="none")
            deadline = time.monotonic() + 20.0
            while True:
                # Debian's redis-server serves TLS: one that exits here is a failure.
                assert process.poll() is None, "the TLS redis-server exited (see its log)"
                try:
                    if client.ping():
                        break
                except sync_redis.RedisError:
                    assert time.monotonic() < deadline, "the TLS redis-server did not answer"
                    time.sleep(0.05)
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                assert time.monotonic() < deadline, "the TLS cluster did not come up"
                time.sleep(0.05)
            client.close()
            yield port
        finally:
            process.terminate()
            process.wait(10)


async def test_a_cluster_over_tls_starts_and_keeps_logs_and_cancels(tls_cluster: int) -> None:
    url = f"rediss://127.0.0.1:{tls_cluster}/0?ssl_cert_reqs=none"
    here = RedisStore(url, KEEP, node_id="node-a", cluster=True)
    there = RedisStore(url, KEEP, node_id="node-b", cluster=True)
    try:
        await here.start()
        await there.start()
        await contract.logged(Pair(here, there), "m1", 2)
        page = await there.read("m1", 0, 10)
        assert page is not None
        assert page.entries == [(1, frame(1)), (2, frame(2))]
        cancels: list[str] = []
        here.on_cancel(cancels.append)
        deadline = time.monotonic() + 5.0
        while not cancels:  # over the pub/sub connection, TLS too
            assert time.monotonic() < deadline, "no cancel over TLS"
            await there.cancel("m1", here.node_id)
            await asyncio.sleep(0.1)
    finally:
        await here.close()
        await there.close()
