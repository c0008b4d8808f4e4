"""Replay every conversation fixture of `protocol/fixtures/conversations/` against a real gateway.

The replay rule (README.md beside the fixtures): gateway frames are matched per `stream_id`
in order, frames without a `stream_id` forming one more sequence of their own; before each
`send`, every `expect` listed above it must have arrived; at the end every expectation is met
and the connection stays quiet for `QUIET_S`. Any frame that is not the next expected one of
its sequence fails the replay at once, with the transcript so far.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import pytest
from e2e_helpers import RawConn, raw_connect

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
    async with raw_connect(url) as conn:
        run = Replay(conn)
        for step in steps:
            if "send" in step:
                await run.send(step["send"])
            else:
                run.expect(step["expect"])
        await run.settle()
        await run.quiet()


def test_the_fixture_directory_holds_the_required_conversations():
    names = {path.stem for path in FIXTURES}
    required = {"single_stream", "two_streams", "cancel", "bad_frames", "unknown_model"}
    assert required <= names


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_each_fixture_is_well_formed_and_opens_with_ready(path):
    doc = load(path)
    assert set(doc) <= {"description", "steps"}
    assert isinstance(doc["description"], str)
    assert doc["description"]
    steps = doc["steps"]
    assert all(isinstance(step, dict) and len(step) == 1 for step in steps)
    assert all(next(iter(step)) in {"send", "expect"} for step in steps)
    assert next(iter(steps[0])) == "expect"
    assert steps[0]["expect"]["type"] == "ready"
    assert all(step["expect"]["type"] != "ready" for step in steps[1:] if "expect" in step)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
async def test_the_gateway_replays_each_conversation_fixture_exactly(app, path):
    await replay(app.url, load(path)["steps"])


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
