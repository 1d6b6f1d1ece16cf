"""The transparency report: what was blocked, where and why, from the audit trail.

``geogate report`` reads audit files (current, rotated, gzip-compressed), keeps the records in a
period, counts them per restriction, region and meeting, and renders the result as Markdown (the
page an operator publishes), JSON or CSV. Nothing here identifies a participant: participants
are only counted, as distinct pseudonyms.

The report sees records, not the configuration: a restriction's "first record" and "last
record" are the first and last decisions that cited it, not its configured window.

The pieces, each usable alone: :func:`load_records` (files to records, malformed lines collected
as warnings), :func:`build_report` (records to a :class:`Report`), the renderers, and
:func:`run_report`, which the CLI calls.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import logging
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TextIO

import orjson

from proxy.audit import AuditEvent, AuditRecord, format_rfc3339, parse_rfc3339

__all__ = [
    "Counts",
    "GroupSummary",
    "ReadWarning",
    "Report",
    "ReportFormat",
    "ReportRow",
    "RestrictionSummary",
    "build_report",
    "load_records",
    "render_csv",
    "render_json",
    "render_markdown",
    "run_report",
]

_GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952 section 2.3.1
_BARRED = frozenset({AuditEvent.DENY, AuditEvent.EVICT})
_WOULD_BAR = frozenset({AuditEvent.WOULD_DENY, AuditEvent.WOULD_EVICT})


class ReportFormat(StrEnum):
    """How :func:`run_report` renders the report."""

    MARKDOWN = "md"
    JSON = "json"
    CSV = "csv"


@dataclass(frozen=True, slots=True)
class ReadWarning:
    """A line of an audit file that was skipped, or a file skipped as a duplicate.

    Attributes:
        path: the file, as given.
        line: the 1-based line number; None for the whole file.
        message: what is wrong.
    """

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Counts:
    """Decisions of each kind, and the distinct participants they concern.

    Attributes:
        admits: admitted into a meeting a restriction scopes.
        denials: refused at join or reconnect.
        evictions: removed from a meeting.
        would_denials: dry-run matches at join or reconnect.
        would_evictions: dry-run matches of participants in a meeting.
        participants_barred: distinct participants denied or evicted.
        participants_would_bar: distinct participants a dry run would have denied or evicted.

    Raises:
        ValueError: a count is not a non-negative integer.
    """

    admits: int = 0
    denials: int = 0
    evictions: int = 0
    would_denials: int = 0
    would_evictions: int = 0
    participants_barred: int = 0
    participants_would_bar: int = 0

    def __post_init__(self) -> None:
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: {value!r} is not a non-negative integer")

    def as_dict(self) -> dict[str, int]:
        """The counts by field name, in field order."""
        return {name: getattr(self, name) for name in _COUNT_FIELDS}


_COUNT_FIELDS = (
    "admits",
    "denials",
    "evictions",
    "would_denials",
    "would_evictions",
    "participants_barred",
    "participants_would_bar",
)


@dataclass(frozen=True, slots=True)
class RestrictionSummary:
    """What one restriction did in the period.

    Attributes:
        id: the restriction's id.
        legal_bases: the legal bases its records state, oldest first (one unless it changed).
        authorities: the authorities its records name, oldest first.
        first_record: the time of the first record citing it (not its configured start).
        last_record: the time of the last record citing it (not its configured end).
        counts: its decisions.

    Raises:
        ValueError: ``first_record`` is after ``last_record``.
    """

    id: str
    legal_bases: tuple[str, ...]
    authorities: tuple[str, ...]
    first_record: float
    last_record: float
    counts: Counts

    def __post_init__(self) -> None:
        if self.first_record > self.last_record:
            raise ValueError(f"restriction {self.id!r}: first record after last record")


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """The decisions for one region or one meeting.

    Attributes:
        name: the region code or meeting id.
        counts: its decisions.
    """

    name: str
    counts: Counts


@dataclass(frozen=True, slots=True)
class ReportRow:
    """Records of one event for one (restriction, region, meeting).

    Attributes:
        restriction: the restriction's id; None for admits no restriction matched.
        region: the region.
        meeting: the meeting.
        event: the event.
        records: how many records.
        participants: distinct participants among them (records naming one).

    Raises:
        ValueError: ``participants`` exceeds ``records``.
    """

    restriction: str | None
    region: str
    meeting: str
    event: AuditEvent
    records: int
    participants: int

    def __post_init__(self) -> None:
        if not 0 <= self.participants <= self.records:
            raise ValueError(f"participants {self.participants} not within 0..{self.records}")


@dataclass(frozen=True, slots=True)
class Report:
    """Every count of a transparency report.

    Attributes:
        records: records counted.
        first_record: the earliest record's time; None without records.
        last_record: the latest record's time; None without records.
        since: the requested start (inclusive), if any.
        until: the requested end (exclusive), if any.
        totals: all decisions.
        restrictions: per restriction, by id.
        regions: per region, by code.
        meetings: per meeting, by id.
        rows: per (restriction, region, meeting, event), sorted.

    Raises:
        ValueError: the times are out of order.
    """

    records: int
    first_record: float | None
    last_record: float | None
    since: float | None
    until: float | None
    totals: Counts
    restrictions: tuple[RestrictionSummary, ...]
    regions: tuple[GroupSummary, ...]
    meetings: tuple[GroupSummary, ...]
    rows: tuple[ReportRow, ...]

    def __post_init__(self) -> None:
        empty = self.records == 0
        if (self.first_record is None) != empty or (self.last_record is None) != empty:
            raise ValueError("first_record and last_record are given exactly when records are")
        if (
            self.first_record is not None
            and self.last_record is not None
            and self.first_record > self.last_record
        ):
            raise ValueError("first_record is after last_record")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since is not before until")


# --- reading --------------------------------------------------------------------------------


def load_records(
    paths: Sequence[Path],
    since: float | None = None,
    until: float | None = None,
    *,
    warnings: list[ReadWarning] | None = None,
) -> Iterator[AuditRecord]:
    """Read audit records from JSON-lines files, plain or gzip-compressed.

    Args:
        paths: the files, read in the order given (rotated ones too, when named).
        since: keep records at or after this time (Unix seconds).
        until: keep records before this time.
        warnings: collects a warning per skipped line (malformed, with file:line) and per file
            given twice; when None they are logged on ``proxy.report``.

    Yields:
        Each valid record in the period, in file order.

    Raises:
        OSError: a file cannot be opened or read (a corrupt gzip stream included); names it.
    """
    seen: dict[tuple[int, int], str] = {}

    def warn(warning: ReadWarning) -> None:
        if warnings is None:
            logging.getLogger("proxy.report").warning("%s", warning)
        else:
            warnings.append(warning)

    for path in paths:
        name = str(path)
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(open(path, "rb"))
            stat = os.fstat(raw.fileno())
            identity = (stat.st_dev, stat.st_ino)
            if identity in seen:
                # Counting a file twice would double every figure taken from it.
                warn(ReadWarning(name, None, f"same file as {seen[identity]}; skipped"))
                continue
            seen[identity] = name
            try:
                magic = raw.read(2)
                raw.seek(0)
                stream: Iterable[bytes] = raw
                if magic == _GZIP_MAGIC:  # by content: rotated files keep no telling suffix
                    stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
                for number, line in enumerate(stream, 1):
                    if not line.strip():
                        continue
                    try:
                        record = AuditRecord.from_json(line)
                    except ValueError as exc:
                        warn(ReadWarning(name, number, str(exc)))
                        continue
                    if (since is None or record.time >= since) and (
                        until is None or record.time < until
                    ):
                        yield record
            except (EOFError, zlib.error) as exc:
                # A truncated or corrupt gzip stream: not an OSError by itself.
                raise OSError(f"{name}: {exc}") from exc
            except OSError as exc:
                if name in str(exc):
                    raise
                raise OSError(f"{name}: {exc}") from exc


# --- counting -------------------------------------------------------------------------------


class _Tally:
    """Counts of one group while reading."""

    __slots__ = ("barred", "events", "would")

    def __init__(self) -> None:
        self.events = dict.fromkeys(AuditEvent, 0)
        self.barred: set[str] = set()
        self.would: set[str] = set()

    def add(self, event: AuditEvent, participant: str | None) -> None:
        self.events[event] += 1
        if participant is not None:
            if event in _BARRED:
                self.barred.add(participant)
            elif event in _WOULD_BAR:
                self.would.add(participant)

    def counts(self) -> Counts:
        events = self.events
        return Counts(
            admits=events[AuditEvent.ADMIT],
            denials=events[AuditEvent.DENY],
            evictions=events[AuditEvent.EVICT],
            would_denials=events[AuditEvent.WOULD_DENY],
            would_evictions=events[AuditEvent.WOULD_EVICT],
            participants_barred=len(self.barred),
            participants_would_bar=len(self.would),
        )


class _RestrictionTally(_Tally):
    __slots__ = ("authorities", "first", "last", "legal_bases")

    def __init__(self, time: float) -> None:
        super().__init__()
        self.first = self.last = time
        # value -> the earliest time it was seen: files may be given in any order.
        self.legal_bases: dict[str, float] = {}
        self.authorities: dict[str, float] = {}


def _note(values: dict[str, float], value: str | None, time: float) -> None:
    if value is not None and (value not in values or time < values[value]):
        values[value] = time


def _oldest_first(values: dict[str, float]) -> tuple[str, ...]:
    return tuple(sorted(values, key=lambda value: (values[value], value)))


_EVENT_ORDER = {event: index for index, event in enumerate(AuditEvent)}


def build_report(
    records: Iterable[AuditRecord], *, since: float | None = None, until: float | None = None
) -> Report:
    """Count records per restriction, region, meeting and overall.

    Args:
        records: the records (already filtered to the period).
        since: the requested start, stated in the report.
        until: the requested end, stated in the report.

    Returns:
        The report.
    """
    totals = _Tally()
    restrictions: dict[str, _RestrictionTally] = {}
    regions: dict[str, _Tally] = {}
    meetings: dict[str, _Tally] = {}
    rows: dict[tuple[str | None, str, str, AuditEvent], tuple[list[int], set[str]]] = {}
    first: float | None = None
    last: float | None = None
    count = 0
    for record in records:
        count += 1
        when, event, participant = record.time, record.event, record.participant
        if first is None or when < first:
            first = when
        if last is None or when > last:
            last = when
        totals.add(event, participant)
        rid = record.restriction
        if rid is not None:
            tally = restrictions.get(rid)
            if tally is None:
                tally = restrictions[rid] = _RestrictionTally(when)
            tally.first = min(tally.first, when)
            tally.last = max(tally.last, when)
            _note(tally.legal_bases, record.legal_basis, when)
            _note(tally.authorities, record.authority, when)
            tally.add(event, participant)
        for groups, name in ((regions, record.region), (meetings, record.meeting)):
            group = groups.get(name)
            if group is None:
                group = groups[name] = _Tally()
            group.add(event, participant)
        key = (rid, record.region, record.meeting, event)
        row = rows.get(key)
        if row is None:
            row = rows[key] = ([0], set())
        row[0][0] += 1
        if participant is not None:
            row[1].add(participant)

    return Report(
        records=count,
        first_record=first,
        last_record=last,
        since=since,
        until=until,
        totals=totals.counts(),
        restrictions=tuple(
            RestrictionSummary(
                id=rid,
                legal_bases=_oldest_first(tally.legal_bases),
                authorities=_oldest_first(tally.authorities),
                first_record=tally.first,
                last_record=tally.last,
                counts=tally.counts(),
            )
            for rid, tally in sorted(restrictions.items())
        ),
        regions=tuple(
            GroupSummary(name, tally.counts()) for name, tally in sorted(regions.items())
        ),
        meetings=tuple(
            GroupSummary(name, tally.counts()) for name, tally in sorted(meetings.items())
        ),
        rows=tuple(
            ReportRow(rid, region, meeting, event, number[0], len(participants))
            for (rid, region, meeting, event), (number, participants) in sorted(
                rows.items(),
                key=lambda item: (item[0][0] or "", *item[0][1:3], _EVENT_ORDER[item[0][3]]),
            )
        ),
    )


# --- rendering ------------------------------------------------------------------------------

# CommonMark section 2.4: any ASCII punctuation may be backslash-escaped. These are the ones
# that could start emphasis, code, links, HTML, entities or a table cell boundary; meeting ids
# come from clients and must not shape the published page.
_MD_ESCAPES = str.maketrans({char: "\\" + char for char in "\\`*_[]<>|~&"})
_MD_CONTROLS = str.maketrans({code: " " for code in (*range(32), 127)})


def _md(text: str) -> str:
    return text.translate(_MD_CONTROLS).translate(_MD_ESCAPES)


def _when(time: float | None) -> str:
    return "-" if time is None else format_rfc3339(time, milliseconds=False)


# (label in a restriction's table, column heading in the region and meeting tables, field)
_COLUMNS = (
    ("Denied", "Denied", "denials"),
    ("Evicted", "Evicted", "evictions"),
    ("Participants denied or evicted", "Participants barred", "participants_barred"),
    ("Would have been denied (dry run)", "Would have been denied (dry run)", "would_denials"),
    ("Would have been evicted (dry run)", "Would have been evicted (dry run)", "would_evictions"),
    (
        "Participants who would have been denied or evicted (dry run)",
        "Participants (dry run)",
        "participants_would_bar",
    ),
    ("Admitted", "Admitted", "admits"),
)

_EXPLANATION = """\
## What the figures mean

