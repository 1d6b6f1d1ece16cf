"""Relay behaviour at the byte level: boundaries, pipelining, control frames, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import orjson

from proxy.adapters.base import Join
from proxy.admission import Denial
from proxy.demo_upstream import DemoUpstream, EventKind
from proxy.frames import Opcode, encode_close_payload, encode_frame
from proxy.handshake import RequestParser, build_accept_response, validate_upgrade
from proxy.relay import Relay
from proxy.server import Server
from tests.helpers.proxy import TIMEOUT, Participant, ProxyFactory, restriction
from tests.helpers.rawws import RawClient, frame

RESTRICTIONS = restriction("cn", ["CN"], ["memorial-*"])


def join(meeting: str, participant: str, kind: str = "join") -> bytes:
    body = {"type": kind, "meeting": meeting, "participant": participant}
    return frame(Opcode.TEXT, orjson.dumps(body))


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait for a condition of the proxy's own state, checking it as the loop turns."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def relay_of(server: Server, participant: str) -> Relay:
    session = next(s for s in server.state.registry if s.join.participant == participant)
    assert session.close is not None
    relay = session.close.__self__  # type: ignore[attr-defined]
    assert isinstance(relay, Relay)
    return relay


async def test_frames_pipelined_after_the_request_are_relayed(proxies: ProxyFactory,
                                                              upstream: DemoUpstream) -> None:
    """A join and an echo sent in the same write as the upgrade request are both handled."""
    server = await proxies.start(upstream.url, RESTRICTIONS)
    echo = frame(Opcode.TEXT, b'{"type":"echo","n":7}')
    client = await RawClient.connect(server.port, after_request=join("m", "a") + echo)
    first = orjson.loads((await client.recv_frame())[1])
    second = orjson.loads((await client.recv_frame())[1])
    assert first["type"] == "joined" and second == {"type": "echo", "n": 7}
    client.close()


async def test_fragmented_message_with_interleaved_ping(proxies: ProxyFactory,
                                                        upstream: DemoUpstream) -> None:
    """A fragmented message with a ping between its fragments passes; the ping is answered."""
    server = await proxies.start(upstream.url, RESTRICTIONS)
    client = await RawClient.connect(server.port, after_request=join("m", "a"))
    await client.recv_frame()
    text = b'{"type":"echo","data":"' + b"z" * 3000 + b'"}'
    client.send(frame(Opcode.TEXT, text[:1000], fin=False) + frame(Opcode.PING, b"hb")
                + frame(Opcode.CONT, text[1000:2000], fin=False))
    client.send(frame(Opcode.CONT, text[2000:]))
    got = [await client.recv_frame(), await client.recv_frame()]
    assert (Opcode.PONG, b"hb", True) in got
    echoed = next(payload for opcode, payload, _ in got if opcode == Opcode.TEXT)
    assert orjson.loads(echoed) == orjson.loads(text)
    client.close()


async def test_fragmented_join_into_barred_meeting_is_stopped(proxies: ProxyFactory,
                                                              upstream: DemoUpstream) -> None:
    """A barred join split over fragments is read whole; its final fragment never goes upstream."""
    server = await proxies.start(upstream.url, RESTRICTIONS)
    client = await RawClient.connect(server.port, "127.0.1.30", after_request=join("m", "c"))
    await client.recv_frame()
    body = orjson.dumps({"type": "join", "meeting": "memorial-9", "participant": "c"})
    client.send(frame(Opcode.TEXT, body[:5], fin=False) + frame(Opcode.CONT, body[5:]))
    opcode, notice, _ = await client.recv_frame()
    assert opcode == Opcode.TEXT and orjson.loads(notice)["restriction"] == "cn"
    assert (await client.recv_close())[0] == 4451
    client.send(client.close_frame())
    assert [e.meeting for e in upstream.events if e.kind == EventKind.JOIN] == ["m"]
    client.close()


async def test_escaped_join_type_is_still_gated(proxies: ProxyFactory,
                                                upstream: DemoUpstream) -> None:
    """A join whose type is written with JSON escapes is recognised and gated."""
    server = await proxies.start(upstream.url, RESTRICTIONS)
    client = await RawClient.connect(server.port, "127.0.1.31", after_request=join("m", "c"))
    await client.recv_frame()
    escaped = b'{"type":"jo\\u0069n","meeting":"memorial-2","participant":"c"}'
    client.send(frame(Opcode.TEXT, escaped))
    _, notice, _ = await client.recv_frame()
    assert orjson.loads(notice)["type"] == "geogate.denied"
    client.close()


async def test_unmasked_client_frame_is_a_protocol_error(proxies: ProxyFactory,
                                                         upstream: DemoUpstream) -> None:
    """A client frame without a mask closes the client with 1002 (RFC 6455 section 5.1)."""
    server = await proxies.start(upstream.url, RESTRICTIONS)
    client = await RawClient.connect(server.port, after_request=join("m", "a"))
    await client.recv_frame()
    client.send(b"\x81\x02hi")
    assert (await client.recv_close())[0] == 1002
    client.close()


async def test_slow_reader_pauses_the_other_side(proxies: ProxyFactory,
                                                 upstream: DemoUpstream) -> None:
    """A participant that stops reading makes the proxy stop reading its upstream leg; nothing
    is lost once it reads again, and the proxy's buffer stays bounded."""
    limit = 65536
    server = await proxies.start(upstream.url, RESTRICTIONS,
                                 {"limits": {"write_buffer_bytes": limit,
                                             "max_message_bytes": 1 << 20}})
    reader = await Participant.connect(server.url, "127.0.3.40", max_queue=1)
    await reader.send({"type": "join", "meeting": "flood", "participant": "reader"})
    await reader.recv()
    writer, _ = await Participant.join(server.url, "flood", "writer", "127.0.3.41")
    await reader.recv()  # participant-joined
    relay = relay_of(server, "reader")
    reader.ws.transport.pause_reading()
    payloads = [os.urandom(256 * 1024) for _ in range(64)]  # 16 MiB: more than socket buffers
    sending = asyncio.ensure_future(asyncio.gather(*(writer.ws.send(p) for p in payloads)))
    await wait_until(lambda: not relay.upstream.is_reading())
    assert relay.client.get_write_buffer_size() <= limit + (1 << 20)
    reader.ws.transport.resume_reading()
    for payload in payloads:
        assert await reader.recv() == payload
    await asyncio.wait_for(sending, TIMEOUT)
    assert relay.upstream.is_reading()


