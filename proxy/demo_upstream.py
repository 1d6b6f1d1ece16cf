"""The demo meeting server: a small JSON-over-WebSocket signaling server with rooms.

It is the default upstream of the proxy (``geogate demo-upstream``) and the upstream of most tests
and benchmarks, so it must hold thousands of participants in one process: meetings and their
participants live in dicts, fan-out uses :func:`websockets.asyncio.server.broadcast` (one write per
receiver, no task or future per message) and JSON goes through ``orjson``.

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
drops leaves its meeting. Empty meetings are removed.

Delivery to other participants does not wait for their write buffers (``broadcast`` semantics):
one slow receiver never stalls a sender or a meeting, and ``ping_timeout`` bounds how long a dead
receiver keeps buffering. Replies to the sender itself (joined, echo, error) are awaited, so a
client that floods without reading is paused by TCP flow control.

Message parsing is pure (:func:`parse_message` returns one of the frozen message classes); the
server class owns the sockets, the room table and the event record that tests wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self, TypeAlias, assert_never

import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.headers import validate_subprotocols
from websockets.typing import Subprotocol

from proxy.errors import PolicyViolation

__all__ = [
    "DEFAULT_SUBPROTOCOLS",
    "MAX_ID_LENGTH",
    "REPLACED_CLOSE_CODE",
    "REPLACED_CLOSE_REASON",
    "ClientMessage",
    "CloseMessage",
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
BROADCAST_TARGET: Final = "*"

# Close codes an endpoint may put in a close frame (RFC 6455 section 7.4.1 and the IANA
# registry): 1004 is reserved, 1005, 1006 and 1015 must never be sent; 3000-4999 are for
# libraries and applications (section 7.4.2).
_SENDABLE_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)
# A close frame is a control frame: payload at most 125 bytes, 2 of them the code
# (RFC 6455 section 5.5).
_MAX_CLOSE_REASON_BYTES: Final = 123
# The listen backlog: 100 overflowed under a 200-connection join storm; SYNs beyond the backlog
# are dropped and retried after a second, which shows up as join latency, not as errors.
_DEFAULT_BACKLOG: Final = 4096
_DEFAULT_MAX_EVENTS: Final = 100_000

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
            or not (code in _SENDABLE_CLOSE_CODES or 3000 <= code <= 4999)
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
        headers: the handshake request headers as (name, value) pairs (connect and join only).
        target: a signal's ``to`` (a participant id or ``"*"``).
        code: the close code the client sent (1006 when the connection dropped without a close
            frame; None when the server stopped before the connection closed).
        reason: the close reason the client sent.
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


class _Session:
    """One connection's place in the room table; mutable, owned by its connection handler."""

    __slots__ = ("connection", "headers", "meeting", "participant", "path", "peer")

    def __init__(self, connection: ServerConnection, peer: str) -> None:
        self.connection = connection
        self.peer = peer
        self.headers: tuple[tuple[str, str], ...] = ()
        self.path: str | None = None
        # Both None, or both set while the session holds the participant's slot in the meeting.
        self.meeting: str | None = None
        self.participant: str | None = None


