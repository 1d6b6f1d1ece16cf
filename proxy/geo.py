"""Client addresses behind trusted proxies, and their GeoIP locations.

Two halves, both run at join time and on every reconnect:

* :func:`client_address` (pure): which address is the participant's. A header naming the client
  is believed only when the socket peer is a trusted proxy; then the header's addresses are
  walked from the right, past further trusted proxies, to the first untrusted one (nginx's
  ``real_ip_recursive on``). A spoofed header from an untrusted peer must never move anyone.
* :class:`GeoResolver`: address to :class:`~proxy.policy.regions.Location` through config
  overrides, then a MaxMind DB (City or Country records, optionally an Anonymous-IP database),
  with a bounded cache. :meth:`GeoResolver.check_for_changes` reloads replaced files: the new
  file is opened and tried before it replaces the old one, which stays in service on failure.

Databases are memory-mapped: replace them by renaming a complete file over the old one (as
``geoipupdate`` and :mod:`proxy.geoip_build` do), never by rewriting the file in place, which
the mapping of the running reader would see half-written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_pton
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import maxminddb

from proxy.errors import AddressError, GeoIPError
from proxy.files import FileSignature, file_signature
from proxy.policy.regions import UNKNOWN, Location

__all__ = [
    "ClientAddress",
    "ForwardedHeader",
    "GeoIPSettings",
    "GeoResolver",
    "GeoResult",
    "ReloadResult",
    "Resolution",
    "TrustedNetworks",
    "client_address",
    "parse_address",
]

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

_T = TypeVar("_T")

# ::ffff:0:0/96 holds IPv4-mapped IPv6 addresses (RFC 4291 section 2.5.5.2): a dual-stack socket
# reports IPv4 peers this way, and they are IPv4 clients.
_MAPPED_HIGH = 0xFFFF
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
_V4_KEY = 1 << 128  # cache keys: IPv4 ints offset past every IPv6 int


# --- client address --------------------------------------------------------------------------


class ForwardedHeader(StrEnum):
    """The request header a trusted proxy uses to name the client."""

    NONE = "none"
    X_FORWARDED_FOR = "x-forwarded-for"
    FORWARDED = "forwarded"  # RFC 7239


_VIA = frozenset({"peer", ForwardedHeader.X_FORWARDED_FOR.value, ForwardedHeader.FORWARDED.value})


class _PrefixMap(Generic[_T]):
    """Networks to values, looked up by masked integers, most specific prefix first.

    One dict per prefix length in use, so a lookup costs one mask and one dict probe per
    distinct prefix length instead of one ``ipaddress`` containment test per network.
    """

    __slots__ = ("_v4", "_v4_octets", "_v6")

    def __init__(self, items: Iterable[tuple[Network, _T]]) -> None:
        by_length: tuple[dict[int, dict[int, _T]], dict[int, dict[int, _T]]] = ({}, {})
        octets: set[int] = set()
        for network, value in items:
            table = by_length[0] if isinstance(network, IPv4Network) else by_length[1]
            entries = table.setdefault(network.prefixlen, {})
            entries.setdefault(int(network.network_address), value)
            if isinstance(network, IPv4Network):
                first = int(network.network_address) >> 24
                octets.update(range(first, first + (1 << max(0, 8 - network.prefixlen))))
        self._v4 = self._tables(by_length[0], 32)
        self._v6 = self._tables(by_length[1], 128)
        # The first octets any IPv4 network covers: most addresses are ruled out by one test.
        self._v4_octets = frozenset(octets)

    @staticmethod
    def _tables(
        by_length: dict[int, dict[int, _T]], bits: int
    ) -> tuple[tuple[int, dict[int, _T]], ...]:
        return tuple(
            (((1 << length) - 1) << (bits - length), entries)
            for length, entries in sorted(by_length.items(), reverse=True)
        )

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def get(self, v4: bool, value: int) -> _T | None:
        """The value of the most specific network holding ``value`` (an address as int)."""
        if v4 and value >> 24 not in self._v4_octets:
            return None
        for mask, entries in self._v4 if v4 else self._v6:
            hit = entries.get(value & mask)
            if hit is not None:
                return hit
        return None


def _normal_network(network: Network) -> Network:
    """An IPv4-mapped IPv6 network as the IPv4 network it covers; others unchanged."""
    if (
        isinstance(network, IPv6Network)
        and network.prefixlen >= 96
        and int(network.network_address) >> 32 == _MAPPED_HIGH
    ):
        return IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


@dataclass(frozen=True, slots=True)
class TrustedNetworks:
    """The proxies whose client-address headers are believed.

    Attributes:
        networks: the trusted networks; IPv4-mapped IPv6 networks are stored as IPv4.

    Raises:
        ValueError: an item is not an IPv4Network or IPv6Network.
    """

    networks: tuple[Network, ...] = ()
    _table: _PrefixMap[bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks = tuple(self.networks)
        for network in networks:
            if not isinstance(network, IPv4Network | IPv6Network):
                raise ValueError(f"trusted network {network!r} is not an IPv4 or IPv6 network")
        networks = tuple(_normal_network(network) for network in networks)
        object.__setattr__(self, "networks", networks)
        object.__setattr__(self, "_table", _PrefixMap((network, True) for network in networks))

    @classmethod
    def parse(cls, texts: Iterable[str]) -> TrustedNetworks:
        """Build from CIDR texts such as ``"10.0.0.0/8"`` (a bare address is a /32 or /128).

        Args:
            texts: networks with host bits clear.

        Returns:
            The trusted set.

        Raises:
            AddressError: naming the first text that is not a network.
        """
        networks: list[Network] = []
        for text in texts:
            try:
                networks.append(ip_network(text.strip()))
            except ValueError as exc:
                raise AddressError(f"trusted network {text!r}: {exc}") from None
        return cls(tuple(networks))

    def __len__(self) -> int:
        """The number of trusted networks; an empty set is falsy."""
        return len(self.networks)

    def contains(self, address: Address) -> bool:
        """Whether ``address`` is in one of the trusted networks.

        Args:
            address: an address; an IPv4-mapped IPv6 address counts as its IPv4 address.

        Returns:
            True when trusted.
        """
        table = self._table
        if not table:
            return False
        value = int(address)
        if isinstance(address, IPv4Address):
            return table.get(True, value) is not None
        if value >> 32 == _MAPPED_HIGH:
            return table.get(True, value & 0xFFFFFFFF) is not None
        return table.get(False, value) is not None


class _ClientAddressFields(NamedTuple):
    address: Address
    via: str
    peer: str


class ClientAddress(_ClientAddressFields):
    """The participant's address and where it came from (immutable).

    Attributes:
        address: the client address, IPv4-mapped IPv6 normalised to IPv4, without zone id.
        via: ``"peer"`` when it is the socket peer, else the header name it was read from.
        peer: the socket peer address text, as given.

    Raises:
        ValueError: ``via`` is not "peer" or a header name, or ``address`` is not an address.

    A named tuple rather than a frozen dataclass: one is built on every join, and a frozen
    dataclass costs about five times as much to build. :func:`client_address`, whose values are
    valid by construction, builds it without the check.
    """

    __slots__ = ()

    def __new__(cls, address: Address, via: str, peer: str) -> ClientAddress:
        if via not in _VIA or not isinstance(address, IPv4Address | IPv6Address):
            raise ValueError(
                f"ClientAddress({address!r}, {via!r}): expected an address and one "
                f"of {sorted(_VIA)}"
            )
        return super().__new__(cls, address, via, peer)


def _port_ok(text: str) -> bool:
    # RFC 7239 section 6: node-port = port / obfport; obfport = "_" 1*(ALPHA / DIGIT / "." /
    # "_" / "-"). A port in X-Forwarded-For is not standard but some proxies write one.
    if text.isdigit():
        return len(text) <= 5 and int(text) <= 65535
    return len(text) > 1 and text[0] == "_" and text[1:].replace(".", "").replace(
        "-", ""
    ).replace("_", "").isalnum()


def _parse_ip(text: str, *, v6_only: bool = False) -> Address | None:
    # inet_pton is strict (no leading zeros, no short forms, no blanks) and several times
    # faster than ipaddress's parser; this runs for every join.
    host, zone_sep, zone = text.partition("%")
    if not v6_only and not zone_sep:
        try:
            return IPv4Address(inet_pton(AF_INET, host))
        except OSError:
            pass
    if zone_sep and not zone:
        return None
    try:
        packed = inet_pton(AF_INET6, host)
    except OSError:
        return None
    if packed[:12] == _MAPPED_PREFIX:
        return IPv4Address(packed[12:])
    return IPv6Address(packed)


def _parse_node(text: str) -> Address | None:
    """Parse ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]:80``, with zone ids.

    Returns:
        The address (IPv4-mapped normalised to IPv4, zone id dropped), or None when malformed.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        if rest and not (rest[0] == ":" and _port_ok(rest[1:])):
            return None
        return _parse_ip(text[1:end], v6_only=True)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _port_ok(port):
            return None
        address = _parse_ip(host)
        return address if isinstance(address, IPv4Address) else None
    return _parse_ip(text)


