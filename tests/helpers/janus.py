"""Run a real Janus (the Debian package's /usr/bin/janus) for tests, and talk to it.

``running_janus`` copies the config files of ``tests/janus/`` into a temporary folder, fills their
``${...}`` placeholders (``string.Template``), starts Janus as a subprocess with only the WebSocket
transport (127.0.0.1) and the VideoRoom plugin (rooms 1234, 5678 and 9999), waits until its
WebSocket port accepts a connection, and stops it by pid at the end (SIGTERM, then SIGKILL).

Janus accepts ``ws_port = 0`` (the kernel picks a free port, no race with other processes) but
logs "port 0", so the port is read back from ``/proc``: the process's one listening TCP socket.
Where ``/proc`` cannot say, a free port is found by binding port 0 and releasing it.

When /usr/bin/janus is absent, :func:`require_janus` skips the test with a loud reason outside CI
and fails it in CI (``CI=true``), where ``.ci/run`` is expected to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

__all__ = [
    "JANUS_BINARY",
    "TIMEOUT",
    "JanusClient",
    "JanusServer",
    "janus_server",
    "require_janus",
    "running_janus",
]

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "tests" / "janus"
JANUS_BINARY = Path("/usr/bin/janus")

#: One unit of waiting: every wait on Janus is bounded by a multiple of it.
TIMEOUT = 10.0

#: How often the port is polled while Janus starts (bounded by ``TIMEOUT``).
_POLL = 0.02

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def require_janus() -> Path:
    """The Janus binary; skip (outside CI) or fail (CI=true) the test when it is absent.

    Returns:
        The path of the binary.
    """
    if JANUS_BINARY.exists():
        return JANUS_BINARY
    message = "Janus is not installed: apt-get install janus"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI must install it)", pytrace=False)
    pytest.skip(message)


def _lib_folder() -> Path:
    """The folder holding Janus' plugins/ and transports/ (Debian: /usr/lib/<triplet>/janus)."""
    for candidate in [*sorted(Path("/usr/lib").glob("*/janus")), Path("/usr/lib/janus")]:
        if (candidate / "plugins" / "libjanus_videoroom.so").exists():
            return candidate
    raise RuntimeError("Janus' VideoRoom plugin was not found under /usr/lib/*/janus/plugins")


