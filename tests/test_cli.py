"""Tests for the geogate command line: check, lookup, geoip build, probe, serve on bad config."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
from pathlib import Path

import pytest

from proxy.__main__ import main
from proxy.demo_upstream import DemoUpstream
from tests.helpers.proxy import TIMEOUT, ProxyFactory, restriction

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo_config(tmp_path: Path, demo_db: Path) -> Path:
    """A copy of the shipped configuration pointing at the test-built demo database."""
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "config", folder)
    text = (folder / "geogate.toml").read_text()
    text = text.replace('database = "../build/demo-geoip.mmdb"', f'database = "{demo_db}"')
    (folder / "geogate.toml").write_text(text)
    return folder / "geogate.toml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_valid_config_prints_summary(capsys: pytest.CaptureFixture[str],
                                           demo_config: Path) -> None:
    """check exits 0 and lists restrictions in force, in dry run and the next change."""
    code, out, _ = run(capsys, "check", "--config", str(demo_config))
    assert code == 0
    assert ": valid" in out
    assert "in force now: 3" in out and "demo-cn-memorial: block CN in memorial-*" in out
    assert "dry run, in force now: 1" in out and "demo-ru-townhall-dry-run" in out
    assert "reader: maxminddb-rust)" in out
    assert "next change   2036-01-01T00:00:00Z" in out


def test_check_lists_every_error(capsys: pytest.CaptureFixture[str], demo_config: Path) -> None:
    """check exits 1 and lists the errors of both files and the database."""
    folder = demo_config.parent
    (folder / "restrictions.toml").write_text(
        restriction("a", ["CNN"], ["m"]) + restriction("b", ["CN"], ["m"], legal_basis=""))
    code, out, _ = run(capsys, "check", "--config", str(demo_config),
                       "--set", f"geoip.database={folder / 'missing.mmdb'}")
    assert code == 1
    assert "'CNN'" in out and "restriction[1].legal_basis" in out and "missing.mmdb" in out


def test_check_bad_main_file(capsys: pytest.CaptureFixture[str], demo_config: Path) -> None:
    """check exits 1 naming the bad key of the main file."""
    code, out, _ = run(capsys, "check", "--config", str(demo_config), "--set", "listen.port=-5")
    assert code == 1 and "listen.port" in out and "-5" in out


def test_lookup_lists_what_bars_an_address(capsys: pytest.CaptureFixture[str],
                                           demo_config: Path) -> None:
    """lookup resolves a CN-BJ address and names the restriction and its legal basis."""
    code, out, _ = run(capsys, "lookup", "--config", str(demo_config), "127.0.1.200")
    assert code == 0
    assert "region    CN-BJ (database, network 127.0.1.128/25)" in out
    assert "demo-cn-memorial bars it from memorial-* (region)" in out
    assert "legal basis: Demo: an order barring" in out


def test_lookup_one_meeting_shows_dry_run(capsys: pytest.CaptureFixture[str],
                                          demo_config: Path) -> None:
    """lookup --meeting gives the decision, with dry-run matches marked."""
    code, out, _ = run(capsys, "lookup", "--config", str(demo_config), "127.0.6.1",
                       "--meeting", "townhall")
    assert code == 0 and "townhall: admitted" in out and "(region, dry run)" in out


def test_lookup_behind_trusted_proxy(capsys: pytest.CaptureFixture[str],
                                     demo_config: Path) -> None:
    """A forwarded header from a trusted peer moves the client; from others it is ignored."""
    args = ["lookup", "--config", str(demo_config), "127.0.9.1", "--forwarded-for", "127.0.1.5"]
    code, out, _ = run(capsys, *args, "--set", 'client_address.trusted_proxies=["127.0.9.0/24"]')
    assert code == 0 and "address   127.0.1.5 (from x-forwarded-for" in out
    code, out, _ = run(capsys, *args)
    assert "address   127.0.9.1 (from peer" in out and "was ignored" in out


def test_lookup_bad_address(capsys: pytest.CaptureFixture[str], demo_config: Path) -> None:
    """A malformed address is a clear error and exit 1."""
    code, _, err = run(capsys, "lookup", "--config", str(demo_config), "300.1.1.1")
    assert code == 1 and "'300.1.1.1' is not an IP address" in err


def test_geoip_build_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """geoip build writes a database; a bad CSV is refused with file and line."""
    good = tmp_path / "ok.csv"
    good.write_text("198.51.100.0/24,DE,\n2001:db8::/32,US,US-CA\n")
    code, out, _ = run(capsys, "geoip", "build", str(good), "-o", str(tmp_path / "ok.mmdb"))
    assert code == 0 and "2 networks" in out and (tmp_path / "ok.mmdb").stat().st_size > 0
    bad = tmp_path / "bad.csv"
    bad.write_text("198.51.100.0/24,DE,\n198.51.100.7/24,XX,\n")
    code, _, err = run(capsys, "geoip", "build", str(bad), "-o", str(tmp_path / "bad.mmdb"))
    assert code == 1 and "bad.csv:2" in err and not (tmp_path / "bad.mmdb").exists()


def test_serve_refuses_bad_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """serve exits 1 with the errors when the configuration is invalid."""
    (tmp_path / "g.toml").write_text("[listen]\nport = 'x'\n")
    code, _, err = run(capsys, "serve", "--config", str(tmp_path / "g.toml"))
    assert code == 1 and "listen.port" in err


async def probe_cli(url: str, meeting: str, source: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "probe", url, "--meeting", meeting, "--from", source,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), TIMEOUT * 3)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_probe_reports_denial_and_admission(proxies: ProxyFactory,
                                                  upstream: DemoUpstream) -> None:
    """geogate probe from a CN address is denied (exit 3); from a US address admitted (exit 0)."""
    server = await proxies.start(upstream.url, restriction("cn", ["CN"], ["memorial-*"]))
    code, out = await probe_cli(server.url, "memorial-1", "127.0.1.7")
    assert code == 3, out
    assert "denied: denied by cn (close code 4451)" in out and "region: CN" in out
    code, out = await probe_cli(server.url, "memorial-1", "127.0.3.7")
    assert code == 0 and out.startswith("admitted: joined memorial-1"), out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version."""
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "geogate 0.1.0" in capsys.readouterr().out


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names every command."""
    with pytest.raises(SystemExit):
        main(["--help"])
    out = io.StringIO(capsys.readouterr().out).read()
    for command in ("serve", "run-demo", "demo-upstream", "probe", "check", "lookup", "geoip"):
        assert command in out


async def test_health_follows_the_listener(tmp_path: Path, proxies: ProxyFactory,
                                           upstream: DemoUpstream) -> None:
    """geogate health exits 0 while the proxy listens and 1 once it is gone."""
    server = await proxies.start(upstream.url, "")
    config = server.state.config.source
    port = server.port
    assert config is not None

    async def health() -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "health", "--config", str(config),
            "--set", f"listen.port={port}", stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        out, _ = await asyncio.wait_for(process.communicate(), TIMEOUT * 3)
        assert process.returncode is not None
        return process.returncode, out.decode()

    code, out = await health()
    assert code == 0 and out.startswith("healthy"), out
    await server.close(drain_period=0, timeout=1)
    proxies.servers.remove(server)
    code, out = await health()
    assert code == 1 and out.startswith("unhealthy"), out
