"""Tests for proxy.demo_upstream: message parsing, the event record, a real server on loopback."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import count
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from proxy.demo_upstream import (
    REPLACED_CLOSE_CODE,
    REPLACED_CLOSE_REASON,
    CloseMessage,
    DemoEvent,
    DemoUpstream,
    EchoMessage,
    EventKind,
    JoinMessage,
    LeaveMessage,
    SignalMessage,
    parse_message,
)
from proxy.errors import PolicyViolation
from proxy.frames import Opcode, encode_close_payload, encode_frame
from tests.helpers.rawws import RawClient, frame

# Generous: the machine has 2 cores and is noisy. Waits end as soon as the awaited thing happens.
TIMEOUT = 10.0

Connect = Callable[..., Awaitable[ClientConnection]]
MakeUpstream = Callable[..., Awaitable[DemoUpstream]]


# --------------------------------------------------------------------------------------------
# Helpers and fixtures


async def recv(ws: ClientConnection) -> str | bytes:
    """Receive the next message, failing the test after TIMEOUT."""
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    """Receive the next message, which must be a text frame holding a JSON object."""
    message = await recv(ws)
    assert isinstance(message, str), f"expected a text frame, got {message!r}"
    obj = orjson.loads(message)
    assert isinstance(obj, dict)
    return obj


async def send_json(ws: ClientConnection, obj: object) -> None:
    """Send a JSON value in a text frame."""
    await ws.send(orjson.dumps(obj).decode())


async def join(
    ws: ClientConnection, meeting: str, participant: str, kind: str = "join"
) -> dict[str, Any]:
    """Join (or resume) and return the ``joined`` reply."""
    await send_json(ws, {"type": kind, "meeting": meeting, "participant": participant})
    reply = await recv_json(ws)
    assert reply["type"] == "joined", reply
    return reply


_barrier_ids = count()


async def barrier(ws: ClientConnection) -> None:
    """Assert that nothing is queued for ``ws``: an echo sent now must be the next message.

    The server handles each connection's messages in order and writes to each connection in
    order, so anything caused earlier reaches the client before the echo reply.
    """
    token = next(_barrier_ids)
    await send_json(ws, {"type": "echo", "barrier": token})
    assert await recv_json(ws) == {"type": "echo", "barrier": token}


async def expect_closed(ws: ClientConnection) -> ConnectionClosed:
    """Read until the connection closes and return the exception (no other message allowed)."""
    with pytest.raises(ConnectionClosed) as info:
        message = await recv(ws)
        pytest.fail(f"expected the connection to close, got {message!r}")
    return info.value


@pytest.fixture
async def make_upstream() -> AsyncIterator[MakeUpstream]:
    """Start demo upstreams on 127.0.0.1, port 0; close them all at teardown."""
    started: list[DemoUpstream] = []

    async def make(**kwargs: Any) -> DemoUpstream:
        upstream = DemoUpstream(**kwargs)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in reversed(started):
        await upstream.close()


@pytest.fixture
async def upstream(make_upstream: MakeUpstream) -> DemoUpstream:
    """A demo upstream with the default settings."""
    return await make_upstream()


@pytest.fixture
async def client() -> AsyncIterator[Connect]:
    """Open client connections (no proxy from the environment); close them all at teardown."""
    opened: list[ClientConnection] = []

    async def open_connection(url: str, **kwargs: Any) -> ClientConnection:
        ws = await asyncio.wait_for(connect(url, proxy=None, **kwargs), TIMEOUT)
        opened.append(ws)
        return ws

    yield open_connection
    await asyncio.gather(*(ws.close() for ws in opened))


# --------------------------------------------------------------------------------------------
# parse_message (pure)


def test_parse_join_and_resume() -> None:
    """join and resume parse into JoinMessage, resume flagged."""
    assert parse_message('{"type":"join","meeting":"m","participant":"p"}') == JoinMessage("m", "p")
    assert parse_message(b'{"type":"resume","meeting":"m","participant":"p"}') == JoinMessage(
        "m", "p", resume=True
    )


def test_parse_signal_echo_leave_close() -> None:
    """signal, echo, leave and close parse into their message classes."""
    assert parse_message('{"type":"signal","to":"*","data":{"sdp":[1,2]}}') == SignalMessage(
        "*", {"sdp": [1, 2]}
    )
    assert parse_message('{"type":"signal","to":"b","data":null}') == SignalMessage("b", None)
    assert parse_message('{"type":"echo","n":1,"x":[true]}') == EchoMessage(
        {"type": "echo", "n": 1, "x": [True]}
    )
    assert parse_message('{"type":"leave"}') == LeaveMessage()
    assert parse_message('{"type":"close","code":4000,"reason":"r"}') == CloseMessage(4000, "r")
    assert parse_message('{"type":"close","code":1000}') == CloseMessage(1000, "")


def test_parse_id_length_limit() -> None:
    """Ids of exactly 256 characters are accepted, 257 refused."""
    longest = "x" * 256
    assert parse_message(
        orjson.dumps({"type": "join", "meeting": longest, "participant": longest})
    ) == JoinMessage(longest, longest)
    with pytest.raises(PolicyViolation, match="256"):
        parse_message(orjson.dumps({"type": "join", "meeting": "m", "participant": "x" * 257}))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "invalid JSON"),
        ("[1,2]", "a message must be a JSON object"),
        ('"join"', "a message must be a JSON object"),
        ('{"meeting":"m"}', "a message needs a string 'type'"),
        ('{"type":7}', "a message needs a string 'type'"),
        ('{"type":"dance"}', "unknown message type 'dance'"),
        ('{"type":"join","participant":"p"}', "'meeting' must be a non-empty string"),
        ('{"type":"join","meeting":"","participant":"p"}', "'meeting' must be a non-empty"),
        ('{"type":"join","meeting":"m","participant":3}', "'participant' must be a non-empty"),
        ('{"type":"join","meeting":"m","participant":"*"}', "'participant' cannot be '*'"),
        ('{"type":"signal","to":"b"}', "signal needs 'data'"),
        ('{"type":"signal","data":1}', "'to' must be a non-empty string"),
        ('{"type":"signal","to":"","data":1}', "'to' must be a non-empty string"),
        ('{"type":"close"}', "'code' must be a close code"),
        ('{"type":"close","code":1006}', "'code' must be a close code"),
        ('{"type":"close","code":1005}', "'code' must be a close code"),
        ('{"type":"close","code":2999}', "'code' must be a close code"),
        ('{"type":"close","code":5000}', "'code' must be a close code"),
        ('{"type":"close","code":true}', "'code' must be a close code"),
        ('{"type":"close","code":"4000"}', "'code' must be a close code"),
        ('{"type":"close","code":4000,"reason":5}', "'reason' must be a string"),
    ],
)
def test_parse_refusals(text: str, reason: str) -> None:
    """Malformed messages raise PolicyViolation whose client text names the problem."""
    with pytest.raises(PolicyViolation) as info:
        parse_message(text)
    assert info.value.client_text.startswith(reason)


def test_close_reason_limit_is_in_bytes() -> None:
    """A close reason may take 123 UTF-8 bytes (RFC 6455 section 5.5), not one more."""
    assert CloseMessage(4000, "é" * 61 + "a").reason.endswith("a")  # 123 bytes
    with pytest.raises(PolicyViolation):
        CloseMessage(4000, "é" * 62)  # 124 bytes


# --------------------------------------------------------------------------------------------
# DemoEvent and constructor validation (pure)


def test_event_validation() -> None:
    """Events missing what their kind needs are refused."""
    with pytest.raises(ValueError, match="meeting"):
        DemoEvent(EventKind.JOIN, "127.0.0.1:1", 0.0, participant="p")
    with pytest.raises(ValueError, match="target"):
        DemoEvent(EventKind.SIGNAL, "127.0.0.1:1", 0.0, meeting="m", participant="p")
    with pytest.raises(ValueError, match="EventKind"):
        DemoEvent("join", "127.0.0.1:1", 0.0, meeting="m", participant="p")  # type: ignore[arg-type]
    assert DemoEvent(EventKind.CONNECT, "127.0.0.1:1", 0.0).meeting is None


def test_event_header_lookup_is_case_insensitive() -> None:
    """DemoEvent.header finds the first value of a header in any case."""
    event = DemoEvent(
        EventKind.CONNECT,
        "[::1]:5",
        1.0,
        headers=(("Host", "h"), ("X-Forwarded-For", "192.0.2.1"), ("x-forwarded-for", "x")),
    )
    assert event.header("x-forwarded-for") == "192.0.2.1"
    assert event.header("HOST") == "h"
    assert event.header("missing") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": -1},
        {"port": 65536},
        {"max_size": 0},
        {"ping_interval": 0},
        {"ping_timeout": -1.0},
        {"backlog": 0},
        {"max_buffer": 0},
        {"max_events": 0},
        {"subprotocols": ("bad token",)},
        {"subprotocols": (), "require_subprotocol": True},
    ],
)
def test_constructor_refuses_bad_arguments(kwargs: dict[str, Any]) -> None:
    """Out-of-range arguments raise ValueError at construction."""
    with pytest.raises(ValueError):
        DemoUpstream(**kwargs)


def test_address_unknown_before_start() -> None:
    """host, port and url raise before start()."""
    upstream = DemoUpstream()
    for name in ("host", "port", "url"):
        with pytest.raises(RuntimeError, match="not started"):
            getattr(upstream, name)


# --------------------------------------------------------------------------------------------
# Lifecycle and address


async def test_address_and_context_manager() -> None:
    """The async context manager starts on a free port and closes open clients with 1001."""
    async with DemoUpstream() as upstream:
        assert upstream.host == "127.0.0.1"
        assert upstream.port > 0
        assert upstream.url == f"ws://127.0.0.1:{upstream.port}"
        ws = await connect(upstream.url, proxy=None)
        try:
            await barrier(ws)
        finally:
            closing = asyncio.ensure_future(expect_closed(ws))
            await upstream.close()
            closed = await closing
            await ws.close()
        assert closed.rcvd is not None and closed.rcvd.code == 1001
    await upstream.close()  # idempotent


async def test_ipv6_url(make_upstream: MakeUpstream, client: Connect) -> None:
    """On ::1 the URL puts the address in brackets and clients can use it."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        upstream = await make_upstream(host="::1")
    except OSError:
        pytest.skip("::1 not available")
    assert upstream.url == f"ws://[::1]:{upstream.port}"
    ws = await client(upstream.url)
    await barrier(ws)
    event = await upstream.wait_for_event(lambda e: e.kind is EventKind.CONNECT)
    assert event.peer.startswith("[::1]:")


