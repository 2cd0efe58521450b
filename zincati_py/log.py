"""journald-friendly logging.

Under systemd (``JOURNAL_STREAM`` set) each line gets an sd-daemon ``<N>`` priority prefix so
journald records the right level, and no timestamp (journald adds its own).
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


def setup(verbosity: int = 0, *, stream: object | None = None) -> None:
    """Configure the root logger once; ``verbosity`` 0 = INFO, >= 1 = DEBUG."""
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
