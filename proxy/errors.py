"""Every error geogate raises, and what a client or operator is told about it.

Each class carries what the client gets (an HTTP status for a refused handshake, a WebSocket close
code for an open connection, a short text); the detail stays in the exception message and goes to
the log only. Library code raises these; only ``proxy.__main__`` turns them into exit codes.

The tree::

    GeogateError
    ├── ConfigError              a config or restrictions file is invalid (all issues listed)
    ├── GeoIPError               a GeoIP database cannot be opened or read
    │   └── GeoIPBuildError      a CSV given to ``geogate geoip build`` is invalid
    ├── AddressError             a client address cannot be parsed
    └── ClientError              something a connection did; closes that connection only
        ├── LocationDenied       a location restriction bars the participant (451 / 4451)
        ├── HandshakeError       not a valid WebSocket upgrade (400)
        ├── JoinTimeout          no join arrived in time (1008)
        ├── PolicyViolation      a message the protocol adapter cannot accept (1008)
        ├── MessageTooBig        a message over ``max_message_bytes`` (1009)
        ├── ProtocolViolation    a WebSocket framing error (1002)
        ├── UpstreamUnavailable  the signaling server cannot be reached or failed (502 / 1014)
        └── ShuttingDown         the proxy is draining (503 / 1001)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AddressError",
    "ClientError",
    "ConfigError",
    "ConfigIssue",
    "GeoIPBuildError",
    "GeoIPError",
    "GeogateError",
    "HandshakeError",
    "JoinTimeout",
    "LocationDenied",
    "MessageTooBig",
    "PolicyViolation",
    "ProtocolViolation",
    "ShuttingDown",
    "UpstreamUnavailable",
]


class GeogateError(Exception):
    """Base class of every error geogate raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a config or restrictions file.

    Attributes:
        file: the file, as given.
        path: the key path, such as ``restriction[2].regions[0]``.
        message: what is wrong and what was expected.
        line: the 1-based line in ``file`` when it could be located.
    """

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class ConfigError(GeogateError):
    """A config or restrictions file is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue) -> None:
        self.issues: tuple[ConfigIssue, ...] = (
            (issues,) if isinstance(issues, ConfigIssue) else tuple(issues)
        )
        super().__init__("\n".join(str(issue) for issue in self.issues))


class GeoIPError(GeogateError):
    """A GeoIP database cannot be opened or read."""


class GeoIPBuildError(GeoIPError):
    """A CSV given to ``geogate geoip build`` is invalid; the message names the line."""


class AddressError(GeogateError, ValueError):
    """A client address (socket peer or forwarded header) cannot be parsed."""


class ClientError(GeogateError):
    """Something about one connection; it closes that connection and nothing else.

    Attributes:
        http_status: the status when refused before the WebSocket upgrade.
        close_code: the WebSocket close code once upgraded (RFC 6455 section 7.4).
        client_text: the short text the client is given; the exception message is for the log.
    """

    http_status: int = 400
    close_code: int = 1008
    client_text: str = "request refused"

    def __init__(self, detail: str = "", *, client_text: str | None = None) -> None:
        super().__init__(detail or self.client_text)
        if client_text is not None:
            self.client_text = client_text


class LocationDenied(ClientError):
    """A location restriction bars the participant: HTTP 451 (RFC 7725), close code 4451."""

    http_status = 451
    close_code = 4451
    client_text = "barred by a location restriction"


class HandshakeError(ClientError):
    """The request is not a valid WebSocket upgrade (RFC 6455 section 4.2.1)."""

    http_status = 400
    close_code = 1002
    client_text = "bad WebSocket handshake"


class JoinTimeout(ClientError):
    """The participant's join did not arrive within ``join_timeout``."""

    http_status = 408
    close_code = 1008
    client_text = "join timeout"


class PolicyViolation(ClientError):
    """A message the protocol adapter cannot accept (malformed join, binary first frame...)."""

    http_status = 400
    close_code = 1008
    client_text = "policy violation"


class MessageTooBig(ClientError):
    """A message larger than ``max_message_bytes`` (RFC 6455 close code 1009)."""

    http_status = 413
    close_code = 1009
    client_text = "message too big"


class ProtocolViolation(ClientError):
    """A WebSocket framing error (RFC 6455 close code 1002)."""

    http_status = 400
    close_code = 1002
    client_text = "protocol error"


class UpstreamUnavailable(ClientError):
    """The signaling server cannot be reached or failed (close code 1014, bad gateway)."""

    http_status = 502
    close_code = 1014
    client_text = "signaling server unavailable"


class ShuttingDown(ClientError):
    """The proxy is draining: new handshakes get 503, open sessions 1001 (going away)."""

    http_status = 503
    close_code = 1001
    client_text = "proxy shutting down"
