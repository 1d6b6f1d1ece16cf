"""Relay benchmark: geogate against nginx and a direct connection, in one interleaved run.

Three sections, each measured on three targets (``direct`` to the demo meeting server, through
``geogate``, through ``nginx`` as a plain WebSocket reverse proxy with one worker):

- round trips: N participants (100 and 1,000 by default) each echo a 100-byte message in a closed
  loop for ``--duration`` seconds: round trips per second, latency p50/p99, and the proxy's CPU time
  per round trip;
- joins: 2,000 joins at concurrency 200, each a TCP connect, upgrade, join message, upstream
  connect, ``joined`` reply and one echo round trip, then a close: joins per second, time to first
  echo p50/p99, and the proxy's CPU time per join (the geogate figure includes the gate: GeoIP
  lookup and restriction check);
- memory: 5,000 idle participants: the proxy's RSS after minus before, per admitted pair (for nginx,
  master plus worker).

How it is measured (see /work/shared/PERF-NOTES.md for why):

- every server is its own process, started fresh for each measurement: the demo meeting server
  (``geogate demo-upstream``), then ``geogate serve`` or nginx; the proxy under test is pinned to
  one CPU, the load generator (this process) and the demo server to the other;
- CPU time is the proxy's own accounting (utime + stime from /proc/PID/stat, in clock ticks),
  sampled before and after the measured phase, so a slow load generator changes throughput but
  not the CPU per operation;
- targets are interleaved (direct, geogate, nginx, direct, ...) for ``--rounds`` rounds because
  the machine's speed drifts; each table cell is the median over rounds, and the ratio column is
  the median of the per-round ratios geogate/nginx (each from one round, so drift cancels);
- the load generator is :mod:`loadtests.wsclient` (raw protocol, pre-built masked frames), with
  participants spread over source addresses 127.0.3.1-127.0.3.N (placed in the US by the demo
  GeoIP database, so admitted by the default restrictions) to keep clear of ephemeral-port limits.

The machinery is shared with :mod:`loadtests.bench_janus` (the same benchmark in front of Janus):
processes and their accounting (:class:`Child`, :class:`ProcessGroup`, :class:`Environment`),
the measurements (given an :class:`Opener`), the options common to both (:class:`CommonOptions`),
the interleaved run, tables and verdicts (:class:`Benchmark`); a benchmark brings its upstream
server, how a participant joins it, and its section titles (:class:`RelayBenchmark` here).

Run ``python -m loadtests.bench_relay`` (``make bench-relay``; nginx from ``make bench-deps``);
``--quick`` checks that everything works in well under a minute.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import enum
import gc
import hashlib
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TextIO, TypeVar

import orjson

from loadtests.nginx import (
    NginxSettings,
    check_config,
    find_nginx,
    nginx_command,
    nginx_version,
)
from loadtests.wsclient import (
    MIN_ECHO_SIZE,
    EchoLoad,
    Endpoint,
    LoadError,
    Participant,
    close_all,
    open_participant,
)
from proxy.errors import GeogateError

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "Child",
    "CommonOptions",
    "Environment",
    "JoinResult",
    "MemoryResult",
    "Opener",
    "Options",
    "ProcessGroup",
    "RelayBenchmark",
    "Release",
    "Result",
    "RttResult",
    "Running",
    "Section",
    "SectionResults",
    "Target",
    "Verdict",
    "demo_opener",
    "free_port",
    "join_storm",
    "main",
    "measure_joins",
    "measure_memory",
    "measure_rtt",
    "one_line",
    "open_group",
    "parse_args",
    "percentile",
    "raise_nofile_limit",
    "render_report",
    "source_addresses",
    "sources_digest",
    "verdicts",
]

ROOT: Final = Path(__file__).resolve().parents[1]
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
#: Targets: CPU per round trip at most 1.25x nginx (both sizes), CPU per join at most 2.5x
#: nginx, memory per admitted pair at most 8 KiB.
RTT_CPU_RATIO_TARGET: Final = 1.25
JOIN_CPU_RATIO_TARGET: Final = 2.5
MEMORY_PER_PAIR_TARGET_KIB: Final = 8.0
# Seconds the proxy gets to finish tearing down closed connections before CPU is sampled; idle
# time adds no CPU, so this only makes sure the teardown is inside the measurement.
_SETTLE: Final = 0.3


class BenchmarkError(GeogateError):
    """The benchmark cannot go on: a server failed to start or a phase did not complete."""


class Target(enum.StrEnum):
    """Where the load goes."""

    DIRECT = "direct"
    GEOGATE = "geogate"
    NGINX = "nginx"


class Section(enum.StrEnum):
    """What is measured (``--only``)."""

    RTT = "rtt"
    JOINS = "joins"
    MEMORY = "memory"


# --------------------------------------------------------------------------------------------
# Process accounting (/proc, Linux)


def _stat(pid: int) -> tuple[int, int, int]:
    """Return (ppid, utime, stime), times in clock ticks, of a process from /proc/PID/stat.

    Raises:
        OSError: the process is gone.
    """
    text = Path(f"/proc/{pid}/stat").read_bytes()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15 (proc(5)).
    return int(fields[1]), int(fields[11]), int(fields[12])


class ProcessGroup:
    """A process (and optionally its descendants) whose CPU time and memory are sampled.

    Args:
        pid: the root process.
        children: include its descendants (nginx: the master and its worker).
    """

    __slots__ = ("children", "pid")

    def __init__(self, pid: int, *, children: bool = False) -> None:
        self.pid = pid
        self.children = children

    def pids(self) -> list[int]:
        """The root and, with ``children``, its live descendants."""
        if not self.children:
            return [self.pid]
        parents: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                ppid = _stat(int(entry.name))[0]
            except (OSError, ValueError, IndexError):
                continue  # exited while we looked
            parents.setdefault(ppid, []).append(int(entry.name))
        found = [self.pid]
        for pid in found:
            found.extend(parents.get(pid, ()))
        return found

    def cpu_times(self) -> tuple[float, float]:
        """User and system (kernel) CPU time of the group so far, in seconds.

        Raises:
            BenchmarkError: the root process is gone.
        """
        user = system = 0
        for pid in self.pids():
            try:
                _, utime, stime = _stat(pid)
            except OSError as exc:
                if pid == self.pid:
                    raise BenchmarkError(f"process {pid} is gone") from exc
                continue
            user += utime
            system += stime
        return user / _CLK_TCK, system / _CLK_TCK

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the group so far, in seconds.

        Raises:
            BenchmarkError: the root process is gone.
        """
        return sum(self.cpu_times())

    def rss_bytes(self) -> int:
        """Resident memory of the group, in bytes (/proc/PID/statm).

        Raises:
            BenchmarkError: the root process is gone.
        """
        total = 0
        for pid in self.pids():
            try:
                resident = int(Path(f"/proc/{pid}/statm").read_bytes().split()[1])
            except OSError as exc:
                if pid == self.pid:
                    raise BenchmarkError(f"process {pid} is gone") from exc
                continue
            total += resident * _PAGE_SIZE
        return total

    def affinity(self) -> dict[int, list[int]]:
        """The CPUs each process of the group may run on."""
        result: dict[int, list[int]] = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                result[pid] = sorted(os.sched_getaffinity(pid))
        return result


