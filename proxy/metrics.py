"""Metrics: a tiny Prometheus registry and the proxy's metric names, with no I/O.

A :class:`Registry` holds metric families in registration order and renders them in the
Prometheus text exposition format 0.0.4 (:meth:`Registry.expose`). Families:

* :class:`Counter` (``inc``), :class:`Gauge` (``set``, ``inc``, ``dec``) and :class:`Histogram`
  (``observe``; fixed buckets rendered as cumulative ``_bucket{le=...}`` plus ``_sum`` and
  ``_count``), whose values live here;
* :class:`CallbackCounter` and :class:`CallbackGauge`, whose values are read from a function when
  the registry is exposed. Counters that already live on the hot path (relay byte counts, GeoIP
  resolver counters, the server's connection count) are wired in this way and cost nothing until
  a scrape.

A family with label names hands out one child per label set (``labels(name=value)``); a child can
be kept and reused so the hot path pays one attribute update, not a lookup. Label cardinality is
bounded: a label may be limited to a closed set of values, and each family refuses more than
``max_series`` children. Never label by meeting or participant: those are unbounded.

:class:`ProxyMetrics` creates every geogate metric on one registry, so the names live in one place.
"""

from __future__ import annotations

import abc
import bisect
import enum
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ClassVar, Generic, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_SERIES",
    "EVICTION_LATENCY_BUCKETS",
    "CallbackCounter",
    "CallbackGauge",
    "Counter",
    "Gauge",
    "GeoIPDatabase",
    "Histogram",
    "JoinOutcome",
    "MetricType",
    "ProxyMetrics",
    "Registry",
    "RelayDirection",
    "ReloadResult",
    "format_value",
]

#: The Content-Type of :meth:`Registry.expose` output (text exposition format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Children a labelled family accepts before ``labels()`` refuses a new label set.
DEFAULT_MAX_SERIES = 1000

#: Seconds from a restriction coming into force to the participant's connection being closed.
EVICTION_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class MetricType(enum.StrEnum):
    """The ``# TYPE`` of a family."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


def format_value(value: float) -> str:
    """Render a sample value or ``le`` bound the way Prometheus client libraries do.

    Python's ``repr`` for finite values (``1.0``, ``0.005``), switched to Go's exponent form for
    values of 1e6 and up (``1.5e+06``), and ``+Inf``, ``-Inf`` and ``NaN`` as the format requires.

    Args:
        value: the number.

    Returns:
        Its text form.
    """
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    # Go switches to exponents sooner than Python; only positive values matter for `le`.
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _escape_help(text: str) -> str:
    # Exposition format 0.0.4: in HELP, backslash and line feed are escaped.
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    # Exposition format 0.0.4: in label values, backslash, double quote and line feed are escaped.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs)
    return f"{{{inner}}}" if inner else ""


# --------------------------------------------------------------------------------------------------
# Children: one time series (or one histogram) each.


class CounterChild:
    """One counter series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (0 or more: a counter only goes up).

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"a counter only goes up; cannot add {n}")
        self.value += n


class GaugeChild:
    """One gauge series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, v: float) -> None:
        """Set the value."""
        self.value = float(v)

    def inc(self, n: float = 1) -> None:
        """Add ``n``."""
        self.value += n

    def dec(self, n: float = 1) -> None:
        """Subtract ``n``."""
        self.value -= n


class HistogramChild:
    """One histogram: per-bucket counts (cumulated at exposition), the sum and the count."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        """Record one observation."""
        # `le` is inclusive: v goes in the first bucket whose bound is >= v.
        self.buckets[bisect.bisect_left(self.bounds, v)] += 1
        self.count += 1
        self.sum += v


class CallbackChild:
    """One series whose value is read from a function at exposition time."""

    __slots__ = ("function",)

    def __init__(self) -> None:
        self.function: Callable[[], float] | None = None

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from ``function`` when the registry is exposed."""
        self.function = function


# --------------------------------------------------------------------------------------------------
# Families.

C = TypeVar("C", CounterChild, GaugeChild, HistogramChild, CallbackChild)

#: One sample: name suffix, label pairs, value.
_Sample = tuple[str, tuple[tuple[str, str], ...], float]


