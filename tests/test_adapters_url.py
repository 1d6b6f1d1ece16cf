"""Tests for proxy.adapters.url: the meeting from the request path, query or JWT."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.adapters.base import Adapter, Join, JoinKind
from proxy.adapters.url import UrlAdapter
from proxy.config import UrlProtocolConfig
from proxy.errors import ConfigError, PolicyViolation
from proxy.handshake import Request, RequestParser

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"  # 34 bytes: RFC 7518 wants at least 32 for HS256
OTHER_SECRET = "another-secret-another-secret-xyz"


def request(target: str, *headers: tuple[str, str]) -> Request:
    """A GET upgrade request for ``target``, parsed from raw bytes like the server does."""
    lines = [f"GET {target} HTTP/1.1", "Host: proxy.test", "Upgrade: websocket"]
    lines += [f"{name}: {value}" for name, value in headers]
    parsed = RequestParser().feed(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert parsed is not None
    return parsed


def adapter(**changes: Any) -> UrlAdapter:
    """An adapter over the default configuration with ``changes``."""
    return UrlAdapter(dataclasses.replace(UrlProtocolConfig(), **changes))


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    """An HS256 token carrying ``claims``."""
    return jwt.encode(claims, secret, algorithm="HS256")


def unsigned(claims: dict[str, Any]) -> str:
    """An unsecured JWT (alg "none", RFC 7519 section 6) carrying ``claims``."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def refused(call: Any, *args: Any) -> PolicyViolation:
    """Call and return the PolicyViolation it must raise."""
    with pytest.raises(PolicyViolation) as info:
        call(*args)
    return info.value


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key pair, generated once for the module."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_public_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    """Write the public half of ``key`` as PEM to ``path``."""
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


# --------------------------------------------------------------------------------------------------
# The adapter's shape.


def test_satisfies_the_adapter_protocol() -> None:
    """UrlAdapter is an Adapter named url that decides at the upgrade."""
    typed: Adapter = adapter()
    assert typed.name == "url"
    assert typed.decides_at_upgrade is True


def test_later_messages_change_nothing() -> None:
    """inspect is always None and there is no leave message: the URL is fixed."""
    url = adapter()
    assert url.inspect(1, b'{"type":"join","meeting":"m"}') is None
    assert url.inspect(2, b"\x00") is None
    assert url.leave_messages(Join("m", "p")) == []


def test_first_message_is_never_called() -> None:
    """first_message is a programming error for an adapter deciding at the upgrade."""
    with pytest.raises(AssertionError):
        adapter().first_message(1, b"{}")


# --------------------------------------------------------------------------------------------------
# Path templates.


def test_default_template() -> None:
    """/rooms/{meeting} reads the meeting from the path, with no participant."""
    assert adapter().from_request(request("/rooms/standup")) == Join("standup", None, JoinKind.JOIN)


def test_template_with_participant() -> None:
    """A template can name the participant too, anywhere in the path."""
    url = adapter(path_template="/v1/{meeting}/ws/{participant}")
    assert url.from_request(request("/v1/m1/ws/alice")) == Join("m1", "alice")


def test_template_ignores_the_query() -> None:
    """The template matches the path; the query does not disturb it."""
    assert adapter().from_request(request("/rooms/m?x=1&y")) == Join("m")


def test_template_placeholder_within_a_segment() -> None:
    """A placeholder may share its segment with literal text."""
    url = adapter(path_template="/room-{meeting}.ws")
    assert url.from_request(request("/room-abc.ws")) == Join("abc")


def test_template_percent_decoding() -> None:
    """Captured segments are percent-decoded as UTF-8, %2F included."""
    url = adapter(path_template="/v1/{meeting}/ws/{participant}")
    join = url.from_request(request("/v1/r%C3%A9union%2F1/ws/a%20b"))
    assert join == Join("réunion/1", "a b")


def test_template_matches_escaped_unreserved_literals() -> None:
    """Percent-encoded unreserved characters in the literal part still match (RFC 3986 6.2.2.2)."""
    assert adapter().from_request(request("/r%6Fom%73/m%41")) == Join("mA")


def test_template_keeps_escaped_reserved_characters() -> None:
    """Escaped reserved characters are decoded once, not twice."""
    assert adapter().from_request(request("/rooms/a%252Fb")) == Join("a%2Fb")


def test_template_invalid_utf8_refused() -> None:
    """A segment that is not UTF-8 once decoded is a violation."""
    error = refused(adapter().from_request, request("/rooms/%FF"))
    assert error.client_text == "malformed meeting in the path"
    assert error.http_status == 400


@pytest.mark.parametrize(
    "target",
    ["/rooms/", "/rooms", "/rooms/a/b", "/rooms/a/", "/other/a", "/", "/rooms//"],
)
def test_template_no_match_refused(target: str) -> None:
    """A path the template does not match, with no other source, is a 400 violation."""
    error = refused(adapter().from_request, request(target))
    assert error.client_text == "no meeting in the request"
    assert error.http_status == 400
    assert error.close_code == 1008


def test_absolute_form_target() -> None:
    """An absolute-form request-target is matched on its path."""
    assert adapter().from_request(request("ws://proxy.test/rooms/m")) == Join("m")


def test_meeting_length_limit() -> None:
    """A meeting id of 256 characters passes; 257 is refused."""
    assert adapter().from_request(request("/rooms/" + "m" * 256)).meeting == "m" * 256
    error = refused(adapter().from_request, request("/rooms/" + "m" * 257))
    assert error.client_text == "meeting id too long"


@pytest.mark.parametrize(
    "template",
    [
        "/rooms/{participant}",
        "/rooms",
        "rooms/{meeting}",
        "/rooms/{room}",
        "/rooms/{meeting}/{meeting}",
        "/rooms/{meeting}{participant}",
        "/rooms/{meeting",
        "/rooms/}{meeting}",
        "/rooms/{meeting}?x=1",
    ],
)
def test_bad_template_refused_at_construction(template: str) -> None:
    """A template without {meeting}, or otherwise malformed, is a config error."""
    with pytest.raises(ConfigError) as info:
        UrlAdapter(
            dataclasses.replace(UrlProtocolConfig(), path_template=template), source="g.toml"
        )
    [issue] = info.value.issues
    assert (issue.file, issue.path) == ("g.toml", "protocol.url.path_template")


# --------------------------------------------------------------------------------------------------
# Query parameters.


def test_query_meeting_and_participant() -> None:
    """The query names the meeting and participant when configured to."""
    url = adapter(meeting_query="room", participant_query="user")
    assert url.from_request(request("/ws?room=r%201&user=u+2")) == Join("r 1", "u 2")


def test_query_falls_back_to_path() -> None:
    """Without the query parameter, the path template is used."""
    url = adapter(meeting_query="room")
    assert url.from_request(request("/rooms/m")) == Join("m")
    assert url.from_request(request("/rooms/m?room=")) == Join("m")


def test_query_takes_precedence_over_path_when_path_does_not_match() -> None:
    """The query names the meeting even when the path does not match the template."""
    url = adapter(meeting_query="room")
    assert url.from_request(request("/ws?room=q")) == Join("q")


def test_query_and_path_agreeing() -> None:
    """Query and path naming the same meeting is fine; the path's participant is used."""
    url = adapter(meeting_query="room", path_template="/rooms/{meeting}/{participant}")
    assert url.from_request(request("/rooms/m/p?room=m")) == Join("m", "p")


