"""What the agent needs from its host, under the shipped unit's sandbox (review findings 1-3),
on a real systemd 252 PID 1:

- the boot id (systemd's ``%b``, the container's own) reaches ``state.json``;
- the graph request carries ``ignition.platform.id`` from ``/proc/cmdline`` (nspawn gives a
  container the host kernel's command line, which has none: the test bind-mounts a command line
  over ``/proc/cmdline`` in the agent's own mount namespace, so what is proven is that the
  sandboxed agent reads that file and sends its platform; the kernel's setting it is not);
- the dead-end MOTD is written to ``/run/motd.d`` (ProtectSystem=strict, tmpfiles' 0775
  root:zincati-py directory);
- a unit ``RequiredBy=boot-complete.target`` that fails on the update boot does not stop the
  agent (Wants=, not Requires=): it starts, its health gate fails the boot, rolls back, reports.

One container for the module; the tests run in order. A graph server (testbed.cincinnati, on
the container's loopback) serves the releases; rpm-ostree is the test bed's double.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import pytest

from testbed.realhost import Container
from testbed.realhost.probe import boots, double_state, publish, status, wait_state
from zincati_py.cli.agent_cmd import _boot_id

PORT = 8089
GRAPH = "/etc/zincati-py-testbed/graph.json"
MOTD = "/run/motd.d/85-zincati-deadend.motd"
SCRIPT = {"booted": {"version": "40.1"}, "releases": [{"version": "40.2"}]}
BAD = hashlib.sha256(b"40.2").hexdigest()
FRAGMENT = (
    # ${platform}: the graph URL shows the platform the request was built with.
    f'[cincinnati]\nbase_url = "http://127.0.0.1:{PORT}/${{platform}}/"\n'
    "[agent.timing]\nsteady_interval_secs = 86400\n"
    "[agent.health]\ntimeout_secs = 30\n"
)
GRAPH_UNIT = f"""[Unit]
Description=test graph server (testbed.cincinnati)

[Service]
ExecStart=/usr/bin/python3 -m testbed.cincinnati --graph {GRAPH} --port {PORT}

[Install]
WantedBy=multi-user.target
"""
# Boot assessment fails on the update boot (40.2) only: boot-complete.target is never reached.
ASSESS = f"""[Unit]
Description=boot assessment (fails on 40.2)
After=ostree-booted.service
Before=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 -c "import json, sys; \\
s = json.load(open('/var/lib/rpmostree-double/state.json')); sys.exit(s['booted'] == '{BAD}')"

