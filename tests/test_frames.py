"""Tests for proxy.frames: frame headers, masking, close payloads, message assembly."""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame
from websockets.frames import Opcode as WsOpcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from proxy import frames
from proxy.errors import MessageTooBig, ProtocolViolation
from proxy.frames import (
    CLOSE_CODES_ALLOWED_ON_WIRE,
    Header,
    MessageAssembler,
    Opcode,
    apply_mask,
    encode_close_payload,
    encode_frame,
    is_control,
    is_data,
    parse_close_payload,
    parse_header,
)

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def header_of(frame: bytes, require_mask: bool | None = None) -> Header:
    """Parse a header that must be complete."""
    header = parse_header(frame, 0, require_mask)
    assert header is not None
    return header


def payload_of(frame: bytes) -> bytes:
    """Return the unmasked payload of one whole frame."""
    header = header_of(frame)
    assert header.frame_len == len(frame)
    body = frame[header.header_len :]
    return apply_mask(body, header.mask) if header.mask is not None else body


def frame_for(
    opcode: int, payload: bytes, *, fin: bool = True, mask_key: bytes | None = None
) -> bytes:
    """Build a frame with a fixed mask key, independently of encode_frame (reference encoder)."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask_key is not None else 0
    size = len(payload)
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if mask_key is None:
        return head + payload
    masked = bytes(b ^ mask_key[i % 4] for i, b in enumerate(payload))
    return head + mask_key + masked


# opcodes


def test_opcode_values_follow_rfc_6455() -> None:
    """Opcode values are the RFC 6455 section 5.2 ones."""
    assert [int(op) for op in Opcode] == [0x0, 0x1, 0x2, 0x8, 0x9, 0xA]


def test_is_control_and_is_data_split_the_opcode_space() -> None:
    """Close, ping and pong are control opcodes; continuation, text and binary are data."""
    assert [op for op in Opcode if is_control(op)] == [Opcode.CLOSE, Opcode.PING, Opcode.PONG]
    assert [op for op in Opcode if is_data(op)] == [Opcode.CONT, Opcode.TEXT, Opcode.BINARY]


# parse_header / encode_frame


def test_rfc_examples_parse() -> None:
    """The RFC 6455 section 5.7 sample frames parse to the documented fields."""
    unmasked = bytes.fromhex("810548656c6c6f")
    assert header_of(unmasked, False) == Header(True, 0, 1, False, 5, None, 2)
    assert payload_of(unmasked) == b"Hello"
    masked = bytes.fromhex("818537fa213d7f9f4d5158")
    assert header_of(masked, True) == Header(True, 0, 1, True, 5, b"\x37\xfa\x21\x3d", 6)
    assert payload_of(masked) == b"Hello"
    first_fragment = bytes.fromhex("010348656c")
    assert header_of(first_fragment) == Header(False, 0, 1, False, 3, None, 2)
    binary_256 = bytes.fromhex("827e0100") + bytes(256)
    assert header_of(binary_256) == Header(True, 0, 2, False, 256, None, 4)
    binary_64k = bytes.fromhex("827f0000000000010000") + bytes(65536)
    assert header_of(binary_64k) == Header(True, 0, 2, False, 65536, None, 10)


def test_encode_unmasked_matches_rfc_example() -> None:
    """An unmasked single-frame text 'Hello' encodes to the RFC 6455 section 5.7 bytes."""
    assert encode_frame(Opcode.TEXT, b"Hello", mask=False) == bytes.fromhex("810548656c6c6f")


@pytest.mark.parametrize("size", LENGTHS)
@pytest.mark.parametrize("mask", [False, True])
def test_encode_parse_round_trip(size: int, mask: bool) -> None:
    """Every length encoding round-trips, masked or not, with the minimal header length."""
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = encode_frame(Opcode.BINARY, payload, mask=mask)
    header = header_of(frame, mask)
    expected_len = (2 if size < 126 else 4 if size < 65536 else 10) + (4 if mask else 0)
    assert (header.fin, header.opcode, header.masked, header.length) == (True, 2, mask, size)
    assert header.header_len == expected_len
    assert payload_of(frame) == payload


@pytest.mark.parametrize("size", LENGTHS)
@pytest.mark.parametrize("mask_key", [None, b"\x01\x02\x03\x04"])
def test_parse_matches_reference_encoder(size: int, mask_key: bytes | None) -> None:
    """Frames from an independent encoder parse to their length, mask and payload."""
    payload = b"\xa5" * size
    frame = frame_for(Opcode.TEXT, payload, mask_key=mask_key)
    header = header_of(frame)
    assert (header.length, header.mask) == (size, mask_key)
    assert payload_of(frame) == payload


def test_encode_masked_uses_fresh_keys() -> None:
    """Two masked encodings of the same payload use different random keys."""
    keys = {header_of(encode_frame(Opcode.TEXT, b"x", mask=True)).mask for _ in range(8)}
    assert len(keys) > 1


def test_encode_not_fin_and_control() -> None:
    """fin=False clears FIN; control frames encode with their opcode."""
    assert header_of(encode_frame(Opcode.TEXT, b"ab", fin=False, mask=False)).fin is False
    close = encode_frame(Opcode.CLOSE, encode_close_payload(1000, "bye"), mask=True)
    assert header_of(close).opcode == Opcode.CLOSE
    assert parse_close_payload(payload_of(close)) == (1000, "bye")


def test_encode_accepts_bytearray_and_memoryview() -> None:
    """Payloads may be any bytes-like object."""
    for payload in (bytearray(b"abc"), memoryview(b"abc")):
        assert payload_of(encode_frame(Opcode.BINARY, payload, mask=True)) == b"abc"
        assert payload_of(encode_frame(Opcode.BINARY, payload, mask=False)) == b"abc"


@pytest.mark.parametrize(
    ("opcode", "payload", "fin"),
    [
        (3, b"", True),
        (0xB, b"", True),
        (16, b"", True),
        (-1, b"", True),
        (Opcode.PING, b"x" * 126, True),
        (Opcode.CLOSE, b"\x03\xe8", False),
    ],
)
def test_encode_refuses_invalid_frames(opcode: int, payload: bytes, fin: bool) -> None:
    """Unknown opcodes, oversized or fragmented control frames cannot be encoded."""
    with pytest.raises(ValueError):
        encode_frame(opcode, payload, fin=fin, mask=False)


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65535, 65536])
@pytest.mark.parametrize("mask_key", [None, b"\x0a\x0b\x0c\x0d"])
def test_every_split_point_returns_none_until_complete(size: int, mask_key: bytes | None) -> None:
    """Any prefix shorter than the header gives None; the full header parses."""
    frame = frame_for(Opcode.BINARY, bytes(size), mask_key=mask_key)
    full = header_of(frame)
    for cut in range(full.header_len):
        assert parse_header(frame[:cut]) is None, cut
    assert parse_header(frame[: full.header_len]) == full


def test_parse_at_offset_walks_consecutive_frames() -> None:
    """pos lets the caller walk frames in one buffer by frame_len."""
    frames_in = [
        frame_for(Opcode.TEXT, b"a" * 10, fin=False),
        frame_for(Opcode.PING, b"p"),
        frame_for(Opcode.CONT, b"b" * 300),
    ]
    buf = memoryview(b"".join(frames_in))
    pos, seen = 0, []
    while (header := parse_header(buf, pos)) is not None:
        seen.append((header.opcode, header.length))
        pos += header.frame_len
    assert seen == [(1, 10), (9, 1), (0, 300)]
    assert pos == len(buf)


def test_parse_accepts_bytearray_and_offset_split() -> None:
    """An incomplete header after an offset gives None; a bytearray buffer works."""
    buf = bytearray(b"\x00\x00" + frame_for(Opcode.BINARY, bytes(200)))
    assert parse_header(buf[:3], 2) is None
    assert parse_header(buf, 2) == Header(True, 0, 2, False, 200, None, 4)


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
def test_reserved_bits_are_a_violation(rsv: int) -> None:
    """Any RSV bit set is a ProtocolViolation: no extension is negotiated."""
    with pytest.raises(ProtocolViolation):
        parse_header(bytes((0x81 | rsv, 0x00)))


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcodes_are_a_violation(opcode: int) -> None:
    """Reserved opcodes are a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_header(bytes((0x80 | opcode, 0x00)))


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_fragmented_control_frame_is_a_violation(opcode: int) -> None:
    """A control frame without FIN is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_header(bytes((opcode, 0x00)))


@pytest.mark.parametrize("second", [126, 127])
def test_long_control_frame_is_a_violation_early(second: int) -> None:
    """A control frame announcing an extended length fails from its first two bytes."""
    with pytest.raises(ProtocolViolation):
        parse_header(bytes((0x89, second)))


def test_control_frame_of_125_bytes_is_accepted() -> None:
    """A control frame of exactly 125 bytes is valid."""
    assert header_of(frame_for(Opcode.PONG, bytes(125))).length == 125


@pytest.mark.parametrize(
    "head",
    [
        bytes.fromhex("827e007d"),  # 125 in the 16-bit form
        bytes.fromhex("827e0000"),
        bytes.fromhex("827f000000000000ffff"),  # 65535 in the 64-bit form
        bytes.fromhex("827f0000000000000001"),
    ],
)
def test_non_minimal_length_is_a_violation(head: bytes) -> None:
    """A length not in its shortest encoding is a ProtocolViolation (strict RFC 6455 5.2)."""
    with pytest.raises(ProtocolViolation):
        parse_header(head)


def test_64_bit_length_with_top_bit_is_a_violation() -> None:
    """A 64-bit length with its most significant bit set is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_header(bytes.fromhex("827f8000000000000000"))