# --------------------------------------------------------------------------------------------
# Joining and leaving


async def test_joined_lists_the_others_sorted(upstream: DemoUpstream, client: Connect) -> None:
    """joined lists the other participants, sorted, without the joiner."""
    zoe, adam, mia = [await client(upstream.url) for _ in range(3)]
    assert (await join(zoe, "m", "zoe"))["participants"] == []
    assert (await join(adam, "m", "adam"))["participants"] == ["zoe"]
    assert await join(mia, "m", "mia") == {
        "type": "joined",
        "meeting": "m",
        "participant": "mia",
        "participants": ["adam", "zoe"],
    }
    assert upstream.participants("m") == ["adam", "mia", "zoe"]
    assert upstream.participants("other") == []


async def test_others_see_joined_and_left(upstream: DemoUpstream, client: Connect) -> None:
    """participant-joined and participant-left reach the others only; leave keeps the socket."""
    a, b, c = [await client(upstream.url) for _ in range(3)]
    await join(a, "m", "a")
    await join(b, "m", "b")
    assert await recv_json(a) == {"type": "participant-joined", "meeting": "m", "participant": "b"}
    await join(c, "m", "c")
    for ws in (a, b):
        assert await recv_json(ws) == {
            "type": "participant-joined",
            "meeting": "m",
            "participant": "c",
        }
    await send_json(b, {"type": "leave"})
    for ws in (a, c):
        assert await recv_json(ws) == {
            "type": "participant-left",
            "meeting": "m",
            "participant": "b",
        }
    await barrier(b)  # b saw none of its own notices and is still open
    assert upstream.participants("m") == ["a", "c"]
    # b may join again on the same connection.
    assert (await join(b, "m", "b"))["participants"] == ["a", "c"]


