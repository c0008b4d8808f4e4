"""Latency recording of the load generator (`wsgate.loadgen.hist`, `tally`, `stream`).

Recording is deferred: values wait as raw floats and fill the HDR histogram when it is read,
at the end of the run, or when `cap` values are pending. Each test compares with recording
every value directly, the way it was done per token before: `int(seconds * 1e6)` µs plus
the signed shift, clamped to 1 µs..1 h, one `record_value` each. Token latency keeps its
coordinated-omission correction: measured against the mock's schedule, never the send.
"""

from __future__ import annotations

import math
import random
from itertools import accumulate

import pytest
from hdrh.histogram import HdrHistogram

from wsgate.loadgen.config import LoadConfig
from wsgate.loadgen.hist import Hist
from wsgate.loadgen.plan import Expected, Planner
from wsgate.loadgen.stream import Slot, Stream
from wsgate.loadgen.tally import Tally

SIGNED = 0.010  # the floor of token latency and gap excess


def direct(values, signed_floor_s=0.0):
    """An HDR histogram with each value recorded on its own, as `Hist.record` once did."""
    hist = HdrHistogram(Hist.LOWEST_US, Hist.HIGHEST_US, 3)
    shift = int(signed_floor_s * 1e6)
    for seconds in values:
        micros = int(seconds * 1e6) + shift
        hist.record_value(min(max(micros, Hist.LOWEST_US), Hist.HIGHEST_US))
    return hist


def assert_same(hist, reference):
    hist.flush()
    got = hist.hist
    assert got.get_total_count() == reference.get_total_count()
    assert got.get_min_value() == reference.get_min_value()
    assert got.get_max_value() == reference.get_max_value()
    assert list(got.counts) == list(reference.counts)
    for percentile in (0, 50, 90, 99, 99.9, 100):
        expected = reference.get_value_at_percentile(percentile)
        assert got.get_value_at_percentile(percentile) == expected


def latencies(rng, n):
    """Seconds around a few ms with a long tail, some early (negative), some out of range."""
    values = [rng.lognormvariate(-6.5, 1.2) - 0.001 for _ in range(n)]
    return [*values, -0.5, 0.0, 1e-7, 0.05, 4000.0, 3599.9999]


@pytest.mark.parametrize("signed_floor_s", [0.0, SIGNED])
def test_deferred_recording_fills_the_same_histogram_as_recording_each_value(signed_floor_s):
    values = latencies(random.Random(1), 20_000)
    hist = Hist(signed_floor_s)
    for seconds in values[:5000]:
        hist.record(seconds)
    hist.record_all(values[5000:])
    assert len(hist.pending) == len(values)  # nothing went into the histogram yet
    assert_same(hist, direct(values, signed_floor_s))
    assert not hist.pending


def test_pending_values_go_into_the_histogram_in_batches_once_the_cap_is_reached():
    values = latencies(random.Random(2), 5000)
    hist = Hist(SIGNED, cap=1000)
    for seconds in values[:2500]:
        hist.record(seconds)
        assert len(hist.pending) < 1000
    for start in range(2500, len(values), 300):
        hist.record_all(values[start : start + 300])
        assert len(hist.pending) < 1000
    assert 0 < hist.hist.get_total_count() < len(values)  # flushed in batches, not at the end
    assert_same(hist, direct(values, SIGNED))


def test_reading_a_histogram_includes_values_still_pending():
    hist = Hist()
    hist.record(0.002)
    assert hist.count == 1
    hist.record_all([0.001, 0.003])
    assert hist.summary() == {"count": 3, "p50": 2.0, "p90": 3.001, "p99": 3.001, "max": 3.001}
    other = Hist()
    other.record(0.004)
    hist.merge(other)
    assert hist.count == 4
    assert hist.ms_at(100) == 4.001


def test_summary_and_curve_give_the_value_of_each_percentile_read_on_its_own():
    hist = Hist(SIGNED)
    hist.record_all(latencies(random.Random(3), 10_000))
    summary, curve = hist.summary(), hist.curve()
    assert [summary[k] for k in ("p50", "p90", "p99")] == [hist.ms_at(p) for p in (50, 90, 99)]
    assert len(curve) == 42
    for step, (label, ms) in enumerate(curve[:-1]):
        percentile = 100 * (1 - 10 ** (-step / 10))
        assert (label, ms) == (round(percentile, 4), hist.ms_at(percentile))
    assert curve[-1] == (100.0, summary["max"])
    assert Hist().summary()["p50"] is None
    assert Hist().curve() == []


# --- Tally: gaps at each stream's end, token latency in the end-of-run pass ------------------

RATE, TTFT_MS, WORDS = 20.0, 100.0, 30


