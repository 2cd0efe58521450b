"""Generated timers and the schedule/trigger commands against a real systemd --user manager."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from testbed.systemd import UserManager
from tests.cli.schedule_helpers import assert_clean_error, make_root, wait_for, zpy, zpy_json
from zincati_py.config import load
from zincati_py.dbus.systemd import TIMER_IFACE
from zincati_py.dbus.systemd_sync import Systemd
from zincati_py.schedule import translate
from zincati_py.schedule.preview import next_elapses

CONFIG = """
[updates]
strategy = "periodic"
[updates.periodic]
time_zone = "UTC"
[[updates.periodic.window]]
days = ["Sat", "Sun"]
start_time = "22:30"
length_minutes = 120

[[schedule]]
name = "nightly"
cron = "15 3 * * *"
command = "true"
time_zone = "Europe/Berlin"
randomized_delay_secs = 45

[[schedule]]
name = "quarter"
cron = "*/15 * * * *"
command = "true"
catch_up = false
"""


def _write(root: Path, name: str, text: str) -> Path:
    path = root / "etc" / "zincati" / "config.d" / name
    path.write_text(text)
    return path


def _timers(manager: UserManager) -> dict[str, str]:
    """list-timers: unit → NEXT column (as printed), for loaded timers."""
    out = manager.systemctl("list-timers", "--all", "--no-legend", "--plain")
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        unit = next(p for p in parts if p.endswith(".timer"))
        rows[unit] = " ".join(parts[:4]) if parts[0] != "-" else "-"
    return rows


def _start(
    factory: Callable[..., UserManager], tmp_path: Path, config: str
) -> tuple[Path, UserManager]:
    root = make_root(tmp_path)
    _write(root, "50-test.toml", config)
    return root, factory(root)


def test_generated_timers_load_and_match_the_translation(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    root, manager = _start(user_manager_factory, tmp_path, CONFIG)
    expected = {
        "zincati-py-check.timer",
        "zincati-py-window-1.timer",
        "zincati-py-schedule-nightly.timer",
        "zincati-py-schedule-quarter.timer",
    }
    assert set(_timers(manager)) == expected
    node = load(root).config.identity.node_uuid
    with Systemd(address=manager.bus_address) as systemd:
        assert set(systemd.list_unit_names(["zincati-py-*.timer"])) == expected
        for unit, cron, tz in (
            ("zincati-py-schedule-quarter.timer", "*/15 * * * *", None),
            ("zincati-py-window-1.timer", None, "UTC"),
        ):
            state = systemd.timer_state(unit)
            assert state.unit.active_state == "active"
            lines = translate(cron, tz=tz, hash_id=node) if cron else ["Sat,Sun *-*-* 22:30:00 UTC"]
            # systemd computed the next elapse from the same lines systemd-analyze evaluates.
            (want,) = next_elapses(lines, 1, after=datetime.now(UTC).replace(microsecond=0))
            if state.next_elapse != want:  # the minute may have turned between the two reads
                (want,) = next_elapses(lines, 1)
            assert state.next_elapse == want, (unit, state.next_elapse, want)
        nightly = systemd.properties("zincati-py-schedule-nightly.timer", TIMER_IFACE)
        quarter = systemd.properties("zincati-py-schedule-quarter.timer", TIMER_IFACE)
        assert nightly["Persistent"] is True and nightly["RandomizedDelayUSec"] == 45_000_000
        assert quarter["Persistent"] is False and quarter["RandomizedDelayUSec"] == 0
        calendars = [c[1] for c in nightly["TimersCalendar"]]
        assert calendars == ["*-*-* 03:15:00 Europe/Berlin"]
    # And what the CLI reports is what systemd says.
    doc = zpy_json("schedule", "list", "--root", str(root), "--user", env=manager.env())
    assert doc["systemd"]["reachable"] is True
    rows = {row["name"]: row for row in doc["schedules"]}
    assert rows["quarter"]["timer_loaded"] is True and rows["quarter"]["next_run"]


def test_create_and_reload_makes_a_new_timer_appear(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    root, manager = _start(user_manager_factory, tmp_path, "")
    assert "zincati-py-schedule-fresh.timer" not in _timers(manager)
    proc = zpy(
        "schedule", "create", "fresh", "--cron", "0 5 * * *", "--command", "true",
        "--tz", "UTC", "--root", str(root), "--user", env=manager.env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = _timers(manager)["zincati-py-schedule-fresh.timer"]
    (want,) = next_elapses(["*-*-* 05:00:00 UTC"], 1)
    assert row.endswith(want.strftime("%Y-%m-%d %H:%M:%S UTC"))  # started, not just loaded
    # Changing the cron re-arms it; disabling stops and removes it.
    proc = zpy(
        "schedule", "create", "fresh", "--cron", "0 6 * * *", "--command", "true",
        "--tz", "UTC", "--replace", "--root", str(root), "--user", env=manager.env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (want,) = next_elapses(["*-*-* 06:00:00 UTC"], 1)
    assert _timers(manager)["zincati-py-schedule-fresh.timer"].endswith(
        want.strftime("%Y-%m-%d %H:%M:%S UTC")
    )
    assert (
        zpy(
            "schedule", "disable", "fresh", "--root", str(root), "--user", env=manager.env()
        ).returncode
        == 0
    )
    state = manager.systemctl("is-active", "zincati-py-schedule-fresh.timer", check=False).strip()
    assert state == "inactive"
    assert "zincati-py-schedule-fresh.timer" not in _timers(manager)
    assert manager.systemctl("list-units", "--failed", "--plain", "--no-legend").strip() == ""


def test_broken_fragments_leave_the_other_timers(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    root, manager = _start(user_manager_factory, tmp_path, CONFIG)
    before = set(_timers(manager))
    _write(root, "60-broken.toml", "[updates\nenabled = false\n")
    _write(
        root, "61-bad-cron.toml", '[[schedule]]\nname = "bad"\ncron = "* * * 13 *"\ncommand = "x"\n'
    )
    manager.daemon_reload()
    assert set(_timers(manager)) == before
    log = manager.log()
    assert "60-broken.toml" in log and "schedule[bad].cron" in log


def test_trigger_runs_refuses_a_second_start_and_history_records_it(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    config = (
        '[[schedule]]\nname = "slow"\ncron = "0 0 1 1 *"\ncommand = "sleep 3"\n'
        '[[schedule]]\nname = "fails"\ncron = "0 0 1 1 *"\ncommand = "exit 3"\n'
        '[[schedule]]\nname = "off"\ncron = "0 0 1 1 *"\ncommand = "true"\nenabled = false\n'
    )
    root, manager = _start(user_manager_factory, tmp_path, config)
    env = manager.env()
    common = ("--root", str(root), "--user")
    started = datetime.now(UTC)
    proc = zpy("schedule", "trigger", "slow", *common, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("started zincati-py-schedule-slow.service (job ")
    # The documented top-level spelling refuses the concurrent start the same way.
    again = zpy("trigger", "slow", *common, env=env)
    assert_clean_error(again, 75, "already running (since ", "not started again")
    wait_for(
        lambda: (
            manager.systemctl("is-active", "zincati-py-schedule-slow.service", check=False).strip()
            == "inactive"
        ),
        timeout=20,
        what="the slow job to finish",
    )
    runs = wait_for(
        lambda: zpy_json("schedule", "history", "slow", "--root", str(root))["runs"],
        what="a history record",
    )
    (run,) = runs
    assert run["result"] == "success" and run["exit_code"] == "exited" and run["exit_status"] == "0"
    start, end = datetime.fromisoformat(run["start"]), datetime.fromisoformat(run["end"])
    assert abs((start - started).total_seconds()) < 5
    assert 2.5 < (end - start).total_seconds() < 10  # sleep 3

    assert zpy("schedule", "trigger", "fails", *common, env=env).returncode == 0
    runs = wait_for(
        lambda: zpy_json("schedule", "history", "fails", "--root", str(root))["runs"],
        what="a history record",
    )
    assert runs[0]["result"] == "exit-code" and runs[0]["exit_status"] == "3"
    status = zpy_json("schedule", "status", "fails", *common, env=env)
    assert status["last_result"] == "exit-code" and status["last_recorded_run"] == runs[0]

    assert_clean_error(zpy("schedule", "trigger", "off", *common, env=env), 65, "disabled")
    assert_clean_error(zpy("schedule", "trigger", "nope", *common, env=env), 65, "no schedule nope")
    down = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    assert_clean_error(zpy("schedule", "trigger", "slow", *common, env=down), 69, "unreachable")


def test_top_level_trigger_command(user_manager: UserManager, config_root: Path) -> None:
    """``zincati-py trigger`` as trigger_cmd.register() defines it."""
    from zincati_py.cli import CliError, trigger_cmd

    parser = argparse.ArgumentParser()
    trigger_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["trigger", "nope", "--root", str(config_root), "--user"])
    import os

    saved = {k: os.environ.get(k) for k in user_manager.env()}
    os.environ.update(user_manager.env())
    try:
        try:
            args.func(args)
        except CliError as exc:
            assert exc.code == 65 and "no schedule nope" in str(exc)
        else:
            raise AssertionError("trigger of an unknown job succeeded")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_command_reaches_the_shell_unchanged(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    command = (
        "v='a b'; printf '%s|' \"$v\" 100% 'back\\slash' '\"dq\"' \"${v}\" '%n' "
        f"> {out}; printf 'line1\\nline2' >> {out}"
    )
    toml = (
        '[[schedule]]\nname = "quoting"\ncron = "0 0 1 1 *"\ncommand = \'\'\'' + command + "'''\n"
    )
    root, manager = _start(user_manager_factory, tmp_path, toml)
    assert (
        zpy(
            "schedule", "trigger", "quoting", "--root", str(root), "--user", env=manager.env()
        ).returncode
        == 0
    )
    wait_for(
        lambda: zpy_json("schedule", "history", "quoting", "--root", str(root))["runs"], what="run"
    )
    via_systemd = out.read_text()
    out.unlink()
    subprocess.run(["/bin/sh", "-c", command], check=True, timeout=10)
    assert via_systemd == out.read_text()
    assert via_systemd.startswith('a b|100%|back\\slash|"dq"|a b|%n|')


def test_catch_up_runs_a_missed_job_once_at_start(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    """Persistent= from catch_up: three missed daily runs become one run at boot, not three;
    without catch_up none."""
    import os
    import time

    config = "".join(
        f'[[schedule]]\nname = "{name}"\ncron = "0 3 * * *"\ncommand = "true"\n'
        f'time_zone = "UTC"\ncatch_up = {catch}\n'
        for name, catch in (("catchup", "true"), ("nocatch", "false"))
    )
    root = make_root(tmp_path)
    _write(root, "50-test.toml", config)
    directory = tmp_path / "manager"
    stamps = directory / "home" / ".local" / "share" / "systemd" / "timers"
    stamps.mkdir(parents=True)
    three_days_ago = time.time() - 3 * 86400
    for name in ("catchup", "nocatch"):
        stamp = stamps / f"stamp-zincati-py-schedule-{name}.timer"
        stamp.write_text("")
        os.utime(stamp, (three_days_ago, three_days_ago))  # last ran before the machine "was off"
    user_manager_factory(root, directory=directory)
    history = lambda name: zpy_json("schedule", "history", name, "--root", str(root))["runs"]  # noqa: E731
    runs = wait_for(lambda: history("catchup"), timeout=20, what="the catch-up run")
    time.sleep(1.5)  # time for a (wrong) second catch-up run or a nocatch run to show up
    assert len(history("catchup")) == 1 and runs[0]["result"] == "success"
    assert history("nocatch") == []


def test_a_command_starting_with_a_dash_or_plus_runs_as_a_command(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    """Issue 11 item 11: ``/bin/sh -c -x...`` read the command as shell options; it is passed
    after ``--`` so sh runs it (here: '-v' is not found, then the rest runs)."""
    out = {sign: tmp_path / f"ran{i}" for i, sign in enumerate("-+")}
    config = "".join(
        f'[[schedule]]\nname = "j{i}"\ncron = "0 0 1 1 *"\n'
        f"command = '{sign}v 2>/dev/null; echo ran > {out[sign]}'\n"
        for i, sign in enumerate("-+")
    )
    root, manager = _start(user_manager_factory, tmp_path, config)
    for i in range(2):
        proc = zpy("schedule", "trigger", f"j{i}", "--root", str(root), "--user", env=manager.env())
        assert proc.returncode == 0, proc.stderr
    for i in range(2):
        wait_for(
            lambda i=i: zpy_json("schedule", "history", f"j{i}", "--root", str(root))["runs"],
            what="a run",
        )
    assert all(path.read_text() == "ran\n" for path in out.values())


def test_retries_failure_hook_and_argv_against_the_real_manager(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    """Issue 14: a job failing twice then succeeding ends success with 3 attempts in history;
    one that always fails stops after its retries, ends failed and runs its failure hook once
    with the job name, result and invocation id; an argv job gets exactly its arguments."""
    count, hook_env, argv_out = tmp_path / "count", tmp_path / "hook.env", tmp_path / "argv.out"
    flaky = f"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; [ $n -ge 3 ]"
    config = (
        f'[[schedule]]\nname = "flaky"\ncron = "0 0 1 1 *"\ncommand = \'{flaky}\'\n'
        "retries = 3\nretry_delay_secs = 0\n"
        '[[schedule]]\nname = "broken"\ncron = "0 0 1 1 *"\ncommand = "exit 7"\n'
        f"retries = 2\non_failure = 'env > {hook_env}.tmp; mv {hook_env}.tmp {hook_env}'\n"
        '[[schedule]]\nname = "argv"\ncron = "0 0 1 1 *"\n'
        "command = ['/bin/sh', '-c', 'printf \"%s|\" \"$@\" > \"$0\"', "
        f"'{argv_out}', '$HOME', '100%', 'a b', '-x']\n"
    )
    root, manager = _start(user_manager_factory, tmp_path, config)
    env = manager.env()
    common = ("--root", str(root), "--user")
    history = lambda name: zpy_json("schedule", "history", name, *common, env=env)["runs"]  # noqa: E731
    for name in ("flaky", "broken", "argv"):
        proc = zpy("schedule", "trigger", name, *common, env=env)
        assert proc.returncode == 0, proc.stderr

    runs = wait_for(lambda: len(history("flaky")) >= 3 and history("flaky"), what="3 attempts")
    assert [(r["attempt"], r["result"]) for r in runs] == [
        (1, "exit-code"), (2, "exit-code"), (3, "success"),
    ]  # fmt: skip
    wait_for(
        lambda: manager.systemctl("is-active", "zincati-py-schedule-flaky.service", check=False)
        .strip() == "inactive",
        what="flaky to end",
    )  # fmt: skip
    assert count.read_text() == "3\n"

    wait_for(hook_env.exists, what="the failure hook")
    runs = history("broken")
    assert [(r["attempt"], r["result"]) for r in runs] == [
        (1, "exit-code"), (2, "exit-code"), (3, "exit-code"),
    ]  # fmt: skip
    state = manager.systemctl("is-failed", "zincati-py-schedule-broken.service", check=False)
    assert state.strip() == "failed"
    hook = dict(line.split("=", 1) for line in hook_env.read_text().splitlines() if "=" in line)
    assert hook["ZINCATI_PY_JOB"] == "broken"
    assert hook["MONITOR_SERVICE_RESULT"] == "exit-code" and hook["MONITOR_EXIT_STATUS"] == "7"
    assert hook["MONITOR_INVOCATION_ID"] == runs[-1]["invocation_id"]
    time.sleep(1)  # no fourth attempt, no second hook run
    assert len(history("broken")) == 3

    wait_for(argv_out.exists, what="the argv job")
    assert argv_out.read_text() == "$HOME|100%|a b|-x|"

    # Job metrics, from what systemd reported (status --json).
    metrics = zpy_json("schedule", "status", "flaky", *common, env=env)["metrics"]
    assert metrics["runs_by_result"] == {"success": 1} and metrics["last_attempts"] == 3
    assert metrics["consecutive_failures"] == 0 and metrics["last_result"] == "success"
    assert metrics["last_start"] and metrics["last_duration_secs"] is not None
    metrics = zpy_json("schedule", "status", "broken", *common, env=env)["metrics"]
    assert metrics["runs_by_result"] == {"exit-code": 1} and metrics["attempts"] == 3
    assert metrics["consecutive_failures"] == 1


def test_a_run_outlasting_its_next_fire_time_is_reported(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    """Issue 14: systemd skips a start while the run goes on; the hook warns (journal) naming
    the job and the run is counted as an overrun."""
    config = (
        '[[schedule]]\nname = "slow"\ncron = "* * * * * */2"\ncommand = "sleep 3"\n'
        "catch_up = false\n"
        '[[schedule]]\nname = "quick"\ncron = "* * * * * */2"\ncommand = "true"\n'
        "catch_up = false\n"
    )
    root, manager = _start(user_manager_factory, tmp_path, config)
    env, common = manager.env(), ("--root", str(root), "--user")
    status = lambda name: zpy_json("schedule", "status", name, *common, env=env)  # noqa: E731
    wait_for(lambda: status("slow")["metrics"]["overruns"] >= 1, timeout=30, what="an overrun")
    assert "schedule slow: warning: the run was still going when its timer elapsed" in (
        manager.log()
    )
    wait_for(lambda: status("quick")["metrics"]["attempts"] >= 2, timeout=30, what="quick runs")
    assert status("quick")["metrics"]["overruns"] == 0


def test_job_metrics_for_the_agent_socket_come_from_systemd_and_history(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    """Issue 14: the agent's metrics (AgentMetrics, what its socket renders) carry per-job
    metrics read from systemd and the recorded runs at scrape time."""
    import asyncio

    from zincati_py.metrics import AgentMetrics
    from zincati_py.paths import Paths
    from zincati_py.schedule.metrics import JobMetricsCollector

    config = (
        '[[schedule]]\nname = "ok"\ncron = "0 5 * * *"\ncommand = "true"\ntime_zone = "UTC"\n'
        '[[schedule]]\nname = "bad"\ncron = "0 0 1 1 *"\ncommand = "exit 4"\n'
    )
    root, manager = _start(user_manager_factory, tmp_path, config)
    env, common = manager.env(), ("--root", str(root), "--user")
    for name in ("ok", "bad"):
        assert zpy("schedule", "trigger", name, *common, env=env).returncode == 0
        wait_for(lambda n=name: zpy_json("schedule", "history", n, *common)["runs"], what=name)

    metrics = AgentMetrics()
    collector = JobMetricsCollector(
        Paths.from_root(root), lambda: ["ok", "bad", "gone"], lambda: None, manager.bus_address
    )
    metrics.register(collector)
    metrics.on_scrape(collector.refresh)

    async def scrape() -> str:
        await metrics.refresh()
        return metrics.render().decode()

    from prometheus_client.parser import text_string_to_metric_families

    text = asyncio.run(scrape())
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("zincati_py_schedule_")
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((f"zincati_py_schedule_{name}", tuple(sorted(labels.items()))))

    assert value("runs", job="ok", result="success") == 1
    assert value("last_result", job="bad", result="exit-code") == 1
    assert value("consecutive_failures", job="bad") == 1
    assert value("consecutive_failures", job="ok") == 0
    assert value("overruns", job="ok") == 0
    (want,) = next_elapses(["*-*-* 05:00:00 UTC"], 1)
    assert value("next_run_timestamp_seconds", job="ok") == want.timestamp()
    started = value("last_start_timestamp_seconds", job="bad")
    assert started is not None and abs(started - datetime.now(UTC).timestamp()) < 60
    assert not any(dict(labels).get("job") == "gone" for _, labels in samples)
    assert "zincati_update_agent_updates_enabled" in text


def test_fleet_exclusive_runs_one_at_a_time_across_two_hosts(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    """Issue 14: two user managers ("hosts") and one lock server with 1 slot: the same job
    fires on both and exactly one runs at a time, the slot renewed past its 2 s lease while
    the run goes on; with no wait, the second is recorded as skipped."""
    from testbed.etcd import free_port
    from testbed.lockserver import LockServerProcess

    port = free_port()
    server_config = tmp_path / "fleetlock.toml"
    server_config.write_text(
        f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{tmp_path / "locks.db"}"\n'
        "default_slots = 1\nlease_seconds = 2\n"
    )
    server = LockServerProcess(server_config, port, tmp_path / "server.log").start()
    shared = tmp_path / "runs.log"
    try:
        managers = []
        for host in ("a", "b"):
            root = make_root(tmp_path / host)
            (root / "etc" / "machine-id").write_text(f"{host * 32}\n")
            job = (
                f'[updates]\nenabled = false\n[updates.fleet_lock]\nbase_url = "{server.url}"\n'
                '[[schedule]]\nname = "once"\ncron = "0 0 1 1 *"\nexclusive_group = "nightly"\n'
                "exclusive_wait_secs = 30\n"
                f"command = 'echo start {host} >> {shared}; sleep 5; echo end {host} >> {shared}'\n"
                '[[schedule]]\nname = "nowait"\ncron = "0 0 1 1 *"\nexclusive_group = "other"\n'
                f"command = 'sleep 4'\n"
            )
            _write(root, "50-test.toml", job)
            managers.append(
                (host, root, user_manager_factory(root, directory=tmp_path / host / "m"))
            )

        def history(root: Path, name: str) -> list[dict[str, object]]:
            return zpy_json("schedule", "history", name, "--root", str(root))["runs"]  # type: ignore[no-any-return]

        for _, root, manager in managers:
            for name in ("once", "nowait"):
                proc = zpy(
                    "schedule", "trigger", name, "--root", str(root), "--user", env=manager.env()
                )
                assert proc.returncode == 0, proc.stderr
        for _, root, _ in managers:
            wait_for(lambda r=root: history(r, "once"), timeout=45, what="both exclusive runs")
        # Never both at once: start a, end a, start b, end b (or b first).
        events = shared.read_text().split("\n")[:-1]
        assert len(events) == 4 and events[0].split()[1] == events[1].split()[1], events
        assert [e.split()[0] for e in events] == ["start", "end", "start", "end"], events
        assert all(history(root, "once")[0]["result"] == "success" for _, root, _ in managers)
        # No wait: one ran, the other was skipped (not a failure) and the journal says why.
        results = sorted(str(history(root, "nowait")[0]["result"]) for _, root, _ in managers)
        assert results == ["skipped", "success"]
        logs = "".join(manager.log() for _, _, manager in managers)
        assert "skipped: every slot of group 'other' is taken (held by " in logs

        # Stopped mid-run (as at shutdown): the command is stopped and the slot released.
        def holders() -> list[str]:
            with urllib.request.urlopen(f"{server.url}v1/groups/nightly", timeout=5) as resp:
                return [h["id"] for h in json.load(resp)["holders"]]

        _, root, manager = managers[0]
        assert zpy("schedule", "trigger", "once", "--root", str(root), "--user",
                   env=manager.env()).returncode == 0  # fmt: skip
        (holder,) = wait_for(holders, what="the slot taken")
        assert holder.endswith(":once")
        manager.systemctl("stop", "zincati-py-schedule-once.service")
        # Released by the slot unit, stopped after the job (ordered so): within a few seconds,
        # well inside the 2 s lease's renewals would keep it otherwise.
        wait_for(lambda: not holders(), timeout=10, what="the slot released")
        wait_for(
            lambda: (
                "ActiveState=inactive"
                in manager.systemctl("show", "-p", "ActiveState", "zincati-py-slot-once.service")
            ),
            what="the slot unit stopped",
        )
    finally:
        server.stop()


def test_fleet_exclusive_run_authenticates_with_the_configured_token(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    """The slot unit gets [updates.fleet_lock] token_file (LoadCredential=), so a lock server
    with tokens lets the run take its slot; a wrong token: not run. Finding 10: the command's
    own unit carries no credential and its process sees neither the token nor a credentials
    directory (as far as a user manager can show it: its jobs cannot switch users; the real-host
    tier runs the command as another user)."""
    from testbed.etcd import free_port
    from testbed.lockserver import LockServerProcess

    port = free_port()
    for name, token in (("admin", "admin-secret"), ("shared", "shared-secret"),
                        ("wrong", "not-it")):  # fmt: skip
        (tmp_path / f"{name}.token").write_text(token + "\n")
        (tmp_path / f"{name}.token").chmod(0o600)
    server_config = tmp_path / "fleetlock.toml"
    server_config.write_text(
        f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{tmp_path / "locks.db"}"\n'
        f'[auth]\nadmin_token_file = "{tmp_path / "admin.token"}"\n'
        f'shared_token_file = "{tmp_path / "shared.token"}"\n'
    )
    server = LockServerProcess(server_config, port, tmp_path / "server.log").start()
    try:
        root = make_root(tmp_path)
        out = tmp_path / "ran"
        for name in ("good", "bad", "busy"):
            (root / "etc/zincati/config.d" / f"50-{name}.toml").write_text(
                f'[[schedule]]\nname = "{name}"\ncron = "0 0 1 1 *"\nexclusive_group = "g{name}"\n'
                f"command = 'echo {name} >> {out}; env > {tmp_path / name}.env'\n"
            )
        # The user manager of the test bed cannot load credentials (systemd 252 leaves
        # $CREDENTIALS_DIRECTORY empty there): the root job reads the token file itself.
        lock = (
            '[updates]\nenabled = false\n[updates.fleet_lock]\nbase_url = "{}"\ntoken_file = "{}"\n'
        )
        _write(root, "10-lock.toml", lock.format(server.url, tmp_path / "shared.token"))
        manager = user_manager_factory(root)
        env, common = manager.env(), ("--root", str(root), "--user")
        assert zpy("schedule", "trigger", "good", *common, env=env).returncode == 0
        (run,) = wait_for(lambda: zpy_json("schedule", "history", "good", *common)["runs"])
        assert run["result"] == "success", manager.log()[-3000:]
        assert out.read_text() == "good\n"
        environ = (tmp_path / "good.env").read_text()
        assert "CREDENTIALS_DIRECTORY" not in environ and "shared-secret" not in environ
        # What the manager loaded: no credential in the job's unit, the token in the slot's.
        job_unit = manager.systemctl("cat", "zincati-py-schedule-good.service")
        assert "Credential" not in job_unit and "token" not in job_unit, job_unit
        slot_unit = manager.systemctl("cat", "zincati-py-slot-good.service")
        assert f"LoadCredential=zincati-py-fleetlock-token:{tmp_path / 'shared.token'}\n" in (
            slot_unit
        )
        assert "User=" not in slot_unit
        _write(root, "10-lock.toml", lock.format(server.url, tmp_path / "wrong.token"))
        manager.daemon_reload()
        assert zpy("schedule", "trigger", "bad", *common, env=env).returncode == 0
        (run,) = wait_for(lambda: zpy_json("schedule", "history", "bad", *common)["runs"])
        # The slot unit exited 69; its ExecCondition= failed the job (retries and the failure
        # hook apply); the command never started.
        assert run["result"] == "exit-code" and run["exit_status"] is None, run
        assert out.read_text() == "good\n"  # the command never ran
        assert "not run: the lock server" in manager.log()
        assert "not run: zincati-py-slot-bad.service holds no slot" in manager.log()
        assert "shared-secret" not in manager.log() and "not-it" not in manager.log()

        # Finding 12: with auth on, the admin API would refuse the node's token: a skipped run
        # does not ask it, and says the group is held by another node.
        _write(root, "10-lock.toml", lock.format(server.url, tmp_path / "shared.token"))
        manager.daemon_reload()
        _fleetlock(server.url, "pre-reboot", "someone", "gbusy", token="shared-secret")
        assert zpy("schedule", "trigger", "busy", *common, env=env).returncode == 0
        (run,) = wait_for(lambda: zpy_json("schedule", "history", "busy", *common)["runs"])
        assert run["result"] == "skipped", run
        assert "skipped: every slot of group 'gbusy' is taken (held by another node)" in (
            manager.log()
        )
        assert not (tmp_path / "busy.env").exists()
    finally:
        server.stop()


def _fleetlock(url: str, verb: str, node: str, group: str, token: str | None = None) -> int:
    """A FleetLock ``pre-reboot``/``steady-state`` (or admin ``release``) call as another node;
    the HTTP status."""
    import urllib.error

    path = {"release": "v1/admin/release"}.get(verb, f"v1/{verb}")
    body = json.dumps({"client_params": {"id": node, "group": group}}).encode()
    headers = {"fleet-lock-protocol": "true", "content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_fleet_exclusive_run_that_loses_its_slot_is_stopped(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    """Finding 11: a run whose slot is lost is stopped (SIGTERM), fails and is recorded so,
    with a critical journal line: (1) an admin force-releases the slot and another node takes
    it (the next renewal finds the group full); (2) the lock server goes away (no renewal for
    longer than the 2 s lease)."""
    from testbed.etcd import free_port
    from testbed.lockserver import LockServerProcess

    port = free_port()
    server_config = tmp_path / "fleetlock.toml"
    server_config.write_text(
        f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{tmp_path / "locks.db"}"\n'
        "default_slots = 1\nlease_seconds = 2\n"
    )
    server = LockServerProcess(server_config, port, tmp_path / "server.log").start()
    marks, flag = tmp_path / "marks", tmp_path / "failed-once"
    try:
        root = make_root(tmp_path)
        _write(
            root,
            "50-test.toml",
            f'[updates]\nenabled = false\n[updates.fleet_lock]\nbase_url = "{server.url}"\n'
            '[[schedule]]\nname = "long"\ncron = "0 0 1 1 *"\nexclusive_group = "g"\n'
            f"command = 'echo start >> {marks}; sleep 60; echo end >> {marks}'\n"
            '[[schedule]]\nname = "again"\ncron = "0 0 1 1 *"\nexclusive_group = "g"\n'
            "retries = 1\nretry_delay_secs = 1\n"
            f"command = 'test -e {flag} || {{ touch {flag}; exit 1; }}'\n",
        )
        manager = user_manager_factory(root)
        env, common = manager.env(), ("--root", str(root), "--user")

        # Retries keep the slot unit (Wants=, StopWhenUnneeded=): fail, retry, success, then
        # the slot is released.
        assert zpy("schedule", "trigger", "again", *common, env=env).returncode == 0
        attempts = wait_for(
            lambda: zpy_json("schedule", "history", "again", *common)["runs"][1:],
            timeout=30,
            what="the retried run",
        )
        assert attempts[0]["result"] == "success", attempts
        wait_for(
            lambda: (
                "ActiveState=inactive"
                in manager.systemctl("show", "-p", "ActiveState", "zincati-py-slot-again.service")
            ),
            what="the slot unit stopped once unneeded",
        )

        def holders() -> list[str]:
            with urllib.request.urlopen(f"{server.url}v1/groups/g", timeout=5) as resp:
                return [h["id"] for h in json.load(resp)["holders"]]

        def runs() -> list[dict[str, object]]:
            return zpy_json("schedule", "history", "long", *common)["runs"]  # type: ignore[no-any-return]

        assert zpy("schedule", "trigger", "long", *common, env=env).returncode == 0
        wait_for(lambda: marks.exists(), what="the command started")
        (ours,) = holders()

        def taken_over() -> bool:  # our renewal may win the freed slot back: try again then
            assert _fleetlock(server.url, "release", ours, "g") == 200
            return _fleetlock(server.url, "pre-reboot", "other-node", "g") == 200

        wait_for(taken_over, timeout=10, what="another node holding the slot")
        (run,) = wait_for(runs, timeout=20, what="the stopped run recorded")
        assert (run["result"], run["exit_code"], run["exit_status"]) == ("signal", "killed", "TERM")
        assert run["lost_slot"] is True, run
        assert marks.read_text() == "start\n"  # stopped: never reached its end
        log = manager.log()
        assert "<2>zincati-py: lost its slot of group 'g': another node holds it now" in log
        state = manager.systemctl(
            "show", "-p", "ActiveState,Result", "zincati-py-schedule-long.service"
        )
        assert "ActiveState=failed" in state and "Result=signal" in state, state

        # (2) The server goes away mid-run: no renewal within the lease -> stopped.
        assert _fleetlock(server.url, "steady-state", "other-node", "g") == 200
        marks.unlink()
        assert zpy("schedule", "trigger", "long", *common, env=env).returncode == 0
        wait_for(lambda: marks.exists(), what="the second run started")
        wait_for(holders, what="the slot taken")
        server.stop()
        runs_now = wait_for(lambda: runs()[1:], timeout=20, what="the second run recorded")
        assert runs_now[0]["result"] == "signal" and runs_now[0]["lost_slot"] is True
        assert marks.read_text() == "start\n"
        assert "no renewal succeeded for" in manager.log()
    finally:
        server.stop()