def test_largest_64_bit_length_is_accepted() -> None:
    """The largest 63-bit length parses (the caller enforces its own size limit)."""
    assert header_of(bytes.fromhex("827f7fffffffffffffff")).length == 2**63 - 1


def test_unmasked_client_frame_is_a_violation() -> None:
    """With require_mask=True an unmasked frame is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_header(frame_for(Opcode.TEXT, b"hi"), 0, True)


def test_masked_server_frame_is_a_violation() -> None:
    """With require_mask=False a masked frame is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_header(frame_for(Opcode.TEXT, b"hi", mask_key=b"abcd"), 0, False)


def test_require_mask_none_skips_the_check() -> None:
    """Without require_mask, masked and unmasked frames both parse."""
    assert header_of(frame_for(Opcode.TEXT, b"hi")).masked is False
    assert header_of(frame_for(Opcode.TEXT, b"hi", mask_key=b"abcd")).masked is True


def test_violations_carry_close_code_1002() -> None:
    """Framing errors close with 1002 (protocol error)."""
    with pytest.raises(ProtocolViolation) as caught:
        parse_header(b"\xc1\x00")
    assert caught.value.close_code == 1002


# masking


def test_apply_mask_rfc_example() -> None:
    """Masking 'Hello' with 37 fa 21 3d gives the RFC 6455 section 5.7 bytes."""
    key = bytes.fromhex("37fa213d")
    assert apply_mask(b"Hello", key) == bytes.fromhex("7f9f4d5158")
    assert frames._apply_mask_python(b"Hello", key) == bytes.fromhex("7f9f4d5158")


