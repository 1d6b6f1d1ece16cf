"""HDR histograms and per-second series as workers send them and the main process merges them."""

from __future__ import annotations

import pytest

from loadtests.stats import Histogram, merge_series


def test_percentiles_are_exact_to_three_digits() -> None:
    """p50, p99 and max of 1..1000 ms come back within 0.1%."""
    histogram = Histogram()
    for ms in range(1, 1001):
        histogram.record(ms / 1000)
    summary = histogram.summary()
    assert summary.count == 1000
    assert summary.p50 == pytest.approx(500, rel=1e-3)
    assert summary.p99 == pytest.approx(990, rel=1e-3)
    assert summary.max == pytest.approx(1000, rel=1e-3)
    assert "p99.9" in summary.line() and summary.as_dict()["p99.9"] == summary.p999


def test_encoded_histograms_merge() -> None:
    """Two workers' encoded histograms add up to one."""
    fast, slow = Histogram(), Histogram()
    for _ in range(99):
        fast.record(0.001)
    slow.record(2.0)
    merged = Histogram.merged([fast.encode(), slow.encode()])
    assert merged.count == 100
    assert merged.percentile_ms(50) == pytest.approx(1.0, rel=1e-3)
    assert merged.summary().max == pytest.approx(2000, rel=1e-3)
    assert Histogram().summary().count == 0 and Histogram().summary().line() == "no samples"


def test_series_add_up_by_second_and_name() -> None:
    """Counters of the same second and name are summed."""
    merged = merge_series([{0: {"admitted": 3}, 1: {"denied": 1}},
                           {0: {"admitted": 2, "denied": 4}}])
    assert merged == {0: {"admitted": 5, "denied": 4}, 1: {"denied": 1}}
