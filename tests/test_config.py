"""Tests for proxy.config: strict loading, messages that name the key and value, snapshots."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from proxy.config import (
    DenialStyle,
    load_config,
    load_restrictions,
    load_snapshot,
    parse_overrides,
)
from proxy.errors import ConfigError
from proxy.geo import ForwardedHeader
from proxy.policy.restrictions import Enforcement, Mode, Treatment

ROOT = Path(__file__).resolve().parent.parent

VALID_RESTRICTION = """
[[restriction]]
id = "r1"
mode = "block"
regions = ["CN"]
meetings = ["memorial-*"]
legal_basis = "Order 1"
authority = "Court"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(fn: object, *args: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


def only_issue(error: ConfigError) -> str:
    assert len(error.issues) == 1, error.issues
    return str(error.issues[0])


# ---- the shipped files ---------------------------------------------------------------------------


def test_shipped_config_loads_with_every_section() -> None:
    """config/geogate.toml is valid and its relative paths resolve next to it."""
    config = load_config(ROOT / "config" / "geogate.toml")
    assert config.listen.port == 8080
    assert config.upstream.url == "ws://127.0.0.1:8090/"
    assert config.restrictions.path == (ROOT / "config" / "restrictions.toml").resolve()
    assert config.geoip.database == (ROOT / "build" / "demo-geoip.mmdb").resolve()
    assert config.geoip.lookup_private is True
    assert config.protocol.denial is DenialStyle.NOTICE


def test_shipped_restrictions_include_dry_run_and_window() -> None:
    """config/restrictions.toml has a dry-run restriction and one with a time window."""
    rset = load_restrictions(ROOT / "config" / "restrictions.toml")
    assert len(rset) >= 3
    assert any(r.enforcement is Enforcement.DRY_RUN for r in rset.restrictions)
    assert any(r.starts_at is not None and r.ends_at is not None for r in rset.restrictions)


def test_defaults_when_file_is_empty(tmp_path: Path) -> None:
    """An empty main file gives every default."""
    config = load_config(write(tmp_path, "g.toml", ""))
    assert config.limits.max_message_bytes == 1 << 20
    assert config.client_address.header is ForwardedHeader.X_FORWARDED_FOR
    assert config.client_address.trusted_proxies == ()
    assert config.source == (tmp_path / "g.toml").resolve()


def test_values_are_converted(tmp_path: Path) -> None:
    """Networks, enums, paths and nested tables convert to their types."""
    path = write(tmp_path, "g.toml", """
        [client_address]
        trusted_proxies = ["10.0.0.0/8", "2001:db8::/32"]
        header = "forwarded"
        [geoip]
        database = "db/x.mmdb"
        [[geoip.override]]
        network = "192.0.2.0/24"
        region = "us-ca"
        [limits]
        join_timeout = 3
    """)
    config = load_config(path)
    assert config.client_address.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    assert config.client_address.header is ForwardedHeader.FORWARDED
    assert config.geoip.database == (tmp_path / "db" / "x.mmdb").resolve()
    (network, location), = config.geoip.overrides()
    assert str(network) == "192.0.2.0/24"
    assert (location.country, location.subdivision) == ("US", "US-CA")
    assert config.limits.join_timeout == 3.0


# ---- main file errors ----------------------------------------------------------------------------


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    """An unknown key is an error naming the key path and its line."""
    path = write(tmp_path, "g.toml", """
        [listen]
        host = "127.0.0.1"
        prot = 8080
    """)
    message = only_issue(config_error(load_config, path))
    assert "listen.prot" in message and "unknown key 'prot'" in message
    assert f"{path}:4:" in message


def test_unknown_section(tmp_path: Path) -> None:
    """An unknown table is an error naming it."""
    message = only_issue(config_error(load_config, write(tmp_path, "g.toml", "[lisen]\nport=1\n")))
    assert "unknown key 'lisen'" in message


def test_wrong_type_names_value_and_expected(tmp_path: Path) -> None:
    """A string where a number is expected names the key, the value and the expected form."""
    path = write(tmp_path, "g.toml", '[listen]\nport = "eighty"\n')
    message = only_issue(config_error(load_config, path))
    assert "listen.port" in message and "'eighty'" in message and "whole number" in message
    assert ":2:" in message


def test_bool_is_not_a_number(tmp_path: Path) -> None:
    """true is not accepted as an integer."""
    message = only_issue(config_error(load_config, write(tmp_path, "g.toml",
                                                         "[limits]\nmax_connections = true\n")))
    assert "limits.max_connections" in message and "true" in message


def test_port_out_of_range(tmp_path: Path) -> None:
    """A port above 65535 names the key, the value and the range."""
    message = only_issue(config_error(load_config,
                                      write(tmp_path, "g.toml", "[listen]\nport = 70000\n")))
    assert "listen.port" in message and "70000" in message and "65535" in message


def test_bad_cidr_in_trusted_proxies(tmp_path: Path) -> None:
    """A bad network names the list element, the value and the CIDR form."""
    path = write(tmp_path, "g.toml", """
        [client_address]
        trusted_proxies = ["10.0.0.0/8", "10.0.0.1/8"]
    """)
    message = only_issue(config_error(load_config, path))
    assert "client_address.trusted_proxies[1]" in message
    assert "'10.0.0.1/8'" in message and "CIDR" in message
    assert ":3:" in message


def test_bad_enum_lists_choices(tmp_path: Path) -> None:
    """A value outside a closed choice lists the choices."""
    message = only_issue(config_error(load_config, write(
        tmp_path, "g.toml", '[client_address]\nheader = "x-real-ip"\n')))
    assert "client_address.header" in message and "'x-real-ip'" in message
    assert "'forwarded'" in message


def test_bad_upstream_url(tmp_path: Path) -> None:
    """An upstream URL that is not ws:// or wss:// is refused with the expected form."""
    message = only_issue(config_error(load_config, write(
        tmp_path, "g.toml", '[upstream]\nurl = "http://example.org/"\n')))
    assert "upstream.url" in message and "'http://example.org/'" in message and "ws://" in message


def test_unknown_region_in_override(tmp_path: Path) -> None:
    """An override region that is not an ISO code is an error naming it."""
    path = write(tmp_path, "g.toml", """
        [[geoip.override]]
        network = "192.0.2.0/24"
        region = "XX"
    """)
    message = only_issue(config_error(load_config, path))
    assert "geoip.override[0].region" in message and "'XX'" in message


def test_tls_needs_both_files(tmp_path: Path) -> None:
    """tls_cert without tls_key is an error on the listen table."""
    message = only_issue(config_error(load_config, write(
        tmp_path, "g.toml", '[listen]\ntls_cert = "cert.pem"\n')))
    assert "listen" in message and "tls_key" in message


def test_http_denial_needs_url_adapter(tmp_path: Path) -> None:
    """denial = 'http' with the json adapter is refused and explained."""
    message = only_issue(config_error(load_config, write(
        tmp_path, "g.toml", '[protocol]\ndenial = "http"\n')))
    assert "protocol" in message and "url" in message


def test_all_errors_are_listed(tmp_path: Path) -> None:
    """Every problem in the file is reported, not only the first."""
    path = write(tmp_path, "g.toml", """
        [listen]
        port = -1
        backlog = "big"
        [limits]
        join_timeout = 0
        colour = "red"
    """)
    error = config_error(load_config, path)
    paths = {issue.path for issue in error.issues}
    assert paths == {"listen.port", "listen.backlog", "limits.join_timeout", "limits.colour"}


def test_invalid_toml_names_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line."""
    error = config_error(load_config, write(tmp_path, "g.toml", "[listen]\nport = = 1\n"))
    assert error.issues[0].line == 2
    assert "not valid TOML" in str(error)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it."""
    message = only_issue(config_error(load_config, tmp_path / "nope.toml"))
    assert "nope.toml" in message and "not found" in message


def test_overrides_apply_and_are_validated(tmp_path: Path) -> None:
    """--set values override the file and are checked like it."""
    path = write(tmp_path, "g.toml", "[listen]\nport = 8080\n")
    config = load_config(path, parse_overrides(["listen.port=9001", "upstream.url=ws://h:1/"]))
    assert config.listen.port == 9001 and config.upstream.url == "ws://h:1/"
    message = only_issue(config_error(load_config, path, parse_overrides(["listen.port=x"])))
    assert "listen.port" in message and "'x'" in message


def test_override_without_equals() -> None:
    """An override without '=' is refused with the expected form."""
    message = only_issue(config_error(parse_overrides, ["listen.port"]))
    assert "section.key=value" in message


# ---- restrictions file ---------------------------------------------------------------------------


def test_restriction_fields_convert(tmp_path: Path) -> None:
    """Every restriction key converts: modes, treatments, times, exempt networks."""
    path = write(tmp_path, "r.toml", """
        version = "v7"
        [[restriction]]
        id = "a"
        mode = "allow"
        regions = ["de", "US-CA"]
        meetings = ["board", "memorial-*"]
        starts_at = 2026-06-04T00:00:00Z
        ends_at = "2026-06-05T00:00:00+08:00"
        unknown = "deny"
        anonymous = "deny"
        exempt = ["198.51.100.0/24"]
        enforcement = "dry-run"
        legal_basis = "Order"
        authority = "Court"
        notice = "Not here."
        notice_url = "https://example.org/a"
    """)
    rset = load_restrictions(path)
    assert rset.version == "v7"
    (r,) = rset.restrictions
    assert r.mode is Mode.ALLOW and r.regions == frozenset({"DE", "US-CA"})
    assert r.meetings == ("board", "memorial-*")
    assert r.starts_at == 1780531200.0
    assert r.ends_at == 1780588800.0
    assert r.unknown is Treatment.DENY and r.anonymous is Treatment.DENY
    assert r.enforcement is Enforcement.DRY_RUN
    assert [str(n) for n in r.exempt] == ["198.51.100.0/24"]


def test_version_defaults_to_content_digest(tmp_path: Path) -> None:
    """Without a version key the version changes with the file's content."""
    first = load_restrictions(write(tmp_path, "r.toml", VALID_RESTRICTION)).version
    second = load_restrictions(write(tmp_path, "r.toml", VALID_RESTRICTION + "\n# x\n")).version
    assert first != second and len(first) == 12


def test_unknown_region_code(tmp_path: Path) -> None:
    """A region that is not an ISO code names the element, the value and its line."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION.replace('["CN"]', '["CN", "CNN"]'))
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[0].regions[1]" in message and "'CNN'" in message
    assert ":5:" in message


def test_unknown_restriction_key(tmp_path: Path) -> None:
    """An unknown key in a restriction is an error naming the key."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION + 'region = "CN"\n')
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[0].region" in message and "unknown key 'region'" in message


def test_missing_legal_basis(tmp_path: Path) -> None:
    """A restriction without legal_basis is refused, naming the key."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION.replace('legal_basis = "Order 1"\n', ""))
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[0]" in message and "legal_basis" in message


def test_empty_legal_basis(tmp_path: Path) -> None:
    """A blank legal_basis is refused with the value shown."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION.replace('"Order 1"', '"  "'))
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[0].legal_basis" in message and "'  '" in message


def test_ends_before_starts(tmp_path: Path) -> None:
    """ends_at before starts_at is refused, naming both."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION + (
        "starts_at = 2026-06-05T00:00:00Z\nends_at = 2026-06-04T00:00:00Z\n"))
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[0]" in message and "ends_at" in message and "starts_at" in message


def test_time_without_offset(tmp_path: Path) -> None:
    """A local date-time without a UTC offset is refused, naming the key."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION + "starts_at = 2026-06-05T00:00:00\n")
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[0].starts_at" in message and "UTC offset" in message


def test_bad_time_string(tmp_path: Path) -> None:
    """A date-time string that is not RFC 3339 is refused with the value."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION + 'ends_at = "next tuesday"\n')
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[0].ends_at" in message and "'next tuesday'" in message


def test_bad_exempt_network(tmp_path: Path) -> None:
    """A bad exempt network names the element and value."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION + 'exempt = ["300.1.1.0/24"]\n')
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[0].exempt[0]" in message and "'300.1.1.0/24'" in message


def test_bad_mode(tmp_path: Path) -> None:
    """A mode that is neither block nor allow lists the choices."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION.replace('"block"', '"deny"'))
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[0].mode" in message and "'deny'" in message and "'block'" in message


def test_duplicate_ids(tmp_path: Path) -> None:
    """A repeated id is refused, naming it and where it was first defined."""
    path = write(tmp_path, "r.toml", VALID_RESTRICTION + VALID_RESTRICTION)
    message = only_issue(config_error(load_restrictions, path))
    assert "restriction[1].id" in message and "duplicate id 'r1'" in message
    assert "line 2" in message and ":11:" in message


def test_every_restriction_error_collected(tmp_path: Path) -> None:
    """Errors in several restrictions are all reported."""
    bad = VALID_RESTRICTION.replace('["CN"]', '["ZZ"]')
    path = write(tmp_path, "r.toml", bad + bad.replace('"r1"', '"r2"'))
    error = config_error(load_restrictions, path)
    assert [issue.path for issue in error.issues] == [
        "restriction[0].regions[0]", "restriction[1].regions[0]"]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    """A top-level key other than restriction and version is refused."""
    path = write(tmp_path, "r.toml", "[[restrictions]]\nid = 'x'\n")
    message = only_issue(config_error(load_restrictions, path))
    assert "unknown key 'restrictions'" in message


# ---- snapshot ------------------------------------------------------------------------------------


def test_snapshot_versions_follow_content(tmp_path: Path) -> None:
    """A snapshot holds both files; its version changes when either file does."""
    write(tmp_path, "restrictions.toml", VALID_RESTRICTION)
    main = write(tmp_path, "g.toml", "[listen]\nport = 1\n")
    first = load_snapshot(main)
    assert len(first.restrictions) == 1 and first.config.listen.port == 1
    write(tmp_path, "restrictions.toml", VALID_RESTRICTION + "# changed\n")
    assert load_snapshot(main).version != first.version


def test_snapshot_reports_restriction_errors(tmp_path: Path) -> None:
    """A snapshot with a bad restrictions file raises with the restrictions file named."""
    write(tmp_path, "restrictions.toml", VALID_RESTRICTION.replace('"CN"', '"QQ"'))
    main = write(tmp_path, "g.toml", "")
    message = only_issue(config_error(load_snapshot, main))
    assert "restrictions.toml" in message and "'QQ'" in message
