"""Sans-I/O WebSocket framing (RFC 6455 section 5): frame headers, masking, close payloads.

The relay passes frames between the two legs as bytes and only needs to know where each frame
ends, so ``parse_header`` is the hot path: it reads the fixed part of a header with integer
indexing and ``struct.unpack_from`` and allocates nothing but its result. Payloads are unmasked
only where the proxy reads messages itself (join phase, injected closes), with ``apply_mask``.

No extensions are negotiated on either leg (see ``proxy.handshake``), so any RSV bit is an error.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from typing import NamedTuple

from proxy.errors import MessageTooBig, ProtocolViolation

__all__ = [
    "CLOSE_CODES_ALLOWED_ON_WIRE",
    "MAX_CONTROL_PAYLOAD",
    "BytesLike",
    "Header",
    "MessageAssembler",
    "Opcode",
    "apply_mask",
    "encode_close_payload",
    "encode_frame",
    "is_control",
    "is_data",
    "parse_close_payload",
    "parse_header",
]

BytesLike = bytes | bytearray | memoryview

#: RFC 6455 section 5.5: control frames carry at most 125 payload bytes.
MAX_CONTROL_PAYLOAD = 125
# A close payload is a 2-byte code then the reason, within the control-frame limit.
_MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2

#: Close codes an endpoint may send or receive in a close frame (RFC 6455 section 7.4 and the
#: IANA registry): 1004-1006 and 1015 are reserved for local use, 1016-2999 are unassigned or
#: for extensions, 3000-3999 are registered by libraries, 4000-4999 are private (4451 is ours).
CLOSE_CODES_ALLOWED_ON_WIRE = frozenset(
    [*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)]
)


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2); 3-7 and 11-15 are reserved."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


# Indexed by the 4-bit opcode: a tuple lookup is cheaper than hashing into a set.
_KNOWN_OPCODE = tuple(any(op == known for known in Opcode) for op in range(16))


def is_control(opcode: int) -> bool:
    """Tell whether an opcode is a control opcode (close, ping, pong: high bit of the nibble).

    Args:
        opcode: the frame opcode.

    Returns:
        True for 0x8-0xF.
    """
    return opcode & 0x8 != 0


def is_data(opcode: int) -> bool:
    """Tell whether an opcode is a data opcode (continuation, text, binary).

    Args:
        opcode: the frame opcode.

    Returns:
        True for 0x0-0x7.
    """
    return opcode & 0x8 == 0


class Header(NamedTuple):
    """A parsed frame header (a NamedTuple: built with one tuple allocation on the hot path).

    Attributes:
        fin: the FIN bit: this frame ends its message.
        rsv: the RSV1-3 bits as an int (always 0 from ``parse_header``: no extensions).
        opcode: the opcode, a value of ``Opcode``.
        masked: the MASK bit.
        length: the payload length.
        mask: the 4-byte masking key, or None when not masked.
        header_len: bytes taken by the header (2 to 14); the payload follows.
    """

    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length: int
    mask: bytes | None
    header_len: int

    @property
    def frame_len(self) -> int:
        """Return the whole frame's length, header and payload."""
        return self.header_len + self.length


# NamedTuple's generated __new__ is Python code and costs more than the rest of parse_header;
# tuple.__new__ builds the same object directly (fields in declaration order).
_new_header = tuple.__new__
_unpack_u16 = struct.Struct("!H").unpack_from
_unpack_u64 = struct.Struct("!Q").unpack_from
_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack


