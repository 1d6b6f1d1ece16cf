"""Tests for proxy.metrics: families, exposition format 0.0.4, bounded labels, ProxyMetrics."""

from __future__ import annotations

import functools
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.metrics import (
    CONTENT_TYPE,
    EVICTION_LATENCY_BUCKETS,
    CallbackCounter,
    CallbackGauge,
    Counter,
    Gauge,
    Histogram,
    JoinOutcome,
    MetricType,
    ProxyMetrics,
    Registry,
    RelayDirection,
    format_value,
)

GOLDEN = """\
# HELP demo_requests_total Requests served.
# TYPE demo_requests_total counter
demo_requests_total 3.0
# HELP demo_temperature_celsius Temperature by room.
# TYPE demo_temperature_celsius gauge
demo_temperature_celsius{room="lab",floor="1"} 21.5
demo_temperature_celsius{room="hall",floor="0"} -2.0
# HELP demo_latency_seconds Latency.
# TYPE demo_latency_seconds histogram
demo_latency_seconds_bucket{le="0.1"} 1.0
demo_latency_seconds_bucket{le="1.0"} 2.0
demo_latency_seconds_bucket{le="+Inf"} 3.0
demo_latency_seconds_sum 7.55
demo_latency_seconds_count 3.0
# HELP demo_bytes_total Bytes seen.
# TYPE demo_bytes_total counter
demo_bytes_total{direction="in"} 4096.0
"""


