"""Tests for proxy.audit: records, pseudonyms, truncation, the writer thread, rotation, failures."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.audit import (
    AuditEvent,
    AuditLog,
    AuditRecord,
    AuditSettings,
    format_rfc3339,
    parse_rfc3339,
    pseudonym,
    truncate_address,
)
from proxy.geo import Resolution
from proxy.policy.decision import MatchReason

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
T0 = 1_714_564_800.25  # 2024-05-01T12:00:00.250Z
WAIT = 10.0  # seconds: generous, the machine is noisy; every wait ends as soon as it holds

MakeLog = Callable[..., AuditLog]


@pytest.fixture
def make_log() -> Iterator[MakeLog]:
    """Builds audit logs; every one is closed when the test ends."""
    logs: list[AuditLog] = []

    def make(path: Path | None, **overrides: Any) -> AuditLog:
        overrides.setdefault("key", KEY)
        log = AuditLog(AuditSettings(path, **overrides), clock=lambda: T0)
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close(timeout=WAIT)


def deny(log: AuditLog, **overrides: Any) -> AuditRecord | None:
    """Record a typical denial, with ``overrides`` applied."""
    values: dict[str, Any] = {
        "restriction": "cn-sanctions",
        "legal_basis": "Regulation (EU) 2024/1",
        "authority": "Council of the EU",
        "reason": MatchReason.REGION,
        "meeting": "board",
        "participant": "alice",
        "region": "CN-BJ",
        "resolved": Resolution.DATABASE,
        "address": IPv4Address("203.0.113.77"),
        "geoip_build": 1_700_000_000,
        "config_version": "7",
        "kind": "join",
    }
    values.update(overrides)
    event = values.pop("event", AuditEvent.DENY)
    return log.record(event, **values)


def lines(path: Path) -> list[bytes]:
    """The lines of a file, without their newlines."""
    return path.read_bytes().splitlines()


def record_fields(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a valid AuditRecord, with ``overrides`` applied."""
    values: dict[str, Any] = {
        "time": T0,
        "event": AuditEvent.DENY,
        "restriction": "r1",
        "legal_basis": "basis",
        "authority": "authority",
        "reason": "region",
        "meeting": "m1",
        "participant": "p:0123456789abcdef",
        "region": "CN",
        "resolved": "database",
        "address": "203.0.113.0/24",
        "geoip_build": 1,
        "config_version": "1",
        "kind": "join",
    }
    values.update(overrides)
    return values


# --- records --------------------------------------------------------------------------------


def test_record_round_trips_through_its_line(tmp_path: Path, make_log: MakeLog) -> None:
    """A recorded decision is written as one line that parses back to an equal record."""
    path = tmp_path / "audit.jsonl"
    log = make_log(path)
    record = deny(log)
    assert record is not None
    assert log.flush(WAIT)
    (line,) = lines(path)
    assert AuditRecord.from_json(line) == record
    assert AuditRecord.from_json(line + b"\n") == record
    assert record.reason == "region" and type(record.reason) is str
    assert record.resolved == "database" and type(record.resolved) is str


def test_line_keys_in_field_order_with_rfc3339_time() -> None:
    """to_json writes every field in declaration order and the time in UTC with milliseconds."""
    record = AuditRecord(**record_fields())
    data = orjson.loads(record.to_json())
    assert list(data) == list(record_fields())
    assert data["time"] == "2024-05-01T12:00:00.250Z"
    assert data["event"] == "deny"
    assert b"\n" not in record.to_json()


def test_record_time_kept_to_the_millisecond(make_log: MakeLog, tmp_path: Path) -> None:
    """A time with sub-millisecond digits is rounded, so the record equals its parsed line."""
    log = make_log(tmp_path / "a.jsonl")
    record = deny(log, at=1_714_564_800.123_456)
    assert record is not None
    assert record.time == 1_714_564_800.123
    assert AuditRecord.from_json(record.to_json()) == record


def test_record_uses_the_clock_when_given_no_time(make_log: MakeLog, tmp_path: Path) -> None:
    """Without ``at`` the record takes its time from the log's clock."""
    record = deny(make_log(tmp_path / "a.jsonl"))
    assert record is not None and record.time == T0


_text = st.text(min_size=1, max_size=20)
_opt_text = st.none() | st.text(max_size=20)


