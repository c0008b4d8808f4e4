"""Hostile clients against a gateway in its own process, each case with its memory measured.

The gateway runs as `wsgate serve` with a real-provider configuration pointing at a
standalone mock (`wsgate mock-upstream`, a process of its own, so the mock's memory is not
counted). Each case runs beside an observer: a stream on another connection, which must
arrive byte-exact and not slowed past `SLOWDOWN_S`; the gateway's resident memory is
sampled through the case and its peak growth held under a written bound. The limits are
short (gateway/guard.py reads them from `[limits]`) so the file runs in seconds.

Run with `-s` to see the figures (one `hostile:` line per case).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import orjson
import pytest
import websockets
from e2e_helpers import drop, mock_request, raw_connect, stream_text
from proc_helpers import clean_env, stop
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode

SEND_TIMEOUT_S = 2.0
HANDSHAKE_TIMEOUT_S = 1.0
MAX_PENDING = 8
MAX_PER_IP = 16
MAX_BAD_FRAMES = 50
MAX_DETACHED = 8
LIMITS = {
    "WSGATE_LIMITS__SEND_TIMEOUT_S": str(SEND_TIMEOUT_S),
    "WSGATE_LIMITS__HANDSHAKE_TIMEOUT_S": str(HANDSHAKE_TIMEOUT_S),
    "WSGATE_LIMITS__MAX_PENDING_HANDSHAKES": str(MAX_PENDING),
    "WSGATE_LIMITS__MAX_CONNECTIONS_PER_IP": str(MAX_PER_IP),
    "WSGATE_LIMITS__MAX_BAD_FRAMES": str(MAX_BAD_FRAMES),
    "WSGATE_LIMITS__MAX_DETACHED_STREAMS": str(MAX_DETACHED),
}

PING_FLOOD_GROWTH = 64 << 20
"""A ping flood may grow the gateway by the connection's cap (1 MiB of queued pongs) plus
what one read answers, plus allocator slack: 64 MiB is the issue's bound (main grew by
608 MiB in 15 s before the guard)."""
SMALL_GROWTH = 16 << 20
"""The other cases hold a few dozen sockets and handshakes: kilobytes each."""
OBSERVED = " ".join(f"word{i}" for i in range(60))
OBSERVED_TPS = 60.0  # one second of tokens, nominal
SLOWDOWN_S = 1.5
"""How much later than nominal the observer's stream may finish beside an attack."""

UPGRADE = (
    b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: wsgate.v1\r\n\r\n"
)
PING = Frame(Opcode.PING, b"p" * 125).serialize(mask=True, extensions=[])


# --- the processes --------------------------------------------------------------------------


def records(log: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]


def wait_record(log: Path, event: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in records(log):
            if record.get("event") == event:
                return record
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} in {log}")


