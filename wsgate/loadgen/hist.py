"""HDR histograms of durations for the load generator: recorded in seconds, reported in ms.

Owns `Hist`, a thin wrapper of `hdrh.histogram.HdrHistogram` (1 µs to 1 h, 3 significant
digits: at most 0.1 % error at any magnitude, in fixed memory whatever the sample count).
The only module of the package that needs `hdrhistogram`, the `loadtest` extra.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram


class Hist:
    """An HDR histogram of durations recorded in seconds, stored in µs, reported in ms.

    `signed_floor_s` > 0 keeps values down to minus that (stored shifted up by it, reported
    shifted back): a token the mock released a little before its schedule is then shown as
    early, not clamped to zero, so differences between targets stay unbiased.
    """

    __slots__ = ("hist", "shift_us")

    LOWEST_US = 1
    HIGHEST_US = 3_600_000_000

    def __init__(self, signed_floor_s: float = 0.0) -> None:
        self.hist = HdrHistogram(self.LOWEST_US, self.HIGHEST_US, 3)
        self.shift_us = int(signed_floor_s * 1e6)

    def record(self, seconds: float) -> None:
        """Record one duration; values below the floor count as the floor."""
        micros = int(seconds * 1e6) + self.shift_us
        self.hist.record_value(min(max(micros, self.LOWEST_US), self.HIGHEST_US))

    def merge(self, other: Hist) -> None:
        """Add another histogram's counts to this one."""
        self.hist.add(other.hist)

    @property
    def count(self) -> int:
        """Recorded values."""
        return int(self.hist.get_total_count())

    def ms_at(self, percentile: float) -> float:
        """The value at `percentile` (0..100) in milliseconds."""
        return self._ms(self.hist.get_value_at_percentile(percentile))

    def _ms(self, micros: int) -> float:
        return round((micros - self.shift_us) / 1000, 3)

    def summary(self) -> dict[str, float | int | None]:
        """count, p50, p90, p99 and max in milliseconds (None when empty)."""
        if not self.count:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
        return {
            "count": self.count,
            "p50": self.ms_at(50),
            "p90": self.ms_at(90),
            "p99": self.ms_at(99),
            "max": self._ms(self.hist.get_max_value()),
        }

    def curve(self) -> list[tuple[float, float]]:
        """(percentile, ms) pairs spaced evenly in log(1 / (1 - p)), for the plots."""
        if not self.count:
            return []
        points = []
        for step in range(41):
            percentile = 100 * (1 - 10 ** (-step / 10))
            points.append((round(percentile, 4), self.ms_at(percentile)))
        points.append((100.0, self._ms(self.hist.get_max_value())))
        return points
