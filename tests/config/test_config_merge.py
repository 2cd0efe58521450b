"""Layer 1, merging: file-name byte order across directories, later keys win, absent keys
never reset, windows accumulate, ``[[schedule]]`` jobs merge by name."""

from __future__ import annotations

import os
import tempfile
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zincati_py.config import load


def test_file_name_order_beats_directory_order(tree) -> None:  # type: ignore[no-untyped-def]
    # 10-a.toml lives in /etc (highest-priority directory) but 20-b.toml sorts later, so
    # 20-b.toml wins for keys both set; keys only 10-a.toml sets survive.
    tree.write("etc", "10-a.toml", '[identity]\ngroup = "etc-a"\nrollout_wariness = 0.25\n')
    tree.write("usr", "20-b.toml", '[identity]\ngroup = "usr-b"\n')
    result = tree.load()
    assert tree.fragments(result) == [
        "etc/zincati/config.d/10-a.toml",
        "usr/lib/zincati/config.d/20-b.toml",
    ]
    assert result.config.identity.group == "usr-b"
    assert result.config.identity.rollout_wariness == 0.25
    assert result.problems == ()


# (id, fragments in file-name order, dotted key, expected value)
OVERRIDES = [
    ("later-overrides", ["[updates]\nenabled = false\n", "[updates]\nenabled = true\n"],
     "updates.enabled", True),
    ("absent-later-keeps", ["[updates]\nenabled = false\n", '[updates]\nstrategy = ""\n'],
     "updates.enabled", False),
    ("absent-table-later-keeps",
     ["[updates]\nallow_downgrade = true\n", '[identity]\ngroup = "g"\n'],
     "updates.allow_downgrade", True),
    ("empty-file-later-keeps", ['[cincinnati]\nbase_url = "https://c.example/"\n', ""],
     "cincinnati_base_url", "https://c.example/"),
    ("three-way-last-wins", ["[agent.timing]\nsteady_interval_secs = 1\n",
                             "[agent.timing]\nsteady_interval_secs = 2\n",
                             "[agent.timing]\nsteady_interval_secs = 3\n"],
     "agent.timing.steady_interval_secs", 3),
    ("dotted-key-form-merges-too", ["[identity]\ngroup = \"a\"\n", 'identity.group = "b"\n'],
     "identity.group", "b"),
    ("wrong-type-later-keeps-earlier", ["[agent.timing]\nsteady_interval_secs = 60\n",
                                        '[agent.timing]\nsteady_interval_secs = "90"\n'],
     "agent.timing.steady_interval_secs", 60),
]  # fmt: skip


@pytest.mark.parametrize(
    ("texts", "key", "expected"), [c[1:] for c in OVERRIDES], ids=[c[0] for c in OVERRIDES]
)
def test_override_rules(tree, texts, key, expected) -> None:  # type: ignore[no-untyped-def]
    # Spread the files over the directories in reverse, so directory order cannot explain it.
    dirs = ["etc", "run", "usr"]
    for i, text in enumerate(texts):
        tree.write(dirs[i % 3], f"{10 + i}-f.toml", text)
    assert attrgetter(key)(tree.load().config) == expected


def test_wrong_type_is_an_error_naming_file_and_key(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "10-a.toml", "[agent.timing]\nsteady_interval_secs = 60\n")
    bad = tree.write("etc", "20-b.toml", '[agent.timing]\nsteady_interval_secs = "90"\n')
    result = tree.load()
    (problem,) = result.problems
    assert (problem.severity, problem.file, problem.key) == (
        "error",
        bad,
        "agent.timing.steady_interval_secs",
    )
    assert "integer" in problem.message and "string" in problem.message


