"""Tests for proxy.policy.decision: matches, decisions and their invariants."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from proxy.policy.decision import ADMIT, Decision, Match, MatchReason, Verdict
from proxy.policy.regions import Location
from proxy.policy.restrictions import Enforcement, Mode, Restriction

HERE = Location("CN", "CN-BJ")


def make(rid: str, **overrides: Any) -> Restriction:
    fields: dict[str, Any] = {
        "id": rid,
        "mode": Mode.BLOCK,
        "regions": frozenset({"CN"}),
        "meetings": ("m1",),
        "legal_basis": "basis",
        "authority": "authority",
    }
    fields.update(overrides)
    return Restriction(**fields)


ENFORCED_A = make("a")
ENFORCED_B = make("b")
DRY_C = make("c", enforcement=Enforcement.DRY_RUN)
DRY_0 = make("0", enforcement=Enforcement.DRY_RUN)


def test_reason_values() -> None:
    """MatchReason has the documented string values."""
    assert [r.value for r in MatchReason] == ["region", "outside-allowed", "unknown", "anonymous"]


def test_match_enforced_follows_the_restriction() -> None:
    """A match is enforced exactly when its restriction is."""
    assert Match(ENFORCED_A, MatchReason.REGION).enforced
    assert not Match(DRY_C, MatchReason.REGION).enforced


def test_admitted_decision() -> None:
    """A decision without denied_by admits and has no dry-run matches."""
    d = Decision("m1", HERE, (), None, version=7)
    assert d.allowed
    assert d.denial is None
    assert d.dry_run_matches == ()
    assert d.version == 7


def test_denied_decision() -> None:
    """A decision with denied_by denies, names the denying match and lists dry runs apart."""
    matches = (
        Match(DRY_0, MatchReason.REGION),
        Match(ENFORCED_A, MatchReason.REGION),
        Match(ENFORCED_B, MatchReason.ANONYMOUS),
        Match(DRY_C, MatchReason.REGION),
    )
    d = Decision("m1", HERE, matches, ENFORCED_A)
    assert not d.allowed
    assert d.denial == matches[1]
    assert d.dry_run_matches == (matches[0], matches[3])


def test_dry_run_only_decision_admits() -> None:
    """Dry-run matches alone admit, and are reported."""
    match = Match(DRY_C, MatchReason.REGION)
    d = Decision("m1", HERE, (match,), None)
    assert d.allowed
    assert d.dry_run_matches == (match,)


def test_unsorted_matches_are_rejected() -> None:
    """Matches must be sorted by restriction id."""
    matches = (Match(ENFORCED_B, MatchReason.REGION), Match(ENFORCED_A, MatchReason.REGION))
    with pytest.raises(ValueError, match=r"matches: \['b', 'a'\]"):
        Decision("m1", HERE, matches, ENFORCED_B)


def test_duplicate_matches_are_rejected() -> None:
    """A restriction matches at most once."""
    matches = (Match(ENFORCED_A, MatchReason.REGION), Match(ENFORCED_A, MatchReason.ANONYMOUS))
    with pytest.raises(ValueError, match="matches"):
        Decision("m1", HERE, matches, ENFORCED_A)


def test_denied_by_must_be_the_first_enforced_match() -> None:
    """denied_by must be the first enforced match: not a later one, not None."""
    matches = (Match(ENFORCED_A, MatchReason.REGION), Match(ENFORCED_B, MatchReason.REGION))
    with pytest.raises(ValueError, match=r"denied_by: 'b'.*\('a'\)"):
        Decision("m1", HERE, matches, ENFORCED_B)
    with pytest.raises(ValueError, match=r"denied_by: None"):
        Decision("m1", HERE, matches, None)


def test_dry_run_cannot_deny() -> None:
    """A dry-run restriction cannot be denied_by."""
    with pytest.raises(ValueError, match=r"denied_by: 'c'"):
        Decision("m1", HERE, (Match(DRY_C, MatchReason.REGION),), DRY_C)


def test_denied_by_without_matches_is_rejected() -> None:
    """denied_by needs a match."""
    with pytest.raises(ValueError, match=r"denied_by: 'a'"):
        Decision("m1", HERE, (), ENFORCED_A)


def test_decision_is_frozen() -> None:
    """A decision cannot be changed."""
    d = Decision("m1", HERE)
    with pytest.raises(AttributeError):
        d.meeting = "m2"  # type: ignore[misc]


def test_reason_is_shared_with_restrictions() -> None:
    """decision.MatchReason is the enum Restriction.bars returns."""
    from proxy.policy import restrictions

    assert MatchReason is restrictions.MatchReason


def test_verdict_checks_like_a_decision() -> None:
    """A Verdict refuses what a Decision refuses: unsorted, duplicated, wrong denied_by."""
    a, b = Match(ENFORCED_A, MatchReason.REGION), Match(ENFORCED_B, MatchReason.REGION)
    with pytest.raises(ValueError, match=r"matches: \['b', 'a'\]"):
        Verdict((b, a), ENFORCED_B)
    with pytest.raises(ValueError, match=r"denied_by: 'b'"):
        Verdict((a, b), ENFORCED_B)
    with pytest.raises(ValueError, match=r"denied_by: 'a' is not among"):
        Verdict((), ENFORCED_A)
    assert Verdict([a, b], ENFORCED_A).matches == (a, b)  # any sequence, kept as a tuple


def test_decision_reads_its_verdict() -> None:
    """matches and denied_by are the verdict's; an admitted decision holds ADMIT."""
    a = Match(ENFORCED_A, MatchReason.REGION)
    d = Decision("m1", HERE, (a,), ENFORCED_A, version=3)
    assert d.verdict == Verdict((a,), ENFORCED_A)
    assert (d.matches, d.denied_by) == ((a,), ENFORCED_A)
    assert Decision("m1", HERE).verdict is ADMIT
    assert Decision("m1", HERE) == Decision("m1", HERE, (), None, 0)


def test_decision_survives_copy_and_pickle() -> None:
    """copy and pickle rebuild a decision through its constructor's arguments."""
    d = Decision("m1", HERE, (Match(DRY_0, MatchReason.REGION),), None, version="v")
    assert copy.copy(d) == d
    assert copy.deepcopy(d) == d
    assert pickle.loads(pickle.dumps(d)) == d
