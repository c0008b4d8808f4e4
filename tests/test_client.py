"""The Python client against a scripted wsgate.v1 server on loopback.

Each test scripts what the gateway says; every scripted frame goes through
`decode_server_frame` before it is sent, so the script can only speak real wsgate.v1 (the
protocol-violation tests send raw text on purpose, through `send_raw`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket

import msgspec
import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from wsgate.client import (
    ConnectError,
    ConnectionClosedError,
    Gateway,
    chat,
    connect,
)
from wsgate.core.frames import (
    Cancel,
    ChatRequest,
    DeltaRole,
    DeltaText,
    ErrorFrame,
    FinishFrame,
    FrameRejected,
    Message,
    Ready,
    Start,
    StartOptions,
    StreamStarted,
    Telemetry,
    decode_client_frame,
    decode_server_frame,
)

READY = {
    "type": "ready",
    "conn_id": "c1",
    "server_version": "test",
    "limits": {"max_streams": 4, "max_frame_bytes": 65536, "max_stream_id_length": 64},
    "protocol": "wsgate.v1",
}
REQUEST = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


def frames_of(sid, texts, *, reason="stop"):
    frames = [
        {
            "type": "stream.started",
            "stream_id": sid,
            "seq": 1,
            "message_id": f"m-{sid}",
            "model": "mock",
        },
        {"type": "delta.role", "stream_id": sid, "seq": 2, "role": "assistant"},
    ]
    for text in texts:
        frames.append(
            {"type": "delta.text", "stream_id": sid, "seq": len(frames) + 1, "text": text}
        )
    frames.append({"type": "finish", "stream_id": sid, "seq": len(frames) + 1, "reason": reason})
    return frames


def refusal(sid, code="too_many_streams"):
    return {
        "type": "error",
        "stream_id": sid,
        "code": code,
        "message": "refused",
        "retryable": True,
    }


class Peer:
    """The server's side of one connection, as a script sees it."""

    def __init__(self, ws):
        self.ws = ws
        self.received = []

    async def send(self, *frames):
        for frame in frames:
            text = json.dumps(frame)
            decode_server_frame(text)  # scripts only speak real wsgate.v1
            await self.ws.send(text)

    async def send_raw(self, text):
        await self.ws.send(text)

    async def recv(self):
        data = await self.ws.recv()
        assert isinstance(data, str), "client frames are text frames"
        frame = decode_client_frame(data, 1 << 20)
        assert not isinstance(frame, FrameRejected), frame
        self.received.append(frame)
        return frame

    async def recv_start(self, sid=None):
        frame = await self.recv()
        assert isinstance(frame, Start)
        assert sid is None or frame.stream_id == sid
        return frame

    async def hold(self):
        """Keep the connection open until the client closes it."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.recv()


class Server:
    def __init__(self, url):
        self.url = url
        self.peers = []


@contextlib.asynccontextmanager
async def scripted(script, *, greeting=READY, subprotocols=("wsgate.v1",)):
    failures = []

    async def handler(ws):
        peer = Peer(ws)
        server.peers.append(peer)
        try:
            if greeting is not None:
                await peer.send(greeting)
            await script(peer)
        except Exception as exc:  # surfaced by the assert below, not just logged
            failures.append(exc)
            raise

    async with serve(
        handler, "127.0.0.1", 0, subprotocols=list(subprotocols) if subprotocols else None
    ) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        server = Server(f"ws://127.0.0.1:{port}/v1/ws")
        yield server
    assert not failures, failures


def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/ws"


# --- connecting ----------------------------------------------------------------------


async def test_connect_waits_for_a_late_ready_and_exposes_it():
    async def script(peer):
        await asyncio.sleep(0.05)
        await peer.send(READY)
        await peer.hold()

    async with scripted(script, greeting=None) as server, connect(server.url) as gw:
        assert gw.ready == decode_server_frame(json.dumps(READY))
        assert isinstance(gw.ready, Ready)
        assert gw.ready.limits.max_streams == 4
        assert not gw.closed
        assert gw.close_code is None
    assert gw.closed
    assert gw.close_code == 1000


async def test_connect_fails_when_the_first_frame_is_not_ready():
    async def script(peer):
        await peer.send({"type": "goaway", "reason": "draining"})
        await peer.hold()

    async with scripted(script, greeting=None) as server:
        with pytest.raises(ConnectError, match="GoAway, not ready"):
            await Gateway.open(server.url)


async def test_connect_gives_up_when_no_ready_arrives_within_open_timeout():
    async with scripted(Peer.hold, greeting=None) as server:
        with pytest.raises(ConnectError, match=r": no ready frame within 0\.1 s"):
            await Gateway.open(server.url, open_timeout=0.1)


async def test_cancelling_connect_while_it_waits_for_ready_propagates():
    handshake_done = asyncio.Event()

    async def script(peer):
        handshake_done.set()
        await peer.hold()

    async with scripted(script, greeting=None) as server:
        task = asyncio.create_task(Gateway.open(server.url))
        async with asyncio.timeout(5):
            await handshake_done.wait()
        await asyncio.sleep(0.01)  # let the client reach its wait for ready
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_connect_fails_when_the_server_does_not_speak_wsgate_v1():
    async with scripted(Peer.hold, subprotocols=None) as server:
        with pytest.raises(ConnectError, match="subprotocol"):
            await Gateway.open(server.url)


async def test_connect_to_a_closed_port_raises_connect_error():
    with pytest.raises(ConnectError, match="cannot open") as info:
        await Gateway.open(closed_port_url())
    assert isinstance(info.value.__cause__, OSError)


# --- streams -------------------------------------------------------------------------


async def test_two_concurrent_streams_each_get_only_their_own_frames_in_order():
    a_frames = frames_of("a", ["Hel", "lo"])
    b_frames = frames_of("b", ["Wor", "l", "d"], reason="length")
    telemetry = {"type": "telemetry", "stream_id": "a", "tokens": 1, "tokens_per_s": 9.5}

    async def script(peer):
        await peer.recv_start("a")
        await peer.recv_start("b")
        interleaved = [f for pair in zip(a_frames, b_frames, strict=False) for f in pair]
        await peer.send(*interleaved[:3], telemetry, *interleaved[3:], *b_frames[len(a_frames) :])
        await peer.hold()

    async with scripted(script) as server, connect(server.url) as gw:
        a = gw.stream(REQUEST, stream_id="a")
        b = gw.stream(ChatRequest(model="mock", messages=[Message("user", "hi")]), stream_id="b")
        await a.start()
        await b.start()
        await asyncio.gather(a.collect(), b.collect())

    assert [type(e) for e in a.events] == [
        StreamStarted, DeltaRole, Telemetry, DeltaText, DeltaText, FinishFrame,
    ]  # fmt: skip
    assert [e.seq for e in a.events if not isinstance(e, Telemetry)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in b.events] == [1, 2, 3, 4, 5, 6]
    assert {e.stream_id for e in a.events} == {"a"}
    assert {e.stream_id for e in b.events} == {"b"}
    assert (a.text, a.finish_reason, a.message_id, a.model) == ("Hello", "stop", "m-a", "mock")
    assert (b.text, b.finish_reason, b.message_id) == ("World", "length", "m-b")
    assert a.done
    assert b.done
    expected = Start(stream_id="a", request=msgspec.convert(REQUEST, ChatRequest))
    assert server.peers[0].received[0] == expected


async def test_iteration_sends_the_start_frame_with_the_given_options():
    async def script(peer):
        start = await peer.recv_start()
        await peer.send(*frames_of(start.stream_id, ["x"]))
        await peer.hold()

    async with scripted(script) as server, connect(server.url) as gw:
        events = [e async for e in gw.stream(REQUEST, {"telemetry": True})]
    assert isinstance(events[-1], FinishFrame)
    assert server.peers[0].received == [
        Start(
            stream_id="s1",
            request=msgspec.convert(REQUEST, ChatRequest),
            options=StartOptions(telemetry=True),
        )
    ]


async def test_generated_stream_ids_are_unique_and_skip_ids_in_use():
    async with scripted(Peer.hold) as server, connect(server.url) as gw:
        first = gw.stream(REQUEST)
        await gw.stream(REQUEST, stream_id="s2").start()
        third = gw.stream(REQUEST)
        with pytest.raises(ValueError, match="already open"):
            gw.stream(REQUEST, stream_id="s2")
    assert (first.stream_id, third.stream_id) == ("s1", "s3")


async def test_cancel_ends_the_stream_with_finish_cancelled():
    async def script(peer):
        await peer.recv_start("s1")
        await peer.send(*frames_of("s1", ["Hel"])[:3])
        assert await peer.recv() == Cancel(stream_id="s1")
        await peer.send({"type": "finish", "stream_id": "s1", "seq": 4, "reason": "cancelled"})
        await peer.hold()

    async with scripted(script) as server, connect(server.url) as gw:
        stream = gw.stream(REQUEST)
        async for event in stream:
            if isinstance(event, DeltaText):
                await stream.cancel()
                await stream.cancel()  # a second cancel sends nothing more
        await stream.cancel()  # nor does one after the finish
    assert stream.finish_reason == "cancelled"
    assert stream.text == "Hel"
    assert [type(f) for f in server.peers[0].received] == [Start, Cancel]


async def test_cancel_before_start_sends_nothing_and_ends_the_stream():
    async with scripted(Peer.hold) as server, connect(server.url) as gw:
        stream = gw.stream(REQUEST)
        await stream.cancel()
        assert (await stream.collect()).events == []
        assert stream.done
    assert server.peers[0].received == []


async def test_a_refused_start_ends_iteration_after_the_error_frame():
    async def script(peer):
        await peer.recv_start("x")
        await peer.send(refusal("x"))
        await peer.recv_start("x")
        await peer.send(*frames_of("x", ["ok"]))
        await peer.hold()

    async with scripted(script) as server, connect(server.url) as gw:
        refused = gw.stream(REQUEST, stream_id="x")
        events = [e async for e in refused]
        retried = await gw.stream(REQUEST, stream_id="x").collect()  # the id is free again
    assert len(events) == 1
    assert isinstance(events[0], ErrorFrame)
    assert refused.error == events[0]
    assert refused.error.code == "too_many_streams"
    assert refused.finish_reason is None
    assert refused.done
    assert retried.text == "ok"
    assert len(server.peers[0].received) == 2


async def test_a_refusal_after_the_stream_started_does_not_end_it():
    frames = frames_of("s1", ["a", "b"])

    async def script(peer):
        await peer.recv_start()
        await peer.send(frames[0], refusal("s1", "unknown_stream"), *frames[1:])
        await peer.hold()

    async with scripted(script) as server, connect(server.url) as gw:
        stream = await gw.stream(REQUEST).collect()
    assert [type(e) for e in stream.events][:3] == [StreamStarted, ErrorFrame, DeltaRole]
    assert (stream.text, stream.finish_reason) == ("ab", "stop")


async def test_a_stream_error_is_yielded_and_followed_by_finish_error():
    async def script(peer):
        await peer.recv_start()
        await peer.send(
            *frames_of("s1", ["par"])[:3],
            {"type": "error", "stream_id": "s1", "seq": 4, "code": "upstream_error",
             "message": "the provider failed", "retryable": True},
            {"type": "finish", "stream_id": "s1", "seq": 5, "reason": "error"},
        )  # fmt: skip
        await peer.hold()

    async with scripted(script) as server, connect(server.url) as gw:
        stream = await gw.stream(REQUEST).collect()
    assert stream.error is not None
    assert (stream.error.code, stream.error.seq) == ("upstream_error", 4)
    assert (stream.text, stream.finish_reason) == ("par", "error")


async def test_connection_errors_goaway_and_late_frames_of_ended_streams_are_recorded():
    conn_error = {"type": "error", "code": "bad_frame", "message": "no", "retryable": False}
    late_telemetry = {"type": "telemetry", "stream_id": "s1", "tokens": 3, "tokens_per_s": 1.0}

    async def script(peer):
        await peer.recv_start()
        await peer.send(conn_error, *frames_of("s1", ["x"]), late_telemetry)
        await peer.send(refusal("s1", "unknown_stream"), {"type": "goaway", "reason": "drain"})
        await peer.recv_start("s2")
        await peer.send(*frames_of("s2", []))
        await peer.hold()

    async with scripted(script) as server, connect(server.url) as gw:
        stream = await gw.stream(REQUEST).collect()
        # Frames are routed in order: once s2 ends, everything sent before it was handled.
        await gw.stream(REQUEST).collect()
        assert not gw.closed
    assert stream.finish_reason == "stop"
    assert [e.code for e in gw.connection_errors] == ["bad_frame", "unknown_stream"]
    assert gw.goaway.reason == "drain"


# --- the connection ending -----------------------------------------------------------


async def test_a_close_mid_stream_raises_on_every_open_stream_after_what_arrived():
    async def script(peer):
        await peer.recv_start("a")
        await peer.recv_start("b")
        await peer.send(*frames_of("a", ["x"])[:3], frames_of("b", [])[0])
        await peer.ws.close(1011, "boom")

    async with scripted(script) as server, connect(server.url) as gw:
        streams = [gw.stream(REQUEST, stream_id="a"), gw.stream(REQUEST, stream_id="b")]
        for stream in streams:
            await stream.start()
        for stream in streams:
            with pytest.raises(ConnectionClosedError) as info:
                await stream.collect()
            assert (info.value.code, info.value.reason) == (1011, "boom")
            with pytest.raises(ConnectionClosedError):  # and on every later read
                await anext(stream)
        with pytest.raises(ConnectionClosedError):
            await gw.stream(REQUEST).start()
        assert (gw.closed, gw.close_code, gw.close_reason) == (True, 1011, "boom")
    assert [type(e) for e in streams[0].events] == [StreamStarted, DeltaRole, DeltaText]
    assert streams[0].text == "x"
    assert [type(e) for e in streams[1].events] == [StreamStarted]


async def test_a_lost_connection_raises_with_code_1006():
    async def script(peer):
        await peer.recv_start()
        await peer.send(frames_of("s1", [])[0])
        peer.ws.transport.abort()

    async with scripted(script) as server, connect(server.url) as gw:
        stream = gw.stream(REQUEST)
        with pytest.raises(ConnectionClosedError) as info:
            await stream.collect()
    assert info.value.code == 1006
    assert stream.message_id == "m-s1"


async def test_closing_the_gateway_ends_open_streams_and_stops_the_reader():
    async def script(peer):
        await peer.recv_start()
        await peer.send(frames_of("s1", [])[0])
        await peer.hold()

    async with scripted(script) as server:
        async with connect(server.url) as gw:
            stream = gw.stream(REQUEST)
            assert isinstance(await anext(stream), StreamStarted)
        with pytest.raises(ConnectionClosedError) as info:
            await anext(stream)
    assert info.value.code == 1000
    assert gw._reader.done()


async def test_cancelling_a_task_inside_connect_propagates_and_stops_the_reader():
    started = asyncio.Event()
    gateways = []

    async def script(peer):
        await peer.recv_start()
        started.set()
        await peer.hold()

    async def client(url):
        async with connect(url) as gw:
            gateways.append(gw)
            await gw.stream(REQUEST).collect()

    async with scripted(script) as server:
        task = asyncio.create_task(client(server.url))
        async with asyncio.timeout(5):
            await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gateways[0].closed
    assert gateways[0]._reader.done()


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        '{"type": "delta.text", "stream_id": "s1"}',
        '{"type": "delta.sparkle", "stream_id": "s1", "seq": 2, "text": "hm"}',
        json.dumps(frames_of("zz", [])[0]),
        json.dumps(READY),
    ],
    ids=["not-json", "missing-fields", "unknown-type", "stream-not-open", "second-ready"],
)
async def test_a_frame_that_breaks_the_protocol_closes_the_connection_with_1002(raw):
    async def script(peer):
        await peer.recv_start()
        await peer.send(frames_of("s1", [])[0])
        await peer.send_raw(raw)  # deliberately not wsgate.v1
        await peer.hold()
        assert peer.ws.close_code == 1002

    async with scripted(script) as server, connect(server.url) as gw:
        stream = gw.stream(REQUEST)
        with pytest.raises(ConnectionClosedError, match="protocol violation") as info:
            await stream.collect()
    assert info.value.code == 1002
    assert stream.message_id == "m-s1"


async def test_a_reader_failure_reaches_open_streams_and_is_re_raised_by_close(monkeypatch):
    async def script(peer):
        await peer.recv_start()
        await peer.send(frames_of("s1", [])[0])
        await peer.hold()

    def broken_dispatch(frame):
        raise RuntimeError("bug")

    async with scripted(script) as server:
        gw = await Gateway.open(server.url)
        monkeypatch.setattr(gw._mux, "dispatch", broken_dispatch)
        stream = gw.stream(REQUEST)
        with pytest.raises(ConnectionClosedError) as info:
            await stream.collect()
        assert info.value.code == 1011
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(RuntimeError, match="bug"):
            await gw.close()


async def test_cancelling_a_read_loses_no_frame():
    release = asyncio.Event()
    frames = frames_of("s1", ["a", "b"])

    async def script(peer):
        await peer.recv_start()
        await peer.send(frames[0])
        await release.wait()
        await peer.send(*frames[1:])
        await peer.hold()

    async with scripted(script) as server, connect(server.url) as gw:
        stream = gw.stream(REQUEST)
        await anext(stream)
        waiting = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        await stream.collect()
    assert [e.seq for e in stream.events] == [1, 2, 3, 4, 5]


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "options", "stream_id"),
    [
        ({"model": "mock"}, None, None),
        ({"model": "", "messages": [{"role": "user", "content": "hi"}]}, None, None),
        ({"model": "mock", "messages": []}, None, None),
        ({**REQUEST, "temperature": 5}, None, None),
        ({**REQUEST, "stream": True}, None, None),
        ({"model": "mock", "messages": [{"role": "robot", "content": "hi"}]}, None, None),
        ("hello", None, None),
        (ChatRequest(model="", messages=[Message("user", "hi")]), None, None),
        (REQUEST, {"telemetry": "yes"}, None),
        (REQUEST, {"buffering": "shouting"}, None),
        (REQUEST, None, "has space"),
        (REQUEST, None, "x" * 65),
        ({"model": "mock", "messages": [{"role": "user", "content": "x" * 70_000}]}, None, None),
    ],
)
async def test_an_invalid_start_raises_value_error_before_anything_is_sent(
    request_, options, stream_id
):
    async with scripted(Peer.hold) as server, connect(server.url) as gw:
        with pytest.raises(ValueError, match="start frame"):
            gw.stream(request_, options, stream_id=stream_id)
    assert server.peers[0].received == []


# --- chat ----------------------------------------------------------------------------


class Terminal(io.StringIO):
    """An output that records flushes and can announce or interrupt the first write."""

    def __init__(self, *, interrupt=False):
        super().__init__()
        self.first_write = asyncio.Event()
        self.unflushed = 0
        self.interrupt = interrupt

    def write(self, text):
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        self.first_write.set()
        self.unflushed += 1
        return super().write(text)

    def flush(self):
        self.unflushed = 0
        super().flush()


async def test_chat_prints_each_token_as_it_arrives_and_returns_zero(capsys):
    out = Terminal()
    frames = frames_of("s1", ["Hel", "lo"])

    async def script(peer):
        start = await peer.recv_start()
        assert start.request.model == "m1"
        assert start.request.messages == [Message("system", "be brief"), Message("user", "hi")]
        await peer.send(*frames[:3])
        async with asyncio.timeout(5):  # the rest only once the first token is on screen
            await out.first_write.wait()
        assert out.getvalue() == "Hel"
        assert out.unflushed == 0
        await peer.send(*frames[3:])
        await peer.hold()

    async with scripted(script) as server:
        code = await chat(server.url, "hi", model="m1", out=out, system="be brief")
    assert code == 0
    assert out.getvalue() == "Hello\n"
    assert out.unflushed == 0
    assert capsys.readouterr().err == ""


async def test_chat_reports_a_stream_error_on_stderr_and_returns_one(capsys):
    async def script(peer):
        await peer.recv_start()
        await peer.send(
            *frames_of("s1", ["x"])[:3],
            {"type": "error", "stream_id": "s1", "seq": 4, "code": "upstream_error",
             "message": "the provider failed", "retryable": True},
            {"type": "finish", "stream_id": "s1", "seq": 5, "reason": "error"},
        )  # fmt: skip
        await peer.hold()

    out = io.StringIO()
    async with scripted(script) as server:
        assert await chat(server.url, "hi", out=out) == 1
    assert out.getvalue() == "x\n"
    assert capsys.readouterr().err == "wsgate: error upstream_error: the provider failed\n"


async def test_chat_reports_a_refused_start_and_returns_one(capsys):
    async def script(peer):
        await peer.recv_start()
        await peer.send({**refusal("s1", "unknown_model"), "message": "no route for nope"})
        await peer.hold()

    out = io.StringIO()
    async with scripted(script) as server:
        assert await chat(server.url, "hi", model="nope", out=out) == 1
    assert out.getvalue() == ""
    assert capsys.readouterr().err == "wsgate: error unknown_model: no route for nope\n"


async def test_chat_returns_one_when_the_gateway_cannot_be_reached(capsys):
    assert await chat(closed_port_url(), "hi", out=io.StringIO()) == 1
    assert capsys.readouterr().err.startswith("wsgate: error connect_failed: cannot open")


async def test_chat_sends_cancel_and_returns_130_on_keyboard_interrupt():
    async def script(peer):
        await peer.recv_start()
        await peer.send(*frames_of("s1", ["x"])[:3])
        assert await peer.recv() == Cancel(stream_id="s1")
        await peer.hold()  # chat exits at once: Ctrl-C does not wait for the finish

    async with scripted(script) as server:
        out = Terminal(interrupt=True)
        assert await chat(server.url, "hi", out=out) == 130
    assert out.getvalue() == "\n"
    assert [type(f) for f in server.peers[0].received] == [Start, Cancel]


async def test_chat_sends_cancel_and_re_raises_when_its_task_is_cancelled():
    out = Terminal()

    async def script(peer):
        await peer.recv_start()
        await peer.send(*frames_of("s1", ["x"])[:3])
        await peer.hold()

    async with scripted(script) as server:
        task = asyncio.create_task(chat(server.url, "hi", out=out))
        async with asyncio.timeout(5):
            await out.first_write.wait()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert out.getvalue() == "x\n"
    assert [type(f) for f in server.peers[0].received] == [Start, Cancel]
