"""The gate: an indexed, immutable set of restrictions that decides who may join which meeting.

A decision must cost a few microseconds however many restrictions there are, so the set is
indexed once, at construction:

- meeting patterns: exact ids in a ``StrIndex`` (proxy/native.py: one cache line per lookup on a
  large set, where a dict takes two or three); ``prefix*`` patterns in a dict keyed by their prefix;
  other globs in a dict keyed by their literal prefix (the text before the first wildcard) and
  matched in full. The distinct prefix lengths are kept, so finding the patterns that may name a
  meeting costs one dict lookup per distinct length; ``*`` is kept apart;
- per pattern, one candidate table: block restrictions keyed by region code, so a location looks
  up only its country and subdivision; allow-mode restrictions; and those that deny unknown or
  anonymous locations. An entry holds the verdict its decisions share, built once; for
  restrictions with a window, a schedule of those verdicts between their window edges. Exempt
  networks are checked per decision, on those few candidates only. Nothing is compiled or cached
  per meeting id, so ids chosen by clients cannot grow memory;
- folding, so that most decisions read one table: a few restrictions on ``*`` are copied into
  every table, and a few named by globs into the table of each exact id they match (which is then
  complete for that id). Patterns named by the same restrictions share one table.

Re-checks: when the set is replaced or a window opens, open sessions that may have become barred
must be found without re-deciding every session. ``barred_pairs`` describes who the set bars as
(meeting pattern, region) pairs; ``newly_barred`` gives the pairs barred now that were not barred
before. A pair covers exactly the sessions its restriction bars, so a session that became barred
is covered by a new pair (a superset: re-checking a session that is still fine is harmless).
"""

from __future__ import annotations

import bisect
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias, TypeVar, cast

from proxy.native import PySchedule, Schedule, index_of, schedule_of
from proxy.policy.decision import ADMIT, Decision, Match, MatchReason, Verdict, first_enforced
from proxy.policy.regions import Location, covered_by, location_keys
from proxy.policy.restrictions import (
    Address,
    Enforcement,
    Mode,
    Network,
    Restriction,
    Treatment,
    address_exempt,
    glob_prefix,
    is_glob,
    meeting_matches,
)

__all__ = [
    "ANONYMOUS_REGION",
    "OUTSIDE_ALLOWED_REGION",
    "UNKNOWN_REGION",
    "BarredPair",
    "RestrictionSet",
]

OUTSIDE_ALLOWED_REGION = "*"
"""``BarredPair.region`` for an allow-mode restriction: every known region outside ``allowed``."""
UNKNOWN_REGION = "?unknown"
"""``BarredPair.region`` for a restriction that denies unknown locations."""
ANONYMOUS_REGION = "?anonymous"
"""``BarredPair.region`` for a restriction that denies anonymous-flagged locations."""

_SPECIAL_REGIONS = frozenset({OUTSIDE_ALLOWED_REGION, UNKNOWN_REGION, ANONYMOUS_REGION})

# At most this many restrictions on every meeting ("*") are copied into each candidate table,
# and at most this many named by globs into the table of an exact meeting id they match.
_FOLD_EVERY = 16
_FOLD_PATTERNS = 16

# Decisions are built here valid by construction (sorted, first enforced denies): skip their
# constructor's checks, which cost more than the rest of a decision without matches.
_new = tuple.__new__
_V = TypeVar("_V")


def _network_key(network: Network) -> tuple[int, int, int]:
    return network.version, int(network.network_address), network.prefixlen


def _canonical_networks(networks: Iterable[Network]) -> tuple[Network, ...]:
    return tuple(sorted(set(networks), key=_network_key))