def parse_header(buf: BytesLike, pos: int = 0, require_mask: bool | None = None) -> Header | None:
    """Parse the frame header starting at ``buf[pos]``.

    Strict about everything RFC 6455 section 5.2 says MUST, including minimal length encoding:
    a length sent in a longer form than needed is an error, not tolerated. Errors visible in the
    first two bytes are raised before the rest of the header has arrived.

    Args:
        buf: received bytes.
        pos: where the header starts.
        require_mask: True for frames from a client (must be masked, RFC 6455 section 5.1), False
            for frames from a server (must not be), None to skip the check.

    Returns:
        The header, or None when ``buf`` does not yet hold all of it.

    Raises:
        ProtocolViolation: an RSV bit set, an unknown opcode, a fragmented control frame or one
            with more than 125 payload bytes, a non-minimal length, a 64-bit length with the most
            significant bit set, or a mask bit contrary to ``require_mask``.
    """
    available = len(buf) - pos
    if available < 2:
        return None
    first = buf[pos]
    second = buf[pos + 1]
    opcode = first & 0x0F
    if first & 0x70:
        raise ProtocolViolation(f"reserved bits set: {(first >> 4) & 0x7:03b}")
    if not _KNOWN_OPCODE[opcode]:
        raise ProtocolViolation(f"unknown opcode {opcode:#x}")
    fin = first >= 0x80
    masked = second >= 0x80
    if require_mask is not None and masked != require_mask:
        raise ProtocolViolation(
            "frame from the client is not masked"
            if require_mask
            else "frame from the server is masked"
        )
    length = second & 0x7F
    if opcode >= 0x8:
        # RFC 6455 section 5.5: control frames are never fragmented and carry <= 125 bytes.
        if not fin:
            raise ProtocolViolation(f"fragmented control frame (opcode {opcode:#x})")
        if length > MAX_CONTROL_PAYLOAD:
            raise ProtocolViolation(f"control frame payload over {MAX_CONTROL_PAYLOAD} bytes")
    if length < 126:
        header_len = 2
    elif length == 126:
        if available < 4:
            return None
        (length,) = _unpack_u16(buf, pos + 2)
        if length < 126:
            raise ProtocolViolation(f"length {length} not minimally encoded (16-bit form)")
        header_len = 4
    else:
        if available < 10:
            return None
        (length,) = _unpack_u64(buf, pos + 2)
        if length >> 63:
            raise ProtocolViolation("64-bit payload length has its most significant bit set")
        if length < 0x10000:
            raise ProtocolViolation(f"length {length} not minimally encoded (64-bit form)")
        header_len = 10
    if masked:
        if available < header_len + 4:
            return None
        start = pos + header_len
        mask = bytes(buf[start : start + 4])
        return _new_header(Header, (fin, 0, opcode, True, length, mask, header_len + 4))
    return _new_header(Header, (fin, 0, opcode, False, length, None, header_len))


