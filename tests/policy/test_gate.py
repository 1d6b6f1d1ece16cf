"""Tests for proxy.policy.gate: RestrictionSet decisions, schedule, summary and re-check pairs."""

from __future__ import annotations

import math
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import pytest

from proxy.policy.decision import ADMIT, MatchReason
from proxy.policy.gate import (
    ANONYMOUS_REGION,
    OUTSIDE_ALLOWED_REGION,
    UNKNOWN_REGION,
    BarredPair,
    RestrictionSet,
)
from proxy.policy.regions import UNKNOWN, Location
from proxy.policy.restrictions import Enforcement, Mode, Restriction, Treatment

NOW = 1_700_000_000.0
V4 = ip_address("198.51.100.20")
V6 = ip_address("2001:db8:5::20")
CA = Location("US", "US-CA")
NY = Location("US", "US-NY")
US = Location("US")
BEIJING = Location("CN", "CN-BJ")
DE = Location("DE")
ANON_DE = Location("DE", anonymous=True)
ANON_UNKNOWN = Location(None, anonymous=True)


def make(rid: str = "r1", **overrides: Any) -> Restriction:
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


def decide(
    restrictions: list[Restriction] | RestrictionSet,
    location: Location,
    meeting: str = "m1",
    address: IPv4Address | IPv6Address | None = V4,
    now: float = NOW,
) -> tuple[str | None, list[tuple[str, MatchReason]]]:
    """Decide and return (denied_by id, [(match id, reason)]) for compact assertions."""
    gate = (
        restrictions if isinstance(restrictions, RestrictionSet) else RestrictionSet(restrictions)
    )
    decision = gate.decide(meeting, location, address, now)
    assert decision.meeting == meeting and decision.location == location
    denied = None if decision.denied_by is None else decision.denied_by.id
    return denied, [(m.restriction.id, m.reason) for m in decision.matches]


class TestConstruction:
    def test_duplicate_ids_are_rejected(self) -> None:
        """Two restrictions with one id raise ValueError naming the id."""
        with pytest.raises(ValueError, match="duplicate id 'r1'"):
            RestrictionSet([make("r1"), make("r2"), make("r1", regions={"US"})])

    def test_non_restriction_is_rejected(self) -> None:
        """Only Restriction objects are accepted."""
        with pytest.raises(ValueError, match="not a Restriction"):
            RestrictionSet(["r1"])  # type: ignore[list-item]

    @pytest.mark.parametrize("version", [True, 1.5, None])
    def test_bad_version_is_rejected(self, version: object) -> None:
        """The version is an int or a str."""
        with pytest.raises(ValueError, match="version"):
            RestrictionSet([], version=version)  # type: ignore[arg-type]

    def test_container_api(self) -> None:
        """Restrictions are sorted by id; get, len, iter, in and version work."""
        b, a, c = make("b"), make("a"), make("c")
        gate = RestrictionSet(iter([b, a, c]), version="v2")
        assert gate.version == "v2"
        assert gate.restrictions == (a, b, c)
        assert list(gate) == [a, b, c]
        assert len(gate) == 3
        assert gate.get("b") is b and gate.get("zz") is None
        assert "c" in gate and "zz" not in gate

    def test_is_immutable(self) -> None:
        """Attributes cannot be set or deleted."""
        gate = RestrictionSet([make()])
        with pytest.raises(AttributeError):
            gate._version = 3
        with pytest.raises(AttributeError):
            del gate._restrictions

    def test_decision_carries_the_version(self) -> None:
        """Every decision records the set's version, denied or not."""
        gate = RestrictionSet([make()], version=42)
        assert gate.decide("m1", BEIJING, None, NOW).version == 42
        assert gate.decide("zz", DE, None, NOW).version == 42

    def test_empty_set_admits_everyone(self) -> None:
        """An empty set admits every location."""
        for location in (CA, UNKNOWN, ANON_UNKNOWN):
            assert decide([], location) == (None, [])


