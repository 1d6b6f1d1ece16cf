"""Tests for proxy.policy.restrictions: construction, validation and the per-restriction rules."""

from __future__ import annotations

import dataclasses
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from proxy.policy.regions import UNKNOWN, Location
from proxy.policy.restrictions import (
    Enforcement,
    InvalidRestriction,
    MatchReason,
    Mode,
    Restriction,
    Treatment,
    address_exempt,
    glob_prefix,
    is_glob,
    meeting_matches,
)


def make(**overrides: Any) -> Restriction:
    fields: dict[str, Any] = {
        "id": "r1",
        "mode": Mode.BLOCK,
        "regions": frozenset({"CN"}),
        "meetings": ("m1",),
        "legal_basis": "Export Administration Regulations 15 CFR 746",
        "authority": "US Department of Commerce",
    }
    fields.update(overrides)
    return Restriction(**fields)


class TestEnums:
    def test_values(self) -> None:
        """The enums have the documented string values."""
        assert [m.value for m in Mode] == ["block", "allow"]
        assert [e.value for e in Enforcement] == ["enforce", "dry-run"]
        assert [t.value for t in Treatment] == ["allow", "deny"]

    def test_field_order(self) -> None:
        """The fields are in the documented order."""
        assert [f.name for f in dataclasses.fields(Restriction)] == [
            "id", "mode", "regions", "meetings", "legal_basis", "authority", "starts_at",
            "ends_at", "unknown", "anonymous", "exempt", "enforcement", "notice", "notice_url",
        ]  # fmt: skip


class TestConstruction:
    def test_defaults(self) -> None:
        """Optional fields default to open windows, ALLOW treatments, enforcement, no notice."""
        r = make()
        assert (r.starts_at, r.ends_at) == (None, None)
        assert r.unknown is Treatment.ALLOW and r.anonymous is Treatment.ALLOW
        assert r.exempt == () and r.enforcement is Enforcement.ENFORCE and r.enforced
        assert r.notice == "" and r.notice_url is None

    def test_regions_are_canonicalised(self) -> None:
        """Region codes are stripped and upper-cased."""
        assert make(regions={" cn ", "us-ca", "US-CA"}).regions == frozenset({"CN", "US-CA"})

    def test_strings_are_coerced_to_enums(self) -> None:
        """Enum fields accept their string values."""
        r = make(mode="allow", unknown="deny", anonymous="deny", enforcement="dry-run")
        assert r.mode is Mode.ALLOW and r.unknown is Treatment.DENY
        assert r.anonymous is Treatment.DENY and r.enforcement is Enforcement.DRY_RUN
        assert not r.enforced

    def test_sequences_are_coerced(self) -> None:
        """Meetings and exempt accept lists; exempt accepts network strings."""
        r = make(meetings=["a", "b"], exempt=["10.0.0.0/8", ip_network("2001:db8::/32")])
        assert r.meetings == ("a", "b")
        assert r.exempt == (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))

    def test_times_become_floats(self) -> None:
        """Integer times are stored as floats."""
        r = make(starts_at=10, ends_at=20)
        assert r.starts_at == 10.0 and isinstance(r.starts_at, float)

    def test_text_is_stripped(self) -> None:
        """legal_basis and authority are stored stripped."""
        r = make(legal_basis="  EAR  ", authority="\tBIS\n")
        assert (r.legal_basis, r.authority) == ("EAR", "BIS")

    def test_is_frozen_and_hashable(self) -> None:
        """A restriction cannot be changed, and can be a set member."""
        r = make()
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.id = "other"  # type: ignore[misc]
        assert {r, make()} == {r}

    def test_block_mode_without_regions_is_valid_when_denying_unknown_or_anonymous(self) -> None:
        """A block restriction may name no region when it denies unknown or anonymous clients."""
        assert make(regions=frozenset(), unknown=Treatment.DENY).regions == frozenset()
        assert make(regions=frozenset(), anonymous=Treatment.DENY).regions == frozenset()

    @pytest.mark.parametrize(
        "url", ["https://example.org/why", "http://example.org", "HTTPS://x.y:8443/a?b#c"]
    )
    def test_http_urls_are_accepted(self, url: str) -> None:
        """notice_url accepts http and https URLs."""
        assert make(notice_url=url).notice_url == url

    @pytest.mark.parametrize("rid", ["a", "A-1", "eu.sanctions:2024_03", "x" * 128, "9"])
    def test_valid_ids(self, rid: str) -> None:
        """Ids of 1 to 128 allowed characters starting alphanumeric are accepted."""
        assert make(id=rid).id == rid


