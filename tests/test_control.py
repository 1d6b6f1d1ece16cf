"""The admin surface of a real proxy: token, sessions, restrictions, check, reload, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.demo_upstream import DemoUpstream
from proxy.server import Server
from tests.helpers.proxy import Participant, ProxyFactory
from tests.test_reload import CN_A, UNRELATED, rewrite, run_change

TOKEN = "s3cret-token-for-tests"


async def admin_proxy(tmp_path: Path, proxies: ProxyFactory, upstream_url: str,
                      restrictions: str = UNRELATED) -> Server:
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    return await proxies.start(upstream_url, restrictions, {
        "admin": {"enabled": True, "host": "127.0.0.1", "port": 0,
                  "token_file": str(token_file)},
        "reload": {"watch_interval": 3600},  # only the admin endpoint reloads here
    })


async def call(server: Server, method: str, path: str, *, token: str | None = TOKEN,
               json: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, http.request(
            method, f"{server.admin.url}{path}", headers=headers, json=json) as response:
        body = await response.json(content_type=None) if path != "/metrics" else \
            await response.text()
        return response.status, body


async def test_token_is_required_except_for_healthz(tmp_path: Path, proxies: ProxyFactory,
                                                    upstream: DemoUpstream) -> None:
    """Every admin endpoint but /healthz refuses a missing (401) or wrong (403) token."""
    server = await admin_proxy(tmp_path, proxies, upstream.url)
    assert (await call(server, "GET", "/healthz", token=None))[0] == 200
    for method, path in (("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/sessions"),
                         ("GET", "/v1/restrictions"), ("POST", "/v1/reload")):
        assert (await call(server, method, path, token=None))[0] == 401, path
        assert (await call(server, method, path, token="wrong"))[0] == 403, path


async def test_sessions_and_restrictions(tmp_path: Path, proxies: ProxyFactory,
                                         upstream: DemoUpstream) -> None:
    """/v1/sessions lists who is connected and where from; /v1/restrictions the set in force."""
    server = await admin_proxy(tmp_path, proxies, upstream.url, UNRELATED + CN_A)
    await Participant.join(server.url, "town-a", "alice", "127.0.3.130")
    await Participant.join(server.url, "town-b", "bob", "127.0.1.60")
    status, body = await call(server, "GET", "/v1/sessions")
    assert status == 200 and body["count"] == 2
    status, body = await call(server, "GET", "/v1/sessions?meeting=town-a")
    (alice,) = body["sessions"]
    assert alice["participant"] == "alice" and alice["region"] == "US-CA"
    assert alice["resolved"] == "database" and alice["since"].endswith("Z")
    status, body = await call(server, "GET", "/v1/restrictions")
    assert status == 200 and body["version"] == str(server.state.snapshot.version)
    ids = [r["id"] for r in body["restrictions"]]
    assert ids == ["cn-a", "other"] and body["in_force"] == ["cn-a", "other"]
    assert body["restrictions"][0]["legal_basis"] == "Test order cn-a"


async def test_check_answers_before_enforcing(tmp_path: Path, proxies: ProxyFactory,
                                              upstream: DemoUpstream) -> None:
    """POST /v1/check names the open sessions a draft would evict, and evicts nobody."""
    server = await admin_proxy(tmp_path, proxies, upstream.url)
    await Participant.join(server.url, "town-a", "carol", "127.0.1.61")
    await Participant.join(server.url, "town-a", "dave", "127.0.2.61")
    await Participant.join(server.url, "town-b", "erin", "127.0.1.62")
    draft = {"id": "draft-cn", "mode": "block", "regions": ["CN"], "meetings": ["town-a"],
             "legal_basis": "Draft order", "authority": "Court"}
    status, body = await call(server, "POST", "/v1/check", json=draft)
    assert status == 200 and body["would_evict"] == 1
    assert [s["participant"] for s in body["sessions"]] == ["carol"]
    assert len(server.state.registry) == 3
    status, body = await call(server, "POST", "/v1/check", json={**draft, "regions": ["CNN"]})
    assert status == 400 and "'CNN'" in str(body)


async def test_admin_reload_evicts_only_the_newly_barred(tmp_path: Path, proxies: ProxyFactory,
                                                         upstream: DemoUpstream) -> None:
    """POST /v1/reload after rewriting the file: the crowd check of the live-change tests."""
    server = await admin_proxy(tmp_path, proxies, upstream.url)
    path = server.state.config.restrictions.path

    async def change() -> None:
        rewrite(path, UNRELATED + CN_A)
        status, body = await call(server, "POST", "/v1/reload")
        assert status == 200 and body["ok"] and body["evicted"] == 14

    await run_change(server.url, upstream, change)


async def test_invalid_reload_is_visible(tmp_path: Path, proxies: ProxyFactory,
                                         upstream: DemoUpstream) -> None:
    """A refused reload answers 422 and shows on /v1/restrictions and /readyz."""
    server = await admin_proxy(tmp_path, proxies, upstream.url)
    rewrite(server.state.config.restrictions.path, "[[restriction]]\nid = 'x'\n")
    status, body = await call(server, "POST", "/v1/reload")
    assert status == 422 and not body["ok"] and "legal_basis" in body["error"]
    _, info = await call(server, "GET", "/v1/restrictions")
    assert info["last_reload"]["ok"] is False
    status, ready = await call(server, "GET", "/readyz")
    assert "last reload refused" in str(ready)


async def test_readiness_follows_the_upstream(tmp_path: Path, proxies: ProxyFactory) -> None:
    """/readyz is 200 with the upstream reachable, 503 once it is gone."""
    upstream = DemoUpstream()
    await upstream.start()
    server = await admin_proxy(tmp_path, proxies, upstream.url)
    await server.control.probe_now()
    status, body = await call(server, "GET", "/readyz")
    assert status == 200, body
    await upstream.close()
    await server.control.probe_now()
    status, body = await call(server, "GET", "/readyz")
    assert status == 503 and "upstream" in str(body)


async def test_metrics_count_joins_and_sessions(tmp_path: Path, proxies: ProxyFactory,
                                                upstream: DemoUpstream) -> None:
    """/metrics shows open sessions, joins by outcome and restriction, relay counters."""
    server = await admin_proxy(tmp_path, proxies, upstream.url, UNRELATED + CN_A)
    alice, _ = await Participant.join(server.url, "town-a", "alice", "127.0.3.70")
    await Participant.join(server.url, "town-a", "carol", "127.0.1.70")
    await alice.send({"type": "echo", "n": 1})
    await alice.recv()
    status, text = await call(server, "GET", "/metrics")
    assert status == 200
    assert "geogate_sessions_open 1.0" in text
    assert 'geogate_joins_total{outcome="admit",restriction=""} 1.0' in text
    assert 'geogate_joins_total{outcome="deny",restriction="cn-a"} 1.0' in text
    assert 'geogate_relay_messages_total{direction="client_to_upstream"} 2.0' in text
    assert "geogate_geoip_lookups_total" in text


async def test_admin_needs_a_token_file(tmp_path: Path, proxies: ProxyFactory,
                                        upstream: DemoUpstream) -> None:
    """An enabled admin server without a token file refuses to start."""
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match="token"):
        await proxies.start(upstream.url, UNRELATED, {"admin": {"enabled": True, "port": 0}})
