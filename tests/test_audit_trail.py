"""The audit trail of a running proxy: one record per decision, and the report that counts them."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.__main__ import main
from proxy.audit import AuditRecord
from proxy.demo_upstream import DemoUpstream
from proxy.report import build_report, load_records
from tests.helpers.proxy import Participant, ProxyFactory, restriction
from tests.test_reload import rewrite

RESTRICTIONS = (restriction("cn-a", ["CN"], ["town-a"])
                + restriction("ru-dry", ["RU"], ["town-a"], enforcement="dry-run"))


async def test_every_decision_is_recorded_once(tmp_path: Path, proxies: ProxyFactory,
                                               upstream: DemoUpstream) -> None:
    """deny, admit, would-deny, evict and would-evict each leave one record, and the report
    counts them per restriction with its legal basis."""
    audit = tmp_path / "audit" / "audit.jsonl"
    key = tmp_path / "audit.key"
    key.write_bytes(b"k" * 32)
    server = await proxies.start(upstream.url, RESTRICTIONS, {
        "audit": {"path": str(audit), "key_file": str(key)},
        "reload": {"watch_interval": 3600}})
    await Participant.join(server.url, "town-a", "carol", "127.0.1.80")  # deny
    await Participant.join(server.url, "town-a", "alice", "127.0.3.80")  # admit
    await Participant.join(server.url, "town-a", "ivan", "127.0.6.80")  # would-deny + admit
    await Participant.join(server.url, "standup", "bob", "127.0.1.81")  # not scoped
    hk, _ = await Participant.join(server.url, "town-b", "hana", "127.0.2.80")  # not scoped yet
    rewrite(server.state.config.restrictions.path, RESTRICTIONS
            + restriction("hk-b", ["HK"], ["town-b"])
            + restriction("us-b-dry", ["US"], ["town-b"], enforcement="dry-run"))
    await Participant.join(server.url, "town-b", "uma", "127.0.3.81")  # not scoped yet
    outcome = await server.reloader.reload("admin")  # evicts hana, would evict uma
    assert outcome.evicted == 1 and outcome.would_evict == 1
    assert (await hk.recv_until("geogate.denied"))["restriction"] == "hk-b"
    await Participant.join(server.url, "town-b", "vic", "127.0.3.82")  # would-deny + admit
    assert server.state.audit.flush(5)
    records = [AuditRecord.from_json(line) for line in audit.read_bytes().splitlines()]
    events = sorted((r.event.value, r.restriction or "-", r.meeting) for r in records)
    assert events == sorted([
        ("deny", "cn-a", "town-a"),
        ("admit", "-", "town-a"), ("admit", "-", "town-a"),
        ("would-deny", "ru-dry", "town-a"),
        ("admit", "-", "town-b"), ("would-deny", "us-b-dry", "town-b"),
        ("evict", "hk-b", "town-b"), ("would-evict", "us-b-dry", "town-b"),
    ])
    deny = next(r for r in records if r.event.value == "deny")
    assert deny.legal_basis == "Test order cn-a" and deny.authority == "Test Court"
    assert deny.region == "CN" and deny.resolved == "database" and deny.reason == "region"
    assert deny.address == "127.0.1.0/24"
    assert deny.participant is not None and deny.participant.startswith("p:")
    assert "carol" not in audit.read_text()
    assert deny.geoip_build == server.state.geo.build_epoch
    evict = next(r for r in records if r.event.value == "evict")
    assert evict.kind == "reeval" and evict.config_version == str(
        server.state.snapshot.restrictions.version)

    report = build_report(load_records([audit]))
    by_id = {r.id: r for r in report.restrictions}
    assert by_id["cn-a"].counts.denials == 1 and by_id["hk-b"].counts.evictions == 1
    assert by_id["ru-dry"].counts.would_denials == 1
    assert by_id["us-b-dry"].counts.would_evictions == 1


async def test_report_command_renders_markdown(tmp_path: Path, proxies: ProxyFactory,
                                               upstream: DemoUpstream,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """geogate report prints a Markdown report naming the restriction and its legal basis."""
    audit = tmp_path / "audit.jsonl"
    server = await proxies.start(upstream.url, RESTRICTIONS, {"audit": {"path": str(audit)}})
    await Participant.join(server.url, "town-a", "carol", "127.0.1.82")
    assert server.state.audit.flush(5)
    capsys.readouterr()
    assert main(["report", str(audit)]) == 0
    text = capsys.readouterr().out
    assert "cn-a" in text and "Test order cn-a" in text and "Test Court" in text
    assert main(["report", str(audit), "--format", "csv"]) == 0
    assert "cn-a" in capsys.readouterr().out
