"""``zincati-py agent``: the asyncio daemon wiring D-Bus, config reload, strategy and logind.

Everything is event-driven. The agent evaluates its state machine (``agent.machine``) when
something happens — rpm-ostree's ``PropertiesChanged`` or an inotify event on the deployments
(through the rpm-ostree adapter), a configuration change, ``CheckNow``/``Wake`` on its D-Bus API
(the generated timers call those), a strategy's ``ctx.wake``, a block inhibitor's release, a
login or logout while a reboot is postponed for interactive sessions (logind's ``SessionNew``/
``SessionRemoved``) — and otherwise sleeps in epoll. The only timer is the one ``recheck_at``
the last evaluation asked for (a strategy's recheck time, a postponement deadline, a backoff
retry), plus the systemd watchdog ping when ``WatchdogSec=`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from zincati_py import config as config_mod
from zincati_py.agent import machine, persist, status
from zincati_py.agent.api import BUS_NAME, AgentInterface, RefusedError, export
from zincati_py.agent.configwatch import ConfigWatcher
from zincati_py.agent.machine import Action, Decision, Deployment, Facts, Gate, State, Step
from zincati_py.agent.notify import Notifier
from zincati_py.backoff import Backoff
from zincati_py.dbus.logind import Inhibitor, Logind
from zincati_py.metrics import AgentMetrics, Exporter
from zincati_py.paths import Paths
from zincati_py.strategy import Strategy, StrategyContext, build

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

    from zincati_py.dbus.rpmostree import RpmOstree

log = logging.getLogger("zincati_py.agent")

OSTREE_COMMAND_ENV = "ZINCATI_PY_OSTREE_COMMAND"
BUS_NAME_ENV = "ZINCATI_PY_BUS_NAME"
SYSTEMD_BUS_ENV = "ZINCATI_PY_SYSTEMD_BUS"


class StartupError(Exception):
    """The agent cannot start; ``code`` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Options:
    paths: Paths
    bus_address: str | None = None
    bus_name: str = BUS_NAME
    ostree_command: tuple[str, ...] = ("ostree",)
    systemd_bus: str | None = None  # None: systemd on the system bus

    @classmethod
    def from_env(
        cls,
        root: str | None,
        bus_address: str | None,
        bus_name: str | None,
        ostree_command: str | None,
        systemd_bus: str | None = None,
    ) -> Options:
        cmd = ostree_command or os.environ.get(OSTREE_COMMAND_ENV) or "ostree"
        return cls(
            paths=Paths.from_root(root),
            bus_address=bus_address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or None,
            bus_name=bus_name or os.environ.get(BUS_NAME_ENV) or BUS_NAME,
            ostree_command=tuple(shlex.split(cmd)),
            systemd_bus=systemd_bus or os.environ.get(SYSTEMD_BUS_ENV) or None,
        )


def _inhibitor(i: Inhibitor) -> str:
    return f"{i.who} ({i.why}, pid {i.pid})" if i.why else f"{i.who} (pid {i.pid})"


def _find(tree: Any, key: str) -> Any:
    """The first value of ``key`` in a strategy status (a composite nests its members)."""
    if isinstance(tree, dict):
        if tree.get(key) is not None:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = _find(item, key)
            if found is not None:
                return found
    return None


def _dep(d: Any) -> Deployment | None:
    return None if d is None else Deployment(d.checksum, d.version or None)


@dataclass
class Runtime:
    """Volatile facts of this agent process (what persist.State does not need to keep)."""

    booted: Deployment | None = None
    staged: Any = None  # the adapter's Deployment (needed to unlock it)
    steady_reported: bool = False
    check_requested: bool = False
    checked: bool = False
    not_before: dict[Action, float] = field(default_factory=dict)
    failure: dict[Action, str] = field(default_factory=dict)
    state: State = State.START
    state_since: float = field(default_factory=time.time)
    last_reason: str = ""


