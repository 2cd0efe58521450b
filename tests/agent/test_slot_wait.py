"""Waiting for a fleet-lock slot never blocks the agent's other work.

The ``fleet_lock`` strategy's ``pre-reboot`` may be held by our lock server for up to
``lock_wait_secs`` (30 s) while the group is full. Each test parks a node's agent in that wait
(another node holds the only slot) and checks that RebootNow, a configuration change and
SIGTERM take effect at once, and that the node still gets its slot once it frees. The real
agent, the real lock server over loopback; nothing mocked.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.lockserver import LockServerProcess
from tests.agent.agent_harness import AGENT_BUS_NAME, Node, dbus_call, wait_for
from zincati_py.fleetlock.client import FleetLockClient

NEW = "40.20240115.3.0"
OTHER = "fedcba9876543210fedcba9876543210"
NODE = "0123456789abcdef0123456789abcdef"
# "At once": generous for a shared 2-core machine, far below the 30 s long poll.
PROMPT_SECS = 2.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LockServerProcess]:
    from testbed.etcd import free_port

    port = free_port()
    conf = tmp_path / "fleetlock.toml"
    conf.write_text(
        f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{tmp_path / "locks.db"}"\n'
        "default_slots = 1\n"
    )
    s = LockServerProcess(conf, port, tmp_path / "fleetlock.log").start()
    yield s
    s.stop()


def other(server: LockServerProcess, op: Callable[[FleetLockClient], Any]) -> None:
    """``op`` as the other node, which takes or frees the group's only slot."""

    async def go() -> None:
        client = FleetLockClient(server.url, OTHER, "default")
        try:
            await op(client)
        finally:
            await client.close()

    asyncio.run(go())


def group(server: LockServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "v1/groups/default", timeout=5) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def reboots(node: Node) -> int:
    return len(node.logind_calls("Reboot")) + len(node.logind_calls("RebootWithFlags"))


def waiting(node: Node, server: LockServerProcess) -> Any:
    """The agent (pid as published) is parked in a pre-reboot held by the server."""
    node.wait_state("update staged", timeout=15)
    return wait_for(lambda: group(server)["waiting_here"] == 1, 15, "the node's long poll")


def park(node: Node, server: LockServerProcess) -> Any:
    """Start the node's agent and leave it waiting for the slot the other node holds."""
    node.write_config(
        "40-fleet.toml",
        f'[identity]\nnode_uuid = "{NODE}"\n[agent.timing]\nsteady_interval_secs = 2\n'
        f'[updates]\nstrategy = "fleet_lock"\n[updates.fleet_lock]\nbase_url = "{server.url}"\n',
    )
    other(server, lambda c: c.pre_reboot())
    agent = node.agent()
    node.wait_state("reported steady", agent=agent, timeout=20)
    node.control("Stage", "sb", NEW, True)
    waiting(node, server)
    time.sleep(0.3)  # well inside the wait, not at its start
    assert reboots(node) == 0
    return agent


def test_reboot_now_while_waiting_for_a_slot(node: Node, server: LockServerProcess) -> None:
    agent = park(node, server)
    t0 = time.monotonic()
    answer = dbus_call(
        node.bus.address,
        AGENT_BUS_NAME,
        "/io/github/zincatipy/Agent1",
        "io.github.zincatipy.Agent1",
        "RebootNow",
        timeout=40,
    )
    elapsed = time.monotonic() - t0
    assert answer == [f"rebooting into {NEW}"] or NEW in answer[0], answer
    assert elapsed < PROMPT_SECS, f"RebootNow answered after {elapsed:.1f} s"
    assert reboots(node) == 1
    # Booted into the update, the steady-state report takes the node out of the queue: the
    # interrupted wait left no slot and no queue entry behind.
    node.wait_state("reported steady", agent=agent, booted=NEW, timeout=20)
    doc = group(server)
    assert [h["id"] for h in doc["holders"]] == [OTHER]
    assert doc["queue"] == []
    assert "RebootNow: the strategy's wait is interrupted" in agent.log()


def test_config_change_while_waiting_then_slot_granted(
    node: Node, server: LockServerProcess
) -> None:
    agent = park(node, server)
    t0 = time.monotonic()
    node.write_config("50-off.toml", "[updates]\nenabled = false\n")
    node.wait_state("disabled", agent=agent, timeout=30)
    elapsed = time.monotonic() - t0
    assert elapsed < PROMPT_SECS, f"configuration applied after {elapsed:.1f} s"
    (node.config_dir / "50-off.toml").unlink()
    # Enabled again: the node asks again and waits (its place in the queue was kept).
    waiting(node, server)
    # A wake (as the timers send) interrupts the wait too; the node asks again.
    r = node.cli("wake", "window", "--system-bus", node.bus.address)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "wake requested: window" in agent.log(), 5, "wake logged")
    waiting(node, server)
    assert reboots(node) == 0
    # The other node's slot frees: the waiting request is answered, the node reboots.
    t_freed = time.monotonic()
    other(server, lambda c: c.steady_state())
    wait_for(lambda: reboots(node) == 1, 15, "the node gets the slot and reboots")
    assert time.monotonic() - t_freed < 10
    assert "reboot slot granted" in agent.log()
    assert "configuration changed: the strategy's wait is interrupted" in agent.log()


