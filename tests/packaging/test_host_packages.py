"""testbed/host-packages.sh, which README command 1 (testbed/demo.sh) and .ci/run run first:
nothing to do means no package manager at all (a second run starts at once), a held apt lock
is waited for, bounded, and any other apt failure fails at once.

The package manager is the one thing replaced here: stand-ins for ``dpkg-query``, ``apt-get``
and ``id`` early in PATH, which log their arguments and answer as scripted. (The real lock
behaviour they copy was checked by hand against apt 2.6: ``apt-get update`` does not honour
``DPkg::Lock::Timeout`` for the lists lock; it says "Could not get lock" and exits 100.)
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "testbed" / "host-packages.sh"
LOCKED = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)"


def fake_tools(tmp_path: Path, *, missing: set[str], update_locked: int, error: str = "") -> Path:
    """A bin dir: dpkg-query says every package but ``missing`` is installed; apt-get's
    ``update`` says a lock is held ``update_locked`` times (-1: always), or fails with
    ``error``; every apt-get call is logged; ``id -u`` is 0 (root)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    count = tmp_path / "update-count"
    count.write_text("0")
    missing_pattern = "|".join(sorted(missing)) or "no-package-is-missing"
    scripts = {
        "dpkg-query": f"""#!/bin/bash
pkg=${{!#}}
case $pkg in {missing_pattern}) printf 'un ' ;; *) printf 'ii ' ;; esac
""",
        "apt-get": f"""#!/bin/bash
echo "$*" >> {log}
if [[ " $* " == *" update "* ]]; then
  n=$(( $(cat {count}) + 1 )); echo $n > {count}
  if [ -n {error!r} ]; then echo {error!r} >&2; exit 100; fi
  if [ {update_locked} -lt 0 ] || [ $n -le {update_locked} ]; then echo {LOCKED!r} >&2; exit 100; fi
fi
echo "Reading package lists..."
exit 0
""",
        "id": '#!/bin/bash\nif [ "$1" = -u ]; then echo 0; else exec /usr/bin/id "$@"; fi\n',
        "dnf": f'#!/bin/bash\necho dnf "$*" >> {log}\nexit 1\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run(bin_dir: Path, profile: str = "demo", **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env}
    return subprocess.run(
        ["bash", str(SCRIPT), profile],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def apt_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_everything_present_runs_no_package_manager(tmp_path: Path) -> None:
    bin_dir = fake_tools(tmp_path, missing=set(), update_locked=0)
    started = time.monotonic()
    for profile in ("demo", "ci"):
        proc = run(bin_dir, profile)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert time.monotonic() - started < 10
    assert apt_calls(tmp_path) == []


def test_a_held_lock_is_waited_for_then_only_the_missing_packages_install(
    tmp_path: Path,
) -> None:
    bin_dir = fake_tools(tmp_path, missing={"gcc", "python3-dbusmock"}, update_locked=3)
    proc = run(bin_dir, ZINCATI_PY_APT_RETRY_SECS="0.05")
    assert proc.returncode == 0, proc.stderr
    assert "installing with apt-get: python3-dbusmock gcc" in proc.stderr  # the list's order
    assert proc.stderr.count("holds its lock; waiting") == 1
    assert "Could not get lock" not in proc.stdout + proc.stderr
    calls = apt_calls(tmp_path)
    assert [c.split()[-1] for c in calls[:4]] == ["update"] * 4
    assert all("DPkg::Lock::Timeout=" in c for c in calls)
    assert len(calls) == 5 and calls[4].endswith(
        "install -y --no-install-recommends python3-dbusmock gcc"
    )


@pytest.mark.slow  # seconds: it waits out a (short) bound
def test_the_wait_is_bounded(tmp_path: Path) -> None:
    bin_dir = fake_tools(tmp_path, missing={"gcc"}, update_locked=-1)
    started = time.monotonic()
    proc = run(bin_dir, ZINCATI_PY_APT_LOCK_TIMEOUT="2", ZINCATI_PY_APT_RETRY_SECS="0.2")
    assert proc.returncode == 100
    assert 1 <= time.monotonic() - started < 20  # bash counts whole seconds
    assert "Could not get lock" in proc.stderr  # the last answer, shown once it gives up
    assert not any("install" in c for c in apt_calls(tmp_path))


def test_any_other_apt_failure_fails_at_once(tmp_path: Path) -> None:
    bin_dir = fake_tools(
        tmp_path, missing={"gcc"}, update_locked=0, error="E: The repository is not signed."
    )
    proc = run(bin_dir, ZINCATI_PY_APT_RETRY_SECS="5")
    assert proc.returncode == 100
    assert "The repository is not signed." in proc.stderr
    assert "waiting" not in proc.stderr
    assert len(apt_calls(tmp_path)) == 1


def test_missing_packages_without_root_say_so(tmp_path: Path) -> None:
    bin_dir = fake_tools(tmp_path, missing={"gcc"}, update_locked=0)
    (bin_dir / "id").write_text("#!/bin/bash\necho 1000\n")
    proc = run(bin_dir)
    assert proc.returncode == 77
    assert "missing system packages: gcc" in proc.stderr
    assert apt_calls(tmp_path) == []
