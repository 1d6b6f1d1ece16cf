"""A lean WebSocket load generator for the demo meeting protocol.

A Python client built on a WebSocket library spends 160-350 us of CPU per join and 10-17 us per
round trip (see the performance notes), enough to make the generator, not the proxy, the bottleneck.
This client is one :class:`asyncio.Protocol` per participant that does only what a benchmark needs:

- its own HTTP upgrade (RFC 6455 section 4.1), sent as one pre-built request; the answer is checked
  for the 101 status and the ``Sec-WebSocket-Accept`` value and nothing else;
- frames built once: the join and the echo message are masked when the participant is created
  (RFC 6455 section 5.3 asks for a fresh mask per frame; a benchmark may fix it per connection,
  which costs the servers the same unmasking work);
- replies are read as frame headers only: a round trip is "a complete data message came back",
  and only the join reply is looked into (for ``"joined"``);
- no task, future or copy per message: an echo reply writes the next pre-built frame from
  ``data_received`` and appends one latency sample.

A participant's life: UPGRADING (request sent) -> JOINING (101 seen, join sent) -> [FIRST_ECHO
(``joined`` seen, one echo sent)] -> IDLE (ready) <-> ECHO (under an :class:`EchoLoad`) -> CLOSING
-> CLOSED. Pings are answered with pongs (the demo server pings every 20 s), and a close from the
server is answered with the same code (RFC 6455 section 5.5.1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import orjson

from proxy.errors import GeogateError

__all__ = [
    "HANDSHAKE_ACCEPT",
    "HANDSHAKE_KEY",
    "MIN_ECHO_SIZE",
    "EchoLoad",
    "Endpoint",
    "FrameReader",
    "LoadError",
    "Participant",
    "Stage",
    "UpgradingClient",
    "close_all",
    "connect_participant",
    "echo_payload",
    "encode_client_frame",
    "join_payload",
    "mask_payload",
    "open_participant",
    "read_upgrade_head",
    "upgrade_request",
]

#: The one Sec-WebSocket-Key every participant sends (16 bytes, base64; RFC 6455 section 4.1).
#: The server's answer still depends on it, so the accept check stays meaningful.
HANDSHAKE_KEY: Final = "Z2VvZ2F0ZS1iZW5jaC0xNg=="
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
#: The ``Sec-WebSocket-Accept`` value a server answers :data:`HANDSHAKE_KEY` with.
HANDSHAKE_ACCEPT: Final = base64.b64encode(hashlib.sha1(HANDSHAKE_KEY.encode() + _GUID).digest())
_MAX_HEAD: Final = 16384  # the largest upgrade response read
_MAX_FRAME: Final = 1 << 20  # the largest server frame held while it arrives
_ECHO_PREFIX: Final = b'{"type":"echo","pad":"'
_ECHO_SUFFIX: Final = b'"}'
#: The smallest echo message: ``{"type":"echo","pad":""}``.
MIN_ECHO_SIZE: Final = len(_ECHO_PREFIX) + len(_ECHO_SUFFIX)
_TEXT: Final = 0x1
_CLOSE: Final = 0x8
_PING: Final = 0x9
_PONG: Final = 0xA

P = TypeVar("P", bound="Participant")


class LoadError(GeogateError):
    """A benchmark participant failed: refused, closed by the server, or malformed traffic."""


class Stage(enum.StrEnum):
    """Where a participant is in its life (module docstring)."""

    UPGRADING = "upgrading"
    JOINING = "joining"
    FIRST_ECHO = "first-echo"
    IDLE = "idle"
    ECHO = "echo"
    CLOSING = "closing"
    CLOSED = "closed"


# Module-level aliases: the hot path compares stages by identity without an enum class lookup.
_UPGRADING: Final = Stage.UPGRADING
_JOINING: Final = Stage.JOINING
_FIRST_ECHO: Final = Stage.FIRST_ECHO
_IDLE: Final = Stage.IDLE
_ECHO: Final = Stage.ECHO
_CLOSING: Final = Stage.CLOSING
_CLOSED: Final = Stage.CLOSED


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where participants connect: a WebSocket server or proxy on ``host:port``.

    Attributes:
        host: an IP address (IPv6 without brackets).
        port: the TCP port.
        path: the request target.
        request: the upgrade request every participant sends (derived).

    Raises:
        ValueError: an empty host, a port out of range or a path not starting with ``/``.
    """

    host: str
    port: int
    path: str = "/"
    request: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
        authority = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "request", upgrade_request(f"{authority}:{self.port}", self.path))


