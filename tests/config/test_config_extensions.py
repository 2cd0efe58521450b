"""Our extensions: ``[[schedule]]`` jobs, ``check_cron``, ``[agent.reboot]``, ``[agent.metrics]``,
the ``file`` strategy and strategy arrays."""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import pytest

F = "etc/zincati/config.d/50-test.toml"

FULL_JOB = """
[[schedule]]
name = "db-backup_2"
cron = "15 2 * * *"
command = "/usr/local/bin/backup --all"
time_zone = "Europe/Berlin"
catch_up = false
randomized_delay_secs = 120
timeout_secs = 3600
enabled = false
"""


def test_schedule_all_fields(tree) -> None:  # type: ignore[no-untyped-def]
    path = tree.write("etc", "50-test.toml", FULL_JOB)
    result = tree.load()
    assert result.problems == ()
    (job,) = result.config.schedules
    assert job.as_dict() == {
        "name": "db-backup_2",
        "cron": "15 2 * * *",
        "command": "/usr/local/bin/backup --all",
        "time_zone": "Europe/Berlin",
        "catch_up": False,
        "randomized_delay_secs": 120,
        "timeout_secs": 3600,
        "enabled": False,
        "retries": 0,
        "retry_delay_secs": 0,
        "on_failure": None,
        "user": None,
        "dynamic_user": False,
        "exclusive_group": None,
        "exclusive_wait_secs": 0,
        "source": str(path),
    }


