"""``file``: a reboot is allowed while a marker file exists (``[updates.file] path``).

With ``max_age_secs``, a marker whose modification time is older than that does not count
(``touch`` it to renew); its expiry is the verdict's ``recheck_at``. The marker's path is
resolved under the ``--root`` prefix like every other path.

No polling: the marker's directory is watched with inotify (create, delete, moves in and out,
attribute changes such as ``touch``, writes closing) and each relevant event wakes the agent,
which asks again; the answer itself always comes from ``stat`` at the time of asking. If the
directory does not exist (yet), the nearest existing ancestor is watched for the missing
component, and the watch moves down as directories appear (and back up if they go away):
``zincati_py.inotify``, shared with ``marker_file``.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from zincati_py.inotify import PathWatch
from zincati_py.strategy.base import Strategy, StrategyContext, Verdict


class FileGate(Strategy):
    name = "file"

    def __init__(self, ctx: StrategyContext) -> None:
        super().__init__(ctx)
        settings = ctx.config.updates.file
        self.marker: Path | None = (
            None if settings.path is None else ctx.paths.root / settings.path.lstrip("/")
        )
        self.max_age = (
            None if settings.max_age_secs is None else timedelta(seconds=settings.max_age_secs)
        )
        self._watch: PathWatch | None = None

    async def start(self) -> None:
        if self.marker is None:
            return
        self._watch = PathWatch(self.marker, lambda what: self.ctx.wake(f"file gate: {what}"))
        self._watch.start()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        self._watch = None

    # -- the strategy --------------------------------------------------------------------------

    async def _can_finalize(self, now: datetime) -> Verdict:
        if self.marker is None:
            return Verdict(False, "updates.file.path is not configured")
        details: dict[str, Any] = {
            "path": str(self.marker),
            "max_age_secs": None if self.max_age is None else int(self.max_age.total_seconds()),
            "watching": _watching(self._watch),
        }
        try:
            st = os.stat(self.marker)
        except (FileNotFoundError, NotADirectoryError):
            return Verdict(False, f"marker file {self.marker} does not exist", None, details)
        except OSError as exc:
            return Verdict(False, f"marker file {self.marker}: {exc.strerror}", None, details)
        if stat.S_ISDIR(st.st_mode):
            return Verdict(False, f"{self.marker} is a directory, not a marker file", None, details)
        mtime = datetime.fromtimestamp(st.st_mtime, UTC)
        details["modified_at"] = mtime.isoformat()
        if self.max_age is None:
            return Verdict(True, f"marker file {self.marker} exists", None, details)
        expires = mtime + self.max_age
        details["expires_at"] = expires.isoformat()
        if now >= expires:
            return Verdict(
                False,
                f"marker file {self.marker} is older than {details['max_age_secs']}s "
                f"(modified {mtime.isoformat()}); touch it to allow again",
                None,
                details,
            )
        return Verdict(
            True,
            f"marker file {self.marker} exists, counts until {expires.isoformat()}",
            expires,
            details,
        )


def _watching(watch: PathWatch | None) -> str | None:
    directory = None if watch is None else watch.watching
    return None if directory is None else str(directory)
