"""End to end: small join storms against the real proxy and demo upstream, started as processes."""

from __future__ import annotations

import dataclasses
import os
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from loadtests.__main__ import main
from loadtests.checker import MismatchKind
from loadtests.records import End, Outcome
from loadtests.runner import RunOptions, run_scenario
from loadtests.scenario import ArrivalKind, load_scenario
from loadtests.target import Target
from loadtests.trace import EventKind, read_trace

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "loadtests" / "scenarios"

RU_EVENTS = """
[[restriction]]
id = "test-ru-events"
mode = "block"
regions = ["RU"]
meetings = ["event-*"]
legal_basis = "Test order"
authority = "Test Court"
"""


def scenario_text(restrictions: Path, *, count: int, duration: float, stay: str,
                  extra: str = "", signals: str = "interval = 0.0") -> str:
    """A scenario against a proxy the tool starts, with RU, US and DE participants."""
    return textwrap.dedent(f"""\
        name = "test"
        [target]
        config = "{ROOT / 'config' / 'geogate.toml'}"
        geoip_csv = "{ROOT / 'config' / 'demo' / 'geoip.csv'}"
        restrictions = "{restrictions}"
        log_level = "WARNING"
        [participants]
        count = {count}
        stay = {stay}
        [[meeting]]
        name = "event-{{n}}"
        count = 16
        share = 0.8
        [[meeting]]
        name = "standup-{{n}}"
        count = 4
        share = 0.2
        [[region]]
        name = "RU"
        region = "RU"
        share = 0.2
        networks = ["127.0.6.0/24"]
        [[region]]
        name = "US"
        region = "US"
        share = 0.5
        networks = ["127.0.3.0/24"]
        [[region]]
        name = "DE"
        region = "DE"
        share = 0.3
        networks = ["127.0.5.0/24"]
        [arrival]
        duration = {duration}
        [signals]
        {signals}
        [check]
        eviction_timeout = 3.0
        reload_grace = 3.0
        """) + textwrap.dedent(extra)


def test_storm_with_a_restriction_starting_mid_run_has_no_mismatch(tmp_path: Path) -> None:
    """500 participants, RU barred from event-* 1.5 s in: the early evicted, the late refused."""
    window = tmp_path / "window.toml"
    window.write_text(RU_EVENTS + 'starts_at = "{{T+1.5}}"\n')
    path = tmp_path / "storm.toml"
    path.write_text(scenario_text(window, count=500, duration=3.0, stay="[2.0, 3.0]",
                                  signals="interval = 1.5\nsize = [60, 120]",
                                  extra="[run]\nstart_delay = 2.0\n"))
    result = run_scenario(load_scenario(path), RunOptions(workers=2, workdir=tmp_path / "run"))
    assert result.check.total == 0, [str(m) for m in result.check.samples]
    assert result.error_total == 0, (result.check.errors, result.errors)
    evicted = [a for a in result.attempts if a.end is End.EVICTED]
    denied = [a for a in result.attempts if a.outcome is Outcome.DENIED]
    assert evicted and denied
    assert {a.notice.restriction for a in evicted + denied if a.notice} == {"test-ru-events"}
    assert all(result.participants[a.participant].region == "RU" for a in evicted + denied)
    assert result.check.expected["evicted"] >= len(evicted)  # some leave before eviction
    assert result.histograms["eviction_latency"].count == len(evicted)
    assert result.histograms["signal_round_trip"].count > 0
    assert result.signals.received > 0
    assert result.exit_code == 0


@pytest.mark.parametrize("reload", ["watch", "admin"])
def test_restrictions_file_rewrite_switches_a_restriction_on(tmp_path: Path, reload: str) -> None:
    """A timed rewrite bars RU from event-*; the watch or POST /v1/reload evicts them."""
    empty = tmp_path / "none.toml"
    empty.write_text("")
    on = tmp_path / "on.toml"
    on.write_text(RU_EVENTS)
    path = tmp_path / "rewrite.toml"
    text = scenario_text(empty, count=300, duration=3.0, stay="[3.0, 4.0]", extra=f"""
        [[action]]
        at = 2.0
        file = "{on}"
        reload = "{reload}"
        """)
    # The proxy looks at its files every 0.25 s; the change must be in force 1.5 s after it.
    text = text.replace("reload_grace = 3.0", "reload_grace = 1.5").replace(
        "eviction_timeout = 3.0", "eviction_timeout = 2.0").replace(
        "[participants]", '[target.set]\n"reload.watch_interval" = 0.25\n[participants]')
    path.write_text(text)
    result = run_scenario(load_scenario(path), RunOptions(workdir=tmp_path / "run"))
    assert result.check.total == 0, [str(m) for m in result.check.samples]
    assert [a.ok for a in result.actions] == [True], [a.detail for a in result.actions]
    if reload == "admin":
        assert "answered 200" in result.actions[0].detail
        assert result.actions[0].started <= result.actions[0].certain < float("inf")
    evicted = [a for a in result.attempts if a.end is End.EVICTED]
    assert evicted
    assert all(a.notice is not None and a.notice.restriction == "test-ru-events"
               for a in evicted)
    assert result.exit_code == 0


