"""The generator worker on its own: event timing and retries, against real sockets."""

from __future__ import annotations

import time

from loadtests.plan import ParticipantPlan, PlannedEvent
from loadtests.records import Outcome
from loadtests.target import free_port
from loadtests.trace import EventKind
from loadtests.worker import WorkerJob, run_worker


def _join_at(index: int, t: float) -> ParticipantPlan:
    return ParticipantPlan(index, f"p{index}", "m", "US", f"127.0.3.{index + 1}", None,
                           (PlannedEvent(t, EventKind.JOIN),))


def test_a_retry_comes_at_its_backoff_ahead_of_a_later_planned_join() -> None:
    """Failed joins are retried at their backoff, before a later planned join and after the last."""
    port = free_port()  # nothing listens there: every connect is refused at once
    job = WorkerJob(0, "127.0.0.1", port, "/", (_join_at(0, 0.0), _join_at(1, 1.5)),
                    run_end=2.0, join_timeout=1.0, drain_timeout=0.5, retries=2, backoff=0.05,
                    backoff_max=0.1)
    report = run_worker(job, time.monotonic())
    first = sorted(a.started for a in report.attempts if a.participant == 0)
    second = [a for a in report.attempts if a.participant == 1]
    assert len(first) == 3 and first[-1] < 1.0
    assert len(second) == 3 and min(a.started for a in second) >= 1.5
    assert all(a.outcome is Outcome.FAILED for a in report.attempts)