class _Family(abc.ABC, Generic[C]):
    """A named metric with zero or more label names, and its children by label values."""

    type: ClassVar[MetricType]
    reserved_labels: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str] = (),
        *,
        allowed: Mapping[str, Iterable[str]] | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        """Create a family.

        Args:
            name: the metric name (``[a-zA-Z_:][a-zA-Z0-9_:]*``).
            help: the ``# HELP`` text.
            labelnames: label names, in exposition order.
            allowed: for some labels, the only values ``labels()`` accepts.
            max_series: how many label sets ``labels()`` accepts in all.

        Raises:
            ValueError: a bad metric or label name, a duplicate label, ``allowed`` naming a label
                the family does not have, or ``max_series`` under 1.
        """
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(
                f"metric name {name!r} is not valid: expected [a-zA-Z_:][a-zA-Z0-9_:]*"
            )
        names = tuple(labelnames)
        for label in names:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{name}: label name {label!r} is not valid: expected "
                                 "[a-zA-Z_][a-zA-Z0-9_]* not starting with __")
            if label in self.reserved_labels:
                raise ValueError(f"{name}: label name {label!r} is reserved for {self.type}s")
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: duplicate label names in {names}")
        limits = {key: frozenset(values) for key, values in (allowed or {}).items()}
        for key, values in limits.items():
            if key not in names:
                raise ValueError(f"{name}: allowed values given for {key!r}, not one of {names}")
            if not all(isinstance(value, str) for value in values):
                raise ValueError(f"{name}: allowed values for {key!r} must be strings")
        if max_series < 1:
            raise ValueError(f"{name}: max_series must be at least 1, not {max_series}")
        self.name = name
        self.help = help
        self.labelnames = names
        self.allowed = limits
        self.max_series = max_series
        self._children: dict[tuple[str, ...], C] = {}
        if not names:
            self._children[()] = self._new_child()

    @abc.abstractmethod
    def _new_child(self) -> C:
        """A new child of this family's type."""

    def labels(self, **values: str) -> C:
        """The child for these label values, created on first use; keep it to skip the lookup.

        Args:
            values: one value per label name.

        Returns:
            The child.

        Raises:
            ValueError: the names do not match the family's, a value is not a string or not an
                allowed one, or the family already has ``max_series`` children.
        """
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= self.max_series:
                raise ValueError(f"{self.name}: more than {self.max_series} label sets; label "
                                 "values must come from a bounded set")
            child = self._children[key] = self._new_child()
        return child

    def remove(self, **values: str) -> None:
        """Drop the child for these label values (its series disappears from the exposition).

        Raises:
            ValueError: the names do not match the family's.
        """
        self._children.pop(self._key(values), None)

    def retain(self, label: str, keep: Callable[[str], bool]) -> None:
        """Drop every child whose value for ``label`` fails ``keep``.

        Args:
            label: one of the label names.
            keep: says which values stay.

        Raises:
            ValueError: ``label`` is not one of the family's label names.
        """
        if label not in self.labelnames:
            raise ValueError(f"{self.name}: no label {label!r}; labels are {self.labelnames}")
        index = self.labelnames.index(label)
        for key in [key for key in self._children if not keep(key[index])]:
            del self._children[key]

    def clear(self) -> None:
        """Drop every child of a labelled family."""
        if self.labelnames:
            self._children.clear()

    def __len__(self) -> int:
        return len(self._children)

    def _key(self, values: Mapping[str, str]) -> tuple[str, ...]:
        if len(values) != len(self.labelnames) or not all(n in values for n in self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got "
                             f"{tuple(values)}")
        key = []
        for label in self.labelnames:
            value = values[label]
            if not isinstance(value, str):
                raise ValueError(f"{self.name}: label {label} must be a string, not "
                                 f"{type(value).__name__}")
            allowed = self.allowed.get(label)
            if allowed is not None and value not in allowed:
                raise ValueError(f"{self.name}: label {label}={value!r} is not one of "
                                 f"{sorted(allowed)}")
            key.append(str(value))  # a StrEnum member renders as its value
        return tuple(key)

    def _only(self) -> C:
        try:
            return self._children[()]
        except KeyError:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use labels()") from None

    def _pairs(self, key: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        return tuple(zip(self.labelnames, key, strict=True))

    @abc.abstractmethod
    def samples(self) -> Iterator[_Sample]:
        """The family's samples as (name suffix, label pairs, value), in exposition order."""

    def expose(self) -> str:
        """The family in text format 0.0.4: HELP, TYPE, then one line per sample."""
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        lines.extend(
            f"{self.name}{suffix}{_label_text(pairs)} {format_value(value)}"
            for suffix, pairs, value in self.samples()
        )
        return "\n".join(lines) + "\n"


class Counter(_Family[CounterChild]):
    """A value that only goes up (restarts at 0 with the process)."""

    type = MetricType.COUNTER

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, n: float = 1) -> None:
        """Add ``n`` to an unlabelled counter.

        Raises:
            ValueError: ``n`` is negative, or the family has labels.
        """
        self._only().inc(n)

    def samples(self) -> Iterator[_Sample]:
        for key, child in self._children.items():
            yield "", self._pairs(key), child.value


