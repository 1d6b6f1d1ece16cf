"""The real Janus (Debian's /usr/bin/janus), without the proxy: the harness works, and the message
shapes proxy/adapters/janus.py relies on (and tests/test_adapters_janus.py replays) are Janus' own.

The last tests put a JanusConnection between a client and the real Janus (no sockets of the
proxy): every client message goes through ``from_client`` and every Janus message through
``from_upstream``, so the adapter's reading of real traffic is checked end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.adapters.base import Forward, Gate, Join, JoinKind, Reply
from proxy.adapters.janus import DENIED_ERROR_CODE, VIDEOROOM, JanusAdapter, JanusConnection
from tests.helpers import janus as janus_helper
from tests.helpers.janus import JanusClient, JanusServer, running_janus

pytestmark = pytest.mark.janus

#: The fixture from the helper: a Janus with reclaim_session_timeout 5 s, one per test.
janus_server = janus_helper.janus_server

NOTICE: dict[str, object] = {
    "type": "geogate.denied", "restriction": "r1", "notice": "Not from your location.",
    "legal_basis": "Order 1",
}  # fmt: skip


def plugin_data(message: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = message["plugindata"]["data"]
    assert message["plugindata"]["plugin"] == VIDEOROOM
    return data


def is_event(handle: int, test: Callable[[dict[str, Any]], bool]) -> Callable[[Any], bool]:
    """A predicate: a VideoRoom event from ``handle`` whose data passes ``test``."""

    def predicate(message: dict[str, Any]) -> bool:
        return (message.get("janus") == "event" and message.get("sender") == handle
                and test(message["plugindata"]["data"]))  # fmt: skip

    return predicate


@pytest.fixture
def short_reclaim(tmp_path: Path) -> Iterator[JanusServer]:
    """A Janus that keeps a session whose WebSocket closed for 1 s only."""
    with running_janus(tmp_path / "janus", reclaim_session_timeout=1) as server:
        yield server


@pytest.fixture
def short_timeout(tmp_path: Path) -> Iterator[JanusServer]:
    """A Janus that destroys a session after 1 s without a request."""
    with running_janus(tmp_path / "janus", session_timeout=1) as server:
        yield server


@pytest.fixture
async def clients() -> Any:
    """Opens Janus clients; closes them all at the end."""
    opened: list[JanusClient] = []

    async def open_client(url: str, name: str) -> JanusClient:
        client = await JanusClient.connect(url, name)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


# -- the harness ----------------------------------------------------------------------------------


def test_harness_starts_janus_on_loopback_and_stops_it(tmp_path: Path) -> None:
    """Janus listens on 127.0.0.1 at the reported port and exits cleanly on SIGTERM."""
    with running_janus(tmp_path / "j") as server:
        assert server.url == f"ws://127.0.0.1:{server.port}" and server.port > 0
        assert server.process.poll() is None
        log = server.log()
        assert "Loading plugin 'libjanus_videoroom.so'" in log
        assert "Loading transport plugin 'libjanus_websockets.so'" in log
        for disabled in ("libjanus_echotest.so", "libjanus_http.so", "libjanus_jsonlog.so"):
            assert f"'{disabled}' has been disabled" in log
    assert server.process.returncode == 0


def test_harness_without_janus_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """No /usr/bin/janus: skipped with the install hint outside CI, failed in CI."""
    monkeypatch.setattr(janus_helper, "JANUS_BINARY", Path("/nonexistent/janus"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install janus"):
        janus_helper.require_janus()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install janus"):
        janus_helper.require_janus()


async def test_info_names_the_version(janus_server: JanusServer, clients: Any) -> None:
    """Janus answers info with its version and the VideoRoom plugin loaded."""
    client = await clients(janus_server.url, "a")
    info = await client.request({"janus": "info"}, "server_info")
    assert info["janus"] == "server_info"
    assert info["version_string"].startswith("1.")
    assert set(info["plugins"]) == {VIDEOROOM}
    assert set(info["transports"]) == {"janus.transport.websockets"}
    assert info["reclaim-session-timeout"] == 5


# -- message shapes --------------------------------------------------------------------------------


async def test_create_and_attach_reply_with_success_and_data_id(
    janus_server: JanusServer, clients: Any
) -> None:
    """create: success with data.id and no session; attach: success with session and data.id."""
    client = await clients(janus_server.url, "a")
    created = await client.request({"janus": "create"})
    assert set(created) == {"janus", "transaction", "data"}
    assert created["janus"] == "success" and isinstance(created["data"]["id"], int)
    session = created["data"]["id"]
    attached = await client.request({"janus": "attach", "session_id": session,
                                     "plugin": VIDEOROOM})  # fmt: skip
    assert attached["janus"] == "success" and attached["session_id"] == session
    assert isinstance(attached["data"]["id"], int)
    # Janus' default output is indented: the adapter's needles must not depend on spacing.
    assert '"janus": "success"' in client.raw[0] and "\n" in client.raw[0]


async def test_publisher_join_acks_then_answers_joined(
    janus_server: JanusServer, clients: Any
) -> None:
    """A publisher join gets an ack and a joined event on its transaction, sender the handle."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    handle = await client.attach(session)
    transaction = await client.send({"janus": "message", "session_id": session,
                                     "handle_id": handle, "body": {
                                         "request": "join", "ptype": "publisher", "room": 1234,
                                         "display": "Alice"}})  # fmt: skip
    ack = await client.reply(transaction, "ack")
    assert ack == {"janus": "ack", "session_id": session, "transaction": transaction}
    joined = await client.reply(transaction, "event")
    assert joined["sender"] == handle and joined["session_id"] == session
    data = plugin_data(joined)
    assert data["videoroom"] == "joined" and data["room"] == 1234
    assert isinstance(data["id"], int) and data["publishers"] == []


