"""Tests for proxy.handshake: request/response parsing, upgrade validation, response building."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.datastructures import Headers as WsHeaders
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from proxy.errors import HandshakeError
from proxy.handshake import (
    HandshakeFailed,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    accept_key,
    build_accept_response,
    build_client_request,
    build_error_response,
    new_key,
    validate_accept,
    validate_upgrade,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# The value RFC 6455 section 1.3 prints (SHA-1 b37a4f2c...c4ea); the brief misquoted its tail.
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

UPGRADE = (
    b"GET /room/42?user=ana&lang=pt&lang=es&flag HTTP/1.1\r\n"
    b"Host: meet.example.org\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Protocol: janus-protocol\r\n"
    b"X-Trace:   abc  \t\r\n"
    b"\r\n"
)

ACCEPTED = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n"
    b"\r\n"
)


def parse_request(data: bytes) -> Request:
    """Parse a complete request head in one feed."""
    request = RequestParser().feed(data)
    assert request is not None
    return request


def parse_response(data: bytes) -> Response:
    """Parse a complete response head in one feed."""
    response = ResponseParser().feed(data)
    assert response is not None
    return response


def request_with(*, drop: str = "", add: bytes = b"", line: bytes = b"") -> Request:
    """Build the sample upgrade with one header removed, lines added or a new request line."""
    lines = UPGRADE.split(b"\r\n")[:-2]
    if line:
        lines[0] = line
    kept = [raw for raw in lines if not drop or not raw.lower().startswith(drop.encode() + b":")]
    return parse_request(b"\r\n".join(kept) + b"\r\n" + add + b"\r\n")


# accept key


def test_accept_key_matches_rfc_6455_example() -> None:
    """The accept key of the RFC 6455 section 1.3 sample nonce is the one the RFC gives."""
    assert accept_key(KEY) == ACCEPT


def test_new_key_is_base64_of_16_random_bytes() -> None:
    """new_key returns base64 of 16 bytes and differs between calls."""
    first, second = new_key(), new_key()
    assert len(base64.b64decode(first, validate=True)) == 16
    assert first != second


# RequestParser


def test_request_fields_are_parsed() -> None:
    """Method, target, path, raw query and version come from the request line."""
    request = parse_request(UPGRADE)
    assert request.method == "GET"
    assert request.target == "/room/42?user=ana&lang=pt&lang=es&flag"
    assert request.path == "/room/42"
    assert request.query == "user=ana&lang=pt&lang=es&flag"
    assert request.version == "HTTP/1.1"


def test_request_headers_are_lowercased_stripped_and_ordered() -> None:
    """Header names are lower-cased, values stripped of OWS, and the order is kept."""
    request = parse_request(UPGRADE)
    assert [name for name, _ in request.headers] == [
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-protocol",
        "x-trace",
    ]
    assert request.get("X-TRACE") == "abc"


def test_request_get_returns_first_and_get_all_every_value() -> None:
    """get returns the first value or None; get_all returns all values in order."""
    request = parse_request(UPGRADE)
    assert request.get("Sec-WebSocket-Protocol") == "chat, superchat"
    assert request.get_all("sec-websocket-protocol") == ["chat, superchat", "janus-protocol"]
    assert request.get("origin") is None
    assert request.get_all("origin") == []


def test_request_subprotocols_split_every_header() -> None:
    """subprotocols comma-splits every Sec-WebSocket-Protocol header, skipping empty items."""
    request = request_with(drop="sec-websocket-protocol", add=b"Sec-WebSocket-Protocol: a, ,b\r\n")
    assert request.subprotocols() == ["a", "b"]
    assert parse_request(UPGRADE).subprotocols() == ["chat", "superchat", "janus-protocol"]


def test_request_query_params_decode_repeats_and_blanks() -> None:
    """query_params lists repeated names in order and keeps names without a value."""
    request = parse_request(UPGRADE)
    assert request.query_params() == {"user": ["ana"], "lang": ["pt", "es"], "flag": [""]}
    assert request_with(line=b"GET /x?n=%C3%A9+b HTTP/1.1").query_params() == {"n": ["é b"]}


def test_request_without_query_has_empty_query() -> None:
    """A target without '?' gives the whole target as path and an empty query."""
    request = request_with(line=b"GET /plain HTTP/1.1")
    assert (request.path, request.query, request.query_params()) == ("/plain", "", {})


def test_absolute_form_target_is_accepted() -> None:
    """An absolute-form target (RFC 7230 section 5.3.2) yields its path and query."""
    request = request_with(line=b"GET ws://meet.example.org/room?x=1 HTTP/1.1")
    assert (request.path, request.query) == ("/room", "x=1")
    assert request_with(line=b"GET https://meet.example.org HTTP/1.1").path == "/"


def test_pipelined_bytes_are_kept_in_rest() -> None:
    """Bytes after the blank line (a first frame) are kept in rest, not parsed."""
    parser = RequestParser()
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    request = parser.feed(UPGRADE + frame)
    assert request is not None
    assert request.get("host") == "meet.example.org"
    assert parser.rest == frame


def test_rest_is_empty_without_pipelined_bytes() -> None:
    """rest is empty when the head ends the data."""
    parser = RequestParser()
    assert parser.feed(UPGRADE) is not None
    assert parser.rest == b""


def test_every_split_point_waits_for_the_whole_head() -> None:
    """Fed in two parts at any split point, the parser returns None until the head completes."""
    expected = parse_request(UPGRADE)
    data = UPGRADE + b"tail"
    for split in range(1, len(UPGRADE)):
        parser = RequestParser()
        assert parser.feed(data[:split]) is None, split
        assert parser.feed(data[split:]) == expected, split
        assert parser.rest == b"tail"


def test_byte_by_byte_feed_finds_the_head() -> None:
    """Feeding one byte at a time finds the terminator exactly at the last byte."""
    parser = RequestParser()
    results = [parser.feed(UPGRADE[i : i + 1]) for i in range(len(UPGRADE))]
    assert results[:-1] == [None] * (len(UPGRADE) - 1)
    assert results[-1] == parse_request(UPGRADE)
    assert parser.rest == b""


def test_feed_after_completion_is_an_error() -> None:
    """Once the request is returned, feeding more raises RuntimeError."""
    parser = RequestParser()
    parser.feed(UPGRADE)
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_head_at_the_byte_limit_is_accepted() -> None:
    """A head exactly max_header_bytes long, terminator included, is accepted."""
    assert RequestParser(max_header_bytes=len(UPGRADE)).feed(UPGRADE) is not None


def test_head_one_byte_over_the_limit_is_431() -> None:
    """A complete head one byte over max_header_bytes is refused with 431."""
    with pytest.raises(HandshakeFailed) as caught:
        RequestParser(max_header_bytes=len(UPGRADE) - 1).feed(UPGRADE)
    assert caught.value.http_status == 431


def test_unterminated_head_at_the_limit_is_431() -> None:
    """Buffered bytes reaching the limit without a terminator are refused with 431 early."""
    parser = RequestParser(max_header_bytes=64)
    assert parser.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 40) is None
    with pytest.raises(HandshakeFailed) as caught:
        parser.feed(b"a" * 10)
    assert caught.value.http_status == 431


def test_too_many_headers_is_431() -> None:
    """More header fields than max_headers are refused with 431; exactly max is accepted."""
    head = b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 5 + b"\r\n"
    assert RequestParser(max_headers=5).feed(head) is not None
    with pytest.raises(HandshakeFailed) as caught:
        RequestParser(max_headers=4).feed(head)
    assert caught.value.http_status == 431
    assert isinstance(caught.value, HandshakeError)


@pytest.mark.parametrize(
    "line",
    [
        b"GET /",
        b"GET  / HTTP/1.1",
        b"GET / HTTP/1.1 extra",
        b"GET / HTTX/1.1",
        b"GET / HTTP/11",
        b"G(T / HTTP/1.1",
        b"GET room HTTP/1.1",
        b"GET * HTTP/1.1",
        b"GET /a#frag HTTP/1.1",
        b"GET javascript:alert://x HTTP/1.1",
        b"GET /caf\xc3\xa9 HTTP/1.1",
        b"",
    ],
)
def test_malformed_request_line_is_400(line: bytes) -> None:
    """A request line that is not 'token SP target SP HTTP/x.y' is refused with 400."""
    with pytest.raises(HandshakeFailed) as caught:
        RequestParser().feed(line + b"\r\nHost: a\r\n\r\n")
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    "header",
    [
        b"NoColon",
        b"Host : a",
        b"Ho st: a",
        b": value",
        b" folded: continuation",
        b"X: a\x00b",
        b"X: a\rb",
        b"X: a\nb",
        b"X: a\x7fb",
    ],
)
def test_malformed_header_line_is_400(header: bytes) -> None:
    """A header line without a token name, or with control characters in its value, is 400."""
    with pytest.raises(HandshakeFailed) as caught:
        RequestParser().feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + header + b"\r\n\r\n")
    assert caught.value.http_status == 400


def test_obs_text_values_survive_as_latin1() -> None:
    """Header bytes 0x80-0xFF decode as Latin-1, so they re-encode to the same bytes."""
    request = request_with(add=b"X-Name: Jos\xe9\r\n")
    value = request.get("x-name")
    assert value is not None
    assert value.encode("latin-1") == b"Jos\xe9"


def test_request_rejects_invalid_fields() -> None:
    """Request validates its fields on construction."""
    with pytest.raises(ValueError):
        Request(method="GET", target="x", path="x", query="", version="HTTP/1.1", headers=())
    with pytest.raises(ValueError):
        Request(method="GET", target="/", path="/", query="", version="1.1", headers=())
    with pytest.raises(ValueError):
        Request(
            method="GET",
            target="/",
            path="/",
            query="",
            version="HTTP/1.1",
            headers=(("Host", "a"),),
        )


@pytest.mark.parametrize("limits", [(8, 10), (1024, 0)])
def test_parser_limits_are_validated(limits: tuple[int, int]) -> None:
    """Nonsensical parser limits raise ValueError."""
    with pytest.raises(ValueError):
        RequestParser(*limits)


# validate_upgrade


def test_valid_upgrade_returns_the_key() -> None:
    """A correct upgrade request validates and yields its Sec-WebSocket-Key."""
    assert validate_upgrade(parse_request(UPGRADE)) == KEY


def test_upgrade_tokens_are_case_insensitive() -> None:
    """Upgrade and Connection tokens match in any case, across several header fields."""
    raw = UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: WebSocket").replace(
        b"Connection: keep-alive, Upgrade", b"Connection: keep-alive\r\nConnection: UPGRADE"
    )
    assert validate_upgrade(parse_request(raw)) == KEY


@pytest.mark.parametrize(
    ("mutation", "status", "headers"),
    [
        ({"line": b"POST /room HTTP/1.1"}, 405, (("Allow", "GET"),)),
        ({"line": b"get /room HTTP/1.1"}, 405, (("Allow", "GET"),)),
        ({"line": b"GET /room HTTP/1.0"}, 400, ()),
        ({"line": b"GET /room HTTP/2.0"}, 400, ()),
        ({"drop": "host"}, 400, ()),
        ({"add": b"Host: other.example\r\n"}, 400, ()),
        ({"drop": "host", "add": b"Host:\r\n"}, 400, ()),
        ({"add": b"Content-Length: 5\r\n"}, 400, ()),
        ({"add": b"Transfer-Encoding: chunked\r\n"}, 400, ()),
        ({"drop": "upgrade"}, 426, (("Upgrade", "websocket"),)),
        ({"drop": "upgrade", "add": b"Upgrade: h2c\r\n"}, 426, (("Upgrade", "websocket"),)),
        ({"drop": "connection"}, 400, ()),
        ({"drop": "connection", "add": b"Connection: keep-alive\r\n"}, 400, ()),
        ({"drop": "sec-websocket-key"}, 400, ()),
        ({"drop": "sec-websocket-key", "add": b"Sec-WebSocket-Key: c2hvcnQ=\r\n"}, 400, ()),
        (
            {"drop": "sec-websocket-key", "add": b"Sec-WebSocket-Key: not base64!!!!!!!!!!!\r\n"},
            400,
            (),
        ),
        ({"add": b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"}, 400, ()),
        ({"drop": "sec-websocket-version"}, 426, (("Sec-WebSocket-Version", "13"),)),
        (
            {"drop": "sec-websocket-version", "add": b"Sec-WebSocket-Version: 8\r\n"},
            426,
            (("Sec-WebSocket-Version", "13"),),
        ),
        ({"add": b"Sec-WebSocket-Version: 8\r\n"}, 426, (("Sec-WebSocket-Version", "13"),)),
        ({"add": b"Sec-WebSocket-Protocol: a/b\r\n"}, 400, ()),
    ],
)
def test_invalid_upgrade_is_refused_with_its_status(
    mutation: dict[str, object], status: int, headers: tuple[tuple[str, str], ...]
) -> None:
    """Each upgrade fault raises HandshakeFailed with its status and required headers."""
    request = request_with(**mutation)  # type: ignore[arg-type]
    with pytest.raises(HandshakeFailed) as caught:
        validate_upgrade(request)
    assert caught.value.http_status == status
    assert caught.value.headers == headers
    assert caught.value.client_text


def test_content_length_zero_is_allowed() -> None:
    """An explicit empty body (Content-Length: 0) does not refuse the upgrade."""
    assert validate_upgrade(request_with(add=b"Content-Length: 0\r\n")) == KEY


# building responses


def test_accept_response_bytes() -> None:
    """The 101 response carries Upgrade, Connection, the accept key and the subprotocol."""
    assert build_accept_response(KEY, "chat") == ACCEPTED


def test_accept_response_without_subprotocol_and_with_extra_headers() -> None:
    """Without a subprotocol no Sec-WebSocket-Protocol is sent; extra headers come last."""
    raw = build_accept_response(KEY, None, [("Set-Cookie", "a=b")])
    assert b"Sec-WebSocket-Protocol" not in raw
    assert raw.endswith(
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSet-Cookie: a=b\r\n\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [
        [("Sec-WebSocket-Extensions", "permessage-deflate")],
        [("connection", "close")],
        [("X-Evil", "a\r\nInjected: 1")],
        [("Bad Name", "x")],
        [("X-Pad", " padded")],
    ],
)
def test_accept_response_refuses_bad_or_reserved_headers(headers: list[tuple[str, str]]) -> None:
    """Headers the builder sets, invalid names and values with CR/LF are refused."""
    with pytest.raises(ValueError):
        build_accept_response(KEY, None, headers)


def test_accept_response_refuses_non_token_subprotocol() -> None:
    """A subprotocol that is not a token is refused."""
    with pytest.raises(ValueError):
        build_accept_response(KEY, "a b")


def test_error_response_451() -> None:
    """A 451 has its RFC 7725 reason, a plain-text body, length, no-store and close."""
    raw = build_error_response(451, "barred by a location restriction")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 451 Unavailable For Legal Reasons",
        b"Content-Type: text/plain; charset=utf-8",
        b"Cache-Control: no-store",
        b"Content-Length: 32",
        b"Connection: close",
    ]
    assert body == b"barred by a location restriction"


def test_error_response_body_utf8_and_content_type_override() -> None:
    """A text body is UTF-8 (length in bytes); a given Content-Type replaces the default."""
    raw = build_error_response(400, "é", [("Content-Type", "application/json")])
    response = parse_response(raw)
    assert response.get_all("content-type") == ["application/json"]
    assert response.get("content-length") == "2"
    assert raw.endswith(b"\r\n\r\n\xc3\xa9")


def test_error_response_426_announces_upgrade() -> None:
    """With an Upgrade header, Connection lists the upgrade option too (RFC 7230 section 6.7)."""
    error = HandshakeFailed("x", http_status=426, headers=(("Upgrade", "websocket"),))
    response = parse_response(build_error_response(error.http_status, b"", error.headers))
    assert (response.status, response.reason) == (426, "Upgrade Required")
    assert response.get("upgrade") == "websocket"
    assert response.get("connection") == "Upgrade, close"


def test_error_response_unknown_status_has_empty_reason() -> None:
    """A status HTTPStatus does not know gets an empty reason phrase."""
    assert build_error_response(499, b"").startswith(b"HTTP/1.1 499 \r\n")


@pytest.mark.parametrize(
    ("status", "headers"),
    [(99, []), (600, []), (400, [("Content-Length", "1")]), (400, [("Connection", "keep-alive")])],
)
def test_error_response_refuses_bad_status_or_framing_headers(
    status: int, headers: list[tuple[str, str]]
) -> None:
    """An impossible status or a framing header from the caller is refused."""
    with pytest.raises(ValueError):
        build_error_response(status, b"", headers)


# upstream leg


def test_client_request_round_trips_through_our_parser() -> None:
    """The upstream request parses and validates, offering the given subprotocols."""
    key = new_key()
    raw = build_client_request(
        "signal.internal:8188",
        "/ws?room=1",
        key,
        ["janus-protocol", "x"],
        [("Origin", "https://a")],
    )
    request = parse_request(raw)
    assert validate_upgrade(request) == key
    assert request.get("host") == "signal.internal:8188"
    assert request.target == "/ws?room=1"
    assert request.subprotocols() == ["janus-protocol", "x"]
    assert request.get("origin") == "https://a"
    assert request.get("sec-websocket-extensions") is None


def test_client_request_without_subprotocols_sends_no_header() -> None:
    """No subprotocols means no Sec-WebSocket-Protocol header."""
    raw = build_client_request("h", "/", KEY, [], [])
    assert parse_request(raw).get("sec-websocket-protocol") is None


@pytest.mark.parametrize(
    ("host", "target", "key", "protocols", "headers"),
    [
        ("h", "ws", KEY, [], []),
        ("h", "/a b", KEY, [], []),
        ("h", "/a#b", KEY, [], []),
        ("", "/", KEY, [], []),
        ("h\r\nX: y", "/", KEY, [], []),
        ("h", "/", "short", [], []),
        ("h", "/", KEY, ["a,b"], []),
        ("h", "/", KEY, [], [("Sec-WebSocket-Extensions", "permessage-deflate")]),
        ("h", "/", KEY, [], [("Host", "other")]),
        ("h", "/", KEY, [], [("X", "a\nb")]),
    ],
)
def test_client_request_refuses_bad_input(
    host: str, target: str, key: str, protocols: list[str], headers: list[tuple[str, str]]
) -> None:
    """Invalid targets, hosts, keys, subprotocols and reserved or injected headers are refused."""
    with pytest.raises(ValueError):
        build_client_request(host, target, key, protocols, headers)


def test_response_parser_keeps_first_frame_in_rest() -> None:
    """The upstream's first frame in the same segment as the 101 is kept in rest."""
    parser = ResponseParser()
    response = parser.feed(ACCEPTED + b"\x81\x02hi")
    assert response is not None
    assert (response.version, response.status, response.reason) == (
        "HTTP/1.1",
        101,
        "Switching Protocols",
    )
    assert parser.rest == b"\x81\x02hi"