def parse_address(text: str) -> Address:
    """Parse an address as a socket or a proxy reports it.

    Args:
        text: ``1.2.3.4``, ``::1``, ``fe80::1%eth0``, ``::ffff:1.2.3.4``, or with a port
            (``1.2.3.4:80``, ``[::1]:80``).

    Returns:
        The address; IPv4-mapped IPv6 becomes IPv4, zone ids and ports are dropped.

    Raises:
        AddressError: the text is not an address.
    """
    # Socket peers are plain dotted quads almost always: try that first, it is one call.
    try:
        return IPv4Address(inet_pton(AF_INET, text))
    except (OSError, TypeError):
        pass
    address = _parse_node(text) if isinstance(text, str) else None
    if address is None:
        raise AddressError(f"{text!r} is not an IP address")
    return address


def _xff_entries(values: Sequence[str]) -> list[str | None]:
    # Several header lines are one comma-separated list (RFC 9110 section 5.3); empty list
    # elements are ignored (RFC 9110 section 5.6.1).
    return [entry for value in values for entry in value.split(",") if entry.strip()]


def _unquote(value: str) -> str | None:
    # RFC 9110 section 5.6.4: quoted-string with backslash quoted-pairs.
    if not value.startswith('"'):
        return value if value and '"' not in value else None
    if len(value) < 2 or not value.endswith('"'):
        return None
    out: list[str] = []
    escaped = False
    for char in value[1:-1]:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return None
        else:
            out.append(char)
    return None if escaped else "".join(out)


