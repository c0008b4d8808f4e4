"""The load generator's command line: `wsgate loadtest` and `python scripts/loadtest.py`.

Owns the flags (one per `LoadConfig` field), exit codes (0 every check passed, 1 a check
failed, 2 usage, a target off loopback, or the `loadtest` extra missing) and the output: a
table, `--json`, `--html FILE`. Imports the runner only once the flags are valid, so
`--help` and usage errors work without `hdrhistogram`, and a missing extra is one line.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
import uvloop

from wsgate.loadgen.config import LoadConfig
from wsgate.loadgen.report import format_html, format_table
from wsgate.loadgen.websocket import raise_nofile

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MISSING_EXTRA = "needs hdrhistogram: pip install 'wsgate[loadtest]'"


def _parser(prog: str) -> argparse.ArgumentParser:
    d = LoadConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Load-test a wsgate.v1 gateway with scripted mock streams.",
        epilog="Latency, correctness and the unhappy paths are explained in the package "
        "docstring (python -m pydoc wsgate.loadgen).",
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


def main(argv: Sequence[str] | None = None, *, prog: str = "loadtest") -> int:
    """Run the command line; 0 when every check passed, 1 when one failed, 2 on usage."""
    args = _parser(prog).parse_args(argv)
    config = config_from_args(args)
    try:
        config.validate()
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from wsgate.loadgen.runner import run  # noqa: PLC0415 - only here is hdrh needed
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "hdrh":
            raise
        print(f"{prog}: {MISSING_EXTRA}", file=sys.stderr)
        return EXIT_USAGE
    raise_nofile()
    # The tester's garbage is acyclic; a cyclic collection over a heap of kept streams would
    # stall it for milliseconds and show up as latency of the system under test.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        result = uvloop.run(run(config))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        gc.enable()
    data = result.to_dict()
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_table(data))
    if args.html:
        Path(args.html).write_text(format_html(data), encoding="utf-8")
    return EXIT_OK if result.ok else EXIT_FAILED
