"""The Janus adapter, on message sequences recorded from Janus 1.1.2 (tests/test_janus_server.py
checks the same shapes against the real server)."""

from __future__ import annotations

import json as std_json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import proxy.adapters.janus as janus_module
from proxy.adapters.base import (
    Drop,
    Forward,
    Gate,
    Join,
    JoinKind,
    Removal,
    Reply,
    StatefulAdapter,
)
from proxy.adapters.janus import (
    DENIED_ERROR_CODE,
    VIDEOROOM,
    JanusAdapter,
    JanusConnection,
)

# Ids as Janus generated them in a recorded run.
S = 8304680487351018  # a session
PUB = 6984723121240911  # its publisher handle
SUB = 5376491806392939  # its subscriber handle
OTHER = 1977985607170799  # another participant's publisher id
PREFIX = "geogate-test-"
NOTICE: dict[str, object] = {
    "type": "geogate.denied", "restriction": "r1", "meeting": "1234", "region": "CN",
    "notice": "Not from your location.", "notice_url": None, "authority": "Court",
    "legal_basis": "Order 1",
}  # fmt: skip


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(message: dict[str, Any]) -> bytes:
    """A client message as a browser's JSON.stringify writes it (compact)."""
    return orjson.dumps(message)


def upstream(message: dict[str, Any]) -> bytes:
    """An upstream message as Janus writes it by default (indented by 3 spaces)."""
    return std_json.dumps(message, indent=3).encode()


def success(transaction: str, new_id: int, session: int | None = None) -> bytes:
    """Janus' reply to create (no session) or attach."""
    message: dict[str, Any] = {"janus": "success"}
    if session is not None:
        message["session_id"] = session
    message.update({"transaction": transaction, "data": {"id": new_id}})
    return upstream(message)


def ack(transaction: str, session: int = S) -> bytes:
    return upstream({"janus": "ack", "session_id": session, "transaction": transaction})


def event(
    handle: int, data: dict[str, Any], transaction: str | None = None, session: int = S
) -> bytes:
    """A VideoRoom plugin event from ``handle`` (with the transaction when it answers one)."""
    message: dict[str, Any] = {"janus": "event", "session_id": session}
    if transaction is not None:
        message["transaction"] = transaction
    message["sender"] = handle
    message["plugindata"] = {"plugin": VIDEOROOM, "data": data}
    return upstream(message)


def joined(room: int, publisher_id: int = 1502228100448912) -> dict[str, Any]:
    return {
        "videoroom": "joined", "room": room, "description": f"room {room}",
        "id": publisher_id, "private_id": 1863670746, "publishers": [], "attendees": [],
    }  # fmt: skip


def message(handle: int, body: dict[str, Any], transaction: str, session: int = S) -> bytes:
    return client({"janus": "message", "session_id": session, "handle_id": handle,
                   "transaction": transaction, "body": body})  # fmt: skip


def publisher_join(room: int | str = 1234, display: str = "Alice") -> dict[str, Any]:
    return {"request": "join", "ptype": "publisher", "room": room, "display": display}


def make(**kwargs: Any) -> tuple[JanusAdapter, Clock]:
    clock = Clock()
    kwargs.setdefault("reclaim_timeout", 10.0)
    return JanusAdapter(clock=clock, transaction_prefix=PREFIX, **kwargs), clock


def setup_session(conn: JanusConnection, session: int = S, transaction: str = "c1") -> None:
    """create -> success."""
    assert conn.from_client(client({"janus": "create", "transaction": transaction})) == Forward()
    assert conn.from_upstream(success(transaction, session)) == Forward()


def attach(conn: JanusConnection, handle: int, transaction: str, session: int = S,
           plugin: str = VIDEOROOM) -> None:  # fmt: skip
    """attach -> success."""
    request = {"janus": "attach", "session_id": session, "plugin": plugin,
               "transaction": transaction}  # fmt: skip
    assert conn.from_client(client(request)) == Forward()
    assert conn.from_upstream(success(transaction, handle, session)) == Forward()


def join(conn: JanusConnection, handle: int, room: int, transaction: str, session: int = S,
         body: dict[str, Any] | None = None) -> Gate:  # fmt: skip
    """A join, admitted, acked and answered with "joined"."""
    verdict = conn.from_client(message(handle, body or publisher_join(room), transaction, session))
    assert isinstance(verdict, Gate)
    conn.admitted(verdict)
    assert conn.from_upstream(ack(transaction, session)) == Forward()
    assert conn.from_upstream(event(handle, joined(room), transaction, session)) == Forward()
    return verdict


def in_room(conn: JanusConnection, handle: int = PUB, room: int = 1234) -> None:
    """A session with one handle in ``room``."""
    setup_session(conn)
    attach(conn, handle, f"a{handle}")
    join(conn, handle, room, f"j{handle}")


def parsed(messages: tuple[bytes, ...]) -> list[dict[str, Any]]:
    return [orjson.loads(m) for m in messages]


# -- construction -------------------------------------------------------------------------------


def test_adapter_satisfies_the_stateful_adapter_protocol() -> None:
    """JanusAdapter is a StatefulAdapter named janus speaking janus-protocol."""
    adapter: StatefulAdapter = JanusAdapter()
    assert adapter.name == "janus"
    assert adapter.subprotocols == ("janus-protocol",)
    assert isinstance(adapter.connect("192.0.2.1"), JanusConnection)


@pytest.mark.parametrize(
    "kwargs",
    [{"reclaim_timeout": -1}, {"transaction_timeout": -1}, {"max_sessions": 0},
     {"max_transactions": 0}, {"plugins": ()}, {"transaction_prefix": ""}],
)  # fmt: skip
def test_invalid_settings_are_refused(kwargs: dict[str, Any]) -> None:
    """Negative timeouts, zero bounds, no plugin and an empty prefix raise ValueError."""
    with pytest.raises(ValueError):
        JanusAdapter(**kwargs)


