"""One WebSocket connection of a load: starts and cancels streams, routes frames to them.

Owns the client side of wsgate.v1 that the load needs: connect (retrying while the run
lasts) and wait for `ready` (its `max_frame_bytes` sizes the oversized starts), `start` and
`cancel`, routing each gateway frame to its `Stream` from `data_received` (no await per
frame), refusals, dropping the TCP connection on purpose, and a slow reader's
pause/resume of the transport. The run's counters live on the `RunHost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import orjson

from wsgate.loadgen.config import DEFAULT_MAX_FRAME
from wsgate.loadgen.host import RunHost
from wsgate.loadgen.plan import request_body
from wsgate.loadgen.stream import Stream, finish_outcome
from wsgate.loadgen.websocket import RawWebSocket, open_websocket


class Conn:
    """One WebSocket of the load: starts and cancels streams, routes frames to them."""

    def __init__(self, runner: RunHost, index: int, *, slow: bool) -> None:
        self.runner, self.index, self.slow = runner, index, slow
        self.ws: RawWebSocket | None = None
        self.streams: dict[str, Stream] = {}
        self.waiting: list[Stream] = []
        # A frame over max_frame_bytes is refused before its stream_id is read: the refusal
        # names no stream, and answers the oldest oversized start still waiting for one.
        self.oversized: deque[Stream] = deque()
        self.max_frame_bytes = DEFAULT_MAX_FRAME
        self.ready = asyncio.Event()
        self.dropping = False
        self._timer: asyncio.TimerHandle | None = None

    async def connect(self) -> None:
        """Open the connection (retrying while the run lasts), then start waiting streams."""
        runner = self.runner
        while not runner.closing:
            try:
                ws = await open_websocket(runner.config.url, self.on_message)
            except ConnectionError:
                runner.errors["connect_failed"] += 1
                await asyncio.sleep(0.5)
                continue
            ws.on_close = self.on_close
            # Starts wait for `ready`: its max_frame_bytes sizes the oversized ones.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), 5.0)
            self.ws, self.dropping = ws, False
            if self.slow:
                self._pause()
            waiting, self.waiting = self.waiting, []
            for stream in waiting:
                self.start(stream)
            return

    def start(self, stream: Stream) -> None:
        """Send the stream's `start` (or hold it until the connection is open)."""
        if self.ws is None:
            self.waiting.append(stream)
            return
        stream.conn, stream.slow = self, self.slow
        self.streams[stream.sid] = stream
        request = request_body(self.runner.config, stream.plan, self.max_frame_bytes)
        frame = {"type": "start", "stream_id": stream.sid, "request": request}
        if self.runner.config.start_options:
            frame["options"] = self.runner.config.start_options
        stream.sent_at = time.monotonic()
        self.ws.send_text(orjson.dumps(frame))
        if stream.plan.oversized:
            self.oversized.append(stream)
        if stream.cancel_due():
            self.cancel(stream)

    def cancel(self, stream: Stream) -> None:
        """Send `cancel`; the clock for cancel latency starts now."""
        stream.cancel_at = time.monotonic()
        if self.ws is not None:
            self.ws.send_text(orjson.dumps({"type": "cancel", "stream_id": stream.sid}))

    def drop(self) -> None:
        """Abort the TCP connection mid-stream, as a client that vanished would."""
        if self.ws is None or self.runner.closing:
            return
        now = time.monotonic()
        for stream in self.streams.values():
            stream.cancel_at = stream.cancel_at or now
        self.dropping = True
        self.ws.abort()

    def on_message(self, payload: bytes, now: float) -> None:
        """Route one gateway frame (called from `data_received`, no await)."""
        runner = self.runner
        runner.frames += 1
        runner.bytes += len(payload)
        runner.last_at = now
        msg = orjson.loads(payload)
        sid = msg.get("stream_id")
        stream = self.streams.get(sid) if sid is not None else None
        if stream is None:
            self._unrouted(msg, sid)
            return
        seq, kind = msg.get("seq"), msg["type"]
        if seq is None:  # a refusal, or telemetry
            code = msg.get("code")
            if kind == "error" and code != "unknown_stream":  # a cancel crossing a finish
                runner.errors[code] += 1
                runner.end(stream, f"refused:{code}", now)
            return
        stream.seq(msg.get("first_seq", seq), seq)
        if kind == "delta.text":
            runner.delivered(stream.text(msg["text"], now))
            if stream.cancel_due():
                self.cancel(stream)
        elif kind == "error":
            stream.error = msg["code"]
            runner.errors[stream.error] += 1
        elif kind == "finish":
            runner.end(stream, finish_outcome(msg["reason"], stream.error), now)

    def _unrouted(self, msg: dict[str, Any], sid: str | None) -> None:
        kind = msg.get("type")
        if sid is not None:
            if msg.get("code") != "unknown_stream" and kind != "telemetry":
                self.runner.checks["frames_after_finish"] += 1
        elif kind == "ready":
            limits = msg.get("limits") or {}
            self.max_frame_bytes = limits.get("max_frame_bytes", DEFAULT_MAX_FRAME)
            self.ready.set()
        elif kind == "error":
            code = msg.get("code", "?")
            self.runner.errors[code] += 1
            if code == "frame_too_large":
                self._refuse_oversized()

    def _refuse_oversized(self) -> None:
        while self.oversized:
            stream = self.oversized.popleft()
            if not stream.outcome and stream.next_seq == 1:
                self.runner.end(stream, "refused:frame_too_large", time.monotonic())
                return

    def on_close(self, reason: str) -> None:
        """End the connection's streams (dropped or lost), then reconnect."""
        self.ws = None
        self.ready.clear()
        if self._timer is not None:
            self._timer.cancel()
        runner = self.runner
        outcome = "dropped" if self.dropping else f"lost:{reason}"
        if not self.dropping and not runner.closing:
            runner.errors[reason] += 1
        now = time.monotonic()
        for stream in list(self.streams.values()):
            runner.end(stream, outcome, now)
        self.streams.clear()
        self.oversized.clear()
        if not runner.closing:
            runner.spawn(self.connect())

    def _pause(self) -> None:
        if self.ws is None or self.ws.transport is None:
            return
        config = self.runner.config
        self.ws.transport.pause_reading()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(config.slow_pause_ms / 1000, self._resume)

    def _resume(self) -> None:
        if self.ws is None or self.ws.transport is None:
            return
        config = self.runner.config
        self.ws.transport.resume_reading()
        rest = max(config.slow_every_ms - config.slow_pause_ms, 1.0) / 1000
        self._timer = asyncio.get_running_loop().call_later(rest, self._pause)