def _forwarded_entries(values: Sequence[str]) -> list[str | None]:
    """The ``for=`` value of each RFC 7239 element, None for an element without a usable one.

    Commas and semicolons inside quoted strings do not split; an element that repeats ``for``,
    has a pair without ``=``, or an unbalanced quote gives None (it stops the walk).
    """
    elements: list[list[str]] = [[]]
    current: list[str] = []
    quoted = escaped = False
    for char in ",".join(values):
        if quoted:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
            current.append(char)
        elif char in ",;":
            elements[-1].append("".join(current))
            current = []
            if char == ",":
                elements.append([])
        else:
            current.append(char)
    elements[-1].append("".join(current))

    entries: list[str | None] = []
    for index, pairs in enumerate(elements):
        pairs = [pair.strip() for pair in pairs if pair.strip()]
        if not pairs:
            continue  # an empty list element (RFC 9110 section 5.6.1)
        unbalanced = quoted and index == len(elements) - 1
        node: str | None = None
        bad = unbalanced
        seen_for = False
        for pair in pairs:
            name, equals, raw = pair.partition("=")
            if not equals or not name.strip():
                bad = True
                break
            if name.strip().lower() != "for":
                continue
            if seen_for:  # RFC 7239 section 4: a parameter occurs at most once per element
                bad = True
                break
            seen_for = True
            node = _unquote(raw.strip())
        entries.append(None if bad else node)
    return entries