class Gauge(_Family[GaugeChild]):
    """A value that goes up and down."""

    type = MetricType.GAUGE

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, v: float) -> None:
        """Set an unlabelled gauge.

        Raises:
            ValueError: the family has labels.
        """
        self._only().set(v)

    def inc(self, n: float = 1) -> None:
        """Add ``n`` to an unlabelled gauge.

        Raises:
            ValueError: the family has labels.
        """
        self._only().inc(n)

    def dec(self, n: float = 1) -> None:
        """Subtract ``n`` from an unlabelled gauge.

        Raises:
            ValueError: the family has labels.
        """
        self._only().dec(n)

    def samples(self) -> Iterator[_Sample]:
        for key, child in self._children.items():
            yield "", self._pairs(key), child.value


class Histogram(_Family[HistogramChild]):
    """Observations counted in fixed buckets, with their sum and count."""

    type = MetricType.HISTOGRAM
    reserved_labels = frozenset({"le"})

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str] = (),
        *,
        buckets: Iterable[float],
        allowed: Mapping[str, Iterable[str]] | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        """Create a histogram.

        Args:
            name: the metric name; samples get ``_bucket``, ``_sum`` and ``_count`` appended.
            help: the ``# HELP`` text.
            labelnames: label names (``le`` is reserved).
            buckets: finite upper bounds, strictly increasing; ``+Inf`` is always added.
            allowed: for some labels, the only values ``labels()`` accepts.
            max_series: how many label sets ``labels()`` accepts in all.

        Raises:
            ValueError: as for every family, or buckets empty, not finite or not increasing.
        """
        bounds = tuple(float(b) for b in buckets)
        if not bounds:
            raise ValueError(f"{name}: a histogram needs at least one bucket")
        if not all(math.isfinite(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be finite (+Inf is added)")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be strictly increasing, not {bounds}")
        self.buckets = bounds
        super().__init__(name, help, labelnames, allowed=allowed, max_series=max_series)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def observe(self, v: float) -> None:
        """Record one observation in an unlabelled histogram.

        Raises:
            ValueError: the family has labels.
        """
        self._only().observe(v)

    def samples(self) -> Iterator[_Sample]:
        for key, child in self._children.items():
            pairs = self._pairs(key)
            total = 0
            for bound, count in zip((*child.bounds, math.inf), child.buckets, strict=True):
                total += count
                yield "_bucket", (*pairs, ("le", format_value(bound))), total
            yield "_sum", pairs, child.sum
            yield "_count", pairs, child.count


class _Callback(_Family[CallbackChild]):
    """A family whose values are read from functions when the registry is exposed."""

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str] = (),
        *,
        function: Callable[[], float] | None = None,
        allowed: Mapping[str, Iterable[str]] | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        """Create a callback family.

        Args:
            name: the metric name.
            help: the ``# HELP`` text.
            labelnames: label names; each child gets its function with ``set_function``.
            function: for an unlabelled family, where its value is read from.
            allowed: for some labels, the only values ``labels()`` accepts.
            max_series: how many label sets ``labels()`` accepts in all.

        Raises:
            ValueError: as for every family, or ``function`` given to a labelled family.
        """
        super().__init__(name, help, labelnames, allowed=allowed, max_series=max_series)
        if function is not None:
            self._only().set_function(function)

    def _new_child(self) -> CallbackChild:
        return CallbackChild()

    def set_function(self, function: Callable[[], float]) -> None:
        """Read an unlabelled family's value from ``function``.

        Raises:
            ValueError: the family has labels.
        """
        self._only().set_function(function)

    def samples(self) -> Iterator[_Sample]:
        # A child without a function yet has no value to show.
        for key, child in self._children.items():
            if child.function is not None:
                yield "", self._pairs(key), float(child.function())


