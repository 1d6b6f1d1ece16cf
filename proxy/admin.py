"""The admin HTTP server: health, readiness, metrics, sessions, restrictions, check and reload.

A thin edge over aiohttp: every route turns a request into one call on an :class:`AdminController`
(implemented by the proxy) and its result into JSON (orjson), or Prometheus text for ``/metrics``.

Routes::

    GET  /healthz            no token; 200 {"status": "ok"} while the event loop answers
    GET  /readyz             200 when every readiness check passes, else 503; lists the checks
    GET  /metrics            text exposition format 0.0.4
    GET  /v1/sessions        open sessions; ``?meeting=`` narrows to one meeting
    GET  /v1/restrictions    the restrictions in force, their version and the last reload
    POST /v1/check           a draft restriction -> the open sessions it would evict (400: invalid)
    POST /v1/reload          reload the configuration; 200 when it went in force, else 422

Every route but ``/healthz`` requires ``Authorization: Bearer <token>`` (RFC 6750): without one
the answer is 401 with a ``WWW-Authenticate`` challenge, with a wrong one 403. An admin server
without a token refuses to start unless ``allow_no_token`` says so (tests only): this surface can
reload the configuration and list every participant's region. Errors are JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from pathlib import Path
from typing import Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.errors import ConfigError, ConfigIssue
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

__all__ = [
    "DEFAULT_MAX_BODY",
    "AdminController",
    "AdminServer",
    "create_app",
    "read_token",
]

log = logging.getLogger("proxy.admin")

#: Largest request body accepted (a draft restriction is a few hundred bytes).
DEFAULT_MAX_BODY = 1024 * 1024

#: The challenge sent with 401 (RFC 6750 section 3).
_CHALLENGE = 'Bearer realm="geogate"'

#: RFC 6750 section 2.1 b64token: what a bearer token may contain to fit in the header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

#: Longest ``reason`` accepted for a reload; it goes to the log and the audit trail.
_MAX_REASON = 200


class AdminController(Protocol):
    """What the admin server needs from the proxy."""

    def healthy(self) -> bool:
        """Whether the process is alive (the event loop answered, so normally True)."""
        ...

    def readiness(self) -> dict[str, tuple[bool, str]]:
        """Named checks ("config", "geoip", "upstream", "audit"), each (ok, detail)."""
        ...

    def metrics_text(self) -> str:
        """The metrics in text exposition format 0.0.4."""
        ...

    def sessions(self, meeting: str | None) -> list[dict[str, object]]:
        """Open sessions, or one meeting's: id, meeting, participant, region, resolved, since."""
        ...

    def restrictions_info(self) -> dict[str, object]:
        """The version, load time and restrictions in force, and the last reload's result."""
        ...

    async def check(self, draft: dict[str, object]) -> dict[str, object]:
        """Which open sessions a draft restriction (restrictions-file keys) would evict.

        Raises:
            ConfigError: the draft is not a valid restriction.
        """
        ...

    async def reload(self, reason: str) -> dict[str, object]:
        """Reload the configuration: ok, version, error, evicted, would_evict."""
        ...


_CONTROLLER = web.AppKey("geogate.admin.controller", AdminController)
_RELOAD_LOCK = web.AppKey("geogate.admin.reload_lock", asyncio.Lock)
_MAX_BODY = web.AppKey("geogate.admin.max_body", int)


# --------------------------------------------------------------------------------------------------
# Responses.


def _json_default(value: object) -> object:
    # orjson handles dataclasses, enums and datetimes itself; these are the other usual suspects.
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(data, default=_json_default)
    return web.Response(body=body, status=status, headers=headers,
                        content_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status, headers)


# --------------------------------------------------------------------------------------------------
# Authorization and error translation.


def _require_token(token: str | None, allow_no_token: bool) -> None:
    if token is None:
        if not allow_no_token:
            raise ConfigError(ConfigIssue(
                "", "admin.token_file",
                "the admin server needs a bearer token: set admin.token_file (an admin surface "
                "without authentication can reload the configuration and list participants)",
            ))
        return
    if not _B64TOKEN.fullmatch(token):
        raise ConfigError(ConfigIssue(
            "", "admin.token_file",
            "the admin token is empty or has characters a bearer token cannot carry; expected "
            "letters, digits and -._~+/ (RFC 6750 section 2.1)",
        ))


