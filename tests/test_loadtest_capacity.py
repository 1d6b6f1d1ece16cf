"""The capacity search: which rate to try next, and what a trial runs (pure)."""

from __future__ import annotations

from pathlib import Path

from loadtests.capacity import Trial, next_rate, trial_scenario
from loadtests.scenario import ArrivalKind, load_scenario

ROOT = Path(__file__).resolve().parents[1]


def trial(rate: float, passed: bool) -> Trial:
    return Trial(rate, rate, 100.0 if passed else 900.0, 0, 0, True, passed)


def test_the_rate_doubles_then_bisects_to_the_precision() -> None:
    """100, 200, 400 pass, 800 fails: then 600, 500... until within 10%."""
    trials: list[Trial] = []
    tried = []
    capacity = 520.0
    while (rate := next_rate(trials, 100.0, 5000.0, 0.1)) is not None:
        tried.append(rate)
        trials.append(trial(rate, rate <= capacity))
    assert tried[:4] == [100.0, 200.0, 400.0, 800.0]
    best = max(t.rate for t in trials if t.passed)
    worst = min(t.rate for t in trials if not t.passed)
    assert best <= capacity < worst and worst / best - 1 <= 0.1


def test_the_search_stops_at_the_maximum_or_when_nothing_passes() -> None:
    """All passing up to max_rate ends the search; all failing halves down to a floor."""
    assert next_rate([trial(400.0, True)], 100.0, 400.0, 0.1) is None
    assert next_rate([trial(100.0, False)], 100.0, 400.0, 0.1) == 50.0
    assert next_rate([trial(1.0, False)], 100.0, 400.0, 0.1) is None


def test_a_trial_is_a_constant_rate_run_without_timed_actions() -> None:
    """Count, arrival and objective come from [capacity]; actions and waves are dropped."""
    scenario = load_scenario(ROOT / "loadtests" / "scenarios" / "storm-5k.toml")
    run = trial_scenario(scenario, 400.0)
    assert run.arrival.kind is ArrivalKind.CONSTANT and run.arrival.rate == 400.0
    assert run.participants.count == round(400.0 * scenario.capacity.duration)
    assert run.action == () and run.reconnect.wave == ()
    assert run.slo.admitted_p99_ms == scenario.capacity.p99_ms
    assert run.region == scenario.region and run.meeting == scenario.meeting