@given(data=st.binary(max_size=2048), key=st.binary(min_size=4, max_size=4))
def test_python_mask_matches_c_mask_and_is_an_involution(data: bytes, key: bytes) -> None:
    """The pure-Python mask equals the C one and masking twice restores the data."""
    masked = frames._apply_mask_python(data, key)
    assert masked == apply_mask(data, key)
    assert frames._apply_mask_python(masked, key) == data
    assert apply_mask(bytearray(masked), bytearray(key)) == data


def test_python_mask_is_used_without_the_c_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """When websockets.speedups cannot be imported, the pure-Python mask is chosen."""
    monkeypatch.setitem(sys.modules, "websockets.speedups", None)
    assert frames._load_apply_mask() is frames._apply_mask_python


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde"])
def test_mask_key_must_be_4_bytes(key: bytes) -> None:
    """Both mask implementations refuse keys that are not 4 bytes."""
    with pytest.raises(ValueError):
        apply_mask(b"data", key)
    with pytest.raises(ValueError):
        frames._apply_mask_python(b"data", key)


def test_python_mask_handles_empty_and_memoryview() -> None:
    """The fallback masks empty data and memoryviews."""
    assert frames._apply_mask_python(b"", b"abcd") == b""
    assert frames._apply_mask_python(memoryview(b"\x00\x00\x00\x00\x00"), b"abcd") == b"abcda"