@dataclass
class JanusServer:
    """A running Janus.

    Attributes:
        url: its WebSocket URL, ``ws://127.0.0.1:PORT``.
        port: its WebSocket port.
        process: the Janus process.
        folder: its configuration folder.
        log_file: its log file.
    """

    url: str
    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    log_file: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        """Janus' log so far."""
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = TIMEOUT) -> int:
        """Stop Janus by pid: SIGTERM, then SIGKILL after ``timeout`` seconds.

        Returns:
            Its exit status.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def _write_config(folder: Path, values: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted(CONFIG_DIR.glob("*.jcfg")):
        text = string.Template(source.read_text(encoding="utf-8")).substitute(values)
        (folder / source.name).write_text(text, encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening_ports(pid: int) -> list[int] | None:
    """The ports of ``pid``'s listening TCP sockets on 127.0.0.1, or None when /proc cannot say."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    ports = []
    for line in lines:
        fields = line.split()
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        local, state, inode = fields[1], fields[3], fields[9]
        if state == _LISTEN and inode in inodes and local.startswith("0100007F:"):
            ports.append(int(local.split(":")[1], 16))
    return ports


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running_janus(
    folder: Path,
    *,
    reclaim_session_timeout: int = 5,
    session_timeout: int = 60,
    json_format: str = "indented",
    timeout: float = TIMEOUT,
) -> Iterator[JanusServer]:
    """Start Janus with the test configuration; stop it when the block ends.

    Args:
        folder: an empty temporary folder for its configuration and log.
        reclaim_session_timeout: seconds a session outlives its WebSocket (for a ``claim``).
        session_timeout: seconds without a request before Janus destroys a session.
        json_format: the transport's JSON output: "indented" (Janus' default), "plain" or
            "compact".
        timeout: seconds to wait for its WebSocket port.

    Yields:
        The running server.

    Raises:
        RuntimeError: Janus exited or its port did not open within ``timeout``.
    """
    binary = require_janus()
    conf = folder / "conf"
    log_file = folder / "janus.log"
    probe = Path("/proc/self/net/tcp").exists()
    port = 0 if probe else _free_port()
    settings: dict[str, Any] = {
        "configs_folder": conf,
        "lib_folder": _lib_folder(),
        "log_file": log_file,
        "reclaim_session_timeout": reclaim_session_timeout,
        "session_timeout": session_timeout,
        "json_format": json_format,
        "ws_port": port,
    }
    _write_config(conf, settings)
    process = subprocess.Popen(
        [str(binary), "--config", str(conf / "janus.jcfg"), "--configs-folder", str(conf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=folder,
    )  # fmt: skip
    server = JanusServer("", port, process, conf, log_file, settings)
    try:
        server.port = _wait_for_port(server, port, timeout)
        server.url = f"ws://127.0.0.1:{server.port}"
        yield server
    finally:
        server.stop()


def _wait_for_port(server: JanusServer, port: int, timeout: float) -> int:
    """Poll until Janus listens and accepts a connection; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"Janus exited with {server.process.returncode}:\n{server.log()[-4000:]}"
            )
        if port == 0:
            ports = _listening_ports(server.process.pid) or []
            if len(ports) > 1:
                raise RuntimeError(f"Janus listens on several ports {ports}; expected one")
            if ports and _accepts(ports[0]):
                return ports[0]
        elif _accepts(port):
            return port
        time.sleep(_POLL)
    raise RuntimeError(f"Janus did not open its WebSocket port in {timeout} s:\n{server.log()}")


@pytest.fixture
def janus_server(tmp_path: Path) -> Iterator[JanusServer]:
    """A Janus on a free loopback port (reclaim_session_timeout 5 s), stopped after the test."""
    with running_janus(tmp_path / "janus") as server:
        yield server


class JanusClient:
    """A Janus API client over one WebSocket, keeping every message received in order.

    Attributes:
        ws: the WebSocket.
        received: every message received so far, parsed, in arrival order.
        raw: the same messages as received (text).
    """

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.received: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._taken: set[int] = set()
        self._count = 0

    @classmethod
    async def connect(cls, url: str, name: str = "client") -> JanusClient:
        """Open a WebSocket to Janus with its subprotocol."""
        ws = await asyncio.wait_for(
            connect(url, subprotocols=[Subprotocol("janus-protocol")], proxy=None,
                    open_timeout=TIMEOUT, max_size=None, compression=None),
            TIMEOUT,
        )  # fmt: skip
        assert ws.subprotocol == "janus-protocol"
        return cls(ws, name)

    def transaction(self) -> str:
        """A new transaction id, unique on this client."""
        self._count += 1
        return f"{self.name}-{self._count}"

    async def send(self, message: dict[str, Any]) -> str:
        """Send ``message`` with a new transaction unless it has one; return the transaction."""
        message.setdefault("transaction", self.transaction())
        await self.ws.send(orjson.dumps(message).decode())
        return str(message["transaction"])

    async def send_raw(self, text: str) -> None:
        """Send exact text."""
        await self.ws.send(text)

    async def _receive(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), "Janus sends text messages"
        message = orjson.loads(raw)
        self.raw.append(raw)
        self.received.append(message)
        return message  # type: ignore[no-any-return]

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The first message not yet returned that satisfies ``predicate`` (earlier ones count).

        Messages are read until one matches; every message read is kept in ``received``.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        index = 0
        while True:
            while index < len(self.received):
                message = self.received[index]
                if index not in self._taken and predicate(message):
                    self._taken.add(index)
                    return message
                index += 1
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no matching message in {self.received}")
            await self._receive(left)

    async def reply(
        self, transaction: str, *kinds: str, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The message on ``transaction`` whose ``janus`` is one of ``kinds`` (default: not ack)."""
        wanted = set(kinds) if kinds else {"success", "error", "event"}
        return await self.wait_for(
            lambda m: m.get("transaction") == transaction and m.get("janus") in wanted, timeout
        )

    async def request(self, message: dict[str, Any], *kinds: str) -> dict[str, Any]:
        """Send ``message`` and return its reply (see :meth:`reply`)."""
        return await self.reply(await self.send(message), *kinds)

    async def create(self) -> int:
        """Create a session; return its id."""
        reply = await self.request({"janus": "create"})
        assert reply["janus"] == "success", reply
        return int(reply["data"]["id"])

    async def attach(self, session: int, plugin: str = "janus.plugin.videoroom") -> int:
        """Attach a handle to ``plugin``; return its id."""
        reply = await self.request({"janus": "attach", "session_id": session, "plugin": plugin})
        assert reply["janus"] == "success", reply
        return int(reply["data"]["id"])

    async def message(self, session: int, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """Send a plugin message; return its answer (an ``event``, or ``success``/``error``)."""
        return await self.request(
            {"janus": "message", "session_id": session, "handle_id": handle, "body": body}
        )

    async def publisher(self, session: int, room: int, display: str) -> tuple[int, int]:
        """Attach a handle and join ``room`` as a publisher; return (handle, publisher id)."""
        handle = await self.attach(session)
        event = await self.message(
            session, handle, {"request": "join", "ptype": "publisher", "room": room,
                              "display": display},
        )  # fmt: skip
        data = event["plugindata"]["data"]
        assert data["videoroom"] == "joined", event
        return handle, int(data["id"])

    async def close(self) -> None:
        await self.ws.close()
