"""The ``url`` adapter: the meeting is named by the upgrade request (path, query, JWT).

The request decides everything before the upgrade: the URL and the token are fixed for the
connection, so no later message can change the meeting, and closing the upstream leg is the leave.
Pure: no I/O, except that the constructor reads ``jwt_public_key`` once.

Where the meeting comes from, in order of precedence:

1. a claim of a JWT (``meeting_claim``, dotted for nested claims: ``video.room`` is LiveKit's),
   when a token source is configured and the request carries a token;
2. the query parameter ``meeting_query``, when set;
3. the ``path_template``, such as ``/rooms/{meeting}`` or ``/v1/{meeting}/ws/{participant}``.

The participant comes likewise from ``participant_claim``, ``participant_query`` or
``{participant}`` in the template. Configure only the sources the upstream reads too: the upstream
always gets the same request.

Every meeting a request yields must be the same one: the proxy cannot know which one the upstream
reads, so a request whose token says ``a`` while its query says ``b`` is refused rather than gated
as ``a``. For the same reason a repeated query parameter, a repeated ``Authorization`` header or a
query token that differs from the header token are refused.

Tokens are verified when a key is configured: HS256 with ``jwt_secret``, RS256 with the PEM public
key ``jwt_public_key``; the signature and ``exp``/``nbf`` (30 s leeway) are checked, the audience is
not. With neither, tokens are decoded without verification, which is fine when the upstream verifies
them itself (it gets the same token): a forged token can then only name a meeting the upstream
refuses. A token that fails verification is refused with HTTP 401.
"""

from __future__ import annotations

import re
import string
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from proxy.adapters.base import Join, JoinKind
from proxy.adapters.json import MAX_ID_LENGTH
from proxy.config import UrlProtocolConfig
from proxy.errors import ConfigError, ConfigIssue, PolicyViolation
from proxy.handshake import Request

__all__ = ["JWT_LEEWAY", "UrlAdapter"]

JWT_LEEWAY: Final = 30.0
"""Seconds of clock skew allowed when checking ``exp`` and ``nbf`` (RFC 7519 section 4.1.4)."""

_KEY = "protocol.url"
_PLACEHOLDERS: Final = ("meeting", "participant")
_BRACED: Final = re.compile(r"\{([^{}]*)\}")
_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 section 2.3: unreserved characters; percent-encoded, they mean the same URI and are
# decoded before the template is matched (section 6.2.2.2), so "/r%6Foms/a" is "/rooms/a".
_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 7518 section 3.2: an HS256 key MUST be at least as long as the hash output (256 bits).
_MIN_HMAC_BYTES: Final = 32
# RFC 7518 section 3.3: an RS256 key MUST be 2048 bits or larger.
_MIN_RSA_BITS: Final = 2048


def _violation(detail: str, client_text: str) -> PolicyViolation:
    return PolicyViolation(detail, client_text=client_text)


def _invalid_token(detail: str) -> PolicyViolation:
    error = PolicyViolation(detail, client_text="invalid token")
    # RFC 6750 section 3.1: a token that is expired, revoked, malformed or invalid gets 401.
    error.http_status = 401
    return error