@st.composite
def records(draw: st.DrawFn) -> AuditRecord:
    """Valid audit records with millisecond times."""
    event = draw(st.sampled_from(list(AuditEvent)))
    restriction = draw(_text if event is not AuditEvent.ADMIT else st.none() | _text)
    named = restriction is not None
    return AuditRecord(
        time=draw(st.integers(0, 253_402_300_799_999)) / 1000,
        event=event,
        restriction=restriction,
        legal_basis=draw(_opt_text) if named else None,
        authority=draw(_opt_text) if named else None,
        reason=draw(st.none() | st.sampled_from([r.value for r in MatchReason])) if named else None,
        meeting=draw(_text),
        participant=draw(_opt_text),
        region=draw(_text),
        resolved=draw(st.sampled_from([r.value for r in Resolution])),
        address=draw(_text),
        geoip_build=draw(st.none() | st.integers(0, 2**40)),
        config_version=draw(st.text(max_size=10)),
        kind=draw(st.sampled_from(["join", "resume", "reeval"])),
    )


@given(records())
def test_any_record_round_trips(record: AuditRecord) -> None:
    """Every valid record with a millisecond time parses back from its line unchanged."""
    assert AuditRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps({"time": "2024-05-01T00:00:00Z"}), "missing keys: event"),
    ],
)
def test_from_json_rejects_malformed_lines(line: bytes, problem: str) -> None:
    """from_json raises ValueError naming what is wrong with the line."""
    with pytest.raises(ValueError, match=problem):
        AuditRecord.from_json(line)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("time", 5, "time: 5 is not an RFC 3339 string"),
        ("time", "yesterday", "time: 'yesterday' is not an RFC 3339"),
        ("time", "2024-02-30T00:00:00Z", "not a valid date"),
        ("event", "block", "event: 'block' is not one of admit"),
        ("meeting", 3, "meeting: 3"),
        ("geoip_build", 1.5, "geoip_build: 1.5"),
        ("reason", "weather", "reason: 'weather'"),
        ("resolved", "guess", "resolved: 'guess'"),
        ("restriction", None, "restriction: a deny record must name one"),
    ],
)
def test_from_json_names_the_bad_value(key: str, value: object, problem: str) -> None:
    """A line with one bad value is rejected with the key and the value in the message."""
    data = orjson.loads(AuditRecord(**record_fields()).to_json())
    data[key] = value
    with pytest.raises(ValueError, match=problem):
        AuditRecord.from_json(orjson.dumps(data))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)


@given(st.sampled_from(list(record_fields())), _json_values)
def test_from_json_raises_only_value_error(key: str, value: object) -> None:
    """Whatever JSON value replaces one key, from_json gives a valid record or a ValueError."""
    data = orjson.loads(AuditRecord(**record_fields()).to_json())
    data[key] = value
    try:
        record = AuditRecord.from_json(orjson.dumps(data))
    except ValueError:
        return
    assert AuditRecord.from_json(record.to_json()) == record


def test_from_json_ignores_keys_it_does_not_know() -> None:
    """Keys added by a newer writer do not make a line unreadable."""
    record = AuditRecord(**record_fields())
    data = orjson.loads(record.to_json())
    data["extra"] = {"anything": 1}
    assert AuditRecord.from_json(orjson.dumps(data)) == record


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"time": float("nan")}, "time"),
        ({"time": -1.0}, "time"),
        ({"time": True}, "time"),
        ({"event": "deny"}, "event"),
        ({"restriction": None}, "must name one"),
        ({"event": AuditEvent.ADMIT, "restriction": None}, "legal_basis: given without"),
        ({"restriction": ""}, "restriction"),
        ({"participant": 5}, "participant"),
        ({"region": ""}, "region"),
        ({"kind": ""}, "kind"),
        ({"config_version": 7}, "config_version"),
    ],
)
def test_record_validates_its_fields(overrides: dict[str, Any], problem: str) -> None:
    """An AuditRecord with a bad field cannot be built; the message names the field."""
    with pytest.raises(ValueError, match=problem):
        AuditRecord(**record_fields(**overrides))


def test_admit_without_restriction_is_valid() -> None:
    """An admit that no restriction matched is recorded with no restriction fields."""
    record = AuditRecord(
        **record_fields(
            event=AuditEvent.ADMIT,
            restriction=None,
            legal_basis=None,
            authority=None,
            reason=None,
        )
    )
    assert AuditRecord.from_json(record.to_json()) == record


