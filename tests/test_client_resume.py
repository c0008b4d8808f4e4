"""The Python client's resume, against a fake wsgate.v1 gateway on loopback.

The fake speaks wsgate.v1 by hand, one script per connection in the order the client opens
them: the first answers a `start` and then drops the TCP connection (`transport.abort()`, so
the client sees 1006), the next checks the client's `resume` and replays. Every scripted frame
goes through `decode_server_frame` first, so a script can only speak real wsgate.v1.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random

import pytest
from test_client import Peer as ScriptPeer
from websockets.asyncio.server import serve

from wsgate.app import App
from wsgate.client import (
    Backoff,
    ConnectError,
    ConnectionClosedError,
    chat,
    connect,
)
from wsgate.config import load_settings
from wsgate.core.frames import (
    Cancel,
    DeltaText,
    ErrorFrame,
    FinishFrame,
    Resume,
    Start,
    StreamResumed,
    decode_server_frame,
)

REQUEST = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
FAST = Backoff(base=0.01, cap=0.05, timeout=5)


def ready(conn_id):
    return {
        "type": "ready",
        "protocol": "wsgate.v1",
        "conn_id": conn_id,
        "server_version": "fake",
        "limits": {"max_streams": 8, "max_frame_bytes": 65536, "max_stream_id_length": 64},
    }


def started(sid, *, epoch="e1", message_id=None):
    frame = {
        "type": "stream.started",
        "stream_id": sid,
        "seq": 1,
        "message_id": message_id or f"m-{sid}",
        "model": "mock",
    }
    if epoch is not None:
        frame["epoch"] = epoch
    return frame


def text(sid, seq, value, first_seq=None):
    frame = {"type": "delta.text", "stream_id": sid, "seq": seq, "text": value}
    if first_seq is not None:
        frame["first_seq"] = first_seq
    return frame


def finish(sid, seq, reason="stop"):
    return {"type": "finish", "stream_id": sid, "seq": seq, "reason": reason}


def resumed(sid, last_seq, top_seq, *, epoch="e1", state="running"):
    return {
        "type": "stream.resumed",
        "stream_id": sid,
        "message_id": f"m-{sid}",
        "epoch": epoch,
        "last_seq": last_seq,
        "top_seq": top_seq,
        "state": state,
    }


def refusal(sid, code, **extra):
    retryable = code == "store_unavailable"
    return {
        "type": "error",
        "stream_id": sid,
        "code": code,
        "message": f"refused: {code}",
        "retryable": retryable,
        **extra,
    }


class Peer(ScriptPeer):
    """The fake gateway's side of one connection, as a script sees it."""

    async def recv(self, kind=None):
        frame = await super().recv()
        assert kind is None or isinstance(frame, kind), frame
        return frame

    def drop(self):
        """Lose the TCP connection: no close frame, the client sees 1006."""
        self.drop_time = asyncio.get_running_loop().time()
        self.ws.transport.abort()


class FakeGateway:
    """Runs `scripts[n]` on the n-th connection; refuses `refuse` reconnect handshakes."""

    def __init__(self, scripts, refuse):
        self.scripts = scripts
        self.refuse = refuse
        self.peers = []
        self.handshakes = 0
        self.handshake_times = []
        self.gate = asyncio.Event()  # reconnect handshakes wait for it
        self.gate.set()
        self.failures = []
        self.url = ""

    async def process_request(self, connection, _request):
        self.handshakes += 1
        self.handshake_times.append(asyncio.get_running_loop().time())
        if self.handshakes == 1:
            return None
        await self.gate.wait()
        if self.refuse > 0:
            self.refuse -= 1
            return connection.respond(503, "restarting\n")
        return None

    async def handler(self, ws):
        peer = Peer(ws)
        index = len(self.peers)
        self.peers.append(peer)
        script = self.scripts[index] if index < len(self.scripts) else Peer.hold
        try:
            await peer.send(ready(f"c{index + 1}"))
            await script(peer)
        except Exception as exc:  # surfaced by the assert in fake_gateway, not just logged
            self.failures.append(exc)
            raise


