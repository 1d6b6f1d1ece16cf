"""Admission: one place where a join becomes a decision, a log record and, if barred, a notice.

Every join and rejoin goes through :meth:`Admission.decide`: it asks the restriction set in force,
records every decision that names a restriction on the ``proxy.audit`` logger (deny, would-deny,
and admit-with-dry-run-matches, each with the restriction id, legal basis and authority), and
remembers denials for ``retry_window`` seconds so that a barred client retrying at once is answered
from memory. Only denials are reused, and only under the same restriction-set version and the same
GeoIP result: a remembered answer can never admit anyone the gate would bar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import orjson

from proxy.adapters.base import Join
from proxy.audit import AuditEvent, AuditLog
from proxy.errors import LocationDenied
from proxy.frames import Opcode, encode_frame
from proxy.geo import GeoResult
from proxy.handshake import build_error_response
from proxy.policy.decision import Decision
from proxy.policy.gate import RestrictionSet
from proxy.policy.restrictions import Restriction

__all__ = ["NOTICE_CLOSE_CODE", "Admission", "Denial"]

log = logging.getLogger("proxy.admission")
#: One line per decision (rate-limited); the audit trail has every decision.
decision_log = logging.getLogger("proxy.decisions")

#: The close code a barred participant receives (after HTTP 451, RFC 7725).
NOTICE_CLOSE_CODE = LocationDenied.close_code


@dataclass(frozen=True, slots=True)
class Denial:
    """What a barred participant is told, prepared once per restriction and meeting.

    Attributes:
        decision: the decision that barred them.
        notice: the JSON notice frame (unmasked, to the client).
        reason: the close reason that goes with close code 4451.
        http: a complete HTTP 451 response, for refusals before the upgrade.
        body: the notice as a mapping, for adapters that tell it in their own protocol's shape.
    """

    decision: Decision
    notice: bytes
    reason: str
    http: bytes
    body: dict[str, object]

    @property
    def restriction(self) -> Restriction:
        """The restriction that barred the participant."""
        assert self.decision.denied_by is not None
        return self.decision.denied_by


def _notice_body(decision: Decision) -> dict[str, object]:
    r = decision.denied_by
    assert r is not None
    return {
        "type": "geogate.denied",
        "restriction": r.id,
        "meeting": decision.meeting,
        "region": str(decision.location),
        "notice": r.notice or "You cannot join this meeting from your location.",
        "notice_url": r.notice_url,
        "authority": r.authority,
        "legal_basis": r.legal_basis,
    }


def make_denial(decision: Decision) -> Denial:
    """Build the notice frame, close reason and HTTP 451 response for a denial."""
    r = decision.denied_by
    assert r is not None
    body = _notice_body(decision)
    notice = encode_frame(Opcode.TEXT, orjson.dumps(body), mask=False)
    reason = f"location restriction {r.id}"
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    if r.notice_url:
        # RFC 7725 section 3: identify who is blocking access.
        headers.append(("Link", f'<{r.notice_url}>; rel="blocked-by"'))
    http = build_error_response(451, orjson.dumps(body), headers)
    return Denial(decision, notice, reason, http, body)


class Admission:
    """Decides joins against the restriction set in force; the set is swapped on reload.

    Args:
        restrictions: the restriction set in force.
        retry_window: seconds a denial is reused for the same address and meeting.
        cache_size: denials remembered at most (0 disables reuse).
        clock: wall-clock time (Unix seconds).
        monotonic: a monotonic clock for the retry window.
        count: called with (outcome, restriction id) for every join decision, for metrics.
        audit: where decisions are recorded (None: nowhere).
        geoip_build: the build time of the GeoIP database in service, for audit records.
        log_rate: decision lines per second at most in the process log.
    """

    __slots__ = (
        "_denials",
        "_notices",
        "_suppressed",
        "_tokens",
        "_tokens_at",
        "audit",
        "cache_size",
        "clock",
        "count",
        "counts",
        "geoip_build",
        "log_rate",
        "monotonic",
        "restrictions",
        "retry_window",
    )

    def __init__(
        self,
        restrictions: RestrictionSet,
        *,
        retry_window: float = 2.0,
        cache_size: int = 65536,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        count: Callable[[str, str], None] | None = None,
        audit: AuditLog | None = None,
        geoip_build: Callable[[], int | None] = lambda: None,
        log_rate: float = 50.0,
    ) -> None:
        self.restrictions = restrictions
        self.retry_window = retry_window
        self.cache_size = cache_size
        self.clock = clock
        self.monotonic = monotonic
        self.count = count
        self.audit = audit
        self.geoip_build = geoip_build
        self.log_rate = log_rate
        self._tokens = log_rate
        self._tokens_at = monotonic()
        self._suppressed = 0
        self._denials: dict[tuple[object, str], tuple[float, object, GeoResult, Denial]] = {}
        self._notices: dict[tuple[object, str, str], Denial] = {}
        #: Decisions by outcome: admit, deny, deny-reused, would-deny; re-checks: evict and
        #: would-evict.
        self.counts: dict[str, int] = {
            "admit": 0, "deny": 0, "deny-reused": 0, "would-deny": 0, "evict": 0, "would-evict": 0,
        }  # fmt: skip

    def swap(self, restrictions: RestrictionSet) -> None:
        """Put a new restriction set in force; remembered denials of the old one are dropped."""
        self.restrictions = restrictions
        self._denials.clear()
        self._notices.clear()

    def decide(
        self,
        join: Join,
        address: IPv4Address | IPv6Address,
        geo: GeoResult,
        *,
        peer: str = "",
    ) -> Denial | None:
        """Decide a join; None admits it.

        Args:
            join: the meeting and participant.
            address: the client address (for exempt networks and the retry window).
            geo: where the address was placed.
            peer: the socket peer, for the log.

        Returns:
            None to admit, or the denial to send.
        """
        key = (address, join.meeting)
        rset = self.restrictions
        cached = self._denials.get(key)
        if cached is not None:
            expires, version, cached_geo, denial = cached
            if self.monotonic() < expires and version == rset.version and cached_geo == geo:
                self.counts["deny-reused"] += 1
                if self.count is not None:
                    self.count("deny_reused", denial.restriction.id)
                return denial
            del self._denials[key]
        decision = rset.decide(join.meeting, geo.location, address, self.clock())
        if decision.denied_by is None:
            self.counts["admit"] += 1
            if decision.matches:
                self._record("would-deny", decision, join, address, geo, peer)
                self.counts["would-deny"] += 1
                if self.count is not None:
                    self.count("would_deny", decision.matches[0].restriction.id)
            if self.count is not None:
                self.count("admit", "")
            if self.audit is not None:
                self.record_admit(join, address, geo, peer)
            return None
        self.counts["deny"] += 1
        if self.count is not None:
            self.count("deny", decision.denied_by.id)
        self._record("deny", decision, join, address, geo, peer)
        denial = self._denial(decision)
        if self.cache_size and self.retry_window > 0:
            if len(self._denials) >= self.cache_size:
                del self._denials[next(iter(self._denials))]
            self._denials[key] = (self.monotonic() + self.retry_window, rset.version, geo, denial)
        return denial

    def reevaluate(
        self, join: Join, address: IPv4Address | IPv6Address, geo: GeoResult, peer: str = ""
    ) -> tuple[Denial | None, tuple[str, ...]]:
        """Re-check an open session after a change; recorded as evict or would-evict.

        Never answered from the retry window.

        Returns:
            The denial (None: the session stays) and the ids of the dry-run restrictions that
            would evict it.
        """
        decision = self.restrictions.decide(join.meeting, geo.location, address, self.clock())
        would = tuple(m.restriction.id for m in decision.matches if not m.enforced)
        if decision.denied_by is None:
            if decision.matches:
                self.counts["would-evict"] += 1
                self._record("would-evict", decision, join, address, geo, peer)
            return None, would
        self.counts["evict"] += 1
        self._record("evict", decision, join, address, geo, peer)
        return self._denial(decision), would

    def _denial(self, decision: Decision) -> Denial:
        r = decision.denied_by
        assert r is not None
        key = (r.id, decision.meeting, str(decision.location))
        denial = self._notices.get(key)
        if denial is None or denial.decision.version != decision.version:
            if len(self._notices) >= 4096:
                self._notices.clear()
            denial = self._notices[key] = make_denial(decision)
        return denial

    def _record(
        self,
        event: str,
        decision: Decision,
        join: Join,
        address: IPv4Address | IPv6Address,
        geo: GeoResult,
        peer: str,
    ) -> None:
        """One audit record per matching restriction (the one that denied, and every dry run)."""
        for match in decision.matches:
            r = match.restriction
            kind = event if match.enforced else f"would-{event.removeprefix('would-')}"
            if not event.startswith("would-") and match.enforced and r is not decision.denied_by:
                continue  # the one that denied is recorded; others enforced add nothing new
            self._write(kind, join, address, geo, r, match.reason.value)
            self._log(kind, join, geo, r, peer)

    def record_admit(self, join: Join, address: IPv4Address | IPv6Address, geo: GeoResult,
                     peer: str = "") -> None:
        """Record an admission into a meeting that a restriction names (any window, any mode)."""
        if self.restrictions.scopes(join.meeting):
            self._write("admit", join, address, geo, None, None)

    def _write(self, event: str, join: Join, address: IPv4Address | IPv6Address,
               geo: GeoResult, r: Restriction | None, reason: str | None) -> None:
        audit = self.audit
        if audit is None:
            return
        try:
            audit.record(
                AuditEvent(event), meeting=join.meeting, participant=join.participant,
                region=str(geo.location), resolved=geo.how.value, address=address,
                config_version=str(self.restrictions.version),
                kind="reeval" if event in ("evict", "would-evict") else join.kind.value,
                restriction=None if r is None else r.id,
                legal_basis=None if r is None else r.legal_basis,
                authority=None if r is None else r.authority,
                reason=reason, geoip_build=self.geoip_build(),
            )
        except ValueError:  # a record the audit log refuses is a bug to see, not to crash on
            log.exception("audit record refused")

    def _log(self, event: str, join: Join, geo: GeoResult, r: Restriction, peer: str) -> None:
        """A decision line in the process log, rate-limited so a storm cannot flood it."""
        if not decision_log.isEnabledFor(logging.INFO):
            return
        now = self.monotonic()
        rate = self.log_rate
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            self._suppressed += 1
            return
        self._tokens -= 1
        suppressed, self._suppressed = self._suppressed, 0
        decision_log.info(
            "%s %s by %s (%s; %s) meeting=%s participant=%s region=%s peer=%s%s",
            event, join.kind.value, r.id, r.legal_basis, r.authority, join.meeting,
            join.participant, geo.location, peer,
            f" ({suppressed} decision lines suppressed)" if suppressed else "",
        )
