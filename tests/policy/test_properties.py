"""Property tests for the policy core: the indexed gate against a plain reading of the rules."""

from __future__ import annotations

import dataclasses
import random
from fnmatch import fnmatchcase
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.policy import gate as gate_module
from proxy.policy.decision import MatchReason
from proxy.policy.gate import RestrictionSet
from proxy.policy.regions import Location
from proxy.policy.restrictions import Enforcement, Mode, Restriction, Treatment

Address = IPv4Address | IPv6Address

# Small pools so that generated restrictions, meetings and locations collide often.
MEETINGS = ["m1", "m2", "room-1", "room-12", "memorial-a", "memorial-", "x-final", ""]
PATTERNS = ["m1", "m2", "room-1", "room-?", "room-[12]*", "memorial-*", "*-final", "m*", "*"]
REGIONS = ["US", "US-CA", "US-NY", "CN", "HK", "TW", "DE", "DE-BY", "FR"]
LOCATIONS = [
    Location("US", "US-CA"),
    Location("US", "US-NY"),
    Location("US", "US-TX"),
    Location("US"),
    Location("CN", "CN-BJ"),
    Location("HK"),
    Location("TW"),
    Location("DE", "DE-BY"),
    Location("DE"),
    Location("FR", "FR-75C"),
    Location("JP"),
    Location(None),
]
NETWORKS = [ip_network(n) for n in ("10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32", "192.0.2.0/24")]
ADDRESSES: list[Address | None] = [
    *(ip_address(a) for a in ("10.1.2.3", "10.9.9.9", "2001:db8::1", "192.0.2.1", "203.0.113.5")),
    ip_address("::ffff:10.1.2.3"),
    None,
]
TIMES = [0.0, 10.0, 20.0, 30.0]

# The oracle test carries the index's correctness and gets the most examples; the whole file
# should stay within a few seconds on a slow machine.
ORACLE = settings(max_examples=120)
EXAMPLES = settings(max_examples=40)


@st.composite
def restriction_kwargs(draw: st.DrawFn) -> dict[str, object]:
    mode = draw(st.sampled_from(Mode))
    unknown = draw(st.sampled_from(Treatment))
    anonymous = draw(st.sampled_from(Treatment))
    needs_region = mode is Mode.ALLOW or (unknown is anonymous is Treatment.ALLOW)
    regions = draw(st.frozensets(st.sampled_from(REGIONS), min_size=1 if needs_region else 0))
    bounds = sorted(draw(st.lists(st.sampled_from(TIMES), min_size=2, max_size=2, unique=True)))
    starts_at = draw(st.sampled_from([None, bounds[0]]))
    ends_at = draw(st.sampled_from([None, bounds[1]]))
    return {
        "mode": mode,
        "regions": regions,
        "meetings": tuple(draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3))),
        "legal_basis": "basis",
        "authority": "authority",
        "starts_at": starts_at,
        "ends_at": ends_at,
        "unknown": unknown,
        "anonymous": anonymous,
        "exempt": tuple(draw(st.lists(st.sampled_from(NETWORKS), max_size=2))),
        "enforcement": draw(st.sampled_from(Enforcement)),
    }


@st.composite
def restriction_lists(draw: st.DrawFn, max_size: int = 8) -> list[Restriction]:
    ids = draw(
        st.lists(st.text("abcdef0123", min_size=1, max_size=3), max_size=max_size, unique=True)
    )
    return [Restriction(id=rid, **draw(restriction_kwargs())) for rid in ids]  # type: ignore[arg-type]


sessions = st.tuples(
    st.sampled_from(MEETINGS),
    st.sampled_from(LOCATIONS),
    st.booleans(),
    st.sampled_from(ADDRESSES),
    st.sampled_from([*TIMES, 5.0, 15.0, 25.0, 35.0]),
)


@st.composite
def edited(draw: st.DrawFn, r: Restriction) -> Restriction:
    """One restriction after one small edit, of the kind an operator makes."""
    edit = draw(st.sampled_from(["regions", "exempt", "enforcement", "window", "other"]))
    changes: dict[str, object]
    if edit == "regions":  # add or remove one region
        region = draw(st.sampled_from(REGIONS))
        changes = {"regions": r.regions ^ {region}}
    elif edit == "exempt":  # add or remove one network
        network = draw(st.sampled_from(NETWORKS))
        exempt = [n for n in r.exempt if n != network]
        changes = {"exempt": tuple(exempt) if len(exempt) < len(r.exempt) else (*exempt, network)}
    elif edit == "enforcement":
        changes = {"enforcement": draw(st.sampled_from(Enforcement))}
    else:
        kwargs = draw(restriction_kwargs())
        if edit == "window":
            changes = {"starts_at": kwargs["starts_at"], "ends_at": kwargs["ends_at"]}
        else:
            field = draw(st.sampled_from(["mode", "meetings", "unknown", "anonymous"]))
            changes = {field: kwargs[field]}
    try:
        return dataclasses.replace(r, **changes)  # type: ignore[arg-type]
    except ValueError:
        return r  # the edit made it invalid (e.g. allow mode without regions)