def test_default_transaction_prefix_is_random_and_marked() -> None:
    """Without a prefix given, each adapter gets its own unguessable geogate- prefix."""
    a, b = JanusAdapter().transaction_prefix, JanusAdapter().transaction_prefix
    assert a.startswith("geogate-") and b.startswith("geogate-")
    assert a != b


def test_connection_keeps_its_address() -> None:
    """connect() records the client's address on the connection."""
    assert JanusAdapter().connect("198.51.100.7").address == "198.51.100.7"


# -- learning ids -------------------------------------------------------------------------------


def test_join_admitted_counts_before_janus_confirms() -> None:
    """An admitted join's room is in meetings() at once, and stays once Janus says joined."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    setup_session(conn)
    attach(conn, PUB, "a1")
    verdict = conn.from_client(message(PUB, publisher_join(1234), "j1"))
    assert isinstance(verdict, Gate)
    assert conn.meetings() == frozenset()
    conn.admitted(verdict)
    assert conn.meetings() == {"1234"}
    conn.from_upstream(event(PUB, joined(1234), "j1"))
    assert conn.meetings() == {"1234"}


def test_join_refused_by_janus_is_undone() -> None:
    """A plugin error answering an admitted join (no such room) takes the room back out."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    setup_session(conn)
    attach(conn, PUB, "a1")
    verdict = conn.from_client(message(PUB, publisher_join(4242), "j1"))
    assert isinstance(verdict, Gate)
    conn.admitted(verdict)
    assert conn.meetings() == {"4242"}
    conn.from_upstream(ack("j1"))
    assert conn.meetings() == {"4242"}, "an ack is not the answer"
    error = {"videoroom": "event", "error_code": 426, "error": "No such room (4242)"}
    assert conn.from_upstream(event(PUB, error, "j1")) == Forward()
    assert conn.meetings() == frozenset()


def test_second_join_of_a_handle_keeps_the_first_room() -> None:
    """A handle's second join does not move it (Janus answers 425): it stays in its first room."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    verdict = conn.from_client(message(PUB, publisher_join(5678), "j2"))
    assert isinstance(verdict, Gate)
    conn.admitted(verdict)
    assert conn.meetings() == {"1234"}, "Janus lets a handle be in one room only"
    assert conn.remove("5678", NOTICE) == Removal(), "its real room is not touched"
    error = {"videoroom": "event", "error_code": 425,
             "error": "Already in as a publisher on this handle"}  # fmt: skip
    conn.from_upstream(event(PUB, error, "j2"))
    assert conn.meetings() == {"1234"}


def test_janus_core_error_undoes_the_join() -> None:
    """A Janus error on the join's transaction (no such handle) undoes it too."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    setup_session(conn)
    verdict = conn.from_client(message(99, publisher_join(1234), "j1"))
    assert isinstance(verdict, Gate)
    conn.admitted(verdict)
    assert conn.meetings() == {"1234"}
    error = {"janus": "error", "session_id": S, "transaction": "j1",
             "error": {"code": 459, "reason": f"No such handle 99 in session {S}"}}  # fmt: skip
    assert conn.from_upstream(upstream(error)) == Forward()
    assert conn.meetings() == frozenset()


def test_joined_event_is_trusted_even_without_a_seen_join() -> None:
    """A joined/attached event puts the handle in the room (Janus' view wins)."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    assert conn.from_upstream(event(PUB, joined(5678))) == Forward()
    attached = {"videoroom": "attached", "room": 9999, "streams": []}
    assert conn.from_upstream(event(SUB, attached, "x")) == Forward()
    assert conn.meetings() == {"5678", "9999"}


@pytest.mark.parametrize(
    "data",
    [
        {"videoroom": "event", "room": 1234, "leaving": "ok"},
        {"videoroom": "event", "room": 1234, "leaving": "ok", "reason": "kicked"},
        {"videoroom": "event", "room": 1234, "left": "ok"},
        {"videoroom": "destroyed", "room": 1234},
    ],
    ids=["leaving", "kicked", "left", "destroyed"],
)
def test_own_leave_events_take_the_handle_out(data: dict[str, Any]) -> None:
    """leaving ok (also when kicked), left ok and destroyed take the handle out of its room."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    assert conn.from_upstream(event(PUB, data)) == Forward()
    assert conn.meetings() == frozenset()


def test_other_participants_events_change_nothing() -> None:
    """leaving/kicked/unpublished naming another participant do not move our handle."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    for data in ({"videoroom": "event", "room": 1234, "leaving": OTHER},
                 {"videoroom": "event", "room": 1234, "kicked": OTHER},
                 {"videoroom": "event", "room": 1234, "joining": {"id": OTHER, "display": "B"}},
                 {"videoroom": "destroyed", "room": 777}):  # fmt: skip
        assert conn.from_upstream(event(PUB, data)) == Forward()
    assert conn.meetings() == {"1234"}


def test_hangup_keeps_the_handle_in_its_room() -> None:
    """hangup closes only the PeerConnection: Janus keeps the handle in the room."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    hangup = {"janus": "hangup", "session_id": S, "sender": PUB, "reason": "Close PC"}
    assert conn.from_upstream(upstream(hangup)) == Forward()
    assert conn.meetings() == {"1234"}


