"""The checker: expected outcomes from the policy core, every kind of mismatch (plain values)."""

from __future__ import annotations

import math
from ipaddress import ip_address

from loadtests.checker import MismatchKind, ParticipantInfo, Phase, Timeline, check
from loadtests.records import Attempt, End, Notice, Outcome, SignalFindings, TailGap
from proxy.policy.gate import RestrictionSet
from proxy.policy.regions import Location
from proxy.policy.restrictions import Mode, Restriction

WALL0 = 1_800_000_000.0  # the run's start, Unix seconds
CN = Location("CN")
US = Location("US")


def restriction(rid: str = "cn-events", starts: float | None = None, region: str = "CN",
                meetings: tuple[str, ...] = ("event-*",)) -> Restriction:
    """A block restriction; ``starts`` is seconds into the run."""
    return Restriction(rid, Mode.BLOCK, frozenset({region}), meetings, "Test order", "Court",
                       starts_at=None if starts is None else WALL0 + starts)


def timeline(*phases: Phase) -> Timeline:
    return Timeline(phases, WALL0)


def one(rset: RestrictionSet) -> Timeline:
    return timeline(Phase(rset))


PEOPLE = {
    0: ParticipantInfo(0, "p0", "event-1", "CN", ip_address("127.0.1.5"), CN),
    1: ParticipantInfo(1, "p1", "event-1", "US", ip_address("127.0.3.5"), US),
    2: ParticipantInfo(2, "p2", "standup-1", "CN", ip_address("127.0.1.6"), CN),
}


def attempt(participant: int, outcome: Outcome, *, sent: float = 1.0, answered: float = 1.01,
            end: End | None = None, ended: float = 5.0, notice: Notice | None = None,
            notice_at: float | None = None, close_code: int | None = None, epoch: int = 1,
            signals: int = 0, final: bool = False, error: str | None = None) -> Attempt:
    if end is None:
        end = {Outcome.ADMITTED: End.LEFT, Outcome.DENIED: End.DENIED,
               Outcome.FAILED: End.FAILED}[outcome]
    return Attempt(participant, epoch, False, sent, sent - 0.005, sent, outcome, answered,
                   notice, notice_at, close_code, None, end, ended, error, signals, final)


def denial(participant: int, rid: str = "cn-events", **kwargs: object) -> Attempt:
    info = PEOPLE[participant]
    notice = Notice(rid, info.meeting, str(info.location))
    defaults: dict[str, object] = {"notice": notice, "notice_at": 1.01, "close_code": 4451}
    defaults.update(kwargs)
    return attempt(participant, Outcome.DENIED, **defaults)  # type: ignore[arg-type]


RULES = RestrictionSet([restriction()])


def test_right_outcomes_are_no_mismatch() -> None:
    """Barred denied with the right notice and 4451, others admitted: nothing to report."""
    result = check(PEOPLE, [denial(0), attempt(1, Outcome.ADMITTED),
                            attempt(2, Outcome.ADMITTED)], one(RULES), eviction_timeout=5.0)
    assert result.total == 0
    assert result.expected == {"denied": 1, "admitted": 2}


def test_a_barred_participant_admitted_is_a_mismatch() -> None:
    """A CN participant admitted into event-1 is reported as barred-admitted."""
    result = check(PEOPLE, [attempt(0, Outcome.ADMITTED)], one(RULES), eviction_timeout=5.0)
    assert result.mismatches == {MismatchKind.BARRED_ADMITTED: 1}
    assert "deny by cn-events" in result.samples[0].detail


def test_an_admitted_participant_refused_is_a_mismatch() -> None:
    """A US participant denied is reported as admitted-refused."""
    result = check(PEOPLE, [denial(1)], one(RULES), eviction_timeout=5.0)
    assert result.mismatches == {MismatchKind.ADMITTED_REFUSED: 1}


def test_wrong_or_missing_notices_and_close_codes_are_mismatches() -> None:
    """Notice naming another restriction, meeting or region, none at all, or a code not 4451."""
    attempts = [
        denial(0, rid="other"),
        denial(0, notice=Notice("cn-events", "event-1", "US")),
        denial(0, notice=None),
        denial(0, close_code=1008),
    ]
    result = check(PEOPLE, attempts, one(RULES), eviction_timeout=5.0)
    assert result.mismatches == {MismatchKind.NOTICE_WRONG: 2, MismatchKind.NOTICE_MISSING: 1,
                                 MismatchKind.CLOSE_CODE_WRONG: 1}


def test_a_window_opening_during_a_session_requires_an_eviction() -> None:
    """Admitted before starts_at, evicted after it: justified, with its latency measured."""
    rules = RestrictionSet([restriction(starts=3.0)])
    evicted = attempt(0, Outcome.ADMITTED, end=End.EVICTED, ended=3.06, notice_at=3.05,
                      notice=Notice("cn-events", "event-1", "CN"), close_code=4451)
    result = check(PEOPLE, [evicted], one(rules), eviction_timeout=1.0)
    assert result.total == 0
    assert result.expected == {"admitted": 1, "evicted": 1}
    assert math.isclose(result.eviction_latencies[0], 0.05, abs_tol=1e-6)


