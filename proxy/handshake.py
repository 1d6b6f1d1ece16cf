"""Sans-I/O WebSocket opening handshake, both legs (RFC 6455 section 4, RFC 7230 message syntax).

The proxy terminates the client's HTTP upgrade itself (``RequestParser``, ``validate_upgrade``,
``build_accept_response`` or ``build_error_response``) and opens its own upgrade to the signaling
server (``new_key``, ``build_client_request``, ``ResponseParser``, ``validate_accept``). Nothing
here touches a socket, a clock or a logger: bytes in, values out, ``HandshakeError`` on faults.

Header bytes are decoded as ISO-8859-1, which maps every byte to one code point, so a value the
client sent (RFC 7230 obs-text included) is re-encoded byte for byte when it is forwarded upstream.

A client fault raises ``HandshakeFailed`` (a ``HandshakeError``) carrying the HTTP status to answer
with and any response headers that status requires (``Allow`` for 405, ``Upgrade`` for 426,
``Sec-WebSocket-Version`` for a version mismatch). A fault of the upstream's response carries 502:
from the client's side the gateway failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from proxy.errors import HandshakeError

__all__ = [
    "HandshakeFailed",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "accept_key",
    "build_accept_response",
    "build_client_request",
    "build_error_response",
    "new_key",
    "validate_accept",
    "validate_upgrade",
]

# RFC 6455 section 1.3: the GUID appended to Sec-WebSocket-Key before hashing.
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 7230 section 3.2.6: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 7230 section 3.2: field-value is VCHAR / obs-text / SP / HTAB once OWS is stripped; no CR,
# LF, NUL or other control characters (a bare CR or LF would let a value smuggle a header).
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# RFC 7230 section 5.3: a request-target is visible ASCII, no spaces.
_TARGET = re.compile(r"[\x21-\x7e]+")
# Every header line of a head at once, each ended by CRLF: a name that is a token right before
# the colon, then a value of the characters _VALUE allows. A head that does not match is read
# line by line to name the bad line.
_HEADER_LINES = re.compile(f"(?:{_TOKEN.pattern}:{_VALUE.pattern}\r\n)*")
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")
_STATUS = re.compile(r"[0-9]{3}")
_SCHEMES = frozenset({"http", "https", "ws", "wss"})
# Heads the parsers have checked field by field are made without a second check.
_new = object.__new__
_set = object.__setattr__

# Header fields the handshake builders set themselves: a caller-supplied copy would duplicate or
# contradict them (a forwarded Sec-WebSocket-Extensions would negotiate an extension the relay does
# not implement), and message framing fields have no place in a GET upgrade.
_RESERVED_REQUEST_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "content-length",
        "transfer-encoding",
    }
)
_RESERVED_ACCEPT_HEADERS = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    }
)
_RESERVED_ERROR_HEADERS = frozenset({"content-length", "connection", "transfer-encoding"})

Headers = tuple[tuple[str, str], ...]


class HandshakeFailed(HandshakeError):
    """A refused handshake, with the HTTP status to answer and the headers that status needs.

    Attributes:
        http_status: the response status (400, 405, 426, 431, or 502 for an upstream fault).
        headers: extra response headers, such as ``("Sec-WebSocket-Version", "13")`` with 426.
    """

    def __init__(
        self,
        detail: str,
        *,
        http_status: int = 400,
        headers: Sequence[tuple[str, str]] = (),
        client_text: str | None = None,
    ) -> None:
        super().__init__(detail, client_text=client_text)
        self.http_status = http_status
        self.headers: Headers = tuple(headers)


class _HeaderAccess:
    """Lookups shared by ``Request`` and ``Response`` over their ``headers`` tuple."""

    __slots__ = ()
    headers: Headers

    def get(self, name: str) -> str | None:
        """Return the first value of a header.

        Args:
            name: the header name, any case.

        Returns:
            The stripped value, or None when the header is absent.
        """
        key = name.lower()
        for field, value in self.headers:
            if field == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Return every value of a header, in order; joining comma lists is up to the caller.

        Args:
            name: the header name, any case.

        Returns:
            The values, possibly empty.
        """
        key = name.lower()
        return [value for field, value in self.headers if field == key]