# close payloads


@pytest.mark.parametrize(
    ("code", "allowed"),
    [
        (999, False),
        (1000, True),
        (1003, True),
        (1004, False),
        (1005, False),
        (1006, False),
        (1007, True),
        (1011, True),
        (1014, True),
        (1015, False),
        (1016, False),
        (2999, False),
        (3000, True),
        (4451, True),
        (4999, True),
        (5000, False),
    ],
)
def test_close_codes_allowed_on_wire(code: int, allowed: bool) -> None:
    """Close codes follow RFC 6455 section 7.4: reserved and unassigned codes are refused."""
    assert (code in CLOSE_CODES_ALLOWED_ON_WIRE) is allowed
    payload = code.to_bytes(2, "big") + b"why"
    if allowed:
        assert parse_close_payload(payload) == (code, "why")
        assert encode_close_payload(code, "why") == payload
    else:
        with pytest.raises(ProtocolViolation):
            parse_close_payload(payload)
        with pytest.raises(ValueError):
            encode_close_payload(code, "why")


def test_close_payload_empty_and_code_only() -> None:
    """An empty payload has no code; a 2-byte payload has a code and an empty reason."""
    assert parse_close_payload(b"") == (None, "")
    assert parse_close_payload(b"\x03\xe8") == (1000, "")


def test_close_payload_of_one_byte_is_a_violation() -> None:
    """A one-byte close payload is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_close_payload(b"\x03")


def test_close_reason_must_be_utf8() -> None:
    """A close reason that is not UTF-8 is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_close_payload(b"\x03\xe8\xff")
    with pytest.raises(ProtocolViolation):
        parse_close_payload(b"\x03\xe8\xc3")


def test_close_payload_over_125_bytes_is_a_violation() -> None:
    """A close payload longer than a control frame allows is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_close_payload(b"\x03\xe8" + b"a" * 124)


def test_close_reason_is_truncated_to_123_bytes() -> None:
    """An ASCII reason is cut to 123 bytes, giving a 125-byte payload."""
    payload = encode_close_payload(4451, "x" * 200)
    assert len(payload) == 125
    assert parse_close_payload(payload) == (4451, "x" * 123)


@pytest.mark.parametrize(("char", "kept"), [("é", 61), ("€", 40), ("😀", 30)])
def test_close_reason_is_truncated_on_a_character_boundary(char: str, kept: int) -> None:
    """Multi-byte reasons are cut before a character that would not fit whole."""
    payload = encode_close_payload(1001, "a" + char * 100)
    code, reason = parse_close_payload(payload)
    assert (code, reason) == (1001, "a" + char * kept)
    assert len(payload) <= 125


@given(
    code=st.sampled_from(sorted(CLOSE_CODES_ALLOWED_ON_WIRE)),
    reason=st.text(max_size=80),
)
def test_close_payload_round_trip(code: int, reason: str) -> None:
    """Any allowed code and reason round-trips, the reason being a prefix of the original."""
    parsed_code, parsed_reason = parse_close_payload(encode_close_payload(code, reason))
    assert parsed_code == code
    assert reason.startswith(parsed_reason)
    assert len(parsed_reason.encode()) <= 123


# MessageAssembler


def data_header(opcode: int, payload: bytes, fin: bool = True) -> Header:
    """Build an unmasked data frame header for payload."""
    return Header(fin, 0, opcode, False, len(payload), None, 2)


def test_single_frame_message() -> None:
    """A FIN data frame is a whole message at once."""
    assembler = MessageAssembler(100)
    assert assembler.add(data_header(Opcode.TEXT, b"hi"), b"hi") == (Opcode.TEXT, b"hi")
    assert not assembler.in_progress


def test_fragmented_message_is_joined() -> None:
    """Fragments are joined under the first frame's opcode when the FIN frame arrives."""
    assembler = MessageAssembler(100)
    assert assembler.add(data_header(Opcode.BINARY, b"ab", fin=False), b"ab") is None
    assert assembler.in_progress
    assert assembler.add(data_header(Opcode.CONT, b"cd", fin=False), b"cd") is None
    assert assembler.add(data_header(Opcode.CONT, b"ef"), bytearray(b"ef")) == (
        Opcode.BINARY,
        b"abcdef",
    )
    assert not assembler.in_progress
    assert assembler.add(data_header(Opcode.TEXT, b"x"), b"x") == (Opcode.TEXT, b"x")


