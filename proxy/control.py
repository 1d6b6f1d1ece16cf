"""The operations view of a running proxy: what the admin server shows and does, and its metrics.

:class:`Control` implements :class:`proxy.admin.AdminController` over the server's shared state and
its reloader, wires every metric of :class:`proxy.metrics.ProxyMetrics` to the counters that live
where the work happens (read at scrape time, so the relay path pays nothing), and keeps a cached
answer to "is the signaling server reachable" from a periodic TCP probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from proxy.config import parse_restriction
from proxy.metrics import GeoIPDatabase, ProxyMetrics, RelayDirection
from proxy.policy.restrictions import Enforcement, Restriction

if TYPE_CHECKING:
    from proxy.server import Server

__all__ = ["Control"]

#: Seconds between probes of the upstream's TCP port, for readiness.
PROBE_INTERVAL = 5.0


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def restriction_dict(r: Restriction) -> dict[str, object]:
    """A restriction as the admin API shows it (the restrictions file's keys)."""
    return {
        "id": r.id, "mode": r.mode.value, "regions": sorted(r.regions),
        "meetings": list(r.meetings), "starts_at": _rfc3339(r.starts_at),
        "ends_at": _rfc3339(r.ends_at), "unknown": r.unknown.value,
        "anonymous": r.anonymous.value, "exempt": [str(n) for n in r.exempt],
        "enforcement": r.enforcement.value, "legal_basis": r.legal_basis,
        "authority": r.authority, "notice": r.notice, "notice_url": r.notice_url,
    }  # fmt: skip


class Control:
    """The admin controller and metrics of one :class:`~proxy.server.Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.state = server.state
        self.metrics = ProxyMetrics()
        self.upstream_ok: tuple[bool, str] = (False, "not probed yet")
        self._probe: asyncio.Task[None] | None = None
        self._join_children: dict[tuple[str, str], Any] = {}
        self._wire()

    # ---- metrics -------------------------------------------------------------------------------

    def _wire(self) -> None:
        m, state = self.metrics, self.state
        m.sessions_open.set_function(lambda: len(state.registry))
        m.connections.set_function(lambda: state.counts["connections"])
        m.upstream_failures.set_function(lambda: state.counts["upstream-failed"])
        m.geoip_lookups.set_function(lambda: state.geo.lookups)
        m.geoip_cache_hits.set_function(lambda: state.geo.cache_hits)
        m.geoip_errors.set_function(lambda: state.geo.errors)
        m.geoip_build.labels(database=GeoIPDatabase.MAIN).set_function(
            lambda: state.geo.build_epoch)
        m.geoip_build.labels(database=GeoIPDatabase.ANONYMOUS).set_function(
            lambda: state.geo.anonymous_build_epoch or 0)
        for index, direction in ((0, RelayDirection.CLIENT_TO_UPSTREAM),
                                 (2, RelayDirection.UPSTREAM_TO_CLIENT)):
            m.relay_messages.labels(direction=direction).set_function(
                functools.partial(self._relay_total, index))
            m.relay_bytes.labels(direction=direction).set_function(
                functools.partial(self._relay_total, index + 1))
        m.audit_pending.set_function(lambda: state.audit.pending)
        m.set_config_version(str(state.snapshot.version))
        m.reload_timestamp.set(time.time())
        state.admission.count = self.count_join

    def count_join(self, outcome: str, restriction: str) -> None:
        """Count one join decision (called by admission for every join)."""
        child = self._join_children.get((outcome, restriction))
        if child is None:
            child = self._join_children[(outcome, restriction)] = self.metrics.joins.labels(
                outcome=outcome, restriction=restriction)
        child.inc()

    def _relay_total(self, index: int) -> int:
        total = self.state.relay_totals[index]
        for session in self.state.registry:
            relay = session.relay
            if relay is not None:
                direction = relay.up if index < 2 else relay.down
                total += direction.messages if index % 2 == 0 else direction.bytes
        return total

    def reloaded(self, outcome: Any) -> None:
        """Record a reload or re-check outcome in the metrics."""
        m = self.metrics
        if outcome.trigger in ("file", "sighup", "admin"):
            m.record_reload(outcome.ok, outcome.time if outcome.ok else None)
            if outcome.ok:
                m.set_config_version(outcome.version)
                m.retain_restrictions(r.id for r in self.state.snapshot.restrictions)
                self._join_children.clear()

    def evicted(self, restriction: str, latency: float) -> None:
        self.metrics.evictions.labels(restriction=restriction).inc()
        self.metrics.eviction_latency.observe(latency)

    def would_evict(self, restriction: str) -> None:
        self.metrics.would_evictions.labels(restriction=restriction).inc()

    def refused(self, status: int) -> None:
        self.metrics.handshakes_refused.labels(status=str(status)).inc()

    # ---- upstream probe ------------------------------------------------------------------------

    def start(self) -> None:
        self._probe = asyncio.get_running_loop().create_task(self._probe_upstream())

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe

    async def _probe_upstream(self) -> None:
        while True:
            await self.probe_now()
            await asyncio.sleep(PROBE_INTERVAL)

    async def probe_now(self) -> tuple[bool, str]:
        """Try a TCP connection to the upstream now; the answer is what readiness reports."""
        target = self.state.upstream
        try:
            async with asyncio.timeout(self.state.config.upstream.connect_timeout):
                _, writer = await asyncio.open_connection(target.host, target.port)
            writer.close()
            self.upstream_ok = (True, f"{target.host}:{target.port} accepts connections")
        except (OSError, TimeoutError) as exc:
            self.upstream_ok = (False, f"{target.host}:{target.port}: {exc or 'timeout'}")
        return self.upstream_ok

    # ---- AdminController -----------------------------------------------------------------------

    def healthy(self) -> bool:
        return True

    def readiness(self) -> dict[str, tuple[bool, str]]:
        state = self.state
        last = self.server.reloader.last
        config = (not state.draining, f"version {state.snapshot.version}" + (
            "; draining" if state.draining else "") + (
            f"; last reload refused: {last.error}" if last is not None and not last.ok else ""))
        geo = state.geo
        geoip = (geo.last_error is None,
                 geo.last_error or f"{geo.database_type} built {_rfc3339(geo.build_epoch)}")
        checks = {"config": config, "geoip": geoip, "upstream": self.upstream_ok}
        audit = state.audit
        if audit.enabled:
            problem = audit.problem
            checks["audit"] = (problem is None, problem or "writable")
        return checks

    def metrics_text(self) -> str:
        audit = self.state.audit
        m = self.metrics
        if audit.enabled:
            # Counters kept by the audit writer, brought up to date at scrape time.
            for family, value in ((m.audit_write_failures, audit.write_failures),
                                  (m.audit_dropped, audit.dropped)):
                child = family.labels()
                child.inc(max(0, value - int(child.value)))
        for status, count in list(self.state.refused.items()):
            child = self.metrics.handshakes_refused.labels(status=str(status))
            child.inc(max(0, count - int(child.value)))
        return m.expose()

    def sessions(self, meeting: str | None) -> list[dict[str, object]]:
        registry = self.state.registry
        chosen = registry.in_meeting(meeting) if meeting is not None else list(registry)
        return [{
            "id": s.id, "meeting": s.meeting, "participant": s.join.participant,
            "region": str(s.geo.location), "resolved": s.geo.how.value,
            "address": str(s.address), "since": _rfc3339(s.since),
        } for s in chosen]  # fmt: skip

    def restrictions_info(self) -> dict[str, object]:
        snapshot = self.state.snapshot
        reloader = self.server.reloader
        last = reloader.last
        now = time.time()
        return {
            "version": str(snapshot.version),
            "restrictions_version": str(snapshot.restrictions.version),
            "loaded_at": _rfc3339(reloader.loaded_at),
            "in_force": [r.id for r in snapshot.restrictions.in_force(now)],
            "next_change": _rfc3339(snapshot.restrictions.next_boundary(now)),
            "restrictions": [restriction_dict(r) for r in snapshot.restrictions],
            "last_reload": None if last is None else last.as_dict(),
        }

    async def check(self, draft: dict[str, object]) -> dict[str, object]:
        restriction = parse_restriction(draft, "draft")
        now = time.time()
        would: list[dict[str, object]] = []
        for session in self.state.registry:
            if not restriction.names_meeting(session.meeting):
                continue
            reason = restriction.bars(session.geo.location, session.address)
            if reason is not None:
                would.append({
                    "id": session.id, "meeting": session.meeting,
                    "participant": session.join.participant,
                    "region": str(session.geo.location), "reason": reason.value,
                })
        return {
            "restriction": restriction.id,
            "in_force_now": restriction.in_force(now),
            "dry_run": restriction.enforcement is Enforcement.DRY_RUN,
            "would_evict": len(would),
            "sessions": would,
        }

    async def reload(self, reason: str) -> dict[str, object]:
        outcome = await self.server.reloader.reload("admin")
        return outcome.as_dict()