class TestRegions:
    def test_country_covers_subdivision(self) -> None:
        """Blocking a country bars its subdivisions and the country itself."""
        rs = [make(regions={"US"})]
        assert decide(rs, CA) == ("r1", [("r1", MatchReason.REGION)])
        assert decide(rs, US)[0] == "r1"
        assert decide(rs, DE) == (None, [])

    def test_subdivision_bars_only_itself(self) -> None:
        """Blocking US-CA bars US-CA only."""
        rs = [make(regions={"US-CA"})]
        assert decide(rs, CA)[0] == "r1"
        assert decide(rs, NY) == (None, [])
        assert decide(rs, US) == (None, [])

    @pytest.mark.parametrize("country", ["HK", "MO", "TW"])
    def test_china_does_not_bar_hong_kong_macao_taiwan(self, country: str) -> None:
        """Blocking CN does not bar HK, MO or TW."""
        rs = [make(regions={"CN"})]
        assert decide(rs, Location(country)) == (None, [])
        assert decide(rs, BEIJING)[0] == "r1"

    def test_country_and_subdivision_in_one_restriction_match_once(self) -> None:
        """A restriction naming US and US-CA yields one match for US-CA."""
        assert decide([make(regions={"US", "US-CA"})], CA) == ("r1", [("r1", MatchReason.REGION)])

    def test_allow_mode_bars_outside(self) -> None:
        """Allow mode bars known locations outside its regions, not inside."""
        rs = [make(mode=Mode.ALLOW, regions={"US", "DE-BY"})]
        assert decide(rs, CA) == (None, [])
        assert decide(rs, Location("DE", "DE-BY")) == (None, [])
        assert decide(rs, Location("DE", "DE-BE")) == ("r1", [("r1", MatchReason.OUTSIDE_ALLOWED)])
        assert decide(rs, DE)[0] == "r1"
        assert decide(rs, BEIJING)[0] == "r1"

    def test_allow_mode_subdivision(self) -> None:
        """Allowing only US-CA bars other states and the US without a subdivision."""
        rs = [make(mode=Mode.ALLOW, regions={"US-CA"})]
        assert decide(rs, CA) == (None, [])
        assert decide(rs, NY)[0] == "r1"
        assert decide(rs, US)[0] == "r1"

    def test_other_meetings_are_unaffected(self) -> None:
        """A restriction bars nobody in meetings it does not name."""
        rs = [make(regions={"CN"}), make("r2", mode=Mode.ALLOW, regions={"US"})]
        assert decide(rs, BEIJING, meeting="m2") == (None, [])


class TestUnknownAndAnonymous:
    def test_unknown_allowed_by_default_even_in_allow_mode(self) -> None:
        """An unknown location passes block and allow restrictions whose unknown is ALLOW."""
        rs = [make("a", regions={"CN"}), make("b", mode=Mode.ALLOW, regions={"US"})]
        assert decide(rs, UNKNOWN) == (None, [])

    @pytest.mark.parametrize("mode", [Mode.BLOCK, Mode.ALLOW])
    def test_unknown_denied(self, mode: Mode) -> None:
        """unknown=DENY bars an unknown location in either mode, with reason UNKNOWN."""
        rs = [make(mode=mode, regions={"US"}, unknown=Treatment.DENY)]
        assert decide(rs, UNKNOWN) == ("r1", [("r1", MatchReason.UNKNOWN)])

    def test_unknown_deny_does_not_bar_known_locations(self) -> None:
        """unknown=DENY alone bars nobody whose location is known."""
        rs = [make(regions=frozenset(), unknown=Treatment.DENY)]
        assert decide(rs, DE) == (None, [])
        assert decide(rs, UNKNOWN)[0] == "r1"

    def test_anonymous_allowed_by_default(self) -> None:
        """An anonymous-flagged location is judged by the region rule alone by default."""
        rs = [make(regions={"CN"})]
        assert decide(rs, ANON_DE) == (None, [])
        assert decide(rs, ANON_UNKNOWN) == (None, [])

    @pytest.mark.parametrize("location", [ANON_DE, ANON_UNKNOWN])
    def test_anonymous_denied(self, location: Location) -> None:
        """anonymous=DENY bars flagged locations, known or not, with reason ANONYMOUS."""
        rs = [make(regions={"CN"}, anonymous=Treatment.DENY)]
        assert decide(rs, location) == ("r1", [("r1", MatchReason.ANONYMOUS)])
        assert decide(rs, DE) == (None, [])

    def test_anonymous_applies_in_addition_to_allow_mode(self) -> None:
        """In allow mode, an allowed region flagged anonymous is barred when anonymous=DENY."""
        rs = [make(mode=Mode.ALLOW, regions={"DE"}, anonymous=Treatment.DENY)]
        assert decide(rs, DE) == (None, [])
        assert decide(rs, ANON_DE) == ("r1", [("r1", MatchReason.ANONYMOUS)])

    def test_region_reason_wins_over_anonymous(self) -> None:
        """A location barred by both rules of one restriction is reported once, as REGION."""
        rs = [make(regions={"DE"}, anonymous=Treatment.DENY)]
        assert decide(rs, ANON_DE) == ("r1", [("r1", MatchReason.REGION)])

    def test_unknown_reason_wins_over_anonymous(self) -> None:
        """An unknown, anonymous location barred by both rules is reported as UNKNOWN."""
        rs = [make(unknown=Treatment.DENY, anonymous=Treatment.DENY)]
        assert decide(rs, ANON_UNKNOWN) == ("r1", [("r1", MatchReason.UNKNOWN)])


