"""The plan: arrival profiles, exact shares, address spreading, events per participant (pure)."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from pathlib import Path

import pytest

from loadtests.plan import (
    PlannedEvent,
    arrival_times,
    build_plan,
    exact_counts,
    mark_final,
    plan_from_trace,
    pool_addresses,
)
from loadtests.scenario import (
    ArrivalKind,
    ArrivalSpec,
    GeneratorSpec,
    MeetingGroup,
    ParticipantsSpec,
    Range,
    ReconnectSpec,
    RegionPool,
    Scenario,
    SignalSpec,
    TargetSpec,
    WaveSpec,
)
from loadtests.trace import EventKind, TraceEvent

net = ipaddress.ip_network


def scenario(**changes: object) -> Scenario:
    base = Scenario(
        target=TargetSpec(config=Path("geogate.toml")),
        meeting=(MeetingGroup("event-{n}", count=10, share=0.8), MeetingGroup("board", share=0.2)),
        region=(RegionPool("CN", (net("127.0.1.0/24"),), share=0.15),
                RegionPool("US", (net("127.0.3.0/24"),), share=0.85),
                RegionPool("IR", (net("198.51.100.0/24"),), share=0.05, forwarded=True)),
        participants=ParticipantsSpec(2000, Range(5.0, 8.0)),
        arrival=ArrivalSpec(duration=10.0),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_exact_counts_are_proportional_and_sum_to_the_total() -> None:
    """15% of 5,000 is exactly 750; remainders go to the largest fractions."""
    assert exact_counts(5000, [0.15, 0.35, 0.2, 0.15, 0.15]) == [750, 1750, 1000, 750, 750]
    assert exact_counts(10, [1, 1, 1]) == [4, 3, 3]
    with pytest.raises(ValueError):
        exact_counts(10, [1, 0])


def test_constant_ramp_and_spike_arrivals() -> None:
    """Even spacing; a ramp that speeds up; a spike holding its share in its window."""
    rng = random.Random(1)
    constant = arrival_times(ArrivalSpec(duration=10.0), 500, rng)
    assert constant[0] == 0.0 and constant[-1] < 10.0 and len(constant) == 500
    assert constant[1] - constant[0] == pytest.approx(0.02)
    ramp = arrival_times(ArrivalSpec(ArrivalKind.RAMP, rate=50.0, rate_end=250.0), 1500, rng)
    assert ramp[-1] == pytest.approx(2 * 1500 / 300, rel=0.01)
    assert ramp[1] - ramp[0] > ramp[-1] - ramp[-2]
    spike = arrival_times(ArrivalSpec(ArrivalKind.SPIKE, duration=10.0, spike_at=4.0,
                                      spike_width=0.5, spike_fraction=0.6), 1000, rng)
    assert sum(1 for t in spike if 4.0 <= t < 4.5) >= 600
    assert spike == sorted(spike)
    poisson = arrival_times(ArrivalSpec(duration=10.0, poisson=True), 1000, rng)
    assert 7.0 < poisson[-1] < 13.0


def test_plans_are_deterministic_and_shares_exact() -> None:
    """The same seed gives the same plan; region and meeting-group counts are exact."""
    plan = build_plan(scenario())
    assert plan == build_plan(scenario())
    regions = [p.region for p in plan.participants]
    assert (regions.count("CN"), regions.count("US"), regions.count("IR")) == (286, 1619, 95)
    assert sum(1 for p in plan.participants if p.meeting == "board") == 400
    assert plan.requested_rate == pytest.approx(200, rel=0.01)


def test_addresses_are_spread_across_each_pool() -> None:
    """Bound addresses come from the pool, spread evenly; forwarded pools use the trusted source."""
    plan = build_plan(scenario())
    cn = [p.source for p in plan.participants if p.region == "CN"]
    assert all(ipaddress.ip_address(a) in net("127.0.1.0/24") for a in cn)
    assert len(set(cn)) == 254  # every host address of the /24 used
    iran = [p for p in plan.participants if p.region == "IR"]
    assert {p.source for p in iran} == {"127.0.0.2"}
    assert all(p.forwarded and ipaddress.ip_address(p.address) in net("198.51.100.0/24")
               for p in iran)
    assert pool_addresses(RegionPool("one", (net("127.0.9.9/32"),))) == ["127.0.9.9"]


def test_events_follow_the_stay_signals_and_reconnects() -> None:
    """Signals fall inside the stay, drops are followed by resumes, the last signal is final."""
    plan = build_plan(scenario(
        signals=SignalSpec(interval=1.0, size=Range(50, 150), round_trip_every=2),
        reconnect=ReconnectSpec(probability=0.5, delay=Range(0.2, 0.4),
                                wave=(WaveSpec(at=7.0, fraction=1.0, spread=1.0),)),
    ))
    for p in plan.participants:
        kinds = [e.kind for e in p.events]
        assert kinds[0] is EventKind.JOIN and kinds[-1] is EventKind.LEAVE
        for i, event in enumerate(p.events):
            if event.kind is EventKind.DROP:
                assert p.events[i + 1 :][0].kind in (EventKind.JOIN, EventKind.SIGNAL)
                assert any(e.kind is EventKind.JOIN and e.resume for e in p.events[i + 1 :])
            if event.kind is EventKind.SIGNAL:
                assert 50 <= event.size <= 150
                assert p.events[0].t <= event.t <= p.events[-1].t
    waved = [p for p in plan.participants if p.events[0].t < 7.0 < p.events[-1].t]
    dropped = [p for p in waved if any(e.kind is EventKind.DROP and e.t == 7.0 for e in p.events)]
    # Everyone connected at 7 s drops, but for those whose random blip covers that moment.
    assert len(dropped) >= 0.8 * len(waved) > 0
    signals = [e for p in plan.participants for e in p.events if e.kind is EventKind.SIGNAL]
    assert any(e.probe for e in signals) and any(e.final for e in signals)


def test_mark_final_flags_the_last_signal_before_each_drop_or_leave() -> None:
    """Only the last signal of each connection is final."""
    s = EventKind.SIGNAL
    events = [PlannedEvent(0, EventKind.JOIN), PlannedEvent(1, s, 10), PlannedEvent(2, s, 10),
              PlannedEvent(3, EventKind.DROP), PlannedEvent(4, EventKind.JOIN, resume=True),
              PlannedEvent(5, s, 10), PlannedEvent(6, EventKind.LEAVE)]
    assert [e.final for e in mark_final(events)] == [False, False, True, False, False, True,
                                                     False]


def test_a_trace_becomes_a_plan_at_any_speed() -> None:
    """Trace events are grouped per participant, in order, times divided by the speed."""
    join = {"meeting": "m1", "region": "US", "source": "127.0.3.1"}
    events = [TraceEvent(1.0, EventKind.JOIN, "b", **join),  # type: ignore[arg-type]
              TraceEvent(0.5, EventKind.JOIN, "a", **join),  # type: ignore[arg-type]
              TraceEvent(2.0, EventKind.SIGNAL, "a", size=90, final=True),
              TraceEvent(3.0, EventKind.LEAVE, "a")]
    plan = plan_from_trace(events, speed=2.0)
    assert [p.participant for p in plan.participants] == ["a", "b"]
    assert [(e.t, e.kind) for e in plan.participants[0].events] == [
        (0.25, EventKind.JOIN), (1.0, EventKind.SIGNAL), (1.5, EventKind.LEAVE)]
    assert plan.participants[0].events[1].final
    with pytest.raises(ValueError, match="first event"):
        plan_from_trace([TraceEvent(0.0, EventKind.LEAVE, "c")])


def test_a_scenario_with_a_generator_source_pool() -> None:
    """Forwarded sources can be a pool of their own, used in turn."""
    plan = build_plan(scenario(generator=GeneratorSpec(
        forwarded_sources=(net("127.0.250.0/30"),))))
    sources = {p.source for p in plan.participants if p.forwarded}
    assert sources == {"127.0.250.1", "127.0.250.2"}
