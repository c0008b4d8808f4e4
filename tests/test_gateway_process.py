"""The gateway as its own process, with the client in this one: as in production."""

from __future__ import annotations

import asyncio
import json

import orjson
from proc_helpers import drain, read_port, run_wsgate, serving
from websockets.asyncio.client import connect

from wsgate.testing_redis import free_port

STREAMS = 256


def start(stream_id: str, script: dict) -> str:
    content = json.dumps({"mock": script})
    body = {"model": "mock", "messages": [{"role": "user", "content": content}]}
    return orjson.dumps({"type": "start", "stream_id": stream_id, "request": body}).decode()


async def test_a_client_reading_at_full_speed_is_never_closed_as_a_slow_consumer():
    # 256 bulk streams burst one provider read each whenever the connection un-congests:
    # the client keeps up, so the gateway's own overshoot must not count against it.
    with serving() as proc:
        port = await read_port(proc)
        drain(proc)  # 256 streams log more than a pipe holds
        url = f"ws://127.0.0.1:{port}/v1/ws"
        async with connect(url, subprotocols=["wsgate.v1"], max_size=None) as ws:  # type: ignore[list-item]
            await ws.recv()
            for i in range(STREAMS):
                await ws.send(start(f"s{i}", {"words": 20000, "seed": i, "chunk": 4000}))
            reasons = []
            async with asyncio.timeout(60):
                while len(reasons) < STREAMS:
                    frame = orjson.loads(await ws.recv())
                    assert frame["type"] != "error", frame
                    if frame["type"] == "finish":
                        reasons.append(frame["reason"])
    assert reasons == ["stop"] * STREAMS


def test_serve_with_its_redis_store_unreachable_says_so_in_one_line_and_exits():
    port = free_port()  # nothing listens there
    result = run_wsgate(
        "serve",
        "--port",
        "0",
        WSGATE_STORE__KIND="redis",
        WSGATE_STORE__URL=f"redis://:pw@127.0.0.1:{port}/0",
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "resume store" in lines[0]
    assert "unreachable" in lines[0]
    assert "pw" not in lines[0]
