"""Issue 11 item 8: nothing from a file name (or any string) can add a directive to a unit.

A fragment named ``10-x\\n[Service]\\nExecStartPre=...\\n#.toml`` used to reach every generated
unit raw (the header comment and ``SourcePath=``), so a user manager ran the injected command.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.systemd import UserManager
from tests.generator.helpers import run_generator, write_fragment
from tests.helpers import zpy
from zincati_py import unitfile
from zincati_py.config import ScheduleSettings, Settings
from zincati_py.generator import render

JOB = '[[schedule]]\nname = "job"\ncron = "0 3 * * *"\ncommand = "true"\n'


# No "/" can be in a file name: the injected command touches "%tpwned", a sibling of the
# manager's runtime directory (%t).
EVIL = "10-x\n[Service]\nExecStartPre=touch %tpwned\n#.toml"


def _directives(text: str) -> list[str]:
    """Every non-comment, non-blank line of a unit (sections and settings)."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_unitfile_escapes_or_refuses() -> None:
    assert unitfile.setting("/etc/a 100%.toml") == "/etc/a 100%%.toml"
    for bad in ("a\nb", "a\rb", "a\x00b", "a\x1bb", "a\x85b", "a\udcffb"):
        with pytest.raises(unitfile.UnsafeValue):
            unitfile.setting(bad)
    with pytest.raises(unitfile.UnsafeValue, match="backslash"):
        unitfile.setting("a\\")
    assert unitfile.comment("a\nExecStart=x\r\udcff") == "a\\nExecStart=x\\r\\xff"
    assert unitfile.control_characters("x\n\n\x1b") == ["\\n", "\\x1b"]
    assert unitfile.exec_word("/usr/bin/zincati-py") == "/usr/bin/zincati-py"
    assert unitfile.exec_word("/a b/$X%") == '"/a b/$$X%%"'
    assert unitfile.exec_word("") == '""'


def test_render_never_writes_a_control_character_from_a_path() -> None:
    """Defence in depth: even given such paths, render() keeps each one inside its line."""
    evil = Path("/etc/zincati/config.d/10-x\n[Service]\nExecStartPre=/bin/false\n#.toml")
    job = ScheduleSettings(name="job", cron="0 3 * * *", command="true", source=evil)
    rendered = render(Settings(schedules=(job,)), fragments=[evil], executable="/usr/bin/z p")
    assert set(rendered.units) >= {"zincati-py-schedule-job.service"}
    for name, text in rendered.units.items():
        assert "ExecStartPre" not in "".join(_directives(text)), (name, text)
        assert not any(ch in text for ch in "\r\x00\x0b\x0c"), name
    service = rendered.units["zincati-py-schedule-job.service"]
    assert "SourcePath=" not in service  # refused, not written
    assert "#   /etc/zincati/config.d/10-x\\n[Service]\\nExecStartPre=/bin/false\\n#.toml\n" in (
        service
    )


def test_generator_ignores_the_file_and_keeps_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_fragment(root, EVIL, '[updates]\nstrategy = "immediate"\n')
    write_fragment(root, "60-job.toml", JOB)
    out = tmp_path / "out"
    proc = run_generator(root, out)
    assert proc.returncode == 0, proc.stderr
    assert "file name contains control characters" in proc.stderr
    assert "Traceback" not in proc.stderr
    units = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    assert sorted(units) == [
        "zincati-py-check.service",
        "zincati-py-check.timer",
        "zincati-py-schedule-job.service",
        "zincati-py-schedule-job.timer",
    ]
    for name, text in units.items():
        assert "ExecStartPre" not in text, name
        assert "10-x" not in text, name  # the refused fragment is not merged at all


def test_config_check_reports_the_file_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    evil = write_fragment(root, EVIL, "")
    write_fragment(root, "60-job.toml", JOB)
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    proc = zpy("config", "check", "--root", str(root), unset=("ZINCATI_PY_ROOT",))
    assert proc.returncode == os.EX_DATAERR, proc.stderr
    line, summary = proc.stderr.splitlines()  # one error, on one line; then the summary
    assert summary.startswith("zincati-py: configuration invalid")
    shown = str(evil).replace("\n", "\\n")
    assert line == (
        f"zincati-py: {shown}: file name contains control characters or non-UTF-8 bytes (\\n); "
        "file ignored: rename it"
    )
    # Not UTF-8: the same error, with the byte shown.
    os.unlink(evil)
    bad = os.fsencode(root / "etc/zincati/config.d") + b"/20-\xff.toml"
    with open(bad, "w") as f:
        f.write("")
    proc = zpy("config", "check", "--root", str(root), unset=("ZINCATI_PY_ROOT",))
    assert proc.returncode == os.EX_DATAERR
    assert "file name contains control characters or non-UTF-8 bytes (\\xff)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_real_user_manager_runs_nothing_injected(
    tmp_path: Path, config_root: Path, user_manager_factory: Callable[..., UserManager]
) -> None:
    (config_root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (config_root / "etc/zincati/config.d" / EVIL).write_text("")
    (config_root / "etc/zincati/config.d/60-job.toml").write_text(JOB)
    manager = user_manager_factory(config_root)
    marker = Path(f"{manager.runtime_dir}pwned")
    unit = "zincati-py-schedule-job.service"
    assert manager.systemctl("show", "-P", "LoadState", unit).strip() == "loaded"
    assert manager.systemctl("show", "-P", "ExecStartPre", unit).strip() == ""
    manager.systemctl("start", unit)  # oneshot: returns once the run has finished
    assert manager.systemctl("show", "-P", "Result", unit).strip() == "success"
    time.sleep(0.2)
    assert not marker.exists()
    # The manager's own view of every generated unit: nothing but our directives.
    for path in manager.generator_output.glob("zincati-py-*"):
        if path.is_file():
            assert "ExecStartPre" not in path.read_text(), path