def upgrade_request(host: str, path: str, headers: str = "",
                    user_agent: str = "geogate-bench") -> bytes:
    """The HTTP upgrade request a load client sends (RFC 6455 section 4.1), with the fixed key.

    Args:
        host: the Host header value.
        path: the request target.
        headers: more header lines, each ending in CRLF (an ``X-Forwarded-For``...).
        user_agent: the User-Agent header value.
    """
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {HANDSHAKE_KEY}\r\nSec-WebSocket-Version: 13\r\n{headers}"
        f"User-Agent: {user_agent}\r\n\r\n"
    ).encode("ascii")


def read_upgrade_head(head: bytes) -> tuple[int, int, bool] | None:
    """Read the head of an upgrade response.

    Args:
        head: the bytes received so far.

    Returns:
        None while the head is incomplete; else the status code (0 when unreadable), where the
        head ends (the frames or body start 4 bytes later), and whether it carries the
        ``Sec-WebSocket-Accept`` value that answers :data:`HANDSHAKE_KEY`.
    """
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return None
    parts = head[: head.find(b"\r\n")].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, end, HANDSHAKE_ACCEPT in head[:end]


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """XOR a payload with a 4-byte masking key (RFC 6455 section 5.3); the same call unmasks.

    Args:
        payload: the bytes to mask.
        mask: the 4-byte key.

    Returns:
        The masked bytes, as long as ``payload``.

    Raises:
        ValueError: ``mask`` is not 4 bytes long.
    """
    if len(mask) != 4:
        raise ValueError(f"a masking key is 4 bytes, got {len(mask)}")
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def encode_client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """Encode one final, masked client frame (RFC 6455 section 5.2).

    Args:
        opcode: the frame opcode (1 text, 8 close, 10 pong...).
        payload: the unmasked payload.
        mask: the 4-byte masking key.

    Returns:
        The frame's bytes.

    Raises:
        ValueError: an opcode outside 0-15, or a bad mask.
    """
    if not 0 <= opcode <= 0xF:
        raise ValueError(f"opcode must be 0-15, got {opcode}")
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + mask_payload(payload, mask)


def echo_payload(size: int) -> bytes:
    """An ``echo`` message of exactly ``size`` bytes, which the demo server returns unchanged.

    Raises:
        ValueError: ``size`` is below :data:`MIN_ECHO_SIZE`.
    """
    if size < MIN_ECHO_SIZE:
        raise ValueError(f"an echo message is at least {MIN_ECHO_SIZE} bytes, got {size}")
    return _ECHO_PREFIX + b"x" * (size - MIN_ECHO_SIZE) + _ECHO_SUFFIX


def join_payload(meeting: str, participant: str) -> bytes:
    """A demo-protocol ``join`` message."""
    return orjson.dumps({"type": "join", "meeting": meeting, "participant": participant})


class EchoLoad:
    """A closed-loop echo load over participants: each sends its next message on each reply.

    Attributes:
        running: participants send again on a reply while it is set.
        samples: one round-trip time per reply, in seconds.
        errors: replies of an unexpected length (an error reply instead of the echo).
        lost: participants whose connection ended while a round trip was in flight.
        inflight: participants with a round trip in flight.
    """

    __slots__ = ("_drained", "errors", "inflight", "lost", "running", "samples")

    def __init__(self) -> None:
        self.running = False
        self.samples: list[float] = []
        self.errors = 0
        self.lost = 0
        self.inflight = 0
        self._drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self, participants: Iterable[Participant]) -> None:
        """Send the first message on every idle participant."""
        self.running = True
        for participant in participants:
            participant.start_echo(self)

    def stop(self) -> None:
        """Stop sending; each participant finishes the round trip it has in flight."""
        self.running = False
        if self.inflight == 0 and not self._drained.done():
            self._drained.set_result(None)

    def finished(self) -> None:
        """A participant left the load (its last reply came, or its connection ended)."""
        self.inflight -= 1
        if not self.running and self.inflight == 0 and not self._drained.done():
            self._drained.set_result(None)

    async def drained(self, timeout: float) -> bool:
        """Wait until no round trip is in flight after :meth:`stop`; False on timeout."""
        try:
            await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        except TimeoutError:
            return False
        return True


