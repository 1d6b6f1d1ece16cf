"""Configuration: frozen dataclasses, strict TOML loading, one immutable snapshot.

Two files make a configuration: the main file (``config/geogate.toml``: listener, upstream, client
address trust, GeoIP databases, protocol, limits, paths) and the restrictions file it names. Loading
is strict: an unknown key, a wrong type, a bad network, an unknown region code, a duplicate id, a
window that ends before it starts or a missing legal basis is an error naming the file, the line
where it can be found, the key path, the bad value and what was expected; every problem is collected
before :class:`~proxy.errors.ConfigError` is raised. Relative paths are resolved against the
directory of the file that names them. Overrides (``--set section.key=value``) are applied over the
file before validation, so they are checked the same way.

Loading produces a :class:`Snapshot`; a reload builds a whole new one and swaps one reference, so
the relay path never reads files.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from proxy.errors import ConfigError, ConfigIssue
from proxy.geo import ForwardedHeader, GeoIPSettings
from proxy.policy.gate import RestrictionSet
from proxy.policy.regions import Location, validate_region
from proxy.policy.restrictions import Enforcement, Mode, Restriction, Treatment

__all__ = [
    "AdminConfig",
    "AuditConfig",
    "ClientAddressConfig",
    "Config",
    "DenialStyle",
    "GeoIPConfig",
    "GeoIPOverride",
    "JanusProtocolConfig",
    "JsonProtocolConfig",
    "LimitsConfig",
    "ListenConfig",
    "LoggingConfig",
    "ProtocolConfig",
    "ReloadConfig",
    "RestrictionsConfig",
    "ShutdownConfig",
    "Snapshot",
    "UpstreamConfig",
    "UrlProtocolConfig",
    "at_least",
    "build_strict",
    "check",
    "load_config",
    "load_restrictions",
    "load_snapshot",
    "non_negative",
    "parse_overrides",
    "parse_restriction",
    "positive",
    "read_toml",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------------------------------
# Field validators: each takes the converted value and raises ValueError with the expected form.
# ``check`` puts one in a field's metadata for build_strict; the load tester's scenarios use the
# same vocabulary.


def _port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("expected a TCP port from 0 to 65535 (0 picks a free port)")


def positive(value: float) -> None:
    """Field check: a number greater than 0."""
    if value <= 0:
        raise ValueError("expected a number greater than 0")


def non_negative(value: float) -> None:
    """Field check: a number of 0 or more."""
    if value < 0:
        raise ValueError("expected a number of 0 or more")


def at_least(minimum: int) -> Callable[[int], None]:
    """Field check: a whole number of at least ``minimum``."""

    def check(value: int) -> None:
        if value < minimum:
            raise ValueError(f"expected a whole number of at least {minimum}")

    return check


def _prefix(bits: int) -> Callable[[int], None]:
    def check(value: int) -> None:
        if not 0 <= value <= bits:
            raise ValueError(f"expected a prefix length from 0 to {bits}")

    return check


def _ws_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("expected a ws:// or wss:// URL with a host, such as ws://127.0.0.1:8090/")
    if parts.fragment:
        raise ValueError("a WebSocket URL cannot have a #fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("the URL's port is not a number from 0 to 65535") from None


def _header_name(value: str) -> None:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError("expected an HTTP header name (RFC 9110 token)")


def check(fn: Callable[[Any], None]) -> dict[str, Any]:
    """A field's metadata that makes build_strict run ``fn`` on its converted value."""
    return {"check": fn}


def _each(fn: Callable[[Any], None]) -> dict[str, Any]:
    return {"check_each": fn}


# --------------------------------------------------------------------------------------------------
# The main configuration. Field names are the TOML keys (dashes in TOML become underscores here).


class DenialStyle(enum.StrEnum):
    """How a barred participant is told: a notice frame then close 4451, or HTTP 451."""

    NOTICE = "notice"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """Where participants connect."""

    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=check(_port))
    backlog: int = field(default=4096, metadata=check(at_least(1)))
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """The signaling server admitted participants are relayed to."""

    url: str = field(default="ws://127.0.0.1:8090/", metadata=check(_ws_url))
    connect_timeout: float = field(default=5.0, metadata=check(positive))
    ca_file: Path | None = None
    forward_path: bool = True
    pass_headers: tuple[str, ...] = field(
        default=("cookie", "authorization", "origin", "user-agent"),
        metadata=_each(_header_name),
    )


