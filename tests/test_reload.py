"""Live restriction changes: exactly the newly barred sessions are evicted, nobody else notices.

200 participants in 3 meetings from 5 regions exchange numbered signals while a restriction barring
CN from meeting town-a comes into force, through each trigger: a rewritten restrictions file, a
window start, SIGHUP, and a GeoIP database swap that moves an address range into CN.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from proxy.config import load_snapshot
from proxy.demo_upstream import DemoUpstream, EventKind
from proxy.geoip_build import build_from_csv
from proxy.server import Server
from proxy.service import serve
from tests.helpers.crowd import REGIONS, Crowd, Member
from tests.helpers.proxy import ROOT, TIMEOUT, Participant, ProxyFactory, restriction

MEETINGS = ["town-a", "town-b", "town-c"]
UNRELATED = restriction("other", ["RU"], ["elsewhere"])
CN_A = restriction("cn-a", ["CN"], ["town-a"])
FAST_WATCH = {"reload": {"watch_interval": 0.05}}


def rewrite(path: Path, text: str) -> None:
    """Replace a file in one step, as an operator's deploy tool would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def run_change(server_url: str, upstream: DemoUpstream,
                     change: Callable[[], Awaitable[None]], barred_region: str = "CN",
                     restriction_id: str = "cn-a", regions: dict[str, str] | None = None,
                     ) -> tuple[Crowd, list[Member]]:
    """Join the crowd, start numbered signals, apply ``change`` midway, check every outcome."""
    crowd = Crowd(server_url, MEETINGS, 200, regions)
    await crowd.join_all()
    barred = crowd.where(meeting="town-a", region=barred_region)
    others = [m for m in crowd.members if m not in barred]
    senders = [m for meeting in MEETINGS
               for m in crowd.where(meeting=meeting, region="US")[:2]
               + crowd.where(meeting=meeting, region="DE")[:1]]
    midway = asyncio.Event()
    signalling = asyncio.ensure_future(crowd.signal_through(senders, 30, midway))
    await asyncio.wait_for(midway.wait(), TIMEOUT)
    await change()
    for member in barred:
        await asyncio.wait_for(member.closed.wait(), TIMEOUT)
    await asyncio.wait_for(signalling, TIMEOUT)
    for member in others:
        await asyncio.wait_for(member.done.wait(), TIMEOUT)

    # Exactly the barred were evicted, each told why.
    for member in barred:
        assert member.close == (4451, f"location restriction {restriction_id}"), member
        (notice,) = member.notices()
        assert notice["restriction"] == restriction_id and notice["meeting"] == "town-a"
    for member in others:
        assert member.close is None and member.notices() == [], member
    # The upstream announced the departures of exactly them, at once, to their meeting only.
    gone = sorted(m.name for m in barred)
    for member in others:
        expected = gone if member.meeting == "town-a" else []
        assert sorted(member.left()) == expected, member.name
    leaves = [e.participant for e in upstream.events if e.kind == EventKind.LEAVE]
    assert sorted(leaves) == gone
    # Every numbered signal reached every remaining participant once, in order.
    for member in others:
        for sender in senders:
            if sender.meeting == member.meeting and sender is not member:
                assert member.signals_from(sender.name) == list(range(30)), (member, sender)
    await crowd.close()
    return crowd, barred


async def test_rewritten_restrictions_file_evicts_only_the_newly_barred(
        proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """Rewriting the restrictions file evicts exactly the CN participants of town-a."""
    server = await proxies.start(upstream.url, UNRELATED, FAST_WATCH)
    path = server.state.config.restrictions.path

    async def change() -> None:
        rewrite(path, UNRELATED + CN_A)

    _, barred = await run_change(server.url, upstream, change)
    assert len(barred) == 14
    assert server.reloader.last is not None and server.reloader.last.evicted == 14
    assert server.reloader.last.trigger == "file"


async def test_window_start_evicts_at_the_boundary(proxies: ProxyFactory,
                                                   upstream: DemoUpstream) -> None:
    """A restriction whose window starts a moment ahead evicts when it starts, by a timer."""
    server = await proxies.start(upstream.url, UNRELATED)
    path = server.state.config.restrictions.path

    async def change() -> None:
        starts = time.time() + 0.3
        rewrite(path, UNRELATED + restriction(
            "cn-a", ["CN"], ["town-a"],
            starts_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(starts))
            + f".{int(starts % 1 * 1000):03d}Z"))
        outcome = await server.reloader.reload("admin")
        if time.time() < starts:  # on a busy machine the reload itself may come after the start
            assert outcome.evicted == 0

    await run_change(server.url, upstream, change)
    assert sum(o.evicted for o in server.reloader.history) == 14