class TestExempt:
    NETS = ("198.51.100.0/24", "2001:db8:5::/48")

    @pytest.mark.parametrize("address", [V4, V6, ip_address("::ffff:198.51.100.9")])
    def test_exempt_address_is_not_barred(self, address: IPv4Address | IPv6Address) -> None:
        """An address in an exempt IPv4 or IPv6 network is not barred by that restriction."""
        rs = [make(exempt=self.NETS)]
        assert decide(rs, BEIJING, address=address) == (None, [])

    @pytest.mark.parametrize(
        "address", [ip_address("203.0.113.1"), ip_address("2001:db8:6::1"), None]
    )
    def test_other_address_is_barred(self, address: IPv4Address | IPv6Address | None) -> None:
        """An address outside the exempt networks, or no address, is barred."""
        rs = [make(exempt=self.NETS)]
        assert decide(rs, BEIJING, address=address)[0] == "r1"

    def test_exempt_is_per_restriction(self) -> None:
        """Exemption from one restriction does not exempt from another."""
        rs = [make("a", exempt=self.NETS), make("b")]
        assert decide(rs, BEIJING, address=V4) == ("b", [("b", MatchReason.REGION)])

    def test_exempt_applies_to_unknown_and_anonymous(self) -> None:
        """Exempt networks also spare unknown and anonymous denials."""
        rs = [make(unknown=Treatment.DENY, anonymous=Treatment.DENY, exempt=self.NETS)]
        assert decide(rs, ANON_UNKNOWN, address=V6) == (None, [])
        assert decide(rs, ANON_UNKNOWN, address=None)[0] == "r1"


