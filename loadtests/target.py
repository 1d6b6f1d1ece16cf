"""The target: the proxy under test (started as its own process, or already running).

With ``[target] start = true`` the tool starts the demo meeting server (``geogate demo-upstream``)
and the proxy (``geogate serve --config FILE``) as processes of their own, each logging to a file
in the run folder, and waits until they accept connections. The proxy is started on a free port,
in front of that upstream, with the restrictions file copied (templates rendered) into the run
folder, so timed actions rewrite that copy and never the scenario's files; it can be pinned to one
CPU, and the demo meeting server then runs on the others. Only processes the tool started are ever
signalled, by their own pid.

The same overrides the proxy is started with are used to load its configuration for the checker,
so the checker resolves regions with exactly the GeoIP settings the proxy uses.

CPU time of the started processes is read from ``/proc/PID/stat`` (utime + stime), so a report
can give the proxy's own CPU per join, not only throughput.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadtests.scenario import Scenario, has_templates, render_restrictions
from proxy.config import Config, load_config
from proxy.errors import GeogateError
from proxy.geoip_build import build_from_csv

__all__ = [
    "RunningTarget",
    "Target",
    "TargetError",
    "free_port",
    "process_cpu_seconds",
    "toml_value",
    "write_atomically",
]

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0


class TargetError(GeogateError):
    """The target could not be started, reached or reloaded; the message says why."""


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used, from ``/proc/PID/stat``; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime and stime: fields 14 and 15
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def write_atomically(path: Path, text: str) -> None:
    """Write a file by renaming a complete copy over it, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def toml_value(value: Any) -> str:
    """A value as TOML text for ``--set``: strings, numbers, booleans, lists and inline tables.

    Raises:
        TypeError: a value of another type.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string reads JSON's escapes the same
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


@dataclass(slots=True)
class RunningTarget:
    """A target ready for participants.

    Attributes:
        host: the proxy's address.
        port: the proxy's port.
        path: the request target.
        config: the proxy's configuration as it was started (for the checker).
        restrictions: the restrictions file the proxy enforces (timed actions rewrite it).
        admin_url: the admin endpoint, when there is one.
        admin_token: its bearer token.
        pids: the started processes by role ("proxy", "upstream").
        logs: their log files.
    """

    host: str
    port: int
    path: str
    config: Config
    restrictions: Path
    admin_url: str | None = None
    admin_token: str | None = None
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The proxy's ws:// URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{self.path}"

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each started process."""
        out: dict[str, float] = {}
        for role, pid in self.pids.items():
            seconds = process_cpu_seconds(pid)
            if seconds is not None:
                out[role] = seconds
        return out