def _check_headers(headers: Headers) -> None:
    for field in headers:
        if len(field) != 2 or field[0] != field[0].lower():
            raise ValueError(f"header names must be lower-case (name, value) pairs: {field!r}")


@dataclass(frozen=True, slots=True)
class Request(_HeaderAccess):
    """An HTTP request head, as parsed by ``RequestParser``.

    Attributes:
        method: the method token, case kept (RFC 7230: methods are case-sensitive).
        target: the request-target as sent.
        path: the path part of the target, still percent-encoded.
        query: the raw query string without ``?``, empty when absent.
        version: the protocol version, such as ``HTTP/1.1``.
        headers: (lower-cased name, stripped value) pairs in the order received.
    """

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: Headers

    def __post_init__(self) -> None:
        if not _TOKEN.fullmatch(self.method):
            raise ValueError(f"method must be a token: {self.method!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/': {self.path!r}")
        if not _VERSION.fullmatch(self.version):
            raise ValueError(f"version must look like HTTP/1.1: {self.version!r}")
        _check_headers(self.headers)

    def subprotocols(self) -> list[str]:
        """Return the offered subprotocols from every Sec-WebSocket-Protocol header, in order.

        Returns:
            The comma-separated items, stripped, empty items skipped.
        """
        return [
            item
            for value in self.get_all("sec-websocket-protocol")
            for item in (part.strip(" \t") for part in value.split(","))
            if item
        ]

    def query_params(self) -> dict[str, list[str]]:
        """Return the decoded query parameters (``application/x-www-form-urlencoded`` rules).

        Returns:
            Each name mapped to its values in order; a name without ``=`` maps to ``[""]``.
        """
        return parse_qs(self.query, keep_blank_values=True)


@dataclass(frozen=True, slots=True)
class Response(_HeaderAccess):
    """An HTTP response head, as parsed by ``ResponseParser``.

    Attributes:
        version: the protocol version, such as ``HTTP/1.1``.
        status: the status code.
        reason: the reason phrase, possibly empty.
        headers: (lower-cased name, stripped value) pairs in the order received.
    """

    version: str
    status: int
    reason: str
    headers: Headers

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be 100..599: {self.status}")
        if not _VERSION.fullmatch(self.version):
            raise ValueError(f"version must look like HTTP/1.1: {self.version!r}")
        _check_headers(self.headers)


class _HeadParser:
    """Buffers bytes until the blank line ending an HTTP head, then splits it into lines.

    One ``find`` per feed, resumed three bytes before the previous end so that a terminator split
    across feeds is found without rescanning the whole buffer.
    """

    _too_large_status = 431
    _malformed_status = 400
    _side = "request"

    def __init__(self, max_header_bytes: int, max_headers: int) -> None:
        if max_header_bytes < 16:
            raise ValueError(f"max_header_bytes must be at least 16: {max_header_bytes}")
        if max_headers < 1:
            raise ValueError(f"max_headers must be at least 1: {max_headers}")
        self._max_bytes = max_header_bytes
        self._max_headers = max_headers
        self._buf = bytearray()
        self._done = False
        #: Bytes received after the head: the peer's first frames, relayed as they are.
        self.rest = b""

    def _fail(self, detail: str, status: int) -> HandshakeFailed:
        if status == 431:
            text = "request header fields too large"
        elif status == 502:
            text = "signaling server handshake failed"
        else:
            text = "bad WebSocket handshake"
        return HandshakeFailed(detail, http_status=status, client_text=text)

    def _feed_lines(self, data: bytes | bytearray) -> tuple[str, list[tuple[str, str]]] | None:
        if self._done:
            raise RuntimeError(f"the {self._side} head is complete; read .rest instead")
        buf: bytes | bytearray
        if self._buf:
            start = len(self._buf) - 3
            self._buf += data
            buf = self._buf
        else:
            # Usual case: the whole head arrives in one segment; search it without copying.
            start = 0
            buf = data
        index = buf.find(b"\r\n\r\n", max(start, 0))
        if index < 0:
            # The terminator would end past the limit even if it began with the next byte.
            if len(buf) >= self._max_bytes:
                raise self._fail(
                    f"{self._side} head exceeds {self._max_bytes} bytes", self._too_large_status
                )
            if buf is data:
                self._buf = bytearray(data)
            return None
        end = index + 4
        if end > self._max_bytes:
            raise self._fail(
                f"{self._side} head is {end} bytes, over {self._max_bytes}", self._too_large_status
            )
        self._done = True
        self.rest = bytes(buf[end:])
        self._buf = bytearray()
        head = buf[:index].decode("latin-1")
        first, _, block = head.partition("\r\n")
        count = block.count("\r\n") + 1 if block else 0
        if count > self._max_headers:
            raise self._fail(
                f"{count} header fields, over {self._max_headers}", self._too_large_status
            )
        headers: list[tuple[str, str]] = []
        if not block:
            return first, headers
        # The usual, well-formed head passes one pattern; only another is checked line by line,
        # to name the line at fault.
        checked = _HEADER_LINES.fullmatch(block + "\r\n") is not None
        for line in block.split("\r\n"):
            name, colon, value = line.partition(":")
            value = value.strip(" \t")
            if not checked:
                # A token right before the colon also rules out whitespace there (RFC 7230
                # section 3.2.4, "MUST reject with 400") and obs-fold continuation lines, which
                # we refuse.
                if not colon or not _TOKEN.fullmatch(name):
                    raise self._fail(f"malformed header line {line[:80]!r}",
                                     self._malformed_status)
                if not _VALUE.fullmatch(value):
                    raise self._fail(f"invalid characters in header {name!r}",
                                     self._malformed_status)
            headers.append((name.lower(), value))
        return first, headers


