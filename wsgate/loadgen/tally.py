"""Verifying the streams of a load and recording their latencies; the run's `Result`.

Owns `Tally`: every ended stream is checked against its plan (byte-exact text on `stop`, a
prefix otherwise, `seq` gaps and duplicates, the expected outcome) and its TTFT, end-to-end,
cancel and inter-token times go into HDR histograms (as raw floats: `Hist` fills the
histogram later); token latency against the mock's own schedule, and upstream close times,
are added at the end from the mock's request records (`anchor`, which then fills them all).
Latencies are measured from schedules, never from sends (coordinated omission, see the
package docstring). `Result` is the `--json` document. No I/O here.
"""

from __future__ import annotations

import array
import math
import operator
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import repeat
from typing import Any

from wsgate.loadgen.config import LoadConfig
from wsgate.loadgen.hist import Hist
from wsgate.loadgen.stream import Stream

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
        recv, first = stream.recv, max(1, self._first_measured(stream))
        if first < len(recv):  # recv[i] - recv[i - 1] for each measured i, without a loop here
            gaps = array.array("d", map(operator.sub, recv[first:], recv[first - 1 :]))
            hists["gap"].record_all(gaps)
            hists["gap_excess"].record_all(map(operator.sub, gaps, repeat(step)))

    def anchor(self, records: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Token latency and upstream close times, from the mock's records when present.

        The end-of-run pass: it also fills every histogram from its pending values.
        """
        anchors: Counter[str] = Counter()
        ttft, rate = self.config.ttft_ms / 1000, self.config.tokens_per_s
        for stream in self.kept:
            record = records.get(stream.tag)
            hists = self.slow_hists if stream.slow else self.hists
            if rate and len(stream.recv):
                anchors["mock" if record else "client"] += 1
                start = record["started_at"] if record else stream.intended
                due, recv = start + ttft, stream.recv
                first = self._first_measured(stream)
                hists["token"].record_all(
                    [recv[k] - (due + k / rate) for k in range(first, len(recv))]
                )
            if stream.cancel_at and record is not None:
                self._upstream_close(stream, record, hists)
        for hist in (*self.hists.values(), *self.slow_hists.values()):
            hist.flush()  # here, so the run's CPU figure includes filling the histograms
        return dict(anchors)

    def _first_measured(self, stream: Stream) -> int:
        """The first token due after the warm-up (by the stream's own schedule)."""
        ahead = self.measure_from - stream.intended - self.config.ttft_ms / 1000
        return max(0, math.ceil(ahead * self.config.tokens_per_s)) if ahead > 0 else 0

    def _upstream_close(
        self, stream: Stream, record: dict[str, Any], hists: dict[str, Hist]
    ) -> None:
        closed = record.get("disconnected_at")
        if closed is not None:
            if stream.intended < self.measure_from:
                return
            name = "drop_upstream" if stream.outcome == "dropped" else "cancel_upstream"
            hists[name].record(closed - stream.cancel_at)
        elif record.get("completed_at") is None and record.get("status") == 200:
            self.checks["upstream_left_open"] += 1


def _hists() -> dict[str, Hist]:
    # Token latency and gap excess are signed: the mock may release a token up to ~1 ms
    # before its schedule (timer granularity), and clamping that to 0 would bias the floor.
    signed = {"token": 0.010, "gap_excess": 0.010}
    return {name: Hist(signed.get(name, 0.0)) for name in HIST_NAMES}


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
MUST_BE_ZERO = CHECK_KEYS[1:]
