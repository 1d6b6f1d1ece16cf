"""Location restrictions: which meetings, which regions, when, and on what legal basis.

What bars whom, for a restriction in force (``starts_at <= now < ends_at``, absent bounds open),
in a meeting it names, for a client whose address is not in ``exempt``:

- block mode: a known location covered by one of ``regions``;
- allow mode: a known location covered by none of ``regions``;
- either mode: an unknown location when ``unknown`` is DENY, and an anonymous-flagged location
  when ``anonymous`` is DENY (in addition to the region rule);
- an unknown location is never barred when ``unknown`` is ALLOW, even in allow mode.

A dry-run restriction is evaluated and reported the same way but never denies.

Meetings are named by fnmatch patterns (``*``, ``?``, ``[...]``), matched case-sensitively; a
pattern without wildcards is an exact meeting id and ``*`` alone is every meeting.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import TypeAlias, TypeVar
from urllib.parse import urlsplit

from proxy.policy.regions import Location, covered_by, validate_region

__all__ = [
    "Address",
    "Enforcement",
    "InvalidRestriction",
    "MatchReason",
    "Mode",
    "Network",
    "Restriction",
    "Treatment",
    "address_exempt",
    "glob_prefix",
    "is_glob",
    "meeting_matches",
]

Address: TypeAlias = IPv4Address | IPv6Address
Network: TypeAlias = IPv4Network | IPv6Network
_E = TypeVar("_E", bound=enum.StrEnum)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_WILDCARDS = frozenset("*?[")


class Mode(enum.StrEnum):
    """Whether ``regions`` lists who is barred or who is admitted."""

    BLOCK = "block"
    ALLOW = "allow"


class Enforcement(enum.StrEnum):
    """Whether a restriction denies, or only reports what it would deny."""

    ENFORCE = "enforce"
    DRY_RUN = "dry-run"


class Treatment(enum.StrEnum):
    """What happens to a client whose location is unknown or anonymous."""

    ALLOW = "allow"
    DENY = "deny"


class MatchReason(enum.StrEnum):
    """Why a restriction bars a location (also exported by ``proxy.policy.decision``)."""

    REGION = "region"
    """Block mode, and one of its regions covers the location."""
    OUTSIDE_ALLOWED = "outside-allowed"
    """Allow mode, and none of its regions covers the (known) location."""
    UNKNOWN = "unknown"
    """The location is unknown and the restriction denies unknown locations."""
    ANONYMOUS = "anonymous"
    """The address is flagged anonymous and the restriction denies anonymous clients."""


class InvalidRestriction(ValueError):
    """A restriction field has a bad value.

    Attributes:
        field: the field name, such as ``"regions"``.
        value: the offending value (the whole field or the bad element).
        problem: what is wrong and what was expected.
    """

    def __init__(self, restriction_id: object, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        who = f"restriction {restriction_id!r}: " if isinstance(restriction_id, str) else ""
        super().__init__(f"{who}{field}: {value!r} {problem}")


def is_glob(pattern: str) -> bool:
    """Tell whether a meeting pattern has fnmatch wildcards (otherwise it is an exact id)."""
    return not _WILDCARDS.isdisjoint(pattern)


def glob_prefix(pattern: str) -> str:
    """The literal text before the first wildcard of a meeting pattern (all of it if none)."""
    for index, char in enumerate(pattern):
        if char in _WILDCARDS:
            return pattern[:index]
    return pattern


def meeting_matches(pattern: str, meeting: str) -> bool:
    """Tell whether a meeting pattern names a meeting id.

    Args:
        pattern: an exact id, an fnmatch pattern or ``"*"``.
        meeting: a meeting id.

    Returns:
        True on a case-sensitive fnmatch match.
    """
    if pattern == "*":
        return True
    # A pattern with a wildcard is matched as one even when equal to the id: "room[1]" names
    # "room1", not "room[1]" (the gate's index does the same).
    return fnmatchcase(meeting, pattern) if is_glob(pattern) else pattern == meeting


def address_exempt(address: Address | None, networks: tuple[Network, ...]) -> bool:
    """Tell whether an address is in one of ``networks``.

    Args:
        address: the client address; None is never exempt.
        networks: exempt networks, IPv4 or IPv6.

    Returns:
        True when the address is in a network. An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``,
        RFC 4291 section 2.5.5.2, as a dual-stack socket reports IPv4 peers) is also checked as
        the IPv4 address it carries.
    """
    if address is None or not networks:
        return False
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    # A network of the other IP version never contains the address ("in" returns False).
    return any(address in net or (mapped is not None and mapped in net) for net in networks)


@dataclass(frozen=True, slots=True)
class Restriction:
    """One location restriction, valid from construction.

    Attributes:
        id: a unique id, ``[A-Za-z0-9][A-Za-z0-9._:-]{0,127}``; audit records cite it.
        mode: BLOCK bars ``regions``; ALLOW bars every known region outside them.
        regions: canonical ISO 3166-1 alpha-2 / ISO 3166-2 codes (given codes are normalised).
        meetings: meeting ids or fnmatch patterns; ``"*"`` is every meeting.
        legal_basis: the law, order or contract clause requiring it; audited with each decision.
        authority: who imposed it.
        starts_at: Unix time it comes into force; None for always.
        ends_at: Unix time it stops (exclusive); None for never.
        unknown: whether a client whose country is unknown is barred.
        anonymous: whether a client flagged as anonymous (VPN, proxy, Tor) is barred.
        exempt: client networks it never applies to.
        enforcement: ENFORCE denies; DRY_RUN only reports.
        notice: the text shown to a barred participant.
        notice_url: an http(s) URL with more information, shown with the notice.

    Raises:
        InvalidRestriction: (a ValueError) a field is invalid; the message names field and value.
    """

    id: str
    mode: Mode
    regions: frozenset[str]
    meetings: tuple[str, ...]
    legal_basis: str
    authority: str
    starts_at: float | None = None
    ends_at: float | None = None
    unknown: Treatment = Treatment.ALLOW
    anonymous: Treatment = Treatment.ALLOW
    exempt: tuple[Network, ...] = ()
    enforcement: Enforcement = Enforcement.ENFORCE
    notice: str = ""
    notice_url: str | None = None

    def __post_init__(self) -> None:
        rid = self.id
        if not isinstance(rid, str) or _ID.fullmatch(rid) is None:
            raise InvalidRestriction(
                None,
                "id",
                rid,
                "is not a valid id (1 to 128 of A-Z a-z 0-9 . _ : -, "
                "starting with a letter or digit)",
            )
        self._set("mode", _enum(rid, "mode", Mode, self.mode))
        self._set("enforcement", _enum(rid, "enforcement", Enforcement, self.enforcement))
        self._set("unknown", _enum(rid, "unknown", Treatment, self.unknown))
        self._set("anonymous", _enum(rid, "anonymous", Treatment, self.anonymous))
        self._set("regions", _regions(rid, self.regions))
        self._set("meetings", _meetings(rid, self.meetings))
        for name in ("legal_basis", "authority"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidRestriction(rid, name, value, "must be a non-empty string")
            self._set(name, value.strip())
        self._set("starts_at", _time(rid, "starts_at", self.starts_at))
        self._set("ends_at", _time(rid, "ends_at", self.ends_at))
        starts_at, ends_at = self.starts_at, self.ends_at
        if starts_at is not None and ends_at is not None and starts_at >= ends_at:
            raise InvalidRestriction(
                rid, "ends_at", ends_at, f"must be after starts_at ({starts_at!r})"
            )
        if not self.regions:
            if self.mode is Mode.ALLOW:
                raise InvalidRestriction(
                    rid, "regions", [], "must name at least one region in allow mode"
                )
            if self.unknown is Treatment.ALLOW and self.anonymous is Treatment.ALLOW:
                raise InvalidRestriction(
                    rid,
                    "regions",
                    [],
                    "must name at least one region in block mode unless unknown or anonymous is "
                    "'deny' (otherwise it bars nobody)",
                )
        self._set("exempt", _networks(rid, self.exempt))
        if not isinstance(self.notice, str):
            raise InvalidRestriction(rid, "notice", self.notice, "must be a string")
        if self.notice_url is not None:
            _check_url(rid, self.notice_url)

    def _set(self, name: str, value: object) -> None:
        # Normalising a field of a frozen dataclass during construction.
        object.__setattr__(self, name, value)

    @property
    def enforced(self) -> bool:
        """Whether it denies (as opposed to a dry run)."""
        return self.enforcement is Enforcement.ENFORCE

    def in_force(self, now: float) -> bool:
        """Tell whether ``starts_at <= now < ends_at`` (absent bounds are open).

        Args:
            now: Unix time in seconds.

        Returns:
            True while the restriction applies.
        """
        starts_at, ends_at = self.starts_at, self.ends_at
        return (starts_at is None or starts_at <= now) and (ends_at is None or now < ends_at)

    def names_meeting(self, meeting: str) -> bool:
        """Tell whether one of ``meetings`` names a meeting id."""
        return any(meeting_matches(pattern, meeting) for pattern in self.meetings)

    def exempts(self, address: Address | None) -> bool:
        """Tell whether a client address is in ``exempt`` (None is never exempt)."""
        return address_exempt(address, self.exempt)

    def covers(self, location: Location) -> bool:
        """Tell whether one of ``regions`` covers a location (never an unknown one)."""
        return covered_by(location, self.regions)

    def bars(self, location: Location, address: Address | None = None) -> MatchReason | None:
        """Apply the rules to one client, ignoring meeting and time (for checks and reports).

        The gate applies the same rules through its index; this is the plain reading.

        Args:
            location: the client's location.
            address: the client address, for ``exempt``; None is exempt nowhere.

        Returns:
            Why the restriction bars the client (the region rule first, then unknown, then
            anonymous), or None when it does not.
        """
        if self.exempts(address):
            return None
        if location.country is not None:
            covered = covered_by(location, self.regions)
            if self.mode is Mode.BLOCK and covered:
                return MatchReason.REGION
            if self.mode is Mode.ALLOW and not covered:
                return MatchReason.OUTSIDE_ALLOWED
        elif self.unknown is Treatment.DENY:
            return MatchReason.UNKNOWN
        if location.anonymous and self.anonymous is Treatment.DENY:
            return MatchReason.ANONYMOUS
        return None


def _enum(rid: str, field: str, kind: type[_E], value: object) -> _E:
    if isinstance(value, kind):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        raise InvalidRestriction(rid, field, value, f"must be one of {choices}") from None


def _regions(rid: str, value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidRestriction(rid, "regions", value, "must be a set of region codes")
    canonical = set()
    for code in value:
        try:
            canonical.add(validate_region(code))
        except ValueError as exc:
            raise InvalidRestriction(rid, "regions", code, _problem(exc, code)) from None
    return frozenset(canonical)


def _problem(exc: ValueError, code: object) -> str:
    # validate_region's message starts with the value; keep the rest as the problem.
    text = str(exc)
    prefix = repr(code)
    return text[len(prefix) :].lstrip() if text.startswith(prefix) else text


def _meetings(rid: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidRestriction(
            rid, "meetings", value, "must be a list of meeting ids or patterns"
        )
    meetings = tuple(value)
    if not meetings:
        raise InvalidRestriction(rid, "meetings", list(meetings), "must name at least one meeting")
    for meeting in meetings:
        if not isinstance(meeting, str) or not meeting.strip():
            raise InvalidRestriction(
                rid, "meetings", meeting, "must be a non-empty meeting id or pattern"
            )
    return meetings


def _time(rid: str, field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRestriction(rid, field, value, "must be a finite Unix time in seconds")
    return float(value)


def _networks(rid: str, value: object) -> tuple[Network, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidRestriction(rid, "exempt", value, "must be a list of IP networks")
    networks: list[Network] = []
    for item in value:
        if isinstance(item, IPv4Network | IPv6Network):
            networks.append(item)
            continue
        try:
            if not isinstance(item, str):
                raise TypeError
            networks.append(ip_network(item.strip()))
        except (TypeError, ValueError):
            raise InvalidRestriction(
                rid,
                "exempt",
                item,
                "is not an IP network such as '192.0.2.0/24' or '2001:db8::/32' (host bits zero)",
            ) from None
    return tuple(networks)


def _check_url(rid: str, url: object) -> None:
    if not isinstance(url, str) or any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidRestriction(rid, "notice_url", url, "must be an http(s) URL")
    try:
        parts = urlsplit(url)
        scheme, hostname = parts.scheme.lower(), parts.hostname
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        scheme, hostname = "", None
    if scheme not in ("http", "https") or not hostname:
        raise InvalidRestriction(rid, "notice_url", url, "must be an http(s) URL with a host")
