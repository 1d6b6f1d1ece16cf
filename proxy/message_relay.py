"""The relay for stateful adapters (Janus): whole messages, read both ways, rooms removed one by
one.

One Janus WebSocket carries sessions, handles and rooms, so the adapter must read every text
message in both directions: client requests to gate joins and claims, upstream replies to learn
session and handle ids and to drop the replies to requests the proxy itself sent. Each direction
here is a :class:`MessageDirection`: it waits for whole frames (bounded by ``max_message_bytes``),
hands each completed text message to a handler that says whether it goes on, and writes only whole
frames, so the proxy can add its own messages to either stream at any time.

A connection is registered once per room it is in (one :class:`~proxy.sessions.Session` each), so a
restriction that bars a participant from one room removes only that room's handles (the adapter's
leave, detach and destroy upstream, a notice in the protocol's shape to the client) while the
WebSocket and the handles in other rooms carry on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable

from proxy.adapters.base import AdapterConnection, Forward, Gate, Join, Reply
from proxy.admission import NOTICE_CLOSE_CODE, Denial
from proxy.errors import ClientError
from proxy.frames import Opcode, apply_mask, encode_frame, parse_header
from proxy.relay import Direction, Relay
from proxy.sessions import Session

__all__ = ["ConnectionRelay", "MessageDirection"]

log = logging.getLogger("proxy.relay")

_CLOSE = Opcode.CLOSE
_TEXT = Opcode.TEXT

#: Upstream messages that can change which rooms a connection is in: only these trigger a re-sync
#: of the registry with the adapter's state (one regex search, in C).
_MEMBERSHIP = re.compile(rb'"(?:videoroom|detached|hangup|success|timeout)"').search


class MessageDirection(Direction):
    """One direction of a stateful relay: whole frames only, text messages through a handler."""

    __slots__ = ("_raw", "handler")

    def __init__(self, relay: Relay, *, from_client: bool, max_message: int,
                 handler: Callable[[bytes], bool]) -> None:
        super().__init__(relay, from_client=from_client, inspect=False, max_message=max_message)
        self._raw: list[bytes] = []
        self.handler = handler

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        relay.last_active = relay.clock()
        n = len(data)
        self.bytes += n
        if (n < 132 and not self.pending and not self.msg_opcode and not self.stopped
                and data[0] == 0x81 and n > 1):
            # The common case: the chunk is exactly one small unfragmented text frame.
            second = data[1]
            if second & 0x7F == n - (6 if self.from_client else 2) and bool(
                    second & 0x80) == self.from_client:
                payload = apply_mask(data[6:], data[2:6]) if self.from_client else data[2:]
                self.frames += 1
                self.messages += 1
                if self.handler(payload):
                    self.dst.write(data)  # type: ignore[union-attr]
                return
        if self.pending:
            data = self.pending + data
            self.pending = b""
            n = len(data)
        pos = 0
        out: list[bytes] = []
        try:
            while pos < n:
                header = parse_header(data, pos, self.from_client)
                if header is None:
                    break
                opcode = header.opcode
                # Bound a data frame's message before waiting for its payload.
                size = self._message_size(opcode, header.length) if opcode < 8 else 0
                end = pos + header.header_len + header.length
                if end > n:
                    break
                self.frames += 1
                frame = data[pos:end]
                pos = end
                if opcode >= 8:
                    if opcode == _CLOSE:
                        self._read_close(frame, header.header_len, len(frame), header.mask)
                        if self.stopped:
                            relay.closed_by_peer(self)
                            return
                        self.close_seen = True
                    if not self.stopped:
                        out.append(frame)
                    continue
                if opcode:
                    self.msg_opcode = opcode
                self.msg_size = size
                if self.msg_opcode != _TEXT:
                    if not self.stopped:
                        out.append(frame)
                    if header.fin:
                        self.messages += 1
                        self.msg_opcode = 0
                    continue
                payload = frame[header.header_len:]
                if header.mask is not None:
                    payload = apply_mask(payload, header.mask)
                self._raw.append(frame)
                self._held_parts.append(payload)
                if not header.fin:
                    continue
                message = b"".join(self._held_parts)
                raw = b"".join(self._raw)
                self._held_parts = []
                self._raw = []
                self.messages += 1
                self.msg_opcode = 0
                if self.stopped:
                    continue
                if out:
                    self.dst.write(b"".join(out))  # type: ignore[union-attr]
                    out = []
                if self.handler(message):
                    out.append(raw)
        except ClientError as exc:
            if out and not self.stopped:
                self.dst.write(b"".join(out))  # type: ignore[union-attr]
            relay.fail(self, exc)
            return
        if out and not self.stopped:
            self.dst.write(b"".join(out))  # type: ignore[union-attr]
        self.pending = data[pos:]


class ConnectionRelay(Relay):
    """A relay whose adapter keeps per-connection state and may hold several rooms.

    Args:
        session: the connection's own entry (client address and location; not registered).
        connection: the adapter's state for this connection.
        decide: gates one join; None admits it.
        register, unregister: add and remove a room's session in the registry.
        (the rest as :class:`~proxy.relay.Relay`)
    """

    __slots__ = ("_joins", "conn", "decide", "register", "rooms", "unregister")

    def __init__(
        self,
        session: Session,
        connection: AdapterConnection,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        decide: Callable[[Join], Denial | None],
        register: Callable[[Session], None],
        unregister: Callable[[Session], None],
        on_close: Callable[[Relay], None],
        max_message: int,
        write_buffer: int,
        idle_timeout: float,
    ) -> None:
        self.conn = connection
        self.decide = decide
        self.register = register
        self.unregister = unregister
        self.rooms: dict[str, Session] = {}
        self._joins: dict[str, Join] = {}
        super().__init__(
            session, None, client, upstream,  # type: ignore[arg-type]
            gate=lambda _s, _j: None, on_close=on_close, max_message=max_message,
            write_buffer=write_buffer, idle_timeout=idle_timeout, inspect=False,
        )

    def _directions(self, inspect: bool, max_message: int) -> tuple[Direction, Direction]:
        return (MessageDirection(self, from_client=True, max_message=max_message,
                                 handler=self.client_message),
                MessageDirection(self, from_client=False, max_message=max_message,
                                 handler=self.upstream_message))

    # ---- messages ------------------------------------------------------------------------------

    def client_message(self, payload: bytes) -> bool:
        """A whole client text message: forward it, answer it, or gate the joins it carries."""
        verdict = self.conn.from_client(payload)
        if isinstance(verdict, Forward):
            return True
        if isinstance(verdict, Reply):
            self._to_client(verdict.messages)
            return False
        assert isinstance(verdict, Gate)
        for join in verdict.joins:
            denial = self.decide(join)
            if denial is not None:
                log.info("session %d: %s into %s barred by %s", self.session.id, join.kind,
                         join.meeting, denial.restriction.id)
                reply = self.conn.denied(verdict, join, denial.body)
                self._to_client(reply.messages)
                return False
        self.conn.admitted(verdict)
        for join in verdict.joins:
            self._joins[join.meeting] = join
        self.sync()
        return True

    def upstream_message(self, payload: bytes) -> bool:
        """A whole upstream text message: forward it unless it answers the proxy's own request."""
        forward = isinstance(self.conn.from_upstream(payload), Forward)
        if _MEMBERSHIP(payload) is not None:
            self.sync()
        return forward

    def _to_client(self, messages: tuple[bytes, ...]) -> None:
        if messages and not self.client.is_closing():
            self.client.write(b"".join(encode_frame(_TEXT, m, mask=False) for m in messages))

    def _to_upstream(self, messages: tuple[bytes, ...]) -> None:
        if messages and not self.upstream.is_closing():
            self.upstream.write(b"".join(encode_frame(_TEXT, m, mask=True) for m in messages))

    # ---- rooms ---------------------------------------------------------------------------------

    def sync(self) -> None:
        """Make the registry hold one session per room the adapter says the connection is in."""
        rooms = self.conn.meetings()
        current = self.rooms
        if rooms == current.keys():
            return
        for meeting in [m for m in current if m not in rooms]:
            self.unregister(current.pop(meeting))
            self._joins.pop(meeting, None)
        primary = self.session
        for meeting in rooms:
            if meeting in current:
                continue
            join = self._joins.get(meeting) or Join(meeting, primary.join.participant)
            session = Session(join, primary.address, primary.peer, primary.geo, time.time())
            session.close = self.close
            session.evict = functools.partial(self.remove_meeting, meeting)
            session.abort = self._abort
            session.relay = self
            current[meeting] = session
            self.register(session)

    def remove_meeting(self, meeting: str, denial: Denial,
                       wave: list[Callable[[], None]] | None = None) -> None:
        """A restriction now bars this participant from one room: take them out of it only.

        The room's leave goes upstream at once, also within an eviction ``wave``: the connection
        may stay in other rooms, so it is not held.
        """
        removal = self.conn.remove(meeting, denial.body)
        if removal.close:
            self.close(NOTICE_CLOSE_CODE, denial.reason,
                       client_frames=denial.notice)
            return
        self._to_upstream(removal.to_upstream)
        self._to_client(removal.to_client)
        self.sync()

    def evict(self, denial: Denial, wave: list[Callable[[], None]] | None = None) -> None:
        """Remove the participant from the room the denial names."""
        self.remove_meeting(denial.decision.meeting, denial, wave)

    def _finish(self) -> None:
        if self.session.close is not None:
            self.conn.closed()
            for session in self.rooms.values():
                session.close = session.evict = session.abort = None
                session.relay = None
                self.unregister(session)
            self.rooms.clear()
        super()._finish()