@st.composite
def evolved(draw: st.DrawFn, older: list[Restriction]) -> list[Restriction]:
    """A plausible new version of ``older``: restrictions kept, dropped, edited or added."""
    newer = []
    for r in older:
        action = draw(st.sampled_from(["keep", "drop", "edit", "edit"]))
        if action == "keep":
            newer.append(r)
        elif action == "edit":
            newer.append(draw(edited(r)))
    ids = {r.id for r in older}
    added = [r for r in draw(restriction_lists(max_size=1)) if r.id not in ids]
    return newer + added


def flagged(location: Location, anonymous: bool) -> Location:
    return Location(location.country, location.subdivision, anonymous)


def reference(
    restrictions: list[Restriction],
    meeting: str,
    location: Location,
    address: Address | None,
    now: float,
) -> tuple[str | None, list[tuple[str, MatchReason]]]:
    """The rules as written in the spec, one restriction at a time, with no index."""
    keys = set()
    if location.country is not None:
        keys.add(location.country)
        if location.subdivision is not None:
            keys.add(location.subdivision)
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    matches = []
    for r in sorted(restrictions, key=lambda r: r.id):
        if not any(fnmatchcase(meeting, pattern) for pattern in r.meetings):
            continue
        if r.starts_at is not None and now < r.starts_at:
            continue
        if r.ends_at is not None and now >= r.ends_at:
            continue
        if address is not None and any(
            (address.version == n.version and address in n) or (mapped is not None and mapped in n)
            for n in r.exempt
        ):
            continue
        reason = None
        if location.country is not None:
            covered = bool(keys & r.regions)
            if r.mode is Mode.BLOCK and covered:
                reason = MatchReason.REGION
            elif r.mode is Mode.ALLOW and not covered:
                reason = MatchReason.OUTSIDE_ALLOWED
        elif r.unknown is Treatment.DENY:
            reason = MatchReason.UNKNOWN
        if reason is None and location.anonymous and r.anonymous is Treatment.DENY:
            reason = MatchReason.ANONYMOUS
        if reason is not None:
            matches.append((r.id, reason))
    enforced = [rid for rid, _ in matches if restrictions_by_id(restrictions)[rid].enforced]
    return (enforced[0] if enforced else None), matches


def restrictions_by_id(restrictions: list[Restriction]) -> dict[str, Restriction]:
    return {r.id: r for r in restrictions}


def outcome(
    gate: RestrictionSet, meeting: str, location: Location, address: Address | None, now: float
) -> tuple[str | None, list[tuple[str, MatchReason]]]:
    decision = gate.decide(meeting, location, address, now)
    denied = None if decision.denied_by is None else decision.denied_by.id
    return denied, [(m.restriction.id, m.reason) for m in decision.matches]


def assert_agrees_with_reference(
    gate: RestrictionSet,
    restrictions: list[Restriction],
    batch: list[tuple[str, Location, bool, Address | None, float]],
) -> None:
    for meeting, location, anonymous, address, now in batch:
        location = flagged(location, anonymous)
        expected = reference(restrictions, meeting, location, address, now)
        assert outcome(gate, meeting, location, address, now) == expected


@ORACLE
@given(restriction_lists(), st.lists(sessions, min_size=1, max_size=10))
def test_decide_agrees_with_the_reference(
    restrictions: list[Restriction],
    batch: list[tuple[str, Location, bool, Address | None, float]],
) -> None:
    """decide() gives the same matches, reasons and denial as scanning every restriction."""
    assert_agrees_with_reference(RestrictionSet(restrictions), restrictions, batch)


@EXAMPLES
@given(restriction_lists(), st.lists(sessions, min_size=1, max_size=10))
def test_decide_agrees_with_the_reference_with_nothing_folded(
    restrictions: list[Restriction],
    batch: list[tuple[str, Location, bool, Address | None, float]],
) -> None:
    """The same when restrictions on "*" or on globs are too many to fold into other tables."""
    with (mock.patch.object(gate_module, "_FOLD_EVERY", 0),
          mock.patch.object(gate_module, "_FOLD_PATTERNS", -1)):
        gate = RestrictionSet(restrictions)
    assert not gate._every_folded
    assert not any(table.complete for table in gate._exact.values())
    assert_agrees_with_reference(gate, restrictions, batch)


