"""Build MaxMind DB files from small CSV maps: the demo database, test databases, private ranges.

Two kinds of database, both readable by any MaxMind DB reader exactly like MaxMind's own files:

* City (``database_type`` "GeoIP2-City"): CSV ``network,country,subdivision``; each record is
  ``{"country": {"iso_code": "US"}, "subdivisions": [{"iso_code": "CA"}]}``. Like MaxMind, the
  subdivision ``iso_code`` holds only the part after the dash of the ISO 3166-2 code.
* Anonymous IP (``database_type`` "GeoIP2-Anonymous-IP"): CSV ``network,flags`` with flags a
  ``|``-list of :class:`AnonymousFlag`; each record holds ``is_anonymous`` and the ``is_*`` flags
  that are true (MaxMind leaves false flags out; readers default them to false).

CSV rules: an optional header line, ``#`` comment lines and blank lines anywhere; networks in CIDR
form with no host bits set; each network at most once. Every bad line is reported, not only the
first, in one :class:`~proxy.errors.GeoIPBuildError` whose lines read ``file:line: message``.

The tree is always IPv6 (record size chosen by the writer), with IPv4 networks stored in
``::/96`` where readers look IPv4 addresses up. MaxMind also aliases the IPv4-mapped block
``::ffff:0:0/96`` (RFC 4291 section 2.5.5.2) to that subtree, so that ``::ffff:192.0.2.1`` finds
the same record as ``192.0.2.1``; the reader does no such mapping itself, so we build the same
alias. Consequences: a row inside ``::ffff:0:0/96`` is the IPv4 row it spells, and an IPv6 row
inside ``::/96`` (such as ``::1/128``) shares its place in the tree with the IPv4 network of the
same low 32 bits (``0.0.0.1/32``); the two are reported as duplicates if both appear.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mmdb_writer import MMDBWriter, SearchTreeLeaf, SearchTreeNode
from netaddr import IPNetwork, IPSet

from proxy.errors import GeoIPBuildError
from proxy.policy.regions import validate_region

__all__ = [
    "ANONYMOUS_DATABASE_TYPE",
    "CITY_DATABASE_TYPE",
    "AnonymousFlag",
    "AnonymousRow",
    "CsvRow",
    "build_anonymous_database",
    "build_anonymous_from_csv",
    "build_database",
    "build_from_csv",
    "read_anonymous_csv",
    "read_csv",
]

CITY_DATABASE_TYPE = "GeoIP2-City"
ANONYMOUS_DATABASE_TYPE = "GeoIP2-Anonymous-IP"

Network = IPv4Network | IPv6Network

# Where readers look IPv4 up in an IPv6 tree, and the IPv4-mapped block MaxMind aliases to it.
_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
_MAPPED_BASE = int(_IPV4_MAPPED.network_address)
_UINT64_LIMIT = 1 << 64
# The most issues one error message lists; a CSV in the wrong format would otherwise yield one
# line of error per line of input.
_MAX_ISSUES = 200


class AnonymousFlag(StrEnum):
    """A flag of the Anonymous IP CSV and the MaxMind record key it sets."""

    VPN = "vpn"
    HOSTING = "hosting"
    TOR = "tor"
    PUBLIC_PROXY = "public_proxy"
    RESIDENTIAL_PROXY = "residential_proxy"

    @property
    def record_key(self) -> str:
        """The MaxMind Anonymous-IP record key this flag sets."""
        return _FLAG_KEYS[self]


_FLAG_KEYS: dict[AnonymousFlag, str] = {
    AnonymousFlag.VPN: "is_anonymous_vpn",
    AnonymousFlag.HOSTING: "is_hosting_provider",
    AnonymousFlag.TOR: "is_tor_exit_node",
    AnonymousFlag.PUBLIC_PROXY: "is_public_proxy",
    AnonymousFlag.RESIDENTIAL_PROXY: "is_residential_proxy",
}


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One network of a City database, validated.

    Attributes:
        network: the network; host bits must be clear.
        country: ISO 3166-1 alpha-2 code, stored upper case.
        subdivision: full ISO 3166-2 code such as ``US-CA`` (a bare ``CA`` is completed with the
            country), or None.
        line: the 1-based CSV line it came from, for messages; not part of equality.

    Raises:
        ValueError: a code is unknown, or the subdivision belongs to another country.
    """

    network: Network
    country: str
    subdivision: str | None = None
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.network, IPv4Network | IPv6Network):
            raise ValueError(f"network {self.network!r} is not an IPv4Network or IPv6Network")
        country = _country(self.country)
        object.__setattr__(self, "country", country)
        object.__setattr__(self, "subdivision", _subdivision(self.subdivision, country))

    @classmethod
    def from_fields(cls, fields: Sequence[str], line: int | None = None) -> CsvRow:
        """Parse the text fields ``network, country[, subdivision]`` of one CSV line.

        Args:
            fields: two or three stripped or unstripped fields.
            line: the CSV line number, kept for messages.

        Returns:
            The validated row.

        Raises:
            ValueError: naming every bad field of the line, its value and the expected form.
        """
        if len(fields) not in (2, 3):
            raise ValueError(f"{_columns(fields)}; expected network,country,subdivision")
        problems: list[str] = []
        network = _collect(problems, _network, fields[0].strip())
        country = _collect(problems, _country, fields[1].strip())
        subdivision_text = fields[2].strip() if len(fields) == 3 else ""
        if country is not None:
            _collect(problems, _subdivision, subdivision_text, country)
        if problems or network is None or country is None:
            raise ValueError("; ".join(problems))
        return cls(network, country, subdivision_text or None, line)

    def record(self) -> dict[str, Any]:
        """The MaxMind City record for this row (subdivision ``iso_code`` after the dash)."""
        record: dict[str, Any] = {"country": {"iso_code": self.country}}
        if self.subdivision is not None:
            record["subdivisions"] = [{"iso_code": self.subdivision.partition("-")[2]}]
        return record