def test_query_participant_precedes_path_participant() -> None:
    """A query participant wins over the path's."""
    url = adapter(participant_query="user", path_template="/rooms/{meeting}/{participant}")
    assert url.from_request(request("/rooms/m/p?user=q")) == Join("m", "q")


def test_conflicting_meetings_refused() -> None:
    """Query and path naming different meetings is refused: the upstream may read either."""
    url = adapter(meeting_query="room")
    error = refused(url.from_request, request("/rooms/a?room=b"))
    assert error.client_text == "conflicting meetings in the request"
    assert error.http_status == 400


def test_repeated_query_parameter_refused() -> None:
    """A repeated meeting parameter is refused rather than guessed."""
    url = adapter(meeting_query="room")
    error = refused(url.from_request, request("/ws?room=a&room=b"))
    assert error.client_text == "repeated query parameter 'room'"


def test_query_not_configured_is_ignored() -> None:
    """Without meeting_query, a 'meeting' parameter means nothing."""
    error = refused(adapter().from_request, request("/ws?meeting=m"))
    assert error.client_text == "no meeting in the request"


# --------------------------------------------------------------------------------------------------
# JWT: HS256.


def test_hs256_token_in_query() -> None:
    """A valid HS256 token in the query names meeting (nested claim) and participant."""
    url = adapter(jwt_query="access_token", jwt_secret=SECRET)
    token = hs256({"sub": "alice", "video": {"room": "r1"}, "exp": int(time.time()) + 60})
    assert url.from_request(request(f"/rtc?access_token={token}")) == Join("r1", "alice")


