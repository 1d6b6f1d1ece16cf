"""What workers observe and report: one record per connection attempt, plus signal findings.

Workers send these back to the main process (pickled through a pipe), which checks them against
the expected decisions (:mod:`loadtests.checker`) and builds the report. Times are seconds from
the run's start on the machine's monotonic clock, which every process on the host shares.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Attempt",
    "End",
    "Notice",
    "Outcome",
    "SignalFindings",
    "TailGap",
    "WorkerReport",
]


class Outcome(enum.StrEnum):
    """How a join ended."""

    ADMITTED = "admitted"  # the meeting server's "joined" arrived
    DENIED = "denied"  # a geogate.denied notice and close 4451, or HTTP 451
    FAILED = "failed"  # anything else: refused, closed, timed out, connection error


class End(enum.StrEnum):
    """How a connection ended."""

    LEFT = "left"  # the participant closed it normally (1000)
    DROPPED = "dropped"  # the participant aborted it (a simulated network blip)
    EVICTED = "evicted"  # notice and 4451 after admission
    DENIED = "denied"  # refused at the join
    SERVER_CLOSED = "server-closed"  # closed by the server side with another code
    LOST = "lost"  # the TCP connection ended without a closing handshake
    FAILED = "failed"  # the join failed
    RUN_END = "run-end"  # still open when the run ended; closed normally


@dataclass(frozen=True, slots=True)
class Notice:
    """The fields of a ``geogate.denied`` notice the checker compares."""

    restriction: str
    meeting: str
    region: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connection of one participant, from connect to close.

    Attributes:
        participant: the participant's index in the plan.
        epoch: the participant's connection number (1, 2... for rejoins and retries).
        resume: a rejoin after a drop.
        scheduled: when the join was planned.
        started: when the TCP connect began.
        join_sent: when the join message was written (after the upgrade).
        outcome: how the join ended.
        answered: when it ended (joined, notice, or failure).
        notice: the denial or eviction notice, if one came.
        notice_at: when it came.
        close_code: the code of the server's close frame, if one came.
        http_status: the upgrade's status when it was not 101.
        end: how the connection ended.
        ended: when.
        error: the kind of failure, such as ``close:1014`` or ``timeout:join``.
        signals_sent: signals sent to the meeting on this connection.
        final_sent: the last of them was flagged final (a normal leave).
    """

    participant: int
    epoch: int
    resume: bool
    scheduled: float
    started: float
    join_sent: float | None
    outcome: Outcome
    answered: float
    notice: Notice | None
    notice_at: float | None
    close_code: int | None
    http_status: int | None
    end: End
    ended: float
    error: str | None = None
    signals_sent: int = 0
    final_sent: bool = False

    @property
    def admitted(self) -> bool:
        """Whether the join was admitted."""
        return self.outcome is Outcome.ADMITTED

    @property
    def decided_from(self) -> float:
        """The earliest time the proxy can have decided this join."""
        return self.join_sent if self.join_sent is not None else self.started


@dataclass(frozen=True, slots=True)
class TailGap:
    """A receiver saw a sender leave before that sender's final signal arrived.

    The main process knows whether the sender left normally (then its final signal was lost) or
    was dropped or evicted (then nothing was owed).
    """

    sender: str
    epoch: int
    last_seq: int
    receiver: str
    at: float


@dataclass(slots=True)
class SignalFindings:
    """Signal sequence problems one worker's receivers found.

    Attributes:
        received: signals received from other participants.
        lost: sequence numbers skipped (a gap, or a first signal after participant-joined that
            was not number 1).
        duplicated: a sequence number received twice in a row.
        reordered: a sequence number lower than one already received.
        samples: a few (kind, receiver, description) triples for the report; kind is "lost",
            "duplicated" or "reordered".
        tails: receivers that saw a sender leave without its final signal.
    """

    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    samples: list[tuple[str, str, str]] = field(default_factory=list)
    tails: list[TailGap] = field(default_factory=list)

    def sample(self, kind: str, receiver: str, text: str) -> None:
        """Keep a description of a finding (the first 20)."""
        if len(self.samples) < 20:
            self.samples.append((kind, receiver, text))

    def merge(self, other: SignalFindings) -> None:
        """Add another worker's findings to these."""
        self.received += other.received
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.reordered += other.reordered
        for sample in other.samples:
            self.sample(*sample)
        self.tails.extend(other.tails)


@dataclass(slots=True)
class WorkerReport:
    """Everything one worker sends back at the end.

    Attributes:
        worker: the worker's number.
        attempts: every connection attempt.
        signals: signal findings.
        histograms: encoded HDR histograms by name (microseconds).
        series: per-second counters by second, then name.
        second_histograms: per-second encoded time-to-admitted histograms.
        trace: executed events as (t, participant index, kind, size, probe, resume, final).
        cpu_seconds: the worker's CPU time during the run.
        late_joins: joins that had not started when the run ended.
    """

    worker: int
    attempts: list[Attempt]
    signals: SignalFindings
    histograms: dict[str, bytes]
    series: dict[int, dict[str, int]]
    second_histograms: dict[int, bytes]
    trace: list[tuple[float, int, str, int, bool, bool, bool]]
    cpu_seconds: float
    late_joins: int = 0