def test_detach_success_and_detached_forget_the_handle() -> None:
    """The success reply to detach, or the detached event, forgets the handle."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    attach(conn, SUB, "a2")
    join(conn, SUB, 5678, "j2")
    detach = {"janus": "detach", "session_id": S, "handle_id": PUB, "transaction": "d1"}
    assert conn.from_client(client(detach)) == Forward()
    assert conn.meetings() == {"1234", "5678"}, "not gone until Janus says so"
    assert conn.from_upstream(upstream({"janus": "success", "session_id": S,
                                        "transaction": "d1"})) == Forward()  # fmt: skip
    assert conn.meetings() == {"5678"}
    detached = {"janus": "detached", "session_id": S, "sender": SUB}
    assert conn.from_upstream(upstream(detached)) == Forward()
    assert conn.meetings() == frozenset()


def test_destroy_and_timeout_forget_the_session() -> None:
    """A destroy's success reply, or a timeout event, forgets the session and its rooms."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    destroy = {"janus": "destroy", "session_id": S, "transaction": "x1"}
    assert conn.from_client(client(destroy)) == Forward()
    conn.from_upstream(upstream({"janus": "success", "session_id": S, "transaction": "x1"}))
    assert conn.meetings() == frozenset()

    second = adapter.connect("192.0.2.2")
    in_room(second)
    assert second.from_upstream(upstream({"janus": "timeout", "session_id": S})) == Forward()
    assert second.meetings() == frozenset()
    second.closed()
    assert adapter.remembered() == frozenset()


def test_failed_create_learns_nothing() -> None:
    """An error reply to create learns no session (a later claim of any id is unknown)."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    conn.from_client(client({"janus": "create", "transaction": "c1"}))
    error = {"janus": "error", "transaction": "c1", "error": {"code": 490, "reason": "x"}}
    assert conn.from_upstream(upstream(error)) == Forward()
    conn.closed()
    assert adapter.remembered() == frozenset()


def test_transactions_are_bounded() -> None:
    """Beyond max_transactions the oldest tracked request is forgotten (its reply is ignored)."""
    adapter, _ = make(max_transactions=2)
    conn = adapter.connect("192.0.2.1")
    for transaction in ("c1", "c2", "c3"):
        conn.from_client(client({"janus": "create", "transaction": transaction}))
    for transaction, session in (("c1", 11), ("c2", 12), ("c3", 13)):
        conn.from_upstream(success(transaction, session))
    conn.closed()
    assert adapter.remembered() == {12, 13}


def test_transactions_expire() -> None:
    """A reply after transaction_timeout is not applied."""
    adapter, clock = make(transaction_timeout=30.0)
    conn = adapter.connect("192.0.2.1")
    conn.from_client(client({"janus": "create", "transaction": "c1"}))
    clock.now += 31
    conn.from_client(client({"janus": "create", "transaction": "c2"}))
    conn.from_upstream(success("c1", 11))
    conn.from_upstream(success("c2", 12))
    conn.closed()
    assert adapter.remembered() == {12}


# -- join gating --------------------------------------------------------------------------------


def test_publisher_join_is_gated_with_session_and_display() -> None:
    """A publisher join gives one JOIN of the room, the participant being the session (display)."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    setup_session(conn)
    attach(conn, PUB, "a1")
    verdict = conn.from_client(message(PUB, publisher_join(1234, "Alice"), "j1"))
    assert isinstance(verdict, Gate)
    assert verdict.joins == (Join("1234", f"{S} (Alice)", JoinKind.JOIN),)


def test_subscriber_join_is_gated() -> None:
    """A subscriber join (no display) names the session alone."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    body = {"request": "join", "ptype": "subscriber", "room": 9999,
            "streams": [{"feed": 8159463782924366}]}  # fmt: skip
    verdict = conn.from_client(message(SUB, body, "j1"))
    assert isinstance(verdict, Gate)
    assert verdict.joins == (Join("9999", str(S), JoinKind.JOIN),)


def test_joinandconfigure_is_gated() -> None:
    """joinandconfigure is a join."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    body = {"request": "joinandconfigure", "ptype": "publisher", "room": 5678, "display": "C"}
    verdict = conn.from_client(message(PUB, body, "j1"))
    assert isinstance(verdict, Gate)
    assert verdict.joins == (Join("5678", f"{S} (C)", JoinKind.JOIN),)


def test_join_to_the_same_room_again_is_gated() -> None:
    """Every join is gated, even to the handle's own room."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    assert isinstance(conn.from_client(message(PUB, publisher_join(1234), "j2")), Gate)


def test_room_requests_are_gated_unless_for_the_handles_own_room() -> None:
    """A request naming another room than the handle's is gated; its own room passes."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    own = conn.from_client(message(PUB, {"request": "listparticipants", "room": 1234}, "t1"))
    assert own == Forward()
    other = conn.from_client(message(PUB, {"request": "listparticipants", "room": 5678}, "t2"))
    assert isinstance(other, Gate)
    assert other.joins == (Join("5678", str(S), JoinKind.JOIN),)
    conn.admitted(other)
    assert conn.meetings() == {"1234"}, "an admitted non-join does not put the handle in a room"


def test_room_request_of_a_handle_in_no_room_is_gated() -> None:
    """A handle in no room asking about a room is gated (its room differs from none)."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    setup_session(conn)
    attach(conn, PUB, "a1")
    verdict = conn.from_client(message(PUB, {"request": "exists", "room": 1234}, "t1"))
    assert isinstance(verdict, Gate)


def test_string_room_ids_name_the_same_meeting() -> None:
    """Room 1234 and "1234" (Janus string_ids) are both meeting "1234"; "abc" is "abc"."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    for room, meeting in ((1234, "1234"), ("1234", "1234"), ("abc", "abc")):
        verdict = conn.from_client(message(PUB, publisher_join(room), "j"))
        assert isinstance(verdict, Gate)
        assert verdict.joins[0].meeting == meeting


