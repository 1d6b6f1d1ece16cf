"""Tests for proxy.admin: a real admin server on 127.0.0.1, real HTTP requests, an in-test proxy."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.admin import AdminController, AdminServer, create_app, read_token
from proxy.errors import ConfigError, ConfigIssue
from proxy.metrics import CONTENT_TYPE

TOKEN = "s3cret-Token_0.1~+/=="
TIMEOUT = aiohttp.ClientTimeout(total=10)
AUTH = {"Authorization": f"Bearer {TOKEN}"}

#: Every route that needs the token, with a body that makes it succeed.
PROTECTED: list[tuple[str, str, dict[str, object] | None]] = [
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/sessions", None),
    ("GET", "/v1/restrictions", None),
    ("POST", "/v1/check", {"id": "draft", "regions": ["CN"]}),
    ("POST", "/v1/reload", None),
]


class FakeProxy:
    """An in-test AdminController with canned answers that records what it was asked."""

    def __init__(self) -> None:
        self.alive = True
        self.checks: dict[str, tuple[bool, str]] = {
            "config": (True, "version v1"),
            "geoip": (True, "built 2024-01-01"),
            "upstream": (True, "ws://127.0.0.1:8090/ reachable"),
            "audit": (True, "0 pending"),
        }
        self.text = "# HELP x X.\n# TYPE x gauge\nx 1.0\n"
        self.open_sessions: list[dict[str, object]] = [
            {"id": 1, "meeting": "board", "participant": "p1", "region": "DE", "resolved": True,
             "since": "2024-05-01T10:00:00Z"},
            {"id": 2, "meeting": "townhall", "participant": "p2", "region": "RU",
             "resolved": True, "since": "2024-05-01T10:01:00Z"},
        ]
        self.meetings_asked: list[str | None] = []
        self.info: dict[str, object] = {
            "version": "v1", "loaded_at": "2024-05-01T09:00:00Z",
            "restrictions": [{"id": "r1", "mode": "block", "regions": ["CN"]}],
            "last_reload": None,
        }
        self.drafts: list[dict[str, object]] = []
        self.reasons: list[str] = []
        self.reload_result: dict[str, object] = {
            "ok": True, "version": "v2", "error": None, "evicted": 1, "would_evict": 0,
        }
        self.reload_gate: asyncio.Event | None = None
        self.reload_entered = asyncio.Event()
        self.reloading = 0
        self.most_reloading = 0
        self.fail_with: Exception | None = None

    def healthy(self) -> bool:
        return self.alive

    def readiness(self) -> dict[str, tuple[bool, str]]:
        return self.checks

    def metrics_text(self) -> str:
        return self.text

    def sessions(self, meeting: str | None) -> list[dict[str, object]]:
        self.meetings_asked.append(meeting)
        return [s for s in self.open_sessions if meeting is None or s["meeting"] == meeting]

    def restrictions_info(self) -> dict[str, object]:
        if self.fail_with is not None:
            raise self.fail_with
        return self.info

    async def check(self, draft: dict[str, object]) -> dict[str, object]:
        self.drafts.append(draft)
        if "regions" not in draft or draft["regions"] == ["XX"]:
            raise ConfigError([
                ConfigIssue("<draft>", "regions[0]", "'XX' is not an ISO 3166 code", 3),
                ConfigIssue("<draft>", "legal_basis", "required", None),
            ])
        return {"would_evict": [{"id": 2, "meeting": "townhall"}], "regions": {"CN"},
                "file": Path("/etc/geogate/restrictions.toml")}

    async def reload(self, reason: str) -> dict[str, object]:
        self.reasons.append(reason)
        self.reload_entered.set()
        self.reloading += 1
        self.most_reloading = max(self.most_reloading, self.reloading)
        try:
            if self.reload_gate is not None:
                await self.reload_gate.wait()
        finally:
            self.reloading -= 1
        return self.reload_result


def test_fake_proxy_implements_the_protocol() -> None:
    """The in-test controller satisfies AdminController (checked by mypy on this assignment)."""
    controller: AdminController = FakeProxy()
    assert controller.healthy()


Start = Callable[..., Awaitable[tuple[AdminServer, FakeProxy]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Starts admin servers on free loopback ports; every one is closed when the test ends."""
    servers: list[AdminServer] = []

    async def factory(**kwargs: Any) -> tuple[AdminServer, FakeProxy]:
        proxy = FakeProxy()
        kwargs.setdefault("token", TOKEN)
        server = AdminServer(proxy, "127.0.0.1", 0, **kwargs)
        await server.start()
        servers.append(server)
        return server, proxy

    try:
        yield factory
    finally:
        for server in servers:
            await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that ignores proxy environment variables."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