def test_schedule_defaults(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", '[[schedule]]\nname = "j"\ncron = "@hourly"\ncommand = "x"\n')
    (job,) = tree.load().config.schedules
    assert (job.time_zone, job.catch_up, job.randomized_delay_secs, job.timeout_secs) == (
        None,
        True,
        0,
        None,
    )
    assert job.enabled is True


JOB = '[[schedule]]\nname = "job"\ncron = "0 * * * *"\ncommand = "/bin/true"\n'


def test_schedule_localtime_means_no_zone(tree) -> None:  # type: ignore[no-untyped-def]
    # OnCalendar= without a suffix is the local zone; a literal "localtime" suffix would only
    # work where /usr/share/zoneinfo/localtime happens to exist.
    tree.write("etc", "50-test.toml", JOB + 'time_zone = "localtime"\n')
    result = tree.load()
    assert result.problems == ()
    (job,) = result.config.schedules
    assert job.time_zone is None


# (id, fragment, problems as (severity, key)); every row's job is dropped
BAD_JOBS = [
    ("name-with-space", JOB.replace('"job"', '"my job"'), [("error", "schedule[my job].name")]),
    ("name-leading-dash", JOB.replace('"job"', '"-job"'), [("error", "schedule[-job].name")]),
    ("name-trailing-newline", JOB.replace('"job"', '"job\\n"'),
     [("error", "schedule[job\n].name")]),
    ("name-empty", JOB.replace('"job"', '""'), [("error", "schedule[].name")]),
    ("name-slash", JOB.replace('"job"', '"a/b"'), [("error", "schedule[a/b].name")]),
    ("name-65-chars", JOB.replace('"job"', '"' + "a" * 65 + '"'),
     [("error", f"schedule[{'a' * 65}].name")]),
    ("name-missing", '[[schedule]]\ncron = "0 * * * *"\ncommand = "x"\n',
     [("error", "schedule[0].name")]),
    ("name-int", '[[schedule]]\nname = 5\ncron = "0 * * * *"\ncommand = "x"\n',
     [("error", "schedule[0].name"), ("error", "schedule[0].name")]),
    ("cron-missing", '[[schedule]]\nname = "job"\ncommand = "x"\n',
     [("error", "schedule[job].cron")]),
    ("command-missing", '[[schedule]]\nname = "job"\ncron = "@daily"\n',
     [("error", "schedule[job].command")]),
    ("command-blank", JOB.replace('"/bin/true"', '"  "'), [("error", "schedule[job].command")]),
    ("cron-out-of-range", JOB.replace('"0 * * * *"', '"61 * * * *"'),
     [("error", "schedule[job].cron")]),
    ("cron-four-fields", JOB.replace('"0 * * * *"', '"0 * * *"'),
     [("error", "schedule[job].cron")]),
    ("cron-reboot", JOB.replace('"0 * * * *"', '"@reboot"'), [("error", "schedule[job].cron")]),
    ("cron-int", JOB.replace('"0 * * * *"', "5"),
     [("error", "schedule[0].cron"), ("error", "schedule[job].cron")]),
    ("bad-time-zone", JOB + 'time_zone = "Mars/Olympus_Mons"\n',
     [("error", "schedule[job].time_zone")]),
    ("negative-delay", JOB + "randomized_delay_secs = -1\n",
     [("error", "schedule[job].randomized_delay_secs")]),
    ("negative-timeout", JOB + "timeout_secs = -1\n", [("error", "schedule[job].timeout_secs")]),
    ("schedule-as-table", '[schedule]\nname = "job"\n', [("error", "schedule")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "problems"), [c[1:] for c in BAD_JOBS], ids=[c[0] for c in BAD_JOBS]
)
def test_bad_job_is_dropped_with_an_error(tree, text, problems) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", text)
    result = tree.load()
    assert result.config.schedules == ()
    assert [(sev, key) for sev, _, key in tree.problems(result)] == problems
    assert {file for _, file, _ in tree.problems(result)} == {F}
    assert not result.ok


def test_bad_job_does_not_drop_the_others(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write(
        "etc", "50-test.toml", JOB + JOB.replace('"job"', '"bad"').replace("0 * * * *", "nope")
    )
    result = tree.load()
    assert [s.name for s in result.config.schedules] == ["job"]
    assert [key for _, _, key in tree.problems(result)] == ["schedule[bad].cron"]


# (id, extra keys, problems as (severity, key)); the job is kept with defaults for bad keys
SOFT = [
    ("catch-up-string", 'catch_up = "yes"\n', [("error", "schedule[0].catch_up")]),
    ("enabled-int", "enabled = 0\n", [("error", "schedule[0].enabled")]),
    ("unknown-key", 'owner = "root"\n', [("warning", "schedule[0].owner")]),
]


@pytest.mark.parametrize(("extra", "problems"), [c[1:] for c in SOFT], ids=[c[0] for c in SOFT])
def test_bad_optional_job_key(tree, extra, problems) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", JOB + extra)
    result = tree.load()
    (job,) = result.config.schedules
    assert (job.catch_up, job.enabled) == (True, True)
    assert [(sev, key) for sev, _, key in tree.problems(result)] == problems


def test_job_error_names_the_file_that_set_the_bad_key(tree) -> None:  # type: ignore[no-untyped-def]
    tree.write("usr", "10-vendor.toml", JOB)
    admin = tree.write("etc", "50-admin.toml", '[[schedule]]\nname = "job"\ncron = "nope"\n')
    result = tree.load()
    (problem,) = result.problems
    assert (problem.file, problem.key) == (admin, "schedule[job].cron")
    assert result.config.schedules == ()


# ---- [agent.timing] check_cron, [agent.reboot], [agent.metrics], [updates.file] ----------

# (id, fragment, dotted attribute, expected, problems as (severity, key))
ROWS: list[tuple[str, str, str, Any, list[tuple[str, str]]]] = [
    ("check-cron-default", "", "agent.timing.check_cron", None, []),
    ("check-cron", '[agent.timing]\ncheck_cron = "*/10 * * * *"\n', "agent.timing.check_cron",
     "*/10 * * * *", []),
    ("check-cron-hashed", '[agent.timing]\ncheck_cron = "H * * * *"\n', "agent.timing.check_cron",
     "H * * * *", []),
    ("check-cron-bad", '[agent.timing]\ncheck_cron = "*/10 * *"\n', "agent.timing.check_cron", None,
     [("error", "agent.timing.check_cron")]),
    ("check-cron-reboot", '[agent.timing]\ncheck_cron = "@reboot"\n', "agent.timing.check_cron",
     None, [("error", "agent.timing.check_cron")]),
    ("check-cron-int", "[agent.timing]\ncheck_cron = 5\n", "agent.timing.check_cron", None,
     [("error", "agent.timing.check_cron")]),
    ("postpone-default", "", "agent.reboot.max_postpone_secs", 600, []),
    ("postpone-0", "[agent.reboot]\nmax_postpone_secs = 0\n", "agent.reboot.max_postpone_secs", 0,
     []),
    ("postpone-negative", "[agent.reboot]\nmax_postpone_secs = -1\n",
     "agent.reboot.max_postpone_secs", 600, [("error", "agent.reboot.max_postpone_secs")]),
    ("postpone-float", "[agent.reboot]\nmax_postpone_secs = 1.5\n",
     "agent.reboot.max_postpone_secs", 600, [("error", "agent.reboot.max_postpone_secs")]),
    ("warn-default", "", "agent.reboot.warn_interactive", True, []),
    ("warn-false", "[agent.reboot]\nwarn_interactive = false\n", "agent.reboot.warn_interactive",
     False, []),
    ("warn-string", '[agent.reboot]\nwarn_interactive = "no"\n', "agent.reboot.warn_interactive",
     True, [("error", "agent.reboot.warn_interactive")]),
    ("reboot-unknown", "[agent.reboot]\nmax_postpone = 5\n", "agent.reboot.max_postpone_secs", 600,
     [("warning", "agent.reboot.max_postpone")]),
    ("metrics-default", "", "agent.metrics.listen", None, []),
    ("metrics-listen", '[agent.metrics]\nlisten = "127.0.0.1:9100"\n', "agent.metrics.listen",
     "127.0.0.1:9100", []),
    ("metrics-listen-v6", '[agent.metrics]\nlisten = "[::1]:9100"\n', "agent.metrics.listen",
     "[::1]:9100", []),
    ("metrics-no-port", '[agent.metrics]\nlisten = "localhost"\n', "agent.metrics.listen", None,
     [("error", "agent.metrics.listen")]),
    ("metrics-port-0", '[agent.metrics]\nlisten = "localhost:0"\n', "agent.metrics.listen", None,
     [("error", "agent.metrics.listen")]),
    ("file-strategy", '[updates]\nstrategy = "file"\n[updates.file]\npath = "/run/allow"\n',
     "updates.file.path", "/run/allow", []),
    ("file-strategy-no-path", '[updates]\nstrategy = "file"\n', "updates.file.path", None,
     [("error", "updates.file.path")]),
    ("file-strategy-relative", '[updates]\nstrategy = "file"\n[updates.file]\npath = "allow"\n',
     "updates.file.path", None, [("error", "updates.file.path")]),
    ("file-path-unused-relative", '[updates.file]\npath = "allow"\n', "updates.file.path", None,
     [("warning", "updates.file.path")]),
    ("file-max-age-0", '[updates]\nstrategy = "file"\n[updates.file]\npath = "/a"\n'
     "max_age_secs = 0\n", "updates.file.max_age_secs", None,
     [("error", "updates.file.max_age_secs")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "attr", "expected", "problems"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_extension_key(tree, text, attr, expected, problems) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", text)
    result = tree.load()
    assert attrgetter(attr)(result.config) == expected
    assert [(sev, key) for sev, _, key in tree.problems(result)] == problems
    assert all(file == F for _, file, _ in tree.problems(result))


# ---- strategy arrays ------------------------------------------------------------------------

FL = '[updates.fleet_lock]\nbase_url = "http://fl.example/"\n'
WIN = '[[updates.periodic.window]]\ndays = ["Sun"]\nstart_time = "03:00"\nlength_minutes = 60\n'

# (id, strategy TOML value, expected tuple, problems as (severity, key))
ARRAYS = [
    ("single", '["periodic"]', ("periodic",), []),
    ("two", '["fleet_lock", "periodic"]', ("fleet_lock", "periodic"), []),
    ("order-kept", '["periodic", "fleet_lock"]', ("periodic", "fleet_lock"), []),
    ("immediate-alone", '["immediate"]', ("immediate",), []),
    ("immediate-dropped-from-composition", '["immediate", "periodic"]', ("periodic",), []),
    ("immediate-dropped-last", '["fleet_lock", "immediate"]', ("fleet_lock",), []),
    ("empty-string-entry-is-immediate", '["", "periodic"]', ("periodic",), []),
    ("duplicate-warned", '["periodic", "periodic"]', ("periodic",),
     [("warning", "updates.strategy")]),
    ("duplicate-immediate", '["immediate", "immediate"]', ("immediate",),
     [("warning", "updates.strategy")]),
    ("empty-array", "[]", ("immediate",), [("error", "updates.strategy")]),
    ("unknown-entry", '["periodic", "bogus"]', ("immediate",), [("error", "updates.strategy")]),
    ("non-string-entry", '["periodic", 1]', ("immediate",), [("error", "updates.strategy")]),
    ("nested-array", '[["periodic"]]', ("immediate",), [("error", "updates.strategy")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "expected", "problems"), [c[1:] for c in ARRAYS], ids=[c[0] for c in ARRAYS]
)
def test_strategy_array(tree, value, expected, problems) -> None:  # type: ignore[no-untyped-def]
    tree.write("etc", "50-test.toml", f"[updates]\nstrategy = {value}\n" + FL + WIN)
    result = tree.load()
    assert result.config.updates.strategy == expected
    assert [(sev, key) for sev, _, key in tree.problems(result)] == problems


def test_strategy_array_validates_every_member(tree) -> None:  # type: ignore[no-untyped-def]
    # Both members' requirements apply: no fleet_lock URL and no window are two errors.
    tree.write("etc", "50-test.toml", '[updates]\nstrategy = ["fleet_lock", "periodic"]\n')
    result = tree.load()
    assert result.config.updates.strategy == ("fleet_lock", "periodic")
    assert tree.problems(result) == [
        ("error", F, "updates.fleet_lock.base_url"),
        ("error", F, "updates.periodic.window"),
    ]


def test_strategy_array_makes_windows_errors(tree) -> None:  # type: ignore[no-untyped-def]
    bad = WIN.replace("Sun", "Caturday")
    tree.write(
        "etc", "50-test.toml", '[updates]\nstrategy = ["fleet_lock", "periodic"]\n' + FL + WIN + bad
    )
    result = tree.load()
    assert tree.problems(result) == [("error", F, "updates.periodic.window[1].days")]
