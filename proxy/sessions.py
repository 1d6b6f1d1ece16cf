"""The registry of open sessions, indexed by meeting, so a change touches only what it can affect.

A session is one admitted participant: one client connection relayed to one upstream connection.
The registry holds them by meeting id; a restriction change asks for the sessions of the meetings a
pattern names (an exact id is one dict lookup; a glob scans meeting ids, not sessions).
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from proxy.adapters.base import Join
from proxy.geo import GeoResult

__all__ = ["Registry", "Session"]

_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Session:
    """One admitted participant.

    Attributes:
        id: a process-unique number, for logs.
        join: the meeting and participant, as the adapter read them (changes on a rejoin).
        address: the client address the decision was made on.
        peer: the socket peer, as text.
        geo: how the address was placed.
        since: wall-clock time of admission (Unix seconds).
        close: closes the session's relay with a code and reason; set by the relay.
        evict: removes the participant from the meeting, given the Denial and optionally an
            eviction wave (see :meth:`proxy.relay.Relay.evict`); set by the relay.
        abort: drops both legs at once (the end of a shutdown); set by the relay.
        relay: the relay while the session is open (for its counters).
    """

    join: Join
    address: IPv4Address | IPv6Address
    peer: str
    geo: GeoResult
    since: float
    id: int = field(default_factory=lambda: next(_ids))
    close: Callable[[int, str], None] | None = None
    evict: Callable[..., None] | None = None
    abort: Callable[[], None] | None = None
    relay: Any = None

    @property
    def meeting(self) -> str:
        """The meeting the participant is in."""
        return self.join.meeting


class Registry:
    """Open sessions by meeting. Not thread-safe: owned by the event loop."""

    __slots__ = ("_by_meeting", "_count")

    def __init__(self) -> None:
        self._by_meeting: dict[str, dict[Session, None]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Session]:
        for sessions in self._by_meeting.values():
            yield from sessions

    def add(self, session: Session) -> None:
        """Register an admitted session under its meeting."""
        bucket = self._by_meeting.setdefault(session.meeting, {})
        if session not in bucket:
            bucket[session] = None
            self._count += 1

    def remove(self, session: Session) -> None:
        """Forget a session; a session not registered is ignored."""
        bucket = self._by_meeting.get(session.meeting)
        if bucket is not None and bucket.pop(session, 0) is None:
            self._count -= 1
            if not bucket:
                del self._by_meeting[session.meeting]

    def move(self, session: Session, join: Join) -> None:
        """Record that a session joined another meeting (a rejoin on the same connection)."""
        self.remove(session)
        session.join = join
        self.add(session)

    def meetings(self) -> list[str]:
        """Meeting ids with at least one open session."""
        return list(self._by_meeting)

    def in_meeting(self, meeting: str) -> list[Session]:
        """Sessions in one meeting."""
        return list(self._by_meeting.get(meeting, ()))

    def matching(self, pattern: str) -> Iterator[Session]:
        """Sessions in every meeting an id or glob pattern names (``*`` is every meeting)."""
        if pattern == "*":
            yield from list(self)
            return
        if not any(c in pattern for c in "*?["):
            yield from self.in_meeting(pattern)
            return
        for meeting in [m for m in self._by_meeting if fnmatch.fnmatchcase(m, pattern)]:
            yield from self.in_meeting(meeting)
