"""The demo meeting server: a small JSON-over-WebSocket signaling server with rooms.

It is the default upstream of the proxy (``geogate demo-upstream``) and the upstream of most tests
and benchmarks, so it must hold thousands of participants in one process and announce every join
and leave to meetings of a hundred cheaply. Each connection is one :class:`asyncio.Protocol`
(:class:`DemoConnection`) driving the project's sans-I/O pieces: :mod:`proxy.handshake` for the
HTTP upgrade and :mod:`proxy.frames` for framing. Meetings and their participants live in dicts,
JSON goes through ``orjson``, and nothing makes a task or a future per connection or message.

Protocol (text frames carrying JSON objects; every server message has a ``type``)::

    join / resume {meeting, participant}  -> joined {meeting, participant, participants} to the
                                             joiner, participant-joined to the others
    signal {to: P | "*", data}            -> signal {from, data} to P or to every other participant
    echo {...}                            -> the same object back to the sender
    leave                                 -> participant-left to the others; the connection stays
    close {code, reason}                  -> the server closes this connection with that code
    binary frame (joined)                 -> the same bytes to every other participant
    anything else                         -> error {reason}; the connection stays open

Rules: a connection is in at most one meeting, and a second join first leaves the current one. A
join with a participant id already present in the meeting replaces the old connection, which is
closed with code 4001; the others see neither a leave nor a join. A connection that closes or
drops leaves its meeting when it is gone. Empty meetings are removed.

Delivery: a message for others is encoded into one server frame, and the same bytes object is
queued for each receiver. Each connection's queue is written with one call once the event loop has
handled the current iteration's input, so a receiver costs one write (one system call) per loop
iteration however many messages reached it. Nothing waits on a receiver: one slow receiver never
stalls a sender or a meeting. A receiver whose unsent bytes pass ``max_buffer`` (it has stopped
reading) gets nothing more: it is closed with 1013 "too slow" (the close frame queued behind what
it has not read) and dropped if the closing handshake has not finished within 5 s, so its memory
stays bounded; it leaves its meeting when it is gone. Replies to the sender itself (joined, echo,
error) go the same way, and a connection whose write buffer is over the transport's high-water mark
is not read until it drains, so a client that floods without reading is paused by TCP flow control.

WebSocket (RFC 6455): client frames must be masked (else close 1002), text must be UTF-8 (else
1007), a message over ``max_size`` closes with 1009; fragmented messages may have control frames
between their fragments; pings are answered with pongs; a close frame is echoed with its code, and
the server then ends the TCP stream first (a half-close; the connection is dropped if the client
has not closed its side within 5 s). After a protocol error the server sends its close frame,
stops reading frames and ends the stream the same way. Keepalive: a ping every
``ping_interval``; no pong within ``ping_timeout`` closes with 1011. No extension
(permessage-deflate) is negotiated. A request that is not a WebSocket upgrade gets an HTTP error
as :mod:`proxy.handshake` decides it (400, 405, 426, or 431 past 16 KiB of head), as does one
that offers no supported subprotocol when one is required (400); 408 when the request takes over
10 s, 503 while the server is closing.

Message parsing is pure (:func:`parse_message` returns one of the frozen message classes); the
server class owns the sockets, the room table and the event record that tests wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self, TypeAlias, assert_never

import orjson
from websockets.headers import validate_subprotocols
from websockets.typing import Subprotocol

from proxy.errors import ClientError, PolicyViolation
from proxy.frames import (
    CLOSE_CODES_ALLOWED_ON_WIRE,
    MessageAssembler,
    Opcode,
    apply_mask,
    encode_close_payload,
    encode_frame,
    parse_close_payload,
    parse_header,
)
from proxy.handshake import (
    HandshakeFailed,
    RequestParser,
    build_accept_response,
    build_error_response,
    validate_upgrade,
)

__all__ = [
    "DEFAULT_SUBPROTOCOLS",
    "MAX_ID_LENGTH",
    "REPLACED_CLOSE_CODE",
    "REPLACED_CLOSE_REASON",
    "TOO_SLOW_CLOSE_CODE",
    "ClientMessage",
    "CloseMessage",
    "DemoConnection",
    "DemoEvent",
    "DemoUpstream",
    "EchoMessage",
    "EventKind",
    "JoinMessage",
    "LeaveMessage",
    "MessageType",
    "SignalMessage",
    "parse_message",
    "run",
]

DEFAULT_SUBPROTOCOLS: Final[tuple[str, ...]] = ("geogate-demo.v1",)
MAX_ID_LENGTH: Final = 256
"""The longest meeting or participant id accepted, in characters."""
REPLACED_CLOSE_CODE: Final = 4001
REPLACED_CLOSE_REASON: Final = "replaced by a new connection"
TOO_SLOW_CLOSE_CODE: Final = 1013
"""The close code of a receiver whose unsent bytes passed ``max_buffer`` (try again later)."""
BROADCAST_TARGET: Final = "*"

# A close frame is a control frame: payload at most 125 bytes, 2 of them the code
# (RFC 6455 section 5.5).
_MAX_CLOSE_REASON_BYTES: Final = 123
# The listen backlog: 100 overflowed under a 200-connection join storm; SYNs beyond the backlog
# are dropped and retried after a second, which shows up as join latency, not as errors.
_DEFAULT_BACKLOG: Final = 4096
_DEFAULT_MAX_EVENTS: Final = 100_000
_DEFAULT_MAX_BUFFER: Final = 16 * 2**20
# Seconds for the upgrade request to arrive, and for a closing handshake (or the flush before it)
# to finish before the connection is dropped.
_HANDSHAKE_TIMEOUT: Final = 10.0
_CLOSE_TIMEOUT: Final = 5.0
_SHUTDOWN_REASON: Final = "server shutting down"

logger = logging.getLogger("proxy.demo_upstream")


# --------------------------------------------------------------------------------------------
# Messages (pure)


class MessageType(enum.StrEnum):
    """The ``type`` of a message a client may send."""

    JOIN = "join"
    RESUME = "resume"
    SIGNAL = "signal"
    ECHO = "echo"
    LEAVE = "leave"
    CLOSE = "close"


def _refuse(reason: str) -> PolicyViolation:
    """Build the error for a message the server cannot accept; ``reason`` goes to the client."""
    return PolicyViolation(reason, client_text=reason)


def _check_id(value: object, field: str) -> None:
    """Check a meeting or participant id: a non-empty string of at most MAX_ID_LENGTH characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise _refuse(f"'{field}' must be a non-empty string of at most {MAX_ID_LENGTH} characters")


