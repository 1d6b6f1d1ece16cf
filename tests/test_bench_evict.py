"""The eviction benchmark cannot rot: its plan, files and metric reading give the expected values,
and its quick mode runs end to end (real proxy, demo server and worker processes) and finds
exactly the barred evicted, nobody else touched, and the metric in agreement.

No CPU pinning here, and nothing asserts on timing.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from pathlib import Path

import orjson
import pytest

from loadtests.bench_evict import (
    BARRED_REGION,
    DIRECT_MEETING,
    JOIN_ORDER,
    EchoDriver,
    Peer,
    Plan,
    Role,
    Seat,
    Stage,
    Tally,
    assess_peers,
    build_plan,
    fit_sessions,
    main,
    metric_value,
    parse_args,
    restrictions_toml,
)
from loadtests.wsclient import HANDSHAKE_KEY, Endpoint, mask_payload
from proxy.config import load_restrictions
from proxy.frames import Opcode, encode_frame
from proxy.geo import GeoIPSettings, GeoResolver
from proxy.handshake import accept_key
from proxy.metrics import ProxyMetrics
from proxy.policy.regions import Location
from proxy.policy.restrictions import Mode
from proxy.relay import close_frame
from tests.helpers.recording import RecordingTransport


def simulate_joined(plan: Plan, rejoin: bool) -> dict[Role, int]:
    """participant-joined messages per group, by replaying the joins one at a time."""
    received: collections.Counter[Role] = collections.Counter()
    present: dict[str, list[Seat]] = collections.defaultdict(list)
    if rejoin:  # everyone but the barred is in; the barred join again
        for seat in plan.seats:
            if not seat.barred:
                present[seat.meeting].append(seat)
        order = [s for s in plan.seats if s.barred]
    else:
        order = [s for role in JOIN_ORDER for s in plan.seats if s.role is role]
    for seat in order:
        for other in present[seat.meeting]:
            received[other.role] += 1
        present[seat.meeting].append(seat)
    return {role: received[role] for role in Role}


# ---- the plan ------------------------------------------------------------------------------------


def test_plan_bars_exactly_cn_in_the_evict_meetings() -> None:
    """The default plan holds 9,800 sessions, 1,000 of them CN in evict-*, CN controls elsewhere."""
    plan = build_plan(9_800, 100, 1_000, 200, direct=50)
    assert plan.sessions == 9_800 and plan.barred == 1_000
    assert len(plan.group(Role.PROBES)) == 200 and len(plan.group(Role.DIRECT)) == 50
    barred = plan.group(Role.BARRED)
    assert {s.region for s in barred} == {BARRED_REGION}
    assert all(s.meeting.startswith("evict-") for s in barred)
    by_meeting = collections.Counter(s.meeting for s in barred)
    assert len(by_meeting) == 50 and set(by_meeting.values()) == {20}
    controls = [s for s in plan.seats if s.region == BARRED_REGION and not s.barred]
    assert len(controls) == 1_000 and all(s.meeting.startswith("keep-") for s in controls)
    probes = plan.group(Role.PROBES)
    assert len({s.meeting for s in probes}) == 100  # one meeting or more each, spread out
    assert not any(s.barred for s in probes)


def test_plan_expects_one_left_per_evicted_peer() -> None:
    """Each non-barred participant of an evict meeting expects as many lefts as it has barred."""
    plan = build_plan(400, 10, 40, 20)
    barred = collections.Counter(s.meeting for s in plan.seats if s.barred)
    for seat in plan.seats:
        expected = barred[seat.meeting] if not seat.barred else 0
        assert seat.expected_left == expected, seat
    assert sum(plan.lefts(role) for role in Role) == sum(
        k * (sum(1 for s in plan.seats if s.meeting == m) - k) for m, k in barred.items()
    )


@pytest.mark.parametrize("shape", [(400, 10, 40, 20, 4), (1_003, 7, 95, 13, 0), (64, 4, 9, 5, 2)])
def test_join_message_counts_match_a_replay(shape: tuple[int, int, int, int, int]) -> None:
    """The participant-joined counts the plan derives equal a one-by-one replay of the joins."""
    plan = build_plan(*shape)
    initial = simulate_joined(plan, rejoin=False)
    again = simulate_joined(plan, rejoin=True)
    for role in Role:
        assert plan.joined_initial(role) == initial[role], role
        assert plan.joined_rejoin(role) == again[role], role


def test_plan_sources_stay_in_their_region(demo_db: Path) -> None:
    """Every source address is placed in its seat's region by the demo GeoIP database."""
    plan = build_plan(1_000, 10, 100, 20, direct=2)
    resolver = GeoResolver(GeoIPSettings(demo_db, lookup_private=True, cache_size=0))
    try:
        for seat in plan.seats[::7]:
            place = resolver.resolve(ipaddress.ip_address(seat.source))
            assert place.location.country == seat.region, seat
    finally:
        resolver.close()
    assert all(s.meeting == DIRECT_MEETING for s in plan.group(Role.DIRECT))
    assert len({s.source for s in plan.seats}) > 200  # spread over many addresses


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, 1, 1, 1), "at least 2 meetings"),
        ((10, 10, 1, 1), "cannot fill"),
        ((100, 10, 100, 1), "do not fit"),
        ((100, 10, 10, 1_000), "probes"),
        ((100, 10, 10, 10, 1), "0 or at least 2"),
    ],
)
def test_plan_refuses_counts_that_do_not_fit(args: tuple[int, ...], message: str) -> None:
    """Impossible shapes are refused with a message naming the problem."""
    with pytest.raises(ValueError, match=message):
        build_plan(*args)


