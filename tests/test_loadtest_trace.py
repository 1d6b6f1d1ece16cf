"""Traces: JSON-lines round trip, validation with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.trace import EventKind, TraceEvent, TraceHeader, read_trace, write_trace
from proxy.errors import ConfigError

JOIN = {"meeting": "event-1", "region": "CN", "source": "127.0.1.7"}


def test_a_trace_reads_back_as_written(tmp_path: Path) -> None:
    """Every field survives the round trip; events come back sorted by time."""
    events = [
        TraceEvent(2.5, EventKind.SIGNAL, "p1", size=120, probe=True, final=True),
        TraceEvent(0.001, EventKind.JOIN, "p1", **JOIN),  # type: ignore[arg-type]
        TraceEvent(3.0, EventKind.DROP, "p1"),
        TraceEvent(3.4, EventKind.JOIN, "p1", forwarded="198.51.100.7", resume=True,
                   **JOIN),  # type: ignore[arg-type]
        TraceEvent(9.0, EventKind.LEAVE, "p1"),
    ]
    path = tmp_path / "t.jsonl"
    assert write_trace(path, TraceHeader("storm", 1), events) == 5
    header, read = read_trace(path)
    assert header.scenario == "storm" and header.participants == 1 and header.recorded
    assert read == sorted(events, key=lambda e: e.t)
    assert path.read_text().splitlines()[2] == (
        '{"t":2.5,"event":"signal","participant":"p1","size":120,"probe":true,"final":true}')


def test_bad_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    """Each bad line is named; a missing header is an error too."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"geogate_trace": 1, "scenario": "x", "participants": 1}\n'
                    '{"t": 0, "event": "join", "participant": "p1"}\n'
                    "not json\n"
                    '{"t": 1, "event": "teleport", "participant": "p1"}\n'
                    '{"t": 1, "event": "leave", "participant": "p1", "colour": 1}\n')
    with pytest.raises(ConfigError) as caught:
        read_trace(path)
    lines = {issue.line: issue.message for issue in caught.value.issues}
    assert set(lines) == {2, 3, 4, 5}
    assert "meeting, region and source" in lines[2]
    assert "teleport" in lines[4] and "unknown keys" in lines[5]
    headless = tmp_path / "headless.jsonl"
    headless.write_text('{"t": 0, "event": "leave", "participant": "p1"}\n')
    with pytest.raises(ConfigError, match="trace header"):
        read_trace(headless)


def test_events_are_validated_on_construction() -> None:
    """Negative times, empty ids and sizeless signals are refused."""
    with pytest.raises(ValueError):
        TraceEvent(-1.0, EventKind.LEAVE, "p1")
    with pytest.raises(ValueError):
        TraceEvent(1.0, EventKind.LEAVE, "")
    with pytest.raises(ValueError):
        TraceEvent(1.0, EventKind.SIGNAL, "p1")
