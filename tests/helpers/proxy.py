"""Run the real proxy in front of the real demo meeting server, for tests.

``ProxyFactory`` writes a configuration and a restrictions file in a temporary folder, builds the
demo GeoIP database from ``config/demo/geoip.csv``, and starts a :class:`~proxy.server.Server` on a
free port. ``Participant`` is a WebSocket client bound to a chosen loopback source address, so the
proxy sees distinct real addresses (127.0.1.x is CN, 127.0.3.x is US in the demo database).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from proxy.config import load_snapshot
from proxy.geoip_build import build_from_csv
from proxy.server import Server

__all__ = ["TIMEOUT", "Participant", "ProxyFactory", "demo_database", "restriction"]

ROOT = Path(__file__).resolve().parents[2]

#: One unit of waiting: every wait in the proxy tests is bounded by a multiple of it.
TIMEOUT = 10.0


def demo_database(folder: Path) -> Path:
    """Build the demo GeoIP database into ``folder``."""
    out = folder / "demo-geoip.mmdb"
    if not out.exists():
        build_from_csv(ROOT / "config" / "demo" / "geoip.csv", out, build_epoch=1_704_067_200)
    return out


def restriction(rid: str, regions: list[str], meetings: list[str], **extra: Any) -> str:
    """One ``[[restriction]]`` table as TOML text."""
    fields: dict[str, Any] = {
        "id": rid, "mode": "block", "regions": regions, "meetings": meetings,
        "legal_basis": f"Test order {rid}", "authority": "Test Court",
        "notice": f"Notice for {rid}", "notice_url": f"https://example.org/{rid}",
    }  # fmt: skip
    fields.update(extra)
    lines = ["[[restriction]]"]
    for key, value in fields.items():
        lines.append(f"{key} = {orjson.dumps(value).decode()}")
    return "\n".join(lines) + "\n"


class ProxyFactory:
    """Starts proxies with given restrictions and settings; closes them all at the end."""

    def __init__(self, folder: Path, database: Path) -> None:
        self.folder = folder
        self.database = database
        self.servers: list[Server] = []
        self.count = 0

    def write_config(self, upstream_url: str, restrictions: str = "",
                     settings: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
        """Write a main file and a restrictions file; return the main file's path."""
        self.count += 1
        folder = self.folder / f"proxy{self.count}"
        folder.mkdir()
        (folder / "restrictions.toml").write_text(restrictions, encoding="utf-8")
        tables: dict[str, dict[str, Any]] = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "upstream": {"url": upstream_url, "connect_timeout": 5.0},
            "geoip": {"database": str(self.database), "lookup_private": True},
        }
        for section, values in (settings or {}).items():
            target = tables
            parts = section.split(".")
            for part in parts[:-1]:
                target = target.setdefault(part, {})  # type: ignore[assignment]
            target.setdefault(parts[-1], {}).update(values)
        (folder / "geogate.toml").write_text(_toml(tables), encoding="utf-8")
        return folder / "geogate.toml"

    async def start(self, upstream_url: str, restrictions: str = "",
                    settings: Mapping[str, Mapping[str, Any]] | None = None) -> Server:
        """Start a proxy; it is closed when the test ends."""
        path = self.write_config(upstream_url, restrictions, settings)
        server = Server(load_snapshot(path))
        await server.start()
        self.servers.append(server)
        return server

    async def close(self) -> None:
        for server in self.servers:
            await server.close(drain_period=0, timeout=2.0)


def _toml(tables: Mapping[str, Any], prefix: str = "") -> str:
    """Nested dicts as TOML tables (values are written as JSON, which TOML reads the same)."""
    lines = [f"[{prefix}]"] if prefix else []
    lines += [f"{key} = {orjson.dumps(value).decode()}"
              for key, value in tables.items() if not isinstance(value, Mapping)]
    for key, value in tables.items():
        if isinstance(value, Mapping):
            lines.append(_toml(value, f"{prefix}.{key}" if prefix else key))
    return "\n".join(lines) + "\n"


class Participant:
    """A WebSocket client of the proxy, bound to one loopback source address."""

    def __init__(self, ws: ClientConnection, source: str) -> None:
        self.ws = ws
        self.source = source

    @classmethod
    async def connect(cls, url: str, source: str = "127.0.3.10", **kwargs: Any) -> Participant:
        """Open a connection from ``source``."""
        ws = await asyncio.wait_for(
            connect(url, proxy=None, local_addr=(source, 0), compression=None,
                    open_timeout=TIMEOUT, max_size=None, **kwargs),
            TIMEOUT,
        )
        return cls(ws, source)

    @classmethod
    async def join(cls, url: str, meeting: str, participant: str,
                   source: str = "127.0.3.10") -> tuple[Participant, dict[str, Any]]:
        """Connect and join; return the participant and the first message it receives."""
        p = await cls.connect(url, source)
        await p.send({"type": "join", "meeting": meeting, "participant": participant})
        return p, await p.recv()

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def recv(self, timeout: float = TIMEOUT) -> Any:
        """The next message, parsed when it is text."""
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return orjson.loads(raw) if isinstance(raw, str) else raw

    async def recv_until(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Skip messages until one of type ``kind`` arrives."""
        while True:
            message = await self.recv(timeout)
            if isinstance(message, dict) and message.get("type") == kind:
                return message

    async def closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str]:
        """Wait for the connection to close; return the close code and reason received."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return None, ""
            return exc.rcvd.code, exc.rcvd.reason

    async def close(self) -> None:
        await self.ws.close()