def _unescape_label(text: str) -> str:
    """Reverse the exposition format's label value escaping."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


# ---- exposition ----------------------------------------------------------------------------------


def test_exposition_matches_golden_text() -> None:
    """A small registry renders exactly as Prometheus text format 0.0.4."""
    registry = Registry()
    requests = registry.register(Counter("demo_requests_total", "Requests served."))
    temperature = registry.register(
        Gauge("demo_temperature_celsius", "Temperature by room.", ("room", "floor"))
    )
    latency = registry.register(Histogram("demo_latency_seconds", "Latency.", buckets=(0.1, 1)))
    seen = registry.register(
        CallbackCounter("demo_bytes_total", "Bytes seen.", ("direction",))
    )
    requests.inc()
    requests.inc(2)
    temperature.labels(room="lab", floor="1").set(21.5)
    temperature.labels(room="hall", floor="0").dec(2)
    for value in (0.05, 0.5, 7.0):
        latency.observe(value)
    seen.labels(direction="in").set_function(lambda: 4096)
    seen.labels(direction="out")  # no function yet: no sample
    assert registry.expose() == GOLDEN


def test_content_type_is_text_format_0_0_4() -> None:
    """The exposition content type names version 0.0.4 and UTF-8."""
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_labelled_family_without_children_shows_only_help_and_type() -> None:
    """A labelled family with no series yet renders its HELP and TYPE lines only."""
    registry = Registry()
    registry.register(Counter("x_total", "X.", ("kind",)))
    assert registry.expose() == "# HELP x_total X.\n# TYPE x_total counter\n"


def test_help_text_escapes_backslash_and_newline() -> None:
    """HELP escapes backslash and line feed, and leaves double quotes alone."""
    registry = Registry()
    registry.register(Gauge("g", 'a\\b\nc "d"'))
    assert registry.expose().splitlines()[0] == '# HELP g a\\\\b\\nc "d"'


def test_label_values_escape_backslash_quote_and_newline() -> None:
    """Label values escape backslash, double quote and line feed."""
    gauge = Gauge("g", "G.", ("v",))
    gauge.labels(v='C:\\dir "x"\ny').set(1)
    assert gauge.expose().splitlines()[2] == 'g{v="C:\\\\dir \\"x\\"\\ny"} 1.0'


@given(st.text())
def test_label_escaping_round_trips(value: str) -> None:
    """Any label value survives escaping and stays on one sample line."""
    gauge = Gauge("g", "G.", ("v",))
    gauge.labels(v=value).set(1)
    line = gauge.expose().split("\n")[2]
    match = re.fullmatch(r'g\{v="((?:[^"\\\n]|\\.)*)"\} 1\.0', line, re.DOTALL)
    assert match is not None
    assert _unescape_label(match.group(1)) == value


def test_str_enum_label_values_render_as_their_values() -> None:
    """A StrEnum label value renders as its value, and shares the series of the plain string."""
    counter = Counter("c_total", "C.", ("direction",))
    counter.labels(direction=RelayDirection.CLIENT_TO_UPSTREAM).inc()
    counter.labels(direction="client_to_upstream").inc()
    assert counter.expose().splitlines()[2] == 'c_total{direction="client_to_upstream"} 2.0'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0.0"),
        (1, "1.0"),
        (0.005, "0.005"),
        (-1.5, "-1.5"),
        (2.5e-05, "2.5e-05"),
        (123456.0, "123456.0"),
        (1234567.0, "1.234567e+06"),
        (12345678, "1.2345678e+07"),
        (1e6, "1e+06"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_values_are_formatted_like_prometheus_clients(value: float, text: str) -> None:
    """Numbers render as the Prometheus Python client renders them (Go exponents from 1e6)."""
    assert format_value(value) == text


# ---- families ------------------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_and_le_is_inclusive() -> None:
    """Each bucket counts observations at or below its bound; +Inf counts them all."""
    histogram = Histogram("h", "H.", buckets=(1, 2, 3))
    for value in (0.5, 1, 2.5, 3, 3.5, 100):
        histogram.observe(value)
    samples = list(histogram.samples())
    buckets = [(dict(pairs)["le"], value) for suffix, pairs, value in samples
               if suffix == "_bucket"]
    assert buckets == [("1.0", 2), ("2.0", 2), ("3.0", 4), ("+Inf", 6)]
    assert ("_sum", (), 110.5) in samples
    assert ("_count", (), 6) in samples


def test_labelled_histogram_puts_le_after_its_labels() -> None:
    """A labelled histogram's bucket lines carry its labels, then le."""
    histogram = Histogram("h", "H.", ("kind",), buckets=(1,))
    histogram.labels(kind="a").observe(2)
    lines = histogram.expose().splitlines()[2:]
    assert lines == [
        'h_bucket{kind="a",le="1.0"} 0.0',
        'h_bucket{kind="a",le="+Inf"} 1.0',
        'h_sum{kind="a"} 2.0',
        'h_count{kind="a"} 1.0',
    ]


@pytest.mark.parametrize("buckets", [(), (1, 1), (2, 1), (1, math.inf), (math.nan,)])
def test_histogram_rejects_bad_buckets(buckets: tuple[float, ...]) -> None:
    """Buckets must be finite, strictly increasing and at least one."""
    with pytest.raises(ValueError, match="bucket"):
        Histogram("h", "H.", buckets=buckets)


def test_histogram_reserves_le() -> None:
    """A histogram cannot have a label named le."""
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h", "H.", ("le",), buckets=(1,))


def test_counter_never_goes_down() -> None:
    """Adding a negative amount to a counter raises and leaves the value alone."""
    counter = Counter("c_total", "C.")
    counter.inc(2)
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(-1)
    assert list(counter.samples()) == [("", (), 2.0)]


def test_gauge_sets_and_moves() -> None:
    """A gauge can be set, raised and lowered."""
    gauge = Gauge("g", "G.")
    gauge.set(10)
    gauge.inc(5)
    gauge.dec(0.5)
    assert list(gauge.samples()) == [("", (), 14.5)]


def test_callback_values_are_read_at_exposition_time() -> None:
    """A callback family calls its function on each exposition, and not before."""
    calls: list[int] = []
    source = {"value": 1}

    def read() -> float:
        calls.append(1)
        return source["value"]

    registry = Registry()
    registry.register(CallbackGauge("open", "Open.", function=read))
    assert calls == []
    assert registry.expose().endswith("open 1.0\n")
    source["value"] = 7
    assert registry.expose().endswith("open 7.0\n")
    assert len(calls) == 2