@EXAMPLES
@given(restriction_lists(), st.lists(sessions, min_size=1, max_size=10))
def test_decide_agrees_with_restriction_bars(
    restrictions: list[Restriction],
    batch: list[tuple[str, Location, bool, Address | None, float]],
) -> None:
    """decide() matches exactly the restrictions naming the meeting, in force, that bar."""
    gate = RestrictionSet(restrictions)
    for meeting, location, anonymous, address, now in batch:
        location = flagged(location, anonymous)
        expected = [
            (r.id, reason)
            for r in sorted(restrictions, key=lambda r: r.id)
            if r.names_meeting(meeting)
            and r.in_force(now)
            and (reason := r.bars(location, address)) is not None
        ]
        assert outcome(gate, meeting, location, address, now)[1] == expected


@EXAMPLES
@given(restriction_lists(), sessions, st.randoms(use_true_random=False))
def test_decision_does_not_depend_on_order(
    restrictions: list[Restriction],
    session: tuple[str, Location, bool, Address | None, float],
    rng: random.Random,
) -> None:
    """Shuffling the restrictions gives an equal decision."""
    meeting, location, anonymous, address, now = session
    location = flagged(location, anonymous)
    shuffled = list(restrictions)
    rng.shuffle(shuffled)
    first = RestrictionSet(restrictions).decide(meeting, location, address, now)
    second = RestrictionSet(shuffled).decide(meeting, location, address, now)
    assert first == second


@EXAMPLES
@given(restriction_lists(), sessions)
def test_unnamed_region_is_never_denied_by_block(
    restrictions: list[Restriction], session: tuple[str, Location, bool, Address | None, float]
) -> None:
    """A known location whose region no restriction names is never denied by a block one."""
    meeting, location, _, address, now = session
    if location.country is None:
        return
    named = set().union(*(r.regions for r in restrictions))
    location = Location(location.country, location.subdivision)
    if {location.country, location.subdivision} & named:
        return
    decision = RestrictionSet(restrictions).decide(meeting, location, address, now)
    assert all(m.restriction.mode is Mode.ALLOW for m in decision.matches)


@EXAMPLES
@given(restriction_lists(), sessions)
def test_only_enforced_restrictions_in_force_deny(
    restrictions: list[Restriction], session: tuple[str, Location, bool, Address | None, float]
) -> None:
    """Nothing outside its window, in dry run, or exempting the address ever matches or denies."""
    meeting, location, anonymous, address, now = session
    decision = RestrictionSet(restrictions).decide(
        meeting, flagged(location, anonymous), address, now
    )
    for match in decision.matches:
        assert match.restriction.in_force(now)
        assert not match.restriction.exempts(address)
    if decision.denied_by is not None:
        assert decision.denied_by.enforced
        assert decision.denied_by.in_force(now)
        assert not decision.denied_by.exempts(address)


@EXAMPLES
@given(restriction_lists(), sessions)
def test_exempt_address_is_never_denied_by_that_restriction(
    restrictions: list[Restriction], session: tuple[str, Location, bool, Address | None, float]
) -> None:
    """A restriction never matches an address in its exempt networks."""
    meeting, location, anonymous, _, now = session
    gate = RestrictionSet(restrictions)
    for r in restrictions:
        for network in r.exempt:
            address = network.network_address + 1
            decision = gate.decide(meeting, flagged(location, anonymous), address, now)
            assert r.id not in {m.restriction.id for m in decision.matches}


@EXAMPLES
@given(restriction_lists(), sessions)
def test_barred_pairs_cover_every_barred_session(
    restrictions: list[Restriction], session: tuple[str, Location, bool, Address | None, float]
) -> None:
    """Every denied session is covered by a barred pair; every would-deny by a would-bar pair."""
    meeting, location, anonymous, address, now = session
    location = flagged(location, anonymous)
    gate = RestrictionSet(restrictions)
    decision = gate.decide(meeting, location, address, now)
    covered = any(p.covers(meeting, location, address) for p in gate.barred_pairs(now))
    assert covered == (not decision.allowed)
    would = any(p.covers(meeting, location, address) for p in gate.would_bar_pairs(now))
    assert would == bool(decision.dry_run_matches)