def _format_peer(address: object) -> str:
    """Format a socket peer address as ``host:port`` (``[host]:port`` for IPv6)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unknown" if address is None else str(address)


def _dumps(message: Mapping[str, Any]) -> bytes:
    """Serialise a server message (UTF-8 JSON, sent as a text frame without re-encoding)."""
    return orjson.dumps(message)


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
        ping_timeout: seconds to wait for a pong before dropping the connection (None: forever).
        compression: negotiate permessage-deflate (RFC 7692). Off by default: it costs CPU per
            message and benchmarks measure the proxy, not zlib.
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
        compression: bool = False,
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
        self._subprotocols = supported
        self._supported = frozenset(supported)
        self._require_subprotocol = require_subprotocol
        self._max_size = max_size
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._compression = compression
        self._backlog = backlog

        self._rooms: dict[str, dict[str, _Session]] = {}
        self._events: deque[DemoEvent] | None = deque(maxlen=max_events) if record_events else None
        self._waiters: list[tuple[Callable[[DemoEvent], bool], asyncio.Future[DemoEvent]]] = []
        # Closing a replaced connection waits for its closing handshake; it runs beside the
        # new connection's handler rather than delaying the join.
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

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
        self._server = await serve(
            self._handle,
            self._bind_host,
            self._bind_port,
            subprotocols=self._subprotocols,
            select_subprotocol=self._select_subprotocol,
            compression="deflate" if self._compression else None,
            max_size=self._max_size,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            backlog=self._backlog,
            ssl=self._ssl,
        )

    async def close(self) -> None:
        """Stop listening, close every connection with 1001 and wait for the handlers.

        Idempotent; pending :meth:`wait_for_event` calls keep waiting until their timeout.
        """
        server = self._server
        if server is None:
            return
        server.close()
        await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

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
    def rooms(self) -> Mapping[str, Mapping[str, ServerConnection]]:
        """A read-only snapshot: meeting -> participant id -> its connection."""
        return MappingProxyType(
            {
                meeting: MappingProxyType(
                    {participant: session.connection for participant, session in room.items()}
                )
                for meeting, room in self._rooms.items()
            }
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
        session: _Session,
        *,
        target: str | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Append an event (the caller checked that recording is on) and wake its waiters."""
        assert self._events is not None and self._loop is not None
        event = DemoEvent(
            kind,
            session.peer,
            self._loop.time(),
            session.meeting,
            session.participant,
            session.headers if kind is EventKind.CONNECT or kind is EventKind.JOIN else (),
            target,
            code,
            reason,
            session.path if kind is EventKind.CONNECT or kind is EventKind.JOIN else None,
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

    # -- handshake ----------------------------------------------------------------------------

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """Pick the first offered subprotocol that is supported (RFC 6455 section 4.2.2).

        Raises:
            NegotiationError: none is supported and one is required (websockets answers 400).
        """
        for subprotocol in offered:
            if subprotocol in self._supported:
                return subprotocol
        if self._require_subprotocol:
            raise NegotiationError(
                "no supported subprotocol; expected one of " + ", ".join(self._subprotocols)
            )
        return None

    # -- connection handler -------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        """Serve one connection until it closes, then take it out of its meeting."""
        session = _Session(connection, _format_peer(connection.remote_address))
        recording = self._events is not None
        if recording:
            request = connection.request
            if request is not None:
                session.headers = tuple(request.headers.raw_items())
                session.path = request.path
            self._record(EventKind.CONNECT, session)
        try:
            async for message in connection:
                if isinstance(message, str):
                    await self._on_text(session, message)
                else:
                    await self._on_binary(session, message)
        except ConnectionClosed:
            pass  # a drop (no close frame) or our own reply to a closed sender
        finally:
            if recording:
                self._record(
                    EventKind.CLOSE,
                    session,
                    code=connection.close_code,
                    reason=connection.close_reason,
                )
            self._leave(session)

    async def _on_text(self, session: _Session, text: str) -> None:
        try:
            message = parse_message(text)
        except PolicyViolation as exc:
            await self._send_error(session, exc.client_text)
            return
        match message:
            case SignalMessage():
                await self._signal(session, message)
            case EchoMessage():
                await session.connection.send(_dumps(message.message), text=True)
            case JoinMessage():
                await self._join(session, message)
            case LeaveMessage():
                if session.meeting is None:
                    await self._send_error(session, "not in a meeting")
                else:
                    self._leave(session)
            case CloseMessage():
                await session.connection.close(message.code, message.reason)
            case _:
                assert_never(message)

    async def _on_binary(self, session: _Session, data: bytes) -> None:
        """Relay a binary message unchanged to every other participant of the meeting."""
        if session.meeting is None:
            await self._send_error(session, "binary message before join")
            return
        broadcast(self._others(session), data)

    async def _send_error(self, session: _Session, reason: str) -> None:
        await session.connection.send(_dumps({"type": "error", "reason": reason}), text=True)

    def _others(self, session: _Session) -> Iterable[ServerConnection]:
        """The connections of the other participants in the session's meeting."""
        assert session.meeting is not None
        room = self._rooms[session.meeting]
        return (other.connection for other in room.values() if other is not session)

    async def _join(self, session: _Session, message: JoinMessage) -> None:
        if session.meeting is not None:
            self._leave(session)
        meeting, participant = message.meeting, message.participant
        room = self._rooms.get(meeting)
        if room is None:
            room = self._rooms[meeting] = {}
        others = sorted(p for p in room if p != participant)
        previous = room.get(participant)
        if previous is None:
            notice = _dumps(
                {"type": "participant-joined", "meeting": meeting, "participant": participant}
            )
            broadcast((other.connection for other in room.values()), notice, text=True)
        else:
            # The participant never went away, so the others are told nothing (a reconnect that
            # beat the old connection's timeout); the old connection just loses its slot.
            previous.meeting = previous.participant = None
            task = asyncio.create_task(
                previous.connection.close(REPLACED_CLOSE_CODE, REPLACED_CLOSE_REASON)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        room[participant] = session
        session.meeting, session.participant = meeting, participant
        if self._events is not None:
            self._record(EventKind.JOIN, session)
        await session.connection.send(
            _dumps(
                {
                    "type": "joined",
                    "meeting": meeting,
                    "participant": participant,
                    "participants": others,
                }
            ),
            text=True,
        )

    async def _signal(self, session: _Session, message: SignalMessage) -> None:
        meeting = session.meeting
        if meeting is None:
            await self._send_error(session, "signal before join")
            return
        room = self._rooms[meeting]
        payload = _dumps({"type": "signal", "from": session.participant, "data": message.data})
        if message.to == BROADCAST_TARGET:
            broadcast(self._others(session), payload, text=True)
        else:
            target = room.get(message.to)
            if target is None:
                await self._send_error(session, f"no participant {message.to} in meeting {meeting}")
                return
            # broadcast() to one: a slow receiver must not stall the sender (module docstring).
            broadcast((target.connection,), payload, text=True)
        if self._events is not None:
            self._record(EventKind.SIGNAL, session, target=message.to)

    def _leave(self, session: _Session) -> None:
        """Take the session out of its meeting (if any) and tell the others."""
        meeting, participant = session.meeting, session.participant
        if meeting is None or participant is None:
            return
        room = self._rooms[meeting]
        del room[participant]
        if room:
            notice = _dumps(
                {"type": "participant-left", "meeting": meeting, "participant": participant}
            )
            broadcast((other.connection for other in room.values()), notice, text=True)
        else:
            del self._rooms[meeting]
        if self._events is not None:
            self._record(EventKind.LEAVE, session)
        session.meeting = session.participant = None


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
