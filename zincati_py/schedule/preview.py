"""When do calendar lines elapse? Asked of systemd, not computed here.

systemd is what fires the timers, so previews come from ``systemd-analyze calendar``; croniter
would disagree around DST changes (systemd skips wall-clock times that do not exist on
spring-forward days and fires a repeated time once on fall-back days). systemd 252 supports
``--base-time``, which gives previews from any point in time.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from datetime import UTC, datetime

from zincati_py.schedule.cron import CronError

__all__ = ["next_elapses"]

# "    Next elapse: Sun 2026-11-22 03:00:00 UTC" and "     Iter. #2: Mon ... UTC"
_ELAPSE_RE = re.compile(
    r"^\s*(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC$", re.MULTILINE
)


def next_elapses(
    calendar_lines: list[str], count: int, *, after: datetime | None = None
) -> list[datetime]:
    """The next ``count`` times the union of ``calendar_lines`` elapses, strictly after ``after``
    (default: now), as UTC-aware datetimes, sorted and deduplicated.

    Raises CronError if systemd rejects a line; OSError if systemd-analyze cannot run.
    """
    if count <= 0 or not calendar_lines:
        return []
    if after is not None and after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    cmd = ["systemd-analyze", "calendar", f"--iterations={count}"]
    if after is not None:
        # Whole seconds for systemd; anything it returns at or before `after` is dropped below.
        cmd.append(f"--base-time=@{math.floor(after.timestamp())}")
    cmd += ["--", *calendar_lines]
    # TZ=UTC makes systemd print every elapse in UTC, whatever the host's zone.
    env = {**os.environ, "TZ": "UTC", "LC_ALL": "C", "SYSTEMD_COLORS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()
        raise CronError(reason[0] if reason else f"systemd-analyze exited {proc.returncode}")
    times = {
        datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        for stamp in _ELAPSE_RE.findall(proc.stdout)
    }
    if after is not None:
        times = {t for t in times if t > after}
    return sorted(times)[:count]