class TestWindows:
    def test_in_force_at_starts_at(self) -> None:
        """A restriction bars from starts_at exactly, not before."""
        rs = [make(starts_at=NOW, ends_at=NOW + 60)]
        assert decide(rs, BEIJING, now=NOW)[0] == "r1"
        assert decide(rs, BEIJING, now=NOW - 0.001) == (None, [])

    def test_not_in_force_at_ends_at(self) -> None:
        """A restriction stops barring at ends_at exactly."""
        rs = [make(starts_at=NOW, ends_at=NOW + 60)]
        assert decide(rs, BEIJING, now=NOW + 59.999)[0] == "r1"
        assert decide(rs, BEIJING, now=NOW + 60) == (None, [])

    def test_one_gate_serves_every_time(self) -> None:
        """One restriction set decides at every time: no decision freezes the time of the first."""
        gate = RestrictionSet([make(starts_at=NOW, ends_at=NOW + 60)])
        assert decide(gate, BEIJING, now=NOW - 1) == (None, [])
        assert decide(gate, BEIJING, now=NOW)[0] == "r1"
        assert decide(gate, BEIJING, now=NOW + 60) == (None, [])

    def test_verdicts_follow_the_time_back_and_forth(self) -> None:
        """Scheduled verdicts follow every time given, in any order, for shared entries."""
        a = make("a", meetings=("m1", "m2"), starts_at=NOW, ends_at=NOW + 10)
        b = make("b", meetings=("m1", "m2"), starts_at=NOW + 5,
                 enforcement=Enforcement.DRY_RUN)
        c = make("c", meetings=("m2",))  # no window: in an entry with the windowed ones
        gate = RestrictionSet([a, b, c])
        times = [NOW + 6, NOW - 1, NOW + 6, NOW + 11, NOW, NOW + 5, NOW + 9.999, NOW + 10,
                 NOW - 1e9, math.inf, -math.inf, math.nan, NOW + 11, math.nan, NOW + 7]
        for now in [*times, *reversed(times)]:
            for meeting, rs in (("m1", (a, b)), ("m2", (a, b, c))):
                expected = [r.id for r in rs if r.in_force(now)]
                got = gate.decide(meeting, BEIJING, V4, now)
                assert [m.restriction.id for m in got.matches] == expected, (meeting, now)
                enforced = [r for r in rs if r.in_force(now) and r is not b]
                assert got.denied_by is (enforced[0] if enforced else None), (meeting, now)

    def test_next_boundary(self) -> None:
        """next_boundary is the earliest window edge strictly after now."""
        gate = RestrictionSet(
            [
                make("a", starts_at=100.0, ends_at=200.0),
                make("b", starts_at=150.0),
                make("c", ends_at=200.0),
                make("d"),
            ]
        )
        assert gate.next_boundary(0.0) == 100.0
        assert gate.next_boundary(100.0) == 150.0
        assert gate.next_boundary(149.5) == 150.0
        assert gate.next_boundary(150.0) == 200.0
        assert gate.next_boundary(200.0) is None
        assert RestrictionSet([make()]).next_boundary(0.0) is None

    def test_summary(self) -> None:
        """in_force, scheduled, expired and dry_run list the right restrictions by id."""
        past = make("past", starts_at=10.0, ends_at=20.0)
        now = make("now", starts_at=10.0, ends_at=40.0)
        always = make("always", enforcement=Enforcement.DRY_RUN)
        later = make("later", starts_at=50.0)
        gate = RestrictionSet([later, past, now, always])
        assert gate.in_force(30.0) == (always, now)
        assert gate.scheduled(30.0) == (later,)
        assert gate.expired(30.0) == (past,)
        assert gate.expired(40.0) == (now, past)
        assert gate.dry_run() == (always,)


class TestDryRunAndOrdering:
    def test_dry_run_never_denies_but_is_reported(self) -> None:
        """A dry-run match admits and appears in dry_run_matches."""
        gate = RestrictionSet([make(enforcement=Enforcement.DRY_RUN)])
        decision = gate.decide("m1", BEIJING, V4, NOW)
        assert decision.allowed and decision.denied_by is None
        assert [m.restriction.id for m in decision.dry_run_matches] == ["r1"]

    def test_every_match_is_named_sorted_by_id(self) -> None:
        """All matches are listed sorted by id; the first enforced one denies."""
        rs = [
            make("z-block", regions={"CN"}),
            make("a-dry", regions={"CN-BJ"}, enforcement=Enforcement.DRY_RUN),
            make("m-allow", mode=Mode.ALLOW, regions={"US"}),
            make("b-other", regions={"US"}),
        ]
        assert decide(rs, BEIJING) == (
            "m-allow",
            [
                ("a-dry", MatchReason.REGION),
                ("m-allow", MatchReason.OUTSIDE_ALLOWED),
                ("z-block", MatchReason.REGION),
            ],
        )

    def test_order_of_input_does_not_matter(self) -> None:
        """The same restrictions in another order give the same decision."""
        rs = [make("b"), make("a", regions={"CN-BJ"}), make("c", enforcement="dry-run")]
        first = RestrictionSet(rs).decide("m1", BEIJING, V4, NOW)
        second = RestrictionSet(reversed(rs)).decide("m1", BEIJING, V4, NOW)
        assert first == second
        assert first.denied_by is not None and first.denied_by.id == "a"


