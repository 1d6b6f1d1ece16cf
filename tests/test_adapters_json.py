"""Tests for proxy.adapters.json: joins and resumes read from JSON text messages."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.adapters.base import Adapter, Join, JoinKind
from proxy.adapters.json import MAX_ID_LENGTH, JsonAdapter
from proxy.config import JsonProtocolConfig
from proxy.errors import ConfigError, PolicyViolation
from proxy.handshake import Request

TEXT = 1
BINARY = 2


@pytest.fixture
def adapter() -> JsonAdapter:
    """The adapter with the default (demo server) configuration."""
    return JsonAdapter(JsonProtocolConfig())


def message(**fields: Any) -> bytes:
    """A JSON text payload holding ``fields``."""
    return orjson.dumps(fields)


def configured(**changes: Any) -> JsonAdapter:
    """An adapter over the default configuration with ``changes``."""
    return JsonAdapter(dataclasses.replace(JsonProtocolConfig(), **changes))


def refused(call: Any, *args: Any) -> PolicyViolation:
    """Call and return the PolicyViolation it must raise."""
    with pytest.raises(PolicyViolation) as info:
        call(*args)
    return info.value


# --------------------------------------------------------------------------------------------------
# The adapter's shape.


def test_satisfies_the_adapter_protocol(adapter: JsonAdapter) -> None:
    """JsonAdapter is an Adapter named json that decides after the upgrade."""
    typed: Adapter = adapter
    assert typed.name == "json"
    assert typed.decides_at_upgrade is False


def test_from_request_is_none(adapter: JsonAdapter) -> None:
    """The upgrade request never names the meeting for this protocol."""
    request = Request("GET", "/rooms/a", "/rooms/a", "", "HTTP/1.1", (("host", "x"),))
    assert adapter.from_request(request) is None


# --------------------------------------------------------------------------------------------------
# The first message.


def test_first_message_join(adapter: JsonAdapter) -> None:
    """A text join with meeting and participant gives a JOIN with both ids."""
    join = adapter.first_message(TEXT, message(type="join", meeting="m1", participant="p1"))
    assert join == Join("m1", "p1", JoinKind.JOIN)


def test_first_message_resume(adapter: JsonAdapter) -> None:
    """A resume type gives a RESUME join."""
    join = adapter.first_message(TEXT, message(type="resume", meeting="m1", participant="p1"))
    assert join == Join("m1", "p1", JoinKind.RESUME)


def test_first_message_extra_fields_ignored(adapter: JsonAdapter) -> None:
    """Fields the adapter does not read are ignored."""
    join = adapter.first_message(TEXT, message(type="join", meeting="m", token="x", n=[1, 2]))
    assert join == Join("m")


@pytest.mark.parametrize("participant", [None, ""])
def test_first_message_participant_optional(adapter: JsonAdapter, participant: Any) -> None:
    """An absent, null or empty participant gives participant None."""
    fields: dict[str, Any] = {"type": "join", "meeting": "m"}
    assert adapter.first_message(TEXT, orjson.dumps(fields)).participant is None
    fields["participant"] = participant
    assert adapter.first_message(TEXT, orjson.dumps(fields)).participant is None


def test_first_message_binary_refused(adapter: JsonAdapter) -> None:
    """A binary first message is a violation naming binary."""
    error = refused(adapter.first_message, BINARY, message(type="join", meeting="m"))
    assert error.client_text == "first message must be a JSON join, not binary"
    assert error.close_code == 1008


def test_first_message_other_opcode_refused(adapter: JsonAdapter) -> None:
    """A first message with neither the text nor the binary opcode is a violation."""
    error = refused(adapter.first_message, 0, message(type="join", meeting="m"))
    assert error.client_text == "first message must be a JSON join"


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"join", b'{"type":"join","meeting":"m",}', b'{"type":"join","x":NaN}'],
)
def test_first_message_malformed_json(adapter: JsonAdapter, payload: bytes) -> None:
    """Anything that is not strict JSON is refused as malformed JSON."""
    error = refused(adapter.first_message, TEXT, payload)
    assert error.client_text == "malformed JSON"


def test_first_message_invalid_utf8(adapter: JsonAdapter) -> None:
    """A text payload that is not UTF-8 is refused as such."""
    error = refused(adapter.first_message, TEXT, b'{"type":"join","meeting":"\xff"}')
    assert error.client_text == "invalid UTF-8"


@pytest.mark.parametrize("payload", [b"[]", b'"join"', b"42", b"null"])
def test_first_message_not_an_object(adapter: JsonAdapter, payload: bytes) -> None:
    """JSON that is not an object is refused."""
    error = refused(adapter.first_message, TEXT, payload)
    assert error.client_text == "first message must be a JSON object"


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "signal", "meeting": "m"},
        {"meeting": "m"},
        {"type": None, "meeting": "m"},
        {"type": ["join"], "meeting": "m"},
        {"type": "JOIN", "meeting": "m"},
        {"type": "leave"},
    ],
)
def test_first_message_not_a_join(adapter: JsonAdapter, fields: dict[str, Any]) -> None:
    """An object whose type is not a join or resume type is refused."""
    error = refused(adapter.first_message, TEXT, orjson.dumps(fields))
    assert error.client_text == "first message must be a join"


@pytest.mark.parametrize("meeting", [None, "", 7, ["m"], {"id": "m"}, True])
def test_first_message_without_meeting(adapter: JsonAdapter, meeting: Any) -> None:
    """A missing, empty or non-string meeting is refused as a join without a meeting."""
    fields: dict[str, Any] = {"type": "join"}
    error = refused(adapter.first_message, TEXT, orjson.dumps(fields))
    assert error.client_text == "join without a meeting"
    fields["meeting"] = meeting
    error = refused(adapter.first_message, TEXT, orjson.dumps(fields))
    assert error.client_text == "join without a meeting"


@pytest.mark.parametrize("participant", [7, ["p"], {"id": "p"}, False])
def test_first_message_non_string_participant(adapter: JsonAdapter, participant: Any) -> None:
    """A participant that is present but not a string is refused."""
    payload = message(type="join", meeting="m", participant=participant)
    error = refused(adapter.first_message, TEXT, payload)
    assert error.client_text == "participant id must be a string"


def test_first_message_id_length_limit(adapter: JsonAdapter) -> None:
    """Ids of MAX_ID_LENGTH characters pass; one more is refused."""
    longest = "é" * MAX_ID_LENGTH
    join = adapter.first_message(TEXT, message(type="join", meeting=longest, participant=longest))
    assert join == Join(longest, longest)
    error = refused(adapter.first_message, TEXT, message(type="join", meeting=longest + "x"))
    assert error.client_text == "meeting id too long"
    payload = message(type="join", meeting="m", participant=longest + "x")
    assert refused(adapter.first_message, TEXT, payload).client_text == "participant id too long"


def test_first_message_escaped_ids_are_decoded(adapter: JsonAdapter) -> None:
    """Ids written with JSON escapes are read as their decoded text."""
    join = adapter.first_message(TEXT, rb'{"type":"join","meeting":"r\u00e9union\/1"}')
    assert join.meeting == "réunion/1"


def test_first_message_custom_fields_and_types() -> None:
    """Field names and join/resume types come from the config."""
    adapter = configured(
        type_field="op",
        join_types=("enter", "join-room"),
        resume_types=("rejoin",),
        meeting_field="room",
        participant_field="user",
    )
    assert adapter.first_message(TEXT, message(op="enter", room="r", user="u")) == Join("r", "u")
    assert adapter.first_message(TEXT, message(op="join-room", room="r")) == Join("r")
    assert adapter.first_message(TEXT, message(op="rejoin", room="r")).kind is JoinKind.RESUME
    # The default names mean nothing to this configuration.
    error = refused(adapter.first_message, TEXT, message(type="join", meeting="m"))
    assert error.client_text == "first message must be a join"
    error = refused(adapter.first_message, TEXT, message(op="enter", meeting="m"))
    assert error.client_text == "join without a meeting"


def test_violation_detail_stays_out_of_client_text(adapter: JsonAdapter) -> None:
    """The log detail names the offending type; the client text stays short and fixed."""
    error = refused(adapter.first_message, TEXT, message(type="secret-op", meeting="m"))
    assert "secret-op" in str(error)
    assert "secret-op" not in error.client_text


# --------------------------------------------------------------------------------------------------
# Later messages.


def test_inspect_binary_is_none(adapter: JsonAdapter) -> None:
    """A binary message is never a join, even with join bytes in it."""
    assert adapter.inspect(BINARY, message(type="join", meeting="m")) is None


def test_inspect_join_and_resume(adapter: JsonAdapter) -> None:
    """A later join or resume is returned for gating."""
    assert adapter.inspect(TEXT, message(type="join", meeting="m2", participant="p")) == Join(
        "m2", "p"
    )
    assert adapter.inspect(TEXT, message(type="resume", meeting="m2")) == Join(
        "m2", None, JoinKind.RESUME
    )


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"signal","to":"*","data":{"sdp":"v=0"}}',
        b"not json at all {",
        b"\xff\xfe garbage",
        b"",
    ],
)
def test_inspect_without_needle_is_not_parsed(
    adapter: JsonAdapter, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text message without a needle gives None without reaching either parser."""
    calls: list[bytes] = []
    real = orjson.loads

    def counting(data: bytes) -> Any:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(orjson, "loads", counting)
    monkeypatch.setattr(json, "loads", counting)
    assert adapter.inspect(TEXT, payload) is None
    assert calls == []