class Target:
    """Starts (or finds) the target for a scenario, and stops what it started.

    Args:
        scenario: the scenario.
        workdir: the run folder (restrictions copy, GeoIP database, logs, token, audit).
    """

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.running: RunningTarget | None = None
        # Ports are chosen now, so workers can be started while the target starts.
        spec = scenario.target
        if spec.start:
            self.endpoint = ("127.0.0.1", free_port(), spec.path)
        else:
            assert spec.url is not None
            parts = urlsplit(spec.url)
            self.endpoint = (parts.hostname or "127.0.0.1", parts.port or 80,
                             parts.path or spec.path)
        self.admin_port = free_port() if spec.start and scenario.needs_admin else None
        self.upstream_port = free_port()

    # ---- starting ------------------------------------------------------------------------------

    def restrictions_source(self) -> Path:
        """The restrictions file the scenario gives the target (before rendering)."""
        spec = self.scenario.target
        if spec.restrictions is not None:
            return spec.restrictions
        assert spec.config is not None
        return load_config(spec.config).restrictions.path

    def overrides(self, restrictions: Path, database: Path | None,
                  admin_token_file: Path | None) -> dict[str, Any]:
        """The configuration overrides a started proxy gets (also used to load it for checks)."""
        spec = self.scenario.target
        out: dict[str, Any] = {
            "listen.host": "127.0.0.1",
            "listen.port": self.endpoint[1],
            "restrictions.path": str(restrictions),
            "audit.path": str(self.workdir / "audit.jsonl"),
        }
        if database is not None:
            out["geoip.database"] = str(database)
        forwarded = [str(n) for n in self.scenario.generator.forwarded_sources]
        if any(pool.forwarded for pool in self.scenario.region):
            assert spec.config is not None
            trusted = [str(n) for n in load_config(spec.config).client_address.trusted_proxies]
            out["client_address.trusted_proxies"] = sorted(set(trusted) | set(forwarded))
        if admin_token_file is not None:
            out.update({"admin.enabled": True, "admin.host": "127.0.0.1",
                        "admin.port": self.admin_port, "admin.token_file": str(admin_token_file)})
        out.update(spec.set)
        return out

    def start(self, run_start: float) -> RunningTarget:
        """Start (or find) the target.

        Args:
            run_start: the run's start, Unix seconds, for ``{{T+n}}`` templates.

        Returns:
            The running target.

        Raises:
            TargetError: a process did not start, or the target is not usable.
            ConfigError: the proxy's configuration or restrictions are invalid.
        """
        spec = self.scenario.target
        assert spec.config is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        source = self.restrictions_source()
        text = source.read_text(encoding="utf-8")
        if not spec.start:
            if has_templates(text):
                raise TargetError(f"{source}: {{{{T+n}}}} templates need a target the tool "
                                  "starts (it renders them into its own copy)")
            config = load_config(spec.config)
            token = (spec.admin_token_file.read_text().strip()
                     if spec.admin_token_file is not None else None)
            host, port, path = self.endpoint
            self.running = RunningTarget(host, port, path, config, source, spec.admin_url, token)
            return self.running
        restrictions = self.workdir / "restrictions.toml"
        write_atomically(restrictions, render_restrictions(text, run_start))
        database = None
        if spec.geoip_csv is not None:
            database = self.workdir / "geoip.mmdb"
            build_from_csv(spec.geoip_csv, database, build_epoch=1_704_067_200)
        token_file = None
        token = None
        if self.scenario.needs_admin:
            token = secrets.token_urlsafe(24)
            token_file = self.workdir / "admin-token"
            token_file.write_text(token + "\n", encoding="utf-8")
            token_file.chmod(0o600)
        overrides = self.overrides(restrictions, database, token_file)
        upstream_url = spec.upstream_url
        upstream_port = self.upstream_port
        if spec.demo_upstream:
            # Both processes start at once: the proxy connects upstream only for a join. With
            # the proxy pinned, the meeting server keeps off its CPU: left free to roam, it
            # often lands there and takes the proxy's time.
            others = (set(os.sched_getaffinity(0)) - {spec.cpu}) if spec.cpu is not None \
                else set()
            self._spawn("upstream", ["demo-upstream", "--host", "127.0.0.1", "--port",
                                     str(upstream_port), "--log-level", "WARNING"],
                        cpus=others or None)
            upstream_url = f"ws://127.0.0.1:{upstream_port}/"
        overrides["upstream.url"] = upstream_url
        config = load_config(spec.config, overrides)
        args = ["serve", "--config", str(spec.config), "--log-level", spec.log_level]
        for key, value in overrides.items():
            args += ["--set", f"{key}={toml_value(value)}"]
        self._spawn("proxy", args, cpus=None if spec.cpu is None else {spec.cpu})
        if spec.demo_upstream:
            self._wait_listening("upstream", "127.0.0.1", upstream_port)
        self._wait_listening("proxy", config.listen.host, config.listen.port)
        admin_url = None
        if token_file is not None:
            self._wait_listening("proxy", config.admin.host, config.admin.port)
            admin_url = f"http://{config.admin.host}:{config.admin.port}"
        pids = {role: p.pid for role, p in self.processes.items()}
        logs = {role: self.workdir / f"{role}.log" for role in self.processes}
        self.running = RunningTarget(config.listen.host, config.listen.port, spec.path, config,
                                     restrictions, admin_url, token, pids, logs)
        return self.running

    def _spawn(self, role: str, args: list[str], cpus: set[int] | None = None) -> Path:
        log = self.workdir / f"{role}.log"
        with log.open("wb") as stream:
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy", *args], stdout=stream, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.workdir,
            )
        self.processes[role] = process
        if cpus:
            try:
                os.sched_setaffinity(process.pid, cpus)
            except OSError as exc:
                raise TargetError(f"cannot pin the {role} to CPUs {sorted(cpus)}: {exc}") \
                    from None
        return log

    def _wait_listening(self, role: str, host: str, port: int) -> None:
        """Wait until ``host:port`` accepts connections (the log level may hide the banner)."""
        process = self.processes[role]
        log = self.workdir / f"{role}.log"
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                text = log.read_text(encoding="utf-8", errors="replace")
                tail = "\n".join(text.splitlines()[-15:])
                raise TargetError(f"the {role} exited with {process.returncode} before it was "
                                  f"ready; its log ({log}) ends:\n{tail}")
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.05)
        raise TargetError(f"the {role} was not listening on {host}:{port} within "
                          f"{_START_TIMEOUT:.0f}s (see {log})")

    # ---- stopping ------------------------------------------------------------------------------

    def stop(self) -> dict[str, int | None]:
        """Stop what was started: SIGTERM (ordered shutdown), then SIGKILL after a while.

        Returns:
            Each process's exit status.
        """
        statuses: dict[str, int | None] = {}
        for role in ("proxy", "upstream"):
            process = self.processes.get(role)
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(5)
            statuses[role] = process.returncode
        self.processes.clear()
        return statuses

    def alive(self) -> Mapping[str, bool]:
        """Whether each started process is still running."""
        return {role: p.poll() is None for role, p in self.processes.items()}

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