- **Denied**: a participant was refused when joining or reconnecting (HTTP status 451, or \
WebSocket close code 4451) because a restriction bars their location.
- **Evicted**: a participant was removed from a meeting in progress because a restriction came \
into force while they were in it.
- **Would have been denied / would have been evicted (dry run)**: a restriction being tested in \
dry-run mode matched. Nobody was refused or removed; these figures only show what enforcing the \
restriction would have done.
- **Admitted**: a participant joined a meeting a restriction applies to, from a location it \
does not bar.
- **Participants barred / participants (dry run)**: distinct participants, counted by a keyed \
pseudonym. No participant identifiers are published. A participant is counted again after the \
pseudonym key changes.
- **Region**: where the participant's network address was located, as an ISO 3166 country or \
subdivision code; "unknown" when it could not be located, "+anonymous" when the address belongs \
to an anonymising service (VPN, proxy, Tor).
- **First record / last record** of a restriction: the times of the first and last decisions \
in this report that cited it, not the start and end configured for it.
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _group_table(title: str, groups: Sequence[GroupSummary]) -> list[str]:
    header = [title, *(heading for _, heading, _ in _COLUMNS)]
    rows = (
        [_md(group.name), *(str(getattr(group.counts, name)) for _, _, name in _COLUMNS)]
        for group in groups
    )
    return _table(header, rows)