def test_utf8_split_across_fragments_is_accepted() -> None:
    """A UTF-8 character split between fragments is valid once joined."""
    assembler = MessageAssembler(100)
    text = "é".encode()
    assert assembler.add(data_header(Opcode.TEXT, text[:1], fin=False), text[:1]) is None
    assert assembler.add(data_header(Opcode.CONT, text[1:]), text[1:]) == (Opcode.TEXT, text)


def test_invalid_utf8_text_closes_with_1007() -> None:
    """A text message that is not UTF-8 is a ProtocolViolation with close code 1007."""
    assembler = MessageAssembler(100)
    with pytest.raises(ProtocolViolation) as caught:
        assembler.add(data_header(Opcode.TEXT, b"\xff"), b"\xff")
    assert caught.value.close_code == 1007
    assert assembler.add(data_header(Opcode.BINARY, b"\xff"), b"\xff") == (Opcode.BINARY, b"\xff")


def test_continuation_without_start_is_a_violation() -> None:
    """A continuation frame with no message started is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        MessageAssembler(100).add(data_header(Opcode.CONT, b"x"), b"x")


def test_new_message_during_fragments_is_a_violation() -> None:
    """A new text or binary frame while a message is in progress is a ProtocolViolation."""
    assembler = MessageAssembler(100)
    assembler.add(data_header(Opcode.TEXT, b"a", fin=False), b"a")
    with pytest.raises(ProtocolViolation):
        assembler.add(data_header(Opcode.BINARY, b"b"), b"b")


def test_message_at_the_limit_is_accepted_and_over_is_too_big() -> None:
    """A message of exactly max_bytes passes; one byte more raises MessageTooBig (1009)."""
    assert MessageAssembler(4).add(data_header(Opcode.BINARY, b"abcd"), b"abcd") is not None
    with pytest.raises(MessageTooBig) as caught:
        MessageAssembler(4).add(data_header(Opcode.BINARY, b"abcde"), b"abcde")
    assert caught.value.close_code == 1009


def test_fragments_count_towards_the_limit() -> None:
    """The limit applies to the joined message, not each fragment."""
    assembler = MessageAssembler(5)
    assembler.add(data_header(Opcode.BINARY, b"abc", fin=False), b"abc")
    with pytest.raises(MessageTooBig):
        assembler.check(data_header(Opcode.CONT, b"def"))


def test_check_refuses_a_huge_frame_before_its_payload() -> None:
    """check raises MessageTooBig from the header alone."""
    with pytest.raises(MessageTooBig):
        MessageAssembler(1024).check(Header(True, 0, Opcode.BINARY, True, 2**40, b"abcd", 14))


def test_control_frames_are_not_assembled() -> None:
    """Passing a control frame header is a programming error."""
    with pytest.raises(ValueError):
        MessageAssembler(100).add(data_header(Opcode.PING, b""), b"")


def test_payload_length_must_match_header() -> None:
    """A payload of another size than the header says is a ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        MessageAssembler(100).add(data_header(Opcode.TEXT, b"abc"), b"ab")


def test_reset_drops_a_partial_message() -> None:
    """reset forgets a message in progress, so a new one may start."""
    assembler = MessageAssembler(100)
    assembler.add(data_header(Opcode.TEXT, b"a", fin=False), b"a")
    assembler.reset()
    assert assembler.add(data_header(Opcode.TEXT, b"b"), b"b") == (Opcode.TEXT, b"b")


def test_negative_limit_is_refused() -> None:
    """A negative max_bytes is refused."""
    with pytest.raises(ValueError):
        MessageAssembler(-1)


