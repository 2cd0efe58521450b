"""Job metrics from what systemd reported, never from counters kept by hand.

Inputs are the job's live state (timer and service properties, read by the caller) and its run
history (one record per attempt, written from systemd's own properties and ``$SERVICE_RESULT``
by the ``ExecStopPost=`` hook). A *run* is one start with its retries: records from an
``attempt`` 1 (or an unnumbered one) up to the next such record; its result is its last
attempt's. ``overran``: the run was still going when its timer elapsed again (systemd skipped
that start), as the hook found from the timer's calendar.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = ["job_metrics", "runs_of"]


def runs_of(records: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """History records grouped into runs (a run = a first attempt and its retries)."""
    runs: list[list[Mapping[str, Any]]] = []
    for record in records:
        if not runs or (record.get("attempt") or 1) <= 1:
            runs.append([record])
        else:
            runs[-1].append(record)
    return runs


def _seconds(start: Any, end: Any) -> float | None:
    try:
        first = datetime.fromisoformat(start)
        last = datetime.fromisoformat(end)
    except (TypeError, ValueError):
        return None
    return (last - first).total_seconds()


def job_metrics(live: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``last_start``/``next_run`` (ISO 8601 or None) come from ``live`` (systemd now); the rest
    from the recorded runs: last duration and result, consecutive failed runs, runs by result,
    attempts and overruns."""
    runs = runs_of(records)
    results = [run[-1].get("result") or "unknown" for run in runs]
    consecutive = 0
    for result in reversed(results):
        if result == "success":
            break
        consecutive += 1
    last = runs[-1] if runs else []
    return {
        "last_start": live.get("last_run"),
        "next_run": live.get("next_run"),
        "last_result": results[-1] if results else None,
        "last_duration_secs": _seconds(last[0].get("start"), last[-1].get("end")) if last else None,
        "last_attempts": len(last),
        "consecutive_failures": consecutive,
        "runs_by_result": dict(Counter(results)),
        "attempts": len(records),
        "overruns": sum(1 for record in records if record.get("overran")),
    }