def render_markdown(report: Report) -> str:
    """The report as a Markdown page to publish; it names no participant.

    Args:
        report: the report.

    Returns:
        CommonMark with GitHub-style tables, ending in a newline.
    """
    out = ["# Location restrictions: transparency report", ""]
    if report.records:
        out.append(
            f"Decisions recorded from {_when(report.first_record)} to "
            f"{_when(report.last_record)} (UTC): {report.records} records."
        )
    else:
        out.append("No decisions were recorded in this period.")
    requested = []
    if report.since is not None:
        requested.append(f"from {_when(report.since)} (inclusive)")
    if report.until is not None:
        requested.append(f"until {_when(report.until)} (exclusive)")
    if requested:
        out += ["", f"Period requested: {' '.join(requested)}."]
    out += ["", _EXPLANATION]
    if not report.records:
        return "\n".join(out)
    out += ["## Restrictions", ""]
    if not report.restrictions:
        out += ["No restriction was cited.", ""]
    for summary in report.restrictions:
        out += [f"### {_md(summary.id)}", ""]
        details = [
            ("Legal basis", "; ".join(map(_md, summary.legal_bases)) or "(not stated)"),
            ("Authority", "; ".join(map(_md, summary.authorities)) or "(not stated)"),
            ("First record", _when(summary.first_record)),
            ("Last record", _when(summary.last_record)),
            *((label, str(getattr(summary.counts, name))) for label, _, name in _COLUMNS),
        ]
        out += [*_table(("Item", "Value"), details), ""]
    out += ["## By region", "", *_group_table("Region", report.regions), ""]
    out += ["## By meeting", "", *_group_table("Meeting", report.meetings), ""]
    out += ["## Totals", "", *_group_table("", [GroupSummary("All", report.totals)]), ""]
    return "\n".join(out)


