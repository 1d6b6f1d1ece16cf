"""The audit trail: one JSON line per gating decision, written off the event loop.

Every deny, evict, would-deny, would-evict, and admit into a meeting a restriction scopes becomes
an :class:`AuditRecord` naming the restriction and its legal basis, so an operator can publish
what was blocked, where and why (:mod:`proxy.report`).

:class:`AuditLog` is the edge. :meth:`AuditLog.record` runs on the event loop: it pseudonymises
the participant (HMAC-SHA256 under a secret key, so ids cannot be recovered by hashing guesses),
truncates the address to a network, builds the record and puts it on a queue. One writer thread
takes everything queued (waiting ``batch_delay`` after the first record of a burst, so that the
burst costs one wake-up), appends it as JSON lines in one write call, and rotates the file by size
the way :class:`logging.handlers.RotatingFileHandler` does (``path.1`` is the newest rotated
file, ``path.N`` the oldest). The event loop never touches the disk.

What can go wrong, and what happens:

* A write fails (disk full, directory gone): the records stay queued and are retried with a
  backoff up to one second; ``healthy`` turns False and readiness says why. Nothing is lost
  while the disk accepts writes again before shutdown.
* A write is cut short mid-line: the lines completed count as written, the rest is retried whole
  after a newline, so the file holds one malformed fragment (the report warns) and no gap.
* The file is moved or removed (external log rotation): the next batch notices, by inode, and
  writes to a new file at ``path``.
* ``queue_max`` records are pending: further records are counted in ``dropped``, not kept, so
  memory is bounded; readiness says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import math
import os
import queue
import re
import secrets
import threading
import time as _time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from proxy.geo import Resolution
from proxy.policy.decision import MatchReason

__all__ = [
    "AuditEvent",
    "AuditLog",
    "AuditRecord",
    "AuditSettings",
    "format_rfc3339",
    "parse_rfc3339",
    "pseudonym",
    "truncate_address",
]

MiB = 1 << 20

# 10000-01-01T00:00:00Z: RFC 3339 has four-digit years.
_MAX_TIME = 253402300800.0
_REASONS = frozenset(reason.value for reason in MatchReason)
_RESOLUTIONS = frozenset(how.value for how in Resolution)
# ::ffff:0:0/96, IPv4-mapped IPv6 (RFC 4291 section 2.5.5.2): such a client is an IPv4 client.
_MAPPED_HIGH = 0xFFFF
#: Pseudonyms and truncated addresses remembered (FIFO), so repeated ones cost a dict lookup.
_MEMO_SIZE = 65_536
# RFC 3339 section 5.6 date-time, or a bare full-date (taken as midnight UTC).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2}))?"
)
_MIN_KEY_BYTES = 16
# Records taken from the queue per write call, at most: bounds one join's copy of the lines.
_BATCH = 8192
_RETRY_MIN = 0.05
_RETRY_MAX = 1.0  # seconds between attempts while the disk refuses writes, at most


class AuditEvent(StrEnum):
    """What a decision did to the participant."""

    ADMIT = "admit"
    """Admitted into a meeting a restriction scopes."""
    DENY = "deny"
    """Refused at join or reconnect (HTTP 451 or close code 4451)."""
    EVICT = "evict"
    """Removed from a meeting because a restriction started while they were in it."""
    WOULD_DENY = "would-deny"
    """A dry-run restriction matched at join or reconnect; nothing was done."""
    WOULD_EVICT = "would-evict"
    """A dry-run restriction matched a participant in the meeting; nothing was done."""


_last_stamp: tuple[int, str] = (-1, "")


def format_rfc3339(when: float, *, milliseconds: bool = True) -> str:
    """Format Unix seconds as an RFC 3339 UTC date-time.

    Args:
        when: Unix seconds, 0 up to the year 9999.
        milliseconds: keep three fractional digits (rounded); else whole seconds (truncated).

    Returns:
        Such as ``"2024-05-01T12:00:00.250Z"``.
    """
    if milliseconds:
        seconds, millis = divmod(round(when * 1000), 1000)
        global _last_stamp
        last_seconds, stamp = _last_stamp
        if seconds != last_seconds:
            # Records come in bursts within one second: format its date and time once.
            stamp = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(seconds))
            _last_stamp = (seconds, stamp)
        return f"{stamp}.{millis:03d}Z"
    return _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(math.floor(when)))


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 date-time (or a bare date, taken as 00:00 UTC) into Unix seconds.

    Args:
        text: such as ``"2024-05-01T12:00:00.250Z"``, ``"2024-05-01T14:00:00+02:00"`` or
            ``"2024-05-01"``.

    Returns:
        Unix seconds.

    Raises:
        ValueError: naming the text, when it is not of that form or not a real date and time.
    """
    if not isinstance(text, str) or _RFC3339.fullmatch(text) is None:
        raise ValueError(
            f"{text!r} is not an RFC 3339 date-time (expected 2024-05-01T12:00:00Z, "
            f"an offset such as +02:00, or a date such as 2024-05-01)"
        )
    normal = text.upper().replace(" ", "T")
    if normal.endswith("Z"):
        normal = normal[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(normal)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date and time: {exc}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _optional_text(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name}: {value!r} is not a string or null")


def _text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: {value!r} is not a non-empty string")


class _AuditFields(NamedTuple):
    time: float
    event: AuditEvent
    restriction: str | None
    legal_basis: str | None
    authority: str | None
    reason: str | None
    meeting: str
    participant: str | None
    region: str
    resolved: str
    address: str
    geoip_build: int | None
    config_version: str
    kind: str


class AuditRecord(_AuditFields):
    """One gating decision, as written to the audit trail.

    Attributes:
        time: when it was decided, Unix seconds (written with millisecond precision).
        event: what the decision did.
        restriction: the restriction's id; None only for an admit that no restriction matched.
        legal_basis: the restriction's stated legal basis.
        authority: who imposed the restriction.
        reason: why it matched (a :class:`~proxy.policy.decision.MatchReason` value).
        meeting: the meeting id.
        participant: the participant, pseudonymised (``"p:"`` and 16 hex digits) unless the
            log is configured to keep ids; None when the join named nobody.
        region: the resolved location, such as ``"CN-BJ"``, ``"US"`` or ``"unknown"``.
        resolved: how the location was found (a :class:`~proxy.geo.Resolution` value).
        address: the client's network, truncated (``"203.0.113.0/24"``).
        geoip_build: build time of the GeoIP database (Unix seconds), when one was used.
        config_version: the version of the restriction set the decision was made with.
        kind: ``"join"``, ``"resume"`` (a reconnect) or ``"reeval"`` (a participant already in
            the meeting, re-evaluated when restrictions changed).

    Raises:
        ValueError: a field has the wrong type or value; the message names it.
    """

    __slots__ = ()

    def __new__(
        cls,
        time: float,
        event: AuditEvent,
        restriction: str | None,
        legal_basis: str | None,
        authority: str | None,
        reason: str | None,
        meeting: str,
        participant: str | None,
        region: str,
        resolved: str,
        address: str,
        geoip_build: int | None,
        config_version: str,
        kind: str,
    ) -> AuditRecord:
        # Built on the event loop for every audited decision: type tests and a tuple only.
        if isinstance(time, bool) or not isinstance(time, int | float) or not 0 <= time < _MAX_TIME:
            raise ValueError(f"time: {time!r} is not Unix seconds between 1970 and 9999")
        if not isinstance(event, AuditEvent):
            raise ValueError(f"event: {event!r} is not an AuditEvent")
        if restriction is None:
            if event is not AuditEvent.ADMIT:
                raise ValueError(f"restriction: a {event.value} record must name one")
            for name, value in (("legal_basis", legal_basis), ("authority", authority),
                                ("reason", reason)):
                if value is not None:
                    raise ValueError(f"{name}: given without a restriction")
        else:
            _text("restriction", restriction)
        _optional_text("legal_basis", legal_basis)
        _optional_text("authority", authority)
        if reason is not None and (not isinstance(reason, str) or reason not in _REASONS):
            raise ValueError(f"reason: {reason!r} is not one of {sorted(_REASONS)}")
        _text("meeting", meeting)
        _optional_text("participant", participant)
        _text("region", region)
        if not isinstance(resolved, str) or resolved not in _RESOLUTIONS:
            raise ValueError(f"resolved: {resolved!r} is not one of {sorted(_RESOLUTIONS)}")
        _text("address", address)
        if geoip_build is not None and (isinstance(geoip_build, bool)
                                        or not isinstance(geoip_build, int)):
            raise ValueError(f"geoip_build: {geoip_build!r} is not an integer or null")
        if not isinstance(config_version, str):
            raise ValueError(f"config_version: {config_version!r} is not a string")
        _text("kind", kind)
        return tuple.__new__(cls, (time, event, restriction, legal_basis, authority, reason,
                                   meeting, participant, region, resolved, address, geoip_build,
                                   config_version, kind))

    def to_json(self) -> bytes:
        """One JSON line (without the newline), keys always in the order of the fields.

        Returns:
            UTF-8 JSON; ``time`` is RFC 3339 UTC with milliseconds.

        Raises:
            orjson.JSONEncodeError: a string holds a lone surrogate (the writer sanitises).
        """
        return orjson.dumps({
            "time": format_rfc3339(self.time),
            "event": self.event.value,
            "restriction": self.restriction,
            "legal_basis": self.legal_basis,
            "authority": self.authority,
            "reason": self.reason,
            "meeting": self.meeting,
            "participant": self.participant,
            "region": self.region,
            "resolved": self.resolved,
            "address": self.address,
            "geoip_build": self.geoip_build,
            "config_version": self.config_version,
            "kind": self.kind,
        })

    @classmethod
    def from_json(cls, line: bytes | str) -> AuditRecord:
        """Parse one line written by :meth:`to_json`; keys added by newer writers are ignored.

        Args:
            line: the line, with or without its newline.

        Returns:
            The record.

        Raises:
            ValueError: the line is not JSON, not an object, lacks a key, or a value is bad;
                the message names the problem.
        """
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object but {type(data).__name__}")
        missing = [name for name in _KEYS if name not in data]
        if missing:
            raise ValueError(f"missing keys: {', '.join(missing)}")
        when = data["time"]
        if not isinstance(when, str):
            raise ValueError(f"time: {when!r} is not an RFC 3339 string")
        try:
            seconds = parse_rfc3339(when)
        except ValueError as exc:
            raise ValueError(f"time: {exc}") from None
        try:
            event = AuditEvent(data["event"])
        except ValueError:
            expected = ", ".join(e.value for e in AuditEvent)
            raise ValueError(f"event: {data['event']!r} is not one of {expected}") from None
        values: dict[str, Any] = {name: data[name] for name in _KEYS[2:]}
        return cls(time=seconds, event=event, **values)


_KEYS = (
    "time",
    "event",
    "restriction",
    "legal_basis",
    "authority",
    "reason",
    "meeting",
    "participant",
    "region",
    "resolved",
    "address",
    "geoip_build",
    "config_version",
    "kind",
)
_TEXT_FIELDS = tuple(name for name in _KEYS[2:] if name != "geoip_build")


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Where and how the audit trail is written.

    Attributes:
        path: the JSON-lines file; None disables the audit trail.
        max_bytes: rotate before the file would exceed this size; 0 never rotates. A single
            record longer than this still gets a file of its own.
        keep: rotated files kept, ``path.1`` (newest) to ``path.N``; the oldest is dropped.
        pseudonymise: replace participant ids with keyed pseudonyms.
        key: the HMAC key for pseudonyms, at least 16 bytes; None uses a random key for this
            process (pseudonyms then change on restart, and :attr:`AuditLog.ephemeral_key`
            is set so that the caller can warn).
        truncate_v4: IPv4 prefix length kept (32 keeps the whole address).
        truncate_v6: IPv6 prefix length kept (128 keeps the whole address).
        queue_max: records waiting for the writer, at most; more are dropped and counted.
        batch_delay: seconds the writer waits after the first record of a batch for more; the
            records of a burst then cost one wake-up of the writer thread and one write, not one
            each (a wake-up per record cost about 100 us of CPU per record). 0 writes at once.

    Raises:
        ValueError: a field has the wrong type or is out of range; the message names it.
    """

    path: Path | None
    max_bytes: int = 64 * MiB
    keep: int = 10
    pseudonymise: bool = True
    key: bytes | None = field(default=None, repr=False)
    truncate_v4: int = 24
    truncate_v6: int = 48
    queue_max: int = 100_000
    batch_delay: float = 0.005

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, Path):
            raise ValueError(f"path: {self.path!r} is not a Path or None")
        for name, low, high in (
            ("max_bytes", 0, None),
            ("keep", 1, None),
            ("truncate_v4", 0, 32),
            ("truncate_v6", 0, 128),
            ("queue_max", 1, None),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: {value!r} is not an integer")
            if value < low or (high is not None and value > high):
                expected = f"{low} or more" if high is None else f"{low} to {high}"
                raise ValueError(f"{name}: {value} is out of range; expected {expected}")
        if (isinstance(self.batch_delay, bool) or not isinstance(self.batch_delay, int | float)
                or not 0 <= self.batch_delay <= 60):
            raise ValueError(f"batch_delay: {self.batch_delay!r} is not a number of seconds "
                             "from 0 to 60")
        if not isinstance(self.pseudonymise, bool):
            raise ValueError(f"pseudonymise: {self.pseudonymise!r} is not a bool")
        if self.key is not None:
            if not isinstance(self.key, bytes):
                raise ValueError(f"key: a {type(self.key).__name__} is not bytes")
            if len(self.key) < _MIN_KEY_BYTES:
                # A short key lets anyone holding the log test guessed ids against pseudonyms.
                raise ValueError(
                    f"key: {len(self.key)} bytes is too short; expected {_MIN_KEY_BYTES} or more"
                )


def pseudonym(key: bytes, participant: str | None) -> str | None:
    """The keyed pseudonym of a participant id.

    Args:
        key: the HMAC key.
        participant: the raw id; None stays None.

    Returns:
        ``"p:"`` and the first 16 hex digits of HMAC-SHA256(key, id) (RFC 2104).
    """
    if participant is None:
        return None
    # surrogatepass: ids parsed leniently may hold lone surrogates; they must not raise here.
    data = participant.encode("utf-8", "surrogatepass")
    return "p:" + hmac.new(key, data, hashlib.sha256).hexdigest()[:16]


def truncate_address(address: IPv4Address | IPv6Address, v4_prefix: int, v6_prefix: int) -> str:
    """The network an address is in, as written to the audit trail.

    Args:
        address: the client address; an IPv4-mapped IPv6 address is taken as IPv4.
        v4_prefix: IPv4 prefix length kept; 32 keeps the whole address.
        v6_prefix: IPv6 prefix length kept; 128 keeps the whole address.

    Returns:
        ``"203.0.113.0/24"``, ``"2001:db8:1::/48"``, or the bare address at full length.
    """
    value = int(address)
    if isinstance(address, IPv4Address) or value >> 32 == _MAPPED_HIGH:
        value &= 0xFFFFFFFF
        if v4_prefix >= 32:
            return str(IPv4Address(value))
        mask = ((1 << v4_prefix) - 1) << (32 - v4_prefix)
        return f"{IPv4Address(value & mask)}/{v4_prefix}"
    if v6_prefix >= 128:
        return str(IPv6Address(value))  # without a zone id: it names a local interface
    mask = ((1 << v6_prefix) - 1) << (128 - v6_prefix)
    return f"{IPv6Address(value & mask)}/{v6_prefix}"


def _line(record: AuditRecord) -> bytes:
    try:
        return record.to_json() + b"\n"
    except orjson.JSONEncodeError:
        # A lone surrogate from a leniently parsed id: write the record with it replaced
        # rather than lose the record.
        fixed: dict[str, Any] = {
            name: value.encode("utf-8", "replace").decode("utf-8")
            for name in _TEXT_FIELDS
            if isinstance(value := getattr(record, name), str)
        }
        return record._replace(**fixed).to_json() + b"\n"


class AuditLog:
    """The audit trail: records on the event loop, writes on a thread of its own.

    Attributes:
        settings: the settings it was built with.
        ephemeral_key: pseudonyms use a random per-process key (no key was configured).
        recorded: :meth:`record` calls, including dropped ones and those of a disabled log.
        written: records written to the file.
        batches: successful write calls (each carries one or more records).
        dropped: records not kept: the queue was full, or the log was closed.
        write_failures: failed attempts to open, write or rotate the file.
        healthy: the last attempt succeeded (True before the first).
        last_error: the most recent failure, with the file name; kept after recovery.

    :meth:`record` must be called from one thread (the event loop's); the counters are read
    from any thread. The writer thread only reads the queue.
    """

    def __init__(
        self, settings: AuditSettings, *, clock: Callable[[], float] = _time.time
    ) -> None:
        """Start the writer thread, unless the audit trail is disabled.

        Args:
            settings: where and how to write.
            clock: wall-clock time (Unix seconds), for records given no time.
        """
        self.settings = settings
        self._clock = clock
        self.ephemeral_key = settings.pseudonymise and settings.key is None
        self._key = settings.key if settings.key is not None else secrets.token_bytes(32)
        self._pseudonyms: dict[str, str] = {}
        self._networks: dict[IPv4Address | IPv6Address, str] = {}
        self.recorded = 0
        self.written = 0
        self.dropped = 0
        self.write_failures = 0
        self.healthy = True
        self.last_error: str | None = None
        self._submitted = 0
        self._closed = False
        # None in the queue wakes the writer to stop; it follows every record already queued.
        self._queue: queue.SimpleQueue[AuditRecord | None] = queue.SimpleQueue()
        self._progress = threading.Condition()
        self._stopping = threading.Event()
        self._hurry = threading.Event()  # set while someone waits for the writer
        self.batches = 0
        self._fd: int | None = None
        self._identity: tuple[int, int] = (0, 0)
        self._size = 0
        self._needs_newline = False
        self._thread: threading.Thread | None = None
        if settings.path is not None:
            self._thread = threading.Thread(target=self._run, name="geogate-audit", daemon=True)
            self._thread.start()

    # -- the event loop side

    @property
    def enabled(self) -> bool:
        """Whether records are written (a path is configured)."""
        return self._thread is not None

    @property
    def pending(self) -> int:
        """Records accepted and not yet written."""
        return self._submitted - self.written

    @property
    def problem(self) -> str | None:
        """Why the audit trail is not ready, for the readiness check; None when it is."""
        if self._thread is None:
            return None
        if not self.healthy:
            return (
                f"audit trail cannot be written ({self.pending} records waiting, "
                f"{self.dropped} dropped): {self.last_error}"
            )
        if self.pending >= self.settings.queue_max:
            return f"audit queue full ({self.pending} records waiting, {self.dropped} dropped)"
        return None

    def pseudonym(self, participant: str | None) -> str | None:
        """The participant as written: its pseudonym, or the raw id when not pseudonymising."""
        if not self.settings.pseudonymise or participant is None:
            return participant
        # The same participants come back (admit, then evict; retries): remember a bounded
        # number of answers rather than computing an HMAC for each record.
        cached = self._pseudonyms.get(participant)
        if cached is None:
            cached = pseudonym(self._key, participant)
            assert cached is not None
            if len(self._pseudonyms) >= _MEMO_SIZE:
                del self._pseudonyms[next(iter(self._pseudonyms))]
            self._pseudonyms[participant] = cached
        return cached

    def _truncated(self, address: IPv4Address | IPv6Address) -> str:
        cached = self._networks.get(address)
        if cached is None:
            settings = self.settings
            cached = truncate_address(address, settings.truncate_v4, settings.truncate_v6)
            if len(self._networks) >= _MEMO_SIZE:
                del self._networks[next(iter(self._networks))]
            self._networks[address] = cached
        return cached

    def record(
        self,
        event: AuditEvent,
        *,
        meeting: str,
        participant: str | None,
        region: str,
        resolved: str,
        address: IPv4Address | IPv6Address,
        config_version: str,
        kind: str,
        restriction: str | None = None,
        legal_basis: str | None = None,
        authority: str | None = None,
        reason: str | None = None,
        geoip_build: int | None = None,
        at: float | None = None,
    ) -> AuditRecord | None:
        """Record one decision; never blocks on the disk.

        Args:
            event: what the decision did.
            meeting: the meeting id.
            participant: the raw participant id (pseudonymised here), or None.
            region: the resolved location, as ``str(location)``.
            resolved: how it was resolved (a Resolution).
            address: the client address (truncated here).
            config_version: the restriction set's version.
            kind: ``"join"``, ``"resume"`` or ``"reeval"``.
            restriction: the restriction's id (required unless ``event`` is ADMIT).
            legal_basis: its legal basis.
            authority: who imposed it.
            reason: why it matched (a MatchReason).
            geoip_build: the GeoIP database's build time.
            at: when it was decided (Unix seconds); default now. Kept to the millisecond.

        Returns:
            The record queued; None when the log is disabled, closed or full (then counted).

        Raises:
            ValueError: a value is invalid (see :class:`AuditRecord`).
        """
        self.recorded += 1
        if self._thread is None:
            return None
        if self._closed or self._submitted - self.written >= self.settings.queue_max:
            self.dropped += 1
            return None
        when = self._clock() if at is None else at
        record = AuditRecord(
            time=round(when * 1000) / 1000,
            event=event,
            restriction=restriction,
            legal_basis=legal_basis,
            authority=authority,
            # StrEnum members stored as their plain values: records compare equal after a
            # round trip through JSON.
            reason=None if reason is None else str(reason),
            meeting=meeting,
            participant=self.pseudonym(participant),
            region=region,
            resolved=str(resolved),
            address=self._truncated(address),
            geoip_build=geoip_build,
            config_version=config_version,
            kind=str(kind),
        )
        self._submitted += 1
        self._queue.put(record)
        return record

    def wait_until(self, predicate: Callable[[AuditLog], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds, checked after each attempt of the writer.

        Args:
            predicate: a test of the counters, such as ``lambda log: log.write_failures > 0``.
            timeout: seconds to wait at most.

        Returns:
            Whether it held in time.
        """
        with self._progress:
            return self._progress.wait_for(lambda: predicate(self), timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every record accepted so far is written (for tests and shutdown).

        Args:
            timeout: seconds to wait at most.

        Returns:
            Whether everything was written in time; always True for a disabled log.
        """
        if self._thread is None:
            return True
        self._hurry.set()
        try:
            return self.wait_until(lambda log: log.pending == 0, timeout)
        finally:
            self._hurry.clear()

    def close(self, timeout: float = 5.0) -> bool:
        """Flush, then stop the writer; later records are counted as dropped.

        It blocks for up to ``timeout``: from the event loop, run it in a thread
        (``await asyncio.to_thread(log.close)``), after the last record.

        Args:
            timeout: seconds to wait at most for the writes and the thread.

        Returns:
            Whether every record accepted was written.
        """
        thread = self._thread
        if self._closed or thread is None:
            self._closed = True
            return self.pending == 0
        deadline = _time.monotonic() + timeout
        self.flush(timeout)
        self._closed = True
        self._stopping.set()
        self._hurry.set()
        self._queue.put(None)
        # A short grace even when the flush took the whole timeout: the writer is only waiting.
        thread.join(max(deadline - _time.monotonic(), 0.2))
        return self.pending == 0

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the writer thread

    def _notify(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            # A bug, not a disk problem: say so on the readiness surface before the thread ends.
            self.healthy = False
            self.last_error = f"audit writer stopped: {exc!r}"
            self._notify()
            raise
        finally:
            self._close_file()

    def _loop(self) -> None:
        lines: deque[bytes] = deque()
        delay = _RETRY_MIN
        stopping = False
        get = self._queue.get
        batch_delay = self.settings.batch_delay
        while True:
            if not lines and not stopping and self._fd is not None:
                item = get()  # idle with the file open: sleep until a record or close()
                if item is None:
                    stopping = True
                else:
                    lines.append(_line(item))
                    if batch_delay:
                        # Let the rest of a burst queue up: puts while nobody waits on the
                        # queue wake no thread. flush() and close() cut the wait short.
                        self._hurry.wait(batch_delay)
            while len(lines) < _BATCH:
                try:
                    item = get(block=False)
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    lines.append(_line(item))
            if stopping and not lines:
                return
            batch = len(lines)
            try:
                self._write(lines)
            except OSError as exc:
                self.write_failures += 1
                self.healthy = False
                self.last_error = str(exc)
                self._close_file()  # reopened on the next attempt: the path may be fixed by then
                self._notify()
                if self._stopping.is_set():
                    return  # close() has waited its time; what is left stays pending
                self._stopping.wait(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            self.healthy = True
            if batch:
                self.batches += 1
            delay = _RETRY_MIN
            self._notify()

    def _open(self) -> int:
        """The file descriptor to append to, (re)opening when the file at ``path`` changed."""
        path = self.settings.path
        assert path is not None
        fd = self._fd
        if fd is not None:
            try:
                stat = os.stat(path)
                current = (stat.st_dev, stat.st_ino)
            except OSError:
                current = None
            if current == self._identity:
                return fd
            self._close_file()  # moved away or removed (external rotation): start a new file
        # O_RDWR, not O_WRONLY: the last byte is read to know if a cut-off line needs ending.
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            stat = os.fstat(fd)
            size = stat.st_size
            self._needs_newline = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        except OSError:
            os.close(fd)
            raise
        self._fd, self._identity, self._size = fd, (stat.st_dev, stat.st_ino), size
        return fd

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # Nothing is buffered (writes go straight to the kernel): a failing close loses
            # nothing.
            with contextlib.suppress(OSError):
                os.close(fd)

    def _rotate(self) -> None:
        path = self.settings.path
        assert path is not None
        self._close_file()
        # Like RotatingFileHandler: path.N-1 replaces path.N (dropping the oldest), ...,
        # path becomes path.1. Each rename is atomic; a failure leaves every record in a file.
        for index in range(self.settings.keep - 1, 0, -1):
            source = f"{path}.{index}"
            if os.path.exists(source):
                os.replace(source, f"{path}.{index + 1}")
        if os.path.exists(path):
            os.replace(path, f"{path}.1")

    def _write(self, lines: deque[bytes]) -> None:
        """Append ``lines`` (removing each once written), rotating by size; opens the file.

        Raises:
            OSError: the lines not yet written stay in ``lines``.
        """
        fd = self._open()
        max_bytes = self.settings.max_bytes
        while lines:
            if self._needs_newline:
                os.write(fd, b"\n")
                self._size += 1
                self._needs_newline = False
            if max_bytes and self._size and self._size + len(lines[0]) > max_bytes:
                self._rotate()
                fd = self._open()
                continue
            count = total = 0
            for line in lines:
                if max_bytes and count and self._size + total + len(line) > max_bytes:
                    break
                total += len(line)
                count += 1
            chunk = lines[0] if count == 1 else b"".join(itertools.islice(lines, count))
            view = memoryview(chunk)
            done = 0
            try:
                while done < total:
                    wrote = os.write(fd, view[done:])
                    if wrote <= 0:
                        raise OSError(f"{self.settings.path}: write returned {wrote}")
                    done += wrote
            except OSError:
                self._size += done
                # Each line ends in the only newline it has (JSON escapes the others).
                complete = chunk.count(b"\n", 0, done)
                self._needs_newline = done > 0 and chunk[done - 1] != 0x0A
                self._take(lines, complete)
                raise
            self._size += total
            self._take(lines, count)

    def _take(self, lines: deque[bytes], count: int) -> None:
        for _ in range(count):
            lines.popleft()
        self.written += count