async def test_other_participants_events(janus_server: JanusServer, clients: Any) -> None:
    """Others see joining and leaving: <id>; the leaver gets leaving: "ok" on its transaction."""
    alice = await clients(janus_server.url, "alice")
    bob = await clients(janus_server.url, "bob")
    sa, sb = await alice.create(), await bob.create()
    ha, _ = await alice.publisher(sa, 1234, "Alice")
    hb, bob_id = await bob.publisher(sb, 1234, "Bob")
    joining = await alice.wait_for(is_event(ha, lambda d: "joining" in d))
    assert plugin_data(joining) == {"videoroom": "event", "room": 1234,
                                    "joining": {"id": bob_id, "display": "Bob"}}  # fmt: skip
    left = await bob.message(sb, hb, {"request": "leave"})
    assert plugin_data(left) == {"videoroom": "event", "room": 1234, "leaving": "ok"}
    leaving = await alice.wait_for(is_event(ha, lambda d: "leaving" in d))
    assert plugin_data(leaving) == {"videoroom": "event", "room": 1234, "leaving": bob_id}
    assert "transaction" not in leaving


async def test_subscriber_attached_then_left_then_hangup(
    janus_server: JanusServer, clients: Any
) -> None:
    """A subscriber join answers attached (with an SDP offer); leave answers left ok, hangup."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    handle = await client.attach(session)
    listing = await client.message(session, handle, {"request": "listparticipants",
                                                     "room": 9999})  # fmt: skip
    assert listing["janus"] == "success", "a synchronous request answers with success"
    (dummy,) = plugin_data(listing)["participants"]
    assert dummy["dummy"] is True
    attached = await client.message(session, handle, {
        "request": "join", "ptype": "subscriber", "room": 9999, "streams": [{"feed": dummy["id"]}],
    })  # fmt: skip
    data = plugin_data(attached)
    assert data["videoroom"] == "attached" and data["room"] == 9999
    assert attached["jsep"]["type"] == "offer"
    left = await client.message(session, handle, {"request": "leave"})
    assert plugin_data(left) == {"videoroom": "event", "room": 9999, "left": "ok"}
    hangup = await client.wait_for(lambda m: m.get("janus") == "hangup")
    assert hangup == {"janus": "hangup", "session_id": session, "sender": handle,
                      "reason": "Close PC"}  # fmt: skip


async def test_joinandconfigure_answers_joined(janus_server: JanusServer, clients: Any) -> None:
    """joinandconfigure without SDP joins like join."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    handle = await client.attach(session)
    event = await client.message(session, handle, {"request": "joinandconfigure",
                                                   "ptype": "publisher", "room": 5678})  # fmt: skip
    assert plugin_data(event)["videoroom"] == "joined"
    assert plugin_data(event)["room"] == 5678


