"""Publishing: the status file, the D-Bus properties, sd_notify STATUS= and the state metrics.

Owns the state the agent last announced (and since when), the last status document (the file
is rewritten only when it changes) and the exported API object whose properties mirror it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from zincati_py.agent import persist, status
from zincati_py.agent.core import Host, save
from zincati_py.agent.machine import State, Step

if TYPE_CHECKING:
    from zincati_py.agent.api import AgentInterface
    from zincati_py.agent.deployments import DeploymentTracker
    from zincati_py.agent.notify import Notifier
    from zincati_py.agent.reload import ConfigReloader
    from zincati_py.cincinnati.updater import GraphUpdates
    from zincati_py.health.keeper import HealthKeeper
    from zincati_py.metrics import AgentMetrics
    from zincati_py.paths import Paths

log = logging.getLogger("zincati_py.agent")


def find(tree: Any, key: str) -> Any:
    """The first value of ``key`` in a strategy status (a composite nests its members)."""
    if isinstance(tree, dict):
        if tree.get(key) is not None:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = find(item, key)
            if found is not None:
                return found
    return None


class Publisher:
    def __init__(
        self,
        host: Host,
        paths: Paths,
        bus_name: str,
        store: persist.Store,
        metrics: AgentMetrics,
        notify: Notifier,
        deployments: DeploymentTracker,
        settings: ConfigReloader,
    ) -> None:
        self.host = host
        self.paths = paths
        self.bus_name = bus_name
        self.store = store
        self.metrics = metrics
        self.notify = notify
        self.deployments = deployments
        self.settings = settings
        self.iface: AgentInterface | None = None
        self.graph: GraphUpdates | None = None  # the Cincinnati graph's part of the status
        self.health: HealthKeeper | None = None  # the health gate's part of the status
        self.state = State.START
        self.state_since = time.time()
        self._last_doc: dict[str, Any] | None = None

    def status_line(self, text: str) -> None:
        self.notify.status(text)

    def publish(self, step: Step, reason: str, recheck: float | None) -> None:
        if step.state is not self.state:
            log.info("state: %s -> %s", self.state, step.state)
            self.state = step.state
            self.state_since = time.time()
            self.metrics.latest_state_change = self.state_since
        self.metrics.state = step.state.value
        st = self.store.record
        strategy = self.settings.strategy
        config = self.settings.config
        strat = strategy.status() if strategy is not None else {}
        staged = self.deployments.staged
        booted = self.deployments.booted
        next_window = find(strat, "next_window_start")
        holds = find(strat, "holds_slot")
        lock_state = "none" if holds is None else ("held" if holds else "not held")
        if bool(holds) != bool(st.extra.get("slot_held")):
            # Durable, so a restart can say a fleet-lock slot was held when it stopped (the
            # steady-state report on every start is what releases it).
            saved = self.store.commit(extra={**st.extra, "slot_held": bool(holds)})
            st = self.store.record
            self.host.spawn(save(saved, "fleet-lock slot record"))
        doc: dict[str, Any] = {
            "schema": status.SCHEMA,
            "pid": os.getpid(),
            "bus_name": self.bus_name,
            "state": step.state.value,
            "state_since": status.iso(self.state_since),
            "action": step.action.value,
            "reason": reason,
            "next": step.next,
            "recheck_at": status.iso(recheck),
            "booted": None if booted is None else booted.brief(),
            "staged": None if staged is None else staged.brief(),
            "updates_enabled": self.settings.config.updates.enabled,
            "last_check": status.iso(st.last_check),
            "last_check_result": st.last_check_result,
            "reboot_requested": None
            if st.reboot_requested is None
            else st.reboot_requested.__dict__,
            "postponed": None if st.postponed is None else st.postponed.__dict__,
            "staged_by_us": None if st.staged_by_us is None else st.staged_by_us.__dict__,
            "strategy": strat,
            "lock_state": lock_state,
            "next_window": next_window,
            "config": self.settings.doc(),
            "cincinnati": self.graph.status(config) if self.graph else None,
            "health": self.health.status() if self.health else None,
        }
        if doc != self._last_doc:
            self._last_doc = doc
            status.write(self.paths.status_file, {**doc, "updated_at": status.iso(time.time())})
            self.notify.status(f"{step.state.value}: {reason}")
        if self.iface is not None:
            self.iface.set(
                State=step.state.value,
                Reason=reason,
                BootedVersion=booted.version or booted.checksum if booted else "",
                StagedVersion=(staged.version or staged.checksum) if staged else "",
                LastCheck=status.iso(st.last_check) or "",
                NextWindow=str(next_window or ""),
                LockState=lock_state,
                **(self.graph.properties(config) if self.graph else {}),
            )


class JobMetrics:
    """The ``[[schedule]]`` jobs' metrics (``schedule.metrics.JobMetricsCollector``), made at
    the first scrape: nothing of it is needed before, and its modules cost 0.6 MiB for the
    agent's whole life otherwise (bench/agent_idle.py). A prometheus-client collector."""

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._real: Any = None

    def _get(self) -> Any:
        if self._real is None:
            from zincati_py.schedule.metrics import JobMetricsCollector

            self._real = JobMetricsCollector(*self._args)
        return self._real

    async def refresh(self) -> None:
        await self._get().refresh()

    def collect(self) -> Any:
        return self._get().collect()
