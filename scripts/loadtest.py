"""Load tester for wsgate: N connections x M streams of scripted mock answers, verified.

Drives a wsgate.v1 gateway (or the naive relay, which speaks the same frames) at
`ws://127.0.0.1:PORT/v1/ws`, or with `--direct BASE_URL` reads the mock provider's OpenAI
SSE itself over aiohttp: the floor every gateway is compared with. Loopback only; it stops
by itself after `--duration` seconds (or `--count` streams) plus at most `--drain-s`.

**Load model.** `--connections` WebSockets, opened evenly over `--ramp` seconds, each running
`--streams-per-conn` stream *slots*. A slot runs one stream after another. Every stream's
answer is a mock script in its last user message (`protocol/MOCK.md`): `words` generated
words (from a pool of 64 seeds), one chunk per word, first token after `ttft_ms`, then
`tokens_per_s`. With a rate, a slot's streams follow a fixed schedule (stream j is due at
the slot's start + j x (expected duration + think time)): an open-loop load. With
`--rate 0` (burst) the mock writes as fast as it can and a slot starts its next stream as
soon as the previous one ends. Stream starts are timer callbacks on the event loop's one
timer heap; tokens are paced by the mock's single timer, never by the load tester.

**Coordinated omission.** Latency is measured against when a token *should* have arrived,
never against when the tester happened to ask: a backed-up system cannot hide its delay by
slowing the tester down. TTFT and end-to-end time count from the stream's *scheduled*
start, not its actual send (a start that had to wait for its slot's previous stream, or for
a reconnect, is still measured from its schedule: `late_starts` counts them). Token latency
is `receive time - due time`, where the due time of content chunk k is the mock's own
schedule: `arrival + ttft_ms/1000 + k/tokens_per_s`. The mock's arrival time comes from its
request records (`GET /mock/requests`, matched by each stream's `tag`; `time.monotonic()`
is CLOCK_MONOTONIC, shared by processes on one machine), read once at the end when
`--mock-url` (or `--direct`) names the mock. Without a record, the scheduled start stands
in for the arrival (conservative: it adds the request's way to the mock). The count of each
anchor is reported. The mock releases tokens within 1 ms of their due time, so about a
millisecond of timer jitter is in every figure, the direct floor included: compare targets
by what they add over `--direct`; token latency is therefore signed (a token released a
little early shows as early, not as 0, so the floor is not biased). HDR's own
`record_corrected_value` is not used: the schedule is known exactly, so no interval has to
be guessed. The inter-token gap is the time between the arrivals of consecutive chunks of a
stream (tokens covered by one coalesced frame arrive together: gap 0, then one long gap);
`gap excess` is that gap minus the scheduled 1/rate (signed too). `--warmup S` leaves out
of the latencies every token due in the first S seconds, and the TTFT, end-to-end and
cancel times of streams scheduled then (connection set-up); every stream is still verified.

**Correctness.** Every stream that finished `stop` must carry exactly its script's text
(the concatenation of `delta.text` in `seq` order; coalesced frames cover `first_seq`..`seq`);
a cancelled, dropped or failed stream must carry a prefix of it. `seq` gaps, duplicates,
frames after `finish` and outcomes other than the expected one (a fault script must end
with its error code) are counted. `ok` in the result means none of these happened.

**Unhappy paths** (fractions, combinable): `--cancel` streams cancelled after a random
number of tokens (0 = before the first); `--drop` connections aborted without a close at a
random moment, then reopened; `--slow` connections that stop reading for `--slow-pause-ms`
every `--slow-every-ms` (their latencies are reported apart); `--oversized` starts larger
than the gateway's `max_frame_bytes` (expect `frame_too_large`); `--fault` upstream faults
by script: HTTP 500, HTTP 429, a mid-stream error event, a truncated stream. With
`--direct`, connection drops, slow readers and oversized starts do not apply.

`--options JSON` adds start options to every `start` (e.g. a buffering mode). Output: a
table (default), `--json`, `--html FILE` (HDR percentile plots and throughput over time,
inline SVG). Exit status 0 when every check passed, 1 otherwise, 2 on usage.
API: `await run(LoadConfig(...)) -> Result`; `main(argv) -> int`.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import gc
import math
import random
import re
import secrets
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

try:
    import _common
except ImportError:  # loaded by path from elsewhere (e.g. a `wsgate loadtest` command)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common

from wsgate.mock.script import generate_text

_WORD_CHUNK = re.compile(r"\s*\S+|\s+")  # protocol/MOCK.md, "Chunking": "word"
_SEED_POOL = 64
_DEFAULT_MAX_FRAME = 1_048_576
_LATE_S = 0.005
HIST_NAMES = (
    "ttft",
    "token",
    "gap",
    "gap_excess",
    "e2e",
    "cancel",
    "cancel_upstream",
    "drop_upstream",
)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load test; every bound is checked by `validate`."""

    url: str = "ws://127.0.0.1:8080/v1/ws"
    direct: str | None = None
    mock_url: str | None = None
    connections: int = 10
    streams_per_connection: int = 10
    tokens_per_s: float = 20.0
    ttft_ms: float = 100.0
    words: int = 60
    duration_s: float = 10.0
    max_streams: int | None = None
    ramp_s: float = 1.0
    warmup_s: float = 0.0
    think_ms: float | None = None
    cancel_fraction: float = 0.0
    drop_fraction: float = 0.0
    slow_fraction: float = 0.0
    oversized_fraction: float = 0.0
    fault_fraction: float = 0.0
    slow_pause_ms: float = 200.0
    slow_every_ms: float = 500.0
    drain_s: float = 30.0
    seed: int = 1
    model: str = "mock"
    start_options: dict[str, Any] | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError for a target off loopback or a bound out of range."""
        _common.require_loopback(self.direct or self.url)
        if self.mock_url:
            _common.require_loopback(self.mock_url)
        checks = {
            "connections must be 1..20000": 1 <= self.connections <= 20_000,
            "streams per connection must be 1..1000": 1 <= self.streams_per_connection <= 1000,
            "duration must be 0..3600 s": 0 < self.duration_s <= 3600,
            "drain must be 0..600 s": 0 <= self.drain_s <= 600,
            "words must be 1..100000": 1 <= self.words <= 100_000,
            "rate must be 0..1000000": 0 <= self.tokens_per_s <= 1_000_000,
            "ramp must be 0..duration": 0 <= self.ramp_s <= self.duration_s,
            "warmup must be 0..duration": 0 <= self.warmup_s < self.duration_s,
            "fractions must be 0..1": all(0 <= f <= 1 for f in self._fractions()),
            "cancel + fault + oversized must be <= 1": sum(self._fractions()[:3]) <= 1,
        }
        for message, passed in checks.items():
            if not passed:
                raise ValueError(message)

    def _fractions(self) -> tuple[float, ...]:
        return (
            self.cancel_fraction,
            self.fault_fraction,
            self.oversized_fraction,
            self.drop_fraction,
            self.slow_fraction,
        )

    @property
    def stream_seconds(self) -> float:
        """How long one stream should take by its script: first token to last."""
        paced = (self.words - 1) / self.tokens_per_s if self.tokens_per_s else 0.0
        return self.ttft_ms / 1000 + paced

    @property
    def period_s(self) -> float:
        """The interval between a slot's scheduled stream starts (paced load)."""
        think = self.think_ms / 1000 if self.think_ms is not None else None
        if think is None:
            think = max(0.05, 0.1 * self.stream_seconds)
        return self.stream_seconds + think