async def test_resume_is_a_join(upstream: DemoUpstream, client: Connect) -> None:
    """resume behaves like join: joined to the resumer, participant-joined to the others."""
    a, b = await client(upstream.url), await client(upstream.url)
    await join(a, "m", "a")
    assert (await join(b, "m", "b", kind="resume"))["participants"] == ["a"]
    assert (await recv_json(a))["type"] == "participant-joined"


async def test_empty_meeting_is_removed(upstream: DemoUpstream, client: Connect) -> None:
    """The last participant leaving removes the meeting from the room table."""
    a = await client(upstream.url)
    await join(a, "m", "a")
    rooms = upstream.rooms
    assert set(rooms) == {"m"}
    assert list(rooms["m"]) == ["a"]
    with pytest.raises(TypeError):
        rooms["m"]["b"] = rooms["m"]["a"]  # type: ignore[index]
    await send_json(a, {"type": "leave"})
    await upstream.wait_for_event(lambda e: e.kind is EventKind.LEAVE)
    assert "m" not in upstream.rooms


async def test_second_join_leaves_the_first_meeting(
    upstream: DemoUpstream, client: Connect
) -> None:
    """A second join on one connection leaves the first meeting before entering the next."""
    a, b, c = [await client(upstream.url) for _ in range(3)]
    await join(a, "one", "a")
    await join(b, "one", "b")
    await recv_json(a)  # participant-joined b
    await join(c, "two", "c")
    assert (await join(a, "two", "a"))["participants"] == ["c"]
    assert await recv_json(b) == {"type": "participant-left", "meeting": "one", "participant": "a"}
    assert await recv_json(c) == {
        "type": "participant-joined",
        "meeting": "two",
        "participant": "a",
    }
    assert upstream.participants("one") == ["b"]
    assert upstream.participants("two") == ["a", "c"]


async def test_replaced_participant(upstream: DemoUpstream, client: Connect) -> None:
    """A join with a present id closes the old connection with 4001; others see nothing."""
    old, other, new = [await client(upstream.url) for _ in range(3)]
    await join(old, "m", "p")
    await join(other, "m", "q")
    await recv_json(old)  # participant-joined q
    assert (await join(new, "m", "p"))["participants"] == ["q"]

    closed = await expect_closed(old)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (REPLACED_CLOSE_CODE, REPLACED_CLOSE_REASON)
    await upstream.wait_for_event(
        lambda e: e.kind is EventKind.CLOSE and e.code == REPLACED_CLOSE_CODE
    )
    await barrier(other)  # neither participant-left nor participant-joined for p
    assert upstream.participants("m") == ["p", "q"]
    assert not any(e.kind is EventKind.LEAVE for e in upstream.events)

    await send_json(other, {"type": "signal", "to": "p", "data": "hi"})
    assert await recv_json(new) == {"type": "signal", "from": "q", "data": "hi"}


# --------------------------------------------------------------------------------------------
# Signals, echo, binary, close


async def meeting_of(
    upstream: DemoUpstream,
    client: Connect,
    names: Sequence[str],
    meeting: str = "m",
    **connect_options: Any,
) -> dict[str, ClientConnection]:
    """Connect and join ``names`` in order, consuming the participant-joined notices."""
    sockets = {name: await client(upstream.url, **connect_options) for name in names}
    for name, ws in sockets.items():
        await join(ws, meeting, name)
    for index, ws in enumerate(sockets.values()):
        for later in names[index + 1 :]:
            assert await recv_json(ws) == {
                "type": "participant-joined",
                "meeting": meeting,
                "participant": later,
            }
    return sockets


async def test_signal_to_one(upstream: DemoUpstream, client: Connect) -> None:
    """A signal to P reaches P only, with the sender in from and data unchanged."""
    ws = await meeting_of(upstream, client, ["a", "b", "c"])
    data = {"sdp": "v=0\r\n", "candidates": [1, 2.5, None, True], "nested": {"é": "ü"}}
    await send_json(ws["a"], {"type": "signal", "to": "c", "data": data})
    assert await recv_json(ws["c"]) == {"type": "signal", "from": "a", "data": data}
    await barrier(ws["b"])
    await barrier(ws["a"])


async def test_signal_to_everyone(upstream: DemoUpstream, client: Connect) -> None:
    """A signal to "*" reaches every other participant of the meeting, not the sender."""
    ws = await meeting_of(upstream, client, ["a", "b", "c"])
    outsider = (await meeting_of(upstream, client, ["x"], meeting="elsewhere"))["x"]
    await send_json(ws["b"], {"type": "signal", "to": "*", "data": [1, "two"]})
    for name in ("a", "c"):
        assert await recv_json(ws[name]) == {"type": "signal", "from": "b", "data": [1, "two"]}
    await barrier(ws["b"])
    await barrier(outsider)