@ORACLE
@given(
    restriction_lists(max_size=5),
    restriction_lists(max_size=5),
    st.lists(sessions, min_size=1, max_size=10),
    st.sampled_from([*TIMES, 5.0, 15.0, 25.0]),
)
def test_newly_barred_finds_every_newly_denied_session(
    older: list[Restriction],
    newer: list[Restriction],
    batch: list[tuple[str, Location, bool, Address | None, float]],
    older_now: float,
) -> None:
    """A session denied by the new set and admitted by the old one is covered by a new pair."""
    old_gate, new_gate = RestrictionSet(older), RestrictionSet(newer)
    for meeting, location, anonymous, address, now in batch:
        location = flagged(location, anonymous)
        pairs = new_gate.newly_barred(old_gate, now, older_now=older_now)
        was = old_gate.decide(meeting, location, address, older_now)
        is_ = new_gate.decide(meeting, location, address, now)
        if was.allowed and not is_.allowed:
            assert any(p.covers(meeting, location, address) for p in pairs)
        # Window changes within one set are found the same way.
        same = new_gate.newly_barred(new_gate, now, older_now=older_now)
        was_same = new_gate.decide(meeting, location, address, older_now)
        if was_same.allowed and not is_.allowed:
            assert any(p.covers(meeting, location, address) for p in same)


@ORACLE
@given(
    st.data(),
    restriction_lists(max_size=4),
    st.sampled_from(ADDRESSES),
    st.booleans(),
    st.sampled_from([*TIMES, 5.0, 15.0, 25.0]),
    st.sampled_from([*TIMES, 5.0, 15.0, 25.0]),
)
def test_newly_barred_after_an_edit(
    data: st.DataObject,
    older: list[Restriction],
    address: Address | None,
    anonymous: bool,
    older_now: float,
    now: float,
) -> None:
    """After an edit of the set, every newly denied session is covered by a new pair."""
    newer = data.draw(evolved(older))
    old_gate, new_gate = RestrictionSet(older), RestrictionSet(newer)
    pairs = new_gate.newly_barred(old_gate, now, older_now=older_now)
    would = new_gate.newly_would_bar(old_gate, now, older_now=older_now)
    # Every meeting and location, so that the one session an edit affects is not missed.
    for meeting in MEETINGS:
        for location in LOCATIONS:
            location = flagged(location, anonymous)
            was = old_gate.decide(meeting, location, address, older_now)
            is_ = new_gate.decide(meeting, location, address, now)
            if was.allowed and not is_.allowed:
                assert any(p.covers(meeting, location, address) for p in pairs)
            if not was.dry_run_matches and is_.dry_run_matches:
                assert any(p.covers(meeting, location, address) for p in would)


@ORACLE
@given(st.data(), restriction_kwargs(), st.sampled_from(Enforcement))
def test_newly_barred_after_editing_one_restriction(
    data: st.DataObject, kwargs: dict[str, object], enforcement: Enforcement
) -> None:
    """One always-in-force restriction edited once: every newly denied session is found."""
    kwargs = {**kwargs, "starts_at": None, "ends_at": None, "enforcement": enforcement}
    older = Restriction(id="r", **kwargs)  # type: ignore[arg-type]
    newer = data.draw(edited(older))
    old_gate, new_gate = RestrictionSet([older]), RestrictionSet([newer])
    pairs = new_gate.newly_barred(old_gate, 0.0)
    would = new_gate.newly_would_bar(old_gate, 0.0)
    for meeting in MEETINGS:
        for location in LOCATIONS:
            for anonymous in (False, True):
                for address in ADDRESSES:
                    session = (meeting, flagged(location, anonymous), address)
                    was = old_gate.decide(*session, 0.0)
                    is_ = new_gate.decide(*session, 0.0)
                    if was.allowed and not is_.allowed:
                        assert any(p.covers(*session) for p in pairs)
                    if not was.dry_run_matches and is_.dry_run_matches:
                        assert any(p.covers(*session) for p in would)


@EXAMPLES
@given(restriction_lists(), st.sampled_from(TIMES))
def test_unchanged_set_bars_nobody_new(restrictions: list[Restriction], now: float) -> None:
    """The same restrictions, rebuilt, have no newly barred pairs."""
    gate = RestrictionSet(restrictions)
    assert gate.newly_barred(RestrictionSet(reversed(restrictions)), now) == frozenset()


@EXAMPLES
@given(restriction_lists(), st.sampled_from([*TIMES, -5.0, 5.0, 35.0]))
def test_next_boundary_is_the_next_edge(restrictions: list[Restriction], now: float) -> None:
    """next_boundary is the minimum window edge strictly after now."""
    edges = [t for r in restrictions for t in (r.starts_at, r.ends_at) if t is not None and t > now]
    assert RestrictionSet(restrictions).next_boundary(now) == (min(edges) if edges else None)
