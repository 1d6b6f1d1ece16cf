"""The listener: handshakes, the join phase, the upstream connect, and an ordered drain.

Each client connection is a :class:`ClientConnection` protocol until it is admitted; then a
:class:`~proxy.relay.Relay` takes the transport over. The order of events for one participant:

1. The HTTP upgrade is read and checked (bounded by ``max_header_bytes`` and ``handshake_timeout``).
   The client address is the socket peer, or the forwarded address when the peer is trusted.
2. ``url`` adapter: the meeting is in the request, so the decision is made before the upgrade. A
   barred participant gets HTTP 451 (``denial = "http"``) or an upgrade carrying only the notice and
   close code 4451; an admitted one is connected upstream first, so the upstream's subprotocol
   choice is what the client is answered with.
3. Other adapters: the upgrade is accepted, and the first message must be a join within
   ``join_timeout``. A barred join gets the notice and 4451; the upstream is never contacted.
4. Admitted: the upstream leg is opened (``connect_timeout``), the join goes upstream as the client
   sent it, and the relay takes both transports. An unreachable or failing upstream closes the
   client with 1014 and a reason.

Shutdown (:meth:`Server.close`): stop accepting; handshakes in flight are answered 503; open
sessions get 1001 (1012 on restart) after ``shutdown.drain_period``; after ``shutdown.timeout``
whatever remains is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.adapters.base import Join
from proxy.admission import NOTICE_CLOSE_CODE, Admission, Denial
from proxy.audit import AuditLog, AuditSettings
from proxy.config import Config, DenialStyle, Snapshot
from proxy.errors import (
    AddressError,
    ClientError,
    ConfigError,
    ConfigIssue,
    HandshakeError,
    JoinTimeout,
    PolicyViolation,
    ProtocolViolation,
    ShuttingDown,
    UpstreamUnavailable,
)
from proxy.files import FileSignature, file_signatures
from proxy.frames import MessageAssembler, Opcode, apply_mask, parse_header
from proxy.geo import GeoResolver, GeoResult, TrustedNetworks, client_address
from proxy.handshake import (
    Request,
    RequestParser,
    Response,
    ResponseParser,
    build_accept_response,
    build_client_request,
    build_error_response,
    new_key,
    validate_accept,
    validate_upgrade,
)
from proxy.lifecycle import Lifecycle, State
from proxy.relay import CLOSE_TIMEOUT, Relay, close_frame
from proxy.sessions import Registry, Session

__all__ = ["ClientConnection", "Server", "ServerState", "UpstreamTarget", "make_adapter"]

log = logging.getLogger("proxy.server")

#: Request headers never copied upstream: the proxy sets its own (RFC 6455 section 4.1).
_HOP_HEADERS = frozenset({
    "host", "upgrade", "connection", "content-length", "transfer-encoding", "keep-alive",
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept", "x-forwarded-for", "forwarded",
    "proxy-connection", "te", "trailer",
})  # fmt: skip


def make_adapter(config: Config) -> Any:
    """The protocol adapter the configuration names."""
    if config.protocol.adapter == "janus":
        from proxy.adapters.janus import JanusAdapter

        janus = config.protocol.janus
        return JanusAdapter(reclaim_timeout=janus.reclaim_timeout,
                            max_sessions=janus.max_sessions,
                            transaction_timeout=janus.transaction_timeout, plugins=janus.plugins)
    if config.protocol.adapter == "url":
        from proxy.adapters.url import UrlAdapter

        return UrlAdapter(config.protocol.url)
    from proxy.adapters.json import JsonAdapter

    return JsonAdapter(config.protocol.json)


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where admitted participants go, parsed once from ``upstream.url``."""

    host: str
    port: int
    host_header: str
    path: str
    query: str
    ssl: ssl.SSLContext | None

    @classmethod
    def from_config(cls, config: Config) -> UpstreamTarget:
        """Parse the upstream URL and build its TLS context (certificate verification on)."""
        parts = urlsplit(config.upstream.url)
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        assert parts.hostname is not None  # checked by the config loader
        host_header = parts.netloc.rpartition("@")[2]
        context = None
        if secure:
            ca = config.upstream.ca_file
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
        return cls(parts.hostname, port, host_header, parts.path or "/", parts.query, context)

    def target(self, request_target: str, forward_path: bool) -> str:
        """The upstream request-target for a client's request-target."""
        path, query = self.path, self.query
        if forward_path:
            client_path, _, client_query = request_target.partition("?")
            path = path.rstrip("/") + client_path if client_path != "/" else path
            query = "&".join(q for q in (query, client_query) if q)
        return f"{path}?{query}" if query else path