def test_inspect_with_needle_is_parsed(
    adapter: JsonAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text message holding a needle is parsed once (the counter sees the call)."""
    calls: list[bytes] = []
    real = orjson.loads

    def counting(data: bytes) -> Any:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(orjson, "loads", counting)
    payload = message(type="join", meeting="m")
    assert adapter.inspect(TEXT, payload) == Join("m")
    assert calls == [payload]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"signal","data":"join"}',
        b'{"type":"chat","text":"\\"join\\" us"}',
        b'["join"]',
        b'{"type":"join"',
        b'"join"',
        b'{"type":"join-later","meeting":"m"}',
        b'{"type":"leave","reason":"resume"}',
        b'{"type":"chat","text":"caf\\u00e9"}',
    ],
)
def test_inspect_needle_but_no_join(adapter: JsonAdapter, payload: bytes) -> None:
    """A needle inside data, another type or malformed JSON gives None."""
    assert adapter.inspect(TEXT, payload) is None


@pytest.mark.parametrize(
    "fields",
    [{"type": "join"}, {"type": "join", "meeting": ""}, {"type": "resume", "meeting": 3}],
)
def test_inspect_join_without_meeting_refused(adapter: JsonAdapter, fields: dict[str, Any]) -> None:
    """A later join the gate cannot check (no usable meeting) is a violation, not None."""
    error = refused(adapter.inspect, TEXT, orjson.dumps(fields))
    assert error.client_text == "join without a meeting"


def test_inspect_join_with_non_string_participant_refused(adapter: JsonAdapter) -> None:
    """A later join with a non-string participant is a violation, as in the first message."""
    error = refused(adapter.inspect, TEXT, message(type="join", meeting="m", participant=1))
    assert error.client_text == "participant id must be a string"


@pytest.mark.parametrize(
    "payload",
    [
        rb'{"type":"jo\u0069n","meeting":"m"}',
        rb'{"type":"\u006a\u006f\u0069\u006e","meeting":"m"}',
        rb'{"\u0074ype":"res\u0075me","meeting":"m"}',
        rb'{"type":"res\u0075me","meeting":"m"}',
    ],
)
def test_inspect_unicode_escape_evasion_caught(adapter: JsonAdapter, payload: bytes) -> None:
    """A join type spelled with \\u escapes (no literal needle) is still found and gated."""
    assert b'"join"' not in payload and b'"resume"' not in payload
    join = adapter.inspect(TEXT, payload)
    assert join is not None and join.meeting == "m"


def test_inspect_short_escape_evasion_caught_for_types_with_slash() -> None:
    """A type containing '/' can be spelled with the \\/ escape; that is caught too."""
    adapter = configured(join_types=("room/join",))
    payload = rb'{"type":"room\/join","meeting":"m"}'
    assert b'"room/join"' not in payload and b"\\u" not in payload
    assert adapter.inspect(TEXT, payload) == Join("m")


def test_inspect_lenient_parse_catches_what_orjson_refuses(adapter: JsonAdapter) -> None:
    """A join orjson refuses but lenient upstream parsers accept (NaN, BOM) is still gated."""
    assert adapter.inspect(TEXT, b'{"type":"join","meeting":"m","x":NaN}') == Join("m")
    assert adapter.inspect(TEXT, b'{"type":"join","meeting":"m","x":1e400}') == Join("m")
    assert adapter.inspect(TEXT, b'\xef\xbb\xbf{"type":"join","meeting":"m"}') == Join("m")


def test_inspect_lone_surrogate_meeting_refused(adapter: JsonAdapter) -> None:
    """A join whose meeting holds a lone surrogate escape cannot be checked: refused."""
    error = refused(adapter.inspect, TEXT, rb'{"type":"join","meeting":"\ud800"}')
    assert error.client_text == "malformed meeting id"


def test_inspect_custom_types() -> None:
    """The needles follow the configured types, not the defaults."""
    adapter = configured(type_field="op", join_types=("enter",), resume_types=())
    assert adapter.inspect(TEXT, message(op="enter", meeting="m")) == Join("m")
    assert adapter.inspect(TEXT, message(op="join", meeting="m")) is None
    assert adapter.inspect(TEXT, message(type="enter", meeting="m")) is None


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=4))
def test_inspect_never_misses_a_join(fields: dict[str, str]) -> None:
    """Whatever else a join carries, inspect finds it (property)."""
    adapter = JsonAdapter(JsonProtocolConfig())
    fields = {**fields, "type": "join", "meeting": "m"}
    fields.pop("participant", None)
    assert adapter.inspect(TEXT, orjson.dumps(fields)) == Join("m")


# --------------------------------------------------------------------------------------------------
# Leave messages.


def test_leave_message_default(adapter: JsonAdapter) -> None:
    """The default leave message is the demo server's bare leave."""
    assert adapter.leave_messages(Join("m", "p")) == [b'{"type":"leave"}']


def test_leave_message_placeholders_filled() -> None:
    """{meeting} and {participant} are replaced by the ids."""
    adapter = configured(leave_message='{"type":"bye","room":"{meeting}","user":"{participant}"}')
    [leave] = adapter.leave_messages(Join("m1", "p1"))
    assert orjson.loads(leave) == {"type": "bye", "room": "m1", "user": "p1"}


def test_leave_message_absent_participant_is_empty() -> None:
    """An absent participant fills its placeholder with nothing."""
    adapter = configured(leave_message='{"type":"bye","user":"{participant}"}')
    assert adapter.leave_messages(Join("m")) == [b'{"type":"bye","user":""}']


def test_leave_message_values_are_json_escaped() -> None:
    """Quotes, backslashes and placeholder text inside ids cannot break out of the string."""
    adapter = configured(leave_message='{"m":"{meeting}","p":"{participant}"}')
    meeting = 'a"},"x":"{participant}\\\n'
    [leave] = adapter.leave_messages(Join(meeting, "p"))
    assert orjson.loads(leave) == {"m": meeting, "p": "p"}


@given(st.text(min_size=1, max_size=40), st.none() | st.text(max_size=40))
def test_leave_message_always_valid_json(meeting: str, participant: str | None) -> None:
    """Any ids give a leave message that parses back to them (property)."""
    adapter = configured(leave_message='{"type":"leave","m":"{meeting}","p":"{participant}"}')
    try:
        meeting.encode()
        (participant or "").encode()
    except UnicodeEncodeError:
        return  # lone surrogates never come out of first_message or inspect
    [leave] = adapter.leave_messages(Join(meeting, participant))
    assert orjson.loads(leave) == {"type": "leave", "m": meeting, "p": participant or ""}


def test_leave_message_empty_sends_nothing() -> None:
    """An empty leave_message means no leave message."""
    assert configured(leave_message="").leave_messages(Join("m")) == []


# --------------------------------------------------------------------------------------------------
# Configuration.


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"type_field": ""}, "protocol.json.type_field"),
        ({"meeting_field": "type"}, "protocol.json.meeting_field"),
        ({"participant_field": "meeting"}, "protocol.json.participant_field"),
        ({"join_types": ()}, "protocol.json.join_types"),
        ({"join_types": ("join", "")}, "protocol.json.join_types[1]"),
        ({"resume_types": ("join",)}, "protocol.json.resume_types"),
        ({"leave_message": '{"m":{meeting}}'}, "protocol.json.leave_message"),
        ({"leave_message": "leave"}, "protocol.json.leave_message"),
    ],
)
def test_bad_config_refused(changes: dict[str, Any], key: str) -> None:
    """A config the adapter cannot work with raises ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        JsonAdapter(dataclasses.replace(JsonProtocolConfig(), **changes), source="geogate.toml")
    assert [(issue.file, issue.path) for issue in info.value.issues] == [("geogate.toml", key)]