def test_sigterm_while_waiting_for_a_slot(node: Node, server: LockServerProcess) -> None:
    agent = park(node, server)
    t0 = time.monotonic()
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(40) == 0
    elapsed = time.monotonic() - t0
    assert elapsed < PROMPT_SECS, f"stopped after {elapsed:.1f} s"
    assert (node.status() or {}).get("state") == "end"
    assert reboots(node) == 0
    assert "stopping: the strategy's wait is interrupted" in agent.log()


# -- the strategy's bookkeeping when its wait is given up (as the agent does above) ----------


def strategy_for(tmp_path: Path, url: str) -> Any:
    """The fleet_lock strategy of a node whose config says ``url`` (retry cap 2 s)."""
    from zincati_py.config import load
    from zincati_py.strategy import StrategyContext, build

    conf = tmp_path / "node/etc/zincati/config.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "40-fleet.toml").write_text(
        f'[identity]\nnode_uuid = "{NODE}"\n[agent.timing]\nsteady_interval_secs = 2\n'
        f'[updates]\nstrategy = "fleet_lock"\n[updates.fleet_lock]\nbase_url = "{url}"\n'
    )
    result = load(tmp_path / "node")
    assert result.ok, [str(p) for p in result.problems]
    return build(StrategyContext(result.config, result.paths, lambda why: None))


async def parked(s: Any, server: LockServerProcess) -> asyncio.Task[Any]:
    """``s.can_finalize`` running and held by the server (bounded wait)."""
    from datetime import UTC, datetime

    task = asyncio.get_running_loop().create_task(s.can_finalize(datetime.now(UTC)))
    deadline = time.monotonic() + 10
    while (await asyncio.to_thread(group, server))["waiting_here"] < 1:
        assert not task.done(), task
        assert time.monotonic() < deadline, "the ask was not held by the server"
        await asyncio.sleep(0.05)
    return task


async def give_up(task: asyncio.Task[Any]) -> None:
    task.cancel()
    try:
        await asyncio.wait_for(task, 2)
    except asyncio.CancelledError:
        return
    raise AssertionError(f"the ask ended otherwise: {task}")


def test_given_up_ask_keeps_the_queue_place_and_gets_the_slot(
    tmp_path: Path, server: LockServerProcess
) -> None:
    from datetime import UTC, datetime

    other(server, lambda c: c.pre_reboot())

    async def scenario() -> None:
        s = strategy_for(tmp_path, server.url)
        await s.start()
        try:
            await give_up(await parked(s, server))
            st = s.status()
            assert st["holds_slot"] is False and st["release_pending"] is False
            assert [w["id"] for w in group(server)["queue"]] == [NODE]
            # Asked again, and the slot frees: the held request is answered at once.
            task = await parked(s, server)
            t0 = time.monotonic()
            await asyncio.to_thread(other, server, lambda c: c.steady_state())
            verdict = await asyncio.wait_for(task, 10)
            assert verdict.allowed, verdict.reason
            assert time.monotonic() - t0 < PROMPT_SECS
            assert s.status()["holds_slot"] is True
            assert [h["id"] for h in group(server)["holders"]] == [NODE]
            # A re-ask given up while the slot is held (and its lease renewed) changes
            # nothing: still held, renewal armed, no release.
            again = asyncio.get_running_loop().create_task(s.can_finalize(datetime.now(UTC)))
            await asyncio.sleep(0)
            await give_up(again)
            st = s.status()
            assert st["holds_slot"] is True and st["release_pending"] is False
            assert s._renewal is not None and not s._renewal.done()
            assert [h["id"] for h in group(server)["holders"]] == [NODE]
        finally:
            await s.stop()

    asyncio.run(scenario())


def test_given_up_ask_owes_the_release_it_replaced(
    tmp_path: Path, server: LockServerProcess
) -> None:
    other(server, lambda c: c.pre_reboot())

    async def scenario() -> None:
        s = strategy_for(tmp_path, server.url)
        s.lock_wait_secs = 0  # the first ask: refused at once (queued)
        await s.start()
        try:
            from datetime import UTC, datetime

            assert not (await s.can_finalize(datetime.now(UTC))).allowed
            # The reboot will not happen, and the lock server is unreachable: the release
            # is retried in the background...
            await asyncio.to_thread(server.stop)
            await s.abort()
            assert s.status()["release_pending"] is True
            await asyncio.to_thread(server.start)
            # ... until the slot is wanted again; that ask is given up (the agent had other
            # work) before an answer: the release is owed again, and carried out.
            s.lock_wait_secs = 30
            await give_up(await parked(s, server))
            assert s.status()["release_pending"] is True
            deadline = time.monotonic() + 10
            while s.status()["release_pending"]:
                assert time.monotonic() < deadline, "the release was not retried"
                await asyncio.sleep(0.1)
            assert (await asyncio.to_thread(group, server))["queue"] == []
        finally:
            await s.stop()

    asyncio.run(scenario())