@dataclass(frozen=True, slots=True)
class AnonymousRow:
    """One network of an Anonymous IP database, validated.

    Attributes:
        network: the network; host bits must be clear.
        flags: at least one flag.
        line: the 1-based CSV line it came from, for messages; not part of equality.

    Raises:
        ValueError: no flags, or a flag that is not an :class:`AnonymousFlag`.
    """

    network: Network
    flags: frozenset[AnonymousFlag]
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.network, IPv4Network | IPv6Network):
            raise ValueError(f"network {self.network!r} is not an IPv4Network or IPv6Network")
        flags = frozenset(self.flags)
        if not flags:
            raise ValueError(f"no flags; expected a |-list of {_FLAG_CHOICES}")
        if not all(isinstance(flag, AnonymousFlag) for flag in flags):
            raise ValueError(f"flags {sorted(map(str, flags))} are not all AnonymousFlag values")
        object.__setattr__(self, "flags", flags)

    @classmethod
    def from_fields(cls, fields: Sequence[str], line: int | None = None) -> AnonymousRow:
        """Parse the text fields ``network, flags`` of one CSV line.

        Args:
            fields: exactly two fields; flags such as ``vpn|hosting``.
            line: the CSV line number, kept for messages.

        Returns:
            The validated row.

        Raises:
            ValueError: naming every bad field of the line, its value and the expected form.
        """
        if len(fields) != 2:
            raise ValueError(f"{_columns(fields)}; expected network,flags")
        problems: list[str] = []
        network = _collect(problems, _network, fields[0].strip())
        flags = _collect(problems, _flags, fields[1].strip())
        if problems or network is None or flags is None:
            raise ValueError("; ".join(problems))
        return cls(network, flags, line)

    def record(self) -> dict[str, Any]:
        """The MaxMind Anonymous-IP record for this row: only true flags, as MaxMind stores."""
        record: dict[str, Any] = {"is_anonymous": True}
        for flag in sorted(self.flags):
            record[flag.record_key] = True
        return record


def read_csv(csv_path: str | os.PathLike[str]) -> list[CsvRow]:
    """Read and validate a City CSV (``network,country,subdivision``).

    Args:
        csv_path: the CSV file.

    Returns:
        The rows in file order.

    Raises:
        GeoIPBuildError: the file cannot be read, or lists every bad line as ``file:line: ...``.
    """
    return _read(Path(csv_path), ("network", "country", "subdivision"), 1, CsvRow.from_fields)


def read_anonymous_csv(csv_path: str | os.PathLike[str]) -> list[AnonymousRow]:
    """Read and validate an Anonymous IP CSV (``network,flags``).

    Args:
        csv_path: the CSV file.

    Returns:
        The rows in file order.

    Raises:
        GeoIPBuildError: the file cannot be read, or lists every bad line as ``file:line: ...``.
    """
    return _read(Path(csv_path), ("network", "flags"), 0, AnonymousRow.from_fields)