class TestMeetingPatterns:
    def test_exact_meeting(self) -> None:
        """An exact id names only that meeting (case-sensitive)."""
        gate = RestrictionSet([make(meetings=("Room-1",))])
        assert decide(gate, BEIJING, meeting="Room-1")[0] == "r1"
        assert decide(gate, BEIJING, meeting="room-1") == (None, [])
        assert decide(gate, BEIJING, meeting="Room-10") == (None, [])

    def test_prefix_glob(self) -> None:
        """memorial-* names every meeting starting with memorial-."""
        gate = RestrictionSet([make(meetings=("memorial-*",))])
        for meeting in ("memorial-", "memorial-2024", "memorial-a-b"):
            assert decide(gate, BEIJING, meeting=meeting)[0] == "r1"
        for meeting in ("memorial", "Memorial-1", "x-memorial-1", ""):
            assert decide(gate, BEIJING, meeting=meeting) == (None, [])

    def test_single_character_glob(self) -> None:
        """room-? names room- followed by exactly one character."""
        gate = RestrictionSet([make(meetings=("room-?",))])
        assert decide(gate, BEIJING, meeting="room-7")[0] == "r1"
        assert decide(gate, BEIJING, meeting="room-") == (None, [])
        assert decide(gate, BEIJING, meeting="room-77") == (None, [])

    def test_star_names_every_meeting(self) -> None:
        """* names every meeting, including the empty id."""
        gate = RestrictionSet([make(meetings=("*",))])
        for meeting in ("m1", "anything", ""):
            assert decide(gate, BEIJING, meeting=meeting)[0] == "r1"

    def test_globs_with_different_prefix_lengths(self) -> None:
        """Globs of several prefix lengths, and globs starting with a wildcard, all apply."""
        gate = RestrictionSet(
            [
                make("a", meetings=("r*",)),
                make("b", meetings=("room-[0-9]*",)),
                make("c", meetings=("*-final",)),
                make("d", meetings=("roomy*",)),
            ]
        )
        assert [i for i, _ in decide(gate, BEIJING, meeting="room-1-final")[1]] == ["a", "b", "c"]
        assert [i for i, _ in decide(gate, BEIJING, meeting="roomy")[1]] == ["a", "d"]
        assert [i for i, _ in decide(gate, BEIJING, meeting="x-final")[1]] == ["c"]

    def test_prefix_and_full_globs_sharing_a_prefix(self) -> None:
        """A "prefix*" pattern and a full glob with the same literal prefix each apply alone."""
        gate = RestrictionSet(
            [make("a", meetings=("room-*",)), make("b", meetings=("room-*-final",))]
        )
        assert [i for i, _ in decide(gate, BEIJING, meeting="room-1-final")[1]] == ["a", "b"]
        assert [i for i, _ in decide(gate, BEIJING, meeting="room-1")[1]] == ["a"]
        assert decide(gate, BEIJING, meeting="roo") == (None, [])
        assert gate.scopes("room-") and not gate.scopes("roomy-final")
        only_full = RestrictionSet([make("b", meetings=("room-?",))])
        assert only_full.scopes("room-7") and not only_full.scopes("room-77")

    def test_a_restriction_gives_one_match_object_to_every_table(self) -> None:
        """Tables holding the same restriction share its Match (and equal tables are one)."""
        a, b = make("a", meetings=("m1", "m2", "m3", "x*")), make("b", meetings=("m2",))
        gate = RestrictionSet([a, b])
        seen = {id(gate.decide(m, BEIJING, V4, NOW).matches[0]) for m in ("m1", "m2", "m3", "x9")}
        assert len(seen) == 1
        assert [m.restriction.id for m in gate.decide("m2", BEIJING, V4, NOW).matches] == ["a", "b"]
        assert gate._exact["m1"] is gate._exact["m3"] is not gate._exact["m2"]

    def test_decisions_share_the_verdict_of_an_entry_that_always_applies(self) -> None:
        """With no window and no exempt networks, a table entry's verdict is built once."""
        gate = RestrictionSet([make("a", meetings=("m1", "m2")), make("b", meetings=("m1",),
                                                                   regions={"CN"})])
        first = gate.decide("m1", BEIJING, V4, NOW)
        assert gate.decide("m1", BEIJING, V6, NOW + 1).verdict is first.verdict
        assert [m.restriction.id for m in first.matches] == ["a", "b"]
        assert first.denied_by is not None and first.denied_by.id == "a"
        assert gate.decide("m2", CA, V4, NOW).verdict is ADMIT

    def test_an_entry_that_always_applies_combines_with_a_checked_one(self) -> None:
        """A shared verdict and a windowed match found together give both, sorted, in force."""
        windowed = make("a", meetings=("m*",), starts_at=NOW, ends_at=NOW + 10)
        gate = RestrictionSet([windowed, make("b", meetings=("m1",),
                                              enforcement=Enforcement.DRY_RUN)])
        both = gate.decide("m1", BEIJING, V4, NOW)
        assert [m.restriction.id for m in both.matches] == ["a", "b"]
        assert both.denied_by is windowed
        later = gate.decide("m1", BEIJING, V4, NOW + 10)
        assert [m.restriction.id for m in later.matches] == ["b"] and later.allowed

    def test_several_patterns_of_one_restriction_match_once(self) -> None:
        """A restriction naming a meeting by several patterns yields one match."""
        gate = RestrictionSet([make(meetings=("m1", "m*", "*", "m?"))])
        assert decide(gate, BEIJING, meeting="m1") == ("r1", [("r1", MatchReason.REGION)])

    def test_repeated_decisions_are_the_same(self) -> None:
        """Deciding the same meetings again gives the same answers."""
        rs = [make("a", meetings=("m1",)), make("b", meetings=("x*",), regions={"US"})]
        gate = RestrictionSet(rs)
        for _ in range(3):
            assert decide(gate, BEIJING, meeting="m1")[0] == "a"
            assert decide(gate, CA, meeting="x1")[0] == "b"
            assert decide(gate, CA, meeting="m1") == (None, [])
            assert decide(gate, BEIJING, meeting="other") == (None, [])

    def test_many_restrictions(self) -> None:
        """With 10,000 restrictions, each meeting sees exactly its own."""
        rs = [make(f"r{i:05}", meetings=(f"room-{i}",), regions={"CN"}) for i in range(10_000)]
        gate = RestrictionSet(rs)
        assert decide(gate, BEIJING, meeting="room-4321") == (
            "r04321",
            [("r04321", MatchReason.REGION)],
        )
        assert decide(gate, BEIJING, meeting="room-10000") == (None, [])
        assert decide(gate, DE, meeting="room-4321") == (None, [])


