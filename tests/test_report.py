"""Tests for proxy.report: reading audit files, counting, rendering, and the report command."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from proxy.audit import AuditEvent, AuditLog, AuditRecord, AuditSettings
from proxy.report import (
    CSV_HEADER,
    Counts,
    ReadWarning,
    Report,
    build_report,
    load_records,
    render_csv,
    render_json,
    render_markdown,
    run_report,
)

KEY = b"report-test-key-of-32-bytes-long"
T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z
WAIT = 10.0

CN = {"restriction": "r-cn", "legal_basis": "Regulation A art. 5", "authority": "Ministry A"}
RU = {"restriction": "r-ru", "legal_basis": "Order B", "authority": "Regulator B"}

# (offset, event, restriction fields, reason, participant, region, meeting, kind)
SCENARIO: list[tuple[float, AuditEvent, dict[str, str], str | None, str, str, str, str]] = [
    (0, AuditEvent.DENY, CN, "region", "alice", "CN-BJ", "board", "join"),
    (10, AuditEvent.DENY, CN, "region", "alice", "CN-BJ", "board", "resume"),
    (20, AuditEvent.DENY, CN, "region", "bob", "CN", "board", "join"),
    (30, AuditEvent.EVICT, CN, "region", "carol", "CN-SH", "standup", "reeval"),
    (40, AuditEvent.WOULD_DENY, RU, "region", "dave", "RU", "board", "join"),
    (50, AuditEvent.WOULD_EVICT, RU, "region", "erin", "RU", "standup", "reeval"),
    (60, AuditEvent.ADMIT, CN, None, "frank", "US", "board", "join"),
    (70, AuditEvent.ADMIT, {}, None, "grace", "DE", "standup", "join"),
]


def write_scenario(path: Path, **settings: Any) -> list[AuditRecord]:
    """Write SCENARIO through an AuditLog at ``path``; returns the records written."""
    log = AuditLog(AuditSettings(path, key=KEY, **settings))
    written: list[AuditRecord] = []
    try:
        for offset, event, restriction, reason, who, region, meeting, kind in SCENARIO:
            record = log.record(
                event,
                meeting=meeting,
                participant=who,
                region=region,
                resolved="database",
                address=IPv4Address("198.51.100.9"),
                config_version="3",
                kind=kind,
                reason=reason,
                geoip_build=1_700_000_000,
                at=T0 + offset,
                **restriction,
            )
            assert record is not None
            written.append(record)
        assert log.flush(WAIT)
    finally:
        assert log.close(WAIT)
    return written


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    """An audit file holding SCENARIO."""
    path = tmp_path / "audit.jsonl"
    write_scenario(path)
    return path


@pytest.fixture
def report(audit_file: Path) -> Report:
    """The report of SCENARIO."""
    return build_report(load_records([audit_file]))


def pseudonyms(path: Path) -> set[str]:
    """The participant pseudonyms in an audit file."""
    return {
        record.participant
        for record in load_records([path])
        if record.participant is not None
    }


# --- reading --------------------------------------------------------------------------------


def test_load_records_reads_back_what_was_written(tmp_path: Path) -> None:
    """Records written by AuditLog are read back equal, in order."""
    path = tmp_path / "audit.jsonl"
    written = write_scenario(path)
    assert list(load_records([path])) == written


def test_since_inclusive_until_exclusive(audit_file: Path) -> None:
    """since keeps records at or after it, until keeps records strictly before it."""
    times = [r.time - T0 for r in load_records([audit_file], T0 + 20, T0 + 50)]
    assert times == [20, 30, 40]
    assert [r.time - T0 for r in load_records([audit_file], since=T0 + 65)] == [70]
    assert [r.time - T0 for r in load_records([audit_file], until=T0 + 5)] == [0]


def test_malformed_lines_are_warned_not_fatal(audit_file: Path) -> None:
    """Bad lines are skipped with a file:line warning; blank lines are ignored; the rest counts."""
    good = audit_file.read_bytes().splitlines(keepends=True)
    audit_file.write_bytes(
        good[0] + b"\n   \n" + b"{broken\n" + b'{"time": 1}\n' + b"".join(good[1:]) + b"\xff\xfe\n"
    )
    warnings: list[ReadWarning] = []
    records = list(load_records([audit_file], warnings=warnings))
    assert len(records) == len(SCENARIO)
    assert [(w.path, w.line) for w in warnings] == [
        (str(audit_file), 4),
        (str(audit_file), 5),
        (str(audit_file), 6 + len(SCENARIO) - 1),
    ]
    assert "not JSON" in warnings[0].message
    assert "missing keys" in warnings[1].message
    assert str(warnings[0]).startswith(f"{audit_file}:4: ")


def test_malformed_lines_without_a_list_are_logged(
    audit_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a warnings list, skipped lines are logged on proxy.report."""
    with audit_file.open("ab") as stream:
        stream.write(b"junk\n")
    with caplog.at_level("WARNING", logger="proxy.report"):
        assert len(list(load_records([audit_file]))) == len(SCENARIO)
    assert f"{audit_file}:{len(SCENARIO) + 1}" in caplog.text


