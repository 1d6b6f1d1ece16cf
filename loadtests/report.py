"""The end of a run: a text report, the full result as JSON, and a figure.

Every latency is given as p50 / p90 / p99 / p99.9 / max from merged HDR histograms, never as an
average. The per-second series gives joins started, admitted, denied and evicted, failures, open
sessions and time-to-admitted percentiles for each second of the run. The figure (matplotlib, Agg
backend) shows join rate, open sessions and latency percentiles over time, with the timed actions
and restriction window edges marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from loadtests.records import Attempt, Outcome
from loadtests.runner import RunResult
from loadtests.stats import Histogram

__all__ = ["LATENCIES", "per_second", "print_report", "result_json", "write_json", "write_plot"]

#: Latencies reported, by histogram name, with their labels.
LATENCIES: tuple[tuple[str, str], ...] = (
    ("time_to_admitted", "time to admitted"),
    ("time_to_denial", "time to denial"),
    ("signal_round_trip", "signal round trip"),
    ("signal_delivery", "signal delivery (1-way)"),
    ("eviction_latency", "eviction latency"),
    ("start_lag", "generator start lag"),
)


def _open_at(attempts: Sequence[Attempt], t: float) -> int:
    return sum(1 for a in attempts if a.outcome is Outcome.ADMITTED and a.answered <= t < a.ended)


def per_second(result: RunResult) -> list[dict[str, Any]]:
    """One row per second of the run: counters, open sessions at its end, and latencies.

    Returns:
        Rows with keys t, joins_started, admitted, denied, evicted, failed, signals_sent,
        signals_received, open, admitted_p50_ms, admitted_p90_ms, admitted_p99_ms.
    """
    last = math.ceil(result.duration)
    rows = []
    for second in range(0, max(last, 1)):
        counters = result.series.get(second, {})
        histogram = result.second_admitted.get(second)
        row: dict[str, Any] = {"t": second}
        for name in ("joins_started", "admitted", "denied", "evicted", "failed", "signals_sent",
                     "signals_received"):
            row[name] = counters.get(name, 0)
        row["open"] = _open_at(result.attempts, second + 1)
        for p in (50, 90, 99):
            row[f"admitted_p{p}_ms"] = (round(histogram.percentile_ms(p), 3)
                                        if histogram is not None else None)
        rows.append(row)
    return rows


def achieved_rate(result: RunResult) -> float:
    """First joins started per second, over the span of their start times."""
    starts = sorted(a.started for a in result.attempts if a.epoch == 1)
    if len(starts) < 2 or starts[-1] <= starts[0]:
        return float(len(starts))
    return (len(starts) - 1) / (starts[-1] - starts[0])


def _counts(result: RunResult) -> dict[str, int]:
    attempts = result.attempts
    return {
        "attempts": len(attempts),
        "admitted": sum(1 for a in attempts if a.outcome is Outcome.ADMITTED),
        "denied": sum(1 for a in attempts if a.outcome is Outcome.DENIED),
        "evicted": sum(1 for a in attempts if a.end.value == "evicted"),
        "failed": sum(1 for a in attempts if a.outcome is Outcome.FAILED),
        "signals_sent": sum(a.signals_sent for a in attempts),
        "signals_received": result.signals.received,
    }


def result_json(result: RunResult) -> dict[str, Any]:
    """The whole result as plain JSON-ready data."""
    scenario = result.scenario
    joins = max(_counts(result)["attempts"], 1)
    cpu = {role: round(seconds, 3) for role, seconds in result.cpu.items()}
    if "proxy" in result.cpu:
        cpu["proxy_us_per_join"] = round(result.cpu["proxy"] / joins * 1e6, 1)
    return {
        "scenario": scenario.name,
        "source": str(scenario.source) if scenario.source else None,
        "target": result.target_url,
        "workdir": str(result.workdir),
        "started": result.wall0,
        "duration_s": round(result.duration, 3),
        "participants": len(result.plan),
        "workers": result.workers,
        "passed": result.exit_code == 0,
        "exit_code": result.exit_code,
        "rates": {"requested_joins_per_s": round(result.plan.requested_rate, 2),
                  "achieved_joins_per_s": round(achieved_rate(result), 2),
                  "kept_rate": result.kept_rate},
        "counts": _counts(result),
        "expected": result.check.expected,
        "latency_ms": {name: result.histograms[name].summary().as_dict()
                       for name, _ in LATENCIES if name in result.histograms},
        "errors": {"failed_joins": result.check.errors, "other": result.errors,
                   "late_joins": result.late_joins},
        "mismatches": {"total": result.check.total,
                       "by_kind": {str(k): v for k, v in result.check.mismatches.items()},
                       "unchecked_evictions": result.check.unchecked,
                       "samples": [{"kind": str(m.kind), "participant": m.participant,
                                    "meeting": m.meeting, "region": m.region, "at": m.at,
                                    "detail": m.detail} for m in result.check.samples]},
        "objectives": {"admitted_p99_ms": scenario.slo.admitted_p99_ms,
                       "denied_p99_ms": scenario.slo.denied_p99_ms,
                       "missed": result.slo_failures()},
        "actions": [{"label": a.label, "at": a.spec.at, "started": a.started,
                     "certain": None if math.isinf(a.certain) else a.certain, "ok": a.ok,
                     "detail": a.detail} for a in result.actions],
        "window_edges": result.boundaries,
        "cpu_s": cpu,
        "series": per_second(result),
    }


def write_json(result: RunResult, path: Path) -> None:
    """Write the full result as JSON."""
    path.write_bytes(orjson.dumps(result_json(result), option=orjson.OPT_INDENT_2))


def print_report(result: RunResult, out: TextIO, *, series: bool = True) -> None:
    """Print the figures of a run."""
    scenario = result.scenario
    counts = _counts(result)
    meetings = len({p.meeting for p in result.plan.participants})
    w = out.write
    w(f"\ngeogate-loadtest: {scenario.name} ({len(result.plan)} participants, {meetings} "
      f"meetings, {result.workers} worker{'s' if result.workers != 1 else ''}) against "
      f"{result.target_url}\n")
    w(f"  run folder {result.workdir}; duration {result.duration:.1f}s\n\n")
    w(f"Joins       asked {result.plan.requested_rate:.1f}/s, achieved "
      f"{achieved_rate(result):.1f}/s\n")
    w(f"            {counts['attempts']} attempts: {counts['admitted']} admitted, "
      f"{counts['denied']} denied, {counts['evicted']} evicted, {counts['failed']} failed\n")
    expected = result.check.expected
    w(f"            expected: {expected.get('admitted', 0)} admitted, "
      f"{expected.get('denied', 0)} denied, {expected.get('evicted', 0)} evicted\n")
    lag = result.histograms["start_lag"]
    verdict = ("kept the requested arrival rate" if result.kept_rate else
               f"could NOT keep the requested arrival rate (p99 lag over "
               f"{scenario.generator.max_lag_ms:.0f} ms): the generator was the bottleneck")
    w(f"Generator   start lag p99 {lag.percentile_ms(99):.1f} ms, max "
      f"{lag.summary().max:.1f} ms: {verdict}\n")
    if result.late_joins:
        w(f"            {result.late_joins} planned joins had not started when the run ended\n")
    w("Latency\n")
    for name, label in LATENCIES:
        histogram: Histogram | None = result.histograms.get(name)
        if histogram is not None:
            w(f"  {label:24} {histogram.summary().line()}\n")
    w(f"Signals     {counts['signals_sent']} sent, {counts['signals_received']} received\n")
    if result.cpu:
        parts = []
        for role in ("proxy", "upstream", "generator"):
            if role in result.cpu:
                seconds = result.cpu[role]
                per = seconds / max(counts["attempts"], 1) * 1e6
                parts.append(f"{role} {seconds:.2f}s ({per:.0f} us/join)")
        w(f"CPU         {', '.join(parts)}\n")
    for action in result.actions:
        certain = "" if math.isinf(action.certain) else f"; in force by {action.certain:.3f}s"
        w(f"Action      [{action.started:7.3f}s] {action.label}: {action.detail}{certain}\n")
    if result.boundaries:
        edges = ", ".join(f"{t:.3f}s" for t in result.boundaries)
        w(f"Windows     restriction window edges at {edges}\n")
    errors = dict(result.check.errors)
    errors.update({k: v for k, v in result.errors.items()})
    if result.late_joins:
        errors["late-joins"] = result.late_joins
    if errors:
        w("Errors      " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) + "\n")
    else:
        w("Errors      none\n")
    check = result.check
    if check.total:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(check.mismatches.items()))
        w(f"Mismatches  {check.total}: {kinds}\n")
        for mismatch in check.samples[:15]:
            w(f"  {mismatch}\n")
    else:
        w("Mismatches  none\n")
    if check.unchecked:
        w(f"            {check.unchecked} barred sessions ended with the run before their "
          "eviction deadline (not checked)\n")
    slo = scenario.slo
    objectives = []
    for label, key, limit in (("time to admitted", "time_to_admitted", slo.admitted_p99_ms),
                              ("time to denial", "time_to_denial", slo.denied_p99_ms)):
        if limit is not None:
            p99 = result.histograms[key].percentile_ms(99)
            objectives.append(f"{label} p99 {p99:.1f} ms < {limit:.0f} ms: "
                              f"{'pass' if p99 <= limit else 'FAIL'}")
    if objectives:
        w("Objectives  " + "; ".join(objectives) + "\n")
    if series:
        w("\nPer second  t  started admitted denied evicted failed   open  adm.p50  adm.p99 ms\n")
        for row in per_second(result):
            p50 = row["admitted_p50_ms"]
            p99 = row["admitted_p99_ms"]
            p50_text = "" if p50 is None else f"{p50:7.1f}"
            p99_text = "" if p99 is None else f"{p99:7.1f}"
            w(f"          {row['t']:3d}  {row['joins_started']:7d} {row['admitted']:8d} "
              f"{row['denied']:6d} {row['evicted']:7d} {row['failed']:6d} {row['open']:6d}  "
              f"{p50_text:>7}  {p99_text:>7}\n")
    reasons = []
    if check.total:
        reasons.append(f"{check.total} mismatches")
    if result.error_total > scenario.check.max_errors:
        reasons.append(f"{result.error_total} errors (at most {scenario.check.max_errors} allowed)")
    failed_actions = sum(1 for a in result.actions if not a.ok)
    if failed_actions:
        reasons.append(f"{failed_actions} timed actions failed")
    reasons += result.slo_failures()
    verdict = "PASS" if not reasons else "FAIL: " + "; ".join(reasons)
    w(f"\nResult      {verdict} (exit code {result.exit_code})\n")
    out.flush()


def write_plot(result: RunResult, path: Path) -> None:
    """Draw join rate, open sessions and latency percentiles over time, actions marked.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = per_second(result)
    t = [row["t"] + 0.5 for row in rows]
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    rate, sessions, latency = axes
    rate.plot(t, [r["joins_started"] for r in rows], label="joins started/s")
    rate.plot(t, [r["admitted"] for r in rows], label="admitted/s")
    rate.plot(t, [r["denied"] for r in rows], label="denied/s")
    rate.plot(t, [r["evicted"] for r in rows], label="evicted/s")
    rate.plot(t, [r["failed"] for r in rows], label="failed/s")
    rate.set_ylabel("per second")
    rate.legend(loc="upper right", fontsize="small")
    sessions.plot([row["t"] + 1 for row in rows], [r["open"] for r in rows], color="tab:purple")
    sessions.set_ylabel("open sessions")
    for p, style in ((50, "-"), (90, "--"), (99, ":")):
        values = [r[f"admitted_p{p}_ms"] for r in rows]
        latency.plot([x for x, v in zip(t, values, strict=True) if v is not None],
                     [v for v in values if v is not None], style, label=f"time to admitted p{p}")
    latency.set_ylabel("ms")
    latency.set_xlabel("seconds from the run's start")
    latency.legend(loc="upper right", fontsize="small")
    for action in result.actions:
        if math.isnan(action.started):
            continue
        for axis in axes:
            axis.axvline(action.started, color="red", linewidth=1)
        rate.annotate(action.label, (action.started, 1), xycoords=("data", "axes fraction"),
                      rotation=90, va="top", ha="right", fontsize="small", color="red")
    for edge in result.boundaries:
        for axis in axes:
            axis.axvline(edge, color="darkorange", linestyle="--", linewidth=1)
        rate.annotate("window edge", (edge, 1), xycoords=("data", "axes fraction"),
                      rotation=90, va="top", ha="right", fontsize="small", color="darkorange")
    fig.suptitle(f"{result.scenario.name}: {len(result.plan)} participants, "
                 f"{result.check.total} mismatches")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