[Install]
RequiredBy=boot-complete.target
"""
UNITS = Path(__file__).resolve().parents[2] / "units"


# -- fast tier: the unit passes %b, the agent takes either form ---------------------------


def test_boot_id_option_accepts_systemd_and_kernel_forms() -> None:
    dashed = "3f5882b1-4394-445d-80a3-5e6d4bda4249"
    assert _boot_id(dashed.replace("-", "")) == dashed  # %b
    assert _boot_id(dashed.upper()) == dashed
    for bad in ("", "%b", "xyz", dashed + "0", dashed + "\n"):
        with pytest.raises(argparse.ArgumentTypeError):
            _boot_id(bad)


def test_shipped_unit_passes_the_boot_id() -> None:
    text = (UNITS / "zincati-py.service").read_text()
    assert re.search(r"^ExecStart=/usr/bin/zincati-py agent --boot-id %b$", text, re.M)


# -- real host ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(host_factory) -> Container:  # type: ignore[no-untyped-def]
    h: Container = host_factory(script=SCRIPT, fragments={"50-graph.toml": FRAGMENT})
    serve(h, [{"version": "40.1", "deadend": "test: end of the line"}])
    h.run(["sh", "-c", "cat > /etc/systemd/system/zpy-graph.service"], input=GRAPH_UNIT)
    h.run(["systemctl", "daemon-reload"])
    h.run(["systemctl", "enable", "--now", "zpy-graph.service"])
    probe = f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 1)"
    h.wait_for("graph server", lambda: h.run(["python3", "-c", probe], check=False)
               .returncode == 0, 30)  # fmt: skip
    return h


def serve(host: Container, releases: list[dict[str, object]]) -> None:
    host.run(["sh", "-c", f"mkdir -p {Path(GRAPH).parent} && cat > {GRAPH}"],
             input=json.dumps(releases))  # fmt: skip


def agent_pid(host: Container) -> str:
    pid = host.run(["systemctl", "show", "-P", "MainPID", "zincati-py.service"]).stdout.strip()
    assert pid not in ("", "0"), "agent not running"
    return pid


def container_boot_id(host: Container) -> str:
    return host.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()


def test_shipped_unit_untouched_and_agent_up(host: Container) -> None:
    show = host.run(["systemctl", "show", "zincati-py.service", "-p", "DropInPaths",
                     "-p", "ActiveState", "-p", "ExecStart"]).stdout  # fmt: skip
    assert "DropInPaths=\n" in show and "ActiveState=active" in show, show
    assert "--boot-id" in show


def test_graph_request_carries_the_platform_from_proc_cmdline(host: Container) -> None:
    # In the agent's mount namespace (its sandbox's own /proc), /proc/cmdline is readable...
    pid = agent_pid(host)
    assert host.run(["nsenter", "-t", pid, "-m", "cat", "/proc/cmdline"]).stdout
    # ...and what it says is what the graph request carries.
    host.run(["sh", "-c", "echo 'BOOT_IMAGE=/vmlinuz ignition.platform.id=qemu quiet'"
              " > /run/zpy-cmdline"])  # fmt: skip
    host.run(["nsenter", "-t", pid, "-m", "mount", "--bind", "/run/zpy-cmdline", "/proc/cmdline"])
    host.run(["zincati-py", "check"])

    def fetched() -> object:
        graph = status(host).get("cincinnati") or {}
        return graph if graph.get("last_fetch") and "/qemu/" in str(graph.get("source")) else None

    graph = host.wait_for("a graph fetch with the platform", fetched, 30)
    assert graph == status(host)["cincinnati"]
    assert status(host)["cincinnati"]["source"] == f"http://127.0.0.1:{PORT}/qemu/v1/graph"


def test_deadend_motd_written_under_the_sandbox(host: Container) -> None:
    host.run(["zincati-py", "check"])  # (the graph says 40.1 is a dead-end)
    host.wait_for("dead-end MOTD", lambda: host.run(["test", "-f", MOTD], check=False)
                  .returncode == 0, 30)  # fmt: skip
    text = host.run(["cat", MOTD]).stdout
    assert text == "This release is a dead-end and will not further auto-update: test: end of" \
        " the line\n"  # fmt: skip
    owner = host.run(["stat", "-c", "%U %a", MOTD, "/run/motd.d"]).stdout.split("\n")
    assert owner[:2] == ["zincati-py 644", "root 775"], owner
    assert status(host)["cincinnati"]["deadend"] is True
    log = host.run(["journalctl", "-b", "-u", "zincati-py.service", "-q"]).stdout
    assert "dead-end MOTD" not in log, log[-2000:]  # no EROFS/EACCES error line


def test_failed_boot_assessment_still_starts_the_agent_and_its_gate(host: Container) -> None:
    first_boot = container_boot_id(host)
    host.run(["sh", "-c", "cat > /etc/systemd/system/assess.service"], input=ASSESS)
    host.run(["systemctl", "daemon-reload"])
    host.run(["systemctl", "enable", "assess.service"])
    serve(host, [{"version": "40.1"}, {"version": "40.2"}])
    publish(host, "40.2")
    host.run(["zincati-py", "check"])
    host.expect_reboot(timeout=120)  # into 40.2: assess.service fails, boot-complete never
    update_boot = container_boot_id(host)  # (the gate's deadline is 30 s away)
    assert update_boot not in ("", first_boot)
    host.expect_reboot(timeout=150)  # the gate failed it: the rollback reboot, back into 40.1
    doc = wait_state(host, "reported steady", timeout=90)
    assert doc["booted"]["version"] == "40.1", doc
    health = doc["health"]
    assert (health["verdict"], health["release"]) == ("failed", "40.2"), health
    assert "boot-complete" in health["reason"], health
    assert double_state(host)["reboots"] == 2 and boots(host) == 3
    # The rollback MOTD (issue 16) is written under the sandbox too.
    rollback_motd = "/run/motd.d/85-zincati-py-rollback.motd"
    host.wait_for("rollback MOTD", lambda: host.run(["test", "-f", rollback_motd], check=False)
                  .returncode == 0, 15)  # fmt: skip
    assert "40.2" in host.run(["cat", rollback_motd]).stdout
    previous = host.run(["journalctl", "-b", "-1", "-q"]).stdout
    assert "assess.service" in previous and "HEALTH GATE FAILED for 40.2" in previous, previous[
        -3000:
    ]
    # The agent's start was never a dependency failure.
    assert "Dependency failed for zincati-py" not in previous
    state = json.loads(host.run(["cat", "/var/lib/zincati-py/state.json"]).stdout)
    assert BAD in state["failed"]
    # The boot id reached state.json: the gate's record names the update boot, the
    # container's own id (%b), not the kernel's (the same in every container boot).
    gate = state["extra"]["health_gate"]
    assert gate["boot_id"] == update_boot and gate["reboot_called_boot"] == update_boot, gate
    assert "boot id unknown" not in host.journal("-u", "zincati-py.service")
