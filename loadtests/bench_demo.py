"""Demo meeting server benchmark: the CPU a broadcast-heavy meeting costs the server.

One meeting of N participants (100 by default), three phases, each ending when every expected
message has reached its receiver (counted by the client):

- joins: each participant joins in turn, so the server announces every join to everyone already
  in the meeting: N(N-1)/2 participant-joined messages;
- burst: the participants send S signals to everyone (1,000 by default, spread over them) at
  once: S(N-1) deliveries, many of them produced in the same event-loop iteration;
- paced: S signals again, each sent once the previous one has reached everyone, so that every
  delivery is a write of its own.

The server is ``python -m proxy demo-upstream`` in its own process, started fresh for each round;
its CPU time is utime + stime from /proc/PID/stat, sampled around each phase. The load generator
is :mod:`loadtests.wsclient` (raw protocol, pre-built masked frames). ``--server`` runs another
command line instead (``{port}`` is replaced), to compare two builds of the server in one run:
the commands are interleaved for ``--rounds`` rounds and the medians printed.

Run ``python -m loadtests.bench_demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from loadtests.bench_relay import Child, ProcessGroup, free_port
from loadtests.wsclient import (
    Endpoint,
    Participant,
    Stage,
    close_all,
    connect_participant,
    echo_payload,
    encode_client_frame,
    join_payload,
)

__all__ = ["Phases", "main", "measure"]

_TEXT = 0x1
_TIMEOUT = 60.0


class _Deliveries:
    """Counts messages delivered to idle participants; ``wait`` returns once ``target`` came."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self._reached: asyncio.Future[None] | None = None

    def add(self) -> None:
        self.count += 1
        reached = self._reached
        if reached is not None and self.count >= self.target and not reached.done():
            reached.set_result(None)

    async def wait(self, more: int) -> None:
        """Wait until ``more`` messages beyond the last target have been delivered.

        Raises:
            TimeoutError: they did not all arrive within 60 s.
        """
        self.target += more
        if self.count >= self.target:
            return
        self._reached = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self._reached, _TIMEOUT)


class _Listener(Participant):
    """A participant that counts what it receives once joined (announcements, signals)."""

    __slots__ = ("deliveries",)

    def __init__(self, deliveries: _Deliveries, endpoint: Endpoint, meeting: str,
                 name: str) -> None:
        mask = os.urandom(4)
        super().__init__(
            endpoint.request,
            encode_client_frame(_TEXT, join_payload(meeting, name), mask),
            encode_client_frame(_TEXT, echo_payload(100), mask),
            mask,
            100,
            first_echo=False,
            started=0.0,
        )
        self.deliveries = deliveries

    def message(self, data: bytes, start: int, end: int) -> None:
        if self.stage is Stage.IDLE:
            self.deliveries.add()
        else:
            super().message(data, start, end)


@dataclass(frozen=True, slots=True)
class Phases:
    """The server's CPU seconds (utime + stime) for each phase of one round."""

    joins: float
    burst: float
    paced: float


async def measure(endpoint: Endpoint, server: ProcessGroup, participants: int,
                  signals: int) -> Phases:
    """Run both phases against a fresh server and return its CPU time for each.

    Raises:
        LoadError: a participant was refused or closed.
        TimeoutError: the expected messages did not all arrive within 60 s.
    """
    deliveries = _Deliveries()
    cpu = [server.cpu_seconds()]
    joined: list[_Listener] = []
    try:
        for index in range(participants):
            # One at a time: each join's announcements are the load, not the connects.
            proto = _Listener(deliveries, endpoint, "bench", f"p{index:04d}")
            joined.append(await connect_participant(proto, endpoint, timeout=_TIMEOUT))
        await deliveries.wait(participants * (participants - 1) // 2)
        cpu.append(server.cpu_seconds())
        frames = [
            (joined[n % participants].transport,
             encode_client_frame(_TEXT, orjson.dumps({"type": "signal", "to": "*", "data": n}),
                                 os.urandom(4)))
            for n in range(signals)
        ]
        for transport, frame in frames:
            assert transport is not None
            transport.write(frame)
        await deliveries.wait(signals * (participants - 1))
        cpu.append(server.cpu_seconds())
        for transport, frame in frames:
            assert transport is not None
            transport.write(frame)
            await deliveries.wait(participants - 1)
        cpu.append(server.cpu_seconds())
    finally:
        await close_all(joined)
    return Phases(cpu[1] - cpu[0], cpu[2] - cpu[1], cpu[3] - cpu[2])


async def _run(commands: Sequence[str], participants: int, signals: int, rounds: int,
               folder: Path) -> dict[str, list[Phases]]:
    results: dict[str, list[Phases]] = {command: [] for command in commands}
    for round_no in range(rounds):
        for index, command in enumerate(commands):
            port = free_port()
            child = Child(f"server {index}", shlex.split(command.format(port=port)),
                          log=folder / f"server-{index}.log", cpu=None)
            child.start()
            try:
                await child.wait_listening("127.0.0.1", port)
                phases = await measure(Endpoint("127.0.0.1", port), ProcessGroup(child.pid),
                                       participants, signals)
            finally:
                await child.stop()
            results[command].append(phases)
            print(f"round {round_no + 1} server {index}: joins {phases.joins * 1e3:.0f} ms, "
                  f"burst {phases.burst * 1e3:.0f} ms, paced {phases.paced * 1e3:.0f} ms",
                  flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the rounds and print the medians."""
    default = f"{sys.executable} -m proxy demo-upstream --host 127.0.0.1 --port {{port}}"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=100, help="in the one meeting")
    parser.add_argument("--signals", type=int, default=1000, help="signals to everyone")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--server", action="append", default=[], metavar="COMMAND",
                        help="server command line, {port} replaced (repeat to compare builds; "
                        "default: this checkout's demo-upstream)")
    args = parser.parse_args(argv)
    commands = args.server or [default]
    n, s = args.participants, args.signals
    announcements, deliveries = n * (n - 1) // 2, s * (n - 1)
    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(_run(commands, n, s, args.rounds, Path(tmp)))
    print(f"\n{n} participants in one meeting: {announcements} join announcements; {s} signals "
          f"to everyone ({deliveries} deliveries) in a burst, then {s} paced. Server CPU "
          f"(utime + stime), median of {args.rounds} rounds, per message delivered:")
    for index, command in enumerate(commands):
        joins, burst, paced = (
            statistics.median(getattr(p, name) for p in results[command])
            for name in ("joins", "burst", "paced")
        )
        print(f"  server {index} [{command}]\n"
              f"    joins {joins * 1e3:.0f} ms ({joins / announcements * 1e6:.1f} us), "
              f"burst {burst * 1e3:.0f} ms ({burst / deliveries * 1e6:.2f} us), "
              f"paced {paced * 1e3:.0f} ms ({paced / deliveries * 1e6:.2f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
