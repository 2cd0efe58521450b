"""``[[schedule]]`` jobs that run as another user, on a real systemd 252 PID 1 (issue 14).

``user = "NAME"`` and ``dynamic_user = true`` reach the job's service as ``User=`` and
``DynamicUser=yes``; the history hook (``ExecStopPost=+``) still runs as root and the failure
hook as the job's user. Checked here on the system manager of a booted container, as shipped:
the job runs under that uid, its runs (and retries) are in ``schedule history`` and
``schedule status``, a failing run starts its ``on_failure`` hook, the job's user cannot make
root's hook follow a path it controls, and ``schedule create``/``modify`` as root change the
timers ``systemctl list-timers`` shows (through the real daemon-reload and generator).

One container for the module; every job has a far-away calendar and is started by
``zincati-py trigger``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from testbed.realhost import Container

USER = "jobuser"
HOME = f"/home/{USER}"
NEVER = "0 0 1 1 *"  # far away: every run here is a trigger
DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range

JOBS = f"""\
[[schedule]]
name = "asuser"
cron = "{NEVER}"
user = "{USER}"
command = 'id -u > "$HOME/asuser.uid"; echo "asuser ran as $(id -un)"'

[[schedule]]
name = "fails"
cron = "{NEVER}"
user = "{USER}"
command = "echo about to fail; exit 3"
on_failure = 'echo "$ZINCATI_PY_JOB $MONITOR_SERVICE_RESULT $MONITOR_EXIT_STATUS $(id -u)" >~/h.out'

[[schedule]]
name = "flaky"
cron = "{NEVER}"
user = "{USER}"
retries = 2
retry_delay_secs = 1
command = 'n=$(($(cat ~/fl.n || echo 0) + 1)); echo $n >~/fl.n; echo "attempt $n"; [ $n -ge 3 ]'
on_failure = "touch {HOME}/flaky.hook"

[[schedule]]
name = "dyn"
cron = "{NEVER}"
dynamic_user = true
command = ["/bin/sh", "-c", "echo dyn-uid=$(id -u) dyn-user=$(id -un)"]

[[schedule]]
name = "dynfail"
cron = "{NEVER}"
dynamic_user = true
retries = 1
retry_delay_secs = 1
command = ["/bin/sh", "-c", "echo dynfail-uid=$(id -u); exit 7"]
on_failure = 'echo "dynhook $ZINCATI_PY_JOB $MONITOR_SERVICE_RESULT $MONITOR_EXIT_STATUS $(id -u)"'

[[schedule]]
name = "ghost"
cron = "{NEVER}"
user = "zpy-ghost"
command = "true"

[[schedule]]
name = "plant"
cron = "{NEVER}"
user = "{USER}"
command = ["/usr/local/bin/zpy-plant"]

[[schedule]]
name = "exclusive"
cron = "{NEVER}"
user = "{USER}"
exclusive_group = "nightly"
command = ["/bin/true"]

[updates.fleet_lock]
base_url = "http://127.0.0.1:9/"
"""

# Run by the job "plant" as jobuser: in every directory it can write that root's hook could
# touch (its home, which systemd hands the root hook as $HOME, and the shared temporary
# directories) it plants symlinks to root's files under the names the hook uses, a Python
# user-site .pth that would run as whoever starts Python with this $HOME, and it tries the
# history directory itself. Prints what it could and could not do.
PLANT = """\
#!/bin/sh
victim=/etc/zpy-victim
history=/var/lib/zincati-py-schedule/history
for d in "$HOME" /tmp /var/tmp /dev/shm; do
    for n in plant.jsonl .plant.jsonl.tmp history zincati-py-schedule .python_history; do
        ln -sfn "$victim" "$d/$n" 2>/dev/null && echo "planted $d/$n"
    done
done
v=$(python3 -s -c 'import sys; print("%d.%d" % sys.version_info[:2])')
site="$HOME/.local/lib/python$v/site-packages"
mkdir -p "$site" &&
    echo "import os; open('/etc/zpy-canary', 'w').write(str(os.getuid()))" >"$site/zpy.pth" &&
    echo "planted $site/zpy.pth"
