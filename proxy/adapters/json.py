"""The ``json`` adapter: joins are JSON objects in text messages (the demo server's protocol).

A message is a JSON object whose ``type_field`` names its type; types in ``join_types`` are joins
and types in ``resume_types`` are resumes (a reconnect, gated like a join). ``meeting_field`` and
``participant_field`` name the ids. Pure: no I/O.

The first client message must be such a join. Every later client message goes through
``JsonAdapter.inspect``, which is on the relay's hot path, so a message that cannot be a join is
rejected by a few substring tests without being parsed: a join must contain its type as a JSON
string, such as ``"join"`` (quotes included). JSON lets a string be spelled with escapes
(RFC 8259 section 7), so ``"jo\\u0069n"`` is also ``"join"`` once parsed and a client could slip a
join past the substring test that way. A message containing ``\\u`` anywhere is therefore parsed
too; when a join type contains a character that has a short escape (``"``, ``\\``, ``/`` or a
control character: ``"a\\/b"`` is ``"a/b"``), any backslash triggers the parse.

A message with a needle that ``orjson`` refuses is parsed again with the standard library, which
accepts what many lenient upstream parsers accept (``NaN``, out-of-range numbers, lone surrogate
escapes, a byte order mark): otherwise ``{"type":"join","meeting":"m","x":NaN}`` would pass as
"malformed, not our business" while the upstream reads a join. Only what neither parser reads is
left to the upstream.
"""

from __future__ import annotations

import json as std_json
import re
from pathlib import Path
from typing import Any, Final

import orjson

from proxy.adapters.base import Join, JoinKind
from proxy.config import JsonProtocolConfig
from proxy.errors import ConfigError, ConfigIssue, PolicyViolation
from proxy.frames import Opcode
from proxy.handshake import Request

__all__ = ["MAX_ID_LENGTH", "JsonAdapter"]

MAX_ID_LENGTH: Final = 256
"""The longest meeting or participant id accepted, in characters."""

# Plain ints: compared on every relayed message, and an int compare is cheaper than an IntEnum's.
_TEXT: Final = int(Opcode.TEXT)
_BINARY: Final = int(Opcode.BINARY)

# Characters JSON may write with a two-character escape (RFC 8259 section 7): a type containing
# one of them can be spelled without ``\u``, so any backslash must trigger a parse.
_SHORT_ESCAPED: Final = frozenset('"\\/\b\f\n\r\t')

_PLACEHOLDER: Final = re.compile(r"\{(meeting|participant)\}")

_KEY = "protocol.json"


def _violation(detail: str, client_text: str) -> PolicyViolation:
    return PolicyViolation(detail, client_text=client_text)


def _json_escape(value: str) -> str:
    """The JSON string escaping of ``value``, without the surrounding quotes."""
    return orjson.dumps(value).decode()[1:-1]