def open_audit(config: Config) -> AuditLog:
    """The audit trail the configuration asks for (a disabled one when ``audit.path`` is empty).

    Raises:
        ConfigError: the key file cannot be read or is too short.
    """
    audit = config.audit
    key = None
    if audit.key_file is not None:
        try:
            key = audit.key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(ConfigIssue(str(config.source), "audit.key_file",
                                          f"cannot read {audit.key_file}: {exc}")) from None
        if len(key) < 16:
            raise ConfigError(ConfigIssue(str(config.source), "audit.key_file",
                                          f"{audit.key_file} holds {len(key)} bytes; the "
                                          "pseudonym key needs at least 16"))
    if audit.path is not None:
        audit.path.parent.mkdir(parents=True, exist_ok=True)
    log_ = AuditLog(AuditSettings(
        path=audit.path, max_bytes=audit.max_bytes, keep=audit.keep,
        pseudonymise=audit.pseudonymise, key=key, truncate_v4=audit.truncate_v4,
        truncate_v6=audit.truncate_v6, queue_max=audit.queue_max,
        batch_delay=audit.batch_delay,
    ))
    if audit.path is not None and audit.pseudonymise and key is None:
        log.warning("audit.key_file is not set: participant pseudonyms use a random key and "
                    "will not match across restarts")
    return log_


class ServerState:
    """Everything the connections share: one object, passed around, no globals.

    Attributes:
        snapshot: the configuration and restrictions in force.
        geo: the GeoIP resolver.
        admission: decides joins.
        registry: admitted sessions by meeting.
        connections: client connections still in their handshake or join phase.
        draining: set once shutdown begins; new handshakes get 503.
    """

    def __init__(self, snapshot: Snapshot, geo: GeoResolver) -> None:
        self.geo = geo
        self.registry = Registry()
        self.connections: set[ClientConnection] = set()
        #: Every relay (admitted connection); a Janus relay has one registry entry per room.
        self.relays: set[Relay] = set()
        self.draining = False
        self.closing_code = 1001
        #: Set whenever a connection or session ends (shutdown waits on it).
        self.changed = asyncio.Event()
        #: Bumped whenever restrictions, a window or GeoIP answers change: a join decided under
        #: an older generation is decided again before it is relayed.
        self.generation = 0
        self.counts: dict[str, int] = {
            "connections": 0, "upstream-failed": 0, "relays-closed": 0,
        }  # fmt: skip
        #: Handshakes refused, by HTTP status.
        self.refused: dict[int, int] = {}
        #: Relay counters of closed sessions: (messages, bytes) client->upstream, upstream->client.
        self.relay_totals = [0, 0, 0, 0]
        limits = snapshot.config.limits
        self.audit = open_audit(snapshot.config)
        self.admission = Admission(
            snapshot.restrictions,
            retry_window=limits.retry_window,
            cache_size=limits.decision_cache_size,
            audit=self.audit,
            geoip_build=lambda: self.geo.build_epoch,
            log_rate=snapshot.config.logging.decision_lines_per_second,
        )
        self.apply(snapshot)

    def apply(self, snapshot: Snapshot) -> None:
        """Put a new snapshot in force for new connections and joins."""
        self.snapshot = snapshot
        config = snapshot.config
        previous = getattr(self, "config", None)
        self.config = config
        self.limits = config.limits
        if previous is None or previous.protocol != config.protocol:
            # A stateful adapter remembers sessions across connections: keep it when unchanged.
            self.adapter = make_adapter(config)
        #: Whether the adapter keeps per-connection state and reads both ways (Janus).
        self.stateful = hasattr(self.adapter, "connect")
        #: Whether the meeting is known at the upgrade (url adapter): decide before it.
        self.at_upgrade = bool(getattr(self.adapter, "decides_at_upgrade", False))
        self.trusted = TrustedNetworks(config.client_address.trusted_proxies)
        self.header = config.client_address.header
        self.header_name = self.header.value
        self.upstream = UpstreamTarget.from_config(config)
        self.admission.swap(snapshot.restrictions)

    @property
    def open_connections(self) -> int:
        """Client connections in any phase."""
        return len(self.connections) + len(self.relays)

    def relay_closed(self, relay: Relay) -> None:
        """A relay ended: forget its session and keep its counters."""
        self.registry.remove(relay.session)
        self.relays.discard(relay)
        self.counts["relays-closed"] += 1
        totals = self.relay_totals
        totals[0] += relay.up.messages
        totals[1] += relay.up.bytes
        totals[2] += relay.down.messages
        totals[3] += relay.down.bytes
        self.changed.set()

    def rejoin(self, session: Session, join: Join) -> Denial | None:
        """Gate a join sent on an admitted connection (the relay's callback)."""
        denial = self.admission.decide(join, session.address, session.geo, peer=session.peer)
        if denial is None:
            if join.meeting != session.meeting:
                self.registry.move(session, join)
            else:
                session.join = join
            return None
        log.info("session %d: rejoin into %s barred by %s", session.id, join.meeting,
                 denial.restriction.id)
        return denial


