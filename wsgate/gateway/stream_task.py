"""The task of each stream: open its provider call, retry before the first token, tear down.

Owns one asyncio task per stream, which does no per-token work: it opens the upstream call
and awaits the body's `run` once (push mode: the body's bytes reach `_Feed.data` inside the
provider socket's callback; pull mode: the body's own loop calls it), retries transient
failures while the client saw no content (within the first-token deadline the session
reports). The stream's time limits are the core's deadlines (`Stream.deadline`), watched by
one timer per connection: an expired stream is ended by the session and its task cancelled.

A stream in the agent loop (core/agent.py) keeps its one task across its model turns: a
turn that ends in tool calls returns from the provider call; the task then runs the turn's
server-side tools (`StreamHost.run_tool`, concurrently) and waits for the next turn's
request, which the last result brings (a server tool's, or the client's via `next_turn`),
and opens that turn's provider call. So a cancel, a time limit or a detach treats a
waiting stream like a generating one.

A cancel is `task.cancel()`: leaving the upstream's `async with` (or a tool's HTTP call)
closes the provider connection, and the time from the cancel decision to that close is
accounted. Tasks are
forgotten by a done-callback (a task cancelled before it first runs never executes its
body). A detached stream's task (`on_disconnect: continue`) is adopted by the gateway, so
it outlives its connection until its window passes.

Decides nothing about flow control: after each delivery the connection (`StreamHost.hold`)
says whether the body pauses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Any

from wsgate.core.agent import ToolCall
from wsgate.core.errors import WsgateError
from wsgate.core.frames import ChatRequest, ErrorFrame
from wsgate.core.session import StartUpstream
from wsgate.core.stream import StreamOutput, TurnChange
from wsgate.gateway.ports import Body, StreamHost, Upstream
from wsgate.log import bind, get_logger

log = get_logger("wsgate.gateway")


class StreamTasks:
    """The stream tasks of one connection."""

    __slots__ = (
        "_cancelled_at",
        "_expiry",
        "_message_ids",
        "_polls",
        "_turns",
        "host",
        "tasks",
        "upstream",
    )

    def __init__(self, host: StreamHost, upstream: Upstream) -> None:
        self.host = host
        self.upstream = upstream
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._message_ids: dict[str, str] = {}
        self._cancelled_at: dict[asyncio.Task[None], float] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._polls: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        # Agent loop: the next turn's request of a waiting stream (a future while awaited).
        self._turns: dict[str, asyncio.Future[ChatRequest]] = {}

    def message_id(self, stream_id: str) -> str | None:
        """The message id of a stream started here."""
        return self._message_ids.get(stream_id)

    def start(self, start: StartUpstream) -> None:
        """Run a newly accepted stream."""
        sid = start.stream_id
        self._message_ids[sid] = start.message_id
        stale = self._turns.pop(sid, None)  # an earlier stream's of this id: never shared
        if stale is not None:
            stale.cancel()
        task = asyncio.create_task(self._run(start), name=f"stream-{sid}")
        self.tasks[sid] = task
        # A done-callback, not a `finally`: a task cancelled before it first runs never
        # executes its body, and must not stay in the table with its request.
        task.add_done_callback(lambda done: self._forget(sid, done))

    def next_turn(self, stream_id: str, request: ChatRequest) -> None:
        """The client's results completed a turn of `stream_id`: its task opens `request`."""
        if stream_id not in self.tasks:
            return
        turn = self._turn(stream_id)
        if not turn.done():
            turn.set_result(request)

    def cancel(self, stream_id: str) -> None:
        """Close a stream's upstream call now."""
        task = self.tasks.get(stream_id)
        if task is not None and not task.done():
            self._cancelled_at[task] = time.monotonic()
            task.cancel()

    def detach(self, stream_id: str, window: float) -> None:
        """The client left: the stream's task now belongs to the gateway for `window` s."""
        task = self.tasks.get(stream_id)
        if task is None:
            return
        self.host.adopt(task)
        loop = asyncio.get_running_loop()
        self._expiry[stream_id] = loop.call_later(window, self._expire, stream_id)

    def schedule_poll(self, stream_id: str, deadline: float) -> None:
        """Call the session's `poll` for this stream at `deadline` (monotonic seconds)."""
        current = self._polls.get(stream_id)
        if current is not None:
            if current[0] <= deadline:
                return
            current[1].cancel()
        delay = max(0.0, deadline - time.monotonic())
        handle = asyncio.get_running_loop().call_later(delay, self._poll, stream_id)
        self._polls[stream_id] = (deadline, handle)

    def _poll(self, stream_id: str) -> None:
        self._polls.pop(stream_id, None)
        host = self.host
        host.deliver(stream_id, host.session.poll(stream_id, time.monotonic()))

    async def reap(self) -> None:
        """Cancel and await every task that is not detached (the connection is closing)."""
        host = self.host
        tasks = [task for sid, task in self.tasks.items() if not host.detached(sid)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def cancel_expiry(self, stream_id: str) -> None:
        """Drop a detached stream's window timer (it is being ended now)."""
        handle = self._expiry.pop(stream_id, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, stream_id: str) -> None:
        self._expiry.pop(stream_id, None)
        self.host.expire(stream_id)

    def _forget(self, stream_id: str, task: asyncio.Task[None]) -> None:
        cancelled_at = self._cancelled_at.pop(task, None)
        if cancelled_at is not None:
            latency = time.monotonic() - cancelled_at
            self.host.cancel_latency(latency)
            log.info(  # the per-stream figure; /stats has the aggregate
                "upstream_closed_after_cancel",
                stream_id=stream_id,
                message_id=self._message_ids.get(stream_id),
                latency_ms=round(latency * 1000, 3),
            )
        # A cancelled stream's id may already name a new stream: forget only our own.
        if self.tasks.get(stream_id) is task:
            del self.tasks[stream_id]
            self._message_ids.pop(stream_id, None)
            self._turns.pop(stream_id, None)
            poll = self._polls.pop(stream_id, None)
            if poll is not None:
                poll[1].cancel()
            # A detached stream's log outlives its task until the window's timer fires.

    async def _run(self, start: StartUpstream) -> None:
        sid = start.stream_id
        host = self.host
        # The task runs in its own copy of the context: what is bound here dies with it
        # (cheaper per stream than a `bound` block kept open for the stream's life).
        bind(stream_id=sid, message_id=start.message_id)
        try:
            turn = await self._attempts(start)
            while turn is not None and self._waits(sid):  # this turn ended in tool calls
                request = await self._between_turns(start, turn)
                start = dataclasses.replace(start, request=request)
                turn = await self._attempts(start)
        except WsgateError as exc:
            log.info(
                "upstream_failed", code=exc.code, **{**start.target.describe(), **exc.log_fields}
            )
            host.deliver(sid, host.session.upstream_failed(sid, exc))
        except Exception:
            log.exception("stream_crashed")
            host.deliver(sid, host.session.upstream_failed(sid, WsgateError("internal error")))

    def _waits(self, stream_id: str) -> bool:
        """The stream is this task's and waits between two turns (not ended meanwhile)."""
        stream = self.host.session.streams.get(stream_id)
        return (
            stream is not None
            and stream.awaiting_tools
            and self._owned_by(stream_id, asyncio.current_task())
        )

    def _owned_by(self, stream_id: str, task: asyncio.Task[Any] | None) -> bool:
        """Whether `task` is the stream's (a reused id may name a newer stream's)."""
        return task is not None and self.tasks.get(stream_id) is task

    def _turn(self, stream_id: str) -> asyncio.Future[ChatRequest]:
        """The future the stream's next-turn request arrives on (made by whoever comes first)."""
        turn = self._turns.get(stream_id)
        if turn is None:
            turn = self._turns[stream_id] = asyncio.get_running_loop().create_future()
        return turn

    async def _between_turns(self, start: StartUpstream, turn: TurnChange) -> ChatRequest:
        """Run the turn's server tools, then wait for the next turn's request."""
        sid = start.stream_id
        request: ChatRequest | None = None
        if turn.run:
            owner = asyncio.current_task()  # (gather runs each call in a task of its own)
            outcomes = await asyncio.gather(
                *(self._run_tool(start, call, owner) for call in turn.run)
            )
            request = next((r for r in outcomes if r is not None), None)
        if request is None:
            request = await self._turn(sid)
        self._turns.pop(sid, None)
        return request

    async def _run_tool(
        self, start: StartUpstream, call: ToolCall, owner: asyncio.Task[Any] | None
    ) -> ChatRequest | None:
        """One server tool's call, its outcome delivered; the next turn's request if it was last."""
        host, sid = self.host, start.stream_id
        content, error = await host.run_tool(sid, start.message_id, call)
        stream = host.session.streams.get(sid)
        mine = self._owned_by(sid, owner)
        if not mine or stream is None or stream.message_id != start.message_id:
            return None  # the stream ended meanwhile (its id may name another one now)
        output = host.session.tool_finished(sid, call.call_id, content, error, time.monotonic())
        host.deliver(sid, output)
        return output.turn.request if output.turn is not None else None

    async def _attempts(self, start: StartUpstream) -> TurnChange | None:
        """Call the provider; retry transient failures while the client saw no content.

        Returns the agent loop's turn change when the turn ended in tool calls.
        """
        policy = self.host.options.retry
        session = self.host.session
        began = time.monotonic()
        attempt = 0
        while True:
            try:
                return await self._pump(start)
            except WsgateError as exc:
                attempt += 1
                elapsed = time.monotonic() - began
                jitter = random.random()  # noqa: S311 - jitter, not a secret
                left = session.first_token_left(start.stream_id, time.monotonic())
                delay = policy.delay(attempt, exc, elapsed, jitter, left)
                if delay is None or not session.retry_upstream(start.stream_id, start.target):
                    raise  # the real error, with its Retry-After, not a first-token timeout
                log.info(
                    "upstream_retry",
                    attempt=attempt,
                    code=exc.code,
                    delay_ms=round(delay * 1000, 1),
                    **{**start.target.describe(), **exc.log_fields},
                )
                self.host.retried()
                await asyncio.sleep(delay)

    async def _pump(self, start: StartUpstream) -> TurnChange | None:
        sid = start.stream_id
        host = self.host
        async with self.upstream.open(start.request, start.target) as body:
            feed = _Feed(host, sid, body)
            try:
                await body.run(feed)
            finally:
                host.release(sid)
        if feed.retry is not None:
            raise feed.retry  # after the provider call was closed
        if feed.failed is not None:  # the provider reported it in its stream
            fields = start.target.describe()
            log.info("upstream_failed", code=feed.failed.code, in_band=True, **fields)
        if feed.ended:
            return feed.turn
        output = host.session.upstream_eof(sid, time.monotonic())
        host.deliver(sid, output)
        if output.retry is not None:
            raise output.retry
        failed = _error_of(output) if output.closed else None
        if failed is not None:  # cut short: the body ended before the provider finished
            log.info("upstream_failed", code=failed.code, **start.target.describe())
        return output.turn


def _error_of(output: StreamOutput) -> ErrorFrame | None:
    """The error that ended a stream's output (with `seq`), if one did."""
    return next((f for f in output.frames if type(f) is ErrorFrame and f.seq is not None), None)


class _Feed:
    """One provider call's sink: its bytes into the session, its frames to the connection.

    Runs in the provider socket's data callback (push) or in the stream task (pull): the
    per-token path. A plain object, so nothing of a chunk's output is kept past the call.
    """

    __slots__ = ("body", "ended", "failed", "host", "retry", "stream_id", "turn")

    def __init__(self, host: StreamHost, stream_id: str, body: Body) -> None:
        self.host = host
        self.stream_id = stream_id
        self.body = body
        self.retry: WsgateError | None = None
        self.ended = False
        self.turn: TurnChange | None = None  # the turn ended in tool calls (agent loop)
        self.failed: ErrorFrame | None = None  # the stream's error, when its body said it

    def data(self, chunk: bytes) -> bool:
        """Hand one chunk to the session and deliver its frames; True once reading must stop.

        Pauses the body when the connection says so (flow control).
        """
        host, sid = self.host, self.stream_id
        output = host.session.upstream_data(sid, chunk, time.monotonic())
        host.deliver(sid, output)
        if output.retry is not None:
            self.retry = output.retry
            return True
        if output.closed or output.turn is not None:
            self.ended = True
            self.turn = output.turn
            if output.closed:
                self.failed = _error_of(output)
            return True
        host.hold(sid, self.body)
        return False
