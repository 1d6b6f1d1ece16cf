"""The generator worker on its own: event timing and retries, against real sockets."""

from __future__ import annotations

import time

from loadtests.plan import ParticipantPlan, PlannedEvent
from loadtests.records import End, Outcome
from loadtests.target import free_port
from loadtests.trace import EventKind
from loadtests.worker import Worker, WorkerJob, run_worker
from proxy.demo_upstream import DemoUpstream


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


async def test_a_rejoin_due_with_its_drop_waits_until_the_dropped_connection_is_gone(
        upstream: DemoUpstream) -> None:
    """A drop and its rejoin come due together: the rejoin runs, after the drop, whatever the lag.

    A dropped connection is gone only when its transport reports it lost, a loop iteration
    later; a rejoin or signal played before that must not be skipped or sent on the old one,
    or a replayed trace would play out differently from the run it was recorded from.
    """
    host, port = "127.0.0.1", upstream.port
    events = (PlannedEvent(0.0, EventKind.JOIN), PlannedEvent(0.3, EventKind.DROP),
              PlannedEvent(0.3, EventKind.SIGNAL, size=100),
              PlannedEvent(0.3, EventKind.JOIN, resume=True),
              PlannedEvent(0.3, EventKind.SIGNAL, size=100, final=True),
              PlannedEvent(0.3, EventKind.LEAVE))
    plan = ParticipantPlan(0, "p0", "m", "US", "127.0.3.1", None, events)
    # The run ends as soon as the participant has left; run_end is only a bound for a slow machine.
    job = WorkerJob(0, host, port, "/", (plan,), run_end=10.0, join_timeout=5.0,
                    drain_timeout=5.0)
    report = await Worker(job, time.monotonic()).run()
    played = [(kind, resume, final) for _, _, kind, _, _, resume, final in report.trace]
    # The signal between the drop and the rejoin has no connection to go on: it is skipped.
    assert played == [("join", False, False), ("drop", False, False), ("join", True, False),
                      ("signal", False, True), ("leave", False, False)]
    attempts = sorted(report.attempts, key=lambda a: a.epoch)
    assert [(a.resume, a.outcome, a.end) for a in attempts] == [
        (False, Outcome.ADMITTED, End.DROPPED), (True, Outcome.ADMITTED, End.LEFT)]
    assert attempts[1].final_sent