@contextlib.asynccontextmanager
async def fake_gateway(*scripts, refuse=0):
    fake = FakeGateway(list(scripts), refuse)
    async with serve(
        fake.handler,
        "127.0.0.1",
        0,
        subprotocols=["wsgate.v1"],
        process_request=fake.process_request,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        fake.url = f"ws://127.0.0.1:{port}/v1/ws"
        yield fake
    assert not fake.failures, fake.failures


def covered_seqs(frames):
    """Every seq the frames cover, a coalesced delta.text standing for first_seq..seq."""
    seqs = []
    for frame in frames:
        seq = getattr(frame, "seq", None)
        if seq is not None:
            first = getattr(frame, "first_seq", None) or seq
            seqs.extend(range(first, seq + 1))
    return seqs


async def until(predicate):
    """Poll client or fake state that no event announces."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - the state polled has no event to wait on
            await asyncio.sleep(0.001)


# --- resuming ------------------------------------------------------------------------


async def test_a_dropped_stream_resumes_and_the_caller_sees_every_seq_once_in_order():
    got_four = asyncio.Event()

    async def first(peer):
        await peer.recv(Start)
        await peer.send(
            started("s1"),
            {"type": "delta.role", "stream_id": "s1", "seq": 2, "role": "assistant"},
            text("s1", 3, "Hel"),
            text("s1", 4, "lo"),
        )
        await got_four.wait()  # abort() discards unsent bytes: drop only what was read
        peer.drop()

    async def second(peer):
        resume = await peer.recv(Resume)
        assert resume == Resume(message_id="m-s1", last_seq=4, stream_id="s1", epoch="e1")
        await peer.send(
            resumed("s1", 4, 6),
            text("s1", 4, "lo"),  # a duplicate: the client has seq 4
            text("s1", 6, " world", first_seq=5),  # coalesced: covers 5 and 6
            text("s1", 7, "!"),
            {"type": "usage", "stream_id": "s1", "seq": 8, "input_tokens": 1,
             "output_tokens": 5},
            finish("s1", 9),
        )  # fmt: skip
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = gw.stream(REQUEST)
        frames = []
        async for frame in stream:
            frames.append(frame)
            if getattr(frame, "seq", None) == 4:
                got_four.set()
        assert gw.ready.conn_id == "c2"
        assert (gw.reconnects, gw.reconnecting, gw.closed) == (1, False, False)
    assert covered_seqs(frames) == list(range(1, 10))
    assert stream.text == "Hello world!"
    assert stream.finish_reason == "stop"
    assert stream.done
    assert not any(isinstance(f, StreamResumed) for f in frames)
    assert stream.resumes == 1
    assert stream.resumed.top_seq == 6
    assert (stream.message_id, stream.epoch) == ("m-s1", "e1")


async def test_a_resume_sends_the_highest_seq_received_even_when_not_yet_read():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"), text("s1", 2, "a"), text("s1", 4, "bc", first_seq=3))
        await peer.send({"type": "heartbeat"})
        await asyncio.sleep(0.05)  # the client's reader has routed them by now
        peer.drop()

    async def second(peer):
        resume = await peer.recv(Resume)
        assert resume.last_seq == 4  # the highest seq, of a coalesced frame
        await peer.send(resumed("s1", 4, 4), finish("s1", 5))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = gw.stream(REQUEST)
        await stream.start()
        await until(lambda: fake.handshakes == 2)
        await stream.collect()
    assert (stream.text, stream.finish_reason) == ("abc", "stop")


async def test_a_stream_resumed_twice_keeps_one_sequence():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"), text("s1", 2, "a"))
        await asyncio.sleep(0.05)
        peer.drop()

    async def second(peer):
        assert (await peer.recv(Resume)).last_seq == 2
        await peer.send(resumed("s1", 2, 3), text("s1", 3, "b"))
        await asyncio.sleep(0.05)
        peer.drop()  # mid-resume: resumed again from seq 3

    async def third(peer):
        assert (await peer.recv(Resume)).last_seq == 3
        await peer.send(resumed("s1", 3, 3), text("s1", 2, "a"), text("s1", 3, "b"))
        await peer.send(text("s1", 4, "c"), finish("s1", 5))
        await peer.hold()

    async with fake_gateway(first, second, third) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = await gw.stream(REQUEST).collect()
        assert gw.reconnects == 2
    assert covered_seqs(stream.events) == [1, 2, 3, 4, 5]
    assert (stream.text, stream.resumes) == ("abc", 2)


# --- backoff -------------------------------------------------------------------------


def test_backoff_delays_are_full_jitter_below_a_capped_exponential():
    backoff = Backoff(base=0.2, cap=5.0, jitter=random.Random(7).random)
    for attempt in range(40):
        assert 0 <= backoff.delay(attempt) <= min(5.0, 0.2 * 2**attempt)
    top = Backoff(base=0.2, cap=5.0, jitter=lambda: 1.0)
    assert [top.delay(n) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert top.delay(10_000) == 5.0


async def test_reconnect_attempts_wait_a_jittered_exponential_backoff():
    draws = []

    def jitter():
        draws.append(0.5)
        return 0.5

    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"))
        await asyncio.sleep(0.05)
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        await peer.send(resumed("s1", 1, 1), finish("s1", 2))
        await peer.hold()

    backoff = Backoff(base=0.04, cap=0.1, timeout=5, jitter=jitter)
    async with (
        fake_gateway(first, second, refuse=3) as fake,
        connect(fake.url, backoff=backoff) as gw,
    ):
        stream = await gw.stream(REQUEST).collect()
    assert stream.finish_reason == "stop"
    assert len(draws) == 4  # one per attempt: three refused handshakes, then the resume
    # Each attempt waited half (the draw) of min(cap, base * 2**n): 0.02, 0.04, 0.05, 0.05.
    gaps = [b - a for a, b in zip(fake.handshake_times[1:], fake.handshake_times[2:], strict=False)]
    for gap, expected in zip(gaps, [0.04, 0.05, 0.05], strict=True):
        assert gap >= expected - 0.005
    assert fake.handshake_times[1] - fake.peers[0].drop_time >= 0.02 - 0.005


async def test_after_goaway_and_1001_the_reconnect_waits_reconnect_after_ms():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"), text("s1", 2, "a"))
        await peer.send({"type": "goaway", "reason": "restart", "reconnect_after_ms": 150})
        await asyncio.sleep(0.05)
        peer.closed_at = asyncio.get_running_loop().time()
        await peer.ws.close(1001)

    async def second(peer):
        assert (await peer.recv(Resume)).last_seq == 2
        await peer.send(resumed("s1", 2, 2), text("s1", 3, "b"), finish("s1", 4))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = await gw.stream(REQUEST).collect()
        assert gw.goaway is None  # it was the old connection's
    assert stream.text == "ab"
    assert fake.handshake_times[1] - fake.peers[0].closed_at >= 0.15 - 0.005


async def test_giving_up_after_the_timeout_fails_the_stream_with_the_reason():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"))
        await asyncio.sleep(0.05)
        peer.drop()

    backoff = Backoff(base=0.01, cap=0.02, timeout=0.2)
    async with (
        fake_gateway(first, refuse=1000) as fake,
        connect(fake.url, backoff=backoff) as gw,
    ):
        stream = gw.stream(REQUEST)
        with pytest.raises(ConnectionClosedError) as info:
            await stream.collect()
        assert (gw.closed, gw.close_code) == (True, 1006)
    assert info.value.code == 1006
    assert isinstance(info.value.__cause__, ConnectError)
    assert "no reconnect within 0.2 s" in str(info.value.__cause__)
    assert fake.handshakes > 2


# --- what cannot be resumed ----------------------------------------------------------


async def test_without_resume_a_drop_fails_the_stream_as_before():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"), text("s1", 2, "a"))
        await asyncio.sleep(0.05)
        peer.drop()

    async with fake_gateway(first) as fake, connect(fake.url, resume=False) as gw:
        stream = gw.stream(REQUEST)
        with pytest.raises(ConnectionClosedError) as info:
            await stream.collect()
        assert (gw.resume, gw.closed, gw.reconnects) == (False, True, 0)
        with pytest.raises(ConnectionClosedError):
            await gw.stream(REQUEST).start()
    assert info.value.code == 1006
    assert stream.text == "a"
    assert fake.handshakes == 1


async def test_a_refused_resume_ends_the_stream_with_the_refusal():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"), text("s1", 2, "a"))
        await asyncio.sleep(0.05)
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        await peer.send(refusal("s1", "resume_expired"))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = await gw.stream(REQUEST).collect()
        assert not gw.closed  # the connection serves other streams
    assert stream.done
    assert (stream.error.code, stream.error.seq) == ("resume_expired", None)
    assert isinstance(stream.events[-1], ErrorFrame)
    assert (stream.text, stream.finish_reason, stream.resumes) == ("a", None, 0)


async def test_an_owner_lost_resume_yields_the_logged_frames_then_the_error():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"), text("s1", 2, "a"))
        await asyncio.sleep(0.05)
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        await peer.send(resumed("s1", 2, 3), text("s1", 3, "b"), refusal("s1", "resume_owner_lost"))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = await gw.stream(REQUEST).collect()
    assert (stream.text, stream.error.code) == ("ab", "resume_owner_lost")
    assert covered_seqs(stream.events) == [1, 2, 3]


async def test_a_store_unavailable_refusal_is_retried_with_backoff():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"))
        await asyncio.sleep(0.05)
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        await peer.send(refusal("s1", "store_unavailable", retry_after_ms=30))
        await peer.recv(Resume)
        await peer.send(resumed("s1", 1, 2), text("s1", 2, "x"), finish("s1", 3))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = await gw.stream(REQUEST).collect()
    assert (stream.text, stream.finish_reason, stream.error) == ("x", "stop", None)
    first_resume, second_resume = fake.peers[1].received
    assert first_resume == second_resume


async def test_at_a_drop_a_stream_without_epoch_fails_while_a_resumable_one_goes_on():
    async def first(peer):
        await peer.recv(Start)
        await peer.recv(Start)
        await peer.send(started("a"), started("b", epoch=None))
        await asyncio.sleep(0.05)
        peer.drop()

    async def second(peer):
        resume = await peer.recv(Resume)
        assert resume.stream_id == "a"
        await peer.send(resumed("a", 1, 1), finish("a", 2))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        a, b = gw.stream(REQUEST, stream_id="a"), gw.stream(REQUEST, stream_id="b")
        await a.start()
        await b.start()
        with pytest.raises(ConnectionClosedError) as info:
            await b.collect()
        await a.collect()
    assert info.value.code == 1006
    assert (b.message_id, b.epoch) == ("m-b", None)
    assert a.finish_reason == "stop"
    assert [type(f) for f in fake.peers[1].received] == [Resume]


async def test_a_drop_that_leaves_no_stream_to_resume_closes_the_gateway():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1", epoch=None))
        await asyncio.sleep(0.05)
        peer.drop()

    async with fake_gateway(first) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = gw.stream(REQUEST)
        with pytest.raises(ConnectionClosedError):
            await stream.collect()
        assert (gw.closed, gw.close_code) == (True, 1006)
    assert fake.handshakes == 1


async def test_an_unkeyed_start_without_stream_started_fails_at_the_drop():
    async def first(peer):
        await peer.recv(Start)
        peer.drop()

    async with fake_gateway(first) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = gw.stream(REQUEST)
        with pytest.raises(ConnectionClosedError):
            await stream.collect()
    assert stream.message_id is None
    assert fake.handshakes == 1


async def test_a_keyed_start_without_stream_started_is_sent_again_unchanged():
    async def first(peer):
        await peer.recv(Start)
        peer.drop()

    async def second(peer):
        again = await peer.recv(Start)
        assert again == fake.peers[0].received[0]
        await peer.send(started("s1"), text("s1", 2, "hi"), finish("s1", 3))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = gw.stream(REQUEST, {"idempotency_key": "k-1"})
        await stream.collect()
    assert fake.peers[0].received[0].options.idempotency_key == "k-1"
    assert (stream.text, stream.finish_reason) == ("hi", "stop")
    assert covered_seqs(stream.events) == [1, 2, 3]


async def test_a_replayed_text_overlapping_seen_seqs_breaks_the_protocol():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"), text("s1", 2, "a"))
        await asyncio.sleep(0.05)
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        await peer.send(resumed("s1", 2, 3), text("s1", 3, "ab", first_seq=2))
        await peer.hold()
        assert peer.ws.close_code == 1002

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = gw.stream(REQUEST)
        with pytest.raises(ConnectionClosedError, match="overlaps") as info:
            await stream.collect()
    assert info.value.code == 1002
    assert stream.text == "a"


# --- sends while reconnecting --------------------------------------------------------


async def test_a_cancel_while_reconnecting_waits_and_follows_the_resume():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"))
        await asyncio.sleep(0.05)
        fake.gate.clear()  # hold the reconnect until the cancel waits for it
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        assert await peer.recv() == Cancel(stream_id="s1")
        await peer.send(resumed("s1", 1, 1), finish("s1", 2, "cancelled"))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = gw.stream(REQUEST)
        await anext(stream)
        await until(lambda: gw.reconnecting)
        cancelling = asyncio.create_task(stream.cancel())
        await asyncio.sleep(0.02)
        assert not cancelling.done()
        fake.gate.set()
        await cancelling
        await stream.collect()
    assert stream.finish_reason == "cancelled"


async def test_a_stream_started_while_reconnecting_is_sent_on_the_new_connection():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("a"))
        await asyncio.sleep(0.05)
        fake.gate.clear()
        peer.drop()

    async def second(peer):
        assert isinstance(await peer.recv(), Resume)
        assert (await peer.recv(Start)).stream_id == "b"
        await peer.send(resumed("a", 1, 1), finish("a", 2), started("b"), finish("b", 2))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        a = gw.stream(REQUEST, stream_id="a")
        await anext(a)
        await until(lambda: fake.handshakes == 2)  # the reconnect waits at the gate
        b = gw.stream(REQUEST, stream_id="b")
        async with asyncio.timeout(1):
            await b.start()  # returns at once: the reconnect writes it
        assert gw.reconnecting
        fake.gate.set()
        await a.collect()
        await b.collect()
    assert (a.finish_reason, b.finish_reason) == ("stop", "stop")
    assert len(fake.peers[0].received) == 1


async def test_cancelling_a_cancel_that_waits_for_the_reconnect_propagates():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"))
        await asyncio.sleep(0.05)
        fake.gate.clear()
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        await peer.send(resumed("s1", 1, 1), finish("s1", 2))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = gw.stream(REQUEST)
        await anext(stream)
        await until(lambda: gw.reconnecting)
        cancelling = asyncio.create_task(stream.cancel())
        await asyncio.sleep(0.01)
        cancelling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelling
        fake.gate.set()
        await stream.collect()  # the stream is unharmed: resumed and finished
    assert stream.finish_reason == "stop"
    assert [type(f) for f in fake.peers[1].received] == [Resume]


async def test_closing_the_gateway_while_it_reconnects_ends_the_streams():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"))
        await asyncio.sleep(0.05)
        peer.drop()

    async with fake_gateway(first, refuse=1000) as fake:
        async with connect(fake.url, backoff=Backoff(base=0.05, timeout=30)) as gw:
            stream = gw.stream(REQUEST)
            await anext(stream)
            await until(lambda: gw.reconnecting and fake.handshakes >= 2)
            waiting = asyncio.create_task(anext(stream))
        with pytest.raises(ConnectionClosedError):
            await waiting
        assert gw.closed
        assert gw._reader.done()


async def test_closing_the_gateway_while_a_resume_retry_waits_cancels_the_retry():
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"))
        await asyncio.sleep(0.05)
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        await peer.send(refusal("s1", "store_unavailable", retry_after_ms=2000))
        await peer.hold()

    async with fake_gateway(first, second) as fake:
        async with connect(fake.url, backoff=Backoff(base=0.01, timeout=30)) as gw:
            stream = gw.stream(REQUEST)
            await anext(stream)
            await until(lambda: len(gw._mux._retries) == 1)
            (retry,) = gw._mux._retries
        await asyncio.sleep(0)
        assert retry.cancelled()
        with pytest.raises(ConnectionClosedError):
            await anext(stream)
    assert [type(f) for f in fake.peers[1].received] == [Resume]


async def test_a_keyed_start_attached_before_stream_started_accepts_stream_resumed():
    async def first(peer):
        await peer.recv(Start)
        peer.drop()

    async def second(peer):
        await peer.recv(Start)
        await peer.send(resumed("s1", 0, 2), started("s1"), text("s1", 2, "hi"), finish("s1", 3))
        await peer.hold()

    async with fake_gateway(first, second) as fake, connect(fake.url, backoff=FAST) as gw:
        stream = await gw.stream(REQUEST, {"idempotency_key": "k-9"}).collect()
    assert (stream.text, stream.resumes) == ("hi", 1)


# --- chat ----------------------------------------------------------------------------


class Terminal(io.StringIO):
    """An output that announces its first write."""

    def __init__(self):
        super().__init__()
        self.first_write = asyncio.Event()

    def write(self, value):
        self.first_write.set()
        return super().write(value)


async def test_chat_survives_a_dropped_connection():
    out = Terminal()

    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"), text("s1", 2, "Hel"))
        await out.first_write.wait()
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        await peer.send(resumed("s1", 2, 2), text("s1", 2, "Hel"), text("s1", 3, "lo"))
        await peer.send(finish("s1", 4))
        await peer.hold()

    async with fake_gateway(first, second) as fake:
        assert await chat(fake.url, "hi", out=out) == 0
    assert out.getvalue() == "Hello\n"
    # The generation must go on while chat reconnects.
    assert fake.peers[0].received[0].options.on_disconnect == "continue"


async def test_chat_reports_a_refused_resume(capsys):
    async def first(peer):
        await peer.recv(Start)
        await peer.send(started("s1"), text("s1", 2, "Hel"))
        await asyncio.sleep(0.05)
        peer.drop()

    async def second(peer):
        await peer.recv(Resume)
        await peer.send(refusal("s1", "resume_trimmed"))
        await peer.hold()

    out = io.StringIO()
    async with fake_gateway(first, second) as fake:
        assert await chat(fake.url, "hi", out=out) == 1
    assert out.getvalue() == "Hel\n"
    assert capsys.readouterr().err == "wsgate: error resume_trimmed: refused: resume_trimmed\n"


def test_the_fake_gateway_speaks_the_frame_types_the_client_decodes():
    frames = [resumed("s1", 1, 2), text("s1", 3, "ab", first_seq=2), finish("s1", 4)]
    decoded = [decode_server_frame(json.dumps(f)) for f in frames]
    assert [type(f) for f in decoded] == [StreamResumed, DeltaText, FinishFrame]


# --- against the real gateway (memory store) -----------------------------------------


@pytest.fixture
async def real_gateway():
    overrides = {"server.port": 0, "mock.ttft_ms": 0, "mock.tokens_per_s": 0}
    app = App(load_settings(None, environ={}, overrides=overrides), environ={})
    await app.start()
    yield app
    await app.stop()


def mock_request(script):
    return {
        "model": "mock",
        "messages": [{"role": "user", "content": json.dumps({"mock": script})}],
    }


async def drop_and_collect(gw, stream, after):
    """Iterate the stream, dropping the client's TCP connection after `after` frames."""
    count = 0
    async for _ in stream:
        count += 1
        if count == after:
            gw._mux.ws.transport.abort()


async def test_the_real_gateway_resumes_a_dropped_stream_byte_exact(real_gateway):
    script = {"text": "resume me " * 40, "tokens_per_s": 200, "tag": "real"}
    async with connect(real_gateway.url, backoff=FAST) as gw:
        stream = gw.stream(mock_request(script), {"on_disconnect": "continue"})
        await drop_and_collect(gw, stream, 10)
        assert gw.reconnects == 1
    assert (stream.text, stream.finish_reason) == (script["text"], "stop")
    assert covered_seqs(stream.events) == list(range(1, stream.events[-1].seq + 1))
    assert stream.resumes == 1
    assert len(real_gateway.mock.find_all("real")) == 1  # one generation, not two


async def test_the_real_gateway_resumes_an_on_disconnect_cancel_stream_to_its_cancel(
    real_gateway,
):
    script = {"text": "cut short " * 40, "tokens_per_s": 200}
    async with connect(real_gateway.url, backoff=FAST) as gw:
        stream = gw.stream(mock_request(script))
        await drop_and_collect(gw, stream, 10)
    # The drop cancelled the generation; the resume still delivers what it made, once.
    assert stream.finish_reason == "cancelled"
    assert script["text"].startswith(stream.text)
    assert covered_seqs(stream.events) == list(range(1, stream.events[-1].seq + 1))
