"""The Janus relay benchmark cannot rot: its lean Janus client follows the join sequence frame by
frame, works against a real Janus, and its quick mode runs end to end (Janus, geogate with the
Janus adapter, nginx when installed) with every join admitted and every round trip answered.

No CPU pinning here, and nothing asserts on timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtests.bench_janus import (
    ROOMS,
    STORM_ROOM_BASE,
    JanusEnvironment,
    JanusJoinResult,
    JanusJson,
    JanusParticipant,
    JoinRooms,
    JoinStep,
    Options,
    drop_all,
    events_note,
    janus_command,
    janus_opener,
    janus_request,
    main,
    open_janus_participant,
    parse_args,
    storm_rooms,
    videoroom_config,
    write_janus_config,
)
from loadtests.bench_relay import Section, SectionResults, Target, measure_rtt, source_addresses
from loadtests.nginx import find_nginx
from loadtests.wsclient import HANDSHAKE_KEY, EchoLoad, Endpoint, LoadError, Stage, close_all
from proxy.config import load_snapshot
from proxy.frames import Opcode, apply_mask, encode_frame, parse_header
from proxy.handshake import accept_key
from tests.helpers.janus import JanusClient, require_janus, running_janus
from tests.helpers.recording import RecordingTransport

SOURCES = source_addresses(4)
UPGRADED = (
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Accept: {accept_key(HANDSHAKE_KEY)}\r\n"
    "Sec-WebSocket-Protocol: janus-protocol\r\n\r\n"
).encode()


def sent(transport: RecordingTransport) -> dict[str, Any]:
    """The last frame the participant wrote, unmasked and parsed."""
    frame = transport.written[-1]
    header = parse_header(frame, 0, True)
    assert header is not None and header.opcode == Opcode.TEXT and header.mask is not None
    payload = apply_mask(frame[header.header_len:], header.mask)
    return orjson.loads(payload)  # type: ignore[no-any-return]


def reply(message: dict[str, Any]) -> bytes:
    """A server text frame (unmasked), laid out as Janus' default "indented" JSON."""
    return encode_frame(Opcode.TEXT, orjson.dumps(message, option=orjson.OPT_INDENT_2),
                        mask=False)


async def upgraded(room: int = 1234) -> tuple[JanusParticipant, RecordingTransport]:
    """A participant past the upgrade, its ``create`` sent."""
    participant = JanusParticipant(
        janus_request(Endpoint("127.0.0.1", 8188)), room=room, display="dora",
        mask=b"\x01\x02\x03\x04", first_echo=False, started=0.0,
    )  # fmt: skip
    transport = RecordingTransport()
    participant.connection_made(transport)  # type: ignore[arg-type]
    assert transport.written[0].endswith(b"Sec-WebSocket-Protocol: janus-protocol\r\n\r\n")
    participant.data_received(UPGRADED)
    return participant, transport


async def joined(room: int = 1234) -> tuple[JanusParticipant, RecordingTransport]:
    """A participant through create, attach and join, ready."""
    participant, transport = await upgraded(room)
    t = participant.transaction
    participant.data_received(reply({"janus": "success", "transaction": f"{t}-create",
                                     "data": {"id": 11}}))
    participant.data_received(reply({"janus": "success", "session_id": 11,
                                     "transaction": f"{t}-attach", "data": {"id": 22}}))
    participant.data_received(reply({"janus": "ack", "session_id": 11,
                                     "transaction": f"{t}-join"}))
    participant.data_received(reply({
        "janus": "event", "session_id": 11, "sender": 22, "transaction": f"{t}-join",
        "plugindata": {"plugin": "janus.plugin.videoroom",
                       "data": {"videoroom": "joined", "room": room, "id": 33}},
    }))  # fmt: skip
    return participant, transport


# ---- the lean client, frame by frame -------------------------------------------------------------