@dataclass(frozen=True, slots=True)
class ClientAddressConfig:
    """Which peers may tell us the client address, and in which header."""

    trusted_proxies: tuple[Network, ...] = ()
    header: ForwardedHeader = ForwardedHeader.X_FORWARDED_FOR


@dataclass(frozen=True, slots=True)
class GeoIPOverride:
    """A network placed in a region by config, ahead of the database."""

    network: Network
    region: str = field(metadata={"convert": validate_region})


@dataclass(frozen=True, slots=True)
class GeoIPConfig:
    """GeoIP databases and lookup behaviour."""

    database: Path = Path("../build/demo-geoip.mmdb")
    anonymous_database: Path | None = None
    lookup_private: bool = False
    cache_size: int = field(default=65536, metadata=check(at_least(0)))
    watch_interval: float = field(default=2.0, metadata=check(positive))
    override: tuple[GeoIPOverride, ...] = ()

    def overrides(self) -> tuple[tuple[Network, Location], ...]:
        """The overrides as (network, location) pairs for the resolver."""
        pairs = []
        for item in self.override:
            country, _, _ = item.region.partition("-")
            subdivision = item.region if "-" in item.region else None
            pairs.append((item.network, Location(country, subdivision)))
        return tuple(pairs)

    def settings(self, *, cache_size: int | None = None) -> GeoIPSettings:
        """What a :class:`~proxy.geo.GeoResolver` needs, from this section.

        Args:
            cache_size: overrides ``cache_size`` (0: no cache, for one-off resolutions).
        """
        return GeoIPSettings(
            database=self.database,
            anonymous_database=self.anonymous_database,
            overrides=self.overrides(),
            cache_size=self.cache_size if cache_size is None else cache_size,
            lookup_private=self.lookup_private,
        )


@dataclass(frozen=True, slots=True)
class RestrictionsConfig:
    """Where the restrictions live."""

    path: Path = Path("restrictions.toml")


@dataclass(frozen=True, slots=True)
class JsonProtocolConfig:
    """The ``json`` adapter: meeting and participant from JSON text messages."""

    type_field: str = "type"
    join_types: tuple[str, ...] = ("join",)
    resume_types: tuple[str, ...] = ("resume",)
    meeting_field: str = "meeting"
    participant_field: str = "participant"
    leave_message: str = '{"type":"leave"}'


@dataclass(frozen=True, slots=True)
class UrlProtocolConfig:
    """The ``url`` adapter: meeting and participant from the request URL or a JWT."""

    path_template: str = "/rooms/{meeting}"
    meeting_query: str = ""
    participant_query: str = ""
    jwt_query: str = ""
    jwt_header: bool = False
    meeting_claim: str = "video.room"
    participant_claim: str = "sub"
    jwt_algorithms: tuple[Literal["HS256", "RS256"], ...] = ("HS256",)
    jwt_secret: str = ""
    jwt_public_key: Path | None = None


@dataclass(frozen=True, slots=True)
class JanusProtocolConfig:
    """The ``janus`` adapter: VideoRoom rooms are meetings, a Janus session is the participant."""

    reclaim_timeout: float = field(default=0.0, metadata=check(non_negative))
    max_sessions: int = field(default=10_000, metadata=check(at_least(1)))
    transaction_timeout: float = field(default=60.0, metadata=check(positive))
    plugins: tuple[str, ...] = ("janus.plugin.videoroom",)


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    """Which signaling protocol the upstream speaks, and how a barred participant is told."""

    adapter: Literal["json", "url", "janus"] = "json"
    denial: DenialStyle = DenialStyle.NOTICE
    json: JsonProtocolConfig = JsonProtocolConfig()
    url: UrlProtocolConfig = UrlProtocolConfig()
    janus: JanusProtocolConfig = JanusProtocolConfig()

    def __post_init__(self) -> None:
        if self.denial is DenialStyle.HTTP and self.adapter != "url":
            raise ValueError(
                "denial = 'http' needs adapter = 'url': other adapters decide after the upgrade"
            )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Every bound the proxy enforces, with its default."""

    max_connections: int = field(default=20000, metadata=check(at_least(1)))
    max_message_bytes: int = field(default=1 << 20, metadata=check(at_least(125)))
    max_header_bytes: int = field(default=16384, metadata=check(at_least(1024)))
    handshake_timeout: float = field(default=10.0, metadata=check(positive))
    join_timeout: float = field(default=10.0, metadata=check(positive))
    idle_timeout: float = field(default=300.0, metadata=check(positive))
    write_buffer_bytes: int = field(default=256 * 1024, metadata=check(at_least(4096)))
    retry_window: float = field(default=2.0, metadata=check(non_negative))
    decision_cache_size: int = field(default=65536, metadata=check(at_least(0)))


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin HTTP server (health, metrics, sessions, reload)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = field(default=8081, metadata=check(_port))
    token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit trail: one JSON line per decision, rotated by size."""

    path: Path | None = None
    max_bytes: int = field(default=64 * 1024 * 1024, metadata=check(at_least(4096)))
    keep: int = field(default=10, metadata=check(at_least(1)))
    pseudonymise: bool = True
    key_file: Path | None = None
    truncate_v4: int = field(default=24, metadata=check(_prefix(32)))
    truncate_v6: int = field(default=48, metadata=check(_prefix(128)))
    queue_max: int = field(default=100_000, metadata=check(at_least(1)))
    batch_delay: float = field(default=0.005, metadata=check(non_negative))