class JsonAdapter:
    """Reads joins and resumes from JSON text messages.

    Args:
        config: the ``[protocol.json]`` table.
        source: the config file, named in configuration errors.

    Raises:
        ConfigError: a field name is empty or repeated, there is no join type, a type is both a
            join and a resume type, or ``leave_message`` is not JSON once its placeholders are
            filled.
    """

    __slots__ = ("_kinds", "_leave", "_meeting", "_needles", "_participant", "_type")

    name = "json"
    decides_at_upgrade = False

    def __init__(self, config: JsonProtocolConfig, *, source: str | Path = "<config>") -> None:
        _check_config(config, str(source))
        self._type = config.type_field
        self._meeting = config.meeting_field
        self._participant = config.participant_field
        self._leave = config.leave_message
        kinds = dict.fromkeys(config.join_types, JoinKind.JOIN)
        kinds.update(dict.fromkeys(config.resume_types, JoinKind.RESUME))
        self._kinds: dict[str, JoinKind] = kinds
        # The JSON spelling of each type, quotes included, exactly as orjson writes it: that is
        # the only spelling without a backslash, so the escape needle covers every other one.
        needles = [orjson.dumps(kind) for kind in kinds]
        short = any(char in _SHORT_ESCAPED or char < " " for kind in kinds for char in kind)
        needles.append(b"\\" if short else b"\\u")
        self._needles: tuple[bytes, ...] = tuple(needles)

    def from_request(self, request: Request) -> Join | None:
        """Return None: the meeting is named by the first message, after the upgrade.

        Args:
            request: the upgrade request (unused).

        Returns:
            None.
        """
        return None

    def first_message(self, opcode: int, payload: bytes) -> Join:
        """Read the join carried by the first client message.

        Args:
            opcode: the message opcode (1 text, 2 binary).
            payload: the unmasked, reassembled payload.

        Returns:
            The join or resume, with the participant id when the message names one.

        Raises:
            PolicyViolation: a binary message, a payload that is not strict JSON (RFC 8259) or
                not an object, a type that is not a join or resume type, or a missing, empty,
                non-string or over-long meeting, or a non-string or over-long participant.
        """
        if opcode == _BINARY:
            raise _violation(
                "first message is binary", "first message must be a JSON join, not binary"
            )
        if opcode != _TEXT:
            raise _violation(
                f"first message has opcode {opcode}", "first message must be a JSON join"
            )
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise _violation(f"first message is not UTF-8: {exc}", "invalid UTF-8") from None
            raise _violation(f"first message is not JSON: {exc}", "malformed JSON") from None
        if not isinstance(obj, dict):
            raise _violation(
                f"first message is a JSON {type(obj).__name__}, not an object",
                "first message must be a JSON object",
            )
        kind = obj.get(self._type)
        join_kind = self._kinds.get(kind) if isinstance(kind, str) else None
        if join_kind is None:
            raise _violation(
                f"first message has {self._type} {_show(kind)}, not a join or resume type",
                "first message must be a join",
            )
        return self._join(obj, join_kind)

    def inspect(self, opcode: int, payload: bytes) -> Join | None:
        """Return the join or resume carried by a later client message, or None.

        Cheap for ordinary traffic: binary messages and text messages that contain none of the
        needles (a join type as a JSON string, or an escape that could spell one) are not
        parsed. Malformed JSON, other types and needles inside data give None: the upstream
        deals with its own protocol errors.

        Args:
            opcode: the message opcode (1 text, 2 binary).
            payload: the unmasked, reassembled payload.

        Returns:
            The join or resume, or None for any other message.

        Raises:
            PolicyViolation: a join or resume the gate cannot check (no usable meeting, or a
                participant id that is not a string).
        """
        if opcode != _TEXT:
            return None
        find = payload.find  # bytes.find: about half the cost of ``in`` for short payloads
        for needle in self._needles:
            if find(needle) >= 0:
                break
        else:
            return None
        obj = _parse_lenient(payload)
        if not isinstance(obj, dict):
            return None
        kind = obj.get(self._type)
        if not isinstance(kind, str):
            return None
        join_kind = self._kinds.get(kind)
        if join_kind is None:
            return None
        return self._join(obj, join_kind)

    def leave_messages(self, join: Join) -> list[bytes]:
        """Return the leave message for an evicted participant, placeholders filled.

        ``{meeting}`` and ``{participant}`` in ``leave_message`` are meant to sit inside JSON
        strings; they are replaced by the JSON-escaped ids (an absent participant by nothing).
        An empty ``leave_message`` sends nothing.

        Args:
            join: the participant's admitted join.

        Returns:
            One UTF-8 text message, or none.
        """
        if not self._leave:
            return []
        return [_fill(self._leave, join.meeting, join.participant).encode()]

    def _join(self, obj: dict[str, Any], kind: JoinKind) -> Join:
        meeting = obj.get(self._meeting)
        if not isinstance(meeting, str) or not meeting:
            raise _violation(
                f"{kind} with {self._meeting} {_show(meeting)}", "join without a meeting"
            )
        participant = obj.get(self._participant)
        if participant is not None and not isinstance(participant, str):
            raise _violation(
                f"{kind} with {self._participant} {_show(participant)}",
                "participant id must be a string",
            )
        for field, value in ((self._meeting, meeting), (self._participant, participant)):
            if value is None:
                continue
            if len(value) > MAX_ID_LENGTH:
                raise _violation(
                    f"{kind} with a {len(value)}-character {field}", f"{field} id too long"
                )
            if not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError:
                    # A lone surrogate escape, read by the lenient parser: not an id the gate
                    # or the audit trail can handle.
                    raise _violation(
                        f"{kind} with a {field} holding a lone surrogate", f"malformed {field} id"
                    ) from None
        # An empty participant id names nobody.
        return Join(meeting, participant or None, kind)


def _parse_lenient(payload: bytes) -> Any:
    """Parse with orjson, else with the standard library's laxer parser, else None."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    try:
        return std_json.loads(payload)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, UnicodeDecodeError and over-long integer digits.
        return None


def _fill(template: str, meeting: str, participant: str | None) -> str:
    # One pass, so that an id containing "{participant}" is not itself substituted.
    values = {"meeting": meeting, "participant": participant or ""}
    return _PLACEHOLDER.sub(lambda m: _json_escape(values[m.group(1)]), template)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_config(config: JsonProtocolConfig, source: str) -> None:
    issues: list[ConfigIssue] = []

    def issue(key: str, message: str) -> None:
        issues.append(ConfigIssue(source, f"{_KEY}.{key}", message))

    fields = {
        "type_field": config.type_field,
        "meeting_field": config.meeting_field,
        "participant_field": config.participant_field,
    }
    seen: dict[str, str] = {}
    for key, value in fields.items():
        if not value:
            issue(key, "expected a non-empty field name")
        elif value in seen:
            issue(key, f"{value!r} is already the {seen[value]}; the three fields must differ")
        else:
            seen[value] = key
    if not config.join_types:
        issue("join_types", "expected at least one join type, such as ['join']")
    for key, types in (("join_types", config.join_types), ("resume_types", config.resume_types)):
        for i, kind in enumerate(types):
            if not kind:
                issue(f"{key}[{i}]", "expected a non-empty type")
    for kind in sorted(set(config.join_types) & set(config.resume_types)):
        issue("resume_types", f"{kind!r} is also a join type; a type is one or the other")
    if config.leave_message:
        filled = _fill(config.leave_message, 'm"\\', 'p"\\')
        try:
            orjson.loads(filled)
        except orjson.JSONDecodeError as exc:
            issue(
                "leave_message",
                f"{config.leave_message!r} is not JSON once its placeholders are filled ({exc}); "
                "put {meeting} and {participant} inside JSON strings, such as "
                '\'{"type":"leave","meeting":"{meeting}"}\'',
            )
    if issues:
        raise ConfigError(issues)
