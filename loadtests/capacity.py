"""The search for the highest sustainable join rate (``geogate-loadtest --find-capacity``).

A sustainable rate is one at which the p99 time to admitted stays under ``[capacity] p99_ms``
(250 ms by default) with no mismatch, no more errors than allowed, and a generator that kept the
rate (otherwise the trial says nothing about the proxy). Each trial is a constant-rate run of the
scenario's meetings, region mix and signals for ``[capacity] duration`` seconds, participants
staying as long as in the scenario (or ``[capacity] stay``); timed actions and reconnect waves are
left out. The rate
doubles from ``start_rate`` until a trial fails, then the interval between the last pass and the
first failure is halved until it is within ``precision``. With ``repeats`` above 1 each rate is
run that many times and judged on the median p99, since one noisy run on a machine whose speed
swings within seconds should not decide the search alone. One target serves every run.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from loadtests.report import achieved_rate
from loadtests.runner import RunOptions, RunResult, run_scenario
from loadtests.scenario import (
    ArrivalKind,
    ArrivalSpec,
    ParticipantsSpec,
    ReconnectSpec,
    Scenario,
    SloSpec,
)
from loadtests.target import Target

__all__ = ["CapacityResult", "Trial", "find_capacity", "next_rate", "trial_scenario"]


@dataclass(frozen=True, slots=True)
class Trial:
    """One constant-rate run of the search.

    Attributes:
        rate: the joins per second asked for.
        achieved: the joins per second started.
        p99_ms: the p99 time to admitted.
        mismatches: mismatches found.
        errors: errors counted.
        kept_rate: whether the generator kept the rate.
        passed: whether the rate is sustainable.
        reason: why not, when not.
    """

    rate: float
    achieved: float
    p99_ms: float
    mismatches: int
    errors: int
    kept_rate: bool
    passed: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CapacityResult:
    """What the search found.

    Attributes:
        trials: every trial, in order.
        capacity: the highest rate that passed, or None.
        first_failure: the lowest rate that failed, or None.
        generator_limited: a trial failed because the generator could not keep its rate.
    """

    trials: tuple[Trial, ...]
    capacity: float | None
    first_failure: float | None
    generator_limited: bool


def trial_scenario(scenario: Scenario, rate: float) -> Scenario:
    """The scenario of one trial: constant ``rate`` for the capacity duration, nothing timed."""
    spec = scenario.capacity
    count = max(1, round(rate * spec.duration))
    return dataclasses.replace(
        scenario,
        participants=ParticipantsSpec(count, spec.stay or scenario.participants.stay,
                                      scenario.participants.id_prefix),
        arrival=ArrivalSpec(ArrivalKind.CONSTANT, rate=rate),
        reconnect=ReconnectSpec(retries=scenario.reconnect.retries,
                                backoff=scenario.reconnect.backoff,
                                backoff_max=scenario.reconnect.backoff_max),
        action=(),
        slo=SloSpec(admitted_p99_ms=spec.p99_ms),
        run=dataclasses.replace(scenario.run, duration=None, start_delay=0.0),
    )


def next_rate(trials: list[Trial], start: float, maximum: float,
              precision: float) -> float | None:
    """The rate to try next, or None when the search is done (pure).

    Doubles from ``start`` while trials pass, then bisects between the highest pass and the
    lowest failure until ``failure / pass - 1 <= precision``.
    """
    if not trials:
        return start
    passes = [t.rate for t in trials if t.passed]
    failures = [t.rate for t in trials if not t.passed]
    best = max(passes) if passes else None
    worst = min(failures) if failures else None
    if worst is None:
        assert best is not None
        return None if best >= maximum else min(best * 2, maximum)
    if best is None:
        low = worst / 2
        return low if low >= start / 64 else None
    if worst / best - 1 <= precision:
        return None
    return (best + worst) / 2


def find_capacity(scenario: Scenario, options: RunOptions, out: TextIO | None = None,
                  on_trial: Callable[[Trial, RunResult], None] | None = None) -> CapacityResult:
    """Search for the highest sustainable join rate (module docstring).

    Args:
        scenario: the base scenario.
        options: run options (the run folder holds one subfolder per trial).
        out: where to print a line per trial.
        on_trial: called after each trial.

    Returns:
        The trials and the rate found.
    """
    spec = scenario.capacity
    trials: list[Trial] = []
    base = options.workdir or Path(tempfile.mkdtemp(prefix="geogate-capacity-"))
    target = Target(scenario, base / "target")
    try:
        while len(trials) < spec.max_trials:
            rate = next_rate(trials, spec.start_rate, spec.max_rate, spec.precision)
            if rate is None:
                break
            trial = trial_scenario(scenario, round(rate, 1))
            n = len(trials) + 1
            results = []
            for repeat in range(1, spec.repeats + 1):
                run_options = dataclasses.replace(
                    options, workdir=base / f"trial-{n}.{repeat}", id_suffix=f".t{n}.{repeat}",
                    record=None)
                results.append(run_scenario(trial, run_options, target))
                time.sleep(1.0)  # let the previous run's connections finish closing
            trials.append(_judge(trial, results, rate))
            result = results[-1]
            if out is not None:
                t = trials[-1]
                out.write(f"trial {n}: {t.rate:7.1f} joins/s asked, {t.achieved:7.1f} started; "
                          f"p99 time to admitted {t.p99_ms:7.1f} ms; mismatches "
                          f"{t.mismatches}, errors {t.errors}: "
                          f"{'sustainable' if t.passed else 'NOT sustainable (' + t.reason + ')'}"
                          "\n")
                out.flush()
            if on_trial is not None:
                on_trial(trials[-1], result)
    finally:
        target.stop()
    passes = [t.rate for t in trials if t.passed]
    failures = [t.rate for t in trials if not t.passed]
    return CapacityResult(tuple(trials), max(passes) if passes else None,
                          min(failures) if failures else None,
                          any(not t.kept_rate and not t.passed for t in trials))


def _judge(scenario: Scenario, results: list[RunResult], rate: float) -> Trial:
    """A trial's verdict: the median p99 of its runs, and every run free of mismatches."""
    p99 = statistics.median(r.histograms["time_to_admitted"].percentile_ms(99.0)
                            for r in results)
    mismatches = sum(r.check.total for r in results)
    errors = max(r.error_total for r in results)
    kept = all(r.kept_rate for r in results)
    limit = scenario.capacity.p99_ms
    reasons = []
    if p99 > limit:
        reasons.append(f"p99 {p99:.0f} ms over {limit:.0f} ms")
    if mismatches:
        reasons.append(f"{mismatches} mismatches")
    if errors > scenario.check.max_errors:
        reasons.append(f"{errors} errors")
    if not kept:
        reasons.append("the generator could not keep the rate")
    achieved = statistics.median(achieved_rate(r) for r in results)
    return Trial(rate, achieved, p99, mismatches, errors, kept, not reasons, "; ".join(reasons))