@dataclass(frozen=True, slots=True)
class BarredPair:
    """Who one enforced (or dry-run) restriction bars, for re-checking open sessions.

    Attributes:
        meeting: a meeting id, fnmatch pattern or ``"*"``, as the restriction lists it.
        region: a region code; ``"*"`` (OUTSIDE_ALLOWED_REGION) for every known region outside
            ``allowed``; ``"?unknown"`` or ``"?anonymous"``.
        exempt: the restriction's exempt networks (stored sorted and without duplicates).
        allowed: for ``"*"``, the allow-mode restriction's regions; empty otherwise.

    Raises:
        ValueError: an empty meeting or region, or ``allowed`` given with another region.
    """

    meeting: str
    region: str
    exempt: tuple[Network, ...] = ()
    allowed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.meeting:
            raise ValueError(f"meeting: {self.meeting!r} must be a non-empty id or pattern")
        if not self.region:
            raise ValueError(f"region: {self.region!r} must be a region code, '*' or '?...'")
        if self.allowed and self.region != OUTSIDE_ALLOWED_REGION:
            raise ValueError(
                f"allowed: {sorted(self.allowed)!r} is only meaningful with region '*'"
            )
        object.__setattr__(self, "exempt", _canonical_networks(self.exempt))

    def covers(self, meeting: str, location: Location, address: Address | None) -> bool:
        """Tell whether a session could be barred by this pair (exactly: whether it is).

        Args:
            meeting: the session's meeting id.
            location: the session's location.
            address: the client address; None is never exempt.

        Returns:
            True when the meeting matches, the address is not exempt and the region applies.
        """
        if not meeting_matches(self.meeting, meeting) or address_exempt(address, self.exempt):
            return False
        region = self.region
        if region == OUTSIDE_ALLOWED_REGION:
            return location.known and not covered_by(location, self.allowed)
        if region == UNKNOWN_REGION:
            return not location.known
        if region == ANONYMOUS_REGION:
            return location.anonymous
        return region in location_keys(location)

    def __str__(self) -> str:
        region = self.region
        if region == OUTSIDE_ALLOWED_REGION:
            region = "outside " + ",".join(sorted(self.allowed))
        exempt = f" except {','.join(map(str, self.exempt))}" if self.exempt else ""
        return f"{self.meeting} x {region}{exempt}"


# What a decision has found so far: nothing, one table entry's shared verdict, or matches.
_Found = Verdict | tuple[Match, ...] | None
# A table entry: the shared verdict of restrictions that apply whenever they are found (no
# window, no exempt networks); for restrictions with a window and no exempt networks, a schedule
# of the verdicts between their window edges (None where none is in force); or matches whose
# window and exempt networks are checked per decision.
_Schedule: TypeAlias = "Schedule[Verdict | None] | PySchedule[Verdict | None]"
_Hits: TypeAlias = "Verdict | _Schedule | tuple[Match, ...]"


class _Candidates(dict[str, _Hits]):
    """The restrictions that name one meeting pattern, indexed for ``decide``. Never mutated.

    The mapping itself holds the block restrictions by region code (a location looks up only its
    country and subdivision); the attributes hold the allow-mode restrictions and those that deny
    unknown or anonymous locations. One object rather than a record pointing at a dict: most
    decisions find no match, and each object a decision follows on a large set is a likely cache
    miss. The Matches and verdicts of the entries are built once per set and shared (``_Shared``):
    a decision with a match built none of its own, and when its restrictions have no window and
    no exempt networks it refers to the entry's verdict without reading them.
    """

    __slots__ = ("allow", "anonymous", "complete", "unknown")

    # (allowed regions, entry) per allow-mode restriction; the regions in a tuple, one object to
    # read where a frozenset spans several cache lines
    allow: tuple[tuple[tuple[str, ...], _Hits], ...]
    unknown: _Hits
    anonymous: _Hits
    # An exact meeting id's table that also holds every glob naming that id.
    complete: bool