async def test_join_sequence_is_create_attach_join() -> None:
    """The participant sends create, attach, join in turn, each after its answer, then is ready."""
    participant, transport = await upgraded(5678)
    t = participant.transaction
    assert sent(transport) == {"janus": "create", "transaction": f"{t}-create"}
    participant.data_received(reply({"janus": "success", "transaction": f"{t}-create",
                                     "data": {"id": 11}}))
    assert sent(transport) == {"janus": "attach", "session_id": 11,
                               "plugin": "janus.plugin.videoroom", "transaction": f"{t}-attach"}
    participant.data_received(reply({"janus": "success", "session_id": 11,
                                     "transaction": f"{t}-attach", "data": {"id": 22}}))
    join = sent(transport)
    assert join["handle_id"] == 22 and join["transaction"] == f"{t}-join"
    assert join["body"] == {"request": "join", "ptype": "publisher", "room": 5678,
                            "display": "dora"}
    writes = len(transport.written)
    participant.data_received(reply({"janus": "ack", "session_id": 11,
                                     "transaction": f"{t}-join"}))
    assert len(transport.written) == writes and not participant.ready.done()
    participant.data_received(reply({
        "janus": "event", "session_id": 11, "sender": 22, "transaction": f"{t}-join",
        "plugindata": {"plugin": "janus.plugin.videoroom",
                       "data": {"videoroom": "joined", "room": 5678}},
    }))  # fmt: skip
    assert participant.ready.done() and participant.ready.exception() is None
    assert participant.stage is Stage.IDLE and participant.step is JoinStep.DONE
    assert (participant.session_id, participant.handle_id) == (11, 22)


async def test_refused_join_fails_the_participant() -> None:
    """A VideoRoom error event (geogate's 451 in Janus' shape) fails the join and drops it."""
    participant, transport = await upgraded()
    t = participant.transaction
    participant.data_received(reply({"janus": "success", "transaction": f"{t}-create",
                                     "data": {"id": 11}}))
    participant.data_received(reply({"janus": "success", "session_id": 11,
                                     "transaction": f"{t}-attach", "data": {"id": 22}}))
    participant.data_received(reply({
        "janus": "event", "session_id": 11, "sender": 22, "transaction": f"{t}-join",
        "plugindata": {"plugin": "janus.plugin.videoroom",
                       "data": {"videoroom": "event", "error_code": 451, "error": "barred"}},
    }))  # fmt: skip
    with pytest.raises(LoadError, match=r"join refused at join: .*451"):
        participant.ready.result()
    assert transport.aborted


async def test_janus_error_fails_at_its_step() -> None:
    """A Janus core error on create fails the join and names the step."""
    participant, _ = await upgraded()
    participant.data_received(reply({"janus": "error", "transaction": "other",
                                     "error": {"code": 490, "reason": "Unauthorized"}}))
    with pytest.raises(LoadError, match="join refused at create"):
        participant.ready.result()


async def test_round_trip_is_keepalive_then_ack() -> None:
    """Each ack ends a round trip and sends the next keepalive; an event in between does not."""
    participant, transport = await joined()
    load = EchoLoad()
    load.start([participant])
    assert sent(transport) == {"janus": "keepalive", "session_id": 11,
                               "transaction": participant.transaction}
    writes = len(transport.written)
    participant.data_received(reply({"janus": "event", "session_id": 11, "sender": 22,
                                     "plugindata": {"plugin": "janus.plugin.videoroom",
                                                    "data": {"videoroom": "talking"}}}))
    assert len(transport.written) == writes and load.samples == []
    assert participant.unexpected == 1
    participant.data_received(reply({"janus": "ack", "session_id": 11,
                                     "transaction": participant.transaction}))
    assert len(load.samples) == 1 and len(transport.written) == writes + 1
    load.stop()
    participant.data_received(reply({"janus": "ack", "session_id": 11,
                                     "transaction": participant.transaction}))
    assert len(load.samples) == 2 and load.inflight == 0
    assert participant.stage is Stage.IDLE and await load.drained(1.0)


# ---- pure parts ----------------------------------------------------------------------------------