def test_rfc3339_parse_and_format() -> None:
    """parse_rfc3339 takes Z, offsets and bare dates; format_rfc3339 writes UTC."""
    assert parse_rfc3339("2024-05-01T12:00:00.250Z") == T0
    assert parse_rfc3339("2024-05-01T14:00:00.25+02:00") == T0
    assert parse_rfc3339("2024-05-01") == 1_714_521_600.0
    assert format_rfc3339(T0) == "2024-05-01T12:00:00.250Z"
    assert format_rfc3339(T0, milliseconds=False) == "2024-05-01T12:00:00Z"
    with pytest.raises(ValueError, match="'May 1st'"):
        parse_rfc3339("May 1st")


@given(st.lists(st.floats(min_value=0, max_value=253402300799.0), min_size=1, max_size=20))
def test_rfc3339_format_agrees_with_datetime_in_any_order(times: list[float]) -> None:
    """The formatted second is remembered between calls; it never leaks into another second."""
    for when in [*times, *sorted(times), *reversed(times)]:
        seconds, millis = divmod(round(when * 1000), 1000)
        expected = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert format_rfc3339(when) == f"{expected}.{millis:03d}Z"


# --- pseudonyms and addresses ---------------------------------------------------------------


def test_pseudonyms_stable_per_key_and_distinct_across_keys() -> None:
    """A participant has one pseudonym per key, another under another key, and None stays None."""
    first = pseudonym(KEY, "alice")
    assert first is not None
    assert first == pseudonym(KEY, "alice")
    assert first != pseudonym(OTHER_KEY, "alice")
    assert first != pseudonym(KEY, "bob")
    assert first.startswith("p:") and len(first) == 18
    int(first[2:], 16)
    assert "alice" not in first
    assert pseudonym(KEY, None) is None
    assert pseudonym(KEY, "\ud800") is not None  # a lone surrogate does not raise


def test_log_pseudonymises_participants(tmp_path: Path, make_log: MakeLog) -> None:
    """Two logs with the same key write the same pseudonym; the raw id never reaches the file."""
    one = make_log(tmp_path / "one.jsonl")
    two = make_log(tmp_path / "two.jsonl")
    other = make_log(tmp_path / "three.jsonl", key=OTHER_KEY)
    written = [deny(log) for log in (one, two, other)]
    assert all(record is not None for record in written)
    names = [record.participant for record in written if record is not None]
    assert names[0] == names[1] == pseudonym(KEY, "alice")
    assert names[2] != names[0]
    assert one.flush(WAIT)
    assert b"alice" not in (tmp_path / "one.jsonl").read_bytes()
    assert not one.ephemeral_key


def test_log_without_key_uses_a_random_key_and_says_so(tmp_path: Path, make_log: MakeLog) -> None:
    """With no key, pseudonyms still hide the id, and ephemeral_key tells the caller to warn."""
    log = make_log(tmp_path / "a.jsonl", key=None)
    record = deny(log)
    assert log.ephemeral_key
    assert record is not None and record.participant is not None
    assert record.participant.startswith("p:") and "alice" not in record.participant


def test_log_keeps_raw_ids_when_told_to(tmp_path: Path, make_log: MakeLog) -> None:
    """pseudonymise=False writes participant ids as given, and needs no key."""
    log = make_log(tmp_path / "a.jsonl", pseudonymise=False, key=None)
    record = deny(log)
    assert record is not None and record.participant == "alice"
    assert not log.ephemeral_key


