"""The environment variables zincati-py reads of its own: every one, here and nowhere else.

Each is the default of a command-line option (the option wins), so nothing here is a hidden
switch: a unit file, an image builder or a test bed sets the variable instead of passing the
option to every command. Unset or empty means the built-in default.

``ZINCATI_PY_ROOT`` (``--root``)
    Prefix of every path zincati-py reads and writes (default ``/``). Image builders inspect
    an image tree with it; the generator, run by systemd without arguments, gets it this way
    (the test bed's user manager runs the generator on a test root).
``ZINCATI_PY_OSTREE_COMMAND`` (``agent --ostree-command``)
    The command line run for ``ostree admin lock-finalization --unlock`` (split like a shell
    would, ``shlex``; default ``ostree``). The shipped ``zincati-py.service`` sets it to start
    the privileged ``zincati-py-finalize.service`` (the agent runs unprivileged); the test bed
    points it at its ostree stand-in.
``ZINCATI_PY_BUS_NAME`` (``--bus-name``)
    The agent's well-known bus name (default ``io.github.zincatipy.Agent1``), for the agent
    and the commands that call it. Several agents share one bus with ``….Agent1.<node>``
    (the demo's fleet, tests).
``ZINCATI_PY_SYSTEMD_BUS`` (``agent --systemd-bus``)
    Bus address of the systemd manager the agent asks to reload after a configuration change
    (default: systemd on the agent's system bus). The test bed's user manager lives on its own
    bus, apart from the private system bus of the doubles.

Standard variables (``DBUS_SYSTEM_BUS_ADDRESS``, ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
``JOURNAL_STREAM``, ``SYSTEMD_SCOPE``...) are read where their protocol is implemented.
"""

from __future__ import annotations

import os

ROOT = "ZINCATI_PY_ROOT"
OSTREE_COMMAND = "ZINCATI_PY_OSTREE_COMMAND"
BUS_NAME = "ZINCATI_PY_BUS_NAME"
SYSTEMD_BUS = "ZINCATI_PY_SYSTEMD_BUS"

HOOKS = (ROOT, OSTREE_COMMAND, BUS_NAME, SYSTEMD_BUS)


def get(name: str) -> str | None:
    """The value of hook ``name`` (one of :data:`HOOKS`), or None when unset or empty."""
    if name not in HOOKS:
        raise KeyError(f"{name} is not a zincati-py environment hook")
    return os.environ.get(name) or None