def test_videoroom_config_declares_the_rooms_alike() -> None:
    """Every room is declared with the publisher limit and without join notifications."""
    text = videoroom_config(ROOMS, 700)
    for room in ROOMS:
        assert f"room-{room}: {{" in text
    assert text.count("publishers = 700") == len(ROOMS)
    assert text.count("notify_joining = false") == len(ROOMS)
    assert "dummy_publisher" not in text
    with pytest.raises(ValueError, match="distinct"):
        videoroom_config((1234, 1234), 10)
    with pytest.raises(ValueError, match="publishers"):
        videoroom_config(ROOMS, 0)


def test_join_result_counts_room_events_per_join() -> None:
    """Room events are reported per join, next to the join table; negative counts are refused."""
    result = JanusJoinResult(joins=100, failures=0, seconds=2.0, p50=0.01, p99=0.02,
                             proxy_cpu=0.1, upstream_cpu=0.2, events=300)
    figures = result.figures()
    assert figures["events_per_join"] == 3.0 and figures["joins_per_s"] == 50.0
    assert figures["proxy_cpu_us"] == pytest.approx(1000.0)
    joins = SectionResults("joins", Section.JOINS, "Joins", 100)
    joins.add(Target.DIRECT, result)
    assert events_note([joins], [Target.DIRECT, Target.GEOGATE]).endswith(": direct 3, geogate -")
    assert events_note([], [Target.DIRECT]) == ""
    with pytest.raises(ValueError, match="events"):
        JanusJoinResult(joins=1, failures=0, seconds=1.0, p50=0.0, p99=0.0, proxy_cpu=None,
                        upstream_cpu=None, events=-1)


def test_request_offers_janus_subprotocol() -> None:
    """The upgrade request is the endpoint's, with janus-protocol offered and one blank line."""
    request = janus_request(Endpoint("127.0.0.1", 8188))
    assert request.startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8188\r\n")
    assert request.endswith(b"\r\nSec-WebSocket-Protocol: janus-protocol\r\n\r\n")
    assert request.count(b"\r\n\r\n") == 1


def test_options_quick_and_usage_errors() -> None:
    """--quick runs one round at tiny sizes; bad values are usage errors."""
    options = parse_args(["--quick", "--skip-nginx", "--janus-json", "compact"])
    assert options.quick and options.rounds == 1 and max(options.sizes) <= 50
    assert options.idle <= 100 and options.joins <= 100 and options.skip_nginx
    assert options.janus_json is JanusJson.COMPACT
    assert parse_args([]).idle == 2000 and parse_args([]).sizes == (100, 1000)
    assert parse_args(["--only", "memory"]).sections == (Section.MEMORY,)
    assert Options(sizes=(10,), idle=3000, join_concurrency=200).largest_room == 1000
    with pytest.raises(SystemExit):
        parse_args(["--sizes", "0"])
    with pytest.raises(ValueError, match="differ"):
        Options(proxy_cpu=1, load_cpu=1)


def test_storm_has_a_room_per_join_slot() -> None:
    """By default each join slot has its own room, declared in Janus; shared uses the three."""
    options = parse_args(["--join-concurrency", "5"])
    assert options.join_rooms is JoinRooms.OWN
    assert options.storm_rooms == tuple(STORM_ROOM_BASE + k for k in range(1, 6))
    assert options.janus_rooms == ROOMS + options.storm_rooms
    assert parse_args(["--only", "rtt"]).janus_rooms == ROOMS
    shared = parse_args(["--join-rooms", "shared"])
    assert shared.storm_rooms == ROOMS and shared.janus_rooms == ROOMS
    assert storm_rooms(2) == (STORM_ROOM_BASE + 1, STORM_ROOM_BASE + 2)
    with pytest.raises(ValueError, match="count"):
        storm_rooms(0)


def test_geogate_config_uses_the_janus_adapter(tmp_path: Path) -> None:
    """The geogate configuration written for the benchmark loads, with the janus adapter."""
    env = JanusEnvironment(tmp_path, None, None, None)
    folder = tmp_path / "geogate"
    folder.mkdir()
    snapshot = load_snapshot(env.geogate_config(folder, 8123, 8188))
    assert snapshot.config.protocol.adapter == "janus"
    assert snapshot.config.upstream.url == "ws://127.0.0.1:8188/"
    assert snapshot.config.listen.port == 8123


