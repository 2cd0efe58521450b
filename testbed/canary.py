"""``zincati-py demo --canary``: a fleet stops a bad release after its canary (issue 16).

Five sandboxed nodes (each its own private system bus, rpm-ostree double, dbusmock logind and
``zincati-py agent``, as in ``testbed/demo.py``; a reboot is the double's, on logind's
``Reboot``), one ``zincati-py fleetlock serve`` (SQLite, one slot, ``max_failures = 1``) and
one Cincinnati graph server double (``testbed/cincinnati.py``) that every node's ``[cincinnati]
base_url`` points at: publishing a release makes its commit available to the rpm-ostree doubles
and adds it to the update graph (edges from every older release).
Every node has the same ``health.d/required.d`` check, which fails on :data:`BAD`:

1. :data:`BAD` is published and the first node checks (the canary): it stages, takes the slot,
   reboots, its health gate fails, it rolls back through rpm-ostree and reboots again, and its
   steady-state report (``health = "failed"``) makes the server halt :data:`BAD`;
2. the other four check, stage :data:`BAD` and are refused the slot (``rollout_halted``):
   none of them reboots;
3. :data:`GOOD` is published and every node checks: it replaces the halted release and rolls
   through all five, one at a time, each reporting ``healthy``.

Only our production programs run (agent, lock server, CLI); every wait is bounded; everything
is torn down. Exit status 0 when the story held, 1 otherwise (the reason is printed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.bus import PrivateBus
from testbed.cincinnati import GraphRelease, GraphServer
from testbed.logind import LogindDouble
from testbed.proc import agent_argv, zincati_py_argv
from testbed.rpmostree import RpmOstreeDouble
from testbed.systemd import UserManager

OLD, BAD, GOOD = "40.20251102.3.0", "40.20251116.3.0", "40.20251130.3.0"
NODES = 5


class Story(Exception):
    """The fleet did not do what the story says."""


class CanaryNode:
    def __init__(self, base: Path, index: int, lock_url: str, graph_url: str) -> None:
        self.name = f"node{index}"
        self.dir = base / self.name
        self.dir.mkdir()
        self.bus = PrivateBus("system", self.dir / "bus").start()
        script = {
            "osname": "fedora-coreos",
            "booted": {"version": OLD},
            "releases": [{"version": BAD}, {"version": GOOD}],
            "transaction_delay": 0.05,
        }
        self.double = RpmOstreeDouble(self.bus.address, self.dir / "root", script, idle_timeout=0)
        self.double.start()
        self.root = self.double.root
        self.logind = LogindDouble(self.bus.address, self.dir / "logind.log").start()
        # Its systemd (boot-complete.target reached, as on a booted host): the health gate
        # assesses each boot there.
        self.manager = UserManager(directory=self.dir / "systemd").start()
        config = self.root / "etc/zincati/config.d/50-canary.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f'[identity]\nnode_uuid = "{index:032x}"\n'
            "[agent.timing]\nsteady_interval_secs = 2\n"
            '[updates]\nstrategy = "fleet_lock"\n'
            f'[updates.fleet_lock]\nbase_url = "{lock_url}"\n'
            f'[cincinnati]\nbase_url = "{graph_url}"\n'
        )
        # The platform the graph is asked for (``ignition.platform.id``), as on a real host.
        (self.root / "proc").mkdir(parents=True, exist_ok=True)
        (self.root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz ignition.platform.id=qemu\n")
        check = self.root / "etc/zincati-py/health.d/required.d/10-app"
        check.parent.mkdir(parents=True, exist_ok=True)
        check.write_text(
            "#!/bin/sh\n# The application does not start on BAD.\n"
            f'if [ "$ZINCATI_PY_VERSION" = "{BAD}" ]; then echo "app: crash loop"; exit 1; fi\n'
            'echo "app: serving"\n'
        )
        check.chmod(0o755)
        self.env = {
            **os.environ,
            "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address,
            "ZINCATI_PY_SYSTEMD_BUS": self.manager.bus_address,
        }
        self.log = (self.dir / "agent.log").open("ab")
        self.agent = subprocess.Popen(
            agent_argv(self.root, self.bus.address, self.double.ostree_command),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.root / "run/zincati-py/status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def booted(self) -> str:
        return str((self.status().get("booted") or {}).get("version"))

    def reboots(self) -> int:
        try:
            state = json.loads((self.root / "var/lib/rpmostree-double/state.json").read_text())
        except (OSError, ValueError):
            return 0
        return int(state.get("reboots", 0))

    def publish(self, version: str) -> None:
        self._busctl("PublishRelease", "s", version)

    def _busctl(self, member: str, signature: str, *args: str) -> None:
        subprocess.run(
            ["busctl", f"--address={self.bus.address}", "call", "org.projectatomic.rpmostree1",
             "/io/github/zincatipy/Test/RpmOstree", "io.github.zincatipy.Test.RpmOstree",
             member, signature, *args],
            check=True, capture_output=True, timeout=15,
        )  # fmt: skip

    def check(self) -> None:
        subprocess.run(
            [*zincati_py_argv(), "check", "--system-bus", self.bus.address],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=30,
        )

    def stop(self) -> None:
        if self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.log.close()
        for thing in (self.logind, self.double, self.manager, self.bus):
            try:
                thing.stop()
            except Exception as exc:  # teardown goes on
                print(f"  teardown {self.name}: {exc}", file=sys.stderr)


class Canary:
    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="zpy-canary-"))
        self.nodes: list[CanaryNode] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.graph: GraphServer | None = None

    def say(self, text: str) -> None:
        self.out(f"{time.monotonic() - self.t0:6.1f}s  {text}")

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise Story(f"timed out after {timeout:.0f} s waiting for {what}")
            for n in self.nodes:
                if n.agent.poll() is not None:
                    raise Story(f"{n.name}: agent exited ({n.agent.returncode}), see {n.dir}")
            time.sleep(0.1)

    def start(self) -> None:
        from testbed.etcd import free_port

        port = free_port()
        conf = self.dir / "fleetlock.toml"
        conf.write_text(
            f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{self.dir / "locks.db"}"\n'
            "default_slots = 1\nmax_failures = 1\n"
        )
        with (self.dir / "fleetlock.log").open("ab") as log:
            self.server = subprocess.Popen(
                [*zincati_py_argv(), "fleetlock", "serve", "--config", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.say(f"lock server on 127.0.0.1:{port}: 1 slot, a version halts after 1 failure")
        url = f"http://127.0.0.1:{port}/"
        self.graph = GraphServer([GraphRelease(OLD)]).start()
        self.say(f"Cincinnati graph server double on {self.graph.base_url} (graph: {OLD})")
        for i in range(1, NODES + 1):
            self.nodes.append(CanaryNode(self.dir, i, url, self.graph.base_url))
        self.wait("every agent steady", lambda: all(
            n.status().get("state") == "reported steady" for n in self.nodes))  # fmt: skip
        self.say(f"{NODES} nodes steady on {OLD}; each runs health.d/required.d/10-app")

    def run(self) -> None:
        canary, rest = self.nodes[0], self.nodes[1:]
        self.publish(BAD)
        self.say(f"release {BAD} published to the update graph; {canary.name} checks first "
                 "(the canary)")  # fmt: skip
        canary.check()
        self.wait(f"{canary.name} rebooting into {BAD}", lambda: canary.reboots() >= 1)
        self.say(f"{canary.name}: slot taken, rebooted into {BAD}; health gate running")
        self.wait(f"{canary.name} rolled back", lambda: canary.reboots() >= 2)
        self.wait(f"{canary.name} steady on {OLD}", lambda: canary.booted() == OLD
                  and canary.status().get("state") == "reported steady")  # fmt: skip
        health = canary.status().get("health") or {}
        self.say(f"{canary.name}: gate FAILED ({health.get('reason')}); rolled back to {OLD}, "
                 f"{BAD} deny-listed, reported to the lock server")  # fmt: skip
        for n in rest:
            n.check()

        def refused(n: CanaryNode) -> bool:
            return (n.status().get("strategy") or {}).get("halted_version") == BAD

        self.wait("the others refused the halted release", lambda: all(map(refused, rest)))
        for n in rest:
            self.say(f"{n.name}: {BAD} staged, slot refused: the server halted its rollout")
        time.sleep(2.0)
        if any(n.reboots() for n in rest):
            raise Story(f"a node rebooted into the halted {BAD}")
        self.publish(GOOD)
        self.say(f"nobody else took {BAD}; release {GOOD} published to the update graph, every "
                 "node checks")  # fmt: skip
        for n in self.nodes:
            n.check()
        done: set[str] = set()

        def progress() -> bool:
            for n in self.nodes:
                doc = n.status()
                if n.name not in done and n.booted() == GOOD and doc.get("state") in (
                    "reported steady", "no new update"
                ):  # fmt: skip
                    done.add(n.name)
                    verdict = (doc.get("health") or {}).get("verdict")
                    self.say(f"{n.name}: booted {GOOD}, health gate passed ({verdict})")
            return len(done) == NODES

        self.wait(f"{GOOD} on every node", progress, timeout=120)
        reboots = [n.reboots() for n in self.nodes]
        if reboots != [3] + [1] * (NODES - 1):
            raise Story(f"unexpected reboots per node: {reboots}")
        assert self.graph is not None
        asked = {r.params.get("node_uuid") for r in self.graph.requests}
        missing = [n.name for i, n in enumerate(self.nodes, 1) if f"{i:032x}" not in asked]
        if missing:
            raise Story(f"never asked the update graph: {', '.join(missing)}")
        self.say(f"done: {BAD} stopped at its canary, {GOOD} on all {NODES} nodes "
                 f"(reboots {reboots}); every node followed the update graph "
                 f"({len(self.graph.requests)} graph requests)")  # fmt: skip

    def publish(self, version: str) -> None:
        """The commit to every node's rpm-ostree double, then the release into the graph."""
        for n in self.nodes:
            n.publish(version)
        assert self.graph is not None
        listed = [r.version for r in self.graph.releases]
        self.graph.set_releases([GraphRelease(v) for v in [*listed, version]])

    def stop(self, keep: bool) -> None:
        for n in self.nodes:
            n.stop()
        if self.graph is not None:
            self.graph.stop()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if keep:
            self.say(f"work directory kept: {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def run(keep: bool = False, out: Callable[[str], None] = print) -> int:
    story = Canary(out)
    try:
        story.start()
        story.run()
        return 0
    except Story as exc:
        out(f"zincati-py: demo --canary: {exc} (logs in {story.dir})")
        keep = True
        return 1
    finally:
        story.stop(keep)