@dataclass(frozen=True, slots=True)
class JoinMessage:
    """A ``join`` (or, with ``resume``, a reconnect's ``resume``) into a meeting.

    Raises:
        PolicyViolation: an id is not a non-empty string of at most 256 characters, or the
            participant id is ``"*"`` (reserved for signals to everyone).
    """

    meeting: str
    participant: str
    resume: bool = False

    def __post_init__(self) -> None:
        _check_id(self.meeting, "meeting")
        _check_id(self.participant, "participant")
        if self.participant == BROADCAST_TARGET:
            raise _refuse(f"'participant' cannot be {BROADCAST_TARGET!r}")


@dataclass(frozen=True, slots=True)
class SignalMessage:
    """A ``signal`` carrying ``data`` to one participant (``to``) or to all others (``"*"``).

    Raises:
        PolicyViolation: ``to`` is not a non-empty string of at most 256 characters.
    """

    to: str
    data: Any

    def __post_init__(self) -> None:
        _check_id(self.to, "to")


@dataclass(frozen=True, slots=True)
class EchoMessage:
    """An ``echo``: ``message`` (the whole object, ``type`` included) goes back to the sender."""

    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LeaveMessage:
    """A ``leave``: the connection leaves its meeting and stays open."""


@dataclass(frozen=True, slots=True)
class CloseMessage:
    """A ``close``: the server closes this connection with ``code`` and ``reason``.

    Raises:
        PolicyViolation: ``code`` cannot be sent in a close frame (RFC 6455 section 7.4), or
            ``reason`` is not a string of at most 123 UTF-8 bytes (section 5.5).
    """

    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        code = self.code
        if (
            not isinstance(code, int)
            or isinstance(code, bool)
            or code not in CLOSE_CODES_ALLOWED_ON_WIRE
        ):
            raise _refuse("'code' must be a close code that may be sent (RFC 6455 section 7.4)")
        if not isinstance(self.reason, str) or len(self.reason.encode()) > _MAX_CLOSE_REASON_BYTES:
            raise _refuse(f"'reason' must be a string of at most {_MAX_CLOSE_REASON_BYTES} bytes")


ClientMessage: TypeAlias = JoinMessage | SignalMessage | EchoMessage | LeaveMessage | CloseMessage


def _field(obj: dict[str, Any], key: str) -> Any:
    """Return a field's raw value (None when absent); the message class validates it."""
    return obj.get(key)