async def test_signal_alone_to_everyone_is_silent(upstream: DemoUpstream, client: Connect) -> None:
    """A signal to "*" with nobody else in the meeting is no error."""
    ws = await meeting_of(upstream, client, ["a"])
    await send_json(ws["a"], {"type": "signal", "to": "*", "data": 1})
    await barrier(ws["a"])


async def test_signal_to_unknown_participant(upstream: DemoUpstream, client: Connect) -> None:
    """A signal to an absent participant is answered with an error naming it and the meeting."""
    ws = await meeting_of(upstream, client, ["a", "b"])
    await send_json(ws["a"], {"type": "signal", "to": "zed", "data": 1})
    assert await recv_json(ws["a"]) == {
        "type": "error",
        "reason": "no participant zed in meeting m",
    }
    await barrier(ws["b"])


async def test_echo_before_join(upstream: DemoUpstream, client: Connect) -> None:
    """echo sends the same object back, before any join."""
    ws = await client(upstream.url)
    message = {"type": "echo", "seq": 7, "payload": {"list": [1, None, "é"], "f": 0.5}}
    await send_json(ws, message)
    assert await recv_json(ws) == message


async def test_binary_relayed_byte_identical(upstream: DemoUpstream, client: Connect) -> None:
    """Binary frames reach every other participant unchanged and as binary."""
    ws = await meeting_of(upstream, client, ["a", "b", "c"], max_size=None)
    payloads = [bytes(range(256)), random.Random(1).randbytes(3 * 2**20), b""]
    for payload in payloads:
        await ws["a"].send(payload)
    for name in ("b", "c"):
        for payload in payloads:
            received = await recv(ws[name])
            assert isinstance(received, bytes)
            assert received == payload
    await barrier(ws["a"])


async def test_close_request_reaches_client(upstream: DemoUpstream, client: Connect) -> None:
    """A close request closes the connection with that code and reason; others see a leave."""
    ws = await meeting_of(upstream, client, ["a", "b"])
    await send_json(ws["a"], {"type": "close", "code": 4321, "reason": "bye now"})
    closed = await expect_closed(ws["a"])
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (4321, "bye now")
    assert await recv_json(ws["b"]) == {
        "type": "participant-left",
        "meeting": "m",
        "participant": "a",
    }


async def test_client_drop_is_a_leave(upstream: DemoUpstream, client: Connect) -> None:
    """A TCP close without a close frame takes the participant out; others see a leave."""
    ws = await meeting_of(upstream, client, ["a", "b"])
    ws["a"].transport.abort()
    assert await recv_json(ws["b"]) == {
        "type": "participant-left",
        "meeting": "m",
        "participant": "a",
    }
    closed = await upstream.wait_for_event(lambda e: e.kind is EventKind.CLOSE)
    assert (closed.code, closed.meeting, closed.participant) == (1006, "m", "a")
    assert upstream.participants("m") == ["b"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("not json", "invalid JSON"),
        ("[]", "a message must be a JSON object"),
        ('{"type":"dance"}', "unknown message type 'dance'"),
        ('{"type":"join","meeting":"m"}', "'participant' must be a non-empty string"),
        ('{"type":"signal","to":"b","data":1}', "signal before join"),
        ('{"type":"leave"}', "not in a meeting"),
        ('{"type":"close","code":1006}', "'code' must be a close code"),
    ],
)
async def test_errors_keep_the_connection_open(
    upstream: DemoUpstream, client: Connect, message: str, reason: str
) -> None:
    """A message the server cannot accept gets an error reply; the connection stays usable."""
    ws = await client(upstream.url)
    await ws.send(message)
    reply = await recv_json(ws)
    assert reply["type"] == "error"
    assert reply["reason"].startswith(reason)
    await barrier(ws)
    assert (await join(ws, "m", "a"))["participants"] == []


async def test_binary_before_join_is_an_error(upstream: DemoUpstream, client: Connect) -> None:
    """A binary frame before joining gets an error reply and goes nowhere."""
    ws = await client(upstream.url)
    await ws.send(b"\x00\x01")
    assert await recv_json(ws) == {"type": "error", "reason": "binary message before join"}
    await barrier(ws)