# ---- against a real Janus ------------------------------------------------------------------------


@pytest.mark.janus
def test_janus_config_is_filled(tmp_path: Path) -> None:
    """The benchmark's Janus files have every placeholder filled: port, log, no reclaim."""
    require_janus()
    config = write_janus_config(tmp_path / "conf", port=8321, log_file=tmp_path / "janus.log",
                                json_format=JanusJson.PLAIN, rooms=(1234, 100001), publishers=50)
    texts = {p.name: p.read_text() for p in config.parent.iterdir()}
    assert sorted(texts) == ["janus.jcfg", "janus.plugin.videoroom.jcfg",
                             "janus.transport.websockets.jcfg"]
    assert not any("${" in text for text in texts.values())
    assert "ws_port = 8321" in texts["janus.transport.websockets.jcfg"]
    assert 'json = "plain"' in texts["janus.transport.websockets.jcfg"]
    assert "reclaim_session_timeout = 0" in texts["janus.jcfg"]
    rooms = texts["janus.plugin.videoroom.jcfg"]
    assert "room-1234: {" in rooms and "room-100001: {" in rooms and "room-5678" not in rooms
    assert janus_command("/usr/bin/janus", config)[-2:] == ["--debug-level", "3"]


@pytest.mark.janus
async def test_lean_client_joins_a_real_janus(tmp_path: Path) -> None:
    """Participants join rooms of a real Janus (seen by another client) and get their acks."""
    with running_janus(tmp_path / "janus") as server:
        endpoint = Endpoint("127.0.0.1", server.port)
        participant = await open_janus_participant(endpoint, room=5678, display="lean",
                                                   source=SOURCES[0], timeout=10.0)
        watcher = await JanusClient.connect(server.url, "watcher")
        try:
            session = await watcher.create()
            handle = await watcher.attach(session)
            listed = await watcher.message(session, handle,
                                           {"request": "listparticipants", "room": 5678})
            names = [p["display"] for p in listed["plugindata"]["data"]["participants"]]
            assert names == ["lean"]
        finally:
            await watcher.close()
            assert await close_all([participant]) == 0
        result = await measure_rtt(endpoint, proxy=None, upstream=None, connections=3,
                                   duration=0.2, warmup=0.0, sources=SOURCES, timeout=10.0,
                                   opener=janus_opener(endpoint), release=drop_all)
        assert result.round_trips > 0 and result.errors == 0 and result.lost == 0


@pytest.mark.janus
def test_quick_mode_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--quick measures every section on every target with no failed join and no lost trip."""
    require_janus()
    figures = tmp_path / "figures.json"
    assert main(["--quick", "--no-pin", "--json", str(figures)]) == 0
    targets = {"direct", "geogate"} | ({"nginx"} if find_nginx() else set())
    report = orjson.loads(figures.read_bytes())
    assert sorted(report["sections"]) == ["joins", "memory", "rtt-10", "rtt-50"]
    for key, section in report["sections"].items():
        assert set(section["rounds"]) == targets, key
        for target, (result,) in section["rounds"].items():
            where = f"{key} {target}"
            if key.startswith("rtt"):
                assert result["round_trips"] > 0 and result["errors"] + result["lost"] == 0, where
            elif key == "joins":
                assert result["joins"] == 30 and result["failures"] == 0, result["first_error"]
                assert result["events"] >= 0 and "events_per_join" in result, where
            else:
                assert result["participants"] == 40 and result["failures"] == 0, where
            measured = result["proxy_rss_after"] if key == "memory" else result["proxy_cpu"]
            assert (measured is None) is (target == "direct"), where
    assert report["environment"]["janus"] != "unknown"
    out = capsys.readouterr().out
    assert "Round trips, 50 connections, Janus keepalive and ack" in out
    assert "proxy CPU per join (us)" in out and "memory per admitted pair" in out
    assert "Room events per join" in out


def test_missing_janus_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing Janus binary is a one-line error and exit code 1, not a traceback."""
    assert main(["--quick", "--janus", str(tmp_path / "no-janus")]) == 1
    assert "no-janus not found" in capsys.readouterr().err
