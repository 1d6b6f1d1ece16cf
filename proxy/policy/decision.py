"""The outcome of gating one participant: every restriction that matched, and which one denies.

A restriction matches for one reason, taken in this order: the region rule (REGION in block mode,
OUTSIDE_ALLOWED in allow mode), then UNKNOWN, then ANONYMOUS. Matches are sorted by restriction
id so a decision never depends on the order restrictions were listed in; the first enforced match
denies, dry-run matches are only reported.

``MatchReason`` is defined in ``proxy.policy.restrictions``, next to ``Restriction.bars`` which
produces it, and exported from here as part of the decision's vocabulary.

A Decision holds its outcome, the matches and the denying restriction, as one ``Verdict``. The gate
builds the verdicts of restrictions that apply whenever they are found (no window, no exempt
networks) once, with its index, and a decision refers to one of them: on a large set, a decision
with a match then fetches one object from memory rather than every match and restriction.

All are named tuples, not frozen dataclasses: the gate builds one Decision per join, and a frozen
dataclass costs about five times as much to build. The public constructors check the invariants;
the gate, whose values hold them by construction, builds them with ``tuple.__new__``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from proxy.policy.regions import Location
from proxy.policy.restrictions import Enforcement, MatchReason, Restriction

__all__ = ["Decision", "Match", "MatchReason", "Verdict", "first_enforced"]


class Match(NamedTuple):
    """One restriction that bars a participant, and why (immutable).

    Attributes:
        restriction: the restriction.
        reason: which of its rules matched.
    """

    restriction: Restriction
    reason: MatchReason

    @property
    def enforced(self) -> bool:
        """Whether this match denies (False for a dry run)."""
        return self.restriction.enforcement is Enforcement.ENFORCE


class _VerdictFields(NamedTuple):
    matches: tuple[Match, ...] = ()
    denied_by: Restriction | None = None


class Verdict(_VerdictFields):
    """The outcome of a decision: what matched and what denies (immutable, shared).

    Attributes:
        matches: every matching restriction in force, sorted by restriction id.
        denied_by: the first enforced match's restriction; None when admitted.

    Raises:
        ValueError: matches are not sorted by distinct id, or ``denied_by`` is not the first
            enforced one.
    """

    __slots__ = ()

    def __new__(cls, matches: tuple[Match, ...] = (), denied_by: Restriction | None = None,
                ) -> Verdict:
        matches = tuple(matches)
        if not matches:
            if denied_by is not None:
                raise ValueError(f"denied_by: {denied_by.id!r} is not among the matches")
        else:
            _check(matches, denied_by)
        return super().__new__(cls, matches, denied_by)


ADMIT = Verdict()
"""The verdict of a decision that nothing matched."""


class _DecisionFields(NamedTuple):
    meeting: str
    location: Location
    verdict: Verdict = ADMIT
    version: int | str = 0


class Decision(_DecisionFields):
    """The gate's answer for one participant joining or rejoining one meeting (immutable).

    Attributes:
        meeting: the meeting id.
        location: the participant's resolved location.
        verdict: the matches and the denying restriction (also read as ``matches`` and
            ``denied_by``).
        version: the version of the restriction set the decision was made with.

    Args:
        meeting: the meeting id.
        location: the participant's resolved location.
        matches: every matching restriction in force, sorted by restriction id.
        denied_by: the first enforced match's restriction; None to admit.
        version: the version of the restriction set.

    Raises:
        ValueError: matches are not sorted by id, or ``denied_by`` is not the first enforced one.
    """

    __slots__ = ()

    def __new__(
        cls,
        meeting: str,
        location: Location,
        matches: tuple[Match, ...] = (),
        denied_by: Restriction | None = None,
        version: int | str = 0,
    ) -> Decision:
        verdict = Verdict(matches, denied_by) if matches or denied_by is not None else ADMIT
        return super().__new__(cls, meeting, location, verdict, version)

    def __getnewargs__(self) -> tuple[str, Location, tuple[Match, ...], Restriction | None,
                                      int | str]:
        """The constructor's arguments, for copy and pickle."""
        return (self.meeting, self.location, *self.verdict, self.version)

    @property
    def matches(self) -> tuple[Match, ...]:
        """Every matching restriction in force, sorted by restriction id."""
        return self.verdict.matches

    @property
    def denied_by(self) -> Restriction | None:
        """The first enforced match's restriction; None when admitted."""
        return self.verdict.denied_by

    @property
    def allowed(self) -> bool:
        """Whether the participant is admitted."""
        return self.verdict.denied_by is None

    @property
    def denial(self) -> Match | None:
        """The match that denies (restriction and reason, for the notice and the audit)."""
        denied_by = self.denied_by
        if denied_by is None:
            return None
        return next(m for m in self.matches if m.restriction is denied_by)

    @property
    def dry_run_matches(self) -> tuple[Match, ...]:
        """The dry-run matches: what would also be denied if they were enforced."""
        return tuple(m for m in self.matches if not m.enforced)


def first_enforced(matches: Iterable[Match]) -> Restriction | None:
    """The restriction of the first enforced match: the one that denies; None when none is."""
    for match in matches:
        restriction = match.restriction
        if restriction.enforcement is Enforcement.ENFORCE:
            return restriction
    return None


def _check(matches: tuple[Match, ...], denied_by: Restriction | None) -> None:
    """Raise ValueError unless ids are distinct and sorted and denied_by is the first enforced."""
    previous = ""
    for match in matches:
        restriction_id = match.restriction.id
        if restriction_id <= previous:
            ids = [m.restriction.id for m in matches]
            raise ValueError(f"matches: {ids!r} are not sorted by distinct restriction id")
        previous = restriction_id
    first = first_enforced(matches)
    if denied_by is not first and denied_by != first:
        given = None if denied_by is None else denied_by.id
        expected = None if first is None else first.id
        raise ValueError(f"denied_by: {given!r} is not the first enforced match ({expected!r})")