class RequestParser(_HeadParser):
    """Incremental parser for the client's upgrade request head.

    Args:
        max_header_bytes: largest head accepted, request line and final blank line included.
        max_headers: most header fields accepted.

    Raises:
        ValueError: a limit is out of range.
    """

    def __init__(self, max_header_bytes: int = 16384, max_headers: int = 100) -> None:
        super().__init__(max_header_bytes, max_headers)

    def feed(self, data: bytes | bytearray) -> Request | None:
        """Add received bytes; return the request once its head is complete.

        Bytes after the head (a pipelined first frame) are kept in ``rest``.

        Args:
            data: the next bytes from the socket.

        Returns:
            The request, or None while the head is incomplete.

        Raises:
            HandshakeFailed: 431 over a limit, 400 for a malformed request line or header line.
            RuntimeError: the request was already returned.
        """
        parsed = self._feed_lines(data)
        if parsed is None:
            return None
        line, headers = parsed
        parts = line.split(" ")
        if len(parts) != 3:
            raise self._fail(f"malformed request line {line[:80]!r}", 400)
        method, target, version = parts
        if (
            not _TOKEN.fullmatch(method)
            or not _TARGET.fullmatch(target)
            or not _VERSION.fullmatch(version)
            # RFC 3986: a fragment is never part of a request-target.
            or "#" in target
        ):
            raise self._fail(f"malformed request line {line[:80]!r}", 400)
        if target.startswith("/"):
            path, _, query = target.partition("?")
        elif "://" in target:
            # Absolute-form, which RFC 7230 section 5.3.2 says a server MUST accept.
            try:
                split = urlsplit(target)
            except ValueError as exc:
                raise self._fail(f"malformed request target {target[:80]!r}", 400) from exc
            path, query = split.path or "/", split.query
            if split.scheme not in _SCHEMES or not split.netloc or not path.startswith("/"):
                raise self._fail(f"unsupported request target {target[:80]!r}", 400)
        else:
            raise self._fail(f"unsupported request target {target[:80]!r}", 400)
        # Every field was checked above: built without Request's own (second) validation.
        request = _new(Request)
        _set(request, "method", method)
        _set(request, "target", target)
        _set(request, "path", path)
        _set(request, "query", query)
        _set(request, "version", version)
        _set(request, "headers", tuple(headers))
        return request


