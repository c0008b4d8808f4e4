"""Benchmark suite: the issue-6 workloads against direct SSE, the naive relay and wsgate.

`make bench` (or `python scripts/bench.py [--quick]`) runs, in one go on this machine:

- targets: (a) `direct`: the load generator reads the mock's SSE itself (the floor);
  (b) `naive`: `scripts/naive_relay.py`; (c) `wsgate`: `wsgate serve` in front of the same
  mock, immediate buffering (it still merges text deltas that queue up, PROTOCOL.md §5.4);
  (d) `wsgate-debounce`: the same gateway with every stream started with
  `{"buffering": "debounce", "debounce_ms": 20}` (time-based coalescing; no knee search for
  it, since it holds text up to 20 ms by design); (e) `wsgate-redis`: wsgate with the Redis
  store (`WSGATE_STORE__KIND=redis`) on a private `redis-server` the bench starts
  (`wsgate.testing_redis`, never the one at 127.0.0.1:6379), pinned to the system under
  test's CPU and emptied before each start (no knee search for it either). Every other wsgate
  logs its streams into the memory store (the default): every stream is resumable.
- workloads (`loadtest.py` as a subprocess, `--json`): burst saturation; 100 streams x 50
  tok/s; 1000 x 20 tok/s; cancellation; a mix of unhappy paths; a knee search (the most
  streams at 20 tok/s whose p99 token latency stays under 5 ms, with no error).
- what a token costs (full and smoke; three interleaved rounds in full, medians shown): CPU
  per token of the relay and of wsgate under 200
  long 20 tok/s streams, in a window of steady load, next to the floors on the same core
  (`scripts/read_floor.py`: the same answers read by bare sockets, by bare sockets that
  write each read on to a socket of their own (the relay floor: one read and one write
  system call per token), by wsgate's push reader and by aiohttp's `readany()`, and
  dropped), and wsgate's own Python per token without sockets (`scripts/token_path.py`);
  wsgate with the Redis store beside it, with redis-server's own CPU and counters (`INFO`)
  over the same window.
- the resume store (`scripts/bench_resume.py`): resume latency (resume sent -> first
  replayed frame) of generations dropped mid-stream, on the memory store and on Redis; the
  bytes Redis holds per 1000 logged tokens.
- memory: RSS of a fresh gateway/relay process per idle connection and per open stream.
- with `--py-spy PATH`: py-spy samples a fresh wsgate under the burst and the 1000 x 20
  workloads; the report gets the top functions by self and inclusive time.

`--quick` (~1 min) shortens every workload and skips the unhappy mix, the knee search and
the cost rounds; `--smoke` (~70 s) only checks that the harness works (one cost round).

Separate processes: the mock (`wsgate mock-upstream`), the system under test, the load
generator. With two or more cores the system under test gets CPU 1 to itself and the mock and
the load generator share CPU 0 (`os.sched_setaffinity`). CPU seconds come from
`/proc/PID/stat`, RSS from `/proc/PID/status`. Each workload reports the CPU of the mock and
of the load generator too: when CPU 0 is saturated, the harness and not the target is the
limit, and the report says so. Writes `BENCHMARKS.md` (`--out`) with the tables, the machine
and the command, and prints the ratios wsgate / naive. Logs of the processes go to a
temporary directory, named at the end. Loopback only; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import uvloop

from wsgate.testing_redis import RedisServer, free_port

try:
    import _common
    import bench_resume
except ImportError:  # loaded by path from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common
    import bench_resume

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
SUT_CPU, LOAD_CPU = 1, 0
RATE = 20  # tokens/s per stream of the knee search and of the per-token cost
KNEE_P99_MS = 5.0
KNEE_SECONDS = 8.0  # one knee step
KNEE_RESOLUTION = 0.125  # the search ends when pass and failure are this close
KNEE_WORDS = int(RATE * KNEE_SECONDS)  # a stream outlasts the step: its slot starts no other
KNEE_MIN = 100
KNEE_RERUN = 20  # a failed step with p99 within this many times the bound is run again
COST_STREAMS = 200  # the per-token cost is measured at this load, well below saturation
TARGETS = ("direct", "naive", "wsgate", "wsgate-debounce", "wsgate-redis")
NO_KNEE = ("wsgate-debounce", "wsgate-redis")  # debounce holds text; Redis: cost rounds instead
DEFAULT_TARGETS = TARGETS
ANALYSIS = Path(__file__).with_name("bench_analysis.md")
# (d) of the issue: wsgate with time-based coalescing, once `options.buffering` is served.
DEBOUNCE_OPTIONS = '{"buffering": "debounce", "debounce_ms": 20}'


@dataclass(frozen=True, slots=True)
class Workload:
    """One load-generator run: a name, a description and loadtest.py arguments."""

    name: str
    title: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Profile:
    """The sizes of one bench mode (full, quick, smoke)."""

    workloads: tuple[Workload, ...]
    knee_steps: tuple[int, ...]  # (first, largest); () skips the search
    idle_connections: int
    open_streams: int
    cost: tuple[int, float] | None = None  # per-token cost: (streams, seconds); None skips it
    token_path_tokens: int = 50_000  # scripts/token_path.py's tokens, with the cost
    cost_rounds: int = 3  # interleaved rounds of every reader's cost (the medians are shown)
    resumes: tuple[int, int] | None = None  # resume latency: (resumes, per dropped connection)
    redis_log: tuple[int, int] | None = None  # Redis bytes per token: (streams, tokens each)


def _w(name: str, title: str, *args: object) -> Workload:
    return Workload(name, title, tuple(str(a) for a in args))


Shape = tuple[int, float, int, float]
"""A paced workload's streams, tokens/s per stream, tokens per answer, seconds of starts."""


def paced(name: str, title: str, shape: Shape, *extra: object) -> Workload:
    """A paced workload whose starts spread evenly over one stream period (the ramp).

    That first period is excluded from the latencies: it holds the connection set-up.
    """
    streams, rate, words, seconds = shape
    ttft = 50
    period = ttft / 1000 + (words - 1) / rate
    period += max(0.05, 0.1 * period)  # loadtest.py's automatic think time
    ramp = round(min(period, seconds / 2), 2)
    return _w(name, title, *_spread(streams), "--rate", rate, "--ttft-ms", ttft,
              "--words", words, "--duration", seconds, "--ramp", ramp, "--warmup", ramp,
              *extra)  # fmt: skip


def _spread(streams: int) -> tuple[str, ...]:
    """`-c` and `-s` for `streams`: ten connections when there are enough, <= 200 each."""
    conns = max(math.ceil(streams / 200), min(10, math.ceil(streams / 10)))
    return ("-c", str(conns), "-s", str(math.ceil(streams / conns)))


def _burst(seconds: float, words: int = 2000, conns: int = 10) -> Workload:
    return _w("burst", f"burst: {conns * 10} streams of {words} tokens, as fast as the mock writes",
              "-c", conns, "-s", 10, "--rate", 0, "--ttft-ms", 0, "--words", words,
              "--duration", seconds, "--ramp", 0.2)  # fmt: skip


def _profiles() -> dict[str, Profile]:
    unhappy = (
        "--cancel", 0.2, "--fault", 0.1, "--oversized", 0.02, "--drop", 0.2, "--slow", 0.2,
    )  # fmt: skip
    full = (
        paced("cancel", "200 streams x 20 tok/s, half cancelled at a random token",
              (200, 20, 60, 4), "--cancel", 0.5),
        _burst(6),
        paced("paced_100x50", "100 streams x 50 tok/s", (100, 50, 100, 8)),
        paced("paced_1000x20", "1000 streams x 20 tok/s", (1000, 20, 60, 10)),
        paced("unhappy", "100 streams x 50 tok/s: 20% cancelled, 10% upstream faults, 2% "
              "oversized; 20% of connections dropped, 20% slow readers", (100, 50, 50, 4),
              *unhappy),
    )  # fmt: skip
    quick = (
        paced("cancel", "200 streams x 20 tok/s (1 s answers), half cancelled", (200, 20, 20, 1.5),
              "--cancel", 0.5),
        _burst(1.5),
        paced("paced_100x50", "100 streams x 50 tok/s (1 s answers)", (100, 50, 50, 2.4)),
        paced("paced_1000x20", "1000 streams x 20 tok/s (1 s answers)", (1000, 20, 20, 2.4)),
    )  # fmt: skip
    smoke = (
        _burst(0.6, words=200, conns=2),
        paced("paced_100x50", "paced (smoke)", (4, 50, 10, 1.0), "--cancel", 0.3),
    )
    return {
        "full": Profile(
            full,
            (500, 4000),
            2000,
            2000,
            (COST_STREAMS, KNEE_SECONDS),
            resumes=(200, 20),
            redis_log=(100, 500),
        ),
        "quick": Profile(quick, (), 300, 300, resumes=(100, 20), redis_log=(100, 100)),
        "smoke": Profile(
            smoke,
            (),
            20,
            20,
            (4, 3.0),
            token_path_tokens=500,
            cost_rounds=1,
            resumes=(20, 10),
            redis_log=(10, 20),
        ),
    }


