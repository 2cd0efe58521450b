"""Fast tier: the gate's pure decisions (verdict from results, what a record means after a
crash or a reboot) and the hook environment."""

from __future__ import annotations

import pytest

from zincati_py.health.gate import GateRecord, Move, Phase, Verdict, judge, reconcile
from zincati_py.health.hooks import environment
from zincati_py.health.run import Result


def r(kind: str, ok: bool, pending: bool = False) -> Result:
    return Result(f"{kind}-check", kind, ok, "detail", pending=pending)


@pytest.mark.parametrize(
    ("results", "now", "verdict"),
    [
        ([], 0, Verdict.PASSED),
        ([r("unit", True), r("required", True)], 0, Verdict.PASSED),
        ([r("unit", True), r("wanted", False)], 0, Verdict.PASSED),  # wanted only warns
        ([r("unit", False, pending=True)], 5, Verdict.WAITING),
        ([r("unit", False, pending=True)], 10, Verdict.FAILED),  # the health timeout
        ([r("unit", False, pending=True), r("required", False)], 5, Verdict.FAILED),
        ([r("boot-complete", False, pending=True)], 9.9, Verdict.WAITING),
    ],
)
def test_judge(results: list[Result], now: float, verdict: Verdict) -> None:
    assert judge(results, now, deadline=10)[0] is verdict


def test_timeout_reason_names_what_was_missing() -> None:
    verdict, why = judge([r("boot-complete", False, pending=True)], 11, 10)
    assert verdict is Verdict.FAILED and why.startswith("health timeout: boot-complete")


def rec(phase: Phase, boot: str = "b1", restarts: int = 0, verdict: str = "") -> GateRecord:
    return GateRecord(
        "NEW", "2", "OLD", "1", boot, 0.0, 10.0, phase=phase, restarts=restarts, verdict=verdict
    )


@pytest.mark.parametrize(
    ("record", "booted", "boot", "landed", "move"),
    [
        (None, "OLD", "b1", None, Move.NONE),  # nothing of ours booted
        (None, "NEW", "b1", "NEW", Move.START),
        (rec(Phase.REPORTED), "NEW", "b1", "NEW", Move.NONE),  # a crash before the request went
        (rec(Phase.REPORTED), "NEWER", "b2", "NEWER", Move.START),  # the next update
        (rec(Phase.GATE), "NEW", "b1", None, Move.NONE),  # a restart: the gate goes on
        (rec(Phase.GATE), "NEW", "b2", None, Move.RESTART),  # unplanned reboot: again
        (rec(Phase.GATE), "NEW", "", None, Move.NONE),  # boot id unknown: same boot
        (rec(Phase.GATE), "OLD", "b2", None, Move.ABANDON),  # someone else rolled back
        (rec(Phase.ROLLBACK), "NEW", "b1", None, Move.NONE),  # carry it out (still NEW)
        (rec(Phase.ROLLBACK), "NEW", "b2", None, Move.NONE),  # rebooted early: carry it out
        (rec(Phase.ROLLBACK), "OLD", "b2", None, Move.ROLLED_BACK),
        (rec(Phase.ROLLBACK), "OTHER", "b2", None, Move.ABANDON),
        (rec(Phase.ROLLED_BACK), "OLD", "b2", None, Move.NONE),  # report owed, stays
        (rec(Phase.PASSED), "NEW", "b2", None, Move.NONE),  # healthy: never rolled back
        # Review finding 4: booted again after an abandoned gate (an admin rolled back, then
        # forward again; or deployed it by hand): that boot was never judged: gate it.
        (rec(Phase.ABANDONED), "NEW", "b3", "NEW", Move.START),
        (rec(Phase.ABANDONED), "NEW", "", "NEW", Move.START),  # boot ids unknown: the same
        (rec(Phase.ABANDONED), "NEW", "b3", None, Move.NONE),  # not an update of ours
        (rec(Phase.ABANDONED), "OLD", "b3", None, Move.NONE),
        # A verdict stays: a healthy release rebooted later is not gated again, nor is a
        # failed one (deny-listed, reported) booted again.
        (rec(Phase.REPORTED, verdict="healthy"), "NEW", "b2", "NEW", Move.NONE),
        (rec(Phase.PASSED, verdict="healthy"), "NEW", "b2", "NEW", Move.NONE),
        (rec(Phase.REPORTED, verdict="failed"), "NEW", "b2", "NEW", Move.NONE),
        (rec(Phase.FAILED, verdict="failed"), "NEW", "b2", "NEW", Move.NONE),
        # Review finding 5: the gate's boots keep ending (panic, watchdog): the second such
        # boot fails the gate (then the rollback) instead of restarting it forever.
        (rec(Phase.GATE, restarts=1), "NEW", "b2", None, Move.FAIL),
        (rec(Phase.GATE, restarts=1), "NEW", "b2", "NEW", Move.FAIL),
        (rec(Phase.GATE, restarts=1), "NEW", "b1", None, Move.NONE),  # same boot: goes on
        (rec(Phase.GATE, restarts=5), "OLD", "b2", None, Move.ABANDON),
    ],
)
def test_reconcile(
    record: GateRecord | None, booted: str, boot: str, landed: str | None, move: Move
) -> None:
    assert reconcile(record, booted, boot, landed) is move