def build_database(
    rows: Iterable[CsvRow] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    description: str = "geogate GeoIP City database",
    build_epoch: int | None = None,
) -> int:
    """Write a City database from rows or from a City CSV file.

    The file is written next to ``out`` and renamed over it, so a running reader never sees a
    half-written file (the way MaxMind's geoipupdate replaces databases).

    Args:
        rows: validated rows, or the path of a CSV to read with :func:`read_csv`.
        out: the database file to write.
        description: the English description stored in the metadata.
        build_epoch: the metadata build time in Unix seconds; None uses the current time.
            Given a fixed value, the same rows in any order produce byte-identical files.

    Returns:
        The number of rows written.

    Raises:
        GeoIPBuildError: bad CSV lines, duplicate networks, or ``out`` cannot be written.
        ValueError: ``build_epoch`` is not an unsigned 64-bit integer.
    """
    if isinstance(rows, str | os.PathLike):
        valid = read_csv(rows)
        origin = os.fspath(rows)
    else:
        valid = _typed_rows(rows, CsvRow)
        origin = "<rows>"
    _write(_tree_entries(valid, origin), Path(out), CITY_DATABASE_TYPE, description, build_epoch)
    return len(valid)


def build_from_csv(
    csv_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    build_epoch: int | None = None,
) -> int:
    """Build a City database from a City CSV.

    Args:
        csv_path: the CSV (``network,country,subdivision``).
        out_path: the database file to write.
        build_epoch: the metadata build time; None uses the current time.

    Returns:
        The number of rows written.

    Raises:
        GeoIPBuildError: bad CSV lines (all listed) or the output cannot be written.
    """
    path = Path(csv_path)
    return build_database(
        path, out_path, description=f"geogate GeoIP City database from {path.name}",
        build_epoch=build_epoch,
    )


def build_anonymous_database(
    rows: Iterable[AnonymousRow] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    description: str = "geogate Anonymous IP database",
    build_epoch: int | None = None,
) -> int:
    """Write an Anonymous IP database from rows or from an Anonymous IP CSV file.

    Args:
        rows: validated rows, or the path of a CSV to read with :func:`read_anonymous_csv`.
        out: the database file to write (replaced by rename).
        description: the English description stored in the metadata.
        build_epoch: the metadata build time in Unix seconds; None uses the current time.

    Returns:
        The number of rows written.

    Raises:
        GeoIPBuildError: bad CSV lines, duplicate networks, or ``out`` cannot be written.
        ValueError: ``build_epoch`` is not an unsigned 64-bit integer.
    """
    if isinstance(rows, str | os.PathLike):
        valid = read_anonymous_csv(rows)
        origin = os.fspath(rows)
    else:
        valid = _typed_rows(rows, AnonymousRow)
        origin = "<rows>"
    entries = _tree_entries(valid, origin)
    _write(entries, Path(out), ANONYMOUS_DATABASE_TYPE, description, build_epoch)
    return len(valid)


def build_anonymous_from_csv(
    csv_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    build_epoch: int | None = None,
) -> int:
    """Build an Anonymous IP database from a CSV of ``network,flags``.

    Args:
        csv_path: the CSV; flags are a ``|``-list of vpn, hosting, tor, public_proxy,
            residential_proxy.
        out_path: the database file to write.
        build_epoch: the metadata build time; None uses the current time.

    Returns:
        The number of rows written.

    Raises:
        GeoIPBuildError: bad CSV lines (all listed) or the output cannot be written.
    """
    path = Path(csv_path)
    return build_anonymous_database(
        path, out_path, description=f"geogate Anonymous IP database from {path.name}",
        build_epoch=build_epoch,
    )


# --- validation of single fields; each raises ValueError naming the value and the expected form


_T = TypeVar("_T")
_FLAG_CHOICES = ", ".join(flag.value for flag in AnonymousFlag)


def _collect(problems: list[str], check: Callable[..., _T], *args: Any) -> _T | None:
    """Run one field check, appending its message to ``problems`` instead of raising."""
    try:
        return check(*args)
    except ValueError as exc:
        problems.append(str(exc))
        return None


def _show(fields: Sequence[str]) -> str:
    return repr(",".join(fields))


def _columns(fields: Sequence[str]) -> str:
    count = len(fields)
    return f"{count} column{'' if count == 1 else 's'} {_show(fields)}"


def _network(text: str) -> Network:
    expected = "expected CIDR such as 192.0.2.0/24 or 2001:db8::/32"
    if "/" not in text or "%" in text:
        raise ValueError(f"network {text!r} is not a CIDR network; {expected}")
    try:
        return ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"network {text!r} is not a CIDR network; {expected}") from None
    raise ValueError(
        f"network {text!r} has host bits set; expected the network address {loose}"
    )


