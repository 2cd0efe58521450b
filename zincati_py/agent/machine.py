"""The update state machine, as pure functions of observed facts.

The service gathers facts (deployments from rpm-ostree, the persisted record, the strategy's
verdict, logind's answers) and these functions say which state that is, what to do next and
why. Nothing here does I/O, so every decision is table-tested and a restarted agent reaches
the same decision from the same facts: that is what makes every step idempotent.

States are Zincati's (``start`` … ``end``) plus ``disabled`` for ``updates.enabled = false``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from zincati_py.agent.persist import RebootRequest
from zincati_py.deployment import Deployment as Deployment  # the one type, re-exported

# How long a requested reboot may take before the agent concludes it did not happen (e.g.
# the agent died between recording the request and logind receiving it) and asks again.
REBOOT_GRACE_SECS = 900.0


class State(enum.StrEnum):
    START = "start"
    INITIALIZED = "initialized"
    REPORTED_STEADY = "reported steady"
    NO_NEW_UPDATE = "no new update"
    # Zincati's state between "Cincinnati offers a release" and "staged". rpm-ostree's
    # UpdateDeployment finds and stages in one transaction, so this backend goes from a check
    # straight to UPDATE_STAGED; kept so states and metrics labels match Zincati's list.
    UPDATE_AVAILABLE = "update available"
    UPDATE_STAGED = "update staged"
    UPDATE_FINALIZED = "update finalized"
    END = "end"
    DISABLED = "disabled"


class Action(enum.StrEnum):
    NONE = "none"
    REPORT_STEADY = "report steady"
    CHECK = "check"
    FINALIZE = "finalize"
    AWAIT_REBOOT = "await reboot"


@dataclass(frozen=True)
class Facts:
    enabled: bool
    # False only while no valid configuration was ever loaded: no reboots then.
    config_valid: bool
    booted: Deployment | None  # None: deployments not read yet
    staged: Deployment | None
    steady_reported: bool
    check_requested: bool
    reboot_requested: RebootRequest | None
    failed: tuple[str, ...]
    checked: bool  # at least one check completed since boot
    boot_id: str
    now: float


@dataclass(frozen=True)
class Step:
    state: State
    action: Action
    reason: str  # why the agent is in this state / waiting
    next: str  # what happens next, in words
    recheck_at: float | None = None  # wall-clock time to evaluate again without an event


class RebootOutcome(enum.StrEnum):
    DONE = "done"  # booted into the requested update
    FAILED = "failed"  # rebooted after asking logind, but not into it
    # Rebooted, but the agent had stopped before asking logind (the request was recorded, the
    # call never made): that reboot was not ours and says nothing about the update.
    ABANDONED = "abandoned"
    STALE = "stale"  # the staged deployment changed; the request no longer applies
    PENDING = "pending"  # requested in this boot; wait for it
    EXPIRED = "expired"  # requested long ago in this boot and nothing happened: ask again


def reconcile_reboot(
    req: RebootRequest,
    booted: Deployment,
    staged: Deployment | None,
    boot_id: str,
    now: float,
) -> RebootOutcome:
    """What became of a persisted reboot request, judged from the deployments."""
    if booted.checksum == req.checksum:
        return RebootOutcome.DONE
    if req.boot_id and boot_id and req.boot_id != boot_id:
        return RebootOutcome.FAILED if req.called else RebootOutcome.ABANDONED
    if staged is None or staged.checksum != req.checksum:
        return RebootOutcome.STALE
    if now >= req.at + REBOOT_GRACE_SECS:
        return RebootOutcome.EXPIRED
    return RebootOutcome.PENDING


def next_step(f: Facts) -> Step:
    """The state the facts describe and the one action to take in it."""
    if f.booted is None:
        return Step(State.START, Action.NONE, "reading deployments from rpm-ostree", "initialize")
    if not f.enabled:
        return Step(
            State.DISABLED,
            Action.NONE,
            "updates disabled by configuration (updates.enabled = false)",
            "nothing until updates are enabled",
        )
    req = f.reboot_requested
    if req is not None:
        outcome = reconcile_reboot(req, f.booted, f.staged, f.boot_id, f.now)
        if outcome is RebootOutcome.PENDING:
            label = req.version or req.checksum[:12]
            return Step(
                State.UPDATE_FINALIZED,
                Action.AWAIT_REBOOT,
                f"reboot into {label} requested; waiting for it",
                "the host reboots into the update",
                recheck_at=req.at + REBOOT_GRACE_SECS,
            )
    if not f.steady_reported:
        return Step(
            State.INITIALIZED,
            Action.REPORT_STEADY,
            f"booted {f.booted.label}; reporting steady state to the strategy",
            "consider updates once steady state is reported",
        )
    idle = State.NO_NEW_UPDATE if f.checked else State.REPORTED_STEADY
    if f.staged is not None:
        if f.staged.checksum in f.failed:
            if f.check_requested:
                # Deny-listed (did not come up, failed its health gate and was rolled back, or
                # its rollout is halted by the lock server):
                # it does not block updates; a newer release replaces it when staged.
                return Step(
                    State.UPDATE_STAGED,
                    Action.CHECK,
                    f"{f.staged.label} is deny-listed: checking for a newer update",
                    "stage a newer update if any",
                )
            return Step(
                State.UPDATE_STAGED,
                Action.NONE,
                f"not finalizing {f.staged.label}: deny-listed (an earlier reboot into it did "
                "not come up or failed its health gate, or the lock server halted its rollout)",
                "an administrator decides (rpm-ostree cleanup -p, or zincati-py reboot-now)",
            )
        if not f.config_valid:
            return Step(
                State.UPDATE_STAGED,
                Action.NONE,
                f"{f.staged.label} staged, but the configuration is invalid: no reboot until "
                "it is fixed",
                "fix the configuration (zincati-py config check)",
            )
        return Step(
            State.UPDATE_STAGED,
            Action.FINALIZE,
            f"{f.staged.label} staged; asking the strategy whether to reboot",
            "reboot into the update when allowed",
        )
    if f.check_requested:
        return Step(idle, Action.CHECK, "checking for updates", "stage a new update if any")
    return Step(
        idle,
        Action.NONE,
        "no update staged" if f.checked else "steady state reported",
        "check for updates when zincati-py-check.timer (or zincati-py check) asks",
    )


class Decision(enum.StrEnum):
    WAIT = "wait"  # the strategy says no: wait for its recheck time or event
    RETRY = "retry"  # logind refuses: retry with backoff
    WAIT_INHIBITOR = "wait inhibitor"  # a block inhibitor: wait for its release
    POSTPONE = "postpone"  # interactive sessions: warn, wait up to the limit
    REBOOT = "reboot"


@dataclass(frozen=True)
class Gate:
    """Everything the reboot decision depends on, gathered by the service in this order."""

    force: bool  # RebootNow by an administrator: skips the strategy and the postponement
    allowed: bool
    strategy_reason: str
    strategy_recheck_at: float | None
    can_reboot: str | None  # logind CanReboot; None when not asked (strategy said no)
    inhibitors: tuple[str, ...]
    sessions: tuple[str, ...]
    postponed_since: float | None
    max_postpone_secs: int
    warn_interactive: bool
    now: float


@dataclass(frozen=True)
class GateResult:
    decision: Decision
    reason: str
    recheck_at: float | None = None
    # The strategy allowed but the reboot will not happen now: release what it took.
    abort: bool = False
    warn: bool = False  # send the wall message now
    start_postponement: bool = False


def gate(g: Gate) -> GateResult:
    """May the agent reboot into the staged update right now?"""
    if not g.force and not g.allowed:
        return GateResult(Decision.WAIT, g.strategy_reason, g.strategy_recheck_at)
    if g.inhibitors and g.can_reboot in ("yes", "challenge", "no"):
        # Whatever CanReboot says while a block inhibitor is held ("challenge" or "no" when it
        # is another user's and we may not ignore it, as logind answers from polkit's
        # reboot-ignore-inhibit; "yes" when we may): the inhibitor is what stands in the way.
        # Wait for its release (the BlockInhibited signal), then ask logind again.
        return GateResult(
            Decision.WAIT_INHIBITOR,
            "reboot blocked by shutdown inhibitor(s): " + "; ".join(g.inhibitors),
            abort=not g.force,
        )
    if g.can_reboot != "yes":
        return GateResult(
            Decision.RETRY, f"logind CanReboot answered {g.can_reboot!r}", abort=not g.force
        )
    if g.sessions and not g.force and g.max_postpone_secs > 0:
        since = g.postponed_since
        who = ", ".join(g.sessions)
        if since is None:
            return GateResult(
                Decision.POSTPONE,
                f"interactive sessions ({who}): warned, reboot postponed by up to "
                f"{g.max_postpone_secs} s",
                g.now + g.max_postpone_secs,
                warn=g.warn_interactive,
                start_postponement=True,
            )
        deadline = since + g.max_postpone_secs
        if g.now < deadline:
            return GateResult(
                Decision.POSTPONE,
                f"interactive sessions ({who}): reboot postponed until the limit of "
                f"{g.max_postpone_secs} s",
                deadline,
            )
        return GateResult(
            Decision.REBOOT,
            f"rebooting: postponement of {g.max_postpone_secs} s for interactive sessions "
            f"({who}) expired",
        )
    # Sessions that get no postponement (RebootNow, or a limit of 0) still get the warning.
    warn = bool(g.sessions) and g.warn_interactive
    if g.force:
        return GateResult(
            Decision.REBOOT, "rebooting: requested by an administrator (RebootNow)", warn=warn
        )
    return GateResult(Decision.REBOOT, f"rebooting: {g.strategy_reason}", warn=warn)