async def test_kicked_participant_gets_leaving_ok(janus_server: JanusServer, clients: Any) -> None:
    """A kicked participant gets leaving ok with reason kicked; others get kicked: <id>."""
    alice = await clients(janus_server.url, "alice")
    bob = await clients(janus_server.url, "bob")
    sa, sb = await alice.create(), await bob.create()
    ha, _ = await alice.publisher(sa, 5678, "Alice")
    hb, bob_id = await bob.publisher(sb, 5678, "Bob")
    kick = await alice.message(sa, ha, {"request": "kick", "room": 5678, "id": bob_id})
    assert kick["janus"] == "success"
    kicked = await bob.wait_for(is_event(hb, lambda d: "leaving" in d))
    assert plugin_data(kicked) == {"videoroom": "event", "room": 5678, "leaving": "ok",
                                   "reason": "kicked"}  # fmt: skip
    seen = await alice.wait_for(is_event(ha, lambda d: "kicked" in d))
    assert plugin_data(seen)["kicked"] == bob_id


async def test_room_destroyed_event(janus_server: JanusServer, clients: Any) -> None:
    """Destroying a room sends destroyed with the room to those in it."""
    alice = await clients(janus_server.url, "alice")
    bob = await clients(janus_server.url, "bob")
    sa, sb = await alice.create(), await bob.create()
    ha = await alice.attach(sa)
    created = await alice.message(sa, ha, {"request": "create", "room": 777})
    assert plugin_data(created)["videoroom"] == "created"
    hb, _ = await bob.publisher(sb, 777, "Bob")
    await alice.message(sa, ha, {"request": "destroy", "room": 777})
    destroyed = await bob.wait_for(is_event(hb, lambda d: d.get("videoroom") == "destroyed"))
    assert plugin_data(destroyed) == {"videoroom": "destroyed", "room": 777}


async def test_detach_answers_success_then_detached(
    janus_server: JanusServer, clients: Any
) -> None:
    """detach: success on the transaction, then a detached event naming the handle."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    handle, _ = await client.publisher(session, 1234, "Alice")
    reply = await client.request({"janus": "detach", "session_id": session, "handle_id": handle})
    assert reply == {"janus": "success", "session_id": session,
                     "transaction": reply["transaction"]}  # fmt: skip
    detached = await client.wait_for(lambda m: m.get("janus") == "detached")
    assert detached == {"janus": "detached", "session_id": session, "sender": handle}


async def test_destroy_answers_success_and_the_session_is_gone(
    janus_server: JanusServer, clients: Any
) -> None:
    """destroy: success; then the session is unknown (keepalive answers error 458)."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    await client.publisher(session, 1234, "Alice")
    reply = await client.request({"janus": "destroy", "session_id": session})
    assert reply["janus"] == "success" and reply["session_id"] == session
    gone = await client.request({"janus": "keepalive", "session_id": session})
    assert gone["janus"] == "error" and gone["error"]["code"] == 458


async def test_keepalive_answers_ack(janus_server: JanusServer, clients: Any) -> None:
    """A keepalive answers a bare ack on its transaction."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    transaction = await client.send({"janus": "keepalive", "session_id": session})
    ack = await client.reply(transaction, "ack")
    assert ack == {"janus": "ack", "session_id": session, "transaction": transaction}


async def test_plugin_errors_come_inside_success_and_event_frames(
    janus_server: JanusServer, clients: Any
) -> None:
    """Sync requests carry plugin errors in success frames, async ones in event frames."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    handle = await client.attach(session)
    sync = await client.message(session, handle, {"request": "listparticipants", "room": "x"})
    assert sync["janus"] == "success"
    assert plugin_data(sync)["error_code"] == 430
    no_room = await client.message(session, handle, {"request": "join", "ptype": "publisher",
                                                     "room": 4242})  # fmt: skip
    assert no_room["janus"] == "event"
    assert plugin_data(no_room) == {"videoroom": "event", "error_code": 426,
                                    "error": "No such room (4242)"}  # fmt: skip
    core = await client.request({"janus": "message", "session_id": session, "handle_id": 99,
                                 "body": {"request": "join", "room": 1234}})  # fmt: skip
    assert core["janus"] == "error" and core["error"]["code"] == 459


