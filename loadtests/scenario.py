"""Scenario files: what a join-storm run does, as frozen dataclasses loaded strictly from TOML.

A scenario names the target (a proxy the tool starts, or one already running), the meetings and
how participants spread over them, the region mix (each region a pool of source addresses), the
arrival profile, how long participants stay, their signals, reconnect behaviour, timed actions
(restrictions switched on or off mid-run), the checks and the latency objectives. Loading is
strict, like the proxy's own configuration: an unknown key, a wrong type or a bad value is an
error naming the file, the key path, the bad value and what was expected, and every problem is
collected before :class:`~proxy.errors.ConfigError` is raised. Relative paths are resolved
against the scenario file's directory.

Restrictions files given to the target may hold time templates such as ``"{{T+4}}"`` where an
RFC 3339 date-time is expected: :func:`render_restrictions` replaces them with the run's start
time plus that many seconds, so a restriction can come into force a few seconds into a run.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.config import at_least, build_strict, check, non_negative, positive, read_toml

__all__ = [
    "ActionKind",
    "ActionSpec",
    "ArrivalKind",
    "ArrivalSpec",
    "CapacitySpec",
    "CheckSpec",
    "GeneratorSpec",
    "MeetingGroup",
    "ParticipantsSpec",
    "Protocol",
    "Range",
    "ReconnectSpec",
    "RegionPool",
    "ReloadMode",
    "RunSpec",
    "Scenario",
    "SignalSpec",
    "SloSpec",
    "Spread",
    "TargetSpec",
    "WaveSpec",
    "has_templates",
    "load_scenario",
    "render_restrictions",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_TEMPLATE = re.compile(r"\{\{\s*T\s*([+-]\s*\d+(?:\.\d+)?)?\s*\}\}")


class Protocol(enum.StrEnum):
    """The signaling protocol participants speak."""

    DEMO_JSON = "demo-json"


class ArrivalKind(enum.StrEnum):
    """How join times are laid out."""

    CONSTANT = "constant"
    RAMP = "ramp"
    SPIKE = "spike"
    TRACE = "trace"


class Spread(enum.StrEnum):
    """How participants of a meeting group spread over its meetings."""

    EVEN = "even"
    ZIPF = "zipf"


class ActionKind(enum.StrEnum):
    """What a timed action does to the target."""

    RESTRICTIONS = "restrictions"  # write a restrictions file over the target's
    RELOAD = "reload"  # ask the admin endpoint to reload


class ReloadMode(enum.StrEnum):
    """How the target learns about a rewritten restrictions file."""

    WATCH = "watch"  # the proxy's own file watch: in force within check.reload_grace
    ADMIN = "admin"  # POST /v1/reload with a bearer token: in force when it answers
    NONE = "none"  # the file is only rewritten: in force after a later "reload" action


# --------------------------------------------------------------------------------------------------
# Field checks: each raises ValueError naming the expected form.


def _fraction(value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError("expected a fraction from 0 to 1")


@dataclass(frozen=True, slots=True)
class Range:
    """A uniform range of values; a single number in TOML is a range of one value.

    Raises:
        ValueError: ``low`` above ``high`` or a negative bound.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if self.low < 0 or self.high < 0:
            raise ValueError("expected values of 0 or more")
        if self.low > self.high:
            raise ValueError(f"expected [low, high] with low <= high, got "
                             f"[{self.low}, {self.high}]")

    @property
    def mean(self) -> float:
        """The middle of the range."""
        return (self.low + self.high) / 2

    @classmethod
    def from_toml(cls, value: object) -> Range:
        """A number (a range of one value) or a ``[low, high]`` pair.

        Raises:
            ValueError: anything else, or a range that is not valid.
        """
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(float(value), float(value))
        if (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            return cls(float(value[0]), float(value[1]))
        raise ValueError("expected a number or [low, high]")


# --------------------------------------------------------------------------------------------------
# The scenario. Field names are the TOML keys (dashes in TOML become underscores here).


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """The proxy under test.

    Attributes:
        start: start the proxy (``geogate serve``) and a demo meeting server as processes.
        url: the proxy's ws:// URL when it is already running (``start = false``).
        config: the proxy's main configuration file; with ``start`` it is the file the proxy is
            started with (port, upstream and restrictions path are overridden); without, it tells
            the checker the GeoIP settings the proxy uses.
        restrictions: the restrictions file the target enforces (may hold ``{{T+n}}`` templates);
            default: the one the configuration names.
        geoip_csv: build the GeoIP database from this CSV into the run folder and use it.
        set: more configuration overrides for a started proxy, dotted key to value.
        cpu: pin a started proxy to this CPU.
        demo_upstream: start the demo meeting server as the upstream (with ``start``).
        upstream_url: the upstream for a started proxy when ``demo_upstream`` is false.
        admin_url: the admin endpoint (``http://host:port``) for reload actions.
        admin_token_file: the file holding the admin bearer token.
        log_level: the started proxy's log level.
        path: the request target participants connect to.
    """

    start: bool = True
    url: str | None = None
    config: Path | None = None
    restrictions: Path | None = None
    geoip_csv: Path | None = None
    set: Mapping[str, Any] = field(default_factory=dict)
    cpu: int | None = None
    demo_upstream: bool = True
    upstream_url: str | None = None
    admin_url: str | None = None
    admin_token_file: Path | None = None
    log_level: str = "INFO"
    path: str = "/"

    def __post_init__(self) -> None:
        if self.config is None:
            raise ValueError("config: the proxy's configuration file is required (the checker "
                             "reads its GeoIP settings and restrictions)")
        if not self.start and not self.url:
            raise ValueError("url: required when start = false")
        if self.url is not None and not re.fullmatch(r"wss?://[^/\s]+(/\S*)?", self.url):
            raise ValueError(f"url: {self.url!r} is not a ws:// URL")
        if self.start and not self.demo_upstream and not self.upstream_url:
            raise ValueError("upstream_url: required when demo_upstream = false")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level: {self.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
        if not self.path.startswith("/"):
            raise ValueError(f"path: {self.path!r} must start with /")
        if self.cpu is not None and self.cpu < 0:
            raise ValueError(f"cpu: {self.cpu} is not a CPU number")
        object.__setattr__(self, "set", types.MappingProxyType(dict(self.set)))


@dataclass(frozen=True, slots=True)
class ParticipantsSpec:
    """How many participants take part and how long each stays once admitted."""

    count: int = field(default=100, metadata=check(at_least(1)))
    stay: Range = Range(10.0, 10.0)
    id_prefix: str = "p"


@dataclass(frozen=True, slots=True)
class MeetingGroup:
    """A group of meetings named from a template; ``{n}`` is 1..count.

    Raises:
        ValueError: a template without ``{n}`` for more than one meeting.
    """

    name: str
    count: int = field(default=1, metadata=check(at_least(1)))
    share: float = field(default=1.0, metadata=check(positive))
    spread: Spread = Spread.EVEN
    zipf_s: float = field(default=1.0, metadata=check(positive))

    def __post_init__(self) -> None:
        if self.count > 1 and "{n}" not in self.name:
            raise ValueError(f"name: {self.name!r} needs {{n}} to name {self.count} meetings")
        if not self.name.strip():
            raise ValueError("name: expected a meeting id template such as 'memorial-{n}'")

    def meetings(self) -> list[str]:
        """The meeting ids of the group."""
        return [self.name.replace("{n}", str(n)) for n in range(1, self.count + 1)]


@dataclass(frozen=True, slots=True)
class RegionPool:
    """A share of participants and the source addresses they come from.

    Attributes:
        name: a label for reports.
        share: the relative share of participants.
        networks: the pool; participants take addresses spread across it.
        forwarded: the addresses go in X-Forwarded-For from a trusted load-generator address
            instead of being bound as the source (for regions outside loopback).
        region: if given, every pool address must resolve to a location this code covers.
    """

    name: str
    networks: tuple[Network, ...]
    share: float = field(default=1.0, metadata=check(positive))
    forwarded: bool = False
    region: str | None = None

    def __post_init__(self) -> None:
        if not self.networks:
            raise ValueError("networks: expected at least one network in CIDR form")
        if not self.forwarded:
            for network in self.networks:
                if not network.is_loopback:
                    raise ValueError(
                        f"networks: {network} is not loopback; bound source addresses must be "
                        "on this machine (use forwarded = true for other regions)"
                    )


@dataclass(frozen=True, slots=True)
class ArrivalSpec:
    """When participants join.

    Attributes:
        kind: constant rate, linear ramp, spike, or a recorded trace.
        duration: seconds over which the participants arrive (with ``rate`` unset).
        rate: joins per second (constant; the ramp's start), instead of ``duration``.
        rate_end: the ramp's final rate.
        poisson: random (exponential) gaps instead of even ones.
        spike_at: when the spike begins, in seconds.
        spike_width: how long the spike lasts.
        spike_fraction: the share of participants arriving in the spike.
        trace: the trace file to replay (kind = "trace").
        speed: replay speed: 2 replays twice as fast.
    """

    kind: ArrivalKind = ArrivalKind.CONSTANT
    duration: float | None = None
    rate: float | None = None
    rate_end: float | None = None
    poisson: bool = False
    spike_at: float = field(default=0.0, metadata=check(non_negative))
    spike_width: float = field(default=1.0, metadata=check(positive))
    spike_fraction: float = field(default=0.5, metadata=check(_fraction))
    trace: Path | None = None
    speed: float = field(default=1.0, metadata=check(positive))

    def __post_init__(self) -> None:
        for name in ("duration", "rate", "rate_end"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: expected a number greater than 0, got {value}")
        if self.kind is ArrivalKind.TRACE:
            if self.trace is None:
                raise ValueError("trace: required with kind = 'trace'")
            return
        if (self.duration is None) == (self.rate is None):
            raise ValueError("give exactly one of duration and rate")
        if self.kind is ArrivalKind.RAMP and (self.rate_end is None or self.rate is None):
            raise ValueError("a ramp needs rate (start) and rate_end")


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """Sequence-numbered signals each admitted participant sends to its meeting ("*").

    Attributes:
        interval: mean seconds between signals; 0 disables signals.
        size: the message size in bytes (a range: each signal draws one).
        round_trip_every: every n-th signal tick also sends a signal to the participant itself,
            whose return times the signal round trip; 0 disables.
    """

    interval: float = field(default=0.0, metadata=check(non_negative))
    size: Range = Range(100.0, 100.0)
    round_trip_every: int = field(default=1, metadata=check(at_least(0)))

    @property
    def enabled(self) -> bool:
        """Whether participants signal at all."""
        return self.interval > 0


@dataclass(frozen=True, slots=True)
class WaveSpec:
    """A mass reconnect: at ``at``, a fraction of connected participants drop and rejoin."""

    at: float = field(metadata=check(non_negative))
    fraction: float = field(default=1.0, metadata=check(_fraction))
    spread: float = field(default=1.0, metadata=check(non_negative))


@dataclass(frozen=True, slots=True)
class ReconnectSpec:
    """Reconnect behaviour.

    Attributes:
        probability: the chance a participant's connection drops once during its stay.
        delay: seconds from a drop to the rejoin.
        retries: retries after a failed join (connect error, timeout, 503, 1014), not a denial.
        backoff: the first retry's delay; it doubles each retry (with jitter) up to backoff_max.
        backoff_max: the longest retry delay.
        message: what a rejoin sends: "resume" or "join".
        wave: mass reconnect waves.
    """

    probability: float = field(default=0.0, metadata=check(_fraction))
    delay: Range = Range(0.2, 1.0)
    retries: int = field(default=0, metadata=check(at_least(0)))
    backoff: float = field(default=0.5, metadata=check(positive))
    backoff_max: float = field(default=5.0, metadata=check(positive))
    message: str = "resume"
    wave: tuple[WaveSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.message not in ("resume", "join"):
            raise ValueError(f"message: {self.message!r} is not 'resume' or 'join'")


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """A timed action during the run.

    Attributes:
        at: seconds into the run.
        kind: "restrictions" writes ``file`` over the target's restrictions file, then reloads
            as ``reload`` says; "reload" only calls the admin reload.
        file: the restrictions file to install (may hold ``{{T+n}}`` templates).
        reload: how the target learns of the new file.
        expect: the restrictions the checker expects afterwards (default: ``file``).
        label: a name for reports and plots.
    """

    at: float = field(metadata=check(non_negative))
    kind: ActionKind = ActionKind.RESTRICTIONS
    file: Path | None = None
    reload: ReloadMode = ReloadMode.WATCH
    expect: Path | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind is ActionKind.RESTRICTIONS and self.file is None:
            raise ValueError("file: required for a 'restrictions' action")
        if self.kind is ActionKind.RELOAD and self.file is not None:
            raise ValueError("file: a 'reload' action installs no file (use kind = "
                             "'restrictions' with reload = 'admin')")


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How outcomes are checked.

    Attributes:
        restrictions: the restrictions the checker expects at the start (default: the target's).
        join_timeout: seconds for a join to be answered before it counts as an error.
        eviction_timeout: seconds after a restriction starts by which every session it bars
            must have been closed.
        reload_grace: after a rewrite with reload = "watch", seconds during which either the old
            or the new restrictions may be in force.
        max_errors: errors (not mismatches) tolerated before the run fails.
    """

    restrictions: Path | None = None
    join_timeout: float = field(default=10.0, metadata=check(positive))
    eviction_timeout: float = field(default=5.0, metadata=check(positive))
    reload_grace: float = field(default=5.0, metadata=check(non_negative))
    max_errors: int = field(default=0, metadata=check(at_least(0)))


@dataclass(frozen=True, slots=True)
class SloSpec:
    """Latency objectives; a run that misses one fails (exit code 3)."""

    admitted_p99_ms: float | None = None
    denied_p99_ms: float | None = None


@dataclass(frozen=True, slots=True)
class GeneratorSpec:
    """The load generator itself.

    Attributes:
        workers: worker processes, each taking a share of the participants.
        cpus: CPUs the workers may run on (default: every CPU but the proxy's).
        forwarded_sources: the trusted addresses that send X-Forwarded-For for forwarded pools.
        max_lag_ms: a p99 start lag above this means the requested arrival rate was not kept.
        gc: leave the cyclic garbage collector on in workers (off by default: its pauses
            would show as proxy latency).
    """

    workers: int = field(default=1, metadata=check(at_least(1)))
    cpus: tuple[int, ...] = ()
    forwarded_sources: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.2/32"),)
    max_lag_ms: float = field(default=50.0, metadata=check(positive))
    gc: bool = False

    def __post_init__(self) -> None:
        for network in self.forwarded_sources:
            if not network.is_loopback:
                raise ValueError(f"forwarded_sources: {network} is not a loopback network")


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Run-wide settings.

    Attributes:
        seed: the random seed; the same seed gives the same plan.
        duration: seconds until open sessions are closed (default: the last planned event plus
            the eviction timeout).
        start_delay: seconds between rendering ``{{T+n}}`` templates and the run's start.
        drain_timeout: seconds to wait for sessions to close at the end.
    """

    seed: int = 1
    duration: float | None = None
    start_delay: float = field(default=4.0, metadata=check(non_negative))
    drain_timeout: float = field(default=10.0, metadata=check(positive))


@dataclass(frozen=True, slots=True)
class CapacitySpec:
    """The search for the highest sustainable join rate (``--find-capacity``).

    Attributes:
        start_rate: the first rate tried, joins per second.
        max_rate: the highest rate tried.
        duration: seconds of arrivals per trial.
        stay: how long participants stay in a trial (default: ``[participants] stay``, so a
            trial at the scenario's own rate is the scenario's storm).
        precision: the search stops when fail/pass - 1 is at most this.
        max_trials: the most trials run (each of ``repeats`` runs).
        repeats: runs per trial; the trial's p99 is their median, so one noisy run (this kind of
            machine swings by 1.8x within seconds) does not decide the search alone.
        p99_ms: the p99 time-to-admitted a sustainable rate keeps under.
    """

    start_rate: float = field(default=100.0, metadata=check(positive))
    max_rate: float = field(default=5000.0, metadata=check(positive))
    duration: float = field(default=6.0, metadata=check(positive))
    stay: Range | None = None
    precision: float = field(default=0.1, metadata=check(positive))
    max_trials: int = field(default=10, metadata=check(at_least(1)))
    repeats: int = field(default=1, metadata=check(at_least(1)))
    p99_ms: float = field(default=250.0, metadata=check(positive))


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole scenario, as loaded from one file."""

    target: TargetSpec
    meeting: tuple[MeetingGroup, ...]
    region: tuple[RegionPool, ...]
    name: str = "scenario"
    description: str = ""
    protocol: Protocol = Protocol.DEMO_JSON
    participants: ParticipantsSpec = ParticipantsSpec()
    arrival: ArrivalSpec = ArrivalSpec(duration=10.0)
    signals: SignalSpec = SignalSpec()
    reconnect: ReconnectSpec = ReconnectSpec()
    action: tuple[ActionSpec, ...] = ()
    check: CheckSpec = CheckSpec()
    slo: SloSpec = SloSpec()
    generator: GeneratorSpec = GeneratorSpec()
    run: RunSpec = RunSpec()
    capacity: CapacitySpec = CapacitySpec()
    source: Path | None = field(default=None, metadata={"internal": True})

    def __post_init__(self) -> None:
        if not self.meeting:
            raise ValueError("expected at least one [[meeting]] group")
        if not self.region:
            raise ValueError("expected at least one [[region]] pool")
        names = [pool.name for pool in self.region]
        if len(set(names)) != len(names):
            raise ValueError(f"region names must be unique, got {names}")
        meetings = [m for group in self.meeting for m in group.meetings()]
        if len(set(meetings)) != len(meetings):
            raise ValueError("meeting groups name the same meeting twice")
        object.__setattr__(self, "action", tuple(sorted(self.action, key=lambda a: a.at)))

    @property
    def needs_admin(self) -> bool:
        """Whether an action calls the admin reload endpoint."""
        return any(a.kind is ActionKind.RELOAD or a.reload is ReloadMode.ADMIN
                   for a in self.action)


# --------------------------------------------------------------------------------------------------
# Loading.


def load_scenario(path: Path | str) -> Scenario:
    """Load and validate a scenario file.

    Args:
        path: the TOML file.

    Returns:
        The frozen scenario; relative paths resolved against the file's directory.

    Raises:
        ConfigError: listing every problem found.
    """
    path = Path(path)
    text, data = read_toml(path)
    scenario: Scenario = build_strict(Scenario, data, file=path, text=text)
    return dataclasses.replace(scenario, source=path.resolve())


def render_restrictions(text: str, run_start: float) -> str:
    """Replace ``{{T}}`` and ``{{T+n}}`` / ``{{T-n}}`` with RFC 3339 UTC date-times.

    Args:
        text: a restrictions file's text.
        run_start: the run's start, Unix seconds.

    Returns:
        The text with every template replaced by ``run_start`` plus n seconds (microseconds kept).
    """

    def replace(match: re.Match[str]) -> str:
        offset = float(match.group(1).replace(" ", "")) if match.group(1) else 0.0
        return datetime.fromtimestamp(run_start + offset, UTC).isoformat()

    return _TEMPLATE.sub(replace, text)


def has_templates(text: str) -> bool:
    """Tell whether a restrictions text holds ``{{T...}}`` templates."""
    return _TEMPLATE.search(text) is not None