def raise_nofile_limit() -> int:
    """Raise the soft open-file limit to the hard one (children inherit it); return it.

    5,000 relayed participants need about 10,200 descriptors in the proxy and as many in the
    load generator and the demo server.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def source_addresses(count: int) -> list[str]:
    """Loopback source addresses 127.0.3.1 ... 127.0.3.count (the US in the demo database).

    Raises:
        ValueError: ``count`` is not 1-254.
    """
    if not 1 <= count <= 254:
        raise ValueError(f"source address count must be 1-254, got {count}")
    return [f"127.0.3.{i}" for i in range(1, count + 1)]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of sorted samples (NaN when there are none).

    Args:
        ordered: samples in ascending order.
        q: the fraction, 0-1 (0.99 for p99).

    Raises:
        ValueError: ``q`` outside 0-1.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0-1, got {q}")
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------------------------
# Results


def _per_op_us(cpu: float | None, count: int) -> float | None:
    return None if cpu is None or count <= 0 else cpu / count * 1e6


def _busy(cpu: float | None, seconds: float) -> float | None:
    """CPU seconds over wall seconds, in percent: below 100 the proxy was not saturated."""
    return None if cpu is None or seconds <= 0 else cpu / seconds * 100


def _check_counts(obj: object, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ValueError(f"{name} must not be negative, got {getattr(obj, name)}")


@dataclass(frozen=True, slots=True)
class RttResult:
    """One round-trip measurement.

    Attributes:
        connections: participants echoing.
        round_trips: replies received during the measured phase.
        seconds: the measured phase's wall time (until the last reply).
        p50: median round-trip time, seconds; ``p99``: 99th percentile.
        proxy_cpu: CPU seconds the proxy spent in the phase (None: no proxy, direct).
        upstream_cpu: CPU seconds the demo meeting server spent.
        errors: replies that were not the echo; ``lost``: round trips cut by a closed connection.
        proxy_sys_cpu: the part of ``proxy_cpu`` spent in the kernel (system time).
        generator_cpu: CPU seconds the load generator (this process) spent.

    Raises:
        ValueError: a negative count or duration.
    """

    connections: int
    round_trips: int
    seconds: float
    p50: float
    p99: float
    proxy_cpu: float | None
    upstream_cpu: float | None
    errors: int = 0
    lost: int = 0
    proxy_sys_cpu: float | None = None
    generator_cpu: float | None = None

    def __post_init__(self) -> None:
        _check_counts(self, "connections", "round_trips", "seconds", "errors", "lost")

    def figures(self) -> dict[str, float | None]:
        """The reported figures, by key."""
        return {
            "round_trips_per_s": self.round_trips / self.seconds if self.seconds else 0.0,
            "p50_us": self.p50 * 1e6,
            "p99_us": self.p99 * 1e6,
            "proxy_cpu_us": _per_op_us(self.proxy_cpu, self.round_trips),
            "proxy_sys_cpu_us": _per_op_us(self.proxy_sys_cpu, self.round_trips),
            "proxy_busy_pct": _busy(self.proxy_cpu, self.seconds),
            "upstream_cpu_us": _per_op_us(self.upstream_cpu, self.round_trips),
            "generator_cpu_us": _per_op_us(self.generator_cpu, self.round_trips),
            "errors": float(self.errors + self.lost),
        }


@dataclass(frozen=True, slots=True)
class JoinResult:
    """One join-storm measurement.

    Attributes:
        joins: joins that got their first echo back.
        failures: joins that failed (refused, closed, timed out).
        seconds: wall time from the first connect to the last first echo.
        p50: median time from connect to first echo, seconds; ``p99``: 99th percentile.
        proxy_cpu: CPU seconds the proxy spent, closes included (None: direct).
        upstream_cpu: CPU seconds the demo meeting server spent.
        proxy_sys_cpu: the part of ``proxy_cpu`` spent in the kernel (system time).
        generator_cpu: CPU seconds the load generator (this process) spent.
        first_error: the first failure's description, if any.

    Raises:
        ValueError: a negative count or duration.
    """

    joins: int
    failures: int
    seconds: float
    p50: float
    p99: float
    proxy_cpu: float | None
    upstream_cpu: float | None
    proxy_sys_cpu: float | None = None
    generator_cpu: float | None = None
    first_error: str = ""

    def __post_init__(self) -> None:
        _check_counts(self, "joins", "failures", "seconds")

    def figures(self) -> dict[str, float | None]:
        """The reported figures, by key."""
        return {
            "joins_per_s": self.joins / self.seconds if self.seconds else 0.0,
            "first_echo_p50_ms": self.p50 * 1e3,
            "first_echo_p99_ms": self.p99 * 1e3,
            "proxy_cpu_us": _per_op_us(self.proxy_cpu, self.joins),
            "proxy_sys_cpu_us": _per_op_us(self.proxy_sys_cpu, self.joins),
            "proxy_busy_pct": _busy(self.proxy_cpu, self.seconds),
            "upstream_cpu_us": _per_op_us(self.upstream_cpu, self.joins),
            "generator_cpu_us": _per_op_us(self.generator_cpu, self.joins),
            "failures": float(self.failures),
        }


@dataclass(frozen=True, slots=True)
class MemoryResult:
    """One idle-participants memory measurement.

    Attributes:
        participants: participants admitted and idle when memory was read.
        failures: participants that could not join.
        proxy_rss_before: the proxy's RSS before, bytes (None: direct); ``proxy_rss_after``: with
            the participants connected.
        upstream_rss_before: the demo meeting server's RSS before; ``upstream_rss_after``: after.

    Raises:
        ValueError: a negative count.
    """

    participants: int
    failures: int
    proxy_rss_before: int | None
    proxy_rss_after: int | None
    upstream_rss_before: int
    upstream_rss_after: int

    def __post_init__(self) -> None:
        _check_counts(self, "participants", "failures", "upstream_rss_before",
                      "upstream_rss_after")

    def figures(self) -> dict[str, float | None]:
        """The reported figures, by key (memory in KiB)."""
        n = self.participants
        proxy = None
        if self.proxy_rss_before is not None and self.proxy_rss_after is not None and n:
            proxy = (self.proxy_rss_after - self.proxy_rss_before) / n / 1024
        upstream = (self.upstream_rss_after - self.upstream_rss_before) / n / 1024 if n else None
        return {
            "participants": float(n),
            "proxy_kib_per_pair": proxy,
            "upstream_kib_per_conn": upstream,
            "failures": float(self.failures),
        }


Result = RttResult | JoinResult | MemoryResult


# --------------------------------------------------------------------------------------------
# Measurements (in the load generator's event loop; they never start processes)


class _CpuWindow:
    """CPU time spent by the proxy and the demo meeting server from creation to :meth:`read`."""

    __slots__ = ("_own_start", "_proxy", "_proxy_start", "_upstream", "_upstream_start")

    def __init__(self, proxy: ProcessGroup | None, upstream: ProcessGroup | None) -> None:
        self._proxy = proxy
        self._upstream = upstream
        self._proxy_start = proxy.cpu_times() if proxy is not None else (0.0, 0.0)
        self._upstream_start = upstream.cpu_seconds() if upstream is not None else 0.0
        self._own_start = _own_cpu()

    def read(self) -> tuple[float | None, float | None, float | None, float]:
        """Return (proxy CPU, of which system, upstream CPU, load generator CPU) in seconds.

        Proxy and upstream figures are None when they are not sampled.
        """
        own = _own_cpu() - self._own_start
        proxy_cpu = proxy_sys = upstream_cpu = None
        if self._proxy is not None:
            user, system = self._proxy.cpu_times()
            proxy_sys = system - self._proxy_start[1]
            proxy_cpu = user - self._proxy_start[0] + proxy_sys
        if self._upstream is not None:
            upstream_cpu = self._upstream.cpu_seconds() - self._upstream_start
        return proxy_cpu, proxy_sys, upstream_cpu, own


def _own_cpu() -> float:
    """This process's CPU time (the load generator's), from getrusage (microsecond resolution)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Counter:
    """Hands out indexes to the workers of :func:`_run_workers`."""

    __slots__ = ("next", "total")

    def __init__(self, total: int) -> None:
        self.next = 0
        self.total = total

    def take(self) -> int | None:
        if self.next >= self.total:
            return None
        index = self.next
        self.next += 1
        return index