class TestValidation:
    """Every validation error is an InvalidRestriction (a ValueError) naming field and value."""

    @pytest.mark.parametrize(
        ("overrides", "field", "value"),
        [
            ({"id": ""}, "id", ""),
            ({"id": "-lead"}, "id", "-lead"),
            ({"id": "has space"}, "id", "has space"),
            ({"id": "x" * 129}, "id", "x" * 129),
            ({"id": "r1\n"}, "id", "r1\n"),
            ({"id": "é"}, "id", "é"),
            ({"mode": "deny"}, "mode", "deny"),
            ({"enforcement": "dryrun"}, "enforcement", "dryrun"),
            ({"unknown": "block"}, "unknown", "block"),
            ({"anonymous": True}, "anonymous", True),
            ({"regions": {"CN", "XX"}}, "regions", "XX"),
            ({"regions": "CN"}, "regions", "CN"),
            ({"regions": frozenset()}, "regions", []),
            ({"mode": Mode.ALLOW, "regions": frozenset(), "unknown": "deny"}, "regions", []),
            ({"meetings": ()}, "meetings", []),
            ({"meetings": ("m1", "")}, "meetings", ""),
            ({"meetings": ("  ",)}, "meetings", "  "),
            ({"meetings": "m1"}, "meetings", "m1"),
            ({"meetings": (1,)}, "meetings", 1),
            ({"legal_basis": ""}, "legal_basis", ""),
            ({"legal_basis": "   "}, "legal_basis", "   "),
            ({"authority": ""}, "authority", ""),
            ({"authority": None}, "authority", None),
            ({"starts_at": 20.0, "ends_at": 10.0}, "ends_at", 10.0),
            ({"starts_at": 10.0, "ends_at": 10.0}, "ends_at", 10.0),
            ({"starts_at": float("nan")}, "starts_at", float("nan")),
            ({"ends_at": float("inf")}, "ends_at", float("inf")),
            ({"starts_at": "2024-01-01"}, "starts_at", "2024-01-01"),
            ({"ends_at": True}, "ends_at", True),
            ({"exempt": ("10.0.0.1/8",)}, "exempt", "10.0.0.1/8"),
            ({"exempt": ("not-a-net",)}, "exempt", "not-a-net"),
            ({"exempt": "10.0.0.0/8"}, "exempt", "10.0.0.0/8"),
            ({"notice": None}, "notice", None),
            ({"notice_url": "ftp://example.org/x"}, "notice_url", "ftp://example.org/x"),
            ({"notice_url": "https://"}, "notice_url", "https://"),
            ({"notice_url": "example.org/x"}, "notice_url", "example.org/x"),
            ({"notice_url": "https://exa mple.org"}, "notice_url", "https://exa mple.org"),
            (
                {"notice_url": "https://example.org:99999/"},
                "notice_url",
                "https://example.org:99999/",
            ),
        ],
    )
    def test_invalid_field(self, overrides: dict[str, Any], field: str, value: object) -> None:
        """An invalid value raises InvalidRestriction naming the field and the value."""
        with pytest.raises(InvalidRestriction) as info:
            make(**overrides)
        error = info.value
        assert isinstance(error, ValueError)
        assert error.field == field
        assert f"{field}: {value!r}" in str(error)
        if value == value:  # NaN is not equal to itself
            assert error.value == value

    def test_error_names_the_restriction(self) -> None:
        """Once the id is valid, messages start with the restriction id."""
        with pytest.raises(InvalidRestriction, match=r"^restriction 'sanctions-1': regions: 'XX'"):
            make(id="sanctions-1", regions={"XX"})

    def test_region_error_keeps_the_suggestion(self) -> None:
        """An invalid region's message keeps validate_region's suggestion."""
        with pytest.raises(InvalidRestriction, match=r"regions: 'UK' is not an ISO .*'GB'"):
            make(regions={"UK"})

    def test_enum_error_lists_the_choices(self) -> None:
        """An invalid enum value's message lists the accepted values."""
        with pytest.raises(InvalidRestriction, match="'block', 'allow'"):
            make(mode="blocked")


