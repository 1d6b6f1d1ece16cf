"""A crowd of participants in several meetings from several regions, exchanging numbered signals.

Used by the live-change tests: every participant records everything it receives, so a test can
check that exactly the barred ones were evicted (notice, then 4451), that the others saw a
``participant-left`` for exactly them, and that no numbered signal was lost or duplicated.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.helpers.proxy import TIMEOUT

__all__ = ["REGIONS", "Crowd", "Member"]

#: Region -> source address prefix in the demo database.
REGIONS = {"CN": "127.0.1.", "HK": "127.0.2.", "US": "127.0.3.", "DE": "127.0.5.", "GB": "127.0.7."}


@dataclass(eq=False)
class Member:
    """One participant: where it comes from, and everything it received."""

    name: str
    meeting: str
    region: str
    source: str
    ws: ClientConnection | None = None
    messages: list[Any] = field(default_factory=list)
    close: tuple[int | None, str] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    done_from: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expect_done: set[str] = field(default_factory=set)

    async def read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                message = orjson.loads(raw)
                self.messages.append(message)
                data = message.get("data") if message.get("type") == "signal" else None
                if isinstance(data, dict) and data.get("done"):
                    self.done_from.add(message["from"])
                    if self.expect_done <= self.done_from:
                        self.done.set()
        except ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        self.close = (rcvd.code, rcvd.reason) if rcvd else (None, "")
        self.closed.set()

    def signals_from(self, sender: str) -> list[int]:
        return [m["data"]["seq"] for m in self.messages
                if m.get("type") == "signal" and m.get("from") == sender and "seq" in m["data"]]

    def left(self) -> list[str]:
        return [m["participant"] for m in self.messages if m.get("type") == "participant-left"]

    def notices(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "geogate.denied"]


class Crowd:
    """``size`` participants spread over ``meetings`` and ``regions`` (round robin)."""

    def __init__(self, url: str, meetings: list[str], size: int,
                 regions: dict[str, str] | None = None) -> None:
        self.url = url
        regions = regions or REGIONS
        names = list(regions)
        self.members = [
            Member(f"p{i:03d}", meetings[i % len(meetings)], names[i % len(names)],
                   f"{regions[names[i % len(names)]]}{10 + i // len(names)}")
            for i in range(size)
        ]

    def where(self, *, meeting: str | None = None, region: str | None = None) -> list[Member]:
        return [m for m in self.members
                if (meeting is None or m.meeting == meeting)
                and (region is None or m.region == region)]

    async def join_all(self) -> None:
        """Connect and join everyone; wait until each has its ``joined``."""
        async def one(member: Member) -> None:
            member.ws = await connect(self.url, proxy=None, local_addr=(member.source, 0),
                                      compression=None, open_timeout=TIMEOUT, max_queue=None)
            await member.ws.send(orjson.dumps({"type": "join", "meeting": member.meeting,
                                               "participant": member.name}).decode())
            first = orjson.loads(await asyncio.wait_for(member.ws.recv(), TIMEOUT))
            assert first["type"] == "joined", (member, first)
            member.reader = asyncio.ensure_future(member.read())

        for start in range(0, len(self.members), 50):
            await asyncio.gather(*(one(m) for m in self.members[start:start + 50]))

    async def signal_through(self, senders: list[Member], count: int,
                             midway: asyncio.Event) -> None:
        """Each sender sends ``count`` numbered signals to its meeting, then a done marker;
        ``midway`` is set once every sender has sent a third of them."""
        thirds: set[str] = set()
        by_meeting: dict[str, set[str]] = defaultdict(set)
        for s in senders:
            by_meeting[s.meeting].add(s.name)
        for member in self.members:
            member.expect_done = set(by_meeting[member.meeting]) - {member.name}
            if not member.expect_done:
                member.done.set()

        async def send(sender: Member) -> None:
            assert sender.ws is not None
            for seq in range(count):
                await sender.ws.send(orjson.dumps(
                    {"type": "signal", "to": "*", "data": {"seq": seq}}).decode())
                if seq == count // 3:
                    thirds.add(sender.name)
                    if len(thirds) == len(senders):
                        midway.set()
                await asyncio.sleep(0)
            await sender.ws.send(orjson.dumps(
                {"type": "signal", "to": "*", "data": {"done": True}}).decode())

        await asyncio.gather(*(send(s) for s in senders))

    async def close(self) -> None:
        for member in self.members:
            if member.ws is not None:
                await member.ws.close()
            if member.reader is not None:
                await asyncio.wait_for(member.reader, TIMEOUT)
