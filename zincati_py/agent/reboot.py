"""Reboot coordination: the strategy's verdict, logind, inhibitors, warnings, postponement.

Owns the connection to logind, the wait for block inhibitors (on logind's ``BlockInhibited``
signal), the decision log, and the persisted records of a reboot: the request (written before
logind is asked, marked ``called`` once it was) and the postponement for interactive sessions
(written before the warning, so a restart never warns twice). The decision itself is the pure
``machine.gate``; this module gathers its inputs and carries it out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from zincati_py.agent import machine, persist, status
from zincati_py.agent.core import Host, Interrupted, Outcome, Retries
from zincati_py.agent.machine import Action, Decision, Deployment, Gate

if TYPE_CHECKING:
    from zincati_py.agent.deployments import DeploymentTracker
    from zincati_py.agent.reload import ConfigReloader
    from zincati_py.dbus.logind import Inhibitor, Logind
    from zincati_py.metrics import AgentMetrics

log = logging.getLogger("zincati_py.agent")

# How long an inhibitor wait lasts before re-evaluating anyway (a lost signal, logind restart).
INHIBITOR_WAIT_SECS = 3600.0


def _inhibitor(i: Inhibitor) -> str:
    return f"{i.who} ({i.why}, pid {i.pid})" if i.why else f"{i.who} (pid {i.pid})"


class RebootCoordinator:
    def __init__(
        self,
        host: Host,
        store: persist.Store,
        metrics: AgentMetrics,
        retries: Retries,
        deployments: DeploymentTracker,
        settings: ConfigReloader,
        boot_id: str,
    ) -> None:
        self.host = host
        self.store = store
        self.metrics = metrics
        self.retries = retries
        self.deployments = deployments
        self.settings = settings
        self.boot_id = boot_id
        self.logind: Logind | None = None
        self.last_reason = ""
        # Monotonic time of the event the running evaluation answers (decision latency).
        self.decision_since: float | None = None
        self._inhibitor_wait: asyncio.Task[Any] | None = None
        # Awaited (version, reason) right before logind is asked: the "reboot" event hooks
        # (bounded by the callee, never raising).
        self.on_reboot: Callable[[str, str], Awaitable[None]] | None = None

    async def connect(self, logind: Logind) -> None:
        self.logind = logind
        logind.on_sessions_changed(self._on_sessions_changed)

    def new_boot(self) -> None:
        self.last_reason = ""

    # -- records --------------------------------------------------------------------------
    async def reconcile(self, now: float) -> None:
        """Settle the reboot request and the postponement against the deployments."""
        booted, staged = self.deployments.booted, self.deployments.staged
        if booted is None:
            return
        st = self.store.record
        req = st.reboot_requested
        if req is not None:
            outcome = machine.reconcile_reboot(req, booted, staged, self.boot_id, now)
            label = req.version or req.checksum[:12]
            if outcome is machine.RebootOutcome.DONE:
                log.info("booted %s, the update we rebooted into", booted.label)
                self.metrics.finalization_successes += 1
                await self.store.commit(reboot_requested=None, postponed=None)
            elif outcome is machine.RebootOutcome.FAILED:
                log.error(
                    "rebooted, but into %s instead of %s: not finalizing %s again automatically",
                    booted.label,
                    label,
                    label,
                )
                await self.store.commit(
                    reboot_requested=None, postponed=None, failed=(*st.failed, req.checksum)
                )
            elif outcome is machine.RebootOutcome.ABANDONED:
                log.warning(
                    "rebooted, but the agent had stopped before asking logind to reboot into "
                    "%s: that reboot was not ours; deciding again",
                    label,
                )
                await self.store.commit(reboot_requested=None, postponed=None)
            elif outcome is machine.RebootOutcome.PENDING and not req.called:
                # Never while a reboot is being carried out (that holds the host lock, as this
                # does): the agent that recorded the request stopped before asking logind.
                log.warning(
                    "a reboot into %s was recorded at %s but logind was never asked (the agent "
                    "stopped): deciding again",
                    label,
                    status.iso(req.at),
                )
                await self.store.commit(reboot_requested=None)
            elif outcome is machine.RebootOutcome.STALE:
                log.info(
                    "reboot request for %s no longer applies: the staged update changed", label
                )
                await self.store.commit(reboot_requested=None, postponed=None)
            elif outcome is machine.RebootOutcome.EXPIRED:
                log.warning(
                    "reboot into %s was requested at %s but did not happen: deciding again",
                    label,
                    status.iso(req.at),
                )
                await self.store.commit(reboot_requested=None, postponed=None)
        post = self.store.record.postponed
        if post is not None and (staged is None or staged.checksum != post.checksum):
            await self.store.commit(postponed=None)
            if booted.checksum != post.checksum and self.logind is not None:
                # The update users were warned about is gone: withdraw the announcement.
                self.host.spawn(self._cancel_warning())

    # -- deciding -------------------------------------------------------------------------
    async def finalize(self, *, force: bool) -> Outcome:
        """Reboot into the staged update if the strategy (unless ``force``) and logind allow."""
        strategy, logind = self.settings.strategy, self.logind
        assert strategy is not None and logind is not None
        staged = dep = self.deployments.staged
        assert staged is not None and dep is not None
        self.metrics.finalization_attempts += 1
        now = time.time()
        allowed, s_reason, s_recheck = True, "administrator request", None
        if not force:
            try:
                # A remote strategy may wait here (a slot of a full group: the lock server
                # holds the request up to lock_wait_secs); the agent's other work comes first.
                verdict = await self.host.interruptible(strategy.can_finalize(datetime.now(UTC)))
            except Interrupted as exc:
                # Safe to give up: asking again is idempotent (a slot granted meanwhile is
                # found held), and the loop asks again once the interrupting work is done.
                return (f"strategy {strategy.name}: asking again after: {exc}", None)
            except Exception as exc:
                log.warning("strategy %s failed: %s", strategy.name, exc)
                return self.retries.retry(
                    Action.FINALIZE, f"strategy {strategy.name} failed: {exc}"
                )
            allowed, s_reason = verdict.allowed, f"strategy {strategy.name}: {verdict.reason}"
            s_recheck = None if verdict.recheck_at is None else verdict.recheck_at.timestamp()
        can: str | None = None
        inhibitors: tuple[str, ...] = ()
        sessions: tuple[str, ...] = ()
        if allowed:
            try:
                can = await logind.can_reboot()
                inhibitors = tuple(_inhibitor(i) for i in await logind.block_inhibitors())
                sessions = tuple(s.describe() for s in await logind.interactive_sessions())
            except Exception as exc:
                if not force:
                    await self._abort(f"logind unreachable: {exc}")
                return self.retries.retry(Action.FINALIZE, f"cannot ask logind: {exc}")
        post = self.store.record.postponed
        reboot = self.settings.config.agent.reboot
        result = machine.gate(
            Gate(
                force=force,
                allowed=allowed,
                strategy_reason=s_reason,
                strategy_recheck_at=s_recheck,
                can_reboot=can,
                inhibitors=inhibitors,
                sessions=sessions,
                postponed_since=post.since if post and post.checksum == dep.checksum else None,
                max_postpone_secs=reboot.max_postpone_secs,
                warn_interactive=reboot.warn_interactive,
                now=now,
            )
        )
        self._log_decision(result.reason)
        if result.abort:
            await self._abort(result.reason)
        if result.decision is Decision.WAIT:
            self.retries.succeeded(Action.FINALIZE)
            return (result.reason, result.recheck_at)
        if result.decision is Decision.RETRY:
            self.metrics.blocked("logind_refused")
            return self.retries.retry(Action.FINALIZE, result.reason)
        if result.decision is Decision.WAIT_INHIBITOR:
            self.metrics.blocked("block_inhibitor")
            self._await_inhibitors()
            return (result.reason, None)
        postponed = result.decision is Decision.POSTPONE
        if result.start_postponement:
            # Recorded before warning: a restart resumes this deadline and never warns twice.
            await self.store.commit(postponed=persist.Postponement(dep.checksum, now))
        if result.warn:
            await self._warn(dep, result.recheck_at if postponed else None)
        if postponed:
            self.metrics.blocked("active_usersessions")
            return (result.reason, result.recheck_at)
        return await self._reboot(staged, dep, force)

    def _log_decision(self, reason: str) -> None:
        """Log a reboot decision (each distinct one once) and its latency from the event."""
        since, self.decision_since = self.decision_since, None
        after = ""
        if since is not None:
            self.metrics.decision_latency = time.monotonic() - since
            after = f" ({self.metrics.decision_latency * 1000:.1f} ms after the event)"
        if reason != self.last_reason:
            log.info("decision: %s%s", reason, after)
            self.last_reason = reason

    # -- acting ---------------------------------------------------------------------------
    async def _reboot(self, staged: Deployment, dep: Deployment, force: bool) -> Outcome:
        assert self.logind is not None and self.deployments.booted is not None
        # Recorded (durably) before acting: a restarted agent knows it asked already.
        await self.store.commit(
            reboot_requested=persist.RebootRequest(
                checksum=dep.checksum,
                version=dep.version,
                from_checksum=self.deployments.booted.checksum,
                at=time.time(),
                boot_id=self.boot_id,
            )
        )
        # Announced before acting, as Zincati enters UpdateFinalized before rebooting: the
        # host may go down (or the booted deployment change) before another evaluation runs.
        self.host.announce()
        if self.on_reboot is not None:
            await self.on_reboot(dep.version or dep.checksum, self.last_reason)
        try:
            await self.deployments.unlock_finalization(staged)
            log.info("finalization lock released for %s; asking logind to reboot", dep.label)
            # "Called" is durable before the call: a reboot after this point may be ours (and
            # booting the old deployment then means the update failed); a reboot before it,
            # with the agent stopped in between, is not ours (see machine.reconcile_reboot).
            req = self.store.record.reboot_requested
            if req is not None:
                await self.store.commit(reboot_requested=replace(req, called=True))
            await self.logind.reboot()
        except Exception as exc:
            log.error("reboot into %s failed: %s", dep.label, exc)
            await self.store.commit(reboot_requested=None)
            if not force:
                await self._abort(f"reboot failed: {exc}")
            return self.retries.retry(Action.FINALIZE, f"reboot into {dep.label} failed: {exc}")
        self.metrics.reboots_requested += 1
        self.retries.succeeded(Action.FINALIZE)
        log.info("reboot into %s requested from logind", dep.label)
        return None

    async def _abort(self, why: str) -> None:
        strategy = self.settings.strategy
        assert strategy is not None
        log.info("telling strategy %s the reboot will not happen now: %s", strategy.name, why)
        try:
            await strategy.abort()
        except Exception as exc:
            log.warning("strategy %s abort failed: %s", strategy.name, exc)

    async def _warn(self, dep: Deployment, reboot_at: float | None) -> None:
        assert self.logind is not None
        msg = (
            f"zincati-py: this host will reboot into update {dep.label} at "
            f"{status.iso(reboot_at)} at the latest. Please save your work and log out."
            if reboot_at is not None
            else f"zincati-py: this host reboots now into update {dep.label}."
        )
        try:
            await self.logind.warn_sessions(msg, reboot_at)
            log.info("warned interactive sessions: %s", msg)
        except Exception as exc:
            log.warning("could not warn interactive sessions: %s", exc)

    async def _cancel_warning(self) -> None:
        assert self.logind is not None
        try:
            if await self.logind.cancel_warning():
                log.info("withdrew the reboot warning: the staged update is gone")
        except Exception as exc:
            log.warning("could not withdraw the reboot warning: %s", exc)

    # -- waiting --------------------------------------------------------------------------
    def _on_sessions_changed(self, reason: str) -> None:
        # Only a postponement depends on who is logged in between evaluations: the reboot goes
        # ahead as soon as the last interactive session ends, not at the deadline.
        if self.store.record.postponed is not None:
            self.host.wake(f"logind: {reason}")

    def _await_inhibitors(self) -> None:
        if self._inhibitor_wait is not None and not self._inhibitor_wait.done():
            return
        assert self.logind is not None
        logind = self.logind

        async def wait() -> None:
            try:
                # Released on the BlockInhibited PropertiesChanged signal; the hour bound only
                # re-evaluates in case a signal was lost (e.g. logind restarted meanwhile).
                released = await logind.wait_block_released(INHIBITOR_WAIT_SECS)
            except Exception as exc:
                log.warning("waiting for inhibitors failed: %s", exc)
                self.retries.defer(Action.FINALIZE)
                released = True
            self.host.wake("block inhibitor released" if released else "inhibitor wait expired")

        self._inhibitor_wait = self.host.spawn(wait())