async def test_acks_and_events_both_arrive_in_either_order(
    janus_server: JanusServer, clients: Any
) -> None:
    """Each async request gets one ack and one event, in no fixed order (the ack may be last)."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    handle, _ = await client.publisher(session, 1234, "Alice")
    transactions = []
    for _ in range(5):
        transactions.append(await client.send({"janus": "message", "session_id": session,
                                               "handle_id": handle,
                                               "body": {"request": "unpublish"}}))  # fmt: skip
    for transaction in transactions:
        event = await client.reply(transaction, "event")
        await client.reply(transaction, "ack")
        assert plugin_data(event)["error_code"] == 435, "unpublish twice is a plugin error"
    kinds = [(m["transaction"], m["janus"]) for m in client.received
             if m.get("transaction") in transactions]  # fmt: skip
    assert sorted(kinds) == sorted((t, k) for t in transactions for k in ("ack", "event"))


async def test_requests_work_on_any_websocket(janus_server: JanusServer, clients: Any) -> None:
    """Janus accepts requests on a session from another WebSocket; replies go to the requester."""
    owner = await clients(janus_server.url, "owner")
    other = await clients(janus_server.url, "other")
    session = await owner.create()
    handle = await other.attach(session)
    assert isinstance(handle, int)
    ack = await other.request({"janus": "keepalive", "session_id": session}, "ack")
    assert ack["session_id"] == session


async def test_janus_parses_deeper_nesting_than_orjson(
    janus_server: JanusServer, clients: Any
) -> None:
    """Janus reads a request nested 1500 deep, which orjson refuses: the adapter must refuse it."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    handle = await client.attach(session)
    deep = "[" * 1500 + "]" * 1500
    text = (f'{{"janus":"message","session_id":{session},"handle_id":{handle},'
            f'"transaction":"deep","body":{{"request":"exists","room":1234,'
            f'"x":{deep}}}}}')  # fmt: skip
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    assert isinstance(JanusAdapter().connect("127.0.0.1").from_client(text.encode()), Reply)
    await client.send_raw(text)
    reply = await client.reply("deep")
    assert plugin_data(reply) == {"videoroom": "success", "room": 1234, "exists": True}


