"""bench-gate: its timing loop alternates the set sizes block by block, and a small run prints
every row and both verdicts."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from loadtests.bench_gate import main, measure, percentile


def test_measure_alternates_blocks_and_times_every_decision() -> None:
    """Each block of samples runs through every decider before the next block starts."""
    calls: list[tuple[str, str]] = []

    def decider(name: str) -> Callable[[str, str], None]:
        def decide(peer: str, meeting: str) -> None:
            calls.append((name, meeting))
        return decide

    samples = [("127.0.0.1", f"m{i}") for i in range(5)]
    figures = measure({10: decider("small"), 10_000: decider("large")}, samples, block=2)
    timed = calls[: 2 * len(samples)]  # then each runs once more, untimed, for throughput
    assert timed == [
        ("small", "m0"), ("small", "m1"), ("large", "m0"), ("large", "m1"),
        ("small", "m2"), ("small", "m3"), ("large", "m2"), ("large", "m3"),
        ("small", "m4"), ("large", "m4"),
    ]
    assert calls[2 * len(samples):] == [("small", m) for _, m in samples] + [
        ("large", m) for _, m in samples]
    for key in (10, 10_000):
        one = figures[key]
        assert 0 < one["p50_us"] <= one["p99_us"] <= one["p999_us"]
        assert one["per_second"] > 0


def test_percentile_is_in_microseconds_and_clamped() -> None:
    ns = [1_000 * i for i in range(1, 101)]
    assert percentile(ns, 50) == 51.0
    assert percentile(ns, 99) == 100.0
    assert percentile(ns, 100) == 100.0


def test_a_small_run_prints_every_row_and_both_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--networks", "50", "--meetings", "300", "--samples", "400", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for mode in ("uncached", "cached"):
        for count in ("10", "10,000"):
            assert re.search(rf"^{mode} +{count} +[\d,]+ +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), out
    assert re.search(r"^target p99 < 20 us uncached \(10,000 restrictions\): [\d.]+ us -> "
                     r"(met|NOT MET)$", out, re.M), out
    for mode in ("uncached", "cached"):
        assert re.search(rf"^target 10,000 vs 10 restrictions <= 1.5x \({mode}; .*: "
                         r"p50 [\d.]+x, p99 [\d.]+x -> (met|NOT MET)$", out, re.M), out
    assert "round 1/1 done: uncached 10,000 vs 10 restrictions p50 " in out


@pytest.mark.parametrize(("args", "message"), [
    (["--rounds", "0"], "--rounds must be at least 1, not 0"),
    (["--networks", "-5"], "--networks must be at least 1, not -5"),
    (["--meetings", "2"], "--meetings must be at least 3"),
])
def test_bad_arguments_are_refused_with_the_value(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
