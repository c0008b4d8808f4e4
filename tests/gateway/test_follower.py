"""The follower task (`gateway/follower.py`) over a memory store and a recording host: paging,
waiting for room, wake-ups, the ways it ends, and cancellation at each await."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
import pytest
from e2e_helpers import validate_server_frame
from gateway_helpers import make_connection, running, until

from wsgate.core.errors import WsgateError
from wsgate.core.frames import DeltaText, FinishFrame, encode_frame
from wsgate.core.session import Session, SessionLimits
from wsgate.core.store import Page, StoreLimits
from wsgate.gateway import follower
from wsgate.gateway.connection import MAX_PENDING_CANCELS
from wsgate.gateway.follower import Follow, follow
from wsgate.store.memory import MemoryStore
from wsgate.testing import LOCAL, ParserTarget, RecordingWebSocket, ScriptedParser, ScriptedUpstream


@dataclass
class Host:
    """A FollowerHost that records what the follower queued."""

    session: Session
    frames: list[dict] = field(default_factory=list)
    controls: list[dict] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    ended: bool = False
    room_open: asyncio.Event = field(default_factory=asyncio.Event)
    here: set[str] = field(default_factory=lambda: {"m1"})

    def control(self, data: bytes) -> None:
        self.controls.append(orjson.loads(data))

    def push(self, _stream_id: str, frames: list[bytes], *, ended: bool) -> None:
        self.frames.extend(orjson.loads(data) for data in frames)
        self.ended = self.ended or ended

    async def room(self, _stream_id: str) -> None:
        await self.room_open.wait()

    def refuse(self, _stream_id: str, error: WsgateError) -> None:
        self.refusals.append(error.code)

    def runs_here(self, message_id: str) -> bool:
        return message_id in self.here


def received(ws: RecordingWebSocket) -> list[dict]:
    frames = ws.frames()
    for frame in frames:
        validate_server_frame(frame)
    return frames


def make_host() -> Host:
    session = Session(
        "c",
        SessionLimits(),
        lambda _r, _o: ParserTarget(ScriptedParser),
        lambda: "m",
        principal=LOCAL,
    )
    session.attached["r1"] = None  # as the session's `resume` left it
    host = Host(session)
    host.room_open.set()
    return host


def text(seq: int, value: str) -> bytes:
    return encode_frame(DeltaText("s1", seq, value))


def finish(seq: int) -> bytes:
    return encode_frame(FinishFrame("s1", seq, "stop"))


LIMITS = StoreLimits(window_s=5, lease_s=0.2)


class LostOwner(MemoryStore):
    """A store whose every message's owner node is gone."""

    async def read(self, message_id: str, after: int, limit: int) -> Page | None:
        page = await super().read(message_id, after, limit)
        return None if page is None else Page(page.meta, page.entries, owner_alive=False)


async def test_a_follower_replays_the_log_then_follows_it_live_to_the_finish():
    store = MemoryStore(LIMITS)
    store.begin("m1", "e1")
    store.append("m1", 1, text(1, "a"))
    host = make_host()
    task = asyncio.create_task(follow(host, store, Follow("r1", "m1", 0), lambda _: None))
    await asyncio.sleep(0.01)
    assert [f["text"] for f in host.frames] == ["a"]
    assert host.controls[0]["type"] == "stream.resumed"
    store.append("m1", 2, text(2, "b"))
    store.append("m1", 3, finish(3))
    store.end("m1", "stop")
    await asyncio.wait_for(task, 1)
    assert [f["seq"] for f in host.frames] == [1, 2, 3]
    assert all(f["stream_id"] == "r1" for f in host.frames)
    assert host.ended
    assert "r1" not in host.session.attached


async def test_a_follower_reads_a_long_log_page_by_page_and_only_when_there_is_room():
    store = MemoryStore(LIMITS)
    store.begin("m1", "e1")
    total = follower.PAGE * 2 + 5
    for seq in range(1, total):
        store.append("m1", seq, text(seq, "x"))
    store.append("m1", total, finish(total))
    store.end("m1", "stop")
    host = make_host()
    host.room_open.clear()
    task = asyncio.create_task(follow(host, store, Follow("r1", "m1", 0), lambda _: None))
    await asyncio.sleep(0.05)
    assert len(host.frames) == follower.PAGE  # one page, then it waits for room
    host.room_open.set()
    await asyncio.wait_for(task, 1)
    assert [f["seq"] for f in host.frames] == list(range(1, total + 1))