def test_windows_accumulate_across_files_in_merge_order(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write(
        "etc",
        "10-a.toml",
        '[updates]\nstrategy = "periodic"\n'
        '[[updates.periodic.window]]\ndays = ["Mon"]\nstart_time = "01:00"\nlength_minutes = 10\n'
        '[[updates.periodic.window]]\ndays = ["Tue"]\nstart_time = "02:00"\nlength_minutes = 20\n',
    )
    tree.write(
        "usr",
        "20-b.toml",
        '[[updates.periodic.window]]\ndays = ["Wed"]\nstart_time = "03:00"\nlength_minutes = 30\n',
    )
    tree.write("run", "30-c.toml", '[updates.periodic]\ntime_zone = "UTC"\n')
    result = tree.load()
    assert result.problems == ()
    windows = result.config.as_dict()["updates"]["periodic"]["window"]
    assert windows == [
        {"length_minutes": 10, "days": ["Mon"], "start_time": "01:00"},
        {"length_minutes": 20, "days": ["Tue"], "start_time": "02:00"},
        {"length_minutes": 30, "days": ["Wed"], "start_time": "03:00"},
    ]
    assert [w.source for w in result.config.updates.periodic.windows] == [
        tree.dir("etc") / "10-a.toml",
        tree.dir("etc") / "10-a.toml",
        tree.dir("usr") / "20-b.toml",
    ]


def test_masked_fragment_windows_do_not_accumulate(tree) -> None:  # type: ignore[no-untyped-def]
    window = (
        '[[updates.periodic.window]]\ndays = ["Sun"]\nstart_time = "00:00"\nlength_minutes = 5\n'
    )
    tree.write("usr", "10-vendor.toml", window)
    tree.write("etc", "20-admin.toml", window.replace("Sun", "Sat"))
    tree.mask("etc", "10-vendor.toml")
    windows = tree.load().config.updates.periodic.windows
    assert [w.days for w in windows] == [(5,)]


VENDOR_JOB = """
[[schedule]]
name = "cleanup"
cron = "0 3 * * *"
command = "/usr/bin/true"
catch_up = false
timeout_secs = 60
"""


def test_schedule_later_entry_overrides_only_its_keys(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "10-vendor.toml", VENDOR_JOB)
    admin = tree.write(
        "etc", "50-admin.toml", '[[schedule]]\nname = "cleanup"\ncron = "30 4 * * *"\n'
    )
    result = tree.load()
    assert result.problems == ()
    (job,) = result.config.schedules
    assert (job.name, job.cron, job.command) == ("cleanup", "30 4 * * *", "/usr/bin/true")
    assert (job.catch_up, job.timeout_secs, job.enabled) == (False, 60, True)
    assert job.source == admin


def test_schedule_enabled_false_alone_disables_vendor_job(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "10-vendor.toml", VENDOR_JOB)
    tree.write("etc", "50-admin.toml", '[[schedule]]\nname = "cleanup"\nenabled = false\n')
    result = tree.load()
    assert result.problems == ()
    (job,) = result.config.schedules
    assert job.enabled is False
    assert (job.cron, job.command, job.catch_up) == ("0 3 * * *", "/usr/bin/true", False)


def test_schedule_override_in_earlier_named_file_loses(tree) -> None:  # type: ignore[no-untyped-def]
    # Merge order is file-name order, not directory order: an /etc file that sorts before
    # the vendor file is overridden by it.
    tree.write("etc", "05-admin.toml", '[[schedule]]\nname = "cleanup"\nenabled = false\n')
    tree.write("usr", "10-vendor.toml", VENDOR_JOB + "enabled = true\n")
    (job,) = tree.load().config.schedules
    assert job.enabled is True


def test_schedules_with_different_names_all_kept_sorted(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "10-vendor.toml", VENDOR_JOB)
    tree.write(
        "etc",
        "50-admin.toml",
        '[[schedule]]\nname = "backup"\ncron = "@daily"\ncommand = "/bin/backup"\n'
        '[[schedule]]\nname = "zz-report"\ncron = "@hourly"\ncommand = "/bin/report"\n',
    )
    result = tree.load()
    assert [s.name for s in result.config.schedules] == ["backup", "cleanup", "zz-report"]
    assert [s["name"] for s in result.config.as_dict()["schedule"]] == [
        "backup",
        "cleanup",
        "zz-report",
    ]


def test_malformed_toml_names_the_file_others_still_used(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "10-a.toml", '[identity]\ngroup = "good"\n')
    bad = tree.write("etc", "20-b.toml", "[updates\nenabled = false\n")
    tree.write("run", "30-c.toml", "[updates]\nallow_downgrade = true\n")
    result = tree.load()
    assert [(p.severity, p.file, p.key) for p in result.problems] == [("error", bad, "")]
    assert "TOML" in result.problems[0].message
    assert tree.fragments(result) == [
        "usr/lib/zincati/config.d/10-a.toml",
        "run/zincati/config.d/30-c.toml",
    ]
    assert result.config.identity.group == "good"
    assert result.config.updates.allow_downgrade is True
    assert result.config.updates.enabled is True  # nothing of the broken file applies
    assert not result.ok


def test_non_utf8_fragment_is_an_error_not_a_crash(tree) -> None:  # type: ignore[no-untyped-def]
    bad = tree.write("etc", "20-b.toml", b'[identity]\ngroup = "\xff\xfe"\n')
    result = tree.load()
    assert [(p.severity, p.file) for p in result.problems] == [("error", bad)]
    assert result.fragments == ()


# ---- property: merging is order-correct -------------------------------------------------

NAMES = ["10-a.toml", "10-b.toml", "9.toml", "A.toml", "a.toml", "a-b.toml", "\u00e9.toml"]
DIR_ORDER = ["usr", "run", "etc"]
REL = {
    "usr": "usr/lib/zincati/config.d",
    "run": "run/zincati/config.d",
    "etc": "etc/zincati/config.d",
}
GROUPS = st.text(alphabet="abcXYZ09.-", min_size=1, max_size=6)
# dotted TOML key → (value strategy, how to read the effective value from the Config)
KEYS: dict[str, tuple[Any, Any]] = {
    "identity.group": (GROUPS, lambda c: c.identity.group),
    "identity.rollout_wariness": (
        st.floats(0.0, 1.0) | st.integers(0, 1),
        lambda c: c.identity.rollout_wariness,
    ),
    "agent.timing.steady_interval_secs": (
        st.integers(1, 10**6),
        lambda c: c.agent.timing.steady_interval_secs,
    ),
    "updates.enabled": (st.booleans(), lambda c: c.updates.enabled),
    "updates.allow_downgrade": (st.booleans(), lambda c: c.updates.allow_downgrade),
    "cincinnati.base_url": (
        st.sampled_from(["https://a.example/", "http://b.example:8080/x"]),
        lambda c: c.cincinnati_base_url,
    ),
}
DEFAULTS = {
    "identity.group": "default",
    "identity.rollout_wariness": None,
    "agent.timing.steady_interval_secs": 300,
    "updates.enabled": True,
    "updates.allow_downgrade": False,
    "cincinnati.base_url": None,
}

fragment_body = st.fixed_dictionaries(
    {}, optional={key: strategy for key, (strategy, _) in KEYS.items()}
)
# Per directory: file name → None (a /dev/null mask) or the keys that fragment sets.
directory = st.dictionaries(st.sampled_from(NAMES), st.none() | fragment_body, max_size=4)
layout = st.fixed_dictionaries({d: directory for d in DIR_ORDER})


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *tables, leaf = dotted.split(".")
        node = out
        for table in tables:
            node = node.setdefault(table, {})
        node[leaf] = value
    return out


def _reference(
    tree_layout: dict[str, dict[str, dict[str, Any] | None]],
) -> tuple[list[str], dict[str, Any]]:
    """Zincati's rule, written out plainly: override/mask by name, then fold in byte order."""
    surviving: dict[str, tuple[str, dict[str, Any]]] = {}
    for d in DIR_ORDER:
        for name, body in tree_layout[d].items():
            if body is None:
                surviving.pop(name, None)
            else:
                surviving[name] = (d, body)
    order = sorted(surviving, key=lambda n: n.encode("utf-8"))
    effective = dict(DEFAULTS)
    for name in order:
        effective.update(surviving[name][1])
    if effective["identity.rollout_wariness"] is not None:
        effective["identity.rollout_wariness"] = float(effective["identity.rollout_wariness"])
    return [f"{REL[surviving[n][0]]}/{n}" for n in order], effective


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,  # the same examples on every CI run
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(layout)
def test_merge_matches_reference(tree_layout) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d, files in tree_layout.items():
            base = root / REL[d]
            base.mkdir(parents=True)
            for name, body in files.items():
                if body is None:
                    (base / name).symlink_to(os.devnull)
                else:
                    (base / name).write_text(tomli_w.dumps(_nest(body)))
        result = load(root)
        want_files, want = _reference(tree_layout)
        assert [str(p.relative_to(root)) for p in result.fragments] == want_files
        got = {key: read(result.config) for key, (_, read) in KEYS.items()}
        assert got == want
        # Only the missing machine-id may be reported; every generated value is valid.
        assert [p.key for p in result.problems] == ["identity.node_uuid"]