# --- processes -------------------------------------------------------------------------------


def pin(pid: int, cpu: int) -> None:
    """Put a process on one core when the machine has it (a no-op on one core)."""
    with contextlib.suppress(OSError, AttributeError):
        if cpu < (os.cpu_count() or 1):
            os.sched_setaffinity(pid, {cpu})


def pin_threads(pid: int, cpu: int) -> None:
    """`pin` every thread of a running process (its helper threads started before it was)."""
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pin(int(task.name), cpu)


@dataclass
class Proc:
    """A process the bench started, with its /proc readings."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def cpu_s(self) -> float:
        """User + system CPU seconds so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        """Resident set size in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(extra or {})
    return env


def start(name: str, argv: list[str], logs: Path, cpu: int, env: dict[str, str]) -> Proc:
    """Start a process with its output in a log file, pinned to `cpu`."""
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # noqa: S603 - our own interpreter and scripts
    pin(popen.pid, cpu)
    return Proc(name, popen, log)


def wait_until(check: Any, what: str, within: float = 15.0) -> None:
    """Poll `check()` until it is true; raise RuntimeError after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {within:.0f} s")


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200."""
    with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback URLs we built
        return bool(resp.status == 200)


def tcp_open(port: int) -> bool:
    """Whether something accepts TCP on 127.0.0.1:`port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


class Fleet:
    """The mock, and one system under test at a time."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        port = free_port()
        argv = [sys.executable, "-m", "wsgate", "mock-upstream", "--port", str(port)]
        self.mock = start("mock", [*argv, "--log-level", "warning"], logs, LOAD_CPU, _clean_env())
        self.mock_url = f"http://127.0.0.1:{port}/v1"
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), "the mock")
        self.sut: Proc | None = None
        self.url = ""
        self.redis: RedisServer | None = None  # started for the first wsgate-redis
        self.redis_probe: bench_resume.RedisProbe | None = None

    def start_redis(self) -> bench_resume.RedisProbe:
        """The private redis-server (started once, pinned to the SUT's CPU), emptied."""
        if self.redis is None or self.redis_probe is None:
            self.redis = RedisServer()
            self.redis.start()
            self.redis_probe = bench_resume.RedisProbe(self.redis.url)
            pin_threads(self.redis_probe.pid(), SUT_CPU)
        self.redis_probe.flushall()
        return self.redis_probe

    def start_sut(self, target: str) -> None:
        """Start a fresh naive relay or wsgate (stopping the previous one)."""
        self.stop_sut()
        if target == "direct":
            return
        port = free_port()
        if target == "naive":
            argv = [sys.executable, str(SCRIPTS / "naive_relay.py"), "--port", str(port)]
            argv += ["--upstream", self.mock_url]
            env = _clean_env()
        else:  # wsgate, wsgate-debounce (the same server), wsgate-pull and wsgate-redis
            argv = [sys.executable, "-m", "wsgate", "serve", "--port", str(port)]
            argv += ["--log-level", "warning"]
            reader = "pull" if target == "wsgate-pull" else "push"
            extra = {
                "WSGATE_PROVIDERS__BENCH__BASE_URL": self.mock_url,
                "WSGATE_PROVIDERS__BENCH__READER": reader,
                "WSGATE_MODELS__MOCK__PROVIDER": "bench",
                # Every load connection comes from 127.0.0.1: the per-IP cap (256) would
                # refuse the memory probe's idle connections with 503.
                "WSGATE_LIMITS__MAX_CONNECTIONS_PER_IP": "0",
            }
            if target == "wsgate-redis":
                self.start_redis()
                assert self.redis is not None  # noqa: S101 - start_redis sets it
                extra |= {"WSGATE_STORE__KIND": "redis", "WSGATE_STORE__URL": self.redis.url}
            env = _clean_env(extra)
        self.sut = start(target, argv, self.logs, SUT_CPU, env)
        wait_until(lambda: tcp_open(port), target)
        self.url = f"ws://127.0.0.1:{port}/v1/ws"

    def stop_sut(self) -> None:
        """Stop the system under test, if any."""
        if self.sut is not None:
            self.sut.stop()
            self.sut = None

    def stop(self) -> None:
        """Stop everything."""
        self.stop_sut()
        self.mock.stop()
        if self.redis_probe is not None:
            self.redis_probe.close()
        if self.redis is not None:
            self.redis.close()


# --- one measured workload ---------------------------------------------------------------


@dataclass
class Measured:
    """One workload on one target: the load tester's result plus process CPU."""

    workload: str
    target: str
    result: dict[str, Any]
    sut_cpu_s: float | None
    mock_cpu_s: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def deltas(self) -> int:
        """Deltas delivered."""
        return int(self.result["throughput"]["deltas"])

    @property
    def deltas_per_cpu_s(self) -> float | None:
        """Deltas per CPU-second of the system under test."""
        if not self.sut_cpu_s:
            return None
        return self.deltas / self.sut_cpu_s

    def latency(self, name: str, key: str) -> float | None:
        """A latency summary value in ms."""
        value = (self.result["latency_ms"].get(name) or {}).get(key)
        return None if value is None else float(value)


def measure(
    fleet: Fleet,
    workload: Workload,
    target: str,
    window: tuple[float, float] | None = None,
    probe: Probe | None = None,
) -> Measured:
    """Run the load generator once against the current system under test.

    With `window` (seconds from the load generator's start, seconds long), the system under
    test's CPU seconds in that window and its length go to `extra["steady"]`, and `probe`'s
    readings at the window's two ends to `extra["probed"]`.
    """
    argv = [sys.executable, str(SCRIPTS / "loadtest.py"), "--json", "-q", "--drain-s", "10"]
    if target == "direct":
        argv += ["--direct", fleet.mock_url]
    else:
        argv += [fleet.url, "--mock-url", fleet.mock_url]
    if target == "wsgate-debounce":
        argv += ["--options", DEBOUNCE_OPTIONS]
    argv += list(workload.args)
    sut0 = fleet.sut.cpu_s() if fleet.sut else None
    mock0, wall0 = fleet.mock.cpu_s(), time.monotonic()
    with (fleet.logs / "loadtest.log").open("ab") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=_clean_env())  # noqa: S603 - our own interpreter and scripts
        pin(proc.pid, LOAD_CPU)
        steady = _Window(fleet.sut, proc, *window, probe) if window and fleet.sut else None
        out = _communicate(proc, 900)
    wall = time.monotonic() - wall0
    if not out.strip():
        raise RuntimeError(f"{workload.name} on {target}: loadtest failed (see {fleet.logs})")
    sut_cpu = fleet.sut.cpu_s() - sut0 if fleet.sut and sut0 is not None else None
    m = Measured(
        workload.name, target, orjson.loads(out), sut_cpu, fleet.mock.cpu_s() - mock0, wall
    )
    if steady is not None:
        m.extra["steady"] = steady.result()
        m.extra["probed"] = steady.probed
    return m


def _communicate(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The process's standard output once it exits; killed (and reaped) if it outlasts `timeout`."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return out


Probe = Callable[[], dict[str, float]]
"""Readings of another process (the redis-server) taken at a window's two ends."""


class _Window:
    """A process's CPU seconds over a window of wall time, sampled by a thread.

    The window starts `start` seconds after the load generator did (its start-up included)
    and must end while the load generator still runs, or `result` raises. With `probe`, its
    readings just before each CPU sample go to `probed`.
    """

    def __init__(
        self,
        proc: Proc,
        load: subprocess.Popen[bytes],
        start: float,
        length: float,
        probe: Probe | None = None,
    ) -> None:
        self.proc = proc
        self.load = load
        self.probe = probe
        self.samples: list[tuple[float, float]] = []
        self.probed: list[dict[str, float]] = []
        self.ended_inside = False
        self.thread = threading.Thread(target=self._run, args=(start, length), daemon=True)
        self.thread.start()

    def _run(self, start: float, length: float) -> None:
        time.sleep(start)
        for pause in (0.0, length):
            time.sleep(pause)
            if self.probe is not None:
                self.probed.append(self.probe())
            self.samples.append((self.proc.cpu_s(), time.monotonic()))
        self.ended_inside = self.load.poll() is None

    def result(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) of the window; raises if the load ended before it."""
        self.thread.join()
        if len(self.samples) != 2 or not self.ended_inside:
            raise RuntimeError("the steady window outlasted the load generator's run")
        (cpu0, wall0), (cpu1, wall1) = self.samples
        return cpu1 - cpu0, wall1 - wall0


def knee(fleet: Fleet, target: str, profile: Profile) -> list[Measured]:
    """Search the most concurrent 20 tok/s streams that pass, in a few steps.

    Double from the first step while steps pass (halve while they fail), then bisect between
    the last pass and the first failure until they are at most `KNEE_RESOLUTION` apart
    (relative to the pass): the knee is known to within 12.5%. A step fails on a p99 token latency
    over 5 ms, an error or a failed check; a failure on latency alone that is not plainly
    saturation (p99 within 20x the bound, no error, every check passed) is run once more and
    fails only if both runs do (the machine is shared: one stall of a few tens of ms, in any
    of the four processes, should not end the search).
    """
    steps: list[Measured] = []

    def step(streams: int) -> bool:
        steps.append(knee_step(fleet, target, streams))
        last = steps[-1]
        if not last.extra["passed"] and _latency_only(last, KNEE_RERUN * KNEE_P99_MS):
            steps.append(knee_step(fleet, target, streams))  # not saturation: once more
        return bool(steps[-1].extra["passed"])

    streams = profile.knee_steps[0]
    going_up = step(streams)
    while streams <= profile.knee_steps[-1] and streams >= KNEE_MIN:
        streams = streams * 2 if going_up else streams // 2
        if streams > profile.knee_steps[-1] or streams < KNEE_MIN or step(streams) != going_up:
            break
    while True:
        passed = [m.extra["streams"] for m in steps if m.extra["passed"]]
        failed = [m.extra["streams"] for m in steps if not m.extra["passed"]]
        above = [n for n in failed if not passed or n > max(passed)]
        if not passed or not above:
            return steps
        low, high = max(passed), min(above)
        if high - low <= max(1, int(low * KNEE_RESOLUTION)):
            return steps
        step((low + high) // 2)


def knee_step(fleet: Fleet, target: str, streams: int) -> Measured:
    """One step of the knee search: `streams` streams at 20 tok/s, all open at once.

    Every slot runs one long stream (KNEE_WORDS tokens, as long as the step) started during
    the ramp, and no other (the think time outlasts the step); tokens due after the ramp
    (plus half a second) are measured: the steady delivery of `streams` concurrent streams,
    without the churn of stream starts, until the first streams end and the load falls off
    over one ramp's length (about a fifth of the measured tokens).
    """
    step = measure(fleet, _long_streams(f"knee_{streams}", streams, KNEE_SECONDS), target)
    step.extra["streams"] = streams
    step.extra["passed"] = knee_passed(step)
    return step


def _long_streams(name: str, streams: int, seconds: float) -> Workload:
    """`streams` slots of one 20 tok/s stream as long as the run, started in its first third."""
    return _w(name, f"{streams} streams x {RATE} tok/s", *_spread(streams),
              "--rate", RATE, "--ttft-ms", 50, "--words", int(RATE * seconds),
              "--duration", seconds, "--ramp", seconds / 3, "--warmup", seconds / 3 + 0.5,
              "--think-ms", seconds * 1000)  # fmt: skip


def _completed(step: Measured) -> bool:
    """No error, and every check passed."""
    return bool(step.result["ok"]) and not step.result["errors"]


def _latency_only(step: Measured, bound_ms: float) -> bool:
    """No error, every check passed, and p99 token latency within `bound_ms`."""
    p99 = step.latency("token", "p99")
    return _completed(step) and p99 is not None and p99 <= bound_ms


def knee_passed(step: Measured) -> bool:
    """No failed check, no error, p99 token latency within the bound."""
    return _latency_only(step, KNEE_P99_MS)


# --- what a token costs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    """CPU per token of one reader at the cost load, in a window of steady load."""

    reader: str
    us_per_token: float
    cpu_share: float  # of one core, in the window
    p99_ms: float | None = None  # token latency at the client (relay and gateway only)
    ok: bool = True  # every answer complete: no error, every check passed
    samples: tuple[float, ...] = ()  # us per token of every round, when there were several
    store: dict[str, float] | None = None  # wsgate-redis: redis-server in the same window


def median_cost(rounds: list[Cost]) -> Cost:
    """One reader's rounds as one cost: the median round's, with every round's figure."""
    ordered = sorted(rounds, key=lambda c: c.us_per_token)
    mid = ordered[len(ordered) // 2]
    samples = tuple(c.us_per_token for c in rounds)
    return replace(mid, ok=all(c.ok for c in rounds), samples=samples)


def cost_window(seconds: float) -> float:
    """The measured window of a cost run `seconds` long: inside the steady part, after the ramp."""
    return round(0.3 * seconds, 2)


def cost_step(fleet: Fleet, target: str, streams: int, seconds: float) -> Cost:
    """The current relay or gateway under `streams` long 20 tok/s streams: CPU per token.

    Tokens in the window are counted as the mock sends them (every stream is open and paced
    through the window); the CPU share shows when the target could not keep up, and a run
    with an error or a failed check is marked FAILED in the report.
    """
    window = (seconds / 3 + 1.0, cost_window(seconds))  # + the load generator's start-up
    probe = fleet.redis_probe.sample if target == "wsgate-redis" and fleet.redis_probe else None
    workload = _long_streams(f"cost_{streams}", streams, seconds)
    step = measure(fleet, workload, target, window, probe)
    cpu, wall = step.extra["steady"]
    tokens = streams * RATE * wall
    ok = _completed(step)
    store = None
    if probe is not None:
        before, after = step.extra["probed"]
        store = bench_resume.window_stats(before, after, wall, tokens)
    return Cost(target, 1e6 * cpu / tokens, cpu / wall, step.latency("token", "p99"), ok,
                store=store)  # fmt: skip


def run_pinned(fleet: Fleet, script: str, args: list[str], what: str) -> dict[str, Any]:
    """One of our scripts on the system-under-test CPU, alone; its JSON result."""
    argv = [sys.executable, str(SCRIPTS / script), *args]
    log = fleet.logs / f"{script.removesuffix('.py')}.log"
    with log.open("ab") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=_clean_env())  # noqa: S603 - our own interpreter and script
        pin(proc.pid, SUT_CPU)
        out = _communicate(proc, 120)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"{what} failed (see {fleet.logs})")
    result: dict[str, Any] = orjson.loads(out)
    return result


def read_floor(fleet: Fleet, mode: str, streams: int, seconds: float) -> Cost:
    """`scripts/read_floor.py` on the system-under-test CPU: reading the mock and nothing else."""
    args = ["--upstream", fleet.mock_url, "--streams", str(streams), "--mode", mode,
            "--seconds", str(seconds), "--window", str(cost_window(seconds))]  # fmt: skip
    result = run_pinned(fleet, "read_floor.py", args, f"read_floor.py --mode {mode}")
    return Cost(f"read-{mode}", float(result["us_per_event"]), float(result["cpu_share"]))


def cost_rounds(fleet: Fleet, profile: Profile, targets: tuple[str, ...]) -> dict[str, Cost]:
    """Every reader's CPU per token, `profile.cost_rounds` times, interleaved; the medians.

    The machine's speed drifts by tens of percent within minutes: one round of each reader
    in turn, repeated, with a fresh process for each, lets a ratio be read from neighbours.
    """
    assert profile.cost is not None  # noqa: S101 - the caller checks
    readers = [f"read-{mode}" for mode in READ_FLOORS]
    readers += [t for t in ("naive", "wsgate", "wsgate-redis") if t in targets]
    if "wsgate" in targets:
        readers.append("wsgate-pull")  # the pull reader, for the same comparison
    rounds: dict[str, list[Cost]] = {reader: [] for reader in readers}
    for n in range(profile.cost_rounds):
        for reader in readers:
            if reader.startswith("read-"):
                cost = read_floor(fleet, reader.removeprefix("read-"), *profile.cost)
            else:
                fleet.start_sut(reader)
                cost = cost_step(fleet, reader, *profile.cost)
                fleet.stop_sut()
            rounds[reader].append(cost)
            store = cost.store or {}
            redis = (
                f" (redis-server {store['redis_us_per_token']:.1f} us/token, "
                f"{store['scripts_per_s']:,.0f} flushes/s)"
                if store
                else ""
            )
            say(f"cost round {n + 1} {reader}: {cost.us_per_token:.1f} us/token{redis}")
    return {reader: median_cost(costs) for reader, costs in rounds.items()}


def token_path(fleet: Fleet, tokens: int) -> dict[str, float]:
    """`scripts/token_path.py` on the system-under-test CPU: wsgate's Python per token."""
    return run_pinned(fleet, "token_path.py", ["--tokens", str(tokens)], "token_path.py")


# --- memory --------------------------------------------------------------------------------


class Holder:
    """Counts `ready` frames and first text deltas on connections the bench holds open."""

    def __init__(self) -> None:
        self.ready = 0
        self.streaming: set[str] = set()

    def on_message(self, payload: bytes, _now: float) -> None:
        """Count one frame."""
        frame = orjson.loads(payload)
        if frame.get("type") == "ready":
            self.ready += 1
        elif frame.get("type") == "delta.text":
            self.streaming.add(frame["stream_id"])


async def _open(url: str, holder: Holder, count: int) -> list[_common.RawWebSocket]:
    sockets = []
    for start_at in range(0, count, 100):
        batch = [
            _common.open_websocket(url, holder.on_message)
            for _ in range(start_at, min(count, start_at + 100))
        ]
        sockets += await asyncio.gather(*batch)
    return sockets


async def _until(predicate: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not predicate() and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded poll
        await asyncio.sleep(0.05)


async def memory(url: str, sut: Proc, idle: int, streams: int) -> dict[str, float]:
    """RSS per idle connection and per open stream of a fresh system under test."""
    holder = Holder()
    warm = await _open(url, holder, 5)
    await _start_stalled(warm, 10, "warm")
    await _until(lambda: len(holder.streaming) >= 10, 10)
    for ws in warm:
        ws.close()
    await asyncio.sleep(0.5)
    base = sut.rss_kib()
    conns = await _open(url, holder, idle)
    await _until(lambda: holder.ready >= idle + 5, 10)
    await asyncio.sleep(0.5)
    after_idle = sut.rss_kib()
    per_conn = (after_idle - base) / idle
    carriers = await _open(url, holder, max(1, math.ceil(streams / 200)))
    await _start_stalled(carriers, streams, "mem")
    await _until(lambda: len(holder.streaming) >= streams + 10, 20)
    await asyncio.sleep(0.5)
    after_streams = sut.rss_kib()
    opened = len(holder.streaming) - 10
    per_stream = (after_streams - after_idle - len(carriers) * per_conn) / max(opened, 1)
    for ws in conns + carriers:
        ws.abort()
    return {
        "base_kib": base,
        "idle_connections": idle,
        "kib_per_idle_connection": round(per_conn, 2),
        "open_streams": opened,
        "kib_per_open_stream": round(per_stream, 2),
    }


async def _start_stalled(sockets: list[_common.RawWebSocket], count: int, prefix: str) -> None:
    # First token at once, the next 20 s later: the stream is open and streaming, and stays so.
    script = {"words": 3, "ttft_ms": 0, "tokens_per_s": 0.05}
    content = orjson.dumps({"mock": script}).decode()
    request = {"model": "mock", "messages": [{"role": "user", "content": content}]}
    for i in range(count):
        frame = {"type": "start", "stream_id": f"{prefix}{i}", "request": request}
        sockets[i % len(sockets)].send_text(orjson.dumps(frame))
        if i % 200 == 199:
            await asyncio.sleep(0.01)


# --- profiling (optional: py-spy) ----------------------------------------------------------


def profile_workload(fleet: Fleet, workload: Workload, py_spy: str) -> list[str]:
    """Sample a fresh wsgate with py-spy while `workload` runs; return report lines."""
    fleet.start_sut("wsgate")
    assert fleet.sut is not None  # noqa: S101 - start_sut("wsgate") sets it
    raw = fleet.logs / f"wsgate-{workload.name}.pyspy.txt"
    seconds = float(workload.args[workload.args.index("--duration") + 1])
    argv = [py_spy, "record", "-p", str(fleet.sut.pid), "-d", str(max(1, int(seconds))),
            "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking"]  # fmt: skip
    with (fleet.logs / "py-spy.log").open("ab") as log:
        spy = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - the profiler the user named
        pin(spy.pid, LOAD_CPU)
        measure(fleet, workload, "wsgate")
        spy.wait(60)
    fleet.stop_sut()
    if not raw.exists():
        return [f"py-spy wrote nothing (see {fleet.logs / 'py-spy.log'})."]
    return fold(raw.read_text())


def fold(text: str, top: int = 15) -> list[str]:
    """Self and inclusive shares per function from py-spy's collapsed stacks (raw format).

    Lines are folded into their function, so a function's share is not split by line; the
    inclusive table keeps wsgate's own functions, the ones a change can act on.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if not f.startswith("process ")]
        total += count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return ["no samples"]
    ours = {
        f: n
        for f, n in inclusive.items()
        if "wsgate/" in f and "cli.py" not in f and "__main__" not in f
    }
    lines = [f"{total} samples of the busy gateway process (py-spy; idle time excluded).", ""]
    for title, table in (("self", own), ("inclusive", ours)):
        lines += [f"| {title} % | function (file) |", "| ---: | --- |"]
        ranked = sorted(table.items(), key=lambda item: -item[1])[:top]
        lines += [f"| {100 * n / total:.1f} | `{frame}` |" for frame, n in ranked]
        lines.append("")
    return lines


def _function(frame: str) -> str:
    """`name (path/file.py:123)` -> `name (file path from the package or library)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