@pytest.mark.parametrize("room", [True, 1234.0, None, [1234], {"id": 1234}])
def test_rooms_janus_refuses_are_forwarded_ungated(room: object) -> None:
    """A room that is not an integer or a string is Janus' to refuse (error 430)."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    assert conn.from_client(message(PUB, {"request": "join", "room": room}, "j")) == Forward()


@pytest.mark.parametrize("room", ["", "x" * 257])
def test_unusable_room_ids_are_answered_not_forwarded(room: str) -> None:
    """An empty or over-long room id is answered with a VideoRoom error 430."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    verdict = conn.from_client(message(PUB, publisher_join(room), "j1"))
    assert isinstance(verdict, Reply)
    ack_, error = parsed(verdict.messages)
    assert ack_ == {"janus": "ack", "session_id": S, "transaction": "j1"}
    assert error["plugindata"]["data"]["error_code"] == 430
    assert error["transaction"] == "j1" and error["sender"] == PUB


def test_handles_of_other_plugins_are_not_gated() -> None:
    """A known handle of another plugin (its attach was seen) is not gated."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    setup_session(conn)
    attach(conn, PUB, "a1", plugin="janus.plugin.audiobridge")
    assert conn.from_client(message(PUB, publisher_join(1234), "j1")) == Forward()


def test_unknown_handles_are_gated() -> None:
    """A handle whose attach was not seen is treated as VideoRoom."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    assert isinstance(conn.from_client(message(424242, publisher_join(1234), "j1")), Gate)


def test_display_name_is_cleaned_for_the_audit_trail() -> None:
    """Control characters are dropped and the display name is cut at 64 characters."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    verdict = conn.from_client(message(PUB, publisher_join(1, "Al\nice\x00" + "x" * 100), "j"))
    assert isinstance(verdict, Gate)
    participant = verdict.joins[0].participant
    assert participant is not None
    assert participant.startswith(f"{S} (Alicexxx") and participant.isprintable()
    assert len(participant) == len(f"{S} ()") + 64


def test_join_without_a_session_names_no_session() -> None:
    """A join missing its session id (Janus will refuse it) is still gated."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    body = {"janus": "message", "handle_id": PUB, "transaction": "j", "body": publisher_join()}
    verdict = conn.from_client(client(body))
    assert isinstance(verdict, Gate)
    assert verdict.joins == (Join("1234", "Alice", JoinKind.JOIN),)
    conn.admitted(verdict)  # nothing to record: no session or handle
    assert conn.meetings() == frozenset()


def test_escaped_keys_and_values_are_still_read() -> None:
    """A \\u escape anywhere triggers a parse: "r\\u006fom" is "room" to Janus."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    raw = (b'{"janus":"m\\u0065ssage","session_id":%d,"handle_id":%d,"transaction":"e",'
           b'"body":{"request":"j\\u006fin","r\\u006fom":1234}}' % (S, PUB))  # fmt: skip
    assert b'"room"' not in raw
    verdict = conn.from_client(raw)
    assert isinstance(verdict, Gate)
    assert verdict.joins[0].meeting == "1234"


def test_duplicate_room_keys_read_like_janus() -> None:
    """With a repeated key the last one counts, as in Janus (jansson) and orjson."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    raw = (b'{"janus":"message","session_id":%d,"handle_id":%d,"transaction":"d",'
           b'"body":{"request":"join","room":1234,"room":5678}}' % (S, PUB))  # fmt: skip
    verdict = conn.from_client(raw)
    assert isinstance(verdict, Gate)
    assert verdict.joins[0].meeting == "5678"


def test_unparseable_message_with_a_needle_is_refused() -> None:
    """A message with a needle that orjson cannot parse is answered with Janus' 454, not sent."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    deep = "[" * 1500 + "]" * 1500  # Janus parses up to 2048 levels, orjson 1024
    raw = (f'{{"janus":"message","session_id":{S},"handle_id":{PUB},"transaction":"d",'
           f'"body":{{"request":"join","room":1234,"x":{deep}}}}}').encode()  # fmt: skip
    verdict = conn.from_client(raw)
    assert isinstance(verdict, Reply)
    (error,) = parsed(verdict.messages)
    assert error["janus"] == "error" and error["error"]["code"] == 454


def test_unparseable_message_without_a_needle_is_forwarded() -> None:
    """Malformed JSON without a needle is Janus' business (it answers 454 itself)."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    assert conn.from_client(b"{not json") == Forward()
    assert conn.from_client(b'["room"]') == Forward()


# -- needles: what is never parsed ----------------------------------------------------------------


class CountingOrjson:
    """Stands in for orjson in the adapter module, counting parses."""

    JSONDecodeError = orjson.JSONDecodeError

    def __init__(self) -> None:
        self.calls = 0

    def loads(self, data: bytes) -> Any:
        self.calls += 1
        return orjson.loads(data)

    def dumps(self, value: Any, default: Any = None) -> bytes:
        return orjson.dumps(value, default=default)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingOrjson:
    fake = CountingOrjson()
    monkeypatch.setattr(janus_module, "orjson", fake)
    return fake