class ResponseParser(_HeadParser):
    """Incremental parser for the upstream's handshake response head.

    Every fault is the upstream's, so it carries status 502 (bad gateway) for the client.

    Args:
        max_header_bytes: largest head accepted, status line and final blank line included.
        max_headers: most header fields accepted.

    Raises:
        ValueError: a limit is out of range.
    """

    _too_large_status = 502
    _malformed_status = 502
    _side = "response"

    def __init__(self, max_header_bytes: int = 16384, max_headers: int = 100) -> None:
        super().__init__(max_header_bytes, max_headers)

    def feed(self, data: bytes | bytearray) -> Response | None:
        """Add received bytes; return the response once its head is complete.

        Bytes after the head (the upstream's first frames) are kept in ``rest``.

        Args:
            data: the next bytes from the upstream socket.

        Returns:
            The response, or None while the head is incomplete.

        Raises:
            HandshakeFailed: 502 over a limit or for a malformed status line or header line.
            RuntimeError: the response was already returned.
        """
        parsed = self._feed_lines(data)
        if parsed is None:
            return None
        line, headers = parsed
        version, _, tail = line.partition(" ")
        code, _, reason = tail.partition(" ")
        if (
            not _VERSION.fullmatch(version)
            or not _STATUS.fullmatch(code)
            or not _VALUE.fullmatch(reason)
            or not 100 <= int(code) <= 599
        ):
            raise self._fail(f"malformed status line {line[:80]!r}", 502)
        response = _new(Response)  # checked above, as for Request
        _set(response, "version", version)
        _set(response, "status", int(code))
        _set(response, "reason", reason)
        _set(response, "headers", tuple(headers))
        return response


def _has_token(values: Iterable[str], token: str) -> bool:
    """Tell whether a comma-separated header (all its fields) lists ``token``, any case."""
    return any(item.strip(" \t").lower() == token for value in values for item in value.split(","))


def _by_name(headers: Headers) -> dict[str, list[str]]:
    """Each header name's values in order: one pass for the many lookups of a validation."""
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        values = fields.get(name)
        if values is None:
            fields[name] = [value]
        else:
            values.append(value)
    return fields


