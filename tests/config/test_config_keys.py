"""Layer 2: every Zincati key's type, default and validation rule, one table row each.

A row is one fragment (``/etc/zincati/config.d/50-test.toml``), the effective value read from
the validated Settings, and the exact problems as (severity, file, key): ``F`` is the fragment,
``None`` a problem not tied to one file.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from zincati_py.config import Settings

APP_ID = "de35106b6ec24688b63afddaa156679b"
MACHINE_ID = "0123456789abcdef0123456789abcdef"  # what the ``tree`` fixture writes
F = "etc/zincati/config.d/50-test.toml"
NODE = "node"  # placeholder for the node id derived from MACHINE_ID


def derived_node_id(machine_id: str) -> str:
    """sd_id128_get_machine_app_specific(), written out from systemd's documentation."""
    mac = hmac.new(bytes.fromhex(machine_id), bytes.fromhex(APP_ID), hashlib.sha256).digest()
    b = bytearray(mac[:16])
    b[6] = (b[6] & 0x0F) | 0x40  # UUID version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


def get(config: Settings, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


W = '[[updates.periodic.window]]\ndays = ["Mon"]\nstart_time = "01:00"\nlength_minutes = 60\n'
PERIODIC = '[updates]\nstrategy = "periodic"\n' + W

# (id, fragment, dotted attribute of Settings, expected value, expected problems)
ROWS: list[tuple[str, str, str, Any, list[tuple[str, str | None, str]]]] = [
    # [agent.timing] steady_interval_secs: int >= 1, default 300
    ("interval-default", "", "agent.timing.steady_interval_secs", 300, []),
    ("interval-1", "[agent.timing]\nsteady_interval_secs = 1\n",
     "agent.timing.steady_interval_secs", 1, []),
    ("interval-big", "[agent.timing]\nsteady_interval_secs = 86400\n",
     "agent.timing.steady_interval_secs", 86400, []),
    ("interval-0", "[agent.timing]\nsteady_interval_secs = 0\n",
     "agent.timing.steady_interval_secs", 300, [("error", F, "agent.timing.steady_interval_secs")]),
    ("interval-negative", "[agent.timing]\nsteady_interval_secs = -5\n",
     "agent.timing.steady_interval_secs", 300, [("error", F, "agent.timing.steady_interval_secs")]),
    ("interval-string", '[agent.timing]\nsteady_interval_secs = "60"\n',
     "agent.timing.steady_interval_secs", 300, [("error", F, "agent.timing.steady_interval_secs")]),
    ("interval-float", "[agent.timing]\nsteady_interval_secs = 1.5\n",
     "agent.timing.steady_interval_secs", 300, [("error", F, "agent.timing.steady_interval_secs")]),
    ("interval-bool", "[agent.timing]\nsteady_interval_secs = true\n",
     "agent.timing.steady_interval_secs", 300, [("error", F, "agent.timing.steady_interval_secs")]),
    ("timing-not-a-table", "[agent]\ntiming = 5\n",
     "agent.timing.steady_interval_secs", 300, [("error", F, "agent.timing")]),
    # [identity] group: "default", ^[a-zA-Z0-9.-]+$
    ("group-default", "", "identity.group", "default", []),
    ("group-set", '[identity]\ngroup = "workers"\n', "identity.group", "workers", []),
    ("group-all-allowed-chars", '[identity]\ngroup = "a.B-9"\n', "identity.group", "a.B-9", []),
    ("group-space", '[identity]\ngroup = "my group"\n', "identity.group", "default",
     [("error", F, "identity.group")]),
    ("group-slash", '[identity]\ngroup = "a/b"\n', "identity.group", "default",
     [("error", F, "identity.group")]),
    ("group-underscore", '[identity]\ngroup = "a_b"\n', "identity.group", "default",
     [("error", F, "identity.group")]),
    ("group-newline", '[identity]\ngroup = "a\\n"\n', "identity.group", "default",
     [("error", F, "identity.group")]),
    # Zincati: an empty group means the default group (IdentityInput: `if !group.is_empty()`).
    ("group-empty-means-default", '[identity]\ngroup = ""\n', "identity.group", "default", []),
    ("group-int", "[identity]\ngroup = 5\n", "identity.group", "default",
     [("error", F, "identity.group")]),
    # [identity] node_uuid: 32 hex or hyphenated → 32 lowercase hex; default from machine-id
    ("uuid-default-derived", "", "identity.node_uuid", NODE, []),
    ("uuid-hex", '[identity]\nnode_uuid = "e0f3745b108f471cbd4883c6fbed8cdd"\n',
     "identity.node_uuid", "e0f3745b108f471cbd4883c6fbed8cdd", []),
    ("uuid-upper", '[identity]\nnode_uuid = "E0F3745B108F471CBD4883C6FBED8CDD"\n',
     "identity.node_uuid", "e0f3745b108f471cbd4883c6fbed8cdd", []),
    ("uuid-hyphenated", '[identity]\nnode_uuid = "E0F3745B-108F-471C-BD48-83C6FBED8CDD"\n',
     "identity.node_uuid", "e0f3745b108f471cbd4883c6fbed8cdd", []),
    ("uuid-short", '[identity]\nnode_uuid = "e0f3745b108f471cbd4883c6fbed8cd"\n',
     "identity.node_uuid", NODE, [("error", F, "identity.node_uuid")]),
    ("uuid-not-hex", '[identity]\nnode_uuid = "g0f3745b108f471cbd4883c6fbed8cdd"\n',
     "identity.node_uuid", NODE, [("error", F, "identity.node_uuid")]),
    ("uuid-braces", '[identity]\nnode_uuid = "{e0f3745b-108f-471c-bd48-83c6fbed8cdd}"\n',
     "identity.node_uuid", NODE, [("error", F, "identity.node_uuid")]),
    ("uuid-misplaced-hyphens", '[identity]\nnode_uuid = "e0f3745b1-08f-471c-bd48-83c6fbed8cdd"\n',
     "identity.node_uuid", NODE, [("error", F, "identity.node_uuid")]),
    # Zincati: an empty node_uuid means "derive it" (IdentityInput: `if !node_uuid.is_empty()`).
    ("uuid-empty-means-derived", '[identity]\nnode_uuid = ""\n', "identity.node_uuid", NODE, []),
    ("uuid-int", "[identity]\nnode_uuid = 5\n", "identity.node_uuid", NODE,
     [("error", F, "identity.node_uuid")]),
    # [identity] rollout_wariness: float 0.0..1.0 (int accepted), unset by default
    ("wariness-default", "", "identity.rollout_wariness", None, []),
    ("wariness-half", "[identity]\nrollout_wariness = 0.5\n", "identity.rollout_wariness", 0.5, []),
    ("wariness-zero", "[identity]\nrollout_wariness = 0.0\n", "identity.rollout_wariness", 0.0, []),
    ("wariness-int-0", "[identity]\nrollout_wariness = 0\n", "identity.rollout_wariness", 0.0, []),
    ("wariness-int-1", "[identity]\nrollout_wariness = 1\n", "identity.rollout_wariness", 1.0, []),
    ("wariness-above", "[identity]\nrollout_wariness = 1.0001\n", "identity.rollout_wariness",
     None, [("error", F, "identity.rollout_wariness")]),
    ("wariness-negative", "[identity]\nrollout_wariness = -0.1\n", "identity.rollout_wariness",
     None, [("error", F, "identity.rollout_wariness")]),
    ("wariness-int-2", "[identity]\nrollout_wariness = 2\n", "identity.rollout_wariness",
     None, [("error", F, "identity.rollout_wariness")]),
    ("wariness-nan", "[identity]\nrollout_wariness = nan\n", "identity.rollout_wariness",
     None, [("error", F, "identity.rollout_wariness")]),
    ("wariness-inf", "[identity]\nrollout_wariness = inf\n", "identity.rollout_wariness",
     None, [("error", F, "identity.rollout_wariness")]),
    ("wariness-string", '[identity]\nrollout_wariness = "0.5"\n', "identity.rollout_wariness",
     None, [("error", F, "identity.rollout_wariness")]),
    ("wariness-bool", "[identity]\nrollout_wariness = true\n", "identity.rollout_wariness",
     None, [("error", F, "identity.rollout_wariness")]),
    # [cincinnati] base_url
    ("cincinnati-default", "", "cincinnati_base_url", None, []),
    ("cincinnati-set", '[cincinnati]\nbase_url = "https://updates.example/"\n',
     "cincinnati_base_url", "https://updates.example/", []),
    ("cincinnati-int", "[cincinnati]\nbase_url = 1\n", "cincinnati_base_url", None,
     [("error", F, "cincinnati.base_url")]),
    # [updates] enabled / allow_downgrade
    ("enabled-default", "", "updates.enabled", True, []),
    ("enabled-false", "[updates]\nenabled = false\n", "updates.enabled", False, []),
    ("enabled-string", '[updates]\nenabled = "false"\n', "updates.enabled", True,
     [("error", F, "updates.enabled")]),
    ("enabled-int", "[updates]\nenabled = 0\n", "updates.enabled", True,
     [("error", F, "updates.enabled")]),
    ("downgrade-default", "", "updates.allow_downgrade", False, []),
    ("downgrade-true", "[updates]\nallow_downgrade = true\n", "updates.allow_downgrade", True, []),
    ("downgrade-string", '[updates]\nallow_downgrade = "yes"\n', "updates.allow_downgrade", False,
     [("error", F, "updates.allow_downgrade")]),
    # [updates] strategy
    ("strategy-default", "", "updates.strategy", ("immediate",), []),
    ("strategy-empty-is-immediate", '[updates]\nstrategy = ""\n', "updates.strategy",
     ("immediate",), []),
    ("strategy-immediate", '[updates]\nstrategy = "immediate"\n', "updates.strategy",
     ("immediate",), []),
    ("strategy-periodic", PERIODIC, "updates.strategy", ("periodic",), []),
    ("strategy-fleet-lock",
     '[updates]\nstrategy = "fleet_lock"\n[updates.fleet_lock]\nbase_url = "http://fl.example/"\n',
     "updates.strategy", ("fleet_lock",), []),
    ("strategy-unknown", '[updates]\nstrategy = "reboot-whenever"\n', "updates.strategy",
     ("immediate",), [("error", F, "updates.strategy")]),
    ("strategy-case-sensitive", '[updates]\nstrategy = "Immediate"\n', "updates.strategy",
     ("immediate",), [("error", F, "updates.strategy")]),
    ("strategy-int", "[updates]\nstrategy = 1\n", "updates.strategy", ("immediate",),
     [("error", F, "updates.strategy")]),
    ("strategy-table", "[updates.strategy]\nname = 1\n", "updates.strategy", ("immediate",),
     [("error", F, "updates.strategy")]),
    # [updates.fleet_lock] base_url: required, non-empty, absolute for fleet_lock
    ("fleet-lock-missing-url", '[updates]\nstrategy = "fleet_lock"\n',
     "updates.fleet_lock.base_url", None, [("error", F, "updates.fleet_lock.base_url")]),
    ("fleet-lock-empty-url",
     '[updates]\nstrategy = "fleet_lock"\n[updates.fleet_lock]\nbase_url = ""\n',
     "updates.fleet_lock.base_url", None, [("error", F, "updates.fleet_lock.base_url")]),
    ("fleet-lock-relative-url",
     '[updates]\nstrategy = "fleet_lock"\n[updates.fleet_lock]\nbase_url = "fl.example/x"\n',
     "updates.fleet_lock.base_url", None, [("error", F, "updates.fleet_lock.base_url")]),
    ("fleet-lock-path-only-url",
     '[updates]\nstrategy = "fleet_lock"\n[updates.fleet_lock]\nbase_url = "/v1/pre-reboot"\n',
     "updates.fleet_lock.base_url", None, [("error", F, "updates.fleet_lock.base_url")]),
    ("fleet-lock-templated-url",
     '[updates]\nstrategy = "fleet_lock"\n'
     '[updates.fleet_lock]\nbase_url = "https://fl.example/${group}/"\n',
     "updates.fleet_lock.base_url", "https://fl.example/${group}/", []),
    ("fleet-lock-bad-url-unused-is-warning", '[updates.fleet_lock]\nbase_url = "nope"\n',
     "updates.fleet_lock.base_url", None, [("warning", F, "updates.fleet_lock.base_url")]),
    ("fleet-lock-url-int", "[updates.fleet_lock]\nbase_url = 8080\n",
     "updates.fleet_lock.base_url", None, [("error", F, "updates.fleet_lock.base_url")]),
    # [updates.periodic]: >= 1 window and a resolvable time zone when periodic
    ("periodic-default-tz", "", "updates.periodic.time_zone", "UTC", []),
    ("periodic-no-window", '[updates]\nstrategy = "periodic"\n', "updates.periodic.windows", (),
     [("error", F, "updates.periodic.window")]),
    ("periodic-iana-tz", PERIODIC + '[updates.periodic]\ntime_zone = "America/Toronto"\n',
     "updates.periodic.time_zone", "America/Toronto", []),
    ("periodic-bad-tz", PERIODIC + '[updates.periodic]\ntime_zone = "Mars/Olympus_Mons"\n',
     "updates.periodic.time_zone", "UTC", [("error", F, "updates.periodic.time_zone")]),
    ("periodic-empty-tz", PERIODIC + '[updates.periodic]\ntime_zone = ""\n',
     "updates.periodic.time_zone", "UTC", [("error", F, "updates.periodic.time_zone")]),
    ("periodic-path-tz", PERIODIC + '[updates.periodic]\ntime_zone = "../../etc/passwd"\n',
     "updates.periodic.time_zone", "UTC", [("error", F, "updates.periodic.time_zone")]),
    ("unused-bad-tz-is-warning", '[updates.periodic]\ntime_zone = "Mars/Olympus_Mons"\n',
     "updates.periodic.time_zone", "UTC", [("warning", F, "updates.periodic.time_zone")]),
    ("periodic-tz-int", PERIODIC + "[updates.periodic]\ntime_zone = 1\n",
     "updates.periodic.time_zone", "UTC", [("error", F, "updates.periodic.time_zone")]),
    ("window-as-table-not-array", '[updates.periodic.window]\ndays = ["Mon"]\n',
     "updates.periodic.windows", (), [("error", F, "updates.periodic.window")]),
    ("window-entry-not-a-table", "[updates.periodic]\nwindow = [1]\n",
     "updates.periodic.windows", (), [("error", F, "updates.periodic.window[0]")]),
    # unknown keys: warnings naming file and key
    ("unknown-top-level", "[bogus]\nx = 1\n", "updates.enabled", True, [("warning", F, "bogus")]),
    ("unknown-identity-key", '[identity]\nthrottle_permille = "5"\n', "identity.group", "default",
     [("warning", F, "identity.throttle_permille")]),
    ("unknown-nested-key", "[updates.periodic]\nlength = 5\n", "updates.enabled", True,
     [("warning", F, "updates.periodic.length")]),
    ("unknown-window-key", W.replace("length_minutes", "lenght_minutes = 5\nlength_minutes"),
     "updates.enabled", True, [("warning", F, "updates.periodic.window[0].lenght_minutes")]),
    ("typo-in-section-name", "[update]\nenabled = false\n", "updates.enabled", True,
     [("warning", F, "update")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "attr", "expected", "problems"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_key(tree, text, attr, expected, problems) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", text)
    result = tree.load()
    if expected == NODE:
        expected = derived_node_id(MACHINE_ID)
    assert get(result.config, attr) == expected
    assert tree.problems(result) == problems
    assert result.ok == (not any(p[0] == "error" for p in problems))
    for problem in result.problems:
        assert problem.message  # says what is wrong


def test_wariness_is_a_float_when_given_as_int(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", "[identity]\nrollout_wariness = 1\n")
    assert type(tree.load().config.identity.rollout_wariness) is float


def test_strategy_requirement_error_names_the_fragment_that_chose_it(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "10-vendor.toml", "[updates.fleet_lock]\n")
    chooser = tree.write("etc", "50-admin.toml", '[updates]\nstrategy = "fleet_lock"\n')
    result = tree.load()
    (problem,) = result.problems
    assert (problem.severity, problem.file, problem.key) == (
        "error",
        chooser,
        "updates.fleet_lock.base_url",
    )
    assert str(problem).startswith(f"{chooser}: updates.fleet_lock.base_url: ")


# ---- node id derived from the machine id --------------------------------------------------


def test_node_uuid_matches_systemd_id128_for_this_machine(tree) -> None:  # type: ignore[no-untyped-def]
    tool = shutil.which("systemd-id128")
    real = Path("/etc/machine-id")
    # Prerequisites .ci/run guarantees (systemd, systemd-machine-id-setup).
    assert tool is not None, "systemd-id128 not installed"
    assert real.is_file() and len(real.read_text().strip()) == 32, "uninitialised /etc/machine-id"
    (tree.root / "etc/machine-id").write_text(real.read_text())
    expected = subprocess.run(
        [tool, "machine-id", "-a", APP_ID], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()
    assert tree.load().config.identity.node_uuid == expected.replace("-", "").lower()


def test_derived_node_uuid_of_a_fixed_machine_id(tree) -> None:  # type: ignore[no-untyped-def]
    (tree.root / "etc/machine-id").write_text("4a2f0ec3b1b1461b9e6c1c1e1d2f3a4b\n")
    node = tree.load().config.identity.node_uuid
    assert node == derived_node_id("4a2f0ec3b1b1461b9e6c1c1e1d2f3a4b")
    assert node is not None and node[12] == "4" and node[16] in "89ab"
    assert node != "4a2f0ec3b1b1461b9e6c1c1e1d2f3a4b"


@pytest.mark.parametrize(
    ("machine_id", "strategy", "severity"),
    [
        (None, "immediate", "warning"),
        ("uninitialized\n", "immediate", "warning"),
        ("", "immediate", "warning"),
        ("0123", "immediate", "warning"),
        (None, "fleet_lock", "error"),
        ("not hex at all, not hex at all!!", "fleet_lock", "error"),
    ],
)
def test_underivable_node_uuid(tree, machine_id, strategy, severity) -> None:  # type: ignore[no-untyped-def]
    path = tree.root / "etc/machine-id"
    if machine_id is None:
        path.unlink()
    else:
        path.write_text(machine_id)
    tree.write(
        "etc",
        "50-test.toml",
        f'[updates]\nstrategy = "{strategy}"\n[updates.fleet_lock]\nbase_url = "http://fl/"\n',
    )
    result = tree.load()
    assert result.config.identity.node_uuid is None
    assert tree.problems(result) == [(severity, "etc/machine-id", "identity.node_uuid")]


def test_configured_node_uuid_needs_no_machine_id(tree) -> None:  # type: ignore[no-untyped-def]
    (tree.root / "etc/machine-id").unlink()
    tree.write(
        "etc",
        "50-test.toml",
        '[identity]\nnode_uuid = "e0f3745b108f471cbd4883c6fbed8cdd"\n'
        '[updates]\nstrategy = "fleet_lock"\n[updates.fleet_lock]\nbase_url = "http://fl/"\n',
    )
    result = tree.load()
    assert result.problems == ()
    assert result.config.identity.node_uuid == "e0f3745b108f471cbd4883c6fbed8cdd"


# ---- time zones: "localtime" follows <root>/etc/localtime ---------------------------------


def _periodic_localtime(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", PERIODIC + '[updates.periodic]\ntime_zone = "localtime"\n')


def test_localtime_follows_root_etc_localtime(tree) -> None:  # type: ignore[no-untyped-def]
    from zincati_py.config import resolve_time_zone

    _periodic_localtime(tree)
    (tree.root / "etc/localtime").symlink_to("/usr/share/zoneinfo/Asia/Tokyo")
    result = tree.load()
    assert result.problems == ()
    assert result.config.updates.periodic.time_zone == "localtime"
    assert resolve_time_zone("localtime", tree.root / "etc/localtime").key == "Asia/Tokyo"


def test_localtime_without_etc_localtime_is_utc(tree) -> None:  # type: ignore[no-untyped-def]
    # Zincati (and systemd): no /etc/localtime symlink means UTC.
    from zincati_py.config import resolve_time_zone

    _periodic_localtime(tree)
    result = tree.load()
    assert result.problems == ()
    assert resolve_time_zone("localtime", tree.root / "etc/localtime").key == "UTC"


def test_localtime_dangling_symlink_is_an_error(tree) -> None:  # type: ignore[no-untyped-def]
    # Zincati canonicalizes the link and fails when it points nowhere; silently using UTC
    # would open maintenance windows at the wrong hours.
    _periodic_localtime(tree)
    (tree.root / "etc/localtime").symlink_to("/nonexistent/zoneinfo-zincati-py-test")
    result = tree.load()
    assert tree.problems(result) == [("error", F, "updates.periodic.time_zone")]


def test_localtime_relative_link_into_image_zoneinfo(tree) -> None:  # type: ignore[no-untyped-def]
    # An image tree's /etc/localtime is often "../usr/share/zoneinfo/Zone"; the zone name is
    # in the link even when the image's own zoneinfo is not there.
    from zincati_py.config import resolve_time_zone

    _periodic_localtime(tree)
    (tree.root / "etc/localtime").symlink_to("../usr/share/zoneinfo/Europe/Berlin")
    result = tree.load()
    assert result.problems == ()
    assert resolve_time_zone("localtime", tree.root / "etc/localtime").key == "Europe/Berlin"


def test_localtime_regular_file_copy_of_a_zone(tree) -> None:  # type: ignore[no-untyped-def]
    _periodic_localtime(tree)
    source = Path("/usr/share/zoneinfo/Asia/Tokyo")
    assert source.is_file(), "tzdata not installed"
    shutil.copy(source, tree.root / "etc/localtime")
    assert tree.load().problems == ()


def test_localtime_regular_file_that_is_not_tzif_is_an_error(tree) -> None:  # type: ignore[no-untyped-def]
    _periodic_localtime(tree)
    (tree.root / "etc/localtime").write_text("Europe/Berlin\n")
    assert tree.problems(tree.load()) == [("error", F, "updates.periodic.time_zone")]


def test_localtime_symlink_loop_is_an_error(tree) -> None:  # type: ignore[no-untyped-def]
    _periodic_localtime(tree)
    (tree.root / "etc/localtime").symlink_to("localtime")
    result = tree.load()
    assert tree.problems(result) == [("error", F, "updates.periodic.time_zone")]
    assert "does not resolve" in result.problems[0].message