class _UpstreamHandshake(asyncio.Protocol):
    """The upstream leg until its 101 arrives; then the relay takes the transport over."""

    def __init__(self, max_header_bytes: int) -> None:
        self.parser = ResponseParser(max_header_bytes)
        self.done: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.rest = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            self.rest += data  # frames that came before the relay took over
            return
        try:
            response = self.parser.feed(data)
        except HandshakeError as exc:
            self.done.set_exception(exc)
            return
        if response is not None:
            self.rest = bytes(self.parser.rest)
            self.done.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(
                UpstreamUnavailable(f"upstream closed during its handshake ({exc})")
            )


class ClientConnection(asyncio.Protocol):
    """One client connection, from the first byte to admission (or refusal)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.life = Lifecycle()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.parser: RequestParser | None = None
        self.request: Request | None = None
        self.key = ""
        self.subprotocol: str | None = None
        self.address: object = None
        self.geo: GeoResult | None = None
        self.join: Join | None = None
        self.buffer = bytearray()  # client bytes after the request, not yet handled
        self.raw_join: list[bytes] = []  # the join message's frames, as the client sent them
        self.assembler: MessageAssembler | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.paused = False
        self.refusal: str | None = None  # set when the connection is to be refused with 503
        self.generation = 0  # the state's generation when this connection's join was decided

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        state = self.state
        state.counts["connections"] += 1
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else str(peer or "")
        state.connections.add(self)
        if state.draining or state.open_connections > state.limits.max_connections:
            # Answered once the request arrives: clients do not expect a response before it.
            self.refusal = ShuttingDown.client_text if state.draining else "too many connections"
            self._set_timer(state.limits.handshake_timeout, self._close_transport)
            return
        self.parser = RequestParser(state.limits.max_header_bytes)
        self._set_timer(state.limits.handshake_timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        stage = self.life.state
        if self.refusal is not None:
            if stage is State.HANDSHAKE:
                self._refuse(503, self.refusal)
        elif stage is State.HANDSHAKE:
            self._handshake(data)
        elif stage is State.JOINING:
            self.buffer += data
            self._joining()
        elif stage is State.CONNECTING:
            self.buffer += data
            if len(self.buffer) > self.state.limits.write_buffer_bytes and not self.paused:
                self.paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        elif stage in (State.DENYING, State.CLOSING):
            self.buffer += data
            self._await_close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        self.state.connections.discard(self)
        self.state.changed.set()
        if not self.life.closed:
            self.life.to(State.CLOSED)

    # ---- handshake -----------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        state = self.state
        assert self.parser is not None
        try:
            request = self.parser.feed(data)
            if request is None:
                return
            self.key = validate_upgrade(request)
        except HandshakeError as exc:
            self._refuse(exc.http_status, exc.client_text, getattr(exc, "headers", ()))
            return
        if state.draining:
            self._refuse(503, ShuttingDown.client_text)
            return
        self.request = request
        self.buffer += self.parser.rest
        self.parser = None
        try:
            client = client_address(self.peer, request.get_all(state.header_name) if
                                    state.trusted else (), state.trusted, state.header)
        except AddressError as exc:
            self._refuse(400, "bad client address")
            log.info("refused %s: %s", self.peer, exc)
            return
        self.address = client.address
        self.geo = state.geo.resolve(client.address)
        adapter = state.adapter
        offered = request.subprotocols()
        if state.stateful:
            # Janus: the connection carries no meeting yet; its room requests are gated later.
            self.life.to(State.CONNECTING)
            self._cancel_timer()
            self._connect(offered)
            return
        if state.at_upgrade:
            try:
                join = adapter.from_request(request)
            except PolicyViolation as exc:
                self._refuse(exc.http_status, exc.client_text)
                return
            if join is None:
                self._refuse(400, "no meeting in the request")
                return
            self.join = join
            self.generation = state.generation
            denial = state.admission.decide(join, client.address, self.geo, peer=self.peer)
            if denial is not None:
                if state.config.protocol.denial is DenialStyle.HTTP:
                    self._answer(451, denial.http)
                else:
                    self._accept(offered[0] if offered else None)
                    self._deny(denial)
                return
            self.life.to(State.CONNECTING)
            self._cancel_timer()
            self._connect(offered)
            return
        self._accept(offered[0] if offered else None)
        self.life.to(State.JOINING)
        self.assembler = MessageAssembler(state.limits.max_message_bytes)
        self._set_timer(state.limits.join_timeout, self._join_timeout)
        if self.buffer:
            self._joining()

    def _accept(self, subprotocol: str | None) -> None:
        self.subprotocol = subprotocol
        self._write(build_accept_response(self.key, subprotocol))

    def _refuse(self, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer the HTTP request with an error and close."""
        self._answer(status, build_error_response(status, text + "\n", headers))

    def _answer(self, status: int, response: bytes) -> None:
        """Write a refusal, count it by status, and close."""
        self.state.refused[status] = self.state.refused.get(status, 0) + 1
        self._write(response)
        self._close_transport()

    def _handshake_timeout(self) -> None:
        self._refuse(408, "handshake timeout")

    # ---- join phase ----------------------------------------------------------------------------

    def _joining(self) -> None:
        """Read client frames until the first message is complete."""
        buf = self.buffer
        assembler = self.assembler
        assert assembler is not None
        pos = 0
        try:
            while True:
                header = parse_header(buf, pos, True)
                if header is None:
                    break
                if header.opcode < 8:
                    assembler.check(header)  # too big or out of sequence: refuse before reading
                end = pos + header.header_len + header.length
                if end > len(buf):
                    break
                payload = apply_mask(bytes(buf[pos + header.header_len : end]), header.mask)  # type: ignore[arg-type]
                raw = bytes(buf[pos:end])
                pos = end
                if header.opcode == Opcode.PING:
                    self._write(bytes((0x8A, len(payload))) + payload)
                    continue
                if header.opcode == Opcode.PONG:
                    continue
                if header.opcode == Opcode.CLOSE:
                    # The client gives up before joining: answer its close and finish.
                    del buf[:pos]
                    self._write(bytes((0x88, 0)))
                    self._close_transport()
                    return
                self.raw_join.append(raw)
                message = assembler.add(header, payload)
                if message is None:
                    continue
                del buf[:pos]
                join = self.state.adapter.first_message(*message)
                self._decide_join(join)
                return
        except ClientError as exc:
            log.info("%s: %s", self.peer, exc)
            self._close(exc.close_code, exc.client_text)
            return
        del buf[:pos]

    def _join_timeout(self) -> None:
        self._close(JoinTimeout.close_code, JoinTimeout.client_text)

    def _decide_join(self, join: Join) -> None:
        state = self.state
        self.join = join
        assert self.geo is not None
        self.generation = state.generation
        denial = state.admission.decide(join, self.address, self.geo, peer=self.peer)  # type: ignore[arg-type]
        if denial is not None:
            self._deny(denial)
            return
        self.life.to(State.CONNECTING)
        self._cancel_timer()
        self._connect([self.subprotocol] if self.subprotocol else [])

    # ---- denial and closing --------------------------------------------------------------------

    def _deny(self, denial: Denial) -> None:
        """Send the notice and close code 4451, then wait for the client's close."""
        self.life.to(State.DENYING)
        self._write(denial.notice + close_frame(NOTICE_CLOSE_CODE, denial.reason, mask=False))
        self._set_timer(CLOSE_TIMEOUT, self._abort)
        self.buffer.clear()

    def _close(self, code: int, reason: str) -> None:
        """Close an upgraded connection that is not relayed, with a code and reason."""
        if self.life.state in (State.CLOSING, State.DENYING, State.CLOSED):
            return
        self.life.to(State.CLOSING)
        self._write(close_frame(code, reason, mask=False))
        self.buffer.clear()
        self._set_timer(CLOSE_TIMEOUT, self._abort)

    def _await_close(self) -> None:
        """After the proxy's close frame: finish when the client's close frame arrives."""
        buf = self.buffer
        pos = 0
        try:
            while True:
                header = parse_header(buf, pos, True)
                if header is None or pos + header.frame_len > len(buf):
                    break
                if header.opcode == Opcode.CLOSE:
                    self._close_transport()
                    return
                pos += header.frame_len
        except ProtocolViolation:
            self._close_transport()
            return
        del buf[:pos]
        if len(buf) > self.state.limits.max_message_bytes:
            self._close_transport()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ---- upstream ------------------------------------------------------------------------------

    def _connect(self, offer: list[str]) -> None:
        self.connect_task = self.loop.create_task(self._open_upstream(offer))

    def _upstream_headers(self) -> list[tuple[str, str]]:
        state = self.state
        request = self.request
        assert request is not None
        wanted = state.config.upstream.pass_headers
        headers = [
            (name, value) for name, value in request.headers
            if name in wanted and name not in _HOP_HEADERS
        ]
        # X-Forwarded-For: what a trusted peer told us, then the peer itself.
        earlier = ", ".join(request.get_all("x-forwarded-for")) if state.trusted.contains(
            self.address) else ""  # type: ignore[arg-type]
        headers.append(("X-Forwarded-For", f"{earlier}, {self.peer}" if earlier else self.peer))
        return headers

    async def _open_upstream(self, offer: list[str]) -> None:
        state = self.state
        target = state.upstream
        timeout = state.config.upstream.connect_timeout
        request = self.request
        assert request is not None
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(timeout):
                transport, handshake = await self.loop.create_connection(
                    lambda: _UpstreamHandshake(state.limits.max_header_bytes),
                    target.host, target.port, ssl=target.ssl,
                    server_hostname=target.host if target.ssl else None,
                )
                key = new_key()
                transport.write(build_client_request(
                    target.host_header,
                    target.target(request.target, state.config.upstream.forward_path),
                    key, offer, self._upstream_headers(),
                ))
                response = await handshake.done
                chosen = validate_accept(response, key, offer)
        except asyncio.CancelledError:
            if transport is not None:
                transport.abort()
            raise
        except (OSError, TimeoutError, ClientError, ValueError) as exc:
            if transport is not None:
                transport.abort()
            self._upstream_failed(f"{type(exc).__name__}: {exc}")
            return
        if self.life.state is not State.CONNECTING or self.transport is None or \
                self.transport.is_closing():
            transport.abort()
            return
        if state.at_upgrade or state.stateful:
            self._accept(chosen)
        elif chosen != self.subprotocol:
            transport.abort()
            self._upstream_failed(f"upstream chose subprotocol {chosen!r}, "
                                  f"the client was given {self.subprotocol!r}")
            return
        self._start_relay(transport, handshake.rest)

    def _upstream_failed(self, detail: str) -> None:
        self.state.counts["upstream-failed"] += 1
        log.warning("%s: signaling server unavailable: %s", self.peer, detail)
        if self.transport is None or self.transport.is_closing():
            return
        if (self.state.at_upgrade or self.state.stateful) and self.subprotocol is None and \
                self.life.state is State.CONNECTING:
            offered = self.request.subprotocols() if self.request else []
            self._accept(offered[0] if offered else None)
        self._close(UpstreamUnavailable.close_code, UpstreamUnavailable.client_text)

    def _start_relay(self, upstream: asyncio.Transport, upstream_rest: bytes) -> None:
        state = self.state
        client = self.transport
        assert client is not None and self.geo is not None
        limits = state.limits
        if (not state.stateful and self.generation != state.generation
                and self._barred_meanwhile(upstream)):
            return
        self.life.to(State.RELAYING)
        state.connections.discard(self)
        relay: Relay
        if state.stateful:
            from proxy.message_relay import ConnectionRelay

            session = Session(Join(""), self.address, self.peer, self.geo, time.time())  # type: ignore[arg-type]
            address, geo, peer = session.address, session.geo, session.peer
            relay = ConnectionRelay(
                session, state.adapter.connect(self.peer), client, upstream,
                decide=lambda join: state.admission.decide(join, address, geo, peer=peer),
                register=state.registry.add, unregister=state.registry.remove,
                on_close=state.relay_closed, max_message=limits.max_message_bytes,
                write_buffer=limits.write_buffer_bytes, idle_timeout=limits.idle_timeout,
            )
        else:
            assert self.join is not None
            session = Session(self.join, self.address, self.peer, self.geo, time.time())  # type: ignore[arg-type]
            state.registry.add(session)
            relay = Relay(
                session, state.adapter, client, upstream,
                gate=state.rejoin, on_close=state.relay_closed,
                max_message=limits.max_message_bytes, write_buffer=limits.write_buffer_bytes,
                idle_timeout=limits.idle_timeout, inspect=not state.at_upgrade,
            )
        state.relays.add(relay)
        if self.raw_join:
            join_bytes = b"".join(self.raw_join)
            upstream.write(join_bytes)
            relay.up.messages += 1
            relay.up.frames += len(self.raw_join)
            relay.up.bytes += len(join_bytes)
            self.raw_join = []
        rest = bytes(self.buffer)
        self.buffer = bytearray()
        if self.paused:
            client.resume_reading()
        # The relay owns the transports now; what the handshake phase kept can go.
        self.request = None
        self.connect_task = None
        self.assembler = None
        self.transport = None
        relay.start(rest, upstream_rest)

    def _barred_meanwhile(self, upstream: asyncio.Transport) -> bool:
        """Decide again when restrictions or GeoIP changed while the upstream leg was opening.

        A re-check after a change only sees registered sessions; one admitted by the old set
        and still connecting would slip past it. The join has not gone upstream yet, so a
        participant barred now is told and the upstream leg is dropped unused.
        """
        state = self.state
        assert self.join is not None
        self.geo = state.geo.resolve(self.address)  # type: ignore[arg-type]
        self.generation = state.generation
        denial = state.admission.decide(self.join, self.address, self.geo, peer=self.peer)  # type: ignore[arg-type]
        if denial is None:
            return False
        upstream.abort()
        if state.at_upgrade:
            offered = self.request.subprotocols() if self.request else []
            if self.subprotocol is None:
                self._accept(offered[0] if offered else None)
        self._deny(denial)
        return True

    # ---- small helpers -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close_transport(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()
        self.state.connections.discard(self)

    def _set_timer(self, delay: float, callback: object) -> None:
        self._cancel_timer()
        self.timer = self.loop.call_later(delay, callback)  # type: ignore[arg-type]

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def drain(self) -> None:
        """Shutdown: refuse a handshake in flight, close an upgraded connection with 1001."""
        if self.life.state is State.HANDSHAKE:
            self._refuse(503, ShuttingDown.client_text)
        elif self.life.state in (State.JOINING, State.CONNECTING):
            if self.connect_task is not None:
                self.connect_task.cancel()
            if self.life.state is State.CONNECTING and (self.state.at_upgrade
                                                         or self.state.stateful):
                self._refuse(503, ShuttingDown.client_text)
            else:
                self._close(self.state.closing_code, ShuttingDown.client_text)


