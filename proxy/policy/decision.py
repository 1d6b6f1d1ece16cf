"""The outcome of gating one participant: every restriction that matched, and which one denies.

A restriction matches for one reason, taken in this order: the region rule (REGION in block mode,
OUTSIDE_ALLOWED in allow mode), then UNKNOWN, then ANONYMOUS. Matches are sorted by restriction
id so a decision never depends on the order restrictions were listed in; the first enforced match
denies, dry-run matches are only reported.

``MatchReason`` is defined in ``proxy.policy.restrictions``, next to ``Restriction.bars`` which
produces it, and exported from here as part of the decision's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.policy.regions import Location
from proxy.policy.restrictions import Enforcement, MatchReason, Restriction

__all__ = ["Decision", "Match", "MatchReason"]


@dataclass(frozen=True, slots=True)
class Match:
    """One restriction that bars a participant, and why.

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


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's answer for one participant joining or rejoining one meeting.

    Attributes:
        meeting: the meeting id.
        location: the participant's resolved location.
        matches: every matching restriction in force, sorted by restriction id.
        denied_by: the first enforced match's restriction; None when admitted.
        version: the version of the restriction set the decision was made with.

    Raises:
        ValueError: matches are not sorted by id, or ``denied_by`` is not the first enforced one.
    """

    meeting: str
    location: Location
    matches: tuple[Match, ...] = ()
    denied_by: Restriction | None = None
    version: int | str = 0

    def __post_init__(self) -> None:
        matches = self.matches
        if not matches:
            if self.denied_by is not None:
                raise ValueError(f"denied_by: {self.denied_by.id!r} is not among the matches")
            return
        # A plain loop: this runs for every denial, on the join path.
        previous = ""
        first = None
        for match in matches:
            restriction = match.restriction
            if restriction.id <= previous:
                ids = [m.restriction.id for m in matches]
                raise ValueError(f"matches: {ids!r} are not sorted by distinct restriction id")
            previous = restriction.id
            if first is None and restriction.enforcement is Enforcement.ENFORCE:
                first = restriction
        if self.denied_by is not first and self.denied_by != first:
            given = None if self.denied_by is None else self.denied_by.id
            expected = None if first is None else first.id
            raise ValueError(f"denied_by: {given!r} is not the first enforced match ({expected!r})")

    @property
    def allowed(self) -> bool:
        """Whether the participant is admitted."""
        return self.denied_by is None

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
