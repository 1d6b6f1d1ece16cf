"""The ``janus`` adapter: Janus (Meetecho) signaling on one WebSocket, VideoRoom rooms as meetings.

Model. Janus speaks JSON over WebSocket (subprotocol ``janus-protocol``). One WebSocket carries
sessions (``create``), each session has plugin handles (``attach``), and a VideoRoom handle is in at
most one room (``join`` as publisher or subscriber, or ``joinandconfigure``). The meeting is the
room id as a string (``1234`` and ``"1234"`` both name meeting ``"1234"``: Janus' numeric and
``string_ids`` modes). The participant is the session, named ``"<session_id> (<display>)"`` when the
join carries a display name, for the audit trail. Pure: no I/O; time comes from a clock function.

Gating (client to upstream). Every VideoRoom request that carries a ``room`` is gated, before it is
forwarded, when it is a join (``join``, ``joinandconfigure``) or when its room differs from the
handle's own room (which also covers every room request of a handle that is in no room yet): the
verdict is a ``Gate`` with one ``Join``. A barred request is never forwarded: the client gets, in
Janus' own shape, the ``ack`` and then the plugin ``event`` for its transaction, with
``error_code`` :data:`DENIED_ERROR_CODE` (451, after HTTP 451 of RFC 7725; no Janus core or
VideoRoom error uses it), ``error`` (the notice text) and ``geogate`` (the notice). Its other
handles are untouched. Handles of other plugins, when the ``attach`` was seen, are not gated.

Reconnects. ``{"janus":"claim","session_id":S}`` moves an existing session to the WebSocket that
sends it (Janus' ``reclaim_session_timeout``). It is gated as a resume of every room the session's
handles are in (or were admitted to), with the new connection's address: a claim is all or
nothing in Janus, so one barred room refuses the claim (a Janus ``error`` with code 451). The
session's rooms are shared by every connection through :class:`JanusAdapter`, which keeps a
closed connection's sessions for ``reclaim_timeout`` seconds (at most ``max_sessions`` of them,
oldest dropped first). A claim of a session the adapter does not know (never seen, expired,
dropped from that memory, or from before a proxy restart) is answered like Janus answers an
expired one (error 458, "No such session"), because its rooms cannot be checked; the client then
creates a new session and joins again, through the gate. Fail closed.

Learning. Session ids come from ``success`` replies to ``create`` and handle ids from ``success``
replies to ``attach``, matched by transaction in a bounded map whose entries expire. A handle's
room is set when its join is admitted and confirmed (or corrected) by the ``joined``/``attached``
event; an error reply to the join undoes it. A handle leaves its room on its own ``leaving: "ok"``
(also when kicked), ``left: "ok"`` or ``destroyed`` event, is forgotten on ``detached`` or on a
``success`` reply to ``detach``, and a session is forgotten on a ``success`` reply to ``destroy``
or a ``timeout`` event. A ``hangup`` only closes the PeerConnection: the handle stays in its room
(checked against Janus 1.1.2), so it changes nothing here.

Removal. :meth:`JanusConnection.remove` takes the connection's handles out of one room only: for
each, a VideoRoom ``leave`` then a ``detach`` upstream, then a ``destroy`` of each session left
without handles; the client gets, for each handle, a plugin ``event`` with ``error_code`` 451
and then ``detached``. Proxy-made requests carry transactions ``geogate-<random>-<n>``; upstream
replies to them (``ack``, ``success``, ``event``, ``error``) are dropped, and so is everything
upstream sends for a removed handle until its ``detached``. The WebSocket and the other rooms stay
up. Janus does not keep the order of requests (plugin messages go through a task pool): the
``detach`` may run before the ``leave``, which then answers error 459, or an ``ack`` and no
event; the handle leaves the room either way, when it is detached.

The hot path. :meth:`JanusConnection.from_client` and :meth:`JanusConnection.from_upstream` see
every text message of the connection; a message is parsed (with orjson) only when it contains a
needle, and everything else is forwarded untouched:

* client: a backslash, or ``"room"``, ``"claim"``, ``"create"``, ``"attach"``, ``"detach"``,
  ``"destroy"`` (quotes included). Never parsed: keepalives, trickles, ``configure``/``publish``/
  ``start``/``leave``/``unpublish`` requests without SDP, ``hangup``, ``info``. JSON lets a string
  be spelled with escapes (RFC 8259 section 7), so ``"r\\u006fom"`` is ``"room"`` to Janus: any
  backslash triggers a parse. A client message with a needle that orjson cannot parse is not
  forwarded: it is answered with Janus' own "Invalid Janus API request" error (454). Janus' parser
  (jansson) accepts documents orjson refuses (nesting deeper than 1024 levels, up to 2048), so
  forwarding them would let a join through unchecked.
* upstream: a backslash, ``"joined"``, ``"attached"``, ``"leaving"``, ``"left"``,
  ``"destroyed"``, ``"detached"``, ``"timeout"`` and the proxy's transaction prefix, always;
  ``"success"`` and ``"error"`` only while a tracked transaction awaits its reply; a removed
  handle's id only until its ``detached``. Never parsed: ``ack``s, other participants'
  ``publishers``/``joining``/``unpublished``/``configured``/``talking`` events without SDP,
  ``webrtcup``, ``media``, ``slowlink``, ``hangup``. Janus writes the keys and values matched here
  in plain ASCII (jansson escapes only quotes, backslashes and control characters).

The backslash needle costs nothing extra where it matters: messages carrying SDP (offers,
answers) always have one (``\\r\\n``), and parsing such a multi-kilobyte message once with orjson
costs less than scanning it for every other needle (measured on CPython 3.11: one orjson parse of
3.7 kB, about 2.5 us; each ``bytes.find`` over it, about 1 to 2 us).

Normal Janus behaviour is forwarded as is: keepalive ``ack``s, an ``ack`` arriving after the
``event`` it acknowledges, ``unpublished`` sent twice, plugin errors inside ``success`` (synchronous
requests) or ``event`` (asynchronous ones) frames.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from proxy.adapters.base import (
    ClientVerdict,
    Drop,
    Forward,
    Gate,
    Join,
    JoinKind,
    Removal,
    Reply,
    UpstreamVerdict,
)
from proxy.adapters.json import MAX_ID_LENGTH

__all__ = [
    "DENIED_ERROR_CODE",
    "JANUS_SUBPROTOCOL",
    "VIDEOROOM",
    "JanusAdapter",
    "JanusConnection",
]

#: The WebSocket subprotocol Janus requires (its WebSocket transport refuses others).
JANUS_SUBPROTOCOL: Final = "janus-protocol"

#: The VideoRoom plugin's package name, as in ``attach`` requests and ``plugindata``.
VIDEOROOM: Final = "janus.plugin.videoroom"

DENIED_ERROR_CODE: Final = 451
"""The error code of a barred join, claim or removal (RFC 7725's status; unused by Janus)."""

# Janus core error codes (janus/apierror.h) used in replies made by the proxy.
_INVALID_JSON: Final = 454
_SESSION_NOT_FOUND: Final = 458
# VideoRoom's "invalid element" (JANUS_VIDEOROOM_ERROR_INVALID_ELEMENT).
_INVALID_ELEMENT: Final = 430

_DEFAULT_NOTICE: Final = "You cannot join this meeting from your location."
_JOIN_REQUESTS: Final = frozenset({"join", "joinandconfigure"})
_MEMBERSHIP: Final = frozenset({"joined", "attached"})
_MAX_DISPLAY: Final = 64

# The backslash first: one byte (memchr-fast) standing for every JSON escape, and the needle that
# SDP-carrying messages hit at once (see "The hot path" in the module docstring).
_CLIENT_NEEDLES: Final = (
    b"\\", b'"room"', b'"claim"', b'"create"', b'"attach"', b'"detach"', b'"destroy"',
)  # fmt: skip
_UPSTREAM_NEEDLES: Final = (
    b"\\", b'"joined"', b'"attached"', b'"leaving"', b'"left"', b'"destroyed"', b'"detached"',
    b'"timeout"',
)  # fmt: skip

# Verdicts carry no data: one instance each, no allocation per message.
_FORWARD: Final = Forward()
_DROP: Final = Drop()


class _Await(enum.StrEnum):
    """What a tracked client transaction is waiting for."""

    CREATE = "create"
    ATTACH = "attach"
    JOIN = "join"
    DETACH = "detach"
    DESTROY = "destroy"
    CLAIM = "claim"


@dataclass(frozen=True, slots=True)
class _Pending:
    """A client request whose reply changes what the adapter knows."""

    kind: _Await
    session: int | None = None
    handle: int | None = None
    plugin: str | None = None
    expires: float = 0.0


@dataclass(frozen=True, slots=True)
class _JoinToken:
    """The ``Gate`` token of a gated VideoRoom request."""

    session: int | None
    handle: int | None
    transaction: str | None
    room: int | str
    display: str | None
    joining: bool


@dataclass(frozen=True, slots=True)
class _ClaimToken:
    """The ``Gate`` token of a gated ``claim``."""

    session: int
    transaction: str | None


class _Handle:
    """A plugin handle: its plugin, its room, the room a join was admitted to."""

    __slots__ = ("display", "id", "pending", "plugin", "room")

    def __init__(self, handle_id: int, plugin: str | None = None) -> None:
        self.id = handle_id
        #: None when the ``attach`` was not seen (treated as VideoRoom: gated).
        self.plugin = plugin
        #: The room Janus confirmed (``joined``/``attached``), as Janus spells it.
        self.room: int | str | None = None
        #: The room of an admitted join awaiting Janus' reply.
        self.pending: int | str | None = None
        self.display: str | None = None

    def rooms(self) -> tuple[int | str, ...]:
        """The handle's room: the confirmed one, else the one its admitted join asked for.

        A VideoRoom handle that is (or was) in a room cannot join another (Janus answers 425),
        so a join pending on such a handle does not count.
        """
        if self.room is not None:
            return (self.room,)
        return () if self.pending is None else (self.pending,)

    def in_meeting(self, meeting: str) -> bool:
        return any(str(room) == meeting for room in self.rooms())


class _Session:
    """A Janus session: its handles, and the live connection it belongs to (None: parked)."""

    __slots__ = ("handles", "id", "owner")

    def __init__(self, session_id: int, owner: JanusConnection | None) -> None:
        self.id = session_id
        self.owner = owner
        self.handles: dict[int, _Handle] = {}


class JanusAdapter:
    """The Janus adapter: shared by every connection; remembers sessions for reconnects.

    Args:
        reclaim_timeout: seconds a closed connection's sessions are remembered for a ``claim``;
            set it to Janus' ``reclaim_session_timeout`` plus a few seconds (Janus' watchdog
            destroys an unclaimed session up to about two seconds late). 0 forgets them at once.
        max_sessions: closed connections' sessions remembered at most (oldest dropped first).
        max_transactions: tracked client transactions per connection (oldest dropped first).
        transaction_timeout: seconds a tracked transaction waits for its reply.
        clock: monotonic time in seconds.
        plugins: the plugins whose rooms are meetings.
        transaction_prefix: the prefix of proxy-made transactions; random by default, so that
            a client cannot guess it.

    Raises:
        ValueError: a negative timeout, a bound below 1, no plugin, or an empty prefix.
    """

    __slots__ = (
        "_clock",
        "_counter",
        "_max_sessions",
        "_max_transactions",
        "_parked",
        "_plugins",
        "_prefix",
        "_reclaim_timeout",
        "_sessions",
        "_transaction_timeout",
    )

    name = "janus"
    subprotocols: tuple[str, ...] = (JANUS_SUBPROTOCOL,)

    def __init__(
        self,
        *,
        reclaim_timeout: float = 0.0,
        max_sessions: int = 10_000,
        max_transactions: int = 1024,
        transaction_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        plugins: Iterable[str] = (VIDEOROOM,),
        transaction_prefix: str | None = None,
    ) -> None:
        if reclaim_timeout < 0 or transaction_timeout < 0:
            raise ValueError("timeouts must be 0 or more seconds")
        if max_sessions < 1 or max_transactions < 1:
            raise ValueError("max_sessions and max_transactions must be 1 or more")
        self._plugins = frozenset(plugins)
        if not self._plugins:
            raise ValueError("expected at least one plugin, such as janus.plugin.videoroom")
        if transaction_prefix is None:
            transaction_prefix = f"geogate-{secrets.token_hex(4)}-"
        if not transaction_prefix:
            raise ValueError("transaction_prefix must not be empty")
        self._prefix = transaction_prefix
        self._reclaim_timeout = reclaim_timeout
        self._max_sessions = max_sessions
        self._max_transactions = max_transactions
        self._transaction_timeout = transaction_timeout
        self._clock = clock
        self._counter = 0
        # Every session known, live or parked; parked ones (owner None) in expiry order.
        self._sessions: dict[int, _Session] = {}
        self._parked: OrderedDict[int, float] = OrderedDict()

    @property
    def transaction_prefix(self) -> str:
        """The prefix of every transaction the proxy itself sends upstream."""
        return self._prefix

    def connect(self, address: str) -> JanusConnection:
        """State for a new client connection.

        Args:
            address: the client's address (kept for the caller; gating uses the relay's).

        Returns:
            The connection's adapter state.
        """
        self._purge()
        return JanusConnection(self, address)

    def remembered(self) -> frozenset[int]:
        """The sessions of closed connections that can still be claimed.

        Returns:
            Their session ids.
        """
        self._purge()
        return frozenset(self._parked)

    # -- shared session store (used by JanusConnection) ----------------------------------------

    def _transaction(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter}"

    def _session(self, session_id: int, connection: JanusConnection) -> _Session:
        """The session, created as ``connection``'s when unknown; an owner never changes here."""
        session = self._sessions.get(session_id)
        if session is None:
            session = _Session(session_id, connection)
            self._sessions[session_id] = session
            connection._own[session_id] = session
        return session

    def _handle(self, session_id: int | None, handle_id: int | None) -> _Handle | None:
        if session_id is None or handle_id is None:
            return None
        session = self._sessions.get(session_id)
        return None if session is None else session.handles.get(handle_id)

    def _forget(self, session_id: int) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        if session.owner is not None:
            session.owner._own.pop(session_id, None)
        self._parked.pop(session_id, None)

    def _transfer(self, session_id: int, connection: JanusConnection) -> None:
        """Make ``connection`` the session's owner (a claim)."""
        session = self._sessions.get(session_id)
        if session is None:
            session = self._session(session_id, connection)
        if session.owner is not None:
            session.owner._own.pop(session_id, None)
        self._parked.pop(session_id, None)
        session.owner = connection
        connection._own[session_id] = session

    def _park(self, connection: JanusConnection) -> None:
        """Keep a closed connection's sessions for a claim, or forget them."""
        sessions = list(connection._own.values())
        connection._own.clear()
        if self._reclaim_timeout <= 0:
            for session in sessions:
                self._sessions.pop(session.id, None)
            return
        expires = self._clock() + self._reclaim_timeout
        for session in sessions:
            session.owner = None
            self._parked[session.id] = expires
            self._parked.move_to_end(session.id)
        while len(self._parked) > self._max_sessions:
            session_id, _ = self._parked.popitem(last=False)
            self._sessions.pop(session_id, None)
        self._purge()

    def _purge(self) -> None:
        """Forget parked sessions whose claim window has passed (they expire in order)."""
        if not self._parked:
            return
        now = self._clock()
        while self._parked:
            session_id, expires = next(iter(self._parked.items()))
            if expires > now:
                break
            del self._parked[session_id]
            self._sessions.pop(session_id, None)


class JanusConnection:
    """One client connection's Janus state. Made by :meth:`JanusAdapter.connect`.

    Attributes:
        address: the client's address, as given to ``connect``.
    """

    __slots__ = ("_adapter", "_own", "_pending", "_prefix_needle", "_removed", "address")

    def __init__(self, adapter: JanusAdapter, address: str) -> None:
        self._adapter = adapter
        self.address = address
        #: Sessions whose events Janus sends to this connection.
        self._own: dict[int, _Session] = {}
        #: Client transactions awaiting a reply that changes the state, oldest first.
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        #: Handles the proxy removed: their id as JSON, and when to stop dropping their messages.
        self._removed: dict[int, tuple[bytes, float]] = {}
        self._prefix_needle = b'"' + adapter._prefix.encode()

    # -- client to upstream ------------------------------------------------------------------

    def from_client(self, payload: bytes) -> ClientVerdict:
        """Read one client text message (unmasked).

        Only messages containing a needle (see the module docstring) are parsed.

        Args:
            payload: the message.

        Returns:
            ``Forward``; ``Gate`` for a room request or a claim that must be checked first;
            ``Reply`` for a claim of an unknown session, an unusable room id, or a message with
            a needle that cannot be parsed.
        """
        # bytes.find, not "in": on CPython 3.11 "needle in payload" first tries the needle as an
        # int and swallows the TypeError, which doubles the cost of each test.
        find = payload.find
        for needle in _CLIENT_NEEDLES:
            if find(needle) >= 0:
                break
        else:
            return _FORWARD
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return Reply((_janus_error(None, None, _INVALID_JSON, _UNPARSED),))
        if not isinstance(message, dict):
            return _FORWARD
        kind = message.get("janus")
        transaction = _text(message.get("transaction"))
        session_id = _int(message.get("session_id"))
        if kind == "message":
            return self._room_request(message, session_id, transaction)
        if kind == "claim":
            return self._claim(session_id, transaction)
        if transaction is not None:
            if kind == "create":
                self._track(transaction, _Await.CREATE)
            elif kind == "attach":
                plugin = _text(message.get("plugin"))
                self._track(transaction, _Await.ATTACH, session_id, plugin=plugin)
            elif kind == "detach":
                handle_id = _int(message.get("handle_id"))
                self._track(transaction, _Await.DETACH, session_id, handle_id)
            elif kind == "destroy":
                self._track(transaction, _Await.DESTROY, session_id)
        return _FORWARD

    def _room_request(
        self, message: dict[str, Any], session_id: int | None, transaction: str | None
    ) -> ClientVerdict:
        body = message.get("body")
        if not isinstance(body, dict) or "room" not in body:
            return _FORWARD
        handle_id = _int(message.get("handle_id"))
        handle = self._adapter._handle(session_id, handle_id)
        if handle is not None and handle.plugin not in (None, *self._adapter._plugins):
            return _FORWARD
        room = body["room"]
        if isinstance(room, bool) or not isinstance(room, int | str):
            # Janus refuses it ("Invalid element type", 430): nothing to gate.
            return _FORWARD
        meeting = str(room)
        if not _usable_id(meeting):
            return Reply(
                _plugin_error(
                    session_id, handle_id, transaction, _INVALID_ELEMENT,
                    "Invalid element (room: geogate accepts 1 to 256 characters)",
                )
            )  # fmt: skip
        request = body.get("request")
        joining = isinstance(request, str) and request in _JOIN_REQUESTS
        if not joining and handle is not None and handle.in_meeting(meeting):
            return _FORWARD
        display = _display(body.get("display"))
        token = _JoinToken(session_id, handle_id, transaction, room, display, joining)
        join = Join(meeting, _participant(session_id, display), JoinKind.JOIN)
        return Gate((join,), token)

    def _claim(self, session_id: int | None, transaction: str | None) -> ClientVerdict:
        if session_id is None:
            return _FORWARD  # Janus refuses it (missing session).
        adapter = self._adapter
        adapter._purge()
        session = adapter._sessions.get(session_id)
        if session is None:
            reason = f"No such session {session_id}"
            return Reply((_janus_error(session_id, transaction, _SESSION_NOT_FOUND, reason),))
        if session.owner is self:
            return _FORWARD
        joins: dict[str, Join] = {}
        for handle in session.handles.values():
            for room in handle.rooms():
                meeting = str(room)
                if meeting not in joins:
                    participant = _participant(session_id, handle.display)
                    joins[meeting] = Join(meeting, participant, JoinKind.RESUME)
        token = _ClaimToken(session_id, transaction)
        if not joins:
            self._claimed(token)
            return _FORWARD
        return Gate(tuple(joins[meeting] for meeting in sorted(joins)), token)

    def admitted(self, verdict: Gate) -> None:
        """Every join of ``verdict`` was admitted: its message is being forwarded.

        Args:
            verdict: a ``Gate`` returned by :meth:`from_client`.
        """
        token = verdict.token
        if isinstance(token, _ClaimToken):
            self._claimed(token)
            return
        if not isinstance(token, _JoinToken) or not token.joining:
            return
        if token.session is None or token.handle is None:
            return  # Janus refuses it (missing session or handle).
        session = self._adapter._session(token.session, self)
        handle = session.handles.get(token.handle)
        if handle is None:
            handle = session.handles[token.handle] = _Handle(token.handle)
        handle.pending = token.room
        handle.display = token.display
        if token.transaction is not None:
            self._track(token.transaction, _Await.JOIN, token.session, token.handle)

    def _claimed(self, token: _ClaimToken) -> None:
        self._adapter._transfer(token.session, self)
        if token.transaction is not None:
            self._track(token.transaction, _Await.CLAIM, token.session)

    def denied(self, verdict: Gate, join: Join, notice: dict[str, object]) -> Reply:
        """``join`` was barred: what the client is told instead of forwarding the request.

        Args:
            verdict: the ``Gate`` returned by :meth:`from_client`.
            join: the barred join.
            notice: the denial notice (its ``notice`` entry is the text shown).

        Returns:
            For a room request, Janus' ``ack`` and a VideoRoom error ``event`` on its
            transaction; for a claim, a Janus ``error`` on its transaction. Both carry
            code 451 and the notice under ``geogate``.
        """
        token = verdict.token
        text = _notice_text(notice)
        if isinstance(token, _ClaimToken):
            return Reply(
                (_janus_error(token.session, token.transaction, DENIED_ERROR_CODE, text, notice),)
            )
        if isinstance(token, _JoinToken):
            return Reply(
                _plugin_error(
                    token.session, token.handle, token.transaction, DENIED_ERROR_CODE, text,
                    room=token.room, notice=notice,
                )
            )  # fmt: skip
        return Reply((_janus_error(None, None, DENIED_ERROR_CODE, text, notice),))

    # -- upstream to client ------------------------------------------------------------------

    def from_upstream(self, payload: bytes) -> UpstreamVerdict:
        """Read one upstream text message.

        Only messages containing a needle (see the module docstring) are parsed.

        Args:
            payload: the message.

        Returns:
            ``Drop`` for replies to proxy-made requests and messages about removed handles,
            ``Forward`` for everything else.
        """
        if not self._worth_parsing(payload):
            return _FORWARD
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return _FORWARD
        if not isinstance(message, dict):
            return _FORWARD
        kind = message.get("janus")
        transaction = message.get("transaction")
        if isinstance(transaction, str):
            if transaction.startswith(self._adapter._prefix):
                return _DROP
            pending = self._pending.get(transaction)
            if pending is not None:
                self._settle(transaction, pending, kind, message)
        sender = _int(message.get("sender"))
        if sender is not None and sender in self._removed:
            if kind == "detached":
                del self._removed[sender]
            return _DROP
        session_id = _int(message.get("session_id"))
        if kind == "event":
            self._membership(session_id, sender, message.get("plugindata"))
        elif kind == "detached":
            session = self._adapter._sessions.get(session_id) if session_id is not None else None
            if session is not None and sender is not None:
                session.handles.pop(sender, None)
        elif kind == "timeout" and session_id is not None:
            self._adapter._forget(session_id)
        return _FORWARD

    def _worth_parsing(self, payload: bytes) -> bool:
        find = payload.find
        for needle in _UPSTREAM_NEEDLES:
            if find(needle) >= 0:
                return True
        if find(self._prefix_needle) >= 0:
            return True
        if self._pending and (find(b'"success"') >= 0 or find(b'"error"') >= 0):
            return True
        if self._removed:
            now = self._adapter._clock()
            for handle_id, (needle, expires) in list(self._removed.items()):
                if expires <= now:
                    del self._removed[handle_id]
                elif find(needle) >= 0:
                    return True
        return False

    def _settle(
        self, transaction: str, pending: _Pending, kind: object, message: dict[str, Any]
    ) -> None:
        """Apply the reply to a tracked request; an ``ack`` is not the reply yet."""
        if kind == "ack":
            return
        del self._pending[transaction]
        adapter = self._adapter
        ok = kind == "success" and _plugin_error_code(message) is None
        match pending.kind:
            case _Await.CREATE:
                session_id = _int(_data(message).get("id"))
                if ok and session_id is not None:
                    adapter._session(session_id, self)
            case _Await.ATTACH:
                handle_id = _int(_data(message).get("id"))
                session_id = pending.session
                if session_id is None:
                    session_id = _int(message.get("session_id"))
                if ok and handle_id is not None and session_id is not None:
                    session = adapter._session(session_id, self)
                    handle = session.handles.setdefault(handle_id, _Handle(handle_id))
                    handle.plugin = pending.plugin
            case _Await.DETACH:
                if ok and pending.session is not None and pending.handle is not None:
                    known = adapter._sessions.get(pending.session)
                    if known is not None:
                        known.handles.pop(pending.handle, None)
            case _Await.DESTROY:
                if ok and pending.session is not None:
                    adapter._forget(pending.session)
            case _Await.CLAIM:
                if kind == "error" and pending.session is not None:
                    adapter._forget(pending.session)
            case _Await.JOIN:
                # The join's answer is an event (joined/attached, handled by _membership) or
                # an error (a plugin error_code in the event, or a Janus error): undo it then.
                if kind == "error" or _plugin_error_code(message) is not None:
                    joining = adapter._handle(pending.session, pending.handle)
                    if joining is not None:
                        joining.pending = None

    def _membership(self, session_id: int | None, sender: int | None, plugindata: object) -> None:
        """Follow a handle's own room from a plugin event (Janus' view wins)."""
        if session_id is None or sender is None or not isinstance(plugindata, dict):
            return
        plugin = plugindata.get("plugin")
        data = plugindata.get("data")
        if plugin not in self._adapter._plugins or not isinstance(data, dict):
            return
        videoroom = data.get("videoroom")
        room = data.get("room")
        if videoroom in _MEMBERSHIP:
            if isinstance(room, bool) or not isinstance(room, int | str):
                return
            session = self._adapter._session(session_id, self)
            handle = session.handles.get(sender)
            if handle is None:
                handle = session.handles[sender] = _Handle(sender, plugin)
            handle.room = room
            handle.pending = None
        elif (
            videoroom == "destroyed" or data.get("leaving") == "ok" or data.get("left") == "ok"
        ):
            handle = self._adapter._handle(session_id, sender)
            if handle is not None and (room is None or handle.in_meeting(str(room))):
                handle.room = None
                handle.pending = None

    # -- removal -------------------------------------------------------------------------------

    def remove(self, meeting: str, notice: dict[str, object]) -> Removal:
        """Take this connection's handles out of ``meeting``, and nothing else.

        Args:
            meeting: the room id, as a string.
            notice: the denial notice (its ``notice`` entry is the text shown).

        Returns:
            Upstream: for each handle in the room, a VideoRoom ``leave`` then a ``detach``,
            then a ``destroy`` of each session left without handles (all with proxy-made
            transactions). To the client: for each handle, a VideoRoom error ``event`` (451,
            the notice) then ``detached``. Empty when the connection is not in the room.
        """
        adapter = self._adapter
        text = _notice_text(notice)
        expires = adapter._clock() + adapter._transaction_timeout
        upstream: list[bytes] = []
        client: list[bytes] = []
        destroy: list[int] = []
        for session in list(self._own.values()):
            handles = [h for h in session.handles.values() if h.in_meeting(meeting)]
            for handle in handles:
                sid, hid = session.id, handle.id
                (room,) = handle.rooms()
                upstream.append(_dumps({
                    "janus": "message", "session_id": sid, "handle_id": hid,
                    "transaction": adapter._transaction(), "body": {"request": "leave"},
                }))  # fmt: skip
                upstream.append(_dumps({
                    "janus": "detach", "session_id": sid, "handle_id": hid,
                    "transaction": adapter._transaction(),
                }))  # fmt: skip
                client.append(_dumps({
                    "janus": "event", "session_id": sid, "sender": hid,
                    "plugindata": {"plugin": handle.plugin or VIDEOROOM, "data": {
                        "videoroom": "event", "room": room, "error_code": DENIED_ERROR_CODE,
                        "error": text, "geogate": notice,
                    }},
                }))  # fmt: skip
                client.append(_dumps({"janus": "detached", "session_id": sid, "sender": hid}))
                del session.handles[hid]
                self._removed[hid] = (str(hid).encode(), expires)
            if handles and not session.handles and not self._attaching(session.id):
                destroy.append(session.id)
        for session_id in destroy:
            upstream.append(_dumps({
                "janus": "destroy", "session_id": session_id,
                "transaction": adapter._transaction(),
            }))  # fmt: skip
            adapter._forget(session_id)
        return Removal(tuple(upstream), tuple(client))

    def _attaching(self, session_id: int) -> bool:
        return any(
            p.kind is _Await.ATTACH and p.session == session_id for p in self._pending.values()
        )

    # -- state -----------------------------------------------------------------------------------

    def meetings(self) -> frozenset[str]:
        """The rooms this connection's sessions are in, or were admitted to.

        Returns:
            The room ids, as strings.
        """
        return frozenset(
            str(room)
            for session in self._own.values()
            for handle in session.handles.values()
            for room in handle.rooms()
        )

    def closed(self) -> None:
        """The connection closed: its sessions are kept for a claim, for ``reclaim_timeout``."""
        self._adapter._park(self)
        self._pending.clear()
        self._removed.clear()

    def _track(
        self,
        transaction: str,
        kind: _Await,
        session: int | None = None,
        handle: int | None = None,
        *,
        plugin: str | None = None,
    ) -> None:
        adapter = self._adapter
        now = adapter._clock()
        pending = self._pending
        # Entries expire in insertion order (one timeout for all): drop the stale ones first.
        while pending:
            oldest = next(iter(pending.values()))
            if oldest.expires > now:
                break
            pending.popitem(last=False)
        pending.pop(transaction, None)
        while len(pending) >= adapter._max_transactions:
            pending.popitem(last=False)
        expires = now + adapter._transaction_timeout
        pending[transaction] = _Pending(kind, session, handle, plugin, expires)


# -- message helpers ---------------------------------------------------------------------------

_UNPARSED: Final = "Invalid Janus API request (geogate could not parse it)"


def _dumps(message: dict[str, object]) -> bytes:
    # default=str: a notice value orjson cannot write natively is written as its text.
    return orjson.dumps(message, default=str)


def _janus_error(
    session_id: int | None,
    transaction: str | None,
    code: int,
    reason: str,
    notice: dict[str, object] | None = None,
) -> bytes:
    """A Janus core ``error`` shaped like Janus' own (``session_id``, ``transaction`` if any)."""
    message: dict[str, object] = {"janus": "error"}
    if session_id is not None:
        message["session_id"] = session_id
    if transaction is not None:
        message["transaction"] = transaction
    message["error"] = {"code": code, "reason": reason}
    if notice is not None:
        message["geogate"] = notice
    return _dumps(message)


def _plugin_error(
    session_id: int | None,
    handle_id: int | None,
    transaction: str | None,
    code: int,
    text: str,
    *,
    room: int | str | None = None,
    notice: dict[str, object] | None = None,
) -> tuple[bytes, ...]:
    """Janus' ``ack`` then a VideoRoom error ``event`` for a ``message`` request."""
    ack: dict[str, object] = {"janus": "ack"}
    event: dict[str, object] = {"janus": "event"}
    if session_id is not None:
        ack["session_id"] = event["session_id"] = session_id
    if transaction is not None:
        ack["transaction"] = event["transaction"] = transaction
    if handle_id is not None:
        event["sender"] = handle_id
    data: dict[str, object] = {"videoroom": "event"}
    if room is not None:
        data["room"] = room
    data["error_code"] = code
    data["error"] = text
    if notice is not None:
        data["geogate"] = notice
    event["plugindata"] = {"plugin": VIDEOROOM, "data": data}
    return (_dumps(ack), _dumps(event))


def _data(message: dict[str, Any]) -> dict[str, Any]:
    data = message.get("data")
    return data if isinstance(data, dict) else {}


def _plugin_error_code(message: dict[str, Any]) -> object:
    """The ``error_code`` of a plugin reply, or None (also for a reply without plugindata)."""
    plugindata = message.get("plugindata")
    if not isinstance(plugindata, dict):
        return None
    data = plugindata.get("data")
    return data.get("error_code") if isinstance(data, dict) else None


def _int(value: object) -> int | None:
    # Janus ids are JSON integers; a bool is an int in Python, not in JSON.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _usable_id(value: str) -> bool:
    if not value or len(value) > MAX_ID_LENGTH:
        return False
    return value.isascii() or _encodable(value)


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _display(value: object) -> str | None:
    """A display name fit for an audit record: printable, at most 64 characters, or None."""
    if not isinstance(value, str):
        return None
    cleaned = "".join(char for char in value[: _MAX_DISPLAY * 2] if char.isprintable())
    cleaned = cleaned.strip()[:_MAX_DISPLAY]
    return cleaned if cleaned and _encodable(cleaned) else None


def _participant(session_id: int | None, display: str | None) -> str | None:
    if session_id is None:
        return display
    return f"{session_id} ({display})" if display else str(session_id)


def _notice_text(notice: dict[str, object]) -> str:
    text = notice.get("notice")
    return text if isinstance(text, str) and text else _DEFAULT_NOTICE