async def _run_workers(
    count: int, concurrency: int, job: Callable[[int], Any], timeout: float
) -> None:
    """Run ``job(i)`` for i in 0..count-1, at most ``concurrency`` at a time, within ``timeout``."""
    counter = _Counter(count)

    async def worker() -> None:
        while (index := counter.take()) is not None:
            await job(index)

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    except TimeoutError:
        raise BenchmarkError(f"{count} operations did not finish within {timeout:.0f} s") from None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Opener(Protocol):
    """Opens participant ``index`` of a group or a join storm and returns it ready (IDLE).

    The measurements call it for every participant, so the same measurement serves any join
    protocol (:func:`demo_opener` for the demo meeting server; bench_janus has Janus' own).

    Args:
        index: the participant's number in its group or storm.
        tag: makes the meeting and participant ids unique to this group or storm.
        source: the local address to connect from.
        first_echo: make one echo round trip after the join before being ready.
        timeout: seconds for the whole sequence.

    Raises:
        LoadError: the upgrade or the join was refused.
        TimeoutError: the sequence took longer than ``timeout``.
        OSError: the connection could not be made.
    """

    def __call__(
        self, index: int, *, tag: str, source: str, first_echo: bool = False, timeout: float = 10.0
    ) -> Awaitable[Participant]: ...


#: Ends the participants of a measurement (:func:`~loadtests.wsclient.close_all`, gracefully).
Release = Callable[[Sequence[Participant]], Awaitable[object]]


def demo_opener(endpoint: Endpoint, *, echo_size: int = 100) -> Opener:
    """An :class:`Opener` joining the demo meeting server: a meeting of its own per participant.

    Args:
        endpoint: where to connect.
        echo_size: the echo message size the participants will use.
    """

    async def open_one(
        index: int, *, tag: str, source: str, first_echo: bool = False, timeout: float = 10.0
    ) -> Participant:
        return await open_participant(
            endpoint, meeting=f"bench-{tag}-{index}", participant=f"p{index}", source=source,
            echo_size=echo_size, first_echo=first_echo, timeout=timeout,
        )  # fmt: skip

    return open_one


async def open_group(
    endpoint: Endpoint,
    count: int,
    *,
    tag: str,
    sources: Sequence[str],
    concurrency: int = 200,
    echo_size: int = 100,
    timeout: float = 120.0,
    connect_timeout: float = 10.0,
    opener: Opener | None = None,
) -> tuple[list[Participant], list[str]]:
    """Open ``count`` participants, each joined to a meeting of its own, and leave them idle.

    Args:
        endpoint: where to connect.
        count: how many participants.
        tag: makes meeting and participant ids unique to this group.
        sources: local addresses to spread the connections over.
        concurrency: connection attempts at a time.
        echo_size: the echo message size the participants will use.
        timeout: seconds for the whole group.
        connect_timeout: seconds for one participant.
        opener: how a participant is opened (default: :func:`demo_opener`, ``echo_size``).

    Returns:
        The ready participants and a description of each failure.

    Raises:
        BenchmarkError: the group did not finish within ``timeout``.
    """
    if opener is None:
        opener = demo_opener(endpoint, echo_size=echo_size)
    ready: list[Participant] = []
    failures: list[str] = []

    async def job(i: int) -> None:
        try:
            ready.append(await opener(
                i, tag=tag, source=sources[i % len(sources)], timeout=connect_timeout,
            ))  # fmt: skip
        except (OSError, TimeoutError, LoadError) as exc:
            failures.append(_describe(exc))

    try:
        await _run_workers(count, concurrency, job, timeout)
    except BaseException:
        for participant in ready:
            participant.abort()
        raise
    return ready, failures


async def measure_rtt(
    endpoint: Endpoint,
    *,
    proxy: ProcessGroup | None,
    upstream: ProcessGroup | None,
    connections: int,
    duration: float,
    warmup: float,
    sources: Sequence[str],
    concurrency: int = 200,
    echo_size: int = 100,
    timeout: float = 120.0,
    opener: Opener | None = None,
    release: Release = close_all,
) -> RttResult:
    """Measure closed-loop echo round trips over ``connections`` participants.

    Args:
        endpoint: the proxy (or the demo meeting server itself).
        proxy: the proxy's processes (None: direct).
        upstream: the demo meeting server's processes (None: not sampled).
        connections: participants echoing at once.
        duration: seconds of measured load.
        warmup: seconds of load before the measurement (not counted).
        sources: local addresses.
        concurrency: connection attempts at a time while opening.
        echo_size: bytes per echo message.
        timeout: seconds for opening the participants, and for draining the load.
        opener: how a participant is opened (default: :func:`demo_opener`, ``echo_size``).
        release: how the participants are ended afterwards.

    Returns:
        The figures of the measured phase; ``errors`` counts the replies of the wrong length
        and the messages nobody awaited that came during it.

    Raises:
        BenchmarkError: a participant could not join, or the load did not drain.
    """
    participants, failures = await open_group(
        endpoint, connections, tag=f"rtt-{os.urandom(3).hex()}", sources=sources,
        concurrency=concurrency, echo_size=echo_size, timeout=timeout, opener=opener,
    )
    try:
        if failures:
            raise BenchmarkError(
                f"{len(failures)} of {connections} participants could not join: {failures[0]}"
            )
        # The generator's own collector pauses would show up as latency, not as proxy cost.
        gc.collect()
        gc.disable()
        if warmup > 0:
            load = EchoLoad()
            load.start(participants)
            await asyncio.sleep(warmup)
            load.stop()
            if not await load.drained(timeout):
                raise BenchmarkError("the warm-up load did not drain")
        unexpected = sum(p.unexpected for p in participants)
        window = _CpuWindow(proxy, upstream)
        load = EchoLoad()
        started = time.perf_counter()
        load.start(participants)
        await asyncio.sleep(duration)
        load.stop()
        if not await load.drained(timeout):
            raise BenchmarkError(f"{load.inflight} round trips still in flight after {timeout} s")
        seconds = time.perf_counter() - started
        proxy_cpu, proxy_sys, upstream_cpu, generator_cpu = window.read()
        unexpected = sum(p.unexpected for p in participants) - unexpected
    finally:
        gc.enable()
        await release(participants)
    samples = sorted(load.samples)
    return RttResult(
        connections=connections, round_trips=len(samples), seconds=seconds,
        p50=percentile(samples, 0.5), p99=percentile(samples, 0.99),
        proxy_cpu=proxy_cpu, upstream_cpu=upstream_cpu, errors=load.errors + unexpected,
        lost=load.lost, proxy_sys_cpu=proxy_sys, generator_cpu=generator_cpu,
    )  # fmt: skip