@pytest.fixture
async def admin(start: Start) -> tuple[AdminServer, FakeProxy]:
    """One admin server with the test token."""
    return await start()


# ---- health and authorization --------------------------------------------------------------------


async def test_healthz_needs_no_token(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """GET /healthz answers 200 {"status": "ok"} without a token."""
    server, _ = admin
    async with http.get(f"{server.url}/healthz") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"status": "ok"}


async def test_healthz_reports_an_unhealthy_controller(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """GET /healthz answers 503 when the controller says it is not healthy."""
    server, proxy = admin
    proxy.alive = False
    async with http.get(f"{server.url}/healthz") as response:
        assert response.status == 503
        assert await response.json() == {"status": "unhealthy"}


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_missing_token_is_challenged(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession,
    method: str, path: str, body: dict[str, object] | None,
) -> None:
    """Without a token every route but /healthz is 401 with a Bearer challenge."""
    server, proxy = admin
    async with http.request(method, f"{server.url}{path}", json=body) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="geogate"'
        assert await response.json() == {"error": "a bearer token is required"}
    assert proxy.drafts == [] and proxy.reasons == []


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_wrong_token_is_forbidden(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession,
    method: str, path: str, body: dict[str, object] | None,
) -> None:
    """With a wrong token every route but /healthz is 403 and the controller is not called."""
    server, proxy = admin
    headers = {"Authorization": f"Bearer {TOKEN}x"}
    async with http.request(method, f"{server.url}{path}", json=body, headers=headers) as response:
        assert response.status == 403
        assert "WWW-Authenticate" not in response.headers
        assert await response.json() == {"error": "the bearer token is not valid"}
    assert proxy.drafts == [] and proxy.reasons == []


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_right_token_is_served(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession,
    method: str, path: str, body: dict[str, object] | None,
) -> None:
    """With the token every route answers 200."""
    server, _ = admin
    async with http.request(method, f"{server.url}{path}", json=body, headers=AUTH) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    "header",
    ["", f"Basic {TOKEN}", "Bearer", "Bearer    ", TOKEN],
)
async def test_malformed_authorization_is_challenged(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession, header: str
) -> None:
    """Another scheme, an empty token or a bare token get 401, as if no token were sent."""
    server, _ = admin
    async with http.get(f"{server.url}/readyz", headers={"Authorization": header}) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="geogate"'


