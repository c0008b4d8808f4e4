"""The run of a load test: scheduling streams on the loop's timers, the counters, `run`.

Owns `Runner`: it creates the connections (or the `DirectReader`) and the stream slots, puts
every slot's first start on the event loop's one timer heap, launches each stream when due
(an open-loop schedule with a rate, back to back in a burst), ends and tallies streams,
prints a progress line once a second, waits for the run to end within `drain_s`, reads the
mock's request records and the gateway's `/stats`, and builds the `Result`. Loopback only.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

import aiohttp
import orjson

from wsgate.loadgen.config import LoadConfig, require_loopback
from wsgate.loadgen.conn import Conn
from wsgate.loadgen.direct import DirectReader
from wsgate.loadgen.plan import Planner
from wsgate.loadgen.stream import Slot, Stream
from wsgate.loadgen.tally import CHECK_KEYS, MUST_BE_ZERO, Result, Tally

# A paced start later than this after its schedule counts as late (`late_starts`).
_LATE_S = 0.005


class Runner:
    """Schedules slots, owns the connections (or the direct reader) and the counters."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.direct = config.direct.rstrip("/") if config.direct else None
        self.rng = random.Random(config.seed)
        self.planner = Planner(config, self.rng, direct=self.direct is not None)
        self.tally = Tally(config)
        self.run_id = f"lt{secrets.token_hex(3)}"
        self.conns: list[Conn] = []
        self.live: dict[str, Stream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.errors: Counter[str] = Counter()
        self.checks = self.tally.checks
        self.reader: DirectReader | None = None
        self.idle = asyncio.Event()
        self.closing = False
        self.active_slots = self.launched = self.late_starts = 0
        self.frames = self.bytes = self.tokens = 0
        self.t0 = self.stop_at = self.last_at = 0.0
        self.timeline: list[dict[str, float]] = []

    # --- scheduling ------------------------------------------------------------------------

    def setup(self) -> None:
        """Create connections and slots, and put their first events on the loop's timers."""
        c = self.config
        self.t0 = time.monotonic() + 0.02
        self.stop_at = self.t0 + c.duration_s
        self.tally.measure_from = self.t0 + c.warmup_s
        total = c.connections * c.streams_per_connection
        self.active_slots = total
        for ci in range(c.connections):
            open_at = self.t0 + c.ramp_s * ci / c.connections
            if self.direct is None:
                self._add_conn(ci, open_at)
            for si in range(c.streams_per_connection):
                first = self.t0 + c.ramp_s * (ci * c.streams_per_connection + si) / total
                self._at(first, self.launch, Slot(ci, first))

    def _add_conn(self, index: int, open_at: float) -> None:
        c = self.config
        conn = Conn(self, index, slow=self.rng.random() < c.slow_fraction)
        self.conns.append(conn)
        self._at(open_at, lambda: self.spawn(conn.connect()))
        if self.rng.random() < c.drop_fraction and self.stop_at - open_at > 0.2:
            self._at(self.rng.uniform(open_at + 0.2, self.stop_at), conn.drop)

    def _at(self, when: float, callback: Callable[..., object], *args: object) -> None:
        delay = max(0.0, when - time.monotonic())
        asyncio.get_running_loop().call_later(delay, callback, *args)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine as a task the run waits for or cancels at its end."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def launch(self, slot: Slot) -> None:
        """Start the slot's next stream, or retire the slot once the run is over."""
        c, now = self.config, time.monotonic()
        over = c.max_streams is not None and self.launched >= c.max_streams
        if self.closing or over or slot.next_at >= self.stop_at:
            self.active_slots -= 1
            self._check_idle()
            return
        self.launched += 1
        number = self.launched
        conn = self.conns[slot.conn] if self.conns else None
        tag = f"{self.run_id}-{number}"
        plan = self.planner.plan(tag)
        stream = Stream(f"s{number}", tag, plan, slot, slot.next_at)
        if c.tokens_per_s and now - slot.next_at > _LATE_S:
            self.late_starts += 1
        self.live[stream.sid] = stream
        if conn is not None:
            conn.start(stream)
        elif self.reader is not None:
            self.spawn(self.reader.stream(stream))

    def end(self, stream: Stream, outcome: str, now: float) -> None:
        """A stream ended: verify and record it, then schedule its slot's next stream."""
        if stream.outcome:
            return
        stream.outcome, stream.end_at = outcome, now
        if stream.conn is not None:
            stream.conn.streams.pop(stream.sid, None)
        self.live.pop(stream.sid, None)
        self.tally.add(stream)
        slot = stream.slot
        slot.next_at = slot.next_at + self.config.period_s if self.config.tokens_per_s else now
        self._at(slot.next_at, self.launch, slot)
        self._check_idle()

    def delivered(self, tokens: int) -> None:
        """Count expected chunks completed by a frame."""
        self.tokens += tokens

    def _check_idle(self) -> None:
        if self.active_slots <= 0 and not self.live:
            self.idle.set()

    # --- the whole run ---------------------------------------------------------------------

    async def run(self) -> Result:
        """Run the load, wait for it to end (bounded), close everything, collect results."""
        c = self.config
        cpu0 = time.process_time()
        if self.direct is not None:
            self.reader = DirectReader(self, self.direct)
        self.setup()
        ticker = asyncio.create_task(self._ticker())
        try:
            timeout = self.stop_at + c.drain_s - time.monotonic()
            async with asyncio.timeout(timeout):
                await self.idle.wait()
        except TimeoutError:
            pass
        finally:
            ticker.cancel()
        elapsed = time.monotonic() - self.t0
        await self._close()
        records, stats = await self._fetch_reports()
        anchors = self.tally.anchor(records)
        if self.reader is not None:
            await self.reader.close()
        return self._result(elapsed, anchors, stats, time.process_time() - cpu0)

    async def _close(self) -> None:
        self.closing = True
        now = time.monotonic()
        for stream in list(self.live.values()):
            self.end(stream, "unfinished", now)
        for conn in self.conns:
            if conn.ws is not None:
                conn.ws.close()
        closing = [conn.ws.closed for conn in self.conns if conn.ws is not None]
        if closing:
            await asyncio.wait(closing, timeout=1.0)
        for conn in self.conns:
            if conn.ws is not None:
                conn.ws.abort()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _fetch_reports(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        mock = self.direct or self.config.mock_url
        if self.tally.checks.get("verified", 0) < self.launched:
            await asyncio.sleep(0.3)  # let the mock see the last disconnects
        async with aiohttp.ClientSession() as session:
            records: dict[str, dict[str, Any]] = {}
            if mock:
                base = mock.rstrip("/").removesuffix("/v1")
                data = await _get_json(session, f"{base}/mock/requests")
                records = {r["tag"]: r for r in data or () if r.get("tag")}
            stats = None
            if self.direct is None:
                host, port = require_loopback(self.config.url)
                stats = await _get_json(session, f"http://{host}:{port}/stats")
        return records, stats if isinstance(stats, dict) else None

    async def _ticker(self) -> None:
        # One row per whole second since t0, counted by tick: a timer that wakes a hair
        # early (uvloop's are millisecond-grained) must not make a second row for a second.
        last = (0, 0, 0)
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, self.t0 + tick - time.monotonic()))
            now = (self.tokens, self.frames, self.bytes)
            row = {
                "t": float(tick),
                "deltas": now[0] - last[0],
                "frames": now[1] - last[1],
                "bytes": now[2] - last[2],
                "open": len(self.live),
            }
            self.timeline.append(row)
            last = now
            if self.config.progress:
                self._progress(row)

    def _progress(self, row: dict[str, float]) -> None:
        up = sum(1 for conn in self.conns if conn.ws is not None)
        conns = f"conns {up}/{len(self.conns)} " if self.conns else ""
        bad = sum(self.checks[key] for key in MUST_BE_ZERO)
        ended = sum(self.tally.outcomes.values())
        line = (
            f"[{row['t']:6.1f}s] {conns}open {row['open']} ended {ended}"
            f" | {row['deltas']:,.0f} deltas/s {row['bytes'] / 1e6:.2f} MB/s"
            f" | errors {sum(self.errors.values())} failed-checks {bad}"
        )
        tty = sys.stderr.isatty()
        if tty or int(row["t"]) % 5 == 0:
            print(f"\r{line}   " if tty else line, end="" if tty else "\n", file=sys.stderr)

    def _result(
        self, elapsed: float, anchors: dict[str, int], stats: dict[str, Any] | None, cpu: float
    ) -> Result:
        if self.config.progress and sys.stderr.isatty():
            print(file=sys.stderr)
        tally = self.tally
        checks = {key: tally.checks.get(key, 0) for key in CHECK_KEYS}
        checks.update({k: v for k, v in tally.checks.items() if k.startswith("unexpected:")})
        streams = {"started": self.launched, "late_starts": self.late_starts}
        streams.update(tally.outcomes)
        active = max(self.last_at - self.t0, 1e-9)
        ok = not any(checks[key] for key in MUST_BE_ZERO) and not tally.outcomes["unfinished"]
        return Result(
            target="direct" if self.direct else "gateway",
            url=self.direct or self.config.url,
            config=asdict(self.config),
            elapsed_s=round(elapsed, 3),
            streams=streams,
            checks=checks,
            errors=dict(self.errors),
            throughput=_throughput(self.tokens, self.frames, self.bytes, active),
            latency_ms={name: h.summary() for name, h in tally.hists.items()},
            slow_latency_ms={name: h.summary() for name, h in tally.slow_hists.items() if h.count},
            anchors=anchors,
            timeline=self.timeline,
            curves={name: h.curve() for name, h in tally.hists.items() if h.count},
            gateway_stats=stats,
            loadgen_cpu_s=round(cpu, 3),
            ok=ok,
        )


def _throughput(tokens: int, frames: int, size: int, active: float) -> dict[str, float]:
    return {
        "deltas": tokens,
        "frames": frames,
        "bytes": size,
        "active_s": round(active, 3),
        "deltas_per_s": round(tokens / active, 1),
        "frames_per_s": round(frames / active, 1),
        "bytes_per_s": round(size / active, 1),
    }


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                return None
            return orjson.loads(await resp.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
        return None


async def run(config: LoadConfig) -> Result:
    """Run one load test against `config.url` (or `config.direct`) and return its results."""
    config.validate()
    return await Runner(config).run()
