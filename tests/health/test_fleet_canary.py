"""A fleet of five sandboxed nodes and our lock server (one slot, ``max_failures = 1``): a
release that fails its health check on the first node to take it (the canary) is rolled back
there, the server halts that version and the other four never reboot into it; then a good
release rolls through all five, each reporting healthy."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.agent.agent_harness import ZPY, Node, wait_for
from tests.health.test_gate_agent import gate, reboots, required

OLD, BAD, GOOD = "40.20240101.3.0", "40.20240115.3.0", "40.20240129.3.0"


def test_canary_rolls_back_server_halts_then_a_good_release_rolls_through(
    fleet_factory: Callable[..., Node], tmp_path: Path
) -> None:
    from testbed.etcd import free_port

    port = free_port()
    conf = tmp_path / "fleetlock.toml"
    conf.write_text(
        f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{tmp_path / "locks.db"}"\n'
        "default_slots = 1\nmax_failures = 1\n"
    )
    with (tmp_path / "fleetlock.log").open("wb") as log:
        server = subprocess.Popen(
            [*ZPY, "fleetlock", "serve", "--config", str(conf)], stdout=log, stderr=log
        )
    try:
        script = {
            "osname": "fedora-coreos",
            "booted": {"version": OLD},
            "releases": [{"version": BAD}, {"version": GOOD}],
            "transaction_delay": 0.02,
        }
        nodes = [fleet_factory(f"node{i}", script) for i in range(5)]
        agents = []
        for i, n in enumerate(nodes):
            n.write_config(
                "40-fleet.toml",
                f'[identity]\nnode_uuid = "{i + 1:032x}"\n'
                "[agent.timing]\nsteady_interval_secs = 2\n"
                '[updates]\nstrategy = "fleet_lock"\n'
                f'[updates.fleet_lock]\nbase_url = "http://127.0.0.1:{port}"\n',
            )
            # The release is bad everywhere: whichever node takes it first is the canary.
            required(n, "10-app", f'test "$ZINCATI_PY_VERSION" != "{BAD}" || exit 1')
            agents.append(n.agent())
        for n, a in zip(nodes, agents, strict=True):
            n.wait_state("reported steady", agent=a, timeout=30)
        canary, rest = nodes[0], nodes[1:]

        def check(n: Node) -> None:
            assert n.cli("check", "--system-bus", n.bus.address).returncode == 0

        for n in nodes:
            n.control("PublishRelease", "s", BAD)
        check(canary)
        wait_for(lambda: reboots(canary) == 2, 30, "canary: update reboot and rollback reboot")
        canary.wait_state("reported steady", booted=OLD, timeout=30)
        wait_for(lambda: gate(canary).get("phase") == "reported", 15, "canary's report")
        assert gate(canary)["verdict"] == "failed"
        # The version is halted: the others stage it but are refused the slot.
        for n in rest:
            check(n)

        def refused(n: Node) -> bool:
            doc = n.status() or {}
            return (doc.get("strategy") or {}).get(
                "halted_version"
            ) == BAD and "deny-listed" in str(doc.get("reason"))

        for n in rest:
            try:
                wait_for(lambda n=n: refused(n), 20, f"{n.root}: rollout_halted")  # type: ignore[misc]
            except AssertionError:
                raise AssertionError(
                    f"{n.status()}\n{(tmp_path / 'fleetlock.log').read_text()[-3000:]}\n"
                    + n.agents[0].log()[-4000:]
                ) from None
        time.sleep(2.0)
        assert [reboots(n) for n in rest] == [0, 0, 0, 0]
        assert all(n.booted_version() == OLD for n in rest)
        assert all((n.status() or {})["staged"]["version"] == BAD for n in rest)
        # A good release: the next check stages it (replacing the halted one on the four:
        # a halted staged release does not block checks), and it rolls through all five.
        for n in nodes:
            n.control("PublishRelease", "s", GOOD)
            check(n)
        for n in nodes:
            doc = n.wait_state("reported steady", booted=GOOD, timeout=60)
            assert doc["health"]["verdict"] == "healthy", doc["health"]
        assert [reboots(n) for n in nodes] == [3, 1, 1, 1, 1]
        assert all(n.booted_version() == GOOD for n in nodes)
    finally:
        server.terminate()
        server.wait(10)


def test_a_halted_release_resumed_by_an_admin_is_taken_at_the_next_check(
    fleet_factory: Callable[..., Node], tmp_path: Path
) -> None:
    # The halt a node heard at its last pre-reboot was kept in the strategy's memory, and a
    # halted release is never finalized: after an admin lifted the halt on the server the
    # node noticed only when its agent restarted. A check request now asks the server again.
    from testbed.etcd import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    conf = tmp_path / "fleetlock.toml"
    conf.write_text(
        f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{tmp_path / "locks.db"}"\n'
        "default_slots = 1\nmax_failures = 1\n"
    )
    with (tmp_path / "fleetlock.log").open("wb") as log:
        server = subprocess.Popen(
            [*ZPY, "fleetlock", "serve", "--config", str(conf)], stdout=log, stderr=log
        )
    try:
        script = {
            "osname": "fedora-coreos",
            "booted": {"version": OLD},
            "releases": [{"version": BAD}],
            "transaction_delay": 0.02,
        }
        nodes = [fleet_factory(f"node{i}", script) for i in range(2)]
        for i, n in enumerate(nodes):
            n.write_config(
                "40-fleet.toml",
                f'[identity]\nnode_uuid = "{i + 1:032x}"\n'
                "[agent.timing]\nsteady_interval_secs = 2\n"
                '[updates]\nstrategy = "fleet_lock"\n'
                f'[updates.fleet_lock]\nbase_url = "{url}"\n',
            )
        canary, other = nodes
        # Only the canary is unhealthy on BAD (its own trouble, the admin decides).
        required(canary, "10-app", f'test "$ZINCATI_PY_VERSION" != "{BAD}" || exit 1')
        agents = [n.agent() for n in nodes]
        for n, a in zip(nodes, agents, strict=True):
            n.wait_state("reported steady", agent=a, timeout=30)

        def check(n: Node) -> None:
            assert n.cli("check", "--system-bus", n.bus.address).returncode == 0

        for n in nodes:
            n.control("PublishRelease", "s", BAD)
        check(canary)
        wait_for(lambda: reboots(canary) == 2, 30, "canary: update reboot and rollback reboot")
        wait_for(lambda: gate(canary).get("phase") == "reported", 30, "canary's report")
        check(other)
        halted = lambda: ((other.status() or {}).get("strategy") or {}).get("halted_version")  # noqa: E731
        wait_for(lambda: halted() == BAD, 20, "other: rollout_halted")
        assert reboots(other) == 0
        out = subprocess.run(
            (
                *ZPY,
                "fleetlock",
                "resume-version",
                "--url",
                url,
                "--group",
                "default",
                "--version",
                BAD,
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        check(other)  # as the check timer does: no agent restart
        try:
            doc = other.wait_state("reported steady", booted=BAD, timeout=30)
        except AssertionError:
            raise AssertionError((tmp_path / "fleetlock.log").read_text()[-3000:]) from None
        assert doc["health"]["verdict"] == "healthy" and reboots(other) == 1
        assert "asking the lock server again about halted" in agents[1].log()
    finally:
        server.terminate()
        server.wait(10)
