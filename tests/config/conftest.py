"""Helpers for the config tests: write fragment trees under a ``--root`` in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zincati_py.config import LoadResult, load

# Short names for the three directories, in Zincati's priority order (later wins).
DIRS = {
    "usr": "usr/lib/zincati/config.d",
    "run": "run/zincati/config.d",
    "etc": "etc/zincati/config.d",
}
# A fixed machine id, so a default node_uuid can be derived without warnings.
MACHINE_ID = "0123456789abcdef0123456789abcdef"


class Tree:
    """A config root: ``write("etc", "10-a.toml", text)``, ``mask(...)``, ``load()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        machine_id = root / "etc" / "machine-id"
        machine_id.parent.mkdir(parents=True, exist_ok=True)
        machine_id.write_text(MACHINE_ID + "\n")

    def dir(self, where: str) -> Path:
        return self.root / DIRS[where]

    def write(self, where: str, name: str, text: str | bytes) -> Path:
        path = self.dir(where) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def mask(self, where: str, name: str, target: str = os.devnull) -> Path:
        path = self.dir(where) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        return path

    def load(self) -> LoadResult:
        return load(self.root)

    def fragments(self, result: LoadResult) -> list[str]:
        """The fragments used, relative to the root, in merge order."""
        return [str(p.relative_to(self.root)) for p in result.fragments]

    def problems(self, result: LoadResult) -> list[tuple[str, str | None, str]]:
        """Every problem as (severity, file relative to the root, key), in report order."""
        return [(p.severity, self.rel_or_abs(p.file), p.key) for p in result.problems]

    def rel_or_abs(self, path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def snapshot(self) -> dict[str, tuple[int, bytes | str]]:
        """Every entry under the root (for 'nothing was written' checks)."""
        out: dict[str, tuple[int, bytes | str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st = path.lstat()
                if path.is_symlink():
                    out[str(path)] = (st.st_mode, os.readlink(path))
                elif path.is_file():
                    out[str(path)] = (st.st_mode, path.read_bytes())
                else:
                    out[str(path)] = (st.st_mode, b"")
        return out


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "root")
