"""Running the proxy as a process: event loop, signals, logging, the demo bundle.

``geogate serve`` runs :func:`serve`; ``make run`` runs it with the demo meeting server in the same
event loop. SIGTERM and SIGINT start an ordered shutdown (see :meth:`proxy.server.Server.close`); a
second signal cancels it and the process exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.config import Snapshot
from proxy.server import Server

__all__ = ["JsonFormatter", "configure_logging", "loop_factory", "run", "serve", "tune_gc"]

log = logging.getLogger("proxy.service")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "INFO", *, json: bool = False) -> None:
    """Log to standard error: one line per record, JSON lines with ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def tune_gc() -> None:
    """Keep the cyclic garbage collector out of the way of joins and relays.

    Objects alive after start-up (config, indexes, GeoIP readers) are moved out of the collector's
    view, and the youngest generation is collected less often: a full collection with thousands
    of sockets open took hundreds of milliseconds in measurements and was most of the slow tail
    of a join storm. The relay path makes no reference cycles, so little is left for it to find.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop factory when uvloop is installed, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def serve(
    snapshot: Snapshot,
    *,
    overrides: Mapping[str, Any] | None = None,
    demo_upstream: bool = False,
    ready: Callable[[Server], None] | None = None,
) -> None:
    """Run the proxy until SIGTERM or SIGINT, then shut down in order; SIGHUP reloads.

    Args:
        snapshot: the configuration and restrictions.
        overrides: the ``--set`` overrides, applied again on every reload.
        demo_upstream: also run the demo meeting server at the configured upstream address.
        ready: called once the listener is bound.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("shutting down (a second signal exits at once)")
            stop.set()
        elif task is not None:
            task.cancel()

    task = asyncio.current_task()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    demo = None
    try:
        if demo_upstream:
            from proxy.demo_upstream import DemoUpstream

            parts = urlsplit(snapshot.config.upstream.url)
            demo = DemoUpstream(parts.hostname or "127.0.0.1", parts.port or 80,
                                record_events=False)
            await demo.start()
            log.info("demo meeting server listening on %s", demo.url)
        server = Server(snapshot, overrides=overrides)
        await server.start()
        tune_gc()
        loop.add_signal_handler(signal.SIGHUP, server.reloader.trigger, "sighup")
        if ready is not None:
            ready(server)
        await stop.wait()
        await server.close()
    finally:
        if demo is not None:
            await demo.close()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop (when installed); a forced stop ends quietly."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner, contextlib.suppress(
        asyncio.CancelledError
    ):
        runner.run(main)