# --- what each stream must receive ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """A script's exact answer and the code-point offset where each paced chunk ends."""

    text: str
    ends: tuple[int, ...]

    @classmethod
    def of(cls, chunks: list[str]) -> Expected:
        """From the content chunks, in order."""
        ends, total = [], 0
        for chunk in chunks:
            total += len(chunk)
            ends.append(total)
        return cls("".join(chunks), tuple(ends))


def _event(text: str) -> str:
    delta = {"content": text}
    return orjson.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}).decode()


_ERROR_EVENT = orjson.dumps({"error": {"message": "overloaded", "type": "server_error"}}).decode()
# name -> (script keys, the error code a gateway must report, the chunks sent before it)
FAULTS: dict[str, tuple[dict[str, Any], str, list[str]]] = {
    "http_500": ({"status": 500}, "upstream_error", []),
    "http_429": ({"status": 429, "retry_after": 1}, "upstream_rate_limited", []),
    "error_event": (
        {"events": [_event("Partial"), _event(" answer"), _ERROR_EVENT], "done": False},
        "upstream_error",
        ["Partial", " answer"],
    ),
    "truncated": (
        {"events": [_event("Cut"), _event(" short")], "done": False},
        "upstream_protocol",
        ["Cut", " short"],
    ),
}


@dataclass(frozen=True, slots=True)
class Plan:
    """One stream's script, expected answer, acceptable outcomes and unhappy-path role."""

    kind: str
    script: dict[str, Any]
    expected: Expected
    outcomes: frozenset[str]
    cancel_after: int | None = None
    oversized: bool = False