def paced_streams(config, count, rng):
    """Ended streams whose chunks arrived near their schedule, some a bit early, some late."""
    planner = Planner(config, rng, direct=True)
    streams = []
    for n in range(count):
        plan = planner.plan(f"t{n}")
        stream = Stream(f"s{n}", f"t{n}", plan, Slot(0, 0.0), 100.0 + n * 0.05)
        due, prev = stream.intended + TTFT_MS / 1000, 0
        for k, end in enumerate(plan.expected.ends):
            now = due + k / RATE + rng.uniform(-0.0008, 0.004) + (0.2 if k == 7 else 0)
            stream.text(plan.expected.text[prev:end], now)
            prev = end
        stream.outcome, stream.end_at = "stop", stream.recv[-1]
        streams.append(stream)
    return streams


def test_tally_records_the_same_gaps_and_token_latencies_as_recording_each_token():
    config = LoadConfig(
        direct="http://127.0.0.1:9/v1", words=WORDS, tokens_per_s=RATE, ttft_ms=TTFT_MS
    )
    rng = random.Random(4)
    streams = paced_streams(config, 60, rng)
    tally = Tally(config)
    tally.measure_from = 100.0 + 1.0  # a warm-up: leaves out tokens due in the first second
    for stream in streams:
        tally.add(stream)
    # The mock's own arrival time anchors the schedule; streams without a record use theirs.
    records = {s.tag: {"started_at": s.intended + 0.0007} for s in streams[::2]}
    assert tally.anchor(records) == {"mock": 30, "client": 30}
    assert all(not h.pending for h in tally.hists.values())  # the end-of-run pass filled them

    gaps, excess, tokens = [], [], []
    for stream in streams:
        recv = stream.recv
        start = records[stream.tag]["started_at"] if stream.tag in records else stream.intended
        ahead = tally.measure_from - stream.intended - TTFT_MS / 1000
        first = max(0, math.ceil(ahead * RATE)) if ahead > 0 else 0
        tokens.extend(
            recv[k] - (start + TTFT_MS / 1000 + k / RATE) for k in range(first, len(recv))
        )
        for i in range(max(1, first), len(recv)):
            gaps.append(recv[i] - recv[i - 1])
            excess.append(recv[i] - recv[i - 1] - 1 / RATE)
    assert 0 < len(tokens) < len(streams) * WORDS  # the warm-up left some out
    assert_same(tally.hists["token"], direct(tokens, SIGNED))
    assert_same(tally.hists["gap"], direct(gaps))
    assert_same(tally.hists["gap_excess"], direct(excess, SIGNED))
    assert tally.hists["e2e"].count == sum(s.intended >= tally.measure_from for s in streams)
    assert tally.checks["verified"] == len(streams)


def test_tally_still_counts_a_stream_whose_text_differs_by_one_character():
    config = LoadConfig(direct="http://127.0.0.1:9/v1", words=WORDS, tokens_per_s=RATE)
    good, bad, short = paced_streams(config, 3, random.Random(5))
    bad.pieces[3] = bad.pieces[3][:-1] + "#"
    short.outcome = "cancelled"
    short.pieces[-1] = "x"
    tally = Tally(config)
    for stream in (good, bad, short):
        tally.add(stream)
    assert (tally.checks["verified"], tally.checks["mismatches"]) == (1, 1)
    assert tally.checks["prefix_mismatches"] == 1


# --- Stream.text: which pieces complete which chunks -----------------------------------------


def chunks_completed_one_by_one(ends, pieces):
    """The old per-token loop: a chunk arrives with the piece that holds its last character."""
    arrived, chars, out = 0, 0, []
    for piece in pieces:
        chars += len(piece)
        done = 0
        while arrived < len(ends) and ends[arrived] <= chars:
            arrived, done = arrived + 1, done + 1
        out.append(done)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_stream_text_completes_chunks_with_the_piece_that_holds_their_last_character(seed):
    rng = random.Random(seed)
    chunks = ["", "Hello", ",", " world", "", "!", " A", " longer", " tail."]
    expected = Expected.of(chunks)
    text, cuts = expected.text + "extra", sorted(rng.sample(range(1, 40), 12))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if b > a]
    plan = Planner(LoadConfig(), rng, direct=True).plan("t")
    stream = Stream("s", "t", plan, Slot(0, 0.0), 0.0)
    stream.ends = expected.ends
    done = [stream.text(piece, float(i + 1)) for i, piece in enumerate(pieces)]
    assert done == chunks_completed_one_by_one(expected.ends, pieces)
    assert sum(done) == len(chunks)
    times = [float(i + 1) for i, n in enumerate(done) for _ in range(n)]
    assert list(stream.recv) == times
    assert stream.first_at == 1.0
    assert "".join(stream.pieces) == text
    assert list(accumulate(len(p) for p in pieces))[-1] == stream.chars
