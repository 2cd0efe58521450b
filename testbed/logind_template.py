# mypy: ignore-errors
"""python-dbusmock template: the stock ``logind`` template plus what zincati-py uses.

Runs under the system python (``/usr/bin/python3 -m dbusmock --template THIS_FILE``), which
has dbus-python, GLib and dbusmock; it is never imported by zincati_py (hence no type checks).
Adds to the stock template, after real logind's behaviour:

- inhibitors with ``BlockInhibited``/``DelayInhibited`` properties that change (with
  ``PropertiesChanged``) when an inhibitor is taken and when its fd is closed;
- ``ScheduleShutdown``/``CancelScheduledShutdown`` with the ``ScheduledShutdown`` property,
  ``SetWallMessage`` with ``WallMessage``/``EnableWallMessages``, ``RebootWithFlags``;
- ``CanReboot``/``CanRebootWithFlags`` answer as logind's ``method_can_shutdown_or_sleep``
  does: "na" if rebooting is not possible at all; when a ``shutdown`` block inhibitor of
  *another* user than the caller is held, polkit's answer for ``reboot-ignore-inhibit`` ("yes",
  "challenge" or "no"; the caller's own inhibitors never count); otherwise polkit's answer for
  ``reboot``. Inhibitors record the caller's uid, as logind does; ``InhibitAs(what, who, why,
  mode, uid)`` on the mock interface takes one as another user;
- ``AddSessionWith(id, uid, user, props)`` on the mock interface: a session whose properties
  (``TTY``, ``Type``, ``Remote``, ``Class``...) are set in one go, and ``RemoveSession(id)``;
  like logind they emit the Manager's ``SessionNew(s id, o path)`` (once the properties are
  set) and ``SessionRemoved(s id, o path)`` (once the session is gone from ``ListSessions``).

Template parameters (``-p JSON``): the stock ones, plus

- ``CanReboot`` (stock name): polkit's answer for ``reboot``, "yes" (default), "challenge" or
  "no"; "na": the system cannot reboot (then the answer whatever else holds);
- ``RebootIgnoreInhibit``: polkit's answer for ``reboot-ignore-inhibit``, default
  "challenge" (what a real host answers a caller that, like zincati-py, is not granted it:
  the action's default is ``auth_admin_keep``);
- ``ready_fd`` (int): "READY" is written to it once loaded, i.e. after the bus name is owned.

``SetCanReboot(reboot, ignore_inhibit)`` on the mock interface changes the two answers at run
time.
"""

import os

import dbus
from dbusmock import MOCK_IFACE, mockobject
from dbusmock.mockobject import loggedmethod
from dbusmock.templates import logind as _stock
from dbusmock.templates.logind import (  # noqa: F401  re-exported: dbusmock picks up methods
    AddSeat,
    AddSession,
    AddUser,
    ListSessions,
    ListUsers,
)
from gi.repository import GLib

BUS_NAME = _stock.BUS_NAME
MAIN_OBJ = _stock.MAIN_OBJ
MAIN_IFACE = _stock.MAIN_IFACE
SYSTEM_BUS = True
SESSION_IFACE = "org.freedesktop.login1.Session"

# logind's order of inhibitor "what" values (inhibit_what_to_string)
_WHAT_ORDER = [
    "shutdown",
    "sleep",
    "idle",
    "handle-power-key",
    "handle-suspend-key",
    "handle-hibernate-key",
    "handle-lid-switch",
    "handle-reboot-key",
]
_inhibitors = []  # [what, who, why, mode, uid, pid]
_ANSWERS = ("yes", "no", "challenge", "na")
_polkit = {"reboot": "yes", "reboot-ignore-inhibit": "challenge"}


def _answer(value, what):
    value = str(value)
    if value not in _ANSWERS:
        raise dbus.exceptions.DBusException(
            f"{what}: {value!r} is not one of {_ANSWERS}",
            name="org.freedesktop.DBus.Error.InvalidArgs",
        )
    return value


