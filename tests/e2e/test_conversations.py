"""Replay every conversation fixture of `protocol/fixtures/conversations/` against a real gateway.

The replay rule (README.md beside the fixtures): gateway frames are matched per `stream_id`
in order, frames without a `stream_id` forming one more sequence of their own; before each
`send`, every `expect` listed above it must have arrived; at the end every expectation is met
and the connection stays quiet for `QUIET_S`. Any frame that is not the next expected one of
its sequence fails the replay at once, with the transcript so far.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import pytest
from e2e_helpers import RawConn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wsgate.app import App
from wsgate.config import load_settings
from wsgate.testing import frame_matches

FIXTURE_DIR = Path(__file__).parents[2] / "protocol" / "fixtures" / "conversations"
FIXTURES = sorted(FIXTURE_DIR.glob("*.json"))
QUIET_S = 0.2
READY_ANY = {
    "expect": {
        "type": "ready",
        "protocol": "wsgate.v1",
        "conn_id": "$any",
        "server_version": "$any",
        "limits": "$any",
    }
}
WAIT_S = 10.0
AUTH_KEY = "sk-fixture-0123456789"
"""The API key of the gateway `auth_*.json` fixtures run against (principal `fixture`)."""


class ReplayFailed(AssertionError):
    """The gateway's frames did not follow the fixture."""


class Replay:
    """Expected frames per `stream_id`, checked against what the gateway sends."""

    def __init__(self, conn: RawConn) -> None:
        self.conn = conn
        self.pending: dict[str | None, deque[dict[str, Any]]] = {}
        self.transcript: list[str] = []
        self._backlog = deque(conn.received)  # `ready`, read by raw_connect

    def expect(self, frame: dict[str, Any]) -> None:
        self.pending.setdefault(frame.get("stream_id"), deque()).append(frame)

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.settle()
        data = frame if isinstance(frame, str) else orjson.dumps(frame).decode()
        self.transcript.append(f"sent     {data[:300]}")
        await self.conn.send(data)

    async def settle(self) -> None:
        """Receive until every expectation listed so far is met."""
        while any(self.pending.values()):
            if self._backlog:
                frame = self._backlog.popleft()
            else:
                try:
                    frame = await self.conn.recv(WAIT_S)
                except TimeoutError:
                    self.fail(f"no frame within {WAIT_S} s")
            self.check(frame)

    async def closed(self, code: int) -> None:
        """The gateway closes the connection with `code`, sending nothing more."""
        try:
            frame = await self.conn.recv(WAIT_S)
        except ConnectionClosed as ended:
            got = ended.rcvd.code if ended.rcvd is not None else None
            self.transcript.append(f"closed   {got}")
            if got != code:
                self.fail(f"closed with {got}, expected {code}")
            return
        except TimeoutError:
            self.fail(f"not closed within {WAIT_S} s")
        self.transcript.append(f"received {_show(frame)}")
        self.fail(f"a frame instead of the close {code}")

    async def quiet(self) -> None:
        """No frame may arrive once every expectation is met."""
        try:
            frame = await self.conn.recv(QUIET_S)
        except TimeoutError:
            return
        self.transcript.append(f"received {_show(frame)}")
        self.fail("unexpected frame after the last expectation")

    def check(self, frame: dict[str, Any]) -> None:
        self.transcript.append(f"received {_show(frame)}")
        queue = self.pending.get(frame.get("stream_id"))
        if not queue:
            self.fail("unexpected frame: nothing is expected for its stream_id now")
        if frame.get("type") == "delta.text" and "first_seq" in frame:
            self._check_coalesced(queue, frame)
            return
        if not frame_matches(queue[0], frame):
            self.fail(f"frame does not match the expected {_show(queue[0])}")
        queue.popleft()

    def _check_coalesced(self, queue: deque[dict[str, Any]], frame: dict[str, Any]) -> None:
        """A coalesced `delta.text` stands for the expected text deltas it covers, in order."""
        covered = []
        for seq in range(frame["first_seq"], frame["seq"] + 1):
            head = queue[0] if queue else None
            if head is None or head.get("type") != "delta.text" or head.get("seq") != seq:
                self.fail(f"coalesced frame covers seq {seq}, expected {_show(head)}")
            covered.append(queue.popleft()["text"])
        if "".join(covered) != frame["text"]:
            self.fail("coalesced text differs from the text deltas it covers")

    def fail(self, why: str) -> None:
        waiting = [_show(q[0]) for q in self.pending.values() if q]
        lines = [why, "transcript:", *self.transcript, "still expected (head per stream):"]
        raise ReplayFailed("\n  ".join([*lines, *waiting]))