class Agent:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.paths = opts.paths
        self.notify = Notifier()
        self.metrics = AgentMetrics()
        self.store = persist.Store(self.paths.state_dir)
        # A check requested before a crash or restart is still owed.
        self.rt = Runtime(check_requested=bool(self.store.state.extra.get("check_pending")))
        self.boot_id = persist.boot_id()
        self.backoffs = {a: Backoff(1.0, 300.0) for a in Action}
        self._read_backoff = Backoff(1.0, 300.0)
        self._read_retry: asyncio.TimerHandle | None = None
        result = config_mod.load(self.paths)
        self.config = result.config
        self.config_result = result
        # Invalid at startup: run and report, but no reboot until a valid config is loaded.
        self.config_ever_valid = result.ok
        self.config_loaded_at = time.time()
        self.strategy: Strategy | None = None
        self.bus: MessageBus | None = None
        self.rpm: RpmOstree | None = None
        self.logind: Logind | None = None
        self.iface: AgentInterface | None = None
        self.exporter: Exporter | None = None
        self.watcher: ConfigWatcher | None = None
        self._wake = asyncio.Event()
        self._wake_reasons: list[str] = []
        self._wake_since: float | None = None  # monotonic time of the oldest pending wake
        self._eval_since: float | None = None  # the same, for the evaluation running now
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inhibitor_wait: asyncio.Task[Any] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._config_dirty = False
        self._refresh_reasons: list[str] = []
        self._last_doc: dict[str, Any] | None = None

    # -- events ---------------------------------------------------------------------------
    def wake(self, reason: str) -> None:
        """Re-evaluate soon (safe from any callback in the loop)."""
        if self._wake_since is None:
            self._wake_since = time.monotonic()
        self._wake_reasons.append(reason)
        self._wake.set()

    def api_wake(self, reason: str) -> None:
        log.info("wake requested: %s", reason)
        self.wake(f"wake: {reason}")

    async def check_now(self) -> None:
        log.info("update check requested")
        self.rt.check_requested = True
        # Durable until the check completes: a crash meanwhile does not lose the request
        # (CheckNow replies once it is).
        saved = self.store.commit(extra={**self.store.state.extra, "check_pending": True})
        self.rt.not_before.pop(Action.CHECK, None)
        await saved
        self.wake("check requested")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_deployments(self, reason: str) -> None:
        log.debug("deployments may have changed: %s", reason)
        # Record the event time now: the signal-to-decision latency starts here.
        if self._wake_since is None:
            self._wake_since = time.monotonic()
        self._refresh_reasons.append(reason)
        if self._refresher is None or self._refresher.done():
            self._refresher = self._spawn(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        # One read at a time: concurrent reads could finish out of order and leave an older
        # snapshot in place. Events arriving during a read cause exactly one more read.
        while self._refresh_reasons:
            reasons, self._refresh_reasons = self._refresh_reasons, []
            await self._refresh_deployments("; ".join(reasons))

    async def _refresh_deployments(self, reason: str) -> None:
        assert self.rpm is not None
        try:
            deployments = await self.rpm.deployments()
        except Exception as exc:
            delay = self._read_backoff.next_delay()
            log.warning("cannot read deployments (%s): %s; retrying in %.0f s", reason, exc, delay)
            self.rt.failure[Action.NONE] = f"cannot read deployments from rpm-ostree: {exc}"
            # rpm-ostreed may be restarting: retry with backoff (events may also come first).
            if self._read_retry is not None:
                self._read_retry.cancel()
            self._read_retry = asyncio.get_running_loop().call_later(
                delay, self._on_deployments, "retry"
            )
            self.wake("deployments unreadable")
            return
        if self._read_retry is not None:
            self._read_retry.cancel()
            self._read_retry = None
        self._read_backoff.reset()
        self.rt.failure.pop(Action.NONE, None)
        booted = next((d for d in deployments if d.booted), None)
        staged = next((d for d in deployments if d.staged), None)
        new_booted = _dep(booted)
        if self.rt.booted is not None and new_booted != self.rt.booted:
            # A new boot (the sandbox's rpm-ostree double reboots without restarting us).
            log.info(
                "booted deployment changed from %s to %s: starting over",
                self.rt.booted.label,
                new_booted.label if new_booted else "none",
            )
            self.rt = Runtime(
                state=self.rt.state,
                state_since=self.rt.state_since,
                check_requested=bool(self.store.state.extra.get("check_pending")),
            )
        self.rt.booted = new_booted
        if _dep(staged) != _dep(self.rt.staged):
            log.info(
                "staged deployment: %s",
                _dep(staged).label if staged is not None else "none",  # type: ignore[union-attr]
            )
        self.rt.staged = staged
        if staged is not None and self.store.state.extra.get("check_pending"):
            # An update got staged (by our interrupted check or anyone): the check is answered.
            # The fact and its record change together (a CheckNow during the write wins).
            self.rt.check_requested = False
            await self.store.commit(extra={**self.store.state.extra, "check_pending": False})
        self.wake(f"deployments changed ({reason})")

    # -- timers ---------------------------------------------------------------------------
    def _arm(self, at: float | None, why: str) -> None:
        """The one evaluation timer: at wall-clock time ``at`` (None: events only)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.time())
        self._timer = loop.call_at(loop.time() + delay, self.wake, f"timer: {why}")

    def _start_watchdog(self) -> None:
        usec = self.notify.watchdog_usec
        if usec is None:
            return
        # systemd's contract: ping more often than WatchdogSec; half the interval is its advice.
        interval = usec / 2_000_000
        loop = asyncio.get_running_loop()

        def ping() -> None:
            self.notify.watchdog()
            self._watchdog = loop.call_later(interval, ping)

        self._watchdog = loop.call_later(interval, ping)

    # -- facts and evaluation -------------------------------------------------------------
    def _facts(self, now: float) -> Facts:
        st = self.store.state
        return Facts(
            enabled=self.config.updates.enabled,
            config_valid=self.config_ever_valid,
            booted=self.rt.booted,
            staged=_dep(self.rt.staged),
            steady_reported=self.rt.steady_reported,
            check_requested=self.rt.check_requested,
            reboot_requested=st.reboot_requested,
            failed=st.failed,
            checked=self.rt.checked,
            boot_id=self.boot_id,
            now=now,
        )

    async def _reconcile(self, now: float) -> None:
        """Settle persisted records against the deployments actually booted and staged."""
        booted, staged = self.rt.booted, _dep(self.rt.staged)
        if booted is None:
            return
        st = self.store.state
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
        st = self.store.state
        ours = st.staged_by_us
        if ours is not None:
            if booted.checksum == ours.checksum:
                log.info("booted deployment %s is the update this agent staged", booted.label)
                await self.store.commit(staged_by_us=None)
            elif staged is None or staged.checksum != ours.checksum:
                await self.store.commit(staged_by_us=None)
        post = st.postponed
        if post is not None and (staged is None or staged.checksum != post.checksum):
            await self.store.commit(postponed=None)
            if booted.checksum != post.checksum and self.logind is not None:
                # The update users were warned about is gone: withdraw the announcement.
                self._spawn(self._cancel_warning())

    async def _run(self) -> None:
        """The evaluation loop: one evaluation at a time, woken by events and the timer."""
        while not self._stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            reasons, self._wake_reasons = self._wake_reasons, []
            since, self._wake_since = self._wake_since, None
            async with self._lock:
                try:
                    await self._evaluate(reasons, since)
                except Exception:
                    # A bug must not kill the daemon; retry later with backoff.
                    log.exception("evaluation failed")
                    self._arm(time.time() + self.backoffs[Action.NONE].next_delay(), "after error")

    async def _evaluate(self, reasons: list[str], since: float | None) -> None:
        log.debug("evaluating (%s)", "; ".join(reasons) or "no reason")
        self.metrics.last_refresh = time.time()
        self._eval_since = since
        step: Step | None = None
        detail: tuple[str, float | None] | None = None
        # Each action either progresses (re-evaluate at once) or leaves a waiting reason.
        for _ in range(8):
            now = time.time()
            await self._reconcile(now)
            step = machine.next_step(self._facts(now))
            if step.action in (Action.REPORT_STEADY, Action.CHECK, Action.FINALIZE):
                # Visible while it runs (a check can take minutes), not only afterwards.
                self._publish(step, step.reason, None)
            detail = await self._act(step, now)
            if detail is not None:
                break
        assert step is not None
        reason, recheck = detail if detail is not None else (step.reason, step.recheck_at)
        if since is not None and self._eval_since is not None:
            # No reboot decision in this evaluation: the decision is the state published now.
            self.metrics.decision_latency = time.monotonic() - since
        self._publish(step, reason, recheck)
        self._arm(recheck, reason)

    async def _act(self, step: Step, now: float) -> tuple[str, float | None] | None:
        """Run ``step.action``; None when it made progress, else (reason, recheck_at)."""
        action = step.action
        if action in (Action.NONE, Action.AWAIT_REBOOT):
            failure = self.rt.failure.get(Action.NONE)
            return (failure or step.reason, step.recheck_at)
        not_before = self.rt.not_before.get(action)
        if not_before is not None and now < not_before:
            return (self.rt.failure.get(action, step.reason), not_before)
        if action is Action.REPORT_STEADY:
            return await self._report_steady()
        if action is Action.CHECK:
            return await self._check()
        return await self._finalize(force=False)

    def _retry(self, action: Action, message: str) -> tuple[str, float]:
        at = time.time() + self.backoffs[action].next_delay()
        text = f"{message}; retrying at {status.iso(at)}"
        self.rt.failure[action] = text
        self.rt.not_before[action] = at
        return (text, at)

    def _succeeded(self, action: Action) -> None:
        self.backoffs[action].reset()
        self.rt.failure.pop(action, None)
        self.rt.not_before.pop(action, None)

    async def _report_steady(self) -> tuple[str, float | None] | None:
        assert self.strategy is not None
        try:
            verdict = await self.strategy.report_steady()
        except Exception as exc:
            log.warning("reporting steady state failed: %s", exc)
            return self._retry(Action.REPORT_STEADY, f"reporting steady state failed: {exc}")
        if not verdict.allowed:
            log.info("steady state not reported yet: %s", verdict.reason)
            if verdict.recheck_at is not None:
                return (f"reporting steady state: {verdict.reason}", verdict.recheck_at.timestamp())
            return self._retry(Action.REPORT_STEADY, f"reporting steady state: {verdict.reason}")
        self._succeeded(Action.REPORT_STEADY)
        log.info("reached steady state (%s)", verdict.reason)
        self.rt.steady_reported = True
        return None

    async def _check(self) -> tuple[str, float | None] | None:
        assert self.rpm is not None
        self.rt.check_requested = False
        self.metrics.update_checks += 1
        self.metrics.deploy_attempts += 1
        log.info("checking for updates (rpm-ostree UpdateDeployment, finalization locked)")
        self._publish_status_line("checking for updates")
        try:
            staged = await self.rpm.stage_update()
        except Exception as exc:
            self.metrics.update_check_failures += 1
            self.metrics.deploy_failures += 1
            log.error("update check failed: %s", exc)
            await self.store.commit(last_check=time.time(), last_check_result=f"failed: {exc}")
            self.rt.check_requested = True  # the retry below runs it again
            return self._retry(Action.CHECK, f"update check failed: {exc}")
        self._succeeded(Action.CHECK)
        await self.store.commit(extra={**self.store.state.extra, "check_pending": False})
        self.rt.checked = True
        dep = _dep(staged)
        if staged is None:
            log.info("update check: no new update")
            await self.store.commit(last_check=time.time(), last_check_result="no new update")
            return None
        assert dep is not None
        log.info("update check: %s staged (finalization locked)", dep.label)
        self.rt.staged = staged  # before the write: a deployments read meanwhile is newer
        await self.store.commit(
            last_check=time.time(),
            last_check_result=f"staged {dep.label}",
            staged_by_us=persist.Staged(dep.checksum, dep.version, time.time()),
        )
        return None

    async def _finalize(self, *, force: bool) -> tuple[str, float | None] | None:
        assert self.strategy is not None and self.logind is not None and self.rpm is not None
        staged, dep = self.rt.staged, _dep(self.rt.staged)
        assert staged is not None and dep is not None
        self.metrics.finalization_attempts += 1
        now = time.time()
        allowed, s_reason, s_recheck = True, "administrator request", None
        if not force:
            try:
                verdict = await self.strategy.can_finalize(datetime.now(UTC))
            except Exception as exc:
                log.warning("strategy %s failed: %s", self.strategy.name, exc)
                return self._retry(Action.FINALIZE, f"strategy {self.strategy.name} failed: {exc}")
            allowed, s_reason = verdict.allowed, f"strategy {self.strategy.name}: {verdict.reason}"
            s_recheck = None if verdict.recheck_at is None else verdict.recheck_at.timestamp()
        can: str | None = None
        inhibitors: tuple[str, ...] = ()
        sessions: tuple[str, ...] = ()
        if allowed:
            try:
                can = await self.logind.can_reboot()
                inhibitors = tuple(_inhibitor(i) for i in await self.logind.block_inhibitors())
                sessions = tuple(s.describe() for s in await self.logind.interactive_sessions())
            except Exception as exc:
                if not force:
                    await self._abort(f"logind unreachable: {exc}")
                return self._retry(Action.FINALIZE, f"cannot ask logind: {exc}")
        post = self.store.state.postponed
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
                max_postpone_secs=self.config.agent.reboot.max_postpone_secs,
                warn_interactive=self.config.agent.reboot.warn_interactive,
                now=now,
            )
        )
        self._log_decision(result.reason)
        if result.abort:
            await self._abort(result.reason)
        if result.decision is Decision.WAIT:
            self._succeeded(Action.FINALIZE)
            return (result.reason, result.recheck_at)
        if result.decision is Decision.RETRY:
            self.metrics.blocked("logind_refused")
            return self._retry(Action.FINALIZE, result.reason)
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

    async def _reboot(
        self, staged: Any, dep: Deployment, force: bool
    ) -> tuple[str, float | None] | None:
        assert self.rpm is not None and self.logind is not None and self.rt.booted is not None
        # Recorded (durably) before acting: a restarted agent knows it asked already.
        await self.store.commit(
            reboot_requested=persist.RebootRequest(
                checksum=dep.checksum,
                version=dep.version,
                from_checksum=self.rt.booted.checksum,
                at=time.time(),
                boot_id=self.boot_id,
            )
        )
        # Announced before acting, as Zincati enters UpdateFinalized before rebooting: the
        # host may go down (or the booted deployment change) before another evaluation runs.
        finalized = machine.next_step(self._facts(time.time()))
        self._publish(finalized, finalized.reason, None)
        try:
            await self.rpm.unlock_finalization(staged)
            log.info("finalization lock released for %s; asking logind to reboot", dep.label)
            await self.logind.reboot()
        except Exception as exc:
            log.error("reboot into %s failed: %s", dep.label, exc)
            await self.store.commit(reboot_requested=None)
            if not force:
                await self._abort(f"reboot failed: {exc}")
            return self._retry(Action.FINALIZE, f"reboot into {dep.label} failed: {exc}")
        req = self.store.state.reboot_requested
        if req is not None:
            await self.store.commit(
                reboot_requested=persist.RebootRequest(**{**req.__dict__, "called": True})
            )
        self.metrics.reboots_requested += 1
        self._succeeded(Action.FINALIZE)
        log.info("reboot into %s requested from logind", dep.label)
        return None

    async def _abort(self, why: str) -> None:
        assert self.strategy is not None
        log.info("telling strategy %s the reboot will not happen now: %s", self.strategy.name, why)
        try:
            await self.strategy.abort()
        except Exception as exc:
            log.warning("strategy %s abort failed: %s", self.strategy.name, exc)

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

    def _on_sessions_changed(self, reason: str) -> None:
        # Only a postponement depends on who is logged in between evaluations: the reboot goes
        # ahead as soon as the last interactive session ends, not at the deadline.
        if self.store.state.postponed is not None:
            self.wake(f"logind: {reason}")

    async def _save(self, saved: Awaitable[Any], what: str) -> None:
        """Await a durable write nothing waits for (a record no action depends on)."""
        try:
            await saved
        except OSError as exc:
            log.warning("%s not saved: %s", what, exc)

    def _await_inhibitors(self) -> None:
        if self._inhibitor_wait is not None and not self._inhibitor_wait.done():
            return
        assert self.logind is not None
        logind = self.logind

        async def wait() -> None:
            try:
                # Released on the BlockInhibited PropertiesChanged signal; the hour bound only
                # re-evaluates in case a signal was lost (e.g. logind restarted meanwhile).
                released = await logind.wait_block_released(3600.0)
            except Exception as exc:
                log.warning("waiting for inhibitors failed: %s", exc)
                self.rt.not_before[Action.FINALIZE] = (
                    time.time() + self.backoffs[Action.FINALIZE].next_delay()
                )
                released = True
            self.wake("block inhibitor released" if released else "inhibitor wait expired")

        self._inhibitor_wait = self._spawn(wait())

    def _log_decision(self, reason: str) -> None:
        """Log a reboot decision (each distinct one once) and its latency from the event."""
        since, self._eval_since = self._eval_since, None
        after = ""
        if since is not None:
            self.metrics.decision_latency = time.monotonic() - since
            after = f" ({self.metrics.decision_latency * 1000:.1f} ms after the event)"
        if reason != self.rt.last_reason:
            log.info("decision: %s%s", reason, after)
            self.rt.last_reason = reason

    async def reboot_now(self) -> str:
        """RebootNow on the API: reboot into the staged update, skipping the strategy."""
        async with self._lock:
            now = time.time()
            await self._reconcile(now)
            facts = self._facts(now)
            if facts.booted is None:
                raise RefusedError("deployments not read yet")
            if facts.staged is None:
                raise RefusedError("no update is staged")
            step = machine.next_step(facts)
            if step.action is Action.AWAIT_REBOOT:
                return step.reason
            label = facts.staged.label  # the deployments may be read again meanwhile
            detail = await self._finalize(force=True)
            if detail is not None:
                step = machine.next_step(self._facts(time.time()))
                self._publish(step, detail[0], detail[1])
                self._arm(detail[1], detail[0])
                raise RefusedError(detail[0])
            step = machine.next_step(self._facts(time.time()))
            self._publish(step, step.reason, step.recheck_at)
            self._arm(step.recheck_at, step.reason)
            return f"rebooting into {label}"

    # -- configuration --------------------------------------------------------------------
    def _on_config_change(self, reason: str) -> None:
        log.debug("configuration directories changed: %s", reason)
        self._config_dirty = True
        if self._reloader is None or self._reloader.done():
            self._reloader = self._spawn(self._reload_loop())

    async def _reload_loop(self) -> None:
        # One load at a time, applied in order: a slow stale load must never overwrite a newer
        # one. Changes during a load cause exactly one more.
        while self._config_dirty:
            self._config_dirty = False
            await self._reload_config()

    async def _reload_config(self) -> None:
        result = await asyncio.to_thread(config_mod.load, self.paths)
        async with self._lock:
            self.config_result = result
            self.config_loaded_at = time.time()
            if not result.ok:
                for problem in result.errors:
                    log.error("configuration: %s", problem)
                log.error("configuration invalid: keeping the last good configuration in force")
                self.metrics.config_valid = 0
            else:
                self.metrics.config_valid = 1
                first_valid = not self.config_ever_valid
                self.config_ever_valid = True
                if result.config != self.config or first_valid:
                    log.info("configuration changed: applying it")
                    self.config = result.config
                    await self._replace_strategy()
                    self._spawn(self._reload_systemd())
        self.wake("configuration changed")

    async def _replace_strategy(self) -> None:
        old = self.strategy
        if old is not None:
            try:
                await old.stop()
            except Exception as exc:
                log.warning("stopping strategy %s failed: %s", old.name, exc)
        self.strategy = build(StrategyContext(self.config, self.paths, self.wake))
        await self.strategy.start()
        self.metrics.updates_enabled = int(self.config.updates.enabled)
        self.metrics.allow_downgrade = int(self.config.updates.allow_downgrade)
        log.info(
            "strategy %s in force; updates %s",
            self.strategy.name,
            "enabled" if self.config.updates.enabled else "disabled",
        )

    async def _reload_systemd(self) -> None:
        """Ask systemd to reload so the generator re-renders the timers from the new config.

        systemd is reached on the agent's system bus, or on ``--systemd-bus`` (the sandbox's
        user manager, whose bus is not the private "system" bus the doubles live on).
        """
        from zincati_py.dbus import systemd

        try:
            if self.opts.systemd_bus:
                bus = await systemd.connect(address=self.opts.systemd_bus)
                try:
                    await systemd.reload_manager(bus)
                finally:
                    bus.disconnect()
            else:
                assert self.bus is not None
                await systemd.reload_manager(self.bus)
            log.info("asked systemd to reload (the generator re-renders the timers)")
        except Exception as exc:
            log.warning("could not ask systemd to reload (timers keep the old schedule): %s", exc)

    # -- publishing -----------------------------------------------------------------------
    def _config_doc(self) -> dict[str, Any]:
        r = self.config_result
        if r.ok:
            in_force = "configuration on disk"
        elif self.config_ever_valid:
            in_force = "last good configuration"
        else:
            in_force = "defaults for invalid keys (no reboots until the configuration is valid)"
        return {
            "valid": r.ok,
            "in_force": in_force,
            "loaded_at": status.iso(self.config_loaded_at),
            "fragments": [str(f) for f in r.fragments],
            "problems": [str(p) for p in r.problems],
        }

    def _publish_status_line(self, text: str) -> None:
        self.notify.status(text)

    def _publish(self, step: Step, reason: str, recheck: float | None) -> None:
        if step.state is not self.rt.state:
            log.info("state: %s -> %s", self.rt.state, step.state)
            self.rt.state = step.state
            self.rt.state_since = time.time()
            self.metrics.latest_state_change = self.rt.state_since
        self.metrics.state = step.state.value
        st = self.store.state
        strat = self.strategy.status() if self.strategy is not None else {}
        staged = _dep(self.rt.staged)
        booted = self.rt.booted
        next_window = _find(strat, "next_window_start")
        holds = _find(strat, "holds_slot")
        lock_state = "none" if holds is None else ("held" if holds else "not held")
        if bool(holds) != bool(st.extra.get("slot_held")):
            # Durable, so a restart can say a fleet-lock slot was held when it stopped (the
            # steady-state report on every start is what releases it).
            saved = self.store.commit(extra={**st.extra, "slot_held": bool(holds)})
            st = self.store.state
            self._spawn(self._save(saved, "fleet-lock slot record"))
        doc: dict[str, Any] = {
            "schema": status.SCHEMA,
            "pid": os.getpid(),
            "bus_name": self.opts.bus_name,
            "state": step.state.value,
            "state_since": status.iso(self.rt.state_since),
            "action": step.action.value,
            "reason": reason,
            "next": step.next,
            "recheck_at": status.iso(recheck),
            "booted": None if booted is None else booted.__dict__,
            "staged": None if staged is None else staged.__dict__,
            "updates_enabled": self.config.updates.enabled,
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
            "config": self._config_doc(),
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
            )

    # -- lifecycle ------------------------------------------------------------------------
    async def _connect_bus(self) -> MessageBus:
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus
        from dbus_fast.constants import NameFlag, RequestNameReply

        try:
            bus = await MessageBus(
                bus_address=self.opts.bus_address, bus_type=BusType.SYSTEM
            ).connect()
        except Exception as exc:
            raise StartupError(
                f"cannot connect to the system bus: {exc}", os.EX_UNAVAILABLE
            ) from exc
        self.iface = AgentInterface(self.check_now, self.api_wake, self.reboot_now)
        export(bus, self.iface)
        reply = await bus.request_name(self.opts.bus_name, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise StartupError(
                f"bus name {self.opts.bus_name} is taken: another agent is running",
                os.EX_TEMPFAIL,
            )
        return bus

    async def _connect_logind(self, bus: MessageBus) -> Logind:
        logind = Logind()
        await logind.connect(bus)
        return logind

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        from zincati_py.dbus.rpmostree import RpmOstree

        if self.store.state.extra.get("slot_held"):
            log.info("a fleet-lock slot was held when the agent stopped: steady state releases it")
        if not self.config_result.ok:
            for problem in self.config_result.errors:
                log.error("configuration: %s", problem)
            log.error("configuration invalid at startup: running, but never rebooting until fixed")
        self.metrics.config_valid = int(self.config_result.ok)
        # The bus name first: a second agent for the same node must exit before it touches
        # the first one's metrics socket or status file.
        self.bus = await self._connect_bus()
        self.exporter = Exporter(
            self.metrics, self.paths.metrics_socket, self.config.agent.metrics.listen
        )
        try:
            await self.exporter.start()
        except OSError as exc:
            log.error("metrics socket %s: %s", self.paths.metrics_socket, exc)
        self.rpm = RpmOstree(self.paths.root, ostree_command=self.opts.ostree_command)
        await self.rpm.connect(self.bus)
        self.rpm.on_change(self._on_deployments)
        self.logind = await self._connect_logind(self.bus)
        self.logind.on_sessions_changed(self._on_sessions_changed)
        await self._replace_strategy()
        self.watcher = ConfigWatcher(self.paths.config_dirs, self._on_config_change)
        self._start_watchdog()
        self._on_deployments("startup")
        assert self._refresher is not None
        await self._refresher
        runner = self._spawn(self._run())
        await asyncio.sleep(0)  # let the first evaluation start before announcing readiness
        self.notify.ready(f"initialized; {self.rt.state.value}")
        log.info("agent ready on bus name %s (root %s)", self.opts.bus_name, self.paths.root)
        await self._stop.wait()
        await self._shutdown(runner)
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received: stopping", sig.name)
        self.notify.stopping()
        self._stop.set()
        self._wake.set()

    async def _shutdown(self, runner: asyncio.Task[Any]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._read_retry is not None:
            self._read_retry.cancel()
        # Cancel whatever runs (a staging transaction can take minutes): every step is
        # idempotent and its decision recorded first, so the next start picks it up.
        for task in [runner, *self._tasks]:
            task.cancel()
        await asyncio.gather(runner, *self._tasks, return_exceptions=True)
        step = Step(State.END, Action.NONE, "agent stopped", "the agent resumes on start")
        self._publish(step, step.reason, None)
        # Records the last publish started saving (the tasks above are done or cancelled).
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.watcher is not None:
            self.watcher.close()
        if self.strategy is not None:
            with contextlib.suppress(Exception):
                await self.strategy.stop()
        if self.rpm is not None:
            with contextlib.suppress(Exception):
                await self.rpm.close()
        if self.logind is not None:
            with contextlib.suppress(Exception):
                await self.logind.close()
        if self.bus is not None:
            self.bus.disconnect()
        if self.exporter is not None:
            await self.exporter.stop()
        self.notify.close()


def main(opts: Options) -> int:
    async def go() -> int:
        return await Agent(opts).run()

    try:
        return asyncio.run(go())
    except StartupError as exc:
        log.error("%s", exc)
        return exc.code