@contextmanager
def process(log: Path, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A wsgate command, its log in a file (a pipe nobody reads would stall it)."""
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "wsgate", *args, "--log-format", "json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(**env),
        ) as proc,
    ):
        try:
            yield proc
        finally:
            stop(proc)


@dataclass
class Gateway:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("hostile")
    with process(logs / "mock.log", "mock-upstream", "--port", "0") as _mock:
        base_url = wait_record(logs / "mock.log", "mock_listening")["base_url"]
        provider = {
            "WSGATE_PROVIDERS__P__KIND": "openai_chat",
            "WSGATE_PROVIDERS__P__BASE_URL": base_url,  # http://127.0.0.1:<port>/v1
            "WSGATE_MODELS__M__PROVIDER": "p",
        }
        with process(logs / "gateway.log", "serve", "--port", "0", **provider, **LIMITS) as proc:
            port = wait_record(logs / "gateway.log", "gateway_listening")["port"]
            yield Gateway(proc.pid, int(port))


# --- measuring --------------------------------------------------------------------------


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


class Memory:
    """The gateway's resident memory through a case: before, peak (sampled every 5 ms), after."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = rss(pid)
        self.after = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = rss(self.pid)
        self.peak = max(self.peak, self.after)

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def report(self, case: str, **figures: Any) -> None:
        mib = 1 << 20
        extra = " ".join(f"{key}={value}" for key, value in figures.items())
        print(  # noqa: T201 - the figures, read with -s
            f"hostile: {case}: rss before {self.before / mib:.1f} MiB, peak "
            f"{self.peak / mib:.1f} MiB, after {self.after / mib:.1f} MiB {extra}"
        )


async def observe(url: str) -> tuple[str, float]:
    """A stream on a connection of its own: its text and how long it took."""
    loop = asyncio.get_running_loop()
    async with raw_connect(url) as conn:
        began = loop.time()
        script = {"text": OBSERVED, "tokens_per_s": OBSERVED_TPS}
        await conn.start("observed", mock_request(script, model="m"))
        frames = await conn.finishes({"observed"}, timeout=30)
    return stream_text(frames["observed"]), loop.time() - began


async def assert_observer_whole(observer: asyncio.Task[tuple[str, float]]) -> float:
    text, took = await observer
    assert text == OBSERVED
    nominal = len(OBSERVED.split()) / OBSERVED_TPS
    assert took < nominal + SLOWDOWN_S, f"the other stream took {took:.2f} s"
    return took


async def stats(gateway: Gateway) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /stats HTTP/1.1\r\nHost: t\r\n\r\n")
    data = await reader.read()
    writer.close()
    return orjson.loads(data.split(b"\r\n\r\n", 1)[1])


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    return data


# --- the cases ------------------------------------------------------------------------------


def ping_flood(port: int, limit_s: float) -> float:
    """Send masked pings as fast as possible and read nothing; seconds until cut."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(limit_s)
    batch = PING * 64
    began = time.monotonic()
    try:
        sock.sendall(UPGRADE)
        while time.monotonic() - began < limit_s:
            sock.sendall(batch)
    except TimeoutError:
        pass  # the gateway stopped reading but did not cut: the assertion below says so
    except OSError:
        return time.monotonic() - began
    finally:
        sock.close()
    raise AssertionError(f"a ping flood was not cut within {limit_s} s")


async def test_a_ping_flood_from_a_client_that_never_reads_is_cut_and_costs_little(gateway):
    before = await stats(gateway)
    with Memory(gateway.pid) as memory:
        observer = asyncio.create_task(observe(gateway.url))
        cut_after = await asyncio.to_thread(ping_flood, gateway.port, SEND_TIMEOUT_S + 5)
        took = await assert_observer_whole(observer)
    after = await stats(gateway)
    memory.report("ping flood", cut_after_s=f"{cut_after:.2f}", observer_s=f"{took:.2f}")
    assert cut_after < SEND_TIMEOUT_S + 1.0
    assert memory.growth < PING_FLOOD_GROWTH
    overflows = sum(after["transport_overflows"].values())
    assert overflows == sum(before["transport_overflows"].values()) + 1


async def test_connections_past_the_per_ip_cap_get_503_with_retry_after(gateway):
    before = await stats(gateway)
    with Memory(gateway.pid) as memory:
        observer = asyncio.create_task(observe(gateway.url))
        await asyncio.sleep(0.1)  # the observer holds one of this address's slots
        async with contextlib.AsyncExitStack() as held:
            for _ in range(MAX_PER_IP - 1):
                await held.enter_async_context(raw_connect(gateway.url))
            refused = []
            for _ in range(20):
                with pytest.raises(InvalidStatus) as exc:
                    async with connect(gateway.url, subprotocols=["wsgate.v1"]):  # type: ignore[list-item]
                        pass
                refused.append(exc.value.response)
            took = await assert_observer_whole(observer)
    after = await stats(gateway)
    memory.report("per-ip cap", refused=len(refused), observer_s=f"{took:.2f}")
    assert {r.status_code for r in refused} == {503}
    assert all(r.headers["Retry-After"] for r in refused)
    capped = after["connection_cap_refusals"].get("max_connections_per_ip", 0)
    assert capped - before["connection_cap_refusals"].get("max_connections_per_ip", 0) == 20
    assert memory.growth < SMALL_GROWTH


async def test_handshakes_past_the_pending_cap_are_closed_at_once(gateway):
    before = await stats(gateway)
    loop = asyncio.get_running_loop()
    with Memory(gateway.pid) as memory:
        observer = asyncio.create_task(observe(gateway.url))
        await asyncio.sleep(0.1)  # upgraded: no longer pending
        held = [
            await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(MAX_PENDING)
        ]
        await asyncio.sleep(0.1)
        began = loop.time()
        extra = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(4)]
        for reader, _writer in extra:
            assert await until_closed(reader, timeout=0.5) == b""
        refused_within = loop.time() - began
        for reader, _writer in held:  # then the deadline cuts the ones held
            assert await until_closed(reader, timeout=HANDSHAKE_TIMEOUT_S + 1) == b""
        for _reader, writer in [*held, *extra]:
            writer.close()
        took = await assert_observer_whole(observer)
    after = await stats(gateway)
    memory.report("pending cap", refused_within_s=f"{refused_within:.2f}", observer_s=f"{took:.2f}")
    assert refused_within < 0.5
    assert after["pending_handshakes_refused"] - before["pending_handshakes_refused"] == 4
    assert after["handshake_timeouts"] - before["handshake_timeouts"] == MAX_PENDING
    assert after["pending_handshakes"] == 1  # the /stats request itself
    assert memory.growth < SMALL_GROWTH


async def test_a_slowloris_sending_half_a_request_is_cut_at_the_handshake_deadline(gateway):
    loop = asyncio.get_running_loop()
    with Memory(gateway.pid) as memory:
        observer = asyncio.create_task(observe(gateway.url))
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        began = loop.time()
        with contextlib.suppress(ConnectionError):
            for byte in UPGRADE[:-4]:  # one byte every 50 ms, never the end of the headers
                writer.write(bytes([byte]))
                await writer.drain()
                if reader.at_eof():
                    break
                await asyncio.sleep(0.05)
                if loop.time() - began > HANDSHAKE_TIMEOUT_S + 1:
                    break
        await until_closed(reader, timeout=HANDSHAKE_TIMEOUT_S + 1)
        cut_after = loop.time() - began
        writer.close()
        took = await assert_observer_whole(observer)
    memory.report("slowloris", cut_after_s=f"{cut_after:.2f}", observer_s=f"{took:.2f}")
    assert HANDSHAKE_TIMEOUT_S - 0.2 < cut_after < HANDSHAKE_TIMEOUT_S + 0.5
    assert memory.growth < SMALL_GROWTH


async def test_a_client_sending_bad_frames_without_end_is_closed(gateway):
    loop = asyncio.get_running_loop()
    with Memory(gateway.pid) as memory:
        observer = asyncio.create_task(observe(gateway.url))
        sent = answered = 0
        async with raw_connect(gateway.url) as conn:

            async def read_answers() -> None:
                nonlocal answered
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await conn.ws.recv()
                        answered += 1

            reader = asyncio.create_task(read_answers())
            began = loop.time()
            with contextlib.suppress(websockets.ConnectionClosed):
                async with asyncio.timeout(10):
                    while True:
                        await conn.ws.send("{not json")
                        sent += 1
                        if sent % 16 == 0:
                            await asyncio.sleep(0)  # a send need not yield: let it read
            await reader
            closed_after = loop.time() - began
            code = conn.ws.close_code
        took = await assert_observer_whole(observer)
    memory.report(
        "bad frames",
        sent=sent,
        answered=answered,
        close_code=code,
        closed_after_s=f"{closed_after:.2f}",
        observer_s=f"{took:.2f}",
    )
    assert code == 4500
    assert answered <= MAX_BAD_FRAMES + 1  # each error, then too_many_bad_frames
    assert closed_after < 2.0
    assert memory.growth < SMALL_GROWTH


async def test_streams_left_running_by_clients_that_reset_are_capped_gateway_wide(gateway):
    # The case: 2 connections x 32 `on_disconnect: continue` streams, then a reset,
    # held +62 MB on main for the whole window. Past `max_detached_streams` they are
    # cancelled; what the rest may log is bounded by max_log_bytes each.
    script = {"chunks": ["tok "] * 1500, "tokens_per_s": 300}  # 5 s each, if left to run
    with Memory(gateway.pid) as memory:
        observer = asyncio.create_task(observe(gateway.url))
        for _ in range(2):
            async with raw_connect(gateway.url) as conn:
                for i in range(32):
                    await conn.start(
                        f"d{i}", mock_request(script, model="m"), {"on_disconnect": "continue"}
                    )
                await conn.until(
                    lambda f: f["type"] == "stream.started" and f["stream_id"] == "d31"
                )
                drop(conn)
        await asyncio.sleep(0.5)
        detached = (await stats(gateway))["detached_open"]
        took = await assert_observer_whole(observer)
    memory.report(
        "detached cap", detached_open=detached, cap=MAX_DETACHED, observer_s=f"{took:.2f}"
    )
    assert 0 < detached <= MAX_DETACHED
    assert memory.growth < SMALL_GROWTH
