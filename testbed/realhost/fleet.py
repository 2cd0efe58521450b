"""``zincati-py demo --real``: the fleet demo with every node a booted systemd-nspawn container.

One container runs ``zincati-py-fleetlock.service`` (the lock server, as shipped), N node
containers run ``zincati-py.service`` with the ``fleet_lock`` strategy; all of them share one
network namespace (``ip netns``), so the nodes reach the server at ``127.0.0.1:8080`` and
nothing leaves the machine. The release is published to every node's rpm-ostree double and
each node is asked to check; the nodes then stage, take the single slot in turn, reboot for
real (nspawn exits 133 and is booted again), report steady on the new release and give the slot
back. Verdict: every node rebooted exactly once into the release, never two down at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.realhost import Container, make_host, missing_host_tools, prepare_image

URL = "http://127.0.0.1:8080/"
SCRIPT = {"booted": {"version": "40.1"}, "releases": [{"version": "40.2"}]}
FRAGMENT = f"""\
[agent.timing]
steady_interval_secs = 20

[updates]
strategy = "fleet_lock"

[updates.fleet_lock]
base_url = "{URL}"
"""


def checkout() -> Path:
    """The source tree of this (editable) test bed install: the RPM layout comes from its spec."""
    tree = Path(__file__).resolve().parents[2]
    if not (tree / "packaging/zincati-py.spec").exists():
        raise RuntimeError(f"{tree}: not a zincati-py source checkout (needs packaging/)")
    return tree


class Narrator:
    def __init__(self, as_json: bool) -> None:
        self.t0 = time.monotonic()
        self.as_json = as_json

    def __call__(self, node: str, kind: str, message: str) -> None:
        t = time.monotonic() - self.t0
        if self.as_json:
            print(json.dumps({"t": round(t, 2), "node": node, "kind": kind, "message": message}))
        else:
            print(f"{t:7.1f}s {node:7} {kind:9} {message}")
        sys.stdout.flush()


def _status(node: Container) -> dict[str, Any]:
    proc = node.run(["zincati-py", "status", "--json"], check=False, timeout=20)
    doc: dict[str, Any] = json.loads(proc.stdout) if proc.returncode == 0 else {}
    return doc


def run(nodes: int, as_json: bool = False, keep: bool = False, timeout: float = 600.0) -> int:
    missing = missing_host_tools()
    if missing:
        print("zincati-py: demo --real: missing " + ", ".join(missing), file=sys.stderr)
        return os.EX_UNAVAILABLE
    say = Narrator(as_json)
    workdir = Path(tempfile.mkdtemp(prefix="zincati-py-demo-real-", dir="/var/tmp"))
    netns_name = f"zpy-demo-{os.getpid()}"
    netns = Path("/run/netns") / netns_name
    hosts: list[Container] = []
    try:
        subprocess.run(["ip", "netns", "add", netns_name], check=True, timeout=30)
        subprocess.run(["ip", "-n", netns_name, "link", "set", "lo", "up"], check=True, timeout=30)
        say("fleet", "image", "rootfs (cached) and this tree's wheels")
        image = prepare_image(checkout(), workdir / "image")
        server = make_host(
            image, workdir / "server", "zpy-demo-server", script=SCRIPT,
            enable=("zincati-py-fleetlock.service",), netns=netns,
        )  # fmt: skip
        hosts.append(server)
        server.boot()
        say("server", "booted", f"zincati-py-fleetlock.service on {URL}")
        fleet = []
        for i in range(1, nodes + 1):
            node = make_host(
                image, workdir / f"node{i}", f"zpy-demo-node{i}", script=SCRIPT,
                fragments={"60-fleet-lock.toml": FRAGMENT}, netns=netns,
            )  # fmt: skip
            hosts.append(node)
            fleet.append(node)
            node.boot()
            say(f"node{i}", "booted", f"booted {_status(node).get('booted', {}).get('version')}")
        for i, node in enumerate(fleet, 1):
            node.run(
                ["busctl", "call", "org.projectatomic.rpmostree1",
                 "/io/github/zincatipy/Test/RpmOstree", "io.github.zincatipy.Test.RpmOstree",
                 "PublishRelease", "s", "40.2"],
            )  # fmt: skip
            node.run(["zincati-py", "check"])
            say(f"node{i}", "check", "release 40.2 published; update check requested")
        rebooted = {i: 0 for i in range(1, nodes + 1)}
        down_at_once = 0
        last_state = {i: "" for i in rebooted}
        done = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            down = [i for i, n in enumerate(fleet, 1) if not n.running()]
            down_at_once = max(down_at_once, len(down))
            for i in down:
                node = fleet[i - 1]
                rc = node.wait_exit(5)
                if rc != 133:
                    say(f"node{i}", "error", f"nspawn exited {rc}, not a reboot")
                    return 1
                rebooted[i] += 1
                say(f"node{i}", "reboot", "logind rebooted the container; booting it again")
                node.boot()
            for i, node in enumerate(fleet, 1):
                doc = _status(node)
                state = f"{doc.get('state')} ({doc.get('booted', {}).get('version')})"
                if state != last_state[i]:
                    say(f"node{i}", "state", f"{state}: {doc.get('reason') or ''}".strip())
                    last_state[i] = state
            done = all(
                rebooted[i] == 1 and last_state[i] == "reported steady (40.2)" for i in rebooted
            )
            if done:
                break
            time.sleep(0.5)
        ok = all(v == 1 for v in rebooted.values()) and down_at_once <= 1 and done
        verdict = (
            f"{'OK' if ok else 'FAILED'}: reboots per node {rebooted}, "
            f"at most {down_at_once} node(s) down at once"
        )
        say("fleet", "verdict", verdict)
        return 0 if ok else 1
    finally:
        for host in reversed(hosts):
            host.close()
            host.discard_root()  # the journals stay in each host's logs directory
        subprocess.run(["ip", "netns", "delete", netns_name], check=False, timeout=30)
        if keep:
            print(f"zincati-py: demo --real: logs and journals kept in {workdir}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(workdir)], check=False, timeout=120)


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