class Planner:
    """Draws each stream's plan from the configured mix, reproducibly from `seed`."""

    def __init__(self, config: LoadConfig, rng: random.Random, *, direct: bool) -> None:
        self.config = config
        self.rng = rng
        self.oversized = 0.0 if direct else config.oversized_fraction
        self._texts: dict[int, Expected] = {}

    def plan(self, tag: str) -> Plan:
        """The next stream's plan; `tag` marks its mock request record."""
        c, draw = self.config, self.rng.random()
        pacing = {"ttft_ms": c.ttft_ms, "tokens_per_s": c.tokens_per_s, "tag": tag}
        if draw < c.fault_fraction:
            name = self.rng.choice(sorted(FAULTS))
            keys, code, chunks = FAULTS[name]
            outcome = frozenset({f"error:{code}"})
            return Plan(f"fault:{name}", {**keys, **pacing}, Expected.of(chunks), outcome)
        seed = self.rng.randrange(_SEED_POOL)
        script = {"words": c.words, "seed": seed, **pacing}
        expected = self._expected(seed)
        draw -= c.fault_fraction
        if draw < c.cancel_fraction:
            after = self.rng.randrange(c.words)
            return Plan("cancel", script, expected, frozenset({"cancelled", "stop"}), after)
        draw -= c.cancel_fraction
        if draw < self.oversized:
            # Refused by a gateway; a relay without limits forwards it, and the mock's 1 MiB
            # body limit answers 413.
            outcomes = frozenset(
                {
                    "refused:frame_too_large",
                    "stop",
                    "error:upstream_error",
                    "error:upstream_rejected",
                }
            )
            return Plan("oversized", script, expected, outcomes, oversized=True)
        return Plan("normal", script, expected, frozenset({"stop"}))

    def _expected(self, seed: int) -> Expected:
        if seed not in self._texts:
            text = generate_text(self.config.words, seed)
            self._texts[seed] = Expected.of(_WORD_CHUNK.findall(text))
        return self._texts[seed]


def request_body(config: LoadConfig, plan: Plan, max_frame_bytes: int = 0) -> dict[str, Any]:
    """The chat request: the script as the last user message, padding in a system one."""
    messages: list[dict[str, Any]] = []
    if plan.oversized:
        size = (max_frame_bytes or _DEFAULT_MAX_FRAME) + 1024
        messages.append({"role": "system", "content": "x" * size})
    messages.append({"role": "user", "content": orjson.dumps({"mock": plan.script}).decode()})
    return {"model": config.model, "messages": messages}


# --- one stream, as received ---------------------------------------------------------------


