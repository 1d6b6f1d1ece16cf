"""Relay benchmark through the Janus adapter: geogate, nginx and a direct connection to Janus.

The figures of ``make bench-relay`` (see :mod:`loadtests.bench_relay`), with a real Janus
(/usr/bin/janus, VideoRoom plugin, WebSocket transport on 127.0.0.1) as the signaling server and
geogate configured with ``[protocol] adapter = "janus"``. Three targets: ``direct`` to Janus,
through ``geogate``, through ``nginx`` as a plain WebSocket reverse proxy with one worker.

- round trips: N participants (100 and 1,000 by default), each joined to a VideoRoom room, send a
  Janus ``keepalive`` in a closed loop for ``--duration`` seconds; Janus answers each with an
  ``ack`` (its cheapest request/response). Through geogate every client and upstream message is
  read by the Janus adapter (its needle scan, see :mod:`proxy.adapters.janus`), which is the
  overhead measured: round trips per second, latency p50/p99, and the proxy's CPU per round trip;
- joins: 2,000 joins at concurrency 200, each a TCP connect, the upgrade (subprotocol
  ``janus-protocol``), ``create``, ``attach`` to the VideoRoom plugin, ``join`` as a publisher
  (``joined`` event) and one keepalive round trip, then a close: joins per second, time to the first
  round trip p50/p99, and the proxy's CPU per join (for geogate, the gate included: GeoIP lookup
  and restriction check of the room). Each concurrent join has a VideoRoom room of its own (see
  below); ``--join-rooms shared`` runs the storm in the three rooms instead;
- memory: 2,000 idle joined participants: the proxy's RSS after minus before, per admitted pair.
  Each costs Janus a session, a handle and a room seat and four descriptors in this machine's
  20,000 (load generator, proxy twice, Janus), so 2,000 leaves headroom on every process.

Participants of the round-trip and memory sections are spread over the rooms 1234, 5678 and 9999
(those of ``tests/janus/``); after the measurement they are dropped without a closing handshake
and Janus is stopped (see :func:`drop_all`). The join storm is different: VideoRoom tells
everyone in a room when a publisher leaves (``unpublished`` twice and ``leaving``, on Janus 1.1.2,
even for one that never published), so in three shared rooms each join of the storm brings tens of
events for the proxy to relay, and the more so the slower the proxy, as a slower join stays longer
in its room (measured: 49 events per join through geogate, 22 through nginx). The per-join cost
would then measure the fan-out and its feedback, not the join. So by default join slot k of the
storm (join i uses slot i mod concurrency) has room :data:`STORM_ROOM_BASE` + k, declared with the
others: like the demo server's meeting per join in ``bench_relay``. The room events the
participants received are counted either way and printed under the tables
(:class:`JanusJoinResult`).

How it is measured: as :mod:`loadtests.bench_relay` (fresh processes for every measurement; the
proxy under test pinned to one CPU, the load generator and Janus to the other; the proxy's CPU from
/proc/PID/stat; targets interleaved over ``--rounds`` rounds, medians and per-round ratios; source
addresses 127.0.3.1-N, the US in the demo GeoIP database, so the default restrictions admit
them). The load generator is :class:`JanusParticipant`, the lean client of
:mod:`loadtests.wsclient` taught Janus' join sequence.

Janus runs with the configuration of ``tests/janus/`` (filled in the way ``tests/helpers/janus.py``
does) except for what a benchmark needs:

- the VideoRoom rooms are declared by :func:`videoroom_config`: the same ids, without
  ``notify_joining`` (on in room 1234 of the tests: every join would be announced to everyone in
  the room, and opening 1,000 participants would cost Janus O(N**2) events) and without the dummy
  publisher of room 9999 (so the three rooms answer alike). The ``publishers`` limit only counts
  participants that publish media (checked on Janus 1.1.2: 20 publishers joined a room with
  ``publishers = 6``); nobody publishes here, so the limit is set to the largest room anyway;
- ``reclaim_session_timeout = 0``: a session ends with its WebSocket, so closed participants leave
  their room at once (geogate's ``reclaim_timeout`` is 0 too);
- ``session_timeout`` longer than any phase, so idle participants need no keepalives;
- debug level 3 (warnings) instead of 4: at 4 Janus logs several lines per session.

Run ``python -m loadtests.bench_janus`` (``make bench-janus``; nginx from ``make bench-deps``);
``--quick`` checks that everything works in about 10 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import os
import secrets
import statistics
import string
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import orjson

from loadtests.bench_relay import (
    Benchmark,
    BenchmarkError,
    Child,
    CommonOptions,
    Environment,
    JoinResult,
    Opener,
    Running,
    Section,
    SectionResults,
    Target,
    free_port,
)
from loadtests.wsclient import (
    Endpoint,
    LoadError,
    Participant,
    Stage,
    connect_participant,
    encode_client_frame,
)
from proxy.adapters.janus import JANUS_SUBPROTOCOL, VIDEOROOM

__all__ = [
    "JANUS_BINARY",
    "ROOMS",
    "STORM_ROOM_BASE",
    "JanusBenchmark",
    "JanusEnvironment",
    "JanusJoinResult",
    "JanusJson",
    "JanusParticipant",
    "JoinRooms",
    "JoinStep",
    "Options",
    "drop_all",
    "events_note",
    "janus_command",
    "janus_opener",
    "janus_request",
    "janus_version",
    "main",
    "open_janus_participant",
    "parse_args",
    "storm_rooms",
    "videoroom_config",
    "write_janus_config",
]

ROOT: Final = Path(__file__).resolve().parents[1]
#: The Debian package's binary.
JANUS_BINARY: Final = Path("/usr/bin/janus")
#: The configuration templates of the Janus tests (``${...}`` placeholders, string.Template).
JANUS_TEMPLATES: Final = ROOT / "tests" / "janus"
#: The VideoRoom rooms participants are spread over (those of tests/janus/).
ROOMS: Final = (1234, 5678, 9999)
#: Join slot k of the storm uses room STORM_ROOM_BASE + k + 1 (``--join-rooms own``).
STORM_ROOM_BASE: Final = 100_000
#: Seconds without a request before Janus destroys a session: longer than any phase.
JANUS_SESSION_TIMEOUT: Final = 3600
#: Janus' log level in the benchmark (3: warnings and errors).
JANUS_DEBUG_LEVEL: Final = 3
# Seconds Janus gets to exit on SIGTERM before SIGKILL.
_JANUS_STOP: Final = 2.0
_TEXT: Final = 0x1
_TRANSACTION_CHARS: Final = string.ascii_letters + string.digits

# Module-level aliases: the hot path compares stages by identity without an enum class lookup.
_JOINING: Final = Stage.JOINING
_FIRST_ECHO: Final = Stage.FIRST_ECHO
_IDLE: Final = Stage.IDLE
_ECHO: Final = Stage.ECHO


class JanusJson(enum.StrEnum):
    """The JSON layout of Janus' WebSocket transport (its ``json`` setting)."""

    INDENTED = "indented"  # Janus' default
    PLAIN = "plain"
    COMPACT = "compact"