def _suggestion(exc: ValueError) -> str:
    """validate_region's "did you mean" hint, if it gave one."""
    hint = str(exc).partition("; did you mean ")[2]
    return f"; did you mean {hint}" if hint else ""


def _country(text: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"country {text!r} is not a string")
    code = text.strip().upper()
    expected = "expected an ISO 3166-1 alpha-2 country code such as US"
    if not code:
        raise ValueError(f"country is empty; {expected}")
    try:
        valid = validate_region(code)
    except ValueError as exc:
        raise ValueError(f"unknown country {text!r}; {expected}{_suggestion(exc)}") from None
    if "-" in valid:
        raise ValueError(f"country {text!r} is a subdivision code; {expected}")
    return valid


def _subdivision(text: str | None, country: str) -> str | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"subdivision {text!r} is not a string")
    code = text.strip().upper()
    if not code:
        return None
    owner, dash, rest = code.partition("-")
    if not dash:
        owner, rest = country, code
    expected = f"expected an ISO 3166-2 code of {country}, in full or the part after the dash"
    if owner != country:
        raise ValueError(f"subdivision {text!r} belongs to {owner}, not to country {country}")
    try:
        return validate_region(f"{country}-{rest}")
    except ValueError as exc:
        raise ValueError(
            f"unknown subdivision {text!r}; {expected}{_suggestion(exc)}"
        ) from None


def _flags(text: str) -> frozenset[AnonymousFlag]:
    names = [name.strip().lower() for name in text.split("|")]
    if not any(names):
        raise ValueError(f"flags are empty; expected a |-list of {_FLAG_CHOICES}")
    flags: set[AnonymousFlag] = set()
    for name in names:
        try:
            flags.add(AnonymousFlag(name))
        except ValueError:
            raise ValueError(
                f"unknown flag {name!r} in {text!r}; expected a |-list of {_FLAG_CHOICES}"
            ) from None
    return frozenset(flags)


# --- reading CSV files


class _Row(Protocol):
    @property
    def network(self) -> Network: ...
    @property
    def line(self) -> int | None: ...
    def record(self) -> dict[str, Any]: ...


_R = TypeVar("_R", bound=_Row)


def _data_lines(path: Path) -> Iterator[tuple[int, list[str] | str]]:
    """Yield (line number, fields or a problem) for each line neither blank nor a comment."""
    try:
        # utf-8-sig: spreadsheets often save a byte order mark.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GeoIPBuildError(f"{path}: cannot read the CSV: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            yield number, f"not a CSV line ({exc}): {stripped!r}"
            continue
        yield number, [value.strip() for value in fields]


def _read(
    path: Path,
    header: tuple[str, ...],
    optional: int,
    parse: Callable[[Sequence[str], int], _R],
) -> list[_R]:
    origin = str(path)
    rows: list[_R] = []
    issues: list[tuple[int, str]] = []
    first = True
    for number, fields in _data_lines(path):
        if isinstance(fields, str):
            issues.append((number, fields))
            first = False
            continue
        if first and fields and fields[0].lower() == header[0]:
            names = tuple(value.lower() for value in fields)
            if names != header[: len(names)] or len(names) < len(header) - optional:
                issues.append(
                    (number, f"header {_show(fields)}; expected {','.join(header)}")
                )
            first = False
            continue
        first = False
        try:
            rows.append(parse(fields, number))
        except ValueError as exc:
            issues.append((number, str(exc)))
    try:
        _tree_entries(rows, origin)
    except _Duplicates as dup:
        issues.extend(dup.issues)
    if issues:
        issues.sort(key=lambda issue: issue[0])
        raise GeoIPBuildError(_report(origin, [f"{origin}:{n}: {m}" for n, m in issues]))
    return rows


def _report(origin: str, lines: list[str]) -> str:
    shown = lines[:_MAX_ISSUES]
    if len(lines) > len(shown):
        shown.append(f"{origin}: ... and {len(lines) - len(shown)} more")
    return "\n".join(shown)


def _typed_rows(rows: Iterable[object], kind: type[_R]) -> list[_R]:
    valid: list[_R] = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, kind):
            raise GeoIPBuildError(f"<rows> row {index}: {row!r} is not a {kind.__name__}")
        valid.append(row)
    return valid


# --- the tree


