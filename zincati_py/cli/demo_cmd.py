"""``zincati-py demo``: a sandboxed fleet doing one coordinated update (the demo lives in the
separate test bed distribution, ``testbed/demo.py``; the product only dispatches to it).

``--real``: every node a booted systemd-nspawn container instead (``testbed/realhost/fleet.py``).
``--canary``: the health-gate story with five nodes (``testbed/canary.py``).

Exit codes: 0 every node updated exactly once and never two at a time; 1 the rollout was wrong
or timed out (the reason is printed); 64 bad arguments; 69 this machine cannot run the
sandbox (what is missing is printed); 130 interrupted (everything is torn down first).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from zincati_py.cli import CliError

MAX_NODES = 20
MAX_REAL_NODES = 8  # --real: a booted container per node


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a sandboxed fleet through a coordinated update (real systemd, D-Bus doubles)",
        description="Start N sandboxed nodes (systemd --user, private system bus, rpm-ostree and "
        "logind doubles, zincati-py agent) and a FleetLock server, publish an update and narrate "
        "the rollout. Needs root (private mount namespaces), systemd, dbus-daemon and "
        "python3-dbusmock.",
    )
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--fast", action="store_true", help="short timings: done in under a minute")
    p.add_argument("--json", action="store_true", help="one JSON object per event, then a summary")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, roots)")
    p.add_argument(
        "--real",
        action="store_true",
        help="each node a booted systemd-nspawn container (real systemd PID 1, logind, polkit; "
        f"up to {MAX_REAL_NODES} nodes; needs root, systemd-container, mmdebstrap)",
    )
    p.add_argument(
        "--canary",
        action="store_true",
        help="the health-gate story: a release fails its health check on the canary node, which "
        "rolls back; the lock server halts it for the other four; a good release then rolls "
        "through all five (testbed/canary.py)",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    try:
        from testbed.demo import prerequisites, run_demo
    except ImportError:
        raise CliError(
            "demo: the test bed is not installed (it is not part of the product): "
            "pip install -e ./testbed from a source checkout, or run testbed/demo.sh",
            os.EX_UNAVAILABLE,
        ) from None

    if args.canary:
        from testbed.canary import run as run_canary

        missing = prerequisites()
        if missing:
            raise CliError(
                "demo: this machine cannot run the sandbox:\n"
                + "\n".join(f"zincati-py: demo: missing {m}" for m in missing),
                os.EX_UNAVAILABLE,
            )
        canary_code: int = run_canary(args.keep)
        return canary_code
    if not 1 <= args.nodes <= MAX_NODES:
        raise CliError(f"--nodes: must be between 1 and {MAX_NODES}, got {args.nodes}", os.EX_USAGE)
    if args.real:
        if args.nodes > MAX_REAL_NODES:
            raise CliError(
                f"--nodes: at most {MAX_REAL_NODES} with --real, got {args.nodes}", os.EX_USAGE
            )
        from testbed.realhost.fleet import run as run_real

        real_code: int = run_real(args.nodes, args.json, args.keep)
        return real_code
    missing = prerequisites()
    if missing:
        raise CliError(
            "demo: this machine cannot run the sandbox:\n"
            + "\n".join(f"zincati-py: demo: missing {m}" for m in missing),
            os.EX_UNAVAILABLE,
        )
    code: int = asyncio.run(run_demo(args.nodes, args.fast, args.json, args.keep))
    return code
