"""A generator worker process: plays its share of the participants and reports what it saw.

The main process starts one or more workers (``multiprocessing``, spawn), each with a
:class:`WorkerJob` holding every participant it plays. A worker says ``ready``, waits for the
``start`` message carrying the run's start on the shared monotonic clock, then plays its events
at their times on one uvloop event loop, sending a progress line every half second. At the run's
end it closes what is still open and sends a :class:`~loadtests.records.WorkerReport` back.

Each participant is an :class:`Actor` that takes its events in time order. An event that comes
due while the participant's join is in flight waits for the answer, and one that comes due while
its connection is ending (dropped, left or closed, not yet gone) waits until it is gone, so a
replayed trace keeps its order even when the target answers, or the generator runs, more slowly
than when it was recorded. Events that no longer apply are skipped and not recorded: a signal,
drop or leave when the participant is not admitted, a join when it already is, a rejoin after
anything but a drop. A failed join (not a denial) is retried with exponential backoff when the
scenario allows retries.

Start lag (actual start minus planned start of each planned join) is recorded, so the report
can say when the generator could not keep the requested arrival rate. The cyclic garbage
collector is frozen and disabled during the run unless the scenario asks for it: a collection
over thousands of connections would show up as proxy latency.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import heapq
import os
import random
import resource
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

from loadtests.client import Connection, ConnectionSpec, Metrics
from loadtests.plan import ParticipantPlan, PlannedEvent
from loadtests.records import Attempt, End, Outcome, WorkerReport
from loadtests.stats import Histogram
from loadtests.trace import EventKind

__all__ = ["WorkerJob", "raise_open_files", "run_worker", "worker_main"]

_PROGRESS_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class WorkerJob:
    """Everything one worker needs (pickled to the worker process).

    Attributes:
        worker: the worker's number.
        host: the proxy's address.
        port: the proxy's port.
        path: the request target.
        participants: the participants this worker plays.
        run_end: seconds from the start at which open sessions are closed.
        join_timeout: seconds for a join to be answered.
        drain_timeout: seconds to wait for connections to close at the end.
        retries: retries after a failed join.
        backoff: the first retry delay, doubled each retry.
        backoff_max: the longest retry delay.
        seed: seeds the retry jitter.
        cpus: CPUs to run on (empty: any).
        gc: keep the cyclic garbage collector running.
    """

    worker: int
    host: str
    port: int
    path: str
    participants: tuple[ParticipantPlan, ...]
    run_end: float
    join_timeout: float
    drain_timeout: float
    retries: int = 0
    backoff: float = 0.5
    backoff_max: float = 5.0
    seed: int = 1
    cpus: tuple[int, ...] = ()
    gc: bool = False

    @property
    def host_header(self) -> str:
        """The Host header value (RFC 9110 section 7.2)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def raise_open_files() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (thousands of sockets need it).

    Returns:
        The (soft, hard) limits now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Actor:
    """One participant: its events, its current connection and what happened to the last one."""

    __slots__ = ("attempts", "conn", "epoch", "events", "failures", "last_end", "next", "plan",
                 "queued", "waiting")

    def __init__(self, plan: ParticipantPlan) -> None:
        self.plan = plan
        self.events: list[PlannedEvent] = list(plan.events)
        self.next = 0
        self.conn: Connection | None = None
        self.epoch = 0
        self.last_end: End | None = None
        self.failures = 0
        self.waiting = False  # an event is due but the actor is busy
        self.attempts = 0
        self.queued: float | None = None  # the time of this actor's entry in the heap

    @property
    def busy(self) -> bool:
        """Whether due events must wait: a join is in flight, or the connection is ending.

        A connection that was dropped, left or closed by the server is ended when its transport
        reports it lost, on a later loop iteration. Until then a rejoin would find it still
        there and a signal would find it still admitted, so whether they ran would depend on
        the generator's lag; they wait instead, and a replayed trace plays out the same.
        """
        conn = self.conn
        return conn is not None and (not conn.settled or conn.end is not None)

    def next_time(self) -> float | None:
        """When the next event is due, or None when none is left."""
        return self.events[self.next].t if self.next < len(self.events) else None

    def add(self, event: PlannedEvent) -> None:
        """Insert a dynamic event (a retry) in time order after the current one."""
        times = [e.t for e in self.events[self.next :]]
        self.events.insert(self.next + bisect.bisect_right(times, event.t), event)