async def test_text_frame_split_across_reads_is_relayed(proxies: ProxyFactory,
                                                        upstream: DemoUpstream) -> None:
    """A client text frame that arrives in several reads is read whole once, then relayed."""
    server = await proxies.start(upstream.url, RESTRICTIONS)
    client = await RawClient.connect(server.port, after_request=join("m", "a"))
    await client.recv_frame()
    text = b'{"type":"echo","data":"' + b"q" * 5000 + b'"}'
    whole = frame(Opcode.TEXT, text)
    client.send(whole[:100])
    await client.writer.drain()
    # An echo of a small frame would come back first if the split frame were lost: wait for
    # the proxy to hold the first part, then send the rest.
    relay = relay_of(server, "a")
    await wait_until(lambda: relay.up.pending != b"")
    client.send(whole[100:])
    opcode, payload, _ = await client.recv_frame()
    assert opcode == Opcode.TEXT and orjson.loads(payload) == orjson.loads(text)
    client.close()


class _BatchUpstream:
    """A raw meeting server: answers the join, then writes prepared server frames as told."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.joined = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RequestParser(16384)
        request = None
        while request is None:
            data = await reader.read(4096)
            if not data:  # a connection that only checked we listen
                writer.close()
                return
            request = parser.feed(data)
        writer.write(build_accept_response(validate_upgrade(request), None))
        self.writer = writer
        self.joined.set()
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass

    def write(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def server_frame(payload: bytes) -> bytes:
    return encode_frame(Opcode.TEXT, payload, mask=False)


async def test_batched_upstream_frames_pass_whole_with_boundaries_kept(
        proxies: ProxyFactory) -> None:
    """Many server frames in one read go out whole; one cut by a read's end is still tracked."""
    upstream = _BatchUpstream()
    server = await proxies.start(await upstream.start(), RESTRICTIONS)
    try:
        client = await RawClient.connect(server.port, after_request=join("m", "a"))
        await asyncio.wait_for(upstream.joined.wait(), TIMEOUT)
        await wait_until(lambda: any(True for _ in server.state.registry))
        relay = relay_of(server, "a")
        payloads = [b'{"type":"participant-joined","participant":"p%d"}' % i for i in range(40)]
        payloads.append(b'{"type":"signal","pad":"' + b"y" * 300 + b'"}')  # a 16-bit length
        batch = b"".join(server_frame(p) for p in payloads)
        upstream.write(batch)
        for payload in payloads:
            opcode, data, fin = await client.recv_frame()
            assert (opcode, data, fin) == (Opcode.TEXT, payload, True)
        assert (relay.down.frames, relay.down.messages) == (41, 41)
        # A batch whose last frame is cut by the end of a read: the rest of that frame is
        # tracked into the next read, where the close frame must still be found.
        tail = server_frame(b'{"type":"signal","pad":"' + b"z" * 200 + b'"}')
        upstream.write(batch + tail[:7])
        await wait_until(lambda: relay.down.remaining == len(tail) - 7)
        upstream.write(tail[7:] + encode_frame(Opcode.CLOSE, encode_close_payload(1000, ""),
                                               mask=False))
        for payload in payloads:
            assert (await client.recv_frame())[1] == payload
        assert (await client.recv_frame())[1] == tail[4:]
        assert await client.recv_close() == (1000, "")
        assert relay.down.close_seen and relay.down.frames == 41 + 42 + 1
        client.close()
    finally:
        await upstream.close()