@pytest.mark.parametrize(
    ("address", "v4", "v6", "expected"),
    [
        ("203.0.113.77", 24, 48, "203.0.113.0/24"),
        ("203.0.113.77", 16, 48, "203.0.0.0/16"),
        ("203.0.113.77", 32, 48, "203.0.113.77"),
        ("203.0.113.77", 0, 48, "0.0.0.0/0"),
        ("2001:db8:1:2::5", 24, 48, "2001:db8:1::/48"),
        ("2001:db8:1:2::5", 24, 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2::5", 24, 128, "2001:db8:1:2::5"),
        ("::ffff:203.0.113.77", 24, 48, "203.0.113.0/24"),
        ("::ffff:203.0.113.77", 32, 128, "203.0.113.77"),
    ],
)
def test_truncate_address(address: str, v4: int, v6: int, expected: str) -> None:
    """Addresses keep the configured prefix; mapped IPv4 counts as IPv4; full length keeps all."""
    assert truncate_address(ip_address(address), v4, v6) == expected


def test_truncate_drops_the_zone_id() -> None:
    """A full-length IPv6 address is written without its zone id (a local interface name)."""
    assert truncate_address(IPv6Address("fe80::1%eth0"), 32, 128) == "fe80::1"


def test_log_truncates_addresses(tmp_path: Path, make_log: MakeLog) -> None:
    """The log writes the configured networks, not addresses."""
    log = make_log(tmp_path / "a.jsonl", truncate_v6=32)
    v4 = deny(log)
    v6 = deny(log, address=IPv6Address("2001:db8:1:2::5"))
    assert v4 is not None and v4.address == "203.0.113.0/24"
    assert v6 is not None and v6.address == "2001:db8::/32"


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"path": "audit.jsonl"}, "path"),
        ({"max_bytes": -1}, "max_bytes: -1 is out of range"),
        ({"keep": 0}, "keep: 0 is out of range; expected 1 or more"),
        ({"truncate_v4": 33}, "truncate_v4: 33 is out of range; expected 0 to 32"),
        ({"truncate_v6": 129}, "truncate_v6"),
        ({"truncate_v6": True}, "truncate_v6: True is not an integer"),
        ({"queue_max": 0}, "queue_max"),
        ({"batch_delay": -0.1}, "batch_delay: -0.1 is not a number of seconds from 0 to 60"),
        ({"batch_delay": 61}, "batch_delay: 61"),
        ({"batch_delay": True}, "batch_delay: True"),
        ({"pseudonymise": 1}, "pseudonymise"),
        ({"key": "secret-text-of-enough-length"}, "key: a str is not bytes"),
        ({"key": b"short"}, "key: 5 bytes is too short"),
    ],
)
def test_settings_are_validated(overrides: dict[str, Any], problem: str) -> None:
    """AuditSettings rejects bad values and names the setting."""
    fields: dict[str, Any] = {"path": None}
    fields.update(overrides)
    with pytest.raises(ValueError, match=problem):
        AuditSettings(**fields)


def test_settings_repr_hides_the_key() -> None:
    """The HMAC key never appears in a settings repr (which may be logged)."""
    assert "kkkk" not in repr(AuditSettings(None, key=KEY))


# --- the writer -----------------------------------------------------------------------------


def test_rotation_keeps_every_record_in_order(tmp_path: Path, make_log: MakeLog) -> None:
    """Rotating by size spreads records over path.N .. path.1, path with none lost or reordered."""
    path = tmp_path / "audit.jsonl"
    log = make_log(path, max_bytes=1000, keep=50)
    for index in range(20):
        deny(log, meeting=f"m{index:02d}")
    assert log.flush(WAIT)
    files = sorted(tmp_path.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(files) >= 4
    meetings: list[str] = []
    for file in [*files, path]:
        assert 0 < file.stat().st_size <= 1000
        meetings += [AuditRecord.from_json(line).meeting for line in lines(file)]
    assert meetings == [f"m{index:02d}" for index in range(20)]
    assert log.written == 20 and log.pending == 0


def test_rotation_drops_the_oldest_files(tmp_path: Path, make_log: MakeLog) -> None:
    """With keep=2 only path, path.1 and path.2 remain, holding the newest records."""
    path = tmp_path / "audit.jsonl"
    log = make_log(path, max_bytes=1000, keep=2)
    for index in range(30):
        deny(log, meeting=f"m{index:02d}")
        assert log.flush(WAIT)  # one batch per record: rotation between batches too
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.jsonl",
        "audit.jsonl.1",
        "audit.jsonl.2",
    ]
    line_size = len(lines(path)[0]) + 1
    per_file = 1000 // line_size
    for rotated in (path.with_name("audit.jsonl.1"), path.with_name("audit.jsonl.2")):
        assert len(lines(rotated)) == per_file  # full: the next record did not fit
    kept = [
        AuditRecord.from_json(line).meeting
        for file in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl")
        for line in lines(tmp_path / file)
    ]
    assert kept == [f"m{index:02d}" for index in range(30)][-len(kept) :]
    assert len(kept) > 2 * per_file


