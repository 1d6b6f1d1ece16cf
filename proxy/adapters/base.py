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
