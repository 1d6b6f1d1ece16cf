"""Tests for proxy.lifecycle: the transition table and its guard."""

from __future__ import annotations

import pytest

from proxy.lifecycle import TRANSITIONS, IllegalTransition, Lifecycle, State


def test_starts_in_handshake() -> None:
    """A new connection is in HANDSHAKE."""
    assert Lifecycle().state is State.HANDSHAKE


def test_json_admission_path() -> None:
    """HANDSHAKE -> JOINING -> CONNECTING -> RELAYING -> CLOSING -> CLOSED is allowed."""
    life = Lifecycle()
    for state in (State.JOINING, State.CONNECTING, State.RELAYING, State.CLOSING, State.CLOSED):
        life.to(state)
    assert life.closed


def test_url_admission_skips_joining() -> None:
    """The url adapter goes from HANDSHAKE straight to CONNECTING."""
    life = Lifecycle()
    life.to(State.CONNECTING)
    assert life.state is State.CONNECTING


def test_illegal_transition_changes_nothing() -> None:
    """A barred move raises IllegalTransition and leaves the state as it was."""
    life = Lifecycle(State.JOINING)
    with pytest.raises(IllegalTransition) as info:
        life.to(State.RELAYING)
    assert life.state is State.JOINING
    assert info.value.current is State.JOINING and info.value.target is State.RELAYING


def test_relaying_only_after_connecting() -> None:
    """RELAYING can only be entered from CONNECTING."""
    sources = {s for s, targets in TRANSITIONS.items() if State.RELAYING in targets}
    assert sources == {State.CONNECTING}


def test_closed_is_final_and_reachable_from_everywhere() -> None:
    """CLOSED has no way out, and every other state can reach it directly."""
    assert TRANSITIONS[State.CLOSED] == frozenset()
    for state in State:
        if state is not State.CLOSED:
            assert Lifecycle(state).can(State.CLOSED)


def test_denying_cannot_go_back_to_relaying() -> None:
    """A participant being told they are barred is never relayed again."""
    assert not Lifecycle(State.DENYING).can(State.RELAYING)
    assert not Lifecycle(State.DENYING).can(State.CONNECTING)