def test_callback_set_function_replaces_the_source() -> None:
    """set_function on an unlabelled callback family changes where its value comes from."""
    counter = CallbackCounter("c_total", "C.")
    assert list(counter.samples()) == []
    counter.set_function(lambda: 3)
    counter.set_function(lambda: 4)
    assert list(counter.samples()) == [("", (), 4.0)]


def test_callback_exception_propagates_from_expose() -> None:
    """A failing callback makes the exposition fail rather than show a made-up value."""
    registry = Registry()
    registry.register(CallbackGauge("g", "G.", function=lambda: 1 / 0))
    with pytest.raises(ZeroDivisionError):
        registry.expose()


def test_function_for_labelled_callback_family_is_refused() -> None:
    """A labelled callback family takes its functions per child, not one for the family."""
    with pytest.raises(ValueError, match="use labels"):
        CallbackGauge("g", "G.", ("a",), function=lambda: 1)


# ---- labels and their bounds ---------------------------------------------------------------------


def test_labels_returns_the_same_child_for_the_same_values() -> None:
    """labels() hands out one child per label set, so callers can keep it."""
    counter = Counter("c_total", "C.", ("a", "b"))
    assert counter.labels(a="1", b="2") is counter.labels(b="2", a="1")
    assert counter.labels(a="1", b="2") is not counter.labels(a="1", b="3")


@pytest.mark.parametrize("values", [{}, {"a": "1"}, {"a": "1", "b": "2", "c": "3"},
                                    {"a": "1", "c": "2"}])
def test_labels_must_match_the_label_names(values: dict[str, str]) -> None:
    """Missing, extra or unknown label names are refused."""
    counter = Counter("c_total", "C.", ("a", "b"))
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels(**values)
    assert len(counter) == 0


def test_label_values_must_be_strings() -> None:
    """A non-string label value is refused rather than silently converted."""
    counter = Counter("c_total", "C.", ("status",))
    with pytest.raises(ValueError, match="must be a string"):
        counter.labels(status=451)  # type: ignore[arg-type]


def test_allowed_values_bound_a_label() -> None:
    """A label limited to a closed set refuses any other value."""
    counter = Counter("c_total", "C.", ("outcome",), allowed={"outcome": ["admit", "deny"]})
    counter.labels(outcome="deny").inc()
    with pytest.raises(ValueError, match="not one of"):
        counter.labels(outcome="meeting-42")
    assert len(counter) == 1


def test_max_series_bounds_the_label_sets() -> None:
    """A family refuses a new label set past max_series, but serves existing ones."""
    counter = Counter("c_total", "C.", ("restriction",), max_series=2)
    counter.labels(restriction="a").inc()
    counter.labels(restriction="b").inc()
    with pytest.raises(ValueError, match="bounded"):
        counter.labels(restriction="c")
    counter.labels(restriction="a").inc()
    assert len(counter) == 2


def test_remove_retain_and_clear_drop_series() -> None:
    """Removed series disappear from the exposition; retain keeps the values it is told to."""
    counter = Counter("c_total", "C.", ("r", "k"))
    for r in ("a", "b", "c"):
        counter.labels(r=r, k="x").inc()
    counter.remove(r="a", k="x")
    counter.retain("r", lambda value: value == "c")
    assert [dict(pairs)["r"] for _, pairs, _ in counter.samples()] == ["c"]
    counter.clear()
    assert list(counter.samples()) == []
    with pytest.raises(ValueError, match="no label"):
        counter.retain("meeting", bool)


def test_unlabelled_operations_on_labelled_family_are_refused() -> None:
    """inc/set/observe without labels() on a labelled family raise."""
    with pytest.raises(ValueError, match="use labels"):
        Counter("c_total", "C.", ("a",)).inc()
    with pytest.raises(ValueError, match="use labels"):
        Gauge("g", "G.", ("a",)).set(1)
    with pytest.raises(ValueError, match="use labels"):
        Histogram("h", "H.", ("a",), buckets=(1,)).observe(1)