@dataclass(frozen=True, slots=True)
class ReloadConfig:
    """How changes to files are noticed and applied to open sessions."""

    watch_interval: float = field(default=1.0, metadata=check(positive))
    eviction_batch: int = field(default=256, metadata=check(at_least(1)))


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    """The ordered shutdown on SIGTERM or SIGINT."""

    drain_period: float = field(default=0.0, metadata=check(non_negative))
    timeout: float = field(default=10.0, metadata=check(positive))


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Process logs (decisions go to the audit trail as well)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json: bool = False
    decision_lines_per_second: float = field(default=50.0, metadata=check(positive))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole main configuration, as loaded from one file."""

    listen: ListenConfig = ListenConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    client_address: ClientAddressConfig = ClientAddressConfig()
    geoip: GeoIPConfig = GeoIPConfig()
    restrictions: RestrictionsConfig = RestrictionsConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    limits: LimitsConfig = LimitsConfig()
    admin: AdminConfig = AdminConfig()
    audit: AuditConfig = AuditConfig()
    reload: ReloadConfig = ReloadConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    logging: LoggingConfig = LoggingConfig()
    source: Path | None = field(default=None, metadata={"internal": True})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One validated configuration and restriction set, swapped in as a whole.

    Attributes:
        config: the main configuration.
        restrictions: the indexed restriction set (its ``version`` names the file content).
        version: a short digest of both files' contents, for logs and the audit trail.
    """

    config: Config
    restrictions: RestrictionSet
    version: str


# --------------------------------------------------------------------------------------------------
# Locating a key path in TOML text, for line numbers in messages (tomllib does not report them).


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")


def _locate(text: str, path: Sequence[str | int]) -> int | None:
    """Best-effort 1-based line of a key path such as ``("restriction", 2, "regions", 0)``.

    The strings of the path name tables and, last, a key; an integer right after a table name picks
    one of its ``[[array]]`` tables. Without a key, the table's header line is returned.
    """
    names = [p for p in path if isinstance(p, str)]
    if not names:
        return None
    last = max(i for i, p in enumerate(path) if isinstance(p, str))
    follow = path[last + 1] if last + 1 < len(path) else None
    lines = text.splitlines()
    array_header = re.compile(r"^\s*\[\[\s*" + re.escape(".".join(names)) + r"\s*\]\]")
    index: int | None
    key: str | None
    if isinstance(follow, int) and any(array_header.match(line) for line in lines):
        table, key, index = ".".join(names), None, follow
    else:
        table, key = ".".join(names[:-1]), names[-1]
        before = path[last - 1] if last > 0 else None
        index = before if isinstance(before, int) else None
    in_table = table == ""
    header_line: int | None = None
    count: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        header = _HEADER.match(line)
        if header:
            current = header.group(2).replace(" ", "")
            if header.group(1) == "[[":
                count[current] = count.get(current, -1) + 1
            in_table = current == table and (index is None or count.get(current) == index)
            if in_table:
                header_line = number
                if key is None:
                    return number
            continue
        if in_table and key is not None:
            found = _KEY.match(line)
            if found and found.group(1).strip("\"'").split(".")[0] in (key, key.replace("_", "-")):
                return number
    return header_line


# --------------------------------------------------------------------------------------------------
# The strict builder: TOML values -> frozen dataclasses, every problem collected.


class _Issues:
    """Collects issues for one file."""

    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.text = text
        self.items: list[ConfigIssue] = []

    def add(self, path: Sequence[str | int], message: str) -> None:
        self.items.append(
            ConfigIssue(str(self.file), _format_path(path), message, _locate(self.text, path))
        )


