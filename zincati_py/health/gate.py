"""The health gate's decisions, as pure functions (table-tested, no I/O).

The agent keeps one durable :class:`GateRecord` (in its state file, written before every
action it records) for the last update it booted into. Phases::

    gate         booted the release this agent staged; checks run in ``boot_id`` until
                 ``deadline``; steady state is not reported meanwhile
    passed       the gate passed: report steady ("healthy"), then ``reported``
    rollback     the gate failed and a rollback was decided (the release is deny-listed in
                 the same write): make the previous deployment the default (once: rpm-ostree's
                 Rollback toggles, so it is called only while the failed release is still the
                 default), then reboot through logind
    rolled-back  booted the previous deployment again: report steady ("failed", with the
                 failed version and the reason), MOTD and journal, then ``reported``
    failed       the gate failed, no rollback (disabled, or this release was rolled back once
                 already): report steady ("failed"), then ``reported``
    reported     the lock server (the strategy) has the report; nothing left to do
    abandoned    the release is no longer booted without our rollback (an administrator
                 rolled back, or deployed something else): nothing to report

A SIGKILL at any point leaves one of these, and :func:`reconcile` says what it means in the
boot the agent finds itself in: a gate interrupted by an unplanned reboot restarts in the new
boot (a fresh deadline, never a rollback for it) -- but a release whose boots keep ending
during its gate (a panic, a watchdog reset) fails it after :data:`MAX_GATE_BOOTS` such boots;
a rollback decided is carried out at most once, and a report owed is sent until the strategy
took it. A release booted again after its gate was abandoned is gated again; one that passed
its gate stays passed whatever reboots follow.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from zincati_py.health.run import Result


class Phase(enum.StrEnum):
    GATE = "gate"
    PASSED = "passed"
    ROLLBACK = "rollback"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"
    REPORTED = "reported"
    ABANDONED = "abandoned"


# Phases whose steady-state report is owed (health verdict for the lock server).
REPORT = {Phase.PASSED: "healthy", Phase.ROLLED_BACK: "failed", Phase.FAILED: "failed"}
FINAL = (Phase.REPORTED, Phase.ABANDONED)
# The gate fails when this many of its boots ended before a verdict (unplanned reboots): a
# release that panics or is reset by a watchdog during its gate would otherwise restart the
# gate forever, never rolled back, its fleet-lock slot held.
MAX_GATE_BOOTS = 2


@dataclass(frozen=True)
class GateRecord:
    checksum: str  # the release booted into
    version: str | None
    from_checksum: str | None  # what was booted before it (the rollback target)
    from_version: str | None
    boot_id: str  # the boot the gate runs (ran) in
    started: float
    deadline: float
    phase: Phase = Phase.GATE
    reason: str = ""
    decided_at: float | None = None
    # logind is being asked to reboot for the rollback (saved before the call), in that boot;
    # for the status only: an agent restarted before logind took it asks again at once.
    reboot_called: bool = False
    reboot_called_boot: str = ""
    restarts: int = 0  # unplanned reboots during the gate
    verdict: str = ""  # "healthy" | "failed" once decided (kept after the report)

    @property
    def label(self) -> str:
        return self.version or self.checksum[:12]

    @property
    def from_label(self) -> str:
        return self.from_version or (self.from_checksum or "")[:12] or "the previous deployment"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["phase"] = self.phase.value
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> GateRecord | None:
        if not isinstance(raw, dict):
            return None
        try:
            return cls(**{**raw, "phase": Phase(raw["phase"])})
        except (KeyError, TypeError, ValueError):
            return None


class Verdict(enum.StrEnum):
    PASSED = "passed"
    WAITING = "waiting"
    FAILED = "failed"


def judge(results: Sequence[Result], now: float, deadline: float) -> tuple[Verdict, str]:
    """The gate's verdict from the checks so far (``wanted`` checks never fail it)."""
    required = [r for r in results if r.kind != "wanted"]
    failed = [r for r in required if not r.ok and not r.pending]
    if failed:
        return Verdict.FAILED, "; ".join(r.line() for r in failed)
    pending = [r for r in required if r.pending]
    if pending:
        what = "; ".join(r.line() for r in pending)
        if now >= deadline:
            return Verdict.FAILED, f"health timeout: {what}"
        return Verdict.WAITING, what
    return Verdict.PASSED, f"{len(required)} required check(s) passed"


class Move(enum.StrEnum):
    NONE = "none"  # nothing changes
    START = "start"  # a new gate for the booted release
    RESTART = "restart"  # the gate's boot ended before a verdict: run it again in this boot
    ROLLED_BACK = "rolled-back"  # the rollback boot came up
    ABANDON = "abandon"  # the release is gone, not by our rollback
    FAIL = "fail"  # the gate's boot ended again: MAX_GATE_BOOTS reached, the gate fails


def reconcile(
    record: GateRecord | None,
    booted: str,
    boot_id: str,
    landed: str | None,
) -> Move:
    """What the record means now. ``booted`` is the booted checksum, ``landed`` the checksum of
    an update this agent staged or rebooted into that is booted now (None: none is).

    A release this agent updated into is gated when no gate of it is on record, and again when
    its gate was abandoned (it stopped being booted, not by our rollback, before a verdict) and
    it is booted once more: that boot was never judged. A gate that reached a verdict is not run
    again for a later boot of the same release: passed stays passed (an ordinary reboot of a
    healthy release), failed stays failed (deny-listed; reported)."""
    # (An abandoned record's release was not booted in some later boot, so booting it now is a
    # new boot whatever the boot ids say; they may be unknown.)
    fresh = record is None or record.checksum != booted or record.phase is Phase.ABANDONED
    if landed is not None and landed == booted and fresh:
        return Move.START
    if record is None:
        return Move.NONE
    if record.phase is Phase.GATE:
        if booted != record.checksum:
            return Move.ABANDON
        if boot_id and record.boot_id and boot_id != record.boot_id:
            return Move.FAIL if record.restarts + 1 >= MAX_GATE_BOOTS else Move.RESTART
        return Move.NONE
    if record.phase is Phase.ROLLBACK:
        if booted == record.from_checksum:
            return Move.ROLLED_BACK
        if booted != record.checksum:
            return Move.ABANDON
    return Move.NONE


def restarted(record: GateRecord, boot_id: str, now: float, timeout: float) -> GateRecord:
    return replace(
        record, boot_id=boot_id, started=now, deadline=now + timeout, restarts=record.restarts + 1
    )


def recheck_delay(now: float, started: float) -> float:
    """How long to wait before evaluating a waiting gate again: short at first (a unit is
    starting), up to 30 s; never past the deadline (the caller caps it)."""
    return min(30.0, max(1.0, (now - started) / 4))


def describe(rec: GateRecord | None, checks: Sequence[Result]) -> dict[str, Any]:
    """The gate's part of ``status.json``'s ``health`` (times ISO 8601 UTC)."""
    from zincati_py.timefmt import iso_ts as iso

    if rec is None:
        return {"phase": None}
    return {
        "phase": rec.phase.value,
        "release": rec.version or rec.checksum,
        "checksum": rec.checksum,
        "from_release": rec.from_version or rec.from_checksum,
        "started": iso(rec.started),
        "deadline": iso(rec.deadline),
        "reason": rec.reason,
        "restarts": rec.restarts,
        "verdict": rec.verdict or None,
        "checks": [r.as_dict() for r in checks],
    }
