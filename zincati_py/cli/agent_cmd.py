"""``zincati-py agent|status|check|wake|reboot-now``: run the agent and talk to it.

* ``agent [--root DIR] [--system-bus ADDRESS] [--bus-name NAME] [--ostree-command CMD]
  [--systemd-bus ADDRESS] [--boot-id ID]``: the daemon (``Type=notify``). Exit 69 if the bus
  is unreachable, 75 if the bus name is taken.
* ``status [--root DIR] [--json]``: reads ``/run/zincati-py/status.json`` (no D-Bus); exit 69 if
  no agent status exists. ``--json`` prints the document plus ``agent_running``.
* ``check [--from-timer]``: ``CheckNow()`` on the running agent (what zincati-py-check.timer
  runs). Exit 69 if no agent answers; with ``--from-timer`` that is logged and exits 0 (a
  stopped agent is reported by its own unit, not by every timer run).
* ``wake REASON``: ``Wake(REASON)`` (window timers run ``zincati-py wake window``).
* ``reboot-now``: ``RebootNow()``; needs uid 0 or polkit's io.github.zincatipy.reboot-now.
  Exit 77 if refused for permissions, 75 if the agent cannot reboot now (nothing staged,
  inhibited), printing why.

Every D-Bus command takes ``--system-bus ADDRESS`` (default ``$DBUS_SYSTEM_BUS_ADDRESS``, else
the system bus) and ``--bus-name NAME`` (default ``$ZINCATI_PY_BUS_NAME``, else
``io.github.zincatipy.Agent1``; the sandbox gives each node ``….Agent1.<node>``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from zincati_py.cli import CliError, add_root_argument, print_json

DBUS_TIMEOUT = 60.0
_UNREACHABLE = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.TimedOut",
    "org.freedesktop.DBus.Error.UnknownObject",
}


def _bus_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--system-bus",
        metavar="ADDRESS",
        default=None,
        help="system bus address (default: $DBUS_SYSTEM_BUS_ADDRESS or the system bus)",
    )
    p.add_argument(
        "--bus-name",
        metavar="NAME",
        default=None,
        help="the agent's bus name (default: $ZINCATI_PY_BUS_NAME or io.github.zincatipy.Agent1)",
    )


def _boot_id(text: str) -> str:
    """A boot id as systemd's %b (32 hex digits) or the kernel file (dashed): the dashed form,
    as ``/proc/sys/kernel/random/boot_id`` reads, so records from either compare equal."""
    import re

    digits = text.replace("-", "").lower()
    if not re.fullmatch(r"[0-9a-f]{32}", digits):
        raise argparse.ArgumentTypeError(f"{text!r}: not a boot id (32 hex digits)")
    d = digits
    return f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="run the update agent (the zincati-py.service daemon)")
    add_root_argument(p)
    _bus_arguments(p)
    p.add_argument(
        "--ostree-command",
        metavar="CMD",
        default=None,
        help="ostree command line for lock-finalization (default: $ZINCATI_PY_OSTREE_COMMAND "
        "or ostree)",
    )
    p.add_argument(
        "--systemd-bus",
        metavar="ADDRESS",
        default=None,
        help="where to ask systemd to reload after a config change (default: "
        "$ZINCATI_PY_SYSTEMD_BUS or the system bus)",
    )
    p.add_argument(
        "--boot-id",
        metavar="ID",
        type=_boot_id,
        default=None,
        help="this boot's id (the unit passes systemd's %%b; default: "
        "/proc/sys/kernel/random/boot_id)",
    )
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("status", help="what the agent is doing, why it waits, what comes next")
    add_root_argument(p)
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("check", help="ask the running agent to check for updates now")
    _bus_arguments(p)
    p.add_argument(
        "--from-timer",
        action="store_true",
        help="run by zincati-py-check.timer: an unreachable agent is not an error",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("wake", help="ask the running agent to re-evaluate now")
    _bus_arguments(p)
    p.add_argument("reason", help="why (logged by the agent), e.g. window")
    p.set_defaults(func=cmd_wake)

    p = sub.add_parser("reboot-now", help="reboot into the staged update now (root only)")
    _bus_arguments(p)
    p.set_defaults(func=cmd_reboot_now)


def cmd_agent(args: argparse.Namespace) -> int:
    from zincati_py import lazytls

    lazytls.defer()  # before asyncio: OpenSSL only once TLS is needed (zincati_py/lazytls.py)
    from zincati_py.agent.options import Options
    from zincati_py.agent.service import main

    opts = Options.from_env(
        args.root, args.system_bus, args.bus_name, args.ostree_command, args.systemd_bus
    )
    opts.boot_id = args.boot_id
    return main(opts)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_status(args: argparse.Namespace) -> int:
    from zincati_py.agent import status
    from zincati_py.paths import Paths

    path = Paths.from_root(args.root).status_file
    try:
        doc = status.read(path)
    except FileNotFoundError:
        raise CliError(f"{path}: no agent status (is zincati-py.service running?)", 69) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: {exc}", os.EX_DATAERR) from None
    running = _pid_alive(doc.get("pid")) and doc.get("state") != "end"
    if args.json:
        print_json({**doc, "agent_running": running}, sort_keys=True)
        return 0
    print(status.describe(doc))
    if not running:
        print("(the agent is not running; this is its last published status)")
    return 0


async def _call(args: argparse.Namespace, member: str, signature: str = "", *body: Any) -> Any:
    import asyncio

    from dbus_fast import BusType, Message, MessageFlag, MessageType
    from dbus_fast.aio import MessageBus

    from zincati_py import envhooks
    from zincati_py.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH

    address = args.system_bus or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or None
    name = args.bus_name or envhooks.get(envhooks.BUS_NAME) or BUS_NAME
    try:
        bus = await asyncio.wait_for(
            MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect(), DBUS_TIMEOUT
        )
    except (OSError, TimeoutError, ValueError) as exc:
        raise CliError(f"cannot connect to the system bus: {exc}", os.EX_UNAVAILABLE) from None
    try:
        msg = Message(
            destination=name,
            path=OBJECT_PATH,
            interface=INTERFACE,
            member=member,
            signature=signature,
            body=list(body),
            # Lets polkit prompt a non-root admin for RebootNow (as systemctl does).
            flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION,
        )
        try:
            reply = await asyncio.wait_for(bus.call(msg), DBUS_TIMEOUT)
        except TimeoutError:
            raise CliError(f"{name}: no answer within {DBUS_TIMEOUT:.0f} s", 69) from None
    finally:
        bus.disconnect()
    if reply is None:
        raise CliError(f"{name}: no reply", 69)
    if reply.message_type is MessageType.ERROR:
        text = reply.body[0] if reply.body else reply.error_name
        error = str(reply.error_name)
        if error in _UNREACHABLE:
            raise CliError(f"{name}: agent not reachable ({text})", 69)
        if error == "org.freedesktop.DBus.Error.AccessDenied":
            raise CliError(f"{member}: permission denied: {text}", os.EX_NOPERM)
        if error.endswith(".Refused"):
            raise CliError(f"{member}: {text}", os.EX_TEMPFAIL)
        raise CliError(f"{member}: {error}: {text}", os.EX_SOFTWARE)
    return reply.body


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        _run(_call(args, "CheckNow"))
    except CliError as exc:
        if args.from_timer and exc.code == 69:
            print(f"zincati-py: {exc}; skipping this check", file=sys.stderr)
            return 0
        raise
    return 0


def cmd_wake(args: argparse.Namespace) -> int:
    _run(_call(args, "Wake", "s", args.reason))
    return 0


def cmd_reboot_now(args: argparse.Namespace) -> int:
    body = _run(_call(args, "RebootNow"))
    print(body[0] if body else "reboot requested")
    return 0
