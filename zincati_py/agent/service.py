"""``zincati-py agent``: the asyncio daemon's loop and lifecycle.

Everything is event-driven. The agent evaluates its state machine (``agent.machine``) when
something happens — rpm-ostree's ``PropertiesChanged`` or an inotify event on the deployments
(through the rpm-ostree adapter), a configuration change, ``CheckNow``/``Wake`` on its D-Bus API
(the generated timers call those), a strategy's ``ctx.wake``, a block inhibitor's release, a
login or logout while a reboot is postponed for interactive sessions (logind's ``SessionNew``/
``SessionRemoved``) — and otherwise sleeps in epoll. The only timer is the one ``recheck_at``
the last evaluation asked for (a strategy's recheck time, a postponement deadline, a backoff
retry), plus the systemd watchdog ping when ``WatchdogSec=`` is set.

This module is the loop: it connects, gathers the facts, runs one evaluation at a time and
shuts down. The work is done by collaborators that own their state (see ``agent.core`` for
the interface that ties them to the loop): ``deployments`` (what is booted/staged, update
checks), ``reboot`` (strategy, logind, inhibitors, warnings, postponement), ``reload`` (the
configuration and strategy in force) and ``publish`` (status file, D-Bus properties, metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from zincati_py.agent import machine, persist
from zincati_py.agent.api import AgentInterface, RefusedError, export
from zincati_py.agent.core import Outcome, Retries, Waits, release_free_memory
from zincati_py.agent.deployments import DeploymentTracker
from zincati_py.agent.graph import UpdateGraph
from zincati_py.agent.machine import Action, Facts, State, Step
from zincati_py.agent.notify import Notifier
from zincati_py.agent.options import Options, StartupError
from zincati_py.agent.publish import JobMetrics, Publisher
from zincati_py.agent.reboot import RebootCoordinator
from zincati_py.agent.reload import ConfigReloader
from zincati_py.health.keeper import HealthKeeper
from zincati_py.metrics import AgentMetrics, Exporter

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

    from zincati_py.dbus.logind import Logind
    from zincati_py.dbus.rpmostree import RpmOstree

log = logging.getLogger("zincati_py.agent")

T = TypeVar("T")


class Agent:
    """The loop and lifecycle; implements ``agent.core.Host`` for its collaborators."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.paths = opts.paths
        self.notify = Notifier()
        self.metrics = AgentMetrics()
        self.store = persist.Store(self.paths.state_dir)
        self.boot_id = opts.boot_id or persist.boot_id(self.paths.boot_id)
        if not self.boot_id:
            log.warning(
                "boot id unknown (no --boot-id, %s unreadable): reboots cannot be told"
                " from agent restarts",
                self.paths.boot_id,
            )
        self.retries = Retries()
        self.lock = asyncio.Lock()
        self.steady_reported = False
        self.reload = ConfigReloader(self, self.paths, self.metrics, opts.systemd_bus)
        self.deployments = DeploymentTracker(
            self, self.store, self.metrics, self.retries, self._new_boot
        )
        self.reboot = RebootCoordinator(
            self,
            self.store,
            self.metrics,
            self.retries,
            self.deployments,
            self.reload,
            self.boot_id,
        )
        self.publish = Publisher(
            self,
            self.paths,
            opts.bus_name,
            self.store,
            self.metrics,
            self.notify,
            self.deployments,
            self.reload,
        )
        # Update checks from the Cincinnati graph when [cincinnati] base_url is set.
        self.graph = UpdateGraph(
            self.paths.root, self.store, self.boot_id, self.metrics, self.publish
        )
        # Pre-reboot checks, the post-boot health gate and the rollback ([agent.health]).
        self.health = HealthKeeper(
            self.paths.root, self.store, self.deployments, self.reload, self.boot_id,
            opts.systemd_bus,
        )  # fmt: skip
        self.reload.report = self.health.facts
        self.publish.health = self.health
        # Job metrics ([[schedule]]) on the metrics socket, read from systemd at each scrape.
        self.jobs = JobMetrics(
            self.paths,
            lambda: [j.name for j in self.reload.config.schedules],
            lambda: self.reload.bus,
            opts.systemd_bus,
        )
        self.metrics.register(self.jobs)
        self.metrics.on_scrape(self.jobs.refresh)
        self.bus: MessageBus | None = None
        self.rpm: RpmOstree | None = None
        self.logind: Logind | None = None
        self.exporter: Exporter | None = None
        self._wake = asyncio.Event()
        self._wake_reasons: list[str] = []
        self._wake_since: float | None = None  # monotonic time of the oldest pending wake
        self._stop = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.waits = Waits(self.lock, self._ask_again)  # the evaluation's interruptible wait

    # -- Host -----------------------------------------------------------------------------
    def wake(self, reason: str) -> None:
        """Re-evaluate soon (safe from any callback in the loop)."""
        self.note_event()
        self._wake_reasons.append(reason)
        self._wake.set()
        self._interrupt(reason)

    def note_event(self) -> None:
        if self._wake_since is None:
            self._wake_since = time.monotonic()

    def claim(self, why: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self.waits.claim(why)

    async def interruptible(self, coro: Coroutine[Any, Any, T]) -> T:
        # Work that came before the wait started interrupts it at once: a wake during this
        # evaluation (``_wake`` is cleared when an evaluation starts), a claim, a stop.
        came = self._wake_reasons[-1:] or (["stopping"] if self._stop.is_set() else [])
        return await self.waits.interruptible(coro, came[0] if came else None)

    def _interrupt(self, why: str) -> None:
        self.waits.interrupt(why)

    def _ask_again(self, why: str) -> None:
        # Whatever interrupted may not wake the loop itself (a claim): evaluate again after it.
        self._wake_reasons.append(f"asking the strategy again ({why})")
        self._wake.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def announce(self) -> None:
        step = machine.next_step(self._facts(time.time()))
        self.publish.publish(step, step.reason, None)

    def _new_boot(self) -> None:
        """The booted deployment changed under a running agent: start over."""
        self.steady_reported = False
        self.retries.forget()
        self.reboot.new_boot()

    # -- API ------------------------------------------------------------------------------
    def api_wake(self, reason: str) -> None:
        log.info("wake requested: %s", reason)
        self.wake(f"wake: {reason}")

    async def reboot_now(self) -> str:
        """RebootNow on the API: reboot into the staged update, skipping the strategy."""
        async with self.claim("RebootNow"):
            self.graph.follow(self.reload.config)
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
            detail = await self.reboot.finalize(force=True)
            step = machine.next_step(self._facts(time.time()))
            if detail is not None:
                self.publish.publish(step, detail[0], detail[1])
                self._arm(detail[1], detail[0])
                raise RefusedError(detail[0])
            self.publish.publish(step, step.reason, step.recheck_at)
            self._arm(step.recheck_at, step.reason)
            return f"rebooting into {label}"

    # -- timers ---------------------------------------------------------------------------
    def _arm(self, at: float | None, why: str) -> None:
        """The one evaluation timer: at wall-clock time ``at`` (None: events only)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        st = self.store.record
        return Facts(
            enabled=self.reload.config.updates.enabled,
            config_valid=self.reload.ever_valid,
            booted=self.deployments.booted,
            staged=self.deployments.staged,
            steady_reported=self.steady_reported,
            check_requested=self.deployments.check_requested,
            reboot_requested=st.reboot_requested,
            failed=(*st.failed, *self.health.halted()),
            checked=self.deployments.checked,
            boot_id=self.boot_id,
            now=now,
        )

    async def _reconcile(self, now: float) -> None:
        """Settle persisted records against the deployments actually booted and staged."""
        await self.health.reconcile(now)  # first: it reads the reboot request DONE clears
        await self.reboot.reconcile(now)
        await self.deployments.reconcile()

    async def _run(self) -> None:
        """The evaluation loop: one evaluation at a time, woken by events and the timer."""
        while not self._stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            reasons, self._wake_reasons = self._wake_reasons, []
            since, self._wake_since = self._wake_since, None
            async with self.lock:
                try:
                    await self._evaluate(reasons, since)
                    release_free_memory()  # the agent sleeps now, maybe for days
                except Exception:
                    # A bug must not kill the daemon; retry later with backoff.
                    log.exception("evaluation failed")
                    delay = self.retries.backoffs[Action.NONE].next_delay()
                    self._arm(time.time() + delay, "after error")

    async def _evaluate(self, reasons: list[str], since: float | None) -> None:
        log.debug("evaluating (%s)", "; ".join(reasons) or "no reason")
        self.graph.follow(self.reload.config)  # before publishing: its status is in it
        self.metrics.last_refresh = time.time()
        self.reboot.decision_since = since
        step: Step | None = None
        detail: Outcome = None
        # Each action either progresses (re-evaluate at once) or leaves a waiting reason.
        for _ in range(8):
            now = time.time()
            await self._reconcile(now)
            step = machine.next_step(self._facts(now))
            if step.action in (Action.CHECK, Action.FINALIZE) or (
                step.action is Action.REPORT_STEADY and not self.health.gating()
            ):
                # Visible while it runs (a check can take minutes), not only afterwards; a
                # running health gate keeps showing its own reason, never "reporting steady".
                self.publish.publish(step, step.reason, None)
            detail = await self._act(step, now)
            if detail is not None:
                break
        assert step is not None
        reason, recheck = detail if detail is not None else (step.reason, step.recheck_at)
        if since is not None and self.reboot.decision_since is not None:
            # No reboot decision in this evaluation: the decision is the state published now.
            self.metrics.decision_latency = time.monotonic() - since
        self.publish.publish(step, reason, recheck)
        self._arm(recheck, reason)

    async def _act(self, step: Step, now: float) -> Outcome:
        """Run ``step.action``; None when it made progress, else (reason, recheck_at)."""
        action = step.action
        if action in (Action.NONE, Action.AWAIT_REBOOT):
            failure = self.retries.failure.get(Action.NONE)
            return (failure or step.reason, step.recheck_at)
        not_before = self.retries.not_before.get(action)
        if not_before is not None and now < not_before:
            return (self.retries.failure.get(action, step.reason), not_before)
        if action is Action.REPORT_STEADY:
            held = await self.health.before_steady()  # the gate, or a rollback under way
            return held if held is not None else await self._report_steady()
        if action is Action.CHECK:
            graph = self.graph.check_step(self.reload.config)
            return await self.deployments.check(self.publish.status_line, graph)
        held = await self.health.pre_reboot()  # before the strategy (and a lock slot)
        return held if held is not None else await self.reboot.finalize(force=False)

    async def _report_steady(self) -> Outcome:
        strategy = self.reload.strategy
        assert strategy is not None
        try:
            verdict = await strategy.report_steady()
        except Exception as exc:
            log.warning("reporting steady state failed: %s", exc)
            return self.retries.retry(Action.REPORT_STEADY, f"reporting steady state failed: {exc}")
        if not verdict.allowed:
            log.info("steady state not reported yet: %s", verdict.reason)
            if verdict.recheck_at is not None:
                return (f"reporting steady state: {verdict.reason}", verdict.recheck_at.timestamp())
            return self.retries.retry(
                Action.REPORT_STEADY, f"reporting steady state: {verdict.reason}"
            )
        self.retries.succeeded(Action.REPORT_STEADY)
        log.info("reached steady state (%s)", verdict.reason)
        self.steady_reported = True
        await self.health.steady_reported()
        return None

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
        iface = AgentInterface(self.deployments.check_now, self.api_wake, self.reboot_now)
        self.publish.iface = iface
        export(bus, iface)
        reply = await bus.request_name(self.opts.bus_name, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise StartupError(
                f"bus name {self.opts.bus_name} is taken: another agent is running",
                os.EX_TEMPFAIL,
            )
        return bus

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        from zincati_py.dbus.logind import Logind
        from zincati_py.dbus.rpmostree import RpmOstree

        if self.store.record.extra.get("slot_held"):
            log.info("a fleet-lock slot was held when the agent stopped: steady state releases it")
        self.reload.report_startup()
        # The bus name first: a second agent for the same node must exit before it touches
        # the first one's metrics socket or status file.
        self.bus = await self._connect_bus()
        # Alone now: what an interrupted write of ours left behind can go.
        for path in (self.store.path, self.paths.status_file):
            persist.sweep_temp_files(path)
        self.exporter = Exporter(
            self.metrics, self.paths.metrics_socket, self.reload.config.agent.metrics.listen
        )
        try:
            await self.exporter.start()
        except OSError as exc:
            log.error("metrics socket %s: %s", self.paths.metrics_socket, exc)
        self.rpm = RpmOstree(self.paths.root, ostree_command=self.opts.ostree_command)
        await self.rpm.connect(self.bus)
        self.logind = Logind()
        await self.logind.connect(self.bus)
        await self.reboot.connect(self.logind)
        self.health.connect(self.bus, self.rpm, self.logind)
        self.reboot.on_reboot = self.health.reboot_imminent
        await self.reload.start(self.bus)
        self._start_watchdog()
        await self.deployments.start(self.rpm)
        runner = self.spawn(self._run())
        await asyncio.sleep(0)  # let the first evaluation start before announcing readiness
        self.notify.ready(f"initialized; {self.publish.state.value}")
        log.info("agent ready on bus name %s (root %s)", self.opts.bus_name, self.paths.root)
        await self._stop.wait()
        await self._shutdown(runner)
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received: stopping", sig.name)
        self.notify.stopping()
        self._stop.set()
        self._wake.set()
        self._interrupt("stopping")

    async def _shutdown(self, runner: asyncio.Task[Any]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.deployments.close()
        # Cancel whatever runs (a staging transaction can take minutes): every step is
        # idempotent and its decision recorded first, so the next start picks it up.
        for task in [runner, *self._tasks]:
            task.cancel()
        await asyncio.gather(runner, *self._tasks, return_exceptions=True)
        step = Step(State.END, Action.NONE, "agent stopped", "the agent resumes on start")
        self.publish.publish(step, step.reason, None)
        # Records the last publish started saving (the tasks above are done or cancelled).
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.reload.close()
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
