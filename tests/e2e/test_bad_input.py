"""Bad frames get their documented answer, and the connection's other streams carry on."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import orjson
import pytest
import websockets
from e2e_helpers import mock_request, raw_connect, stream_text
from websockets.asyncio.client import connect

LONG_TEXT = "steady " * 100

BAD_FRAMES = [
    ("malformed JSON", '{"type": "start", ', "bad_frame", None),
    ("non-object JSON", "[1, 2, 3]", "bad_frame", None),
    ("JSON string", '"start"', "bad_frame", None),
    ("unknown type", '{"type": "launch", "stream_id": "x1"}', "bad_frame", "x1"),
    ("missing request", '{"type": "start", "stream_id": "x2"}', "bad_frame", "x2"),
    ("bad stream_id charset", '{"type": "cancel", "stream_id": "a b"}', "bad_frame", None),
    (
        "stream_id too long",
        '{"type": "cancel", "stream_id": "' + "x" * 65 + '"}',
        "bad_frame",
        None,
    ),
    ("duplicate stream_id", None, "stream_exists", "live"),
    (
        "cancel of an unknown stream",
        '{"type": "cancel", "stream_id": "nope"}',
        "unknown_stream",
        "nope",
    ),
    (
        "deep nesting",
        '{"type":"tool_result","stream_id":"x3","call_id":"c","content":'
        + "[" * 50000
        + "]" * 50000
        + "}",
        "bad_frame",
        None,
    ),
    (
        "5000-digit number",
        '{"type":"start","stream_id":"x4","request":{"model":"mock","seed":'
        + "9" * 5000
        + ',"messages":[{"role":"user","content":"a"}]}}',
        "bad_frame",
        "x4",
    ),
    ("lone surrogate escape", '{"type": "cancel", "stream_id": "\\ud800"}', "bad_frame", None),
    (
        "unknown model",
        json.dumps({"type": "start", "stream_id": "x5", "request": mock_request(model="gpt-nope")}),
        "unknown_model",
        "x5",
    ),
    ("auth without [auth]", '{"type": "auth", "token": "t"}', "unsupported", None),
    ("oversized frame", "OVERSIZED", "frame_too_large", None),
    ("binary frame", b"\x00\x01binary", "bad_frame", None),
]


@pytest.mark.parametrize(
    ("name", "frame", "code", "stream_id"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES]
)
async def test_each_bad_frame_gets_its_error_and_other_streams_carry_on(
    app, name, frame, code, stream_id
):
    # ~0.5 s of text: the live stream is still running when the bad frame lands. The
    # duplicate start is only a duplicate while it runs: 2 s for it, so that a stall of
    # the shared test machine cannot let the stream end first (it then starts anew).
    rate = 50 if frame is None else 200
    async with raw_connect(app.url) as conn:
        await conn.start("live", mock_request({"text": LONG_TEXT, "tokens_per_s": rate}))
        await conn.until(lambda f: f["type"] == "delta.text")
        if frame is None:
            frame = orjson.dumps(
                {"type": "start", "stream_id": "live", "request": mock_request()}
            ).decode()
        if frame == "OVERSIZED":
            frame = '{"type":"cancel","stream_id":"a","pad":"' + "x" * (1024 * 1024 + 10) + '"}'
        await conn.send(frame)
        frames = await conn.until(lambda f: f["type"] == "error" and "seq" not in f)
        error = frames[-1]
        assert error["code"] == code
        assert error.get("stream_id") == stream_id
        assert isinstance(error["message"], str)
        assert "Traceback" not in error["message"]
        rest = await conn.finishes({"live"})
    live = [f for f in conn.received if f.get("stream_id") == "live"]
    assert stream_text(live) == LONG_TEXT
    assert live[-1]["reason"] == "stop"
    assert rest


async def test_a_frame_beyond_the_hard_cap_closes_the_connection_with_1009(app):
    async with raw_connect(app.url, max_size=None) as conn:
        await conn.send("x" * (4 * 1024 * 1024 + 1))
        with pytest.raises(websockets.ConnectionClosedError) as info:
            await conn.recv()
    assert info.value.rcvd.code == 1009


async def test_an_upstream_lone_surrogate_escape_does_not_break_the_connection(app):
    events = [
        '{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
        '{"choices":[{"index":0,"delta":{"content":"a\\ud83d"}}]}',
        '{"choices":[{"index":0,"delta":{"content":"b"}}]}',
        '{"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}',
        '{"choices":[{"index":0,"delta":{"content":"\\ude00c"}}]}',
        '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    ]
    async with raw_connect(app.url) as conn:
        await conn.start("s1", mock_request({"events": events}))
        await conn.start("s2", mock_request({"text": "neighbour"}))
        by_stream = await conn.finishes({"s1", "s2"})
    assert stream_text(by_stream["s1"]) == "a\ufffdb\U0001f600c"
    assert by_stream["s1"][-1]["reason"] == "stop"
    assert stream_text(by_stream["s2"]) == "neighbour"


async def test_a_client_offering_only_another_subprotocol_is_refused(app):
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(app.url, subprotocols=["other.v9"]):  # type: ignore[list-item]
            pass
    assert info.value.response.status_code == 400


async def test_other_paths_are_404_and_probes_answer(app):
    base = app.url.replace("ws://", "http://").rsplit("/v1/ws", 1)[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/nope") as resp:
            assert resp.status == 404
        async with http.get(base + "/livez") as resp:
            assert resp.status == 200
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200


async def test_a_client_offering_no_subprotocol_is_served_as_wsgate_v1(app):
    async with connect(app.url) as ws:
        ready = orjson.loads(await ws.recv())
        assert ready["type"] == "ready"
        assert ws.subprotocol is None


async def test_a_client_offering_several_subprotocols_gets_wsgate_v1(app):
    async with connect(app.url, subprotocols=["other.v9", "wsgate.v1"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "wsgate.v1"
        assert orjson.loads(await ws.recv())["protocol"] == "wsgate.v1"


async def test_a_client_flooding_bad_frames_without_reading_is_throttled_and_loses_nothing(
    start_app,
):
    app = await start_app(**{"limits.max_bad_frames": 10**9})  # the backlog, not the count
    sent = 0
    async with raw_connect(app.url, max_queue=1) as conn:

        async def flood() -> None:
            nonlocal sent
            for _ in range(60_000):
                await conn.ws.send("[]")
                sent += 1

        task = asyncio.create_task(flood())
        await asyncio.sleep(3)
        (connection,) = app.gateway.connections
        # 60k refusals would be ~5.7 MB; the reader pauses at its backlog bound instead.
        assert connection.outbox.pending_bytes < 1024 * 1024
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        answered = 0
        async with asyncio.timeout(30):
            while answered < sent:
                frame = await conn.recv()
                assert frame["code"] == "bad_frame"
                answered += 1
    assert sent > 1000


async def test_a_request_too_odd_to_relay_gets_a_typed_non_internal_answer(app):
    nested: list = []
    for _ in range(300):
        nested = [nested]
    request = mock_request({"text": "x"})
    request["tools"] = [{"type": "function", "function": {"name": "f", "parameters": nested}}]
    async with raw_connect(app.url) as conn:
        # json, not orjson: orjson refuses both the depth and the integer.
        await conn.send(json.dumps({"type": "start", "stream_id": "s1", "request": request}))
        big = mock_request({"text": "x"}, tools=[{"big": 10**30}])
        await conn.send(json.dumps({"type": "start", "stream_id": "s2", "request": big}))
        frames = await conn.finishes({"s1", "s2"})
    for stream in frames.values():
        codes = [f["code"] for f in stream if f["type"] == "error"]
        assert "internal" not in codes


async def test_a_reader_paused_on_its_backlog_still_notices_the_client_leaving(start_app):
    app = await start_app(**{"limits.max_bad_frames": 10**9})
    async with raw_connect(app.url, max_queue=1) as conn:
        (connection,) = app.gateway.connections

        async def flood() -> None:
            while True:
                await conn.ws.send("[]")

        task = asyncio.create_task(flood())
        async with asyncio.timeout(10):
            while connection.outbox.control_bytes < 128 * 1024:  # noqa: ASYNC110 - polling
                await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        conn.ws.transport.abort()
    async with asyncio.timeout(5):
        while app.gateway.connections:  # noqa: ASYNC110 - polling a plain set
            await asyncio.sleep(0.02)


async def test_a_client_sending_bad_frames_without_end_is_closed_at_the_limit(start_app):
    app = await start_app(**{"limits.max_bad_frames": 50})
    async with raw_connect(app.url) as other:
        await other.start("s1", mock_request({"text": "unharmed " * 20, "tokens_per_s": 200}))
        async with raw_connect(app.url) as conn:
            for _ in range(200):
                with contextlib.suppress(websockets.ConnectionClosed):
                    await conn.ws.send("[]")
            frames = []
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    frames.append(await conn.recv(timeout=5))
            assert conn.ws.close_code == 4500
        codes = [f["code"] for f in frames]
        assert codes == ["bad_frame"] * 49 + ["too_many_bad_frames"]
        finished = (await other.finishes({"s1"}))["s1"]
    assert stream_text(finished) == "unharmed " * 20
