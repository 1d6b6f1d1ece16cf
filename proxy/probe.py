"""``geogate probe``: join a meeting through a deployment as a participant and say what happened.

The probe binds a chosen local source address (such as 127.0.1.7, which the demo database places in
CN) so an operator can check from the command line that a restriction bars whom it should and admits
everyone else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

__all__ = ["ProbeResult", "probe"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe saw.

    Attributes:
        outcome: "admitted", "denied", "refused" (HTTP status), "closed" or "error".
        detail: a one-line account.
        notice: the denial notice, when one came.
        close_code: the close code, when the connection was closed.
        messages: the first messages received.
    """

    outcome: str
    detail: str
    notice: dict[str, Any] | None = None
    close_code: int | None = None
    messages: list[Any] = field(default_factory=list)


async def probe(
    url: str,
    meeting: str,
    participant: str = "geogate-probe",
    *,
    source: str | None = None,
    timeout: float = 10.0,
) -> ProbeResult:
    """Connect, join ``meeting`` with the demo JSON protocol, and report the outcome.

    Args:
        url: the proxy's ws:// or wss:// URL.
        meeting: the meeting to join.
        participant: the participant id to join as.
        source: a local address to connect from (for example 127.0.1.7).
        timeout: seconds to wait for each step.
    """
    kwargs: dict[str, Any] = {"proxy": None, "open_timeout": timeout, "compression": None}
    if source:
        kwargs["local_addr"] = (source, 0)
    messages: list[Any] = []
    try:
        async with connect(url, **kwargs) as ws:
            await ws.send(orjson.dumps(
                {"type": "join", "meeting": meeting, "participant": participant}).decode())
            while True:
                raw = await asyncio.wait_for(ws.recv(), timeout)
                message = orjson.loads(raw)
                messages.append(message)
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "joined":
                    others = message.get("participants", [])
                    return ProbeResult("admitted", f"joined {meeting}; {len(others)} others "
                                       "in the meeting", messages=messages)
                if kind == "geogate.denied":
                    try:
                        await asyncio.wait_for(ws.recv(), timeout)
                    except ConnectionClosed as closed:
                        code = closed.rcvd.code if closed.rcvd else None
                        return ProbeResult(
                            "denied",
                            f"denied by {message.get('restriction')} (close code {code}): "
                            f"{message.get('notice')}",
                            notice=message, close_code=code, messages=messages)
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
        return ProbeResult("refused", f"HTTP {status} {body}".strip(), messages=messages)
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        reason = exc.rcvd.reason if exc.rcvd else ""
        return ProbeResult("closed", f"closed with {code} {reason}".strip(), close_code=code,
                           messages=messages)
    except (OSError, TimeoutError, WebSocketException, orjson.JSONDecodeError) as exc:
        return ProbeResult("error", f"{type(exc).__name__}: {exc}", messages=messages)
