"""The systemd adapter for the CLI: blocking calls over pystemd (sd-bus).

Which manager: the system instance (system bus) by default; ``user=True`` talks to the calling
user's manager over the session bus (``$DBUS_SESSION_BUS_ADDRESS``, else
``$XDG_RUNTIME_DIR/bus``): that is what ``--user`` means, as for ``systemctl``. The sandbox
(:mod:`testbed.systemd`) exports exactly those variables. ``address=`` connects to
any bus address instead.

Only raw method calls and ``Properties.GetAll`` are used: pystemd's ``Unit``/``Manager``
objects introspect every unit first (lxml), which costs more than the calls themselves. The
D-Bus names come from :mod:`zincati_py.dbus.systemd_names`; conversions, the state records and
the errors are shared with the async adapter (:mod:`zincati_py.dbus.systemd`), whose plain part
imports no D-Bus library.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from zincati_py.dbus.systemd import (
    SystemdError,
    SystemdUnavailable,
    TimerState,
    UnitState,
    apply_steps,
    error_for,
    step_failed,
)
from zincati_py.dbus.systemd_names import (
    BUS_NAME,
    GENERATED_TIMERS,
    JOB_IFACE,
    MANAGER_IFACE,
    MANAGER_PATH,
    PROPS_IFACE,
    SERVICE_IFACE,
    TIMER_IFACE,
    UNAVAILABLE_ERRORS,
    UNIT_IFACE,
    unit_object_path,
)

__all__ = ["Systemd", "SystemdError", "SystemdUnavailable", "TimerState", "UnitState"]

_S = ord("s")
# pystemd maps these errno values of a failed connect to its own classes, dropping the name.
_CONNECT_ERRNOS = {"DBusConnectionRefusedError", "DBusFileNotFoundError"}


def _convert(exc: Exception) -> SystemdError:
    """A pystemd exception as our error, recovering the D-Bus error name from its class."""
    cls = type(exc).__name__
    name = str(getattr(exc, "err_name", "") or "")
    message = getattr(exc, "err_message", b"")
    text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
    if not name:
        if cls == "DBusNoSuchUnitError":
            name = "org.freedesktop.systemd1.NoSuchUnit"
        elif cls in _CONNECT_ERRNOS:
            name = "org.freedesktop.DBus.Error.NoServer"
        elif cls.startswith("DBus") and cls.endswith("Error") and cls != "DBusBaseError":
            name = f"org.freedesktop.DBus.Error.{cls[4:-5]}"
        else:
            name = "org.freedesktop.DBus.Error.Failed"
    if name == "org.freedesktop.DBus.Error.Timeout":
        name = "org.freedesktop.DBus.Error.TimedOut"
    return error_for(name, text or str(exc))


def _text(value: Any) -> Any:
    """pystemd returns D-Bus strings as bytes; decode them (recursively in arrays/dicts)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_text(v) for v in value)
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


