"""What reading a paced provider stream costs before a gateway does anything with it.

The floor under every gateway's per-token CPU, measured by `bench.py` next to the naive relay
and wsgate at the same load: `--streams` concurrent answers from the mock at 20 tokens/s
(one HTTP chunk per token), started evenly over the first third of `--seconds`, read and
dropped. The CPU this process spends in a window of steady load (every stream open, none
starting or ending) is divided by the SSE events it received in that window.

- `--mode socket`: one bare asyncio protocol per stream on uvloop; `data_received` counts
  events and keeps nothing: the event loop, the system calls and one Python call per read.
- `--mode aiohttp`: one task per stream reading `response.content.readany()` from a shared
  `aiohttp.ClientSession`, as wsgate reads its providers (and the naive relay, line by line):
  what any gateway built on aiohttp pays per token before parsing a byte (wsgate's pull
  reader, `reader = "pull"`).
- `--mode aiohttp-push`: wsgate's push reader (`wsgate.upstream.push`): aiohttp makes the
  request and parses the HTTP, and each read's body bytes are handed to a sink inside the
  socket's data callback; one task per stream waits for the end only. The floor under
  wsgate's default path.
- `--mode socket-relay`: the bare socket reader, and each read's bytes written as they are
  to a TCP connection of the stream's own, to a drain process on another CPU that reads and
  drops them: one read and one write system call per token, the least any relay pays
  (the drain's CPU is not counted).

Prints one JSON object: mode, streams, events and CPU seconds in the window, microseconds of
CPU per event, the share of a core used, and how many answers failed (non-200 or cut off).
Loopback only.

Usage: `python scripts/read_floor.py --upstream http://127.0.0.1:8090/v1 --streams 200`
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop

from wsgate.loadgen.config import require_loopback
from wsgate.upstream.push import PushBody, install

RATE = 20  # tokens per second per stream, as in the knee search
EVENT_END = b"\n\n"  # one SSE event per token; chunked framing never holds two newlines


class Count:
    """SSE events received by every stream, and the answers that failed."""

    def __init__(self) -> None:
        self.events = 0
        self.failed = 0


def request_body(seed: int, words: int) -> bytes:
    """A mock chat request for one paced answer of `words` tokens."""
    script = {"words": words, "seed": seed, "ttft_ms": 50, "tokens_per_s": RATE}
    message = {"role": "user", "content": orjson.dumps({"mock": script}).decode()}
    return orjson.dumps({"model": "mock", "stream": True, "messages": [message]})


async def read_aiohttp(
    session: aiohttp.ClientSession, url: str, body: bytes, count: Count, delay: float
) -> None:
    """One answer through aiohttp: `readany()` until the body ends."""
    async with _post(session, url, body, count, delay) as response:
        if response is None:
            return
        content = response.content
        while chunk := await content.readany():
            count.events += chunk.count(EVENT_END)
        if not content.is_eof():
            count.failed += 1


@asynccontextmanager
async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, count: Count, delay: float
) -> AsyncIterator[aiohttp.ClientResponse | None]:
    """After `delay` s, POST one answer's request; None (counted as failed) unless 200."""
    await asyncio.sleep(delay)
    headers = {"content-type": "application/json"}
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            count.failed += 1
            yield None
        else:
            yield response


class _Counter:
    """A push sink: counts events, keeps nothing."""

    __slots__ = ("count",)

    def __init__(self, count: Count) -> None:
        self.count = count

    def data(self, chunk: bytes) -> bool:
        self.count.events += chunk.count(EVENT_END)
        return False


async def read_push(
    session: aiohttp.ClientSession, url: str, body: bytes, count: Count, delay: float
) -> None:
    """One answer through wsgate's push reader: the body arrives in the socket callback."""
    async with _post(session, url, body, count, delay) as response:
        if response is None:
            return
        loop = asyncio.get_running_loop()
        await PushBody(response, loop.time() + 60, 60).run(_Counter(count))
        if not response.content.is_eof():
            count.failed += 1


class _Reader(asyncio.Protocol):
    """A bare socket reader: counts events, keeps nothing."""

    def __init__(self, count: Count, done: asyncio.Future[None]) -> None:
        self.count = count
        self.done = done
        self.head = True

    def data_received(self, data: bytes) -> None:
        if self.head:  # the status line arrives in the first read
            self.head = False
            if not data.startswith(b"HTTP/1.1 200"):
                self.count.failed += 1
        self.count.events += data.count(EVENT_END)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.count.failed += 1
        if not self.done.done():
            self.done.set_result(None)


class _Relay(_Reader):
    """A bare socket reader that writes every read on to `out` (the relay floor)."""

    def __init__(self, count: Count, done: asyncio.Future[None], out: asyncio.Transport) -> None:
        super().__init__(count, done)
        self.out = out

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.out.write(data)