class JoinRooms(enum.StrEnum):
    """Where the join storm's participants go (module docstring)."""

    OWN = "own"  # a room per join slot: no room events from others leaving
    SHARED = "shared"  # the rooms 1234, 5678 and 9999: every leave is told to the room


def storm_rooms(count: int) -> tuple[int, ...]:
    """The rooms of ``count`` join slots, one each.

    Raises:
        ValueError: ``count`` below 1.
    """
    if count < 1:
        raise ValueError(f"count must be 1 or more, got {count}")
    return tuple(range(STORM_ROOM_BASE + 1, STORM_ROOM_BASE + count + 1))


class JoinStep(enum.StrEnum):
    """Which request of the join sequence a participant awaits the answer to."""

    CREATE = "create"
    ATTACH = "attach"
    JOIN = "join"
    DONE = "done"


# --------------------------------------------------------------------------------------------
# The lean Janus client


def janus_request(endpoint: Endpoint) -> bytes:
    """The endpoint's pre-built upgrade request, asking for Janus' subprotocol.

    Janus' WebSocket transport refuses an upgrade without ``janus-protocol``; geogate passes the
    offer upstream and answers with what Janus chose (RFC 6455 section 4.1).
    """
    # Endpoint.request ends with the empty line that closes the header block.
    head = endpoint.request[:-2]
    return head + f"Sec-WebSocket-Protocol: {JANUS_SUBPROTOCOL}\r\n\r\n".encode("ascii")


def _dumps(message: dict[str, object]) -> bytes:
    return orjson.dumps(message)