mkdir -p "$HOME/.cache" "$HOME/.config" 2>/dev/null
ln -sfn "$victim" "$HOME/.cache/zincati-py" && echo "planted $HOME/.cache/zincati-py"
ln -sfn "$victim" "$HOME/.config/zincati-py" && echo "planted $HOME/.config/zincati-py"
if ln -sfn "$victim" "$history/plant.jsonl" 2>/dev/null; then echo "HISTORY-WRITABLE"
else echo "history refused"; fi
if touch "$history/x" 2>/dev/null; then echo "HISTORY-WRITABLE"; fi
echo "plant uid=$(id -u)"
"""
VICTIM = "root's file, untouched\n"


@pytest.fixture(scope="module")
def host(host_factory) -> Container:  # type: ignore[no-untyped-def]
    host = host_factory(
        script={"booted": {"version": "40.1"}, "releases": []},
        fragments={"60-jobs.toml": JOBS},
    )
    host.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", USER])
    host.run(["sh", "-c", "cat > /usr/local/bin/zpy-plant && chmod 0755 /usr/local/bin/zpy-plant"],
             input=PLANT)  # fmt: skip
    host.run(["sh", "-c", "cat > /etc/zpy-victim && chmod 0644 /etc/zpy-victim"], input=VICTIM)
    return host


def cli_json(host: Container, *argv: str, user: str | None = None) -> Any:
    return json.loads(host.run(["zincati-py", *argv, "--json"], user=user).stdout)


def history(host: Container, name: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = cli_json(host, "schedule", "history", name)["runs"]
    return runs


def show(host: Container, unit: str, *props: str) -> dict[str, str]:
    argv = ["systemctl", "show", unit, *(f"-p{p}" for p in props)]
    return dict(line.split("=", 1) for line in host.run(argv).stdout.splitlines() if "=" in line)


def run_job(host: Container, name: str, attempts: int = 1, timeout: float = 60) -> list[Any]:
    """Trigger ``name`` and wait (bounded) until ``attempts`` more records are in its history
    and its service is no longer running (a retry is ``activating`` again); its records."""
    before = len(history(host, name))
    host.run(["zincati-py", "trigger", name])
    unit = f"zincati-py-schedule-{name}.service"

    def done() -> list[Any] | None:
        state = show(host, unit, "ActiveState")["ActiveState"]
        runs = history(host, name)
        if len(runs) >= before + attempts and state in ("inactive", "failed"):
            return runs[before:]
        return None

    result = host.wait_for(f"{attempts} recorded attempt(s) of {name}", done, timeout, 0.5)
    assert isinstance(result, list)
    return result


def output(host: Container, name: str) -> list[str]:
    """What the last run printed (every attempt), as ``schedule history --output`` gives it."""
    doc = cli_json(host, "schedule", "history", name, "--output")
    lines: list[str] = doc["output"]
    return lines


def uid_of(name: str, host: Container) -> int:
    return int(host.run(["id", "-u", name]).stdout)


def test_job_runs_as_its_user_recorded_and_in_status(host: Container) -> None:
    props = show(host, "zincati-py-schedule-asuser.service", "User", "DynamicUser", "ExecStopPost")
    assert props["User"] == USER and props["DynamicUser"] == "no", props
    runs = run_job(host, "asuser")
    assert [r["result"] for r in runs] == ["success"], runs
    assert runs[0]["exit_code"] == "exited" and runs[0]["exit_status"] == "0", runs
    # The job wrote where its user may (its home), as its user.
    written = host.run(["stat", "-c", "%u %n", f"{HOME}/asuser.uid"]).stdout.split()[0]
    assert int(host.run(["cat", f"{HOME}/asuser.uid"]).stdout) == uid_of(USER, host)
    assert int(written) == uid_of(USER, host)
    assert f"asuser ran as {USER}" in "\n".join(output(host, "asuser"))
    # The history is root's (written by the hook as root), readable through the CLI.
    owner = host.run(
        ["stat", "-c", "%U %a", "/var/lib/zincati-py-schedule/history/asuser.jsonl"]
    ).stdout.split()
    assert owner == ["root", "640"], owner
    status = cli_json(host, "schedule", "status", "asuser")
    assert status["user"] == USER and status["last_result"] == "success", status
    assert status["last_recorded_run"]["invocation_id"] == runs[0]["invocation_id"], status
    assert status["metrics"]["runs_by_result"] == {"success": 1}, status["metrics"]
    assert status["metrics"]["consecutive_failures"] == 0, status["metrics"]
    assert status["note"] is None and status["timer_loaded"], status
    # Only root and the agent's group read the history (2750 root:zincati-py): nobody is
    # refused with a message naming the directory, not a traceback.
    proc = host.run(
        ["zincati-py", "schedule", "history", "asuser", "--json"], user="nobody", check=False
    )
    assert proc.returncode == 77 and "Traceback" not in proc.stderr, proc
    assert "/var/lib/zincati-py-schedule/history" in proc.stderr, proc


def test_failing_job_of_another_user_starts_its_failure_hook(host: Container) -> None:
    runs = run_job(host, "fails")
    assert [(r["result"], r["exit_code"], r["exit_status"]) for r in runs] == [
        ("exit-code", "exited", "3")
    ], runs
    assert show(host, "zincati-py-schedule-fails.service", "Result")["Result"] == "exit-code"

    def hook_out() -> str:
        return host.run(["cat", f"{HOME}/h.out"], check=False).stdout

    text = host.wait_for("the failure hook's file", hook_out, 30)
    # The hook ran as the job's user, with the job's name and systemd's MONITOR_* variables.
    assert str(text).split() == ["fails", "exit-code", "3", str(uid_of(USER, host))], text
    # Root's recorder of runs the hook missed (OnFailure= too) saw this one recorded: one record.
    recorder = "zincati-py-record-fails.service"

    def recorder_done() -> bool:
        state = show(host, recorder, "InvocationID", "ActiveState", "Result")
        return bool(state["InvocationID"]) and state["ActiveState"] == "inactive"

    host.wait_for("the failed-run recorder", recorder_done, 30)
    assert show(host, recorder, "Result")["Result"] == "success"
    assert len(history(host, "fails")) == 1, history(host, "fails")
    status = cli_json(host, "schedule", "status", "fails")
    assert status["last_result"] == "exit-code", status
    assert status["metrics"]["consecutive_failures"] == 1, status["metrics"]


def test_retries_of_another_users_job(host: Container) -> None:
    runs = run_job(host, "flaky", attempts=3)
    assert [(r["attempt"], r["result"]) for r in runs] == [
        (1, "exit-code"), (2, "exit-code"), (3, "success"),
    ], runs  # fmt: skip
    assert len({r["invocation_id"] for r in runs}) == 3, runs
    assert host.run(["cat", f"{HOME}/fl.n"]).stdout.strip() == "3"
    lines = "\n".join(output(host, "flaky"))
    assert all(f"attempt {n}" in lines for n in (1, 2, 3)), lines
    status = cli_json(host, "schedule", "status", "flaky")
    assert status["metrics"]["last_result"] == "success", status["metrics"]
    assert status["metrics"]["last_attempts"] == 3, status["metrics"]
    assert status["last_result"] == "success", status
    # It ended well: its failure hook did not run.
    assert host.run(["test", "-e", f"{HOME}/flaky.hook"], check=False).returncode == 1


def test_dynamic_user_job(host: Container) -> None:
    props = show(host, "zincati-py-schedule-dyn.service", "DynamicUser", "User")
    assert props["DynamicUser"] == "yes", props
    runs = run_job(host, "dyn")
    assert [r["result"] for r in runs] == ["success"], runs
    lines = "\n".join(output(host, "dyn"))
    m = re.search(r"dyn-uid=(\d+) dyn-user=(\S+)", lines)
    assert m, lines
    assert int(m.group(1)) in DYNAMIC_UIDS, lines
    # Named after the unit where nss-systemd resolves dynamic users (Fedora); Debian's minbase
    # has no libnss-systemd, so id prints the number there.
    assert m.group(2) in ("zincati-py-schedule-dyn", m.group(1)), lines
    # Not a user of the host's passwd.
    assert host.run(["getent", "passwd", m.group(1)], check=False).returncode == 2
    status = cli_json(host, "schedule", "status", "dyn")
    assert status["dynamic_user"] is True and status["last_result"] == "success", status


def test_dynamic_user_job_retries_then_fails_and_its_hook_runs(host: Container) -> None:
    runs = run_job(host, "dynfail", attempts=2)
    assert [(r["attempt"], r["result"], r["exit_status"]) for r in runs] == [
        (1, "exit-code", "7"), (2, "exit-code", "7"),
    ], runs  # fmt: skip
    uids = {int(u) for u in re.findall(r"dynfail-uid=(\d+)", "\n".join(output(host, "dynfail")))}
    assert uids and uids <= set(DYNAMIC_UIDS), uids
    hook = "zincati-py-on-failure-dynfail.service"

    def hook_line() -> str | None:
        log = host.run(["journalctl", "-q", "-o", "cat", "-u", hook], check=False).stdout
        return next((x for x in log.splitlines() if x.startswith("dynhook ")), None)

    line = str(host.wait_for("the dynamic job's failure hook", hook_line, 30))
    _, job, result, exit_status, uid = line.split()
    assert (job, result, exit_status) == ("dynfail", "exit-code", "7"), line
    assert int(uid) in DYNAMIC_UIDS, line
    # Once for the whole run, not per attempt.
    starts = host.run(["journalctl", "-q", "-o", "cat", "-u", hook]).stdout.count("dynhook ")
    assert starts == 1
    status = cli_json(host, "schedule", "status", "dynfail")
    assert status["metrics"]["last_attempts"] == 2 and status["last_result"] == "exit-code"


SCRAPE = """\
import socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect("/run/zincati-py/public/metrics.promsock")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode())
"""


def test_agent_job_metrics_of_non_root_jobs(host: Container) -> None:
    # The agent (user zincati-py) reads root's history through the group of the packaged
    # 2750 root:zincati-py directory; the metrics socket is public (read here as nobody).
    def scrape() -> str | None:
        text = host.run(["python3", "-c", SCRAPE], user="nobody").stdout
        flaky = 'zincati_py_schedule_runs{job="flaky",result="success"} 1.0'
        return text if flaky in text else None

    text = str(host.wait_for("job metrics in the agent's exposition", scrape, 30, 1))
    assert 'zincati_py_schedule_runs{job="asuser",result="success"} 1.0' in text, text
    assert 'zincati_py_schedule_consecutive_failures{job="fails"} 1.0' in text, text
    assert 'zincati_py_schedule_last_result{job="dynfail",result="exit-code"} 1.0' in text, text
    assert "permission" not in host.journal("-b", "-u", "zincati-py.service").lower()


def test_job_of_a_missing_user_fails_and_is_recorded(host: Container) -> None:
    # systemd cannot resolve User= (217/USER): the run fails and so does root's ExecStopPost=+
    # (systemd resolves the user for it too); the OnFailure= recorder records it (as root).
    runs = run_job(host, "ghost")
    assert [(r["result"], r["exit_status"]) for r in runs] == [("exit-code", "217")], runs
    assert runs[0]["invocation_id"] and runs[0]["start"], runs
    log = host.journal("-b", "-u", "zincati-py-record-ghost.service")
    assert "failed before its history hook could run" in log, log[-2000:]
    status = cli_json(host, "schedule", "status", "ghost")
    assert status["last_result"] == "exit-code", status


def test_job_user_cannot_redirect_roots_hook(host: Container) -> None:
    before = host.run(["stat", "-c", "%i %s %Y", "/etc/zpy-victim"]).stdout
    runs = run_job(host, "plant")
    assert [r["result"] for r in runs] == ["success"], runs
    said = "\n".join(output(host, "plant"))
    assert "HISTORY-WRITABLE" not in said and "history refused" in said, said
    assert f"planted {HOME}/plant.jsonl" in said and "/zpy.pth" in said, said
    assert f"plant uid={uid_of(USER, host)}" in said, said
    # The planted paths are there (the job ran as the user and could write them) ...
    assert host.run(["readlink", f"{HOME}/plant.jsonl"]).stdout.strip() == "/etc/zpy-victim"
    # ... and root's hook followed none of them: the next runs are recorded where they belong,
    # the files the symlinks point to are untouched, nothing the user planted ran as root.
    runs = run_job(host, "plant")
    assert [r["result"] for r in runs] == ["success"], runs
    assert len(history(host, "plant")) == 2
    assert host.run(["cat", "/etc/zpy-victim"]).stdout == VICTIM
    assert host.run(["stat", "-c", "%i %s %Y", "/etc/zpy-victim"]).stdout == before
    canary = host.run(["cat", "/etc/zpy-canary"], check=False)
    assert canary.returncode != 0, f"root's hook ran the job user's .pth (uid {canary.stdout})"
    record = host.run(
        ["stat", "-c", "%F %U %h", "/var/lib/zincati-py-schedule/history/plant.jsonl"]
    ).stdout.split()
    assert record == ["regular", "file", "root", "1"], record
    log = host.journal("-b", "-u", "zincati-py-schedule-plant.service")
    assert "Traceback" not in log and "refusing" not in log, log[-2000:]


def test_job_user_cannot_run_code_in_roots_slot_condition(host: Container) -> None:
    # A fleet-exclusive job's ExecCondition=+ (root) takes the slot before the command runs as
    # the job's user; the .pth the previous test planted is still in that user's user site.
    # (No lock server listens: the command never runs, only root's condition and hook do.)
    site = host.run(["sh", "-c", f"ls -d {HOME}/.local/lib/python3*/site-packages/zpy.pth"])
    assert site.returncode == 0
    unit = "zincati-py-schedule-exclusive.service"
    host.run(["zincati-py", "trigger", "exclusive"])

    def ended() -> dict[str, str] | None:
        state = show(host, unit, "ActiveState", "InvocationID", "Result")
        ran = state["InvocationID"] and state["ActiveState"] in ("inactive", "failed")
        return state if ran else None

    host.wait_for("the exclusive job's run to end", ended, 180, 0.5)
    log = host.journal("-b", "-u", unit, "-u", "zincati-py-slot-exclusive.service")
    assert "zincati-py" in log, log[-2000:]
    canary = host.run(["cat", "/etc/zpy-canary"], check=False)
    assert canary.returncode != 0, f"root's condition ran the job user's .pth (uid {canary.stdout})"
    assert host.run(["cat", "/etc/zpy-victim"]).stdout == VICTIM
    assert show(host, unit, "ExecCondition")["ExecCondition"].startswith("{ path=/usr/bin/env")
    # The run that could not get a slot is recorded as a failure (the command never ran).
    runs = history(host, "exclusive")
    assert len(runs) == 1 and runs[0]["result"] not in ("success", "skipped"), runs


def test_history_symlink_in_roots_directory_is_refused(host: Container) -> None:
    # Should a symlink ever be there (the directory is root's: only root could put it), the
    # hook refuses it instead of writing through it; the job's run itself is unaffected.
    history_dir = "/var/lib/zincati-py-schedule/history"
    host.run(["ln", "-sfn", "/etc/zpy-victim", f"{history_dir}/asuser.jsonl.new"])
    host.run(["mv", "-T", f"{history_dir}/asuser.jsonl.new", f"{history_dir}/asuser.jsonl"])
    try:
        host.run(["zincati-py", "trigger", "asuser"])

        def refused() -> bool:
            log = host.journal("-b", "-u", "zincati-py-schedule-asuser.service")
            state = show(host, "zincati-py-schedule-asuser.service", "ActiveState")
            return "refusing" in log and state["ActiveState"] == "inactive"

        host.wait_for("the hook's refusal in the journal, the run over", refused, 30)
        state = show(host, "zincati-py-schedule-asuser.service", "ActiveState", "Result")
        assert state == {"ActiveState": "inactive", "Result": "success"}, state
        assert host.run(["cat", "/etc/zpy-victim"]).stdout == VICTIM
    finally:
        host.run(["rm", "-f", f"{history_dir}/asuser.jsonl"])


def timers(host: Container) -> dict[str, str]:
    out = host.run(["systemctl", "list-timers", "--no-legend", "--plain"]).stdout
    return {
        m.group(1): line
        for line in out.splitlines()
        if (m := re.search(r"(zincati-py-schedule-[\w-]+\.timer)", line))
    }


def test_create_and_modify_as_root_change_the_listed_timer(host: Container) -> None:
    timer = "zincati-py-schedule-made.timer"
    assert timer not in timers(host)
    host.run(
        ["zincati-py", "schedule", "create", "made", "--cron", "30 4 * * *", "--tz", "UTC",
         "--no-catch-up", "--run-as", USER, "--retries", "1", "--argv", "/bin/true"],
    )  # fmt: skip
    listed = timers(host)
    assert timer in listed, listed
    assert re.search(r"\b04:30:00 UTC\b", listed[timer]), listed[timer]
    cal = show(host, timer, "TimersCalendar", "Persistent")
    assert "OnCalendar=*-*-* 04:30:00 UTC" in cal["TimersCalendar"], cal
    assert cal["Persistent"] == "no", cal

    host.run(["zincati-py", "schedule", "modify", "made", "--cron", "45 5 * * *"])
    listed = timers(host)
    assert re.search(r"\b05:45:00 UTC\b", listed[timer]), listed[timer]
    cal = show(host, timer, "TimersCalendar", "Persistent")
    assert "OnCalendar=*-*-* 05:45:00 UTC" in cal["TimersCalendar"], cal
    assert "04:30" not in cal["TimersCalendar"] and cal["Persistent"] == "no", cal
    # Everything not given kept: user, retries, the argv.
    svc = show(host, "zincati-py-schedule-made.service", "User", "Restart", "ExecStart")
    assert svc["User"] == USER and svc["Restart"] == "on-failure", svc
    assert "path=/bin/true" in svc["ExecStart"], svc
    status = cli_json(host, "schedule", "status", "made")
    assert status["next_run"] and "T05:45:00" in status["next_run"], status
    runs = run_job(host, "made")
    assert [r["result"] for r in runs] == ["success"], runs

    host.run(["zincati-py", "schedule", "delete", "made"])
    assert timer not in timers(host)
    left = host.run(["systemctl", "list-units", "--all", "--no-legend", "--plain", timer]).stdout
    assert "active" not in left.replace("inactive", ""), left