def _show(frame: Any) -> str:
    return json.dumps(frame, ensure_ascii=False)[:300]


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


async def replay(url: str, steps: list[dict[str, Any]]) -> None:
    async with connect(url, subprotocols=["wsgate.v1"]) as ws:  # type: ignore[list-item]
        run = Replay(RawConn(ws))
        for step in steps:
            if "send" in step:
                await run.send(step["send"])
            elif "expect" in step:
                run.expect(step["expect"])
            else:
                await run.settle()
                await run.closed(step["closed"])
                return
        await run.settle()
        await run.quiet()


@pytest.fixture
async def auth_app(tmp_path):
    """The gateway of the `auth_*` fixtures: the mock, and one API key (principal `fixture`)."""
    path = tmp_path / "wsgate.toml"
    digest = hashlib.sha256(AUTH_KEY.encode()).hexdigest()
    path.write_text(f'[[auth.api_keys]]\nprincipal = "fixture"\nsha256 = "{digest}"\n')
    overrides = {"server.port": 0, "api.enabled": "off", "mock.ttft_ms": 0, "mock.tokens_per_s": 0}
    app = App(load_settings(path, environ={}, overrides=overrides), environ={})
    await app.start()
    yield app
    await app.stop()


def test_the_fixture_directory_holds_the_required_conversations():
    names = {path.stem for path in FIXTURES}
    required = {"single_stream", "two_streams", "cancel", "bad_frames", "unknown_model"}
    assert required <= names


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_each_fixture_is_well_formed_and_opens_with_ready_or_auth(path):
    doc = load(path)
    assert set(doc) <= {"description", "steps"}
    assert isinstance(doc["description"], str)
    assert doc["description"]
    steps = doc["steps"]
    assert all(isinstance(step, dict) and len(step) == 1 for step in steps)
    assert all(next(iter(step)) in {"send", "expect", "closed"} for step in steps)
    assert all("closed" not in step for step in steps[:-1])  # a close ends a conversation
    readies = [i for i, step in enumerate(steps) if step.get("expect", {}).get("type") == "ready"]
    if path.stem.startswith("auth_"):  # no credentials at the handshake: `auth` comes first
        assert next(iter(steps[0])) == "send"
        assert readies in ([], [1])
    else:
        assert readies == [0]


PLAIN = [path for path in FIXTURES if not path.stem.startswith("auth_")]
AUTH = [path for path in FIXTURES if path.stem.startswith("auth_")]


@pytest.mark.parametrize("path", PLAIN, ids=[p.stem for p in PLAIN])
async def test_the_gateway_replays_each_conversation_fixture_exactly(app, path):
    await replay(app.url, load(path)["steps"])


@pytest.mark.parametrize("path", AUTH, ids=[p.stem for p in AUTH])
async def test_a_gateway_with_auth_replays_each_auth_fixture_exactly(auth_app, path):
    await replay(auth_app.url, load(path)["steps"])


async def test_the_replay_fails_when_the_gateway_sends_an_unexpected_frame(app):
    steps = [
        READY_ANY,
        {"send": {"type": "cancel", "stream_id": "ghost"}},
    ]
    with pytest.raises(ReplayFailed, match="unexpected frame"):
        await replay(app.url, steps)


async def test_the_replay_fails_when_a_frame_differs_from_its_expectation(app):
    steps = [
        READY_ANY,
        {"send": {"type": "cancel", "stream_id": "ghost"}},
        {
            "expect": {
                "type": "error",
                "code": "bad_frame",
                "message": "$any",
                "retryable": False,
                "stream_id": "ghost",
            }
        },
    ]
    with pytest.raises(ReplayFailed, match="does not match"):
        await replay(app.url, steps)