def test_batch_is_split_at_rotation(tmp_path: Path, make_log: MakeLog) -> None:
    """Records queued together are split between files at the size limit, none lost."""
    path = tmp_path / "audit.jsonl"
    # Fail the first attempts so that every record is queued before the writer can write.
    path.mkdir()
    log = make_log(path, max_bytes=1000, keep=50)
    for index in range(12):
        deny(log, meeting=f"m{index:02d}")
    assert log.wait_until(lambda log: log.write_failures > 0, WAIT)
    path.rmdir()
    assert log.flush(WAIT)
    total = sum(len(lines(file)) for file in tmp_path.glob("audit.jsonl*"))
    assert total == 12
    assert len(list(tmp_path.glob("audit.jsonl.*"))) >= 2


def test_disk_failure_keeps_records_until_the_path_is_fixed(
    tmp_path: Path, make_log: MakeLog
) -> None:
    """While the directory is replaced by a file, records wait; once fixed, all are written."""
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "audit.jsonl"
    log = make_log(path)
    deny(log, meeting="before")
    assert log.flush(WAIT)
    assert log.healthy and log.problem is None

    shutil.rmtree(directory)
    directory.write_text("not a directory")
    for index in range(3):
        deny(log, meeting=f"during{index}")
    assert log.wait_until(lambda log: log.write_failures > 0, WAIT)
    assert not log.healthy
    assert log.pending == 3 and log.written == 1
    assert log.last_error is not None and "audit.jsonl" in log.last_error
    assert log.problem is not None and "3 records waiting" in log.problem
    assert not log.flush(0.01)

    directory.unlink()
    directory.mkdir()
    assert log.flush(WAIT)
    assert log.healthy and log.problem is None
    assert log.written == 4 and log.pending == 0
    assert [AuditRecord.from_json(line).meeting for line in lines(path)] == [
        "during0",
        "during1",
        "during2",
    ]