def test_ordinary_client_messages_are_not_parsed(counting: CountingOrjson) -> None:
    """Keepalives, trickles, configure/leave/unpublish without SDP and hangups are not parsed."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    for body in (
        {"janus": "keepalive", "session_id": S, "transaction": "k1"},
        {"janus": "trickle", "session_id": S, "handle_id": PUB, "transaction": "t1",
         "candidate": {"candidate": "candidate:1 1 udp 2015363327 192.0.2.2 43104 typ host",
                       "sdpMid": "0", "sdpMLineIndex": 0}},
        {"janus": "message", "session_id": S, "handle_id": PUB, "transaction": "m1",
         "body": {"request": "configure", "audio": True}},
        {"janus": "message", "session_id": S, "handle_id": PUB, "transaction": "m2",
         "body": {"request": "leave"}},
        {"janus": "message", "session_id": S, "handle_id": PUB, "transaction": "m3",
         "body": {"request": "unpublish"}},
        {"janus": "hangup", "session_id": S, "handle_id": PUB, "transaction": "h1"},
        {"janus": "info", "transaction": "i1"},
    ):  # fmt: skip
        assert conn.from_client(client(body)) == Forward()
    assert counting.calls == 0


def test_ordinary_upstream_messages_are_not_parsed(counting: CountingOrjson) -> None:
    """acks, other participants' events, webrtcup/media and hangups are never parsed."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    for raw in (
        ack("k1"),
        event(PUB, {"videoroom": "event", "room": 1234, "publishers": [{"id": OTHER}]}),
        event(PUB, {"videoroom": "event", "room": 1234, "joining": {"id": OTHER}}),
        event(PUB, {"videoroom": "event", "room": 1234, "unpublished": OTHER}),
        event(PUB, {"videoroom": "event", "room": 1234, "configured": "ok"}, "m1"),
        upstream({"janus": "webrtcup", "session_id": S, "sender": PUB}),
        upstream({"janus": "media", "session_id": S, "sender": PUB, "type": "audio",
                  "receiving": True}),
        upstream({"janus": "hangup", "session_id": S, "sender": PUB, "reason": "DTLS alert"}),
    ):  # fmt: skip
        assert conn.from_upstream(raw) == Forward()
    assert counting.calls == 0


def test_sdp_messages_are_parsed_once_and_forwarded(counting: CountingOrjson) -> None:
    """An SDP offer or answer (escaped CR LF) is parsed once, cheaper than scanning it all."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n" + "a=x\r\n" * 200
    offer = client({"janus": "message", "session_id": S, "handle_id": PUB, "transaction": "m1",
                    "body": {"request": "configure", "audio": True},
                    "jsep": {"type": "offer", "sdp": sdp}})  # fmt: skip
    answer = upstream({"janus": "event", "session_id": S, "transaction": "m1", "sender": PUB,
                       "plugindata": {"plugin": VIDEOROOM, "data": {
                           "videoroom": "event", "room": 1234, "configured": "ok"}},
                       "jsep": {"type": "answer", "sdp": sdp}})  # fmt: skip
    assert conn.from_client(offer) == Forward()
    assert conn.from_upstream(answer) == Forward()
    assert counting.calls == 2


def test_success_and_error_are_parsed_only_while_awaited(counting: CountingOrjson) -> None:
    """A success or error frame is parsed only while a tracked transaction awaits its reply."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    data = {"videoroom": "participants", "room": 1234, "participants": []}
    listing = upstream({"janus": "success", "session_id": S, "transaction": "l1", "sender": PUB,
                        "plugindata": {"plugin": VIDEOROOM, "data": data}})  # fmt: skip
    assert conn.from_upstream(listing) == Forward()
    assert counting.calls == 0
    conn.from_client(client({"janus": "create", "transaction": "c1"}))
    calls = counting.calls
    conn.from_upstream(listing)
    assert counting.calls == calls + 1


# -- denied replies -----------------------------------------------------------------------------


def test_denied_join_is_answered_in_janus_shape() -> None:
    """A barred join gets Janus' ack then a VideoRoom event with 451, the text and the notice."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    setup_session(conn)
    attach(conn, PUB, "a1")
    verdict = conn.from_client(message(PUB, publisher_join(1234), "j1"))
    assert isinstance(verdict, Gate)
    reply = conn.denied(verdict, verdict.joins[0], NOTICE)
    assert parsed(reply.messages) == [
        {"janus": "ack", "session_id": S, "transaction": "j1"},
        {"janus": "event", "session_id": S, "transaction": "j1", "sender": PUB,
         "plugindata": {"plugin": VIDEOROOM, "data": {
             "videoroom": "event", "room": 1234, "error_code": DENIED_ERROR_CODE,
             "error": "Not from your location.", "geogate": NOTICE}}},
    ]  # fmt: skip
    assert conn.meetings() == frozenset()


def test_denied_join_leaves_other_handles_alone() -> None:
    """After a denial, the connection's other handles and rooms are unchanged."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn, PUB, 5678)
    attach(conn, SUB, "a2")
    verdict = conn.from_client(message(SUB, publisher_join(1234), "j2"))
    assert isinstance(verdict, Gate)
    conn.denied(verdict, verdict.joins[0], NOTICE)
    assert conn.meetings() == {"5678"}
    own = conn.from_client(message(PUB, {"request": "listparticipants", "room": 5678}, "t"))
    assert own == Forward()


