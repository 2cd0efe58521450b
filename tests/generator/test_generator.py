"""The generator run as systemd runs it: units written, contents, robustness, systemd-analyze."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.generator.corpus import JOBS, PERIODIC
from tests.generator.helpers import run_generator, write_fragment
from zincati_py.config import load
from zincati_py.generator import quote_exec_arg
from zincati_py.schedule import translate


def _units(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in out.iterdir() if p.is_file()}


def _settings(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_default_config_gives_only_the_check_timer(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_generator(tmp_path / "root", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(_units(out)) == ["zincati-py-check.service", "zincati-py-check.timer"]
    timer = _units(out)["zincati-py-check.timer"]
    assert _settings(timer, "OnBootSec") == ["300s"]
    assert _settings(timer, "OnUnitActiveSec") == ["300s"]
    assert _settings(timer, "AccuracySec") == ["1s"]
    assert _settings(timer, "RandomizedDelaySec") == []  # no wariness configured
    service = _units(out)["zincati-py-check.service"]
    (exec_start,) = _settings(service, "ExecStart")
    assert exec_start.endswith("/zincati-py check --from-timer")
    assert Path(exec_start.split()[0]).exists()
    link = out / "timers.target.wants" / "zincati-py-check.timer"
    assert link.is_symlink() and link.resolve() == (out / "zincati-py-check.timer").resolve()


def test_periodic_windows_schedules_and_wariness(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_fragment(root, "50-periodic.toml", PERIODIC)
    jobs = write_fragment(root, "60-jobs.toml", JOBS)
    out = tmp_path / "out"
    proc = run_generator(root, out)
    assert proc.returncode == 0, proc.stderr
    units = _units(out)
    node = load(root).config.identity.node_uuid
    assert node is not None

    # wariness 0.5 x 300 s steady interval
    assert _settings(units["zincati-py-check.timer"], "RandomizedDelaySec") == ["150s"]

    w1, w2 = units["zincati-py-window-1.timer"], units["zincati-py-window-2.timer"]
    assert _settings(w1, "OnCalendar") == ["Mon,Wed *-*-* 03:00:00 Europe/Berlin"]
    assert _settings(w2, "OnCalendar") == translate("30 4 * * 1-5", tz="Europe/Berlin")
    for name in ("zincati-py-window-1.service", "zincati-py-window-2.service"):
        assert _settings(units[name], "ExecStart")[0].endswith("/zincati-py wake window")

    backup_t = units["zincati-py-schedule-backup.timer"]
    backup_s = units["zincati-py-schedule-backup.service"]
    assert _settings(backup_t, "OnCalendar") == translate("H 2 * * *", tz="UTC", hash_id=node)
    assert _settings(backup_t, "Persistent") == ["yes"]
    assert _settings(backup_t, "RandomizedDelaySec") == ["30s"]
    assert _settings(backup_s, "Type") == ["oneshot"]
    assert _settings(backup_s, "TimeoutStartSec") == ["600s"]
    assert _settings(backup_s, "ExecStart") == ['/bin/sh -c "tar -C /srv -cf /backup/srv.tar ."']
    assert _settings(backup_s, "SourcePath") == [str(jobs)]
    (hook,) = _settings(backup_s, "ExecStopPost")
    assert hook.startswith("-") and f"schedule _record backup --root {root}" in hook
    assert "--user" not in hook  # not run by a user manager (SYSTEMD_SCOPE unset)

    nocatch = units["zincati-py-schedule-no-catch-up.timer"]
    assert _settings(nocatch, "Persistent") == ["no"]
    assert _settings(nocatch, "RandomizedDelaySec") == []
    assert "TimeoutStartSec" not in units["zincati-py-schedule-no-catch-up.service"]

    assert not any("schedule-off" in name for name in units)  # disabled: no units
    wants = sorted(p.name for p in (out / "timers.target.wants").iterdir())
    assert wants == sorted(n for n in units if n.endswith(".timer"))


def test_check_cron_and_disabled_updates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_fragment(root, "50-check.toml", '[agent.timing]\ncheck_cron = "H/10 * * * *"\n')
    write_fragment(root, "51-wary.toml", "[identity]\nrollout_wariness = 1.0\n")
    out = tmp_path / "out"
    assert run_generator(root, out).returncode == 0
    timer = _units(out)["zincati-py-check.timer"]
    node = load(root).config.identity.node_uuid
    assert _settings(timer, "OnCalendar") == translate("H/10 * * * *", hash_id=node)
    assert _settings(timer, "OnUnitActiveSec") == []
    assert _settings(timer, "RandomizedDelaySec") == ["3600s"]  # cron: W x 1 h, capped

    # Updates disabled: no check and no window timers, schedules stay.
    write_fragment(root, "50-periodic.toml", PERIODIC)
    write_fragment(root, "52-off.toml", "[updates]\nenabled = false\n")
    write_fragment(root, "60-jobs.toml", JOBS)
    out2 = tmp_path / "out2"
    assert run_generator(root, out2).returncode == 0
    assert sorted(n for n in _units(out2) if n.endswith(".timer")) == [
        "zincati-py-schedule-backup.timer",
        "zincati-py-schedule-no-catch-up.timer",
    ]


def test_broken_fragments_only_lose_their_own_parts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_fragment(root, "60-jobs.toml", JOBS)
    bad_toml = write_fragment(root, "55-broken.toml", "[updates\nstrategy = 'periodic'\n")
    bad_job = write_fragment(
        root,
        "70-bad-cron.toml",
        '[[schedule]]\nname = "bad"\ncron = "61 * * * *"\ncommand = "true"\n',
    )
    out = tmp_path / "out"
    proc = run_generator(root, out)
    assert proc.returncode == 0
    assert str(bad_toml) in proc.stderr
    assert f"{bad_job}: schedule[bad].cron" in proc.stderr
    assert "Traceback" not in proc.stderr
    timers = sorted(n for n in _units(out) if n.endswith(".timer"))
    assert timers == [
        "zincati-py-check.timer",
        "zincati-py-schedule-backup.timer",
        "zincati-py-schedule-no-catch-up.timer",
    ]


def test_internal_error_still_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "not-a-directory"
    out.write_text("")
    proc = run_generator(tmp_path / "root", out, args=[str(out)])
    assert proc.returncode == 0
    assert "internal error, no units generated" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage(tmp_path: Path) -> None:
    proc = run_generator(tmp_path / "root", tmp_path, args=["a", "b"])
    assert proc.returncode == 64 and "usage" in proc.stderr
    # One argument (the output directory) is accepted too.
    proc = run_generator(tmp_path / "root", tmp_path, args=[str(tmp_path / "one")])
    assert proc.returncode == 0 and (tmp_path / "one" / "zincati-py-check.timer").exists()


def test_user_scope_passes_user_to_the_history_hook(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_fragment(root, "60-jobs.toml", JOBS)
    out = tmp_path / "out"
    assert run_generator(root, out, ("SYSTEMD_SCOPE", "user")).returncode == 0
    (hook,) = _settings(_units(out)["zincati-py-schedule-backup.service"], "ExecStopPost")
    assert hook.endswith(" --user")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_generated_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_fragment(root, "50-periodic.toml", PERIODIC)
    write_fragment(root, "60-jobs.toml", JOBS)
    write_fragment(
        root,
        "61-quoting.toml",
        '[[schedule]]\nname = "quoting"\ncron = "@daily"\n'
        "command = '''echo \"100% $HOME\" 'a\\b' ; printf %s\\n x'''\n",
    )
    out = tmp_path / "out"
    assert run_generator(root, out).returncode == 0
    units = sorted(str(p) for p in out.iterdir() if p.is_file())
    assert len(units) == 12

    def verify(paths: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemd-analyze", "verify", "--man=no", *paths],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=out,
        )

    proc = verify(units)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    # The check can fail: a damaged copy of a generated timer is rejected.
    broken = out / "zincati-py-broken.timer"
    text = (out / "zincati-py-schedule-backup.timer").read_text()
    broken.write_text(text.replace("OnCalendar=", "OnCalendar=not a calendar "))
    (out / "zincati-py-broken.service").write_text(
        (out / "zincati-py-schedule-backup.service").read_text()
    )
    assert verify([str(broken)]).returncode != 0


def test_quote_exec_arg_escapes_what_systemd_interprets() -> None:
    assert quote_exec_arg("plain") == '"plain"'
    assert quote_exec_arg('a"b') == '"a\\"b"'
    assert quote_exec_arg("$HOME ${X}") == '"$$HOME $${X}"'
    assert quote_exec_arg("100%") == '"100%%"'
    assert quote_exec_arg("a\\b") == '"a\\\\b"'
    assert quote_exec_arg("l1\nl2\t\x01") == '"l1\\nl2\\t\\x01"'


def test_generator_inside_an_image_tree_names_the_target_path(tmp_path: Path) -> None:
    """Run from ROOT/usr/bin (an image builder's tree): units say /usr/bin/zincati-py."""
    from tests.generator.helpers import GENERATOR

    root = tmp_path / "root"
    bindir = root / "usr" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy2(GENERATOR, bindir / "zincati-py-generator")
    (bindir / "zincati-py").write_text("#!/bin/sh\n")  # only has to exist, never runs here
    (bindir / "zincati-py").chmod(0o755)
    write_fragment(root, "60-jobs.toml", JOBS)
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(bindir / "zincati-py-generator"), str(out)],
        env={**os.environ, "ZINCATI_PY_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    service = (out / "zincati-py-check.service").read_text()
    assert "ExecStart=/usr/bin/zincati-py check --from-timer\n" in service
    hook = _settings((out / "zincati-py-schedule-backup.service").read_text(), "ExecStopPost")
    assert hook == [f"-/usr/bin/zincati-py schedule _record backup --root {root}"]
