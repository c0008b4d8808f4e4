"""The task of each stream: read its provider, feed the session, honour time limits.

Owns one asyncio task per stream: open the upstream call, hand every chunk to the session,
stop reading while the connection says so (backpressure), and enforce the stream's time
limits: `max_duration` from start to finish (`stream_timeout`, finish `timeout`) and
`first_token_timeout` until the first text or tool-call delta (`upstream_timeout`).
A cancel is `task.cancel()`: leaving the upstream's `async with` closes the provider
connection, and the time from the cancel decision to that close is accounted.

Tasks are forgotten by a done-callback (a task cancelled before it first runs never
executes its body). Detached tasks (the client left, `on_disconnect: continue`) are
handed to the gateway, so they outlive their connection until their window passes.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from wsgate.core.errors import StreamTimeout, UpstreamTimeout, WsgateError
from wsgate.core.session import StartUpstream
from wsgate.log import bind, get_logger

if TYPE_CHECKING:
    from wsgate.gateway.connection import Connection, Upstream

log = get_logger("wsgate.gateway")


class StreamRunner:
    """The stream tasks of one connection."""

    def __init__(self, connection: Connection, upstream: Upstream) -> None:
        self.connection = connection
        self.upstream = upstream
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._message_ids: dict[str, str] = {}
        self._cancelled_at: dict[asyncio.Task[None], float] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._polls: dict[str, tuple[float, asyncio.TimerHandle]] = {}

    def message_id(self, stream_id: str) -> str | None:
        """The message id of a stream this runner started."""
        return self._message_ids.get(stream_id)

    def start(self, start: StartUpstream) -> None:
        """Run a newly accepted stream."""
        sid = start.stream_id
        self._message_ids[sid] = start.message_id
        task = asyncio.create_task(self._run(start), name=f"stream-{sid}")
        self.tasks[sid] = task
        # A done-callback, not a `finally`: a task cancelled before it first runs never
        # executes its body, and must not stay in the table with its request.
        task.add_done_callback(lambda done: self._forget(sid, done))

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
        self.connection.shared.detached_tasks.add(task)
        task.add_done_callback(self.connection.shared.detached_tasks.discard)
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
        connection = self.connection
        connection.deliver(stream_id, connection.session.poll(stream_id, time.monotonic()))

    async def reap(self) -> None:
        """Cancel and await every task that is not detached (the connection is closing)."""
        detached = self.connection.logs
        tasks = [task for sid, task in self.tasks.items() if sid not in detached]
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
        self.connection.expire(stream_id)

    def _forget(self, stream_id: str, task: asyncio.Task[None]) -> None:
        cancelled_at = self._cancelled_at.pop(task, None)
        if cancelled_at is not None:
            latency = time.monotonic() - cancelled_at
            self.connection.shared.accounting.cancel_latency(latency)
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
            self.connection.room.pop(stream_id, None)
            poll = self._polls.pop(stream_id, None)
            if poll is not None:
                poll[1].cancel()
            # A detached stream's log outlives its task until the window's timer fires.

    async def _run(self, start: StartUpstream) -> None:
        sid = start.stream_id
        connection = self.connection
        options = connection.options
        # The task runs in its own copy of the context: what is bound here dies with it
        # (cheaper per stream than a `bound` block kept open for the stream's life).
        bind(stream_id=sid, message_id=start.message_id)
        try:
            async with (
                asyncio.timeout(options.max_duration) as whole,
                asyncio.timeout(options.first_token_timeout) as first,
            ):
                await self._attempts(start, first)
        except TimeoutError:
            error: WsgateError
            if whole.expired():
                error = StreamTimeout(f"the stream ran longer than {options.max_duration:g} s")
            elif first.expired():
                error = UpstreamTimeout(
                    f"no token within {options.first_token_timeout:g} s of the request"
                )
            else:  # a TimeoutError from elsewhere is a bug, not the provider's fault
                log.exception("stream_crashed")
                error = WsgateError("internal error")
            connection.deliver(sid, connection.session.upstream_failed(sid, error))
        except WsgateError as exc:
            log.info("upstream_failed", code=exc.code)
            connection.deliver(sid, connection.session.upstream_failed(sid, exc))
        except Exception:
            log.exception("stream_crashed")
            failed = connection.session.upstream_failed(sid, WsgateError("internal error"))
            connection.deliver(sid, failed)

    async def _attempts(self, start: StartUpstream, first: asyncio.Timeout) -> None:
        """Call the provider; retry transient failures while the client saw no content."""
        policy = self.connection.options.retry
        session = self.connection.session
        began = time.monotonic()
        attempt = 0
        while True:
            try:
                await self._pump(start, first)
            except WsgateError as exc:
                attempt += 1
                elapsed = time.monotonic() - began
                jitter = random.random()  # noqa: S311 - jitter, not a secret
                delay = policy.delay(attempt, exc, elapsed, jitter, _time_left(first))
                if delay is None or not session.retry_upstream(start.stream_id, start.request):
                    raise  # the real error, with its Retry-After, not a first-token timeout
                log.info(
                    "upstream_retry",
                    attempt=attempt,
                    code=exc.code,
                    delay_ms=round(delay * 1000, 1),
                )
                self.connection.shared.accounting.upstream_retries += 1
                await asyncio.sleep(delay)
            else:
                return

    async def _pump(self, start: StartUpstream, first: asyncio.Timeout) -> None:
        sid = start.stream_id
        async with self.upstream.open(start.request) as chunks:
            async for chunk in chunks:
                if self._feed(sid, chunk, first):
                    return
                while (room := self._paused(sid)) is not None:
                    await room.wait()
        output = self.connection.session.upstream_eof(sid, time.monotonic())
        self.connection.deliver(sid, output)
        if output.retry is not None:
            raise output.retry

    def _feed(self, stream_id: str, chunk: bytes, first: asyncio.Timeout) -> bool:
        """Hand one chunk to the session and deliver its frames; True once the stream ended.

        A plain function, so that its output is not kept alive while the stream waits for
        the provider's next chunk. Raises the stream's `retry` error (leaving `open` closes
        the provider call); stops the first-token timer at the first content.
        """
        session = self.connection.session
        output = session.upstream_data(stream_id, chunk, time.monotonic())
        self.connection.deliver(stream_id, output)
        if output.retry is not None:
            raise output.retry
        if output.closed:
            return True
        if first.when() is not None:
            stream = session.streams.get(stream_id)
            if stream is not None and stream.has_content:
                first.reschedule(None)
        return False

    def _paused(self, stream_id: str) -> asyncio.Event | None:
        """The event to wait for before reading the provider again; None: read now.

        Backpressure: stop reading while this stream's queue is full, or while the
        connection holds half of its byte cap; the provider is slowed through TCP. A plain
        function, not a coroutine: it runs after every chunk and nearly always says "read".
        """
        connection = self.connection
        if stream_id in connection.logs:
            return None  # detached: its log, not the client, takes the frames
        outbox = connection.outbox
        if outbox.is_full(stream_id):
            room = connection.room.get(stream_id)
            if room is None:
                room = connection.room[stream_id] = asyncio.Event()
            room.clear()
            return room
        if outbox.pending_bytes >= connection.options.buffer_bytes // 2:
            uncongested = connection.uncongested
            uncongested.clear()
            return uncongested
        return None


def _time_left(first: asyncio.Timeout) -> float | None:
    """Seconds until the first-token deadline (None once the first token came)."""
    deadline = first.when()
    return None if deadline is None else deadline - asyncio.get_running_loop().time()
