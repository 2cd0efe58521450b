"""Faults injected into a running fleet (the demo's orchestration, testbed/demo.py).

Each test ends with the same verdict the demo gives: every node on the newest version,
exactly one reboot each, never two nodes rebooting at a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from testbed.demo import (
    GROUP,
    NEW_VERSION,
    Event,
    Fleet,
    Node,
    Summary,
)
from testbed.logind import add_session
from testbed.proc import zincati_py_argv

# A node that takes the slot finds a logged-in user, warns and postpones its reboot by this
# much while holding the slot: the moment the faults below aim at.
POSTPONE = "[agent.reboot]\nmax_postpone_secs = 3\n"


async def first(fleet: Fleet, pred: Callable[[Event], bool], timeout: float) -> Event:
    """The earliest event matching ``pred``, whether it already happened or not."""
    seen = [e for e in fleet.events if pred(e)]
    if seen:
        return seen[0]
    return await fleet.wait_event(pred, timeout)


def assert_rollout_ok(summary: Summary) -> None:
    assert summary.ok, summary.to_json()
    for n in summary.nodes:
        assert n.to_version == NEW_VERSION and n.reboots == 1 and n.reboot_calls == 1, n
    assert summary.max_concurrent_holders == 1


def test_agent_killed_holding_the_slot_lease_frees_it_then_it_recovers(
    fleet_run: Callable[..., Any],
) -> None:
    async def scenario(fleet: Fleet) -> tuple[Summary, dict[str, Any]]:
        for n in fleet.nodes:
            await add_session(n.watch_bus, "c1", tty="tty1")
        taken = await first(fleet, lambda e: e.kind == "slot_taken", 40)
        victim = fleet.node(str(taken.node))
        await fleet.kill_agent(victim, "test: SIGKILL while holding the reboot slot")
        killed_at = fleet.now()
        assert victim.node_id in fleet.holders and not victim.reboot_calls
        # Dead, it never renews: the lease expires and the others go ahead without it.
        freed = await fleet.wait_event(
            lambda e: e.kind == "slot_released" and e.node == victim.name, 20
        )
        others = [n for n in fleet.nodes if n is not victim]
        for n in others:
            await first(fleet, lambda e, n=n: e.kind == "steady" and e.node == n.name, 40)
        assert not victim.reboot_calls and victim.booted_version != NEW_VERSION
        # Restarted, it resumes: takes the slot, reboots once, reports steady.
        await fleet.start_agent(victim)
        summary = await fleet.run(timeout=40)
        facts = {
            "killed_at": killed_at,
            "freed_at": freed.t,
            "freed_expired": freed.data["expired"],
            "next_taken": [e.t for e in fleet.find("slot_taken") if e.node != victim.name],
            "lock_log": fleet.lock_log.read_text(),
            "victim_id": victim.node_id,
            "victim_reboot": victim.reboot_calls[0],
            "others_steady": [n.steady_at for n in others],
        }
        return summary, facts

    summary, facts = fleet_run(scenario, fragments={"60-reboot.toml": POSTPONE})
    assert_rollout_ok(summary)
    # The slot was freed by lease expiry (the server says so), not by the dead agent.
    assert facts["freed_expired"] is True
    assert f"lease of {facts['victim_id']} in group {GROUP} expired" in facts["lock_log"]
    assert facts["freed_at"] > facts["killed_at"] + 1.0
    assert min(facts["next_taken"]) >= facts["freed_at"] - 0.5
    # The victim rebooted only after both others were done.
    assert facts["victim_reboot"] > max(facts["others_steady"])


def test_agent_killed_holding_the_slot_and_restarted_recovers(
    fleet_run: Callable[..., Any],
) -> None:
    async def scenario(fleet: Fleet) -> tuple[Summary, dict[str, Any]]:
        for n in fleet.nodes:
            await add_session(n.watch_bus, "c1", tty="tty1")
        taken = await first(fleet, lambda e: e.kind == "slot_taken", 40)
        victim = fleet.node(str(taken.node))
        await fleet.kill_agent(victim, "test: SIGKILL while holding the reboot slot")
        await fleet.start_agent(victim)
        summary = await fleet.run(timeout=60)
        released = [e for e in fleet.find("slot_released") if e.node == victim.name]
        return summary, {
            "released": [(e.t, e.data["expired"]) for e in released],
            "lock_log": fleet.lock_log.read_text(),
            "victim_id": victim.node_id,
        }

    summary, facts = fleet_run(scenario, fragments={"60-reboot.toml": POSTPONE})
    assert_rollout_ok(summary)
    # The restarted agent dealt with the slot itself (today, like Zincati, it reports steady
    # state on start, releasing it, and queues again): the fleet never waited for the lease.
    assert facts["released"] and not any(expired for _, expired in facts["released"])
    assert f"lease of {facts['victim_id']}" not in facts["lock_log"]


def test_lock_server_killed_mid_rollout_fleet_pauses_then_continues(
    fleet_run: Callable[..., Any],
) -> None:
    async def scenario(fleet: Fleet) -> tuple[Summary, dict[str, Any]]:
        # A hook runs inside the event's dispatch: the server dies right at the first reboot
        # call, while that node holds the slot and before anything else happens.
        kills: list[asyncio.Task[None]] = []

        def at_first_reboot(e: Event) -> None:
            if e.kind == "reboot_call" and not kills:
                kills.append(asyncio.get_running_loop().create_task(fleet.kill_lock_server()))

        fleet.hooks.append(at_first_reboot)
        call = await fleet.wait_event(lambda e: e.kind == "reboot_call", 40)
        holder = fleet.node(str(call.node))
        await kills[0]
        # It held the slot when the server died: the server's own log says so (the demo's
        # admin-API view is a poll, which a grant 100 ms before the kill may not have reached).
        granted = f"slot in group {GROUP} granted to {holder.node_id}"
        assert granted in fleet.lock_log.read_text().replace("-", "").lower()
        # The rebooted node's new agent is up but cannot report steady state (so cannot
        # release the slot) ...
        await first(
            fleet,
            lambda e: e.kind == "agent_ready" and e.node == holder.name and e.data["boot"] == 2,
            20,
        )
        calls_before = len(fleet.find("reboot_call"))
        # ... and the fleet pauses: nobody else may reboot while the server is down.
        await asyncio.sleep(2.5)
        paused = {
            "calls": len(fleet.find("reboot_call")) - calls_before,
            "holder_steady": holder.steady_at,
            "holder_status": dict(holder.doc or {}),
        }
        restarted_at = fleet.now()
        await fleet.start_lock_server()
        summary = await fleet.run(timeout=60)
        log = fleet.lock_log.read_text()
        return summary, {
            **paused,
            "log_after_restart": log.split("FleetLock server listening", 2)[-1],
            "holder_id": holder.node_id,
            "holder_steady_after": holder.steady_at,
            "restarted_at": restarted_at,
        }

    summary, facts = fleet_run(scenario)
    assert facts["calls"] == 0 and facts["holder_steady"] is None
    assert facts["holder_status"]["state"] == "initialized", facts["holder_status"]
    assert "steady" in facts["holder_status"]["reason"], facts["holder_status"]
    # Nothing lost: the restarted server still had the holder recorded, which released it.
    assert f"slot in group {GROUP} released by {facts['holder_id']}" in facts["log_after_restart"]
    assert facts["holder_steady_after"] > facts["restarted_at"]
    assert_rollout_ok(summary)


def test_broken_fragment_mid_run_keeps_last_good_config_and_says_so_then_a_fix_applies(
    fleet_run: Callable[..., Any],
) -> None:
    def check_timer(node: Node) -> str:
        return (node.manager.generator_output / "zincati-py-check.timer").read_text()

    async def scenario(fleet: Fleet) -> tuple[Summary, dict[str, Any], Event, Event, str]:
        for n in fleet.nodes:
            await first(fleet, lambda e, n=n: e.kind == "staged" and e.node == n.name, 30)
        victim = fleet.nodes[1]
        victim.write_config("99-broken.toml", "[updates\nstrategy = \n")
        event = await fleet.wait_event(lambda e: e.kind == "config" and e.node == victim.name, 15)
        status = await asyncio.to_thread(
            subprocess.run,
            [*zincati_py_argv(), "status", "--root", str(victim.root), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert "OnUnitActiveSec=2s" in check_timer(victim)
        # Fixed (and changed): applies without restart; the agent asks the node's manager to
        # reload, and the generator re-renders the check timer from the new config.
        victim.write_config("99-broken.toml", "[agent.timing]\nsteady_interval_secs = 3\n")
        fixed = await fleet.wait_event(lambda e: e.kind == "config" and e.node == victim.name, 15)
        await first(fleet, lambda e: e.kind == "systemd_reloaded" and e.node == victim.name, 15)
        rendered = check_timer(victim)
        summary = await fleet.run()
        return summary, json.loads(status.stdout), event, fixed, rendered

    summary, doc, event, fixed, rendered = fleet_run(scenario)
    assert event.data["valid"] is False
    config = doc["config"]
    assert config["valid"] is False
    assert config["in_force"] == "last good configuration"
    assert any("99-broken.toml" in p for p in config["problems"]), config
    assert doc["agent_running"] is True
    assert fixed.data["valid"] is True and fixed.data["in_force"] == "configuration on disk"
    assert "OnUnitActiveSec=3s" in rendered
    # The last good config (periodic + fleet_lock) kept governing that node's reboot.
    assert_rollout_ok(summary)


def test_overall_timeout_fails_with_what_is_still_pending(fleet_run: Callable[..., Any]) -> None:
    async def scenario(fleet: Fleet) -> Summary:
        # The window opens 12 s after the start: 3 s is too short for anything to finish.
        return await fleet.run(timeout=3)

    summary = fleet_run(scenario, nodes=1)
    assert not summary.ok
    assert summary.reason.startswith("timed out after 3s")
    (pending,) = summary.pending
    assert pending.startswith("node1: booted 40.20251102.3.0")
    (node,) = summary.nodes
    assert node.reboots == 0 and node.reboot_calls == 0


def test_an_agent_dying_on_its_own_fails_the_run_at_once(fleet_run: Callable[..., Any]) -> None:
    async def scenario(fleet: Fleet) -> tuple[Summary, float]:
        agent = fleet.nodes[0].agent
        assert agent is not None
        os.kill(agent.pid, signal.SIGKILL)  # not through the fleet: nobody expects this exit
        started = fleet.now()
        summary = await fleet.run(timeout=30)
        return summary, fleet.now() - started

    summary, took = fleet_run(scenario, nodes=1)
    assert not summary.ok
    assert "node1: the agent exited unexpectedly with -9" in summary.reason
    assert took < 5
