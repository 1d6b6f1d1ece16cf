"""Admitted sessions: frames relayed as bytes, with only their boundaries tracked.

Once a participant is admitted, each direction is one :class:`Direction`, an asyncio protocol on
the transport it reads from, writing what it reads to the other transport. It parses frame headers
(never payloads, except where the adapter must read a message) so that it always knows where the
next frame starts: a close or a notice can then be injected between frames, message sizes can be
bounded, and close frames can be seen. Client frames stay masked and go upstream as they came
(RFC 6455 section 5.3: the mask is per frame, so a masked frame is valid on the upstream leg too);
upstream frames are unmasked and go to the client as they came. No task, future or copy is made
per message: a chunk that holds whole frames is written as it was received.

Backpressure: when one transport's write buffer passes ``write_buffer_bytes``, reading from the
other transport pauses until it drains, so a slow reader slows its peer instead of growing memory.

Closing: close frames pass through, so the closing handshake runs end to end and close codes reach
the other side unchanged. When one leg drops without a close frame, the other is sent one (1001 to
the upstream for a vanished client, 1014 to the client for a failed upstream) and closed. A relay
ended by the proxy (a barred rejoin, an eviction, a drain) injects its frames at the next boundary
of each stream and waits up to ``close_timeout`` for both legs to finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.adapters.base import Adapter, Join
from proxy.admission import NOTICE_CLOSE_CODE
from proxy.errors import ClientError, MessageTooBig, ProtocolViolation
from proxy.frames import (
    Header,
    Opcode,
    apply_mask,
    encode_close_payload,
    encode_frame,
    parse_header,
)

if TYPE_CHECKING:
    from proxy.admission import Denial
    from proxy.sessions import Session

__all__ = ["CLOSE_TIMEOUT", "Direction", "Relay", "close_frame"]

log = logging.getLogger("proxy.relay")

#: Seconds to wait for a closing handshake before dropping the connection.
CLOSE_TIMEOUT = 5.0

_CLOSE = Opcode.CLOSE
_TEXT = Opcode.TEXT


def close_frame(code: int, reason: str, *, mask: bool) -> bytes:
    """A close frame (masked for the upstream leg, where the proxy is the client)."""
    return encode_frame(_CLOSE, encode_close_payload(code, reason), mask=mask)


class Direction(asyncio.Protocol):
    """One direction of a relay: reads one transport, writes the other.

    Attributes:
        frames: frames seen; ``messages``: data messages completed; ``bytes``: bytes received.
    """

    __slots__ = (
        "_held_parts",
        "_inject",
        "bytes",
        "close_code",
        "close_seen",
        "dst",
        "frames",
        "from_client",
        "inspect",
        "max_message",
        "messages",
        "msg_opcode",
        "msg_size",
        "pending",
        "relay",
        "remaining",
        "src",
        "stopped",
    )

    def __init__(self, relay: Relay, *, from_client: bool, inspect: bool, max_message: int) -> None:
        self.relay = relay
        self.from_client = from_client
        self.inspect = inspect
        self.max_message = max_message
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.pending = b""  # a partial header, an incomplete control frame or inspected frame
        self.remaining = 0  # payload bytes of the current frame still to pass through
        self.msg_opcode = 0  # opcode of the message in progress (0: none)
        self.msg_size = 0
        self._held_parts: list[bytes] = []  # unmasked text of a fragmented inspected message
        self._inject: bytes | None = None  # frames waiting for the next boundary
        self.stopped = False  # forwarding is over; input is read only to find a close frame
        self.close_seen = False
        self.close_code: int | None = None
        self.frames = 0
        self.messages = 0
        self.bytes = 0

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        relay.last_active = relay.clock()
        self.bytes += len(data)
        remaining = self.remaining
        n = len(data)
        stopped = self.stopped
        if remaining >= n:
            # Inside a payload: pass the whole chunk through.
            self.remaining = remaining - n
            if not stopped:
                self.dst.write(data)  # type: ignore[union-attr]
            return
        if remaining or self.pending or self.msg_opcode or stopped or self._inject is not None:
            self._slow(data, n)
            return
        if not self.inspect:
            # Nothing here is read: a chunk of whole, final text or binary frames (what a
            # meeting server's announcements are) goes out in the one write it came in, with
            # only the first bytes of each header looked at and no object made per frame.
            # Anything else (a control frame, a fragment, a frame cut by the end of the chunk,
            # a 64-bit length, a wrong mask bit, a message over the bound) takes the general
            # path, which names the fault.
            mask_bit = 0x80 if self.from_client else 0
            key_len = 4 if mask_bit else 0
            limit = self.max_message
            pos = count = 0
            while n - pos > 1:
                first = data[pos]
                second = data[pos + 1]
                if (first != 0x81 and first != 0x82) or second & 0x80 != mask_bit:
                    break
                length = second & 0x7F
                if length < 126:
                    pos += 2 + key_len + length
                elif length == 126 and n - pos >= 4:
                    length = (data[pos + 2] << 8) | data[pos + 3]
                    if length < 126:
                        break
                    pos += 4 + key_len + length
                else:
                    break
                if length > limit:
                    break
                count += 1
            if pos == n:
                self.frames += count
                self.messages += count
                self.dst.write(data)  # type: ignore[union-attr]
            else:
                self._slow(data, n)
            return
        if n < 132 and n > 1:
            # The common case of signaling: the chunk is exactly one small unfragmented text or
            # binary frame (FIN set, no RSV bits, 7-bit length). Pass it without the loop.
            first = data[0]
            second = data[1]
            if (first == 0x81 or first == 0x82) and second & 0x7F == n - (
                    6 if self.from_client else 2) and bool(second & 0x80) == self.from_client:
                if (first == 0x81 and relay.adapter.inspect(
                        _TEXT, apply_mask(data[6:], data[2:6])) is not None):
                    self._slow(data, n)  # a join: gated by the general path
                    return
                self.frames += 1
                self.messages += 1
                self.dst.write(data)  # type: ignore[union-attr]
                return
        self._slow(data, n)

    def _slow(self, data: bytes, n: int) -> None:
        """The general path: any chunk, any frames, boundaries tracked across chunks."""
        relay = self.relay
        remaining = self.remaining
        stopped = self.stopped
        if self.pending:
            data = self.pending + data
            self.pending = b""
            n = len(data)
        pos = remaining
        self.remaining = 0
        start = 0
        try:
            while pos < n:
                if self._inject is not None and not stopped:
                    # A boundary: the injection waiting for one goes now, forwarding stops.
                    self._flush(data, start, pos)
                    self._do_inject()
                    stopped = True
                header = parse_header(data, pos, self.from_client)
                if header is None:
                    break
                opcode = header.opcode
                end = pos + header.header_len + header.length
                self.frames += 1
                if opcode >= 8:
                    if end > n:
                        break  # control frames (at most 127 bytes) are held until whole
                    if opcode == _CLOSE:
                        self._read_close(data, pos + header.header_len, end, header.mask)
                        if stopped:
                            # The answer to a close the proxy sent: that leg is finished.
                            relay.closed_by_peer(self)
                            return
                        self.close_seen = True
                    pos = end
                    continue
                # A data frame: bound its message, read it if inspected, then track it. The
                # state changes only once the frame is taken: a frame held until whole is read
                # again from the start with the next chunk.
                size = self._message_size(opcode, header.length)
                message_opcode = opcode or self.msg_opcode
                if self.inspect and message_opcode == _TEXT and not stopped:
                    if end > n:
                        break  # an inspected frame is held until whole
                    join = self._read_text(data, pos + header.header_len, end, header)
                    if join is not None:
                        # What came before goes on; this message only if the join passes.
                        self._flush(data, start, pos)
                        start = pos
                        if not relay.rejoin(join):
                            return  # the relay is ending; nothing more is forwarded
                self.msg_opcode = message_opcode
                self.msg_size = size
                if header.fin:
                    self.messages += 1
                    self.msg_opcode = 0
                pos = end
        except ClientError as exc:
            if not stopped:
                self._flush(data, start, pos)
            relay.fail(self, exc)
            return
        if pos >= n:
            self.remaining = pos - n
            if not stopped:
                self.dst.write(data if start == 0 else data[start:])  # type: ignore[union-attr]
        else:
            # A partial header, or a frame held until whole, starts at pos.
            if not stopped:
                self._flush(data, start, pos)
            self.pending = data[pos:]
        if self._inject is not None and self.remaining == 0 and not stopped:
            self._do_inject()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.leg_lost(self)

    def pause_writing(self) -> None:
        # Called when the transport this direction reads from has a full write buffer; the other
        # direction writes into it, so stop reading that direction's source.
        source = self.relay.other(self).src
        if source is not None:
            source.pause_reading()

    def resume_writing(self) -> None:
        source = self.relay.other(self).src
        if source is not None and not source.is_closing():
            source.resume_reading()

    # ---- helpers -------------------------------------------------------------------------------

    def _message_size(self, opcode: int, length: int) -> int:
        """The size of the message in progress once this data frame is added.

        Raises:
            ProtocolViolation: a new message while a fragmented one is open, or a continuation
                with none open (RFC 6455 section 5.4).
            MessageTooBig: the message would pass ``max_message``.
        """
        if opcode:
            if self.msg_opcode:
                raise ProtocolViolation("new message while a fragmented one is in progress")
            size = length
        else:
            if not self.msg_opcode:
                raise ProtocolViolation("continuation frame without a message started")
            size = self.msg_size + length
        if size > self.max_message:
            raise MessageTooBig(f"message over {self.max_message} bytes")
        return size

    def _flush(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.dst.write(data[start:end])  # type: ignore[union-attr]

    def _read_close(self, data: bytes, start: int, end: int, mask: bytes | None) -> None:
        payload = data[start:end]
        if mask is not None:
            payload = apply_mask(payload, mask)
        self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005

    def _read_text(self, data: bytes, start: int, end: int, header: Header) -> Join | None:
        """Unmask a client text frame; when it ends a message, ask the adapter for a join."""
        payload = apply_mask(data[start:end], header.mask) if header.mask else data[start:end]
        if not header.fin:
            self._held_parts.append(payload)
            return None
        if self._held_parts:
            self._held_parts.append(payload)
            payload = b"".join(self._held_parts)
            self._held_parts = []
        return self.relay.adapter.inspect(_TEXT, payload)

    def inject(self, frames: bytes) -> None:
        """Write ``frames`` at the next frame boundary, then stop forwarding this direction."""
        if self.stopped or self._inject is not None:
            return
        self._inject = frames
        if self.remaining == 0:
            self._do_inject()

    def _do_inject(self) -> None:
        frames = self._inject
        self._inject = None
        self.stopped = True
        if frames and self.dst is not None and not self.dst.is_closing():
            self.dst.write(frames)


class Relay:
    """An admitted session's two legs.

    Args:
        session: the registry entry.
        adapter: the protocol adapter (reads later joins when ``inspect``).
        client: the client's transport; ``upstream``: the upstream's.
        gate: decides a rejoin: None admits it, else the denial to tell.
        on_close: called once when both legs are closed.
        max_message: largest message in either direction.
        write_buffer: the high-water mark of each transport's write buffer.
        idle_timeout: seconds without any frame before the session is closed.
    """

    __slots__ = (
        "_held_leave",
        "_timer",
        "adapter",
        "client",
        "clock",
        "down",
        "ending",
        "gate",
        "idle_timeout",
        "last_active",
        "loop",
        "on_close",
        "session",
        "up",
        "upstream",
    )

    def __init__(
        self,
        session: Session,
        adapter: Adapter,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        gate: Callable[[Session, Join], Denial | None],
        on_close: Callable[[Relay], None],
        max_message: int,
        write_buffer: int,
        idle_timeout: float,
        inspect: bool,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time
        self.session = session
        self.adapter = adapter
        self.client = client
        self.upstream = upstream
        self.gate = gate
        self.on_close = on_close
        self.idle_timeout = idle_timeout
        self.last_active = self.clock()
        self.ending: str | None = None
        self.up, self.down = self._directions(inspect, max_message)
        self.up.src, self.up.dst = client, upstream
        self.down.src, self.down.dst = upstream, client
        for transport in (client, upstream):
            transport.set_write_buffer_limits(high=write_buffer)
        self._timer: asyncio.TimerHandle | None = None
        self._held_leave: bytes | None = None  # upstream frames of an eviction wave, not yet sent

    def _directions(self, inspect: bool, max_message: int) -> tuple[Direction, Direction]:
        return (Direction(self, from_client=True, inspect=inspect, max_message=max_message),
                Direction(self, from_client=False, inspect=False, max_message=max_message))

    def start(self, client_rest: bytes, upstream_rest: bytes) -> None:
        """Take over both transports and relay what each already sent."""
        self.session.close = self.close
        self.session.evict = self.evict
        self.session.abort = self._abort
        self.session.relay = self
        self.client.set_protocol(self.up)
        self.upstream.set_protocol(self.down)
        self._timer = self.loop.call_at(self.last_active + self.idle_timeout, self._idle_check)
        if upstream_rest:
            self.down.data_received(upstream_rest)
        if client_rest and not self.up.stopped:
            self.up.data_received(client_rest)

    def other(self, direction: Direction) -> Direction:
        """The opposite direction."""
        return self.down if direction is self.up else self.up

    # ---- endings -------------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, client_frames: bytes = b"",
              upstream_frames: bytes = b"", hold: bool = False) -> None:
        """End the session from the proxy: frames and a close to each leg, at frame boundaries.

        Args:
            code: the close code sent to the client (the upstream gets 1000, a normal leave).
            reason: the close reason sent to the client.
            client_frames: frames sent to the client before the close (a notice).
            upstream_frames: masked frames sent upstream before the close (a leave message).
            hold: stop forwarding upstream but send nothing there yet (an eviction wave's
                :meth:`release_leave` sends it).
        """
        if self.ending is not None:
            return
        self.ending = reason
        self.down.inject(client_frames + close_frame(code, reason, mask=False))
        self.up.inject(b"" if hold else
                       upstream_frames + close_frame(1000, "participant left", mask=True))
        self._set_timer(CLOSE_TIMEOUT, self._abort)

    def rejoin(self, join: Join) -> bool:
        """Gate a join on the open connection; True lets it through, False ends the session."""
        denial = self.gate(self.session, join)
        if denial is None:
            return True
        self.evict(denial)
        return False

    def evict(self, denial: Denial, wave: list[Callable[[], None]] | None = None) -> None:
        """Remove the participant: the notice and 4451 to the client, a leave upstream.

        The upstream gets the adapter's leave messages and then a normal close, so it announces
        the departure at once; everyone else's sessions are untouched.

        Args:
            denial: why the participant is removed.
            wave: when given, the eviction is one of many: the client gets its notice and close
                now and nothing more is forwarded upstream, while the upstream leave is held and
                a callable sending it is appended to ``wave``, so that the caller can send every
                notice of the wave before the upstream starts announcing departures. A held leave
                is still sent when the client's leg ends first: the upstream leg stays open for
                it, and is never closed without its leave.
        """
        leave = b"".join(
            encode_frame(_TEXT, message, mask=True)
            for message in self.adapter.leave_messages(self.session.join)
        )
        if wave is None:
            self.close(NOTICE_CLOSE_CODE, denial.reason, client_frames=denial.notice,
                       upstream_frames=leave)
            return
        if self.ending is not None:
            return
        self._held_leave = leave + close_frame(1000, "participant left", mask=True)
        self.close(NOTICE_CLOSE_CODE, denial.reason, client_frames=denial.notice, hold=True)
        wave.append(self.release_leave)

    def release_leave(self) -> None:
        """Send the upstream leave an eviction wave held back (nothing when already sent)."""
        frames = self._held_leave
        if frames is None:
            return
        self._held_leave = None
        up = self.up
        if up._inject is not None:
            up._inject = frames  # the client is mid-frame: the leave follows at its boundary
        elif not self.upstream.is_closing():
            self.upstream.write(frames)

    def fail(self, direction: Direction, exc: ClientError) -> None:
        """A protocol fault on one leg: close the client with the fault's code."""
        log.info("session %d: %s", self.session.id, exc)
        if direction.from_client:
            self.close(exc.close_code, exc.client_text)
        else:
            self.close(1014, "signaling server protocol error")

    def closed_by_peer(self, direction: Direction) -> None:
        """The leg read by ``direction`` answered the proxy's close: close that transport."""
        if direction.src is not None:
            direction.src.close()

    def leg_lost(self, direction: Direction) -> None:
        """The transport ``direction`` reads from closed; close the other one.

        A leg that dropped without a closing handshake gets the other side told properly: 1001
        to the upstream for a vanished client, 1014 to the client for a failed upstream.
        """
        direction.src = None
        transport = direction.dst
        if self._held_leave is not None:
            if (direction.from_client and not direction.remaining and direction._inject is None
                    and transport is not None and not transport.is_closing()):
                # The client answered its eviction before the wave's leaves went out: the
                # upstream leg stays open until release_leave sends the leave and the close
                # (or the close timeout drops it).
                self._finish()
                return
            self._held_leave = None
        if transport is not None and not transport.is_closing():
            if direction.remaining or (direction.stopped and direction._inject is not None):
                transport.abort()  # mid-frame: no valid frame can follow
            else:
                if self.ending is None and not direction.close_seen:
                    if direction.from_client:
                        transport.write(close_frame(1001, "client went away", mask=True))
                    else:
                        transport.write(
                            close_frame(1014, "signaling server connection lost", mask=False)
                        )
                transport.close()
        self._finish()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.session.close is not None:
            self.session.close = None
            self.session.evict = None
            self.session.abort = None
            self.session.relay = None
            self.on_close(self)
            # A leg still flushing to a peer that does not read is dropped after the timeout.
            if any(_unfinished(t) for t in (self.client, self.upstream)):
                self._timer = self.loop.call_later(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self._timer = None
        for transport in (self.client, self.upstream):
            if _unfinished(transport):
                transport.abort()

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, callback)

    def _idle_check(self) -> None:
        if self.ending is not None:
            return
        due = self.last_active + self.idle_timeout
        if self.clock() >= due:
            self.close(1001, "idle timeout")
        else:
            self._timer = self.loop.call_at(due, self._idle_check)


def _unfinished(transport: asyncio.Transport) -> bool:
    """Whether a transport is still open, or closing with data not yet written."""
    if not transport.is_closing():
        return True
    try:
        return transport.get_write_buffer_size() > 0
    except (AttributeError, RuntimeError):  # already released
        return False
