"""End-to-end tests of the proxy: real sockets on loopback, the real proxy, the demo meeting server.

Source addresses place participants through the demo GeoIP database: 127.0.1.x is CN, 127.0.2.x HK,
127.0.3.x US (127.0.3.128/25 US-CA), 127.0.5.x DE; 127.0.0.1 is unknown.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from proxy.demo_upstream import DemoUpstream, EventKind
from proxy.server import Server
from tests.helpers.proxy import TIMEOUT, Participant, ProxyFactory, restriction

CN_MEMORIAL = restriction("cn-memorial", ["CN"], ["memorial-*"])

US = "127.0.3.10"
US2 = "127.0.3.11"
US3 = "127.0.3.12"
CN = "127.0.1.10"
HK = "127.0.2.10"


def joins_from(upstream: DemoUpstream, source: str) -> list[Any]:
    """Joins the upstream saw from a client address (the proxy names it in X-Forwarded-For)."""
    return [e for e in upstream.events
            if e.kind == EventKind.JOIN and e.header("x-forwarded-for") == source]


async def started(proxies: ProxyFactory, upstream: DemoUpstream, restrictions: str = CN_MEMORIAL,
                  **settings: Any) -> Server:
    return await proxies.start(upstream.url, restrictions, settings)


# ---- admitted participants -----------------------------------------------------------------------


async def test_admitted_participants_exchange_signals(proxies: ProxyFactory,
                                                      upstream: DemoUpstream) -> None:
    """Two admitted participants see each other join and exchange signals through the proxy."""
    server = await started(proxies, upstream)
    alice, joined = await Participant.join(server.url, "memorial-1", "alice", US)
    assert joined == {"type": "joined", "meeting": "memorial-1", "participant": "alice",
                      "participants": []}
    bob, joined = await Participant.join(server.url, "memorial-1", "bob", US2)
    assert joined["participants"] == ["alice"]
    assert await alice.recv() == {"type": "participant-joined", "meeting": "memorial-1",
                                  "participant": "bob"}
    await alice.send({"type": "signal", "to": "bob", "data": {"sdp": "x" * 300}})
    assert await bob.recv() == {"type": "signal", "from": "alice", "data": {"sdp": "x" * 300}}
    await bob.send({"type": "signal", "to": "*", "data": [1, 2, 3]})
    assert await alice.recv() == {"type": "signal", "from": "bob", "data": [1, 2, 3]}
    await alice.close()
    assert await bob.recv_until("participant-left") == {
        "type": "participant-left", "meeting": "memorial-1", "participant": "alice"}


async def test_binary_fragmented_and_large_messages_are_byte_identical(
        proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """Binary, fragmented text and multi-megabyte messages arrive unchanged, both legs."""
    server = await started(proxies, upstream, CN_MEMORIAL,
                           limits={"max_message_bytes": 8 * 1024 * 1024})
    alice, _ = await Participant.join(server.url, "room", "alice", US)
    bob, _ = await Participant.join(server.url, "room", "bob", US2)
    await alice.recv_until("participant-joined")
    for payload in (os.urandom(1), os.urandom(70_000), os.urandom(3 * 1024 * 1024)):
        await alice.ws.send(payload)
        assert await bob.recv() == payload
    # A fragmented text message: the demo server reassembles it; the echo comes back whole.
    text = orjson.dumps({"type": "echo", "data": "é" * 50_000}).decode()
    pieces = [text[i:i + 7001] for i in range(0, len(text), 7001)]
    await alice.ws.send(iter(pieces))
    assert await alice.recv() == orjson.loads(text)


async def test_upstream_close_code_reaches_client(proxies: ProxyFactory,
                                                  upstream: DemoUpstream) -> None:
    """A close code and reason sent by the upstream reach the client unchanged."""
    server = await started(proxies, upstream)
    alice, _ = await Participant.join(server.url, "room", "alice", US)
    await alice.send({"type": "close", "code": 4321, "reason": "room ended"})
    assert await alice.closed() == (4321, "room ended")


async def test_client_close_code_reaches_upstream(proxies: ProxyFactory,
                                                  upstream: DemoUpstream) -> None:
    """A close code sent by the client reaches the upstream, which then lets the others know."""
    server = await started(proxies, upstream)
    alice, _ = await Participant.join(server.url, "room", "alice", US)
    bob, _ = await Participant.join(server.url, "room", "bob", US2)
    await alice.ws.close(4000, "bye now")
    event = await upstream.wait_for_event(
        lambda e: e.kind == EventKind.CLOSE and e.participant == "alice", TIMEOUT)
    assert (event.code, event.reason) == (4000, "bye now")
    assert (await bob.recv_until("participant-left"))["participant"] == "alice"


async def test_subprotocol_is_negotiated(proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """The client's subprotocol goes upstream and the agreed one comes back."""
    server = await started(proxies, upstream)
    ws = await connect(server.url, proxy=None, local_addr=(US, 0),
                       subprotocols=["geogate-demo.v1"])  # type: ignore[list-item]
    assert ws.subprotocol == "geogate-demo.v1"
    await ws.send(orjson.dumps({"type": "join", "meeting": "m", "participant": "p"}).decode())
    assert orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "joined"
    await ws.close()


