"""The plan: who joins which meeting from which address, when, and what each does then (pure).

A scenario becomes a :class:`Plan`: one :class:`ParticipantPlan` per participant with its meeting,
region pool, source address (and forwarded address for pools outside loopback) and a time-ordered
list of events (join, signals, drops and rejoins, leave). The same scenario and seed always give
the same plan. A trace becomes a plan too, so a recorded storm is replayed event by event.

Arrival profiles (``n`` participants):

- constant: ``n`` joins evenly over ``duration`` (or at ``rate``), or with exponential gaps
  (``poisson``);
- ramp: the rate grows linearly from ``rate`` to ``rate_end``; the duration is what ``n`` joins
  take (``n = (rate + rate_end) / 2 * duration``);
- spike: ``spike_fraction`` of the joins evenly in ``[spike_at, spike_at + spike_width]``, the rest
  evenly over the base duration.

Shares (regions, meeting groups, zipf weights) become exact counts by largest remainder, so 15% of
5,000 is exactly 750 participants.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from loadtests.scenario import ArrivalKind, ArrivalSpec, RegionPool, Scenario, Spread
from loadtests.trace import EventKind, TraceEvent

__all__ = [
    "ParticipantPlan",
    "Plan",
    "PlannedEvent",
    "arrival_times",
    "build_plan",
    "exact_counts",
    "mark_final",
    "plan_from_trace",
    "pool_addresses",
]


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One thing a participant is to do.

    Attributes:
        t: seconds from the run's start.
        kind: join, signal, leave or drop.
        size: a signal's message size in bytes.
        probe: a signal tick that also times a round trip (signal to self).
        resume: a join that rejoins after a drop.
        retry: a join the worker added after a failed one (not planned: no start lag).
        final: the connection's last signal (receivers expect it before they see a leave).

    Raises:
        ValueError: a negative time or a signal without a size.
    """

    t: float
    kind: EventKind
    size: int = 0
    probe: bool = False
    resume: bool = False
    retry: bool = False
    final: bool = False

    def __post_init__(self) -> None:
        if not self.t >= 0:
            raise ValueError(f"t: {self.t!r} must be 0 or more")
        if self.kind is EventKind.SIGNAL and self.size <= 0:
            raise ValueError(f"size: a signal needs a size above 0, got {self.size}")


@dataclass(frozen=True, slots=True)
class ParticipantPlan:
    """One participant: identity, place, and events in time order.

    Raises:
        ValueError: no events, events out of order, or a first event that is not a join.
    """

    index: int
    participant: str
    meeting: str
    region: str
    source: str
    forwarded: str | None
    events: tuple[PlannedEvent, ...]

    def __post_init__(self) -> None:
        if not self.events:
            raise ValueError(f"{self.participant}: a participant needs at least one event")
        if self.events[0].kind is not EventKind.JOIN:
            raise ValueError(f"{self.participant}: the first event must be a join")
        if any(b.t < a.t for a, b in itertools.pairwise(self.events)):
            raise ValueError(f"{self.participant}: events must be in time order")

    @property
    def address(self) -> str:
        """The client address the proxy should see (forwarded, else the source)."""
        return self.forwarded or self.source

    @property
    def first_join(self) -> float:
        """When the participant first joins."""
        return self.events[0].t


@dataclass(frozen=True, slots=True)
class Plan:
    """Every participant's plan.

    Attributes:
        participants: by index.
        requested_rate: the joins per second asked for (first joins over their time span).
        last_event: the time of the last planned event.
    """

    participants: tuple[ParticipantPlan, ...]
    requested_rate: float
    last_event: float

    def __len__(self) -> int:
        return len(self.participants)

    def share(self, worker: int, workers: int) -> list[ParticipantPlan]:
        """The participants a worker takes (every ``workers``-th, so arrivals interleave)."""
        return list(self.participants[worker::workers])

    def joins(self) -> int:
        """Join events planned (first joins and rejoins; retries are not planned)."""
        return sum(1 for p in self.participants for e in p.events if e.kind is EventKind.JOIN)


# --------------------------------------------------------------------------------------------------
# Building blocks.


