"""Latency histograms (HDR) and per-second series: recorded in workers, merged in the main process.

Latencies are recorded in microseconds into HDR histograms (1 us to 120 s, 3 significant digits),
so percentiles stay exact to 0.1% at any count and workers can send theirs back compactly
(``encode``) to be added together. Reports give p50, p90, p99, p99.9 and max, never averages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

__all__ = [
    "PERCENTILES",
    "Histogram",
    "Summary",
    "merge_series",
]

#: The percentiles every latency is reported at.
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)
_LOWEST_US = 1
_HIGHEST_US = 120_000_000
_DIGITS = 3


@dataclass(frozen=True, slots=True)
class Summary:
    """A latency distribution in milliseconds.

    Attributes:
        count: samples.
        p50, p90, p99, p999: percentiles.
        max: the largest sample.
    """

    count: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        """For JSON: keys count, p50, p90, p99, p99.9, max (ms)."""
        return {"count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99,
                "p99.9": self.p999, "max": self.max}

    def line(self) -> str:
        """One line of text: the percentiles and max, in ms."""
        if not self.count:
            return "no samples"
        return (f"p50 {self.p50:8.2f}  p90 {self.p90:8.2f}  p99 {self.p99:8.2f}  "
                f"p99.9 {self.p999:8.2f}  max {self.max:8.2f} ms  (n={self.count})")


class Histogram:
    """An HDR histogram of durations, in microseconds."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)

    def record(self, seconds: float) -> None:
        """Record one duration (clamped to 1 us .. 120 s)."""
        us = int(seconds * 1e6)
        self._h.record_value(min(max(us, _LOWEST_US), _HIGHEST_US))

    @property
    def count(self) -> int:
        """Samples recorded."""
        return int(self._h.get_total_count())

    def percentile_ms(self, percentile: float) -> float:
        """The value at a percentile, in milliseconds (0 when empty)."""
        if not self.count:
            return 0.0
        return float(self._h.get_value_at_percentile(percentile)) / 1000.0

    def summary(self) -> Summary:
        """The percentiles and max, in milliseconds."""
        if not self.count:
            return Summary(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p50, p90, p99, p999 = (self.percentile_ms(p) for p in PERCENTILES)
        return Summary(self.count, p50, p90, p99, p999, float(self._h.get_max_value()) / 1000.0)

    def encode(self) -> bytes:
        """A compact encoding to send to another process."""
        data: bytes = self._h.encode()
        return data

    def add_encoded(self, data: bytes) -> None:
        """Add a histogram produced by :meth:`encode`."""
        self._h.add(HdrHistogram.decode(data))

    def add(self, other: Histogram) -> None:
        """Add another histogram's samples."""
        self._h.add(other._h)

    @classmethod
    def merged(cls, encoded: Iterable[bytes]) -> Histogram:
        """One histogram holding the samples of several encoded ones."""
        out = cls()
        for data in encoded:
            out.add_encoded(data)
        return out


def merge_series(parts: Iterable[Mapping[int, Mapping[str, int]]]) -> dict[int, dict[str, int]]:
    """Add per-second counters from several workers.

    Args:
        parts: each a mapping of second to counter name to value.

    Returns:
        Second to counter name to the summed value.
    """
    out: dict[int, dict[str, int]] = {}
    for part in parts:
        for second, counters in part.items():
            slot = out.setdefault(second, {})
            for name, value in counters.items():
                slot[name] = slot.get(name, 0) + value
    return out
