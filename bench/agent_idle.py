"""Benchmark: the agent's idle cost and how fast it reacts.

Runs ``zincati-py agent`` against the sandbox (private system bus, rpm-ostree double,
dbusmock logind) and reports:

* idle RSS (VmRSS) once the agent reached "reported steady";
* wakeups over a quiet period: context switches of all its threads (``voluntary_ctxt_switches``
  + ``nonvoluntary_ctxt_switches`` in /proc/PID/task/*/status). Expect 0 without a watchdog,
  and about seconds / (WatchdogSec / 2) with ``--watchdog-sec``;
* signal-to-decision latency: from the double staging an update (its PropertiesChanged) to
  logind's ``Reboot`` call, observed on the bus (dbusmock's ``MethodCalled`` signal), plus the
  agent's own event-to-decision time (``zincati_py_decision_latency_seconds``);
* the resident-memory cost of importing aiohttp vs httpx on top of the agent's own modules
  (the HTTP client the fleet-lock strategy would load), and what each group of imports adds
  to a fresh interpreter, in the agent's order (``BREAKDOWN``);
* idle RSS split into anonymous and file-backed (shared library text) pages.

With ``--fleet-lock`` the agent runs ``strategy = "fleet_lock"`` against a local
``zincati-py fleetlock serve`` (SQLite, one slot), and each round takes and releases the slot.
The steady-state report at start goes through a one-shot child process, so the idle agent
holds no HTTP client (httpx is imported at the first pre-reboot, which precedes a reboot).

The reboot rounds need a systemd user manager (``testbed.systemd``: root, unshare), whose
``boot-complete.target`` the agent's health gate asks for after each reboot.

Usage: ``python bench/agent_idle.py [--seconds 60] [--rounds 5] [--watchdog-sec S]
[--fleet-lock] [--json]`` (needs dbus-daemon and python3-dbusmock, like the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from testbed.bus import PrivateBus
from testbed.logind import LogindDouble
from testbed.rpmostree import RpmOstreeDouble, control
from testbed.systemd import UserManager

BOOTED = "40.20240101.3.0"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB), thread count and context switches summed over threads."""
    out = {"rss_kb": 0, "anon_kb": 0, "file_kb": 0, "threads": 0, "ctxt": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss_kb"] = int(line.split()[1])
        elif line.startswith("RssAnon:"):
            out["anon_kb"] = int(line.split()[1])
        elif line.startswith("RssFile:"):
            out["file_kb"] = int(line.split()[1])
    for task in Path(f"/proc/{pid}/task").iterdir():
        out["threads"] += 1
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                out["ctxt"] += int(line.split()[1])
    return out


def drain(sock: socket.socket, pings: list[float]) -> None:
    while True:
        try:
            if b"WATCHDOG=1" in sock.recv(4096):
                pings.append(time.monotonic())
        except OSError:
            return


def wait_state(root: Path, state: str, timeout: float, version: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    path = root / "run/zincati-py/status.json"
    while time.monotonic() < deadline:
        try:
            doc = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            doc = {}
        booted = (doc.get("booted") or {}).get("version")
        if doc.get("state") == state and (version is None or booted == version):
            return
        time.sleep(0.01)
    raise TimeoutError(f"agent did not reach {state!r} ({version}) in {timeout} s")


async def latency_rounds(address: str, root: Path, versions: list[str]) -> list[dict[str, float]]:
    """Stage each version; time until logind's Reboot call is seen on the bus."""
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    rebooted: asyncio.Queue[float] = asyncio.Queue()

    def on_message(msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "MethodCalled"
            and msg.path == "/org/freedesktop/login1"
            and msg.body[0] in ("Reboot", "RebootWithFlags")
        ):
            rebooted.put_nowait(time.monotonic())

    bus.add_message_handler(on_message)
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=["type='signal',interface='org.freedesktop.DBus.Mock',member='MethodCalled'"],
        )
    )
    rounds = []
    try:
        for version in versions:
            t0 = time.monotonic()
            await control(bus, "Stage", "sb", version, True)
            t1 = await asyncio.wait_for(rebooted.get(), 30)
            await asyncio.to_thread(wait_state, root, "reported steady", 30, version)
            rounds.append({"stage_to_reboot_call_ms": (t1 - t0) * 1000})
    finally:
        bus.disconnect()
    return rounds


