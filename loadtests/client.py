"""One synthetic participant's connection: a lean WebSocket client of the demo JSON protocol.

Each connection is one :class:`asyncio.Protocol` (no task, future or library object per message,
so the generator stays cheaper than the proxy it measures). It binds its region's source address,
does the HTTP upgrade (RFC 6455 section 4.1; with an X-Forwarded-For header for regions outside
loopback) and reads frames with the pieces the benchmark client has too
(:mod:`loadtests.wsclient`), sends the join, and then reads every message: ``joined`` admits it, a
``geogate.denied`` notice followed by close code 4451 denies or evicts it, signals from other
participants are checked for sequence gaps, duplicates and reordering, and a signal to itself
times the signal round trip.

Life of a connection::

    CONNECTING -> UPGRADING -> JOINING -> ADMITTED -> CLOSING -> CLOSED
                      |           |          |
                      |           +----------+--> DENYING (notice seen) -> CLOSED
                      +--> HTTP_ERROR (non-101 answer, body read to the end) -> CLOSED

A close frame from the server is answered with the same code (RFC 6455 section 5.5.1); pings
are answered with pongs. The connection fills an :class:`~loadtests.records.Attempt` as it goes
and hands it to its owner when the TCP connection is gone.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from loadtests.records import Attempt, End, Notice, Outcome, SignalFindings, TailGap
from loadtests.stats import Histogram
from loadtests.wsclient import FrameReader, read_upgrade_head, upgrade_request
from proxy.frames import CLOSE_CODES_ALLOWED_ON_WIRE, Opcode, encode_close_payload, encode_frame

__all__ = ["DENIAL_CLOSE_CODE", "Connection", "ConnectionSpec", "Metrics", "State"]

#: The close code that follows a denial notice (HTTP 451's WebSocket sibling).
DENIAL_CLOSE_CODE: Final = 4451
_MAX_HEAD: Final = 16384
_MAX_MESSAGE: Final = 1 << 22
_CLOSE_WAIT: Final = 5.0  # seconds for the server's close after ours, then abort
_NOTICE_TYPE: Final = "geogate.denied"
_SIGNAL_OVERHEAD: Final = len(orjson.dumps(
    {"type": "signal", "to": "*", "data": {"i": 0, "e": 0, "q": 0, "t": 0.0, "pad": ""}}))


class State(enum.StrEnum):
    """Where a connection is (module docstring)."""

    CONNECTING = "connecting"
    UPGRADING = "upgrading"
    HTTP_ERROR = "http-error"
    JOINING = "joining"
    ADMITTED = "admitted"
    DENYING = "denying"
    CLOSING = "closing"
    CLOSED = "closed"


_CONNECTING: Final = State.CONNECTING
_UPGRADING: Final = State.UPGRADING
_HTTP_ERROR: Final = State.HTTP_ERROR
_JOINING: Final = State.JOINING
_ADMITTED: Final = State.ADMITTED
_DENYING: Final = State.DENYING
_CLOSING: Final = State.CLOSING
_CLOSED: Final = State.CLOSED


@dataclass(slots=True)
class Metrics:
    """What a worker's connections record, shared by all of them (owned by the event loop).

    Attributes:
        t0: the run's start on the monotonic clock.
        admitted: time to admitted (connect start to ``joined``).
        denied: time to denial (connect start to the notice).
        round_trip: signal round trip (a signal to oneself).
        delivery: signal delivery, sender to each receiver (one way, same host clock).
        findings: signal sequence findings.
        errors: errors that end no join, by kind (upstream error messages, stray frames).
        series: per-second counters.
        second_admitted: per-second time-to-admitted histograms.
        open: admitted connections open now.
    """

    t0: float
    admitted: Histogram = field(default_factory=Histogram)
    denied: Histogram = field(default_factory=Histogram)
    round_trip: Histogram = field(default_factory=Histogram)
    delivery: Histogram = field(default_factory=Histogram)
    findings: SignalFindings = field(default_factory=SignalFindings)
    errors: dict[str, int] = field(default_factory=dict)
    series: dict[int, dict[str, int]] = field(default_factory=dict)
    second_admitted: dict[int, Histogram] = field(default_factory=dict)
    open: int = 0

    def now(self) -> float:
        """Seconds since the run's start."""
        return time.monotonic() - self.t0

    def count(self, name: str, at: float, n: int = 1) -> None:
        """Add to a per-second counter."""
        slot = self.series.get(int(at))
        if slot is None:
            slot = self.series[max(int(at), 0)] = {}
        slot[name] = slot.get(name, 0) + n

    def error(self, kind: str) -> None:
        """Count an error that ends no join."""
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    """What one connection is: who, where, and with which join.

    Attributes:
        participant: the participant's index.
        participant_id: the id sent in the join.
        meeting: the meeting.
        host: the proxy's address, for the Host header.
        path: the request target.
        forwarded: an X-Forwarded-For address, or None.
        resume: send a resume instead of a join.
        epoch: the participant's connection number.
        scheduled: when the join was planned.
    """

    participant: int
    participant_id: str
    meeting: str
    host: str
    path: str
    forwarded: str | None
    resume: bool
    epoch: int
    scheduled: float