def test_denial_without_notice_text_uses_a_default() -> None:
    """A notice without text still tells the client something."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    verdict = conn.from_client(message(PUB, publisher_join(1234), "j1"))
    assert isinstance(verdict, Gate)
    _, event_ = parsed(conn.denied(verdict, verdict.joins[0], {}).messages)
    assert event_["plugindata"]["data"]["error"] == janus_module._DEFAULT_NOTICE


# -- claims (reconnects) ------------------------------------------------------------------------


def claim(session: int = S, transaction: str = "cl1") -> bytes:
    return client({"janus": "claim", "session_id": session, "transaction": transaction})


def two_rooms(conn: JanusConnection) -> None:
    """Session S: a publisher in 1234 (Alice) and a subscriber in 9999."""
    in_room(conn, PUB, 1234)
    attach(conn, SUB, "a2")
    body = {"request": "join", "ptype": "subscriber", "room": 9999, "streams": [{"feed": 1}]}
    verdict = conn.from_client(message(SUB, body, "j2"))
    assert isinstance(verdict, Gate)
    conn.admitted(verdict)
    conn.from_upstream(event(SUB, {"videoroom": "attached", "room": 9999, "streams": []}, "j2"))


def test_claim_after_close_is_gated_for_every_room() -> None:
    """A claim on a new connection is a RESUME of every room the session's handles are in."""
    adapter, clock = make(reclaim_timeout=10.0)
    old = adapter.connect("192.0.2.1")
    two_rooms(old)
    old.closed()
    assert adapter.remembered() == {S}
    clock.now += 9
    new = adapter.connect("203.0.113.9")
    verdict = new.from_client(claim())
    assert isinstance(verdict, Gate)
    assert verdict.joins == (
        Join("1234", f"{S} (Alice)", JoinKind.RESUME),
        Join("9999", str(S), JoinKind.RESUME),
    )
    new.admitted(verdict)
    assert new.meetings() == {"1234", "9999"}
    assert adapter.remembered() == frozenset()
    assert new.from_upstream(upstream({"janus": "success", "session_id": S,
                                       "transaction": "cl1"})) == Forward()  # fmt: skip
    assert new.meetings() == {"1234", "9999"}


def test_denied_claim_is_a_janus_error_and_the_memory_stays() -> None:
    """A barred claim gets a Janus error 451 with the notice; the session stays claimable."""
    adapter, _ = make()
    old = adapter.connect("192.0.2.1")
    two_rooms(old)
    old.closed()
    new = adapter.connect("203.0.113.9")
    verdict = new.from_client(claim())
    assert isinstance(verdict, Gate)
    reply = new.denied(verdict, verdict.joins[0], NOTICE)
    assert parsed(reply.messages) == [
        {"janus": "error", "session_id": S, "transaction": "cl1",
         "error": {"code": DENIED_ERROR_CODE, "reason": "Not from your location."},
         "geogate": NOTICE},
    ]  # fmt: skip
    assert new.meetings() == frozenset()
    assert adapter.remembered() == {S}


def test_claim_while_the_old_connection_is_open_moves_the_session() -> None:
    """Claiming a live connection's session gates it, then moves it to the new connection."""
    adapter, _ = make()
    old = adapter.connect("192.0.2.1")
    two_rooms(old)
    new = adapter.connect("203.0.113.9")
    verdict = new.from_client(claim())
    assert isinstance(verdict, Gate)
    assert {j.meeting for j in verdict.joins} == {"1234", "9999"}
    assert old.meetings() == {"1234", "9999"}, "nothing moves before admission"
    new.admitted(verdict)
    assert old.meetings() == frozenset()
    assert new.meetings() == {"1234", "9999"}
    old.closed()
    assert adapter.remembered() == frozenset(), "the old connection no longer owns it"


def test_claim_of_an_unknown_session_is_refused_like_janus() -> None:
    """A session the adapter does not know cannot be checked: error 458 as Janus would say."""
    adapter, _ = make()
    conn = adapter.connect("203.0.113.9")
    verdict = conn.from_client(claim(12345, "cl9"))
    assert isinstance(verdict, Reply)
    assert parsed(verdict.messages) == [
        {"janus": "error", "session_id": 12345, "transaction": "cl9",
         "error": {"code": 458, "reason": "No such session 12345"}},
    ]  # fmt: skip


def test_claim_after_the_memory_expired_is_refused() -> None:
    """After reclaim_timeout the session is forgotten: its claim is refused (458)."""
    adapter, clock = make(reclaim_timeout=5.0)
    old = adapter.connect("192.0.2.1")
    two_rooms(old)
    old.closed()
    clock.now += 5
    assert adapter.remembered() == frozenset()
    verdict = adapter.connect("203.0.113.9").from_client(claim())
    assert isinstance(verdict, Reply)
    assert parsed(verdict.messages)[0]["error"]["code"] == 458


def test_without_reclaim_sessions_are_forgotten_at_close() -> None:
    """reclaim_timeout 0 (Janus' default) forgets a closed connection's sessions at once."""
    adapter, _ = make(reclaim_timeout=0.0)
    old = adapter.connect("192.0.2.1")
    two_rooms(old)
    old.closed()
    assert adapter.remembered() == frozenset()
    assert isinstance(adapter.connect("203.0.113.9").from_client(claim()), Reply)


def test_remembered_sessions_are_bounded() -> None:
    """Beyond max_sessions the oldest remembered sessions are dropped."""
    adapter, clock = make(max_sessions=2)
    for session in (1, 2, 3):
        conn = adapter.connect("192.0.2.1")
        setup_session(conn, session)
        clock.now += 1
        conn.closed()
    assert adapter.remembered() == {2, 3}


def test_claim_of_a_session_without_rooms_passes_and_moves_it() -> None:
    """A session in no room has nothing to gate: the claim is forwarded and the session moved."""
    adapter, _ = make()
    old = adapter.connect("192.0.2.1")
    setup_session(old)
    attach(old, PUB, "a1")
    old.closed()
    new = adapter.connect("203.0.113.9")
    assert new.from_client(claim()) == Forward()
    assert adapter.remembered() == frozenset()
    join(new, PUB, 1234, "j1")
    assert new.meetings() == {"1234"}