def _format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class _Invalid(Exception):
    """A value that could not be converted; the message is the expected form."""


class _Reported(Exception):
    """A table whose problems are already recorded as issues."""


def _convert(tp: Any, value: Any, path: list[str | int], issues: _Issues, base: Path) -> Any:
    """Convert one TOML value to ``tp``; raise _Invalid with the expected form on a mismatch."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if set(args) == {ipaddress.IPv4Network, ipaddress.IPv6Network}:
            return _network(value)
        return _convert(args[0], value, path, issues, base)
    if origin is tuple:
        if not isinstance(value, list):
            raise _Invalid("expected a list")
        item_type = typing.get_args(tp)[0]
        out = []
        for i, item in enumerate(value):
            try:
                out.append(_convert(item_type, item, [*path, i], issues, base))
            except _Invalid as exc:
                issues.add([*path, i], f"{_show(item)} is not valid: {exc}")
            except _Reported:
                pass
        return tuple(out)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise _Invalid("expected one of " + ", ".join(repr(c) for c in choices))
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _Invalid("expected one of " + ", ".join(repr(m.value) for m in tp)) from None
    if origin in (dict, Mapping) or tp is Mapping:
        if not isinstance(value, dict):
            raise _Invalid("expected a table")
        return dict(value)
    from_toml = getattr(tp, "from_toml", None)
    if from_toml is not None:
        # A type with its own TOML forms (a number or a [low, high] pair, for instance).
        return from_toml(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise _Invalid("expected a table")
        return _build(tp, value, path, issues, base)
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid("expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("expected a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid("expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid("expected a string")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise _Invalid("expected a non-empty path string")
        return (base / value).resolve() if not Path(value).is_absolute() else Path(value)
    if tp in (ipaddress.IPv4Network, ipaddress.IPv6Network):
        return _network(value)
    raise AssertionError(f"no converter for {tp!r}")  # pragma: no cover - a schema bug


def _network(value: Any) -> Network:
    if not isinstance(value, str):
        raise _Invalid("expected a network in CIDR form, such as '10.0.0.0/8' or '2001:db8::/32'")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise _Invalid(f"expected a network in CIDR form with no host bits set ({exc})") from None


def _build(cls: type[Any], data: Mapping[str, Any], path: list[str | int], issues: _Issues,
           base: Path) -> Any:
    """Build dataclass ``cls`` from a TOML table, collecting issues; raise _Invalid if any."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    before = len(issues.items)
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in fields:
            known = ", ".join(sorted(fields))
            issues.add([*path, raw_key], f"unknown key {raw_key!r}; the keys here are: {known}")
            continue
        meta = fields[key].metadata
        # An empty string means "not set" for optional paths, so a commented default can stay.
        if value == "" and typing.get_origin(hints[key]) in (types.UnionType, typing.Union):
            kwargs[key] = None
            continue
        try:
            converted = _convert(hints[key], value, [*path, raw_key], issues, base)
            if "convert" in meta:
                converted = meta["convert"](converted)
            if "check" in meta:
                meta["check"](converted)
            if "check_each" in meta:
                for i, item in enumerate(converted):
                    try:
                        meta["check_each"](item)
                    except ValueError as exc:
                        issues.add([*path, raw_key, i], f"{_show(item)} is not valid: {exc}")
        except (_Invalid, ValueError) as exc:
            issues.add([*path, raw_key], f"{_show(value)} is not valid: {exc}")
            continue
        except _Reported:
            continue
        kwargs[key] = converted
    given = {key.replace("-", "_") for key in data}
    for name, f in fields.items():
        if (name not in given and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            issues.add(path, f"missing required key {name!r}")
    if len(issues.items) > before:
        raise _Reported
    try:
        return cls(**kwargs)
    except ValueError as exc:
        issues.add(path, str(exc))
        raise _Reported from None


def _resolve_paths(obj: Any, base: Path) -> Any:
    """Resolve the relative paths a dataclass holds (defaults included) against ``base``."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Path) and not value.is_absolute():
            changes[f.name] = (base / value).resolve()
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            resolved = _resolve_paths(value, base)
            if resolved is not value:
                changes[f.name] = resolved
    return dataclasses.replace(obj, **changes) if changes else obj


def build_strict(cls: type[Any], data: Mapping[str, Any], *, file: Path, text: str = "",
                 base: Path | None = None) -> Any:
    """Build a frozen dataclass from a TOML table with this module's strict rules.

    Unknown keys, wrong types and failed field checks are issues naming the key path, the value
    and the expected form (and the line, given the file's ``text``); relative paths resolve
    against ``base``. Other tools of the project (the load tester's scenarios) use it too.

    Raises:
        ConfigError: listing every problem found.
    """
    issues = _Issues(file, text)
    try:
        return _build(cls, data, [], issues, (base or file.parent).resolve())
    except _Reported:
        raise ConfigError(issues.items) from None


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """Read a TOML file: its text (for line numbers) and its data.

    Raises:
        ConfigError: the file is missing, unreadable or not valid TOML (with the line).
    """
    return _read_toml(path)


def _read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(ConfigIssue(str(path), "", "file not found")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(ConfigIssue(str(path), "", f"cannot read the file: {exc}")) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        if line is None:
            found = re.search(r"line (\d+)", str(exc))
            line = int(found.group(1)) if found else None
        raise ConfigError(ConfigIssue(str(path), "", f"not valid TOML: {exc}", line)) from None


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``section.key=value`` overrides; values are TOML values, or else plain strings.

    Raises:
        ConfigError: an item without ``=`` or without a key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                ConfigIssue("--set", item, "expected section.key=value, such as listen.port=9000")
            )
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for dotted, value in overrides.items():
        table = data
        *parents, last = dotted.split(".")
        for name in parents:
            table = table.setdefault(name, {})
            if not isinstance(table, dict):
                raise ConfigError(ConfigIssue("--set", dotted, f"{name!r} is not a table"))
        table[last] = value


def load_config(path: Path | str, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load and validate the main configuration file.

    Args:
        path: the main TOML file.
        overrides: dotted keys to set over the file's values, validated like them.

    Returns:
        The frozen configuration; relative paths resolved against the file's directory.

    Raises:
        ConfigError: listing every problem found.
    """
    path = Path(path)
    text, data = _read_toml(path)
    if overrides:
        _apply_overrides(data, overrides)
    issues = _Issues(path, text)
    base = path.parent.resolve()
    try:
        config: Config = _build(Config, data, [], issues, base)
    except _Reported:
        raise ConfigError(issues.items) from None
    resolved: Config = _resolve_paths(config, base)
    return dataclasses.replace(resolved, source=path.resolve())


# --------------------------------------------------------------------------------------------------
# The restrictions file.

_RESTRICTION_KEYS = {
    "id", "mode", "regions", "meetings", "starts_at", "ends_at", "unknown", "anonymous", "exempt",
    "enforcement", "legal_basis", "authority", "notice", "notice_url",
}  # fmt: skip


def _timestamp(value: Any) -> float:
    """An RFC 3339 date-time (TOML offset date-time or string) as Unix seconds."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Invalid("expected an RFC 3339 date-time such as 2026-06-04T00:00:00Z") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise _Invalid("the date-time needs a UTC offset, such as 2026-06-04T00:00:00Z")
        return value.timestamp()
    if isinstance(value, date | time):
        raise _Invalid("expected a full date-time with a UTC offset, such as 2026-06-04T00:00:00Z")
    raise _Invalid("expected an RFC 3339 date-time such as 2026-06-04T00:00:00Z")


def _text(value: Any, *, required: bool) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    if required and not value.strip():
        raise _Invalid("expected non-empty text")
    return value.strip()


def _restriction(data: Any, path: list[str | int], issues: _Issues) -> Restriction | None:
    if not isinstance(data, dict):
        issues.add(path, f"{_show(data)} is not valid: expected a table ([[restriction]])")
        return None
    before = len(issues.items)
    for key in data:
        if key.replace("-", "_") not in _RESTRICTION_KEYS:
            known = ", ".join(sorted(_RESTRICTION_KEYS))
            issues.add([*path, key], f"unknown key {key!r}; the keys of a restriction are: {known}")
    get = {k.replace("-", "_"): v for k, v in data.items()}
    for required in ("id", "mode", "meetings", "legal_basis", "authority"):
        if required not in get:
            issues.add(path, f"missing required key {required!r}")
    kwargs: dict[str, Any] = {}

    def convert(key: str, fn: Callable[[Any], Any]) -> None:
        if key not in get:
            return
        try:
            kwargs[key] = fn(get[key])
        except (_Invalid, ValueError) as exc:
            issues.add([*path, key], f"{_show(get[key])} is not valid: {exc}")

    def enum_of(tp: type[enum.StrEnum]) -> Callable[[Any], Any]:
        def fn(value: Any) -> Any:
            try:
                return tp(value)
            except ValueError:
                raise _Invalid("expected one of " + ", ".join(repr(m.value) for m in tp)) from None

        return fn

    def listed(key: str, item: Callable[[Any], Any]) -> None:
        if key not in get:
            return
        value = get[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            issues.add([*path, key], f"{_show(value)} is not valid: expected a list of strings")
            return
        out = []
        for i, element in enumerate(value):
            try:
                out.append(item(element))
            except (_Invalid, ValueError) as exc:
                issues.add([*path, key, i], f"{_show(element)} is not valid: {exc}")
        kwargs[key] = out

    def region(value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid("expected a region code string such as 'CN' or 'US-CA'")
        return validate_region(value)

    def meeting(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid("expected a meeting id or glob pattern such as 'memorial-*'")
        return value.strip()

    convert("id", lambda v: _text(v, required=True))
    convert("mode", enum_of(Mode))
    convert("enforcement", enum_of(Enforcement))
    convert("unknown", enum_of(Treatment))
    convert("anonymous", enum_of(Treatment))
    convert("starts_at", _timestamp)
    convert("ends_at", _timestamp)
    convert("legal_basis", lambda v: _text(v, required=True))
    convert("authority", lambda v: _text(v, required=True))
    convert("notice", lambda v: _text(v, required=False))
    convert("notice_url", lambda v: _text(v, required=False) or None)
    listed("regions", region)
    listed("meetings", meeting)
    listed("exempt", _network)
    if len(issues.items) > before:
        return None
    kwargs["regions"] = frozenset(kwargs.get("regions", ()))
    kwargs["meetings"] = tuple(kwargs.get("meetings", ()))
    kwargs["exempt"] = tuple(kwargs.get("exempt", ()))
    try:
        return Restriction(**kwargs)
    except ValueError as exc:
        issues.add(path, str(exc))
        return None


def parse_restriction(data: Mapping[str, Any], source: str = "draft") -> Restriction:
    """Validate one restriction given as a mapping in the restrictions file's key format.

    Args:
        data: the keys of one ``[[restriction]]`` table.
        source: what to name as the file in messages (the admin API's draft).

    Raises:
        ConfigError: listing every problem, with key paths.
    """
    issues = _Issues(Path(source), "")
    restriction = _restriction(dict(data), [], issues)
    if restriction is None:
        raise ConfigError(issues.items or [ConfigIssue(source, "", "invalid restriction")])
    return restriction


def load_restrictions(path: Path | str) -> RestrictionSet:
    """Load and validate a restrictions file into an indexed, versioned set.

    The file holds ``[[restriction]]`` tables and an optional top-level ``version``; without one,
    the version is a digest of the file's bytes.

    Raises:
        ConfigError: listing every problem found.
    """
    path = Path(path)
    text, data = _read_toml(path)
    issues = _Issues(path, text)
    for key in data:
        if key not in ("restriction", "version"):
            issues.add([key], f"unknown key {key!r}; the file holds [[restriction]] tables and "
                              "an optional version")
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
        issues.add(["version"], f"{_show(version)} is not valid: expected a string or a number")
        version = None
    items = data.get("restriction", [])
    if not isinstance(items, list):
        issues.add(["restriction"], "expected [[restriction]] tables")
        items = []
    restrictions: list[Restriction] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        built = _restriction(item, ["restriction", i], issues)
        if built is None:
            continue
        if built.id in first_seen:
            line = _locate(text, ["restriction", first_seen[built.id]])
            where = f" at line {line}" if line else ""
            issues.add(["restriction", i, "id"],
                       f"duplicate id {built.id!r}: ids must be unique (first defined{where})")
            continue
        first_seen[built.id] = i
        restrictions.append(built)
    if issues.items:
        raise ConfigError(issues.items)
    if version is None:
        version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return RestrictionSet(restrictions, version=str(version))


def load_snapshot(path: Path | str, overrides: Mapping[str, Any] | None = None) -> Snapshot:
    """Load the main configuration and the restrictions it names, as one snapshot.

    Raises:
        ConfigError: listing every problem found in either file.
    """
    config = load_config(path, overrides)
    restrictions = load_restrictions(config.restrictions.path)
    digest = hashlib.sha256()
    for source in (config.source, config.restrictions.path):
        assert source is not None
        digest.update(source.read_bytes())
    if overrides:
        digest.update(repr(sorted(overrides.items())).encode())
    return Snapshot(config, restrictions, digest.hexdigest()[:12])