def _apply_mask_python(data: BytesLike, mask: bytes | bytearray) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` (RFC 6455 section 5.3), as one big int."""
    if len(mask) != 4:
        raise ValueError("mask must contain 4 bytes")
    size = len(data)
    key = (bytes(mask) * ((size >> 2) + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def _load_apply_mask() -> Callable[[BytesLike, bytes | bytearray], bytes]:
    try:
        from websockets.speedups import apply_mask as c_apply_mask
    except ImportError:  # websockets built without its C extension
        return _apply_mask_python
    return c_apply_mask


#: ``apply_mask(data, mask) -> bytes``: XOR ``data`` with the repeated 4-byte ``mask`` (RFC 6455
#: section 5.3; masking and unmasking are the same operation). The C version from
#: ``websockets.speedups`` when available, else a pure-Python one. Raises ValueError when
#: ``mask`` is not 4 bytes.
apply_mask = _load_apply_mask()


def encode_frame(opcode: int, payload: BytesLike, *, fin: bool = True, mask: bool) -> bytes:
    """Build one frame.

    Args:
        opcode: an ``Opcode``.
        payload: the unmasked payload.
        fin: whether this frame ends its message.
        mask: mask with a fresh random key (frames the proxy sends upstream, as a client must).

    Returns:
        The frame bytes.

    Raises:
        ValueError: an unknown opcode, or a control frame that is fragmented or over 125 bytes.
    """
    if not 0 <= opcode <= 0xF or not _KNOWN_OPCODE[opcode]:
        raise ValueError(f"unknown opcode {opcode!r}")
    size = len(payload)
    if opcode >= 0x8 and (not fin or size > MAX_CONTROL_PAYLOAD):
        raise ValueError(f"control frames must be final and carry <= {MAX_CONTROL_PAYLOAD} bytes")
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 0x10000:
        head = _pack_16(first, mask_bit | 126, size)
    else:
        head = _pack_64(first, mask_bit | 127, size)
    if mask:
        key = _mask_key()
        return head + key + apply_mask(payload, key)
    return head + payload


class _MaskKeys:
    """Masking keys from the system's strong source, drawn 1,024 at a time.

    RFC 6455 section 5.3 asks for unpredictable keys; one getrandom call per key cost tens of
    microseconds here, which an eviction wave (two masked frames per evicted participant) felt.
    """

    __slots__ = ("_offset", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._offset = 0

    def __call__(self) -> bytes:
        offset = self._offset
        if offset >= len(self._pool):
            self._pool = os.urandom(4096)
            offset = 0
        self._offset = offset + 4
        return self._pool[offset:offset + 4]


_mask_key = _MaskKeys()


def encode_close_payload(code: int, reason: str) -> bytes:
    """Build a close frame payload: the code, then the reason in UTF-8.

    The reason is cut to 123 bytes at a character boundary so the payload fits a control frame.

    Args:
        code: a close code allowed on the wire, such as 1000, 1001 or 4451.
        reason: the reason text.

    Returns:
        The payload, 2 to 125 bytes.

    Raises:
        ValueError: ``code`` is not in ``CLOSE_CODES_ALLOWED_ON_WIRE``.
    """
    if code not in CLOSE_CODES_ALLOWED_ON_WIRE:
        raise ValueError(f"close code {code!r} may not be sent (RFC 6455 section 7.4)")
    text = reason.encode("utf-8")
    if len(text) > _MAX_CLOSE_REASON:
        # Decoding the cut with "ignore" drops only a trailing partial character.
        text = text[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + text


def parse_close_payload(payload: BytesLike) -> tuple[int | None, str]:
    """Read a received close frame payload (RFC 6455 section 5.5.1, 7.4).

    Args:
        payload: the unmasked payload.

    Returns:
        (code, reason); (None, "") for an empty payload, which means no status code.

    Raises:
        ProtocolViolation: one byte, over 125 bytes, a code not allowed on the wire, or a reason
            that is not UTF-8.
    """
    size = len(payload)
    if size == 0:
        return None, ""
    if size == 1:
        raise ProtocolViolation("close payload of one byte")
    if size > MAX_CONTROL_PAYLOAD:
        raise ProtocolViolation(f"close payload over {MAX_CONTROL_PAYLOAD} bytes")
    code = (payload[0] << 8) | payload[1]
    if code not in CLOSE_CODES_ALLOWED_ON_WIRE:
        raise ProtocolViolation(f"close code {code} not allowed on the wire")
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("close reason is not UTF-8") from exc
    return code, reason


class MessageAssembler:
    """Joins data frames into whole messages, for the places where the proxy reads messages.

    Control frames may arrive between fragments (RFC 6455 section 5.4); the caller handles them
    and never passes them here. A text message is checked to be UTF-8 when complete.

    Args:
        max_bytes: largest message accepted.

    Raises:
        ValueError: ``max_bytes`` is negative.
    """

    __slots__ = ("_max_bytes", "_opcode", "_parts", "_size")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative: {max_bytes}")
        self._max_bytes = max_bytes
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def in_progress(self) -> bool:
        """Tell whether a fragmented message has started and not finished."""
        return self._opcode is not None

    def reset(self) -> None:
        """Drop any partial message."""
        self._opcode = None
        self._parts = []
        self._size = 0

    def check(self, header: Header) -> None:
        """Check a data frame header before its payload is read, so a huge frame is refused early.

        Args:
            header: the header of the next data frame.

        Raises:
            ProtocolViolation: a continuation without a message started, or a new message while
                one is in progress.
            MessageTooBig: the message would exceed ``max_bytes``.
            ValueError: a control frame header.
        """
        opcode = header.opcode
        if opcode >= 0x8:
            raise ValueError("control frames are not assembled")
        if opcode == Opcode.CONT:
            if self._opcode is None:
                raise ProtocolViolation("continuation frame without a message started")
        elif self._opcode is not None:
            raise ProtocolViolation("new data frame while a fragmented message is in progress")
        if self._size + header.length > self._max_bytes:
            raise MessageTooBig(
                f"message over {self._max_bytes} bytes ({self._size + header.length} so far)"
            )

    def add(self, header: Header, payload: BytesLike) -> tuple[int, bytes] | None:
        """Add a data frame; return the message when this frame completes it.

        Args:
            header: the frame header.
            payload: the unmasked payload (``header.length`` bytes).

        Returns:
            (opcode of the first frame, message bytes), or None while the message is incomplete.

        Raises:
            ProtocolViolation: see ``check``; also a payload whose size differs from the header or
                a text message that is not UTF-8 (close code 1007).
            MessageTooBig: the message would exceed ``max_bytes``.
            ValueError: a control frame header.
        """
        self.check(header)
        if len(payload) != header.length:
            raise ProtocolViolation(f"payload is {len(payload)} bytes, header says {header.length}")
        if self._opcode is None:
            if header.fin:
                # Unfragmented: the usual case, no list or join.
                message = bytes(payload)
                self._check_text(header.opcode, message)
                return header.opcode, message
            self._opcode = header.opcode
        self._parts.append(bytes(payload))
        self._size += header.length
        if not header.fin:
            return None
        opcode = self._opcode
        message = b"".join(self._parts)
        self.reset()
        self._check_text(opcode, message)
        return opcode, message

    @staticmethod
    def _check_text(opcode: int, message: bytes) -> None:
        if opcode == Opcode.TEXT:
            try:
                message.decode("utf-8")
            except UnicodeDecodeError as exc:
                violation = ProtocolViolation("text message is not UTF-8")
                # RFC 6455 section 7.4.1: 1007, inconsistent data within a message.
                violation.close_code = 1007
                raise violation from exc
