"""Fragments written for Zincati load unchanged: the examples from Zincati's own documentation
(docs/usage/updates-strategy.md, agent-identity and auto-updates pages) and our shipped
defaults in ``config.d/``."""

from __future__ import annotations

import shutil
import zoneinfo
from datetime import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

IMMEDIATE = '[updates]\nstrategy = "immediate"\n'
FLEET_LOCK = """
[updates]
strategy = "fleet_lock"

[updates.fleet_lock]
base_url = "http://example.com/fleet_lock/"
"""
PERIODIC = """
[updates]
strategy = "periodic"

[[updates.periodic.window]]
days = [ "Sat", "Sun" ]
start_time = "23:30"
length_minutes = 60

[[updates.periodic.window]]
days = [ "Wed" ]
start_time = "01:00"
length_minutes = 30
"""
PANAMA = """
[updates]
strategy = "periodic"

[updates.periodic]
time_zone = "America/Panama"

[[updates.periodic.window]]
days = [ "Sat", "Sun" ]
start_time = "23:30"
length_minutes = 60

[[updates.periodic.window]]
days = [ "Mon" ]
start_time = "00:00"
length_minutes = 60
"""
US_EASTERN = """
[updates]
strategy = "periodic"

[updates.periodic]
time_zone = "US/Eastern"

[[updates.periodic.window]]
days = [ "Sun" ]
start_time = "01:30"
length_minutes = 60
"""
IDENTITY = """
[identity]
group = "workers"
rollout_wariness = 0.5
"""
DISABLED = "[updates]\nenabled = false\n"
DOWNGRADE = "[updates]\nallow_downgrade = true\n"
INTERVAL = "[agent.timing]\nsteady_interval_secs = 600\n"
CINCINNATI = '[cincinnati]\nbase_url = "https://updates.coreos.fedoraproject.org"\n'


def test_immediate(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "55-updates-strategy.toml", IMMEDIATE)
    result = tree.load()
    assert result.problems == ()
    assert result.config.updates.strategy == ("immediate",)


def test_fleet_lock(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "55-updates-strategy.toml", FLEET_LOCK)
    result = tree.load()
    assert result.problems == ()
    assert result.config.updates.strategy == ("fleet_lock",)
    assert result.config.updates.fleet_lock.base_url == "http://example.com/fleet_lock/"


@pytest.mark.parametrize(
    ("text", "zone", "windows"),
    [
        (PERIODIC, "UTC", [((5, 6), time(23, 30), 60), ((2,), time(1, 0), 30)]),
        (PANAMA, "America/Panama", [((5, 6), time(23, 30), 60), ((0,), time(0, 0), 60)]),
        (US_EASTERN, "US/Eastern", [((6,), time(1, 30), 60)]),
    ],
    ids=["utc", "panama", "us-eastern"],
)
def test_periodic(tree, text, zone, windows) -> None:  # type: ignore[no-untyped-def]
    zoneinfo.ZoneInfo(zone)  # tzdata is a test prerequisite (.ci/run installs it)
    tree.write("etc", "55-updates-strategy.toml", text)
    result = tree.load()
    assert result.problems == ()
    periodic = result.config.updates.periodic
    assert periodic.time_zone == zone
    assert [(w.days, w.start_time, w.length_minutes) for w in periodic.windows] == windows


def test_docs_windows_split_over_snippets(tree) -> None:  # type: ignore[no-untyped-def]
    # "Reboot windows can be separately configured in multiple snippets."
    head, first, second = PERIODIC.split("[[updates.periodic.window]]")
    tree.write("etc", "55-updates-strategy.toml", head)
    tree.write("etc", "60-window-a.toml", "[[updates.periodic.window]]" + first)
    tree.write("run", "61-window-b.toml", "[[updates.periodic.window]]" + second)
    result = tree.load()
    assert result.problems == ()
    assert [w.days for w in result.config.updates.periodic.windows] == [(5, 6), (2,)]


def test_other_documented_keys(tree) -> None:  # type: ignore[no-untyped-def]
    for i, text in enumerate([IDENTITY, DISABLED, DOWNGRADE, INTERVAL, CINCINNATI]):
        tree.write("etc", f"{50 + i}-doc.toml", text)
    result = tree.load()
    assert result.problems == ()
    c = result.config
    assert (c.identity.group, c.identity.rollout_wariness) == ("workers", 0.5)
    assert (c.updates.enabled, c.updates.allow_downgrade) == (False, True)
    assert c.agent.timing.steady_interval_secs == 600
    assert c.cincinnati_base_url == "https://updates.coreos.fedoraproject.org"


def test_shipped_defaults_are_valid_and_are_the_defaults(tree) -> None:  # type: ignore[no-untyped-def]
    shipped = sorted((REPO / "config.d").glob("*.toml"))
    assert shipped, f"no default fragments in {REPO / 'config.d'}"
    tree.dir("usr").mkdir(parents=True)
    for path in shipped:
        shutil.copy(path, tree.dir("usr") / path.name)
    with_shipped = tree.load()
    assert with_shipped.problems == ()
    assert [p.name for p in with_shipped.fragments] == [p.name for p in shipped]
    empty = type(tree)(tree.root.parent / "empty").load()
    assert with_shipped.config.as_dict() == empty.config.as_dict()


def test_admin_override_of_a_shipped_default(tree) -> None:  # type: ignore[no-untyped-def]
    # The documented way to change a shipped default: a later-sorting fragment in /etc.
    tree.write("usr", "30-zincati-py-updates-strategy.toml", IMMEDIATE)
    tree.write("etc", "55-updates-strategy.toml", FLEET_LOCK)
    assert tree.load().config.updates.strategy == ("fleet_lock",)
