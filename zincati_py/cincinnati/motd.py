"""The dead-end MOTD: ``/run/motd.d/85-zincati-deadend.motd``, Zincati's file and text.

Written atomically with mode 0644 when the booted release becomes a dead-end, removed when it
no longer is; touched only when that status (or its reason) changes, so an admin's edit or
removal stays until the next change.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from zincati_py.fsutil import atomic_write

log = logging.getLogger(__name__)

MOTD_REL = "run/motd.d/85-zincati-deadend.motd"
TEXT = "This release is a dead-end and will not further auto-update: {reason}\n"


def motd_path(root: Path) -> Path:
    return root / MOTD_REL


def text(reason: str) -> str:
    return TEXT.format(reason=reason)


class DeadendMotd:
    """Keeps the MOTD file in line with the dead-end status, acting only on a change."""

    def __init__(self, root: Path) -> None:
        self.path = motd_path(root)
        # (deadend, reason) last applied; None: not known yet (the first update syncs the file).
        self._status: tuple[bool, str] | None = None

    def update(self, deadend: bool, reason: str) -> bool:
        """Apply the status; True when the file was written or removed."""
        status = (deadend, reason if deadend else "")
        if status == self._status:
            return False
        try:
            if deadend:
                atomic_write(self.path, text(reason), mode=0o644, durable=False)
                log.warning("booted release is a dead-end: %s (wrote %s)", reason, self.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                    log.info("booted release is no longer a dead-end: removed %s", self.path)
        except OSError as exc:
            # Not remembered: the next check tries again.
            log.error("dead-end MOTD %s: %s", self.path, exc)
            return False
        self._status = status
        return True
