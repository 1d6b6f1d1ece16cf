"""Connection states and the transitions allowed between them. Pure: no I/O.

The rules:

* Every client connection starts in ``HANDSHAKE`` (reading the HTTP upgrade request).
* The ``url`` adapter decides in the handshake: an admitted participant goes to ``CONNECTING``
  (the upstream upgrade, before the client is answered, so the upstream's subprotocol choice can be
  returned); a barred one to ``DENYING`` (upgraded only to be told, then closed) or straight to
  ``CLOSED`` (HTTP 451).
* Other adapters upgrade first and wait in ``JOINING`` for the participant's join message; an
  admitted join goes to ``CONNECTING``, a barred one to ``DENYING``.
* The upstream leg is opened only in ``CONNECTING``, so the signaling server never sees a barred
  participant; ``RELAYING`` is the only state in which frames flow both ways.
* ``DENYING`` and ``CLOSING`` wait for the closing handshake; every state can reach ``CLOSED`` (the
  client's TCP connection can drop at any time), and ``CLOSED`` is final.

An illegal transition raises :class:`IllegalTransition` and changes nothing.
"""

from __future__ import annotations

import enum

__all__ = ["TRANSITIONS", "IllegalTransition", "Lifecycle", "State"]


class State(enum.Enum):
    """Where one client connection is."""

    HANDSHAKE = "handshake"
    JOINING = "joining"
    CONNECTING = "connecting"
    RELAYING = "relaying"
    DENYING = "denying"
    CLOSING = "closing"
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.HANDSHAKE: frozenset({State.JOINING, State.CONNECTING, State.DENYING, State.CLOSING,
                                State.CLOSED}),
    State.JOINING: frozenset({State.CONNECTING, State.DENYING, State.CLOSING, State.CLOSED}),
    State.CONNECTING: frozenset({State.RELAYING, State.DENYING, State.CLOSING, State.CLOSED}),
    State.RELAYING: frozenset({State.DENYING, State.CLOSING, State.CLOSED}),
    State.DENYING: frozenset({State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A transition the table does not allow; the state is left as it was."""

    def __init__(self, current: State, target: State) -> None:
        super().__init__(f"illegal transition {current.value} -> {target.value}")
        self.current = current
        self.target = target


class Lifecycle:
    """The state of one connection, changed only along :data:`TRANSITIONS`."""

    __slots__ = ("state",)

    def __init__(self, state: State = State.HANDSHAKE) -> None:
        self.state = state

    def to(self, target: State) -> None:
        """Move to ``target``.

        Raises:
            IllegalTransition: the table does not allow it; nothing changes.
        """
        if target not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.state, target)
        self.state = target

    def can(self, target: State) -> bool:
        """Whether the move to ``target`` is allowed from here."""
        return target in TRANSITIONS[self.state]

    @property
    def closed(self) -> bool:
        """Whether the connection is finished."""
        return self.state is State.CLOSED