def test_response_parser_every_split_point() -> None:
    """Fed in two parts, the response parser returns None until the head completes."""
    expected = parse_response(ACCEPTED)
    for split in range(1, len(ACCEPTED)):
        parser = ResponseParser()
        assert parser.feed(ACCEPTED[:split]) is None, split
        assert parser.feed(ACCEPTED[split:]) == expected, split


def test_response_without_reason_phrase() -> None:
    """A status line without a reason phrase parses with an empty reason."""
    assert parse_response(b"HTTP/1.1 101\r\n\r\n").reason == ""


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/1.1",
        b"HTTP/1.1 1O1 x",
        b"HTTP/1.1 099 x",
        b"HTTP/1.1 1010 x",
        b"ICY 200 OK",
        b"HTTP/1.1 101 a\x01",
    ],
)
def test_malformed_status_line_is_502(line: bytes) -> None:
    """A malformed status line is the upstream's fault: 502."""
    with pytest.raises(HandshakeFailed) as caught:
        ResponseParser().feed(line + b"\r\n\r\n")
    assert caught.value.http_status == 502


def test_oversized_response_is_502() -> None:
    """A response head over the limit is refused with 502, not 431."""
    with pytest.raises(HandshakeFailed) as caught:
        ResponseParser(max_header_bytes=32).feed(ACCEPTED)
    assert caught.value.http_status == 502