class FrameReader(asyncio.Protocol):
    """The receiving half both load clients share: server frames cut at their boundaries.

    :meth:`read_frames` walks the frames of each chunk reading only their headers (server
    frames are unmasked, RFC 6455 section 5.1), keeps a frame cut by the end of a chunk for the
    next one, and hands each whole frame to :meth:`frame` as offsets into the chunk: no object
    is made per frame. A masked frame or one over :attr:`max_frame` bytes goes to
    :meth:`frame_error`.
    """

    __slots__ = ("_pending",)

    #: The largest server frame held while it arrives.
    max_frame = _MAX_FRAME

    def __init__(self) -> None:
        self._pending = b""

    def read_frames(self, data: bytes) -> None:
        """Hand each whole frame of ``data`` (after what the last chunk left) to :meth:`frame`."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        n = len(data)
        pos = 0
        while n - pos >= 2:
            b1 = data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            if b1 & 0x80:
                self.frame_error("the server sent a masked frame (RFC 6455 section 5.1)")
                return
            end = start + length
            if end > n:
                if length > self.max_frame:
                    self.frame_error(f"a server frame over {self.max_frame} bytes")
                    return
                break
            first = data[pos]
            pos = end
            if not self.frame(first, data, start, end):
                return
        if pos < n:
            self._pending = data[pos:]

    def frame(self, first: int, data: bytes, start: int, end: int) -> bool:
        """One whole frame: its first header byte (FIN, opcode) and payload ``data[start:end]``.

        Returns:
            False to stop reading this chunk (the connection is ending).
        """
        raise NotImplementedError

    def frame_error(self, detail: str) -> None:
        """The server broke the framing rules; the connection cannot go on."""
        raise NotImplementedError


class UpgradingClient(FrameReader):
    """The connection half both load clients share: the upgrade, the join, and the endings.

    On connect it sends ``request``; it reads the answer (status 101 and the expected
    ``Sec-WebSocket-Accept``, at most 16 KiB of head), then calls :meth:`joining` and sends
    ``join_frame``, and hands every later byte to :meth:`~FrameReader.read_frames`. Any failure
    before the client is ready fails :attr:`ready` with :class:`LoadError` and drops the
    connection.

    Args:
        request: the upgrade request.
        join_frame: the masked join frame, sent when the upgrade succeeds.
        mask: the connection's masking key (for pongs and close frames).

    Attributes:
        transport: the connection, once made.
        upgraded: the 101 answer came.
        ready: done when the subclass says the client is ready, or failed with LoadError.
    """

    __slots__ = ("_abort_timer", "_head", "_join_frame", "_mask", "_request", "ready",
                 "transport", "upgraded")

    def __init__(self, request: bytes, join_frame: bytes, mask: bytes) -> None:
        super().__init__()
        self._request = request
        self._join_frame = join_frame
        self._mask = mask
        self._head = b""
        self._abort_timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            data = self._upgrade(data)
            if not data:
                return
        self.read_frames(data)

    def frame_error(self, detail: str) -> None:
        self._fail(LoadError(detail))

    def eof_received(self) -> bool | None:
        return None  # the server closed its side: close ours too (connection_lost follows)

    def joining(self) -> None:
        """The upgrade succeeded; the join frame is sent right after this returns."""

    def _upgrade(self, data: bytes) -> bytes:
        """Read the upgrade response; return the bytes after it (frames), or b"" until whole."""
        head = self._head + data if self._head else data
        answer = read_upgrade_head(head)
        if answer is None:
            if len(head) > _MAX_HEAD:
                self._fail(LoadError("upgrade response too long"))
            else:
                self._head = head
            return b""
        self._head = b""
        status, end, accepted = answer
        if status != 101:
            line = head[: head.find(b"\r\n")]
            self._fail(LoadError(f"upgrade refused: {line.decode('latin-1')}"))
            return b""
        if not accepted:
            self._fail(LoadError("upgrade response without the expected Sec-WebSocket-Accept"))
            return b""
        self.upgraded = True
        self.joining()
        assert self.transport is not None
        self.transport.write(self._join_frame)
        return head[end + 4 :]

    def _pong(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(encode_client_frame(_PONG, payload, self._mask))

    def _send_close(self, code: bytes, timeout: float) -> None:
        """Send a close frame with ``code`` (two bytes, or none); drop the connection after
        ``timeout`` seconds if the server does not end it."""
        assert self.transport is not None
        self.transport.write(encode_client_frame(_CLOSE, code, self._mask))
        self._arm_abort(timeout)

    def _fail(self, exc: LoadError) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        self.abort()

    def _arm_abort(self, timeout: float) -> None:
        if self._abort_timer is None and self.transport is not None:
            self._abort_timer = asyncio.get_running_loop().call_later(timeout, self.abort)

    def _cancel_abort(self) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()


class Participant(UpgradingClient):
    """One benchmark participant on its own connection (module docstring).

    Args:
        request: the upgrade request.
        join_frame: the masked join frame, sent when the upgrade succeeds.
        echo_frame: the masked echo frame, sent for every round trip.
        mask: the connection's masking key (for pongs and the close frame).
        echo_size: the payload length of the echo reply.
        first_echo: make one echo round trip after ``joined`` before being ready.
        started: ``time.perf_counter()`` when the connection attempt began.

    Attributes:
        stage: where the participant is.
        ready: done when the participant is ready (IDLE), or failed with :class:`LoadError`.
        closed: done when the connection is gone.
        time_to_first_echo: seconds from ``started`` to the first echo reply (with
            ``first_echo``).
        close_code: the code of the server's close frame, if one came.
        unexpected: data messages that came while none was expected.
    """

    __slots__ = (
        "_echo_frame",
        "_echo_size",
        "_first_echo",
        "close_code",
        "closed",
        "load",
        "sent_at",
        "stage",
        "started",
        "time_to_first_echo",
        "unexpected",
    )

    def __init__(
        self,
        request: bytes,
        join_frame: bytes,
        echo_frame: bytes,
        mask: bytes,
        echo_size: int,
        *,
        first_echo: bool,
        started: float,
    ) -> None:
        super().__init__(request, join_frame, mask)
        self._echo_frame = echo_frame
        self._echo_size = echo_size
        self._first_echo = first_echo
        self.stage = _UPGRADING
        self.started = started
        self.sent_at = 0.0
        self.time_to_first_echo = 0.0
        self.close_code: int | None = None
        self.unexpected = 0
        self.load: EchoLoad | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def frame(self, first: int, data: bytes, start: int, end: int) -> bool:
        if first & 0x08:
            self._control(first & 0x0F, data[start:end])
        elif first & 0x80:
            self.message(data, start, end)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        stage = self.stage
        self.stage = _CLOSED
        self._cancel_abort()
        if stage is _ECHO and self.load is not None:
            load, self.load = self.load, None
            load.lost += 1
            load.finished()
        if not self.ready.done():
            code = f" (close code {self.close_code})" if self.close_code is not None else ""
            self.ready.set_exception(LoadError(f"connection lost in stage {stage}{code}: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    # ---- frames --------------------------------------------------------------------------------

    def joining(self) -> None:
        self.stage = _JOINING

    def message(self, data: bytes, start: int, end: int) -> None:
        """A complete data message (its last frame) arrived: ``data[start:end]`` is its payload.

        Subclasses speaking another join protocol override this, and report the echo replies
        with :meth:`echo_replied` and :meth:`first_echo_replied`.
        """
        stage = self.stage
        if stage is _ECHO:
            if end - start != self._echo_size:
                assert self.load is not None
                self.load.errors += 1
            self.echo_replied()
        elif stage is _JOINING:
            payload = data[start:end]
            if b'"joined"' not in payload:
                self._fail(LoadError(f"join refused: {payload[:300].decode('utf-8', 'replace')}"))
                return
            if self._first_echo:
                assert self.transport is not None
                self.stage = _FIRST_ECHO
                self.transport.write(self._echo_frame)
            else:
                self.stage = _IDLE
                self.ready.set_result(None)
        elif stage is _FIRST_ECHO:
            self.first_echo_replied()
        else:
            self.unexpected += 1

    def echo_replied(self) -> None:
        """The reply of a round trip of the echo load came (stage ECHO): record it, send again."""
        load = self.load
        assert load is not None and self.transport is not None
        now = time.perf_counter()
        load.samples.append(now - self.sent_at)
        if load.running:
            self.sent_at = now
            self.transport.write(self._echo_frame)
        else:
            self.stage = _IDLE
            self.load = None
            load.finished()

    def first_echo_replied(self) -> None:
        """The reply of the round trip after the join came (stage FIRST_ECHO): ready."""
        self.time_to_first_echo = time.perf_counter() - self.started
        self.stage = _IDLE
        self.ready.set_result(None)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            self._pong(payload)
        elif opcode == _CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if self.stage is _CLOSING or self.stage is _CLOSED:
                return  # the answer to our close: the server closes the TCP connection next
            if self.stage is _ECHO and self.load is not None:
                load, self.load = self.load, None
                load.lost += 1
                load.finished()
            # Echo the status code (RFC 6455 section 5.5.1), then wait for the server's FIN.
            self.stage = _CLOSING
            self._send_close(payload[:2], 5.0)
            if not self.ready.done():
                self.ready.set_exception(LoadError(
                    f"closed by the server with code {self.close_code}: "
                    f"{payload[2:].decode('utf-8', 'replace')}"
                ))

    # ---- control -------------------------------------------------------------------------------

    def start_echo(self, load: EchoLoad) -> None:
        """Join ``load``: send the first echo message now (the participant must be IDLE).

        Raises:
            LoadError: the participant is not idle.
        """
        if self.stage is not _IDLE or self.transport is None:
            raise LoadError(f"cannot start an echo load in stage {self.stage}")
        self.stage = _ECHO
        self.load = load
        load.inflight += 1
        self.sent_at = time.perf_counter()
        self.transport.write(self._echo_frame)

    def close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Start the closing handshake; the connection is aborted after ``timeout`` seconds."""
        transport = self.transport
        if transport is None or self.stage is _CLOSING or self.stage is _CLOSED:
            return
        if not self.upgraded:
            transport.close()
            return
        if self.stage is _ECHO and self.load is not None:
            load, self.load = self.load, None
            load.finished()
        self.stage = _CLOSING
        self._send_close(code.to_bytes(2, "big"), timeout)