def test_record_round_trip_and_damage() -> None:
    g = rec(Phase.ROLLBACK)
    assert GateRecord.from_dict(g.as_dict()) == g
    assert GateRecord.from_dict({"phase": "gate"}) is None
    assert GateRecord.from_dict({**g.as_dict(), "phase": "bogus"}) is None
    assert GateRecord.from_dict("x") is None


def test_hook_environment_has_no_control_characters() -> None:
    env = environment("rolled-back", {"version": "2", "reason": "a\nb\x1bc"})
    assert env == [
        "ZINCATI_PY_EVENT=rolled-back",
        "ZINCATI_PY_VERSION=2",
        "ZINCATI_PY_FROM_VERSION=",
        "ZINCATI_PY_REASON=a b c",
        "ZINCATI_PY_WHEN=",
    ]


def test_a_deny_listed_staged_release_does_not_block_checks() -> None:
    from zincati_py.agent.machine import Action, Deployment, Facts, next_step

    def dep(checksum: str, **kw: bool) -> Deployment:
        return Deployment(checksum=checksum, version=checksum, **kw)

    facts = Facts(
        enabled=True,
        config_valid=True,
        booted=dep("old", booted=True),
        staged=dep("bad", staged=True),
        steady_reported=True,
        check_requested=False,
        reboot_requested=None,
        failed=("bad",),
        checked=True,
        boot_id="b",
        now=0.0,
    )
    assert next_step(facts).action is Action.NONE  # never finalized
    step = next_step(Facts(**{**facts.__dict__, "check_requested": True}))
    assert step.action is Action.CHECK and "deny-listed" in step.reason


def test_generator_renders_the_hook_template(tmp_path: object) -> None:
    from pathlib import Path

    from zincati_py.config import load
    from zincati_py.generator import render

    root = Path(str(tmp_path))
    frag = root / "etc/zincati/config.d/50-hooks.toml"
    frag.parent.mkdir(parents=True)
    frag.write_text(
        "[agent.hooks]\n"
        "commands = [\"/usr/bin/notify --text '50% of $HOME'\", '/bin/false']\n"
        "timeout_secs = 7\n"
    )
    units = render(load(root).config, root=root).units
    text = units["zincati-py-hook@.service"]
    assert "User=zincati-py\n" in text and "TimeoutStartSec=7s\n" in text
    loader = '/bin/sh -c "set -a; . \\"$$0\\" || exit 1; set +a; exec \\"$$@\\""'
    env = f"{root}/run/zincati-py/hooks/%i.env"
    assert f'ExecStart=-{loader} {env} /usr/bin/notify --text "50%% of $$HOME"\n' in text
    assert f"ExecStart=-{loader} {env} /bin/false\n" in text
    # No hooks, no unit: every existing configuration renders as before.
    frag.unlink()
    assert "zincati-py-hook@.service" not in render(load(root).config, root=root).units
