"""systemd's D-Bus names, in one place for both systemd adapters.

:mod:`zincati_py.dbus.systemd` (async, dbus-fast: the agent) and
:mod:`zincati_py.dbus.systemd_sync` (blocking, pystemd: the CLI) both talk to
``org.freedesktop.systemd1`` (org.freedesktop.systemd1(5)); the bus name, object paths,
interfaces and the error names that mean "systemd is not there" are defined here only. Plain
strings: importing this module loads no D-Bus library.
"""

from __future__ import annotations

BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
TIMER_IFACE = "org.freedesktop.systemd1.Timer"
JOB_IFACE = "org.freedesktop.systemd1.Job"
PROPS_IFACE = "org.freedesktop.DBus.Properties"

# The units the generator emits, as a ListUnitsByPatterns pattern.
GENERATED_TIMERS = "zincati-py-*.timer"

# D-Bus errors meaning "systemd is not there", as opposed to "it said no".
UNAVAILABLE_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.TimedOut",
        "org.freedesktop.DBus.Error.Disconnected",
        "org.freedesktop.DBus.Error.NoServer",
        "org.freedesktop.DBus.Error.FileNotFound",
    }
)


def unit_object_path(unit: str) -> str:
    """The object path systemd gives ``unit`` (sd_bus_path_encode of the name)."""
    label = "".join(
        chr(b) if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122) else f"_{b:02x}"
        for b in unit.encode()
    )
    return f"{MANAGER_PATH}/unit/{label or '_'}"
