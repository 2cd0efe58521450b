"""Carrying out a decided rollback (the gate failed; ``keeper`` decided and recorded it).

rpm-ostree's ``Rollback`` makes the previous deployment the default -- called only while the
failed release still is the default, since it toggles -- then logind reboots. Idempotent: an
agent restarted anywhere in here resumes, and asks logind again at once unless this process
saw logind take the request (a second Reboot is harmless, a lost one left the failed release up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from zincati_py.backoff import Backoff
from zincati_py.health.gate import GateRecord

if TYPE_CHECKING:
    from zincati_py.dbus.logind import Logind
    from zincati_py.dbus.rpmostree import RpmOstree
    from zincati_py.health.hooks import Events

log = logging.getLogger("zincati_py.agent")

Outcome = tuple[str, float | None] | None
# A reboot this process asked of logind for a rollback that has not happened after this long is
# asked again.
REBOOT_GRACE_SECS = 900.0


async def version_of(rpm: RpmOstree | None, checksum: str | None) -> str | None:
    """The version of deployment ``checksum`` (None: unknown, or rpm-ostree unreachable)."""
    if checksum is None or rpm is None:
        return None
    try:
        deps = await rpm.deployments()
    except Exception:
        return None
    return next((d.version for d in deps if d.checksum == checksum), None)


async def rollback_target(rpm: RpmOstree | None, rec: GateRecord) -> str | None:
    """A deployment other than the failed one to roll back to (None: there is none)."""
    if rpm is None:
        return None
    try:
        deps = [d for d in await rpm.deployments() if not d.staged]
    except Exception:
        return None
    return next((d.checksum for d in deps if d.checksum != rec.checksum), None)


async def with_target(rpm: RpmOstree, rec: GateRecord) -> GateRecord:
    """``rec`` with its rollback target (checksum and version) filled in."""
    if rec.from_checksum is not None and rec.from_version is not None:
        return rec
    deps = [d for d in await rpm.deployments() if not d.staged]
    target = rec.from_checksum or next(
        (d.checksum for d in deps if d.checksum != rec.checksum), None
    )
    version = next((d.version for d in deps if d.checksum == target), None)
    return replace(rec, from_checksum=target, from_version=version)


class Rollback:
    def __init__(
        self,
        rpm: RpmOstree,
        logind: Logind,
        events: Events | None,
        boot_id: str,
        save: Callable[..., Awaitable[Any]],
    ) -> None:
        self.rpm = rpm
        self.logind = logind
        self.events = events  # the "reboot" hooks run before logind is asked
        self.boot_id = boot_id
        self.save = save  # the keeper's durable write of the gate record
        self.retry = Backoff(2.0, 120.0)  # rollback and its reboot, when they fail
        self.reboot_asked: float | None = None  # when logind took our rollback reboot

    async def carry_out(self, rec: GateRecord) -> Outcome:
        """Rollback decided: make the previous deployment the default (only while the failed
        release still is), then reboot. Idempotent: a restart anywhere in here resumes."""
        now = time.time()
        try:
            deps = [d for d in await self.rpm.deployments() if not d.staged]
            if deps and deps[0].checksum == rec.checksum:
                log.warning("rolling back: making %s the default deployment", rec.from_label)
                await self.rpm.rollback()
                deps = [d for d in await self.rpm.deployments() if not d.staged]
            if not deps or deps[0].checksum != rec.from_checksum:
                got = deps[0].label if deps else "none"
                raise RuntimeError(f"the default deployment is {got}, not {rec.from_label}")
        except Exception as exc:
            delay = self.retry.next_delay()
            log.error("rollback of %s failed: %s; retrying in %.0f s", rec.label, exc, delay)
            return (f"rollback of {rec.label} failed: {exc}; retrying", now + delay)
        # Only a request this process saw logind take is waited for. An agent restarted in the
        # same boot (SIGKILL anywhere between the save below and logind's answer) cannot know
        # whether logind was asked, and asks (again) at once: a second Reboot while the system
        # is already going down is harmless, a lost one left the failed release up for the
        # whole grace period.
        asked = self.reboot_asked
        if asked is not None and now < asked + REBOOT_GRACE_SECS:
            return (
                f"rolled back to {rec.from_label}; reboot requested, waiting for it",
                asked + REBOOT_GRACE_SECS,
            )
        rec = replace(rec, reboot_called=True, reboot_called_boot=self.boot_id, decided_at=now)
        await self.save(rec)  # the status says so while the reboot hooks run
        if self.events is not None:
            try:
                await self.events.reboot_imminent(
                    rec.from_version or rec.from_checksum or "",
                    f"rolling back to {rec.from_label}: {rec.reason}",
                    now,
                    from_version=rec.version or rec.checksum,
                )
            except Exception as exc:
                log.warning("reboot hooks: %s", exc)
        try:
            await self.logind.reboot()
        except Exception as exc:
            log.error("reboot for the rollback failed: %s", exc)
            await self.save(replace(rec, reboot_called=False))
            delay = self.retry.next_delay()
            return (f"rolled back to {rec.from_label}; reboot failed: {exc}; retrying", now + delay)
        self.reboot_asked = time.time()
        log.warning("rolled back to %s: rebooting", rec.from_label)
        return (f"rolled back to {rec.from_label} ({rec.reason}): rebooting", None)