class Server:
    """The proxy: a listener plus the shared state.

    Args:
        snapshot: the configuration and restrictions to start with (loaded from a file, which
            is watched and reloaded from).
        geo: an open resolver; by default one is opened from the configuration.
        overrides: the ``--set`` overrides the snapshot was loaded with, kept for reloads.
    """

    def __init__(self, snapshot: Snapshot, geo: GeoResolver | None = None,
                 overrides: Mapping[str, Any] | None = None) -> None:
        config = snapshot.config
        token = None
        if config.admin.enabled:
            # Checked before anything is opened: a missing token is a config error at start.
            from proxy.admin import read_token

            if config.admin.token_file is None:
                raise ConfigError(ConfigIssue(str(config.source), "admin.token_file",
                                              "the admin server needs a token file"))
            token = read_token(config.admin.token_file)
        if geo is None:
            geo = GeoResolver(config.geoip.settings())
        self.state = ServerState(snapshot, geo)
        self._server: asyncio.Server | None = None
        self._ssl: ssl.SSLContext | None = None
        self._ssl_seen: tuple[FileSignature | None, ...] | None = None
        from proxy.reload import Reloader

        assert snapshot.config.source is not None, "a snapshot loaded from a file"
        self.reloader = Reloader(self, snapshot.config.source, overrides)
        from proxy.control import Control

        self.control = Control(self)
        self.reloader.observer = self.control
        self.admin: Any = None
        if token is not None:
            from proxy.admin import AdminServer

            self.admin = AdminServer(self.control, config.admin.host, config.admin.port, token)

    @property
    def port(self) -> int:
        """The port the listener is bound to (after :meth:`start`)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The proxy's ws:// (or wss://) URL."""
        listen = self.state.config.listen
        scheme = "wss" if self._ssl else "ws"
        host = f"[{listen.host}]" if ":" in listen.host else listen.host
        return f"{scheme}://{host}:{self.port}"

    def _tls(self) -> ssl.SSLContext | None:
        listen = self.state.config.listen
        if listen.tls_cert is None or listen.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(listen.tls_cert, listen.tls_key)
        self._ssl_seen = file_signatures(listen.tls_cert, listen.tls_key)
        return context

    async def start(self) -> None:
        """Bind the listener and start watching files that can change under it."""
        listen = self.state.config.listen
        loop = asyncio.get_running_loop()
        self._ssl = self._tls()
        self._server = await loop.create_server(
            lambda: ClientConnection(self.state), listen.host, listen.port,
            backlog=listen.backlog, ssl=self._ssl, reuse_address=True,
        )
        if self.admin is not None:
            await self.admin.start()
            log.info("admin server listening on %s", self.admin.url)
        self.reloader.start()
        self.control.start()
        log.info("geogate listening on %s, upstream %s", self.url, self.state.config.upstream.url)

    def check_files(self) -> None:
        """Reload the TLS certificate when its files changed (a bad file leaves the old one)."""
        listen = self.state.config.listen
        if self._ssl is not None and listen.tls_cert and listen.tls_key:
            seen = file_signatures(listen.tls_cert, listen.tls_key)
            if seen != self._ssl_seen:
                self._ssl_seen = seen  # a broken file is reported once, not on every check
                try:
                    # New handshakes use the reloaded chain; open connections keep theirs.
                    self._ssl.load_cert_chain(listen.tls_cert, listen.tls_key)
                    log.info("TLS certificate reloaded from %s", listen.tls_cert)
                except (OSError, ssl.SSLError) as exc:
                    log.error("TLS certificate not reloaded, keeping the old one: %s", exc)

    async def close(self, *, drain_period: float | None = None, timeout: float | None = None,
                    restart: bool = False) -> None:
        """Shut down in order and release everything.

        1. New handshakes get 503, handshakes in flight 503, joins in progress 1001; open sessions
           carry on for ``drain_period`` seconds while the listener still answers.
        2. The listener closes and open sessions get 1001 (1012 with ``restart``).
        3. After ``timeout`` seconds whatever is still open is dropped; then the resolver closes.

        Args:
            drain_period: defaults to ``shutdown.drain_period``.
            timeout: defaults to ``shutdown.timeout``.
            restart: close sessions with 1012 (service restart) instead of 1001 (going away).
        """
        state = self.state
        settings = state.config.shutdown
        drain_period = settings.drain_period if drain_period is None else drain_period
        timeout = settings.timeout if timeout is None else timeout
        state.draining = True
        state.closing_code = 1012 if restart else 1001
        for connection in list(state.connections):
            connection.drain()
        await self.reloader.close()
        if drain_period > 0:
            await asyncio.sleep(drain_period)
        if self._server is not None:
            self._server.close()
        for relay in list(state.relays):
            relay.close(state.closing_code, "proxy shutting down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while state.open_connections and loop.time() < deadline:
            state.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - loop.time()):
                    await state.changed.wait()
        for connection in list(state.connections):
            connection._abort()
        for relay in list(state.relays):
            relay._abort()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
        await self.control.close()
        if self.admin is not None:
            await self.admin.close()
        state.geo.close()
        await asyncio.to_thread(state.audit.close)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(drain_period=0, timeout=1.0)