async def test_a_keyed_retry_waits_for_a_record_that_is_still_being_written():
    store = MemoryStore(LIMITS)
    host = make_host()
    what = Follow("r1", "m1", 0, announce=False)
    task = asyncio.create_task(follow(host, store, what, lambda _: None))
    await asyncio.sleep(0.1)  # the key's holder has not written its record yet
    store.begin("m1", "e1")
    store.append("m1", 1, finish(1))
    store.end("m1", "stop")
    await asyncio.wait_for(task, 3)
    assert host.refusals == []
    assert [f["type"] for f in host.frames] == ["finish"]
    assert host.controls == []  # a keyed retry is not announced


async def test_a_follower_of_a_lost_owner_ends_with_owner_lost_after_what_was_logged():
    store = LostOwner(LIMITS)
    store.begin("m1", "e1")
    store.append("m1", 1, text(1, "a"))
    host = make_host()
    await asyncio.wait_for(follow(host, store, Follow("r1", "m1", 0), lambda _: None), 1)
    assert [f["seq"] for f in host.frames] == [1]
    assert host.refusals == ["resume_owner_lost"]


async def test_a_log_that_ends_without_its_finish_is_refused_not_waited_on():
    store = MemoryStore(LIMITS)
    store.begin("m1", "e1")
    store.append("m1", 1, text(1, "a"))
    store.append("m1", 2, text(2, "b"))
    store.end("m1", "stop")  # its finish frame was never logged (the store lost it)
    host = make_host()
    await asyncio.wait_for(follow(host, store, Follow("r1", "m1", 0), lambda _: None), 1)
    assert host.refusals == ["resume_trimmed"]


@pytest.mark.parametrize("where", ["room", "wake"])
async def test_a_follower_cancelled_while_waiting_lets_its_stream_id_go(where):
    store = MemoryStore(LIMITS)
    store.begin("m1", "e1")
    store.append("m1", 1, text(1, "a"))
    host = make_host()
    if where == "room":
        for seq in range(2, follower.PAGE + 2):
            store.append("m1", seq, text(seq, "x"))
        host.room_open.clear()
    task = asyncio.create_task(follow(host, store, Follow("r1", "m1", 0), lambda _: None))
    await asyncio.sleep(0.05)
    host.session.attached["r1"] = "m1"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "r1" not in host.session.attached
    assert store._watchers == {}  # unwatched


async def test_cancels_by_message_id_waiting_for_a_slow_store_are_bounded_per_connection():
    class SlowStore(MemoryStore):
        async def read(self, message_id: str, after: int, limit: int) -> Page | None:
            await asyncio.sleep(0.05)
            return await super().read(message_id, after, limit)

    ws = RecordingWebSocket()
    conn = make_connection(ws, ScriptedUpstream([]))
    conn.shared.store = SlowStore(LIMITS)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(conn._cancels))
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    async with running(conn):
        for n in range(60):
            ws.client_sends(orjson.dumps({"type": "cancel", "message_id": f"m{n}"}).decode())
        await until(lambda: len(received(ws)) >= 61, timeout=5)  # ready + 60 refusals
    watcher.cancel()
    assert most <= MAX_PENDING_CANCELS
    codes = [f.get("code") for f in received(ws)[1:]]
    assert codes == ["unknown_message"] * 60


async def test_a_followers_refusal_arrives_after_the_frames_it_sent_before_it():
    store = LostOwner(LIMITS)
    store.begin("m1", "e1", principal=LOCAL.id)  # the connection's own message
    for seq in range(1, 31):
        store.append("m1", seq, text(seq, f"t{seq} "))
    ws = RecordingWebSocket()
    conn = make_connection(ws, ScriptedUpstream([]), store=store)
    async with running(conn):
        resume = {"type": "resume", "message_id": "m1", "last_seq": 0, "stream_id": "r1"}
        ws.client_sends(orjson.dumps(resume).decode())
        await until(lambda: any(f.get("type") == "error" for f in received(ws)), timeout=2)
    kinds = [(f["type"], f.get("seq")) for f in received(ws)[1:]]
    assert kinds[0] == ("stream.resumed", None)
    assert kinds[1:-1] == [("delta.text", seq) for seq in range(1, 31)]
    assert kinds[-1] == ("error", None)
    assert received(ws)[-1]["code"] == "resume_owner_lost"


async def test_a_generation_of_this_node_id_that_nothing_here_runs_is_owner_lost():
    store = MemoryStore(LIMITS)  # a restarted node with a fixed node_id: the lease holds
    store.begin("m1", "e1")
    store.append("m1", 1, text(1, "a"))
    host = make_host()
    host.here.clear()
    await asyncio.wait_for(follow(host, store, Follow("r1", "m1", 0), lambda _: None), 1)
    assert [f["seq"] for f in host.frames] == [1]
    assert host.refusals == ["resume_owner_lost"]