def test_a_barred_session_left_open_is_a_missing_eviction() -> None:
    """Still connected well past starts_at + eviction_timeout: eviction-missing."""
    rules = RestrictionSet([restriction(starts=3.0)])
    stayed = attempt(0, Outcome.ADMITTED, end=End.LEFT, ended=6.0)
    left_early = attempt(0, Outcome.ADMITTED, end=End.LEFT, ended=3.5, epoch=2)
    result = check(PEOPLE, [stayed, left_early], one(rules), eviction_timeout=1.0)
    assert result.mismatches == {MismatchKind.EVICTION_MISSING: 1}
    assert "from 3.000s" in result.samples[0].detail


def test_evicting_someone_no_restriction_bars_is_collateral() -> None:
    """A US participant evicted is collateral; another close by the server is too."""
    evicted = attempt(1, Outcome.ADMITTED, end=End.EVICTED, notice_at=2.0,
                      notice=Notice("cn-events", "event-1", "US"), close_code=4451)
    closed = attempt(1, Outcome.ADMITTED, end=End.SERVER_CLOSED, error="close:1011", epoch=2)
    result = check(PEOPLE, [evicted, closed], one(RULES), eviction_timeout=5.0)
    assert result.mismatches == {MismatchKind.COLLATERAL_EVICTION: 1,
                                 MismatchKind.COLLATERAL_CLOSE: 1}


def test_a_join_decided_across_a_window_edge_may_go_either_way() -> None:
    """Sent just before starts_at, answered just after: admitted and denied are both right."""
    rules = RestrictionSet([restriction(starts=3.0)])
    admitted = attempt(2, Outcome.ADMITTED, sent=2.99, answered=3.01, ended=3.2)
    info = PEOPLE[0]
    denied = denial(0, sent=2.99, answered=3.01,
                    notice=Notice("cn-events", info.meeting, "CN"))
    early = attempt(0, Outcome.ADMITTED, sent=2.9, answered=2.95, ended=3.5, epoch=2)
    result = check(PEOPLE, [admitted, denied, early], one(rules), eviction_timeout=1.0)
    assert result.total == 0


def test_either_set_is_accepted_until_a_reload_is_surely_in_force() -> None:
    """After a rewrite at 2 s (in force by 4 s) joins may follow either set; later only the new."""
    phases = timeline(Phase(RestrictionSet()), Phase(RULES, 2.0, 4.0, "rewrite"))
    attempts = [
        attempt(0, Outcome.ADMITTED, sent=2.5, answered=2.51, ended=4.5),  # evicted by 5 s: ok
        denial(0, sent=3.0, answered=3.01, epoch=2),
        attempt(0, Outcome.ADMITTED, sent=4.2, answered=4.21, ended=4.3, epoch=3),
    ]
    result = check(PEOPLE, attempts, phases, eviction_timeout=1.0)
    assert result.mismatches == {MismatchKind.BARRED_ADMITTED: 1}
    assert result.samples[0].at == 4.21


def test_failed_joins_are_errors_not_mismatches() -> None:
    """A join that failed counts as an error of its kind."""
    failed = attempt(1, Outcome.FAILED, error="close:1014")
    result = check(PEOPLE, [failed], one(RULES), eviction_timeout=5.0)
    assert result.total == 0
    assert result.errors == {"close:1014": 1}


def test_signal_findings_and_lost_final_signals_are_mismatches() -> None:
    """Gaps and duplicates count; a missing final signal counts only for a normal leave."""
    findings = SignalFindings(received=10, lost=2, duplicated=1)
    findings.sample("lost", "p1", "p0#1 jumped 3 -> 6")
    findings.tails.append(TailGap("p1", 1, 4, "p0", 2.0))  # p1 left normally after 6 signals
    findings.tails.append(TailGap("p2", 1, 1, "p0", 2.0))  # p2 dropped: nothing owed
    attempts = [attempt(1, Outcome.ADMITTED, signals=6, final=True),
                attempt(2, Outcome.ADMITTED, end=End.DROPPED, signals=3, final=False)]
    result = check(PEOPLE, attempts, one(RestrictionSet()), eviction_timeout=5.0,
                   signals=findings)
    assert result.mismatches == {MismatchKind.SIGNAL_LOST: 4, MismatchKind.SIGNAL_DUPLICATED: 1}
    details = [m.detail for m in result.samples]
    assert "p0#1 jumped 3 -> 6" in details
    assert any("after signal 4 of 6" in d for d in details)


def test_outcomes_list_every_possible_decision_over_an_interval() -> None:
    """Across the window edge both outcomes are possible; before it only admission."""
    rules = one(RestrictionSet([restriction(starts=3.0)]))
    assert rules.outcomes("event-1", CN, None, 2.0, 2.5) == {None}
    assert rules.outcomes("event-1", CN, None, 2.5, 3.5) == {None, "cn-events"}
    assert rules.outcomes("standup-1", CN, None, 2.5, 3.5) == {None}
    assert rules.change_points(0.0, 10.0) == [3.0]
