"""The checker: what should have happened to each participant, and what did (pure).

The tool knows the restrictions the target enforces over time: the set it started with, and the
sets installed by timed actions. Each is a :class:`Phase` of a :class:`Timeline`. A phase may be in
force from its action's start, and is surely in force from the moment the change is known to have
taken effect (the reload's answer, or the end of the watch grace period); between the two, either
the old or the new set may be in force, and either outcome is accepted. Restrictions with
``starts_at`` / ``ends_at`` windows are evaluated at the times the window edges fall, so a join
decided across an edge may go either way too. Decisions come from the project's own policy core
(:meth:`proxy.policy.gate.RestrictionSet.decide`), so the checker and the proxy cannot disagree on
what a restriction means, only on what the proxy did.

Per attempt (:class:`~loadtests.records.Attempt`):

- a join is decided somewhere between the join being sent and its answer: the outcome must be one
  of those possible over that interval: admitted, or denied by the named restriction with a notice
  naming the meeting and region, followed by close code 4451;
- an admitted session that becomes surely barred (a window opens, a new set is in force) must be
  evicted, with a correct notice, within ``eviction_timeout``; an eviction no restriction can
  explain is collateral; any other close of an admitted session by the server side is a
  collateral close;
- signals between admitted participants arrive once each, in order, per sender connection; a
  sender that left normally must have had its final signal delivered before receivers saw it leave.

Every failure to do so is a :class:`Mismatch`; failures to connect or to get an answer at all are
errors, counted by kind, not mismatches.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from loadtests.records import Attempt, End, Outcome, SignalFindings, TailGap
from proxy.policy.gate import RestrictionSet
from proxy.policy.regions import Location

__all__ = [
    "DENIAL_CLOSE_CODE",
    "CheckResult",
    "Mismatch",
    "MismatchKind",
    "ParticipantInfo",
    "Phase",
    "Timeline",
    "check",
]

DENIAL_CLOSE_CODE = 4451
_EPSILON = 1e-6
_MAX_SAMPLES = 50

Address = IPv4Address | IPv6Address


class MismatchKind(enum.StrEnum):
    """What went wrong for a participant."""

    BARRED_ADMITTED = "barred-admitted"
    ADMITTED_REFUSED = "admitted-refused"
    NOTICE_MISSING = "notice-missing"
    NOTICE_WRONG = "notice-wrong"
    CLOSE_CODE_WRONG = "close-code-wrong"
    EVICTION_MISSING = "eviction-missing"
    COLLATERAL_EVICTION = "collateral-eviction"
    COLLATERAL_CLOSE = "collateral-close"
    SIGNAL_LOST = "signal-lost"
    SIGNAL_DUPLICATED = "signal-duplicated"
    SIGNAL_REORDERED = "signal-reordered"


@dataclass(frozen=True, slots=True)
class ParticipantInfo:
    """What the checker knows about a participant: where it is and which meeting it joins.

    Attributes:
        index: the participant's index in the plan.
        participant: its id.
        meeting: its meeting.
        region: its region pool's name.
        address: the client address the proxy sees.
        location: that address's location, from the proxy's own GeoIP database.
    """

    index: int
    participant: str
    meeting: str
    region: str
    address: Address
    location: Location


@dataclass(frozen=True, slots=True)
class Phase:
    """A restriction set and when it is in force, in seconds from the run's start.

    Attributes:
        restrictions: the set.
        starts: from when it may be in force (``-inf`` for the first phase).
        certain: from when it surely is (at least ``starts``).
        label: what put it in force, for reports.

    Raises:
        ValueError: ``certain`` before ``starts``.
    """

    restrictions: RestrictionSet
    starts: float = -math.inf
    certain: float = -math.inf
    label: str = "initial"

    def __post_init__(self) -> None:
        if self.certain < self.starts:
            raise ValueError(f"certain ({self.certain}) must not be before starts ({self.starts})")


class Timeline:
    """The restriction sets in force over a run, with the uncertainty around each change.

    Args:
        phases: in order of ``starts``; the first one's ``starts`` should be ``-inf``.
        wall0: the run's start as Unix time (restriction windows are in Unix time).

    Raises:
        ValueError: no phases, or phases out of order.
    """

    def __init__(self, phases: Sequence[Phase], wall0: float) -> None:
        if not phases:
            raise ValueError("a timeline needs at least one phase")
        if any(b.starts < a.starts for a, b in itertools.pairwise(phases)):
            raise ValueError("phases must be in order of their start")
        self.phases = tuple(phases)
        self.wall0 = wall0
        # A phase may be in force until a later one surely is (a change that was only written,
        # with no reload, is made certain by a later reload).
        self._ends = [min((p.certain for p in self.phases[i + 1 :]), default=math.inf)
                      for i in range(len(self.phases))]

    def _span(self, i: int) -> tuple[float, float]:
        """When phase ``i`` may be in force: [starts, the earliest later phase's certain)."""
        return self.phases[i].starts, self._ends[i]

    def window_edges(self, restrictions: RestrictionSet, lo: float, hi: float) -> list[float]:
        """Window edges of a set strictly after ``lo`` and at most ``hi`` (run times)."""
        out: list[float] = []
        wall = self.wall0 + lo
        limit = self.wall0 + hi
        while True:
            edge = restrictions.next_boundary(wall)
            if edge is None or edge > limit:
                return out
            out.append(edge - self.wall0)
            wall = edge

    def outcomes(self, meeting: str, location: Location, address: Address | None,
                 lo: float, hi: float) -> frozenset[str | None]:
        """Every decision the target may rightly make for a join decided within [lo, hi].

        Args:
            meeting: the meeting.
            location: the participant's location.
            address: the client address (for exempt networks).
            lo: the earliest decision time (seconds from the run's start).
            hi: the latest.

        Returns:
            None for "admit", and the id of each restriction that may rightly deny.
        """
        out: set[str | None] = set()
        for i, phase in enumerate(self.phases):
            start, end = self._span(i)
            a, b = max(lo, start), min(hi, end)
            if a > b or a >= end:
                continue
            if b >= end:
                b = end - _EPSILON
            for t in (a, *self.window_edges(phase.restrictions, a, b), b):
                decision = phase.restrictions.decide(meeting, location, address, self.wall0 + t)
                denied_by = decision.denied_by
                out.add(None if denied_by is None else denied_by.id)
        return frozenset(out)

    def change_points(self, lo: float, hi: float) -> list[float]:
        """Times in (lo, hi] at which the possible outcomes may change, sorted."""
        points: set[float] = set()
        for i, phase in enumerate(self.phases):
            for t in (phase.starts, phase.certain):
                if lo < t <= hi:
                    points.add(t)
            start, end = self._span(i)
            a, b = max(lo, start), min(hi, end)
            if a < b:
                points.update(self.window_edges(phase.restrictions, a, b))
        return sorted(points)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One participant outcome that differs from what should have happened."""

    kind: MismatchKind
    participant: str
    meeting: str
    region: str
    at: float
    detail: str

    def __str__(self) -> str:
        return (f"{self.kind}: {self.participant} ({self.region}) in {self.meeting} at "
                f"{self.at:.3f}s: {self.detail}")


@dataclass(slots=True)
class CheckResult:
    """What the checker found.

    Attributes:
        mismatches: counts by kind (signal kinds count signals, the others participants).
        samples: the first mismatches found, for the report.
        eviction_latencies: seconds from the change that barred each evicted session to its
            eviction notice.
        expected: how many joins should have been admitted and denied, and sessions evicted.
        errors: failed joins by kind.
        unchecked: barred sessions that ended before they could be checked (at the run's end).
    """

    mismatches: dict[MismatchKind, int] = field(default_factory=dict)
    samples: list[Mismatch] = field(default_factory=list)
    eviction_latencies: list[float] = field(default_factory=list)
    expected: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    unchecked: int = 0

    @property
    def total(self) -> int:
        """Mismatches of every kind."""
        return sum(self.mismatches.values())

    def add(self, mismatch: Mismatch, count: int = 1) -> None:
        """Count a mismatch and keep it as a sample."""
        self.mismatches[mismatch.kind] = self.mismatches.get(mismatch.kind, 0) + count
        if len(self.samples) < _MAX_SAMPLES:
            self.samples.append(mismatch)

    def expect(self, what: str) -> None:
        """Count an expected outcome."""
        self.expected[what] = self.expected.get(what, 0) + 1


def _show(outcomes: Iterable[str | None]) -> str:
    names = sorted("admit" if o is None else f"deny by {o}" for o in outcomes)
    return " or ".join(names)


class _Checker:
    def __init__(self, participants: Mapping[int, ParticipantInfo], timeline: Timeline,
                 eviction_timeout: float) -> None:
        self.participants = participants
        self.timeline = timeline
        self.eviction_timeout = eviction_timeout
        self.result = CheckResult()

    def mismatch(self, kind: MismatchKind, info: ParticipantInfo, at: float, detail: str,
                 count: int = 1) -> None:
        self.result.add(Mismatch(kind, info.participant, info.meeting, str(info.location), at,
                                 detail), count)

    def outcomes(self, info: ParticipantInfo, lo: float, hi: float) -> frozenset[str | None]:
        return self.timeline.outcomes(info.meeting, info.location, info.address, lo, hi)

    def attempt(self, attempt: Attempt) -> None:
        info = self.participants[attempt.participant]
        if attempt.outcome is Outcome.FAILED:
            kind = attempt.error or "failed"
            self.result.errors[kind] = self.result.errors.get(kind, 0) + 1
            return
        possible = self.outcomes(info, attempt.decided_from, attempt.answered)
        if attempt.outcome is Outcome.ADMITTED:
            if None not in possible:
                self.result.expect("denied")
                self.mismatch(MismatchKind.BARRED_ADMITTED, info, attempt.answered,
                              f"admitted; expected {_show(possible)}")
            else:
                self.result.expect("admitted")
            self.session(attempt, info)
            return
        # Denied.
        if possible == {None}:
            self.result.expect("admitted")
            rid = attempt.notice.restriction if attempt.notice else "(no notice)"
            self.mismatch(MismatchKind.ADMITTED_REFUSED, info, attempt.answered,
                          f"denied by {rid}; no restriction bars it")
            return
        self.result.expect("denied")
        self.notice(attempt, info, possible, attempt.answered)

    def notice(self, attempt: Attempt, info: ParticipantInfo, possible: frozenset[str | None],
               at: float) -> bool:
        """Check a denial or eviction notice and its close code; True when the notice is right."""
        notice = attempt.notice
        right = True
        if notice is None:
            self.mismatch(MismatchKind.NOTICE_MISSING, info, at,
                          f"closed with {attempt.close_code} without a geogate.denied notice")
            right = False
        else:
            problems = []
            if notice.restriction not in possible:
                problems.append(f"restriction {notice.restriction!r}, expected {_show(possible)}")
            if notice.meeting != info.meeting:
                problems.append(f"meeting {notice.meeting!r}, expected {info.meeting!r}")
            if notice.region != str(info.location):
                problems.append(f"region {notice.region!r}, expected {str(info.location)!r}")
            if problems:
                self.mismatch(MismatchKind.NOTICE_WRONG, info, at, "; ".join(problems))
                right = False
        if attempt.http_status is None and attempt.close_code != DENIAL_CLOSE_CODE:
            self.mismatch(MismatchKind.CLOSE_CODE_WRONG, info, at,
                          f"close code {attempt.close_code}, expected {DENIAL_CLOSE_CODE}")
            right = False
        return right

    def barred_from(self, info: ParticipantInfo, lo: float, hi: float) -> float | None:
        """The first time in [lo, hi] at which the participant is surely barred, if any."""
        for t in (lo, *self.timeline.change_points(lo, hi)):
            if None not in self.outcomes(info, t, t):
                return t
        return None

    def session(self, attempt: Attempt, info: ParticipantInfo) -> None:
        """Check what happened to an admitted session after its admission."""
        if attempt.end is End.EVICTED:
            at = attempt.notice_at if attempt.notice_at is not None else attempt.ended
            possible = self.outcomes(info, attempt.decided_from, at)
            denials = possible - {None}
            if not denials:
                self.mismatch(MismatchKind.COLLATERAL_EVICTION, info, at,
                              "evicted, but no restriction bars it"
                              + (f" (notice names {attempt.notice.restriction})"
                                 if attempt.notice else ""))
                return
            self.result.expect("evicted")
            if self.notice(attempt, info, frozenset(denials), at):
                rid = attempt.notice.restriction if attempt.notice else None
                self.result.eviction_latencies.append(at - self.bar_start(info, attempt, at, rid))
            return
        end = attempt.ended
        barred = self.barred_from(info, attempt.answered, end)
        if attempt.end in (End.SERVER_CLOSED, End.LOST):
            if barred is not None:
                self.mismatch(MismatchKind.NOTICE_MISSING, info, end,
                              f"barred from {barred:.3f}s, then closed ({attempt.error}) "
                              "without a notice and 4451")
            else:
                self.mismatch(MismatchKind.COLLATERAL_CLOSE, info, end,
                              f"admitted session closed by the server side ({attempt.error})")
            return
        if barred is None:
            return
        self.result.expect("evicted")
        if end > barred + self.eviction_timeout:
            rids = sorted(r for r in self.outcomes(info, barred, barred) if r is not None)
            self.mismatch(MismatchKind.EVICTION_MISSING, info, end,
                          f"barred by {', '.join(rids)} from {barred:.3f}s, still connected "
                          f"{end - barred:.3f}s later ({attempt.end})")
        elif attempt.end is End.RUN_END:
            self.result.unchecked += 1

    def bar_start(self, info: ParticipantInfo, attempt: Attempt, at: float,
                  rid: str | None) -> float:
        """When the restriction that evicted a session may first have barred it."""
        lo = attempt.decided_from
        for t in (lo, *self.timeline.change_points(lo, at)):
            possible = self.outcomes(info, t, t)
            if (rid in possible) if rid is not None else (possible - {None}):
                return t
        return lo

    def tails(self, tails: Iterable[TailGap], attempts: Sequence[Attempt],
              ids: Mapping[str, int]) -> None:
        by_key = {(a.participant, a.epoch): a for a in attempts}
        for tail in tails:
            index = ids.get(tail.sender)
            if index is None:
                continue
            attempt = by_key.get((index, tail.epoch))
            if attempt is None or attempt.end not in (End.LEFT, End.RUN_END):
                continue  # dropped or evicted: its last signals were not owed
            if not attempt.final_sent:
                continue
            missing = attempt.signals_sent - tail.last_seq
            if missing > 0:
                self.mismatch(MismatchKind.SIGNAL_LOST, self.participants[index], tail.at,
                              f"{tail.receiver} saw it leave after signal {tail.last_seq} of "
                              f"{attempt.signals_sent}", missing)


def check(
    participants: Mapping[int, ParticipantInfo],
    attempts: Sequence[Attempt],
    timeline: Timeline,
    *,
    eviction_timeout: float,
    signals: SignalFindings | None = None,
) -> CheckResult:
    """Compare every attempt with what should have happened.

    Args:
        participants: by plan index.
        attempts: every connection attempt of the run.
        timeline: the restriction sets in force over the run.
        eviction_timeout: seconds within which a barred session must be evicted.
        signals: the workers' signal findings.

    Returns:
        The mismatches, expected counts, eviction latencies and errors.
    """
    checker = _Checker(participants, timeline, eviction_timeout)
    for attempt in sorted(attempts, key=lambda a: (a.started, a.participant, a.epoch)):
        checker.attempt(attempt)
    if signals is not None:
        result = checker.result
        for kind, count in ((MismatchKind.SIGNAL_LOST, signals.lost),
                            (MismatchKind.SIGNAL_DUPLICATED, signals.duplicated),
                            (MismatchKind.SIGNAL_REORDERED, signals.reordered)):
            if count:
                result.mismatches[kind] = result.mismatches.get(kind, 0) + count
        kinds = {"lost": MismatchKind.SIGNAL_LOST, "duplicated": MismatchKind.SIGNAL_DUPLICATED,
                 "reordered": MismatchKind.SIGNAL_REORDERED}
        by_id = {info.participant: info for info in participants.values()}
        for name, receiver, text in signals.samples:
            if len(result.samples) < _MAX_SAMPLES:
                info = by_id.get(receiver)
                result.samples.append(Mismatch(
                    kinds[name], receiver, info.meeting if info else "",
                    str(info.location) if info else "", 0.0, text))
        ids = {info.participant: index for index, info in participants.items()}
        checker.tails(signals.tails, attempts, ids)
    return checker.result