def test_validate_accept_returns_the_subprotocol() -> None:
    """A correct 101 validates and yields the chosen, offered subprotocol."""
    assert validate_accept(parse_response(ACCEPTED), KEY, ["superchat", "chat"]) == "chat"


def test_validate_accept_without_subprotocol_is_none() -> None:
    """A 101 choosing no subprotocol yields None, even when some were offered."""
    assert validate_accept(parse_response(build_accept_response(KEY, None)), KEY, ["chat"]) is None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"101 Switching Protocols", b"200 OK"),
        (b"Upgrade: websocket", b"Upgrade: h2c"),
        (b"Connection: Upgrade", b"Connection: keep-alive"),
        (ACCEPT.encode(), b"AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        (b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n", b""),
        (b"Sec-WebSocket-Protocol: chat", b"Sec-WebSocket-Protocol: other"),
        (b"Sec-WebSocket-Protocol: chat", b"Sec-WebSocket-Protocol: chat, superchat"),
        (
            b"Sec-WebSocket-Protocol: chat",
            b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat",
        ),
        (b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
    ],
)
def test_validate_accept_refuses_bad_responses(old: bytes, new: bytes) -> None:
    """A non-101, wrong headers, a wrong key, an unoffered subprotocol or extensions raise 502."""
    raw = ACCEPTED.replace(old, new)
    assert raw != ACCEPTED
    with pytest.raises(HandshakeFailed) as caught:
        validate_accept(parse_response(raw), KEY, ["chat", "superchat"])
    assert caught.value.http_status == 502