# interoperability with the websockets library's sans-I/O protocols


def open_client() -> ClientProtocol:
    """A websockets client already past its handshake."""
    return ClientProtocol(parse_uri("ws://example.org/"), state=State.OPEN, max_size=None)


def open_server() -> ServerProtocol:
    """A websockets server already past its handshake."""
    return ServerProtocol(state=State.OPEN, max_size=None)


def read_messages(data: bytes, require_mask: bool) -> list[tuple[int, bytes]]:
    """Walk a byte stream frame by frame, assembling data messages and listing control frames."""
    assembler = MessageAssembler(1 << 20)
    out: list[tuple[int, bytes]] = []
    pos = 0
    while (header := parse_header(data, pos, require_mask)) is not None:
        body = data[pos + header.header_len : pos + header.frame_len]
        assert len(body) == header.length
        payload = apply_mask(body, header.mask) if header.mask is not None else body
        if is_control(header.opcode):
            out.append((header.opcode, payload))
        elif (message := assembler.add(header, payload)) is not None:
            out.append(message)
        pos += header.frame_len
    assert pos == len(data)
    return out


def send_all(protocol: ClientProtocol | ServerProtocol) -> None:
    """Make a websockets protocol send one of each frame kind, fragments included."""
    protocol.send_text(b"hel", fin=False)
    protocol.send_ping(b"ping")
    protocol.send_continuation(b"lo", fin=True)
    protocol.send_binary(bytes(70000))
    protocol.send_binary(b"x" * 300)
    protocol.send_close(4451, "barred")


EXPECTED = [
    (Opcode.PING, b"ping"),
    (Opcode.TEXT, b"hello"),
    (Opcode.BINARY, bytes(70000)),
    (Opcode.BINARY, b"x" * 300),
    (Opcode.CLOSE, encode_close_payload(4451, "barred")),
]


def test_websockets_client_frames_parse_as_masked() -> None:
    """Frames from a websockets client are masked and parse back to the messages sent."""
    client = open_client()
    send_all(client)
    assert read_messages(b"".join(client.data_to_send()), require_mask=True) == EXPECTED


def test_websockets_server_frames_parse_as_unmasked() -> None:
    """Frames from a websockets server are unmasked and parse back to the messages sent."""
    server = open_server()
    send_all(server)
    assert read_messages(b"".join(server.data_to_send()), require_mask=False) == EXPECTED


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_our_frames_are_read_by_websockets(size: int) -> None:
    """Our masked frames are read by a websockets server, unmasked ones by a client."""
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    for protocol, mask in ((open_server(), True), (open_client(), False)):
        protocol.receive_data(encode_frame(Opcode.BINARY, payload[:3], fin=False, mask=mask))
        protocol.receive_data(encode_frame(Opcode.PING, b"p", mask=mask))
        protocol.receive_data(encode_frame(Opcode.CONT, payload[3:], mask=mask))
        events = [event for event in protocol.events_received() if isinstance(event, Frame)]
        assert len(events) == 3
        assert [(event.opcode, event.fin) for event in events] == [
            (WsOpcode.BINARY, False),
            (WsOpcode.PING, True),
            (WsOpcode.CONT, True),
        ]
        assert b"".join(bytes(event.data) for event in events if event.opcode != WsOpcode.PING) == (
            payload
        )
        assert protocol.parser_exc is None


def test_our_close_frame_is_read_by_websockets() -> None:
    """A close frame we build carries its code and reason to a websockets server."""
    server = open_server()
    server.receive_data(encode_frame(Opcode.CLOSE, encode_close_payload(4451, "barred"), mask=True))
    [event] = server.events_received()
    assert isinstance(event, Frame)
    assert Close.parse(event.data) == Close(4451, "barred")
    assert server.close_rcvd == Close(4451, "barred")


def test_close_payload_matches_websockets() -> None:
    """Our close payload encoding is byte-identical to websockets' Close.serialize."""
    for code, reason in ((1000, ""), (1001, "going away"), (4451, "é" * 20)):
        assert encode_close_payload(code, reason) == Close(code, reason).serialize()
