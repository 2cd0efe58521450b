"""The dead-end MOTD file (fast tier)."""

from __future__ import annotations

import stat
from pathlib import Path

from zincati_py.cincinnati.motd import DeadendMotd, motd_path


def test_written_removed_only_on_change(tmp_path: Path) -> None:
    m = DeadendMotd(tmp_path)
    path = motd_path(tmp_path)
    assert path == tmp_path / "run/motd.d/85-zincati-deadend.motd"
    assert m.update(False, "") is True  # the first update syncs (nothing to remove)
    assert not path.exists()
    assert m.update(True, "see https://example/1") is True
    assert path.read_text() == (
        "This release is a dead-end and will not further auto-update: see https://example/1\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    # no change of status: not touched (an admin's removal stays)
    path.unlink()
    assert m.update(True, "see https://example/1") is False
    assert not path.exists()
    assert m.update(True, "other reason") is True
    assert "other reason" in path.read_text()
    assert m.update(False, "") is True
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir()] == []  # no temp files left


def test_stale_file_removed_at_first_update(tmp_path: Path) -> None:
    path = motd_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("old\n")
    assert DeadendMotd(tmp_path).update(False, "") is True
    assert not path.exists()
