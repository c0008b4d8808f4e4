"""A follower stream: one generation's event log read into a connection, live to its finish.

Owns the task behind a `resume` (and behind a keyed `start` that found its request already
running): it reads the store page by page after the client's `last_seq`, hands each page to
the core's `Tail` (gapless, once per `seq`, re-addressed) and queues what it yields, then
waits for the store's wake-up (or a poll of `poll_s`, so a lost wake-up costs latency,
never a hang) and reads on, until the generation's `finish` went out. It reads only when
the stream's queue has room, so a slow client holds back its own reads, not the generation.

What it decides is the core's (`core/resume.py`: `judge`, `Tail`); what it cannot serve
ends it with a refusal (an `error` without `seq`): the resume's reason, `resume_trimmed` at
a gap, `resume_expired` when the log went meanwhile, `resume_owner_lost` once everything
the lost owner logged was sent.

Memory: one page (`PAGE` frames) at a time, plus the connection's bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from wsgate.core.errors import ResumeExpired, ResumeOwnerLost, ResumeTrimmed, WsgateError
from wsgate.core.frames import StreamResumed, encode_frame
from wsgate.core.resume import Tail, judge
from wsgate.core.session import Action
from wsgate.core.store import Page, Store
from wsgate.gateway.ports import FollowerHost
from wsgate.log import get_logger

log = get_logger("wsgate.gateway")

PAGE = 256
"""Frames read from the store at a time."""
FIRST_WAIT_S = 0.05
"""The first wait for a wake-up, while the watch may not have reached the owner."""
BEGIN_GRACE_S = 2.0
"""A keyed retry may find the key bound before its holder's record is written (a claim is
two writes in Redis): how long it waits for the record before `unknown_message`."""


@dataclass(frozen=True, slots=True)
class Follow:
    """What to follow: a generation, from after `last_seq`, as `stream_id` here."""

    stream_id: str
    message_id: str
    last_seq: int
    snapshot: bool = False
    epoch: str | None = None
    announce: bool = True  # answer with `stream.resumed` (a keyed retry does not)
    principal: str | None = None  # whose it must be (None: anyone's, e.g. in unit tests)


async def follow(
    host: FollowerHost,
    store: Store,
    what: Follow,
    apply: Callable[[list[Action]], None],
) -> None:
    """Run one follower stream until its generation's `finish` went out, or a refusal."""
    sid = what.stream_id
    unwatch: Callable[[], None] | None = None
    try:
        page = await _open(host, store, what, apply)
        if page is None:
            return  # the client had everything, its `finish` included
        wake = asyncio.Event()
        unwatch = store.watch(what.message_id, page.meta.owner, wake.set)
        # Until the owner knows of this watch (a round trip in Redis), frames it logs wake
        # nobody: the first wait is short.
        wait_s = min(FIRST_WAIT_S, store.limits.lease_s / 2)
        tail = Tail(sid, what.last_seq, fold_until=page.meta.top if what.snapshot else 0)
        while True:
            host.push(sid, tail.take(page.entries), ended=tail.done)
            if tail.done:
                return
            if tail.gap is not None:
                raise tail.gap
            if len(page.entries) < PAGE:  # caught up with the log
                _check_caught_up(page, lost=_lost_here(host, store, what.message_id, page))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait_s)
                wait_s = store.limits.lease_s / 2
            await host.room(sid)
            wake.clear()  # before the read: a wake-up during it is not lost
            page = await store.read(what.message_id, tail.next_seq - 1, PAGE)
            if page is None or page.meta.expired:
                raise ResumeExpired("the generation's log expired while it was followed")
    except WsgateError as exc:
        log.info("follower_refused", stream_id=sid, message_id=what.message_id, code=exc.code)
        host.refuse(sid, exc)
    finally:
        if unwatch is not None:
            unwatch()
        host.session.follower_ended(sid)


async def _open(
    host: FollowerHost, store: Store, what: Follow, apply: Callable[[list[Action]], None]
) -> Page | None:
    """The first page, the stream attached and announced; None if nothing is left to send."""
    page = await store.read(what.message_id, what.last_seq, PAGE)
    if page is None and not what.announce:  # a keyed retry: the record may be on its way
        page = await _await_begin(store, what)
    refusal = judge(page, what.last_seq, what.epoch, what.principal)
    if refusal is not None:
        raise refusal
    assert page is not None  # noqa: S101 - judge refuses a missing page
    meta = page.meta
    apply(host.session.attach(what.stream_id, what.message_id))
    if what.announce:
        resumed = StreamResumed(
            what.stream_id, what.message_id, meta.epoch, what.last_seq, meta.top, meta.state
        )
        host.control(encode_frame(resumed))
    log.info("stream_resumed", message_id=what.message_id, last_seq=what.last_seq)
    if meta.state == "ended" and what.last_seq >= meta.top:
        return None
    return page


async def _await_begin(store: Store, what: Follow) -> Page | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BEGIN_GRACE_S
    page = None
    while page is None and loop.time() < deadline:
        await asyncio.sleep(0.02)
        page = await store.read(what.message_id, what.last_seq, PAGE)
    return page


def _lost_here(host: FollowerHost, store: Store, message_id: str, page: Page) -> bool:
    """The record names this node as the owner, but nothing here generates it.

    An earlier process with the same `node_id` died, and its successor holds the lease.
    """
    meta = page.meta
    return meta.owner == store.node_id and not host.runs_here(message_id)


def _check_caught_up(page: Page, *, lost: bool) -> None:
    """Caught up: nothing more will come from an ended log or a lost owner."""
    meta = page.meta
    if meta.state == "ended":
        raise ResumeTrimmed("the log ends before the generation's finish")
    if not page.owner_alive or lost:
        raise ResumeOwnerLost("the node generating this message stopped")
