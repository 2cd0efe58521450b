"""A job's units (zincati_py.schedule.units): what reaches the unit file, without systemd."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from zincati_py.config import ScheduleSettings, load
from zincati_py.schedule import units

HEADER = "# header\n"


def _render(job: ScheduleSettings) -> tuple[str, str, list[str]]:
    out = units.render_job(
        job, header=HEADER, exe="/usr/bin/zincati-py", hash_id=None, hook_args=""
    )
    return out.timer, out.service, out.notes


def _exec_start(service: str) -> str:
    (line,) = [ln for ln in service.splitlines() if ln.startswith("ExecStart=")]
    return line


@pytest.mark.parametrize(
    ("cmd", "line"),
    [
        ("true", 'ExecStart=/bin/sh -c "true"'),  # as before: no "--" where none is needed
        ("echo -x", 'ExecStart=/bin/sh -c "echo -x"'),
        ("-v; echo ran", 'ExecStart=/bin/sh -c -- "-v; echo ran"'),
        ("+x; echo ran", 'ExecStart=/bin/sh -c -- "+x; echo ran"'),
        ("--help", 'ExecStart=/bin/sh -c -- "--help"'),
    ],
)
def test_a_command_is_never_read_as_shell_options(cmd: str, line: str) -> None:
    _, service, notes = _render(ScheduleSettings("j", "@daily", cmd))
    assert _exec_start(service) == line and notes == []


def test_a_nul_in_a_command_is_refused_by_config_check_and_the_renderer(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "zincati" / "config.d"
    etc.mkdir(parents=True)
    fragment = etc / "50-nul.toml"
    fragment.write_text(
        '[[schedule]]\nname = "nul"\ncron = "@daily"\ncommand = "echo a\\u0000b"\n'
        '[[schedule]]\nname = "fine"\ncron = "@daily"\ncommand = "echo ok"\n'
    )
    result = load(tmp_path)
    (problem,) = result.errors
    assert problem.file == fragment and problem.key == "schedule[nul].command"
    assert "NUL" in problem.message
    assert [job.name for job in result.config.schedules] == ["fine"]
    # Defence in depth: a job that reaches the renderer anyway is skipped, not written as \x00.
    with pytest.raises(units.JobSkipped, match=r"schedule\[nul\]\.command: .*NUL"):
        _render(ScheduleSettings("nul", "@daily", "echo a\0b", source=fragment))


def test_every_string_is_escaped_or_refused() -> None:
    job = ScheduleSettings(
        "j",
        "0 3 * * *",
        "printf '%s\\n' \"$HOME\" 100%",
        source=Path("/etc/zincati/config.d/50-100%.toml"),
    )
    timer, service, notes = _render(job)
    assert "SourcePath=/etc/zincati/config.d/50-100%%.toml\n" in service
    assert _exec_start(service) == 'ExecStart=/bin/sh -c "printf \'%%s\\\\n\' \\"$$HOME\\" 100%%"'
    assert notes == []
    # A fragment path with a newline would start a new directive: left out, with a note.
    evil = ScheduleSettings("j", "0 3 * * *", "true", source=Path("/x\n[Service]\nExecStartPre=/e"))
    timer, service, notes = _render(evil)
    assert "SourcePath" not in timer + service and "ExecStartPre" not in timer + service
    assert len(notes) == 1 and "control characters" in notes[0]
    for text in (timer, service):
        assert all(line == "" or line[0] in "#[" or "=" in line for line in text.splitlines())


def _units(job: ScheduleSettings) -> units.JobUnits:
    return units.render_job(
        job, header=HEADER, exe="/usr/bin/zincati-py", hash_id=None, hook_args=""
    )


def test_an_argv_command_runs_without_a_shell_exactly_those_bytes() -> None:
    job = ScheduleSettings("j", "@daily", ("/usr/bin/printf", "%s\n", "$HOME", "a b", "", "-x"))
    line = _exec_start(_units(job).service)
    assert line == 'ExecStart=/usr/bin/printf "%%s\\n" "$$HOME" "a b" "" -x'
    # A program whose name starts with what systemd reads as an Exec prefix is quoted.
    for program in ("-prog", "@prog", "+prog", "!prog", ":prog", "|prog"):
        line = _exec_start(_units(ScheduleSettings("j", "@daily", (program, "x"))).service)
        assert line == f'ExecStart="{program}" x'


def test_retries_on_failure_and_run_as_render_systemd_settings() -> None:
    job = ScheduleSettings(
        "j",
        "@daily",
        "exit 1",
        retries=2,
        retry_delay_secs=5,
        on_failure='curl -d "$MONITOR_SERVICE_RESULT" https://hook/%i',
        user="backup",
    )
    out = _units(job)
    service = out.service
    assert "Restart=on-failure\nRestartSec=5s\n" in service
    assert "StartLimitIntervalSec=11s\nStartLimitBurst=3\n" in service
    assert "OnFailure=zincati-py-on-failure-j.service\n" in service
    assert "User=backup\n" in service and "DynamicUser" not in service
    # The history hook runs as root ("+") and ends the retries after the last attempt; not
    # with the job user's $HOME, where Python would run the user's .pth files (user site).
    assert (
        "ExecStopPost=-+/usr/bin/env -u HOME PYTHONNOUSERSITE=1 /usr/bin/zincati-py"
        " schedule _record j --retries 2\n"
    ) in service
    assert sorted(out.extra) == ["zincati-py-on-failure-j.service", "zincati-py-record-j.service"]
    handler = out.extra["zincati-py-on-failure-j.service"]
    assert "Environment=ZINCATI_PY_JOB=j\n" in handler and "User=backup\n" in handler
    # Root's recorder of a failed run the hook could not record (systemd failed to set the
    # user up: 217/USER fails the "+" hook too).
    assert "OnFailure=zincati-py-record-j.service\n" in service
    recorder = out.extra["zincati-py-record-j.service"]
    assert "ExecStart=/usr/bin/zincati-py schedule _record j --failed-unit\n" in recorder
    assert "User=" not in recorder
    assert (
        'ExecStart=/bin/sh -c "curl -d \\"$$MONITOR_SERVICE_RESULT\\" https://hook/%%i"\n'
        in handler
    )
    # A unit name is used as it is; a dynamic user.
    out = _units(
        ScheduleSettings("j", "@daily", "true", on_failure="notify@x.service", dynamic_user=True)
    )
    assert "OnFailure=notify@x.service\n" in out.service
    assert list(out.extra) == ["zincati-py-record-j.service"]
    assert "DynamicUser=yes\n" in out.service
    assert "ExecStopPost=-+/usr/bin/env -u HOME PYTHONNOUSERSITE=1 /usr/bin/" in out.service


@pytest.mark.parametrize(
    ("lines", "key", "needle"),
    [
        ("command = []", "command", "non-empty array"),
        ('command = ["bin/x"]', "command", "absolute path"),
        ('command = ["/bin/x", 3]', "command", "must be"),
        ('command = ["/bin/x", "a\\u0000"]', "command", "NUL"),
        ("retries = -1", "retries", "0..1000"),
        ("retries = 1001", "retries", "0..1000"),
        ("retry_delay_secs = -1", "retry_delay_secs", "negative"),
        ('on_failure = "  "', "on_failure", "empty"),
        ('user = "bad user"', "user", "user name"),
        ('user = "x\\n[Service]"', "user", "user name"),
        ("timeout_secs = -1", "timeout_secs", "negative"),
    ],
)
def test_job_keys_are_validated_naming_file_and_key(
    tmp_path: Path, lines: str, key: str, needle: str
) -> None:
    etc = tmp_path / "etc" / "zincati" / "config.d"
    etc.mkdir(parents=True)
    fragment = etc / "50-j.toml"
    body = '[[schedule]]\nname = "j"\ncron = "@daily"\n'
    if not lines.startswith("command"):
        body += 'command = "true"\n'
    fragment.write_text(body + lines + "\n")
    result = load(tmp_path)
    (problem,) = result.errors
    assert (problem.file, problem.key) == (fragment, f"schedule[j].{key}"), problem
    assert needle in problem.message and result.config.schedules == ()


def test_neutral_values_mean_unset(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "zincati" / "config.d"
    etc.mkdir(parents=True)
    (etc / "50-j.toml").write_text(
        '[[schedule]]\nname = "j"\ncron = "@daily"\ncommand = ["/bin/true"]\n'
        'timeout_secs = 0\non_failure = ""\nuser = ""\nretries = 0\ntime_zone = "localtime"\n'
    )
    (job,) = load(tmp_path).config.schedules
    assert job.command == ("/bin/true",)
    assert (job.timeout_secs, job.on_failure, job.user, job.retries, job.time_zone) == (
        None, None, None, 0, None,
    )  # fmt: skip
    service = _units(job).service
    assert "Timeout" not in service and "OnFailure" not in service and "User" not in service


def test_an_exclusive_job_waits_for_its_slot_unit(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "zincati" / "config.d"
    etc.mkdir(parents=True)
    fragment = etc / "50-j.toml"
    (tmp_path / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    job = '[[schedule]]\nname = "j"\ncron = "@daily"\ncommand = "-x 100%"\n'
    fragment.write_text(job + 'exclusive_group = "nightly"\nexclusive_wait_secs = 30\n')
    result = load(tmp_path)
    (problem,) = result.errors  # no lock server configured
    assert (problem.key, "updates.fleet_lock.base_url" in problem.message) == (
        "schedule[j].exclusive_group", True,
    )  # fmt: skip
    url = '[updates.fleet_lock]\nbase_url = "http://lock.example:8080/"\n'
    negative_wait = 'exclusive_group = "g"\nexclusive_wait_secs = -1'
    for bad, key in (('exclusive_group = "a b"', "exclusive_group"),
                     (negative_wait, "exclusive_wait_secs")):  # fmt: skip
        fragment.write_text(url + job + bad + "\n")
        (problem,) = load(tmp_path).errors
        assert problem.key == f"schedule[j].{key}"
    fragment.write_text(url + job + 'exclusive_group = "nightly"\nexclusive_wait_secs = 30\n')
    result = load(tmp_path)
    assert result.errors == ()
    (settings,) = result.config.schedules
    out = units.render_job(
        settings,
        header=HEADER,
        exe="/usr/bin/zincati-py",
        hash_id=result.config.identity.node_uuid,
        hook_args="",
    )
    node = result.config.identity.node_uuid
    # The command is the job's own ExecStart= (its user and sandbox apply), run once the
    # ExecCondition= (as root) has the slot unit holding a slot.
    assert _exec_start(out.service) == 'ExecStart=/bin/sh -c -- "-x 100%%"'
    assert "ExecCondition=+/usr/bin/zincati-py schedule _exclusive --check j\n" in out.service
    assert "Wants=zincati-py-slot-j.service\nAfter=zincati-py-slot-j.service\n" in out.service
    assert "SuccessExitStatus" not in out.service
    assert "ExecStopPost=-/usr/bin/zincati-py schedule _record j --exclusive\n" in out.service
    slot = out.extra["zincati-py-slot-j.service"]
    assert (
        "ExecStart=/usr/bin/zincati-py schedule _exclusive --url http://lock.example:8080/ "
        f"--group nightly --id {node}:j --wait 30 j\n"
    ) in slot
    assert "Type=notify\n" in slot and "TimeoutStartSec=150s\n" in slot
    assert "ExecStopPost=/usr/bin/zincati-py schedule _exclusive --ended j\n" in slot
    assert "StopWhenUnneeded=yes\n" in slot
    assert "User=" not in slot  # root's: it holds the token


def test_an_exclusive_job_gets_the_lock_server_token_as_a_credential(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "zincati" / "config.d"
    etc.mkdir(parents=True)
    (tmp_path / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (etc / "50-j.toml").write_text(
        '[updates.fleet_lock]\nbase_url = "http://lock.example/"\n'
        'token_file = "/etc/zincati-py/fleetlock-node.token"\n'
        '[[schedule]]\nname = "j"\ncron = "@daily"\ncommand = "true"\nexclusive_group = "g"\n'
        '[[schedule]]\nname = "k"\ncron = "@daily"\ncommand = "true"\n'
    )
    result = load(tmp_path)
    jobs = {job.name: job for job in result.config.schedules}
    node = result.config.identity.node_uuid

    def render(job: ScheduleSettings, user: str | None = None) -> units.JobUnits:
        if user is not None:
            job = dataclasses.replace(job, user=user)
        return units.render_job(
            job, header=HEADER, exe="/usr/bin/zincati-py", hash_id=node, hook_args=""
        )

    # Finding 10: the token reaches the slot unit only (root, no User=), never the unit whose
    # command may run as an unprivileged user (a LoadCredential= there is that user's to read).
    out = render(jobs["j"], user="nobody")
    slot = out.extra["zincati-py-slot-j.service"]
    assert (
        "LoadCredential=zincati-py-fleetlock-token:/etc/zincati-py/fleetlock-node.token\n" in slot
    )
    assert (
        "--token-credential zincati-py-fleetlock-token "
        "--token-file /etc/zincati-py/fleetlock-node.token j\n"
    ) in slot
    assert "User=" not in slot and "DynamicUser" not in slot
    assert "User=nobody\n" in out.service
    # Root's condition not with the user's $HOME (its Python user site would run as root).
    assert (
        "ExecCondition=+/usr/bin/env -u HOME PYTHONNOUSERSITE=1 /usr/bin/zincati-py"
        " schedule _exclusive --check j\n"
    ) in out.service
    for secret in ("LoadCredential", "SetCredential", "token", "fleetlock-node"):
        assert secret not in out.service, secret
    assert "LoadCredential" not in render(jobs["k"]).service  # not exclusive: no token
