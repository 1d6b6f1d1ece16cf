"""Scenario files: strict loading, errors that name the key, and restriction time templates."""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from loadtests.scenario import (
    ArrivalKind,
    Range,
    ReloadMode,
    has_templates,
    load_scenario,
    render_restrictions,
)
from proxy.config import load_restrictions
from proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "loadtests" / "scenarios"

MINIMAL = """\
[target]
config = "geogate.toml"
[[meeting]]
name = "event-{n}"
count = 3
[[region]]
name = "US"
networks = ["127.0.3.0/24"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(textwrap.dedent(text))
    return path


def issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.parametrize("path", sorted(p for p in SCENARIOS.glob("*.toml")
                                        if not p.name.startswith("restrictions-")),
                         ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path) -> None:
    """Every scenario in loadtests/scenarios is valid, and its restrictions files too."""
    scenario = load_scenario(path)
    assert scenario.source == path.resolve()
    assert scenario.target.config is not None and scenario.target.config.exists()
    assert scenario.target.restrictions is not None
    text = scenario.target.restrictions.read_text()
    rendered = path.parent / "rendered.tmp.toml"
    try:
        rendered.write_text(render_restrictions(text, 1_800_000_000.0))
        load_restrictions(rendered)
    finally:
        rendered.unlink()


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    """A minimal scenario gets the defaults; paths are resolved against its folder."""
    scenario = load_scenario(write(tmp_path, MINIMAL))
    assert scenario.target.config == tmp_path / "geogate.toml"
    assert scenario.arrival.kind is ArrivalKind.CONSTANT and scenario.arrival.duration == 10.0
    assert scenario.participants.count == 100
    assert scenario.meeting[0].meetings() == ["event-1", "event-2", "event-3"]
    assert not scenario.signals.enabled


def test_unknown_keys_and_bad_values_are_all_reported(tmp_path: Path) -> None:
    """Every problem is listed with its key path and the expected form."""
    path = write(tmp_path, MINIMAL + """\
        colour = "red"
        [participants]
        count = "many"
        stay = [5.0, 1.0]
        [arrival]
        kind = "burst"
        [[action]]
        at = -1
        reload = "sometimes"
        """)
    found = issues(path)
    assert any("colour" in i and "unknown key" in i for i in found)
    assert any("participants.count" in i and "whole number" in i for i in found)
    assert any("participants.stay" in i and "low <= high" in i for i in found)
    assert any("arrival.kind" in i and "'constant'" in i for i in found)
    assert any("action[0].at" in i and "0 or more" in i for i in found)
    assert any("action[0].reload" in i and "'watch'" in i for i in found)


def test_cross_field_rules(tmp_path: Path) -> None:
    """Bound addresses must be loopback; arrivals need one of duration and rate."""
    path = write(tmp_path, MINIMAL.replace("127.0.3.0/24", "198.51.100.0/24") + """\
        [arrival]
        duration = 5.0
        rate = 100.0
        """)
    found = issues(path)
    assert any("region[0]" in i and "not loopback" in i for i in found)
    assert any("arrival" in i and "exactly one of duration and rate" in i for i in found)


def test_ranges_and_actions(tmp_path: Path) -> None:
    """A number is a range of one value; actions are kept in time order."""
    scenario = load_scenario(write(tmp_path, MINIMAL + """\
        [participants]
        stay = 4
        [[action]]
        at = 5.0
        file = "b.toml"
        reload = "admin"
        [[action]]
        at = 2.0
        file = "a.toml"
        """))
    assert scenario.participants.stay == Range(4.0, 4.0)
    assert [a.at for a in scenario.action] == [2.0, 5.0]
    assert scenario.action[0].reload is ReloadMode.WATCH
    assert scenario.needs_admin


def test_time_templates_render_to_rfc3339(tmp_path: Path) -> None:
    """{{T+n}} becomes the run's start plus n seconds, which the restrictions loader accepts."""
    text = 'starts_at = "{{T+4}}"\nends_at = "{{ T + 10.5 }}"\nnote = "{{T}}"\n'
    assert has_templates(text) and not has_templates("starts_at = 2026-01-01T00:00:00Z")
    rendered = render_restrictions(text, 1_800_000_000.0)
    values = [line.split('"')[1] for line in rendered.splitlines()]
    stamps = [datetime.fromisoformat(v).timestamp() for v in values]
    assert stamps == [1_800_000_004.0, 1_800_000_010.5, 1_800_000_000.0]
    restrictions = tmp_path / "r.toml"
    restrictions.write_text(render_restrictions(
        '[[restriction]]\nid = "x"\nmode = "block"\nregions = ["CN"]\nmeetings = ["*"]\n'
        'legal_basis = "b"\nauthority = "a"\nstarts_at = "{{T+4}}"\n', 1_800_000_000.0))
    loaded = load_restrictions(restrictions)
    assert loaded.restrictions[0].starts_at == 1_800_000_004.0