class _Duplicates(GeoIPBuildError):
    def __init__(self, issues: list[tuple[int, str]], text: str) -> None:
        super().__init__(text)
        self.issues = issues


def _tree_network(network: Network) -> IPv6Network:
    """Where ``network`` lives in the IPv6 tree: IPv4 (and IPv4-mapped) networks in ``::/96``."""
    if isinstance(network, IPv4Network):
        return IPv6Network((int(network.network_address), 96 + network.prefixlen))
    if network.prefixlen >= 96 and network.subnet_of(_IPV4_MAPPED):
        return IPv6Network((int(network.network_address) - _MAPPED_BASE, network.prefixlen))
    return network


def _tree_entries(rows: Sequence[_R], origin: str) -> list[tuple[IPv6Network, dict[str, Any]]]:
    """Order rows for insertion, shortest prefix first; raise _Duplicates for repeated networks.

    mmdb_writer replaces a whole subtree when a supernet is inserted after its subnets, so
    inserting by increasing prefix length is what makes the most specific network win whatever
    the order of the rows.
    """
    seen: dict[IPv6Network, _R] = {}
    issues: list[tuple[int, str]] = []
    messages: list[str] = []
    for index, row in enumerate(rows, start=1):
        place = _tree_network(row.network)
        other = seen.get(place)
        if other is None:
            seen[place] = row
            continue
        where = f"line {other.line}" if other.line is not None else f"row {_index(rows, other)}"
        same = "" if other.network == row.network else f" ({other.network}: same tree place)"
        message = f"network {row.network} duplicates {where}{same}"
        issues.append((row.line or index, message))
        label = f"{origin}:{row.line}" if row.line is not None else f"{origin} row {index}"
        messages.append(f"{label}: {message}")
    if issues:
        raise _Duplicates(issues, _report(origin, messages))
    ordered = sorted(
        seen.items(), key=lambda item: (item[0].prefixlen, int(item[0].network_address))
    )
    return [(place, row.record()) for place, row in ordered]


def _index(rows: Sequence[_R], row: _R) -> int:
    return next(i for i, candidate in enumerate(rows, start=1) if candidate is row)


class _Writer(MMDBWriter):
    """MMDBWriter with a fixed ``build_epoch`` (its own is always the current time)."""

    def __init__(self, build_epoch: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        if self._build_epoch is not None:
            meta["build_epoch"] = self._build_epoch
        return meta


def _alias_ipv4_mapped(tree: SearchTreeNode) -> None:
    """Point ``::ffff:0:0/96`` at whatever answers IPv4 lookups (``::/96``), as MaxMind does."""
    ipv4: SearchTreeNode | SearchTreeLeaf | None = tree
    for _ in range(96):
        if not isinstance(ipv4, SearchTreeNode):
            break  # a leaf (or nothing) covers all of IPv4
        ipv4 = ipv4.left
    bits = [(_MAPPED_BASE >> (127 - depth)) & 1 for depth in range(96)]
    node = tree
    for bit in bits[:-1]:
        child = node[bit]
        if not isinstance(child, SearchTreeNode):
            # Split a leaf covering the path (both halves keep its record), or make the path.
            child = SearchTreeNode(child, child)
            node[bit] = child
        node = child
    node[bits[-1]] = ipv4


def _write(
    entries: list[tuple[IPv6Network, dict[str, Any]]],
    out: Path,
    database_type: str,
    description: str,
    build_epoch: int | None,
) -> None:
    if build_epoch is not None and (
        isinstance(build_epoch, bool)
        or not isinstance(build_epoch, int)
        or not 0 <= build_epoch < _UINT64_LIMIT
    ):
        raise ValueError(f"build_epoch {build_epoch!r} is not an unsigned 64-bit integer")
    writer = _Writer(
        build_epoch,
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        description={"en": description},
    )
    for place, record in entries:
        # mmdb_writer cannot insert a /0 (it walks prefixlen - 1 bits); two /1 halves are the same.
        for part in place.subnets(1) if place.prefixlen == 0 else (place,):
            writer.insert_network(IPSet([IPNetwork(str(part))]), record)
    _alias_ipv4_mapped(writer.tree)
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise GeoIPBuildError(f"{out}: cannot write the database: {exc}") from exc
    os.close(fd)
    try:
        writer.to_db_file(temporary)
        # mkstemp creates 0600; the proxy may run as another user than the builder.
        os.chmod(temporary, 0o644)
        os.replace(temporary, out)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise GeoIPBuildError(f"{out}: cannot write the database: {exc}") from exc
