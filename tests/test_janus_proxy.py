"""The proxy in front of a real Janus: VideoRoom joins and claims gated, barred handles dropped.

Participants connect through geogate from loopback addresses the demo database places in regions
(127.0.1.x is CN, 127.0.3.x US); Janus runs from the Debian package (tests/helpers/janus.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from proxy.server import Server
from tests.helpers.janus import TIMEOUT, JanusClient, JanusServer, running_janus
from tests.helpers.proxy import ProxyFactory, restriction
from tests.test_reload import rewrite

pytestmark = pytest.mark.janus

RECLAIM = 5
CN_ROOM = restriction("cn-1234", ["CN"], ["1234"])
CN = "127.0.1.90"
US = "127.0.3.90"


@pytest.fixture
def janus(tmp_path: Path) -> Iterator[JanusServer]:
    with running_janus(tmp_path / "janus", reclaim_session_timeout=RECLAIM) as server:
        yield server


@pytest.fixture
async def clients() -> AsyncIterator[list[JanusClient]]:
    opened: list[JanusClient] = []
    yield opened
    for client in opened:
        await client.close()


async def through(server: Server, source: str, name: str,
                  opened: list[JanusClient]) -> JanusClient:
    """A Janus client connected through the proxy from ``source``."""
    ws = await asyncio.wait_for(connect(
        server.url, subprotocols=[Subprotocol("janus-protocol")], proxy=None,
        local_addr=(source, 0), open_timeout=TIMEOUT, max_size=None, compression=None,
    ), TIMEOUT)
    assert ws.subprotocol == "janus-protocol"
    client = JanusClient(ws, name)
    opened.append(client)
    return client


async def janus_proxy(proxies: ProxyFactory, janus: JanusServer,
                      restrictions: str = CN_ROOM) -> Server:
    return await proxies.start(janus.url, restrictions, {
        "protocol": {"adapter": "janus"},
        "protocol.janus": {"reclaim_timeout": RECLAIM + 3},
        "reload": {"watch_interval": 3600},
    })


async def join(client: JanusClient, room: int, display: str) -> tuple[int, int, dict[str, Any]]:
    """Create a session, attach a handle, ask to join ``room``; return (session, handle, answer)."""
    session = await client.create()
    handle = await client.attach(session)
    answer = await client.message(session, handle, {
        "request": "join", "ptype": "publisher", "room": room, "display": display})
    return session, handle, answer


def data(message: dict[str, Any]) -> dict[str, Any]:
    return message.get("plugindata", {}).get("data", {})  # type: ignore[no-any-return]


def saw(client: JanusClient, key: str, value: object) -> bool:
    return any(data(m).get(key) == value for m in client.received)


async def test_barred_join_is_refused_and_nobody_sees_it(
        proxies: ProxyFactory, janus: JanusServer, clients: list[JanusClient]) -> None:
    """A, B join room 1234 from the US; C from CN is refused in Janus' shape; A, B never see C."""
    server = await janus_proxy(proxies, janus)
    a = await through(server, US, "a", clients)
    b = await through(server, "127.0.3.91", "b", clients)
    c = await through(server, CN, "c", clients)
    _, _, joined_a = await join(a, 1234, "alice")
    _, _, joined_b = await join(b, 1234, "bob")
    assert data(joined_a)["videoroom"] == "joined" and data(joined_b)["videoroom"] == "joined"
    _, _, refused = await join(c, 1234, "carol")
    assert refused["janus"] == "event" and data(refused)["error_code"] == 451
    assert data(refused)["geogate"]["restriction"] == "cn-1234"
    # C's other requests keep working, and C can join a room that is not restricted.
    _, _, other = await join(c, 5678, "carol")
    assert data(other)["videoroom"] == "joined"
    # Neither A nor B heard of carol (a request round trip flushes what Janus had queued).
    for client in (a, b):
        await client.create()
        assert not any("carol" in raw for raw in client.raw)
    assert [s.meeting for s in server.state.registry if s.peer == CN] == ["5678"]


async def test_restriction_switched_on_removes_only_the_barred_handle(
        proxies: ProxyFactory, janus: JanusServer, clients: list[JanusClient]) -> None:
    """C in rooms 1234 and 5678 loses only its 1234 handle when CN is barred from 1234; A and B
    are told C is leaving within 100 ms, keep their sessions, and C's WebSocket and 5678 handle
    carry on."""
    server = await janus_proxy(proxies, janus, "")
    a = await through(server, US, "a", clients)
    b = await through(server, "127.0.3.91", "b", clients)
    c = await through(server, CN, "c", clients)
    session_a, _, _ = await join(a, 1234, "alice")
    session_b, _, _ = await join(b, 1234, "bob")
    session_c, handle_c, joined_c = await join(c, 1234, "carol")
    carol = data(joined_c)["id"]
    handle_c2 = await c.attach(session_c)
    other = await c.message(session_c, handle_c2, {
        "request": "join", "ptype": "publisher", "room": 5678, "display": "carol"})
    assert data(other)["videoroom"] == "joined"
    assert sorted(s.meeting for s in server.state.registry if s.peer == CN) == ["1234", "5678"]

    rewrite(server.state.config.restrictions.path, CN_ROOM)
    started = asyncio.get_running_loop().time()
    outcome = await server.reloader.reload("admin")
    assert outcome.evicted == 1
    for client in (a, b):
        await client.wait_for(lambda m: data(m).get("leaving") == carol)
    took = asyncio.get_running_loop().time() - started
    # The client is told in Janus' shape, then that the handle is detached.
    notice = await c.wait_for(lambda m: data(m).get("error_code") == 451)
    assert notice["sender"] == handle_c and data(notice)["geogate"]["restriction"] == "cn-1234"
    await c.wait_for(lambda m: m.get("janus") == "detached" and m.get("sender") == handle_c)
    # Everything else carries on: A and B's sessions, C's WebSocket and its handle in 5678.
    for client, session in ((a, session_a), (b, session_b), (c, session_c)):
        await client.request({"janus": "keepalive", "session_id": session}, "ack")
    listed = await c.message(session_c, handle_c2, {"request": "listparticipants", "room": 5678})
    assert [p["display"] for p in data(listed)["participants"]] == ["carol"]
    listed = await a.message(session_a, (await a.attach(session_a)),
                             {"request": "listparticipants", "room": 1234})
    assert sorted(p["display"] for p in data(listed)["participants"]) == ["alice", "bob"]
    assert [s.meeting for s in server.state.registry if s.peer == CN] == ["5678"]
    assert took < 0.1  # the bound; about 5 ms here

    # Replies to the proxy's own leave/detach never reached the client.
    assert not any(str(m.get("transaction", "")).startswith("geogate-") for m in c.received)


async def test_claim_from_barred_address_is_refused(
        proxies: ProxyFactory, janus: JanusServer, clients: list[JanusClient]) -> None:
    """A session in room 1234 cannot be claimed from a CN address; from the US it can."""
    server = await janus_proxy(proxies, janus)
    first = await through(server, US, "first", clients)
    session, _, joined = await join(first, 1234, "dana")
    assert data(joined)["videoroom"] == "joined"
    await first.close()
    clients.remove(first)
    barred = await through(server, CN, "barred", clients)
    refused = await barred.request({"janus": "claim", "session_id": session})
    assert refused["janus"] == "error" and refused["error"]["code"] == 451
    again = await through(server, "127.0.3.92", "again", clients)
    claimed = await again.request({"janus": "claim", "session_id": session})
    assert claimed["janus"] == "success"