async def open_participant(
    endpoint: Endpoint,
    *,
    meeting: str,
    participant: str,
    source: str | None = None,
    echo_size: int = 100,
    first_echo: bool = False,
    timeout: float = 10.0,
) -> Participant:
    """Connect, upgrade and join; return the participant once it is ready.

    Args:
        endpoint: where to connect.
        meeting: the meeting to join.
        participant: the participant id.
        source: the local address to connect from (port chosen by the kernel).
        echo_size: the size of the echo message, in bytes.
        first_echo: make one echo round trip after ``joined`` (for the join benchmark).
        timeout: seconds for the whole sequence.

    Returns:
        The participant, IDLE.

    Raises:
        LoadError: the upgrade or the join was refused, or the server closed the connection.
        TimeoutError: the sequence took longer than ``timeout``.
        OSError: the connection could not be made.
    """
    started = time.perf_counter()
    mask = os.urandom(4)
    proto = Participant(
        endpoint.request,
        encode_client_frame(_TEXT, join_payload(meeting, participant), mask),
        encode_client_frame(_TEXT, echo_payload(echo_size), mask),
        mask,
        echo_size,
        first_echo=first_echo,
        started=started,
    )
    return await connect_participant(proto, endpoint, source=source, timeout=timeout)


async def connect_participant(
    proto: P, endpoint: Endpoint, *, source: str | None = None, timeout: float = 10.0
) -> P:
    """Connect ``proto`` to ``endpoint`` and wait until it is ready (upgraded and joined).

    Args:
        proto: the participant, not yet connected.
        endpoint: where to connect.
        source: the local address to connect from (port chosen by the kernel).
        timeout: seconds for the whole sequence.

    Returns:
        ``proto``, IDLE.

    Raises:
        LoadError: the upgrade or the join was refused, or the server closed the connection.
        TimeoutError: the sequence took longer than ``timeout``.
        OSError: the connection could not be made.
    """
    loop = asyncio.get_running_loop()
    local_addr = (source, 0) if source else None
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: proto, endpoint.host, endpoint.port, local_addr=local_addr
            )
            await proto.ready
    except BaseException:
        proto.abort()
        raise
    return proto


async def close_all(participants: Sequence[Participant], timeout: float = 10.0) -> int:
    """Close participants with 1000 and wait for their connections to end.

    Args:
        participants: the participants to close.
        timeout: seconds to wait for all of them; the rest are aborted.

    Returns:
        How many had to be aborted.
    """
    for participant in participants:
        participant.close(timeout=timeout)
    waiting = {p.closed: p for p in participants if not p.closed.done()}
    if not waiting:
        return 0
    _, pending = await asyncio.wait(waiting, timeout=timeout)
    for future in pending:
        waiting[future].abort()
    if pending:
        # Aborted transports report connection_lost on the next loop iterations.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*pending), 1.0)
    return len(pending)