class TestBarredPair:
    def test_region_pair(self) -> None:
        """A region pair covers locations that region covers, in matching meetings."""
        pair = BarredPair("memorial-*", "US")
        assert pair.covers("memorial-1", CA, V4)
        assert pair.covers("memorial-1", US, None)
        assert not pair.covers("memorial-1", DE, V4)
        assert not pair.covers("other", CA, V4)
        assert not pair.covers("memorial-1", UNKNOWN, V4)

    def test_subdivision_pair(self) -> None:
        """A subdivision pair covers only that subdivision."""
        pair = BarredPair("m1", "US-CA")
        assert pair.covers("m1", CA, V4)
        assert not pair.covers("m1", NY, V4)
        assert not pair.covers("m1", US, V4)

    def test_outside_allowed_pair(self) -> None:
        """A '*' pair covers known locations outside its allowed regions."""
        pair = BarredPair("*", OUTSIDE_ALLOWED_REGION, allowed=frozenset({"US"}))
        assert pair.covers("any", DE, V4)
        assert not pair.covers("any", CA, V4)
        assert not pair.covers("any", UNKNOWN, V4)

    def test_unknown_and_anonymous_pairs(self) -> None:
        """'?unknown' covers unknown locations, '?anonymous' flagged ones."""
        assert BarredPair("m1", UNKNOWN_REGION).covers("m1", UNKNOWN, V4)
        assert not BarredPair("m1", UNKNOWN_REGION).covers("m1", DE, V4)
        assert BarredPair("m1", ANONYMOUS_REGION).covers("m1", ANON_DE, V4)
        assert not BarredPair("m1", ANONYMOUS_REGION).covers("m1", DE, V4)

    def test_exempt_pair(self) -> None:
        """A pair does not cover exempt addresses."""
        pair = BarredPair("m1", "CN", (ip_network("198.51.100.0/24"), ip_network("2001:db8::/32")))
        assert not pair.covers("m1", BEIJING, V4)
        assert not pair.covers("m1", BEIJING, V6)
        assert pair.covers("m1", BEIJING, ip_address("203.0.113.1"))
        assert pair.covers("m1", BEIJING, None)

    def test_exempt_is_canonical(self) -> None:
        """Exempt networks are stored sorted without duplicates, so equal sets give equal pairs."""
        a, b = ip_network("2001:db8::/32"), ip_network("10.0.0.0/8")
        assert BarredPair("m1", "CN", (a, b, a)) == BarredPair("m1", "CN", (b, a))
        assert BarredPair("m1", "CN", (a, b)).exempt == (b, a)

    @pytest.mark.parametrize(
        ("args", "field"),
        [
            (("", "CN"), "meeting"),
            (("m1", ""), "region"),
            (("m1", "CN", (), frozenset({"US"})), "allowed"),
        ],
    )
    def test_invalid_pair(self, args: tuple[Any, ...], field: str) -> None:
        """Invalid pairs raise ValueError naming the field."""
        with pytest.raises(ValueError, match=f"^{field}: "):
            BarredPair(*args)

    def test_str(self) -> None:
        """str() is readable for logs."""
        pair = BarredPair("m1", "*", (ip_network("10.0.0.0/8"),), frozenset({"US", "CA"}))
        assert str(pair) == "m1 x outside CA,US except 10.0.0.0/8"