def load(mock, parameters):
    _stock.load(mock, parameters)
    _polkit["reboot"] = _answer(parameters.get("CanReboot", "yes"), "CanReboot")
    _polkit["reboot-ignore-inhibit"] = _answer(
        parameters.get("RebootIgnoreInhibit", "challenge"), "RebootIgnoreInhibit"
    )
    mock.AddMethods(MAIN_IFACE, [("RebootWithFlags", "t", "", "")])
    # The stock load() added a CanReboot answering its parameter: ours replaces it.
    for name, fn in (("CanReboot", CanReboot), ("CanRebootWithFlags", CanRebootWithFlags)):
        fn = loggedmethod(mock, fn)
        setattr(mock.__class__, name, fn)
        mock.methods.setdefault(MAIN_IFACE, {})[name] = (
            fn._dbus_in_signature,
            fn._dbus_out_signature,
            "",
            fn,
        )
    mock.AddProperties(
        MAIN_IFACE,
        dbus.Dictionary(
            {
                "BlockInhibited": "",
                "DelayInhibited": "",
                "InhibitDelayMaxUSec": dbus.UInt64(5_000_000),
                "ScheduledShutdown": dbus.Struct(("", dbus.UInt64(0)), signature="st"),
                "WallMessage": "",
                "EnableWallMessages": False,
            },
            signature="sv",
        ),
    )
    ready_fd = parameters.get("ready_fd")
    if ready_fd is not None:
        os.write(int(ready_fd), b"READY\n")
        os.close(int(ready_fd))


def _inhibited(mode):
    whats = set()
    for what, _who, _why, m, _uid, _pid in _inhibitors:
        if m == mode:
            whats.update(what.split(":"))
    return ":".join(w for w in _WHAT_ORDER if w in whats)


def _publish(manager):
    # Like logind's manager_send_changed(): only the property whose value changed.
    changed = {}
    for prop, mode in (("BlockInhibited", "block"), ("DelayInhibited", "delay")):
        value = _inhibited(mode)
        if manager.Get(MAIN_IFACE, prop) != value:
            changed[prop] = value
    if changed:
        manager.UpdateProperties(MAIN_IFACE, changed)


def _caller_uid(self, sender):
    bus = self.connection
    dbus_obj = bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
    return int(dbus.Interface(dbus_obj, "org.freedesktop.DBus").GetConnectionUnixUser(sender))


def _can_reboot(self, sender):
    """logind's method_can_shutdown_or_sleep() for reboot, with polkit's answers given."""
    if _polkit["reboot"] == "na":
        return "na"
    uid = _caller_uid(self, sender)
    blocked = any(
        mode == "block" and "shutdown" in what.split(":") and int(holder) != uid
        for what, _who, _why, mode, holder, _pid in _inhibitors
    )
    # Other users' sessions would ask reboot-multiple-sessions: zincati-py's polkit rules
    # grant it, so it is "yes" here and never changes the answer.
    if blocked:
        return _polkit["reboot-ignore-inhibit"]
    return _polkit["reboot"]


@dbus.service.method(MAIN_IFACE, in_signature="", out_signature="s", sender_keyword="sender")
def CanReboot(self, sender=None):
    return _can_reboot(self, sender)


@dbus.service.method(MAIN_IFACE, in_signature="t", out_signature="s", sender_keyword="sender")
def CanRebootWithFlags(self, _flags, sender=None):
    return _can_reboot(self, sender)


@dbus.service.method(MOCK_IFACE, in_signature="ss", out_signature="")
def SetCanReboot(_self, reboot, ignore_inhibit):
    """polkit's answers for ``reboot`` and ``reboot-ignore-inhibit`` from now on."""
    _polkit["reboot"] = _answer(reboot, "reboot")
    _polkit["reboot-ignore-inhibit"] = _answer(ignore_inhibit, "ignore_inhibit")


@dbus.service.method(MAIN_IFACE, in_signature="ssss", out_signature="h", sender_keyword="sender")
def Inhibit(self, what, who, why, mode, sender=None):
    return _inhibit(self, what, who, why, mode, _caller_uid(self, sender))


@dbus.service.method(MOCK_IFACE, in_signature="ssssu", out_signature="h")
def InhibitAs(self, what, who, why, mode, uid):
    """``Inhibit`` as if user ``uid`` had called it (tests run as one user)."""
    return _inhibit(self, what, who, why, mode, int(uid))