def test_gzip_and_rotated_files(tmp_path: Path) -> None:
    """Rotated files and gzip-compressed ones (whatever their name) are read like the live one."""
    path = tmp_path / "audit.jsonl"
    written = write_scenario(path, max_bytes=1200, keep=20)
    rotated = sorted(tmp_path.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(rotated) >= 2
    oldest = rotated[0]
    with oldest.open("rb") as source, gzip.open(tmp_path / "oldest.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    oldest.unlink()
    files = [tmp_path / "oldest.gz", *rotated[1:], path]
    assert list(load_records(files)) == written


def test_same_file_twice_is_counted_once(audit_file: Path, tmp_path: Path) -> None:
    """A file named twice (even through a link) is read once, with a warning."""
    link = tmp_path / "link.jsonl"
    link.hardlink_to(audit_file)
    warnings: list[ReadWarning] = []
    records = list(load_records([audit_file, link], warnings=warnings))
    assert len(records) == len(SCENARIO)
    assert [str(w) for w in warnings] == [f"{link}: same file as {audit_file}; skipped"]


def test_corrupt_gzip_is_a_read_error(tmp_path: Path) -> None:
    """A truncated gzip file raises OSError naming it."""
    data = gzip.compress(b'{"a": 1}\n' * 1000)
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"cut\.gz"):
        list(load_records([path]))


# --- counting -------------------------------------------------------------------------------


def test_counts_per_restriction(report: Report) -> None:
    """Each restriction gets its events, distinct barred participants and record window."""
    cn, ru = report.restrictions
    assert cn.id == "r-cn" and ru.id == "r-ru"
    assert cn.legal_bases == ("Regulation A art. 5",) and cn.authorities == ("Ministry A",)
    assert cn.counts == Counts(admits=1, denials=3, evictions=1, participants_barred=3)
    assert (cn.first_record, cn.last_record) == (T0, T0 + 60)
    assert ru.counts == Counts(would_denials=1, would_evictions=1, participants_would_bar=2)
    assert (ru.first_record, ru.last_record) == (T0 + 40, T0 + 50)


def test_counts_per_region_and_meeting(report: Report) -> None:
    """Regions and meetings get the same counts, sorted by name."""
    regions = {g.name: g.counts for g in report.regions}
    assert list(regions) == ["CN", "CN-BJ", "CN-SH", "DE", "RU", "US"]
    assert regions["CN-BJ"] == Counts(denials=2, participants_barred=1)
    assert regions["CN-SH"] == Counts(evictions=1, participants_barred=1)
    assert regions["RU"] == Counts(would_denials=1, would_evictions=1, participants_would_bar=2)
    assert regions["DE"] == Counts(admits=1)
    meetings = {g.name: g.counts for g in report.meetings}
    assert meetings == {
        "board": Counts(
            admits=1, denials=3, would_denials=1, participants_barred=2, participants_would_bar=1
        ),
        "standup": Counts(
            admits=1, evictions=1, would_evictions=1, participants_barred=1,
            participants_would_bar=1,
        ),
    }


def test_totals_and_period(report: Report) -> None:
    """Totals cover every record; the period is the first and last record time."""
    assert report.records == len(SCENARIO)
    assert report.totals == Counts(
        admits=2,
        denials=3,
        evictions=1,
        would_denials=1,
        would_evictions=1,
        participants_barred=3,
        participants_would_bar=2,
    )
    assert (report.first_record, report.last_record) == (T0, T0 + 70)
    assert report.since is None and report.until is None


def test_rows_per_restriction_region_meeting_event(report: Report) -> None:
    """Rows count records and distinct participants per (restriction, region, meeting, event)."""
    rows = {(r.restriction, r.region, r.meeting, r.event): r for r in report.rows}
    assert len(rows) == len(report.rows) == 7
    repeated = rows["r-cn", "CN-BJ", "board", AuditEvent.DENY]
    assert (repeated.records, repeated.participants) == (2, 1)
    assert rows[None, "DE", "standup", AuditEvent.ADMIT].records == 1
    assert report.rows[0].restriction is None  # admits without a restriction sort first
    assert sum(r.records for r in report.rows) == len(SCENARIO)


def sample(**overrides: Any) -> AuditRecord:
    """A deny record like SCENARIO's first, with ``overrides`` applied."""
    fields: dict[str, Any] = {
        "time": T0,
        "event": AuditEvent.DENY,
        "restriction": "r-cn",
        "legal_basis": CN["legal_basis"],
        "authority": CN["authority"],
        "reason": "region",
        "meeting": "board",
        "participant": "p:0000000000000000",
        "region": "CN",
        "resolved": "database",
        "address": "198.51.100.0/24",
        "geoip_build": None,
        "config_version": "3",
        "kind": "join",
    }
    fields.update(overrides)
    return AuditRecord(**fields)


def test_changed_legal_basis_is_kept_oldest_first() -> None:
    """A restriction whose legal basis changed lists every basis, oldest first."""
    later = sample(time=T0 + 500, legal_basis="Regulation A v2")
    summary = build_report([later, sample(), sample(time=T0 - 500)]).restrictions[0]
    assert summary.legal_bases == ("Regulation A art. 5", "Regulation A v2")
    assert (summary.first_record, summary.last_record) == (T0 - 500, T0 + 500)


def test_empty_report() -> None:
    """No records give an empty report that every renderer accepts."""
    empty = build_report([])
    assert empty.records == 0 and empty.first_record is None and empty.totals == Counts()
    assert "No decisions were recorded" in render_markdown(empty)
    assert json.loads(render_json(empty))["records"] == 0
    assert list(csv.reader(io.StringIO(render_csv(empty)))) == [list(CSV_HEADER)]


def test_report_and_counts_validate() -> None:
    """Inconsistent reports and negative counts cannot be built."""
    with pytest.raises(ValueError, match="denials"):
        Counts(denials=-1)
    with pytest.raises(ValueError, match="first_record"):
        Report(1, None, None, None, None, Counts(), (), (), (), ())
    with pytest.raises(ValueError, match="since"):
        Report(0, None, None, T0, T0, Counts(), (), (), (), ())


# --- rendering ------------------------------------------------------------------------------


def test_markdown_names_bases_and_never_participants(report: Report, audit_file: Path) -> None:
    """The Markdown page states legal bases, authorities, dry-run labels, and no pseudonyms."""
    page = render_markdown(report)
    assert page.startswith("# ")
    for text in ("Regulation A art. 5", "Ministry A", "Order B", "Regulator B"):
        assert text in page
    assert "### r-cn" in page and "### r-ru" in page
    assert "Would have been denied (dry run)" in page
    assert "## By region" in page and "## By meeting" in page
    assert "2024-05-01T12:00:00Z" in page  # the period
    names = pseudonyms(audit_file)
    assert len(names) == 7
    assert not any(name in page for name in names)
    assert "p:" not in page
    assert not any(who in page for who in ("alice", "bob", "carol"))


def test_markdown_table_values(report: Report) -> None:
    """The per-restriction table lists each count under its label."""
    page = render_markdown(report)
    section = page[page.index("### r-cn") : page.index("### r-ru")]
    assert "| Denied | 3 |" in section
    assert "| Evicted | 1 |" in section
    assert "| Participants denied or evicted | 3 |" in section
    assert "| First record | 2024-05-01T12:00:00Z |" in section
    assert "| Last record | 2024-05-01T12:01:00Z |" in section


def test_markdown_escapes_client_supplied_text() -> None:
    """A meeting id with table pipes, HTML or newlines cannot break or inject into the page."""
    page = render_markdown(build_report([sample(meeting="a|b<script>x</script>\n# h")]))
    assert "<script>" not in page
    assert "a\\|b\\<script\\>" in page
    assert "\n# h" not in page


def test_csv_parses_back(report: Report, audit_file: Path) -> None:
    """The CSV has one row per report row, with the restriction's basis and the counts."""
    text = render_csv(report)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(report.rows)
    assert sum(int(row["records"]) for row in rows) == len(SCENARIO)
    deny = next(r for r in rows if r["region"] == "CN-BJ" and r["event"] == "deny")
    assert deny == {
        "restriction": "r-cn",
        "legal_basis": "Regulation A art. 5",
        "authority": "Ministry A",
        "region": "CN-BJ",
        "meeting": "board",
        "event": "deny",
        "records": "2",
        "participants": "1",
    }
    admit = next(r for r in rows if r["region"] == "DE")
    assert admit["restriction"] == "" and admit["legal_basis"] == ""
    assert not any(name in text for name in pseudonyms(audit_file))


def test_csv_defuses_formulas() -> None:
    """A meeting id a spreadsheet would run as a formula is written as text."""
    report = build_report([sample(meeting="=HYPERLINK(1)")])
    (row,) = csv.DictReader(io.StringIO(render_csv(report)))
    assert row["meeting"] == "'=HYPERLINK(1)"


def test_json_loads_with_every_count(report: Report, audit_file: Path) -> None:
    """The JSON document loads and carries totals, restrictions, regions, meetings and rows."""
    text = render_json(report)
    document = json.loads(text)
    assert document["records"] == len(SCENARIO)
    assert document["first_record"] == "2024-05-01T12:00:00.000Z"
    assert document["totals"]["denials"] == 3
    assert [r["id"] for r in document["restrictions"]] == ["r-cn", "r-ru"]
    assert document["restrictions"][0]["legal_bases"] == ["Regulation A art. 5"]
    assert document["restrictions"][1]["counts"]["would_evictions"] == 1
    assert {g["region"] for g in document["regions"]} == {"CN", "CN-BJ", "CN-SH", "DE", "RU", "US"}
    assert len(document["rows"]) == 7
    assert not any(name in text for name in pseudonyms(audit_file))


# --- the command ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["md", "json", "csv"])
def test_run_report_writes_each_format(audit_file: Path, fmt: str) -> None:
    """run_report writes the chosen format and returns 0."""
    out, err = io.StringIO(), io.StringIO()
    assert run_report([audit_file], None, None, fmt, out, err=err) == 0
    assert "r-cn" in out.getvalue()
    assert err.getvalue() == ""


def test_run_report_filters_and_states_the_period(audit_file: Path) -> None:
    """since/until (RFC 3339) limit the records and are stated in the report."""
    out = io.StringIO()
    code = run_report(
        [audit_file], "2024-05-01T12:00:20Z", "2024-05-01T14:00:50+02:00", "json", out
    )
    assert code == 0
    document = json.loads(out.getvalue())
    assert document["records"] == 3
    assert document["since"] == "2024-05-01T12:00:20.000Z"
    assert document["until"] == "2024-05-01T12:00:50.000Z"


def test_run_report_prints_warnings(audit_file: Path) -> None:
    """Malformed lines are reported on err with file:line; the report is still written."""
    with audit_file.open("ab") as stream:
        stream.write(b"garbage\n")
    out, err = io.StringIO(), io.StringIO()
    assert run_report([audit_file], None, None, "md", out, err=err) == 0
    assert f"warning: {audit_file}:{len(SCENARIO) + 1}: not JSON" in err.getvalue()
    assert "r-cn" in out.getvalue()


def test_run_report_unreadable_file(audit_file: Path, tmp_path: Path) -> None:
    """A missing file makes run_report return 1 and write no report at all."""
    out, err = io.StringIO(), io.StringIO()
    missing = tmp_path / "missing.jsonl"
    assert run_report([audit_file, missing], None, None, "md", out, err=err) == 1
    assert out.getvalue() == ""
    assert "missing.jsonl" in err.getvalue()


@pytest.mark.parametrize(
    ("since", "until", "fmt", "problem"),
    [
        ("last week", None, "md", "since: 'last week' is not an RFC 3339"),
        (None, "2024-13-01", "md", "until: '2024-13-01'"),
        ("2024-05-02", "2024-05-01", "md", "since '2024-05-02' is not before until"),
        (None, None, "pdf", "format 'pdf': expected one of md, json, csv"),
    ],
)
def test_run_report_rejects_bad_arguments(
    audit_file: Path, since: str | None, until: str | None, fmt: str, problem: str
) -> None:
    """Bad since, until or format raise ValueError naming the value."""
    with pytest.raises(ValueError, match=problem):
        run_report([audit_file], since, until, fmt, io.StringIO())
