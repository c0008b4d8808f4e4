"""End-to-end helpers: a schema-validating raw client and stream assertions.

Every frame a test receives through `RawConn` is validated against the committed JSON
Schema in `protocol/schema/server.schema.json`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import websockets
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

SCHEMA_DIR = Path(__file__).parents[2] / "protocol" / "schema"
SERVER_SCHEMA = json.loads((SCHEMA_DIR / "server.schema.json").read_text())
SERVER_VALIDATOR = jsonschema.Draft202012Validator(SERVER_SCHEMA)
# One validator per frame type, through the schema's own discriminator mapping: the same
# rules as the whole union, without trying all twelve branches for every frame.
TYPE_VALIDATORS = {
    frame_type: jsonschema.Draft202012Validator({"$ref": ref, "$defs": SERVER_SCHEMA["$defs"]})
    for frame_type, ref in SERVER_SCHEMA["discriminator"]["mapping"].items()
}


def validate_server_frame(frame: dict[str, Any]) -> None:
    validator = TYPE_VALIDATORS.get(frame.get("type"), SERVER_VALIDATOR)  # type: ignore[arg-type]
    validator.validate(frame)


def mock_request(script: dict[str, Any] | None = None, *, model: str = "mock", **extra) -> dict:
    content = "hello" if script is None else json.dumps({"mock": script})
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


class RawConn:
    """A schema-validating raw client over one WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        data = frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode()
        await self.ws.send(data)

    async def start(self, stream_id: str, request: dict, options: dict | None = None) -> None:
        frame: dict[str, Any] = {"type": "start", "stream_id": stream_id, "request": request}
        if options is not None:
            frame["options"] = options
        await self.send(frame)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            data = await self.ws.recv()
        assert isinstance(data, str), "the gateway sends text frames only"
        frame = orjson.loads(data)
        validate_server_frame(frame)
        self.received.append(frame)
        return frame

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Receive frames until one matches; return all received on the way (inclusive)."""
        out = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                out.append(frame)
                if predicate(frame):
                    return out

    async def finishes(self, stream_ids: set[str], timeout: float = 20.0) -> dict[str, list]:
        """Receive until every listed stream has its finish; frames grouped by stream."""
        by_stream: dict[str, list] = {sid: [] for sid in stream_ids}
        pending = set(stream_ids)
        for frame in self.received:  # frames already seen by earlier waits count too
            sid = frame.get("stream_id")
            if sid in by_stream:
                by_stream[sid].append(frame)
                if frame["type"] == "finish":
                    pending.discard(sid)
        async with asyncio.timeout(timeout):
            while pending:
                frame = await self.recv(timeout)
                sid = frame.get("stream_id")
                if sid in by_stream:
                    by_stream[sid].append(frame)
                    if frame["type"] == "finish":
                        pending.discard(sid)
        return by_stream


def drop(conn: RawConn) -> None:
    """Reset the TCP connection: no close frame, as a phone losing its network does."""
    transport = conn.ws.transport
    assert transport is not None
    transport.abort()


def stream_frames(conn: RawConn, stream_id: str) -> list[dict[str, Any]]:
    """What `conn` received of a stream's sequence (frames with `seq`), in order."""
    return [f for f in conn.received if f.get("stream_id") == stream_id and "seq" in f]


def stream_text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta.text")


def assert_gapless(frames: list[dict[str, Any]]) -> None:
    """Seq runs 1, 2, ... without a gap; a coalesced text frame covers first_seq..seq."""
    expected = 1
    for frame in frames:
        if "seq" not in frame:
            continue
        assert frame.get("first_seq", frame["seq"]) == expected, (expected, frame)
        expected = frame["seq"] + 1
    assert frames[-1]["type"] == "finish"


@asynccontextmanager
async def raw_connect(url: str, **kwargs: Any) -> AsyncIterator[RawConn]:
    async with connect(url, subprotocols=["wsgate.v1"], **kwargs) as ws:  # type: ignore[list-item]
        conn = RawConn(ws)
        ready = await conn.recv()
        assert ready["type"] == "ready"
        yield conn


@asynccontextmanager
async def serving(handler: Callable[..., Any]) -> AsyncIterator[str]:
    """A stand-in provider on 127.0.0.1 answering every POST with `handler`; its root URL."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


__all__ = [
    "RawConn",
    "assert_gapless",
    "drop",
    "mock_request",
    "raw_connect",
    "serving",
    "stream_frames",
    "stream_text",
    "validate_server_frame",
    "websockets",
]
