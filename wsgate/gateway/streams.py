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
import time
from typing import TYPE_CHECKING

from wsgate.core.errors import StreamTimeout, UpstreamTimeout, WsgateError
from wsgate.core.session import StartUpstream
from wsgate.log import bound, get_logger

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

    async def reap(self) -> None:
        """Cancel and await every task that is not detached (the connection is closing)."""
        detached = self.connection.logs
        tasks = [task for sid, task in self.tasks.items() if sid not in detached]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _expire(self, stream_id: str) -> None:
        self._expiry.pop(stream_id, None)
        self.connection.expire(stream_id)

    def _forget(self, stream_id: str, task: asyncio.Task[None]) -> None:
        cancelled_at = self._cancelled_at.pop(task, None)
        if cancelled_at is not None:
            self.connection.shared.accounting.cancel_latency(time.monotonic() - cancelled_at)
        # A cancelled stream's id may already name a new stream: forget only our own.
        if self.tasks.get(stream_id) is task:
            del self.tasks[stream_id]
            self._message_ids.pop(stream_id, None)
            self.connection.room.pop(stream_id, None)
            # A detached stream's log outlives its task until the window's timer fires.

    async def _run(self, start: StartUpstream) -> None:
        sid = start.stream_id
        connection = self.connection
        options = connection.options
        with bound(stream_id=sid, message_id=start.message_id):
            try:
                async with (
                    asyncio.timeout(options.max_duration) as whole,
                    asyncio.timeout(options.first_token_timeout) as first,
                ):
                    await self._pump(start, first)
            except TimeoutError:
                error: WsgateError
                if whole.expired():
                    error = StreamTimeout(f"the stream ran longer than {options.max_duration:g} s")
                else:
                    error = UpstreamTimeout(
                        f"no token within {options.first_token_timeout:g} s of the request"
                    )
                connection.deliver(sid, connection.session.upstream_failed(sid, error))
            except WsgateError as exc:
                log.info("upstream_failed", code=exc.code)
                connection.deliver(sid, connection.session.upstream_failed(sid, exc))
            except Exception:
                log.exception("stream_crashed")
                failed = connection.session.upstream_failed(sid, WsgateError("internal error"))
                connection.deliver(sid, failed)

    async def _pump(self, start: StartUpstream, first: asyncio.Timeout) -> None:
        sid = start.stream_id
        connection = self.connection
        session = connection.session
        waiting_for_token = True
        async with self.upstream.open(start.request) as chunks:
            async for chunk in chunks:
                output = session.upstream_data(sid, chunk, time.monotonic())
                connection.deliver(sid, output)
                if output.closed:
                    return
                if waiting_for_token:
                    stream = session.streams.get(sid)
                    if stream is not None and stream.has_content:
                        first.reschedule(None)
                        waiting_for_token = False
                await self._backpressure(sid)
        connection.deliver(sid, session.upstream_eof(sid, time.monotonic()))

    async def _backpressure(self, stream_id: str) -> None:
        # Stop reading the provider while this stream's queue is full, or while the
        # connection holds half of its byte cap: the provider is slowed through TCP.
        connection = self.connection
        outbox = connection.outbox
        soft = connection.options.buffer_bytes // 2
        while stream_id not in connection.logs:
            if outbox.is_full(stream_id):
                room = connection.room.get(stream_id)
                if room is None:
                    room = connection.room[stream_id] = asyncio.Event()
                room.clear()
                await room.wait()
            elif outbox.pending_bytes >= soft:
                connection.uncongested.clear()
                await connection.uncongested.wait()
            else:
                return
