"""Job metrics from what systemd reported, never from counters kept by hand.

Inputs are the job's live state (timer and service properties, read by the caller) and its run
history (one record per attempt, written from systemd's own properties and ``$SERVICE_RESULT``
by the ``ExecStopPost=`` hook). A *run* is one start with its retries: records from an
``attempt`` 1 (or an unnumbered one) up to the next such record; its result is its last
attempt's. ``overran``: the run was still going when its timer elapsed again (systemd skipped
that start), as the hook found from the timer's calendar.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus
    from prometheus_client.metrics_core import Metric

    from zincati_py.paths import Paths

__all__ = ["JobMetricsCollector", "job_metrics", "runs_of"]

log = logging.getLogger(__name__)


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


class JobMetricsCollector:
    """The job metrics as a prometheus-client collector, for the agent's metrics socket.

    :meth:`refresh` (async, awaited before each scrape) reads every configured job's timer and
    service from systemd over the agent's bus and its history file (readable by the agent's
    group); :meth:`collect` renders the last refresh. ``jobs`` gives the configured job names
    (the agent's configuration in force), ``bus`` the agent's bus, where systemd is (None: not
    yet), unless ``systemd_address`` names another bus.
    Nothing is polled and nothing is counted by hand.
    """

    def __init__(
        self,
        paths: Paths,
        jobs: Callable[[], Sequence[str]],
        bus: Callable[[], MessageBus | None],
        systemd_address: str | None = None,
    ) -> None:
        self.paths = paths
        self.jobs = jobs
        self.bus = bus
        self.systemd_address = systemd_address
        self.snapshot: dict[str, dict[str, Any]] = {}

    async def refresh(self) -> None:
        from zincati_py.dbus import systemd

        if self.systemd_address:  # systemd elsewhere than on the agent's bus (test beds)
            own = await systemd.connect(address=self.systemd_address)
            try:
                await self._refresh(own)
            finally:
                own.disconnect()
        elif (bus := self.bus()) is not None:
            await self._refresh(bus)

    async def _refresh(self, bus: MessageBus) -> None:
        from zincati_py.dbus import systemd
        from zincati_py.schedule import history
        from zincati_py.schedule.units import unit_name

        snapshot: dict[str, dict[str, Any]] = {}
        for name in self.jobs():
            try:
                timer = await systemd.timer_state(bus, unit_name(name, "timer"))
                props = await systemd.get_properties(bus, unit_name(name), systemd.SERVICE_IFACE)
                started = systemd.usec_to_datetime(int(props.get("ExecMainStartTimestamp", 0)))
                live = {
                    "last_run": started.timestamp() if started else None,
                    "next_run": timer.next_elapse.timestamp() if timer.next_elapse else None,
                }
                records = await asyncio.to_thread(history.read, self.paths, name)
                if not timer.unit.exists and not records:
                    continue  # not generated (yet), never ran: nothing to say
            except (systemd.SystemdError, history.HistoryError, OSError, ValueError) as exc:
                log.debug("job metrics: schedule %s: %s", name, exc)
                continue
            snapshot[name] = job_metrics(live, records)
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        def family(name: str, doc: str, labels: Sequence[str] = ("job",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"zincati_py_schedule_{name}", doc, labels=list(labels))

        start = family("last_start_timestamp_seconds", "Start of the job's last run (systemd).")
        duration = family("last_duration_seconds", "Duration of the job's last run, retries in.")
        result = family(
            "last_result", "Result of the job's last run (1 for it).", ("job", "result")
        )
        failures = family("consecutive_failures", "Runs that failed since the last success.")
        next_run = family("next_run_timestamp_seconds", "When the job's timer elapses next.")
        runs = family("runs", "Recorded runs by result (retries in one run).", ("job", "result"))
        overruns = family("overruns", "Runs still going when their timer elapsed again.")
        for name, m in sorted(self.snapshot.items()):
            if m["last_start"] is not None:
                start.add_metric([name], m["last_start"])
            if m["last_duration_secs"] is not None:
                duration.add_metric([name], m["last_duration_secs"])
            if m["last_result"] is not None:
                result.add_metric([name, m["last_result"]], 1)
            failures.add_metric([name], m["consecutive_failures"])
            if m["next_run"] is not None:
                next_run.add_metric([name], m["next_run"])
            for outcome, count in sorted(m["runs_by_result"].items()):
                runs.add_metric([name, outcome], count)
            overruns.add_metric([name], m["overruns"])
        yield from (start, duration, result, failures, next_run, runs, overruns)
