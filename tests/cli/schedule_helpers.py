"""Run the real ``zincati-py`` executable against a config root (and maybe a user manager)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests import helpers

MACHINE_ID = "0123456789abcdef0123456789abcdef"


def make_root(base: Path) -> Path:
    root = base / "root"
    (root / "etc" / "zincati" / "config.d").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "machine-id").write_text(MACHINE_ID + "\n")
    return root


def zpy(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``zincati-py ARGS``; without ``env`` no bus is reachable (a fail-fast fake address)."""
    return helpers.zpy(*args, env=helpers.NO_BUS if env is None else env, timeout=timeout)


def zpy_json(*args: str, env: Mapping[str, str] | None = None) -> Any:
    proc = zpy(*args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """Nonzero exit ``code``, one ``zincati-py:`` line on stderr naming ``needles``, no trace."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zincati-py: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def wait_for(predicate: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (for "nothing written" checks)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