def _authorize(header: str | None, token: bytes) -> web.Response | None:
    """None when ``header`` carries the token, else the 401 or 403 to answer with."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    credentials = credentials.strip()
    # The auth-scheme is case-insensitive (RFC 9110 section 11.1).
    if scheme.lower() != "bearer" or not credentials:
        return _error(401, "a bearer token is required", {"WWW-Authenticate": _CHALLENGE})
    # Constant-time comparison: the token must not leak through response timing.
    if not hmac.compare_digest(credentials.encode(), token):
        return _error(403, "the bearer token is not valid")
    return None


#: Headers of an aiohttp HTTPException that describe its own text body, not ours.
_BODY_HEADERS = frozenset({"content-type", "content-length"})


def _guard(token: str | None) -> Middleware:
    """Middleware: check the token, then turn every failure into a JSON error."""
    secret = token.encode() if token is not None else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Checked before routing results are used, so unknown paths do not reveal the route table.
        if secret is not None and request.path != "/healthz":
            refusal = _authorize(request.headers.get("Authorization"), secret)
            if refusal is not None:
                return refusal
        try:
            return await handler(request)
        except web.HTTPException as exc:
            # aiohttp's own 404, 405 (with Allow) and 413, re-rendered as JSON.
            headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
            return _error(exc.status, exc.reason, headers)
        except Exception:
            log.exception("admin %s %s failed", request.method, request.path)
            return _error(500, "internal error")

    return guard


# --------------------------------------------------------------------------------------------------
# Request bodies.


def _is_json(content_type: str) -> bool:
    # application/json, or any structured +json type (RFC 6839 section 3.1).
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def _read_json(request: web.Request, *, required: bool) -> object | web.Response:
    """The request's JSON body (None when absent and not required), or the error to answer."""
    limit = request.app[_MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        return _error(413, f"the body is larger than {limit} bytes")
    if not request.body_exists:
        return _error(400, "a JSON body is required") if required else None
    if not _is_json(request.content_type):
        return _error(415, f"expected application/json, not {request.content_type}")
    body = await request.read()  # bounded by client_max_size: raises 413 past the limit
    try:
        data: object = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _error(400, f"the body is not valid JSON: {exc}")
    return data


# --------------------------------------------------------------------------------------------------
# Handlers.


async def _healthz(request: web.Request) -> web.Response:
    if not request.app[_CONTROLLER].healthy():
        return _json({"status": "unhealthy"}, 503)
    return _json({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    checks = request.app[_CONTROLLER].readiness()
    ready = all(ok for ok, _ in checks.values())
    body = {
        "ready": ready,
        "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
    }
    return _json(body, 200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    text = request.app[_CONTROLLER].metrics_text()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _sessions(request: web.Request) -> web.Response:
    meeting = request.query.get("meeting") or None
    sessions = request.app[_CONTROLLER].sessions(meeting)
    return _json({"meeting": meeting, "count": len(sessions), "sessions": sessions})


async def _restrictions(request: web.Request) -> web.Response:
    return _json(request.app[_CONTROLLER].restrictions_info())


async def _check(request: web.Request) -> web.Response:
    body = await _read_json(request, required=True)
    if isinstance(body, web.Response):
        return body
    # Either the draft itself, or {"restriction": {...}} as a [[restriction]] table reads in JSON.
    if isinstance(body, dict) and body.keys() == {"restriction"}:
        body = body["restriction"]
    if not isinstance(body, dict):
        return _error(400, "expected a JSON object: a restriction, or {\"restriction\": {...}}")
    try:
        result = await request.app[_CONTROLLER].check(body)
    except ConfigError as exc:
        issues = [
            {"path": issue.path, "message": issue.message, "line": issue.line}
            for issue in exc.issues
        ]
        return _json({"error": "the restriction is not valid", "issues": issues}, 400)
    return _json(result)


async def _reload(request: web.Request) -> web.Response:
    body = await _read_json(request, required=False)
    if isinstance(body, web.Response):
        return body
    reason = "admin API"
    if body is not None:
        if not isinstance(body, dict) or not body.keys() <= {"reason"}:
            return _error(400, "expected an empty body or {\"reason\": \"...\"}")
        given = body.get("reason", reason)
        if not isinstance(given, str) or not given.strip() or len(given) > _MAX_REASON:
            return _error(400, f"reason must be a non-empty string of at most {_MAX_REASON} "
                               "characters")
        reason = given.strip()
    log.info("reload requested by %s: %s", request.remote, reason)
    # One reload at a time: a second request waits and then reloads what is on disk by then.
    async with request.app[_RELOAD_LOCK]:
        result = await request.app[_CONTROLLER].reload(reason)
    return _json(result, 200 if result.get("ok") else 422)


# --------------------------------------------------------------------------------------------------
# Application and server.


def create_app(
    controller: AdminController,
    token: str | None,
    *,
    allow_no_token: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
) -> web.Application:
    """Build the admin application.

    Args:
        controller: the proxy, as the admin server sees it.
        token: the bearer token every route but ``/healthz`` requires.
        allow_no_token: accept ``token=None`` and serve without authentication (tests only).
        max_body: largest request body accepted, in bytes (larger: 413).

    Returns:
        The application, ready for an aiohttp runner.

    Raises:
        ConfigError: ``token`` is None (unless allowed), empty, or not a valid bearer token.
        ValueError: ``max_body`` is under 1.
    """
    _require_token(token, allow_no_token)
    if max_body < 1:
        raise ValueError(f"max_body must be at least 1 byte, not {max_body}")
    app = web.Application(middlewares=[_guard(token)], client_max_size=max_body)
    app[_CONTROLLER] = controller
    app[_RELOAD_LOCK] = asyncio.Lock()
    app[_MAX_BODY] = max_body
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/sessions", _sessions)
    app.router.add_get("/v1/restrictions", _restrictions)
    app.router.add_post("/v1/check", _check)
    app.router.add_post("/v1/reload", _reload)
    return app


class AdminServer:
    """The admin application on a TCP listener.

    Args:
        controller: the proxy, as the admin server sees it.
        host: the address to bind (keep it on loopback or a management network).
        port: the port; 0 picks a free one (see :attr:`port`).
        token: the bearer token; None only with ``allow_no_token``.
        allow_no_token: serve without authentication (tests only).
        access_log: log every request to ``proxy.admin.access``.
        max_body: largest request body accepted, in bytes (larger: 413).
        shutdown_timeout: seconds :meth:`close` waits for requests in flight.

    Raises:
        ConfigError: ``token`` is None (unless allowed), empty, or not a valid bearer token.
    """

    def __init__(
        self,
        controller: AdminController,
        host: str,
        port: int,
        token: str | None,
        *,
        allow_no_token: bool = False,
        access_log: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
        shutdown_timeout: float = 5.0,
    ) -> None:
        _require_token(token, allow_no_token)  # refuse before anything is bound
        self.controller = controller
        self.host = host
        self._port = port
        self.token = token
        self.allow_no_token = allow_no_token
        self.access_log = access_log
        self.max_body = max_body
        self.shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the admin server is not started")
        return int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        """The server's base URL (after :meth:`start`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind the listener and serve.

        Raises:
            OSError: the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the admin server is already started")
        app = create_app(self.controller, self.token, allow_no_token=self.allow_no_token,
                         max_body=self.max_body)
        runner = web.AppRunner(
            app,
            access_log=logging.getLogger("proxy.admin.access") if self.access_log else None,
            shutdown_timeout=self.shutdown_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("admin server listening on %s", self.url)

    async def close(self) -> None:
        """Stop listening and release the server (requests in flight get ``shutdown_timeout``)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def read_token(path: Path) -> str:
    """Read the admin bearer token from a file (surrounding whitespace stripped).

    Args:
        path: the token file.

    Returns:
        The token.

    Raises:
        ConfigError: the file cannot be read, is empty, or holds something that is not a bearer
            token; the issue names the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(ConfigIssue(str(path), "", f"cannot read the admin token: {detail}")
                          ) from None
    token = text.strip()
    if not token:
        raise ConfigError(ConfigIssue(str(path), "", "the admin token file is empty"))
    if not _B64TOKEN.fullmatch(token):
        raise ConfigError(ConfigIssue(
            str(path), "", "the admin token has characters a bearer token cannot carry; expected "
                           "one line of letters, digits and -._~+/ (RFC 6750 section 2.1)",
        ))
    return token
