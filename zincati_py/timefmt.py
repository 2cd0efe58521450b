"""Times in documents: ISO 8601 in UTC, one way for each kind of input.

- :func:`iso_ts`: a Unix time (``time.time()``, as the agent records it) to whole seconds,
  ``2026-12-06T20:38:26+00:00``: status.json, the D-Bus API, the health gate, event hooks.
- :func:`iso_dt`: an aware ``datetime`` (systemd's microsecond timestamps, kept), converted to
  UTC: schedule status and run history.

None (unknown) stays None.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso_ts(ts: float) -> str: ...
@overload
def iso_ts(ts: float | None) -> str | None: ...
def iso_ts(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def iso_dt(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when else None