async def test_duplicate_keys_the_last_one_counts(janus_server: JanusServer, clients: Any) -> None:
    """With "room" twice, Janus uses the last one (as orjson does)."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    handle = await client.attach(session)
    await client.send_raw(f'{{"janus":"message","session_id":{session},"handle_id":{handle},'
                          f'"transaction":"dup","body":{{"request":"exists","room":4242,'
                          f'"room":1234}}}}')  # fmt: skip
    reply = await client.reply("dup")
    assert plugin_data(reply) == {"videoroom": "success", "room": 1234, "exists": True}


async def test_escaped_keys_are_read_by_janus(janus_server: JanusServer, clients: Any) -> None:
    """Janus reads "r\\u006fom" as "room": the needle alone would miss it."""
    client = await clients(janus_server.url, "a")
    session = await client.create()
    handle = await client.attach(session)
    await client.send_raw(f'{{"janus":"message","session_id":{session},"handle_id":{handle},'
                          f'"transaction":"esc","body":{{"request":"exists",'
                          f'"r\\u006fom":1234}}}}')  # fmt: skip
    reply = await client.reply("esc")
    assert plugin_data(reply) == {"videoroom": "success", "room": 1234, "exists": True}


@pytest.mark.parametrize("json_format", ["compact", "plain"])
async def test_other_json_formats_carry_the_same_needles(
    tmp_path: Path, clients: Any, json_format: str
) -> None:
    """With json = compact or plain, Janus writes one line with the same quoted words."""
    with running_janus(tmp_path / "j", json_format=json_format) as server:
        client = await clients(server.url, "a")
        session = await client.create()
        await client.publisher(session, 1234, "Alice")
        assert all("\n" not in raw for raw in client.raw)
        assert any('"joined"' in raw for raw in client.raw)


# -- reconnects ------------------------------------------------------------------------------------


async def test_claim_moves_a_session_to_a_new_websocket(
    janus_server: JanusServer, clients: Any
) -> None:
    """After its WebSocket closes, claim on a new one answers success; events then go there."""
    alice = await clients(janus_server.url, "alice")
    session = await alice.create()
    handle, _ = await alice.publisher(session, 1234, "Alice")
    await alice.close()
    again = await clients(janus_server.url, "again")
    claimed = await again.request({"janus": "claim", "session_id": session})
    assert claimed == {"janus": "success", "session_id": session,
                       "transaction": claimed["transaction"]}  # fmt: skip
    bob = await clients(janus_server.url, "bob")
    await bob.publisher(await bob.create(), 1234, "Bob")
    joining = await again.wait_for(is_event(handle, lambda d: "joining" in d))
    assert plugin_data(joining)["joining"]["display"] == "Bob"


async def test_claim_while_the_old_websocket_is_open(
    janus_server: JanusServer, clients: Any
) -> None:
    """A claim also takes a session from a WebSocket still open: events follow the claim."""
    alice = await clients(janus_server.url, "alice")
    session = await alice.create()
    handle, _ = await alice.publisher(session, 1234, "Alice")
    again = await clients(janus_server.url, "again")
    claimed = await again.request({"janus": "claim", "session_id": session})
    assert claimed["janus"] == "success"
    bob = await clients(janus_server.url, "bob")
    await bob.publisher(await bob.create(), 1234, "Bob")
    await again.wait_for(is_event(handle, lambda d: "joining" in d))
    # The old WebSocket still works for requests (a barrier): it got no event for the session.
    await alice.request({"janus": "keepalive", "session_id": session}, "ack")
    assert not any(m.get("janus") == "event" and "transaction" not in m for m in alice.received)


async def test_unclaimed_session_expires_and_claim_fails(
    short_reclaim: JanusServer, clients: Any
) -> None:
    """Unclaimed past reclaim_session_timeout, the session is destroyed: claim answers 458."""
    alice = await clients(short_reclaim.url, "alice")
    bob = await clients(short_reclaim.url, "bob")
    sa, sb = await alice.create(), await bob.create()
    _, alice_id = await alice.publisher(sa, 1234, "Alice")
    hb, _ = await bob.publisher(sb, 1234, "Bob")
    await alice.close()
    unpublished = await bob.wait_for(is_event(hb, lambda d: d.get("unpublished") == alice_id))
    assert plugin_data(unpublished)["room"] == 1234
    await bob.wait_for(is_event(hb, lambda d: d.get("leaving") == alice_id))
    # Janus 1.1.2 sends "unpublished" twice here (for a publisher that never even published),
    # then "leaving": the adapter forwards all of them.
    count = sum(1 for m in bob.received if is_event(hb, lambda d: "unpublished" in d)(m))
    assert count == 2, "Janus no longer repeats unpublished: update the adapter's docs"
    again = await clients(short_reclaim.url, "again")
    refused = await again.request({"janus": "claim", "session_id": sa})
    assert refused == {"janus": "error", "session_id": sa, "transaction": refused["transaction"],
                       "error": {"code": 458, "reason": f"No such session {sa}"}}  # fmt: skip


async def test_session_timeout_event(short_timeout: JanusServer, clients: Any) -> None:
    """A session without requests for session_timeout gets a timeout event and is gone."""
    client = await clients(short_timeout.url, "a")
    session = await client.create()
    timeout = await client.wait_for(lambda m: m.get("janus") == "timeout", timeout=15)
    assert timeout == {"janus": "timeout", "session_id": session}


# -- the adapter on real traffic -------------------------------------------------------------------


class Link:
    """A client whose traffic goes through a JanusConnection, as the relay would route it.

    Attributes:
        client: the Janus client.
        conn: the adapter's connection state.
        admit: decides each join (True: admitted).
        to_client: the messages the client would receive (forwarded or replied), parsed.
        dropped: upstream messages the adapter dropped, parsed.
    """

    def __init__(self, client: JanusClient, conn: JanusConnection,
                 admit: Callable[[Join], bool] = lambda join: True) -> None:  # fmt: skip
        self.client = client
        self.conn = conn
        self.admit = admit
        self.gates: list[Gate] = []
        self.to_client: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self._read = 0

    def sync(self) -> None:
        """Run every upstream message received so far through from_upstream, in order."""
        while self._read < len(self.client.raw):
            raw = self.client.raw[self._read]
            parsed = self.client.received[self._read]
            self._read += 1
            verdict = self.conn.from_upstream(raw.encode())
            (self.to_client if verdict == Forward() else self.dropped).append(parsed)

    async def send(self, message: dict[str, Any]) -> str:
        """Send through from_client; return the transaction."""
        self.sync()
        message.setdefault("transaction", self.client.transaction())
        payload = orjson.dumps(message)
        verdict = self.conn.from_client(payload)
        if isinstance(verdict, Gate):
            self.gates.append(verdict)
            barred = [join for join in verdict.joins if not self.admit(join)]
            if barred:
                verdict = self.conn.denied(verdict, barred[0], NOTICE)
            else:
                self.conn.admitted(verdict)
                verdict = Forward()
        if isinstance(verdict, Reply):
            self.to_client.extend(orjson.loads(m) for m in verdict.messages)
        else:
            await self.client.send_raw(payload.decode())
        return str(message["transaction"])

    async def upstream(self, payloads: tuple[bytes, ...]) -> list[str]:
        """Send proxy-made messages upstream; return their transactions."""
        for payload in payloads:
            await self.client.send_raw(payload.decode())
        return [orjson.loads(p)["transaction"] for p in payloads]

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait for a Janus message (whatever the adapter's verdict), then sync."""
        message = await self.client.wait_for(predicate)
        self.sync()
        return message

    async def reply(self, transaction: str, *kinds: str) -> dict[str, Any]:
        message = await self.client.reply(transaction, *kinds)
        self.sync()
        return message

    async def create(self) -> int:
        reply = await self.reply(await self.send({"janus": "create"}))
        return int(reply["data"]["id"])

    async def attach(self, session: int) -> int:
        reply = await self.reply(await self.send({"janus": "attach", "session_id": session,
                                                  "plugin": VIDEOROOM}))  # fmt: skip
        return int(reply["data"]["id"])

    async def join(self, session: int, handle: int, room: int, **body: Any) -> dict[str, Any]:
        transaction = await self.send({"janus": "message", "session_id": session,
                                       "handle_id": handle,
                                       "body": {"request": "join", "ptype": "publisher",
                                                "room": room, **body}})  # fmt: skip
        return await self.reply(transaction, "event")