@pytest.mark.parametrize(
    ("name", "labels"),
    [("1bad", ()), ("bad-name", ()), ("", ()), ("ok", ("bad-label",)), ("ok", ("__reserved",)),
     ("ok", ("a", "a"))],
)
def test_bad_metric_and_label_names_are_refused(name: str, labels: tuple[str, ...]) -> None:
    """Names outside the Prometheus name syntax, reserved or duplicate labels are refused."""
    with pytest.raises(ValueError):
        Gauge(name, "G.", labels)


def test_allowed_values_for_an_unknown_label_are_refused() -> None:
    """allowed naming a label the family does not have is a mistake caught at construction."""
    with pytest.raises(ValueError, match="allowed values"):
        Counter("c_total", "C.", ("a",), allowed={"b": ["x"]})


def test_registry_refuses_duplicate_names() -> None:
    """Two families cannot share a name in one registry."""
    registry = Registry()
    registry.register(Counter("c_total", "C."))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Gauge("c_total", "G."))


# ---- ProxyMetrics --------------------------------------------------------------------------------

EXPECTED_FAMILIES = {
    "geogate_sessions_open": (MetricType.GAUGE, ()),
    "geogate_connections_total": (MetricType.COUNTER, ()),
    "geogate_joins_total": (MetricType.COUNTER, ("outcome", "restriction")),
    "geogate_evictions_total": (MetricType.COUNTER, ("restriction",)),
    "geogate_would_evictions_total": (MetricType.COUNTER, ("restriction",)),
    "geogate_eviction_latency_seconds": (MetricType.HISTOGRAM, ()),
    "geogate_relay_messages_total": (MetricType.COUNTER, ("direction",)),
    "geogate_relay_bytes_total": (MetricType.COUNTER, ("direction",)),
    "geogate_geoip_lookups_total": (MetricType.COUNTER, ()),
    "geogate_geoip_cache_hits_total": (MetricType.COUNTER, ()),
    "geogate_geoip_errors_total": (MetricType.COUNTER, ()),
    "geogate_geoip_database_build_timestamp_seconds": (MetricType.GAUGE, ("database",)),
    "geogate_config_version_info": (MetricType.GAUGE, ("version",)),
    "geogate_reloads_total": (MetricType.COUNTER, ("result",)),
    "geogate_reload_timestamp_seconds": (MetricType.GAUGE, ()),
    "geogate_audit_write_failures_total": (MetricType.COUNTER, ()),
    "geogate_audit_records_pending": (MetricType.GAUGE, ()),
    "geogate_audit_records_dropped_total": (MetricType.COUNTER, ()),
    "geogate_handshakes_refused_total": (MetricType.COUNTER, ("status",)),
    "geogate_upstream_failures_total": (MetricType.COUNTER, ()),
}


def test_proxy_metrics_defines_every_geogate_metric() -> None:
    """ProxyMetrics registers exactly the documented names, types and label names."""
    metrics = ProxyMetrics()
    found = {family.name: (family.type, family.labelnames) for family in metrics.registry}
    assert found == EXPECTED_FAMILIES
    text = metrics.expose()
    for name, (kind, _) in EXPECTED_FAMILIES.items():
        assert f"# TYPE {name} {kind}\n" in text


def test_proxy_metrics_bounds_closed_labels() -> None:
    """Outcome, direction, database and result labels accept only their documented values."""
    metrics = ProxyMetrics()
    for outcome in JoinOutcome:
        metrics.joins.labels(outcome=outcome, restriction="r1")
    assert {o.value for o in JoinOutcome} == {"admit", "deny", "deny_reused", "would_deny"}
    with pytest.raises(ValueError):
        metrics.joins.labels(outcome="maybe", restriction="")
    with pytest.raises(ValueError):
        metrics.relay_bytes.labels(direction="sideways")
    with pytest.raises(ValueError):
        metrics.geoip_build.labels(database="city")
    with pytest.raises(ValueError):
        metrics.reloads.labels(result="partial")