async def test_forwarded_headers_reach_upstream(proxies: ProxyFactory,
                                                upstream: DemoUpstream) -> None:
    """The upstream sees the client address in X-Forwarded-For and the passed-through headers."""
    server = await started(proxies, upstream)
    ws = await connect(server.url + "/some/path?x=1", proxy=None, local_addr=(US, 0),
                       additional_headers={"Authorization": "Bearer abc", "X-Secret": "no"},
                       origin="https://app.example")  # type: ignore[arg-type]
    await ws.send(orjson.dumps({"type": "join", "meeting": "m", "participant": "p"}).decode())
    await asyncio.wait_for(ws.recv(), TIMEOUT)
    event = await upstream.wait_for_event(lambda e: e.kind == EventKind.JOIN, TIMEOUT)
    assert event.header("x-forwarded-for") == US
    assert event.header("authorization") == "Bearer abc"
    assert event.header("origin") == "https://app.example"
    assert event.header("x-secret") is None
    connected = await upstream.wait_for_event(lambda e: e.kind == EventKind.CONNECT, TIMEOUT)
    assert connected.path == "/some/path?x=1"
    await ws.close()


# ---- denial --------------------------------------------------------------------------------------


async def test_barred_participant_gets_notice_and_4451(proxies: ProxyFactory,
                                                       upstream: DemoUpstream) -> None:
    """A CN participant joining a memorial meeting gets the notice and 4451; nobody else notices."""
    server = await started(proxies, upstream)
    alice, _ = await Participant.join(server.url, "memorial-1", "alice", US)
    bob, _ = await Participant.join(server.url, "memorial-1", "bob", US2)
    await alice.recv_until("participant-joined")
    carol, notice = await Participant.join(server.url, "memorial-1", "carol", CN)
    assert notice["type"] == "geogate.denied"
    assert notice["restriction"] == "cn-memorial"
    assert notice["region"] == "CN"
    assert notice["notice"] == "Notice for cn-memorial"
    assert notice["notice_url"] == "https://example.org/cn-memorial"
    assert notice["authority"] == "Test Court"
    assert notice["legal_basis"] == "Test order cn-memorial"
    assert await carol.closed() == (4451, "location restriction cn-memorial")
    assert joins_from(upstream, CN) == []
    assert [e.participant for e in upstream.events if e.kind == EventKind.JOIN] == ["alice", "bob"]
    # Alice and Bob saw nothing and still talk.
    await alice.send({"type": "signal", "to": "*", "data": "still here"})
    assert await bob.recv() == {"type": "signal", "from": "alice", "data": "still here"}
    await alice.send({"type": "echo", "n": 1})
    assert await alice.recv() == {"type": "echo", "n": 1}  # no participant-joined came first


async def test_same_region_other_meeting_is_admitted(proxies: ProxyFactory,
                                                     upstream: DemoUpstream) -> None:
    """A CN participant joining a meeting outside the restriction's scope is admitted."""
    server = await started(proxies, upstream)
    _, joined = await Participant.join(server.url, "standup", "carol", CN)
    assert joined["type"] == "joined"
    _, joined = await Participant.join(server.url, "memorial-1", "dan", HK)
    assert joined["type"] == "joined"  # HK is not CN