class TestWindow:
    def test_open_window_is_always_in_force(self) -> None:
        """Without bounds a restriction is always in force."""
        r = make()
        assert r.in_force(-1e12) and r.in_force(0.0) and r.in_force(1e12)

    def test_in_force_at_starts_at(self) -> None:
        """A restriction is in force at exactly starts_at, not just before."""
        r = make(starts_at=100.0, ends_at=200.0)
        assert r.in_force(100.0)
        assert not r.in_force(99.999)

    def test_not_in_force_at_ends_at(self) -> None:
        """A restriction is not in force at exactly ends_at, but is just before."""
        r = make(starts_at=100.0, ends_at=200.0)
        assert not r.in_force(200.0)
        assert r.in_force(199.999)

    def test_half_open_windows(self) -> None:
        """A missing bound is open on that side."""
        assert make(starts_at=100.0).in_force(1e12)
        assert not make(starts_at=100.0).in_force(0.0)
        assert make(ends_at=100.0).in_force(-1e12)
        assert not make(ends_at=100.0).in_force(100.0)


class TestMeetings:
    @pytest.mark.parametrize(
        ("pattern", "meeting", "expected"),
        [
            ("m1", "m1", True),
            ("m1", "m10", False),
            ("m1", "M1", False),
            ("memorial-*", "memorial-2024", True),
            ("memorial-*", "memorial-", True),
            ("memorial-*", "Memorial-2024", False),
            ("memorial-*", "a-memorial-2024", False),
            ("room-?", "room-1", True),
            ("room-?", "room-12", False),
            ("room-?", "room-", False),
            ("room-[12]", "room-2", True),
            ("room-[12]", "room-3", False),
            ("*", "anything at all", True),
            ("*", "", True),
            ("*-final", "x-final", True),
            ("room[1]", "room1", True),
            ("room[1]", "room[1]", False),
        ],
    )
    def test_meeting_matches(self, pattern: str, meeting: str, expected: bool) -> None:
        """Patterns use case-sensitive fnmatch syntax; an id without wildcards is exact."""
        assert meeting_matches(pattern, meeting) is expected

    def test_names_meeting_uses_every_pattern(self) -> None:
        """A restriction names a meeting when any of its patterns matches."""
        r = make(meetings=("m1", "memorial-*"))
        assert r.names_meeting("m1") and r.names_meeting("memorial-x")
        assert not r.names_meeting("m2")

    @pytest.mark.parametrize(
        ("pattern", "glob", "prefix"),
        [
            ("m1", False, "m1"),
            ("memorial-*", True, "memorial-"),
            ("room-?", True, "room-"),
            ("a[bc]d*", True, "a"),
            ("*", True, ""),
            ("*-x", True, ""),
        ],
    )
    def test_glob_prefix(self, pattern: str, glob: bool, prefix: str) -> None:
        """The literal prefix is the text before the first wildcard."""
        assert is_glob(pattern) is glob
        assert glob_prefix(pattern) == prefix