def test_sessions_are_cut_to_the_descriptor_limit() -> None:
    """Two descriptors per session plus a reserve: 9,800 fit a limit of 20,000, 10,000 do not."""
    assert fit_sessions(10_000, 20_000) == 9_800
    assert fit_sessions(9_800, 20_000) == 9_800
    assert fit_sessions(400, 20_000) == 400
    assert fit_sessions(10_000, 1_024) == 312


# ---- files and metrics ---------------------------------------------------------------------------


def test_restrictions_file_loads_with_the_project_loader(tmp_path: Path) -> None:
    """The restrictions file is valid: the baseline alone, or plus CN barred from evict-*."""
    path = tmp_path / "restrictions.toml"
    path.write_text(restrictions_toml(None))
    assert [r.id for r in load_restrictions(path)] == ["bench-baseline"]
    path.write_text(restrictions_toml("bench-cn-r2"))
    restrictions = {r.id: r for r in load_restrictions(path)}
    barring = restrictions["bench-cn-r2"]
    assert barring.mode is Mode.BLOCK and barring.regions == frozenset({"CN"})
    assert barring.meetings == ("evict-*",)
    assert restrictions["bench-baseline"].meetings == ("*",)
    rset = load_restrictions(path)
    now = time.time()
    assert rset.decide("evict-007", Location("CN"), None, now).denied_by == barring
    assert rset.decide("evict-007", Location("CN", "CN-BJ"), None, now).denied_by == barring
    assert rset.decide("keep-007", Location("CN"), None, now).denied_by is None
    assert rset.decide("evict-007", Location("HK"), None, now).denied_by is None


def test_metric_value_reads_the_proxys_exposition() -> None:
    """The eviction counter of one restriction is read from the proxy's own /metrics text."""
    metrics = ProxyMetrics()
    metrics.evictions.labels(restriction="bench-cn-r1").inc(1_000)
    metrics.evictions.labels(restriction="bench-cn-r2").inc(3)
    text = metrics.expose()
    name = "geogate_evictions_total"
    assert metric_value(text, name, {"restriction": "bench-cn-r1"}) == 1_000
    assert metric_value(text, name, {"restriction": "bench-cn-r2"}) == 3
    assert metric_value(text, name, {"restriction": "bench-cn-r3"}) is None
    assert metric_value(text, "geogate_sessions_open", {}) is None  # a callback with no function


