"""The load clients' shared wire pieces: the upgrade request and answer, and frame reading."""

from __future__ import annotations

import base64
import hashlib

from loadtests.wsclient import (
    HANDSHAKE_ACCEPT,
    HANDSHAKE_KEY,
    FrameReader,
    read_upgrade_head,
    upgrade_request,
)
from proxy.frames import Opcode, encode_frame


class _Frames(FrameReader):
    """Collects what FrameReader hands over."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[int, bytes]] = []
        self.errors: list[str] = []

    def frame(self, first: int, data: bytes, start: int, end: int) -> bool:
        self.frames.append((first, data[start:end]))
        return True

    def frame_error(self, detail: str) -> None:
        self.errors.append(detail)


def test_accept_value_answers_the_fixed_key() -> None:
    """The accept value is RFC 6455's hash of the fixed key."""
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    digest = hashlib.sha1(HANDSHAKE_KEY.encode() + guid).digest()
    assert base64.b64encode(digest) == HANDSHAKE_ACCEPT


def test_upgrade_request_carries_extra_headers() -> None:
    """Extra header lines go before the User-Agent, and the request ends with an empty line."""
    request = upgrade_request("h:1", "/x", "X-Forwarded-For: 10.0.0.1\r\n", user_agent="t")
    assert request.startswith(b"GET /x HTTP/1.1\r\nHost: h:1\r\n")
    assert b"X-Forwarded-For: 10.0.0.1\r\nUser-Agent: t\r\n\r\n" in request
    assert request.endswith(b"\r\n\r\n") and request.count(b"\r\n\r\n") == 1


def test_upgrade_head_is_read_once_whole() -> None:
    """An incomplete head is None; a whole one gives status, end and the accept check."""
    good = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + HANDSHAKE_ACCEPT
    assert read_upgrade_head(good) is None
    assert read_upgrade_head(good + b"\r\n\r\nxx") == (101, len(good), True)
    assert read_upgrade_head(b"HTTP/1.1 451 Unavailable\r\n\r\n{}") == (451, 24, False)
    assert read_upgrade_head(b"garbage\r\n\r\n") == (0, 7, False)


def test_frames_split_anywhere_are_handed_over_whole() -> None:
    """Frames cut at every byte boundary come out whole and in order, with 16-bit lengths."""
    frames = [encode_frame(Opcode.TEXT, b"a" * n, mask=False) for n in (0, 5, 125, 126, 300)]
    frames.append(encode_frame(Opcode.PING, b"p", mask=False))
    wire = b"".join(frames)
    reader = _Frames()
    for i in range(len(wire)):
        reader.read_frames(wire[i : i + 1])
    assert reader.frames == [(0x81, b"a" * n) for n in (0, 5, 125, 126, 300)] + [(0x89, b"p")]
    assert reader.errors == []


def test_masked_or_oversized_server_frames_are_errors() -> None:
    """A masked server frame, or one announced over the bound, is reported, not read."""
    reader = _Frames()
    reader.read_frames(encode_frame(Opcode.TEXT, b"x", mask=True))
    assert reader.frames == [] and len(reader.errors) == 1
    big = _Frames()
    big.max_frame = 10  # type: ignore[misc]
    big.read_frames(bytes((0x81, 126)) + (1000).to_bytes(2, "big") + b"x" * 10)
    assert big.frames == [] and big.errors == ["a server frame over 10 bytes"]