class Connection(FrameReader):
    """One participant connection (module docstring).

    Args:
        spec: who and where.
        metrics: the worker's shared metrics.
        on_answer: called once the join is answered (admitted, denied or failed).
        on_closed: called with the finished attempt when the connection is gone.
        join_timeout: seconds from the connect to the answer before the attempt fails.
    """

    __slots__ = (
        "_close_timer",
        "_frag_text",
        "_frags",
        "_head",
        "_heads",
        "_join_timer",
        "_senders",
        "answered",
        "close_code",
        "end",
        "ended",
        "error",
        "final_sent",
        "http_status",
        "join_sent",
        "metrics",
        "notice",
        "notice_at",
        "on_answer",
        "on_closed",
        "outcome",
        "seq",
        "spec",
        "started",
        "state",
        "transport",
        "was_admitted",
    )

    max_frame = _MAX_MESSAGE

    def __init__(
        self,
        spec: ConnectionSpec,
        metrics: Metrics,
        on_answer: Callable[[Connection], None],
        on_closed: Callable[[Connection, Attempt], None],
        join_timeout: float,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.metrics = metrics
        self.on_answer = on_answer
        self.on_closed = on_closed
        self.state = _CONNECTING
        self.transport: asyncio.Transport | None = None
        self.started = metrics.now()
        self.join_sent: float | None = None
        self.outcome: Outcome | None = None
        self.answered = 0.0
        self.notice: Notice | None = None
        self.notice_at: float | None = None
        self.close_code: int | None = None
        self.http_status: int | None = None
        self.end: End | None = None
        self.ended = 0.0
        self.error: str | None = None
        self.seq = 0
        self.final_sent = False
        self.was_admitted = False
        self._head = b""
        self._frags: bytearray | None = None
        self._frag_text = False
        # Receiver side: sender id -> [epoch, last sequence number, final seen].
        self._senders: dict[str, list[int]] = {}
        self._heads: set[str] = set()
        loop = asyncio.get_running_loop()
        self._join_timer: asyncio.TimerHandle | None = loop.call_later(
            join_timeout, self._join_timed_out)
        self._close_timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have the same methods.
        self.transport = transport  # type: ignore[assignment]
        spec = self.spec
        # The upgrade uses the load clients' fixed key (loadtests.wsclient): the answer is still
        # checked against it, and no key is drawn and hashed per connection.
        forwarded = f"X-Forwarded-For: {spec.forwarded}\r\n" if spec.forwarded else ""
        self.state = _UPGRADING
        transport.write(upgrade_request(spec.host, spec.path, forwarded,  # type: ignore[attr-defined]
                                        user_agent="geogate-loadtest"))

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is _UPGRADING or state is _HTTP_ERROR:
            data = self._upgrade(data)
            if not data:
                return
        self.read_frames(data)

    def frame(self, first: int, data: bytes, start: int, end: int) -> bool:
        opcode = first & 0x0F
        if opcode >= 8:
            self._control(opcode, data[start:end])
        elif opcode == 0:
            if self._frags is None:
                self._protocol_error("continuation without a message")
                return False
            self._frags += data[start:end]
            if first & 0x80:
                message, self._frags = bytes(self._frags), None
                if self._frag_text:
                    self._message(message)
        elif first & 0x80:
            if opcode == 1:
                self._message(data[start:end])
        else:
            self._frags = bytearray(data[start:end])
            self._frag_text = opcode == 1
        return self.state is not _CLOSED

    def frame_error(self, detail: str) -> None:
        self._protocol_error(detail)

    def eof_received(self) -> bool | None:
        return None  # the server closed its side: close ours too

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = _CLOSED
        self._cancel_timers()
        now = self.metrics.now()
        if state is _HTTP_ERROR:
            self._http_answer(now)
        if self.outcome is None:
            self._fail("lost" if state is not _CONNECTING else "connect", now)
        if self.end is None:
            if state is _DENYING:
                self.end = End.EVICTED if self.was_admitted else End.DENIED
            elif self.was_admitted:
                self.end = End.LOST
                self.error = self.error or "lost"
            else:
                self.end = End.FAILED
        if state is _ADMITTED:
            self.metrics.open -= 1
        self.ended = now
        self.transport = None
        self.on_closed(self, self.attempt())

    # ---- actions -------------------------------------------------------------------------------

    def send_signal(self, size: int, *, final: bool = False) -> bool:
        """Send the next sequence-numbered signal to everyone else in the meeting.

        Returns:
            True when sent (the connection is admitted).
        """
        if self.state is not _ADMITTED or self.transport is None:
            return False
        self.seq += 1
        spec = self.spec
        pad = max(size - _SIGNAL_OVERHEAD - len(str(spec.participant)) - len(str(self.seq)) - 16,
                  0)
        data: dict[str, Any] = {"i": spec.participant, "e": spec.epoch, "q": self.seq,
                                "t": round(time.monotonic(), 6), "pad": "x" * pad}
        if final:
            data["f"] = 1
            self.final_sent = True
        payload = orjson.dumps({"type": "signal", "to": "*", "data": data})
        self.transport.write(encode_frame(Opcode.TEXT, payload, mask=True))
        self.metrics.count("signals_sent", self.metrics.now())
        return True

    def send_probe(self) -> bool:
        """Send a signal to oneself; its return times the signal round trip."""
        if self.state is not _ADMITTED or self.transport is None:
            return False
        payload = orjson.dumps({"type": "signal", "to": self.spec.participant_id,
                                "data": {"rt": time.monotonic()}})
        self.transport.write(encode_frame(Opcode.TEXT, payload, mask=True))
        return True

    def leave(self, end: End = End.LEFT) -> None:
        """Leave normally: close 1000 (the close handshake of RFC 6455 section 7)."""
        if self.state is _ADMITTED:
            self.end = end
            self.metrics.open -= 1
            self._send_close(1000)
        elif self.state in (_CONNECTING, _UPGRADING, _JOINING, _HTTP_ERROR):
            self.end = end
            self.abort()

    def drop(self) -> None:
        """Abort the connection without a closing handshake (a simulated network blip)."""
        if self.state is _CLOSED:
            return
        if self.end is None:
            self.end = End.DROPPED
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self.transport is not None:
            self.transport.abort()

    @property
    def admitted(self) -> bool:
        """Whether the connection is admitted and open."""
        return self.state is _ADMITTED

    @property
    def settled(self) -> bool:
        """Whether the join has been answered."""
        return self.outcome is not None

    def attempt(self) -> Attempt:
        """The attempt as recorded so far."""
        spec = self.spec
        return Attempt(
            spec.participant, spec.epoch, spec.resume, spec.scheduled, self.started,
            self.join_sent, self.outcome or Outcome.FAILED, self.answered, self.notice,
            self.notice_at, self.close_code, self.http_status, self.end or End.FAILED,
            self.ended, self.error, self.seq, self.final_sent,
        )

    def connect_failed(self, exc: BaseException) -> None:
        """The TCP connect failed: record it and hand the attempt over."""
        self.state = _CLOSED
        self._cancel_timers()
        now = self.metrics.now()
        if self.outcome is None:
            kind = type(exc).__name__
            errno = getattr(exc, "errno", None)
            if errno is not None:
                kind = os.strerror(errno) if isinstance(errno, int) else kind
            self._fail(f"connect:{kind}", now)
        self.end = self.end or End.FAILED
        self.ended = now
        self.on_closed(self, self.attempt())

    # ---- upgrade -------------------------------------------------------------------------------

    def _upgrade(self, data: bytes) -> bytes:
        """Read the upgrade response; return the frame bytes after a 101, else b""."""
        head = self._head + data if self._head else data
        if self.state is _HTTP_ERROR:
            self._head = head[:_MAX_HEAD * 4]
            return b""
        answer = read_upgrade_head(head)
        if answer is None:
            if len(head) > _MAX_HEAD:
                self._protocol_error("upgrade response too long")
            else:
                self._head = head
            return b""
        status, end, accepted = answer
        if status != 101:
            # Read to the end: a 451 carries the notice as its JSON body (RFC 7725).
            self.http_status = status
            self.state = _HTTP_ERROR
            self._head = head
            return b""
        self._head = b""
        if not accepted:
            self._protocol_error("upgrade without the expected Sec-WebSocket-Accept")
            return b""
        spec = self.spec
        kind = "resume" if spec.resume else "join"
        join = orjson.dumps({"type": kind, "meeting": spec.meeting,
                             "participant": spec.participant_id})
        assert self.transport is not None
        self.transport.write(encode_frame(Opcode.TEXT, join, mask=True))
        self.state = _JOINING
        self.join_sent = self.metrics.now()
        return head[end + 4 :]

    def _http_answer(self, now: float) -> None:
        """The connection ended after a non-101 answer: a 451 denial or a refusal."""
        if self.outcome is not None:
            return
        head = self._head
        body = head[head.find(b"\r\n\r\n") + 4 :] if b"\r\n\r\n" in head else b""
        if self.http_status == 451:
            self.notice = _notice(body)
            self.notice_at = now
            self._settle(Outcome.DENIED, now)
            self.end = End.DENIED
            self.metrics.denied.record(now - self.started)
            self.metrics.count("denied", now)
        else:
            self._fail(f"http:{self.http_status}", now)

    # ---- messages ------------------------------------------------------------------------------

    def _message(self, payload: bytes) -> None:
        state = self.state
        if state is not _ADMITTED and state is not _JOINING:
            return  # closing or denied: what follows is not checked
        # The meeting server's membership notices are most of the traffic in a join storm (each
        # join is told to everyone in the meeting): read them without a JSON parse when their
        # layout is the one the demo server writes.
        if payload.startswith(_JOINED_PREFIX):
            participant = _participant(payload)
            if participant is not None:
                self._heads.add(participant)
                return
        elif payload.startswith(_LEFT_PREFIX):
            participant = _participant(payload)
            if participant is not None:
                self._left(participant)
                return
        try:
            message = orjson.loads(payload)
            kind = message.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            self.metrics.error("non-json-message")
            return
        now = self.metrics.now()
        if kind == "signal":
            self._signal(message, now)
        elif kind == "participant-joined":
            self._heads.add(str(message.get("participant", "")))
        elif kind == "participant-left":
            self._left(str(message.get("participant", "")))
        elif kind == "joined" and state is _JOINING:
            self.was_admitted = True
            self.state = _ADMITTED
            self.metrics.open += 1
            self.metrics.admitted.record(now - self.started)
            second = int(now)
            histogram = self.metrics.second_admitted.get(second)
            if histogram is None:
                histogram = self.metrics.second_admitted[second] = Histogram()
            histogram.record(now - self.started)
            self.metrics.count("admitted", now)
            self._settle(Outcome.ADMITTED, now)
        elif kind == _NOTICE_TYPE:
            self.notice = _notice(payload)
            self.notice_at = now
            if state is _JOINING:
                self.metrics.denied.record(now - self.started)
                self.metrics.count("denied", now)
                self.state = _DENYING
                self._settle(Outcome.DENIED, now)
            else:
                self.metrics.open -= 1
                self.metrics.count("evicted", now)
                self.state = _DENYING
        elif kind == "error":
            self.metrics.error(f"upstream-error:{str(message.get('reason', ''))[:40]}")
        else:
            self.metrics.error(f"unexpected-message:{str(kind)[:30]}")

    def _signal(self, message: dict[str, Any], now: float) -> None:
        data = message.get("data")
        sender = message.get("from")
        if not isinstance(data, dict) or not isinstance(sender, str):
            self.metrics.error("malformed-signal")
            return
        if sender == self.spec.participant_id:
            sent = data.get("rt")
            if isinstance(sent, float):
                self.metrics.round_trip.record(time.monotonic() - sent)
            return
        findings = self.metrics.findings
        findings.received += 1
        me = self.spec.participant_id
        epoch, seq = data.get("e"), data.get("q")
        if not isinstance(epoch, int) or not isinstance(seq, int):
            self.metrics.error("malformed-signal")
            return
        sent_at = data.get("t")
        if isinstance(sent_at, float):
            self.metrics.delivery.record(time.monotonic() - sent_at)
        self.metrics.count("signals_received", now)
        state = self._senders.get(sender)
        if state is None or state[0] != epoch:
            if state is not None and epoch < state[0]:
                findings.reordered += 1
                findings.sample("reordered", me, f"{sender}#{epoch}.{seq} after epoch "
                                f"{state[0]} at {now:.3f}s")
                return
            if sender in self._heads:
                self._heads.discard(sender)
                if seq != 1:
                    findings.lost += seq - 1
                    findings.sample("lost", me, f"saw {sender} join, then its signal {seq} "
                                    f"first (lost 1..{seq - 1}) at {now:.3f}s")
            self._senders[sender] = [epoch, seq, 1 if data.get("f") else 0]
            return
        last = state[1]
        if seq == last + 1:
            state[1] = seq
        elif seq > last + 1:
            findings.lost += seq - last - 1
            findings.sample("lost", me, f"{sender}#{epoch} jumped {last} -> {seq} at "
                            f"{now:.3f}s")
            state[1] = seq
        elif seq == last:
            findings.duplicated += 1
            findings.sample("duplicated", me, f"{sender}#{epoch} signal {seq} twice at "
                            f"{now:.3f}s")
        else:
            findings.reordered += 1
            findings.sample("reordered", me, f"{sender}#{epoch} signal {seq} after {last} at "
                            f"{now:.3f}s")
        if data.get("f"):
            state[2] = 1

    def _left(self, sender: str) -> None:
        self._heads.discard(sender)
        state = self._senders.pop(sender, None)
        if state is not None and not state[2]:
            self.metrics.findings.tails.append(
                TailGap(sender, state[0], state[1], self.spec.participant_id, self.metrics.now()))

    def _control(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        if opcode == Opcode.PING:
            transport.write(encode_frame(Opcode.PONG, payload, mask=True))
        elif opcode == Opcode.CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._server_close(code)

    def _server_close(self, code: int) -> None:
        now = self.metrics.now()
        self.close_code = code
        state = self.state
        if state is _CLOSING:
            return  # the answer to our close; the server ends the TCP connection next
        if state is _JOINING:
            if code == DENIAL_CLOSE_CODE:
                # A denial without its notice: the checker reports the missing notice.
                self.metrics.denied.record(now - self.started)
                self.metrics.count("denied", now)
                self._settle(Outcome.DENIED, now)
                self.end = End.DENIED
            else:
                self._fail(f"close:{code}", now)
                self.end = End.FAILED
        elif state is _ADMITTED:
            self.metrics.open -= 1
            if code == DENIAL_CLOSE_CODE:
                self.end = End.EVICTED  # evicted without a notice: reported by the checker
                self.metrics.count("evicted", now)
            else:
                self.end = End.SERVER_CLOSED
                self.error = f"close:{code}"
        elif state is _DENYING:
            self.end = End.EVICTED if self.was_admitted else End.DENIED
        self.state = _CLOSING
        reply = encode_close_payload(code, "") if code in CLOSE_CODES_ALLOWED_ON_WIRE else b""
        if self.transport is not None:
            self.transport.write(encode_frame(Opcode.CLOSE, reply, mask=True))
        self._arm_close_timer()

    # ---- internals -----------------------------------------------------------------------------

    def _settle(self, outcome: Outcome, now: float) -> None:
        self.outcome = outcome
        self.answered = now
        if self._join_timer is not None:
            self._join_timer.cancel()
            self._join_timer = None
        self.on_answer(self)

    def _fail(self, kind: str, now: float) -> None:
        if self.outcome is not None:
            return
        self.error = kind
        self.metrics.count("failed", now)
        self._settle(Outcome.FAILED, now)

    def _join_timed_out(self) -> None:
        self._join_timer = None
        if self.outcome is None:
            self._fail("timeout:join", self.metrics.now())
            self.end = End.FAILED
            self.abort()

    def _protocol_error(self, detail: str) -> None:
        now = self.metrics.now()
        if self.outcome is None:
            self._fail(f"protocol:{detail}", now)
        else:
            self.metrics.error(f"protocol:{detail}")
        if self.end is None:
            self.end = End.FAILED if not self.was_admitted else End.LOST
        self.abort()

    def _send_close(self, code: int) -> None:
        self.state = _CLOSING
        if self.transport is not None:
            self.transport.write(encode_frame(Opcode.CLOSE, encode_close_payload(code, ""),
                                              mask=True))
        self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(_CLOSE_WAIT, self.abort)

    def _cancel_timers(self) -> None:
        if self._join_timer is not None:
            self._join_timer.cancel()
            self._join_timer = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None


_JOINED_PREFIX: Final = b'{"type":"participant-joined",'
_LEFT_PREFIX: Final = b'{"type":"participant-left",'
_PARTICIPANT_KEY: Final = b'"participant":"'


def _participant(payload: bytes) -> str | None:
    """The participant id of a membership notice laid out as the demo server writes it.

    Returns:
        The id, or None when the message is not laid out that way (then it is parsed as JSON).
    """
    start = payload.rfind(_PARTICIPANT_KEY)
    if start < 0:
        return None
    start += len(_PARTICIPANT_KEY)
    end = payload.find(b'"', start)
    if end < 0 or payload[end - 1 : end] == b"\\" or payload[end:] != b'"}':
        return None
    return payload[start:end].decode("utf-8", "replace")


def _notice(payload: bytes) -> Notice:
    """The fields of a denial notice the checker compares (empty strings when absent)."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return Notice(str(body.get("restriction", "")), str(body.get("meeting", "")),
                  str(body.get("region", "")))
