"""One run of a scenario: plan, target, workers, timed actions, then the check.

The order of a run:

1. Plan every participant (or read the trace), start the target (or find it), and resolve every
   participant's client address through the proxy's own GeoIP settings.
2. Start the worker processes and wait until each is ready; then fix the run's start (t0) on the
   shared monotonic clock and tell every worker at once. With ``{{T+n}}`` templates in the
   restrictions, t0 was fixed before the target started, ``run.start_delay`` ahead.
3. While workers play their participants, the main process runs the timed actions at their
   times (rewrite the restrictions file, call the admin reload), shows progress, and reads the
   target's CPU time.
4. When every worker has reported, merge their histograms and series, build the timeline of
   restriction sets (with the uncertainty around each change) and check every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import ip_address
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, TextIO

from loadtests.checker import CheckResult, ParticipantInfo, Phase, Timeline, check
from loadtests.plan import Plan, build_plan, plan_from_trace
from loadtests.records import Attempt, SignalFindings, WorkerReport
from loadtests.scenario import (
    ActionKind,
    ActionSpec,
    ArrivalKind,
    ReloadMode,
    Scenario,
    has_templates,
    render_restrictions,
)
from loadtests.stats import Histogram, merge_series
from loadtests.target import RunningTarget, Target, TargetError, write_atomically
from loadtests.trace import EventKind, TraceEvent, TraceHeader, read_trace, write_trace
from loadtests.worker import WorkerJob, raise_open_files, worker_main
from proxy.config import Config, load_restrictions
from proxy.errors import ConfigError, ConfigIssue, GeogateError
from proxy.geo import GeoResolver
from proxy.policy.gate import RestrictionSet
from proxy.policy.regions import covered_by

__all__ = [
    "ActionResult",
    "RunError",
    "RunOptions",
    "RunResult",
    "load_plan",
    "resolve_participants",
    "run_scenario",
]

_READY_TIMEOUT = 60.0
_PROGRESS_EVERY_TTY = 0.5
_PROGRESS_EVERY_LINE = 5.0
_ADMIN_TIMEOUT = 10.0


class RunError(GeogateError):
    """A run could not be carried out (a worker failed, the target died...)."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run, beyond the scenario.

    Attributes:
        workers: overrides ``[generator] workers``.
        record: write a trace of the run to this file.
        workdir: the run folder (default: a new temporary folder).
        progress: where progress goes (None: nowhere).
        id_suffix: appended to participant ids (repeated runs against one upstream).
        participants: overrides ``[participants] count``.
    """

    workers: int | None = None
    record: Path | None = None
    workdir: Path | None = None
    progress: TextIO | None = None
    id_suffix: str = ""


@dataclass(slots=True)
class ActionResult:
    """What a timed action did.

    Attributes:
        spec: the action.
        started: when it began (seconds from the run's start).
        certain: from when its restrictions are surely in force (``inf``: not known).
        ok: whether it worked.
        detail: what happened.
        restrictions: the restrictions expected from then on.
    """

    spec: ActionSpec
    started: float = math.nan
    certain: float = math.inf
    ok: bool = False
    detail: str = "not run"
    restrictions: RestrictionSet | None = None

    @property
    def label(self) -> str:
        """The action's name for reports."""
        spec = self.spec
        if spec.label:
            return spec.label
        if spec.kind is ActionKind.RELOAD:
            return "admin reload"
        name = spec.file.name if spec.file else "restrictions"
        return f"{name} ({spec.reload})"


@dataclass(slots=True)
class RunResult:
    """Everything a run produced.

    Attributes:
        scenario: the scenario.
        plan: the plan played.
        participants: what the checker knew of each participant.
        attempts: every connection attempt.
        check: the checker's findings.
        histograms: merged latencies by name (time_to_admitted, time_to_denial,
            signal_round_trip, signal_delivery, start_lag, eviction_latency).
        series: per-second counters.
        second_admitted: per-second time-to-admitted histograms.
        actions: the timed actions.
        boundaries: restriction window edges during the run (seconds from the start).
        signals: the workers' signal findings.
        errors: errors that end no join, by kind.
        cpu: CPU seconds during the run by role (proxy, upstream, generator).
        wall0: the run's start, Unix seconds.
        duration: seconds from the start to the last worker's end.
        workers: worker processes used.
        late_joins: planned joins the workers had not started by the run's end.
        target_url: where participants connected.
        workdir: the run folder.
    """

    scenario: Scenario
    plan: Plan
    participants: dict[int, ParticipantInfo]
    attempts: list[Attempt]
    check: CheckResult
    histograms: dict[str, Histogram]
    series: dict[int, dict[str, int]]
    second_admitted: dict[int, Histogram]
    actions: list[ActionResult]
    boundaries: list[float]
    signals: SignalFindings
    errors: dict[str, int]
    cpu: dict[str, float]
    wall0: float
    duration: float
    workers: int
    late_joins: int
    target_url: str
    workdir: Path
    trace_events: list[TraceEvent] = field(default_factory=list)

    @property
    def failed_joins(self) -> int:
        """Attempts whose join failed (errors, not mismatches)."""
        return sum(self.check.errors.values())

    @property
    def error_total(self) -> int:
        """Failed joins, other errors and late joins."""
        return self.failed_joins + sum(self.errors.values()) + self.late_joins

    @property
    def kept_rate(self) -> bool:
        """Whether the generator started joins within ``max_lag_ms`` of plan (at p99)."""
        lag = self.histograms["start_lag"]
        return lag.percentile_ms(99.0) <= self.scenario.generator.max_lag_ms

    def slo_failures(self) -> list[str]:
        """The latency objectives missed, as sentences."""
        slo = self.scenario.slo
        out = []
        checks = (("time to admitted", "time_to_admitted", slo.admitted_p99_ms),
                  ("time to denial", "time_to_denial", slo.denied_p99_ms))
        for name, key, limit in checks:
            if limit is None:
                continue
            p99 = self.histograms[key].percentile_ms(99.0)
            if p99 > limit:
                out.append(f"{name} p99 {p99:.1f} ms is over {limit:.0f} ms")
        return out

    @property
    def exit_code(self) -> int:
        """0 pass; 1 mismatches, errors or failed actions; 3 latency objectives missed."""
        if (self.check.total or self.error_total > self.scenario.check.max_errors
                or any(not a.ok for a in self.actions)):
            return 1
        if self.slo_failures():
            return 3
        return 0


# --------------------------------------------------------------------------------------------------
# Before the run.


def load_plan(scenario: Scenario, id_suffix: str = "") -> Plan:
    """The scenario's plan: generated, or read from its trace.

    Raises:
        ConfigError: the trace is invalid.
    """
    if scenario.arrival.kind is ArrivalKind.TRACE:
        assert scenario.arrival.trace is not None
        _, events = read_trace(scenario.arrival.trace)
        try:
            return plan_from_trace(events, scenario.arrival.speed)
        except ValueError as exc:
            raise ConfigError(ConfigIssue(str(scenario.arrival.trace), "", str(exc))) from None
    try:
        return build_plan(scenario, id_suffix=id_suffix)
    except ValueError as exc:
        raise ConfigError(ConfigIssue(str(scenario.source), "", str(exc))) from None


def resolve_participants(scenario: Scenario, plan: Plan,
                         config: Config) -> dict[int, ParticipantInfo]:
    """Resolve every participant's client address with the proxy's GeoIP settings.

    Raises:
        ConfigError: a pool's address resolves outside the region the pool names.
        GeoIPError: the database cannot be opened.
    """
    resolver = GeoResolver(config.geoip.settings(cache_size=0))
    expected = {pool.name: pool.region for pool in scenario.region}
    issues: list[ConfigIssue] = []
    out: dict[int, ParticipantInfo] = {}
    try:
        for p in plan.participants:
            address = ip_address(p.address)
            location = resolver.resolve(address).location
            want = expected.get(p.region)
            if want is not None and not covered_by(location, {want}) and len(issues) < 10:
                issues.append(ConfigIssue(str(scenario.source), f"region[{p.region}]",
                                          f"{address} resolves to {location}, not {want} "
                                          f"(database {config.geoip.database})"))
            out[p.index] = ParticipantInfo(p.index, p.participant, p.meeting, p.region, address,
                                           location)
    finally:
        resolver.close()
    if issues:
        raise ConfigError(issues)
    return out


def _rendered_restrictions(path: Path, wall0: float, workdir: Path, name: str) -> RestrictionSet:
    text = path.read_text(encoding="utf-8")
    if not has_templates(text):
        return load_restrictions(path)
    copy = workdir / name
    write_atomically(copy, render_restrictions(text, wall0))
    return load_restrictions(copy)


# --------------------------------------------------------------------------------------------------
# The run.


class _Run:
    def __init__(self, scenario: Scenario, options: RunOptions, endpoint: tuple[str, int, str],
                 plan: Plan, wall0: float, workdir: Path) -> None:
        self.scenario = scenario
        self.options = options
        self.endpoint = endpoint
        self._target: RunningTarget | None = None
        self.templated = False  # {{T+n}} templates were rendered against wall0
        self.pipes: dict[int, Pipe] = {}
        self.processes: dict[int, multiprocessing.process.BaseProcess] = {}
        self.plan = plan
        self.wall0 = wall0
        self.workdir = workdir
        self.workers = options.workers or scenario.generator.workers
        self.progress: dict[int, dict[str, Any]] = {}
        self.reports: dict[int, WorkerReport] = {}
        self.actions = [ActionResult(spec) for spec in scenario.action]
        self.t0 = 0.0
        last_action = max((a.at for a in scenario.action), default=0.0)
        check_spec = scenario.check
        settle = last_action + check_spec.reload_grace + check_spec.eviction_timeout
        self.run_end = scenario.run.duration or max(plan.last_event, settle) + 1.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    @property
    def target(self) -> RunningTarget:
        assert self._target is not None, "the target is started before the run"
        return self._target

    @target.setter
    def target(self, running: RunningTarget) -> None:
        self._target = running

    def jobs(self) -> list[WorkerJob]:
        scenario = self.scenario
        generated = scenario.arrival.kind is not ArrivalKind.TRACE
        cpus = scenario.generator.cpus
        if not cpus and scenario.target.start and scenario.target.cpu is not None:
            others = sorted(os.sched_getaffinity(0) - {scenario.target.cpu})
            cpus = tuple(others)
        host, port, path = self.endpoint
        return [
            WorkerJob(
                worker=n, host=host, port=port, path=path,
                participants=tuple(self.plan.share(n, self.workers)), run_end=self.run_end,
                join_timeout=scenario.check.join_timeout,
                drain_timeout=scenario.run.drain_timeout,
                retries=scenario.reconnect.retries if generated else 0,
                backoff=scenario.reconnect.backoff, backoff_max=scenario.reconnect.backoff_max,
                seed=scenario.run.seed, cpus=cpus, gc=scenario.generator.gc,
            )
            for n in range(self.workers)
        ]

    def spawn(self) -> None:
        """Start the worker processes (they import while the target starts)."""
        context = multiprocessing.get_context("spawn")
        for job in self.jobs():
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(job, child), daemon=True,
                                      name=f"geogate-loadtest-worker-{job.worker}")
            process.start()
            child.close()
            self.pipes[job.worker], self.processes[job.worker] = parent, process

    def shutdown(self) -> None:
        """Stop the workers and release their pipes (idempotent)."""
        for pipe in self.pipes.values():
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in self.processes.values():
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            process.close()
        for pipe in self.pipes.values():
            pipe.close()
        self.pipes.clear()
        self.processes.clear()

    async def execute(self) -> None:
        pipes, processes = self.pipes, self.processes
        try:
            await self._wait_ready(pipes, processes)
            delay = self.wall0 - time.time()
            if not self.templated:
                self.wall0 = time.time() + 0.05  # nothing was rendered against the start
            elif delay < 0.05:
                self._say(f"warning: setup took {0.05 - delay:.1f}s longer than "
                          "run.start_delay; {{T+n}} times are early relative to the run")
                self.wall0 = time.time() + 0.05
            self.t0 = time.monotonic() + (self.wall0 - time.time())
            for pipe in pipes.values():
                pipe.send(("start", self.t0))
            await self._drive(pipes, processes)
        finally:
            self.shutdown()

    async def _wait_ready(self, pipes: dict[int, Pipe],
                          processes: dict[int, multiprocessing.process.BaseProcess]) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + _READY_TIMEOUT
        while len(ready) < len(pipes):
            for n, pipe in pipes.items():
                while n not in ready and pipe.poll():
                    message = _receive(pipe, n)
                    if message[0] == "ready":
                        ready.add(n)
                    elif message[0] == "error":
                        raise RunError(f"worker {n} failed to start:\n{message[2]}")
                if n not in ready and not processes[n].is_alive():
                    raise RunError(f"worker {n} exited with {processes[n].exitcode} at start")
            if time.monotonic() > deadline:
                raise RunError(f"workers not ready within {_READY_TIMEOUT:.0f}s")
            await asyncio.sleep(0.02)

    async def _drive(self, pipes: dict[int, Pipe],
                     processes: dict[int, multiprocessing.process.BaseProcess]) -> None:
        loop = asyncio.get_running_loop()
        actions = [loop.create_task(self._action(a)) for a in self.actions]
        display = _Progress(self.options.progress, len(self.plan), self.plan.requested_rate)
        try:
            while len(self.reports) < len(pipes):
                for n, pipe in pipes.items():
                    while n not in self.reports and pipe.poll():
                        message = _receive(pipe, n)
                        if message[0] == "progress":
                            self.progress[n] = message[2]
                        elif message[0] == "done":
                            self.reports[n] = message[2]
                        elif message[0] == "error":
                            raise RunError(f"worker {n} failed:\n{message[2]}")
                    if n not in self.reports and not processes[n].is_alive():
                        raise RunError(f"worker {n} exited with {processes[n].exitcode}")
                display.update(self.now(), self.progress)
                await asyncio.sleep(0.05)
            display.finish(self.now(), self.progress)
        finally:
            for task in actions:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*actions, return_exceptions=True)

    def _say(self, text: str) -> None:
        out = self.options.progress
        if out is not None:
            # On a terminal the progress bar holds the current line: start a new one.
            print(("\n" if out.isatty() else "") + text, file=out, flush=True)

    async def _action(self, result: ActionResult) -> None:
        spec = result.spec
        await asyncio.sleep(max(0.0, spec.at - self.now()))
        result.started = self.now()
        target = self.target
        try:
            if spec.kind is ActionKind.RESTRICTIONS:
                assert spec.file is not None
                text = render_restrictions(spec.file.read_text(encoding="utf-8"), self.wall0)
                expect_path = spec.expect or spec.file
                expected = _rendered_restrictions(expect_path, self.wall0, self.workdir,
                                                  f"expected-{len(self.actions)}-{spec.at}.toml")
                write_atomically(target.restrictions, text)
                result.restrictions = expected
                if spec.reload is ReloadMode.ADMIN:
                    result.detail = await self._admin_reload()
                    result.certain = self.now()
                elif spec.reload is ReloadMode.WATCH:
                    result.certain = result.started + self.scenario.check.reload_grace
                    result.detail = "file rewritten; the proxy's watch picks it up"
                else:
                    result.detail = "file rewritten; no reload asked"
            else:
                result.restrictions = load_restrictions(target.restrictions)
                result.detail = await self._admin_reload()
                result.certain = self.now()
            result.ok = True
            self._say(f"[{result.started:7.3f}s] action {result.label}: {result.detail}")
        except (GeogateError, OSError) as exc:
            result.ok = False
            result.detail = f"failed: {exc}"
            self._say(f"[{result.started:7.3f}s] action {result.label} {result.detail}")

    async def _admin_reload(self) -> str:
        import aiohttp

        target = self.target
        if target.admin_url is None or target.admin_token is None:
            raise TargetError("an admin reload needs [target] admin_url and admin_token_file "
                              "(set automatically when the tool starts the target)")
        headers = {"Authorization": f"Bearer {target.admin_token}"}
        timeout = aiohttp.ClientTimeout(total=_ADMIN_TIMEOUT)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                    target.admin_url.rstrip("/") + "/v1/reload", headers=headers,
                    json={"reason": "geogate-loadtest timed action"}) as response:
                body = await response.text()
                if response.status != 200:
                    raise TargetError(f"admin reload answered {response.status}: {body[:200]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TargetError(f"admin reload failed: {type(exc).__name__}: {exc}") from None
        return f"admin reload answered 200: {body[:120]}"

    def timeline(self, initial: RestrictionSet) -> Timeline:
        phases = [Phase(initial)]
        for result in self.actions:
            if result.restrictions is None or math.isnan(result.started):
                continue
            phases.append(Phase(result.restrictions, result.started,
                                max(result.certain, result.started), result.label))
        return Timeline(phases, self.wall0)


def _receive(pipe: Pipe, worker: int) -> Any:
    """The next message from a worker; a closed pipe means the worker died."""
    try:
        return pipe.recv()
    except (EOFError, OSError):
        raise RunError(f"worker {worker} ended without reporting") from None


class _Progress:
    """Live progress: a bar on a TTY, else a line every few seconds."""

    def __init__(self, out: TextIO | None, total: int, rate: float) -> None:
        self.out = out
        self.total = total
        self.rate = rate
        self.tty = out is not None and out.isatty()
        self.last = -math.inf
        self.last_started = 0
        self.last_t = 0.0

    def line(self, now: float, progress: dict[int, dict[str, Any]]) -> str:
        totals: dict[str, int] = {}
        for counters in progress.values():
            for name, value in counters.items():
                if isinstance(value, int):
                    totals[name] = totals.get(name, 0) + value
        started = totals.get("joins_started", 0)
        dt = now - self.last_t
        rate = (started - self.last_started) / dt if dt > 0 else 0.0
        self.last_started, self.last_t = started, now
        errors = totals.get("failed", 0) + sum(v for k, v in totals.items()
                                               if k.startswith("errors:"))
        lag = max((c.get("lag_p99_us", 0) for c in progress.values()), default=0) / 1000
        done = min(started / self.total, 1.0) if self.total else 1.0
        width = 24
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        return (f"{now:6.1f}s [{bar}] joins {started} ({self.total} participants) {rate:5.0f}/s "
                f"(asked {self.rate:.0f}/s, lag p99 {lag:.0f} ms) | open {totals.get('open', 0)} "
                f"| admitted {totals.get('admitted', 0)} denied {totals.get('denied', 0)} "
                f"evicted {totals.get('evicted', 0)} | errors {errors}")

    def update(self, now: float, progress: dict[int, dict[str, Any]]) -> None:
        if self.out is None or not progress:
            return
        every = _PROGRESS_EVERY_TTY if self.tty else _PROGRESS_EVERY_LINE
        if now - self.last < every:
            return
        self.last = now
        text = self.line(now, progress)
        if self.tty:
            self.out.write("\r" + text[:200] + "\x1b[K")
            self.out.flush()
        else:
            print(text, file=self.out, flush=True)

    def finish(self, now: float, progress: dict[int, dict[str, Any]]) -> None:
        if self.out is None:
            return
        if self.tty:
            self.out.write("\r" + self.line(now, progress)[:200] + "\x1b[K\n")
            self.out.flush()


def run_scenario(scenario: Scenario, options: RunOptions | None = None,
                 target: Target | None = None) -> RunResult:
    """Run a scenario from start to check.

    Args:
        scenario: the scenario.
        options: how to run.
        target: a target already started by a previous run (kept running); by default the
            scenario's target is started here and stopped at the end.

    Returns:
        The result; see :attr:`RunResult.exit_code`.

    Raises:
        ConfigError: the scenario, a restrictions file or a trace is invalid.
        TargetError: the target could not be started.
        RunError: a worker failed.
    """
    options = options or RunOptions()
    raise_open_files()
    plan = load_plan(scenario, options.id_suffix)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="geogate-loadtest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    owned = target is None
    target = target or Target(scenario, workdir)
    reused = target.running is not None
    wall0 = time.time() + (0.5 if reused else scenario.run.start_delay)
    run = _Run(scenario, options, target.endpoint, plan, wall0, workdir)
    try:
        sources = [target.restrictions_source(), scenario.check.restrictions]
        for spec in scenario.action:  # fail before the run, not in the middle of it
            for path in (spec.file, spec.expect):
                if path is not None:
                    _rendered_restrictions(path, wall0, workdir, f"check-{path.name}")
                    sources.append(path)
        run.templated = any(path is not None and has_templates(path.read_text(encoding="utf-8"))
                            for path in sources)
        run.spawn()
        running = target.running or target.start(wall0)
        run.target = running
        participants = resolve_participants(scenario, plan, running.config)
        initial_path = scenario.check.restrictions or running.restrictions
        initial = _rendered_restrictions(initial_path, wall0, workdir, "expected-initial.toml")
        cpu_before = running.cpu_seconds()
        asyncio.run(run.execute())
        duration = time.monotonic() - run.t0
        cpu_after = running.cpu_seconds()
    finally:
        run.shutdown()
        if owned:
            target.stop()
    reports = [run.reports[n] for n in sorted(run.reports)]
    timeline = run.timeline(initial)
    signals = SignalFindings()
    for report in reports:
        signals.merge(report.signals)
    attempts = [a for report in reports for a in report.attempts]
    result = check(participants, attempts, timeline,
                   eviction_timeout=scenario.check.eviction_timeout, signals=signals)
    histograms = {name: Histogram.merged(r.histograms[name] for r in reports)
                  for name in reports[0].histograms} if reports else {}
    eviction = Histogram()
    for latency in result.eviction_latencies:
        eviction.record(latency)
    histograms["eviction_latency"] = eviction
    seconds: dict[int, Histogram] = {}
    for report in reports:
        for second, data in report.second_histograms.items():
            seconds.setdefault(second, Histogram()).add_encoded(data)
    series = merge_series(r.series for r in reports)
    errors: dict[str, int] = {}
    for counters in series.values():
        for name in list(counters):
            if name.startswith("errors:"):
                errors[name[7:]] = errors.get(name[7:], 0) + counters.pop(name)
    cpu = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
    cpu["generator"] = sum(r.cpu_seconds for r in reports)
    boundaries = sorted({t for phase in timeline.phases
                         for t in timeline.window_edges(phase.restrictions, 0.0, duration)})
    trace_events = _trace_events(plan, reports)
    if options.record is not None:
        write_trace(options.record, TraceHeader(scenario.name, len(plan)), trace_events)
    return RunResult(
        scenario, plan, participants, attempts, result, histograms, series, seconds,
        run.actions, boundaries, signals, errors, cpu, run.wall0, duration, run.workers,
        sum(r.late_joins for r in reports), running.url, workdir, trace_events,
    )


def _trace_events(plan: Plan, reports: list[WorkerReport]) -> list[TraceEvent]:
    by_index = {p.index: p for p in plan.participants}
    events = []
    for report in reports:
        for t, index, kind, size, probe, resume, final in report.trace:
            p = by_index[index]
            event_kind = EventKind(kind)
            if event_kind is EventKind.JOIN:
                events.append(TraceEvent(max(t, 0.0), event_kind, p.participant, p.meeting,
                                         p.region, p.source, p.forwarded, resume))
            else:
                events.append(TraceEvent(max(t, 0.0), event_kind, p.participant, size=size,
                                         probe=probe, final=final))
    events.sort(key=lambda e: e.t)
    return events