def exact_counts(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into whole counts proportional to ``weights`` (largest remainder).

    Args:
        total: the number to split.
        weights: positive weights.

    Returns:
        Counts summing to ``total``; ties go to the earlier weight.

    Raises:
        ValueError: no weights, or a weight that is not positive.
    """
    if not weights or any(not w > 0 for w in weights):
        raise ValueError("weights must be positive and not empty")
    whole = sum(weights)
    quotas = [total * w / whole for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def pool_addresses(pool: RegionPool, limit: int = 65536) -> list[str]:
    """The usable addresses of a pool, in order, at most ``limit``.

    Host addresses only (no network or broadcast address for prefixes shorter than /31).
    """
    out: list[str] = []
    for network in pool.networks:
        hosts: Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]
        hosts = iter([network.network_address]) if network.num_addresses == 1 else network.hosts()
        for host in hosts:
            out.append(str(host))
            if len(out) >= limit:
                return out
    return out


def arrival_times(spec: ArrivalSpec, count: int, rng: random.Random) -> list[float]:
    """The first-join times of ``count`` participants, sorted.

    Raises:
        ValueError: a trace arrival (use :func:`plan_from_trace`).
    """
    if count <= 0:
        return []
    if spec.kind is ArrivalKind.TRACE:
        raise ValueError("trace arrivals come from the trace (plan_from_trace)")
    if spec.kind is ArrivalKind.RAMP:
        assert spec.rate is not None and spec.rate_end is not None
        r0, r1 = spec.rate, spec.rate_end
        duration = 2 * count / (r0 + r1)
        slope = (r1 - r0) / duration
        times = []
        for i in range(count):
            # Solve r0 t + slope t^2 / 2 = i for t (the i-th join), stable for tiny slopes.
            flat = abs(slope) < 1e-12
            t = i / r0 if flat else (-r0 + math.sqrt(r0 * r0 + 2 * slope * i)) / slope
            times.append(max(0.0, t))
        return times
    duration = spec.duration if spec.duration is not None else count / (spec.rate or 1.0)
    if spec.kind is ArrivalKind.SPIKE:
        spiked = round(count * spec.spike_fraction)
        base = count - spiked
        times = [i * duration / base for i in range(base)] if base else []
        times += [spec.spike_at + i * spec.spike_width / spiked for i in range(spiked)]
        return sorted(times)
    if spec.poisson:
        mean_gap = duration / count
        t, times = 0.0, []
        for _ in range(count):
            times.append(t)
            t += rng.expovariate(1 / mean_gap)
        return times
    return [i * duration / count for i in range(count)]


def _spread(count: int, meetings: list[str], spread: Spread, zipf_s: float,
            rng: random.Random) -> list[str]:
    if spread is Spread.ZIPF:
        weights = [1 / (k ** zipf_s) for k in range(1, len(meetings) + 1)]
        counts = exact_counts(count, weights)
    else:
        counts = exact_counts(count, [1.0] * len(meetings))
    out = [m for m, n in zip(meetings, counts, strict=True) for _ in range(n)]
    rng.shuffle(out)
    return out


def _uniform(rng: random.Random, low: float, high: float) -> float:
    return low if high <= low else rng.uniform(low, high)


# --------------------------------------------------------------------------------------------------
# Plans.


def build_plan(scenario: Scenario, *, id_suffix: str = "") -> Plan:
    """Build the plan of a generated (not trace) scenario.

    Args:
        scenario: the scenario.
        id_suffix: appended to participant ids (so repeated runs against one upstream differ).

    Returns:
        The plan.

    Raises:
        ValueError: the scenario's arrival is a trace, or a pool has no usable address.
    """
    if scenario.arrival.kind is ArrivalKind.TRACE:
        raise ValueError("a trace scenario is planned from its trace (plan_from_trace)")
    rng = random.Random(scenario.run.seed)
    count = scenario.participants.count
    joins = arrival_times(scenario.arrival, count, rng)

    region_counts = exact_counts(count, [pool.share for pool in scenario.region])
    regions = [i for i, n in enumerate(region_counts) for _ in range(n)]
    rng.shuffle(regions)

    group_counts = exact_counts(count, [group.share for group in scenario.meeting])
    meetings: list[str] = []
    for group, n in zip(scenario.meeting, group_counts, strict=True):
        meetings += _spread(n, group.meetings(), group.spread, group.zipf_s, rng)
    rng.shuffle(meetings)

    addresses = [pool_addresses(pool) for pool in scenario.region]
    for pool, pool_list in zip(scenario.region, addresses, strict=True):
        if not pool_list:
            raise ValueError(f"region {pool.name!r} has no usable address")
    forwarders = [str(a) for network in scenario.generator.forwarded_sources
                  for a in (network.hosts() if network.num_addresses > 2
                            else [network.network_address])]
    used = [0] * len(scenario.region)
    forwarded_used = 0

    participants = []
    for index, join in enumerate(joins):
        pool_index = regions[index]
        pool = scenario.region[pool_index]
        pool_list = addresses[pool_index]
        address = pool_list[used[pool_index] % len(pool_list)]
        used[pool_index] += 1
        if pool.forwarded:
            source, forwarded = forwarders[forwarded_used % len(forwarders)], address
            forwarded_used += 1
        else:
            source, forwarded = address, None
        events = _events(scenario, join, random.Random(f"{scenario.run.seed}:{index}"))
        participants.append(ParticipantPlan(
            index, f"{scenario.participants.id_prefix}{index}{id_suffix}", meetings[index],
            pool.name, source, forwarded, tuple(events),
        ))
    span = joins[-1] - joins[0] if len(joins) > 1 else 0.0
    rate = (len(joins) - 1) / span if span > 0 else float(len(joins))
    last = max((p.events[-1].t for p in participants), default=0.0)
    return Plan(tuple(participants), rate, last)


def _events(scenario: Scenario, join: float, rng: random.Random) -> list[PlannedEvent]:
    stay = _uniform(rng, scenario.participants.stay.low, scenario.participants.stay.high)
    leave = join + stay
    events = [PlannedEvent(join, EventKind.JOIN)]
    # Drops and rejoins: a random blip, then the mass waves, without overlapping gaps.
    reconnect = scenario.reconnect
    gaps: list[tuple[float, float]] = []
    if reconnect.probability and stay > 1.0 and rng.random() < reconnect.probability:
        drop = _uniform(rng, join + 0.5, leave - 0.5)
        gaps.append((drop, drop + _uniform(rng, reconnect.delay.low, reconnect.delay.high)))
    for wave in reconnect.wave:
        if join < wave.at < leave and rng.random() < wave.fraction:
            gaps.append((wave.at, wave.at + _uniform(rng, 0.0, wave.spread)))
    kept: list[tuple[float, float]] = []
    for drop, rejoin in sorted(gaps):
        if not kept or drop > kept[-1][1]:
            kept.append((drop, rejoin))
    for drop, rejoin in kept:
        events.append(PlannedEvent(drop, EventKind.DROP))
        events.append(PlannedEvent(rejoin, EventKind.JOIN, resume=True))
    last_rejoin = kept[-1][1] if kept else join
    signals = scenario.signals
    if signals.enabled:
        t = join + signals.interval * rng.uniform(0.5, 1.5)
        tick = 0
        while t < leave:
            tick += 1
            size = round(_uniform(rng, signals.size.low, signals.size.high))
            probe = bool(signals.round_trip_every) and tick % signals.round_trip_every == 0
            events.append(PlannedEvent(t, EventKind.SIGNAL, size=max(size, 1), probe=probe))
            t += signals.interval * rng.uniform(0.5, 1.5)
    events.append(PlannedEvent(max(leave, last_rejoin), EventKind.LEAVE))
    events.sort(key=lambda e: e.t)
    return mark_final(events)


def mark_final(events: Sequence[PlannedEvent]) -> list[PlannedEvent]:
    """Flag the last signal before each drop or leave as final (pure).

    Receivers that see a participant leave without its final signal report it; the main process
    then knows whether that signal was owed (a normal leave) or not (a drop).
    """
    out = list(events)
    last_signal: int | None = None
    for i, event in enumerate(out):
        if event.kind is EventKind.SIGNAL:
            last_signal = i
        elif event.kind in (EventKind.DROP, EventKind.LEAVE):
            if last_signal is not None:
                out[last_signal] = dataclasses.replace(out[last_signal], final=True)
            last_signal = None
        elif event.kind is EventKind.JOIN:
            last_signal = None
    return out


def plan_from_trace(events: Sequence[TraceEvent], speed: float = 1.0) -> Plan:
    """Build a plan that replays a trace.

    Args:
        events: the trace's events.
        speed: replay speed; times are divided by it.

    Returns:
        The plan; participants are numbered in order of their first event.

    Raises:
        ValueError: a participant whose first event is not a join, or whose joins name
            different meetings or sources.
    """
    by_participant: dict[str, list[TraceEvent]] = {}
    for event in sorted(events, key=lambda e: e.t):
        by_participant.setdefault(event.participant, []).append(event)
    participants = []
    for index, (pid, items) in enumerate(by_participant.items()):
        first = items[0]
        if first.event is not EventKind.JOIN:
            raise ValueError(f"{pid}: the first event of a participant must be a join")
        for item in items:
            if item.event is EventKind.JOIN and (item.meeting, item.source, item.forwarded) != (
                    first.meeting, first.source, first.forwarded):
                raise ValueError(f"{pid}: every join must name the same meeting and addresses")
        planned = tuple(
            PlannedEvent(e.t / speed, e.event, size=e.size, probe=e.probe, resume=e.resume,
                         final=e.final)
            for e in items
        )
        assert first.meeting is not None and first.source is not None and first.region
        participants.append(ParticipantPlan(index, pid, first.meeting, first.region,
                                            first.source, first.forwarded, planned))
    firsts = sorted(p.first_join for p in participants)
    span = firsts[-1] - firsts[0] if len(firsts) > 1 else 0.0
    rate = (len(firsts) - 1) / span if span > 0 else float(len(firsts))
    last = max((p.events[-1].t for p in participants), default=0.0)
    return Plan(tuple(participants), rate, last)