def test_claim_by_the_owner_is_forwarded() -> None:
    """A connection claiming its own session changes nothing."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    two_rooms(conn)
    assert conn.from_client(claim()) == Forward()
    assert conn.meetings() == {"1234", "9999"}


def test_claim_refused_by_janus_forgets_the_session() -> None:
    """An error reply to an admitted claim (Janus no longer has the session) forgets it."""
    adapter, _ = make()
    old = adapter.connect("192.0.2.1")
    two_rooms(old)
    old.closed()
    new = adapter.connect("203.0.113.9")
    verdict = new.from_client(claim())
    assert isinstance(verdict, Gate)
    new.admitted(verdict)
    error = {"janus": "error", "session_id": S, "transaction": "cl1",
             "error": {"code": 458, "reason": f"No such session {S}"}}  # fmt: skip
    assert new.from_upstream(upstream(error)) == Forward()
    assert new.meetings() == frozenset()
    new.closed()
    assert adapter.remembered() == frozenset()


def test_claim_without_session_is_forwarded() -> None:
    """A claim without a session id is Janus' to refuse."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    assert conn.from_client(client({"janus": "claim", "transaction": "x"})) == Forward()


# -- removal ------------------------------------------------------------------------------------


def test_remove_leaves_and_detaches_only_that_rooms_handles() -> None:
    """remove() sends leave then detach per handle in the room, and keeps the other rooms."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    two_rooms(conn)
    removal = conn.remove("1234", NOTICE)
    assert removal.close is False
    up = parsed(removal.to_upstream)
    assert [(m["janus"], m.get("body")) for m in up] == [
        ("message", {"request": "leave"}), ("detach", None)
    ]
    for m in up:
        assert m["session_id"] == S and m["handle_id"] == PUB
        assert m["transaction"].startswith(PREFIX)
    assert up[0]["transaction"] != up[1]["transaction"]
    assert parsed(removal.to_client) == [
        {"janus": "event", "session_id": S, "sender": PUB,
         "plugindata": {"plugin": VIDEOROOM, "data": {
             "videoroom": "event", "room": 1234, "error_code": DENIED_ERROR_CODE,
             "error": "Not from your location.", "geogate": NOTICE}}},
        {"janus": "detached", "session_id": S, "sender": PUB},
    ]  # fmt: skip
    assert conn.meetings() == {"9999"}


def test_remove_destroys_a_session_left_empty() -> None:
    """When no handle remains in the session, remove() also destroys it."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn, PUB, 1234)
    attach(conn, SUB, "a2")
    join(conn, SUB, 1234, "j2")
    removal = conn.remove("1234", NOTICE)
    up = parsed(removal.to_upstream)
    assert [m["janus"] for m in up] == ["message", "detach", "message", "detach", "destroy"]
    assert up[-1] == {"janus": "destroy", "session_id": S, "transaction": up[-1]["transaction"]}
    assert [m["janus"] for m in parsed(removal.to_client)] == ["event", "detached"] * 2
    assert conn.meetings() == frozenset()
    conn.closed()
    assert adapter.remembered() == frozenset()


def test_remove_keeps_a_session_with_an_attach_in_flight() -> None:
    """A session whose client is attaching another handle is not destroyed."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    conn.from_client(client({"janus": "attach", "session_id": S, "plugin": VIDEOROOM,
                             "transaction": "a9"}))  # fmt: skip
    up = parsed(conn.remove("1234", NOTICE).to_upstream)
    assert [m["janus"] for m in up] == ["message", "detach"]


def test_remove_covers_a_join_awaiting_janus() -> None:
    """A handle whose join was admitted but not yet answered is removed too."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    setup_session(conn)
    attach(conn, PUB, "a1")
    verdict = conn.from_client(message(PUB, publisher_join(1234), "j1"))
    assert isinstance(verdict, Gate)
    conn.admitted(verdict)
    removal = conn.remove("1234", NOTICE)
    assert len(removal.to_upstream) == 3  # leave, detach, destroy
    # The join's late answer is about a removed handle: the client does not see it.
    assert conn.from_upstream(event(PUB, joined(1234), "j1")) == Drop()


def test_remove_of_another_meeting_does_nothing() -> None:
    """remove() of a room the connection is not in returns an empty Removal."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    assert conn.remove("5678", NOTICE) == Removal()
    assert conn.meetings() == {"1234"}


def test_remove_ignores_other_connections() -> None:
    """Another connection's handles in the same room are not touched."""
    adapter, _ = make()
    mine, theirs = adapter.connect("192.0.2.1"), adapter.connect("192.0.2.2")
    in_room(mine)
    setup_session(theirs, 777, "c7")
    attach(theirs, 778, "a7", 777)
    join(theirs, 778, 1234, "j7", 777)
    assert len(mine.remove("1234", NOTICE).to_upstream) == 3
    assert theirs.meetings() == {"1234"}


def test_replies_to_proxy_requests_are_dropped() -> None:
    """Janus' answers to the proxy's leave, detach and destroy never reach the client."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    leave, detach, destroy = (orjson.loads(m)["transaction"]
                              for m in conn.remove("1234", NOTICE).to_upstream)  # fmt: skip
    for raw in (
        event(PUB, {"videoroom": "event", "room": 1234, "leaving": "ok"}, leave),
        ack(leave),  # after its event, as Janus often does
        upstream({"janus": "hangup", "session_id": S, "sender": PUB, "reason": "Close PC"}),
        upstream({"janus": "success", "session_id": S, "transaction": detach}),
        upstream({"janus": "detached", "session_id": S, "sender": PUB}),
        upstream({"janus": "success", "session_id": S, "transaction": destroy}),
        # Janus may run the detach first: the leave then fails.
        upstream({"janus": "error", "session_id": S, "transaction": leave,
                  "error": {"code": 459, "reason": f"No such handle {PUB} in session {S}"}}),
    ):  # fmt: skip
        assert conn.from_upstream(raw) == Drop()


def test_removed_handle_events_pass_again_after_detached() -> None:
    """Once Janus confirms the detach, messages naming that id are no longer dropped."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    two_rooms(conn)
    conn.remove("1234", NOTICE)
    late = event(PUB, {"videoroom": "event", "room": 1234, "publishers": []})
    assert conn.from_upstream(late) == Drop()
    detached = upstream({"janus": "detached", "session_id": S, "sender": PUB})
    assert conn.from_upstream(detached) == Drop()
    assert conn.from_upstream(late) == Forward()