async def test_reconnect_from_barred_address_is_denied(proxies: ProxyFactory,
                                                       upstream: DemoUpstream) -> None:
    """Admitted from the US, the same participant reconnecting from CN is denied."""
    server = await started(proxies, upstream)
    alice, joined = await Participant.join(server.url, "memorial-1", "alice", US)
    assert joined["type"] == "joined"
    await alice.close()
    again = await Participant.connect(server.url, CN)
    await again.send({"type": "resume", "meeting": "memorial-1", "participant": "alice"})
    notice = await again.recv()
    assert notice["type"] == "geogate.denied"
    assert (await again.closed())[0] == 4451


async def test_rejoin_into_barred_meeting_on_same_connection_is_stopped(
        proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """A CN client admitted to one meeting cannot slip into a barred one on the same connection."""
    server = await started(proxies, upstream)
    watcher, _ = await Participant.join(server.url, "memorial-1", "watcher", US)
    carol, joined = await Participant.join(server.url, "standup", "carol", CN)
    assert joined["type"] == "joined"
    await carol.send({"type": "signal", "to": "*", "data": "hi"})
    await carol.send({"type": "join", "meeting": "memorial-1", "participant": "carol"})
    notice = await carol.recv_until("geogate.denied")
    assert notice["meeting"] == "memorial-1"
    assert (await carol.closed())[0] == 4451
    assert [e.meeting for e in joins_from(upstream, CN)] == ["standup"]
    # The watcher in memorial-1 never saw carol.
    await watcher.send({"type": "echo", "n": 2})
    assert await watcher.recv() == {"type": "echo", "n": 2}


async def test_rejoin_into_allowed_meeting_passes(proxies: ProxyFactory,
                                                  upstream: DemoUpstream) -> None:
    """A second join into an allowed meeting goes through and moves the session."""
    server = await started(proxies, upstream)
    alice, _ = await Participant.join(server.url, "standup", "alice", US)
    await alice.send({"type": "join", "meeting": "memorial-2", "participant": "alice"})
    assert (await alice.recv_until("joined"))["meeting"] == "memorial-2"
    assert [s.meeting for s in server.state.registry] == ["memorial-2"]


async def test_denials_are_reused_for_a_retry_storm(proxies: ProxyFactory,
                                                    upstream: DemoUpstream) -> None:
    """A barred client retrying at once is answered from the retry window, still with 4451."""
    server = await started(proxies, upstream)
    for _ in range(5):
        _, notice = await Participant.join(server.url, "memorial-1", "carol", CN)
        assert notice["type"] == "geogate.denied"
    counts = server.state.admission.counts
    assert counts["deny"] == 1 and counts["deny-reused"] == 4


async def test_trusted_proxy_header_places_the_client(proxies: ProxyFactory,
                                                      upstream: DemoUpstream) -> None:
    """Behind a trusted proxy, X-Forwarded-For names the client; from others it is ignored."""
    server = await started(proxies, upstream, CN_MEMORIAL,
                           client_address={"trusted_proxies": ["127.0.9.0/24"]})
    headers = {"X-Forwarded-For": f"{US}, {CN}"}
    trusted = await Participant.connect(server.url, "127.0.9.1", additional_headers=headers)
    await trusted.send({"type": "join", "meeting": "memorial-1", "participant": "x"})
    assert (await trusted.recv())["type"] == "geogate.denied"  # the client is CN
    spoofed = await Participant.connect(server.url, US, additional_headers=headers)
    await spoofed.send({"type": "join", "meeting": "memorial-1", "participant": "y"})
    assert (await spoofed.recv())["type"] == "joined"  # an untrusted peer's header is ignored


# ---- faults, each with its code; the proxy keeps serving -----------------------------------------


async def test_upstream_down_closes_with_1014(proxies: ProxyFactory) -> None:
    """With no upstream listening, an admitted participant is closed with 1014 and a reason."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = await proxies.start(f"ws://127.0.0.1:{port}/", CN_MEMORIAL)
    alice = await Participant.connect(server.url, US)
    await alice.send({"type": "join", "meeting": "m", "participant": "alice"})
    code, reason = await alice.closed()
    assert code == 1014 and reason == "signaling server unavailable"
    assert server.state.counts["upstream-failed"] == 1


async def test_upstream_dropping_closes_client_with_1014(proxies: ProxyFactory,
                                                         upstream: DemoUpstream) -> None:
    """When the upstream goes away without a close frame, the client gets 1014."""
    server = await started(proxies, upstream)
    alice, _ = await Participant.join(server.url, "m", "alice", US)
    for conn in list(upstream.rooms["m"].values()):
        conn.transport.abort()
    code, _ = await alice.closed()
    assert code == 1014


async def test_join_timeout(proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """A participant whose join never comes is closed with 1008 after join_timeout."""
    server = await started(proxies, upstream, CN_MEMORIAL, limits={"join_timeout": 0.2})
    alice = await Participant.connect(server.url, US)
    assert await alice.closed() == (1008, "join timeout")
    assert upstream.events == []


async def test_oversized_message_closes_with_1009(proxies: ProxyFactory,
                                                  upstream: DemoUpstream) -> None:
    """A message over max_message_bytes closes the sender with 1009, before and after joining."""
    server = await started(proxies, upstream, CN_MEMORIAL, limits={"max_message_bytes": 1000})
    early = await Participant.connect(server.url, US)
    await early.ws.send("x" * 1001)
    assert await early.closed() == (1009, "message too big")
    alice, _ = await Participant.join(server.url, "m", "alice", US)
    bob, _ = await Participant.join(server.url, "m", "bob", US2)
    await alice.ws.send(b"y" * 1001)
    assert await alice.closed() == (1009, "message too big")
    assert (await bob.recv_until("participant-left"))["participant"] == "alice"


@pytest.mark.parametrize(("first", "reason"), [
    ("{not json", "malformed JSON"),
    (b"\x00\x01binary", "first message must be a JSON join, not binary"),
    ('{"type":"signal","to":"*","data":1}', "first message must be a join"),
])
async def test_bad_first_message_closes_with_1008(proxies: ProxyFactory, upstream: DemoUpstream,
                                                  first: str | bytes, reason: str) -> None:
    """Malformed JSON, a binary first frame or a non-join first message get 1008 and a reason."""
    server = await started(proxies, upstream)
    client = await Participant.connect(server.url, US)
    await client.ws.send(first)
    code, got = await client.closed()
    assert code == 1008 and got == reason
    assert upstream.events == []
    _, joined = await Participant.join(server.url, "m", "after", US2)
    assert joined["type"] == "joined"  # the proxy keeps serving


async def test_incomplete_handshake_times_out_with_408(proxies: ProxyFactory,
                                                       upstream: DemoUpstream) -> None:
    """A client that never completes its HTTP upgrade gets 408 and is closed."""
    server = await started(proxies, upstream, CN_MEMORIAL, limits={"handshake_timeout": 0.2})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(US, 0))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    response = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert response.startswith(b"HTTP/1.1 408 ")
    writer.close()


async def test_bad_handshake_gets_http_error(proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """A plain HTTP request is refused with 426 and the proxy keeps serving."""
    server = await started(proxies, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert response.startswith(b"HTTP/1.1 426 ")
    writer.close()
    _, joined = await Participant.join(server.url, "m", "after", US)
    assert joined["type"] == "joined"


async def test_client_vanishing_makes_upstream_announce_leave(proxies: ProxyFactory,
                                                              upstream: DemoUpstream) -> None:
    """A client that drops its TCP connection leaves the meeting at once for the others."""
    server = await started(proxies, upstream)
    alice, _ = await Participant.join(server.url, "m", "alice", US)
    bob, _ = await Participant.join(server.url, "m", "bob", US2)
    alice.ws.transport.abort()
    assert (await bob.recv_until("participant-left"))["participant"] == "alice"
    event = await upstream.wait_for_event(
        lambda e: e.kind == EventKind.CLOSE and e.participant == "alice", TIMEOUT)
    assert event.code == 1001


async def test_idle_timeout_closes_with_1001(proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """A session with no frames either way for idle_timeout is closed with 1001."""
    server = await started(proxies, upstream, CN_MEMORIAL, limits={"idle_timeout": 0.3})
    alice, _ = await Participant.join(server.url, "m", "alice", US)
    assert await alice.closed() == (1001, "idle timeout")


async def test_connection_limit_answers_503(proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """Past max_connections, a new connection is refused with 503 and admitted ones carry on."""
    server = await started(proxies, upstream, CN_MEMORIAL, limits={"max_connections": 1})
    alice, _ = await Participant.join(server.url, "m", "alice", US)
    with pytest.raises(InvalidStatus) as info:
        await Participant.connect(server.url, US2)
    assert info.value.response.status_code == 503
    await alice.send({"type": "echo", "n": 3})
    assert await alice.recv() == {"type": "echo", "n": 3}


async def test_shutdown_closes_sessions_with_1001(proxies: ProxyFactory,
                                                  upstream: DemoUpstream) -> None:
    """Closing the proxy sends 1001 to open sessions and releases everything."""
    server = await started(proxies, upstream)
    alice, _ = await Participant.join(server.url, "m", "alice", US)
    closing = asyncio.ensure_future(server.close(drain_period=0, timeout=TIMEOUT))
    assert (await alice.closed())[0] == 1001
    await asyncio.wait_for(closing, TIMEOUT)
    assert server.state.open_connections == 0
    proxies.servers.remove(server)


# ---- url adapter ---------------------------------------------------------------------------------


URL_SETTINGS: dict[str, Any] = {"protocol": {"adapter": "url"},
                                "protocol.url": {"path_template": "/rooms/{meeting}"}}


async def test_url_adapter_admits_and_relays(proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """With the url adapter the meeting comes from the path; the admitted client is relayed."""
    server = await proxies.start(upstream.url, CN_MEMORIAL, URL_SETTINGS)
    ws = await connect(server.url + "/rooms/memorial-1", proxy=None, local_addr=(US, 0),
                       subprotocols=["geogate-demo.v1"])  # type: ignore[list-item]
    assert ws.subprotocol == "geogate-demo.v1"
    await ws.send(orjson.dumps({"type": "echo", "n": 1}).decode())
    assert orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"type": "echo", "n": 1}
    await ws.close()


async def test_url_adapter_notice_denial(proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """A barred url-adapter client is upgraded only to get the notice and 4451."""
    server = await proxies.start(upstream.url, CN_MEMORIAL, URL_SETTINGS)
    ws = await connect(server.url + "/rooms/memorial-1", proxy=None, local_addr=(CN, 0))
    notice = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert notice["type"] == "geogate.denied" and notice["restriction"] == "cn-memorial"
    await ws.wait_closed()
    assert ws.close_code == 4451
    assert upstream.events == []


async def test_url_adapter_http_451(proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """With denial = 'http', a barred client gets 451 with a blocked-by Link (RFC 7725)."""
    settings = {**URL_SETTINGS, "protocol": {"adapter": "url", "denial": "http"}}
    server = await proxies.start(upstream.url, CN_MEMORIAL, settings)
    with pytest.raises(InvalidStatus) as info:
        await connect(server.url + "/rooms/memorial-1", proxy=None, local_addr=(CN, 0))
    response = info.value.response
    assert response.status_code == 451
    assert response.headers["Link"] == '<https://example.org/cn-memorial>; rel="blocked-by"'
    assert response.headers["Cache-Control"] == "no-store"
    assert orjson.loads(response.body)["restriction"] == "cn-memorial"
    assert upstream.events == []



async def test_drain_period_refuses_new_handshakes_then_closes_sessions(
        proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """During the drain period new handshakes get 503 while open sessions carry on; then the
    sessions get 1001 and the listener is gone."""
    server = await started(proxies, upstream)
    alice, _ = await Participant.join(server.url, "m", "alice", US)
    closing = asyncio.ensure_future(server.close(drain_period=TIMEOUT, timeout=TIMEOUT))
    async with asyncio.timeout(TIMEOUT):
        while not server.state.draining:
            await asyncio.sleep(0)
    with pytest.raises(InvalidStatus) as info:
        await Participant.connect(server.url, US2)
    assert info.value.response.status_code == 503
    await alice.send({"type": "echo", "n": 4})
    assert await alice.recv() == {"type": "echo", "n": 4}
    closing.cancel()  # end the drain period early: close again without one
    proxies.servers.remove(server)
    await server.close(drain_period=0, timeout=TIMEOUT)
    assert await alice.closed() == (1001, "proxy shutting down")