async def test_adapter_follows_real_rooms(janus_server: JanusServer, clients: Any) -> None:
    """On real traffic the adapter learns ids and rooms, and forgets them on leave and detach."""
    adapter = JanusAdapter(reclaim_timeout=10)
    link = Link(await clients(janus_server.url, "a"), adapter.connect("127.0.0.1"))
    session = await link.create()
    pub = await link.attach(session)
    await link.join(session, pub, 1234, display="Alice")
    assert link.gates[-1].joins == (Join("1234", f"{session} (Alice)", JoinKind.JOIN),)
    assert link.conn.meetings() == {"1234"}
    sub = await link.attach(session)
    refused = await link.join(session, sub, 4242)
    assert plugin_data(refused)["error_code"] == 426
    assert link.conn.meetings() == {"1234"}, "Janus' refusal undid the admitted join"
    leave = await link.send({"janus": "message", "session_id": session, "handle_id": pub,
                             "body": {"request": "leave"}})  # fmt: skip
    await link.reply(leave, "event")
    assert link.conn.meetings() == frozenset()
    assert link.dropped == []


async def test_adapter_denial_keeps_the_join_from_janus(
    janus_server: JanusServer, clients: Any
) -> None:
    """A denied join never reaches Janus: the room's participant list stays without it."""
    adapter = JanusAdapter()
    link = Link(await clients(janus_server.url, "a"), adapter.connect("127.0.0.1"),
                admit=lambda join: join.meeting != "1234")  # fmt: skip
    session = await link.create()
    handle = await link.attach(session)
    transaction = await link.send({"janus": "message", "session_id": session, "handle_id": handle,
                                   "body": {"request": "join", "ptype": "publisher", "room": 1234,
                                            "display": "Mallory"}})  # fmt: skip
    ack, event = link.to_client[-2:]
    assert ack == {"janus": "ack", "session_id": session, "transaction": transaction}
    assert plugin_data(event)["error_code"] == DENIED_ERROR_CODE
    observer = await clients(janus_server.url, "observer")
    os_ = await observer.create()
    oh = await observer.attach(os_)
    listing = await observer.message(os_, oh, {"request": "listparticipants", "room": 1234})
    assert plugin_data(listing)["participants"] == []
    # The same handle can still join an allowed room.
    joined = await link.join(session, handle, 5678, display="Mallory")
    assert plugin_data(joined)["videoroom"] == "joined"
    assert link.conn.meetings() == {"5678"}


