"""Cluster mode: two `wsgate serve` processes sharing one private `redis-server`.

Both nodes route the model `mock` to one mock provider run by the test (so its records show
every provider request and disconnect, whichever node made it). A generation started on
node A is resumed on node B byte-exact with its live tail, cancelled from node B, outlived
by its owner (SIGKILL: the lease runs out, the resume ends `resume_owner_lost` after the
replay), and keeps streaming through a Redis outage that new resumable starts see as a
retryable `store_unavailable`. A server-side tool whose node is SIGKILLed mid-call ran once:
the other node never runs it again (the ledger in Redis), whoever asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import drop, mock_request, raw_connect, stream_frames, stream_text
from proc_helpers import WSGATE, clean_env, read_port, running

from wsgate.mock import MockProvider
from wsgate.testing_redis import RedisServer

pytestmark = pytest.mark.slow
LEASE_S = 1.0


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[str]
    url: str


def node_config(
    path: Path, name: str, mock: MockProvider, redis_url: str, drain_s: float = 1.0
) -> Path:
    path.write_text(
        f"""
[server]
port = 0
drain_timeout_s = {drain_s}

[mock]
enabled = "off"

[providers.m]
kind = "openai_chat"
base_url = "http://127.0.0.1:{mock.port}/v1"

[models.mock]
provider = "m"

[store]
kind = "redis"
url = "{redis_url}"
node_id = "{name}"
lease_s = {LEASE_S}
resume_window_s = 30.0