def test_unwritable_path_at_start_is_reported_without_records(
    tmp_path: Path, make_log: MakeLog
) -> None:
    """A path that cannot be opened makes the log unhealthy before anything is recorded."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = make_log(blocker / "audit.jsonl")
    assert log.wait_until(lambda log: not log.healthy, WAIT)
    assert log.problem is not None and "0 records waiting" in log.problem


def test_full_queue_drops_and_counts(tmp_path: Path, make_log: MakeLog) -> None:
    """Past queue_max pending records, more are dropped and counted, and readiness says so."""
    path = tmp_path / "audit.jsonl"
    path.mkdir()  # unwritable: nothing leaves the queue
    log = make_log(path, queue_max=5)
    results = [deny(log, meeting=f"m{index}") for index in range(8)]
    assert [result is not None for result in results] == [True] * 5 + [False] * 3
    assert log.pending == 5 and log.dropped == 3 and log.recorded == 8
    assert log.wait_until(lambda log: log.write_failures > 0, WAIT)
    assert log.problem is not None and "3 dropped" in log.problem

    path.rmdir()
    assert log.flush(WAIT)
    assert [AuditRecord.from_json(line).meeting for line in lines(path)] == [
        f"m{index}" for index in range(5)
    ]
    assert log.problem is None
    assert deny(log) is not None  # room again


def test_queue_full_is_a_problem_while_healthy(tmp_path: Path, make_log: MakeLog) -> None:
    """A writer stuck in a slow write fills the queue: readiness says so, nothing is lost."""
    path = tmp_path / "audit.fifo"
    os.mkfifo(path)  # nobody reads: the writer blocks once the pipe buffer is full
    log = make_log(path, queue_max=200)
    while log.dropped == 0:
        deny(log)
    assert log.healthy
    assert log.problem is not None and "audit queue full" in log.problem
    expected = log.recorded - log.dropped

    received: list[bytes] = []
    done = threading.Event()

    def drain() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            while sum(chunk.count(b"\n") for chunk in received) < expected:
                received.append(os.read(fd, 65536))
        finally:
            os.close(fd)
            done.set()

    reader = threading.Thread(target=drain)
    reader.start()
    assert log.flush(WAIT)
    assert done.wait(WAIT)
    reader.join(WAIT)
    assert len(b"".join(received).splitlines()) == expected == log.written
    assert log.problem is None


def test_close_flushes_and_stops(tmp_path: Path, make_log: MakeLog) -> None:
    """close() writes everything, stops the writer thread; later records are dropped."""
    path = tmp_path / "audit.jsonl"
    before = set(threading.enumerate())
    log = make_log(path)
    (writer,) = set(threading.enumerate()) - before
    for _ in range(100):
        deny(log)
    assert log.close(WAIT)
    assert len(lines(path)) == 100
    assert not writer.is_alive()
    assert deny(log) is None
    assert log.dropped == 1 and log.written == 100
    assert log.close(WAIT)  # twice is fine


def test_a_burst_is_written_in_one_batch(tmp_path: Path, make_log: MakeLog) -> None:
    """The writer waits batch_delay after a record: a burst costs one wake-up and one write."""
    path = tmp_path / "audit.jsonl"
    log = make_log(path, batch_delay=0.5)
    for n in range(100):
        deny(log, participant=f"p{n}")
    assert log.wait_until(lambda log: log.written == 100, WAIT)  # no flush: it cuts the wait
    assert log.batches == 1
    assert len(lines(path)) == 100


def test_flush_and_close_cut_the_batch_delay_short(tmp_path: Path, make_log: MakeLog) -> None:
    """A long batch_delay never holds up flush() or close(): both return within their timeout."""
    path = tmp_path / "audit.jsonl"
    log = make_log(path, batch_delay=60)
    deny(log)
    assert log.flush(WAIT)
    assert len(lines(path)) == 1
    deny(log)
    assert log.close(WAIT)
    assert len(lines(path)) == 2


def test_close_gives_up_on_a_failing_disk(tmp_path: Path, make_log: MakeLog) -> None:
    """close() on a refusing disk returns False after its timeout; the records stay pending."""
    path = tmp_path / "audit.jsonl"
    path.mkdir()
    log = make_log(path)
    deny(log)
    assert log.close(0.05) is False
    assert log.pending == 1 and log.written == 0


def test_disabled_log_counts_and_drops(tmp_path: Path, make_log: MakeLog) -> None:
    """With no path, records are accepted, counted and dropped; flush and close succeed at once."""
    log = make_log(None)
    assert not log.enabled
    assert deny(log) is None
    assert deny(log, restriction=None) is None  # not even validated: it costs nothing
    assert log.recorded == 2 and log.pending == 0 and log.written == 0
    assert log.flush(0) and log.problem is None
    assert log.close(0)
    assert list(tmp_path.iterdir()) == []


def test_invalid_record_raises_in_the_caller(tmp_path: Path, make_log: MakeLog) -> None:
    """A denial without a restriction is a caller's bug: record() raises and queues nothing."""
    log = make_log(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="restriction"):
        deny(log, restriction=None)
    assert log.pending == 0


def test_file_moved_away_gets_a_new_file(tmp_path: Path, make_log: MakeLog) -> None:
    """After an external rotation renames the file, the next records go to a new file at path."""
    path = tmp_path / "audit.jsonl"
    log = make_log(path)
    deny(log, meeting="old")
    assert log.flush(WAIT)
    os.rename(path, tmp_path / "moved.jsonl")
    deny(log, meeting="new")
    assert log.flush(WAIT)
    assert [AuditRecord.from_json(line).meeting for line in lines(path)] == ["new"]
    assert len(lines(tmp_path / "moved.jsonl")) == 1


def test_cut_off_last_line_is_ended_before_appending(tmp_path: Path, make_log: MakeLog) -> None:
    """An existing file ending mid-line gets a newline first, so new records stay parseable."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"time": "2024-05-01T0')
    log = make_log(path)
    record = deny(log)
    assert log.flush(WAIT)
    fragment, line = lines(path)
    assert fragment == b'{"time": "2024-05-01T0'
    assert AuditRecord.from_json(line) == record


def test_lone_surrogate_is_written_replaced(tmp_path: Path, make_log: MakeLog) -> None:
    """A meeting id with a lone surrogate is written with it replaced, not lost."""
    path = tmp_path / "audit.jsonl"
    log = make_log(path)
    deny(log, meeting="room\ud800x")
    assert log.flush(WAIT)
    (line,) = lines(path)
    assert AuditRecord.from_json(line).meeting == "room?x"
