"""The agent's health collaborator: pre-reboot checks, the post-boot gate, the rollback.

Tied into the agent's loop at three points (``agent/service.py``):

- ``reconcile`` first in every evaluation, before the reboot record is settled: booting the
  release this agent staged starts a gate (recorded durably before anything else forgets the
  reboot request), and a persisted gate is settled against the boot the agent finds itself in
  (:func:`zincati_py.health.gate.reconcile`);
- ``before_steady`` in place of the steady-state report while a gate runs or a rollback is
  being carried out, and ``steady_reported`` once the strategy took the report;
- ``pre_reboot`` before the strategy is asked for a reboot (and a fleet-lock slot).

The lock server hears the verdict through the strategy's steady-state report (``facts``):
``booted_version`` and ``health`` ("healthy" or "failed"), plus ``failed_version`` and ``reason``
after a rollback. Everything durable is in the agent's state file (``store``: the agent's
``persist.Store``, taken by duck typing so this package imports nothing of the agent): the gate
record under ``extra["health_gate"]``, the releases rolled back once under
``extra["health_rolled_back"]``, and a failed release in the record's ``failed`` (the local
deny-list: never finalized again, never staged from the update graph). A rollback decided here
is carried out by :class:`zincati_py.health.rollback.Rollback`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zincati_py.health import report
from zincati_py.health.gate import (
    FINAL,
    REPORT,
    GateRecord,
    Move,
    Phase,
    Verdict,
    describe,
    judge,
    recheck_delay,
    restarted,
)
from zincati_py.health.gate import reconcile as reconcile_gate
from zincati_py.health.run import BOOT_COMPLETE, Result, run_command, unit_result

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

    from zincati_py.config import Settings
    from zincati_py.dbus.logind import Logind
    from zincati_py.dbus.rpmostree import RpmOstree
    from zincati_py.health.hooks import Events
    from zincati_py.health.prereboot import PreReboot
    from zincati_py.health.rollback import Rollback

log = logging.getLogger("zincati_py.agent")

GATE_KEY = "health_gate"
ROLLED_BACK_KEY = "health_rolled_back"
MOTD_REL = "run/motd.d/85-zincati-py-rollback.motd"
_NO_MANAGER = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
)

Outcome = tuple[str, float | None] | None


class HealthKeeper:
    def __init__(
        self,
        root: Path,
        store: Any,
        deployments: Any,
        settings: Any,
        boot_id: str,
        systemd_bus: str | None = None,
    ) -> None:
        self.root = root
        self.store = store
        self.deployments = deployments  # .booted, .staged (agent.deployments.DeploymentTracker)
        self.settings = settings  # .config (agent.reload.ConfigReloader)
        self.boot_id = boot_id
        self.systemd_bus = systemd_bus
        self.bus: MessageBus | None = None
        self.rpm: RpmOstree | None = None
        self.logind: Logind | None = None
        self.events: Events | None = None  # the event hooks, once connected
        self.gate_results: list[Result] = []
        # What runs only around an update (pre-reboot checks, a rollback, the gate's health.d
        # checks) is imported when first needed: an idle agent does not load it (issue 17).
        self._pre: PreReboot | None = None
        self.rollback: Rollback | None = None  # made when a decided rollback is carried out
        self._missing: set[str] = set()  # required units logged as not found
        self._no_manager_logged = False
        self._halt_asked = False  # the halt was lifted once for the pending check request
        self.problems: list[str] = []

    def connect(self, bus: MessageBus, rpm: RpmOstree, logind: Logind) -> None:
        from zincati_py.health.hooks import Events, Hooks

        self.bus, self.rpm, self.logind = bus, rpm, logind
        from zincati_py.health.units import HOOKS_DIR_REL

        hooks = Hooks(self.settings, self._systemd, self.root / HOOKS_DIR_REL)
        self.events = Events(self.root, self.store, self.deployments, hooks)

    async def reboot_imminent(self, version: str, reason: str) -> None:
        """The agent is about to ask logind to reboot into ``version``: the "reboot" hooks run
        first (bounded; a failure is only logged)."""
        if self.events is not None:
            try:
                await self.events.reboot_imminent(version, reason)
            except Exception as exc:
                log.warning("reboot hooks: %s", exc)

    @property
    def config(self) -> Settings:
        return self.settings.config  # type: ignore[no-any-return]

    # -- records --------------------------------------------------------------------------
    def record(self) -> GateRecord | None:
        return GateRecord.from_dict(self.store.record.extra.get(GATE_KEY))

    def gating(self) -> bool:
        """A gate (or its rollback) stands between this boot and the steady-state report."""
        rec = self.record()
        return rec is not None and rec.phase in (Phase.GATE, Phase.ROLLBACK)

    def rolled_back(self) -> list[str]:
        return [str(c) for c in self.store.record.extra.get(ROLLED_BACK_KEY) or ()]

    async def _save(self, rec: GateRecord, **changes: Any) -> None:
        extra = {**self.store.record.extra, GATE_KEY: rec.as_dict()}
        extra.update(changes.pop("extra", {}))
        await self.store.commit(extra=extra, **changes)

    async def reconcile(self, now: float) -> None:
        """Start, restart or settle the gate for what is booted (durable before it returns)."""
        booted = self.deployments.booted
        if booted is None:
            return
        st = self.store.record
        landed: str | None = None
        from_checksum: str | None = None
        req = st.reboot_requested
        if req is not None and req.checksum == booted.checksum:
            landed, from_checksum = booted.checksum, req.from_checksum
        elif st.staged_by_us is not None and st.staged_by_us.checksum == booted.checksum:
            landed = booted.checksum
        if self.events is not None:
            await self.events.watch()
        rec = self.record()
        move = reconcile_gate(rec, booted.checksum, self.boot_id, landed)
        timeout = self.config.agent.health.timeout_secs
        if move is Move.START:
            from zincati_py.health.rollback import version_of

            new = GateRecord(
                checksum=booted.checksum,
                version=booted.version,
                from_checksum=from_checksum,
                from_version=await version_of(self.rpm, from_checksum),
                boot_id=self.boot_id,
                started=now,
                deadline=now + timeout,
            )
            await self._save(new)
            self.gate_results = []
            self._missing.clear()
            log.info(
                "booted %s, the update this agent staged: health gate until it passes or %d s",
                new.label,
                timeout,
            )
            self._event("booted", new, "booted into the new release")
        elif move is Move.RESTART:
            assert rec is not None
            new = restarted(rec, self.boot_id, now, timeout)
            await self._save(new)
            log.warning(
                "the boot running the health gate of %s ended before a verdict (an unplanned "
                "reboot): running the gate again in this boot",
                rec.label,
            )
        elif move is Move.FAIL:
            assert rec is not None
            new = restarted(rec, self.boot_id, now, timeout)
            why = f"rebooted {new.restarts} times during the health gate"
            log.critical("the boot running the health gate of %s ended again: %s", rec.label, why)
            await self._decide(new, why)  # durable; a rollback is carried out by before_steady
        elif move is Move.ROLLED_BACK:
            assert rec is not None
            new = replace(rec, phase=Phase.ROLLED_BACK)
            if new.from_version is None and booted.checksum == rec.from_checksum:
                new = replace(new, from_version=booted.version)
            await self._save(new)
            self._announce_rollback(new)
        elif move is Move.ABANDON:
            assert rec is not None
            await self._save(replace(rec, phase=Phase.ABANDONED))
            log.warning(
                "%s is no longer booted (%s is), not by our rollback: health gate abandoned",
                rec.label,
                booted.label,
            )

    # -- the gate -------------------------------------------------------------------------
    async def before_steady(self) -> Outcome:
        """None: report steady now (with :meth:`facts`); else why not yet, and when to look
        again."""
        rec = self.record()
        if rec is None or rec.phase in FINAL or rec.phase in REPORT:
            return None
        if rec.phase is Phase.GATE:
            return await self._run_gate(rec)
        if rec.phase is Phase.ROLLBACK:
            return await self._carry_out(rec)
        return None

    async def _carry_out(self, rec: GateRecord) -> Outcome:
        if self.rollback is None:
            from zincati_py.health.rollback import Rollback

            assert self.rpm is not None and self.logind is not None and self.events is not None
            self.rollback = Rollback(self.rpm, self.logind, self.events, self.boot_id, self._save)
        return await self.rollback.carry_out(rec)

    async def _systemd(self) -> tuple[MessageBus | None, bool]:
        """(bus, owned): the systemd manager's bus (``--systemd-bus``, else the system bus)."""
        if self.systemd_bus:
            from zincati_py.dbus import systemd

            return await systemd.connect(address=self.systemd_bus), True
        return self.bus, False

    async def _boot_complete(self, bus: MessageBus | None) -> Result:
        if bus is None:
            return Result(BOOT_COMPLETE, "boot-complete", False, "no bus", pending=True)
        result = await unit_result(bus, BOOT_COMPLETE, "boot-complete", wait=True)
        if not result.ok and any(name in result.detail for name in _NO_MANAGER):
            # No systemd manager on this bus (a wrong --systemd-bus): nothing can vouch for the
            # boot, so it is not healthy: pending, said in the status and the journal, until
            # the deadline fails the gate. (It passed here once, which skipped the boot's
            # assessment without a word; a test bed runs a manager, testbed/systemd.py.)
            where = self.systemd_bus or "the system bus"
            detail = f"no systemd manager on {where}: nothing assesses this boot"
            if not self._no_manager_logged:
                self._no_manager_logged = True
                log.error("health gate: %s (%s); check --systemd-bus", detail, result.detail)
            return Result(BOOT_COMPLETE, "boot-complete", False, detail, pending=True)
        return result

    async def _run_gate(self, rec: GateRecord) -> Outcome:
        health = self.config.agent.health
        bus, owned = None, False
        try:
            bus, owned = await self._systemd()
            results = [await self._boot_complete(bus)]
            for unit in health.required_units:
                if bus is None:
                    results.append(Result(unit, "unit", False, "no bus", pending=True))
                else:
                    results.append(await unit_result(bus, unit, "unit", wait=True))
        except Exception as exc:
            results = [Result("systemd", "unit", False, f"unreachable: {exc}", pending=True)]
        finally:
            if owned and bus is not None:
                bus.disconnect()
        now = time.time()
        verdict, why = judge(results, now, rec.deadline)
        if verdict is Verdict.PASSED:
            # Units and boot-complete.target are there: now the executables, each bounded by
            # what is left of the gate's deadline (at least 1 s), not a fresh timeout_secs each:
            # N slow checks must not keep the gate N times timeout_secs past its deadline.
            env = self._env("gate", rec, "")
            self.problems = []
            from zincati_py.health import discover

            for kind in discover.KINDS:
                found, problems = discover.discover(self.root, kind)
                self.problems += problems
                for f in found:
                    left = max(1.0, rec.deadline - time.time())
                    results.append(await run_command([str(f.path)], kind, left, env, f.name))
            for p in self.problems:
                log.warning("health.d: %s", p)
            now = time.time()
            verdict, why = judge(results, now, rec.deadline)
        self.gate_results = results
        for r in results:
            if r.kind == "wanted" and not r.ok:
                log.warning("health gate of %s: wanted check %s", rec.label, r.line())
            elif r.pending and r.detail.startswith("no such unit") and r.name not in self._missing:
                self._missing.add(r.name)
                log.error(
                    "health gate of %s: required unit %s does not exist on this release (%s); "
                    "waiting for it until the deadline",
                    rec.label,
                    r.name,
                    r.detail,
                )
        if verdict is Verdict.WAITING:
            at = min(rec.deadline, now + recheck_delay(now, rec.started))
            return (f"health gate of {rec.label}: waiting for {why}", at)
        if verdict is Verdict.PASSED:
            await self._save(replace(rec, phase=Phase.PASSED, reason=why, verdict="healthy"))
            log.info("health gate of %s passed: %s", rec.label, why)
            report.write_motd(self.root / MOTD_REL, None)
            return None
        return await self._failed(rec, why)

    async def _failed(self, rec: GateRecord, why: str) -> Outcome:
        new = await self._decide(rec, why)
        return await self._carry_out(new) if new.phase is Phase.ROLLBACK else None

    async def _decide(self, rec: GateRecord, why: str) -> GateRecord:
        """The gate failed: rollback (deny-listed and counted) or failed, durably."""
        from zincati_py.health.rollback import rollback_target, with_target

        health = self.config.agent.health
        st = self.store.record
        failed = st.failed if rec.checksum in st.failed else (*st.failed, rec.checksum)
        once = rec.checksum in self.rolled_back()
        can = (
            health.rollback
            and not once
            and (rec.from_checksum is not None or await rollback_target(self.rpm, rec) is not None)
        )
        if can:
            assert self.rpm is not None
            rec = await with_target(self.rpm, rec)
            new = replace(
                rec, phase=Phase.ROLLBACK, reason=why, decided_at=time.time(), verdict="failed"
            )
            # Decided, deny-listed and counted in one durable write, before acting.
            await self._save(
                new,
                failed=failed,
                extra={ROLLED_BACK_KEY: [*self.rolled_back(), rec.checksum]},
            )
            log.critical(
                "HEALTH GATE FAILED for %s: %s; rolling back to %s (deny-listed: %s)",
                rec.label,
                why,
                new.from_label,
                rec.checksum,
            )
            return new
        if not health.rollback:
            note = "automatic rollback disabled ([agent.health] rollback = false)"
        elif once:
            note = "rolled back once already for this release: not again"
        else:
            note = "no rollback deployment"
        new = replace(
            rec,
            phase=Phase.FAILED,
            reason=f"{why} ({note})",
            decided_at=time.time(),
            verdict="failed",
        )
        await self._save(new, failed=failed)
        log.critical("HEALTH GATE FAILED for %s: %s; %s", rec.label, why, note)
        return new

    def _announce_rollback(self, rec: GateRecord) -> None:
        text = (
            f"zincati-py: update {rec.label} failed its health check and was rolled back to "
            f"{rec.from_label}: {rec.reason}. {rec.label} will not be installed again "
            "(see zincati-py status).\n"
        )
        log.critical(text.strip())
        report.write_motd(self.root / MOTD_REL, text)
        self._event("rolled-back", rec, rec.reason)

    async def steady_reported(self) -> None:
        """The strategy took the steady-state report: the verdict owed is delivered."""
        rec = self.record()
        if rec is not None and rec.phase in REPORT:
            await self._save(replace(rec, phase=Phase.REPORTED))
            log.info("reported %s to the strategy (%s)", REPORT[rec.phase], rec.label)

    def halted(self) -> tuple[str, ...]:
        """The staged release while the lock server halted its rollout (see ``report``).

        The halt is what the server said at the last pre-reboot, and a halted release is not
        finalized, so nothing would ask again: a check request (the check timer, ``zincati-py
        check``) lifts it for one evaluation, which asks the server once more. A release an
        administrator resumed (``fleetlock resume-version``) is then taken without an agent
        restart; a refusal sets the halt again and the next evaluation runs the check (a newer
        release may replace the halted one)."""
        out = report.halted(self.deployments.staged, self.settings.strategy)
        if not self.deployments.check_requested:
            self._halt_asked = False
        elif out and not self._halt_asked:
            self._halt_asked = True
            log.info("asking the lock server again about halted %s", self.deployments.staged.label)
            return ()
        return out

    def facts(self) -> dict[str, str]:
        """What the strategy tells the lock server (see ``report``)."""
        return report.facts(self.deployments.booted, self.deployments.staged, self.record())

    # -- pre-reboot checks ----------------------------------------------------------------
    async def pre_reboot(self) -> Outcome:
        """``[agent.health] pre_reboot`` (see :class:`PreReboot`): None when all pass."""
        staged = self.deployments.staged
        if self._pre is None:
            from zincati_py.health.prereboot import PreReboot

            self._pre = PreReboot()
        return await self._pre.run(
            self.config, staged.version if staged else None, self._systemd, self._env
        )

    # -- hooks and status -----------------------------------------------------------------
    def _env(self, event: str, rec: GateRecord | None, reason: str) -> dict[str, str]:
        env = {**os.environ, "ZINCATI_PY_EVENT": event, "ZINCATI_PY_REASON": reason}
        if rec is not None:
            env["ZINCATI_PY_VERSION"] = rec.version or rec.checksum
            env["ZINCATI_PY_FROM_VERSION"] = rec.from_version or rec.from_checksum or ""
        return env

    def _event(self, event: str, rec: GateRecord | None, reason: str) -> None:
        fields = {"reason": reason}
        if rec is not None:
            fields["version"] = rec.version or rec.checksum
            fields["from_version"] = rec.from_version or rec.from_checksum or ""
        self._fire(event, **fields)

    def _fire(self, event: str, **fields: str) -> None:
        if self.events is not None:
            self.events.fire(event, **fields)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "pre_reboot": [] if self._pre is None else [r.as_dict() for r in self._pre.results],
            "pre_reboot_reason": None if self._pre is None else self._pre.reason,
            "rolled_back": self.rolled_back(),
            "problems": list(self.problems),
        }
        return {**doc, **describe(self.record(), self.gate_results)}
