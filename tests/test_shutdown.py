"""Graceful shutdown end to end: a real `wsgate serve` process receives SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import orjson
import pytest
import websockets
from proc_helpers import read_port, serving
from websockets.asyncio.client import connect


def request(text: str, tokens_per_s: float) -> dict:
    script = {"mock": {"text": text, "tokens_per_s": tokens_per_s}}
    return {"model": "mock", "messages": [{"role": "user", "content": json.dumps(script)}]}


STREAM_IDS = ("short", "long", "late")


async def read_until_closed(ws, frames: list[dict], late_start: dict) -> None:
    """Read until the gateway closes; answer `goaway` with a start that must be refused."""
    async with asyncio.timeout(15):
        while True:
            frame = orjson.loads(await ws.recv())
            frames.append(frame)
            if frame["type"] == "goaway":
                late = {"type": "start", "stream_id": "late", "request": late_start}
                await ws.send(orjson.dumps(late).decode())


async def test_sigterm_drains_running_streams_then_closes_with_1001_and_exits_0():
    with serving(WSGATE_SERVER__DRAIN_TIMEOUT_S="1.5") as proc:
        port = await read_port(proc)
        frames: list[dict] = []
        async with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            await ws.recv()  # ready
            short = request("short " * 20, 40)  # ~0.5 s: finishes within the drain
            long = request("long " * 200, 20)  # ~10 s: cut at the deadline
            for sid, body in (("short", short), ("long", long)):
                start = {"type": "start", "stream_id": sid, "request": body}
                await ws.send(orjson.dumps(start).decode())
            while len({f.get("stream_id") for f in frames if f["type"] == "delta.text"}) < 2:
                frames.append(orjson.loads(await ws.recv()))
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as info:
                await read_until_closed(ws, frames, late_start=short)
        closed_after = time.monotonic() - signalled
        assert proc.wait(timeout=10) == 0
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1001
    (goaway,) = [f for f in frames if f["type"] == "goaway"]
    assert goaway["drain_ms"] == 1500
    by_stream = {
        sid: [f for f in frames if f.get("stream_id") == sid] for sid in ("short", "long", "late")
    }
    assert by_stream["short"][-1]["reason"] == "stop"
    assert (
        "".join(f["text"] for f in by_stream["short"] if f["type"] == "delta.text") == "short " * 20
    )
    error, finish = by_stream["long"][-2:]
    assert (error["code"], error["retryable"], finish["reason"]) == (
        "shutting_down",
        True,
        "cancelled",
    )
    assert [f["code"] for f in by_stream["late"]] == ["shutting_down"]
    assert 1.4 < closed_after < 6


async def test_a_second_signal_exits_at_once():
    with serving(WSGATE_SERVER__DRAIN_TIMEOUT_S="30") as proc:
        port = await read_port(proc)
        async with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            await ws.recv()
            start = {"type": "start", "stream_id": "s", "request": request("x " * 500, 10)}
            await ws.send(orjson.dumps(start).decode())
            await ws.recv()
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10)
            assert code == 1
            assert time.monotonic() - signalled < 2
