"""What every protocol adapter provides to the relay. Pure: no I/O.

An adapter knows how one signaling protocol names meetings and participants, which client messages
are joins (or resumes, which are gated like joins), what to send upstream so that an evicted
participant leaves at once, and how the barred participant is told in the protocol's own terms.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from proxy.handshake import Request

__all__ = ["Adapter", "Join", "JoinKind"]


class JoinKind(enum.StrEnum):
    """A first join, or a resume/rejoin of an earlier session (a reconnect)."""

    JOIN = "join"
    RESUME = "resume"


@dataclass(frozen=True, slots=True)
class Join:
    """A participant asking to be in a meeting.

    Attributes:
        meeting: the meeting id, as the protocol names it.
        participant: the participant id, when the protocol names one.
        kind: join or resume.
    """

    meeting: str
    participant: str | None = None
    kind: JoinKind = JoinKind.JOIN


class Adapter(Protocol):
    """The relay's view of a signaling protocol."""

    #: The adapter's config name ("json", "url", ...).
    name: str
    #: Whether the meeting is known from the upgrade request alone (decide before the upgrade).
    decides_at_upgrade: bool

    def from_request(self, request: Request) -> Join | None:
        """The join named by the upgrade request, for adapters that decide at the upgrade.

        Raises:
            PolicyViolation: the request does not name a meeting the adapter can read.
        """
        ...

    def first_message(self, opcode: int, payload: bytes) -> Join:
        """The join carried by the first client message (unmasked payload).

        Raises:
            PolicyViolation: the first message is not a join the adapter can read.
        """
        ...

    def inspect(self, opcode: int, payload: bytes) -> Join | None:
        """A join or resume carried by a later client message, or None for any other message.

        Must be cheap for messages that cannot be joins: they are not parsed.
        """
        ...

    def leave_messages(self, join: Join) -> list[bytes]:
        """Text messages sent upstream, in order, to make an evicted participant leave at once."""
        ...


# --------------------------------------------------------------------------------------------------
# Stateful adapters (Janus): one connection carries several sessions, handles and rooms, so the
# adapter reads messages both ways, keeps per-connection state, and answers in its own protocol.


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass the message on unchanged."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Do not pass the message on (a reply to a message the proxy itself sent upstream)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Do not pass the message on; send ``messages`` (text payloads) back to its sender instead."""

    messages: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Gate:
    """Pass the message on only if every join in ``joins`` is admitted.

    Attributes:
        joins: the meetings the message would put the participant in (one per room; a Janus claim
            names every room its session's handles are in).
        token: the adapter's own reference, handed back to ``admitted``/``denied``.
    """

    joins: tuple[Join, ...]
    token: object = None


ClientVerdict = Forward | Gate | Reply
UpstreamVerdict = Forward | Drop


@dataclass(frozen=True, slots=True)
class Removal:
    """What removes a participant from one meeting without closing the connection.

    Attributes:
        to_upstream: text payloads sent upstream, in order (leave, detach, destroy...).
        to_client: text payloads sent to the client, in order (a protocol-shaped notice).
        close: close the whole connection instead (nothing else remains on it).
    """

    to_upstream: tuple[bytes, ...] = ()
    to_client: tuple[bytes, ...] = ()
    close: bool = False


class AdapterConnection(Protocol):
    """Per-connection state of a stateful adapter."""

    def from_client(self, payload: bytes) -> ClientVerdict:
        """Read one client text message (unmasked)."""
        ...

    def from_upstream(self, payload: bytes) -> UpstreamVerdict:
        """Read one upstream text message."""
        ...

    def admitted(self, verdict: Gate) -> None:
        """Every join of ``verdict`` was admitted (the message is being forwarded)."""
        ...

    def denied(self, verdict: Gate, join: Join, notice: dict[str, object]) -> Reply:
        """``join`` was barred: the message is not forwarded; what the client is told instead."""
        ...

    def remove(self, meeting: str, notice: dict[str, object]) -> Removal:
        """A restriction now bars the participant from ``meeting``: take them out of it only."""
        ...

    def meetings(self) -> frozenset[str]:
        """The meetings this connection is in now."""
        ...

    def closed(self) -> None:
        """The connection closed (a stateful adapter may remember sessions for a reconnect)."""
        ...


class StatefulAdapter(Protocol):
    """An adapter that keeps state per connection and across connections (Janus)."""

    name: str
    subprotocols: tuple[str, ...]

    def connect(self, address: str) -> AdapterConnection:
        """State for a new client connection from ``address``."""
        ...