async def join_storm(
    opener: Opener,
    *,
    proxy: ProcessGroup | None,
    upstream: ProcessGroup | None,
    joins: int,
    concurrency: int,
    sources: Sequence[str],
    warmup: int | None = None,
    timeout: float = 120.0,
) -> tuple[JoinResult, int]:
    """Measure a join storm: each join opens a participant with one echo, then closes it.

    Args:
        opener: how a participant is opened (called with ``first_echo=True``).
        proxy: the proxy's processes (None: direct).
        upstream: the upstream server's processes (None: not sampled).
        joins: joins measured.
        concurrency: joins in progress at a time.
        sources: local addresses.
        warmup: joins made first and not counted (default: ``concurrency``, at most ``joins``).
        timeout: seconds for the warm-up and for the measured storm, each.

    Returns:
        The figures (the proxy's CPU includes closing the connections), and the messages nobody
        awaited that the measured participants received (``unexpected``), in all.

    Raises:
        BenchmarkError: the storm did not finish within ``timeout``.
    """
    tag = os.urandom(3).hex()
    times: list[float] = []
    failures: list[str] = []
    opened: list[Participant] = []

    def make_job(prefix: str, record: bool) -> Callable[[int], Any]:
        async def job(i: int) -> None:
            try:
                participant = await opener(
                    i, tag=prefix, source=sources[i % len(sources)], first_echo=True
                )
            except (OSError, TimeoutError, LoadError) as exc:
                if record:
                    failures.append(_describe(exc))
                return
            participant.close()
            opened.append(participant)
            if record:
                times.append(participant.time_to_first_echo)

        return job

    count = min(concurrency, joins) if warmup is None else warmup
    try:
        if count:
            await _run_workers(count, concurrency, make_job(f"warm-{tag}", False), timeout)
            await close_all(opened)
            opened.clear()
        gc.collect()
        gc.disable()
        window = _CpuWindow(proxy, upstream)
        started = time.perf_counter()
        await _run_workers(joins, concurrency, make_job(f"join-{tag}", True), timeout)
        seconds = time.perf_counter() - started
        await close_all(opened)
        await asyncio.sleep(_SETTLE)
        proxy_cpu, proxy_sys, upstream_cpu, generator_cpu = window.read()
        unexpected = sum(p.unexpected for p in opened)
    finally:
        gc.enable()
        for participant in opened:
            participant.abort()
    times.sort()
    return JoinResult(
        joins=len(times), failures=len(failures), seconds=seconds,
        p50=percentile(times, 0.5), p99=percentile(times, 0.99),
        proxy_cpu=proxy_cpu, upstream_cpu=upstream_cpu, proxy_sys_cpu=proxy_sys,
        generator_cpu=generator_cpu, first_error=failures[0] if failures else "",
    ), unexpected  # fmt: skip


async def measure_joins(
    endpoint: Endpoint,
    *,
    proxy: ProcessGroup | None,
    upstream: ProcessGroup | None,
    joins: int,
    concurrency: int,
    sources: Sequence[str],
    warmup: int | None = None,
    echo_size: int = 100,
    timeout: float = 120.0,
) -> JoinResult:
    """Measure a join storm: connect, upgrade, join, ``joined``, one echo, close; repeated.

    Args:
        endpoint: the proxy (or the demo meeting server itself).
        proxy: the proxy's processes (None: direct).
        upstream: the demo meeting server's processes (None: not sampled).
        joins: joins measured.
        concurrency: joins in progress at a time.
        sources: local addresses.
        warmup: joins made first and not counted (default: ``concurrency``, at most ``joins``).
        echo_size: bytes of the echo message.
        timeout: seconds for the warm-up and for the measured storm, each.

    Returns:
        The figures; the proxy's CPU includes closing the connections.

    Raises:
        BenchmarkError: the storm did not finish within ``timeout``.
    """
    result, _ = await join_storm(
        demo_opener(endpoint, echo_size=echo_size), proxy=proxy, upstream=upstream, joins=joins,
        concurrency=concurrency, sources=sources, warmup=warmup, timeout=timeout,
    )  # fmt: skip
    return result


async def measure_memory(
    endpoint: Endpoint,
    *,
    proxy: ProcessGroup | None,
    upstream: ProcessGroup,
    participants: int,
    concurrency: int,
    sources: Sequence[str],
    timeout: float = 120.0,
    opener: Opener | None = None,
    release: Release = close_all,
) -> MemoryResult:
    """Measure the memory that idle participants cost the proxy (and the upstream server).

    Args:
        endpoint: the proxy (or the demo meeting server itself).
        proxy: the proxy's processes (None: direct).
        upstream: the demo meeting server's processes.
        participants: idle participants to hold.
        concurrency: connection attempts at a time.
        sources: local addresses.
        timeout: seconds for opening them all.
        opener: how a participant is opened (default: :func:`demo_opener`).
        release: how the participants are ended afterwards.

    Returns:
        RSS before and with the participants connected.

    Raises:
        BenchmarkError: opening did not finish within ``timeout``.
    """
    proxy_before = proxy.rss_bytes() if proxy is not None else None
    upstream_before = upstream.rss_bytes()
    group, failures = await open_group(
        endpoint, participants, tag=f"idle-{os.urandom(3).hex()}", sources=sources,
        concurrency=concurrency, timeout=timeout, opener=opener,
    )
    try:
        await asyncio.sleep(_SETTLE)
        proxy_after = proxy.rss_bytes() if proxy is not None else None
        upstream_after = upstream.rss_bytes()
    finally:
        await release(group)
    return MemoryResult(
        participants=len(group), failures=len(failures),
        proxy_rss_before=proxy_before, proxy_rss_after=proxy_after,
        upstream_rss_before=upstream_before, upstream_rss_after=upstream_after,
    )