def test_a_restriction_the_proxy_is_not_given_fails_the_run(tmp_path: Path) -> None:
    """Expecting a restriction the proxy does not enforce yields mismatches and exit code 1."""
    empty = tmp_path / "none.toml"
    empty.write_text("")
    expected = tmp_path / "expected.toml"
    expected.write_text(RU_EVENTS)
    path = tmp_path / "wrong.toml"
    path.write_text(scenario_text(empty, count=100, duration=1.5, stay="1.0",
                                  extra=f'restrictions = "{expected}"\n'))
    out = tmp_path / "result.json"
    code = main([str(path), "--json", str(out), "--no-progress", "--no-series",
                 "--workdir", str(tmp_path / "run")])
    assert code == 1
    data = orjson.loads(out.read_bytes())
    barred = sum(1 for m in data["mismatches"]["samples"]
                 if m["kind"] == MismatchKind.BARRED_ADMITTED and m["region"] == "RU")
    assert data["mismatches"]["by_kind"] == {"barred-admitted": barred}
    assert barred == data["expected"]["denied"] > 0
    assert data["passed"] is False


def test_a_recorded_trace_replays_with_the_same_events(tmp_path: Path) -> None:
    """Record a run with drops, rejoins, signals and denials; replaying it records the same."""
    restrictions = tmp_path / "ru.toml"
    restrictions.write_text(RU_EVENTS)
    path = tmp_path / "record.toml"
    path.write_text(scenario_text(restrictions, count=80, duration=1.0, stay="[1.2, 1.5]",
                                  signals="interval = 0.4", extra="""
        [reconnect]
        probability = 0.3
        delay = [0.1, 0.3]
        [[reconnect.wave]]
        at = 1.1
        fraction = 0.5
        spread = 0.2
        """))
    first = tmp_path / "first.jsonl"
    recorded = run_scenario(load_scenario(path),
                            RunOptions(record=first, workdir=tmp_path / "run1"))
    assert recorded.exit_code == 0, [str(m) for m in recorded.check.samples]
    base = load_scenario(path)
    replay = dataclasses.replace(
        base,
        arrival=dataclasses.replace(base.arrival, kind=ArrivalKind.TRACE, trace=first,
                                    duration=None),
    )
    second = tmp_path / "second.jsonl"
    replayed = run_scenario(replay, RunOptions(record=second, workdir=tmp_path / "run2"))
    assert replayed.exit_code == 0, [str(m) for m in replayed.check.samples]

    def events(trace: Path) -> dict[str, list[tuple[object, ...]]]:
        _, items = read_trace(trace)
        out: dict[str, list[tuple[object, ...]]] = {}
        for e in items:
            out.setdefault(e.participant, []).append(
                (e.event, e.meeting, e.source, e.resume, e.size, e.probe, e.final))
        return out

    original, again = events(first), events(second)
    assert again == original
    kinds = {kind for seq in original.values() for kind, *_ in seq}
    assert kinds == {EventKind.JOIN, EventKind.SIGNAL, EventKind.DROP, EventKind.LEAVE}
    assert any(resume for seq in original.values() for _, _, _, resume, *_ in seq)


def test_forwarded_regions_are_placed_by_the_trusted_header(tmp_path: Path) -> None:
    """A pool outside loopback goes in X-Forwarded-For from a trusted address and is gated."""
    restrictions = tmp_path / "ir.toml"
    restrictions.write_text(RU_EVENTS.replace('"RU"', '"IR"'))
    path = tmp_path / "forwarded.toml"
    text = scenario_text(restrictions, count=60, duration=1.0, stay="0.5")
    text = text.replace("[participants]", """[target.set]
"geoip.override" = [{network = "198.51.100.0/24", region = "IR"}]
[participants]""")
    text += textwrap.dedent("""
        [[region]]
        name = "IR"
        region = "IR"
        share = 0.5
        forwarded = true
        networks = ["198.51.100.0/24"]
        """)
    path.write_text(text)
    result = run_scenario(load_scenario(path), RunOptions(workdir=tmp_path / "run"))
    assert result.check.total == 0, [str(m) for m in result.check.samples]
    iran = [a for a in result.attempts if result.participants[a.participant].region == "IR"]
    assert iran and all(str(result.participants[a.participant].address).startswith(
        "198.51.100.") for a in iran)
    barred = [a for a in iran if result.participants[a.participant].meeting.startswith("event-")]
    assert barred and all(a.outcome is Outcome.DENIED for a in barred)
    assert result.exit_code == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_pinned_proxy_keeps_the_meeting_server_off_its_cpu(tmp_path: Path) -> None:
    """With ``[target] cpu``, the proxy runs on that CPU alone and the demo server on the rest."""
    restrictions = tmp_path / "ru.toml"
    restrictions.write_text(RU_EVENTS)
    path = tmp_path / "pinned.toml"
    path.write_text(scenario_text(restrictions, count=1, duration=1.0, stay="[1.0, 1.0]"))
    base = load_scenario(path)
    cpus = os.sched_getaffinity(0)
    cpu = min(cpus)
    scenario = dataclasses.replace(base, target=dataclasses.replace(base.target, cpu=cpu))
    with Target(scenario, tmp_path / "run") as target:
        running = target.start(time.time())
        assert os.sched_getaffinity(running.pids["proxy"]) == {cpu}
        assert os.sched_getaffinity(running.pids["upstream"]) == cpus - {cpu}