class TestBarredPairs:
    def test_pairs_of_each_rule(self) -> None:
        """Each meeting pattern gets a pair per region rule of each enforced restriction."""
        net = ip_network("10.0.0.0/8")
        gate = RestrictionSet(
            [
                make("a", meetings=("m1", "x*"), regions={"CN", "US-CA"}, exempt=(net,)),
                make("b", mode=Mode.ALLOW, regions={"US"}, unknown="deny", anonymous="deny"),
                make("c", regions={"DE"}, enforcement=Enforcement.DRY_RUN),
                make("d", regions={"FR"}, starts_at=NOW + 10),
            ]
        )
        assert gate.barred_pairs(NOW) == {
            BarredPair("m1", "CN", (net,)),
            BarredPair("m1", "US-CA", (net,)),
            BarredPair("x*", "CN", (net,)),
            BarredPair("x*", "US-CA", (net,)),
            BarredPair("m1", OUTSIDE_ALLOWED_REGION, (), frozenset({"US"})),
            BarredPair("m1", UNKNOWN_REGION),
            BarredPair("m1", ANONYMOUS_REGION),
        }
        assert gate.would_bar_pairs(NOW) == {BarredPair("m1", "DE")}
        assert BarredPair("m1", "FR") in gate.barred_pairs(NOW + 10)

    def test_newly_barred_without_older_is_everything(self) -> None:
        """With no older set, every current pair is new."""
        gate = RestrictionSet([make(regions={"CN", "RU"})])
        assert gate.newly_barred(None, NOW) == gate.barred_pairs(NOW)

    def test_new_restriction(self) -> None:
        """A new restriction's pairs are newly barred."""
        old = RestrictionSet([make("a")])
        new = RestrictionSet([make("a"), make("b", meetings=("m2",), regions={"RU"})])
        assert new.newly_barred(old, NOW) == {BarredPair("m2", "RU")}

    def test_widened_region_list(self) -> None:
        """Only the added region is newly barred."""
        old = RestrictionSet([make(regions={"CN"})])
        new = RestrictionSet([make(regions={"CN", "RU", "US-CA"})])
        assert new.newly_barred(old, NOW) == {BarredPair("m1", "RU"), BarredPair("m1", "US-CA")}

    def test_window_start(self) -> None:
        """A window opening between two times makes its pairs new for the same set."""
        gate = RestrictionSet([make(starts_at=NOW), make("b", regions={"RU"})])
        assert gate.newly_barred(gate, NOW, older_now=NOW - 1) == {BarredPair("m1", "CN")}
        assert gate.newly_barred(gate, NOW + 1, older_now=NOW) == frozenset()

    def test_window_end_bars_nobody_new(self) -> None:
        """A window closing bars nobody new."""
        gate = RestrictionSet([make(ends_at=NOW)])
        assert gate.newly_barred(gate, NOW, older_now=NOW - 1) == frozenset()

    def test_shrunk_exempt_list(self) -> None:
        """Removing an exempt network makes the pair new, and it covers the formerly exempt."""
        a, b = ip_network("198.51.100.0/24"), ip_network("203.0.113.0/24")
        old = RestrictionSet([make(exempt=(a, b))])
        new = RestrictionSet([make(exempt=(b,))])
        pairs = new.newly_barred(old, NOW)
        assert pairs == {BarredPair("m1", "CN", (b,))}
        assert any(p.covers("m1", BEIJING, V4) for p in pairs)

    def test_widened_exempt_list_bars_nobody_new(self) -> None:
        """Adding an exempt network bars nobody new."""
        a, b = ip_network("198.51.100.0/24"), ip_network("203.0.113.0/24")
        old = RestrictionSet([make(exempt=(a,))])
        new = RestrictionSet([make(exempt=(b, a))])
        assert new.newly_barred(old, NOW) == frozenset()

    def test_shrunk_allowed_list(self) -> None:
        """In allow mode, removing an allowed region bars its locations anew."""
        old = RestrictionSet([make(mode=Mode.ALLOW, regions={"US", "DE"})])
        new = RestrictionSet([make(mode=Mode.ALLOW, regions={"US"})])
        pairs = new.newly_barred(old, NOW)
        assert any(p.covers("m1", DE, V4) for p in pairs)
        assert not any(p.covers("m1", CA, V4) for p in pairs)

    def test_widened_allowed_list_bars_nobody_new(self) -> None:
        """In allow mode, adding an allowed region bars nobody new."""
        old = RestrictionSet([make(mode=Mode.ALLOW, regions={"US"})])
        new = RestrictionSet([make(mode=Mode.ALLOW, regions={"US", "DE"})])
        assert new.newly_barred(old, NOW) == frozenset()

    def test_narrower_pair_under_a_broader_one_is_not_new(self) -> None:
        """A subdivision barred with its country in every meeting is not new; another one is."""
        old = RestrictionSet([make("a", meetings=("*",), regions={"US"})])
        new = RestrictionSet(
            [
                make("a", meetings=("*",), regions={"US"}),
                make("b", regions={"US-CA"}),
                make("c", regions={"DE-BY"}),
            ]
        )
        assert new.newly_barred(old, NOW) == {BarredPair("m1", "DE-BY")}

    def test_unchanged_set(self) -> None:
        """An unchanged set bars nobody new."""
        rs = [make("a"), make("b", mode=Mode.ALLOW, regions={"US"}, anonymous="deny")]
        assert (
            RestrictionSet(rs).newly_barred(RestrictionSet(list(reversed(rs))), NOW) == frozenset()
        )

    def test_removed_restriction(self) -> None:
        """Removing a restriction bars nobody new."""
        old = RestrictionSet([make("a"), make("b", regions={"RU"})])
        new = RestrictionSet([make("a")])
        assert new.newly_barred(old, NOW) == frozenset()

    def test_dry_run_to_enforce(self) -> None:
        """Enforcing a dry-run restriction makes its pairs newly barred."""
        old = RestrictionSet([make(enforcement=Enforcement.DRY_RUN)])
        new = RestrictionSet([make()])
        assert new.newly_barred(old, NOW) == {BarredPair("m1", "CN")}
        assert old.newly_would_bar(None, NOW) == {BarredPair("m1", "CN")}
        assert new.newly_would_bar(old, NOW) == frozenset()

    def test_enforce_to_dry_run(self) -> None:
        """Switching to dry run bars nobody new but would-bars are reported."""
        old = RestrictionSet([make()])
        new = RestrictionSet([make(enforcement=Enforcement.DRY_RUN)])
        assert new.newly_barred(old, NOW) == frozenset()
        assert new.newly_would_bar(old, NOW) == {BarredPair("m1", "CN")}


def test_long_meeting_ids_are_decided() -> None:
    """A very long meeting id is decided by its patterns like any other."""
    gate = RestrictionSet([make(meetings=("long-*",))])
    meeting = "long-" + "x" * 1000
    for _ in range(2):
        assert decide(gate, BEIJING, meeting=meeting)[0] == "r1"
        assert decide(gate, DE, meeting=meeting) == (None, [])


def test_scopes_names_meetings_by_every_kind_of_pattern() -> None:
    """scopes() is true for meetings named by an id, a glob or '*', and false otherwise."""
    gate = RestrictionSet([make("a", meetings=("board",)), make("b", meetings=("memorial-*",))])
    assert gate.scopes("board") and gate.scopes("memorial-1")
    assert not gate.scopes("standup") and not gate.scopes("memorial")
    assert RestrictionSet([make(meetings=("*",))]).scopes("anything")
    assert not RestrictionSet([]).scopes("board")
