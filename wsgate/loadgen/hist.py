"""HDR histograms of durations for the load generator: recorded in seconds, reported in ms.

Owns `Hist`, a thin wrapper of `hdrh.histogram.HdrHistogram` (1 µs to 1 h, 3 significant
digits: at most 0.1 % error at any magnitude, in fixed memory whatever the sample count).
Recording only appends the raw float to a buffer: `hdrh` is pure Python, several calls per
value, and the load generator shares a core with the mock, so the histogram is filled when
it is read (or when the buffer reaches `cap` values), never value by value on the hot path.
The only module of the package that needs `hdrhistogram`, the `loadtest` extra.
"""

from __future__ import annotations

import array
import operator
from collections import Counter
from collections.abc import Iterable
from itertools import repeat

from hdrh.histogram import HdrHistogram


class Hist:
    """An HDR histogram of durations recorded in seconds, stored in µs, reported in ms.

    `signed_floor_s` > 0 keeps values down to minus that (stored shifted up by it, reported
    shifted back): a token the mock released a little before its schedule is then shown as
    early, not clamped to zero, so differences between targets stay unbiased.

    Values wait in `pending` (8 bytes each) until a read or `flush`; once it holds `cap`
    values they go into the histogram, so it never holds more than `cap` plus one
    `record_all` batch: 8 MB at the default cap, whatever the length of the run.
    """

    __slots__ = ("cap", "hist", "pending", "shift_us")

    LOWEST_US = 1
    HIGHEST_US = 3_600_000_000
    CAP = 1_000_000

    def __init__(self, signed_floor_s: float = 0.0, cap: int = CAP) -> None:
        self.hist = HdrHistogram(self.LOWEST_US, self.HIGHEST_US, 3)
        self.shift_us = int(signed_floor_s * 1e6)
        self.pending = array.array("d")
        self.cap = cap

    def record(self, seconds: float) -> None:
        """Record one duration; values below the floor count as the floor."""
        self.pending.append(seconds)
        if len(self.pending) >= self.cap:
            self.flush()

    def record_all(self, seconds: Iterable[float]) -> None:
        """Record many durations at once (an `array`, a `map` of floats...)."""
        self.pending.extend(seconds)
        if len(self.pending) >= self.cap:
            self.flush()

    def flush(self) -> None:
        """Move the pending values into the histogram.

        Each becomes `int(seconds * 1e6)` µs plus the shift, clamped to the range, as if
        recorded one by one; equal values are counted first and recorded once each.
        """
        if not self.pending:
            return
        pending, self.pending = self.pending, array.array("d")
        micros = Counter(map(int, map(operator.mul, pending, repeat(1e6))))
        shift, low, high, record = self.shift_us, self.LOWEST_US, self.HIGHEST_US, self.hist
        for value, count in micros.items():
            record.record_value(min(max(value + shift, low), high), count)

    def merge(self, other: Hist) -> None:
        """Add another histogram's counts to this one."""
        self.flush()
        other.flush()
        self.hist.add(other.hist)

    @property
    def count(self) -> int:
        """Recorded values."""
        self.flush()
        return int(self.hist.get_total_count())

    def ms_at(self, percentile: float) -> float:
        """The value at `percentile` (0..100) in milliseconds."""
        self.flush()
        return self._ms(self.hist.get_value_at_percentile(percentile))

    def _ms(self, micros: int) -> float:
        return round((micros - self.shift_us) / 1000, 3)

    def _ms_at_all(self, percentiles: list[float]) -> dict[float, float]:
        # One pass over the counts for all of them, not one per percentile (same values).
        values = self.hist.get_percentile_to_value_dict(percentiles)
        return {p: self._ms(values.get(p, 0)) for p in percentiles}

    def summary(self) -> dict[str, float | int | None]:
        """count, p50, p90, p99 and max in milliseconds (None when empty)."""
        if not self.count:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
        at = self._ms_at_all([50, 90, 99])
        return {
            "count": self.count,
            "p50": at[50],
            "p90": at[90],
            "p99": at[99],
            "max": self._ms(self.hist.get_max_value()),
        }

    def curve(self) -> list[tuple[float, float]]:
        """(percentile, ms) pairs spaced evenly in log(1 / (1 - p)), for the plots."""
        if not self.count:
            return []
        percentiles = [100 * (1 - 10 ** (-step / 10)) for step in range(41)]
        at = self._ms_at_all(percentiles)
        points = [(round(p, 4), at[p]) for p in percentiles]
        points.append((100.0, self._ms(self.hist.get_max_value())))
        return points