async def test_message_over_max_size_closes_1009(
    make_upstream: MakeUpstream, client: Connect
) -> None:
    """A message over max_size closes the connection with 1009 (RFC 6455 section 7.4.1)."""
    upstream = await make_upstream(max_size=1024)
    ws = await client(upstream.url)
    await send_json(ws, {"type": "echo", "pad": "x" * 900})
    assert (await recv_json(ws))["pad"] == "x" * 900
    await send_json(ws, {"type": "echo", "pad": "x" * 2000})
    closed = await expect_closed(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1009


# --------------------------------------------------------------------------------------------
# WebSocket framing, seen with a raw client


def text_frame(obj: object) -> bytes:
    """A masked client text frame holding a JSON value."""
    return frame(Opcode.TEXT, orjson.dumps(obj))


async def next_message(client: RawClient) -> tuple[int, bytes]:
    """The next data frame (opcode, payload), answering keepalive pings on the way."""
    while True:
        opcode, payload, fin = await client.recv_frame(TIMEOUT)
        if opcode == Opcode.PING:
            client.send(frame(Opcode.PONG, payload))
            continue
        assert fin, "the server fragments nothing"
        return opcode, payload


async def next_json(client: RawClient) -> dict[str, Any]:
    """The next data frame, which must be text holding a JSON object."""
    opcode, payload = await next_message(client)
    assert opcode == Opcode.TEXT
    obj = orjson.loads(payload)
    assert isinstance(obj, dict)
    return obj


async def raw_join(client: RawClient, meeting: str, participant: str) -> None:
    """Join and consume the ``joined`` reply."""
    client.send(text_frame({"type": "join", "meeting": meeting, "participant": participant}))
    assert (await next_json(client))["type"] == "joined"


async def raw_barrier(client: RawClient) -> None:
    """Assert that nothing is queued for ``client``: an echo sent now is the next message."""
    token = next(_barrier_ids)
    client.send(text_frame({"type": "echo", "barrier": token}))
    assert await next_json(client) == {"type": "echo", "barrier": token}


async def read_to_end(client: RawClient) -> bytes:
    """Everything the server sends until it ends the stream."""
    rest = client.buffer + await asyncio.wait_for(client.reader.read(), TIMEOUT)
    client.buffer = b""
    return rest


RawConnect = Callable[..., Awaitable[RawClient]]


@pytest.fixture
async def raw() -> AsyncIterator[RawConnect]:
    """Open upgraded raw connections to a demo upstream; close them all at teardown."""
    opened: list[RawClient] = []

    async def open_raw(upstream: DemoUpstream, after_request: bytes = b"") -> RawClient:
        client = await RawClient.connect(upstream.port, after_request=after_request)
        opened.append(client)
        return client

    yield open_raw
    for client in opened:
        client.close()


async def test_broadcast_is_one_identical_frame_per_receiver(
    upstream: DemoUpstream, raw: RawConnect
) -> None:
    """A signal or binary message to everyone reaches each receiver once, as the same frame."""
    receivers = [await raw(upstream) for _ in range(8)]
    for index, client in enumerate(receivers):
        await raw_join(client, "m", f"r{index}")
    sender = await raw(upstream)
    await raw_join(sender, "m", "s")
    data = {"sdp": "v=0\r\n", "candidates": list(range(40)), "é": None}
    sender.send(text_frame({"type": "signal", "to": "*", "data": data}))
    blob = random.Random(2).randbytes(70_000)  # a 64-bit length field
    sender.send(frame(Opcode.BINARY, blob))
    signal_payload = orjson.dumps({"type": "signal", "from": "s", "data": data})
    for index, client in enumerate(receivers):
        later = [f"r{later}" for later in range(index + 1, len(receivers))] + ["s"]
        for name in later:
            assert await next_json(client) == {
                "type": "participant-joined",
                "meeting": "m",
                "participant": name,
            }
        # recv_frame refuses a masked frame: these are server frames, unfragmented.
        assert await next_message(client) == (Opcode.TEXT, signal_payload)
        assert await next_message(client) == (Opcode.BINARY, blob)
        await raw_barrier(client)
    await raw_barrier(sender)


_MASK = b"\x01\x02\x03\x04"
_UPGRADE = (
    "Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (encode_frame(Opcode.TEXT, b"{}", mask=False), 1002),
        (bytes((0xC1, 0x80)) + _MASK, 1002),
        (bytes((0x83, 0x80)) + _MASK, 1002),
        (frame(Opcode.CONT, b"x"), 1002),
        (frame(Opcode.TEXT, b"a", fin=False) + frame(Opcode.TEXT, b"b"), 1002),
        (bytes((0x09, 0x80)) + _MASK, 1002),
        (bytes((0x89, 0xFE, 0x00, 0x7E)) + _MASK + bytes(126), 1002),
        (bytes((0x81, 0xFE, 0x00, 0x05)) + _MASK + bytes(5), 1002),
        (frame(Opcode.CLOSE, b"\x03"), 1002),
        (frame(Opcode.CLOSE, (1005).to_bytes(2, "big")), 1002),
        (frame(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"\xff"), 1002),
        (frame(Opcode.TEXT, b'{"type":"echo","x":"\xff"}'), 1007),
        (frame(Opcode.TEXT, b"\xc3", fin=False) + frame(Opcode.CONT, b"\x28"), 1007),
    ],
    ids=[
        "unmasked",
        "reserved-bit",
        "reserved-opcode",
        "continuation-first",
        "new-message-mid-message",
        "fragmented-ping",
        "ping-over-125-bytes",
        "length-not-minimal",
        "close-payload-one-byte",
        "close-code-not-on-wire",
        "close-reason-not-utf8",
        "text-not-utf8",
        "text-not-utf8-across-fragments",
    ],
)
async def test_malformed_frames_close_with_their_code(
    upstream: DemoUpstream, raw: RawConnect, data: bytes, code: int
) -> None:
    """A framing fault gets a close frame with its code (RFC 6455 7.4.1), then end of stream."""
    client = await raw(upstream)
    await raw_join(client, "m", "a")
    client.send(data)
    assert (await client.recv_close(TIMEOUT))[0] == code
    assert await read_to_end(client) == b""  # the server reads no more frames and half-closes
    client.close()
    closed = await upstream.wait_for_event(lambda e: e.kind is EventKind.CLOSE)
    assert (closed.code, closed.participant) == (1006, "a")  # no close frame was read from it
    assert upstream.participants("m") == []


async def test_oversized_frame_is_refused_before_its_payload(
    make_upstream: MakeUpstream, raw: RawConnect
) -> None:
    """A frame header announcing more than max_size closes with 1009 before the payload comes."""
    upstream = await make_upstream(max_size=1024)
    client = await raw(upstream)
    client.send(bytes((0x82, 0xFE)) + (1025).to_bytes(2, "big") + _MASK)
    assert await client.recv_close(TIMEOUT) == (1009, "message too big")