def parse_message(text: str | bytes) -> ClientMessage:
    """Parse one text message from a client.

    Args:
        text: the payload of a text frame (``str``, or its UTF-8 bytes).

    Returns:
        The message, validated.

    Raises:
        PolicyViolation: invalid JSON, not an object, an unknown ``type`` or a missing or invalid
            field; ``client_text`` is the reason the client is given.
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise _refuse("invalid JSON") from None
    if not isinstance(obj, dict):
        raise _refuse("a message must be a JSON object")
    kind = obj.get("type")
    # Most frequent first: signals and echoes are the traffic, the rest happen once per session.
    match kind:
        case MessageType.SIGNAL:
            if "data" not in obj:
                raise _refuse("signal needs 'data'")
            return SignalMessage(_field(obj, "to"), obj["data"])
        case MessageType.ECHO:
            return EchoMessage(obj)
        case MessageType.JOIN | MessageType.RESUME:
            return JoinMessage(
                _field(obj, "meeting"), _field(obj, "participant"), kind == MessageType.RESUME
            )
        case MessageType.LEAVE:
            return LeaveMessage()
        case MessageType.CLOSE:
            return CloseMessage(_field(obj, "code"), obj.get("reason", ""))
        case str():
            raise _refuse(f"unknown message type {kind!r}")
        case _:
            raise _refuse("a message needs a string 'type'")


# --------------------------------------------------------------------------------------------
# Event record (for tests)


class EventKind(enum.StrEnum):
    """What a recorded :class:`DemoEvent` is about."""

    CONNECT = "connect"
    JOIN = "join"
    LEAVE = "leave"
    SIGNAL = "signal"
    CLOSE = "close"


_NEEDS_MEMBER: Final = frozenset({EventKind.JOIN, EventKind.LEAVE, EventKind.SIGNAL})


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One thing that happened on the demo server, recorded for tests.

    Attributes:
        kind: what happened.
        peer: the connection's remote address, ``host:port`` (``[host]:port`` for IPv6).
        time: ``loop.time()`` when it was recorded.
        meeting: the meeting (join, leave, signal; close when the connection was in one).
        participant: the participant id, with ``meeting``.
        headers: the handshake request headers as (lower-case name, value) pairs (connect and
            join only).
        target: a signal's ``to`` (a participant id or ``"*"``).
        code: the close code the client sent (1005 for a close frame without one, 1006 when the
            connection ended without a close frame from the client).
        reason: the close reason the client sent (empty without a close frame).
        path: the handshake request's target (path and query; connect and join only).

    Raises:
        ValueError: a join, leave or signal without meeting and participant, a signal without
            target, or a kind that is not an :class:`EventKind`.
    """

    kind: EventKind
    peer: str
    time: float
    meeting: str | None = None
    participant: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    code: int | None = None
    reason: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EventKind):
            raise ValueError(f"kind must be an EventKind, got {self.kind!r}")
        if self.kind in _NEEDS_MEMBER and (self.meeting is None or self.participant is None):
            raise ValueError(f"a {self.kind} event needs a meeting and a participant")
        if self.kind is EventKind.SIGNAL and self.target is None:
            raise ValueError("a signal event needs a target")

    def header(self, name: str) -> str | None:
        """Return the first value of a request header.

        Args:
            name: the header name, in any case (RFC 9110 section 5.1: names are case-insensitive).

        Returns:
            The value, or None when the header is absent or no headers were recorded.
        """
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


# --------------------------------------------------------------------------------------------
# The server (I/O edge)


class _State(enum.Enum):
    """Where one connection is.

    HANDSHAKE reads the HTTP upgrade; OPEN exchanges messages; CLOSING has sent its close frame
    (or answered the client's, refused the upgrade, or seen the client's end of stream): nothing is
    written any more and only a close frame is looked for; CLOSED is final. Any state can reach
    CLOSED, since TCP can drop at any time.
    """

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_TRANSITIONS: Final[dict[_State, frozenset[_State]]] = {
    _State.HANDSHAKE: frozenset({_State.OPEN, _State.CLOSING, _State.CLOSED}),
    _State.OPEN: frozenset({_State.CLOSING, _State.CLOSED}),
    _State.CLOSING: frozenset({_State.CLOSED}),
    _State.CLOSED: frozenset(),
}
# Module-level aliases: the hot path compares states by identity without a class lookup.
_OPEN: Final = _State.OPEN
_CLOSING: Final = _State.CLOSING

_TEXT: Final = Opcode.TEXT
_BINARY: Final = Opcode.BINARY
_CLOSE: Final = Opcode.CLOSE
_PING: Final = Opcode.PING
_PONG: Final = Opcode.PONG


