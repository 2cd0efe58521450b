"""Deployment tracking: what is booted and staged, update checks, and the records about them.

Owns the facts read from rpm-ostree (booted, staged), whether a check is owed or ran in this
boot, and the read retry. Reads are serialized: rpm-ostree's change notifications
(``PropertiesChanged``, inotify on the deployment directories) only mark "read again", and one
reader task reads until no notification arrived during its read, so an older snapshot never
replaces a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from zincati_py.agent import persist
from zincati_py.agent.core import Host, Outcome, Retries
from zincati_py.agent.machine import Action, Deployment
from zincati_py.backoff import Backoff

if TYPE_CHECKING:
    from zincati_py.dbus.rpmostree import RpmOstree
    from zincati_py.metrics import AgentMetrics

log = logging.getLogger("zincati_py.agent")


def _same(a: Deployment | None, b: Deployment | None) -> bool:
    return (a and a.identity) == (b and b.identity)


class DeploymentTracker:
    def __init__(
        self,
        host: Host,
        store: persist.Store,
        metrics: AgentMetrics,
        retries: Retries,
        on_new_boot: Callable[[], None],
    ) -> None:
        self.host = host
        self.store = store
        self.metrics = metrics
        self.retries = retries
        self.on_new_boot = on_new_boot
        self.rpm: RpmOstree | None = None
        self.booted: Deployment | None = None
        self.staged: Deployment | None = None
        # A check requested before a crash or restart is still owed.
        self.check_requested = bool(store.record.extra.get("check_pending"))
        self.checked = False  # at least one check completed since boot
        self._read_backoff = Backoff(1.0, 300.0)
        self._read_retry: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reasons: list[str] = []

    async def start(self, rpm: RpmOstree) -> None:
        """Follow ``rpm``'s changes and read the deployments once (returns after the read)."""
        self.rpm = rpm
        rpm.on_change(self.on_change)
        self.on_change("startup")
        assert self._reader is not None
        await self._reader

    def close(self) -> None:
        if self._read_retry is not None:
            self._read_retry.cancel()

    # -- reading --------------------------------------------------------------------------
    def on_change(self, reason: str) -> None:
        log.debug("deployments may have changed: %s", reason)
        # Record the event time now: the signal-to-decision latency starts here.
        self.host.note_event()
        self._reasons.append(reason)
        if self._reader is None or self._reader.done():
            self._reader = self.host.spawn(self._read_loop())

    async def _read_loop(self) -> None:
        # One read at a time: concurrent reads could finish out of order and leave an older
        # snapshot in place. Events arriving during a read cause exactly one more read.
        while self._reasons:
            reasons, self._reasons = self._reasons, []
            await self._read("; ".join(reasons))

    async def _read(self, reason: str) -> None:
        assert self.rpm is not None
        try:
            deployments = await self.rpm.deployments()
        except Exception as exc:
            delay = self._read_backoff.next_delay()
            log.warning("cannot read deployments (%s): %s; retrying in %.0f s", reason, exc, delay)
            self.retries.failure[Action.NONE] = f"cannot read deployments from rpm-ostree: {exc}"
            # rpm-ostreed may be restarting: retry with backoff (events may also come first).
            if self._read_retry is not None:
                self._read_retry.cancel()
            self._read_retry = asyncio.get_running_loop().call_later(delay, self.on_change, "retry")
            self.host.wake("deployments unreadable")
            return
        if self._read_retry is not None:
            self._read_retry.cancel()
            self._read_retry = None
        self._read_backoff.reset()
        self.retries.failure.pop(Action.NONE, None)
        booted = next((d for d in deployments if d.booted), None)
        staged = next((d for d in deployments if d.staged), None)
        if self.booted is not None and not _same(booted, self.booted):
            # A new boot (the test bed's rpm-ostree double reboots without restarting us).
            log.info(
                "booted deployment changed from %s to %s: starting over",
                self.booted.label,
                booted.label if booted else "none",
            )
            self.check_requested = bool(self.store.record.extra.get("check_pending"))
            self.checked = False
            self.staged = None
            self.on_new_boot()
        self.booted = booted
        if not _same(staged, self.staged):
            log.info("staged deployment: %s", staged.label if staged is not None else "none")
        self.staged = staged
        if staged is not None and self.store.record.extra.get("check_pending"):
            # An update got staged (by our interrupted check or anyone): the check is answered.
            # The fact and its record change together (a CheckNow during the write wins).
            self.check_requested = False
            await self.store.commit(extra={**self.store.record.extra, "check_pending": False})
        self.host.wake(f"deployments changed ({reason})")

    # -- checking -------------------------------------------------------------------------
    async def check_now(self) -> None:
        """CheckNow on the API: durable before it returns (a crash meanwhile keeps it owed)."""
        log.info("update check requested")
        self.check_requested = True
        saved = self.store.commit(extra={**self.store.record.extra, "check_pending": True})
        self.retries.not_before.pop(Action.CHECK, None)
        await saved
        self.host.wake("check requested")

    async def check(
        self,
        status_line: Callable[[str], None],
        graph: Callable[[RpmOstree], Awaitable[Any]] | None = None,
    ) -> Outcome:
        """Stage the newest update, finalization locked (rpm-ostree UpdateDeployment), or with
        ``graph`` (``[cincinnati] base_url`` set) the release the update graph chooses
        (``zincati_py.cincinnati.updater``: its answer has ``.staged`` and ``.result``)."""
        assert self.rpm is not None
        self.check_requested = False
        self.metrics.update_checks += 1
        self.metrics.deploy_attempts += 1
        how = "the update graph" if graph else "rpm-ostree UpdateDeployment"
        log.info("checking for updates (%s, finalization locked)", how)
        status_line("checking for updates")
        result: str | None = None
        try:
            if graph is None:
                staged = await self.rpm.stage_update()
            else:
                answer = await graph(self.rpm)
                staged, result = answer.staged, answer.result
        except Exception as exc:
            self.metrics.update_check_failures += 1
            self.metrics.deploy_failures += 1
            log.error("update check failed: %s", exc)
            await self.store.commit(last_check=time.time(), last_check_result=f"failed: {exc}")
            self.check_requested = True  # the retry below runs it again
            return self.retries.retry(Action.CHECK, f"update check failed: {exc}")
        self.retries.succeeded(Action.CHECK)
        await self.store.commit(extra={**self.store.record.extra, "check_pending": False})
        self.checked = True
        if staged is None:
            log.info("update check: %s", result or "no new update")
            await self.store.commit(
                last_check=time.time(), last_check_result=result or "no new update"
            )
            return None
        log.info("update check: %s staged (finalization locked)", staged.label)
        self.staged = staged  # before the write: a deployments read meanwhile is newer
        await self.store.commit(
            last_check=time.time(),
            last_check_result=f"staged {staged.label}",
            staged_by_us=persist.Staged(staged.checksum, staged.version, time.time()),
        )
        return None

    async def unlock_finalization(self, staged: Deployment) -> None:
        assert self.rpm is not None
        await self.rpm.unlock_finalization(staged)

    # -- records --------------------------------------------------------------------------
    async def reconcile(self) -> None:
        """Settle the "staged by us" record against what is booted and staged."""
        booted, staged = self.booted, self.staged
        ours = self.store.record.staged_by_us
        if booted is None or ours is None:
            return
        if booted.checksum == ours.checksum:
            log.info("booted deployment %s is the update this agent staged", booted.label)
            await self.store.commit(staged_by_us=None)
        elif staged is None or staged.checksum != ours.checksum:
            await self.store.commit(staged_by_us=None)
