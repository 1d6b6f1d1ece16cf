"""Live changes: watch, validate, swap, and re-check exactly the sessions a change can affect.

Triggers: the main config or restrictions file changed on disk (polled every
``reload.watch_interval``), SIGHUP, the admin reload endpoint, a restriction's window starting or
ending (a timer at the next boundary, never polling), and a GeoIP database swapped in.

A reload builds and validates a whole new snapshot off the event loop; when it is invalid the old
one stays in force, the error is logged and kept for the admin surface, and nobody is evicted. When
it is valid it is swapped in with one assignment, and the restriction set's ``newly_barred`` pairs
(a meeting pattern and a region) name the only sessions worth re-checking: those are looked up in
the registry by meeting, re-decided, and the barred ones evicted (notice and 4451 to the client,
the adapter's leave sequence upstream) in batches, so a change that bars thousands does not stall
the relays of everyone else. Dry-run restrictions produce would-evict records and close nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config import Snapshot, load_snapshot
from proxy.errors import ConfigError
from proxy.files import file_signatures
from proxy.geo import GeoResolver
from proxy.policy.gate import BarredPair
from proxy.sessions import Session

__all__ = ["ReloadOutcome", "Reloader"]

log = logging.getLogger("proxy.reload")


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What one reload or re-check did.

    Attributes:
        ok: whether a new snapshot is in force (always True for re-checks without a reload).
        trigger: what started it ("file", "sighup", "admin", "window", "geoip", "startup").
        version: the snapshot version in force afterwards.
        error: why the new snapshot was refused.
        issues: the individual problems, for the admin surface.
        rechecked: sessions re-decided.
        evicted: sessions evicted.
        would_evict: sessions a dry-run restriction would have evicted.
        seconds: from the trigger to the last eviction started.
        time: when it finished (Unix seconds).
    """

    ok: bool
    trigger: str
    version: str
    error: str | None = None
    issues: tuple[dict[str, object], ...] = ()
    rechecked: int = 0
    evicted: int = 0
    would_evict: int = 0
    seconds: float = 0.0
    time: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Reloader:
    """Applies changes to a running :class:`~proxy.server.Server`.

    Args:
        server: the running proxy.
        config_path: the main configuration file to reload from.
        overrides: the ``--set`` overrides given at start, applied again on every reload.
    """

    def __init__(self, server: Any, config_path: Path, overrides: Mapping[str, Any] | None = None
                 ) -> None:
        self.server = server
        self.state = server.state
        self.config_path = Path(config_path)
        self.overrides = dict(overrides or {})
        self.last: ReloadOutcome | None = None
        #: The latest outcomes, newest last (reloads and re-checks).
        self.history: deque[ReloadOutcome] = deque(maxlen=32)
        self.last_ok_time = time.time()
        self.loaded_at = time.time()
        self.outcomes: dict[str, int] = {"ok": 0, "error": 0}
        self.evictions: dict[str, int] = {}
        self.would_evictions: dict[str, int] = {}
        #: Told of every eviction, would-eviction and reload (the metrics); set by the server.
        self.observer: Any = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._boundary: asyncio.TimerHandle | None = None
        self._checked_at = time.time()
        self._watch: asyncio.Task[None] | None = None
        self._signatures = self._file_signatures()

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching files and schedule the first window boundary."""
        self._watch = asyncio.get_running_loop().create_task(self._watch_files())
        self._schedule_boundary()

    async def close(self) -> None:
        """Stop watching and cancel pending work."""
        if self._boundary is not None:
            self._boundary.cancel()
        tasks = [t for t in (self._watch, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def trigger(self, reason: str) -> None:
        """Start a reload without waiting for it (SIGHUP)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- reload ------------------------------------------------------------------------------

    def _file_signatures(self) -> tuple[object, ...]:
        config = self.state.config
        return file_signatures(self.config_path, config.restrictions.path)

    async def _watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.state.config.reload.watch_interval)
            try:
                if self._file_signatures() != self._signatures:
                    await self.reload("file", only_if_changed=True)
                for result in self.state.geo.check_for_changes():
                    if result.ok:
                        log.info("GeoIP database %s swapped in (built %s)", result.path,
                                 result.build_epoch)
                        await self.recheck_locations("geoip")
                    else:
                        log.error("GeoIP database %s not reloaded, the old one stays: %s",
                                  result.path, result.error)
                self.server.check_files()
            except asyncio.CancelledError:
                raise
            except Exception:  # a watcher that dies would silently stop every future reload
                log.exception("file watch failed; retrying")

    async def reload(self, trigger: str, *, only_if_changed: bool = False) -> ReloadOutcome:
        """Load, validate and swap in a new snapshot, then evict whom it newly bars.

        Args:
            trigger: what asked for it, for logs and the admin surface.
            only_if_changed: do nothing when the files are as last loaded (the file watch: a
                reload asked for meanwhile may already have taken the change in).

        Returns:
            The outcome; an invalid snapshot changes nothing and is reported in it.
        """
        async with self._lock:
            signatures = self._file_signatures()
            if only_if_changed and signatures == self._signatures and self.last is not None:
                return self.last
            self._signatures = signatures
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            old: Snapshot = self.state.snapshot
            try:
                snapshot = await loop.run_in_executor(
                    None, load_snapshot, self.config_path, self.overrides)
                geo = await loop.run_in_executor(None, self._new_resolver, old, snapshot)
            except ConfigError as exc:
                return self._failed(trigger, str(exc), exc.issues)
            except Exception as exc:  # GeoIPError, OSError: the old snapshot stays
                return self._failed(trigger, f"{type(exc).__name__}: {exc}", ())
            now = time.time()
            self._checked_at = now
            new_set, old_set = snapshot.restrictions, old.restrictions
            barred = new_set.newly_barred(old_set, now)
            would = new_set.newly_would_bar(old_set, now)
            _warn_unapplied(old, snapshot)
            if geo is not None:
                previous = self.state.geo
                self.state.geo = geo
                previous.close()
            self.state.apply(snapshot)
            self.state.generation += 1
            self.loaded_at = time.time()
            if geo is not None:
                sessions = list(self.state.registry)
                outcome = await self._recheck(sessions, trigger, started, relocate=True)
            else:
                outcome = await self._recheck_pairs(barred, would, trigger, started)
            self._schedule_boundary()
            log.info("reload (%s): version %s in force; %d re-checked, %d evicted, "
                     "%d would be evicted (dry run)", trigger, snapshot.version,
                     outcome.rechecked, outcome.evicted, outcome.would_evict)
            self.outcomes["ok"] += 1
            self.last_ok_time = time.time()
            self._done(outcome)
            return outcome

    def _new_resolver(self, old: Snapshot, new: Snapshot) -> GeoResolver | None:
        """A new GeoIP resolver when the GeoIP settings changed, else None."""
        if old.config.geoip == new.config.geoip:
            return None
        return GeoResolver(new.config.geoip.settings())

    def _failed(self, trigger: str, error: str, issues: Iterable[Any]) -> ReloadOutcome:
        log.error("reload (%s) refused, the configuration in force stays: %s", trigger, error)
        self.outcomes["error"] += 1
        outcome = ReloadOutcome(
            False, trigger, str(self.state.snapshot.version), error=error,
            issues=tuple({"file": i.file, "path": i.path, "message": i.message, "line": i.line}
                         for i in issues),
            time=time.time(),
        )
        self._done(outcome)
        return outcome

    def _done(self, outcome: ReloadOutcome) -> None:
        self.last = outcome
        self.history.append(outcome)
        if self.observer is not None:
            self.observer.reloaded(outcome)

    # ---- re-checks ---------------------------------------------------------------------------

    async def recheck_locations(self, trigger: str) -> ReloadOutcome:
        """A GeoIP database changed: re-place every session and re-check those that moved."""
        async with self._lock:
            started = time.monotonic()
            self.state.generation += 1
            outcome = await self._recheck(list(self.state.registry), trigger, started,
                                          relocate=True)
            self._done(outcome)
            return outcome

    async def _recheck_pairs(self, barred: frozenset[BarredPair], would: frozenset[BarredPair],
                             trigger: str, started: float) -> ReloadOutcome:
        sessions: dict[Session, None] = {}
        registry = self.state.registry
        for pair in (*barred, *would):
            for session in registry.matching(pair.meeting):
                if pair.covers(session.meeting, session.geo.location, session.address):
                    sessions[session] = None
        return await self._recheck(list(sessions), trigger, started, relocate=False)

    async def _recheck(self, sessions: list[Session], trigger: str, started: float, *,
                       relocate: bool) -> ReloadOutcome:
        """Re-decide sessions with the set in force; evict the barred, in bounded batches.

        An eviction wave runs in two passes: every barred client gets its notice and close
        first, with its upstream leave held, and only then do the leaves go upstream, so the
        departures the upstream announces to everyone else do not delay the remaining notices.
        """
        state = self.state
        batch = state.config.reload.eviction_batch
        held: list[Callable[[], None]] = []
        try:
            counts = await self._evict_barred(sessions, held, started, relocate=relocate,
                                              batch=batch)
            for index, release in enumerate(held):
                if index and index % batch == 0:
                    await asyncio.sleep(0)
                release()
        except BaseException:
            # Interrupted (cancelled on shutdown, a bug): the leaves still go, all at once, so
            # no upstream leg is left to the close timeout. A leave already sent is not resent.
            for release in held:
                release()
            raise
        rechecked, evicted, would, last_eviction = counts
        return ReloadOutcome(True, trigger, str(state.snapshot.version), rechecked=rechecked,
                             evicted=evicted, would_evict=would,
                             seconds=last_eviction - started, time=time.time())

    async def _evict_barred(self, sessions: list[Session], held: list[Callable[[], None]],
                            started: float, *, relocate: bool,
                            batch: int) -> tuple[int, int, int, float]:
        """The first pass of :meth:`_recheck`: (re-checked, evicted, would-evict, last time)."""
        state = self.state
        admission = state.admission
        rechecked = evicted = would = 0
        last_eviction = started
        for index, session in enumerate(sessions):
            if index and index % batch == 0:
                await asyncio.sleep(0)  # let every other relay run between batches
            if session.evict is None:
                continue  # closed meanwhile
            if relocate:
                geo = state.geo.resolve(session.address)
                if geo == session.geo:
                    continue
                session.geo = geo
            rechecked += 1
            denial, dry = admission.reevaluate(session.join, session.address, session.geo,
                                               session.peer)
            if denial is None and dry:
                would += 1
                for rid in dry:
                    self.would_evictions[rid] = self.would_evictions.get(rid, 0) + 1
                    if self.observer is not None:
                        self.observer.would_evict(rid)
            if denial is None:
                continue
            session.evict(denial, held)
            evicted += 1
            rid = denial.restriction.id
            self.evictions[rid] = self.evictions.get(rid, 0) + 1
            last_eviction = time.monotonic()
            if self.observer is not None:
                self.observer.evicted(rid, last_eviction - started)
        return rechecked, evicted, would, last_eviction

    # ---- window boundaries -------------------------------------------------------------------

    def _schedule_boundary(self) -> None:
        if self._boundary is not None:
            self._boundary.cancel()
            self._boundary = None
        now = time.time()
        boundary = self.state.snapshot.restrictions.next_boundary(now)
        if boundary is None:
            return
        loop = asyncio.get_running_loop()
        # Wall-clock boundary converted to loop time; a little late rather than early.
        delay = max(0.0, boundary - now) + 0.001
        self._boundary = loop.call_later(delay, self._on_boundary)

    def _on_boundary(self) -> None:
        self._boundary = None
        task = asyncio.get_running_loop().create_task(self._boundary_recheck())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _boundary_recheck(self) -> None:
        async with self._lock:
            started = time.monotonic()
            now = time.time()
            rset = self.state.snapshot.restrictions
            barred = rset.newly_barred(rset, now, older_now=self._checked_at)
            would = rset.newly_would_bar(rset, now, older_now=self._checked_at)
            self._checked_at = now
            self.state.generation += 1
            if barred or would:
                outcome = await self._recheck_pairs(barred, would, "window", started)
                log.info("window boundary: %d re-checked, %d evicted, %d would be evicted",
                         outcome.rechecked, outcome.evicted, outcome.would_evict)
                self._done(outcome)
            self._schedule_boundary()


def _warn_unapplied(old: Snapshot, new: Snapshot) -> None:
    """Settings that only take effect on restart are named in the log when they change."""
    for section in ("listen", "admin"):
        if getattr(old.config, section) != getattr(new.config, section):
            log.warning("[%s] changed: it takes effect on restart only", section)