# property: any split of the head, any pipelined tail


@given(
    split=st.integers(min_value=0, max_value=len(UPGRADE) - 1),
    tail=st.binary(max_size=64),
)
def test_any_split_and_tail_gives_same_request_and_rest(split: int, tail: bytes) -> None:
    """Whatever the split point and pipelined tail, the request and rest are the same."""
    parser = RequestParser()
    data = UPGRADE + tail
    request = parser.feed(data[:split])
    if split < len(UPGRADE):
        assert request is None
        request = parser.feed(data[split:])
    assert request == parse_request(UPGRADE)
    assert parser.rest == tail


# interoperability with the websockets library's sans-I/O protocols


def test_websockets_client_accepts_our_101() -> None:
    """A websockets ClientProtocol's request validates, and our 101 opens its connection."""
    client = ClientProtocol(
        parse_uri("ws://meet.example.org/room?u=1"),
        subprotocols=[Subprotocol("chat"), Subprotocol("v2")],
        extensions=[ClientPerMessageDeflateFactory()],
    )
    client.send_request(client.connect())
    request = parse_request(b"".join(client.data_to_send()))
    key = validate_upgrade(request)
    assert request.subprotocols() == ["chat", "v2"]
    client.receive_data(build_accept_response(key, "v2"))
    assert client.handshake_exc is None
    assert client.state is State.OPEN
    assert client.subprotocol == "v2"
    assert client.extensions == []