def wave_denial(server: Server, participant: str) -> Denial:
    """The denial a re-check would give ``participant`` in a memorial meeting (barred for CN)."""
    session = next(s for s in server.state.registry if s.join.participant == participant)
    denial, _ = server.state.admission.reevaluate(
        Join("memorial-1", participant), session.address, session.geo)
    assert denial is not None
    return denial


async def wave_of_one(proxies: ProxyFactory, upstream: DemoUpstream
                      ) -> tuple[Server, RawClient, Participant, Relay, list[Callable[[], None]]]:
    """Participant a (CN, barred) and b (US) in meeting m; a evicted in a wave of its own."""
    server = await proxies.start(upstream.url, RESTRICTIONS)
    barred = await RawClient.connect(server.port, "127.0.1.30", after_request=join("m", "a"))
    await barred.recv_frame()
    other, _ = await Participant.join(f"ws://127.0.0.1:{server.port}/", "m", "b")
    wave: list[Callable[[], None]] = []
    relay = relay_of(server, "a")
    relay.evict(wave_denial(server, "a"), wave)
    return server, barred, other, relay, wave


async def test_an_eviction_wave_holds_the_upstream_leave_until_released(
        proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """In a wave the client is told and closed at once; the upstream hears of it on release."""
    server, barred, other, _, wave = await wave_of_one(proxies, upstream)
    opcode, message, _ = await barred.recv_frame()
    if orjson.loads(message)["type"] == "participant-joined":  # b's arrival, before the wave
        opcode, message, _ = await barred.recv_frame()
    assert opcode == Opcode.TEXT and orjson.loads(message)["type"] == "geogate.denied"
    assert (await barred.recv_close())[0] == 4451
    assert len(wave) == 1
    # The leave is held: an echo sent now comes back before any announcement of it.
    await other.send({"type": "echo", "n": 1})
    assert await other.recv() == {"type": "echo", "n": 1}
    wave[0]()
    left = await other.recv_until("participant-left")
    assert left["participant"] == "a"
    barred.send(barred.close_frame(4451))
    await wait_until(lambda: not any(s.join.participant == "a" for s in server.state.registry))
    await other.close()
    barred.close()


async def test_a_held_leave_goes_upstream_when_the_client_leaves_first(
        proxies: ProxyFactory, upstream: DemoUpstream) -> None:
    """A client gone before its wave's release keeps its upstream leg open for the leave."""
    server, barred, other, relay, wave = await wave_of_one(proxies, upstream)
    assert (await barred.recv_close())[0] == 4451
    barred.send(barred.close_frame(4451))
    await wait_until(lambda: not any(s.join.participant == "a" for s in server.state.registry))
    assert relay.client.is_closing()
    assert not relay.upstream.is_closing()  # held open for the wave's leave
    wave[0]()
    left = await other.recv_until("participant-left")
    assert left["participant"] == "a"
    await wait_until(lambda: any(e.kind is EventKind.CLOSE and e.code == 1000
                                 for e in upstream.events))
    # The leave message itself went up (not only a close), then the normal close.
    assert any(e.kind is EventKind.LEAVE and e.participant == "a" for e in upstream.events)
    await wait_until(relay.upstream.is_closing)
    wave[0]()  # already sent: nothing more
    await other.send({"type": "echo", "n": 2})
    assert await other.recv() == {"type": "echo", "n": 2}
    await other.close()
    barred.close()