class Stream:
    """What arrived for one stream: text pieces, chunk arrival times, seq bookkeeping."""

    __slots__ = (
        "cancel_at",
        "chars",
        "conn",
        "dups",
        "end_at",
        "error",
        "first_at",
        "gaps",
        "intended",
        "next_seq",
        "outcome",
        "pieces",
        "plan",
        "recv",
        "sent_at",
        "sid",
        "slot",
        "slow",
        "tag",
    )

    def __init__(self, sid: str, tag: str, plan: Plan, slot: Slot, intended: float) -> None:
        self.sid, self.tag, self.plan, self.slot, self.intended = sid, tag, plan, slot, intended
        self.conn: Conn | None = None
        self.slow = False
        self.sent_at = self.first_at = self.end_at = self.cancel_at = 0.0
        self.pieces: list[str] = []
        self.chars = 0
        self.recv = array.array("d")
        self.next_seq = 1
        self.gaps = self.dups = 0
        self.error = ""
        self.outcome = ""

    def text(self, piece: str, now: float) -> int:
        """Take one text piece; return how many expected chunks it completed."""
        if not self.first_at:
            self.first_at = now
        self.pieces.append(piece)
        self.chars += len(piece)
        ends, recv, before = self.plan.expected.ends, self.recv, len(self.recv)
        while len(recv) < len(ends) and ends[len(recv)] <= self.chars:
            recv.append(now)
        return len(recv) - before

    def seq(self, first: int, last: int) -> None:
        """Account for a frame covering `first`..`last` (a coalesced frame covers several)."""
        if first > self.next_seq:
            self.gaps += first - self.next_seq
        elif first < self.next_seq:
            self.dups += min(last, self.next_seq - 1) - first + 1
        self.next_seq = max(self.next_seq, last + 1)

    def cancel_due(self) -> bool:
        """Whether this stream's plan says to cancel it now."""
        after = self.plan.cancel_after
        return after is not None and not self.cancel_at and len(self.recv) >= after


class Slot:
    """A stream slot of a connection: runs one stream after another on a schedule."""

    __slots__ = ("conn", "next_at")

    def __init__(self, conn: int, first_at: float) -> None:
        self.conn = conn
        self.next_at = first_at


def _outcome(reason: str, error: str) -> str:
    """A finish reason, with the preceding error's code when the stream failed."""
    return f"{reason}:{error}" if reason in ("error", "timeout") else reason


# --- one WebSocket connection ----------------------------------------------------------------


class Conn:
    """One WebSocket of the load: starts and cancels streams, routes frames to them."""

    def __init__(self, runner: Runner, index: int, *, slow: bool) -> None:
        self.runner, self.index, self.slow = runner, index, slow
        self.ws: _common.RawWebSocket | None = None
        self.streams: dict[str, Stream] = {}
        self.waiting: list[Stream] = []
        # A frame over max_frame_bytes is refused before its stream_id is read: the refusal
        # names no stream, and answers the oldest oversized start still waiting for one.
        self.oversized: deque[Stream] = deque()
        self.max_frame_bytes = _DEFAULT_MAX_FRAME
        self.ready = asyncio.Event()
        self.dropping = False
        self._timer: asyncio.TimerHandle | None = None

    async def connect(self) -> None:
        """Open the connection (retrying while the run lasts), then start waiting streams."""
        runner = self.runner
        while not runner.closing:
            try:
                ws = await _common.open_websocket(runner.config.url, self.on_message)
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
            runner.end(stream, _outcome(msg["reason"], stream.error), now)

    def _unrouted(self, msg: dict[str, Any], sid: str | None) -> None:
        kind = msg.get("type")
        if sid is not None:
            if msg.get("code") != "unknown_stream" and kind != "telemetry":
                self.runner.checks["frames_after_finish"] += 1
        elif kind == "ready":
            limits = msg.get("limits") or {}
            self.max_frame_bytes = limits.get("max_frame_bytes", _DEFAULT_MAX_FRAME)
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


# --- results -------------------------------------------------------------------------------