def test_hs256_token_in_authorization_header() -> None:
    """A Bearer token in the Authorization header is read when jwt_header is set."""
    url = adapter(jwt_header=True, jwt_secret=SECRET)
    token = hs256({"sub": "bob", "video": {"room": "r2"}})
    assert url.from_request(request("/rtc", ("Authorization", f"Bearer {token}"))) == Join(
        "r2", "bob"
    )
    assert url.from_request(request("/rtc", ("Authorization", f"bearer {token}"))) == Join(
        "r2", "bob"
    )


def test_header_not_read_unless_configured() -> None:
    """With only jwt_query, an Authorization header is ignored."""
    url = adapter(jwt_query="access_token", jwt_secret=SECRET)
    token = hs256({"video": {"room": "r"}})
    error = refused(url.from_request, request("/rtc", ("Authorization", f"Bearer {token}")))
    assert error.client_text == "no meeting in the request"


def test_query_not_read_unless_configured() -> None:
    """With only jwt_header, an access_token parameter is ignored."""
    url = adapter(jwt_header=True, jwt_secret=SECRET)
    token = hs256({"video": {"room": "r"}})
    error = refused(url.from_request, request(f"/rtc?access_token={token}"))
    assert error.client_text == "no meeting in the request"


def test_same_token_in_query_and_header() -> None:
    """The same token in both places is accepted; different tokens are refused."""
    url = adapter(jwt_query="t", jwt_header=True, jwt_secret=SECRET)
    token = hs256({"video": {"room": "r"}})
    other = hs256({"video": {"room": "s"}})
    assert url.from_request(request(f"/rtc?t={token}", ("Authorization", f"Bearer {token}"))) == (
        Join("r")
    )
    error = refused(
        url.from_request, request(f"/rtc?t={token}", ("Authorization", f"Bearer {other}"))
    )
    assert error.client_text == "conflicting tokens"


def test_repeated_authorization_header_refused() -> None:
    """Two Authorization headers are malformed (it is not a list header)."""
    url = adapter(jwt_header=True)
    token = hs256({"video": {"room": "r"}})
    auth = ("Authorization", f"Bearer {token}")
    error = refused(url.from_request, request("/rtc", auth, auth))
    assert error.client_text == "repeated Authorization header"


def test_other_authorization_scheme_ignored() -> None:
    """A non-Bearer Authorization header carries no token; the path is used."""
    url = adapter(jwt_header=True, jwt_secret=SECRET)
    assert url.from_request(request("/rooms/m", ("Authorization", "Basic dXNlcjpwdw=="))) == Join(
        "m"
    )


@pytest.mark.parametrize(
    "token",
    [
        hs256({"video": {"room": "r"}}, OTHER_SECRET),
        hs256({"video": {"room": "r"}, "exp": int(time.time()) - 3600}),
        hs256({"video": {"room": "r"}, "nbf": int(time.time()) + 3600}),
        "not-a-token",
        "a.b.c",
        unsigned({"video": {"room": "r"}}),
    ],
    ids=["wrong-secret", "expired", "not-yet-valid", "garbage", "bad-parts", "alg-none"],
)
def test_hs256_bad_token_is_401(token: str) -> None:
    """A token failing verification is a violation with HTTP 401 and 'invalid token'."""
    url = adapter(jwt_query="access_token", jwt_secret=SECRET)
    error = refused(url.from_request, request(f"/rooms/m?access_token={token}"))
    assert error.http_status == 401
    assert error.client_text == "invalid token"
    # The class default is untouched: only this instance says 401.
    assert PolicyViolation.http_status == 400


def test_expiry_within_leeway_accepted() -> None:
    """A token expired less than the 30 s leeway ago is still accepted."""
    url = adapter(jwt_query="t", jwt_secret=SECRET)
    token = hs256({"video": {"room": "r"}, "exp": int(time.time()) - 5})
    assert url.from_request(request(f"/rtc?t={token}")) == Join("r")


