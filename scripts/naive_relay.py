"""The naive relay: the wsgate.v1 pass-through a user would write in an afternoon.

The reference the benchmark measures wsgate against (with the mock read directly as the
floor). A `websockets` server; for each `start` frame, one task that POSTs the request to
the upstream with aiohttp, reads the SSE body line by line (`async for line in
resp.content`), `orjson`-parses each `data:` line and sends one `delta.text` frame per
content delta with `await ws.send(...)`. No queues, no flow control, no coalescing, no
limits (frames of any size are accepted), no retries. It speaks just enough of wsgate.v1
for the load tester to drive it unchanged: `ready`, `stream.started`, `delta.text`,
`error` and `finish`; `cancel` cancels the stream's task, which closes its upstream
response. Two choices are deliberately *not* naive, so that the comparison measures the
design rather than a trap: aiohttp's connection limit is lifted (`limit=0`; its default
of 100 silently caps concurrent streams) and a closed connection cancels its streams.
Runs on uvloop, without compression, like the gateway. Loopback only.

Usage: `python scripts/naive_relay.py --upstream http://127.0.0.1:8090/v1 --port 8081`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

PROTOCOL = "wsgate.v1"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_message_ids = itertools.count(1)


class Relay:
    """One upstream HTTP session shared by every connection of the relay."""

    def __init__(self, upstream: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.session: aiohttp.ClientSession | None = None

    async def handler(self, ws: ServerConnection) -> None:
        """Serve one WebSocket: one task per started stream, until the client leaves."""
        tasks: dict[str, asyncio.Task[None]] = {}
        await send(ws, {"type": "ready", "protocol": PROTOCOL, "conn_id": "naive"})
        try:
            async for message in ws:
                frame = orjson.loads(message)
                stream_id = frame.get("stream_id", "")
                if frame.get("type") == "start":
                    stream = NaiveStream(self, ws, stream_id)
                    tasks[stream_id] = task = asyncio.create_task(stream.run(frame["request"]))
                    task.add_done_callback(functools.partial(_forget, tasks, stream_id))
                    task.add_done_callback(stream.done)
                elif frame.get("type") == "cancel" and stream_id in tasks:
                    tasks[stream_id].cancel()
        except ConnectionClosed:
            pass
        finally:
            for task in list(tasks.values()):
                task.cancel()


class NaiveStream:
    """One relayed completion: started, one frame per delta, finish."""

    def __init__(self, relay: Relay, ws: ServerConnection, stream_id: str) -> None:
        self.relay, self.ws, self.stream_id = relay, ws, stream_id
        self.seq = 0
        self.finished = False

    async def run(self, request: dict[str, Any]) -> None:
        """Relay the answer; errors become an `error` frame and `finish: error`."""
        await self.send(
            {
                "type": "stream.started",
                "message_id": f"msg_{next(_message_ids)}",
                "model": request.get("model", ""),
            }
        )
        try:
            reason = await self.relay_body(request)
        except aiohttp.ClientError:
            await self.send(
                {
                    "type": "error",
                    "code": "upstream_unavailable",
                    "message": "upstream_unavailable",
                    "retryable": True,
                }
            )
            reason = "error"
        await self.finish(reason)

    async def relay_body(self, request: dict[str, Any]) -> str:
        """POST upstream and send each content delta; return the finish reason."""
        session = self.relay.session
        assert session is not None  # noqa: S101 - set before use
        reason = "stop"
        body = orjson.dumps({**request, "stream": True})
        async with session.post(self.relay.url, data=body) as resp:
            if resp.status != 200:
                code = "upstream_rate_limited" if resp.status == 429 else "upstream_error"
                await self.send({"type": "error", "code": code, "message": code, "retryable": True})
                return "error"
            async for line in resp.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = orjson.loads(line[6:])
                for choice in chunk.get("choices") or ():
                    text = choice.get("delta", {}).get("content")
                    if text:
                        await self.send({"type": "delta.text", "text": text})
                    reason = choice.get("finish_reason") or reason
        return reason

    async def finish(self, reason: str) -> None:
        """Send the stream's one `finish`."""
        if not self.finished:
            self.finished = True
            await self.send({"type": "finish", "reason": reason})

    def done(self, task: asyncio.Task[None]) -> None:
        """A cancelled task (even one cancelled before it ran) still owes its `finish`."""
        if not task.cancelled():
            task.exception()  # a client gone mid-send (ConnectionClosed) needs no log line
        elif not self.finished:
            finishing = asyncio.ensure_future(self.finish("cancelled"))
            finishing.add_done_callback(_ignore_closed)

    async def send(self, frame: dict[str, Any]) -> None:
        """Number and send one frame of this stream."""
        self.seq += 1
        frame.update(stream_id=self.stream_id, seq=self.seq)
        await send(self.ws, frame)


def _forget(tasks: dict[str, asyncio.Task[None]], stream_id: str, task: asyncio.Task[None]) -> None:
    if tasks.get(stream_id) is task:
        del tasks[stream_id]


def _ignore_closed(task: asyncio.Future[None]) -> None:
    # The client may be gone by now; retrieving the exception keeps asyncio quiet.
    if not task.cancelled():
        task.exception()


async def send(ws: ServerConnection, frame: dict[str, Any]) -> None:
    """Encode and send one frame as a text message."""
    await ws.send(orjson.dumps(frame), text=True)


def select_subprotocol(_ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Speak wsgate.v1 to every client, whatever it offered."""
    return Subprotocol(PROTOCOL) if PROTOCOL in offered else None


async def serve_relay(upstream: str, host: str, port: int, ready: asyncio.Event | None) -> None:
    """Run the relay until cancelled; set `ready` once listening."""
    relay = Relay(upstream)
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=connector) as relay.session,
        serve(
            relay.handler,
            host,
            port,
            select_subprotocol=select_subprotocol,
            compression=None,
            max_size=None,
            ping_interval=None,
        ) as server,
    ):
        bound = server.sockets[0].getsockname()[1]
        print(f"naive relay listening on ws://{host}:{bound}/v1/ws", file=sys.stderr, flush=True)
        if ready is not None:
            ready.set()
        await asyncio.Future()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--upstream", required=True, help="mock base URL, e.g. http://127.0.0.1:8090/v1"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    if args.host not in _LOOPBACK:
        parser.error("the naive relay listens on loopback only")
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve_relay(args.upstream, args.host, args.port, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