# --- the run -------------------------------------------------------------------------------


@dataclass
class Bench:
    """Everything measured in one bench run."""

    mode: str
    measured: list[Measured] = field(default_factory=list)
    knees: dict[str, list[Measured]] = field(default_factory=dict)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    profiles: dict[str, list[str]] = field(default_factory=dict)
    costs: dict[str, Cost] = field(default_factory=dict)
    token_path: dict[str, float] | None = None  # scripts/token_path.py's result
    resume: dict[str, dict[str, Any]] = field(default_factory=dict)  # by store: latency
    redis_log: dict[str, float] | None = None  # Redis bytes per 1000 logged text frames
    notes: list[str] = field(default_factory=list)  # what was not measured, and why
    seconds: float = 0.0

    def get(self, workload: str, target: str) -> Measured | None:
        """The measurement of one workload on one target."""
        return next(
            (m for m in self.measured if m.workload == workload and m.target == target), None
        )


def say(text: str) -> None:
    """Progress on stderr."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def run_target(bench: Bench, fleet: Fleet, profile: Profile, target: str) -> None:
    """Every workload, the knee search and the memory probe on one target."""
    fleet.start_sut(target)
    for workload in profile.workloads:
        m = measure(fleet, workload, target)
        bench.measured.append(m)
        say(
            f"{target:6} {workload.name:14} {m.result['throughput']['deltas_per_s']:>10,.0f} "
            f"deltas/s  ok={m.result['ok']}  sut_cpu={m.sut_cpu_s}"
        )
    # The knee asks for p99 <= 5 ms; debounce holds text up to 20 ms on purpose; the Redis
    # store is compared with the memory store in the cost rounds instead.
    if profile.knee_steps and target not in NO_KNEE:
        bench.knees[target] = knee(fleet, target, profile)
        for step in bench.knees[target]:
            say(
                f"{target:6} knee {step.extra['streams']:>5} streams: p99 token "
                f"{step.latency('token', 'p99')} ms passed={step.extra['passed']}"
            )
    if target in ("naive", "wsgate"):
        fleet.start_sut(target)  # a fresh process: RSS deltas without earlier garbage
        assert fleet.sut is not None  # noqa: S101 - set before use
        probe = memory(fleet.url, fleet.sut, profile.idle_connections, profile.open_streams)
        bench.memory[target] = uvloop.run(probe)
        say(f"{target:6} memory {bench.memory[target]}")
    fleet.stop_sut()


def store_measures(bench: Bench, fleet: Fleet, profile: Profile, targets: tuple[str, ...]) -> None:
    """Resume latency on each store measured, and Redis's bytes per logged token."""
    stores = [t for t in ("wsgate", "wsgate-redis") if t in targets]
    if profile.resumes:
        for target in stores:
            fleet.start_sut(target)  # fresh, and Redis emptied
            run = bench_resume.resume_latency(fleet.url, *profile.resumes)
            bench.resume[target] = result = uvloop.run(run)
            fleet.stop_sut()
            say(f"{target:6} resume {result['latency_ms']} failed={result['failed']}")
    if profile.redis_log and "wsgate-redis" in targets:
        bench.redis_log = redis_log_memory(fleet, *profile.redis_log)
        say(f"redis log memory {bench.redis_log}")


