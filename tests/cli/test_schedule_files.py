"""``zincati-py schedule`` commands that write fragments: contents, refusals, bad input.

No systemd here (the bus address points nowhere): the reload step is skipped with
--no-reload or must fail with 75 while keeping the written file.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.cli.schedule_helpers import (
    assert_clean_error,
    make_root,
    tree,
    zpy,
    zpy_json,
)


def _etc(root: Path) -> Path:
    return root / "etc" / "zincati" / "config.d"


def _vendor(root: Path, name: str, text: str) -> Path:
    path = root / "usr" / "lib" / "zincati" / "config.d" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


VENDOR_JOB = '[[schedule]]\nname = "vendor-job"\ncron = "0 3 * * *"\ncommand = "true"\n'


def _config_jobs(root: Path) -> dict[str, dict[str, object]]:
    doc = zpy_json("config", "show", "--root", str(root))
    return {job["name"]: job for job in doc["schedule"]}


def test_create_writes_a_fragment_the_loader_reads(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    proc = zpy(
        "schedule", "create", "backup",
        "--cron", "30 2 * * 1-5",
        "--command", "tar -cf /backup/x.tar /srv",
        "--tz", "Europe/Berlin",
        "--no-catch-up",
        "--randomized-delay", "60",
        "--timeout", "900",
        "--no-reload",
        "--root", str(root),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    target = _etc(root) / "70-schedule-backup.toml"
    assert str(target) in proc.stdout
    assert "OnCalendar=Mon..Fri *-*-* 02:30:00 Europe/Berlin" in proc.stdout
    assert tomllib.loads(target.read_text()) == {
        "schedule": [
            {
                "name": "backup",
                "cron": "30 2 * * 1-5",
                "command": "tar -cf /backup/x.tar /srv",
                "time_zone": "Europe/Berlin",
                "catch_up": False,
                "randomized_delay_secs": 60,
                "timeout_secs": 900,
                "enabled": True,
            }
        ]
    }
    assert not list(_etc(root).glob(".*"))  # no temp file left behind
    job = _config_jobs(root)["backup"]
    assert job["source"] == str(target) and job["timeout_secs"] == 900


def test_existing_name_needs_replace(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    args = ("--no-reload", "--root", str(root))
    assert (
        zpy("schedule", "create", "job", "--cron", "@daily", "--command", "a", *args).returncode
        == 0
    )
    before = tree(root)
    proc = zpy("schedule", "create", "job", "--cron", "@hourly", "--command", "b", *args)
    assert_clean_error(proc, 65, "already exists", "--replace")
    assert tree(root) == before
    proc = zpy(
        "schedule", "create", "job", "--cron", "@hourly", "--command", "b", "--replace", *args
    )
    assert proc.returncode == 0, proc.stderr
    assert _config_jobs(root)["job"]["command"] == "b"
    # A job defined only in a vendor fragment exists too.
    _vendor(root, "50-vendor.toml", VENDOR_JOB)
    proc = zpy("schedule", "create", "vendor-job", "--cron", "@daily", "--command", "x", *args)
    assert_clean_error(proc, 65, "already exists", "50-vendor.toml")


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["bad name", "--cron", "@daily", "--command", "x"], 65, "schedule name"),
        (["-lead", "--cron", "@daily", "--command", "x"], 0, ""),  # argparse: an option
        (["x" * 65, "--cron", "@daily", "--command", "x"], 65, "schedule name"),
        (["ok", "--cron", "61 * * * *", "--command", "x"], 65, "--cron"),
        (["ok", "--cron", "@reboot", "--command", "x"], 65, "--cron"),
        (["ok", "--cron", "@daily", "--command", "  "], 65, "--command"),
        (["ok", "--cron", "@daily", "--command", "x", "--tz", "Mars/Base"], 65, "--tz"),
        (["ok", "--cron", "@daily", "--command", "x", "--timeout", "-1"], 64, "--timeout"),
        (["ok", "--cron", "@daily", "--command", "x", "--timeout", "ten"], 64, "--timeout"),
        (["ok", "--cron", "@daily", "--command", "x", "--randomized-delay", "-1"], 64, "delay"),
    ],
)
def test_bad_input_writes_nothing(tmp_path: Path, argv: list[str], code: int, needle: str) -> None:
    root = make_root(tmp_path)
    before = tree(root)
    proc = zpy("schedule", "create", *argv, "--no-reload", "--root", str(root))
    if code == 0:  # rejected by argparse: a usage error, with its usage text
        assert proc.returncode == 64 and "Traceback" not in proc.stderr
    else:
        assert_clean_error(proc, code, needle)
    assert tree(root) == before


def test_unreachable_systemd_keeps_the_file_says_so_and_exits_75(tmp_path: Path) -> None:
    """Issue 11 item 13: the write succeeded, the reload did not: never leave the admin guessing
    (75 = temporary failure; stdout names the saved file, stderr how to apply it)."""
    root = make_root(tmp_path)
    args = ("--root", str(root), "--user")
    proc = zpy("schedule", "create", "j", "--cron", "@daily", "--command", "x", *args)
    assert_clean_error(proc, 75, "the change is saved but not applied", "unreachable")
    assert "'systemctl --user daemon-reload' to apply it" in proc.stderr
    assert str(_etc(root) / "70-schedule-j.toml") in proc.stdout
    assert (_etc(root) / "70-schedule-j.toml").exists()
    for verb in ("disable", "enable", "delete"):
        assert_clean_error(zpy("schedule", verb, "j", *args), 75, "saved but not applied")
    assert not (_etc(root) / "70-schedule-j.toml").exists()


def test_unwritable_config_dir_is_a_clean_error(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    _etc(root).rmdir()
    _etc(root).write_text("")  # a file where the directory should be
    proc = zpy("schedule", "create", "j", "--cron", "@daily", "--command", "x", "--root", str(root))
    assert_clean_error(proc, 73, "70-schedule-j.toml")


def test_enable_disable_vendor_job_writes_an_override(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    vendor = _vendor(root, "50-vendor.toml", VENDOR_JOB)
    vendor_text = vendor.read_text()
    args = ("--no-reload", "--root", str(root))
    assert zpy("schedule", "disable", "vendor-job", *args).returncode == 0
    override = _etc(root) / "70-schedule-vendor-job.toml"
    assert tomllib.loads(override.read_text()) == {
        "schedule": [{"name": "vendor-job", "enabled": False}]
    }
    assert vendor.read_text() == vendor_text
    job = _config_jobs(root)["vendor-job"]
    assert job["enabled"] is False and job["cron"] == "0 3 * * *"
    assert zpy("schedule", "enable", "vendor-job", *args).returncode == 0
    assert _config_jobs(root)["vendor-job"]["enabled"] is True
    assert_clean_error(zpy("schedule", "enable", "nope", *args), 65, "no schedule nope")


def test_override_goes_after_a_later_fragment(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    _vendor(root, "50-vendor.toml", VENDOR_JOB)
    _vendor(root, "80-vendor-tweak.toml", '[[schedule]]\nname = "vendor-job"\nenabled = true\n')
    assert (
        zpy("schedule", "disable", "vendor-job", "--no-reload", "--root", str(root)).returncode == 0
    )
    assert (_etc(root) / "99-schedule-vendor-job.toml").exists()
    assert not (_etc(root) / "70-schedule-vendor-job.toml").exists()
    assert _config_jobs(root)["vendor-job"]["enabled"] is False


def test_override_never_replaces_a_same_named_vendor_file(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    _vendor(root, "70-schedule-vendor-job.toml", VENDOR_JOB)
    args = ("--no-reload", "--root", str(root))
    assert zpy("schedule", "disable", "vendor-job", *args).returncode == 0
    # /etc/.../70-schedule-vendor-job.toml would mask the vendor file whole: 99- is used.
    assert not (_etc(root) / "70-schedule-vendor-job.toml").exists()
    assert (_etc(root) / "99-schedule-vendor-job.toml").exists()
    job = _config_jobs(root)["vendor-job"]
    assert job["enabled"] is False and job["cron"] == "0 3 * * *"


def test_hand_edited_fragment_is_not_rewritten(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    mine = _etc(root) / "70-schedule-x.toml"
    mine.write_text(
        '[updates]\nenabled = true\n[[schedule]]\nname = "x"\ncron = "@daily"\ncommand = "x"\n'
    )
    text = mine.read_text()
    args = ("--no-reload", "--root", str(root))
    assert_clean_error(zpy("schedule", "disable", "x", *args), 65, "edit it by hand")
    proc = zpy("schedule", "create", "x", "--cron", "@daily", "--command", "y", "--replace", *args)
    assert_clean_error(proc, 65, "edit it by hand")
    assert mine.read_text() == text


def test_delete(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    args = ("--no-reload", "--root", str(root))
    assert (
        zpy("schedule", "create", "mine", "--cron", "@daily", "--command", "x", *args).returncode
        == 0
    )
    proc = zpy("schedule", "delete", "mine", *args)
    assert proc.returncode == 0 and "deleted" in proc.stdout
    assert "mine" not in _config_jobs(root)
    assert not (_etc(root) / "70-schedule-mine.toml").exists()
    assert_clean_error(zpy("schedule", "delete", "mine", *args), 65, "no schedule mine")
    # A vendor job cannot be deleted from its file: it is disabled by an override instead.
    vendor = _vendor(root, "50-vendor.toml", VENDOR_JOB)
    proc = zpy("schedule", "delete", "vendor-job", *args)
    assert proc.returncode == 0 and "not edited" in proc.stdout and str(vendor) in proc.stdout
    assert _config_jobs(root)["vendor-job"]["enabled"] is False
    # A hand-written fragment holding more than the job is not deleted.
    (_etc(root) / "70-schedule-x.toml").write_text(
        '[updates]\nenabled = true\n[[schedule]]\nname = "x"\ncron = "@daily"\ncommand = "x"\n'
    )
    assert_clean_error(zpy("schedule", "delete", "x", *args), 65, "edit it by hand")


def test_list_without_systemd_has_nulls_and_a_note(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    _vendor(root, "50-vendor.toml", VENDOR_JOB)
    doc = zpy_json("schedule", "list", "--root", str(root), "--user")
    (row,) = doc["schedules"]
    assert row["name"] == "vendor-job" and row["on_calendar"] == ["*-*-* 03:00:00"]
    assert row["next_run"] is None and row["last_run"] is None
    assert doc["systemd"] == {"manager": "user", "reachable": False}
    assert "not reachable" in doc["note"]
    text = zpy("schedule", "list", "--root", str(root))
    assert text.returncode == 0 and "vendor-job" in text.stdout and "not reachable" in text.stderr


def test_record_hook_appends_and_history_reads(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    _vendor(root, "50-vendor.toml", VENDOR_JOB)
    env = {
        "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus",
        "SERVICE_RESULT": "exit-code",
        "EXIT_CODE": "exited",
        "EXIT_STATUS": "3",
        "INVOCATION_ID": "abc",
    }
    for _ in range(2):
        proc = zpy("schedule", "_record", "vendor-job", "--root", str(root), "--user", env=env)
        assert proc.returncode == 0  # systemd unreachable: recorded without a start time
    path = root / "var" / "lib" / "zincati-py-schedule" / "history" / "vendor-job.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2
    assert records[0]["result"] == "exit-code" and records[0]["exit_status"] == "3"
    assert records[0]["start"] is None and records[0]["end"]
    doc = zpy_json("schedule", "history", "vendor-job", "--root", str(root), "--limit", "1")
    assert doc == {"name": "vendor-job", "runs": records[-1:]}
    # --user like every other schedule command (issue 11 item 13).
    doc = zpy_json("schedule", "history", "vendor-job", "--root", str(root), "--user")
    assert doc == {"name": "vendor-job", "runs": records}
    assert_clean_error(zpy("schedule", "history", "nope", "--root", str(root)), 65, "no schedule")


def test_failed_unit_recorder_records_only_a_run_the_hook_missed(tmp_path: Path) -> None:
    # OnFailure= of a job run as another user: records from MONITOR_* what systemd could not
    # let the hook record (217/USER), once; a run the hook recorded is left alone.
    root = make_root(tmp_path)
    _vendor(root, "50-vendor.toml", VENDOR_JOB)
    bus = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    hook = {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "3"}
    argv = ("schedule", "_record", "vendor-job", "--root", str(root), "--user")
    assert zpy(*argv, env=bus | hook | {"INVOCATION_ID": "aa"}).returncode == 0
    monitor = {
        "MONITOR_SERVICE_RESULT": "exit-code",
        "MONITOR_EXIT_CODE": "exited",
        "MONITOR_EXIT_STATUS": "217",
    }
    for invocation in ("aa", "bb", "bb"):
        env = bus | monitor | {"MONITOR_INVOCATION_ID": invocation}
        proc = zpy(*argv, "--failed-unit", env=env)
        assert proc.returncode == 0, proc.stderr
    runs = zpy_json("schedule", "history", "vendor-job", "--root", str(root))["runs"]
    assert [(r["invocation_id"], r["exit_status"]) for r in runs] == [("aa", "3"), ("bb", "217")]


def test_record_trims_history(tmp_path: Path) -> None:
    from zincati_py.schedule import history

    root = make_root(tmp_path)
    path = root / "var" / "lib" / "zincati-py-schedule" / "history" / "j.jsonl"
    path.parent.mkdir(parents=True)
    pad = history.MAX_BYTES // (history.KEEP + 100) - 30
    line = json.dumps({"name": "j", "pad": "x" * pad}) + "\n"
    count = history.MAX_BYTES // len(line) + 1
    assert count > history.KEEP
    path.write_text(line * count)
    env = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    assert zpy("schedule", "_record", "j", "--root", str(root), "--user", env=env).returncode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == history.KEEP
    assert json.loads(lines[-1])["unit"] == "zincati-py-schedule-j.service"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["j.jsonl"]  # no temp file left


NOBODY = 65534


@pytest.mark.root  # chown to another user
def test_record_never_follows_a_path_another_user_controls(tmp_path: Path) -> None:
    """Issue 11 item 7: the hook runs as root. The agent user owned the old history directory
    (/var/lib/zincati-py/history) and could plant NAME.jsonl -> any file: root then appended
    to it and, when trimming, rewrote it 0644 (a root-only file copied world-readable)."""
    root = make_root(tmp_path)
    env = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus", "SERVICE_RESULT": "success"}
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)

    def record(name: str) -> subprocess.CompletedProcess[str]:
        return zpy("schedule", "_record", name, "--root", str(root), "--user", env=env)

    def refused(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
        # The first stderr line says systemd is unreachable (no start time): not the point.
        assert proc.returncode == code, (proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert all(needle in last for needle in needles), last

    def untouched() -> None:
        assert secret.read_text() == "root only\n"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600

    # The reported attack: a symlink in the agent-owned state directory (trimming size, too).
    agent_dir = root / "var" / "lib" / "zincati-py" / "history"
    agent_dir.mkdir(parents=True)
    os.chown(agent_dir.parent, NOBODY, NOBODY)
    os.chown(agent_dir, NOBODY, NOBODY)
    secret.write_text("root only\n" + "x" * 300_000)
    (agent_dir / "j.jsonl").symlink_to(secret)
    os.lchown(agent_dir / "j.jsonl", NOBODY, NOBODY)
    assert record("j").returncode == 0
    assert secret.read_text().endswith("x" * 1000) and len(secret.read_text()) == 300_010
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    secret.write_text("root only\n")
    assert len(zpy_json("schedule", "history", "j", "--root", str(root))["runs"]) == 1
    history_dir = root / "var" / "lib" / "zincati-py-schedule" / "history"
    assert (history_dir / "j.jsonl").is_file() and not (history_dir / "j.jsonl").is_symlink()

    # A symlink in our own directory (however it got there) is not followed either.
    (history_dir / "k.jsonl").symlink_to(secret)
    refused(record("k"), 77, "k.jsonl", "symbolic link")
    untouched()
    # Nor a hard link to someone else's file.
    other = tmp_path / "other"
    other.write_text("theirs\n")
    os.chown(other, NOBODY, NOBODY)
    os.link(other, history_dir / "h.jsonl")
    refused(record("h"), 77, "h.jsonl", "refusing")
    assert other.read_text() == "theirs\n"

    # A history directory (or a parent) another user can change is refused: they could swap a
    # component for a symlink between our checks.
    for victim in (history_dir, history_dir.parent, root / "var"):
        os.chown(victim, NOBODY, NOBODY)
        (history_dir / "m.jsonl").unlink(missing_ok=True)
        refused(record("m"), 77, str(victim), "another user")
        assert not (history_dir / "m.jsonl").exists()
        os.chown(victim, 0, 0)
    history_dir.chmod(0o777)
    refused(record("m"), 77, str(history_dir), "another user")
    history_dir.chmod(0o750)
    # Packaged, the directory is 2750 root:zincati-py: files root writes inherit the agent's
    # group, readable to it (job metrics), writable by root only.
    history_dir.chmod(0o750)
    os.chown(history_dir, 0, NOBODY)
    history_dir.chmod(0o2750)
    (history_dir / "g.jsonl").unlink(missing_ok=True)
    assert record("g").returncode == 0
    st = (history_dir / "g.jsonl").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, NOBODY, 0o640)
    # A symlinked directory on the way is not followed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "var" / "lib" / "zincati-py-schedule").rename(tmp_path / "moved")
    (root / "var" / "lib" / "zincati-py-schedule").symlink_to(elsewhere)
    refused(record("m"), 77, "symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_generator_and_cli_agree_on_the_history_path(tmp_path: Path) -> None:
    """The hook the generator writes names the root the CLI reads history from."""
    from zincati_py.config import load
    from zincati_py.generator import render

    root = make_root(tmp_path)
    _vendor(root, "50-vendor.toml", VENDOR_JOB)
    rendered = render(load(root).config, root=root, executable="/x/zincati-py")
    service = rendered.units["zincati-py-schedule-vendor-job.service"]
    assert f"ExecStopPost=-/x/zincati-py schedule _record vendor-job --root {root}\n" in service
    assert os.path.isabs(str(root))


EVERY_OPTION = (
    "--cron", "30 2 * * 1-5", "--command", "echo every", "--tz", "Europe/Berlin",
    "--no-catch-up", "--randomized-delay", "60", "--timeout", "900", "--retries", "2",
    "--retry-delay", "30", "--on-failure", "echo failed", "--run-as", "backup",
    "--dynamic-user",
)  # fmt: skip
EVERY_SETTING = {
    "cron": "30 2 * * 1-5",
    "command": "echo every",
    "time_zone": "Europe/Berlin",
    "catch_up": False,
    "randomized_delay_secs": 60,
    "timeout_secs": 900,
    "retries": 2,
    "retry_delay_secs": 30,
    "on_failure": "echo failed",
    "user": "backup",
    "dynamic_user": True,
    "enabled": True,
}
# One flag at a time: (argv, the settings it changes).
ONE_AT_A_TIME = [
    (["--cron", "0 4 * * *"], {"cron": "0 4 * * *"}),
    (["--command", "echo changed"], {"command": "echo changed"}),
    (["--tz", "UTC"], {"time_zone": "UTC"}),
    (["--catch-up"], {"catch_up": True}),
    (["--randomized-delay", "5"], {"randomized_delay_secs": 5}),
    (["--timeout", "30"], {"timeout_secs": 30}),
    (["--tz", "localtime"], {"time_zone": None}),
    (["--no-catch-up"], {"catch_up": False}),
    (["--retries", "5"], {"retries": 5}),
    (["--retry-delay", "1"], {"retry_delay_secs": 1}),
    (["--on-failure", "logger failed"], {"on_failure": "logger failed"}),
    (["--run-as", "nobody"], {"user": "nobody"}),
    (["--no-dynamic-user"], {"dynamic_user": False}),
    (["--argv", "/usr/bin/env", "-i", "x y"], {"command": ["/usr/bin/env", "-i", "x y"]}),
    (["--timeout", "0"], {"timeout_secs": None}),
    (["--on-failure", ""], {"on_failure": None}),
    (["--run-as", ""], {"user": None}),
]


def _settings(root: Path, name: str) -> dict[str, object]:
    job = _config_jobs(root)[name]
    return {k: job[k] for k in EVERY_SETTING}


@pytest.mark.parametrize("vendor", [False, True], ids=["admin-job", "vendor-job"])
def test_modify_changes_exactly_the_options_given(tmp_path: Path, vendor: bool) -> None:
    """Issue 14: a job created with every option, then modified one flag at a time, keeps all
    the others; the same for a vendor job (through an /etc override, the vendor file intact)."""
    root = make_root(tmp_path)
    args = ("--no-reload", "--root", str(root))
    if vendor:
        text = '[[schedule]]\nname = "j"\n' + "".join(
            f"{k} = {json.dumps(v).lower() if isinstance(v, bool) else json.dumps(v)}\n"
            for k, v in EVERY_SETTING.items()
        )
        vendor_file = _vendor(root, "50-vendor.toml", text)
    else:
        assert zpy("schedule", "create", "j", *EVERY_OPTION, *args).returncode == 0
    want = dict(EVERY_SETTING)
    assert _settings(root, "j") == want
    for argv, changes in ONE_AT_A_TIME:
        proc = zpy("schedule", "modify", "j", *args, *argv)  # --argv takes the rest: last
        assert proc.returncode == 0, proc.stderr
        want |= changes
        assert _settings(root, "j") == want, argv
    if vendor:
        assert vendor_file.read_text() == text
        override = tomllib.loads((_etc(root) / "70-schedule-j.toml").read_text())
        (entry,) = override["schedule"]
        assert set(entry) == set(EVERY_SETTING) - {"enabled"} | {"name"}
    # Where each setting comes from.
    status = zpy_json("schedule", "status", "j", "--root", str(root))
    sources = status["setting_sources"]
    assert sources["cron"] == str(_etc(root) / "70-schedule-j.toml")
    assert sources["enabled"] == (str(vendor_file) if vendor else sources["cron"])


def test_modify_refuses_bad_input_and_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    args = ("--no-reload", "--root", str(root))
    _vendor(root, "50-vendor.toml", VENDOR_JOB)
    before = tree(root)
    assert_clean_error(zpy("schedule", "modify", "vendor-job", *args), 64, "no setting given")
    assert_clean_error(zpy("schedule", "modify", "nope", "--tz", "UTC", *args), 65, "no schedule")
    proc = zpy("schedule", "modify", "vendor-job", "--cron", "61 * * * *", *args)
    assert_clean_error(proc, 65, "--cron")
    proc = zpy("schedule", "modify", "vendor-job", "--tz", "Mars/Base", *args)
    assert_clean_error(proc, 65, "--tz")
    assert tree(root) == before


def test_create_replace_replaces_the_whole_job_admin_or_vendor(tmp_path: Path) -> None:
    """Issue 14: --replace dropped an admin job's settings but merged into a vendor job's: now
    it means "the whole job" for both; settings not given are back to their defaults."""
    root = make_root(tmp_path)
    args = ("--no-reload", "--root", str(root))
    defaults = {"time_zone": None, "catch_up": True, "randomized_delay_secs": 0, "enabled": True}
    assert zpy("schedule", "create", "mine", *EVERY_OPTION, *args).returncode == 0
    _vendor(
        root,
        "50-vendor.toml",
        VENDOR_JOB + 'time_zone = "UTC"\ncatch_up = false\nrandomized_delay_secs = 30\n',
    )
    # A vendor job modified first: the override holds a time zone the replacement must drop.
    assert zpy("schedule", "modify", "vendor-job", "--tz", "Asia/Tokyo", *args).returncode == 0
    for name in ("mine", "vendor-job"):
        proc = zpy(
            "schedule", "create", name, "--cron", "0 5 * * *", "--command", "echo new",
            "--replace", *args,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        got = _settings(root, name)
        assert {k: got[k] for k in defaults} == defaults, name
        assert (got["cron"], got["command"], got["timeout_secs"]) == ("0 5 * * *", "echo new", None)


def test_history_output_asks_the_journal_for_every_attempt_of_the_run(tmp_path: Path) -> None:
    """Issue 14: --output [--run N] reads what a run printed from the journal by invocation id
    (all attempts of the run). The test machine has no journald: a journalctl stand-in on
    PATH shows what is asked; the real journalctl's refusal is checked too."""
    root = make_root(tmp_path)
    _vendor(root, "50-vendor.toml", VENDOR_JOB)
    bus = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    for attempt, invocation in ((None, "old"), (1, "a1"), (2, "a2")):
        env = bus | {"SERVICE_RESULT": "exit-code", "INVOCATION_ID": invocation}
        proc = zpy("schedule", "_record", "vendor-job", "--root", str(root), "--user", env=env)
        assert proc.returncode == 0
        path = root / "var/lib/zincati-py-schedule/history/vendor-job.jsonl"
        lines = path.read_text().splitlines()
        record = json.loads(lines[-1]) | {"attempt": attempt}  # as systemd would have counted
        path.write_text("\n".join([*lines[:-1], json.dumps(record)]) + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "journalctl"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "arg $a"; done\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = ("schedule", "history", "vendor-job", "--output", "--root", str(root))
    doc = zpy_json(*args, "--user", env=env)
    assert doc["run"] == 1 and doc["invocation_ids"] == ["a1", "a2"]
    assert doc["output"] == [
        "arg --no-pager", "arg --quiet", "arg --output=short-iso", "arg --user",
        f"arg --root={root}", "arg _SYSTEMD_INVOCATION_ID=a1", "arg _SYSTEMD_INVOCATION_ID=a2",
    ]  # fmt: skip
    doc = zpy_json(*args, "--run", "2", env=env)
    assert doc["invocation_ids"] == ["old"] and "arg --user" not in doc["output"]
    assert_clean_error(zpy(*args, "--run", "3", env=env), 65, "--run 3: 2 recorded runs")
    assert_clean_error(
        zpy("schedule", "history", "vendor-job", "--run", "1", "--root", str(root)), 64, "--output"
    )
    fake.write_text("#!/bin/sh\necho 'Failed to open journal' >&2\nexit 1\n")
    assert_clean_error(zpy(*args, env=env), 69, "journalctl: Failed to open journal")
