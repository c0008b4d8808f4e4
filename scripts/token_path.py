"""What wsgate's own Python costs per token, without a socket on either side.

The part of wsgate's per-token CPU that is neither reading the provider nor writing the
client: one connection (a real `Session`, `Connection` and `Writer`) over a recording
transport (`wsgate.testing.RecordingWebSocket`), one stream, and `--tokens` OpenAI chat
SSE events handed to the stream's body sink (`_Feed.data`, what the push reader calls in the
socket's callback), one per loop turn, each one flushed to the transport in its turn. The
CPU of the loop turn alone (measured the same way, with nothing fed) is subtracted.
`bench.py` runs it next to the read floors, so the report splits a token's cost into
reading, wsgate's work and writing.

Prints one JSON object: tokens, microseconds of CPU per token (the loop turn excluded), the
loop turn's own, and Python function calls per token (counted in a second, shorter pass).

Usage: `python scripts/token_path.py --tokens 50000`
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import orjson
import uvloop

from wsgate.core.providers import make_parser
from wsgate.core.session import Session
from wsgate.gateway.connection import Connection, ConnectionOptions, Shared
from wsgate.gateway.options import session_limits
from wsgate.gateway.stream_task import _Feed
from wsgate.log import configure
from wsgate.testing import LOCAL, HangingUpstream, RecordingWebSocket, resolver

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
EVENT = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}\n\n'
)
START = {
    "type": "start",
    "stream_id": "s1",
    "request": {"model": "mock", "messages": [{"role": "user", "content": "x"}]},
}


class _HeldBody:
    """The body the sink pauses and resumes (flow control): never paused here."""

    paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def measure(tokens: int, calls_tokens: int) -> dict[str, Any]:
    """Feed `tokens` events through one connection; the CPU and calls per token."""
    ws = RecordingWebSocket()
    upstream = HangingUpstream("body")  # the stream's task waits; the test feeds its sink
    session = Session(
        "conn_b",
        session_limits(ConnectionOptions()),
        resolver(lambda: make_parser("openai_chat", 1 << 20)),
        lambda: "msg_b",
    )
    options, shared = ConnectionOptions(), Shared()
    conn = Connection(ws, session, upstream, options, shared, principal=LOCAL)  # type: ignore[arg-type]
    run = asyncio.ensure_future(conn.run())
    ws.client_sends(orjson.dumps(START).decode())
    async with asyncio.timeout(5):
        await upstream.hanging.wait()
    feed = _Feed(conn, "s1", _HeldBody())
    feed.data(ROLE)
    await asyncio.sleep(0)

    async def tokens_through(n: int) -> None:
        writes = ws.transport.writes
        for i in range(n):
            feed.data(EVENT)
            await asyncio.sleep(0)
            if i % 1024 == 0:
                writes.clear()

    began = time.process_time()
    await tokens_through(tokens)
    fed = time.process_time() - began
    began = time.process_time()
    await _turns(tokens)
    turn = time.process_time() - began

    calls = 0

    def count(_frame: FrameType, event: str, _arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        await tokens_through(calls_tokens)
    finally:
        sys.setprofile(None)
    fed_calls, calls = calls, 0
    sys.setprofile(count)
    try:
        await _turns(calls_tokens)  # the loop turn's own calls, subtracted
    finally:
        sys.setprofile(None)
    calls = fed_calls - calls
    ws.client_closes()
    async with asyncio.timeout(5):
        await run
    return {
        "tokens": tokens,
        "us_per_token": round(1e6 * (fed - turn) / tokens, 2),
        "loop_turn_us": round(1e6 * turn / tokens, 2),
        "calls_per_token": round(calls / calls_tokens, 1) if calls_tokens else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, measure, print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, default=50_000)
    args = parser.parse_args(argv)
    if args.tokens < 100:
        parser.error("need --tokens >= 100")
    configure("warning", stream=sys.stderr)  # stdout carries the result alone
    result = uvloop.run(measure(args.tokens, min(2000, args.tokens)))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