def test_websockets_client_sees_our_451() -> None:
    """A websockets ClientProtocol reads our 451 response as that status and body."""
    client = ClientProtocol(parse_uri("ws://meet.example.org/"))
    client.send_request(client.connect())
    client.receive_data(build_error_response(451, "barred"))
    client.receive_eof()
    assert isinstance(client.handshake_exc, InvalidStatus)
    assert client.handshake_exc.response.status_code == 451
    assert client.handshake_exc.response.body == b"barred"


def test_websockets_server_accepts_our_request() -> None:
    """A websockets ServerProtocol accepts our upstream request; we validate its 101."""
    server = ServerProtocol(subprotocols=[Subprotocol("janus-protocol")])
    key = new_key()
    offered = ["x", "janus-protocol"]
    server.receive_data(build_client_request("upstream:8188", "/ws", key, offered, []))
    [ws_request] = server.events_received()
    assert isinstance(ws_request, WsRequest)
    assert ws_request.path == "/ws"
    server.send_response(server.accept(ws_request))
    assert server.state is State.OPEN
    parser = ResponseParser()
    response = parser.feed(b"".join(server.data_to_send()))
    assert response is not None
    assert validate_accept(response, key, offered) == "janus-protocol"


def test_websockets_server_rejection_is_refused() -> None:
    """A websockets ServerProtocol rejection (no valid key) fails validate_accept with 502."""
    server = ServerProtocol()
    headers = WsHeaders(
        Host="h", Upgrade="websocket", Connection="Upgrade", **{"Sec-WebSocket-Version": "13"}
    )
    server.send_response(server.accept(WsRequest("/", headers)))
    response = parse_response(b"".join(server.data_to_send()))
    assert response.status == 400
    with pytest.raises(HandshakeFailed) as caught:
        validate_accept(response, new_key(), [])
    assert caught.value.http_status == 502