def _inhibit(self, what, who, why, mode, uid):
    if mode not in ("block", "delay") or not what:
        raise dbus.exceptions.DBusException(
            f"invalid inhibitor {what!r}/{mode!r}", name="org.freedesktop.DBus.Error.InvalidArgs"
        )
    fd_r, fd_w = os.pipe()
    entry = [what, who, why, mode, dbus.UInt32(uid), dbus.UInt32(os.getpid())]
    _inhibitors.append(entry)

    def dropped(fd, _cond):
        # The client closed its end: the inhibitor is released, as in logind.
        os.close(fd)
        if entry in _inhibitors:
            _inhibitors.remove(entry)
            _publish(self)
        return False

    GLib.unix_fd_add_full(GLib.PRIORITY_HIGH, fd_r, GLib.IO_HUP | GLib.IO_ERR, dropped)
    _publish(self)
    fd = dbus.types.UnixFd(fd_w)  # dups the fd; ours is closed right away
    os.close(fd_w)
    return fd


@dbus.service.method(MAIN_IFACE, in_signature="", out_signature="a(ssssuu)")
def ListInhibitors(_self):
    return [tuple(e) for e in _inhibitors]


@dbus.service.method(MAIN_IFACE, in_signature="st", out_signature="")
def ScheduleShutdown(self, kind, usec):
    allowed = ("poweroff", "reboot", "halt", "kexec", "dry-poweroff", "dry-reboot", "dry-halt")
    if kind not in allowed:
        raise dbus.exceptions.DBusException(
            f"unsupported shutdown type {kind!r}", name="org.freedesktop.DBus.Error.InvalidArgs"
        )
    # Set(), not UpdateProperties(): dbusmock 0.28 cannot wrap a Struct in a variant there.
    self.Set(
        MAIN_IFACE, "ScheduledShutdown", dbus.Struct((kind, dbus.UInt64(usec)), signature="st")
    )


@dbus.service.method(MAIN_IFACE, in_signature="", out_signature="b")
def CancelScheduledShutdown(self):
    kind, _usec = self.Get(MAIN_IFACE, "ScheduledShutdown")
    self.Set(MAIN_IFACE, "ScheduledShutdown", dbus.Struct(("", dbus.UInt64(0)), signature="st"))
    return bool(kind)


@dbus.service.method(MAIN_IFACE, in_signature="sb", out_signature="")
def SetWallMessage(self, message, enable):
    self.UpdateProperties(MAIN_IFACE, {"WallMessage": message, "EnableWallMessages": enable})


@dbus.service.method(MOCK_IFACE, in_signature="susa{sv}", out_signature="s")
def AddSessionWith(self, session_id, uid, username, properties):
    """A session on seat0 for a (possibly new) user, with ``properties`` overriding defaults."""
    path = self.AddSession(session_id, "seat0", uid, username, True)
    if properties:
        mockobject.objects[path].UpdateProperties(SESSION_IFACE, properties)
    self.EmitSignal(MAIN_IFACE, "SessionNew", "so", [session_id, dbus.ObjectPath(path)])
    return path


@dbus.service.method(MOCK_IFACE, in_signature="s", out_signature="")
def RemoveSession(self, session_id):
    path = f"/org/freedesktop/login1/session/{session_id}"
    for owner_path, iface in (
        ("/org/freedesktop/login1/seat/seat0", "org.freedesktop.login1.Seat"),
        (
            str(mockobject.objects[path].Get(SESSION_IFACE, "User")[1]),
            "org.freedesktop.login1.User",
        ),
    ):
        owner = mockobject.objects.get(owner_path)
        if owner is not None:
            sessions = [s for s in owner.Get(iface, "Sessions") if str(s[1]) != path]
            owner.Set(iface, "Sessions", dbus.Array(sessions, signature="(so)"))
    self.RemoveObject(path)
    self.EmitSignal(MAIN_IFACE, "SessionRemoved", "so", [session_id, dbus.ObjectPath(path)])
