"""Table tests of the pure state machine: the same facts always give the same decision."""
# ruff: noqa: E501  (one decision per table row reads better than wrapped rows)

from __future__ import annotations

from dataclasses import replace

import pytest

from zincati_py.agent.machine import (
    REBOOT_GRACE_SECS,
    Action,
    Decision,
    Deployment,
    Facts,
    Gate,
    RebootOutcome,
    State,
    gate,
    next_step,
    reconcile_reboot,
)
from zincati_py.agent.persist import RebootRequest

OLD = Deployment("a" * 64, "40.1")
NEW = Deployment("b" * 64, "40.2")
NOW = 1_000_000.0
BOOT = "boot-1"


def facts(**kw: object) -> Facts:
    base = Facts(
        enabled=True,
        config_valid=True,
        booted=OLD,
        staged=None,
        steady_reported=True,
        check_requested=False,
        reboot_requested=None,
        failed=(),
        checked=False,
        boot_id=BOOT,
        now=NOW,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def request(**kw: object) -> RebootRequest:
    base = RebootRequest(
        checksum=NEW.checksum,
        version=NEW.version,
        from_checksum=OLD.checksum,
        at=NOW - 10,
        boot_id=BOOT,
        called=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "f", "state", "action"),
    [
        ("no deployments yet", facts(booted=None), State.START, Action.NONE),
        ("disabled", facts(enabled=False, staged=NEW), State.DISABLED, Action.NONE),
        ("disabled wins over a pending reboot", facts(enabled=False, reboot_requested=request(), staged=NEW), State.DISABLED, Action.NONE),
        ("fresh boot reports steady", facts(steady_reported=False), State.INITIALIZED, Action.REPORT_STEADY),
        ("staged before steady: steady first", facts(steady_reported=False, staged=NEW), State.INITIALIZED, Action.REPORT_STEADY),
        ("steady, idle", facts(), State.REPORTED_STEADY, Action.NONE),
        ("check requested", facts(check_requested=True), State.REPORTED_STEADY, Action.CHECK),
        ("after a check, idle", facts(checked=True), State.NO_NEW_UPDATE, Action.NONE),
        ("check again", facts(checked=True, check_requested=True), State.NO_NEW_UPDATE, Action.CHECK),
        ("staged by anyone", facts(staged=NEW), State.UPDATE_STAGED, Action.FINALIZE),
        ("staged wins over a check", facts(staged=NEW, check_requested=True), State.UPDATE_STAGED, Action.FINALIZE),
        ("staged, config never valid", facts(staged=NEW, config_valid=False), State.UPDATE_STAGED, Action.NONE),
        ("staged update failed before", facts(staged=NEW, failed=(NEW.checksum,)), State.UPDATE_STAGED, Action.NONE),
        ("reboot pending", facts(staged=NEW, reboot_requested=request()), State.UPDATE_FINALIZED, Action.AWAIT_REBOOT),
        ("reboot pending, not confirmed", facts(staged=NEW, reboot_requested=request(called=False)), State.UPDATE_FINALIZED, Action.AWAIT_REBOOT),
        ("reboot pending even before steady", facts(staged=NEW, steady_reported=False, reboot_requested=request()), State.UPDATE_FINALIZED, Action.AWAIT_REBOOT),
        ("rebooted before asking logind: decide again", facts(staged=NEW, boot_id="boot-2", reboot_requested=request(called=False)), State.UPDATE_STAGED, Action.FINALIZE),
        ("reboot expired: decide again", facts(staged=NEW, reboot_requested=request(at=NOW - REBOOT_GRACE_SECS)), State.UPDATE_STAGED, Action.FINALIZE),
        ("rebooted into it: steady next", facts(booted=NEW, steady_reported=False, reboot_requested=request()), State.INITIALIZED, Action.REPORT_STEADY),
    ],
)  # fmt: skip
def test_next_step(name: str, f: Facts, state: State, action: Action) -> None:
    step = next_step(f)
    assert (step.state, step.action) == (state, action), name
    assert step.reason and step.next


def test_pending_reboot_rechecks_at_grace_end() -> None:
    step = next_step(facts(staged=NEW, reboot_requested=request()))
    assert step.recheck_at == NOW - 10 + REBOOT_GRACE_SECS


def test_invalid_config_reason_says_no_reboot() -> None:
    step = next_step(facts(staged=NEW, config_valid=False))
    assert "configuration is invalid" in step.reason