class Tally:
    """Verifies each ended stream and records its latencies."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.hists = _hists()
        self.slow_hists = _hists()
        self.outcomes: Counter[str] = Counter()
        self.checks: Counter[str] = Counter()
        self.kept: list[Stream] = []
        self.measure_from = 0.0

    def add(self, stream: Stream) -> None:
        """Check one ended stream; keep what the final latency pass needs."""
        self.outcomes[_category(stream.outcome)] += 1
        self._verify(stream)
        stream.pieces = []
        self._record(stream)
        if (self.config.tokens_per_s and len(stream.recv)) or stream.cancel_at:
            self.kept.append(stream)

    def _verify(self, stream: Stream) -> None:
        text, expected = "".join(stream.pieces), stream.plan.expected.text
        checks = self.checks
        if stream.outcome == "stop":
            checks["verified" if text == expected else "mismatches"] += 1
        elif not expected.startswith(text):
            checks["prefix_mismatches"] += 1
        allowed = stream.plan.outcomes | {"dropped", "unfinished"}
        if stream.outcome not in allowed:
            checks["unexpected_outcomes"] += 1
            checks[f"unexpected:{stream.plan.kind}->{stream.outcome}"] += 1
        checks["seq_gaps"] += stream.gaps
        checks["seq_duplicates"] += stream.dups

    def _record(self, stream: Stream) -> None:
        hists = self.slow_hists if stream.slow else self.hists
        if stream.intended >= self.measure_from:
            if stream.first_at:
                hists["ttft"].record(stream.first_at - stream.intended)
            if stream.outcome == "stop":
                hists["e2e"].record(stream.end_at - stream.intended)
            if stream.outcome == "cancelled" and stream.cancel_at:
                hists["cancel"].record(stream.end_at - stream.cancel_at)
        if not self.config.tokens_per_s:
            return  # in a burst every gap is ~0: nothing to learn, and costly to record
        step = 1 / self.config.tokens_per_s
        recv = stream.recv
        for i in range(max(1, self._first_measured(stream)), len(recv)):
            gap = recv[i] - recv[i - 1]
            hists["gap"].record(gap)
            hists["gap_excess"].record(gap - step)

    def anchor(self, records: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Token latency and upstream close times, from the mock's records when present."""
        anchors: Counter[str] = Counter()
        ttft, rate = self.config.ttft_ms / 1000, self.config.tokens_per_s
        for stream in self.kept:
            record = records.get(stream.tag)
            hists = self.slow_hists if stream.slow else self.hists
            if rate and len(stream.recv):
                anchors["mock" if record else "client"] += 1
                start = record["started_at"] if record else stream.intended
                token, recv = hists["token"], stream.recv
                for k in range(self._first_measured(stream), len(recv)):
                    token.record(recv[k] - (start + ttft + k / rate))
            if stream.cancel_at and record is not None:
                self._upstream_close(stream, record, hists)
        return dict(anchors)

    def _first_measured(self, stream: Stream) -> int:
        """The first token due after the warm-up (by the stream's own schedule)."""
        ahead = self.measure_from - stream.intended - self.config.ttft_ms / 1000
        return max(0, math.ceil(ahead * self.config.tokens_per_s)) if ahead > 0 else 0

    def _upstream_close(
        self, stream: Stream, record: dict[str, Any], hists: dict[str, _common.Hist]
    ) -> None:
        closed = record.get("disconnected_at")
        if closed is not None:
            if stream.intended < self.measure_from:
                return
            name = "drop_upstream" if stream.outcome == "dropped" else "cancel_upstream"
            hists[name].record(closed - stream.cancel_at)
        elif record.get("completed_at") is None and record.get("status") == 200:
            self.checks["upstream_left_open"] += 1


def _hists() -> dict[str, _common.Hist]:
    # Token latency and gap excess are signed: the mock may release a token up to ~1 ms
    # before its schedule (timer granularity), and clamping that to 0 would bias the floor.
    signed = {"token": 0.010, "gap_excess": 0.010}
    return {name: _common.Hist(signed.get(name, 0.0)) for name in HIST_NAMES}


def _category(outcome: str) -> str:
    head = outcome.split(":", 1)[0]
    names = {"stop": "completed", "error": "failed", "timeout": "failed", "unstarted": "unfinished"}
    return names.get(head, head)