class UrlAdapter:
    """Reads the meeting and participant from the upgrade request.

    Tokens are verified only when ``jwt_secret`` or ``jwt_public_key`` is set; otherwise they
    are decoded without verification, which is fine when the upstream verifies them itself.

    Args:
        config: the ``[protocol.url]`` table.
        source: the config file, named in configuration errors.

    Raises:
        ConfigError: the path template is malformed or has no ``{meeting}``, a claim path has an
            empty name, a key is set without its algorithm in ``jwt_algorithms`` or without any
            token source, the secret is too short, or the public key file cannot be read or is
            not a PEM RSA public key of 2048 bits or more.
    """

    __slots__ = (
        "_jwt_header",
        "_jwt_query",
        "_keys",
        "_meeting_claim",
        "_meeting_query",
        "_participant_claim",
        "_participant_query",
        "_path",
    )

    name = "url"
    decides_at_upgrade = True

    def __init__(self, config: UrlProtocolConfig, *, source: str | Path = "<config>") -> None:
        issues: list[ConfigIssue] = []

        def issue(key: str, message: str) -> None:
            issues.append(ConfigIssue(str(source), f"{_KEY}.{key}", message))

        try:
            self._path: re.Pattern[str] = _compile_template(config.path_template)
        except ValueError as exc:
            issue("path_template", f"{config.path_template!r} is not valid: {exc}")
        self._meeting_query = config.meeting_query or None
        self._participant_query = config.participant_query or None
        self._jwt_query = config.jwt_query or None
        self._jwt_header = config.jwt_header
        self._meeting_claim = _claim_path(config.meeting_claim, "meeting_claim", issue)
        self._participant_claim = _claim_path(config.participant_claim, "participant_claim", issue)
        keys: dict[str, bytes | RSAPublicKey] = {}
        if config.jwt_secret:
            secret = config.jwt_secret.encode()
            if "HS256" not in config.jwt_algorithms:
                issue("jwt_secret", "a secret is set but 'HS256' is not in jwt_algorithms")
            elif len(secret) < _MIN_HMAC_BYTES:
                issue(
                    "jwt_secret",
                    f"the secret is {len(secret)} bytes; HS256 needs at least {_MIN_HMAC_BYTES} "
                    "(RFC 7518 section 3.2)",
                )
            else:
                keys["HS256"] = secret
        if config.jwt_public_key is not None:
            if "RS256" not in config.jwt_algorithms:
                issue("jwt_public_key", "a key is set but 'RS256' is not in jwt_algorithms")
            else:
                try:
                    keys["RS256"] = _load_rsa_key(config.jwt_public_key)
                except ValueError as exc:
                    issue("jwt_public_key", f"{str(config.jwt_public_key)!r}: {exc}")
        if (config.jwt_secret or config.jwt_public_key) and not (
            self._jwt_query or self._jwt_header
        ):
            issue(
                "jwt_query",
                "a JWT key is set but no token is read: set jwt_query or jwt_header = true",
            )
        if issues:
            raise ConfigError(issues)
        self._keys: Mapping[str, bytes | RSAPublicKey] = keys

    def from_request(self, request: Request) -> Join:
        """Read the join named by the upgrade request.

        Args:
            request: the client's upgrade request.

        Returns:
            The join (kind JOIN: a reconnect is a new request like any other).

        Raises:
            PolicyViolation: 401 for a token that fails decoding or verification; 400 when no
                source yields a meeting, sources disagree on it, an id is too long or badly
                percent-encoded, a query parameter or the Authorization header is repeated, or a
                claim is neither a string nor an integer.
        """
        params = (
            request.query_params()
            if self._meeting_query or self._participant_query or self._jwt_query
            else {}
        )
        meetings: list[str] = []
        participant: str | None = None
        token = self._token(request, params)
        if token is not None:
            claims = self._decode(token)
            meeting = _claim(claims, self._meeting_claim)
            if meeting is not None:
                meetings.append(meeting)
            participant = _claim(claims, self._participant_claim)
        if self._meeting_query is not None:
            meeting = _single(params, self._meeting_query)
            if meeting is not None:
                meetings.append(meeting)
        if participant is None and self._participant_query is not None:
            participant = _single(params, self._participant_query)
        path = request.path
        if "%" in path:
            path = _ESCAPE.sub(_decode_unreserved, path)
        matched = self._path.fullmatch(path)
        if matched is not None:
            meetings.append(_unquote(matched.group("meeting"), "meeting"))
            if participant is None and "participant" in self._path.groupindex:
                participant = _unquote(matched.group("participant"), "participant")
        if not meetings:
            # The path only: the query may hold a token, which has no place in a log.
            raise _violation(
                f"no meeting in the request for {request.path[:200]!r}", "no meeting in the request"
            )
        meeting = meetings[0]
        if any(other != meeting for other in meetings[1:]):
            raise _violation(
                f"the request names several meetings: {meetings!r}",
                "conflicting meetings in the request",
            )
        for field, value in (("meeting", meeting), ("participant", participant)):
            if value is not None and len(value) > MAX_ID_LENGTH:
                raise _violation(
                    f"a {len(value)}-character {field} id in the request", f"{field} id too long"
                )
        return Join(meeting, participant or None, JoinKind.JOIN)

    def first_message(self, opcode: int, payload: bytes) -> Join:
        """Never called: this adapter decides at the upgrade.

        Raises:
            AssertionError: always.
        """
        raise AssertionError("the url adapter decides at the upgrade; it reads no first message")

    def inspect(self, opcode: int, payload: bytes) -> Join | None:
        """Return None: the URL, hence the meeting, is fixed for the connection.

        Returns:
            None.
        """
        return None

    def leave_messages(self, join: Join) -> list[bytes]:
        """Return no message: closing the upstream leg is the leave.

        Returns:
            An empty list.
        """
        return []

    def _token(self, request: Request, params: Mapping[str, list[str]]) -> str | None:
        """The request's token, from the query and/or the Authorization header, or None."""
        tokens: list[str] = []
        if self._jwt_query is not None:
            token = _single(params, self._jwt_query)
            if token is not None:
                tokens.append(token)
        if self._jwt_header:
            values = request.get_all("authorization")
            if len(values) > 1:
                # RFC 9110 section 5.3: Authorization is not a list; several are malformed.
                raise _violation("several Authorization headers", "repeated Authorization header")
            if values:
                # RFC 9110 section 11.1: the auth-scheme is case-insensitive (RFC 6750: Bearer).
                scheme, _, credentials = values[0].partition(" ")
                if scheme.lower() == "bearer" and credentials.strip(" "):
                    tokens.append(credentials.strip(" "))
        if not tokens:
            return None
        if len(tokens) == 2 and tokens[0] != tokens[1]:
            raise _violation(
                "the query token and the Authorization token differ", "conflicting tokens"
            )
        return tokens[0]

    def _decode(self, token: str) -> dict[str, Any]:
        """The token's claims, verified when a key is configured."""
        try:
            if not self._keys:
                # No key: the upstream verifies the token it gets; we only read it.
                claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
                return claims
            header_algorithm = jwt.get_unverified_header(token).get("alg")
            algorithm = header_algorithm if isinstance(header_algorithm, str) else ""
            key = self._keys.get(algorithm)
            if key is None:
                raise _invalid_token(f"token algorithm {header_algorithm!r} is not accepted")
            # One algorithm, matched to its own key: a public key is never tried as an HMAC
            # secret (the RS256/HS256 confusion attack).
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options={"require": [], "verify_aud": False},
                leeway=JWT_LEEWAY,
            )
            return claims
        except jwt.InvalidTokenError as exc:
            raise _invalid_token(f"invalid token: {exc}") from None