def client_address(
    peer: str,
    forwarded: Sequence[str],
    trusted: TrustedNetworks,
    header: ForwardedHeader,
) -> ClientAddress:
    """Find the participant's address from the socket peer and a client-address header.

    Args:
        peer: the socket peer address text.
        forwarded: the raw values of ``header`` in the order they appeared.
        trusted: the proxies whose header is believed.
        header: which header names the client; NONE ignores headers.

    Returns:
        The peer itself when it is not trusted (headers are then ignored) or no header applies;
        otherwise the first untrusted address from the right of the header, the leftmost when
        all are trusted, or the last good address before a malformed, ``unknown`` or
        obfuscated entry (the trusted hop that wrote it).

    Raises:
        AddressError: ``peer`` is not an address.
    """
    client = parse_address(peer)
    if header is ForwardedHeader.NONE or not forwarded or not trusted.contains(client):
        return tuple.__new__(ClientAddress, (client, "peer", peer))
    if header is ForwardedHeader.FORWARDED:
        entries = _forwarded_entries(forwarded)
    else:
        entries = _xff_entries(forwarded)
    via = "peer"
    for entry in reversed(entries):
        # "unknown" and obfuscated "_..." identifiers (RFC 7239 section 6) do not parse.
        address = None if entry is None else _parse_node(entry)
        if address is None:
            break
        client, via = address, header.value
        if not trusted.contains(address):
            break
    return tuple.__new__(ClientAddress, (client, via, peer))


# --- GeoIP resolution -------------------------------------------------------------------------


class Resolution(StrEnum):
    """How a location was found. A cache hit returns the cached result, with its resolution."""

    OVERRIDE = "override"
    DATABASE = "database"
    NO_RECORD = "no-record"
    PRIVATE = "private"  # private, reserved, loopback or link-local: unknown, not looked up


@dataclass(frozen=True, slots=True)
class GeoResult:
    """The location of an address and how it was found.

    Attributes:
        location: the location; UNKNOWN (possibly anonymous) when not found.
        how: the resolution.
        network: the matched network (override or database prefix) when known.

    Raises:
        ValueError: a field has the wrong type.
    """

    location: Location
    how: Resolution
    network: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.location, Location):
            raise ValueError(f"location {self.location!r} is not a Location")
        if not isinstance(self.how, Resolution):
            raise ValueError(f"how {self.how!r} is not a Resolution")