class CallbackCounter(_Callback):
    """A counter read from a function (which must never go down while the process lives).

    A sum over open sessions goes down when a session closes; add closed sessions' totals to an
    accumulator when they close and return accumulator plus open sessions.
    """

    type = MetricType.COUNTER


class CallbackGauge(_Callback):
    """A gauge read from a function."""

    type = MetricType.GAUGE


AnyFamily = Counter | Gauge | Histogram | CallbackCounter | CallbackGauge
F = TypeVar("F", Counter, Gauge, Histogram, CallbackCounter, CallbackGauge)


class Registry:
    """The metric families of one process, in registration order."""

    def __init__(self) -> None:
        self._families: dict[str, AnyFamily] = {}

    def register(self, family: F) -> F:
        """Add a family and return it.

        Raises:
            ValueError: a family of that name is already registered.
        """
        if family.name in self._families:
            raise ValueError(f"metric {family.name!r} is already registered")
        self._families[family.name] = family
        return family

    def get(self, name: str) -> AnyFamily:
        """The family registered under ``name``.

        Raises:
            KeyError: none is.
        """
        return self._families[name]

    def __iter__(self) -> Iterator[AnyFamily]:
        return iter(self._families.values())

    def expose(self) -> str:
        """Every family in text exposition format 0.0.4 (serve with :data:`CONTENT_TYPE`).

        Callback functions are called now; an exception from one propagates.
        """
        return "".join(family.expose() for family in self._families.values())


# --------------------------------------------------------------------------------------------------
# geogate's metrics.


class JoinOutcome(enum.StrEnum):
    """``outcome`` of ``geogate_joins_total``."""

    ADMIT = "admit"
    DENY = "deny"
    DENY_REUSED = "deny_reused"  # a recent denial for the same address and meeting, reused
    WOULD_DENY = "would_deny"  # a dry-run restriction matched; admitted


class RelayDirection(enum.StrEnum):
    """``direction`` of the relay counters."""

    CLIENT_TO_UPSTREAM = "client_to_upstream"
    UPSTREAM_TO_CLIENT = "upstream_to_client"


class GeoIPDatabase(enum.StrEnum):
    """``database`` of ``geogate_geoip_database_build_timestamp_seconds``."""

    MAIN = "main"
    ANONYMOUS = "anonymous"


class ReloadResult(enum.StrEnum):
    """``result`` of ``geogate_reloads_total``."""

    OK = "ok"
    ERROR = "error"


def _values(choice: type[enum.StrEnum]) -> frozenset[str]:
    return frozenset(member.value for member in choice)