async def test_adapter_removal_on_real_janus(janus_server: JanusServer, clients: Any) -> None:
    """remove() takes one room's handle out for real; Janus' answers are dropped; the rest works."""
    adapter = JanusAdapter()
    link = Link(await clients(janus_server.url, "a"), adapter.connect("127.0.0.1"))
    session = await link.create()
    in_1234 = await link.attach(session)
    await link.join(session, in_1234, 1234, display="Alice")
    in_5678 = await link.attach(session)
    await link.join(session, in_5678, 5678, display="Alice")
    bob = await clients(janus_server.url, "bob")
    hb, _ = await bob.publisher(await bob.create(), 1234, "Bob")

    removal = link.conn.remove("1234", NOTICE)
    assert [m["janus"] for m in map(orjson.loads, removal.to_client)] == ["event", "detached"]
    leave, detach = await link.upstream(removal.to_upstream)
    await link.wait_for(lambda m: m.get("janus") == "detached" and m.get("sender") == in_1234)
    await link.reply(detach, "success")
    # Bob saw Alice leave 1234; Alice's handle in 5678 still answers.
    await bob.wait_for(is_event(hb, lambda d: "leaving" in d))
    alive = await link.reply(await link.send({"janus": "message", "session_id": session,
                                              "handle_id": in_5678,
                                              "body": {"request": "configure", "audio": True}}),
                             "event")  # fmt: skip
    # Janus does not keep the order of requests: the detach may run before the leave, which then
    # answers error 459, or an ack and no event. Whatever came back for the proxy was dropped.
    ours = [m for m in link.client.received if m.get("transaction") in (leave, detach)]
    assert ("success", detach) in {(m["janus"], m["transaction"]) for m in ours}
    assert {m["janus"] for m in ours if m["transaction"] == leave} in (
        {"ack", "event"}, {"ack"}, {"error"}, set())
    assert all(m in link.dropped for m in ours)
    assert all(m.get("transaction") not in (leave, detach) for m in link.to_client)
    assert {"janus": "detached", "session_id": session, "sender": in_1234} in link.dropped
    assert plugin_data(alive)["configured"] == "ok"
    assert link.conn.meetings() == {"5678"}

    # The last room: the session goes too.
    removal = link.conn.remove("5678", NOTICE)
    leave, detach, destroy = await link.upstream(removal.to_upstream)
    await link.reply(destroy, "success")
    assert ("success", destroy) in {(m["janus"], m.get("transaction")) for m in link.dropped}
    gone = await link.reply(await link.send({"janus": "keepalive", "session_id": session}))
    assert gone["error"]["code"] == 458


async def test_adapter_claim_is_gated_for_every_real_room(
    janus_server: JanusServer, clients: Any
) -> None:
    """After a real WebSocket closes, a claim through the adapter is gated for each of its rooms."""
    adapter = JanusAdapter(reclaim_timeout=10)
    first = Link(await clients(janus_server.url, "first"), adapter.connect("127.0.0.1"))
    session = await first.create()
    for room in (1234, 5678):
        await first.join(session, await first.attach(session), room, display="Alice")
    await first.client.close()
    first.conn.closed()

    barred = Link(await clients(janus_server.url, "barred"), adapter.connect("127.0.0.2"),
                  admit=lambda join: join.meeting != "5678")  # fmt: skip
    transaction = await barred.send({"janus": "claim", "session_id": session})
    assert barred.gates[-1].joins == (
        Join("1234", f"{session} (Alice)", JoinKind.RESUME),
        Join("5678", f"{session} (Alice)", JoinKind.RESUME),
    )
    assert barred.to_client[-1]["error"]["code"] == DENIED_ERROR_CODE
    assert barred.to_client[-1]["transaction"] == transaction

    allowed = Link(await clients(janus_server.url, "allowed"), adapter.connect("127.0.0.3"))
    claimed = await allowed.reply(await allowed.send({"janus": "claim", "session_id": session}))
    assert claimed["janus"] == "success"
    assert allowed.conn.meetings() == {"1234", "5678"}
    assert claimed in allowed.to_client and allowed.dropped == []