def test_proxy_metrics_start_known_series_at_zero() -> None:
    """Admitted joins and both reload results are exposed as 0 before anything happens."""
    text = ProxyMetrics().expose()
    assert 'geogate_joins_total{outcome="admit",restriction=""} 0.0\n' in text
    assert 'geogate_reloads_total{result="ok"} 0.0\n' in text
    assert 'geogate_reloads_total{result="error"} 0.0\n' in text


def test_config_version_info_keeps_only_the_current_version() -> None:
    """Setting a new config version replaces the old series."""
    metrics = ProxyMetrics()
    metrics.set_config_version("v1")
    metrics.set_config_version('v2 "b"')
    text = metrics.expose()
    assert 'geogate_config_version_info{version="v2 \\"b\\""} 1.0\n' in text
    assert 'version="v1"' not in text


def test_record_reload_counts_results_and_stamps_success() -> None:
    """A reload counts by result; only a successful one sets the timestamp."""
    metrics = ProxyMetrics()
    metrics.record_reload(True, 1700000000.5)
    metrics.record_reload(False)
    text = metrics.expose()
    assert 'geogate_reloads_total{result="ok"} 1.0\n' in text
    assert 'geogate_reloads_total{result="error"} 1.0\n' in text
    assert "geogate_reload_timestamp_seconds 1.7000000005e+09\n" in text
    with pytest.raises(ValueError, match="time"):
        metrics.record_reload(True)


def test_retain_restrictions_drops_removed_ids() -> None:
    """After a reload, series of restrictions no longer configured are dropped; "" stays."""
    metrics = ProxyMetrics()
    metrics.joins.labels(outcome=JoinOutcome.DENY, restriction="old").inc()
    metrics.joins.labels(outcome=JoinOutcome.DENY, restriction="kept").inc()
    metrics.evictions.labels(restriction="old").inc()
    metrics.would_evictions.labels(restriction="kept").inc()
    metrics.retain_restrictions(["kept"])
    text = metrics.expose()
    assert 'restriction="old"' not in text
    assert 'geogate_joins_total{outcome="deny",restriction="kept"} 1.0\n' in text
    assert 'geogate_joins_total{outcome="admit",restriction=""} 0.0\n' in text
    assert 'geogate_would_evictions_total{restriction="kept"} 1.0\n' in text


def test_wired_callbacks_and_histogram_show_in_exposition() -> None:
    """Callback counters wired by the proxy and eviction latencies appear with their values."""
    metrics = ProxyMetrics()
    relayed = {RelayDirection.CLIENT_TO_UPSTREAM: 10, RelayDirection.UPSTREAM_TO_CLIENT: 20}
    for direction in RelayDirection:
        metrics.relay_bytes.labels(direction=direction).set_function(
            functools.partial(relayed.__getitem__, direction)
        )
    metrics.sessions_open.set_function(lambda: 2)
    metrics.eviction_latency.observe(0.02)
    relayed[RelayDirection.UPSTREAM_TO_CLIENT] = 25
    text = metrics.expose()
    assert 'geogate_relay_bytes_total{direction="client_to_upstream"} 10.0\n' in text
    assert 'geogate_relay_bytes_total{direction="upstream_to_client"} 25.0\n' in text
    assert "geogate_sessions_open 2.0\n" in text
    assert 'geogate_eviction_latency_seconds_bucket{le="0.01"} 0.0\n' in text
    assert 'geogate_eviction_latency_seconds_bucket{le="0.025"} 1.0\n' in text
    assert EVICTION_LATENCY_BUCKETS[0] == 0.001 and EVICTION_LATENCY_BUCKETS[-1] == 5.0