def test_removed_handles_are_dropped_for_a_bounded_time() -> None:
    """Without a detached, a removed handle's messages pass again after transaction_timeout."""
    adapter, clock = make(transaction_timeout=30.0)
    conn = adapter.connect("192.0.2.1")
    two_rooms(conn)
    conn.remove("1234", NOTICE)
    late = event(PUB, {"videoroom": "event", "room": 1234, "publishers": []})
    assert conn.from_upstream(late) == Drop()
    clock.now += 31
    assert conn.from_upstream(late) == Forward()


def test_other_rooms_keep_working_after_a_removal() -> None:
    """After remove(), the other handle's events pass and its room requests are not gated."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    two_rooms(conn)
    conn.remove("1234", NOTICE)
    assert conn.from_upstream(event(SUB, {"videoroom": "event", "room": 9999,
                                          "configured": "ok"}, "m1")) == Forward()  # fmt: skip
    mine = conn.from_client(message(SUB, {"request": "listparticipants", "room": 9999}, "l"))
    assert mine == Forward()
    again = conn.from_client(message(SUB, publisher_join(1234), "j9"))
    assert isinstance(again, Gate), "coming back into the barred room is gated again"


def test_client_transactions_with_the_prefix_text_are_not_ours() -> None:
    """Only the adapter's own prefix is dropped; a client's "geogate-..." transaction passes."""
    adapter = JanusAdapter()
    conn = adapter.connect("192.0.2.1")
    raw = upstream({"janus": "ack", "session_id": S, "transaction": "geogate-1"})
    assert conn.from_upstream(raw) == Forward()
    theirs = upstream({"janus": "success", "session_id": S,
                       "transaction": adapter.transaction_prefix + "1"})  # fmt: skip
    assert conn.from_upstream(theirs) == Drop()


# -- normal Janus behaviour is tolerated ----------------------------------------------------------


def test_normal_janus_behaviour_is_forwarded() -> None:
    """Keepalive acks, acks after events, unpublished twice and plugin errors all pass."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    unpublish_error = {"videoroom": "event", "error_code": 435,
                       "error": "Can't unpublish, not published"}  # fmt: skip
    for raw in (
        ack("k1"),
        event(PUB, unpublish_error, "u1"),
        ack("u1"),
        event(PUB, {"videoroom": "event", "room": 1234, "unpublished": OTHER}),
        event(PUB, {"videoroom": "event", "room": 1234, "unpublished": OTHER}),
        event(PUB, {"videoroom": "event", "room": 1234, "leaving": OTHER}),
        upstream({"janus": "success", "session_id": S, "transaction": "l1", "sender": PUB,
                  "plugindata": {"plugin": VIDEOROOM, "data": {
                      "videoroom": "event", "error_code": 430,
                      "error": "Invalid element type (room should be a positive integer)"}}}),
        upstream({"janus": "error", "transaction": "b1",
                  "error": {"code": 457, "reason": "Unhandled request 'bogus' at this path"}}),
        b"not json at all \"joined\"",
        b'["detached"]',
    ):  # fmt: skip
        assert conn.from_upstream(raw) == Forward()
    assert conn.meetings() == {"1234"}


def test_compact_janus_output_is_read_too() -> None:
    """Janus configured with json = "compact" is read the same (needles have no spaces)."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    setup_session(conn)
    attach(conn, PUB, "a1")
    verdict = conn.from_client(message(PUB, publisher_join(1234), "j1"))
    assert isinstance(verdict, Gate)
    conn.admitted(verdict)
    leaving = orjson.dumps({"janus": "event", "session_id": S, "sender": PUB, "plugindata": {
        "plugin": VIDEOROOM, "data": {"videoroom": "event", "room": 1234, "leaving": "ok"}}})
    conn.from_upstream(leaving)
    assert conn.meetings() == frozenset()


def test_closed_twice_is_harmless() -> None:
    """closed() is idempotent and keeps the first memory."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    in_room(conn)
    conn.closed()
    conn.closed()
    assert adapter.remembered() == {S}


@given(st.binary(max_size=300))
def test_any_bytes_give_a_verdict(payload: bytes) -> None:
    """No payload makes either direction raise."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    assert isinstance(conn.from_client(payload), Forward | Gate | Reply)
    assert isinstance(conn.from_upstream(payload), Forward | Drop)


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["janus", "room", "body", "request", "session_id",
                                       "handle_id", "transaction", "plugindata", "data",
                                       "sender", "videoroom", "leaving"]), children, max_size=4),
    max_leaves=12,
))  # fmt: skip
def test_any_json_gives_a_verdict(value: Any) -> None:
    """Arbitrary JSON with Janus-like keys never makes the adapter raise, either way."""
    adapter, _ = make()
    conn = adapter.connect("192.0.2.1")
    payload = std_json.dumps(value).encode()
    verdict = conn.from_client(payload)
    if isinstance(verdict, Gate):
        conn.admitted(verdict)
    conn.from_upstream(payload)
    conn.remove("1234", NOTICE)
    conn.closed()