def _json_time(time: float | None) -> str | None:
    return None if time is None else format_rfc3339(time)


def render_json(report: Report) -> str:
    """The report as JSON: every count, times in RFC 3339 UTC, no participant identifiers.

    Args:
        report: the report.

    Returns:
        An indented JSON object, ending in a newline.
    """
    document = {
        "records": report.records,
        "first_record": _json_time(report.first_record),
        "last_record": _json_time(report.last_record),
        "since": _json_time(report.since),
        "until": _json_time(report.until),
        "totals": report.totals.as_dict(),
        "restrictions": [
            {
                "id": summary.id,
                "legal_bases": list(summary.legal_bases),
                "authorities": list(summary.authorities),
                "first_record": _json_time(summary.first_record),
                "last_record": _json_time(summary.last_record),
                "counts": summary.counts.as_dict(),
            }
            for summary in report.restrictions
        ],
        "regions": [{"region": g.name, "counts": g.counts.as_dict()} for g in report.regions],
        "meetings": [{"meeting": g.name, "counts": g.counts.as_dict()} for g in report.meetings],
        "rows": [
            {
                "restriction": row.restriction,
                "region": row.region,
                "meeting": row.meeting,
                "event": row.event.value,
                "records": row.records,
                "participants": row.participants,
            }
            for row in report.rows
        ],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"


CSV_HEADER = (
    "restriction",
    "legal_basis",
    "authority",
    "region",
    "meeting",
    "event",
    "records",
    "participants",
)


def _cell(text: str) -> str:
    # A cell starting with one of these is run as a formula by spreadsheets (OWASP "CSV
    # injection"); meeting ids come from clients. A leading apostrophe makes it text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render_csv(report: Report) -> str:
    """The report as CSV (RFC 4180): one row per (restriction, region, meeting, event).

    Args:
        report: the report.

    Returns:
        A header line and the rows; several legal bases or authorities are joined by "; ".
        Text cells that a spreadsheet would take for a formula get a leading apostrophe.
    """
    by_id = {summary.id: summary for summary in report.restrictions}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_HEADER)
    for row in report.rows:
        summary = by_id.get(row.restriction) if row.restriction is not None else None
        legal_basis = "" if summary is None else "; ".join(summary.legal_bases)
        authority = "" if summary is None else "; ".join(summary.authorities)
        writer.writerow([
            _cell(row.restriction or ""),
            _cell(legal_basis),
            _cell(authority),
            _cell(row.region),
            _cell(row.meeting),
            row.event.value,
            row.records,
            row.participants,
        ])
    return buffer.getvalue()