class ProxyMetrics:
    """Every geogate metric, created on one registry; the proxy wires values in.

    Counter and gauge families are updated by the proxy (keep children from ``labels()`` on hot
    paths); callback families get functions with ``set_function`` (``labels(...).set_function``
    when labelled) and are read at scrape time. ``restriction`` labels take restriction ids from
    the config, or ``""`` when no restriction applies; call :meth:`retain_restrictions` after a
    reload so series for removed restrictions do not pile up.

    Args:
        registry: where to create them; a new one by default.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        r = self.registry = registry if registry is not None else Registry()
        self.sessions_open = r.register(CallbackGauge(
            "geogate_sessions_open", "Admitted sessions being relayed."))
        self.connections = r.register(CallbackCounter(
            "geogate_connections_total", "Client connections accepted."))
        self.joins = r.register(Counter(
            "geogate_joins_total", "Join decisions by outcome and deciding restriction.",
            ("outcome", "restriction"), allowed={"outcome": _values(JoinOutcome)}))
        self.evictions = r.register(Counter(
            "geogate_evictions_total",
            "Participants evicted because a restriction came into force.", ("restriction",)))
        self.would_evictions = r.register(Counter(
            "geogate_would_evictions_total",
            "Participants a dry-run restriction would have evicted.", ("restriction",)))
        self.eviction_latency = r.register(Histogram(
            "geogate_eviction_latency_seconds",
            "Seconds from a restriction coming into force to the participant being closed.",
            buckets=EVICTION_LATENCY_BUCKETS))
        direction = {"direction": _values(RelayDirection)}
        self.relay_messages = r.register(CallbackCounter(
            "geogate_relay_messages_total", "Data messages relayed, by direction.",
            ("direction",), allowed=direction))
        self.relay_bytes = r.register(CallbackCounter(
            "geogate_relay_bytes_total", "Bytes relayed (frames as received), by direction.",
            ("direction",), allowed=direction))
        self.geoip_lookups = r.register(CallbackCounter(
            "geogate_geoip_lookups_total", "GeoIP lookups, cached or not."))
        self.geoip_cache_hits = r.register(CallbackCounter(
            "geogate_geoip_cache_hits_total", "GeoIP lookups answered from the cache."))
        self.geoip_errors = r.register(CallbackCounter(
            "geogate_geoip_errors_total", "GeoIP lookups that failed."))
        self.geoip_build = r.register(CallbackGauge(
            "geogate_geoip_database_build_timestamp_seconds",
            "Build time of each GeoIP database in service, as a Unix timestamp.",
            ("database",), allowed={"database": _values(GeoIPDatabase)}))
        self.config_version = r.register(Gauge(
            "geogate_config_version_info", "The restrictions version in force (value 1).",
            ("version",)))
        self.reloads = r.register(Counter(
            "geogate_reloads_total", "Configuration reloads by result.", ("result",),
            allowed={"result": _values(ReloadResult)}))
        self.reload_timestamp = r.register(Gauge(
            "geogate_reload_timestamp_seconds",
            "When the configuration was last loaded successfully, as a Unix timestamp."))
        self.audit_write_failures = r.register(Counter(
            "geogate_audit_write_failures_total", "Audit records that could not be written."))
        self.audit_pending = r.register(CallbackGauge(
            "geogate_audit_records_pending", "Audit records waiting to be written."))
        self.audit_dropped = r.register(Counter(
            "geogate_audit_records_dropped_total", "Audit records dropped (queue full)."))
        self.handshakes_refused = r.register(Counter(
            "geogate_handshakes_refused_total", "Handshakes refused, by HTTP status.",
            ("status",)))
        self.upstream_failures = r.register(CallbackCounter(
            "geogate_upstream_failures_total",
            "Admitted participants whose signaling-server connection failed."))
        # Series of known label sets start at 0, so rate() and absence alerts work from the start.
        self.joins.labels(outcome=JoinOutcome.ADMIT, restriction="")
        for result in ReloadResult:
            self.reloads.labels(result=result)

    def set_config_version(self, version: str) -> None:
        """Make ``version`` the only series of ``geogate_config_version_info``."""
        self.config_version.clear()
        self.config_version.labels(version=version).set(1)

    def record_reload(self, ok: bool, when: float | None = None) -> None:
        """Count a reload; a successful one also sets the last-reload timestamp.

        Args:
            ok: whether the new configuration was put in force.
            when: Unix time of the reload (required when ``ok``).

        Raises:
            ValueError: ``ok`` without ``when``.
        """
        if ok:
            if when is None:
                raise ValueError("a successful reload needs its time")
            self.reload_timestamp.set(when)
        self.reloads.labels(result=ReloadResult.OK if ok else ReloadResult.ERROR).inc()

    def retain_restrictions(self, ids: Iterable[str]) -> None:
        """Drop series labelled with restriction ids not in ``ids`` (``""`` always stays).

        Call after a reload so the ``restriction`` label stays bounded by the config.
        """
        keep = {"", *ids}
        for family in (self.joins, self.evictions, self.would_evictions):
            family.retain("restriction", keep.__contains__)

    def expose(self) -> str:
        """The registry in text exposition format 0.0.4."""
        return self.registry.expose()