async def test_fragments_with_a_ping_between(upstream: DemoUpstream, raw: RawConnect) -> None:
    """A ping between a message's fragments is answered at once; the message is assembled."""
    client = await raw(upstream)
    client.send(frame(Opcode.TEXT, b'{"type":"echo",', fin=False))
    client.send(frame(Opcode.PING, b"between"))
    client.send(frame(Opcode.CONT, b'"n":', fin=False) + frame(Opcode.CONT, '"é"}'.encode()))
    assert await client.recv_frame(TIMEOUT) == (Opcode.PONG, b"between", True)
    assert await next_json(client) == {"type": "echo", "n": "é"}


async def test_frames_right_after_the_request(upstream: DemoUpstream, raw: RawConnect) -> None:
    """Frames sent in the same segment as the upgrade request are read after the upgrade."""
    client = await raw(upstream, after_request=text_frame({"type": "echo", "early": True}))
    assert await next_json(client) == {"type": "echo", "early": True}


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [(encode_close_payload(4000, "bye é"), 4000, "bye é"), (b"", 1005, "")],
)
async def test_close_frame_is_echoed_then_the_server_ends_tcp(
    upstream: DemoUpstream, raw: RawConnect, payload: bytes, code: int, reason: str
) -> None:
    """A client's close is echoed as it came, then the server ends the stream first."""
    client = await raw(upstream)
    await raw_join(client, "m", "a")
    client.send(frame(Opcode.CLOSE, payload))
    assert await client.recv_frame(TIMEOUT) == (Opcode.CLOSE, payload, True)
    assert await read_to_end(client) == b""
    client.close()
    closed = await upstream.wait_for_event(lambda e: e.kind is EventKind.CLOSE)
    assert (closed.code, closed.reason, closed.meeting) == (code, reason, "m")


# --------------------------------------------------------------------------------------------
# Slow receivers and keepalive


