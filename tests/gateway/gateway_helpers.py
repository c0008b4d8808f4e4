"""Helpers of the gateway shell's tests: a connection over a recording WebSocket."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from wsgate.core.providers import make_parser
from wsgate.core.session import LogPolicy, Resolver, Session
from wsgate.gateway.connection import Connection, ConnectionOptions, Shared
from wsgate.gateway.options import session_limits
from wsgate.gateway.ports import Store, Upstream
from wsgate.testing import LOCAL, RecordingWebSocket, resolver


def make_connection(
    ws: RecordingWebSocket,
    upstream: Upstream,
    options: ConnectionOptions | None = None,
    resolve: Resolver | None = None,
    store: Store | None = None,
) -> Connection:
    """A connection over `ws` with a real session, its limits taken from `options`.

    Every start resolves to an OpenAI chat parser unless `resolve` says otherwise. With a
    `store`, streams are logged and may be resumed, as in the gateway.
    """
    options = options or ConnectionOptions()
    ids = itertools.count(1)
    session = Session(
        "conn_t",
        session_limits(options),
        resolve or resolver(lambda: make_parser("openai_chat", 1 << 20)),
        lambda: f"msg_{next(ids)}",
        log=None if store is None else LogPolicy(lambda: "ep_t", lambda: store.healthy),
        principal=LOCAL,
    )
    shared = Shared(store=store)
    return Connection(ws, session, upstream, options, shared, principal=LOCAL)  # type: ignore[arg-type]


@asynccontextmanager
async def running(conn: Connection) -> AsyncIterator[asyncio.Task[None]]:
    """Run the connection; on exit the client closes and the connection's run ends."""
    task = asyncio.create_task(conn.run())
    try:
        yield task
    finally:
        conn.ws.client_closes()  # type: ignore[attr-defined]
        async with asyncio.timeout(1):
            await task


async def until(predicate: Callable[[], bool], timeout: float = 1.0) -> None:
    """Wait until `predicate()` holds (the fakes expose plain state to poll)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling plain state the fakes expose
            await asyncio.sleep(0.001)