class RestrictionSet:
    """An immutable, indexed set of restrictions with a version; the gate's decision procedure.

    Args:
        restrictions: the restrictions, in any order.
        version: an identifier of this set (config generation, file hash...), copied into every
            decision and audit record.

    Raises:
        ValueError: two restrictions share an id, or the version is invalid.

    The index is built once: a compiled candidate table per exact meeting id, per glob pattern
    (grouped by the pattern's literal prefix, so a meeting id looks up only the prefixes of the
    lengths in use) and one for ``*``; patterns named by the same restrictions share a table. A
    decision is a handful of dict lookups whatever the number of restrictions; nothing is compiled
    or cached per meeting id, so ids chosen by clients cannot grow memory or slow the gate.
    """

    __slots__ = (
        "_boundaries",
        "_by_id",
        "_every",
        "_every_folded",
        "_exact",
        "_glob_lengths",
        "_globs",
        "_prefix_lengths",
        "_prefixes",
        "_restrictions",
        "_version",
    )

    _version: int | str
    _restrictions: tuple[Restriction, ...]
    _by_id: dict[str, Restriction]
    _exact: Mapping[str, _Candidates]
    _prefixes: dict[str, _Candidates]
    _prefix_lengths: tuple[int, ...]
    _globs: dict[str, tuple[tuple[Callable[[str], object], _Candidates], ...]]
    _glob_lengths: tuple[int, ...]
    _every: _Candidates | None
    _every_folded: bool
    _boundaries: tuple[float, ...]

    def __init__(
        self,
        restrictions: Iterable[Restriction] = (),
        version: int | str = 0,
    ) -> None:
        if isinstance(version, bool) or not isinstance(version, int | str):
            raise ValueError(f"version: {version!r} must be an int or a str")
        by_id: dict[str, Restriction] = {}
        for restriction in restrictions:
            if not isinstance(restriction, Restriction):
                raise ValueError(f"restrictions: {restriction!r} is not a Restriction")
            if restriction.id in by_id:
                raise ValueError(f"restrictions: duplicate id {restriction.id!r}")
            by_id[restriction.id] = restriction
        ordered = tuple(sorted(by_id.values(), key=lambda r: r.id))

        exact: dict[str, list[Restriction]] = {}
        by_pattern: dict[str, list[Restriction]] = {}
        every: list[Restriction] = []
        for restriction in ordered:
            for pattern in dict.fromkeys(restriction.meetings):
                if pattern == "*":
                    every.append(restriction)
                elif is_glob(pattern):
                    by_pattern.setdefault(pattern, []).append(restriction)
                else:
                    exact.setdefault(pattern, []).append(restriction)
        # Patterns named by the same restrictions share one table: a restriction listing
        # thousands of meeting ids costs one table, not thousands, and a smaller index stays in
        # the CPU caches between decisions.
        tables: dict[tuple[object, ...], _Candidates] = {}
        shared = _Shared()
        # A few restrictions on every meeting are folded into every table: a decision that finds
        # a table then needs no second one. Many are kept apart, or each table would copy them.
        every_folded = 0 < len(every) <= _FOLD_EVERY

        def table(named: list[Restriction], complete: bool = False) -> _Candidates:
            if every_folded:
                named = [*named, *every]
            named = sorted({r.id: r for r in named}.values(), key=lambda r: r.id)
            key = (complete, *(r.id for r in named))
            compiled = tables.get(key)
            if compiled is None:
                compiled = tables[key] = _compile(named, complete, shared)
            return compiled

        # "prefix*" matches whatever follows its prefix: its table is found by the prefix alone.
        # Other globs are grouped by their literal prefix and matched in full.
        prefix_named: dict[str, list[Restriction]] = {}
        glob_named: dict[str, list[tuple[Callable[[str], object], list[Restriction]]]] = {}
        for pattern, named in by_pattern.items():
            prefix = glob_prefix(pattern)
            if pattern == f"{prefix}*":
                prefix_named[prefix] = named
            else:
                match = re.compile(fnmatch.translate(pattern), re.DOTALL).match
                glob_named.setdefault(prefix, []).append((match, named))
        prefix_lengths = tuple(sorted({len(prefix) for prefix in prefix_named}))
        glob_lengths = tuple(sorted({len(prefix) for prefix in glob_named}))

        def exact_table(meeting: str, named: list[Restriction]) -> _Candidates:
            # The globs naming an exact id are known now: a few are folded into its table, which
            # then answers for the meeting alone.
            extra = [r for more in _naming(meeting, prefix_named, prefix_lengths, glob_named,
                                           glob_lengths) for r in more]
            if len(extra) > _FOLD_PATTERNS:
                return table(named)
            return table(named + extra, complete=True)
        boundaries = {
            bound
            for restriction in ordered
            for bound in (restriction.starts_at, restriction.ends_at)
            if bound is not None
        }

        init = object.__setattr__
        init(self, "_version", version)
        init(self, "_restrictions", ordered)
        init(self, "_by_id", {r.id: r for r in ordered})
        init(self, "_exact", index_of({key: exact_table(key, value)
                                       for key, value in exact.items()}))
        init(self, "_prefixes", {key: table(value) for key, value in prefix_named.items()})
        init(self, "_prefix_lengths", prefix_lengths)
        init(self, "_globs", {key: tuple((match, table(named)) for match, named in value)
                              for key, value in glob_named.items()})
        init(self, "_glob_lengths", glob_lengths)
        init(self, "_every", table(every) if every else None)
        init(self, "_every_folded", every_folded)
        init(self, "_boundaries", tuple(sorted(boundaries)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"RestrictionSet is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RestrictionSet is immutable (cannot delete {name!r})")

    def __repr__(self) -> str:
        return f"<RestrictionSet version={self._version!r} restrictions={len(self._restrictions)}>"

    def __len__(self) -> int:
        return len(self._restrictions)

    def __iter__(self) -> Iterator[Restriction]:
        return iter(self._restrictions)

    def __contains__(self, restriction_id: object) -> bool:
        return restriction_id in self._by_id

    @property
    def version(self) -> int | str:
        """The version given at construction."""
        return self._version

    @property
    def restrictions(self) -> tuple[Restriction, ...]:
        """Every restriction, sorted by id."""
        return self._restrictions

    def get(self, restriction_id: str) -> Restriction | None:
        """The restriction with this id, or None."""
        return self._by_id.get(restriction_id)

    # -- deciding -------------------------------------------------------------------------------

    def decide(
        self, meeting: str, location: Location, address: Address | None, now: float
    ) -> Decision:
        """Decide whether a participant may be in a meeting.

        Args:
            meeting: the meeting id.
            location: the participant's location (GeoIP on the real client address).
            address: the client address, used only for ``exempt``; None is exempt nowhere.
            now: Unix time in seconds.

        Returns:
            A Decision listing every restriction in force that bars the participant, sorted by
            id; ``denied_by`` is the first enforced one, None to admit.
        """
        found: _Found = None
        applied = False  # a table was applied: it holds the "*" restrictions when they are folded
        patterns = True
        table = self._exact.get(meeting)
        if table is not None:
            found = _apply(table, found, location, address, now)
            applied = True
            patterns = not table.complete
        if patterns and self._prefix_lengths:
            length = len(meeting)
            prefixes = self._prefixes
            for prefix_length in self._prefix_lengths:
                if prefix_length > length:
                    break
                table = prefixes.get(meeting[:prefix_length])
                if table is not None:
                    found = _apply(table, found, location, address, now)
                    applied = True
        if patterns and self._glob_lengths:
            length = len(meeting)
            globs = self._globs
            for prefix_length in self._glob_lengths:
                if prefix_length > length:
                    break
                entries = globs.get(meeting[:prefix_length])
                if entries is not None:
                    for match, table in entries:
                        if match(meeting) is not None:
                            found = _apply(table, found, location, address, now)
                            applied = True
        every = self._every
        if every is not None and not (applied and self._every_folded):
            found = _apply(every, found, location, address, now)
        if found is None:
            return _new(Decision, (meeting, location, ADMIT, self._version))
        if isinstance(found, Verdict):
            return _new(Decision, (meeting, location, found, self._version))
        # A restriction can match more than once (named through several patterns, or barring a
        # location by region and as anonymous): its first match counts, so the reasons keep
        # their order (see proxy.policy.decision).
        if len(found) == 1:
            matches: tuple[Match, ...] = found
        elif len(found) == 2:  # most decisions with several matches: no dict, no sort
            first, second = found
            a, b = first.restriction, second.restriction
            if a is b:
                matches = (first,)
            elif a.id < b.id:
                matches = found
            else:
                matches = (second, first)
        else:
            by_id = {m.restriction.id: m for m in reversed(found)}
            matches = tuple(by_id[key] for key in sorted(by_id))
        verdict = _new(Verdict, (matches, first_enforced(matches)))
        return _new(Decision, (meeting, location, verdict, self._version))

    def scopes(self, meeting: str) -> bool:
        """Whether any restriction (in force or not, enforced or dry run) names this meeting.

        Admissions into such meetings are recorded, so an operator can show who was let in.
        """
        if meeting in self._exact or self._every is not None:
            return True
        naming = _naming(meeting, self._prefixes, self._prefix_lengths, self._globs,
                         self._glob_lengths)
        return next(naming, None) is not None

    # -- schedule and summary -------------------------------------------------------------------

    def next_boundary(self, now: float) -> float | None:
        """The earliest ``starts_at`` or ``ends_at`` strictly after ``now``, for a timer.

        Args:
            now: Unix time in seconds.

        Returns:
            The Unix time of the next window edge, or None when there is none.
        """
        boundaries = self._boundaries
        index = bisect.bisect_right(boundaries, now)
        return boundaries[index] if index < len(boundaries) else None

    def in_force(self, now: float) -> tuple[Restriction, ...]:
        """The restrictions in force at ``now`` (enforced and dry-run), sorted by id."""
        return tuple(r for r in self._restrictions if r.in_force(now))

    def scheduled(self, now: float) -> tuple[Restriction, ...]:
        """The restrictions that come into force after ``now``, sorted by id."""
        return tuple(r for r in self._restrictions if r.starts_at is not None and now < r.starts_at)

    def expired(self, now: float) -> tuple[Restriction, ...]:
        """The restrictions whose window has ended at ``now``, sorted by id."""
        return tuple(r for r in self._restrictions if r.ends_at is not None and r.ends_at <= now)

    def dry_run(self) -> tuple[Restriction, ...]:
        """The dry-run restrictions, sorted by id."""
        return tuple(r for r in self._restrictions if r.enforcement is Enforcement.DRY_RUN)

    # -- re-checks ------------------------------------------------------------------------------

    def barred_pairs(self, now: float) -> frozenset[BarredPair]:
        """Who the enforced restrictions in force at ``now`` bar.

        Args:
            now: Unix time in seconds.

        Returns:
            One pair per (meeting pattern, region rule) of each such restriction.
        """
        return self._pairs(now, Enforcement.ENFORCE)

    def would_bar_pairs(self, now: float) -> frozenset[BarredPair]:
        """Who the dry-run restrictions in force at ``now`` would bar (see ``barred_pairs``)."""
        return self._pairs(now, Enforcement.DRY_RUN)

    def newly_barred(
        self, older: RestrictionSet | None, now: float, older_now: float | None = None
    ) -> frozenset[BarredPair]:
        """The pairs barred by this set at ``now`` that ``older`` did not bar at ``older_now``.

        Open sessions covered by one of them must be re-decided; no other session can have
        become barred. Call ``s.newly_barred(s, now, older_now=previous)`` when a window opens.

        Args:
            older: the set this one replaces; None means nothing was barred.
            now: Unix time in seconds for this set.
            older_now: the time ``older`` was last applied at; defaults to ``now``.

        Returns:
            The new pairs, minus those an older pair already covered entirely.
        """
        current = self.barred_pairs(now)
        if older is None:
            return current
        return _newly(current, older.barred_pairs(now if older_now is None else older_now))

    def newly_would_bar(
        self, older: RestrictionSet | None, now: float, older_now: float | None = None
    ) -> frozenset[BarredPair]:
        """Like ``newly_barred``, for the dry-run restrictions (would-evicts to report)."""
        current = self.would_bar_pairs(now)
        if older is None:
            return current
        return _newly(current, older.would_bar_pairs(now if older_now is None else older_now))

    def _pairs(self, now: float, enforcement: Enforcement) -> frozenset[BarredPair]:
        pairs: set[BarredPair] = set()
        for r in self._restrictions:
            if r.enforcement is not enforcement or not r.in_force(now):
                continue
            exempt = _canonical_networks(r.exempt)
            for meeting in dict.fromkeys(r.meetings):
                if r.mode is Mode.BLOCK:
                    pairs.update(BarredPair(meeting, region, exempt) for region in r.regions)
                else:
                    pairs.add(BarredPair(meeting, OUTSIDE_ALLOWED_REGION, exempt, r.regions))
                if r.unknown is Treatment.DENY:
                    pairs.add(BarredPair(meeting, UNKNOWN_REGION, exempt))
                if r.anonymous is Treatment.DENY:
                    pairs.add(BarredPair(meeting, ANONYMOUS_REGION, exempt))
        return frozenset(pairs)


def _naming(
    meeting: str,
    prefixes: Mapping[str, _V],
    prefix_lengths: tuple[int, ...],
    globs: Mapping[str, Iterable[tuple[Callable[[str], object], _V]]],
    glob_lengths: tuple[int, ...],
) -> Iterator[_V]:
    """What the "prefix*" patterns and the other globs naming ``meeting`` are indexed to.

    ``decide`` walks the same dicts inline: it runs on every join, and a generator costs more.
    """
    length = len(meeting)
    for prefix_length in prefix_lengths:
        if prefix_length > length:
            break
        value = prefixes.get(meeting[:prefix_length])
        if value is not None:
            yield value
    for prefix_length in glob_lengths:
        if prefix_length > length:
            break
        for match, value in globs.get(meeting[:prefix_length], ()):
            if match(meeting) is not None:
                yield value


def _apply(
    table: _Candidates,
    found: _Found,
    location: Location,
    address: Address | None,
    now: float,
) -> _Found:
    """Add the matches of one candidate table (the restrictions naming one pattern)."""
    country = location.country
    if country is not None:
        subdivision = location.subdivision
        if table:
            hits = table.get(country)
            if hits is not None:
                found = _collect(found, hits, address, now)
            if subdivision is not None:
                hits = table.get(subdivision)
                if hits is not None:
                    found = _collect(found, hits, address, now)
        for regions, hits in table.allow:
            if country not in regions and (subdivision is None or subdivision not in regions):
                found = _collect(found, hits, address, now)
    elif table.unknown:
        found = _collect(found, table.unknown, address, now)
    if location.anonymous and table.anonymous:
        found = _collect(found, table.anonymous, address, now)
    return found


def _collect(found: _Found, hits: _Hits, address: Address | None, now: float) -> _Found:
    """Add the hits in force whose exempt list spares not ``address``."""
    if isinstance(hits, Verdict):
        # Taken as it is: none of its matches or restrictions is read. On a large set those lie
        # far apart in memory, and fetching them was most of the extra time of a decision with
        # a match.
        verdict = hits
    elif isinstance(hits, tuple):
        for match in cast("tuple[Match, ...]", hits):  # not a Verdict, which mypy cannot tell
            r = match.restriction
            if r.in_force(now) and not (r.exempt and address_exempt(address, r.exempt)):
                found = (*_so_far(found), match)
        return found
    else:  # a schedule: the verdict at this time, if any is in force
        scheduled = hits.at(now)
        if scheduled is None:
            return found
        verdict = scheduled
    if found is None:
        return verdict
    return (*_so_far(found), *verdict.matches)


def _so_far(found: _Found) -> tuple[Match, ...]:
    """The matches found so far, as a tuple to add to."""
    if found is None:
        return ()
    return found.matches if isinstance(found, Verdict) else found


class _Shared:
    """The Matches and entries of one set, each built once and shared by every table holding it.

    Fewer distinct objects for decisions to fetch from memory, and a smaller index.
    """

    __slots__ = ("_entries", "_matches", "_verdicts")

    def __init__(self) -> None:
        self._matches: dict[tuple[str, MatchReason], Match] = {}
        self._entries: dict[tuple[int, ...], Verdict | _Schedule] = {}
        self._verdicts: dict[tuple[int, ...], Verdict] = {}

    def match(self, r: Restriction, reason: MatchReason) -> Match:
        """The Match restriction ``r`` gives for ``reason``."""
        match = self._matches.get((r.id, reason))
        if match is None:
            match = self._matches[r.id, reason] = Match(r, reason)
        return match

    def hits(self, matches: list[Match]) -> _Hits:
        """A table entry for ``matches`` (sorted by distinct restriction id)."""
        if not matches or any(m.restriction.exempt for m in matches):
            return tuple(matches)
        key = tuple(map(id, matches))  # the Matches are shared, and kept alive here
        entry = self._entries.get(key)
        if entry is None:
            edges = sorted({edge for m in matches for edge in (m.restriction.starts_at,
                                                                  m.restriction.ends_at)
                            if edge is not None})
            if edges:
                # In force from starts_at (included) to ends_at (excluded): between two edges
                # the same restrictions are in force as at the first one.
                at = [-math.inf, *edges]
                entry = schedule_of(edges, [self.verdict(matches, t) for t in at],
                                    self.verdict(matches, math.nan))
            else:
                always = self.verdict(matches, 0.0)
                assert always is not None  # no window: in force at any time
                entry = always
            self._entries[key] = entry
        return entry

    def verdict(self, matches: list[Match], now: float) -> Verdict | None:
        """The verdict of those of ``matches`` in force at ``now``; None when none is."""
        matches = [m for m in matches if m.restriction.in_force(now)]
        if not matches:
            return None
        key = tuple(map(id, matches))
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = Verdict(tuple(matches), first_enforced(matches))
        return verdict


def _compile(named: Iterable[Restriction], complete: bool, shared: _Shared) -> _Candidates:
    """Index the restrictions that name one meeting, with the Match each rule gives."""
    by_region: dict[str, list[Match]] = {}
    allow: list[tuple[tuple[str, ...], _Hits]] = []
    unknown: list[Match] = []
    anonymous: list[Match] = []
    for r in named:
        if r.mode is Mode.BLOCK:
            region_match = shared.match(r, MatchReason.REGION)
            for region in r.regions:
                by_region.setdefault(region, []).append(region_match)
        else:
            hits = shared.hits([shared.match(r, MatchReason.OUTSIDE_ALLOWED)])
            allow.append((tuple(sorted(r.regions)), hits))
        if r.unknown is Treatment.DENY:
            unknown.append(shared.match(r, MatchReason.UNKNOWN))
        if r.anonymous is Treatment.DENY:
            anonymous.append(shared.match(r, MatchReason.ANONYMOUS))
    table = _Candidates({region: shared.hits(ms) for region, ms in by_region.items()})
    table.allow = tuple(allow)
    table.unknown = shared.hits(unknown)
    table.anonymous = shared.hits(anonymous)
    table.complete = complete
    return table


def _newly(
    current: frozenset[BarredPair], previous: frozenset[BarredPair]
) -> frozenset[BarredPair]:
    """The pairs of ``current`` whose sessions ``previous`` did not all bar already.

    A pair is left out when it is in ``previous``, or when a previous pair for the same meeting
    pattern (or ``*``) and the same region (or the country of a subdivision) bars a superset of
    its sessions: fewer exempt networks and, for allow mode, fewer allowed regions.
    """
    by_key: dict[tuple[str, str], list[BarredPair]] = {}
    for pair in previous:
        by_key.setdefault((pair.meeting, pair.region), []).append(pair)
    fresh = []
    for pair in current:
        if pair in previous or _dominated(pair, by_key):
            continue
        fresh.append(pair)
    return frozenset(fresh)


def _dominated(pair: BarredPair, by_key: dict[tuple[str, str], list[BarredPair]]) -> bool:
    regions = [pair.region]
    if pair.region not in _SPECIAL_REGIONS and "-" in pair.region:
        regions.append(pair.region.split("-", 1)[0])
    exempt = set(pair.exempt)
    for meeting in dict.fromkeys((pair.meeting, "*")):
        for region in regions:
            for older in by_key.get((meeting, region), ()):
                if exempt.issuperset(older.exempt) and older.allowed <= pair.allowed:
                    return True
    return False