def test_audience_not_checked() -> None:
    """A token with an audience claim is accepted: the audience is the upstream's concern."""
    url = adapter(jwt_query="t", jwt_secret=SECRET)
    token = hs256({"aud": "livekit", "video": {"room": "r"}})
    assert url.from_request(request(f"/rtc?t={token}")) == Join("r")


def test_token_without_meeting_claim_falls_back() -> None:
    """A valid token lacking the claim falls back to the query, then the path."""
    url = adapter(jwt_query="t", jwt_secret=SECRET, meeting_query="room")
    token = hs256({"sub": "alice"})
    assert url.from_request(request(f"/rtc?t={token}&room=q")) == Join("q", "alice")
    assert url.from_request(request(f"/rooms/p?t={token}")) == Join("p", "alice")
    error = refused(url.from_request, request(f"/rtc?t={token}"))
    assert error.client_text == "no meeting in the request"
    assert error.http_status == 400


def test_claim_precedes_query_and_path_participant() -> None:
    """The token's participant wins over the query's; the meetings must agree."""
    url = adapter(jwt_query="t", participant_query="user", meeting_query="room")
    token = hs256({"sub": "alice", "video": {"room": "r"}})
    assert url.from_request(request(f"/rtc?t={token}&user=bob&room=r")) == Join("r", "alice")
    error = refused(url.from_request, request(f"/rooms/other?t={token}"))
    assert error.client_text == "conflicting meetings in the request"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"video": {"room": 42}}, Join("42")),
        ({"video": {"room": ""}}, None),
        ({"video": {"room": None}}, None),
        ({"video": "r"}, None),
        ({"video": {}}, None),
    ],
)
def test_claim_shapes(claims: dict[str, Any], expected: Join | None) -> None:
    """An integer claim is read as text; empty, null or unreachable claims count as missing."""
    url = adapter(jwt_query="t")
    target = f"/rtc?t={hs256(claims)}"
    if expected is None:
        assert refused(url.from_request, request(target)).client_text == "no meeting in the request"
    else:
        assert url.from_request(request(target)) == expected


@pytest.mark.parametrize("room", [["r"], {"name": "r"}, True, 1.5])
def test_claim_of_wrong_type_refused(room: Any) -> None:
    """A meeting claim that is neither a string nor an integer is a violation."""
    url = adapter(jwt_query="t")
    error = refused(url.from_request, request(f"/rtc?t={hs256({'video': {'room': room}})}"))
    assert error.client_text == "invalid video.room claim"
    assert error.http_status == 400


def test_custom_claim_names() -> None:
    """Claim paths come from the config, flat or nested at any depth."""
    url = adapter(jwt_query="t", meeting_claim="ctx.call.id", participant_claim="name")
    token = hs256({"ctx": {"call": {"id": "c7"}}, "name": "n", "sub": "ignored"})
    assert url.from_request(request(f"/rtc?t={token}")) == Join("c7", "n")


def test_unverified_decode_without_key() -> None:
    """With neither secret nor key, tokens are read without checking signature or expiry."""
    url = adapter(jwt_query="t")
    token = hs256({"sub": "a", "video": {"room": "r"}, "exp": 1}, OTHER_SECRET)
    assert url.from_request(request(f"/rtc?t={token}")) == Join("r", "a")
    error = refused(url.from_request, request("/rtc?t=garbage"))
    assert (error.http_status, error.client_text) == (401, "invalid token")


def test_hs256_token_refused_when_only_rs256_key(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """An HS256 token is refused when only an RS256 key is configured (no algorithm confusion)."""
    pem = write_public_key(tmp_path / "key.pem", rsa_key)
    url = adapter(jwt_query="t", jwt_algorithms=("RS256",), jwt_public_key=pem)
    forged = jwt.encode({"video": {"room": "r"}}, SECRET, algorithm="HS256")
    error = refused(url.from_request, request(f"/rtc?t={forged}"))
    assert error.http_status == 401


# --------------------------------------------------------------------------------------------------
# JWT: RS256.


def test_rs256_good_and_bad(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """An RS256 token signed by the configured key passes; another key's token is 401."""
    pem = write_public_key(tmp_path / "key.pem", rsa_key)
    url = adapter(jwt_header=True, jwt_algorithms=("RS256",), jwt_public_key=pem)
    token = jwt.encode({"sub": "p", "video": {"room": "r"}}, rsa_key, algorithm="RS256")
    assert url.from_request(request("/rtc", ("Authorization", f"Bearer {token}"))) == Join("r", "p")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"video": {"room": "r"}}, stranger, algorithm="RS256")
    error = refused(url.from_request, request("/rtc", ("Authorization", f"Bearer {forged}")))
    assert (error.http_status, error.client_text) == (401, "invalid token")


