"""A job's units (zincati_py.schedule.units): what reaches the unit file, without systemd."""

from __future__ import annotations

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
    ("command", "line"),
    [
        ("true", 'ExecStart=/bin/sh -c "true"'),  # as before: no "--" where none is needed
        ("echo -x", 'ExecStart=/bin/sh -c "echo -x"'),
        ("-v; echo ran", 'ExecStart=/bin/sh -c -- "-v; echo ran"'),
        ("+x; echo ran", 'ExecStart=/bin/sh -c -- "+x; echo ran"'),
        ("--help", 'ExecStart=/bin/sh -c -- "--help"'),
    ],
)
def test_a_command_is_never_read_as_shell_options(command: str, line: str) -> None:
    _, service, notes = _render(ScheduleSettings("j", "@daily", command))
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