@pytest.mark.parametrize(
    ("booted", "staged", "req", "boot_id", "outcome"),
    [
        (NEW, None, request(), BOOT, RebootOutcome.DONE),
        (NEW, None, request(), "boot-2", RebootOutcome.DONE),
        (OLD, NEW, request(), "boot-2", RebootOutcome.FAILED),
        (OLD, None, request(), "boot-2", RebootOutcome.FAILED),
        # The agent stopped between recording the request and asking logind; another reboot
        # followed: not a failed update.
        (OLD, None, request(called=False), "boot-2", RebootOutcome.ABANDONED),
        (OLD, NEW, request(called=False), "boot-2", RebootOutcome.ABANDONED),
        (NEW, None, request(called=False), "boot-2", RebootOutcome.DONE),
        (OLD, None, request(), BOOT, RebootOutcome.STALE),
        (OLD, Deployment("c" * 64, "40.3"), request(), BOOT, RebootOutcome.STALE),
        (OLD, NEW, request(), BOOT, RebootOutcome.PENDING),
        (OLD, NEW, request(called=False), BOOT, RebootOutcome.PENDING),
        (OLD, NEW, request(at=NOW - REBOOT_GRACE_SECS), BOOT, RebootOutcome.EXPIRED),
        (OLD, NEW, request(boot_id=""), "", RebootOutcome.PENDING),
    ],
)
def test_reconcile_reboot(
    booted: Deployment,
    staged: Deployment | None,
    req: RebootRequest,
    boot_id: str,
    outcome: RebootOutcome,
) -> None:
    assert reconcile_reboot(req, booted, staged, boot_id, NOW) is outcome


def g(**kw: object) -> Gate:
    base = Gate(
        force=False,
        allowed=True,
        strategy_reason="strategy immediate: always allows",
        strategy_recheck_at=None,
        can_reboot="yes",
        inhibitors=(),
        sessions=(),
        postponed_since=None,
        max_postpone_secs=600,
        warn_interactive=True,
        now=NOW,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "gi", "decision", "abort", "warn", "recheck"),
    [
        ("all clear", g(), Decision.REBOOT, False, False, None),
        ("strategy says no", g(allowed=False, can_reboot=None, strategy_recheck_at=NOW + 60), Decision.WAIT, False, False, NOW + 60),
        ("logind says no", g(can_reboot="no"), Decision.RETRY, True, False, None),
        ("logind challenge", g(can_reboot="challenge"), Decision.RETRY, True, False, None),
        ("block inhibitor", g(inhibitors=("backup (nightly)",)), Decision.WAIT_INHIBITOR, True, False, None),
        # Another user's inhibitor: logind answers polkit's reboot-ignore-inhibit verdict.
        ("inhibitor, logind challenge", g(can_reboot="challenge", inhibitors=("x",)), Decision.WAIT_INHIBITOR, True, False, None),
        ("inhibitor, logind no", g(can_reboot="no", inhibitors=("x",)), Decision.WAIT_INHIBITOR, True, False, None),
        ("inhibitor, reboot impossible", g(can_reboot="na", inhibitors=("x",)), Decision.RETRY, True, False, None),
        ("logind na", g(can_reboot="na"), Decision.RETRY, True, False, None),
        ("forced, inhibitor, challenge", g(force=True, can_reboot="challenge", inhibitors=("x",)), Decision.WAIT_INHIBITOR, False, False, None),
        ("inhibitor beats sessions", g(inhibitors=("x",), sessions=("alice",)), Decision.WAIT_INHIBITOR, True, False, None),
        ("sessions: warn and postpone", g(sessions=("alice (tty1)",)), Decision.POSTPONE, False, True, NOW + 600),
        ("sessions, no warning configured", g(sessions=("alice",), warn_interactive=False), Decision.POSTPONE, False, False, NOW + 600),
        ("still postponed", g(sessions=("alice",), postponed_since=NOW - 100), Decision.POSTPONE, False, False, NOW + 500),
        ("postponement expired", g(sessions=("alice",), postponed_since=NOW - 600), Decision.REBOOT, False, False, None),
        ("no postponement allowed", g(sessions=("alice",), max_postpone_secs=0), Decision.REBOOT, False, True, None),
        ("forced ignores strategy", g(force=True, allowed=False), Decision.REBOOT, False, False, None),
        ("forced ignores sessions but warns", g(force=True, sessions=("alice",)), Decision.REBOOT, False, True, None),
        ("forced respects inhibitors, no abort", g(force=True, inhibitors=("x",)), Decision.WAIT_INHIBITOR, False, False, None),
    ],
)  # fmt: skip
def test_gate(
    name: str, gi: Gate, decision: Decision, abort: bool, warn: bool, recheck: float | None
) -> None:
    r = gate(gi)
    assert (r.decision, r.abort, r.warn, r.recheck_at) == (decision, abort, warn, recheck), name
    assert r.reason


def test_gate_postponement_starts_once() -> None:
    assert gate(g(sessions=("alice",))).start_postponement
    assert not gate(g(sessions=("alice",), postponed_since=NOW - 1)).start_postponement


def test_gate_reasons_name_the_cause() -> None:
    assert "backup (nightly)" in gate(g(inhibitors=("backup (nightly)",))).reason
    assert "alice (tty1)" in gate(g(sessions=("alice (tty1)",))).reason
    assert "'no'" in gate(g(can_reboot="no")).reason
    assert gate(g(allowed=False, strategy_reason="outside window")).reason == "outside window"