@dataclass
class Result:
    """Everything a run measured; `to_dict()` is the `--json` document."""

    target: str
    url: str
    config: dict[str, Any]
    elapsed_s: float
    streams: dict[str, int]
    checks: dict[str, int]
    errors: dict[str, int]
    throughput: dict[str, float]
    latency_ms: dict[str, dict[str, float | int | None]]
    slow_latency_ms: dict[str, dict[str, float | int | None]]
    anchors: dict[str, int]
    timeline: list[dict[str, float]]
    curves: dict[str, list[tuple[float, float]]]
    gateway_stats: dict[str, Any] | None = None
    loadgen_cpu_s: float = 0.0
    ok: bool = field(default=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


CHECK_KEYS = (
    "verified",
    "mismatches",
    "prefix_mismatches",
    "seq_gaps",
    "seq_duplicates",
    "unexpected_outcomes",
    "frames_after_finish",
    "upstream_left_open",
)
_MUST_BE_ZERO = CHECK_KEYS[1:]


# --- the run ---------------------------------------------------------------------------------


class Runner:
    """Schedules slots, owns the connections (or the direct HTTP session) and the counters."""

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
        self.session: aiohttp.ClientSession | None = None
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

    def _at(self, when: float, callback: Any, *args: Any) -> None:
        delay = max(0.0, when - time.monotonic())
        asyncio.get_running_loop().call_later(delay, callback, *args)

    def spawn(self, coro: Any) -> None:
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
        if conn is None:
            self.spawn(self.direct_stream(stream))
        else:
            conn.start(stream)

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

    # --- direct SSE ------------------------------------------------------------------------

    async def direct_stream(self, stream: Stream) -> None:
        """Read one answer straight from the mock's SSE: the floor reference."""
        assert self.session is not None  # noqa: S101 - set before use
        body = {**request_body(self.config, stream.plan), "stream": True}
        body["stream_options"] = {"include_usage": True}
        stream.sent_at = time.monotonic()
        try:
            async with self.session.post(
                f"{self.direct}/chat/completions",
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            ) as resp:
                if resp.status != 200:
                    outcome = f"error:{_status_code(resp.status)}"
                else:
                    outcome = await self._read_sse(stream, resp)
        except aiohttp.ClientError:
            outcome = "error:upstream_unavailable"
        if outcome.startswith("error:"):
            self.errors[outcome[6:]] += 1
        self.end(stream, outcome, time.monotonic())

    async def _read_sse(self, stream: Stream, resp: aiohttp.ClientResponse) -> str:
        buf, reason, done, failed = b"", "", False, False
        if stream.cancel_due():
            stream.cancel_at = time.monotonic()
            return "cancelled"
        async for data in resp.content.iter_any():
            now = time.monotonic()
            self.bytes += len(data)
            self.last_at = now
            events = (buf + data).split(b"\n\n")
            buf = events.pop()
            for event in events:
                if event == b"data: [DONE]":
                    done = True
                    continue
                chunk = orjson.loads(event[6:])
                failed = failed or "error" in chunk
                reason = self._take_chunk(stream, chunk, now) or reason
            if stream.cancel_due():
                stream.cancel_at = time.monotonic()
                return "cancelled"
        if failed:
            return "error:upstream_error"
        return reason if done and reason else "error:upstream_protocol"

    def _take_chunk(self, stream: Stream, chunk: dict[str, Any], now: float) -> str:
        reason = ""
        for choice in chunk.get("choices") or ():
            text = choice.get("delta", {}).get("content")
            if text:
                self.frames += 1
                self.delivered(stream.text(text, now))
            reason = choice.get("finish_reason") or reason
        return reason

    # --- the whole run ---------------------------------------------------------------------

    async def run(self) -> Result:
        """Run the load, wait for it to end (bounded), close everything, collect results."""
        c = self.config
        cpu0 = time.process_time()
        if self.direct is not None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
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
        if self.session is not None:
            await self.session.close()
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
                host, port = _common.require_loopback(self.config.url)
                stats = await _get_json(session, f"http://{host}:{port}/stats")
        return records, stats if isinstance(stats, dict) else None

    async def _ticker(self) -> None:
        last = (0, 0, 0)
        while True:
            await asyncio.sleep(1.0 - (time.monotonic() - self.t0) % 1.0)
            now = (self.tokens, self.frames, self.bytes)
            row = {
                "t": round(time.monotonic() - self.t0, 1),
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
        bad = sum(self.checks[key] for key in _MUST_BE_ZERO)
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
        ok = not any(checks[key] for key in _MUST_BE_ZERO) and not tally.outcomes["unfinished"]
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


def _status_code(status: int) -> str:
    """The gateway's error code for a provider's HTTP status (PROTOCOL.md §9.2)."""
    if status == 429:
        return "upstream_rate_limited"
    return "upstream_error" if status >= 500 else "upstream_rejected"


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


# --- the command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    d = LoadConfig()
    p = argparse.ArgumentParser(
        prog="loadtest",
        description="Load-test a wsgate.v1 gateway with scripted mock streams.",
        epilog="Latency, correctness and the unhappy paths are explained in the module "
        "docstring (python -c 'import loadtest; help(loadtest)').",
    )
    add = p.add_argument
    add("url", nargs="?", default=d.url, help="gateway WebSocket URL (loopback)")
    add("--direct", metavar="BASE_URL", help="read the mock's SSE directly (the floor)")
    add("--mock-url", metavar="BASE_URL", help="the gateway's mock: exact token schedules")
    add("-c", "--connections", type=int, default=d.connections)
    add("-s", "--streams-per-conn", type=int, default=d.streams_per_connection)
    add("--rate", type=float, default=d.tokens_per_s, help="tokens/s per stream; 0=burst")
    add("--ttft-ms", type=float, default=d.ttft_ms)
    add("--words", type=int, default=d.words, help="tokens (words) per answer")
    add("--duration", type=float, default=d.duration_s, help="seconds of new streams")
    add("--count", type=int, help="stop starting streams after this many")
    add("--ramp", type=float, default=d.ramp_s, help="seconds to open everything")
    add("--warmup", type=float, default=d.warmup_s, help="seconds of tokens not measured")
    add("--think-ms", type=float, help="pause between a slot's streams (default: auto)")
    add("--cancel", type=float, default=0.0, help="fraction of streams cancelled")
    add("--drop", type=float, default=0.0, help="fraction of connections dropped once")
    add("--slow", type=float, default=0.0, help="fraction of connections reading slowly")
    add("--oversized", type=float, default=0.0, help="fraction of starts over max_frame_bytes")
    add("--fault", type=float, default=0.0, help="fraction of streams with an upstream fault")
    add("--slow-pause-ms", type=float, default=d.slow_pause_ms)
    add("--slow-every-ms", type=float, default=d.slow_every_ms)
    add("--drain-s", type=float, default=d.drain_s, help="wait this long for the end")
    add("--seed", type=int, default=d.seed)
    add("--model", default=d.model)
    add("--options", type=orjson.loads, help='start options as JSON, e.g. {"buffering":"word"}')
    add("--json", action="store_true", help="print the result as JSON")
    add("--html", metavar="FILE", help="write an HTML report with plots")
    add("-q", "--quiet", action="store_true", help="no progress line")
    return p


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """The `LoadConfig` the parsed command line describes."""
    return LoadConfig(
        url=args.url,
        direct=args.direct,
        mock_url=args.mock_url,
        connections=args.connections,
        streams_per_connection=args.streams_per_conn,
        tokens_per_s=args.rate,
        ttft_ms=args.ttft_ms,
        words=args.words,
        duration_s=args.duration,
        max_streams=args.count,
        ramp_s=args.ramp,
        warmup_s=args.warmup,
        think_ms=args.think_ms,
        cancel_fraction=args.cancel,
        drop_fraction=args.drop,
        slow_fraction=args.slow,
        oversized_fraction=args.oversized,
        fault_fraction=args.fault,
        slow_pause_ms=args.slow_pause_ms,
        slow_every_ms=args.slow_every_ms,
        drain_s=args.drain_s,
        seed=args.seed,
        model=args.model,
        start_options=args.options,
        progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; 0 when every check passed, 1 when one failed, 2 on usage."""
    args = _parser().parse_args(argv)
    config = config_from_args(args)
    try:
        config.validate()
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    _common.raise_nofile()
    # The tester's garbage is acyclic; a cyclic collection over a heap of kept streams would
    # stall it for milliseconds and show up as latency of the system under test.
    gc.collect()
    gc.freeze()
    gc.disable()
    result = uvloop.run(run(config))
    gc.enable()
    data = result.to_dict()
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(_common.format_table(data))
    if args.html:
        Path(args.html).write_text(_common.format_html(data), encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