class JanusParticipant(Participant):
    """One benchmark participant speaking the Janus API on its own WebSocket.

    The upgrade, frame reading, pings, close and the echo load are
    :class:`~loadtests.wsclient.Participant`'s; the join is Janus' sequence instead of the demo
    server's one message: ``create`` (the ``success`` carries the session id), ``attach`` to the
    VideoRoom plugin (the handle id), then ``join`` as a publisher, answered by an ``ack`` and a
    ``joined`` event. These answers are parsed (once per join, on the load generator only). The
    "echo" of a round trip is a ``keepalive`` on the session, pre-built and masked once the session
    id is known; its answer is an ``ack`` on the keepalive's transaction, recognised by that
    transaction alone (no other message carries it). Any other message in the meantime does not
    end the round trip: a room event (another participant leaving) is counted in ``unexpected``; an
    ``ack`` of the join's own (Janus may send it after the ``joined`` event) is not.

    Args:
        request: the upgrade request (:func:`janus_request`).
        room: the VideoRoom room to join.
        display: the display name in the join.
        mask: the connection's masking key.
        first_echo: make one keepalive round trip after ``joined`` before being ready.
        started: ``time.perf_counter()`` when the connection attempt began.

    Attributes:
        step: the join request awaiting its answer.
        session_id: the Janus session (0 until created).
        handle_id: the VideoRoom handle (0 until attached).
        transaction: the prefix of this participant's transactions (random, 12 characters as
            janus.js makes them).
    """

    __slots__ = ("_display", "_reply", "_room", "handle_id", "session_id", "step", "transaction")

    def __init__(
        self,
        request: bytes,
        *,
        room: int,
        display: str,
        mask: bytes,
        first_echo: bool,
        started: float,
    ) -> None:
        self.transaction = "".join(secrets.choice(_TRANSACTION_CHARS) for _ in range(12))
        # The keepalive's transaction as a JSON string: only its ack carries it (the join
        # requests' transactions extend it with a suffix, so they do not match with the quote).
        self._reply = f'"{self.transaction}"'.encode("ascii")
        create = _dumps({"janus": "create", "transaction": f"{self.transaction}-create"})
        super().__init__(
            request, encode_client_frame(_TEXT, create, mask), b"", mask, 0,
            first_echo=first_echo, started=started,
        )  # fmt: skip
        self._room = room
        self._display = display
        self.step = JoinStep.CREATE
        self.session_id = 0
        self.handle_id = 0

    def message(self, data: bytes, start: int, end: int) -> None:
        """A complete data message arrived: the join sequence, or a keepalive's ``ack``."""
        stage = self.stage
        if stage is _ECHO or stage is _FIRST_ECHO:
            if data.find(self._reply, start, end) < 0:
                self._other(data, start, end)
            elif stage is _ECHO:
                self.echo_replied()
            else:
                self.first_echo_replied()
        elif stage is _JOINING:
            self._join_step(data[start:end])
        else:
            self._other(data, start, end)

    def _other(self, data: bytes, start: int, end: int) -> None:
        """A message that answers nothing awaited: a late ack of the join, or a room event."""
        # Janus writes "ack" as a JSON string in every layout; no event carries that string.
        if data.find(b'"ack"', start, end) < 0:
            self.unexpected += 1

    def _join_step(self, payload: bytes) -> None:
        """One answer during the join sequence: send the next request, or fail."""
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._refused(payload)
            return
        if not isinstance(message, dict):
            self._refused(payload)
            return
        kind = message.get("janus")
        if kind == "ack":
            return  # the join's answer is the event that follows
        step = self.step
        if message.get("transaction") != f"{self.transaction}-{step}":
            if kind == "error":
                self._refused(payload)
            else:
                self.unexpected += 1  # an event for someone else's transaction
            return
        if step is JoinStep.CREATE or step is JoinStep.ATTACH:
            data = message.get("data")
            new_id = data.get("id") if kind == "success" and isinstance(data, dict) else None
            if not isinstance(new_id, int) or isinstance(new_id, bool):
                self._refused(payload)
                return
            if step is JoinStep.CREATE:
                self.session_id = new_id
                self.step = JoinStep.ATTACH
                self._send({"janus": "attach", "session_id": new_id, "plugin": VIDEOROOM,
                            "transaction": f"{self.transaction}-attach"})
            else:
                self.handle_id = new_id
                self.step = JoinStep.JOIN
                self._send({
                    "janus": "message", "session_id": self.session_id, "handle_id": new_id,
                    "transaction": f"{self.transaction}-join",
                    "body": {"request": "join", "ptype": "publisher", "room": self._room,
                             "display": self._display},
                })  # fmt: skip
            return
        plugindata = message.get("plugindata")
        data = plugindata.get("data") if isinstance(plugindata, dict) else None
        if kind != "event" or not isinstance(data, dict) or data.get("videoroom") != "joined":
            self._refused(payload)
            return
        self.step = JoinStep.DONE
        self._echo_frame = encode_client_frame(_TEXT, _dumps({
            "janus": "keepalive", "session_id": self.session_id, "transaction": self.transaction,
        }), self._mask)  # fmt: skip
        assert self.transport is not None
        if self._first_echo:
            self.stage = _FIRST_ECHO
            self.transport.write(self._echo_frame)
        else:
            self.stage = _IDLE
            self.ready.set_result(None)

    def _send(self, message: dict[str, object]) -> None:
        assert self.transport is not None
        self.transport.write(encode_client_frame(_TEXT, _dumps(message), self._mask))

    def _refused(self, payload: bytes) -> None:
        text = payload[:300].decode("utf-8", "replace").replace("\n", " ")
        self._fail(LoadError(f"join refused at {self.step}: {text}"))