_RENDERERS: dict[ReportFormat, Callable[[Report], str]] = {
    ReportFormat.MARKDOWN: render_markdown,
    ReportFormat.JSON: render_json,
    ReportFormat.CSV: render_csv,
}


def run_report(
    paths: Sequence[Path],
    since: str | None,
    until: str | None,
    fmt: str,
    out: TextIO,
    *,
    err: TextIO | None = None,
) -> int:
    """Read audit files and write a report: what ``geogate report`` runs.

    Args:
        paths: the audit files (plain or gzip).
        since: RFC 3339 start, inclusive (a bare date is midnight UTC), or None.
        until: RFC 3339 end, exclusive, or None.
        fmt: ``"md"``, ``"json"`` or ``"csv"``.
        out: where the report goes.
        err: where warnings and read errors go; standard error by default.

    Returns:
        0 when the report was written; 1 when a file cannot be read (nothing is written then,
        so that a partial report is never published by mistake).

    Raises:
        ValueError: ``since``, ``until`` or ``fmt`` is invalid, or ``since`` is not before
            ``until``; the message names the value.
    """
    start = None if since is None else _bound("since", since)
    end = None if until is None else _bound("until", until)
    if start is not None and end is not None and start >= end:
        raise ValueError(f"since {since!r} is not before until {until!r}")
    try:
        renderer = _RENDERERS[ReportFormat(fmt)]
    except ValueError:
        expected = ", ".join(f.value for f in ReportFormat)
        raise ValueError(f"format {fmt!r}: expected one of {expected}") from None
    errors = sys.stderr if err is None else err
    warnings: list[ReadWarning] = []
    try:
        report = build_report(
            load_records([Path(p) for p in paths], start, end, warnings=warnings),
            since=start,
            until=end,
        )
    except OSError as exc:
        print(f"geogate report: cannot read {exc}", file=errors)
        return 1
    finally:
        for warning in warnings:
            print(f"warning: {warning}", file=errors)
    out.write(renderer(report))
    return 0


def _bound(name: str, text: str) -> float:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