def decision_latencies(log: str) -> list[float]:
    """The agent's own event-to-decision times for its reboot decisions, from its log."""
    return [
        float(line.rsplit("(", 1)[1].split(" ms after the event", 1)[0])
        for line in log.splitlines()
        if "decision: rebooting:" in line and " ms after the event)" in line
    ]


def import_cost() -> dict[str, int]:
    """Marginal VmRSS (kB) of importing each HTTP client after the agent's own modules."""
    code = (
        "import gc, sys\n"
        "import zincati_py.agent.service, zincati_py.dbus.rpmostree, zincati_py.dbus.logind\n"
        "def rss():\n"
        "    gc.collect()\n"
        "    for l in open('/proc/self/status'):\n"
        "        if l.startswith('VmRSS'): return int(l.split()[1])\n"
        "base = rss()\n"
        "__import__(sys.argv[1])\n"
        "print(rss() - base, base)\n"
    )
    out: dict[str, int] = {}
    for mod in ("aiohttp", "httpx"):
        r = subprocess.run(
            [sys.executable, "-c", code, mod],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        delta, base = (int(x) for x in r.stdout.split())
        out[mod] = delta
        out["agent_modules_kb"] = base
    return out


# What the idle agent loads, in import order, grouped by what pulls it in (issue 17).
BREAKDOWN = [
    ("interpreter + CLI dispatch", "zincati_py.cli, zincati_py.cli.agent_cmd"),
    ("asyncio (OpenSSL, hashlib, hmac, sslproto later)", "zincati_py.lazytls.defer()"),
    ("dbus-fast (xml.etree, expat later: lazytls)", "dbus_fast, dbus_fast.aio"),
    ("config (tomllib, zoneinfo, uuid...)", "zincati_py.config"),
    (
        "agent modules and adapters",
        "zincati_py.agent.service, zincati_py.dbus.rpmostree, "
        "zincati_py.dbus.logind, zincati_py.strategy.immediate",
    ),
    ("pyinotify (+ ctypes, tempfile)", "pyinotify"),
    ("not at idle: OpenSSL (first TLS use, a scrape)", "ssl, _ssl"),
    ("not at idle: prometheus-client (1st scrape)", "prometheus_client"),
    ("not at idle: httpx (fleet_lock's 1st pre-reboot)", "httpx"),
]


def import_breakdown() -> list[tuple[str, int]]:
    """VmRSS (kB) each group of BREAKDOWN adds, imported in that order in a fresh process."""
    code = (
        "import gc, importlib, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "def rss():\n"
        "    gc.collect()\n"
        "    for l in open('/proc/self/status'):\n"
        "        if l.startswith('VmRSS'): return int(l.split()[1])\n"
        "last = rss()\n"
        "print(last)\n"
        "for mods in sys.argv[1:]:\n"
        "    for m in mods.split(', '):\n"
        "        if m.endswith('()'):\n"
        "            mod, fn = m[:-2].rsplit('.', 1)\n"
        "            getattr(importlib.import_module(mod), fn)()\n"
        "        else:\n"
        "            importlib.import_module(m)\n"
        "    now = rss(); print(now - last); last = now\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *(mods for _, mods in BREAKDOWN)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    bare, *deltas = (int(x) for x in r.stdout.split())
    return [("bare interpreter", bare), *zip((what for what, _ in BREAKDOWN), deltas, strict=True)]


def start_lock_server(root: Path, tmp: Path) -> subprocess.Popen[bytes]:
    """A local FleetLock server (one slot) and the agent config pointing at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp / "fleetlock.toml"
    conf.write_text(
        f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{tmp / "locks.db"}"\ndefault_slots = 1\n'
    )
    with (tmp / "fleetlock.log").open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from zincati_py.cli import main; sys.exit(main())",
                "fleetlock",
                "serve",
                "--config",
                str(conf),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lock server: {(tmp / 'fleetlock.log').read_text()}") from None
            time.sleep(0.05)
    fragment = root / "etc/zincati/config.d/40-bench.toml"
    fragment.parent.mkdir(parents=True, exist_ok=True)
    fragment.write_text(
        f'[identity]\nnode_uuid = "{1:032x}"\n'
        f'[updates]\nstrategy = "fleet_lock"\n'
        f'[updates.fleet_lock]\nbase_url = "http://127.0.0.1:{port}"\n'
    )
    return server


def run_agent(args: argparse.Namespace, fleet_lock: bool) -> dict[str, Any]:
    """One agent in a fresh sandbox: idle RSS, wakeups, latency rounds."""
    versions = [f"40.202402{d:02d}.3.0" for d in range(1, args.rounds + 1)]
    script = {
        "osname": "fedora-coreos",
        "booted": {"version": BOOTED},
        "releases": [{"version": v} for v in versions],
        "transaction_delay": 0.02,
    }
    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "quiet_seconds": args.seconds,
        "strategy": "fleet_lock" if fleet_lock else "default",
    }
    with tempfile.TemporaryDirectory(prefix="zpy-bench-") as tmp, PrivateBus("system") as bus:
        root = Path(tmp) / "root"
        lock_server = start_lock_server(root, Path(tmp)) if fleet_lock else None
        double = RpmOstreeDouble(bus.address, root, script, idle_timeout=0).start()
        logind = LogindDouble(bus.address, Path(tmp) / "logind.log").start()
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        # The health gate after each reboot round asks systemd whether the boot completed.
        manager = UserManager(None).start() if versions else None
        if manager is not None:
            env["ZINCATI_PY_SYSTEMD_BUS"] = manager.bus_address
        env.pop("NOTIFY_SOCKET", None)
        notify = None
        pings: list[float] = []
        if args.watchdog_sec > 0:
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(str(Path(tmp) / "notify"))
            env["NOTIFY_SOCKET"] = str(Path(tmp) / "notify")
            env["WATCHDOG_USEC"] = str(int(args.watchdog_sec * 1_000_000))
            # Read like systemd does (a full queue would only drop notifications).
            threading.Thread(target=drain, args=(notify, pings), daemon=True).start()
        log_path = Path(tmp) / "agent.log"
        with log_path.open("wb") as log:
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from zincati_py.cli import main; sys.exit(main())",
                    "-v",
                    "agent",
                    "--root",
                    str(root),
                    "--ostree-command",
                    " ".join(double.ostree_command),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_state(root, "reported steady", 30)
            time.sleep(1.0)  # let start-up work (imports, first evaluation) settle
            before = proc_status(agent.pid)
            time.sleep(args.seconds)
            after = proc_status(agent.pid)
            result["idle_rss_kb"] = after["rss_kb"]
            # File-backed pages (library text, mostly) are shared with other processes.
            result["idle_rss_anon_kb"] = after["anon_kb"]
            result["idle_rss_file_kb"] = after["file_kb"]
            result["threads"] = after["threads"]
            result["wakeups"] = after["ctxt"] - before["ctxt"]
            result["watchdog_sec"] = args.watchdog_sec or None
            result["watchdog_pings"] = len(pings) if notify is not None else None
            if not versions:  # --pairs: the idle figures only
                return result
            rounds = asyncio.run(latency_rounds(bus.address, root, versions))
            e2e = [r["stage_to_reboot_call_ms"] for r in rounds]
            inside = decision_latencies(log_path.read_text())
            result["stage_to_reboot_call_ms"] = {
                "median": statistics.median(e2e),
                "max": max(e2e),
                "samples": [round(x, 1) for x in e2e],
            }
            if inside:
                result["agent_event_to_decision_ms"] = {
                    "median": statistics.median(inside),
                    "max": max(inside),
                }
        finally:
            agent.terminate()
            agent.wait(10)
            if lock_server is not None:
                lock_server.terminate()
                lock_server.wait(10)
            logind.stop()
            double.stop()
            if manager is not None:
                manager.stop()
            if notify is not None:
                notify.close()
    return result


# Issue 17's targets for the idle RSS (MiB).
TARGETS = {"default": 24.0, "fleet_lock": 28.0}


def pairs(args: argparse.Namespace) -> int:
    """``--pairs N``: alternate the two strategies N times (paired, so load drifts hit both)."""
    args.rounds = 0  # no reboot rounds: the figure is the idle RSS
    rss: dict[str, list[float]] = {"default": [], "fleet_lock": []}
    for _ in range(args.pairs):
        for fleet_lock in (False, True):
            r = run_agent(args, fleet_lock)
            rss[r["strategy"]].append(r["idle_rss_kb"] / 1024)
    doc = {
        "python": sys.version.split()[0],
        "pairs": args.pairs,
        "quiet_seconds": args.seconds,
        "idle_rss_mib": {
            k: {
                "min": min(v),
                "median": statistics.median(v),
                "max": max(v),
                "target": TARGETS[k],
                "met": statistics.median(v) <= TARGETS[k],
            }
            for k, v in rss.items()
        },
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"python {doc['python']}, {args.pairs} pairs, idle RSS (MiB) after {args.seconds:g} s:")
    for k, v in doc["idle_rss_mib"].items():
        name = "immediate" if k == "default" else k
        print(
            f"  {name:10s} min {v['min']:.1f}  median {v['median']:.1f}  max {v['max']:.1f}"
            f"  target <= {v['target']:g}: {'met' if v['met'] else 'NOT met'}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="quiet period (default 60)")
    p.add_argument("--rounds", type=int, default=5, help="latency rounds (default 5)")
    p.add_argument("--watchdog-sec", type=float, default=0.0, help="simulate WatchdogSec=")
    p.add_argument(
        "--fleet-lock", action="store_true", help='strategy = "fleet_lock" against a local server'
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="N pairs of agents (strategy immediate, then fleet_lock), idle RSS only: "
        "min/median/max of each against the issue 17 targets",
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = p.parse_args(argv)
    if args.pairs:
        return pairs(args)
    result = run_agent(args, args.fleet_lock)
    e2e = result["stage_to_reboot_call_ms"]["samples"]
    result["http_client_import_kb"] = import_cost()
    result["import_breakdown_kb"] = dict(import_breakdown())

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"python {result['python']}, strategy {result['strategy']}")
    print(
        f"idle RSS:            {result['idle_rss_kb'] / 1024:.1f} MiB ({result['threads']} threads;"
        f" anon {result['idle_rss_anon_kb'] / 1024:.1f}, file-backed"
        f" {result['idle_rss_file_kb'] / 1024:.1f})"
    )
    print(
        f"wakeups in {args.seconds:g} s:  {result['wakeups']}"
        + (f" (watchdog {args.watchdog_sec:g} s)" if args.watchdog_sec else "")
    )
    s = result["stage_to_reboot_call_ms"]
    print(
        f"stage → Reboot call: median {s['median']:.1f} ms, max {s['max']:.1f} ms "
        f"over {len(e2e)} rounds"
    )
    if "agent_event_to_decision_ms" in result:
        a = result["agent_event_to_decision_ms"]
        print(f"agent event → reboot decision: median {a['median']:.1f} ms, max {a['max']:.1f} ms")
    print("what the imports cost (VmRSS added, in this order):")
    for what, kb in result["import_breakdown_kb"].items():
        print(f"  {what:50s} {kb / 1024:5.1f} MiB")
    h = result["http_client_import_kb"]
    print(
        f"import on top of the agent ({h['agent_modules_kb'] / 1024:.1f} MiB): "
        f"aiohttp +{h['aiohttp'] / 1024:.1f} MiB, httpx +{h['httpx'] / 1024:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