class _Drop(asyncio.Protocol):
    """The drain's side of a relay connection: reads and drops."""

    def data_received(self, data: bytes) -> None:
        pass


async def read_socket(
    url: str, body: bytes, count: Count, delay: float, drain: int | None = None
) -> None:
    """One answer over a bare socket: an HTTP/1.1 POST with `Connection: close`.

    With a `drain` port, every read is written on to a connection of its own to it.
    """
    await asyncio.sleep(delay)
    parts = urlsplit(url)
    host, port = require_loopback(url)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    out: asyncio.Transport | None = None
    if drain is None:
        transport, _ = await loop.create_connection(lambda: _Reader(count, done), host, port)
    else:
        out, _ = await loop.create_connection(_Drop, "127.0.0.1", drain)
        relay = out
        transport, _ = await loop.create_connection(lambda: _Relay(count, done, relay), host, port)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    transport.write(head.encode() + body)
    try:
        await done
    finally:
        transport.close()
        if out is not None:
            out.close()


class _UntilClosed(asyncio.Protocol):
    """Sets `closed` when the pipe it reads closes (the parent is gone)."""

    def __init__(self, closed: asyncio.Event) -> None:
        self.closed = closed

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - any end
        self.closed.set()


async def serve_drain() -> None:
    """The drain of `--mode socket-relay` (a child process): accept, read, drop.

    Prints its port, and ends when its standard input closes (the parent ended or died).
    """
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Drop, "127.0.0.1", 0)
    sys.stdout.write(f"{server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    closed = asyncio.Event()
    await loop.connect_read_pipe(lambda: _UntilClosed(closed), sys.stdin)
    await closed.wait()


def start_drain() -> tuple[subprocess.Popen[bytes], int]:
    """The drain process, on a CPU this process does not run on (when there is one)."""
    argv = [sys.executable, __file__, "--serve-drain"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: S603 - this script
    mine = os.sched_getaffinity(0)
    others = set(range(os.cpu_count() or 1)) - mine
    if others:
        os.sched_setaffinity(proc.pid, others)
    assert proc.stdout is not None  # noqa: S101 - a pipe was asked for
    return proc, int(proc.stdout.readline())


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Open every stream, measure the steady window, wait for the answers."""
    url = args.upstream.rstrip("/") + "/chat/completions"
    words = int(RATE * args.seconds)
    ramp = args.seconds / 3
    count = Count()
    drain, drain_port = start_drain() if args.mode == "socket-relay" else (None, None)
    connector = aiohttp.TCPConnector(limit=0)
    install(connector, asyncio.get_running_loop())  # PushProtocol; readany() works on it too
    async with aiohttp.ClientSession(connector=connector) as session:
        readers = []
        for i in range(args.streams):
            body, delay = request_body(i, words), ramp * i / args.streams
            if args.mode == "aiohttp":
                readers.append(read_aiohttp(session, url, body, count, delay))
            elif args.mode == "aiohttp-push":
                readers.append(read_push(session, url, body, count, delay))
            else:
                readers.append(read_socket(url, body, count, delay, drain_port))
        tasks = [asyncio.ensure_future(reader) for reader in readers]
        await asyncio.sleep(ramp + 0.5)  # every stream open and past its first token
        events0, cpu0, wall0 = count.events, _cpu_s(), time.monotonic()
        await asyncio.sleep(args.window)
        events, cpu = count.events - events0, _cpu_s() - cpu0
        wall = time.monotonic() - wall0
        results = await asyncio.gather(*tasks, return_exceptions=True)
    if drain is not None:
        with drain:  # closes its pipes: the drain sees its standard input close and ends
            drain.kill()
    failed = count.failed + sum(isinstance(r, BaseException) for r in results)
    return {
        "mode": args.mode,
        "streams": args.streams,
        "window_s": round(wall, 3),
        "events": events,
        "cpu_s": round(cpu, 4),
        "us_per_event": round(1e6 * cpu / events, 2) if events else None,
        "cpu_share": round(cpu / wall, 3),
        "failed": failed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run, print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstream", help="the mock's base URL (…/v1)")
    parser.add_argument("--streams", type=int, default=200)
    modes = ("socket", "socket-relay", "aiohttp", "aiohttp-push")
    parser.add_argument("--mode", choices=modes, default="aiohttp")
    parser.add_argument("--serve-drain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=8.0, help="one answer's length")
    parser.add_argument("--window", type=float, default=2.5, help="seconds measured")
    args = parser.parse_args(argv)
    if args.serve_drain:
        uvloop.run(serve_drain())
        return 0
    if args.streams < 1 or args.window <= 0 or args.seconds < 3 * args.window / 2 + 1:
        parser.error("need --streams >= 1, --window > 0 and --seconds >= 1.5 x window + 1")
    if not args.upstream:
        parser.error("--upstream is required")
    try:
        require_loopback(args.upstream)
    except ValueError as exc:
        parser.error(str(exc))
    result = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0 if not result["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