async def open_janus_participant(
    endpoint: Endpoint,
    *,
    room: int,
    display: str,
    source: str | None = None,
    first_echo: bool = False,
    timeout: float = 10.0,
) -> JanusParticipant:
    """Connect, upgrade, create a session, attach and join ``room``; return the participant ready.

    Args:
        endpoint: Janus, or a proxy in front of it.
        room: the VideoRoom room.
        display: the display name.
        source: the local address to connect from (port chosen by the kernel).
        first_echo: make one keepalive round trip after ``joined`` (for the join benchmark).
        timeout: seconds for the whole sequence.

    Returns:
        The participant, IDLE.

    Raises:
        LoadError: the upgrade or a join request was refused, or the connection was closed.
        TimeoutError: the sequence took longer than ``timeout``.
        OSError: the connection could not be made.
    """
    proto = JanusParticipant(
        janus_request(endpoint), room=room, display=display, mask=os.urandom(4),
        first_echo=first_echo, started=time.perf_counter(),
    )  # fmt: skip
    return await connect_participant(proto, endpoint, source=source, timeout=timeout)


def janus_opener(endpoint: Endpoint, rooms: Sequence[int] = ROOMS) -> Opener:
    """An :class:`~loadtests.bench_relay.Opener` joining Janus' VideoRoom.

    Args:
        endpoint: Janus, or a proxy in front of it.
        rooms: participant i joins ``rooms[i % len(rooms)]`` (they must exist in Janus).
    """

    async def open_one(
        index: int, *, tag: str, source: str, first_echo: bool = False, timeout: float = 10.0
    ) -> Participant:
        return await open_janus_participant(
            endpoint, room=rooms[index % len(rooms)], display=f"{tag}-{index}", source=source,
            first_echo=first_echo, timeout=timeout,
        )  # fmt: skip

    return open_one


# --------------------------------------------------------------------------------------------
# Measurements (in the load generator's event loop; they never start processes)


async def drop_all(participants: Sequence[Participant], timeout: float = 5.0) -> None:
    """Abort the participants' connections (no closing handshake) and wait until they are gone.

    After a round-trip or memory measurement, a graceful close would make VideoRoom tell
    everyone left in the room about each leave: O(N**2) events, which keeps Janus busy for
    tens of seconds at 2,000 participants, outside anything measured. Janus is stopped right
    after, so its view of the leaves does not matter.

    Args:
        participants: the participants.
        timeout: seconds to wait for the connections to be reported lost.
    """
    for participant in participants:
        participant.abort()
    waiting = [p.closed for p in participants if not p.closed.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=timeout)


@dataclass(frozen=True, slots=True)
class JanusJoinResult(JoinResult):
    """One join-storm measurement, with the room events the participants were sent.

    VideoRoom tells everyone in a room when a publisher leaves (an ``unpublished`` event twice
    and a ``leaving`` event, on Janus 1.1.2, even for a publisher that never published), so each
    join of the storm brings about three messages per participant then in its room: they go
    through the proxy like any other and are part of its CPU per join.

    Attributes:
        events: room events the storm's participants received (answers to their own requests
            not included).

    Raises:
        ValueError: a negative count or duration.
    """

    events: int = 0

    def __post_init__(self) -> None:
        # Explicit base call: zero-argument super() fails in a slots dataclass (new class).
        JoinResult.__post_init__(self)
        if self.events < 0:
            raise ValueError(f"events must not be negative, got {self.events}")

    def figures(self) -> dict[str, float | None]:
        """The reported figures, by key (those of a join storm, and events per join)."""
        events = self.events / self.joins if self.joins else None
        return {**JoinResult.figures(self), "events_per_join": events}