def redis_log_memory(fleet: Fleet, streams: int, words: int) -> dict[str, float]:
    """Redis bytes of the logs of `streams` finished streams, per 1000 text frames.

    Half of them `words` tokens long, half a fifth of it. A warm-up stream first (the
    scripts cached, the node's lease written), then the streams; only their logs are weighed.
    """
    fleet.start_sut("wsgate-redis")
    probe = fleet.redis_probe
    assert probe is not None  # noqa: S101 - start_sut("wsgate-redis") starts it
    uvloop.run(bench_resume.run_streams(fleet.url, [5]))
    time.sleep(0.2)  # the warm-up's last flush
    warm, base = bench_resume.log_keys(probe), probe.sample()["used_memory"]
    lengths = bench_resume.log_lengths(streams, words)
    ran = uvloop.run(bench_resume.run_streams(fleet.url, lengths))
    time.sleep(0.3)  # the last flushes
    result = bench_resume.log_memory(probe, bench_resume.log_keys(probe) - warm, base)
    fleet.stop_sut()
    return {**result, "streams": streams, "tokens_each": words, "tokens": sum(lengths), **ran}


def run_bench(mode: str, logs: Path, targets: tuple[str, ...], py_spy: str | None) -> Bench:
    """Start the mock, measure every target in turn, stop everything."""
    profile = _profiles()[mode]
    bench = Bench(mode)
    if "wsgate-redis" in targets and shutil.which("redis-server") is None:
        targets = tuple(t for t in targets if t != "wsgate-redis")
        bench.notes.append("wsgate-redis not measured: no `redis-server` on PATH.")
        say(bench.notes[-1])
    began = time.monotonic()
    affinity = os.sched_getaffinity(0)
    pin(os.getpid(), LOAD_CPU)
    _common.raise_nofile()
    fleet = Fleet(logs)
    try:
        for target in targets:
            run_target(bench, fleet, profile, target)
        if profile.cost and {"naive", "wsgate", "wsgate-redis"} & set(targets):
            bench.costs.update(cost_rounds(fleet, profile, targets))
            bench.token_path = path = token_path(fleet, profile.token_path_tokens)
            say(f"token path {path['us_per_token']} us/token, {path['calls_per_token']} calls")
        store_measures(bench, fleet, profile, targets)
        if py_spy and "wsgate" in targets:  # after the others: it takes fresh processes
            for workload in profile.workloads:
                if workload.name in ("burst", "paced_1000x20"):
                    say(f"profiling wsgate under {workload.name}")
                    bench.profiles[workload.title] = profile_workload(fleet, workload, py_spy)
    finally:
        fleet.stop()
        os.sched_setaffinity(0, affinity)  # a caller (a test run) gets its cores back
    bench.seconds = time.monotonic() - began
    return bench