async def test_sighup_reloads(tmp_path: Path, proxies: ProxyFactory,
                              upstream: DemoUpstream) -> None:
    """SIGHUP reloads the restrictions file (the file watch is slowed down so only it can)."""
    path = proxies.write_config(upstream.url, UNRELATED, {"reload": {"watch_interval": 3600}})
    snapshot = load_snapshot(path)
    ready: asyncio.Future[Server] = asyncio.get_running_loop().create_future()
    serving = asyncio.ensure_future(serve(snapshot, ready=ready.set_result))
    server = await asyncio.wait_for(ready, TIMEOUT)

    async def change() -> None:
        rewrite(snapshot.config.restrictions.path, UNRELATED + CN_A)
        os.kill(os.getpid(), signal.SIGHUP)

    try:
        await run_change(server.url, upstream, change)
        assert server.reloader.last is not None and server.reloader.last.trigger == "sighup"
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # serve() stops on it, in order
        await asyncio.wait_for(serving, TIMEOUT)


async def test_geoip_swap_moving_a_range_into_cn(tmp_path: Path, proxies: ProxyFactory,
                                                 upstream: DemoUpstream) -> None:
    """A new GeoIP database placing GB's range in CN evicts the GB participants of town-a."""
    csv = (ROOT / "config" / "demo" / "geoip.csv").read_text()
    database = tmp_path / "geoip.mmdb"
    build_from_csv(ROOT / "config" / "demo" / "geoip.csv", database)
    server = await proxies.start(upstream.url, CN_A,
                                 {**FAST_WATCH, "geoip": {"database": str(database)}})

    async def change() -> None:
        moved = tmp_path / "moved.csv"
        moved.write_text(csv.replace("127.0.7.0/24,GB", "127.0.7.0/24,CN"))
        build_from_csv(moved, tmp_path / "next.mmdb")
        os.replace(tmp_path / "next.mmdb", database)

    assert "127.0.7.0/24,GB" in csv
    regions = {**REGIONS, "FR": "127.0.8."}
    del regions["CN"]  # CN is barred from town-a from the start here
    await run_change(server.url, upstream, change, barred_region="GB", regions=regions)
    assert server.reloader.last is not None and server.reloader.last.trigger == "geoip"


async def test_invalid_file_changes_nothing(proxies: ProxyFactory,
                                            upstream: DemoUpstream) -> None:
    """An invalid restrictions file is refused whole: the old set stays, nobody is evicted."""
    server = await proxies.start(upstream.url, UNRELATED)
    path = server.state.config.restrictions.path
    cn, _ = await Participant.join(server.url, "town-a", "c", "127.0.1.50")
    version = server.state.snapshot.version
    rewrite(path, UNRELATED + CN_A.replace('"CN"', '"CNN"'))
    outcome = await server.reloader.reload("admin")
    assert not outcome.ok and "'CNN'" in (outcome.error or "")
    assert outcome.issues[0]["path"] == "restriction[1].regions[0]"
    assert server.state.snapshot.version == version
    await cn.send({"type": "echo", "n": 1})
    assert await cn.recv() == {"type": "echo", "n": 1}
    rewrite(path, UNRELATED + CN_A)
    outcome = await server.reloader.reload("admin")
    assert outcome.ok and outcome.evicted == 1
    assert (await cn.recv())["type"] == "geogate.denied"


async def test_dry_run_records_would_evict_and_closes_nobody(proxies: ProxyFactory,
                                                             upstream: DemoUpstream) -> None:
    """A dry-run restriction coming into force counts would-evictions and closes nobody."""
    server = await proxies.start(upstream.url, UNRELATED)
    path = server.state.config.restrictions.path
    crowd = Crowd(server.url, MEETINGS, 30)
    await crowd.join_all()
    rewrite(path, UNRELATED + restriction("cn-a-dry", ["CN"], ["town-a"],
                                          enforcement="dry-run"))
    outcome = await server.reloader.reload("admin")
    assert outcome.ok and outcome.evicted == 0
    assert outcome.would_evict == len(crowd.where(meeting="town-a", region="CN")) == 2
    assert server.reloader.would_evictions == {"cn-a-dry": 2}
    for member in crowd.members:
        assert member.ws is not None
        await member.ws.send('{"type":"echo","n":2}')
    for member in crowd.members:
        async with asyncio.timeout(TIMEOUT):
            while not any(m.get("type") == "echo" for m in member.messages):
                await asyncio.sleep(0.01)
        assert member.close is None
    await crowd.close()