# --------------------------------------------------------------------------------------------
# Janus


def videoroom_config(rooms: Sequence[int], publishers: int) -> str:
    """The VideoRoom plugin configuration of the benchmark (module docstring).

    Args:
        rooms: the room ids.
        publishers: each room's ``publishers`` limit.

    Returns:
        The configuration text (libconfig syntax).

    Raises:
        ValueError: no room, a duplicate or non-positive room id, or ``publishers`` below 1.
    """
    if not rooms or len(set(rooms)) != len(rooms) or min(rooms) < 1:
        raise ValueError(f"rooms must be distinct positive ids, got {list(rooms)}")
    if publishers < 1:
        raise ValueError(f"publishers must be 1 or more, got {publishers}")
    lines = [
        "# Generated by loadtests/bench_janus.py: the rooms of tests/janus/ and of the join",
        "# storm, alike, without notify_joining (a join must not cost more in a fuller room).",
        "general: {",
        "\tevents = false",
        "}",
    ]
    for room in rooms:
        lines += [
            "",
            f"room-{room}: {{",
            f'\tdescription = "geogate benchmark room {room}"',
            f"\tpublishers = {publishers}",
            "\trecord = false",
            "\tnotify_joining = false",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _lib_folder() -> Path:
    """The folder holding Janus' plugins/ and transports/ (Debian: /usr/lib/<triplet>/janus).

    Raises:
        BenchmarkError: the VideoRoom plugin is not installed.
    """
    for candidate in [*sorted(Path("/usr/lib").glob("*/janus")), Path("/usr/lib/janus")]:
        if (candidate / "plugins" / "libjanus_videoroom.so").exists():
            return candidate
    raise BenchmarkError("Janus' VideoRoom plugin was not found under /usr/lib/*/janus/plugins")


def write_janus_config(
    folder: Path,
    *,
    port: int,
    log_file: Path,
    json_format: JanusJson,
    rooms: Sequence[int] = ROOMS,
    publishers: int,
) -> Path:
    """Write Janus' configuration for the benchmark; return the main file.

    The core and transport files are ``tests/janus/``'s, filled like ``tests/helpers/janus.py``
    fills them; the VideoRoom file is :func:`videoroom_config`'s.

    Args:
        folder: where the files go (created).
        port: the WebSocket port on 127.0.0.1.
        log_file: Janus' log.
        json_format: the transport's JSON layout.
        rooms: the VideoRoom rooms.
        publishers: each room's ``publishers`` limit.

    Returns:
        The path of janus.jcfg.

    Raises:
        BenchmarkError: Janus' plugins are missing, or a template needs an unknown value.
    """
    values: dict[str, object] = {
        "configs_folder": folder,
        "lib_folder": _lib_folder(),
        "log_file": log_file,
        "reclaim_session_timeout": 0,
        "session_timeout": JANUS_SESSION_TIMEOUT,
        "json_format": str(json_format),
        "ws_port": port,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("janus.jcfg", "janus.transport.websockets.jcfg"):
        source = JANUS_TEMPLATES / name
        try:
            text = string.Template(source.read_text(encoding="utf-8")).substitute(values)
        except KeyError as exc:
            raise BenchmarkError(f"{source} needs a value for {exc}") from None
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "janus.plugin.videoroom.jcfg").write_text(
        videoroom_config(rooms, publishers), encoding="utf-8"
    )
    return folder / "janus.jcfg"


def janus_command(binary: str | Path, config: Path) -> list[str]:
    """The command line that runs Janus in the foreground on ``config`` (its folder holds all)."""
    return [str(binary), "--config", str(config), "--configs-folder", str(config.parent),
            "--debug-level", str(JANUS_DEBUG_LEVEL)]  # fmt: skip


def janus_version(binary: str | Path) -> str:
    """The version Janus reports (``janus --version``: "Janus version: 1102 (1.1.2)")."""
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in result.stdout.splitlines():
        if line.startswith("Janus version:"):
            return line.partition(":")[2].strip()
    return "unknown"


class JanusEnvironment(Environment):
    """The relay benchmark's environment with Janus as the signaling server.

    Args:
        folder: the temporary folder (configs, logs, nginx prefixes).
        nginx: the nginx binary, or None to skip nginx.
        proxy_cpu: the CPU for the proxy under test (None: no pinning).
        load_cpu: the CPU for the load generator and Janus (None: no pinning).
        janus: the Janus binary.
        json_format: Janus' JSON layout.
        rooms: the VideoRoom rooms.
        publishers: each room's ``publishers`` limit.
    """

    def __init__(self, folder: Path, nginx: str | None, proxy_cpu: int | None,
                 load_cpu: int | None, *, janus: Path = JANUS_BINARY,
                 json_format: JanusJson = JanusJson.INDENTED, rooms: Sequence[int] = ROOMS,
                 publishers: int = 1000) -> None:
        super().__init__(folder, nginx, proxy_cpu, load_cpu)
        self.janus = janus
        self.json_format = json_format
        self.rooms = tuple(rooms)
        self.publishers = publishers

    def geogate_config(self, folder: Path, port: int, upstream_port: int) -> Path:
        """The relay benchmark's geogate configuration with the Janus adapter."""
        path = super().geogate_config(folder, port, upstream_port)
        with path.open("a", encoding="utf-8") as out:
            out.write('[protocol]\nadapter = "janus"\n')
        return path

    def upstream(self, folder: Path) -> tuple[Child, int]:
        """Janus with the benchmark's configuration (:func:`write_janus_config`), not started."""
        port = free_port()
        log = folder / "janus.log"
        config = write_janus_config(
            folder / "janus", port=port, log_file=log, json_format=self.json_format,
            rooms=self.rooms, publishers=self.publishers,
        )  # fmt: skip
        # Janus appends its log to the file that also takes its standard output. Its state is
        # disposable, and it may still be telling rooms about leaves when stopped: no long wait.
        return Child("janus", janus_command(self.janus, config), log=log, cpu=self.load_cpu,
                     stop_timeout=_JANUS_STOP), port  # fmt: skip

    @contextlib.asynccontextmanager
    async def running(self, target: Target) -> AsyncIterator[Running]:
        """The relay benchmark's targets in front of Janus; Janus' CPUs are recorded too."""
        async with super().running(target) as run:
            self.affinity["janus"] = run.upstream.affinity()
            yield run


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True, slots=True)
class Options(CommonOptions):
    """What to run: the common options (validated alike), Janus and its rooms."""

    QUICK: ClassVar[Mapping[str, Any]] = {
        "rounds": 1, "sizes": (10, 50), "duration": 0.25, "warmup": 0.1, "joins": 30,
        "join_concurrency": 10, "idle": 40,
    }

    idle: int = 2000
    janus: Path = JANUS_BINARY
    janus_json: JanusJson = JanusJson.INDENTED
    join_rooms: JoinRooms = JoinRooms.OWN

    @property
    def storm_rooms(self) -> tuple[int, ...]:
        """The rooms of the join storm, in turn."""
        if self.join_rooms is JoinRooms.SHARED:
            return ROOMS
        return storm_rooms(self.join_concurrency)

    @property
    def janus_rooms(self) -> tuple[int, ...]:
        """Every VideoRoom room Janus must have."""
        if Section.JOINS not in self.sections or self.join_rooms is JoinRooms.SHARED:
            return ROOMS
        return ROOMS + self.storm_rooms

    @property
    def largest_room(self) -> int:
        """The most participants one room holds at once (joins go to the rooms in turn)."""
        most = max(*self.sizes, self.idle, self.join_concurrency)
        return -(-most // len(ROOMS))


    @classmethod
    def add_own_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--janus``, ``--janus-json`` and ``--join-rooms``."""
        parser.add_argument("--janus", type=Path, default=JANUS_BINARY,
                            help=f"the Janus binary (default {JANUS_BINARY})")
        parser.add_argument("--janus-json", choices=[j.value for j in JanusJson],
                            default=JanusJson.INDENTED.value,
                            help="Janus' JSON layout (default indented, Janus' own default)")
        parser.add_argument("--join-rooms", choices=[r.value for r in JoinRooms],
                            default=JoinRooms.OWN.value,
                            help="the join storm's rooms: own (one per join slot, default) or "
                                 "shared (1234, 5678, 9999: every leave is told to the room)")

    @classmethod
    def own_values(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The Janus binary, its JSON layout and the join storm's rooms."""
        return {"janus": args.janus, "janus_json": JanusJson(args.janus_json),
                "join_rooms": JoinRooms(args.join_rooms)}


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line into :class:`Options` (``--quick`` applied)."""
    return Options.parse(
        argv, prog="python -m loadtests.bench_janus",
        description="Relay benchmark through the Janus adapter: direct, geogate and nginx, "
                    "interleaved, in front of a real Janus.",
        upstream="Janus",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Running and reporting


def events_note(sections: Sequence[SectionResults], targets: Sequence[Target]) -> str:
    """One line on the room events per join (not a row of the shared join table), or "".

    Args:
        sections: the results.
        targets: the targets that were run, in column order.

    Returns:
        The line, or "" when no join storm was run.
    """
    for results in sections:
        if results.section is not Section.JOINS:
            continue
        cells = []
        for target in targets:
            values = results.values(target, "events_per_join")
            median = statistics.median(values) if values else None
            cells.append(f"{target} {'-' if median is None else f'{median:.0f}'}")
        return ("Room events per join (others leaving the joiner's VideoRoom room, relayed to "
                f"the participants; median): {', '.join(cells)}")
    return ""


class JanusBenchmark(Benchmark[Options]):
    """The relay benchmark in front of Janus (module docstring)."""

    name = "bench_janus"
    title = "geogate Janus relay benchmark"
    upstream = "Janus"

    def missing(self) -> str | None:
        """The Janus binary, when it is not there."""
        janus = self.options.janus
        return None if janus.is_file() else f"{janus} not found (apt-get install janus)"

    def environment(self, folder: Path, nginx: str | None, proxy_cpu: int | None,
                    load_cpu: int | None) -> JanusEnvironment:
        """Janus' environment, with every room the run needs."""
        options = self.options
        return JanusEnvironment(
            folder, nginx, proxy_cpu, load_cpu, janus=options.janus,
            json_format=options.janus_json, rooms=options.janus_rooms,
            publishers=options.largest_room,
        )  # fmt: skip

    def section_title(self, section: Section, size: int) -> str:
        """Keepalive round trips, Janus' join sequence, idle joined participants."""
        options = self.options
        if section is Section.RTT:
            return f"Round trips, {size:,} connections, Janus keepalive and ack"
        if section is Section.JOINS:
            where = "a room per join slot" if options.join_rooms is JoinRooms.OWN else \
                "rooms 1234, 5678, 9999"
            return (f"Joins (create, attach, VideoRoom join, one round trip), {size:,} at "
                    f"concurrency {options.join_concurrency}, {where}")
        return f"Memory, {size:,} idle joined participants"

    def opener(self, endpoint: Endpoint, section: Section) -> Opener:
        """VideoRoom participants: the join storm in its rooms, the others in :data:`ROOMS`."""
        return janus_opener(endpoint, self.options.storm_rooms if section is Section.JOINS
                            else ROOMS)  # fmt: skip

    async def release(self, participants: Sequence[Participant]) -> None:
        """Drop the participants without a closing handshake (:func:`drop_all`)."""
        await drop_all(participants)

    def join_result(self, result: JoinResult, unexpected: int) -> JanusJoinResult:
        """The storm's figures with the room events (the messages nobody awaited)."""
        return JanusJoinResult(**asdict(result), events=unexpected)

    def settings(self) -> str:
        """Janus' JSON layout."""
        return f" janus_json={self.options.janus_json}"

    def notes(self, results: Sequence[SectionResults], targets: Sequence[Target]) -> list[str]:
        """The room events per join (:func:`events_note`)."""
        note = events_note(results, targets)
        return [note] if note else []

    def about(self) -> str:
        """Janus' version and JSON layout; what direct and upstream mean here."""
        return (f"Janus {janus_version(self.options.janus)}, {self.options.janus_json} JSON; "
                "direct = straight to Janus; upstream = Janus; ")

    def environment_info(self) -> dict[str, Any]:
        """Janus' version and JSON layout, the orjson version."""
        from importlib.metadata import version

        return {"janus": janus_version(self.options.janus),
                "janus_json": str(self.options.janus_json), "orjson": version("orjson")}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; return the exit code (0, or 1 on failure)."""
    return JanusBenchmark(parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