def test_options_quick_and_validation() -> None:
    """--quick shrinks the run; bad values are refused by the parser."""
    quick = parse_args(["--quick"])
    assert (quick.sessions, quick.meetings, quick.barred, quick.rounds) == (400, 10, 40, 2)
    default = parse_args([])
    assert (default.sessions, default.meetings, default.barred, default.probes) == (
        9_800, 100, 1_000, 200)
    for bad in (["--rounds", "0"], ["--direct-probes", "1"], ["--proxy-cpu", "1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# ---- a participant's view of a round, with frames fed in by hand ---------------------------------

RID = "bench-cn-r1"
REASON = f"location restriction {RID}"
UPGRADED = (
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Accept: {accept_key(HANDSHAKE_KEY)}\r\n\r\n"
).encode()


def text(message: dict[str, object]) -> bytes:
    return encode_frame(Opcode.TEXT, orjson.dumps(message), mask=False)


def joined_peer(seat: Seat, tally: Tally) -> tuple[Peer, RecordingTransport]:
    """A peer past its upgrade and join, on a fake transport."""
    peer = Peer(seat, Endpoint("127.0.0.1", 9), tally)
    transport = RecordingTransport()
    peer.connection_made(transport)  # type: ignore[arg-type]
    peer.data_received(UPGRADED + text({"type": "participant-joined", "participant": "x"}))
    peer.data_received(text({"type": "joined", "meeting": seat.meeting, "participant": "p"}))
    assert peer.stage is Stage.OPEN and peer.ready.done() and tally.joined == 1
    return peer, transport


def notice(restriction: str) -> bytes:
    return text({"type": "geogate.denied", "restriction": restriction, "meeting": "evict-000"})


def left(name: str) -> bytes:
    return text({"type": "participant-left", "meeting": "evict-000", "participant": name})


async def test_an_evicted_peer_counts_once_its_notice_and_4451_arrive() -> None:
    """A barred peer: notice then 4451 completes the round, and the close is echoed masked."""
    tally = Tally()
    peer, transport = joined_peer(Seat(1, "evict-000", "CN", "127.0.1.9", Role.BARRED), tally)
    tally.begin_round(1, RID, closes_due=1, lefts_due=0)
    assert tally.done is not None and not tally.done.done()
    # Frames split anywhere must be reassembled: a fellow barred's departure, the notice, the close.
    stream = left("p2") + notice(RID) + close_frame(4451, REASON, mask=False)
    for i in range(0, len(stream), 7):
        peer.data_received(stream[i:i + 7])
    assert tally.done.done() and tally.last_close_at == peer.close_at > 0
    assert peer.close_code == 4451 and peer.close_reason == REASON and peer.notice_ok
    echo = transport.written[-1]  # a masked close frame carrying the same code
    assert echo[0] == 0x88 and echo[1] == 0x80 | 2
    assert mask_payload(echo[6:8], echo[2:6]) == (4451).to_bytes(2, "big")
    peer.connection_lost(None)
    report = assess_peers([peer], 1, REASON)
    assert report["evicted"] == report["barred"] == 1 and report["wrong"] == []
    assert report["barred_still_open"] == 0 and report["closes"] == [peer.close_at]


async def test_an_eviction_without_the_right_notice_is_wrong() -> None:
    """A 4451 after a notice naming another restriction is reported as a wrong eviction."""
    tally = Tally()
    peer, _ = joined_peer(Seat(1, "evict-000", "CN", "127.0.1.9", Role.BARRED), tally)
    tally.begin_round(1, RID, closes_due=1, lefts_due=0)
    peer.data_received(notice("some-other") + close_frame(4451, REASON, mask=False))
    report = assess_peers([peer], 1, REASON)
    assert report["evicted"] == 0 and len(report["wrong"]) == 1
    assert report["barred_still_open"] == 1  # the TCP connection has not ended yet


async def test_others_must_see_each_departure_and_nothing_else() -> None:
    """A non-barred peer completes the round with its lefts; a notice or close is collateral."""
    tally = Tally()
    seat = Seat(5, "evict-000", "US", "127.0.3.9", Role.CROWD, expected_left=2)
    peer, _ = joined_peer(seat, tally)
    tally.begin_round(1, RID, closes_due=0, lefts_due=2)
    peer.data_received(left("p1"))
    assert tally.done is not None and not tally.done.done()
    peer.data_received(left("p2"))
    assert tally.done.done() and tally.last_left_at > 0
    clean = assess_peers([peer], 1, REASON)
    assert clean["collateral"] == clean["unexpected"] == clean["missing_left"] == 0
    peer.data_received(left("p3") + text({"type": "error", "reason": "?"}))
    peer.data_received(notice(RID) + close_frame(4451, REASON, mask=False))
    report = assess_peers([peer], 1, REASON)
    assert report["collateral"] == 1 and "US" in report["collateral_examples"][0]
    assert report["unexpected"] == 2  # the extra departure and the error message
    assert assess_peers([peer], 2, REASON)["missing_left"] == 1  # round 2 expects 4 in all


async def test_echo_replies_are_told_apart_from_announcements() -> None:
    """An echo reply is matched to its send; an announcement in between is not taken for it."""
    tally = Tally()
    peer, transport = joined_peer(Seat(3, "keep-000", "DE", "127.0.5.9", Role.PROBES), tally)
    driver = EchoDriver([peer], rate=100.0)
    peer.driver = driver
    peer.send_echo(1.0)
    driver.inflight += 1
    assert transport.written[-1][0] == 0x81  # a masked text frame went out
    peer.data_received(left("p1"))
    assert driver.rtts == [] and driver.inflight == 1
    peer.data_received(text({"type": "echo", "pad": "x"}))
    assert len(driver.rtts) == 1 and driver.rtts[0][0] == 1.0 and driver.inflight == 0
    assert await driver.drained(0.1)


# ---- the quick mode, end to end ------------------------------------------------------------------


def test_quick_mode_evicts_exactly_the_barred(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Quick mode: two changes each evict all 40 barred, touch nobody else, agree with /metrics."""
    out = tmp_path / "figures.json"
    assert main(["--quick", "--no-pin", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "eviction complete" in printed and "[met] zero collateral" in printed
    data = orjson.loads(out.read_bytes())
    assert data["correct"] is True
    rounds = data["report"]["rounds"]
    assert [r["number"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["expected"] == r["evicted"] == r["closed_4451"] == r["rechecked"] == 40
        assert r["metric"] == 40
        assert r["collateral"] == r["unexpected"] == r["missing_left"] == 0
        assert r["complete"] is True and r["completion"] is not None
        assert r["eviction_p50"] <= r["eviction_p99"] <= r["completion"] <= r["settled"]
        assert r["steady_n"] > 0 and r["steady_p50"] <= r["steady_p99"]
        assert r["proxy_cpu"] is not None and r["proxy_cpu"] >= 0