# --------------------------------------------------------------------------------------------
# Processes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Child:
    """A server process of the benchmark, optionally pinned to one CPU.

    Args:
        name: for messages.
        argv: the command line.
        log: the file its standard output and error go to.
        cpu: the CPU it (and every process it forks) may run on; None leaves it unpinned.
        stop_timeout: seconds :meth:`stop` gives it between SIGTERM and SIGKILL.
    """

    def __init__(self, name: str, argv: Sequence[str], *, log: Path, cpu: int | None,
                 stop_timeout: float = 10.0) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.cpu = cpu
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (after :meth:`start`)."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start the process; its CPU affinity is set before it runs (children inherit it).

        It runs without core dumps: a server that crashes while stopping (Janus did, once) would
        otherwise leave a core file of gigabytes in the source tree it runs in. The soft limit is
        0 from the fork on, and the hard limit too once it runs, so that a server raising its own
        soft limit (Janus does) cannot dump either.
        """
        own = os.sched_getaffinity(0)
        core = resource.getrlimit(resource.RLIMIT_CORE)
        with self.log.open("ab") as out:
            try:
                # Set our own affinity and core limit around the fork: the child (and nginx's
                # worker, forked later) inherits them, with no window in which it runs elsewhere.
                if self.cpu is not None:
                    os.sched_setaffinity(0, {self.cpu})
                resource.setrlimit(resource.RLIMIT_CORE, (0, core[1]))
                self.process = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd=ROOT,
                )
                with contextlib.suppress(OSError):  # gone already: nothing to dump
                    resource.prlimit(self.process.pid, resource.RLIMIT_CORE, (0, 0))
            finally:
                resource.setrlimit(resource.RLIMIT_CORE, core)
                os.sched_setaffinity(0, own)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_listening(self, host: str, port: int, timeout: float = 20.0) -> None:
        """Wait until ``host:port`` accepts connections.

        Raises:
            BenchmarkError: the process exited, or nothing listened within ``timeout``.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise BenchmarkError(
                    f"{self.name} exited with code {code}; {self.log}:\n{self._log_tail()}"
                )
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise BenchmarkError(
                        f"{self.name} not listening on {host}:{port} after {timeout:.0f} s; "
                        f"{self.log}:\n{self._log_tail()}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout`` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait(5.0)


@dataclass(frozen=True, slots=True)
class Running:
    """A target ready for load: where to connect and whose CPU and memory count."""

    target: Target
    endpoint: Endpoint
    proxy: ProcessGroup | None
    upstream: ProcessGroup


class Environment:
    """What every measurement shares: the temp folder, the GeoIP database, binaries and CPUs.

    Args:
        folder: the temporary folder (configs, logs, nginx prefixes).
        nginx: the nginx binary, or None to skip nginx.
        proxy_cpu: the CPU for the proxy under test (None: no pinning).
        load_cpu: the CPU for the load generator and the demo meeting server (None: no pinning).
    """

    def __init__(self, folder: Path, nginx: str | None, proxy_cpu: int | None,
                 load_cpu: int | None) -> None:
        from proxy.geoip_build import build_from_csv

        self.folder = folder
        self.nginx = nginx
        self.proxy_cpu = proxy_cpu
        self.load_cpu = load_cpu
        self.count = 0
        self.python = sys.executable
        self.database = folder / "demo-geoip.mmdb"
        build_from_csv(ROOT / "config" / "demo" / "geoip.csv", self.database)
        self.restrictions = ROOT / "config" / "restrictions.toml"
        self.affinity: dict[str, dict[int, list[int]]] = {}

    def _folder(self, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:03d}-{name}"
        path.mkdir()
        return path

    def geogate_config(self, folder: Path, port: int, upstream_port: int) -> Path:
        """Write a geogate configuration: demo database, default restrictions, big backlog."""

        def q(value: object) -> str:
            return orjson.dumps(value).decode()  # a JSON string is a TOML basic string

        path = folder / "geogate.toml"
        path.write_text(
            "[listen]\n"
            f"host = {q('127.0.0.1')}\nport = {port}\nbacklog = 4096\n"
            "[upstream]\n"
            f"url = {q(f'ws://127.0.0.1:{upstream_port}/')}\nconnect_timeout = 5.0\n"
            "[geoip]\n"
            f"database = {q(str(self.database))}\nlookup_private = true\n"
            "[restrictions]\n"
            f"path = {q(str(self.restrictions))}\n",
            encoding="utf-8",
        )
        return path

    def upstream(self, folder: Path) -> tuple[Child, int]:
        """The signaling server the load goes to (here the demo meeting server), not started.

        Args:
            folder: the measurement's own folder (configuration, logs).

        Returns:
            The server and the port it will listen on at 127.0.0.1.
        """
        port = free_port()
        return Child(
            "demo upstream",
            [self.python, "-m", "proxy", "demo-upstream", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "WARNING"],
            log=folder / "upstream.log", cpu=self.load_cpu,
        ), port

    @contextlib.asynccontextmanager
    async def running(self, target: Target) -> AsyncIterator[Running]:
        """Start a fresh upstream server and, for a proxy target, the proxy in front of it."""
        folder = self._folder(str(target))
        children: list[Child] = []
        try:
            upstream, upstream_port = self.upstream(folder)
            children.append(upstream)
            upstream.start()
            await upstream.wait_listening("127.0.0.1", upstream_port)
            upstream_group = ProcessGroup(upstream.pid)
            if target is Target.DIRECT:
                yield Running(target, Endpoint("127.0.0.1", upstream_port), None, upstream_group)
                return
            port = free_port()
            if target is Target.GEOGATE:
                config = self.geogate_config(folder, port, upstream_port)
                proxy = Child(
                    "geogate",
                    [self.python, "-m", "proxy", "serve", "--config", str(config),
                     "--log-level", "INFO"],
                    log=folder / "geogate.log", cpu=self.proxy_cpu,
                )
                children_of_proxy = False
            else:
                assert self.nginx is not None
                settings = NginxSettings(
                    prefix=folder / "nginx", listen_port=port, upstream_host="127.0.0.1",
                    upstream_port=upstream_port,
                    rlimit_nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                )
                check_config(self.nginx, settings)
                proxy = Child("nginx", nginx_command(self.nginx, settings),
                              log=folder / "nginx.log", cpu=self.proxy_cpu)
                children_of_proxy = True
            children.append(proxy)
            proxy.start()
            await proxy.wait_listening("127.0.0.1", port)
            group = ProcessGroup(proxy.pid, children=children_of_proxy)
            self.affinity[str(target)] = group.affinity()
            yield Running(target, Endpoint("127.0.0.1", port), group, upstream_group)
        finally:
            for child in reversed(children):
                await child.stop()


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True, slots=True)
class CommonOptions:
    """What every relay benchmark runs (the command line, validated); subclasses add their own.

    Raises:
        ValueError: a count, size or duration out of range.
    """

    #: What ``--quick`` changes: tiny sizes, one round (each benchmark its own).
    QUICK: ClassVar[Mapping[str, Any]] = {}

    rounds: int = 3
    sizes: tuple[int, ...] = (100, 1000)
    duration: float = 5.0
    warmup: float = 1.0
    joins: int = 2000
    join_concurrency: int = 200
    idle: int = 5000
    sources: int = 200
    skip_nginx: bool = False
    only: Section | None = None
    quick: bool = False
    pin: bool = True
    proxy_cpu: int = 0
    load_cpu: int = 1
    timeout: float = 180.0
    json_path: Path | None = None
    keep: bool = False

    def __post_init__(self) -> None:
        positive = ("rounds", "joins", "join_concurrency", "idle", "duration", "timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.warmup < 0:
            raise ValueError("--warmup must not be negative")
        if not self.sizes or any(size <= 0 for size in self.sizes):
            raise ValueError("--sizes must be positive connection counts")
        if not 1 <= self.sources <= 254:
            raise ValueError("--sources must be 1-254")
        if self.proxy_cpu == self.load_cpu:
            raise ValueError("--proxy-cpu and --load-cpu must differ")

    @property
    def sections(self) -> tuple[Section, ...]:
        """The sections to run, in order."""
        return (self.only,) if self.only is not None else tuple(Section)

    @classmethod
    def add_own_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the benchmark's own options to ``parser`` (after ``--idle``)."""

    @classmethod
    def own_values(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The benchmark's own fields from the parsed command line.

        Raises:
            ValueError: a value out of range.
        """
        return {}

    @classmethod
    def parse(cls, argv: Sequence[str] | None, *, prog: str, description: str,
              upstream: str) -> Self:
        """Parse the command line (``--quick`` applied); a bad value is a usage error.

        Args:
            argv: the arguments (None: ``sys.argv[1:]``).
            prog: the program name in usage messages.
            description: what ``--help`` says the benchmark is.
            upstream: what the load generator shares its CPU with, in ``--help``.
        """
        parser = argparse.ArgumentParser(prog=prog, description=description)
        add = parser.add_argument
        add("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
        add("--sizes", default="100,1000",
            help="connection counts for the round-trip section (default 100,1000)")
        add("--duration", type=float, default=5.0,
            help="seconds of measured load per round-trip run (default 5)")
        add("--warmup", type=float, default=1.0,
            help="seconds of unmeasured load before each round-trip run (default 1)")
        add("--joins", type=int, default=2000, help="joins per join run (default 2000)")
        add("--join-concurrency", type=int, default=200,
            help="joins in progress at a time (default 200)")
        idle = next(f.default for f in fields(cls) if f.name == "idle")
        add("--idle", type=int, default=idle,
            help=f"idle participants for the memory section (default {idle})")
        cls.add_own_arguments(parser)
        add("--sources", type=int, default=200,
            help="source addresses 127.0.3.1-N to spread connections over")
        add("--skip-nginx", action="store_true", help="do not run nginx")
        add("--only", choices=[s.value for s in Section], help="run one section only")
        add("--quick", action="store_true",
            help="tiny sizes, one round: check that the benchmark works")
        add("--no-pin", action="store_true", help="do not pin processes to CPUs")
        add("--proxy-cpu", type=int, default=0, help="CPU for the proxy (default 0)")
        add("--load-cpu", type=int, default=1,
            help=f"CPU for the load generator and {upstream} (default 1)")
        add("--timeout", type=float, default=180.0,
            help="seconds any one phase may take (default 180)")
        add("--json", dest="json_path", type=Path, metavar="FILE",
            help="also write every figure to FILE")
        add("--keep", action="store_true",
            help="keep the temporary folder (configs and server logs)")
        args = parser.parse_args(argv)
        try:
            sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
            options = cls(
                rounds=args.rounds, sizes=sizes, duration=args.duration, warmup=args.warmup,
                joins=args.joins, join_concurrency=args.join_concurrency, idle=args.idle,
                sources=args.sources, skip_nginx=args.skip_nginx,
                only=Section(args.only) if args.only else None, pin=not args.no_pin,
                proxy_cpu=args.proxy_cpu, load_cpu=args.load_cpu, timeout=args.timeout,
                json_path=args.json_path, keep=args.keep, **cls.own_values(args),
            )
        except ValueError as exc:
            parser.error(str(exc))
        return replace(options, **cls.QUICK, quick=True) if args.quick else options


@dataclass(frozen=True, slots=True)
class Options(CommonOptions):
    """What to run (the command line, validated): the common options and the message size.

    Raises:
        ValueError: a count, size or duration out of range.
    """

    QUICK: ClassVar[Mapping[str, Any]] = {
        "rounds": 1, "sizes": (10, 50), "duration": 1.0, "warmup": 0.2, "joins": 100,
        "join_concurrency": 20, "idle": 200,
    }

    message_size: int = 100

    def __post_init__(self) -> None:
        # Explicit base call: zero-argument super() fails in a slots dataclass (new class).
        CommonOptions.__post_init__(self)
        if self.message_size < MIN_ECHO_SIZE:
            raise ValueError(f"--message-size must be at least {MIN_ECHO_SIZE}")

    @classmethod
    def add_own_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--message-size``."""
        parser.add_argument("--message-size", type=int, default=100,
                            help="bytes per echo message (default 100)")

    @classmethod
    def own_values(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The message size."""
        return {"message_size": args.message_size}


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line into :class:`Options` (``--quick`` applied)."""
    return Options.parse(argv, prog="python -m loadtests.bench_relay",
                         description="Relay benchmark: direct, geogate and nginx, interleaved.",
                         upstream="the demo server")


# --------------------------------------------------------------------------------------------
# Running and reporting


@dataclass(frozen=True, slots=True)
class _Row:
    key: str
    label: str
    fmt: str
    ratio: bool = True
    total: bool = False  # summed over rounds instead of the median


_ROWS: Final[dict[Section, tuple[_Row, ...]]] = {
    Section.RTT: (
        _Row("round_trips_per_s", "round trips/s", "{:,.0f}"),
        _Row("p50_us", "latency p50 (us)", "{:,.0f}"),
        _Row("p99_us", "latency p99 (us)", "{:,.0f}"),
        _Row("proxy_cpu_us", "proxy CPU per round trip (us)", "{:.1f}"),
        _Row("proxy_sys_cpu_us", "  of which kernel (us)", "{:.1f}"),
        _Row("proxy_busy_pct", "proxy CPU busy (%)", "{:.0f}"),
        _Row("upstream_cpu_us", "upstream CPU per round trip (us)", "{:.1f}", ratio=False),
        _Row("generator_cpu_us", "load generator CPU per rt (us)", "{:.1f}", ratio=False),
        _Row("errors", "errors (all rounds)", "{:.0f}", ratio=False, total=True),
    ),
    Section.JOINS: (
        _Row("joins_per_s", "joins/s", "{:,.0f}"),
        _Row("first_echo_p50_ms", "time to first echo p50 (ms)", "{:.2f}"),
        _Row("first_echo_p99_ms", "time to first echo p99 (ms)", "{:.2f}"),
        _Row("proxy_cpu_us", "proxy CPU per join (us)", "{:.0f}"),
        _Row("proxy_sys_cpu_us", "  of which kernel (us)", "{:.0f}"),
        _Row("proxy_busy_pct", "proxy CPU busy (%)", "{:.0f}"),
        _Row("upstream_cpu_us", "upstream CPU per join (us)", "{:.0f}", ratio=False),
        _Row("generator_cpu_us", "load generator CPU per join (us)", "{:.0f}", ratio=False),
        _Row("failures", "failed joins (all rounds)", "{:.0f}", ratio=False, total=True),
    ),
    Section.MEMORY: (
        _Row("participants", "idle participants", "{:,.0f}", ratio=False),
        _Row("proxy_kib_per_pair", "proxy memory per pair (KiB)", "{:.1f}"),
        _Row("upstream_kib_per_conn", "upstream memory per conn (KiB)", "{:.1f}", ratio=False),
        _Row("failures", "failed joins (all rounds)", "{:.0f}", ratio=False, total=True),
    ),
}


class SectionResults:
    """The per-round results of one section (one round-trip size, the joins, or memory)."""

    def __init__(self, key: str, section: Section, title: str, size: int) -> None:
        self.key = key
        self.section = section
        self.title = title
        self.size = size
        self.rounds: dict[Target, list[Result]] = {}

    def add(self, target: Target, result: Result) -> None:
        self.rounds.setdefault(target, []).append(result)

    def values(self, target: Target, key: str) -> list[float]:
        """A figure's per-round values for a target (missing ones left out)."""
        out: list[float] = []
        for result in self.rounds.get(target, []):
            value = result.figures()[key]
            if value is not None and not math.isnan(value):
                out.append(value)
        return out

    def summary(self, target: Target, row: _Row) -> float | None:
        """The median over rounds (or the total), None when there is no value."""
        values = self.values(target, row.key)
        if not values:
            return None
        return sum(values) if row.total else statistics.median(values)

    def ratio(self, key: str) -> float | None:
        """The median over rounds of geogate/nginx, each pair from the same round."""
        pairs = zip(self.values(Target.GEOGATE, key), self.values(Target.NGINX, key), strict=False)
        ratios = [g / n for g, n in pairs if n > 0]
        return statistics.median(ratios) if ratios else None

    def to_json(self) -> dict[str, Any]:
        rows = _ROWS[self.section]
        return {
            "title": self.title,
            "rounds": {
                str(t): [{**asdict(r), **r.figures()} for r in results]
                for t, results in self.rounds.items()
            },
            "median": {
                str(t): {row.key: self.summary(t, row) for row in rows} for t in self.rounds
            },
            "ratio_geogate_nginx": {row.key: self.ratio(row.key) for row in rows if row.ratio},
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one target was met.

    Attributes:
        name: what is checked.
        met: True, False, or None when it could not be checked (no nginx, no figure).
        text: one line with the numbers.
    """

    name: str
    met: bool | None
    text: str


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def verdicts(sections: Sequence[SectionResults]) -> list[Verdict]:
    """The verdicts on the targets (CPU ratios against nginx, memory per pair) of ``sections``.

    Args:
        sections: the measured sections.

    Returns:
        One verdict per target that applies to a section.
    """
    found: list[Verdict] = []
    cpu = _Row("proxy_cpu_us", "", "")
    for results in sections:
        if results.section is Section.MEMORY:
            row = _Row("proxy_kib_per_pair", "", "")
            geogate = results.summary(Target.GEOGATE, row)
            nginx = results.summary(Target.NGINX, row)
            name = "memory per admitted pair"
            if geogate is None:
                found.append(Verdict(name, None, f"{name}: no geogate figure"))
                continue
            met = geogate <= MEMORY_PER_PAIR_TARGET_KIB
            versus = f", nginx {nginx:.1f} KiB" if nginx is not None else ""
            over = "" if met else \
                f", {geogate / MEMORY_PER_PAIR_TARGET_KIB - 1:.0%} over the target"
            found.append(Verdict(name, met, (
                f"{name}: geogate {geogate:.1f} KiB{versus} (target <= "
                f"{MEMORY_PER_PAIR_TARGET_KIB:.0f} KiB): {'met' if met else 'NOT MET'}{over}"
            )))
            continue
        if results.section is Section.RTT:
            limit, name = RTT_CPU_RATIO_TARGET, f"CPU per round trip, {results.size:,} connections"
        else:
            limit, name = JOIN_CPU_RATIO_TARGET, "CPU per join (gate included)"
        geogate = results.summary(Target.GEOGATE, cpu)
        nginx = results.summary(Target.NGINX, cpu)
        ratio = results.ratio("proxy_cpu_us")
        if ratio is None or geogate is None or nginx is None:
            found.append(Verdict(name, None, f"{name}: not checked (needs geogate and nginx)"))
            continue
        met = ratio <= limit
        over = "" if met else f", {ratio / limit - 1:.0%} over the target"
        found.append(Verdict(name, met, (
            f"{name}: geogate {geogate:.1f} us, nginx {nginx:.1f} us, ratio {ratio:.2f}x "
            f"(target <= {limit}x): {'met' if met else 'NOT MET'}{over}"
        )))
    return found


def render_report(sections: Sequence[SectionResults], targets: Sequence[Target]) -> str:
    """The tables (one per section) and the verdicts, as text.

    Args:
        sections: the results.
        targets: the targets that were run, in column order.

    Returns:
        The report.
    """
    lines: list[str] = []
    show_ratio = Target.GEOGATE in targets and Target.NGINX in targets
    header = [f"{t}" for t in targets] + (["geogate/nginx"] if show_ratio else [])
    width = 34
    for results in sections:
        rounds = max((len(r) for r in results.rounds.values()), default=0)
        lines.append("")
        lines.append(f"{results.title} (median of {rounds} rounds)")
        lines.append(" " * width + "".join(f"{h:>15}" for h in header))
        for row in _ROWS[results.section]:
            cells = [_fmt(results.summary(t, row), row.fmt) for t in targets]
            if show_ratio:
                ratio = results.ratio(row.key) if row.ratio else None
                cells.append(_fmt(ratio, "{:.2f}x"))
            lines.append(f"{row.label:<{width}}" + "".join(f"{c:>15}" for c in cells))
    lines.append("")
    lines.append("Targets (geogate against nginx in the same run):")
    for verdict in verdicts(sections):
        mark = {True: "met    ", False: "NOT MET", None: "n/a    "}[verdict.met]
        lines.append(f"  [{mark}] {verdict.text}")
    return "\n".join(lines)


def sources_digest() -> str:
    """A short digest of geogate's sources (proxy/**/*.py), naming the code that was measured.

    The benchmark may run on uncommitted code; this tells two runs' code apart.
    """
    digest = hashlib.sha256()
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


OptionsT = TypeVar("OptionsT", bound=CommonOptions)


def _environment(env: Environment, options: CommonOptions, nofile: int, digest: str,
                 upstream: str) -> dict[str, Any]:
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5,
                                check=False).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "proxy_sources_sha256": digest,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "nginx": nginx_version(env.nginx) if env.nginx else None,
        "pinning": {"proxy": env.proxy_cpu, f"load_and_{upstream.lower()}": env.load_cpu},
        "affinity_seen": env.affinity,
        "nofile_limit": nofile,
    }


def one_line(target: Target, result: Result) -> str:
    """The progress line of one measurement: the section's main figures for ``target``."""
    f = result.figures()
    if isinstance(result, RttResult):
        return (f"{target}: {_fmt(f['round_trips_per_s'], '{:,.0f}')} rt/s, p99 "
                f"{_fmt(f['p99_us'], '{:,.0f}')} us, proxy CPU "
                f"{_fmt(f['proxy_cpu_us'], '{:.1f}')} us/rt")
    if isinstance(result, JoinResult):
        failed = f", {result.failures} failed ({result.first_error})" if result.failures else ""
        return (f"{target}: {_fmt(f['joins_per_s'], '{:,.0f}')} joins/s, proxy CPU "
                f"{_fmt(f['proxy_cpu_us'], '{:.0f}')} us/join{failed}")
    return (f"{target}: {result.participants} idle, proxy "
            f"{_fmt(f['proxy_kib_per_pair'], '{:.1f}')} KiB/pair")


class Benchmark(abc.ABC, Generic[OptionsT]):
    """One relay benchmark: its own parts, run by :meth:`main` with the shared machinery.

    The shared part starts each target fresh (:meth:`Environment.running`), interleaves the
    targets within each round, prints progress, the tables and the verdicts, and writes the
    figures; a subclass says what the upstream server is and how a section is measured.

    Args:
        options: what to run.
    """

    #: The module's name, in error messages and the temporary folder's.
    name: ClassVar[str]
    #: The first words of the start line.
    title: ClassVar[str]
    #: The upstream server, as the start line calls it (CPU pinning).
    upstream: ClassVar[str]

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    def missing(self) -> str | None:
        """Why the benchmark cannot run on this machine, or None when it can."""
        return None

    @abc.abstractmethod
    def environment(self, folder: Path, nginx: str | None, proxy_cpu: int | None,
                    load_cpu: int | None) -> Environment:
        """The environment of the run (arguments as :class:`Environment`'s)."""

    @abc.abstractmethod
    def section_title(self, section: Section, size: int) -> str:
        """The heading of a section's table (``size``: connections, joins or participants)."""

    @abc.abstractmethod
    def opener(self, endpoint: Endpoint, section: Section) -> Opener:
        """How a participant of ``section`` joins the upstream server at ``endpoint``."""

    async def release(self, participants: Sequence[Participant]) -> None:
        """End the participants of a round-trip or memory measurement (default: gracefully)."""
        await close_all(participants)

    def join_result(self, result: JoinResult, unexpected: int) -> JoinResult:
        """The join storm's result to report, given the messages nobody awaited in it."""
        return result

    async def measure(self, run: Running, section: Section, size: int,
                      sources: Sequence[str]) -> Result:
        """Measure one section on one running target.

        Raises:
            BenchmarkError: a phase did not complete.
        """
        options = self.options
        opener = self.opener(run.endpoint, section)
        common: dict[str, Any] = {"proxy": run.proxy, "upstream": run.upstream,
                                  "sources": sources, "timeout": options.timeout,
                                  "concurrency": options.join_concurrency}
        if section is Section.RTT:
            return await measure_rtt(
                run.endpoint, connections=size, duration=options.duration,
                warmup=options.warmup, opener=opener, release=self.release, **common,
            )
        if section is Section.JOINS:
            return self.join_result(*await join_storm(opener, joins=size, **common))
        return await measure_memory(run.endpoint, participants=size, opener=opener,
                                    release=self.release, **common)

    def settings(self) -> str:
        """The benchmark's own settings for the start line (" key=value ..."), or ""."""
        return ""

    def notes(self, results: Sequence[SectionResults], targets: Sequence[Target]) -> list[str]:
        """Lines printed under the tables."""
        return []

    def about(self) -> str:
        """What the closing line says of the setup before the CPU accounting ("...; "), or ""."""
        return ""

    def environment_info(self) -> dict[str, Any]:
        """The benchmark's own entries in the JSON report's environment."""
        return {}

    def plan(self) -> Iterator[tuple[str, Section, str, int]]:
        """The sections to measure, in order: (key, section, title, size)."""
        options = self.options
        for section in options.sections:
            if section is Section.RTT:
                for size in options.sizes:
                    yield f"rtt-{size}", section, self.section_title(section, size), size
            else:
                size = options.joins if section is Section.JOINS else options.idle
                yield str(section), section, self.section_title(section, size), size

    async def run(self, env: Environment, out: TextIO) -> list[SectionResults]:
        """Run every section, targets interleaved within each round.

        Args:
            env: processes, binaries and CPUs.
            out: where progress lines go.

        Returns:
            The results by section, in order.

        Raises:
            BenchmarkError: a server failed or a phase did not complete.
        """
        options = self.options
        targets = [Target.DIRECT, Target.GEOGATE] + ([Target.NGINX] if env.nginx else [])
        sources = source_addresses(options.sources)
        all_results: list[SectionResults] = []
        for key, section, title, size in self.plan():
            results = SectionResults(key, section, title, size)
            all_results.append(results)
            for round_number in range(1, options.rounds + 1):
                for target in targets:
                    async with env.running(target) as run:
                        result = await self.measure(run, section, size, sources)
                    results.add(target, result)
                    print(f"[{key} round {round_number}/{options.rounds}] "
                          f"{one_line(target, result)}", file=out, flush=True)
        return all_results

    def main(self) -> int:
        """Run the benchmark, print the report; return the exit code (0, or 1 on failure)."""
        options = self.options
        out = sys.stdout
        err = sys.stderr
        why_not = self.missing()
        if why_not is not None:
            print(f"{self.name}: {why_not}", file=err)
            return 1
        nofile = raise_nofile_limit()
        nginx = None if options.skip_nginx else find_nginx()
        if nginx is None:
            why = "--skip-nginx given" if options.skip_nginx else \
                "nginx is not installed (run `make bench-deps`)"
            banner = "!" * 78
            print(f"{banner}\n!!! NGINX SKIPPED: {why}.\n!!! No geogate/nginx ratios and no "
                  f"verdicts on the CPU targets in this run.\n{banner}", file=err, flush=True)
        own = os.sched_getaffinity(0)
        pin = options.pin and len(own) >= 2 and {options.proxy_cpu, options.load_cpu} <= own
        if options.pin and not pin:
            print(f"warning: cannot pin to CPUs {options.proxy_cpu} and {options.load_cpu}; "
                  "running unpinned", file=err, flush=True)
        folder = Path(tempfile.mkdtemp(prefix=f"geogate-{self.name.replace('_', '-')}-"))
        started = time.monotonic()
        digest = sources_digest()
        try:
            env = self.environment(folder, nginx, options.proxy_cpu if pin else None,
                                   options.load_cpu if pin else None)
            if pin:
                os.sched_setaffinity(0, {options.load_cpu})
            print(f"{self.title}: rounds={options.rounds} sizes={options.sizes} "
                  f"duration={options.duration}s joins={options.joins}@"
                  f"{options.join_concurrency} idle={options.idle}{self.settings()}"
                  f"{' (quick)' if options.quick else ''}; open-file limit {nofile}; proxy on "
                  f"CPU {env.proxy_cpu}, load and {self.upstream} on CPU {env.load_cpu}; logs in "
                  f"{folder}", file=err, flush=True)
            from proxy.service import loop_factory

            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                results = runner.run(self.run(env, err))
            targets = [Target.DIRECT, Target.GEOGATE] + ([Target.NGINX] if nginx else [])
            print(render_report(results, targets), file=out)
            for note in self.notes(results, targets):
                print(f"\n{note}", file=out)
            changed = ", changed during the run" if sources_digest() != digest else ""
            print(f"\n(total {time.monotonic() - started:.0f} s; {self.about()}CPU is the "
                  "proxy's own utime+stime; ratio = median of per-round geogate/nginx; geogate "
                  f"sources {digest}{changed})", file=out, flush=True)
            if options.json_path is not None:
                report = {
                    "environment": _environment(env, options, nofile, digest, self.upstream)
                    | self.environment_info(),
                    "options": {k: (str(v) if isinstance(v, Path | enum.Enum) else v)
                                for k, v in asdict(options).items()},
                    "sections": {r.key: r.to_json() for r in results},
                    "verdicts": [asdict(v) for v in verdicts(results)],
                }
                options.json_path.write_bytes(
                    orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
                )
                print(f"figures written to {options.json_path}", file=out)
        except (GeogateError, OSError) as exc:
            print(f"{self.name}: {exc}\n(server logs kept in {folder})", file=err)
            return 1
        except KeyboardInterrupt:
            print(f"{self.name}: interrupted (server logs kept in {folder})", file=err)
            return 130
        finally:
            if pin:
                os.sched_setaffinity(0, own)
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)
        return 0


class RelayBenchmark(Benchmark[Options]):
    """The relay benchmark in front of the demo meeting server (module docstring)."""

    name = "bench_relay"
    title = "geogate relay benchmark"
    upstream = "upstream"

    def environment(self, folder: Path, nginx: str | None, proxy_cpu: int | None,
                    load_cpu: int | None) -> Environment:
        """The demo meeting server's environment."""
        return Environment(folder, nginx, proxy_cpu, load_cpu)

    def section_title(self, section: Section, size: int) -> str:
        """Round trips of ``--message-size`` bytes, joins, idle participants."""
        options = self.options
        if section is Section.RTT:
            return f"Round trips, {size:,} connections, {options.message_size}-byte messages"
        if section is Section.JOINS:
            return f"Joins, {size:,} at concurrency {options.join_concurrency}"
        return f"Memory, {size:,} idle participants"

    def opener(self, endpoint: Endpoint, section: Section) -> Opener:
        """A meeting of its own per participant, echoes of ``--message-size`` bytes."""
        return demo_opener(endpoint, echo_size=self.options.message_size)

    def environment_info(self) -> dict[str, Any]:
        """The websockets version, the clock tick and the message size."""
        from importlib.metadata import version

        return {"websockets": version("websockets"), "clock_ticks_per_s": _CLK_TCK,
                "message_size": self.options.message_size}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; return the exit code (0, or 1 on failure)."""
    return RelayBenchmark(parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