async def slow_reader(upstream: DemoUpstream) -> RawClient:
    """An upgraded raw connection with a 4 KiB receive buffer, for a client that does not read.

    Its stream reader holds at most 2 KiB before it stops reading the socket, so whatever the
    kernels do not hold stays in the server's write buffer.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (upstream.host, upstream.port))
    except OSError:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.write(f"GET / HTTP/1.1\r\n{_UPGRADE}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return RawClient(reader, writer)


async def test_receiver_that_stops_reading_is_closed_with_1013(
    make_upstream: MakeUpstream, client: Connect
) -> None:
    """A receiver whose unsent bytes pass max_buffer gets nothing more and is closed with 1013."""
    limit = 256 * 1024
    upstream = await make_upstream(max_buffer=limit)
    slow = await slow_reader(upstream)
    try:
        slow.send(text_frame({"type": "join", "meeting": "m", "participant": "slow"}))
        await upstream.wait_for_event(lambda e: e.kind is EventKind.JOIN)
        sender = (await meeting_of(upstream, client, ["sender"]))["sender"]
        chunk = "x" * (128 * 1024)
        signals = 64  # 8 MiB: far more than the kernels' buffers and max_buffer together
        for n in range(signals):
            # One signal per loop iteration of the server, each handled before the next (the
            # barrier): none waited for the slow receiver.
            await send_json(sender, {"type": "signal", "to": "*", "data": [n, chunk]})
            await barrier(sender)

        connection = upstream.rooms["m"]["slow"]
        assert connection.transport is not None
        # max_buffer, plus the one message that passed it, plus the close frame.
        assert connection.transport.get_write_buffer_size() < limit + 2 * len(chunk)

        assert (await next_json(slow))["type"] == "joined"
        assert (await next_json(slow))["participant"] == "sender"
        received = 0
        while True:
            opcode, payload, _ = await slow.recv_frame(TIMEOUT)
            if opcode == Opcode.CLOSE:
                break
            assert orjson.loads(payload)["data"][0] == received  # in order, none skipped
            received += 1
        assert 0 < received < signals
        assert (int.from_bytes(payload[:2], "big"), payload[2:]) == (1013, b"too slow")
        slow.send(slow.close_frame(1013))
        assert await read_to_end(slow) == b""
        slow.close()
        assert await recv_json(sender) == {
            "type": "participant-left",
            "meeting": "m",
            "participant": "slow",
        }
        closed = await upstream.wait_for_event(lambda e: e.kind is EventKind.CLOSE)
        assert (closed.code, closed.participant) == (1013, "slow")
    finally:
        slow.close()


async def test_keepalive_closes_a_silent_client_with_1011(
    make_upstream: MakeUpstream, raw: RawConnect
) -> None:
    """A client that does not answer the keepalive ping within ping_timeout is closed, 1011."""
    upstream = await make_upstream(ping_interval=0.02, ping_timeout=0.05)
    client = await raw(upstream)
    opcode, _, _ = await client.recv_frame(TIMEOUT)
    assert opcode == Opcode.PING
    assert await client.recv_close(TIMEOUT) == (1011, "keepalive ping timeout")


async def test_keepalive_keeps_a_client_that_answers(
    make_upstream: MakeUpstream, raw: RawConnect
) -> None:
    """Pings keep coming every ping_interval to a client that answers them, which stays open."""
    upstream = await make_upstream(ping_interval=0.02, ping_timeout=TIMEOUT)
    client = await raw(upstream)
    payloads = []
    for _ in range(3):
        opcode, payload, _ = await client.recv_frame(TIMEOUT)
        assert opcode == Opcode.PING
        payloads.append(payload)
        client.send(frame(Opcode.PONG, payload))
    assert len(set(payloads)) == 3
    await raw_barrier(client)


# --------------------------------------------------------------------------------------------
# HTTP

@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", 426),
        (f"POST / HTTP/1.1\r\n{_UPGRADE}\r\n", 405),
        (f"GET / HTTP/1.1\r\n{_UPGRADE.replace('13', '8')}\r\n", 426),
        (f"GET / HTTP/1.1\r\n{_UPGRADE}Host: i\r\n\r\n", 400),
        (f"GET / HTTP/1.1\r\n{_UPGRADE}X-Big: {'a' * 17_000}\r\n\r\n", 431),
        ("NOT HTTP\r\n\r\n", 400),
    ],
    ids=["no-upgrade", "post", "version-8", "two-hosts", "head-too-large", "garbage"],
)
async def test_requests_that_are_not_upgrades_get_http_errors(
    upstream: DemoUpstream, head: str, status: int
) -> None:
    """A request that is not a valid upgrade gets an HTTP error response, then the end."""
    reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
    try:
        writer.write(head.encode())
        response = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    assert response.startswith(f"HTTP/1.1 {status} ".encode()), response[:80]
    assert b"\r\nConnection: " in response
    assert upstream.events == []


async def test_close_answers_an_upgrade_in_progress_with_503(
    upstream: DemoUpstream, raw: RawConnect
) -> None:
    """close() answers a connection whose upgrade request is incomplete with 503."""
    reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n")
        # Connections are accepted in order: once a later one is upgraded, the first is known.
        later = await raw(upstream)
        await raw_barrier(later)
        closing = asyncio.ensure_future(upstream.close())
        response = await asyncio.wait_for(reader.read(), TIMEOUT)
        assert await later.recv_close(TIMEOUT) == (1001, "server shutting down")
        later.send(later.close_frame(1001))
        assert await read_to_end(later) == b""
        later.close()
    finally:
        writer.close()
    await asyncio.wait_for(closing, TIMEOUT)  # returns once both clients have closed their side
    assert response.startswith(b"HTTP/1.1 503 ")


# --------------------------------------------------------------------------------------------
# Subprotocols


@pytest.mark.parametrize(
    ("supported", "offered", "selected"),
    [
        (("geogate-demo.v1",), None, None),
        (("geogate-demo.v1",), ["other", "geogate-demo.v1"], "geogate-demo.v1"),
        (("geogate-demo.v1",), ["other"], None),
        (("a", "b"), ["b", "a"], "b"),  # the client's preference wins
        ((), ["a"], None),
    ],
)
async def test_subprotocol_selection(
    make_upstream: MakeUpstream,
    client: Connect,
    supported: tuple[str, ...],
    offered: list[str] | None,
    selected: str | None,
) -> None:
    """The first offered subprotocol that is supported is selected; otherwise none."""
    upstream = await make_upstream(subprotocols=supported)
    ws = await client(upstream.url, subprotocols=offered)
    assert ws.subprotocol == selected
    await barrier(ws)


@pytest.mark.parametrize("offered", [None, ["other"]])
async def test_required_subprotocol_refuses_with_400(
    make_upstream: MakeUpstream, client: Connect, offered: list[str] | None
) -> None:
    """With require_subprotocol, a handshake without a supported subprotocol gets HTTP 400."""
    upstream = await make_upstream(require_subprotocol=True)
    with pytest.raises(InvalidStatus) as info:
        await client(upstream.url, subprotocols=offered)
    assert info.value.response.status_code == 400
    ws = await client(upstream.url, subprotocols=["geogate-demo.v1"])
    assert ws.subprotocol == "geogate-demo.v1"


# --------------------------------------------------------------------------------------------
# Event record


async def test_events_recorded(upstream: DemoUpstream, client: Connect) -> None:
    """connect, join, signal, leave and close are recorded in order with their details."""
    ws = await client(upstream.url, additional_headers={"X-Forwarded-For": "192.0.2.7"})
    await join(ws, "m", "a")
    await send_json(ws, {"type": "signal", "to": "*", "data": 1})
    await send_json(ws, {"type": "leave"})
    await barrier(ws)
    await ws.close(4000, "done")
    closed = await upstream.wait_for_event(lambda e: e.kind is EventKind.CLOSE)
    assert (closed.code, closed.reason, closed.meeting) == (4000, "done", None)

    events = upstream.events
    assert [e.kind for e in events] == [
        EventKind.CONNECT,
        EventKind.JOIN,
        EventKind.SIGNAL,
        EventKind.LEAVE,
        EventKind.CLOSE,
    ]
    connected, joined, signalled, left, _ = events
    local = ws.local_address
    assert {e.peer for e in events} == {f"{local[0]}:{local[1]}"}
    assert connected.header("x-forwarded-for") == "192.0.2.7"
    assert joined.header("X-Forwarded-For") == "192.0.2.7"
    assert (joined.meeting, joined.participant) == ("m", "a")
    assert (signalled.meeting, signalled.participant, signalled.target) == ("m", "a", "*")
    assert signalled.headers == () and left.headers == ()
    assert (left.meeting, left.participant) == ("m", "a")
    assert [e.time for e in events] == sorted(e.time for e in events)


async def test_wait_for_event_waits_for_a_future_event(
    upstream: DemoUpstream, client: Connect
) -> None:
    """wait_for_event started before the event returns it once it happens."""
    waiting = asyncio.ensure_future(
        upstream.wait_for_event(lambda e: e.kind is EventKind.JOIN and e.participant == "late")
    )
    ws = await client(upstream.url)
    await join(ws, "m", "early")
    assert not waiting.done()
    await join(ws, "m", "late")
    event = await asyncio.wait_for(waiting, TIMEOUT)
    assert (event.kind, event.meeting, event.participant) == (EventKind.JOIN, "m", "late")


async def test_wait_for_event_returns_a_past_event(upstream: DemoUpstream, client: Connect) -> None:
    """wait_for_event returns the first already recorded event that matches."""
    ws = await client(upstream.url)
    await join(ws, "m", "a")
    await join(ws, "n", "a")
    event = await upstream.wait_for_event(lambda e: e.kind is EventKind.JOIN, timeout=0)
    assert event.meeting == "m"


async def test_wait_for_event_times_out(upstream: DemoUpstream) -> None:
    """wait_for_event raises TimeoutError when nothing matches in time."""
    with pytest.raises(TimeoutError):
        await upstream.wait_for_event(lambda e: False, timeout=0.01)


async def test_wait_for_event_reports_predicate_errors(
    upstream: DemoUpstream, client: Connect
) -> None:
    """An exception in a waiting predicate is raised by wait_for_event, not in the server."""

    def broken(event: DemoEvent) -> bool:
        raise LookupError("bad predicate")

    # The task registers its waiter at the loop's next turn, before the server can accept.
    waiting = asyncio.ensure_future(upstream.wait_for_event(broken))
    ws = await client(upstream.url)
    with pytest.raises(LookupError, match="bad predicate"):
        await asyncio.wait_for(waiting, TIMEOUT)
    await barrier(ws)


async def test_event_record_is_bounded(make_upstream: MakeUpstream, client: Connect) -> None:
    """The record keeps the newest max_events events; clear_events empties it."""
    upstream = await make_upstream(max_events=3)
    ws = await client(upstream.url)
    for index in range(5):
        await join(ws, "m", f"p{index}")
    events = upstream.events
    assert len(events) == 3
    assert (events[-1].kind, events[-1].participant) == (EventKind.JOIN, "p4")
    upstream.clear_events()
    assert upstream.events == []


async def test_recording_can_be_disabled(make_upstream: MakeUpstream, client: Connect) -> None:
    """With record_events=False nothing is recorded and wait_for_event refuses."""
    upstream = await make_upstream(record_events=False)
    ws = await client(upstream.url)
    await join(ws, "m", "a")
    assert upstream.events == []
    with pytest.raises(RuntimeError, match="record_events"):
        await upstream.wait_for_event(lambda e: True)


# --------------------------------------------------------------------------------------------
# Scale


async def test_hundreds_of_participants(make_upstream: MakeUpstream, client: Connect) -> None:
    """300 participants in 6 meetings join at once; signals to one and to all arrive exactly."""
    upstream = await make_upstream(record_events=False)
    meetings = [f"m{index}" for index in range(6)]
    members = {m: [f"{m}-p{index:02d}" for index in range(50)] for m in meetings}
    names = [(m, p) for m in meetings for p in members[m]]
    sockets = await asyncio.gather(*(client(upstream.url) for _ in names))
    ws = dict(zip(names, sockets, strict=True))

    replies = await asyncio.gather(*(join(ws[key], *key) for key in names))
    for m in meetings:
        assert upstream.participants(m) == sorted(members[m])

    async def exchange(key: tuple[str, str]) -> tuple[set[str], list[str], str | None]:
        """Signal everyone, then one neighbour; collect notices and signals until complete."""
        m, p = key
        others = len(members[m]) - 1
        await send_json(ws[key], {"type": "signal", "to": "*", "data": p})
        ring = members[m]
        neighbour = ring[(ring.index(p) + 1) % len(ring)]
        await send_json(ws[key], {"type": "signal", "to": neighbour, "data": {"ring": p}})
        joined_later: set[str] = set()
        broadcasts: list[str] = []
        direct: str | None = None
        while len(broadcasts) < others or direct is None:
            message = await recv_json(ws[key])
            if message["type"] == "participant-joined":
                assert message["meeting"] == m
                joined_later.add(message["participant"])
            elif isinstance(message["data"], dict):
                assert direct is None
                direct = message["from"]
                assert message["data"] == {"ring": direct}
            else:
                assert message["type"] == "signal" and message["from"] == message["data"]
                broadcasts.append(message["from"])
        return joined_later, broadcasts, direct

    results = await asyncio.gather(*(exchange(key) for key in names))
    for key, reply, (joined_later, broadcasts, direct) in zip(names, replies, results, strict=True):
        m, p = key
        others = set(members[m]) - {p}
        # Everyone learned of every other participant exactly once: at join or by a notice.
        assert set(reply["participants"]) | joined_later == others
        assert not set(reply["participants"]) & joined_later
        assert sorted(broadcasts) == sorted(others)
        ring = members[m]
        assert direct == ring[ring.index(p) - 1]
    await asyncio.gather(*(barrier(ws[key]) for key in names))


# --------------------------------------------------------------------------------------------
# run(): the standalone process


async def test_run_serves_until_sigterm() -> None:
    """run() logs its URL, serves clients (under uvloop when installed), exits 0 on SIGTERM."""
    script = (
        "import logging\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        "logging.getLogger('proxy').setLevel(logging.DEBUG)\n"
        "from proxy.demo_upstream import run\n"
        "run('127.0.0.1', 0)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert process.stderr is not None
    try:
        prefix = "proxy.demo_upstream demo upstream listening on "
        url = None
        head: list[str] = []
        while url is None:
            line = (await asyncio.wait_for(process.stderr.readline(), TIMEOUT)).decode()
            assert line, f"the process ended before listening: {head}"
            head.append(line)
            if line.startswith(prefix):
                url = line.removeprefix(prefix).strip()
        if importlib.util.find_spec("uvloop") is not None:
            assert any("event loop: uvloop" in line for line in head), head
        assert url.startswith("ws://127.0.0.1:")
        async with connect(url, proxy=None) as ws:
            await barrier(ws)
            process.send_signal(signal.SIGTERM)
            closed = await expect_closed(ws)
            assert closed.rcvd is not None and closed.rcvd.code == 1001
        rest = (await asyncio.wait_for(process.stderr.read(), TIMEOUT)).decode()
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
        assert "demo upstream stopping" in rest
        assert "Traceback" not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