def _format_peer(address: object) -> str:
    """Format a socket peer address as ``host:port`` (``[host]:port`` for IPv6)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unknown" if address is None else str(address)


def _text_frame(message: Mapping[str, Any]) -> bytes:
    """One unmasked text frame carrying a server message (RFC 6455 section 5.1).

    orjson's output is UTF-8 already, so it is framed as it is.
    """
    return encode_frame(_TEXT, orjson.dumps(message), mask=False)


class DemoConnection(asyncio.Protocol):
    """One client connection of the demo server, from the upgrade request to the end.

    The values of :attr:`DemoUpstream.rooms`. Read its attributes; only the server changes them.

    Attributes:
        transport: the connection's transport (``transport.abort()`` drops it without a close
            frame, as a crashed server would).
        peer: the remote address, ``host:port`` (``[host]:port`` for IPv6).
        subprotocol: the subprotocol selected at the upgrade, or None.
        headers: the upgrade request's headers, (lower-case name, value) pairs.
        path: the upgrade request's target (path and query).
        meeting: the meeting the connection is in, with ``participant`` its id there (both None
            outside a meeting).
    """

    __slots__ = (
        "_assembler",
        "_buffer",
        "_close_code",
        "_close_reason",
        "_discard",
        "_out",
        "_parser",
        "_paused",
        "_ping_payload",
        "_ping_sent",
        "_state",
        "_timer",
        "_upgraded",
        "_upstream",
        "headers",
        "meeting",
        "participant",
        "path",
        "peer",
        "subprotocol",
        "transport",
    )

    def __init__(self, upstream: DemoUpstream) -> None:
        self._upstream = upstream
        self._state = _State.HANDSHAKE
        self._parser: RequestParser | None = RequestParser()
        self._assembler: MessageAssembler | None = None
        self._buffer = bytearray()  # the start of a frame not yet whole
        self._out: list[bytes] = []  # frames queued in this loop iteration, written by _flush
        self._timer: asyncio.TimerHandle | None = None  # handshake, keepalive or close deadline
        self._upgraded = False
        self._paused = False  # the write buffer is over its high-water mark
        self._discard = False  # input is no longer read: after a fault, a close, or a refusal
        self._ping_payload: bytes | None = None  # the unanswered keepalive ping's payload
        self._ping_sent = 0.0
        self._close_code: int | None = None  # what the client's close frame said
        self._close_reason = ""
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.subprotocol: str | None = None
        self.headers: tuple[tuple[str, str], ...] = ()
        self.path: str | None = None
        # Both None, or both set while the connection holds the participant's slot in a meeting.
        self.meeting: str | None = None
        self.participant: str | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = transport  # type: ignore[assignment]
        self.peer = _format_peer(transport.get_extra_info("peername"))
        self._upstream._connections.add(self)
        self._set_timer(_HANDSHAKE_TIMEOUT, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state is _OPEN or state is _CLOSING:
            if not self._discard:
                self._frames(data)
        elif state is _State.HANDSHAKE:
            self._handshake(data)

    def eof_received(self) -> bool | None:
        # The client will send nothing more: nothing is written either, and returning None
        # closes the transport (connection_lost follows).
        if self._state is _OPEN:
            self._move(_CLOSING)
        self._discard = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._move(_State.CLOSED)
        self._buffer = bytearray()
        self._out = []
        self._upstream._connection_lost(self)

    def pause_writing(self) -> None:
        # The client is not reading what it is sent: stop reading what it sends until it does.
        self._paused = True
        if self._state is _OPEN:
            self._transport().pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._state is _OPEN:
            self._transport().resume_reading()

    # -- state --------------------------------------------------------------------------------

    def _move(self, target: _State) -> None:
        """Change state along _TRANSITIONS (staying put is allowed).

        Raises:
            RuntimeError: the table does not allow the move (a bug); nothing changes.
        """
        if target is not self._state and target not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"illegal transition {self._state.value} -> {target.value}")
        self._state = target

    def _transport(self) -> asyncio.Transport:
        transport = self.transport
        assert transport is not None
        return transport

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._upstream._event_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- handshake ----------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        upstream = self._upstream
        parser = self._parser
        assert parser is not None
        try:
            request = parser.feed(data)
            if request is None:
                return
            key = validate_upgrade(request)
            subprotocol = upstream._select_subprotocol(request.subprotocols())
        except HandshakeFailed as exc:
            self._refuse(exc.http_status, exc.client_text, exc.headers)
            return
        if upstream._draining:
            self._refuse(503, _SHUTDOWN_REASON)
            return
        self._parser = None
        self.subprotocol = subprotocol
        self.headers = request.headers
        self.path = request.target
        self._assembler = MessageAssembler(upstream._max_message)
        self._transport().write(build_accept_response(key, subprotocol))
        self._move(_OPEN)
        self._upgraded = True
        if upstream._ping_interval is None:
            self._cancel_timer()
        else:
            self._set_timer(upstream._ping_interval, self._ping)
        upstream._connected(self)
        if parser.rest:
            self._frames(parser.rest)  # frames the client sent right after its request

    def _refuse(self, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer the upgrade request with an HTTP error and end the connection."""
        self._parser = None
        self._discard = True
        self._move(_CLOSING)
        self._transport().write(build_error_response(status, text + "\n", headers))
        self._end()

    def _handshake_timed_out(self) -> None:
        self._refuse(408, "handshake timeout")

    # -- frames -------------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        """Read the client's frames: messages go to the server, control frames are answered."""
        buf = self._buffer
        chunk: bytes | bytearray = data
        if buf:
            buf += data
            chunk = buf
        assembler = self._assembler
        assert assembler is not None
        n = len(chunk)
        pos = 0
        try:
            while True:
                header = parse_header(chunk, pos, True)  # a client's frames must be masked
                if header is None:
                    break
                opcode = header.opcode
                if opcode < 8:
                    assembler.check(header)  # too big or out of sequence: refuse before reading
                start = pos + header.header_len
                end = start + header.length
                if end > n:
                    break
                payload = apply_mask(chunk[start:end], header.mask)  # type: ignore[arg-type]
                pos = end
                if opcode < 8:
                    message = assembler.add(header, payload)
                    # Messages that arrive after the server's close frame are dropped.
                    if message is not None and self._state is _OPEN:
                        self._upstream._message(self, message[0], message[1])
                elif opcode == _PING:
                    self._send(encode_frame(_PONG, payload, mask=False))
                elif opcode == _PONG:
                    self._ponged(payload)
                else:
                    self._close_received(payload)
                if self._discard:
                    return
        except ClientError as exc:
            # ProtocolViolation (1002, or 1007 for text that is not UTF-8) or MessageTooBig.
            logger.debug("%s: %s", self.peer, exc)
            self._fail(exc.close_code, exc.client_text)
            return
        if chunk is buf:
            del buf[:pos]
        elif pos < n:
            buf += memoryview(data)[pos:]

    def _close_received(self, payload: bytes) -> None:
        """The client's close frame: echo it if it starts the handshake, then close TCP.

        Raises:
            ProtocolViolation: a malformed close payload (RFC 6455 section 7.4).
        """
        code, reason = parse_close_payload(payload)
        # 1005: the close frame had no status code (RFC 6455 section 7.1.5).
        self._close_code = 1005 if code is None else code
        self._close_reason = reason
        if self._state is _OPEN:
            # RFC 6455 section 5.5.1: answer with a close frame, echoing the status code.
            self._out.append(encode_frame(_CLOSE, payload, mask=False))
            self._write_out()
            self._move(_CLOSING)
        self._discard = True
        self._end()  # section 7.1.1: the server closes the TCP connection first

    # -- sending ------------------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        """Queue one frame for this loop iteration's write, unless the connection is closing.

        A connection's frames of one iteration go out in one write call (one system call), so a
        receiver costs one write per iteration however many broadcasts reached it.
        """
        if self._state is not _OPEN:
            return
        out = self._out
        if not out:
            self._upstream._queued(self)
        out.append(frame)

    def _write_out(self) -> None:
        """Write the queued frames now."""
        out = self._out
        if out:
            self._out = []
            self._transport().writelines(out)

    def _flush(self) -> None:
        """Write the frames queued in this loop iteration; close a receiver that is too slow."""
        if self._state is not _OPEN:
            self._out = []
            return
        self._write_out()
        if self._transport().get_write_buffer_size() > self._upstream._max_buffer:
            self.close(TOO_SLOW_CLOSE_CODE, "too slow")

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the connection is dropped if it does not finish in time.

        Nothing is sent after the close frame, and the client's frames are read only to find its
        close frame. No-op unless the connection is open.

        Args:
            code: a close code allowed on the wire.
            reason: the close reason (cut to 123 bytes).
        """
        if self._state is not _OPEN:
            return
        self._out.append(encode_frame(_CLOSE, encode_close_payload(code, reason), mask=False))
        self._write_out()  # what was queued goes first, the close frame last
        self._move(_CLOSING)
        transport = self._transport()
        self._ping_payload = None
        if self._paused:
            transport.resume_reading()  # the client's answer must be read
        self._set_timer(_CLOSE_TIMEOUT, transport.abort)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection after a protocol fault: close frame, stop reading frames, end.

        RFC 6455 section 7.1.7: the server does not wait for the closing handshake.
        """
        self.close(code, reason)
        self._discard = True
        self._end()

    def _end(self) -> None:
        """End the stream after what was written; drop the connection if it lingers.

        A half-close: the client reads everything up to the end of the stream and then closes its
        side, and what it sends meanwhile is read and ignored, so no reset can destroy the last
        bytes before it has read them. TLS cannot half-close, so it closes.
        """
        transport = self._transport()
        if not transport.is_closing():
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        self._set_timer(_CLOSE_TIMEOUT, transport.abort)

    # -- keepalive ----------------------------------------------------------------------------

    def _ping(self) -> None:
        """Send a keepalive ping; wait ``ping_timeout`` for its pong (or send the next later)."""
        if self._state is not _OPEN:
            return
        upstream = self._upstream
        interval = upstream._ping_interval
        assert interval is not None  # no ping is scheduled without one
        payload = os.urandom(4)
        self._send(encode_frame(_PING, payload, mask=False))
        if upstream._ping_timeout is None:
            self._set_timer(interval, self._ping)  # pongs are not awaited
            return
        self._ping_payload = payload
        self._ping_sent = upstream._event_loop().time()
        self._set_timer(upstream._ping_timeout, self._ping_timed_out)

    def _ponged(self, payload: bytes) -> None:
        """A pong: when it answers the keepalive ping, schedule the next ping."""
        if self._ping_payload is None or payload != self._ping_payload or self._state is not _OPEN:
            return  # unsolicited pongs are allowed (RFC 6455 section 5.5.3)
        self._ping_payload = None
        upstream = self._upstream
        assert upstream._ping_interval is not None
        due = self._ping_sent + upstream._ping_interval - upstream._event_loop().time()
        self._set_timer(max(due, 0.0), self._ping)

    def _ping_timed_out(self) -> None:
        if self._state is _OPEN:
            # 1011, as the websockets library sends: the server gives up on the connection.
            self._fail(1011, "keepalive ping timeout")

    def _shutdown(self) -> None:
        """The server is closing: 503 to an upgrade in progress, 1001 to an open connection."""
        if self._state is _State.HANDSHAKE:
            self._refuse(503, _SHUTDOWN_REASON)
        else:
            self.close(1001, _SHUTDOWN_REASON)


class DemoUpstream:
    """The demo meeting server.

    Use ``async with DemoUpstream() as upstream:`` (or :meth:`start` and :meth:`close`); the
    address is known after start (``port=0`` picks a free port).

    Args:
        host: the interface to listen on.
        port: the TCP port; 0 picks a free one.
        subprotocols: the subprotocols supported; the first one the client offers that is in
            this list is selected.
        require_subprotocol: refuse the handshake (HTTP 400) unless a supported subprotocol is
            offered; otherwise a connection proceeds without one.
        max_size: the largest message accepted, in bytes (None: no limit); larger ones close the
            connection with 1009.
        ping_interval: seconds between keepalive pings (None disables them).
        ping_timeout: seconds to wait for a pong before closing with 1011 (None: pings are sent
            and pongs never awaited).
        max_buffer: the most bytes a connection's write buffer may hold; a receiver past it is
            closed with 1013 (module docstring).
        backlog: the listen backlog (kept large for join storms).
        record_events: keep a bounded record of :class:`DemoEvent` (off for benchmarks).
        max_events: how many events the record keeps (the oldest are dropped).
        ssl: a server TLS context to listen on wss:// (tests of a TLS upstream).

    Raises:
        ValueError: an argument is out of range or a subprotocol is not an HTTP token.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        subprotocols: Sequence[str] = DEFAULT_SUBPROTOCOLS,
        require_subprotocol: bool = False,
        max_size: int | None = 64 * 2**20,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_buffer: int = _DEFAULT_MAX_BUFFER,
        backlog: int = _DEFAULT_BACKLOG,
        record_events: bool = True,
        max_events: int = _DEFAULT_MAX_EVENTS,
        ssl: SSLContext | None = None,
    ) -> None:
        self._ssl = ssl
        if isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port!r}")
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_size must be positive or None, got {max_size!r}")
        for name, seconds in (("ping_interval", ping_interval), ("ping_timeout", ping_timeout)):
            if seconds is not None and not seconds > 0:
                raise ValueError(f"{name} must be positive or None, got {seconds!r}")
        if max_buffer <= 0:
            raise ValueError(f"max_buffer must be positive, got {max_buffer!r}")
        if backlog <= 0:
            raise ValueError(f"backlog must be positive, got {backlog!r}")
        if max_events <= 0:
            raise ValueError(f"max_events must be positive, got {max_events!r}")
        supported = tuple(Subprotocol(name) for name in subprotocols)
        validate_subprotocols(supported)
        if require_subprotocol and not supported:
            raise ValueError("require_subprotocol needs at least one subprotocol")

        self._bind_host = host
        self._bind_port = port
        self._subprotocols: tuple[str, ...] = supported
        self._supported = frozenset(supported)
        self._require_subprotocol = require_subprotocol
        # MessageAssembler takes a number; no message can be larger than this one.
        self._max_message = 2**63 if max_size is None else max_size
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_buffer = max_buffer
        self._backlog = backlog

        self._rooms: dict[str, dict[str, DemoConnection]] = {}
        self._connections: set[DemoConnection] = set()
        self._events: deque[DemoEvent] | None = deque(maxlen=max_events) if record_events else None
        self._waiters: list[tuple[Callable[[DemoEvent], bool], asyncio.Future[DemoEvent]]] = []
        self._flush_list: list[DemoConnection] = []  # connections with frames queued
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drained: asyncio.Future[None] | None = None  # set by close(), done when all gone

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening.

        Raises:
            RuntimeError: already started.
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the demo upstream is already started")
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: DemoConnection(self),
            self._bind_host,
            self._bind_port,
            backlog=self._backlog,
            ssl=self._ssl,
        )

    async def close(self) -> None:
        """Stop listening, close every connection with 1001 and wait until they are gone.

        An upgrade still in progress is answered 503. A connection that has not finished its
        closing handshake within 5 s is dropped, so this returns within about that long.
        Idempotent; pending :meth:`wait_for_event` calls keep waiting until their timeout.
        """
        server = self._server
        if server is None or self._draining:
            return
        self._draining = True
        server.close()
        for connection in list(self._connections):
            connection._shutdown()
        if self._connections:
            self._drained = self._event_loop().create_future()
            await self._drained
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (set by :meth:`start`)."""
        loop = self._loop
        assert loop is not None
        return loop

    # -- address ------------------------------------------------------------------------------

    def _sockname(self) -> tuple[Any, ...]:
        if self._server is None:
            raise RuntimeError("the demo upstream is not started")
        sockname: tuple[Any, ...] = self._server.sockets[0].getsockname()
        return sockname

    @property
    def host(self) -> str:
        """The address listened on (the first socket's), known after :meth:`start`."""
        return str(self._sockname()[0])

    @property
    def port(self) -> int:
        """The port listened on, known after :meth:`start`."""
        return int(self._sockname()[1])

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS), an IPv6 host in brackets (RFC 3986 3.2.2)."""
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'wss' if self._ssl else 'ws'}://{host}:{self.port}"

    # -- inspection ---------------------------------------------------------------------------

    @property
    def rooms(self) -> Mapping[str, Mapping[str, DemoConnection]]:
        """A read-only snapshot: meeting -> participant id -> its connection."""
        return MappingProxyType(
            {meeting: MappingProxyType(dict(room)) for meeting, room in self._rooms.items()}
        )

    def participants(self, meeting: str) -> list[str]:
        """Return the participant ids in ``meeting``, sorted (empty if there is no such meeting)."""
        return sorted(self._rooms.get(meeting, ()))

    @property
    def events(self) -> list[DemoEvent]:
        """The recorded events, oldest first (a copy; empty when recording is off)."""
        return [] if self._events is None else list(self._events)

    def clear_events(self) -> None:
        """Forget the recorded events (waiters keep waiting for new ones)."""
        if self._events is not None:
            self._events.clear()

    async def wait_for_event(
        self, predicate: Callable[[DemoEvent], bool], timeout: float = 10.0
    ) -> DemoEvent:
        """Return the first event matching ``predicate``, already recorded or yet to come.

        Args:
            predicate: tells whether an event is the one wanted; an exception it raises is
                raised here.
            timeout: seconds to wait for a future event.

        Returns:
            The event.

        Raises:
            RuntimeError: recording is off (``record_events=False``).
            TimeoutError: no matching event within ``timeout``.
        """
        if self._events is None:
            raise RuntimeError("events are not recorded (record_events=False)")
        for event in self._events:
            if predicate(event):
                return event
        future: asyncio.Future[DemoEvent] = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _record(
        self,
        kind: EventKind,
        connection: DemoConnection,
        *,
        target: str | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Append an event (the caller checked that recording is on) and wake its waiters."""
        assert self._events is not None
        with_request = kind is EventKind.CONNECT or kind is EventKind.JOIN
        event = DemoEvent(
            kind,
            connection.peer,
            self._event_loop().time(),
            connection.meeting,
            connection.participant,
            connection.headers if with_request else (),
            target,
            code,
            reason,
            connection.path if with_request else None,
        )
        self._events.append(event)
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                matched = predicate(event)
            except Exception as exc:  # a test's predicate failed: report it to that test
                future.set_exception(exc)
                continue
            if matched:
                future.set_result(event)

    # -- connections --------------------------------------------------------------------------

    def _select_subprotocol(self, offered: Sequence[str]) -> str | None:
        """Pick the first offered subprotocol that is supported (RFC 6455 section 4.2.2).

        Raises:
            HandshakeFailed: none is supported and one is required (HTTP 400).
        """
        for subprotocol in offered:
            if subprotocol in self._supported:
                return subprotocol
        if self._require_subprotocol:
            text = "no supported subprotocol; expected one of " + ", ".join(self._subprotocols)
            raise HandshakeFailed(text, client_text=text)
        return None

    def _queued(self, connection: DemoConnection) -> None:
        """A connection has its first frame queued in this loop iteration."""
        if not self._flush_list:
            # Run once the loop has handled this iteration's I/O, so that everything the
            # iteration's messages produced for one receiver goes out in one write.
            self._event_loop().call_soon(self._flush)
        self._flush_list.append(connection)

    def _flush(self) -> None:
        flush_list, self._flush_list = self._flush_list, []
        for connection in flush_list:
            connection._flush()

    def _connected(self, connection: DemoConnection) -> None:
        """A connection was upgraded."""
        if self._events is not None:
            self._record(EventKind.CONNECT, connection)

    def _connection_lost(self, connection: DemoConnection) -> None:
        """A connection is gone: record how it closed and take it out of its meeting."""
        self._connections.discard(connection)
        if connection._upgraded:
            if self._events is not None:
                # 1006: closed without a close frame from the client (RFC 6455 section 7.1.5).
                code = connection._close_code
                self._record(
                    EventKind.CLOSE,
                    connection,
                    code=1006 if code is None else code,
                    reason=connection._close_reason,
                )
            self._leave(connection)
        drained = self._drained
        if drained is not None and not self._connections and not drained.done():
            drained.set_result(None)

    def _message(self, connection: DemoConnection, opcode: int, payload: bytes) -> None:
        """A whole message from an open connection."""
        if opcode == _TEXT:
            self._on_text(connection, payload)
        elif connection.meeting is None:
            self._send_error(connection, "binary message before join")
        else:
            # Relayed unchanged to every other participant of the meeting.
            self._broadcast(connection.meeting, encode_frame(_BINARY, payload, mask=False),
                            connection)

    def _on_text(self, connection: DemoConnection, text: bytes) -> None:
        try:
            message = parse_message(text)
        except PolicyViolation as exc:
            self._send_error(connection, exc.client_text)
            return
        match message:
            case SignalMessage():
                self._signal(connection, message)
            case EchoMessage():
                connection._send(_text_frame(message.message))
            case JoinMessage():
                self._join(connection, message)
            case LeaveMessage():
                if connection.meeting is None:
                    self._send_error(connection, "not in a meeting")
                else:
                    self._leave(connection)
            case CloseMessage():
                connection.close(message.code, message.reason)
            case _:
                assert_never(message)

    def _send_error(self, connection: DemoConnection, reason: str) -> None:
        connection._send(_text_frame({"type": "error", "reason": reason}))

    def _broadcast(self, meeting: str, frame: bytes, sender: DemoConnection | None) -> None:
        """Write one encoded frame to everyone in ``meeting`` but ``sender``; never waits."""
        for receiver in self._rooms[meeting].values():
            if receiver is not sender:
                receiver._send(frame)

    def _join(self, connection: DemoConnection, message: JoinMessage) -> None:
        if connection.meeting is not None:
            self._leave(connection)
        meeting, participant = message.meeting, message.participant
        room = self._rooms.get(meeting)
        if room is None:
            room = self._rooms[meeting] = {}
        others = sorted(p for p in room if p != participant)
        previous = room.get(participant)
        if previous is None:
            if room:
                notice = {"type": "participant-joined", "meeting": meeting,
                          "participant": participant}
                self._broadcast(meeting, _text_frame(notice), None)
        else:
            # The participant never went away, so the others are told nothing (a reconnect that
            # beat the old connection's timeout); the old connection just loses its slot.
            previous.meeting = previous.participant = None
            previous.close(REPLACED_CLOSE_CODE, REPLACED_CLOSE_REASON)
        room[participant] = connection
        connection.meeting, connection.participant = meeting, participant
        if self._events is not None:
            self._record(EventKind.JOIN, connection)
        connection._send(
            _text_frame(
                {
                    "type": "joined",
                    "meeting": meeting,
                    "participant": participant,
                    "participants": others,
                }
            )
        )

    def _signal(self, connection: DemoConnection, message: SignalMessage) -> None:
        meeting = connection.meeting
        if meeting is None:
            self._send_error(connection, "signal before join")
            return
        frame = _text_frame({"type": "signal", "from": connection.participant,
                             "data": message.data})
        if message.to == BROADCAST_TARGET:
            self._broadcast(meeting, frame, connection)
        else:
            target = self._rooms[meeting].get(message.to)
            if target is None:
                self._send_error(connection, f"no participant {message.to} in meeting {meeting}")
                return
            target._send(frame)
        if self._events is not None:
            self._record(EventKind.SIGNAL, connection, target=message.to)

    def _leave(self, connection: DemoConnection) -> None:
        """Take the connection out of its meeting (if any) and tell the others."""
        meeting, participant = connection.meeting, connection.participant
        if meeting is None or participant is None:
            return
        room = self._rooms[meeting]
        del room[participant]
        if room:
            notice = {"type": "participant-left", "meeting": meeting, "participant": participant}
            self._broadcast(meeting, _text_frame(notice), None)
        else:
            del self._rooms[meeting]
        if self._events is not None:
            self._record(EventKind.LEAVE, connection)
        connection.meeting = connection.participant = None


# --------------------------------------------------------------------------------------------
# Running standalone


async def _serve_until_signalled(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; a second signal cancels a slow shutdown."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()
    assert main is not None

    def on_signal() -> None:
        if stop.is_set():
            main.cancel()
        else:
            stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    logger.debug("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
    try:
        async with DemoUpstream(host, port, record_events=False) as upstream:
            logger.info("demo upstream listening on %s", upstream.url)
            await stop.wait()
            logger.info("demo upstream stopping")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop is installed, else None (the default loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(host: str, port: int) -> None:
    """Run the demo upstream until SIGINT or SIGTERM, under uvloop when it is installed.

    Args:
        host: the interface to listen on.
        port: the TCP port (0 picks a free one; the log line names it).

    Raises:
        OSError: the address cannot be bound.
    """
    main: Coroutine[Any, Any, None] = _serve_until_signalled(host, port)
    # asyncio.run() takes loop_factory only from 3.12; Runner has it in 3.11.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            runner.run(main)
        except asyncio.CancelledError:
            logger.warning("demo upstream shutdown forced by a second signal")