class Systemd:
    """A connection to one systemd manager; use as a context manager.

    Raises :class:`SystemdUnavailable` when the bus or the manager cannot be reached and
    :class:`SystemdError` (with the D-Bus error ``name``) when systemd refuses a call.
    """

    def __init__(self, *, user: bool = False, address: str | None = None) -> None:
        self.user = user
        self.address = address
        self._bus: Any = None

    def __enter__(self) -> Systemd:
        from pystemd.dbusexc import DBusBaseError
        from pystemd.dbuslib import DBus, DBusAddress

        bus = DBusAddress(self.address.encode(), False) if self.address else DBus(self.user)
        try:
            bus.open()
        except DBusBaseError as exc:
            error = _convert(exc)
            raise SystemdUnavailable(
                error.name
                if error.name in UNAVAILABLE_ERRORS
                else "org.freedesktop.DBus.Error.NoServer",
                f"cannot connect to the {'user' if self.user else 'system'} bus: {error.message}",
            ) from None
        self._bus = bus
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    def _call(self, path: str, interface: str, method: str, args: list[Any]) -> Any:
        from pystemd.dbusexc import DBusBaseError

        if self._bus is None:
            raise RuntimeError("Systemd used outside its 'with' block")
        try:
            reply = self._bus.call_method(
                BUS_NAME.encode(), path.encode(), interface.encode(), method.encode(), args
            )
        except DBusBaseError as exc:
            raise _convert(exc) from None
        return _text(reply.body)

    def reload(self, *, apply: bool = True) -> None:
        """``daemon-reload``; returns once generators ran and units were re-read.

        With ``apply``, new ``zincati-py-*`` timers are started and orphaned ones stopped and
        reset, as :func:`zincati_py.dbus.systemd.reload_manager` does (refusals are warnings).
        """
        self._call(MANAGER_PATH, MANAGER_IFACE, "Reload", [])
        if not apply:
            return
        for verb, unit in apply_steps(self._list_units([GENERATED_TIMERS])):
            try:
                if verb == "reset-failed":
                    self._call(
                        MANAGER_PATH, MANAGER_IFACE, "ResetFailedUnit", [(_S, unit.encode())]
                    )
                elif verb == "stop":
                    job = self._call(
                        MANAGER_PATH,
                        MANAGER_IFACE,
                        "StopUnit",
                        [(_S, unit.encode()), (_S, b"replace")],
                    )
                    self.wait_job(str(job))
                else:
                    self.wait_job(self.start_unit(unit))
            except SystemdError as exc:
                step_failed(verb, unit, exc)

    def wait_job(self, job: str, timeout: float = 10.0) -> bool:
        """Wait (bounded) until the job at object path ``job`` has finished; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._call(job, PROPS_IFACE, "Get", [(_S, JOB_IFACE.encode()), (_S, b"State")])
            except SystemdError:
                return True
            time.sleep(0.02)
        return False

    def start_unit(self, name: str, mode: str = "replace") -> str:
        """Queue a start job; returns its object path. Does not wait for the job."""
        body = self._call(
            MANAGER_PATH, MANAGER_IFACE, "StartUnit", [(_S, name.encode()), (_S, mode.encode())]
        )
        return str(body)

    def stop_unit(self, name: str, mode: str = "replace") -> str:
        """Queue a stop job; returns its object path. Does not wait for the job."""
        body = self._call(
            MANAGER_PATH, MANAGER_IFACE, "StopUnit", [(_S, name.encode()), (_S, mode.encode())]
        )
        return str(body)

    def properties(self, unit: str, interface: str) -> dict[str, Any]:
        body = self._call(unit_object_path(unit), PROPS_IFACE, "GetAll", [(_S, interface.encode())])
        return dict(body) if isinstance(body, dict) else {}

    def unit_state(self, name: str) -> UnitState:
        unit = self.properties(name, UNIT_IFACE)
        specific: dict[str, Any] | None = None
        if unit.get("LoadState") == "loaded" and name.endswith((".service", ".timer")):
            iface = SERVICE_IFACE if name.endswith(".service") else TIMER_IFACE
            specific = self.properties(name, iface)
        return UnitState.from_properties(name, unit, specific)

    def timer_state(self, name: str) -> TimerState:
        unit = self.properties(name, UNIT_IFACE)
        loaded = unit.get("LoadState") == "loaded"
        timer = self.properties(name, TIMER_IFACE) if loaded else {}
        return TimerState.from_properties(name, unit, timer)

    def _list_units(self, patterns: list[str]) -> list[Any]:
        args: list[Any] = [(ord("a"), b"s"), (-1, None), (ord("a"), b"s")]
        args += [(_S, p.encode()) for p in patterns]
        args.append((-1, None))
        body = self._call(MANAGER_PATH, MANAGER_IFACE, "ListUnitsByPatterns", args)
        return list(body)

    def list_unit_names(self, patterns: list[str]) -> list[str]:
        """Loaded units matching shell-style ``patterns`` (``ListUnitsByPatterns``)."""
        return sorted(str(row[0]) for row in self._list_units(patterns))