async def test_removing_a_restriction_evicts_nobody(proxies: ProxyFactory,
                                                    upstream: DemoUpstream) -> None:
    """Lifting a restriction re-checks nobody and lets the barred join afterwards."""
    server = await proxies.start(upstream.url, UNRELATED + CN_A)
    path = server.state.config.restrictions.path
    _, notice = await Participant.join(server.url, "town-a", "c", "127.0.1.51")
    assert notice["type"] == "geogate.denied"
    rewrite(path, UNRELATED)
    outcome = await server.reloader.reload("admin")
    assert outcome.ok and outcome.rechecked == 0 and outcome.evicted == 0
    _, joined = await Participant.join(server.url, "town-a", "c", "127.0.1.52")
    assert joined["type"] == "joined"


async def test_join_admitted_while_connecting_is_decided_again(proxies: ProxyFactory,
                                                               upstream: DemoUpstream) -> None:
    """A join admitted just before a change, whose upstream leg is still opening when the change
    is re-checked, is decided again before it is relayed: the upstream never sees it."""
    release = asyncio.Event()
    accepted = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await release.wait()  # the upstream connection opens only when the test says so
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream.port)
        tasks.append(asyncio.ensure_future(pipe(reader, up_writer)))
        tasks.append(asyncio.ensure_future(pipe(up_reader, writer)))

    slow = await asyncio.start_server(held, "127.0.0.1", 0)
    port = slow.sockets[0].getsockname()[1]
    server = await proxies.start(f"ws://127.0.0.1:{port}/", UNRELATED,
                                 {"reload": {"watch_interval": 3600}})
    carol = await Participant.connect(server.url, "127.0.1.53")
    await carol.send({"type": "join", "meeting": "town-a", "participant": "carol"})
    await asyncio.wait_for(accepted.wait(), TIMEOUT)  # admitted; upstream leg opening
    rewrite(server.state.config.restrictions.path, UNRELATED + CN_A)
    outcome = await server.reloader.reload("admin")
    assert outcome.ok and outcome.rechecked == 0  # not registered yet: nothing to re-check
    release.set()
    notice = await carol.recv()
    assert notice["type"] == "geogate.denied" and notice["restriction"] == "cn-a"
    assert (await carol.closed())[0] == 4451
    assert [e for e in upstream.events if e.kind == EventKind.JOIN] == []
    slow.close()
    for task in tasks:
        task.cancel()


async def test_an_interrupted_eviction_wave_still_sends_the_leaves_it_held(
        proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """A wave cancelled half-way through its first pass (a shutdown, a bug) still sends upstream
    the leave of everyone it had evicted, before their close, and evicts nobody more."""
    server = await proxies.start(upstream.url, UNRELATED, {"reload": {"eviction_batch": 1}})
    path = server.state.config.restrictions.path
    crowd = Crowd(server.url, MEETINGS, 200)
    await crowd.join_all()
    barred = crowd.where(meeting="town-a", region="CN")
    real = server.reloader.observer
    evictions = 0

    class Interrupting:
        """The server's observer, which cancels the wave at its fifth eviction."""

        def evicted(self, restriction_id: str, latency: float) -> None:
            nonlocal evictions
            real.evicted(restriction_id, latency)
            evictions += 1
            if evictions == 5:
                wave.cancel()  # raised at the wave's next batch boundary

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    server.reloader.observer = Interrupting()
    rewrite(path, UNRELATED + CN_A)
    wave = asyncio.ensure_future(server.reloader.reload("admin"))
    with pytest.raises(asyncio.CancelledError):
        await wave
    assert evictions == 5

    def leaves() -> list[str]:
        return [e.participant or "" for e in upstream.events if e.kind == EventKind.LEAVE]

    async with asyncio.timeout(TIMEOUT):
        while len(leaves()) < 5:
            await asyncio.sleep(0.01)
    gone = sorted(leaves())
    assert len(gone) == 5 and set(gone) <= {m.name for m in barred}
    # Each leave came before its upstream leg closed: a leg closed without its leave would
    # be recorded as a close of a participant still in the meeting.
    assert not [e for e in upstream.events
                if e.kind == EventKind.CLOSE and e.participant in gone]
    for member in barred:
        if member.name in gone:
            await asyncio.wait_for(member.closed.wait(), TIMEOUT)
            assert member.close == (4451, "location restriction cn-a"), member
    # The rest of the barred are still in the meeting: their echo comes back.
    staying = [m for m in barred if m.name not in gone]
    for member in staying:
        assert member.ws is not None
        await member.ws.send('{"type":"echo","n":5}')
    for member in staying:
        async with asyncio.timeout(TIMEOUT):
            while not any(m.get("type") == "echo" for m in member.messages):
                await asyncio.sleep(0.01)
        assert member.close is None, member
    await crowd.close()