@dataclass(frozen=True, slots=True)
class GeoIPSettings:
    """What :class:`GeoResolver` opens and how it answers.

    Attributes:
        database: a MaxMind DB with City or Country records.
        anonymous_database: an optional MaxMind Anonymous-IP database.
        overrides: (network, location) pairs answered ahead of the database; the most specific
            network wins. IPv4-mapped IPv6 networks are taken as IPv4.
        cache_size: results remembered, by address; 0 disables the cache.
        lookup_private: look private, reserved, loopback and link-local addresses up in the
            database instead of answering them unknown (the demo database maps loopback).

    Raises:
        ValueError: a field has the wrong type, ``cache_size`` is negative, or a network is
            overridden twice.
    """

    database: Path
    anonymous_database: Path | None = None
    overrides: tuple[tuple[Network, Location], ...] = ()
    cache_size: int = 65536
    lookup_private: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.database, Path):
            raise ValueError(f"database {self.database!r} is not a Path")
        if self.anonymous_database is not None and not isinstance(self.anonymous_database, Path):
            raise ValueError(f"anonymous_database {self.anonymous_database!r} is not a Path")
        if isinstance(self.cache_size, bool) or not isinstance(self.cache_size, int):
            raise ValueError(f"cache_size {self.cache_size!r} is not an integer")
        if self.cache_size < 0:
            raise ValueError(f"cache_size {self.cache_size} is negative; expected 0 or more")
        if not isinstance(self.lookup_private, bool):
            raise ValueError(f"lookup_private {self.lookup_private!r} is not a bool")
        overrides = tuple(self.overrides)
        seen: set[Network] = set()
        for item in overrides:
            if not (
                isinstance(item, tuple)
                and len(item) == 2
                and isinstance(item[0], IPv4Network | IPv6Network)
                and isinstance(item[1], Location)
            ):
                raise ValueError(f"override {item!r} is not a (network, Location) pair")
            network = _normal_network(item[0])
            if network in seen:
                raise ValueError(f"override network {item[0]} is given twice")
            seen.add(network)
        object.__setattr__(self, "overrides", overrides)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of reloading one changed database file.

    Attributes:
        path: the database file.
        ok: whether the new file is now in service.
        error: why not, when not ok.
        build_epoch: the new file's build time, when ok.

    Raises:
        ValueError: ``ok`` and ``error`` disagree.
    """

    path: Path
    ok: bool
    error: str | None = None
    build_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.ok != (self.error is None):
            raise ValueError("a ReloadResult has an error exactly when it is not ok")


# Addresses no GeoIP database can place (RFC 6890 special-purpose registries, RFC 6598 shared
# address space, RFC 4193 unique local, RFC 4291 link-local and multicast, RFC 9637
# documentation). Immutable: built once, only read.
_NOT_GLOBAL: _PrefixMap[bool] = _PrefixMap(
    (ip_network(text), True)
    for text in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/96",  # unspecified, loopback, deprecated IPv4-compatible (RFC 4291 2.5.5.1)
        "64:ff9b:1::/48",
        "100::/64",
        "2001:2::/48",
        "2001:db8::/32",
        "3fff::/20",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
# The first octets of its IPv4 ranges: a public IPv4 address is ruled out without a call.
_NOT_GLOBAL_V4_OCTETS = _NOT_GLOBAL._v4_octets
_NO_RECORD = Resolution.NO_RECORD

try:  # MaxMind's Rust reader: maxminddb's API, a lookup in half the C reader's time here
    import maxminddb_rust as _rust
except ImportError:  # pragma: no cover - a platform without its wheel: maxminddb serves
    _rust = None  # type: ignore[assignment]
try:  # the C reader (libmaxminddb), ~10x faster than the pure Python one
    from maxminddb import extension as _extension

    _HAS_EXTENSION = hasattr(_extension, "Reader")
except ImportError:  # pragma: no cover - depends on how maxminddb was installed
    _HAS_EXTENSION = False

#: The reader that serves lookups: maxminddb-rust when installed, else maxminddb's C reader, else
#: its pure Python one.
READER = ("maxminddb-rust" if _rust is not None
          else "libmaxminddb" if _HAS_EXTENSION else "pure Python")
_INVALID_DATABASE: tuple[type[Exception], ...] = (maxminddb.InvalidDatabaseError,) + (
    () if _rust is None else (_rust.InvalidDatabaseError,))


class _Reader(Protocol):
    """What the resolver uses of a MaxMind reader (maxminddb's and maxminddb-rust's alike)."""

    def get(self, ip_address: Address, /) -> Any: ...
    def get_with_prefix_len(self, ip_address: Address, /) -> tuple[Any, int]: ...
    def metadata(self) -> Any: ...
    def close(self) -> None: ...


# Bound on the results shared per database network (see GeoResolver._resolve).
_SHARED_RESULTS = 65536
_LOOKUP_ERRORS: tuple[type[Exception], ...] = (*_INVALID_DATABASE, ValueError, TypeError,
                                                  OSError)
_OPEN_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, *_INVALID_DATABASE)
# Flags of MaxMind's Anonymous-IP records; any one of them marks the address anonymous.
_ANONYMOUS_KEYS = (
    "is_anonymous",
    "is_anonymous_vpn",
    "is_hosting_provider",
    "is_public_proxy",
    "is_residential_proxy",
    "is_tor_exit_node",
)


@dataclass(frozen=True, slots=True)
class _Database:
    """One open database and what is known about its file; swapped as a whole on reload."""

    path: Path
    reader: _Reader
    signature: FileSignature
    build_epoch: int
    database_type: str
    ipv4_only: bool


def _open(path: Path) -> _Database:
    """Open a database and try one lookup, so a bad file fails here rather than in service.

    Raises:
        GeoIPError: naming the file and the reason.
    """
    try:
        # Stat first: if the file is replaced between the two calls, the next check sees a
        # newer signature and loads again, rather than missing the change.
        signature = file_signature(path)
        reader: _Reader
        if _rust is not None:
            reader = _rust.open_database(str(path), _rust.MODE_MMAP)
        else:
            reader = maxminddb.open_database(
                path, maxminddb.MODE_MMAP_EXT if _HAS_EXTENSION else maxminddb.MODE_AUTO)
    except _OPEN_ERRORS as exc:
        raise GeoIPError(f"{path}: cannot open GeoIP database: {exc}") from exc
    try:
        metadata = reader.metadata()
        reader.get_with_prefix_len(IPv4Address("1.1.1.1"))
        return _Database(
            path,
            reader,
            signature,
            int(metadata.build_epoch),
            str(metadata.database_type),
            metadata.ip_version == 4,
        )
    except _LOOKUP_ERRORS as exc:
        reader.close()
        raise GeoIPError(f"{path}: cannot read GeoIP database: {exc}") from exc


def _iso_code(value: object) -> str | None:
    if isinstance(value, dict):
        code = value.get("iso_code")
        if isinstance(code, str) and code:
            return code
    return None


def _network_text(v4: bool, value: int, prefix_len: int) -> str:
    bits = 32 if v4 else 128
    if not 0 <= prefix_len <= bits:
        return f"?/{prefix_len}"
    masked = value & (((1 << prefix_len) - 1) << (bits - prefix_len))
    if v4:
        # Formatted by hand: building an IPv4Address to print it costs more than the lookup.
        dotted = f"{masked >> 24}.{masked >> 16 & 255}.{masked >> 8 & 255}.{masked & 255}"
        return f"{dotted}/{prefix_len}"
    return f"{IPv6Address(masked)}/{prefix_len}"


class GeoResolver:
    """Resolve addresses to locations through overrides, then the database(s), with a cache.

    Attributes:
        extension_in_use: whether a native reader (:data:`READER`: maxminddb-rust, else
            libmaxminddb) serves lookups; False means the pure Python reader, about ten times
            slower (log this at startup).
        reader_name: :data:`READER`.
        last_error: the outstanding reload failures, one per line, or None.
        lookups: :meth:`resolve` calls.
        cache_hits: calls answered from the cache.
        no_record: database lookups that found no country.
        errors: lookups the database failed (answered unknown, not cached), and each distinct
            pair of codes from the database that could not form a Location (the answer then
            keeps what is usable: the country alone, or nothing).

    Not thread-safe: call it from the event loop thread only. A lookup is synchronous and
    costs a few microseconds with the C reader.
    """

    def __init__(self, settings: GeoIPSettings) -> None:
        """Open the database(s).

        Args:
            settings: what to open and how to answer.

        Raises:
            GeoIPError: a database cannot be opened or read; names the file.
        """
        self._settings = settings
        self.extension_in_use = _rust is not None or _HAS_EXTENSION
        self.reader_name = READER
        self.last_error: str | None = None
        self.lookups = 0
        self.cache_hits = 0
        self.no_record = 0
        self.errors = 0
        self._overrides: _PrefixMap[GeoResult] = _PrefixMap(
            (_normal_network(network), GeoResult(location, Resolution.OVERRIDE, str(network)))
            for network, location in settings.overrides
        )
        self._lookup_private = settings.lookup_private
        self._cache_size = settings.cache_size
        self._cache: dict[int, GeoResult] = {}
        self._order: deque[int] = deque()
        self._has_overrides = bool(self._overrides)
        self._locations: dict[tuple[str | None, str | None, bool], Location] = {}
        self._results: dict[int, GeoResult] = {}
        self._private = GeoResult(UNKNOWN, Resolution.PRIVATE, None)
        self._no_record = {
            False: GeoResult(UNKNOWN, Resolution.NO_RECORD, None),
            True: GeoResult(self._location(None, None, True), Resolution.NO_RECORD, None),
        }
        self._failed = GeoResult(UNKNOWN, Resolution.NO_RECORD, None)
        self._failures: dict[str, str] = {}
        self._main = _open(settings.database)
        self._anonymous: _Database | None = None
        if settings.anonymous_database is not None:
            try:
                self._anonymous = _open(settings.anonymous_database)
            except GeoIPError:
                self._main.reader.close()
                raise
        # The signature each file had when last acted on (loaded, or failed to load), so a
        # broken file is reported once, not on every check.
        self._seen: dict[str, FileSignature | None] = {"main": self._main.signature}
        if self._anonymous is not None:
            self._seen["anonymous"] = self._anonymous.signature
        self._closed = False

    # -- properties

    @property
    def build_epoch(self) -> int:
        """Build time (Unix seconds) of the main database in service."""
        return self._main.build_epoch

    @property
    def database_type(self) -> str:
        """``database_type`` of the main database, such as ``GeoIP2-City``."""
        return self._main.database_type

    @property
    def anonymous_build_epoch(self) -> int | None:
        """Build time of the anonymous-IP database in service, None without one."""
        return None if self._anonymous is None else self._anonymous.build_epoch

    # -- lookups

    def resolve(self, address: Address) -> GeoResult:
        """Find the location of an address.

        Args:
            address: the client address (IPv4-mapped IPv6 is looked up as IPv4).

        Returns:
            The result; a cached one when the address was resolved since the last reload. A
            failing database answers UNKNOWN with NO_RECORD, which is not cached.
        """
        self.lookups += 1
        value = int(address)
        v4 = isinstance(address, IPv4Address)
        key = value | _V4_KEY if v4 else value
        cached = self._cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        result = self._resolve(address, value, v4)
        if result is None:
            return self._failed
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                del self._cache[self._order.popleft()]
            self._cache[key] = result
            self._order.append(key)
        return result

    def _resolve(self, address: Address, value: int, v4: bool) -> GeoResult | None:
        if not v4 and value >> 32 == _MAPPED_HIGH:
            value &= 0xFFFFFFFF
            address = IPv4Address(value)
            v4 = True
        if self._has_overrides:
            override = self._overrides.get(v4, value)
            if override is not None:
                return override
        if (not self._lookup_private and (not v4 or value >> 24 in _NOT_GLOBAL_V4_OCTETS)
                and _NOT_GLOBAL.get(v4, value) is not None):
            return self._private
        database = self._main
        if database.ipv4_only and not v4:
            record, prefix_len = None, 0
        else:
            try:
                record, prefix_len = database.reader.get_with_prefix_len(address)
            except _LOOKUP_ERRORS:
                self.errors += 1
                return None
        anonymous = False
        if self._anonymous is not None:
            flagged = self._anonymous_flag(self._anonymous, address, v4)
            if flagged is None:
                return None
            anonymous = flagged
        # Every address of one database network has the same record: one result is shared per
        # network, and a network seen before skips reading the record and building the result.
        shift = (32 if v4 else 128) - prefix_len
        # One int per (network, prefix length, family, anonymous): cheaper to hash than a tuple.
        key = ((value >> shift if shift >= 0 else value) << 10 | prefix_len << 2
               | v4 << 1 | anonymous)
        result = self._results.get(key)
        if result is None:
            result = self._read_record(record, v4, value, prefix_len, anonymous)
            if len(self._results) >= _SHARED_RESULTS:
                self._results.clear()
            self._results[key] = result
        if result.how is _NO_RECORD:
            self.no_record += 1
        return result

    def _read_record(
        self, record: object, v4: bool, value: int, prefix_len: int, anonymous: bool
    ) -> GeoResult:
        """The result for a database record (of the network ``value``/``prefix_len``)."""
        if not isinstance(record, dict):
            return self._no_record[anonymous]
        country = _iso_code(record.get("country")) or _iso_code(record.get("registered_country"))
        subdivision = None
        if country is not None:
            subdivisions = record.get("subdivisions")
            if isinstance(subdivisions, list) and subdivisions:
                code = _iso_code(subdivisions[0])
                if code is not None:
                    # MaxMind stores the part after the dash; accept a full code as well.
                    subdivision = code if code.startswith(f"{country}-") else f"{country}-{code}"
        location = self._location(country, subdivision, anonymous)
        how = Resolution.NO_RECORD if country is None else Resolution.DATABASE
        return GeoResult(location, how, _network_text(v4, value, prefix_len))

    def _anonymous_flag(self, database: _Database, address: Address, v4: bool) -> bool | None:
        if database.ipv4_only and not v4:
            return False
        try:
            record = database.reader.get(address)
        except _LOOKUP_ERRORS:
            self.errors += 1
            return None
        if not isinstance(record, dict):
            return False
        return any(record.get(key) is True for key in _ANONYMOUS_KEYS)

    def _location(self, country: str | None, subdivision: str | None, anonymous: bool) -> Location:
        """One shared Location per distinct answer; a bad code degrades to what is usable."""
        key = (country, subdivision, anonymous)
        location = self._locations.get(key)
        if location is None:
            try:
                location = Location(country, subdivision, anonymous)
            except ValueError:
                self.errors += 1
                try:
                    location = Location(country, None, anonymous)
                except ValueError:
                    location = Location(None, None, anonymous)
            self._locations[key] = location
        return location

    # -- reload

    def check_for_changes(self) -> list[ReloadResult]:
        """Reload each database file whose (mtime, size, inode) changed since it was loaded.

        The new file is opened and tried before it replaces the old reader in one assignment;
        then the cache is cleared and the old reader closed. On failure the old reader stays
        in service and the failure is reported once per change of the file.

        Returns:
            One result per file that changed; empty when none did.
        """
        results: list[ReloadResult] = []
        for role in ("main", "anonymous"):
            current = self._main if role == "main" else self._anonymous
            if current is None:
                continue
            path = current.path
            try:
                signature: FileSignature | None = file_signature(path)
                problem = None
            except OSError as exc:
                signature, problem = None, f"{path}: cannot read GeoIP database: {exc}"
            if signature == self._seen.get(role):
                continue
            self._seen[role] = signature
            try:
                if problem is not None:
                    raise GeoIPError(problem)
                fresh = _open(path)
            except GeoIPError as exc:
                self._failures[role] = str(exc)
                results.append(ReloadResult(path, False, str(exc), None))
                continue
            self._seen[role] = fresh.signature
            if role == "main":
                self._main = fresh
            else:
                self._anonymous = fresh
            self._cache.clear()
            self._order.clear()
            self._results.clear()
            current.reader.close()
            self._failures.pop(role, None)
            results.append(ReloadResult(path, True, None, fresh.build_epoch))
        self.last_error = "\n".join(self._failures.values()) or None
        return results

    def close(self) -> None:
        """Close the database(s); further lookups answer unknown and count as errors."""
        if self._closed:
            return
        self._closed = True
        self._main.reader.close()
        if self._anonymous is not None:
            self._anonymous.reader.close()
        self._cache.clear()
        self._order.clear()

    def __enter__(self) -> GeoResolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
