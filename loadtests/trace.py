"""Traces: a JSON-lines record of join, signal, leave and drop events with timestamps.

A trace is what participants did, event by event, so that a storm seen once can be replayed
exactly (``[arrival] kind = "trace"``), at 1x or scaled speed. The first line is a header; each
further line is one event::

    {"geogate_trace": 1, "scenario": "storm-5k", "participants": 5000, "recorded": "..."}
    {"t": 0.0021, "event": "join", "participant": "p17", "meeting": "m3", "region": "CN",
     "source": "127.0.1.17"}
    {"t": 1.52, "event": "signal", "participant": "p17", "size": 120}
    {"t": 4.0, "event": "drop", "participant": "p17"}
    {"t": 4.6, "event": "join", "participant": "p17", "meeting": "m3", "region": "CN",
     "source": "127.0.1.17", "resume": true}
    {"t": 9.0, "event": "leave", "participant": "p17"}

``t`` is seconds from the run's start. A ``join`` opens a connection and sends the join (or a
``resume`` after a ``drop``); ``forwarded`` names the address sent in X-Forwarded-For when the
participant's region is outside loopback. ``drop`` is a network blip: the connection is aborted
without a closing handshake. ``leave`` is a normal close. A ``signal`` with ``"probe": true`` also
sends the participant a signal to itself, which times the signal round trip; ``"final": true``
marks a connection's last signal, which receivers expect before they see the sender leave.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.errors import ConfigError, ConfigIssue

__all__ = ["TRACE_VERSION", "EventKind", "TraceEvent", "TraceHeader", "read_trace", "write_trace"]

TRACE_VERSION = 1


class EventKind(enum.StrEnum):
    """What a participant does."""

    JOIN = "join"
    SIGNAL = "signal"
    LEAVE = "leave"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class TraceHeader:
    """The first line of a trace."""

    scenario: str
    participants: int
    recorded: str = ""


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One thing a participant did.

    Attributes:
        t: seconds from the run's start.
        event: the kind.
        participant: the participant id.
        meeting: the meeting (join).
        region: the region pool's name (join).
        source: the bound source address (join).
        forwarded: the address sent in X-Forwarded-For, if any (join).
        resume: a rejoin after a drop (join).
        size: the message size in bytes (signal).
        probe: also time a round trip with a signal to itself (signal).
        final: the connection's last signal (signal).

    Raises:
        ValueError: a negative time, an empty participant, or fields missing for the kind.
    """

    t: float
    event: EventKind
    participant: str
    meeting: str | None = None
    region: str | None = None
    source: str | None = None
    forwarded: str | None = None
    resume: bool = False
    size: int = 0
    probe: bool = False
    final: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.event, EventKind):
            raise ValueError(f"event: {self.event!r} is not one of "
                             + ", ".join(k.value for k in EventKind))
        if not self.t >= 0:
            raise ValueError(f"t: {self.t!r} must be a time of 0 or more seconds")
        if not self.participant:
            raise ValueError("participant: must be a non-empty id")
        if self.event is EventKind.JOIN and not (self.meeting and self.source and self.region):
            raise ValueError("a join needs meeting, region and source")
        if self.event is EventKind.SIGNAL and self.size <= 0:
            raise ValueError(f"size: a signal needs a size above 0, got {self.size!r}")

    def to_json(self) -> bytes:
        """The event as one JSON line (without the newline); defaults are left out."""
        out: dict[str, Any] = {"t": round(self.t, 6), "event": self.event.value,
                               "participant": self.participant}
        if self.event is EventKind.JOIN:
            out.update(meeting=self.meeting, region=self.region, source=self.source)
            if self.forwarded:
                out["forwarded"] = self.forwarded
            if self.resume:
                out["resume"] = True
        elif self.event is EventKind.SIGNAL:
            out["size"] = self.size
            if self.probe:
                out["probe"] = True
            if self.final:
                out["final"] = True
        return orjson.dumps(out)

    @classmethod
    def from_json(cls, obj: Any) -> TraceEvent:
        """Build an event from a parsed JSON line.

        Raises:
            ValueError: not an object, unknown keys, or invalid fields.
        """
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object")
        known = {"t", "event", "participant", "meeting", "region", "source", "forwarded",
                 "resume", "size", "probe", "final"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; the keys are {sorted(known)}")
        try:
            kind = EventKind(str(obj.get("event")))
        except ValueError:
            raise ValueError(f"event: {obj.get('event')!r} is not one of "
                             + ", ".join(k.value for k in EventKind)) from None
        t = obj.get("t")
        if isinstance(t, bool) or not isinstance(t, int | float):
            raise ValueError(f"t: {t!r} is not a number")
        for key in ("participant", "meeting", "region", "source", "forwarded"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise ValueError(f"{key}: {obj[key]!r} is not a string")
        size = obj.get("size", 0)
        if isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(f"size: {size!r} is not a whole number")
        for key in ("resume", "probe", "final"):
            if not isinstance(obj.get(key, False), bool):
                raise ValueError(f"{key}: {obj[key]!r} is not true or false")
        return cls(float(t), kind, obj.get("participant") or "", obj.get("meeting"),
                   obj.get("region"), obj.get("source"), obj.get("forwarded"),
                   bool(obj.get("resume", False)), size, bool(obj.get("probe", False)),
                   bool(obj.get("final", False)))


def write_trace(path: Path, header: TraceHeader, events: Iterable[TraceEvent]) -> int:
    """Write a trace file, events sorted by time (stable for equal times).

    Args:
        path: the file to write.
        header: what the trace is of.
        events: the events, in any order.

    Returns:
        The number of events written.
    """
    ordered = sorted(events, key=lambda e: e.t)
    recorded = header.recorded or datetime.now(UTC).isoformat()
    with path.open("wb") as stream:
        stream.write(orjson.dumps({"geogate_trace": TRACE_VERSION, "scenario": header.scenario,
                                   "participants": header.participants, "recorded": recorded}))
        stream.write(b"\n")
        for event in ordered:
            stream.write(event.to_json())
            stream.write(b"\n")
    return len(ordered)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as stream:
        for number, line in enumerate(stream, 1):
            line = line.strip()
            if line:
                yield number, line


def read_trace(path: Path) -> tuple[TraceHeader, list[TraceEvent]]:
    """Read and validate a trace file.

    Returns:
        The header and the events, sorted by time.

    Raises:
        ConfigError: every bad line, each named by its line number (at most 50 listed).
    """
    issues: list[ConfigIssue] = []
    header: TraceHeader | None = None
    events: list[TraceEvent] = []
    try:
        lines = list(_lines(path))
    except OSError as exc:
        raise ConfigError(ConfigIssue(str(path), "", f"cannot read the trace: {exc}")) from None
    for number, line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            issues.append(ConfigIssue(str(path), "", f"not JSON: {exc}", number))
            continue
        if header is None:
            if not (isinstance(obj, dict) and obj.get("geogate_trace") == TRACE_VERSION):
                issues.append(ConfigIssue(str(path), "", "the first line must be a trace header "
                                          f'such as {{"geogate_trace": {TRACE_VERSION}, ...}}',
                                          number))
                break
            header = TraceHeader(str(obj.get("scenario", "")), int(obj.get("participants", 0)),
                                 str(obj.get("recorded", "")))
            continue
        try:
            events.append(TraceEvent.from_json(obj))
        except ValueError as exc:
            issues.append(ConfigIssue(str(path), "", str(exc), number))
        if len(issues) >= 50:
            break
    if header is None and not issues:
        issues.append(ConfigIssue(str(path), "", "empty trace: no header line"))
    if issues:
        raise ConfigError(issues)
    assert header is not None
    events.sort(key=lambda e: e.t)
    return header, events