class Worker:
    """Plays a :class:`WorkerJob` on the running event loop (module docstring).

    Args:
        job: the work.
        t0: the run's start on the monotonic clock.
        progress: called with a counters dict every half second.
    """

    def __init__(self, job: WorkerJob, t0: float,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.job = job
        self.metrics = Metrics(t0)
        self.progress = progress
        self.actors = [Actor(plan) for plan in job.participants]
        # Plan index -> position in this worker's list.
        self._index = {actor.plan.index: i for i, actor in enumerate(self.actors)}
        self.heap: list[tuple[float, int, int]] = []
        self.counter = 0
        self.live: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.attempts: list[Attempt] = []
        self.lag = Histogram()
        self.trace: list[tuple[float, int, str, int, bool, bool, bool]] = []
        self.started = 0
        self.stopping = False
        self.rng = random.Random(f"{job.seed}:worker:{job.worker}")
        self.wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._played: asyncio.Future[None] | None = None

    # ---- scheduling ----------------------------------------------------------------------------

    def _schedule(self, index: int) -> None:
        actor = self.actors[index]
        t = actor.next_time()
        if t is None or (actor.queued is not None and actor.queued <= t):
            return  # nothing left, or an earlier entry will run it
        self.counter += 1
        heapq.heappush(self.heap, (t, self.counter, index))
        actor.queued = t
        if self._timer is not None and t < self._timer_at:
            self._arm(t)  # a retry due before the next planned event

    async def run(self) -> WorkerReport:
        """Play every event, close what is left at the end, and report."""
        before = resource.getrusage(resource.RUSAGE_SELF)
        for index in range(len(self.actors)):
            self._schedule(index)
        ticker = asyncio.get_running_loop().create_task(self._ticker())
        try:
            await self._dispatch()
            await self._finish()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        late = sum(1 for actor in self.actors for e in actor.events[actor.next :]
                   if e.kind is EventKind.JOIN)
        metrics = self.metrics
        histograms = {"time_to_admitted": metrics.admitted.encode(),
                      "time_to_denial": metrics.denied.encode(),
                      "signal_round_trip": metrics.round_trip.encode(),
                      "signal_delivery": metrics.delivery.encode(),
                      "start_lag": self.lag.encode()}
        series = metrics.series
        for kind, n in metrics.errors.items():
            series.setdefault(0, {})
            series[0]["errors:" + kind] = series[0].get("errors:" + kind, 0) + n
        return WorkerReport(
            self.job.worker, self.attempts, metrics.findings, histograms, series,
            {s: h.encode() for s, h in metrics.second_admitted.items()}, self.trace, cpu, late,
        )

    async def _dispatch(self) -> None:
        """Play the events until the run's end, or until nothing is left to play or answer."""
        self._played = asyncio.get_running_loop().create_future()
        self._play()
        await self._played

    def _play(self) -> None:
        """Run the events that are due, then sleep on one timer until the next.

        No task or future is made per wake: at hundreds of joins a second the generator must
        stay cheaper than what it measures. With no event left but connections open, the timer
        is set at the run's end, so a retry added by a failing join is still played.
        """
        assert self._played is not None
        self._timer = None
        heap = self.heap
        run_end = self.job.run_end
        now = self.metrics.now()
        while heap and heap[0][0] <= now and heap[0][0] < run_end and not self.stopping:
            t, _, index = heapq.heappop(heap)
            actor = self.actors[index]
            if actor.queued != t:
                continue  # superseded by an earlier entry
            actor.queued = None
            self._run_due(index, now)
        planned = bool(heap) and heap[0][0] < run_end
        if self.stopping or now >= run_end or not (planned or self.live):
            if not self._played.done():
                self._played.set_result(None)
            return
        # Sessions stay open until the run's end even when nothing more is planned.
        self._arm(heap[0][0] if planned else run_end)

    def _arm(self, t: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = t
        self._timer = asyncio.get_running_loop().call_later(
            max(t - self.metrics.now(), 0.0), self._play)

    def stop(self) -> None:
        """End the run early: nothing more is played, open sessions are closed."""
        self.stopping = True
        self.wake.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._played is not None and not self._played.done():
            self._played.set_result(None)

    def _run_due(self, index: int, now: float) -> None:
        actor = self.actors[index]
        while True:
            if actor.busy:
                actor.waiting = True  # resumed by _answered
                return
            t = actor.next_time()
            if t is None or t > now or t >= self.job.run_end:
                break
            event = actor.events[actor.next]
            actor.next += 1
            self._execute(actor, event, now)
        self._schedule(index)

    def _execute(self, actor: Actor, event: PlannedEvent, now: float) -> None:
        conn = actor.conn
        admitted = conn is not None and conn.admitted
        kind = event.kind
        if kind is EventKind.JOIN:
            if conn is not None:
                return  # already connected
            if event.resume and actor.last_end is not End.DROPPED:
                return  # a rejoin follows a drop only
            if not event.retry:  # planned joins measure the generator's start lag
                self.lag.record(max(now - event.t, 0.0))
            self._join(actor, event, now)
        elif kind is EventKind.SIGNAL:
            if not admitted:
                return
            assert conn is not None
            conn.send_signal(event.size, final=event.final)
            if event.probe:
                conn.send_probe()
        elif kind is EventKind.DROP:
            if not admitted:
                return
            assert conn is not None
            conn.drop()
        elif kind is EventKind.LEAVE:
            if not admitted:
                return
            assert conn is not None
            conn.leave()
        self.trace.append((now, actor.plan.index, kind.value, event.size, event.probe,
                           event.resume, event.final))

    def _join(self, actor: Actor, event: PlannedEvent, now: float) -> None:
        job = self.job
        plan = actor.plan
        actor.epoch += 1
        actor.attempts += 1
        spec = ConnectionSpec(
            plan.index, plan.participant, plan.meeting, job.host_header, job.path,
            plan.forwarded, event.resume, actor.epoch, event.t,
        )
        conn = Connection(spec, self.metrics, self._answered, self._closed, job.join_timeout)
        actor.conn = conn
        self.live.add(conn)
        self.started += 1
        self.metrics.count("joins_started", now)
        task = asyncio.get_running_loop().create_task(self._connect(conn, plan.source))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, conn: Connection, source: str) -> None:
        loop = asyncio.get_running_loop()
        job = self.job
        try:
            await loop.create_connection(lambda: conn, job.host, job.port,
                                         local_addr=(source, 0))
        except OSError as exc:
            conn.connect_failed(exc)
        except asyncio.CancelledError:
            conn.connect_failed(TimeoutError("cancelled"))
            raise

    # ---- connection callbacks ------------------------------------------------------------------

    def _actor(self, conn: Connection) -> Actor:
        return self.actors[self._index[conn.spec.participant]]

    def _answered(self, conn: Connection) -> None:
        """A join was answered: retry a failure, and let waiting events run."""
        position = self._index[conn.spec.participant]
        actor = self.actors[position]
        if conn.outcome is Outcome.FAILED and actor.conn is conn:
            self._maybe_retry(actor, conn)
        if self.stopping:
            if conn.outcome is Outcome.ADMITTED:
                conn.leave(End.RUN_END)
            return
        if actor.waiting:
            actor.waiting = False
            # Run what came due while the join was in flight, after this callback returns.
            asyncio.get_running_loop().call_soon(self._resume, position)

    def _resume(self, position: int) -> None:
        if not self.stopping:
            self._run_due(position, self.metrics.now())

    def _maybe_retry(self, actor: Actor, conn: Connection) -> None:
        job = self.job
        if actor.failures >= job.retries:
            actor.failures += 1
            return
        delay = min(job.backoff * (2 ** actor.failures), job.backoff_max)
        delay *= self.rng.uniform(0.5, 1.0)  # jitter, so retries do not come back in step
        actor.failures += 1
        at = self.metrics.now() + delay
        actor.add(PlannedEvent(at, EventKind.JOIN, retry=True))
        if not actor.waiting:
            self._schedule(self._index[actor.plan.index])

    def _closed(self, conn: Connection, attempt: Attempt) -> None:
        self.live.discard(conn)
        self.attempts.append(attempt)
        actor = self._actor(conn)
        if actor.conn is conn:
            actor.conn = None
            actor.last_end = attempt.end
        if actor.waiting and not actor.busy:
            actor.waiting = False
            asyncio.get_running_loop().call_soon(self._resume, self._index[actor.plan.index])
        if not self.live:
            self.wake.set()
            if self._timer is not None and not (self.heap and self.heap[0][0] < self.job.run_end):
                self._arm(0.0)  # nothing planned or open: the run can end now

    # ---- the end -------------------------------------------------------------------------------

    async def _finish(self) -> None:
        """Close open sessions normally, give joins in flight their answer, then wait."""
        self.stopping = True
        job = self.job
        for conn in list(self.live):
            if conn.admitted:
                conn.leave(End.RUN_END)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + job.drain_timeout + job.join_timeout
        while self.live and loop.time() < deadline:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.2)
            for conn in list(self.live):
                if conn.admitted:
                    conn.leave(End.RUN_END)
        for conn in list(self.live):
            conn.drop()
        # Aborted transports report connection_lost on the next loop iterations.
        for _ in range(50):
            if not self.live:
                break
            await asyncio.sleep(0.01)
        for task in list(self.tasks):
            task.cancel()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(_PROGRESS_INTERVAL)
            if self.progress is not None:
                self.progress(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        """Counters for the progress line."""
        totals: dict[str, int] = {}
        for counters in self.metrics.series.values():
            for name, value in counters.items():
                totals[name] = totals.get(name, 0) + value
        totals["open"] = self.metrics.open
        totals["in_flight"] = sum(1 for c in self.live if not c.settled)
        totals["lag_p99_us"] = int(self.lag.percentile_ms(99.0) * 1000)
        return totals


# --------------------------------------------------------------------------------------------------
# The process.


def run_worker(job: WorkerJob, t0: float,
               progress: Callable[[dict[str, Any]], None] | None = None,
               stop: Callable[[], bool] | None = None) -> WorkerReport:
    """Run a worker to the end on a new uvloop event loop (in this process).

    Args:
        job: the work.
        t0: the run's start on the monotonic clock.
        progress: called with counters every half second.
        stop: polled every half second; True ends the run early.

    Returns:
        The report.
    """
    import uvloop

    async def main() -> WorkerReport:
        worker = Worker(job, t0, progress)

        async def watch() -> None:
            while stop is not None:
                await asyncio.sleep(_PROGRESS_INTERVAL)
                if stop():
                    worker.stop()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            return await worker.run()
        finally:
            watcher.cancel()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def worker_main(job: WorkerJob, pipe: Pipe) -> None:
    """The worker process's entry point: handshake over ``pipe``, run, report.

    Messages: sends ``("ready", n)``, receives ``("start", t0)`` (or ``("stop",)``), sends
    ``("progress", n, counters)`` while running and ``("done", n, report)`` at the end, or
    ``("error", n, text)`` if it failed.
    """
    try:
        raise_open_files()
        if job.cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, set(job.cpus))
        if not job.gc:
            gc.collect()
            gc.freeze()
            gc.disable()
        pipe.send(("ready", job.worker))
        message = pipe.recv()
        if message[0] != "start":
            return
        t0 = float(message[1])
        stopped = False

        def stop() -> bool:
            nonlocal stopped
            while pipe.poll():
                if pipe.recv()[0] == "stop":
                    stopped = True
            return stopped

        def progress(counters: dict[str, Any]) -> None:
            pipe.send(("progress", job.worker, counters))

        report = run_worker(job, t0, progress, stop)
        pipe.send(("done", job.worker, report))
    except (KeyboardInterrupt, BrokenPipeError, EOFError):
        pass
    except Exception:
        with contextlib.suppress(OSError):
            pipe.send(("error", job.worker, traceback.format_exc()))
