"""Helpers for the generator tests: write fragments, run the real generator executable."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from testbed.proc import venv_script

GENERATOR = venv_script("zincati-py-generator")
MACHINE_ID = "0123456789abcdef0123456789abcdef"


def write_fragment(root: Path, name: str, text: str, directory: str = "etc") -> Path:
    sub = {"etc": "etc", "usr": "usr/lib", "run": "run"}[directory]
    path = root / sub / "zincati" / "config.d" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_generator(
    root: Path, out: Path, *extra_env: tuple[str, str], args: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``zincati-py-generator`` as systemd does (three dirs, LATE last)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    if not (root / "etc" / "machine-id").exists():
        (root / "etc" / "machine-id").write_text(MACHINE_ID + "\n")
    env = {**os.environ, "ZINCATI_PY_ROOT": str(root), **dict(extra_env)}
    env.pop("SYSTEMD_SCOPE", None)
    env.update(dict(extra_env))
    if args is None:
        out.mkdir(parents=True, exist_ok=True)
        args = [str(out / "normal"), str(out / "early"), str(out)]
    return subprocess.run(
        [str(GENERATOR), *args], env=env, capture_output=True, text=True, timeout=60
    )
