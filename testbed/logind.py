"""A logind double: python-dbusmock's ``logind`` template, extended for zincati-py.

``LogindDouble(bus_address).start()`` runs ``/usr/bin/python3 -m dbusmock --system --template
testbed/logind_template.py -l LOG`` on the given (private) system bus; see that
template for what it adds to the stock one (inhibitors whose ``BlockInhibited`` changes with
``PropertiesChanged``, ``ScheduleShutdown``, ``SetWallMessage``, sessions with TTY/Type/Remote,
``CanReboot`` answering as real logind does: "challenge" while another user's block inhibitor
is held; template parameters ``CanReboot`` and ``RebootIgnoreInhibit``, :func:`set_can_reboot`).
The system python is used because dbusmock needs dbus-python and GLib, which the project's
venvs do not have.

dbusmock records every call: :func:`recorded_calls` reads them over D-Bus (``GetCalls``) with
their arguments; ``LogindDouble.log_lines()`` reads the ``-l`` log file. The async helpers
below (:func:`add_session`, :func:`inhibit`, ...) drive the double from a dbus-fast client the
way a test or the demo needs.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast import Variant
from dbus_fast.aio import MessageBus

from testbed.bus import call_method
from testbed.proc import start_with_ready_fd, stop_process

BUS_NAME = "org.freedesktop.login1"
MANAGER_PATH = "/org/freedesktop/login1"
MANAGER_IFACE = "org.freedesktop.login1.Manager"
MOCK_IFACE = "org.freedesktop.DBus.Mock"
SYSTEM_PYTHON = "/usr/bin/python3"
TEMPLATE = Path(__file__).with_name("logind_template.py")


@functools.cache
def logind_double_available() -> bool:
    """dbusmock importable by the system python (Debian's python3-dbusmock)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import dbusmock, gi"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@dataclass
class LogindDouble:
    """The dbusmock process; ``start()`` returns once ``org.freedesktop.login1`` is owned."""

    bus_address: str
    log_path: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, timeout: float = 15.0) -> LogindDouble:
        def command(ready_fd: int) -> list[str]:
            cmd = [SYSTEM_PYTHON, "-m", "dbusmock", "--system", "--template", str(TEMPLATE)]
            if self.log_path is not None:
                cmd += ["-l", str(self.log_path)]
            return [*cmd, "-p", json.dumps({**self.parameters, "ready_fd": ready_fd})]

        self.process = None  # until it is up (a failed start leaves none)
        self.process = start_with_ready_fd(
            command,
            what="logind double (dbusmock)",
            timeout=timeout,
            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address},
        )
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def log_lines(self) -> list[str]:
        """The ``-l`` log: one ``<unix time> <Method> <args>`` line per call."""
        if self.log_path is None or not self.log_path.exists():
            return []
        return self.log_path.read_text().splitlines()


@dataclass(frozen=True)
class Call:
    """One call recorded by dbusmock."""

    timestamp: int
    method: str
    args: list[Any]


async def _call(
    bus: MessageBus, path: str, iface: str, member: str, signature: str = "", *body: Any
) -> list[Any]:
    return list((await call_method(bus, BUS_NAME, path, iface, member, signature, *body)).body)


async def recorded_calls(bus: MessageBus, method: str | None = None) -> list[Call]:
    """Calls on the Manager object recorded by dbusmock, oldest first (optionally one method)."""
    (rows,) = await _call(bus, MANAGER_PATH, MOCK_IFACE, "GetCalls")
    calls = [Call(int(ts), str(name), [a.value for a in args]) for ts, name, args in rows]
    return [c for c in calls if method is None or c.method == method]


async def set_can_reboot(bus: MessageBus, reboot: str, ignore_inhibit: str) -> None:
    """polkit's answers for ``reboot`` and ``reboot-ignore-inhibit`` from now on."""
    await _call(bus, MANAGER_PATH, MOCK_IFACE, "SetCanReboot", "ss", reboot, ignore_inhibit)


async def clear_calls(bus: MessageBus) -> None:
    await _call(bus, MANAGER_PATH, MOCK_IFACE, "ClearCalls")


async def add_session(
    bus: MessageBus,
    session_id: str,
    *,
    uid: int = 1000,
    user: str = "core",
    tty: str = "",
    type: str = "tty",
    remote: bool = False,
    remote_host: str = "",
    session_class: str = "user",
) -> str:
    """Add a logged-in session (on seat0); returns its object path."""
    props = {
        "TTY": Variant("s", tty),
        "Type": Variant("s", type),
        "Remote": Variant("b", remote),
        "RemoteHost": Variant("s", remote_host),
        "Class": Variant("s", session_class),
    }
    (path,) = await _call(
        bus, MANAGER_PATH, MOCK_IFACE, "AddSessionWith", "susa{sv}", session_id, uid, user, props
    )
    return str(path)


async def remove_session(bus: MessageBus, session_id: str) -> None:
    await _call(bus, MANAGER_PATH, MOCK_IFACE, "RemoveSession", "s", session_id)


async def inhibit(
    bus: MessageBus, what: str, who: str, why: str, mode: str = "block", uid: int | None = None
) -> int:
    """Take an inhibitor with logind's real ``Inhibit``; close the returned fd to release it.

    ``uid``: held as that user (the double's ``InhibitAs``) instead of the caller's uid, e.g. a
    user other than the agent's, which makes ``CanReboot`` answer polkit's verdict on
    ``reboot-ignore-inhibit`` ("challenge" by default), as on a real host.
    ``bus`` must be connected with ``negotiate_unix_fd=True``.
    """
    if uid is None:
        reply = await call_method(
            bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "Inhibit", "ssss", what, who, why, mode
        )
    else:
        reply = await call_method(
            bus, BUS_NAME, MANAGER_PATH, MOCK_IFACE, "InhibitAs", "ssssu", what, who, why, mode, uid
        )
    # dbus-fast hands over the received fds in reply.unix_fds; body[0] indexes them.
    fd: int = reply.unix_fds[reply.body[0]]
    return fd