async def test_bearer_scheme_is_case_insensitive(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """The auth-scheme matches in any case (RFC 9110 section 11.1)."""
    server, _ = admin
    headers = {"Authorization": f"bEARER {TOKEN}"}
    async with http.get(f"{server.url}/readyz", headers=headers) as response:
        assert response.status == 200


async def test_unknown_path_needs_the_token_before_a_404(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """An unknown path is 401 without a token (no route probing), a JSON 404 with one."""
    server, _ = admin
    async with http.get(f"{server.url}/v1/nope") as response:
        assert response.status == 401
    async with http.get(f"{server.url}/v1/nope", headers=AUTH) as response:
        assert response.status == 404
        assert await response.json() == {"error": "Not Found"}


async def test_wrong_method_is_a_json_405_with_allow(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """GET on a POST route is 405 as JSON, keeping the Allow header."""
    server, proxy = admin
    async with http.get(f"{server.url}/v1/reload", headers=AUTH) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert await response.json() == {"error": "Method Not Allowed"}
    assert proxy.reasons == []


async def test_controller_failure_is_a_json_500(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """An unexpected exception in the controller is a 500 with a generic JSON error."""
    server, proxy = admin
    proxy.fail_with = RuntimeError("secret detail")
    async with http.get(f"{server.url}/v1/restrictions", headers=AUTH) as response:
        assert response.status == 500
        assert await response.json() == {"error": "internal error"}


# ---- readiness, metrics, sessions, restrictions --------------------------------------------------


async def test_readyz_is_200_when_every_check_passes(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """GET /readyz is 200 and lists each check with its detail."""
    server, _ = admin
    async with http.get(f"{server.url}/readyz", headers=AUTH) as response:
        assert response.status == 200
        body = await response.json()
    assert body["ready"] is True
    assert body["checks"]["geoip"] == {"ok": True, "detail": "built 2024-01-01"}
    assert set(body["checks"]) == {"config", "geoip", "upstream", "audit"}


async def test_readyz_is_503_when_a_check_fails(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """GET /readyz is 503 when one check fails, and says which."""
    server, proxy = admin
    proxy.checks["upstream"] = (False, "connection refused")
    async with http.get(f"{server.url}/readyz", headers=AUTH) as response:
        assert response.status == 503
        body = await response.json()
    assert body["ready"] is False
    assert body["checks"]["upstream"] == {"ok": False, "detail": "connection refused"}
    assert body["checks"]["config"]["ok"] is True


async def test_metrics_is_prometheus_text(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """GET /metrics serves the controller's text as text/plain; version=0.0.4."""
    server, proxy = admin
    async with http.get(f"{server.url}/metrics", headers=AUTH) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE
        assert await response.text() == proxy.text


async def test_sessions_lists_all_or_one_meeting(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """GET /v1/sessions lists every session; ?meeting= narrows, and an empty one does not."""
    server, proxy = admin
    async with http.get(f"{server.url}/v1/sessions", headers=AUTH) as response:
        everyone = await response.json()
    async with http.get(f"{server.url}/v1/sessions", params={"meeting": "board"},
                        headers=AUTH) as response:
        board = await response.json()
    async with http.get(f"{server.url}/v1/sessions?meeting=", headers=AUTH) as response:
        empty = await response.json()
    assert proxy.meetings_asked == [None, "board", None]
    assert everyone == {"meeting": None, "count": 2, "sessions": proxy.open_sessions}
    assert board["count"] == 1 and board["sessions"][0]["participant"] == "p1"
    assert empty["count"] == 2


async def test_restrictions_are_passed_through(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """GET /v1/restrictions returns the controller's description unchanged."""
    server, proxy = admin
    async with http.get(f"{server.url}/v1/restrictions", headers=AUTH) as response:
        assert response.status == 200
        assert await response.json() == proxy.info


# ---- check ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True])
async def test_check_takes_a_draft_or_a_wrapped_draft(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession, wrapped: bool
) -> None:
    """POST /v1/check passes the draft to the controller, bare or as {"restriction": ...}."""
    server, proxy = admin
    draft = {"id": "draft", "mode": "block", "regions": ["CN"], "meetings": ["*"]}
    body = {"restriction": draft} if wrapped else draft
    async with http.post(f"{server.url}/v1/check", json=body, headers=AUTH) as response:
        assert response.status == 200
        result = await response.json()
    assert proxy.drafts == [draft]
    assert result == {"would_evict": [{"id": 2, "meeting": "townhall"}], "regions": ["CN"],
                      "file": "/etc/geogate/restrictions.toml"}


async def test_check_lists_config_issues_as_400(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """An invalid draft is 400 with every issue as {path, message, line}."""
    server, _ = admin
    draft = {"id": "bad", "regions": ["XX"]}
    async with http.post(f"{server.url}/v1/check", json=draft, headers=AUTH) as response:
        assert response.status == 400
        body = await response.json()
    assert body == {
        "error": "the restriction is not valid",
        "issues": [
            {"path": "regions[0]", "message": "'XX' is not an ISO 3166 code", "line": 3},
            {"path": "legal_basis", "message": "required", "line": None},
        ],
    }


async def test_check_refuses_non_json_with_415(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """A body that is not application/json is 415 and never reaches the controller."""
    server, proxy = admin
    headers = {**AUTH, "Content-Type": "text/plain"}
    async with http.post(f"{server.url}/v1/check", data=b'{"id": "x"}',
                         headers=headers) as response:
        assert response.status == 415
        assert "application/json" in (await response.json())["error"]
    assert proxy.drafts == []


async def test_check_accepts_structured_json_types(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """An application/*+json body is JSON too (RFC 6839)."""
    server, proxy = admin
    headers = {**AUTH, "Content-Type": "application/merge-patch+json"}
    async with http.post(f"{server.url}/v1/check", data=b'{"regions": ["CN"]}',
                         headers=headers) as response:
        assert response.status == 200
    assert proxy.drafts == [{"regions": ["CN"]}]


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"{not json", "not valid JSON"), (b'["CN"]', "expected a JSON object"),
     (b'"CN"', "expected a JSON object"), (b"", "JSON body is required")],
)
async def test_check_refuses_bad_bodies_with_400(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession, data: bytes, message: str
) -> None:
    """Malformed JSON, a non-object or no body at all is 400 and never reaches the controller."""
    server, proxy = admin
    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(f"{server.url}/v1/check", data=data, headers=headers) as response:
        assert response.status == 400
        assert message in (await response.json())["error"]
    assert proxy.drafts == []


async def test_check_refuses_an_oversized_body_with_413(
    start: Start, http: aiohttp.ClientSession
) -> None:
    """A body over the limit, announced by Content-Length, is 413."""
    server, proxy = await start(max_body=64)
    body = {"id": "x" * 100, "regions": ["CN"]}
    async with http.post(f"{server.url}/v1/check", json=body, headers=AUTH) as response:
        assert response.status == 413
        assert "64 bytes" in (await response.json())["error"]
    assert proxy.drafts == []


async def test_check_refuses_an_oversized_chunked_body_with_413(
    start: Start, http: aiohttp.ClientSession
) -> None:
    """A chunked body (no Content-Length) that grows past the limit is 413 too."""
    server, proxy = await start(max_body=64)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"id": "' + b"x" * 100 + b'", "regions": ["CN"]}'

    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(f"{server.url}/v1/check", data=chunks(), headers=headers) as response:
        assert response.status == 413
        assert "error" in await response.json()
    assert proxy.drafts == []


async def test_default_body_limit_is_one_mebibyte(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """By default a body just over 1 MiB is refused with 413."""
    server, proxy = admin
    data = io.BytesIO(b'{"regions": ["' + b"C" * (1024 * 1024) + b'"]}')
    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(f"{server.url}/v1/check", data=data, headers=headers) as response:
        assert response.status == 413
    assert proxy.drafts == []


# ---- reload --------------------------------------------------------------------------------------


async def test_reload_passes_the_result_through(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """POST /v1/reload returns the controller's result with 200 when it went in force."""
    server, proxy = admin
    async with http.post(f"{server.url}/v1/reload", json={"reason": " ticket 42 "},
                         headers=AUTH) as response:
        assert response.status == 200
        assert await response.json() == proxy.reload_result
    assert proxy.reasons == ["ticket 42"]


async def test_failed_reload_is_422_with_the_result(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """A reload that kept the old configuration answers 422 with the controller's result."""
    server, proxy = admin
    proxy.reload_result = {"ok": False, "version": "v1", "error": "restrictions.toml:3: bad",
                           "evicted": 0, "would_evict": 0}
    async with http.post(f"{server.url}/v1/reload", headers=AUTH) as response:
        assert response.status == 422
        assert await response.json() == proxy.reload_result
    assert proxy.reasons == ["admin API"]


@pytest.mark.parametrize(
    "body",
    [{"reason": ""}, {"reason": 5}, {"reason": "x" * 201}, {"why": "x"}, ["x"]],
)
async def test_reload_refuses_a_bad_reason(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession, body: object
) -> None:
    """A reload body other than {"reason": <short text>} is 400 and nothing is reloaded."""
    server, proxy = admin
    async with http.post(f"{server.url}/v1/reload", json=body, headers=AUTH) as response:
        assert response.status == 400
    assert proxy.reasons == []


async def test_concurrent_reloads_run_one_at_a_time(
    admin: tuple[AdminServer, FakeProxy], http: aiohttp.ClientSession
) -> None:
    """Two reload requests at once reach the controller one after the other."""
    server, proxy = admin
    proxy.reload_gate = asyncio.Event()

    async def reload(reason: str) -> int:
        async with http.post(f"{server.url}/v1/reload", json={"reason": reason},
                             headers=AUTH) as response:
            return response.status

    first = asyncio.create_task(reload("one"))
    second = asyncio.create_task(reload("two"))
    await asyncio.wait_for(proxy.reload_entered.wait(), 10)
    # The first reload is blocked on the gate; give the second request every chance to arrive.
    async with http.get(f"{server.url}/readyz", headers=AUTH) as response:
        assert response.status == 200
    assert proxy.reloading == 1
    proxy.reload_gate.set()
    statuses = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert list(statuses) == [200, 200]
    assert sorted(proxy.reasons) == ["one", "two"]
    assert proxy.most_reloading == 1


# ---- tokens and server lifecycle -----------------------------------------------------------------


def test_no_token_refuses_to_start() -> None:
    """Without a token the server and the app refuse, naming admin.token_file."""
    with pytest.raises(ConfigError) as caught:
        AdminServer(FakeProxy(), "127.0.0.1", 0, None)
    assert caught.value.issues[0].path == "admin.token_file"
    with pytest.raises(ConfigError):
        create_app(FakeProxy(), None)


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "tök"])
def test_unusable_tokens_are_refused(token: str) -> None:
    """A token that cannot travel in a Bearer header is refused up front."""
    with pytest.raises(ConfigError, match="bearer token"):
        AdminServer(FakeProxy(), "127.0.0.1", 0, token)


async def test_allow_no_token_serves_without_auth(
    start: Start, http: aiohttp.ClientSession
) -> None:
    """allow_no_token=True (tests only) serves every route without Authorization."""
    server, _ = await start(token=None, allow_no_token=True)
    async with http.get(f"{server.url}/v1/restrictions") as response:
        assert response.status == 200


async def test_server_binds_a_free_port_and_closes(http: aiohttp.ClientSession) -> None:
    """Port 0 picks a free port, readable after start; close stops serving and is idempotent."""
    server = AdminServer(FakeProxy(), "127.0.0.1", 0, TOKEN)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    async with server:
        port = server.port
        assert port > 0
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
    await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"http://127.0.0.1:{port}/healthz"):
            pass


async def test_starting_twice_is_refused(start: Start) -> None:
    """start() on a running server raises rather than binding a second listener."""
    server, _ = await start()
    with pytest.raises(RuntimeError, match="already started"):
        await server.start()


def test_read_token_strips_whitespace(tmp_path: Path) -> None:
    """The token is the file's content without surrounding whitespace."""
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert read_token(path) == TOKEN


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read"), ("  \n", "empty"), ("one\ntwo\n", "cannot carry"),
     (b"\xff\xfe", "cannot read")],
)
def test_read_token_errors_name_the_file(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    """A missing, empty, multi-line or undecodable token file is a ConfigError naming the file."""
    path = tmp_path / "token"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        read_token(path)
    assert caught.value.issues[0].file == str(path)
