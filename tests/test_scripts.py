"""Smoke runs of the bundled load tools: the load generator (`wsgate.loadgen`, behind
`wsgate loadtest` and `scripts/loadtest.py`) against a real gateway, the naive relay and the
mock read directly; the bench harness in its smallest mode. They assert the output's structure
and the correctness counts, never speed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import orjson
import pytest
from proc_helpers import WSGATE
from store_helpers import redis_server_binary

from wsgate.app import App
from wsgate.cli import main as wsgate_main
from wsgate.config import load_settings
from wsgate.loadgen import command, report, websocket
from wsgate.loadgen.config import LoadConfig
from wsgate.loadgen.plan import Expected, Plan
from wsgate.loadgen.runner import run
from wsgate.loadgen.stream import Slot, Stream
from wsgate.loadgen.tally import Result
from wsgate.mock import MockProvider
from wsgate.testing_redis import free_port

SCRIPTS = Path(__file__).parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_resume  # noqa: E402
import loadtest  # noqa: E402 - the wrapper script, still run by the bench and the docs
import naive_relay  # noqa: E402
import read_floor  # noqa: E402

MUST_BE_ZERO = (
    "mismatches",
    "prefix_mismatches",
    "seq_gaps",
    "seq_duplicates",
    "unexpected_outcomes",
    "frames_after_finish",
    "upstream_left_open",
)
SMALL = {
    "connections": 2,
    "streams_per_connection": 3,
    "words": 12,
    "tokens_per_s": 200.0,
    "ttft_ms": 5.0,
    "duration_s": 1.0,
    "ramp_s": 0.1,
    "drain_s": 5.0,
    "progress": False,
}


@pytest.fixture
async def app():
    overrides = {"server.port": 0, "mock.ttft_ms": 0, "limits.max_frame_bytes": 2048}
    application = App(load_settings(None, environ={}, overrides=overrides), environ={})
    await application.start()
    yield application
    await application.stop()


@pytest.fixture
async def mock():
    provider = MockProvider()
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture
async def relay(mock):
    ready = asyncio.Event()
    port = free_port()
    task = asyncio.create_task(naive_relay.serve_relay(mock.base_url, "127.0.0.1", port, ready))
    await asyncio.wait_for(ready.wait(), 5)
    yield f"ws://127.0.0.1:{port}/v1/ws"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def assert_correct(result: Result | dict) -> dict:
    data = result if isinstance(result, dict) else orjson.loads(orjson.dumps(result.to_dict()))
    bad = {key: data["checks"][key] for key in MUST_BE_ZERO if data["checks"][key]}
    assert not bad, (bad, data["checks"], data["streams"], data["errors"])
    assert data["ok"] is True
    assert data["streams"].get("unfinished", 0) == 0
    assert data["checks"]["verified"] == data["streams"]["completed"] > 0
    assert data["throughput"]["deltas"] > 0
    return data


async def test_loadtest_verifies_every_stream_through_the_gateway_under_the_unhappy_mix(app):
    config = LoadConfig(
        url=app.url,
        mock_url=app.mock.base_url,
        cancel_fraction=0.3,
        fault_fraction=0.2,
        oversized_fraction=0.1,
        drop_fraction=0.5,
        slow_fraction=0.5,
        slow_pause_ms=30,
        slow_every_ms=60,
        seed=7,
        **SMALL,
    )
    data = assert_correct(await run(config))
    assert set(data) >= {"streams", "checks", "errors", "throughput", "latency_ms", "timeline"}
    assert data["target"] == "gateway"
    assert data["anchors"].get("mock", 0) > 0
    slow = data["slow_latency_ms"].get("token", {"count": 0})
    assert data["latency_ms"]["token"]["count"] + slow["count"] > 0
    assert set(data["latency_ms"]["ttft"]) == {"count", "p50", "p90", "p99", "max"}
    streams = data["streams"]
    assert streams["cancelled"] > 0
    assert streams["failed"] > 0
    assert streams["refused"] > 0
    assert data["errors"]["frame_too_large"] == streams["refused"]
    assert data["gateway_stats"]["finishes"]["stop"] >= streams["completed"]


async def test_loadtest_drives_the_naive_relay_unchanged(relay, mock):
    config = LoadConfig(url=relay, mock_url=mock.base_url, cancel_fraction=0.3, **SMALL)
    data = assert_correct(await run(config))
    assert data["streams"]["cancelled"] > 0
    assert data["latency_ms"]["cancel"]["count"] > 0
    assert data["gateway_stats"] is None


async def test_loadtest_reads_the_mock_directly_as_the_floor(mock):
    config = LoadConfig(direct=mock.base_url, cancel_fraction=0.2, fault_fraction=0.2, **SMALL)
    data = assert_correct(await run(config))
    assert data["target"] == "direct"
    assert data["anchors"]["mock"] > 0
    assert data["latency_ms"]["cancel_upstream"]["count"] > 0


async def test_loadtest_burst_counts_every_delta_and_renders_its_reports(app):
    config = LoadConfig(
        url=app.url, **{**SMALL, "tokens_per_s": 0.0, "words": 300, "duration_s": 0.5}
    )
    data = assert_correct(await run(config))
    assert data["throughput"]["deltas"] == 300 * data["streams"]["completed"]
    table = report.format_table(data)
    assert "TTFT" in table
    assert "OK" in table
    page = report.format_html(data)
    assert page.startswith("<!doctype html>")
    assert "<svg" in page


def test_loadtest_refuses_a_target_off_loopback(capsys):
    assert loadtest.main(["ws://192.0.2.1:8080/v1/ws", "--duration", "1"]) == 2
    assert "loopback" in capsys.readouterr().err


SMALL_FLAGS = [
    *("-c", "2", "-s", "3", "--words", "12", "--rate", "200", "--ttft-ms", "5"),
    *("--duration", "1", "--ramp", "0.1", "--drain-s", "5"),
]


def test_wsgate_loadtest_help_lists_the_load_testers_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        wsgate_main(["loadtest", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: wsgate loadtest")
    for flag in ("--direct", "--mock-url", "--streams-per-conn", "--rate", "--cancel", "--html"):
        assert flag in out


def test_wsgate_loadtest_refuses_a_target_off_loopback_in_one_line(capsys):
    assert wsgate_main(["loadtest", "ws://192.0.2.1:8080/v1/ws", "--json"]) == 2
    assert capsys.readouterr().err == (
        "wsgate loadtest: ws://192.0.2.1:8080/v1/ws: the load tools talk to loopback hosts only\n"
    )


def test_wsgate_loadtest_without_hdrhistogram_names_the_extra_to_install(monkeypatch, capsys):
    for name in ("hdrh", "hdrh.histogram"):
        monkeypatch.setitem(sys.modules, name, None)  # what an import finds when it is missing
    for name in ("wsgate.loadgen.runner", "wsgate.loadgen.tally", "wsgate.loadgen.hist"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert wsgate_main(["loadtest", "--duration", "1"]) == 2
    assert capsys.readouterr().err == f"wsgate loadtest: {command.MISSING_EXTRA}\n"
    assert "wsgate[loadtest]" in command.MISSING_EXTRA


async def test_wsgate_loadtest_runs_through_the_command_line_and_writes_json_and_html(
    app, tmp_path
):
    page = tmp_path / "report.html"
    proc = await asyncio.create_subprocess_exec(
        *WSGATE,
        *("loadtest", app.url, "--mock-url", app.mock.base_url, "--cancel", "0.3"),
        *("--json", "--html", str(page), "-q", *SMALL_FLAGS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    data = assert_correct(orjson.loads(out))
    assert data["target"] == "gateway"
    assert data["config"]["connections"] == 2
    streams = data["streams"]
    assert streams["cancelled"] > 0
    ended = sum(count for key, count in streams.items() if key not in ("started", "late_starts"))
    assert ended == streams["started"]
    assert data["gateway_stats"]["finishes"]["stop"] >= streams["completed"]
    html = page.read_text()
    assert html.startswith("<!doctype html>")
    assert "<svg" in html


def test_stream_counts_gaps_and_duplicates_across_coalesced_frames():
    plan = Plan("normal", {}, Expected.of(["a"]), frozenset({"stop"}))
    stream = Stream("s1", "t", plan, Slot(0, 0.0), 0.0)
    for first, last in [(1, 1), (2, 4), (5, 5), (8, 9), (9, 10), (11, 11)]:
        stream.seq(first, last)
    assert (stream.gaps, stream.dups) == (2, 1)


def test_stream_times_each_chunk_when_its_last_character_arrives():
    chunks = ["Hello", " wide", " world."]
    plan = Plan("normal", {}, Expected.of(chunks), frozenset({"stop"}))
    stream = Stream("s1", "t", plan, Slot(0, 0.0), 0.0)
    assert stream.text("Hel", 1.0) == 0
    assert stream.text("lo wide w", 2.0) == 2  # a coalesced piece completes two chunks
    assert stream.text("orld.", 3.0) == 1
    assert list(stream.recv) == [2.0, 2.0, 3.0]


class RecordingTransport:
    def __init__(self):
        self.written = []
        self.closed = False

    def write(self, data):
        self.written.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True


def _server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return bytes((first, 126)) + size.to_bytes(2, "big") + payload
    return bytes((first, 127)) + size.to_bytes(8, "big") + payload


async def _handshaken(received: list) -> tuple[websocket.RawWebSocket, RecordingTransport]:
    ws = websocket.RawWebSocket(
        "ws://127.0.0.1:1/v1/ws", "wsgate.v1", lambda p, _t: received.append(p)
    )
    transport = RecordingTransport()
    ws.connection_made(transport)
    key = transport.written[0].split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
    import base64  # noqa: PLC0415
    import hashlib  # noqa: PLC0415

    accept = base64.b64encode(hashlib.sha1(key + websocket._WS_GUID).digest())  # noqa: S324
    ws.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    assert ws.handshake.done()
    return ws, transport


@pytest.mark.parametrize("split", ["whole", "byte_by_byte"])
async def test_raw_websocket_parses_text_fragments_and_pings_however_the_bytes_arrive(split):
    received: list[bytes] = []
    ws, transport = await _handshaken(received)
    big = b"x" * 70_000
    stream = (
        _server_frame(1, b'{"a":1}')
        + _server_frame(1, b"part-", fin=False)
        + _server_frame(9, b"hi")
        + _server_frame(0, b"two")
        + _server_frame(1, b"y" * 300)
        + _server_frame(1, big)
        + b"\x81"  # trailing: the start of a frame that has not arrived yet
    )
    if split == "whole":
        ws.data_received(stream)
    else:
        for i in range(len(stream)):
            ws.data_received(stream[i : i + 1])
    assert received == [b'{"a":1}', b"part-two", b"y" * 300, big]
    assert transport.written[-1] == b"\x8a\x82\x00\x00\x00\x00hi"  # pong, masked with zeros


def _section(report: str, heading: str) -> str:
    return report.split(heading, 1)[1].split("\n## ", 1)[0]


def _row(section: str, start: str) -> list[str]:
    line = next(line for line in section.splitlines() if line.startswith(f"| {start}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.mark.slow
@pytest.mark.timeout(180)  # about 70 s: every target, one cost round each, the store measures
def test_bench_smoke_run_measures_every_target_and_writes_its_report(tmp_path, capsys):
    import bench  # noqa: PLC0415 - imported here: only this test needs it

    redis_server_binary()  # the Redis target needs one (skipped, or failed under CI, without)
    out = tmp_path / "BENCHMARKS.md"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    report = out.read_text()
    for heading in ("## Targets (issue 12", "## Targets (the Redis store", "## Workloads",
                    "## Memory", "## Method"):  # fmt: skip
        assert heading in report
    rows = [
        line for line in report.splitlines() if line.startswith(("| direct", "| naive", "| wsgate"))
    ]
    workload_rows = [row for row in rows if row.count("|") == 12]
    assert len(workload_rows) == 10  # two workloads x five targets (a)-(e)
    assert all("| ok |" in row for row in workload_rows), workload_rows
    printed = capsys.readouterr().out
    assert "burst deltas per SUT CPU-second" in printed
    assert "Redis mode costs" in printed
    costs = _section(report, "## What a token costs")
    readers = ("bare socket read", "relay floor", "push read floor", "pull read floor")
    readers += ("naive relay", "wsgate", "wsgate, Redis store")
    for reader in (*readers, "wsgate (pull reader"):
        assert _row(costs, reader)[-1] == "ok", reader
    assert "the relay's CPU per token (target <= 0.4x" in costs
    assert "wsgate's own Python per token, with no socket on either side" in costs
    assert "The relay floor alone is" in costs
    _assert_store_rows(_section(report, "## Targets (the Redis store"))
    redis = _section(report, "## The Redis store at")
    for measure in ("redis-server CPU per token", "commands/s", "EVALSHA calls/s",
                    "frames logged per flush"):  # fmt: skip
        assert _row(redis, measure)[1] != "-", measure
    resumes = _section(report, "## Resume latency")
    for store in ("memory", "Redis"):
        cells = _row(resumes, store)
        assert cells[1] == "20", cells  # every resume timed
        assert cells[-2] == "20 of 20", cells  # each got a replayed frame first
        assert cells[-1] == "none", cells
    weighed = _section(report, "## Redis memory per logged token")
    cells = _row(weighed, "10")  # ten logs
    assert cells[2] == "120"  # every token logged: five answers of 20 tokens, five of 4
    assert float(cells[4]) > 0  # ev KiB per 1000 frames


def _assert_store_rows(targets: str) -> None:
    cpu = _row(targets, "CPU per token")
    assert cpu[1] != "-"
    assert cpu[2] != "-"
    # A smoke window holds a few CPU clock ticks: the ratio may not be resolved.
    assert cpu[3].endswith("x") or cpu[3].startswith("n/a"), cpu
    assert _row(targets, "redis-server's own CPU")[1] != "-"
    assert _row(targets, "Redis commands/s")[1] != "-"
    resume = _row(targets, "resume sent -> first replayed frame")
    assert "-" not in resume[1]
    assert "-" not in resume[2]
    assert resume[-1] in ("yes", "**no**")
    assert "marginal" in _row(targets, "Redis memory per 1000")[1]
    assert "Redis mode costs" in targets


def test_bench_guards_every_ratio_against_a_reference_that_measured_zero():
    import bench  # noqa: PLC0415 - imported here: only these tests need it

    run = bench.Bench("smoke")
    run.costs = {
        "naive": bench.Cost("naive", 0.0, 0.0),  # no clock tick in its window
        "wsgate": bench.Cost("wsgate", 0.0, 0.0, samples=(0.0,)),
        "wsgate-redis": bench.Cost("wsgate-redis", 138.8, 0.01, samples=(138.8,)),
        "read-socket-relay": bench.Cost("read-socket-relay", 25.0, 0.01),
    }
    costs = "\n".join(bench._cost_section(run))
    assert costs.count(bench.UNRESOLVED) >= 4  # two sentences and two shares
    assert "wsgate costs n/a (below the clock's resolution) the relay's" in costs
    assert bench.target_rows(run)[0][3] == bench.UNRESOLVED
    assert bench.store_rows(run)[0][3] == bench.UNRESOLVED
    assert bench.UNRESOLVED in (bench.redis_cost_sentence(run) or "")
    assert bench._times(3.0, 2.0) == "1.50x"
    assert bench._times(None, 2.0) == "-"
    assert bench.render(run, "bench --smoke").startswith("# wsgate benchmarks")


def test_bench_resume_helpers_count_redis_windows_and_fit_a_logs_overhead():
    assert bench_resume.percentiles([3.0, 1.0, 2.0]) == {
        "count": 3, "p50": 2.0, "p90": 3.0, "p99": 3.0, "max": 3.0,
    }  # fmt: skip
    assert bench_resume.percentiles([])["p99"] is None
    before = {"cpu_s": 1.0, "commands": 100.0, "scripts": 10.0, "xadd": 50.0, "net_in": 0.0,
              "used_memory": 0.0}  # fmt: skip
    after = {"cpu_s": 1.5, "commands": 301.0, "scripts": 30.0, "xadd": 450.0, "net_in": 2e4,
             "used_memory": 0.0}  # fmt: skip
    stats = bench_resume.window_stats(before, after, 2.0, 400.0)
    assert stats["redis_us_per_token"] == 1250.0
    assert stats["commands_per_s"] == 100.0  # the first sample's own INFO taken out
    assert stats["scripts_per_s"] == 10.0
    assert stats["frames_per_script"] == 20.0
    assert bench_resume._fit([(10, 1100), (50, 3100), (10, 1100)]) == pytest.approx((50.0, 600.0))
    assert bench_resume.log_lengths(4, 100) == [100, 20, 100, 20]


async def test_bench_resume_times_resumes_of_dropped_generations_on_the_memory_store(app):
    result = await bench_resume.resume_latency(app.url, 5, 3)
    assert result["failed"] == {}
    assert result["latency_ms"]["count"] == 5
    assert result["replayed_first"] == 5
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["max"]


@pytest.fixture
async def redis_app(redis_url):
    overrides = {"server.port": 0, "mock.ttft_ms": 0, "store.kind": "redis", "store.url": redis_url}
    application = App(load_settings(None, environ={}, overrides=overrides), environ={})
    await application.start()
    yield application
    await application.stop()


async def test_bench_resume_weighs_the_redis_logs_of_finished_streams(redis_app, redis_url):
    probe = bench_resume.RedisProbe(redis_url)
    try:
        assert probe.pid() > 0
        result = await bench_resume.resume_latency(redis_app.url, 2, 2)
        assert result["failed"] == {}
        assert result["latency_ms"]["count"] == 2
        await asyncio.to_thread(probe.flushall)
        base = await asyncio.to_thread(lambda: probe.sample()["used_memory"])
        ran = await bench_resume.run_streams(redis_app.url, [10, 2, 10, 2], per_conn=2)
        assert ran == {"finished": 4, "stopped": 4, "received_texts": 24}
        await asyncio.sleep(0.2)  # the last flush
        keys = await asyncio.to_thread(bench_resume.log_keys, probe)
        weighed = await asyncio.to_thread(bench_resume.log_memory, probe, keys, base)
    finally:
        probe.close()
    assert weighed["messages"] == 4
    assert weighed["text_frames"] == 24
    assert weighed["entries"] > 24  # the started, role, usage and finish frames too
    assert weighed["ev_bytes_per_1000"] > 0
    assert weighed["meta_bytes_per_1000"] > 0


def test_token_path_feeds_one_connection_and_reports_cpu_and_calls_per_token(capsys):
    import token_path  # noqa: PLC0415 - imported here: only this test needs it

    assert token_path.main(["--tokens", "300"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["tokens"] == 300
    assert result["loop_turn_us"] > 0
    assert 10 < result["calls_per_token"] < 1000  # the shell and the core ran per token


@pytest.mark.parametrize("mode", ["socket", "socket-relay", "aiohttp", "aiohttp-push"])
async def test_read_floor_reads_every_paced_answer_and_counts_the_steady_windows_events(mock, mode):
    args = argparse.Namespace(upstream=mock.base_url, streams=3, mode=mode, seconds=3.0, window=0.5)
    result = await read_floor.run(args)
    assert result["failed"] == 0
    assert result["mode"] == mode
    assert result["streams"] == 3
    assert result["events"] > 0  # three streams at 20 tok/s for half a second: about 30
    assert result["cpu_s"] >= 0
    assert len(mock.records) == 3


async def test_read_floor_counts_an_answer_that_is_not_a_stream_as_failed(mock):
    args = argparse.Namespace(
        upstream=mock.base_url + "/nowhere", streams=2, mode="socket", seconds=3.0, window=0.5
    )
    result = await read_floor.run(args)
    assert result["failed"] == 2
    assert result["events"] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--upstream", "http://192.0.2.1:8090/v1"],
        ["--upstream", "http://127.0.0.1:8090/v1", "--streams", "0"],
        ["--upstream", "http://127.0.0.1:8090/v1", "--seconds", "2", "--window", "2.5"],
    ],
)
def test_read_floor_refuses_a_target_off_loopback_or_a_window_outside_the_answers(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        read_floor.main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def _knee_result(p99: float, *, ok: bool = True, errors: int = 0) -> dict[str, object]:
    return {"ok": ok, "errors": {"upstream_error": errors} if errors else {},
            "latency_ms": {"token": {"p50": 0.5, "p99": p99}}}  # fmt: skip


@pytest.mark.parametrize(
    ("first", "runs"),
    [
        (_knee_result(9.0), 2),  # latency alone, not saturation: once more
        (_knee_result(900.0), 1),  # plain saturation: not again
        (_knee_result(2.0, ok=False), 1),  # a failed check is a failure, whatever the latency
        (_knee_result(2.0, errors=3), 1),  # so is an error
    ],
)
def test_bench_knee_runs_a_step_again_only_when_it_failed_on_latency_short_of_saturation(
    monkeypatch, first, runs
):
    import bench  # noqa: PLC0415 - imported here: only these tests need it

    calls: list[int] = []

    def fake_step(fleet, target, streams):
        calls.append(streams)
        result = first if len(calls) == 1 else _knee_result(900.0)
        step = bench.Measured(f"knee_{streams}", target, result, 1.0, 1.0, 1.0)
        step.extra["streams"] = streams
        step.extra["passed"] = bench.knee_passed(step)
        return step

    monkeypatch.setattr(bench, "knee_step", fake_step)
    profile = bench.Profile((), (400, 4000), 0, 0)
    bench.knee(None, "wsgate", profile)
    assert calls[:runs] == [400] * runs
    assert calls[runs] != 400


def test_bench_steady_window_refuses_a_window_the_load_generator_did_not_outlast():
    import subprocess  # noqa: PLC0415 - only these bench tests start processes

    import bench  # noqa: PLC0415 - imported here: only these tests need it

    class Counter:
        def cpu_s(self) -> float:
            return 1.0

    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    quick.wait()
    with pytest.raises(RuntimeError, match="outlasted"):
        bench._Window(Counter(), quick, 0.01, 0.01).result()  # type: ignore[arg-type]
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert bench._Window(Counter(), slow, 0.01, 0.05).result()[0] == 0.0  # type: ignore[arg-type]
    finally:
        slow.kill()
        slow.wait()


def test_bench_names_every_failed_check_and_unfinished_streams_in_a_workload_row():
    import bench  # noqa: PLC0415 - imported here: only these tests need it

    result = {
        "ok": False,
        "errors": {},
        "checks": {"verified": 90, "mismatches": 0, "upstream_left_open": 2},
        "streams": {"started": 100, "unfinished": 3},
        "throughput": {"deltas_per_s": 1.0, "frames_per_s": 1.0, "deltas": 10},
        "latency_ms": {},
        "loadgen_cpu_s": 0.1,
    }
    run = bench.Bench("smoke", [bench.Measured("burst", "naive", result, 1.0, 0.1, 1.0)])
    (row,) = bench.workload_rows(run, "burst")
    assert "FAILED: upstream_left_open 2, unfinished 3" in row