def test_both_algorithms(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """With a secret and a key, each token is verified with its own algorithm's key."""
    pem = write_public_key(tmp_path / "key.pem", rsa_key)
    url = adapter(
        jwt_query="t", jwt_algorithms=("HS256", "RS256"), jwt_secret=SECRET, jwt_public_key=pem
    )
    rs = jwt.encode({"video": {"room": "a"}}, rsa_key, algorithm="RS256")
    assert url.from_request(request(f"/rtc?t={rs}")) == Join("a")
    assert url.from_request(request(f"/rtc?t={hs256({'video': {'room': 'b'}})}")) == Join("b")


# --------------------------------------------------------------------------------------------------
# JWT configuration.


def config_error(**changes: Any) -> str:
    """Build an adapter that must fail; return the one issue's key path and message."""
    with pytest.raises(ConfigError) as info:
        adapter(**changes)
    [issue] = info.value.issues
    return f"{issue.path}: {issue.message}"


def test_public_key_unreadable(tmp_path: Path) -> None:
    """A missing key file is a config error naming jwt_public_key."""
    message = config_error(
        jwt_query="t", jwt_algorithms=("RS256",), jwt_public_key=tmp_path / "absent.pem"
    )
    assert message.startswith("protocol.url.jwt_public_key: ")
    assert "cannot read" in message


def test_public_key_not_pem(tmp_path: Path) -> None:
    """A file that is not a PEM public key is a config error."""
    path = tmp_path / "key.pem"
    path.write_text("not a key\n")
    message = config_error(jwt_query="t", jwt_algorithms=("RS256",), jwt_public_key=path)
    assert message.startswith("protocol.url.jwt_public_key: ")
    assert "not a PEM public key" in message


def test_public_key_not_rsa(tmp_path: Path) -> None:
    """An EC public key cannot verify RS256: config error."""
    pem = write_public_key(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1()))
    message = config_error(jwt_query="t", jwt_algorithms=("RS256",), jwt_public_key=pem)
    assert "RSA public key" in message


def test_public_key_too_small(tmp_path: Path) -> None:
    """An RSA key under 2048 bits is refused (RFC 7518 section 3.3)."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = write_public_key(tmp_path / "small.pem", small)
    message = config_error(jwt_query="t", jwt_algorithms=("RS256",), jwt_public_key=pem)
    assert "2048" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"jwt_query": "t", "jwt_secret": "short"}, "protocol.url.jwt_secret: the secret is 5"),
        (
            {"jwt_query": "t", "jwt_secret": SECRET, "jwt_algorithms": ("RS256",)},
            "protocol.url.jwt_secret: a secret is set but 'HS256'",
        ),
        ({"jwt_secret": SECRET}, "protocol.url.jwt_query: a JWT key is set but no token"),
        ({"meeting_claim": "video..room"}, "protocol.url.meeting_claim: 'video..room'"),
        ({"participant_claim": "."}, "protocol.url.participant_claim: '.'"),
    ],
)
def test_jwt_config_refused(changes: dict[str, Any], expected: str) -> None:
    """Inconsistent JWT settings are config errors naming the key."""
    assert config_error(**changes).startswith(expected)


def test_public_key_without_rs256(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """A key with RS256 missing from jwt_algorithms is a config error, not a silent no-op."""
    pem = write_public_key(tmp_path / "key.pem", rsa_key)
    message = config_error(jwt_query="t", jwt_public_key=pem)
    assert message.startswith("protocol.url.jwt_public_key: a key is set but 'RS256'")


def test_all_issues_reported_at_once() -> None:
    """Several config problems are listed together."""
    with pytest.raises(ConfigError) as info:
        adapter(path_template="/x", jwt_secret="short", jwt_query="t")
    assert {issue.path for issue in info.value.issues} == {
        "protocol.url.path_template",
        "protocol.url.jwt_secret",
    }


def test_empty_claim_names_disable_claims() -> None:
    """An empty claim name means that claim is not read."""
    url = adapter(jwt_query="t", meeting_claim="", participant_claim="")
    token = hs256({"sub": "a", "video": {"room": "r"}})
    assert url.from_request(request(f"/rooms/m?t={token}")) == Join("m")