[tools.weather]
url = "{mock.tool_url("weather", delay_ms=1500, result=21)}"
"""
    )
    return path


@pytest.fixture
def drain_s() -> float:
    return 1.0


@pytest.fixture
async def nodes(
    tmp_path: Path, mock: MockProvider, redis_url: str, drain_s: float
) -> AsyncIterator[dict[str, Node]]:
    with contextlib.ExitStack() as stack:
        out: dict[str, Node] = {}
        for name in ("a", "b"):
            path = tmp_path / f"{name}.toml"
            config = node_config(path, f"node-{name}", mock, redis_url, drain_s)
            args = ("serve", "--config", str(config), "--log-format", "json")
            proc = stack.enter_context(running(*args))
            port = await read_port(proc)
            out[name] = Node(name, proc, f"ws://127.0.0.1:{port}/v1/ws")
        yield out


async def started_on(url: str, script: dict, frames: int, options: dict | None = None):
    """Start on a node, take `frames` frames, drop the connection: what was seen."""
    async with raw_connect(url) as conn:
        await conn.start("s1", mock_request(script), options)
        for _ in range(frames):
            await conn.until(lambda f: f.get("stream_id") == "s1" and "seq" in f)
        drop(conn)
    return stream_frames(conn, "s1")


async def test_a_generation_started_on_one_node_resumes_on_the_other_with_its_live_tail(
    nodes, mock
):
    script = {"text": "across nodes " * 40, "tokens_per_s": 100, "tag": "x-node"}
    seen = await started_on(nodes["a"].url, script, 5, {"on_disconnect": "continue"})
    async with raw_connect(nodes["b"].url) as conn:
        await conn.send(
            {"type": "resume", "message_id": seen[0]["message_id"], "last_seq": seen[-1]["seq"],
             "stream_id": "r1"}
        )  # fmt: skip
        resumed = (await conn.until(lambda f: f["type"] == "stream.resumed"))[-1]
        await conn.finishes({"r1"}, timeout=30)
    rest = stream_frames(conn, "r1")
    assert resumed["state"] == "running"
    assert resumed["top_seq"] < rest[-1]["seq"]  # the tail was live, not all replayed
    assert [f["seq"] for f in rest] == list(range(seen[-1]["seq"] + 1, rest[-1]["seq"] + 1))
    assert rest[-1]["reason"] == "stop"
    assert stream_text(seen) + stream_text(rest) == script["text"]
    assert len(mock.find_all("x-node")) == 1


async def test_a_cancel_by_message_id_on_one_node_ends_the_generation_on_the_other(nodes, mock):
    script = {"text": "cancel me " * 300, "tokens_per_s": 50, "tag": "x-cancel"}
    async with raw_connect(nodes["a"].url) as owner, raw_connect(nodes["b"].url) as other:
        await owner.start("s1", mock_request(script))
        first = await owner.until(lambda f: f["type"] == "delta.text")
        await other.send({"type": "cancel", "message_id": first[0]["message_id"]})
        frames = (await owner.finishes({"s1"}, timeout=10))["s1"]
    assert frames[-1]["reason"] == "cancelled"
    record = await mock.wait_disconnected("x-cancel", timeout=5)
    assert record.completed_at is None


async def test_a_resume_of_a_killed_owners_generation_replays_then_says_owner_lost(nodes):
    script = {"text": "doomed " * 400, "tokens_per_s": 50}
    seen = await started_on(nodes["a"].url, script, 3, {"on_disconnect": "continue"})
    await asyncio.sleep(0.3)  # more frames are logged after the drop
    nodes["a"].proc.kill()  # SIGKILL: no drain, no lease release
    nodes["a"].proc.wait()
    killed_at = time.monotonic()
    async with raw_connect(nodes["b"].url) as conn:
        await conn.send(
            {"type": "resume", "message_id": seen[0]["message_id"], "last_seq": seen[-1]["seq"],
             "stream_id": "r1"}
        )  # fmt: skip
        frames = await conn.until(lambda f: f["type"] == "error", timeout=LEASE_S * 5 + 5)
    elapsed = time.monotonic() - killed_at
    error = frames[-1]
    assert (error["code"], error["stream_id"]) == ("resume_owner_lost", "r1")
    replayed = [f for f in frames if f.get("stream_id") == "r1" and "seq" in f]
    assert replayed, "what the dead node logged is replayed first"
    expected = list(range(seen[-1]["seq"] + 1, replayed[-1]["seq"] + 1))
    assert [f["seq"] for f in replayed] == expected
    assert script["text"].startswith(stream_text(seen) + stream_text(replayed))
    assert elapsed < LEASE_S * 5 + 3


async def test_a_redis_outage_leaves_connected_streams_running_and_refuses_new_resumable_starts(
    nodes, redis_server: RedisServer
):
    url = nodes["a"].url
    script = {"text": "through the outage " * 30, "tokens_per_s": 60}
    async with raw_connect(url) as conn:
        await conn.start("s1", mock_request(script))
        await conn.until(lambda f: f["type"] == "delta.text")
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(0.5)  # the nodes notice at their next write or probe
        await conn.start("s2", mock_request({"text": "new"}))
        refusal = (await conn.until(lambda f: f.get("stream_id") == "s2"))[-1]
        frames = (await conn.finishes({"s1"}, timeout=30))["s1"]
        assert (refusal["code"], refusal["retryable"]) == ("store_unavailable", True)
        assert frames[-1]["reason"] == "stop"
        assert stream_text(frames) == script["text"]
        await conn.start("s3", mock_request({"text": "unlogged"}), {"resumable": False})
        assert stream_text((await conn.finishes({"s3"}))["s3"]) == "unlogged"
        await asyncio.to_thread(redis_server.start)
        async with asyncio.timeout(10):
            n = 0
            while True:  # retry as a client would: it is retryable
                n += 1
                await conn.start(f"t{n}", mock_request({"text": "back"}))
                answer = (await conn.until(lambda f, n=n: f.get("stream_id") == f"t{n}"))[-1]
                if answer["type"] == "stream.started":
                    break
                assert answer["code"] == "store_unavailable"
                await asyncio.sleep(0.3)
        assert "epoch" in answer
        frames = (await conn.finishes({f"t{n}"}))[f"t{n}"]
        assert stream_text(frames) == "back"


async def test_ten_keyed_starts_across_two_nodes_make_one_provider_request(nodes, mock):
    script = {"text": "one generation " * 10, "tokens_per_s": 100, "tag": "x-idem"}
    options = {"idempotency_key": "cluster-key"}
    async with raw_connect(nodes["a"].url) as a, raw_connect(nodes["b"].url) as b:
        for n in range(10):
            await (a if n % 2 else b).start(f"s{n}", mock_request(script), options)
        got_a = await a.finishes({f"s{n}" for n in range(10) if n % 2}, timeout=30)
        got_b = await b.finishes({f"s{n}" for n in range(10) if not n % 2}, timeout=30)
    assert len(mock.find_all("x-idem")) == 1
    texts = {stream_text(frames) for frames in [*got_a.values(), *got_b.values()]}
    assert texts == {script["text"]}
    ids = {frames[0]["message_id"] for frames in [*got_a.values(), *got_b.values()]}
    assert len(ids) == 1


class Balancer:
    """A TCP load balancer in front of the nodes: forwards to one backend, can switch."""

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend)
        self._pairs.append((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def switch(self, backend: int) -> None:
        """Send new connections to `backend`; reset the open ones (a node left the pool)."""
        self.backend = backend
        for down, up in self._pairs:
            for writer in (down, up):
                writer.transport.abort()
        self._pairs.clear()

    async def close(self) -> None:
        self.switch(self.backend)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.mark.parametrize("drain_s", [15.0])
async def test_wsgate_chat_survives_its_node_restarting_behind_a_load_balancer(nodes, mock):
    text = "".join(f"word{n} " for n in range(120))
    balancer = Balancer(port_of(nodes["a"].url))
    await balancer.start()
    script = json.dumps({"mock": {"text": text, "tokens_per_s": 40, "tag": "chat-restart"}})
    chat = await asyncio.create_subprocess_exec(
        *WSGATE, "chat", "--url", f"ws://127.0.0.1:{balancer.port}/v1/ws", script,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    try:
        assert chat.stdout is not None
        seen = b""
        async with asyncio.timeout(10):
            while b"word10 " not in seen:
                seen += await chat.stdout.read(64)
        nodes["a"].proc.send_signal(signal.SIGTERM)  # node a restarts: it drains, then exits
        balancer.switch(port_of(nodes["b"].url))  # the balancer moves its clients to node b
        async with asyncio.timeout(30):
            rest, err = await chat.communicate()
        assert chat.returncode == 0, err.decode()
        assert (seen + rest).decode().rstrip("\n") == text
        assert len(mock.find_all("chat-restart")) == 1  # one generation, never restarted
        assert nodes["a"].proc.wait(timeout=20) == 0  # node a drained and exited cleanly
    finally:
        if chat.returncode is None:
            chat.kill()
            await chat.wait()
        await balancer.close()


async def test_with_run_without_log_a_redis_outage_starts_streams_unlogged(
    start_app, redis_server: RedisServer, redis_url: str
):
    app = await start_app(
        **{
            "store.kind": "redis",
            "store.url": redis_url,
            "store.on_unavailable": "run_without_log",
        }
    )
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"text": "logged"}))
        assert "epoch" in (await conn.finishes({"s1"}))["s1"][0]
        await asyncio.to_thread(redis_server.stop)
        await conn.start("s2", mock_request({"text": "x"}))  # the store learns it is down
        await conn.finishes({"s2"})
        async with asyncio.timeout(5):
            while app.store.healthy:  # noqa: ASYNC110 - polling the store's own flag
                await asyncio.sleep(0.05)
        await conn.start("s3", mock_request({"text": "unlogged"}))
        frames = (await conn.finishes({"s3"}))["s3"]
    assert "epoch" not in frames[0]  # started, but not resumable
    assert stream_text(frames) == "unlogged"


async def test_a_tool_call_whose_node_is_killed_mid_call_is_never_run_again(nodes, mock):
    script = {
        "turns": [{"text": "", "tool_calls": [{"name": "weather"}]}, {"text": "Warm."}],
        "tag": "x-tool",
    }
    options = {"agent": {"server_tools": ["weather"]}, "on_disconnect": "continue"}
    async with raw_connect(nodes["a"].url) as conn:
        await conn.start("s1", mock_request(script), options)
        (*_, executing) = await conn.until(lambda f: f["type"] == "tool.executing")
        await mock.tools.wait_for(lambda tools: tools.count("weather") == 1, timeout=5)
        seen = stream_frames(conn, "s1")
        drop(conn)
    nodes["a"].proc.kill()  # SIGKILL mid-call: the ledger says `running node-a` for good
    nodes["a"].proc.wait()
    async with raw_connect(nodes["b"].url) as conn:
        await conn.send(
            {"type": "resume", "message_id": seen[0]["message_id"], "last_seq": 0,
             "stream_id": "r1"}
        )  # fmt: skip
        frames = await conn.until(lambda f: f["type"] == "error", timeout=LEASE_S * 5 + 5)
    assert frames[-1]["code"] == "resume_owner_lost"
    replayed = [f for f in frames if f.get("stream_id") == "r1" and "seq" in f]
    assert any(f["type"] == "tool.executing" for f in replayed)
    assert not any(f["type"] == "tool.result" for f in replayed)
    await asyncio.sleep(2.0)  # past the tool's delay: a second run would have arrived by now
    assert mock.tools.count(call_id=executing["call_id"]) == 1
    assert mock.tools.count("weather") == 1