def _decoded_key_ok(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        return False


def validate_upgrade(request: Request) -> str:
    """Check that a request is a WebSocket upgrade we can accept (RFC 6455 section 4.2.1).

    The client's Sec-WebSocket-Extensions offer is ignored: the proxy negotiates none.

    Args:
        request: the parsed client request.

    Returns:
        The Sec-WebSocket-Key, for ``build_accept_response``.

    Raises:
        HandshakeFailed: 405 (with ``Allow: GET``) for another method; 400 for a version other
            than HTTP/1.1, a missing or repeated Host, a request body, a Connection without the
            ``upgrade`` token, a key that is not base64 of 16 bytes or an invalid subprotocol;
            426 (with ``Upgrade: websocket``) when Upgrade lacks ``websocket``; 426 (with
            ``Sec-WebSocket-Version: 13``) when the version is missing or not 13.
    """
    if request.method != "GET":
        raise HandshakeFailed(
            f"method {request.method} is not GET",
            http_status=405,
            headers=(("Allow", "GET"),),
            client_text="method not allowed",
        )
    if request.version != "HTTP/1.1":
        raise HandshakeFailed(f"{request.version} is not HTTP/1.1")
    fields = _by_name(request.headers)
    none: list[str] = []
    hosts = fields.get("host", none)
    # RFC 7230 section 5.4: a request without Host, or with more than one, gets 400.
    if len(hosts) != 1 or not hosts[0]:
        raise HandshakeFailed(f"{len(hosts)} Host header fields, need exactly one")
    # Bytes after the head are frames; a declared body would make them ambiguous (smuggling).
    if "transfer-encoding" in fields or fields.get("content-length", none) not in (
        [],
        ["0"],
    ):
        raise HandshakeFailed("an upgrade request must not have a body")
    if not _has_token(fields.get("upgrade", none), "websocket"):
        raise HandshakeFailed(
            "Upgrade does not name websocket",
            http_status=426,
            # RFC 7230 section 6.7: a 426 response MUST carry Upgrade.
            headers=(("Upgrade", "websocket"),),
            client_text="WebSocket upgrade required",
        )
    if not _has_token(fields.get("connection", none), "upgrade"):
        raise HandshakeFailed("Connection lacks the upgrade token")
    keys = fields.get("sec-websocket-key", none)
    if len(keys) != 1 or not _decoded_key_ok(keys[0]):
        raise HandshakeFailed("Sec-WebSocket-Key is not base64 of 16 bytes")
    # RFC 6455 section 4.4: answer a version we do not speak with the versions we do.
    if fields.get("sec-websocket-version") != ["13"]:
        raise HandshakeFailed(
            "Sec-WebSocket-Version is not 13",
            http_status=426,
            headers=(("Sec-WebSocket-Version", "13"),),
            client_text="unsupported WebSocket version",
        )
    for subprotocol in request.subprotocols() if "sec-websocket-protocol" in fields else ():
        if not _TOKEN.fullmatch(subprotocol):
            raise HandshakeFailed(f"subprotocol {subprotocol[:40]!r} is not a token")
    return keys[0]


def accept_key(key: str) -> str:
    """Compute Sec-WebSocket-Accept for a key (RFC 6455 section 4.2.2, item 5.4).

    Args:
        key: the Sec-WebSocket-Key value as sent.

    Returns:
        base64 of the SHA-1 of the key followed by the protocol GUID.
    """
    digest = hashlib.sha1((key + _GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def new_key() -> str:
    """Return a fresh Sec-WebSocket-Key: base64 of 16 random bytes (RFC 6455 section 4.1).

    Returns:
        The key, 24 characters.
    """
    return base64.b64encode(os.urandom(16)).decode("ascii")


def _encode_fields(
    lines: list[str], headers: Iterable[tuple[str, str]], reserved: frozenset[str]
) -> None:
    """Append validated ``name: value`` lines, refusing names the builder sets itself."""
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name is not a token: {name!r}")
        if name.lower() in reserved:
            raise ValueError(f"header {name!r} is set by the handshake builder")
        if not _VALUE.fullmatch(value) or value != value.strip(" \t"):
            raise ValueError(f"invalid header value for {name!r}: {value[:40]!r}")
        lines.append(f"{name}: {value}")


def _finish(lines: list[str]) -> bytes:
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def build_accept_response(
    key: str, subprotocol: str | None, extra_headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """Build the 101 response accepting an upgrade, with no extensions.

    Args:
        key: the client's Sec-WebSocket-Key, as returned by ``validate_upgrade``.
        subprotocol: the chosen subprotocol (one the client offered), or None.
        extra_headers: more (name, value) fields, such as the upstream's Set-Cookie.

    Returns:
        The response head, ready to write.

    Raises:
        ValueError: a subprotocol or header that is not a valid field, or one this function sets.
    """
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if subprotocol is not None:
        if not _TOKEN.fullmatch(subprotocol):
            raise ValueError(f"subprotocol is not a token: {subprotocol!r}")
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    _encode_fields(lines, extra_headers, _RESERVED_ACCEPT_HEADERS)
    return _finish(lines)


def build_error_response(
    status: int, body: bytes | str, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """Build a complete HTTP/1.1 error response that closes the connection.

    Adds Content-Type (``text/plain; charset=utf-8`` unless ``headers`` has one), Content-Length,
    ``Cache-Control: no-store`` (unless given) and ``Connection: close``; when ``headers`` carries
    Upgrade (a 426), Connection becomes ``Upgrade, close`` as RFC 7230 section 6.7 requires.

    Args:
        status: the status code, such as 400, 426, 451 (RFC 7725) or 503.
        body: the body; text is encoded as UTF-8.
        headers: more (name, value) fields, such as ``HandshakeFailed.headers``.

    Returns:
        The response, head and body.

    Raises:
        ValueError: a status outside 100..599, an invalid header, or Content-Length, Connection or
            Transfer-Encoding among ``headers``.
    """
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        if not 100 <= status <= 599:
            raise ValueError(f"status must be 100..599: {status}") from None
        reason = ""  # RFC 7230 section 3.1.2: the reason-phrase may be empty.
    payload = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    names = {name.lower() for name, _ in headers}
    lines = [f"HTTP/1.1 {status} {reason}"]
    if "content-type" not in names:
        lines.append("Content-Type: text/plain; charset=utf-8")
    if "cache-control" not in names:
        lines.append("Cache-Control: no-store")
    _encode_fields(lines, headers, _RESERVED_ERROR_HEADERS)
    lines.append(f"Content-Length: {len(payload)}")
    lines.append("Connection: Upgrade, close" if "upgrade" in names else "Connection: close")
    return _finish(lines) + payload


def build_client_request(
    host_header: str,
    target: str,
    key: str,
    subprotocols: Sequence[str],
    extra_headers: Sequence[tuple[str, str]],
) -> bytes:
    """Build the proxy's own upgrade request to the signaling server (RFC 6455 section 4.1).

    No Sec-WebSocket-Extensions is sent: both legs must run without extensions for the relay to
    pass frames through unchanged.

    Args:
        host_header: the Host value, such as ``signal.internal:8188``.
        target: the origin-form request-target, such as ``/ws?room=1``.
        key: a key from ``new_key``.
        subprotocols: subprotocols to offer, in preference order; none sends no header.
        extra_headers: more (name, value) fields, such as Origin or X-Forwarded-For.

    Returns:
        The request head, ready to write.

    Raises:
        ValueError: an invalid host, target, subprotocol or header, or a header this function
            sets itself (Host, Upgrade, Connection, Sec-WebSocket-*, Content-Length,
            Transfer-Encoding).
    """
    if not _TARGET.fullmatch(target) or not target.startswith("/") or "#" in target:
        raise ValueError(f"target must be origin-form: {target!r}")
    if not host_header or not _VALUE.fullmatch(host_header) or " " in host_header:
        raise ValueError(f"invalid host header: {host_header!r}")
    if not _decoded_key_ok(key):
        raise ValueError(f"key is not base64 of 16 bytes: {key!r}")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        for subprotocol in subprotocols:
            if not _TOKEN.fullmatch(subprotocol):
                raise ValueError(f"subprotocol is not a token: {subprotocol!r}")
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    _encode_fields(lines, extra_headers, _RESERVED_REQUEST_HEADERS)
    return _finish(lines)


def _upstream_fault(detail: str) -> HandshakeFailed:
    return HandshakeFailed(detail, http_status=502, client_text="signaling server handshake failed")


def validate_accept(
    response: Response, key: str, offered_subprotocols: Sequence[str]
) -> str | None:
    """Check the upstream's answer to ``build_client_request`` (RFC 6455 section 4.1, 4.2.2).

    Args:
        response: the parsed upstream response.
        key: the key sent in the request.
        offered_subprotocols: the subprotocols offered in the request.

    Returns:
        The subprotocol the upstream chose, or None.

    Raises:
        HandshakeFailed: with status 502 when the status is not 101, Upgrade or Connection is
            wrong, Sec-WebSocket-Accept is missing, repeated or wrong, the subprotocol was not
            offered or several were chosen, or any Sec-WebSocket-Extensions is present.
    """
    if response.status != 101:
        raise _upstream_fault(f"upstream answered {response.status} {response.reason}")
    fields = _by_name(response.headers)
    none: list[str] = []
    if not _has_token(fields.get("upgrade", none), "websocket"):
        raise _upstream_fault("upstream Upgrade does not name websocket")
    if not _has_token(fields.get("connection", none), "upgrade"):
        raise _upstream_fault("upstream Connection lacks the upgrade token")
    if fields.get("sec-websocket-accept") != [accept_key(key)]:
        raise _upstream_fault("upstream Sec-WebSocket-Accept does not match the key")
    # Frames are relayed untouched, so an extension accepted on one leg only would corrupt them.
    if fields.get("sec-websocket-extensions"):
        raise _upstream_fault("upstream negotiated extensions; none were offered")
    chosen = fields.get("sec-websocket-protocol")
    if not chosen:
        return None
    if len(chosen) != 1 or chosen[0] not in offered_subprotocols:
        raise _upstream_fault(f"upstream chose subprotocol {', '.join(chosen)[:40]!r}, not offered")
    return chosen[0]