class TestExempt:
    NETS = (ip_network("192.0.2.0/24"), ip_network("2001:db8::/32"))

    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("192.0.2.7", True),
            ("192.0.3.7", False),
            ("2001:db8::1", True),
            ("2001:db9::1", False),
            ("::ffff:192.0.2.7", True),
            ("::ffff:198.51.100.1", False),
        ],
    )
    def test_address_in_networks(self, address: str, expected: bool) -> None:
        """IPv4 and IPv6 exempt networks; an IPv4-mapped IPv6 address counts as its IPv4."""
        assert address_exempt(ip_address(address), self.NETS) is expected

    def test_no_address_is_never_exempt(self) -> None:
        """An absent address is exempt nowhere."""
        assert not address_exempt(None, self.NETS)
        assert not make(exempt=self.NETS).exempts(None)

    def test_no_networks_exempt_nobody(self) -> None:
        """An empty exempt list exempts nobody."""
        assert not make().exempts(ip_address("192.0.2.7"))

    def test_restriction_exempts(self) -> None:
        """Restriction.exempts uses its exempt networks."""
        r = make(exempt=self.NETS)
        assert r.exempts(ip_address("2001:db8::5"))
        assert not r.exempts(ip_address("203.0.113.1"))


class TestCovers:
    def test_covers_uses_the_region_rule(self) -> None:
        """Restriction.covers: country covers subdivisions; unknown is never covered."""
        r = make(regions={"US", "DE-BY"})
        assert r.covers(Location("US", "US-CA"))
        assert r.covers(Location("DE", "DE-BY"))
        assert not r.covers(Location("DE", "DE-BE"))
        assert not r.covers(UNKNOWN)


class TestBars:
    """Restriction.bars: the rules for one client, ignoring meeting and time."""

    def test_block_mode(self) -> None:
        """Block mode bars covered known locations with REGION, nobody else."""
        r = make(regions={"US"})
        assert r.bars(Location("US", "US-CA")) is MatchReason.REGION
        assert r.bars(Location("DE")) is None
        assert r.bars(UNKNOWN) is None

    def test_allow_mode(self) -> None:
        """Allow mode bars known locations outside its regions with OUTSIDE_ALLOWED."""
        r = make(mode=Mode.ALLOW, regions={"US"})
        assert r.bars(Location("DE")) is MatchReason.OUTSIDE_ALLOWED
        assert r.bars(Location("US", "US-CA")) is None

    def test_unknown_allowed_even_in_allow_mode(self) -> None:
        """An unknown location is not barred when unknown is ALLOW, in allow mode too."""
        assert make(mode=Mode.ALLOW, regions={"US"}).bars(UNKNOWN) is None

    def test_unknown_denied(self) -> None:
        """unknown=DENY bars an unknown location with UNKNOWN."""
        assert make(unknown=Treatment.DENY).bars(UNKNOWN) is MatchReason.UNKNOWN

    def test_anonymous_denied(self) -> None:
        """anonymous=DENY bars flagged locations (ANONYMOUS) unless the region rule bars first."""
        r = make(regions={"CN"}, anonymous=Treatment.DENY)
        assert r.bars(Location("DE", anonymous=True)) is MatchReason.ANONYMOUS
        assert r.bars(Location(None, anonymous=True)) is MatchReason.ANONYMOUS
        assert r.bars(Location("CN", anonymous=True)) is MatchReason.REGION
        assert r.bars(Location("DE")) is None

    def test_exempt_address(self) -> None:
        """An exempt address is never barred; no address is never exempt."""
        r = make(exempt=("192.0.2.0/24",), unknown=Treatment.DENY)
        assert r.bars(Location("CN"), ip_address("192.0.2.9")) is None
        assert r.bars(UNKNOWN, ip_address("192.0.2.9")) is None
        assert r.bars(Location("CN"), ip_address("198.51.100.1")) is MatchReason.REGION
        assert r.bars(Location("CN")) is MatchReason.REGION