def _compile_template(template: str) -> re.Pattern[str]:
    """Compile a path template to a regex; each placeholder matches one non-empty segment.

    Raises:
        ValueError: the template does not start with '/', holds a query, an unknown, repeated or
            adjacent placeholder or a stray brace, or has no ``{meeting}``.
    """
    if not template.startswith("/"):
        raise ValueError("a path template starts with '/'")
    if "?" in template or "#" in template:
        raise ValueError("a path template holds no query or fragment; use meeting_query")
    parts: list[str] = []
    names: list[str] = []
    position = 0
    for found in _BRACED.finditer(template):
        literal = template[position : found.start()]
        name = found.group(1)
        if "{" in literal or "}" in literal:
            raise ValueError("unbalanced brace")
        if name not in _PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{name}}}; use {{meeting}} or {{participant}}")
        if name in names:
            raise ValueError(f"{{{name}}} appears twice")
        if names and not literal:
            raise ValueError("two placeholders need text between them")
        parts.append(re.escape(literal))
        parts.append(f"(?P<{name}>[^/]+)")
        names.append(name)
        position = found.end()
    tail = template[position:]
    if "{" in tail or "}" in tail:
        raise ValueError("unbalanced brace")
    parts.append(re.escape(tail))
    if "meeting" not in names:
        raise ValueError("a path template needs {meeting}, such as '/rooms/{meeting}'")
    return re.compile("".join(parts))


def _claim_path(dotted: str, key: str, issue: Callable[[str, str], None]) -> tuple[str, ...]:
    """Split a dotted claim name once; an empty name means the claim is not read."""
    if not dotted:
        return ()
    names = tuple(dotted.split("."))
    if not all(names):
        issue(
            key,
            f"{dotted!r} is not valid: expected dot-separated claim names, such as 'video.room'",
        )
    return names


def _claim(claims: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    """The claim at ``path`` as a string, or None when absent, null or empty."""
    if not path:
        return None
    value: Any = claims
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _violation(
        f"claim {'.'.join(path)!r} is a {type(value).__name__}, not a string",
        f"invalid {'.'.join(path)} claim",
    )


def _single(params: Mapping[str, list[str]], name: str) -> str | None:
    """A query parameter's one value (None when absent or empty); a repeated one is refused."""
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        # Servers differ on which of several values they read: refuse rather than guess.
        raise _violation(
            f"query parameter {name!r} given {len(values)} times",
            f"repeated query parameter {name!r}",
        )
    return values[0] or None


def _decode_unreserved(found: re.Match[str]) -> str:
    char = chr(int(found.group(1), 16))
    return char if char in _UNRESERVED else found.group(0)


def _unquote(segment: str, field: str) -> str:
    try:
        return urllib.parse.unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise _violation(
            f"the {field} path segment {segment[:80]!r} is not UTF-8 once decoded",
            f"malformed {field} in the path",
        ) from None


def _load_rsa_key(path: Path) -> RSAPublicKey:
    """Read a PEM RSA public key.

    Raises:
        ValueError: unreadable, not a PEM public key, not RSA, or under 2048 bits.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"an RSA public key is needed for RS256, not {type(key).__name__}")
    if key.key_size < _MIN_RSA_BITS:
        raise ValueError(
            f"the key has {key.key_size} bits; RS256 needs at least {_MIN_RSA_BITS} "
            "(RFC 7518 section 3.3)"
        )
    return key