# --- the report ----------------------------------------------------------------------------


def _num(value: float | str | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _pair(m: Measured | None, name: str, base: Measured | None = None) -> str:
    if m is None:
        return "-"
    values = []
    for key in ("p50", "p99"):
        value = m.latency(name, key)
        if base is not None:
            floor = base.latency(name, key)
            value = None if value is None or floor is None else value - floor
        values.append(_num(value))
    return " / ".join(values)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


UNRESOLVED = "n/a (below the clock's resolution)"
"""A ratio whose reference measured zero: 10 ms CPU clock ticks over a short window."""


def _times(a: float | None, b: float | None, digits: int = 2) -> str:
    """`a / b` as "1.23x", or why not: a zero reference is below the clock's resolution."""
    if a is None or b is None:
        return "-"
    ratio = _ratio(a, b)
    return UNRESOLVED if ratio is None else f"{ratio:.{digits}f}x"


def _knee_streams(steps: list[Measured]) -> int | None:
    passed = [step.extra["streams"] for step in steps if step.extra["passed"]]
    return max(passed) if passed else (0 if steps else None)


def _cancel_upstream_p99(bench: Bench, target: str) -> float | None:
    m = bench.get("cancel", target)
    return None if m is None else m.latency("cancel_upstream", "p99")


def target_rows(bench: Bench) -> list[list[str]]:
    """The issue's targets: wsgate, naive, the ratio or value, the goal, whether met."""
    burst_w, burst_n = bench.get("burst", "wsgate"), bench.get("burst", "naive")
    eff_w = burst_w.deltas_per_cpu_s if burst_w else None
    eff_n = burst_n.deltas_per_cpu_s if burst_n else None
    rate_w = burst_w.result["throughput"]["deltas_per_s"] if burst_w else None
    rate_n = burst_n.result["throughput"]["deltas_per_s"] if burst_n else None
    knee_w = _knee_streams(bench.knees.get("wsgate", []))
    knee_n = _knee_streams(bench.knees.get("naive", []))
    added = {t: _added_p99(bench, t) for t in ("wsgate", "naive")}
    mem_w, mem_n = bench.memory.get("wsgate", {}), bench.memory.get("naive", {})
    cancel = {t: _cancel_upstream_p99(bench, t) for t in ("wsgate", "naive")}
    knee_d = _knee_streams(bench.knees.get("direct", []))
    added_1000 = {t: _added_p99(bench, t, "paced_1000x20") for t in ("wsgate", "naive")}
    cost_w, cost_n = bench.costs.get("wsgate"), bench.costs.get("naive")
    cost_ratio = _ratio(cost_w.us_per_token, cost_n.us_per_token) if cost_w and cost_n else None
    cost_value: float | str | None = cost_ratio
    if cost_ratio is None and cost_w and cost_n:  # the relay's CPU measured zero
        cost_value = UNRESOLVED
    knee_ratio = _ratio(knee_w, knee_n)
    at_floor = knee_w is not None and knee_d is not None and knee_w >= knee_d
    rows = [
        (
            f"CPU per token, {COST_STREAMS} x {RATE} tok/s (us)",
            cost_w.us_per_token if cost_w else None,
            cost_n.us_per_token if cost_n else None,
            cost_value,
            f"<= {COST_TARGET:g}x naive",
            _le(cost_ratio, COST_TARGET),
        ),
        (
            "burst deltas per SUT CPU-second",
            eff_w,
            eff_n,
            _ratio(eff_w, eff_n),
            f">= {BURST_TARGET:g}x naive",
            _ge(_ratio(eff_w, eff_n), BURST_TARGET),
        ),
        (
            "burst deltas/s (coalescing)",
            rate_w,
            rate_n,
            _ratio(rate_w, rate_n),
            f">= {BURST_TARGET:g}x naive",
            _ge(_ratio(rate_w, rate_n), BURST_TARGET),
        ),
        (
            f"streams at 20 tok/s with p99 token latency <= 5 ms (direct: {_num(knee_d)})",
            knee_w,
            knee_n,
            knee_ratio,
            ">= 2x naive, or the direct floor's",
            "yes" if at_floor else _ge(knee_ratio, 2.0),
        ),
        (
            "p99 token latency added over direct, 100 x 50 tok/s (ms)",
            added["wsgate"],
            added["naive"],
            added["wsgate"],
            "<= +0.5 ms and below naive",
            _below(added["wsgate"], added["naive"], 0.5),
        ),
        (
            "p99 token latency added over direct, 1000 x 20 tok/s (ms)",
            added_1000["wsgate"],
            added_1000["naive"],
            added_1000["wsgate"],
            "below naive",
            _below(added_1000["wsgate"], added_1000["naive"], None),
        ),
        (
            "RSS per idle connection (KiB)",
            mem_w.get("kib_per_idle_connection"),
            mem_n.get("kib_per_idle_connection"),
            mem_w.get("kib_per_idle_connection"),
            "<= 12 KiB",
            _le(mem_w.get("kib_per_idle_connection"), 12.0),
        ),
        (
            "RSS per open stream (KiB)",
            mem_w.get("kib_per_open_stream"),
            mem_n.get("kib_per_open_stream"),
            mem_w.get("kib_per_open_stream"),
            "<= 16 KiB",
            _le(mem_w.get("kib_per_open_stream"), 16.0),
        ),
        (
            "cancel -> upstream close p99, seen by the mock (ms)",
            cancel["wsgate"],
            cancel["naive"],
            cancel["wsgate"],
            "<= 1 ms",
            _le(cancel["wsgate"], 1.0),
        ),
    ]
    return [[name, _num(w), _num(n), _num(v), goal, met] for name, w, n, v, goal, met in rows]


def _added_p99(bench: Bench, target: str, workload: str = "paced_100x50") -> float | None:
    m, floor = bench.get(workload, target), bench.get(workload, "direct")
    if m is None or floor is None:
        return None
    a, b = m.latency("token", "p99"), floor.latency("token", "p99")
    return None if a is None or b is None else a - b


def _below(value: float | None, reference: float | None, bound: float | None) -> str:
    """Below the reference (and within `bound`, when there is one)."""
    if value is None or reference is None:
        return "-"
    ok = value < reference and (bound is None or value <= bound)
    return "yes" if ok else "**no**"


def _ge(value: float | None, goal: float) -> str:
    return "-" if value is None else ("yes" if value >= goal else "**no**")


def _le(value: float | None, goal: float) -> str:
    return "-" if value is None else ("yes" if value <= goal else "**no**")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def workload_rows(bench: Bench, workload: str) -> list[list[str]]:
    """One row per target of one workload."""
    rows = []
    floor = bench.get(workload, "direct")
    for target in TARGETS:
        m = bench.get(workload, target)
        if m is None:
            continue
        r, wall = m.result, m.wall_s
        sut = f"{100 * m.sut_cpu_s / wall:.0f}%" if m.sut_cpu_s is not None else "-"
        harness = (m.mock_cpu_s + r["loadgen_cpu_s"]) / wall
        failed = [f"{k} {v}" for k, v in r["checks"].items() if k != "verified" and v]
        if r["streams"].get("unfinished"):
            failed.append(f"unfinished {r['streams']['unfinished']}")
        rows.append(
            [
                target,
                _num(r["throughput"]["deltas_per_s"]),
                _num(r["throughput"]["frames_per_s"]),
                sut,
                _num(m.deltas_per_cpu_s),
                _pair(m, "token"),
                _pair(m, "token", floor) if target != "direct" else "-",
                _pair(m, "ttft"),
                _num(sum(r["errors"].values()), 0),
                "ok" if r["ok"] else "FAILED: " + ", ".join(failed),
                f"{100 * harness:.0f}%" + (" (saturated)" if harness > 0.9 else ""),
            ]
        )
    return rows


_WORKLOAD_HEADER = [
    "target",
    "deltas/s",
    "frames/s",
    "SUT CPU",
    "deltas per SUT CPU-s",
    "token latency p50 / p99 ms",
    "added over direct p50 / p99",
    "TTFT p50 / p99 ms",
    "errors",
    "checks",
    "CPU 0 (mock + load gen)",
]


def machine() -> list[str]:
    """Facts about this machine and the libraries."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor() or "?",
    )
    nproc = shutil.which("nproc")
    # `nproc` alone honours this process's affinity (pinned to one core): ask for all.
    cores = (
        subprocess.run([nproc, "--all"], capture_output=True, text=True, check=False).stdout.strip()  # noqa: S603 - coreutils
        if nproc
        else str(os.cpu_count())
    )
    versions = []
    for name in ("websockets", "aiohttp", "uvloop", "orjson", "msgspec"):
        with contextlib.suppress(Exception):
            versions.append(f"{name} {__import__(name).__version__}")
    return [
        f"- CPU: {model}; `nproc --all` {cores}; Linux {platform.release()}",
        f"- Python {platform.python_version()}; {', '.join(versions)}",
        (
            f"- Layout: system under test pinned to CPU {SUT_CPU} (with it, every thread of "
            f"wsgate-redis's redis-server); mock, load generator and bench on CPU {LOAD_CPU} "
            "(`os.sched_setaffinity`)."
        ),
    ]


def render(bench: Bench, command: str) -> str:
    """BENCHMARKS.md."""
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# wsgate benchmarks",
        "",
        "Written by `scripts/bench.py` (`make bench`). Re-run it rather than editing this file.",
        "",
        f"- Command: `{command}`",
        f"- Date: {when}; mode `{bench.mode}`; the run took {bench.seconds:.0f} s.",
        *machine(),
        "",
        "## Targets (issue 12, the push-mode token path)",
        "",
        *_md_table(
            ["measure", "wsgate", "naive relay", "wsgate/naive or value", "goal", "met"],
            target_rows(bench),
        ),
        *_store_targets(bench),
        *_workload_sections(bench),
        *_knee_section(bench),
        *_cost_section(bench),
        *_store_section(bench),
        *_memory_section(bench),
        *_cancel_section(bench),
        *_unhappy_section(bench),
        *METHOD,
        "",
    ]
    if ANALYSIS.is_file():  # the people's reading of the profiles, kept beside the script
        out += [ANALYSIS.read_text(encoding="utf-8").rstrip(), ""]
    for title, lines in bench.profiles.items():
        out += [f"## Where wsgate spends its CPU: {title}", "", *lines]
    return "\n".join(out).rstrip() + "\n"


def _workload_sections(bench: Bench) -> list[str]:
    out = ["## Workloads", ""]
    titles = {m.workload: m for m in bench.measured}
    for name in titles:
        workload = next(w for w in _profiles()[bench.mode].workloads if w.name == name)
        out += [f"### {workload.title}", "", f"`loadtest.py {' '.join(workload.args)}`", ""]
        out += _md_table(_WORKLOAD_HEADER, workload_rows(bench, name))
    return out


def _knee_section(bench: Bench) -> list[str]:
    if not bench.knees:
        return []
    title = f"concurrent streams at 20 tok/s ({KNEE_WORDS} tokens each) until p99 > 5 ms"
    out = [f"## Knee: {title}", ""]
    rows = []
    for target, steps in bench.knees.items():
        for step in steps:
            r = step.result
            sut = f"{100 * step.sut_cpu_s / step.wall_s:.0f}%" if step.sut_cpu_s else "-"
            harness = (step.mock_cpu_s + r["loadgen_cpu_s"]) / step.wall_s
            rows.append(
                [
                    target,
                    str(step.extra["streams"]),
                    _num(r["throughput"]["deltas_per_s"]),
                    _pair(step, "token"),
                    sut,
                    f"{100 * harness:.0f}%",
                    _num(sum(r["errors"].values()), 0),
                    "yes" if step.extra["passed"] else "no",
                ]
            )
    header = [
        "target",
        "streams",
        "deltas/s",
        "token p50 / p99 ms",
        "SUT CPU",
        "CPU 0 (mock + load gen)",
        "errors",
        "passed",
    ]
    out += _md_table(header, rows)
    knees = {t: _knee_streams(steps) for t, steps in bench.knees.items()}
    out += [
        "Knee (most streams that passed): " + ", ".join(f"{t} {k}" for t, k in knees.items()),
        "(0: the first step already failed; the last step tried is the limit of the search)",
        "",
    ]
    return out


COST_TARGET = 0.4
"""wsgate's CPU per token at the cost load, as a share of the relay's (the push-mode issue)."""

BURST_TARGET = 3.4
"""Burst deltas/s and deltas per CPU-second against the relay's: not below the ratio
measured before the push-mode change (2026-12-03)."""

READ_FLOORS = ("socket", "socket-relay", "aiohttp-push", "aiohttp")
"""`scripts/read_floor.py` modes: bare sockets, bare sockets writing each read on (the relay
floor), wsgate's push reader, aiohttp's `readany()`."""

COST_READERS = {
    "read-socket": "bare socket read: a uvloop protocol per stream, nothing parsed",
    "read-socket-relay": "relay floor: the bare socket read, each read written on to a "
    "socket of its own (one read, one write per token), nothing parsed",
    "read-aiohttp-push": "push read floor: aiohttp's parser, body handed on in the socket "
    "callback (wsgate's push reader), nothing parsed",
    "read-aiohttp": "pull read floor: aiohttp `readany()` in a task per stream, nothing parsed",
    "naive": "naive relay",
    "wsgate": "wsgate (push reader, the default)",
    "wsgate-redis": "wsgate, Redis store (the gateway's CPU only; redis-server's below)",
    "wsgate-pull": 'wsgate (pull reader, `reader = "pull"`)',
}


def _cost_section(bench: Bench) -> list[str]:
    cost = _profiles()[bench.mode].cost
    if not bench.costs or cost is None:
        return []
    streams, seconds = cost
    out = [
        f"## What a token costs: {streams} streams x {RATE} tok/s",
        "",
        (
            f"CPU of one process per token delivered (or read), in a {cost_window(seconds):g} s "
            "window of steady load: every stream open and paced, none starting or ending; each "
            f"process alone on CPU {SUT_CPU}. The read floors (`scripts/read_floor.py`) "
            "read the same answers from the mock and drop them: what a gateway pays per token "
            "before it parses a byte. Every reader ran in each of "
            f"{_profiles()[bench.mode].cost_rounds} interleaved rounds, each time in a fresh "
            "process; the median round is shown, with every round's figure (the machine's "
            "speed drifts between rounds: compare neighbours)."
        ),
        "",
    ]
    relay = bench.costs.get("naive")
    rows = []
    for key, label in COST_READERS.items():
        c = bench.costs.get(key)
        if c is None:
            continue
        share = _ratio(c.us_per_token, relay.us_per_token) if relay else None
        of_relay = "-" if relay is None else UNRESOLVED if share is None else f"{100 * share:.0f}%"
        rows.append(
            [
                label,
                _num(c.us_per_token, 1),
                ", ".join(_num(x, 1) for x in c.samples) or "-",
                f"{100 * c.cpu_share:.0f}%",
                of_relay,
                _num(c.p99_ms),
                "ok" if c.ok else "FAILED (errors or checks)",
            ]
        )
    header = ["reader", "us CPU per token (median)", "each round", "CPU share",
              "of the relay's", "token p99 ms", "run"]  # fmt: skip
    out += _md_table(header, rows)
    wsgate = bench.costs.get("wsgate")
    if relay is not None and wsgate is not None:
        out += [
            (
                f"wsgate costs {_times(wsgate.us_per_token, relay.us_per_token)} the relay's CPU "
                f"per token (target <= {COST_TARGET:g}x, i.e. <= "
                f"{COST_TARGET * relay.us_per_token:.1f} us here)."
            ),
            "",
        ]
    path = bench.token_path
    if path is not None:
        out += [
            (
                f"wsgate's own Python per token, with no socket on either side "
                f"(`scripts/token_path.py`, {int(path['tokens'])} tokens through one "
                f"connection over a recording transport, the loop turn subtracted): "
                f"{_num(path['us_per_token'], 1)} us, {_num(path['calls_per_token'], 0)} "
                "Python function calls."
            ),
            "",
        ]
    floor = bench.costs.get("read-socket-relay")
    if floor is not None and relay is not None:
        out += [
            (
                f"The relay floor alone is {_times(floor.us_per_token, relay.us_per_token)} the "
                "relay's CPU per token: what the kernel and the event loop take for one read "
                "and one write, before any parsing."
            ),
            "",
        ]
    return out


REDIS_COST_TARGET = 1.3
"""wsgate's CPU per token with the Redis store, as a share of the memory store's."""

RESUME_P99_MS = 5.0
"""Resume sent -> first replayed frame, p99, with a loopback Redis."""

_STORE_HEADER = ["measure", "Redis store", "memory store", "Redis/memory or value", "goal", "met"]


def _cost_label(bench: Bench) -> str:
    cost = _profiles()[bench.mode].cost
    return f"{cost[0] if cost else COST_STREAMS} x {RATE} tok/s"


def _resume_ms(bench: Bench, target: str, key: str) -> float | None:
    value = (bench.resume.get(target) or {}).get("latency_ms", {}).get(key)
    return None if value is None else float(value)


def store_rows(bench: Bench) -> list[list[str]]:
    """The Redis store's targets: Redis, memory, the ratio or value, the goal, whether met."""
    redis, memory = bench.costs.get("wsgate-redis"), bench.costs.get("wsgate")
    r_us = redis.us_per_token if redis else None
    m_us = memory.us_per_token if memory else None
    ratio = _ratio(r_us, m_us)
    store = (redis.store if redis else None) or {}
    p50 = {t: _resume_ms(bench, t, "p50") for t in ("wsgate-redis", "wsgate")}
    p99 = {t: _resume_ms(bench, t, "p99") for t in ("wsgate-redis", "wsgate")}
    log = bench.redis_log or {}
    kib = log["ev_bytes_per_1000"] / 1024 if log.get("text_frames") else None
    marginal = log["marginal_bytes_per_1000"] / 1024 if kib is not None else None
    kib_cell = "-" if kib is None else f"{_num(kib, 1)} (marginal {_num(marginal, 1)})"
    scripts = store.get("scripts_per_s")
    commands = store.get("commands_per_s")
    return [
        [
            f"CPU per token, {_cost_label(bench)}, the gateway's (us)",
            _num(r_us, 1),
            _num(m_us, 1),
            _times(r_us, m_us),
            f"<= {REDIS_COST_TARGET:g}x memory",
            _le(ratio, REDIS_COST_TARGET),
        ],
        [
            "redis-server's own CPU per token at that load (us; on the gateway's CPU)",
            _num(store.get("redis_us_per_token"), 1),
            "-",
            _num(store.get("redis_us_per_token"), 1),
            "reported (not the gateway's)",
            "-",
        ],
        [
            "Redis commands/s at that load (of which EVALSHA: the store's flushes, round trips)",
            "-" if commands is None else f"{_num(commands, 0)} ({_num(scripts, 0)})",
            "-",
            _num(commands, 0),
            "reported",
            "-",
        ],
        [
            "resume sent -> first replayed frame, p50 / p99 (ms)",
            f"{_num(p50['wsgate-redis'])} / {_num(p99['wsgate-redis'])}",
            f"{_num(p50['wsgate'])} / {_num(p99['wsgate'])}",
            _num(p99["wsgate-redis"]),
            f"p99 <= {RESUME_P99_MS:g} ms",
            _le(p99["wsgate-redis"], RESUME_P99_MS),
        ],
        [
            "Redis memory per 1000 logged delta.text frames (KiB, the ev keys)",
            kib_cell,
            "-",
            _num(kib, 1),
            "reported",
            "-",
        ],
    ]


def redis_cost_sentence(bench: Bench) -> str | None:
    """'Redis mode costs X.XXx memory mode's CPU per token ...', when both were measured."""
    redis, memory = bench.costs.get("wsgate-redis"), bench.costs.get("wsgate")
    if redis is None or memory is None:
        return None
    rounds = [_times(r, m) for r, m in zip(redis.samples, memory.samples, strict=False)]
    each = f"; round by round {', '.join(rounds)}" if len(rounds) > 1 else ""
    return (
        f"Redis mode costs {_times(redis.us_per_token, memory.us_per_token)} memory mode's CPU "
        f"per token at {_cost_label(bench)} (target <= {REDIS_COST_TARGET:g}x): "
        f"{_num(redis.us_per_token, 1)} against {_num(memory.us_per_token, 1)} us, the "
        f"medians{each}; the gateway's process only."
    )


def _store_targets(bench: Bench) -> list[str]:
    if not (bench.resume or bench.redis_log or "wsgate-redis" in bench.costs):
        return [*bench.notes, ""] if bench.notes else []
    out = ["## Targets (the Redis store: resume across nodes)", ""]
    out += _md_table(_STORE_HEADER, store_rows(bench))
    sentence = redis_cost_sentence(bench)
    return [*out, *([sentence, ""] if sentence else []), *bench.notes]


def _store_section(bench: Bench) -> list[str]:
    """Redis in the cost window, the resume latencies and Redis's bytes per logged token."""
    out: list[str] = []
    redis = bench.costs.get("wsgate-redis")
    store = redis.store if redis else None
    if store:
        cost = _profiles()[bench.mode].cost
        streams = cost[0] if cost else COST_STREAMS
        out += [
            f"## The Redis store at {_cost_label(bench)}",
            "",
            (
                "wsgate with `WSGATE_STORE__KIND=redis` on a private redis-server (started by "
                f"the bench, bound to 127.0.0.1, no persistence), pinned with the gateway to "
                f"CPU {SUT_CPU}; the median round of the cost table above. Redis's figures are "
                "`INFO all` deltas over the same window as the gateway's CPU. The store sends "
                "one EVALSHA per flush (one per loop turn that logged frames), carrying every "
                "message's frames of that turn, over a connection of its own: EVALSHA calls "
                "are its write round trips; the rest is its lease (one SET per "
                "`store.lease_s / 3`)."
            ),
            "",
        ]
        rows = [
            ["tokens/s sent by the mock", _num(float(streams * RATE), 0)],
            ["redis-server CPU per token (us)", _num(store["redis_us_per_token"], 1)],
            ["redis-server CPU share of one core", f"{100 * store['redis_cpu_share']:.1f}%"],
            [
                (
                    "commands/s (`total_commands_processed`: in Redis 7 every command, those "
                    "run inside the store's scripts included)"
                ),
                _num(store["commands_per_s"], 0),
            ],
            [
                (
                    "EVALSHA calls/s (`cmdstat_evalsha` + `cmdstat_eval`): store flushes, one "
                    "round trip each"
                ),
                _num(store["scripts_per_s"], 0),
            ],
            [
                "frames logged per flush (`cmdstat_xadd` calls / EVALSHA calls)",
                _num(store["frames_per_script"], 1),
            ],
            ["XADD calls/s (frames logged)", _num(store["xadd_per_s"], 0)],
            ["bytes/s into Redis (`total_net_input_bytes`)", _num(store["bytes_in_per_s"], 0)],
        ]
        out += _md_table(["measure", "value"], rows)
    out += _resume_section(bench)
    out += _redis_log_section(bench)
    return out


def _resume_section(bench: Bench) -> list[str]:
    if not bench.resume:
        return []
    resumes = next(iter(bench.resume.values()))
    out = [
        "## Resume latency: resume sent -> first replayed frame",
        "",
        (
            f"{resumes['resumes']} generations (mock answers of "
            f"{bench_resume.RESUME_SCRIPT['words']} tokens at "
            f"{bench_resume.RESUME_SCRIPT['tokens_per_s']} tok/s) started "
            f"{resumes['per_round']} to a connection with `on_disconnect: continue`; after "
            f"{bench_resume.FRAMES_BEFORE_DROP} text deltas of each the TCP connection is "
            f"reset, the generations run on for {1000 * bench_resume.DETACHED_S:g} ms, then a new "
            "connection resumes them one at a time (the others still generating) and cancels "
            "each once its first frame is in. Time from writing `resume` to the arrival of the "
            "first frame with `seq` above `last_seq`, both read on one monotonic clock in the "
            f"client (the bench process, on CPU {LOAD_CPU} with the mock); a fresh gateway for "
            "each store, Redis on loopback."
        ),
        "",
    ]
    rows = []
    for target, result in bench.resume.items():
        lat = result["latency_ms"]
        failed = ", ".join(f"{k} {v}" for k, v in result["failed"].items()) or "none"
        rows.append(
            [
                "Redis" if target == "wsgate-redis" else "memory",
                str(lat["count"]),
                *(_num(lat.get(k)) for k in ("p50", "p90", "p99", "max")),
                f"{result['replayed_first']} of {lat['count']}",
                failed,
            ]
        )
    header = ["store", "resumes timed", "p50 ms", "p90 ms", "p99 ms", "max ms",
              "first frame replayed (not live)", "failed"]  # fmt: skip
    return out + _md_table(header, rows)


def _redis_log_section(bench: Bench) -> list[str]:
    log = bench.redis_log
    if not log:
        return []
    out = [
        "## Redis memory per logged token",
        "",
        (
            f"{int(log['streams'])} streams, half of {int(log['tokens_each'])} tokens and half "
            f"of {max(1, int(log['tokens_each']) // 5)} ({_num(int(log['tokens']))} tokens, "
            f"{bench_resume.LOG_RATE} tok/s), run to their finish on a fresh gateway with the "
            f"Redis store ({int(log['stopped'])} finished `stop`; the clients got "
            f"{_num(int(log['received_texts']))} `delta.text` frames, deltas queued for one "
            "connection merging, the logs every delta); their logs are then weighed: "
            "`MEMORY USAGE <key> SAMPLES 0` of every `ev` key (a stream of the frames) and "
            "`meta` key (the record), and the `used_memory` delta since before the streams "
            "(after a warm-up stream), per 1000 logged `delta.text` frames. The logs also hold "
            "each message's other frames (`stream.started`, `delta.role`, `usage`, `finish`). "
            "Marginal: the slope of an `ev` key's bytes over its text frames across the logs "
            "(least squares), without a log's own overhead (the intercept, per log)."
        ),
        "",
    ]
    rows = [
        [
            str(int(log["messages"])),
            _num(int(log["entries"])),
            _num(int(log["text_frames"])),
            _num(log["text_frame_bytes"], 1),
            _num(log["ev_bytes_per_1000"] / 1024, 1),
            _num(log["meta_bytes_per_1000"] / 1024, 1),
            _num(log["used_memory_per_1000"] / 1024, 1),
            _num(log["marginal_bytes_per_1000"] / 1024, 1),
            _num(log["bytes_per_log"], 0),
        ]
    ]
    header = ["logs", "entries", "delta.text frames", "mean delta.text frame bytes",
              "ev KiB per 1000 frames", "meta KiB per 1000 frames",
              "used_memory KiB per 1000 frames", "marginal ev KiB per 1000 frames",
              "ev bytes per log (intercept)"]  # fmt: skip
    return out + _md_table(header, rows)


def _memory_section(bench: Bench) -> list[str]:
    if not bench.memory:
        return []
    rows = [
        [
            t,
            _num(m["base_kib"] / 1024, 1),
            str(m["idle_connections"]),
            _num(m["kib_per_idle_connection"]),
            str(m["open_streams"]),
            _num(m["kib_per_open_stream"]),
        ]
        for t, m in bench.memory.items()
    ]
    header = [
        "target",
        "base RSS MiB",
        "idle connections",
        "KiB per idle connection",
        "open streams",
        "KiB per open stream (incl. its upstream connection)",
    ]
    return ["## Memory (VmRSS of a fresh process)", "", *_md_table(header, rows)]


def _cancel_section(bench: Bench) -> list[str]:
    rows = []
    for target in TARGETS:
        m = bench.get("cancel", target)
        if m is None:
            continue
        stats = (m.result.get("gateway_stats") or {}).get("cancel_to_upstream_close_ms") or {}
        own = f"{_num(stats.get('p50'))} / {_num(stats.get('p99'))}" if stats else "-"
        rows.append(
            [
                target,
                _pair(m, "cancel"),
                _pair(m, "cancel_upstream"),
                own,
                str(m.result["checks"].get("upstream_left_open", 0)),
            ]
        )
    if not rows:
        return []
    header = [
        "target",
        "cancel -> finish p50 / p99 ms",
        "cancel -> upstream closed (mock) ms",
        "gateway /stats cancel_to_upstream_close_ms p50 / p99",
        "upstreams left open",
    ]
    return ["## Cancellation", "", *_md_table(header, rows)]


def _unhappy_section(bench: Bench) -> list[str]:
    rows = []
    for target in TARGETS:
        m = bench.get("unhappy", target)
        if m is None:
            continue
        r = m.result
        unexpected = {k[11:]: v for k, v in r["checks"].items() if k.startswith("unexpected:")}
        outcomes = ", ".join(f"{k} {v}" for k, v in r["streams"].items())
        rows.append(
            [
                target,
                outcomes,
                ", ".join(f"{k} {v}" for k, v in r["errors"].items()),
                ", ".join(f"{k}: {v}" for k, v in unexpected.items()) or "none",
            ]
        )
    if not rows:
        return []
    header = ["target", "streams", "errors by code", "unexpected outcomes (plan -> outcome)"]
    return ["## Unhappy paths: correctness", "", *_md_table(header, rows)]


METHOD = """## Method

- Every stream's answer is a mock script: `words` generated words, one chunk per word, the
  first after `ttft_ms`, then `tokens_per_s`. Every completed stream is compared byte for byte
  with its script; cancelled and failed ones must hold a prefix of it; `seq` gaps and
  duplicates are counted (coalesced frames cover `first_seq`..`seq`).
- Token latency = arrival at the load generator minus the mock's schedule for that token (its
  request record gives the request's arrival on the shared CLOCK_MONOTONIC). The mock's timer
  has 1 ms granularity and may release a token up to ~1 ms early, so values are signed and the
  *direct* row is the floor: *added over direct* is what a relay or gateway costs, and
  differences under ~1 ms are within the mock's jitter. TTFT counts from each stream's
  scheduled start (coordinated omission: a late start is measured from its schedule).
- Paced workloads spread their starts evenly over one stream period and leave that first
  period (connection set-up) out of the latencies; every stream is still verified.
- The instruments are callback-driven so that they are not the limit: the mock writes paced
  tokens from one timer (no task wake-up per token), the direct reader decodes HTTP and SSE
  in its protocol callback, the WebSocket client parses frames in its own, and latency
  histograms are filled after the run. CPU 0 (mock and load generator) can still be the
  limit at the largest steps; the CPU 0 column says when it was saturated.
- Knee steps last 8 s: each slot runs one 8 s stream started during the first third (the
  ramp), latencies count from 0.5 s after the ramp; a step that failed on latency alone
  (no error, every check passed) with p99 within 20x the bound is run once more and fails
  only if both runs do.
- CPU: utime + stime from `/proc/PID/stat` over the load generator's whole run (ramp and drain
  included); deltas per SUT CPU-second = deltas delivered / that.
- Memory: a fresh process; 10 streams to warm it up; VmRSS before and after opening the idle
  connections, then after opening streams that stay open (first token at once, the next 20 s
  later) on connections of up to 200 streams; the streams' connections are subtracted.
- wsgate runs with `--log-level warning` (the relay logs nothing); compression is off on
  both. The relay lifts aiohttp's 100-connection pool limit.
""".splitlines()


def print_ratios(bench: Bench) -> None:
    """The targets table on stdout."""
    rows = target_rows(bench)
    header = ["measure", "wsgate", "naive", "wsgate/naive or value", "goal", "met"]
    print(_common.text_table(header, [list(r) for r in rows]))
    if bench.resume or bench.redis_log or "wsgate-redis" in bench.costs:
        print(_common.text_table(_STORE_HEADER, [list(r) for r in store_rows(bench)]))
        sentence = redis_cost_sentence(bench)
        if sentence:
            print(sentence)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; write BENCHMARKS.md; 0 unless a process failed to start or run."""
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a ~45 s run with smaller loads")
    parser.add_argument("--smoke", action="store_true", help="seconds: checks the harness only")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, of {', '.join(TARGETS)}",
    )
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="report file")
    parser.add_argument("--py-spy", metavar="PATH", help="profile wsgate's burst with py-spy")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    targets = tuple(t for t in args.targets.split(",") if t in TARGETS)
    logs = Path(tempfile.mkdtemp(prefix="wsgate-bench-"))
    try:
        bench = run_bench(mode, logs, targets, args.py_spy)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    command = "python scripts/bench.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    Path(args.out).write_text(render(bench, command.strip()), encoding="utf-8")
    print_ratios(bench)
    say(f"wrote {args.out} in {bench.seconds:.0f} s; process logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
