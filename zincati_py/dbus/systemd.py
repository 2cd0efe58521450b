"""The systemd adapter for async code (the agent), over dbus-fast.

Talks to ``org.freedesktop.systemd1`` (org.freedesktop.systemd1(5)). Facts it relies on:

- ``Manager.Reload()`` replies only after the reload has finished, generators included, so the
  new timers exist when ``reload_manager`` returns.
- A unit's object path is its name escaped like ``sd_bus_path_encode``: ASCII letters and
  digits stay, every other byte becomes ``_xx`` (hex). Reading properties through that path
  loads the unit on demand; a unit without a file reports ``LoadState`` "not-found".
- A daemon-reload alone neither starts a timer the generator just added (``timers.target`` is
  already active) nor stops one it no longer emits (the unit stays loaded as "not-found" and
  keeps firing, or fails). :func:`reload_manager` therefore also starts new ``zincati-py-*``
  timers and stops/resets orphaned ones (:func:`apply_steps`); a changed timer re-arms on the
  reload itself. For an unprivileged caller (the agent) polkit must allow ``manage-units``
  verbs start, stop and reset-failed on ``zincati-py-*.timer`` besides ``reload-daemon``.
- Timestamps are microseconds since the epoch (``...USecRealtime``) or since boot
  (``...USecMonotonic``); 0 means "never" and 2^64-1 "infinity".

The D-Bus names (bus name, paths, interfaces, error names) are in
:mod:`zincati_py.dbus.systemd_names`, shared with the pystemd adapter
(:mod:`zincati_py.dbus.systemd_sync`), as is the plain-Python part of this module
(conversions, the state records, errors), which imports no D-Bus library, so the CLI can use
it without loading dbus-fast.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from zincati_py.dbus.systemd_names import BUS_NAME as BUS_NAME
from zincati_py.dbus.systemd_names import GENERATED_TIMERS as GENERATED_TIMERS
from zincati_py.dbus.systemd_names import JOB_IFACE as JOB_IFACE
from zincati_py.dbus.systemd_names import MANAGER_IFACE as MANAGER_IFACE
from zincati_py.dbus.systemd_names import MANAGER_PATH as MANAGER_PATH
from zincati_py.dbus.systemd_names import PROPS_IFACE as PROPS_IFACE
from zincati_py.dbus.systemd_names import SERVICE_IFACE as SERVICE_IFACE
from zincati_py.dbus.systemd_names import TIMER_IFACE as TIMER_IFACE
from zincati_py.dbus.systemd_names import UNAVAILABLE_ERRORS as UNAVAILABLE_ERRORS
from zincati_py.dbus.systemd_names import UNIT_IFACE as UNIT_IFACE
from zincati_py.dbus.systemd_names import unit_object_path as unit_object_path

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus


log = logging.getLogger(__name__)

_USEC_INFINITY = 2**64 - 1
_BUSY_STATES = frozenset({"active", "activating", "deactivating", "reloading"})


class SystemdError(Exception):
    """systemd answered with a D-Bus error (``name``, e.g. ``...systemd1.NoSuchUnit``)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{message} ({name})" if message else name)
        self.name = name
        self.message = message


class SystemdUnavailable(SystemdError):
    """No systemd manager could be reached on the bus."""


def error_for(name: str, message: str) -> SystemdError:
    if name in UNAVAILABLE_ERRORS:
        return SystemdUnavailable(name, message)
    return SystemdError(name, message)


def usec_to_datetime(usec: int) -> datetime | None:
    """A realtime ``...USec`` value as an aware UTC datetime; 0/infinity → ``None``."""
    if usec <= 0 or usec >= _USEC_INFINITY:
        return None
    return datetime.fromtimestamp(usec / 1_000_000, tz=UTC)


def monotonic_usec_to_datetime(usec: int) -> datetime | None:
    """A ``CLOCK_MONOTONIC`` ``...USec`` value mapped to wall time (as ``systemctl`` does)."""
    if usec <= 0 or usec >= _USEC_INFINITY:
        return None
    offset = usec / 1_000_000 - time.clock_gettime(time.CLOCK_MONOTONIC)
    return datetime.fromtimestamp(time.time() + offset, tz=UTC)


@dataclass(frozen=True)
class UnitState:
    """What systemd says about a unit right now."""

    name: str
    load_state: str  # "loaded", "not-found", "masked", "error", ...
    active_state: str  # "active", "activating", "inactive", "failed", ...
    sub_state: str
    active_enter: datetime | None  # entered "active"
    inactive_exit: datetime | None  # left "inactive" (start of "activating")
    inactive_enter: datetime | None  # last stop finished
    result: str | None  # services and timers: "success", "exit-code", "timeout", ...

    @property
    def exists(self) -> bool:
        return self.load_state not in ("not-found", "stub")

    @property
    def busy(self) -> bool:
        """Running or in transition: starting it again would only queue or merge the job."""
        return self.active_state in _BUSY_STATES

    @property
    def busy_since(self) -> datetime | None:
        """When the current run began: a oneshot service stays "activating" while it runs."""
        if self.active_state == "activating":
            return self.inactive_exit
        return self.active_enter or self.inactive_exit

    @classmethod
    def from_properties(
        cls, name: str, unit: dict[str, Any], specific: dict[str, Any] | None = None
    ) -> UnitState:
        result = (specific or {}).get("Result")
        return cls(
            name=name,
            load_state=str(unit.get("LoadState", "")),
            active_state=str(unit.get("ActiveState", "")),
            sub_state=str(unit.get("SubState", "")),
            active_enter=usec_to_datetime(int(unit.get("ActiveEnterTimestamp", 0))),
            inactive_exit=usec_to_datetime(int(unit.get("InactiveExitTimestamp", 0))),
            inactive_enter=usec_to_datetime(int(unit.get("InactiveEnterTimestamp", 0))),
            result=str(result) if result is not None else None,
        )


@dataclass(frozen=True)
class TimerState:
    """A timer's schedule as systemd computed it (what ``systemctl list-timers`` shows)."""

    unit: UnitState
    triggers: str  # the unit it starts
    next_elapse: datetime | None
    last_trigger: datetime | None

    @classmethod
    def from_properties(cls, name: str, unit: dict[str, Any], timer: dict[str, Any]) -> TimerState:
        real = usec_to_datetime(int(timer.get("NextElapseUSecRealtime", 0)))
        mono = monotonic_usec_to_datetime(int(timer.get("NextElapseUSecMonotonic", 0)))
        candidates = [t for t in (real, mono) if t is not None]
        triggers = unit.get("Triggers") or [""]
        return cls(
            unit=UnitState.from_properties(name, unit, timer),
            triggers=str(triggers[0]),
            next_elapse=min(candidates) if candidates else None,
            last_trigger=usec_to_datetime(int(timer.get("LastTriggerUSec", 0))),
        )


# ---- async (dbus-fast) ----------------------------------------------------------------------


async def connect(*, user: bool = False, address: str | None = None) -> MessageBus:
    """A connected bus: ``address`` if given, else the system bus (session bus if ``user``)."""
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    bus_type = BusType.SESSION if user else BusType.SYSTEM
    try:
        return await MessageBus(bus_address=address, bus_type=bus_type).connect()
    except (OSError, ValueError) as exc:
        raise SystemdUnavailable("org.freedesktop.DBus.Error.NoServer", str(exc)) from exc


async def _call(
    bus: MessageBus,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
) -> list[Any]:
    from dbus_fast import Message, MessageType

    reply = await bus.call(
        Message(
            destination=BUS_NAME,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    if reply is None:
        raise SystemdUnavailable("org.freedesktop.DBus.Error.NoReply", "no reply from systemd")
    if reply.message_type == MessageType.ERROR:
        message = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise error_for(reply.error_name or "", message)
    return list(reply.body)


_RUNNING = ("active", "activating", "reloading")
# Manager method for each step of apply_steps(); all are polkit "manage-units" verbs.
_STEP_METHODS = {"stop": "StopUnit", "start": "StartUnit", "reset-failed": "ResetFailedUnit"}


def apply_steps(rows: list[Any]) -> list[tuple[str, str]]:
    """From ``ListUnitsByPatterns`` rows of our timers after a reload: (verb, unit) to apply.

    A timer whose file is gone is stopped if it still runs and reset (on the reload it either
    keeps running or fails with "resources", its service being gone too), so nothing fires and
    no failed unit is left for ``systemctl --failed``. A loaded timer that does not run (new,
    or re-enabled) is started. Each unit is named, so polkit can allow exactly
    ``zincati-py-*.timer`` (no broader target start).
    """
    steps: list[tuple[str, str]] = []
    for row in sorted(rows, key=lambda r: str(r[0])):
        name, load, active = str(row[0]), str(row[2]), str(row[3])
        if load != "loaded":
            if active in _RUNNING:
                steps.append(("stop", name))
            steps.append(("reset-failed", name))
        elif active not in _RUNNING:
            steps.append(("start", name))
    return steps


def step_failed(verb: str, unit: str, exc: SystemdError) -> None:
    if verb == "reset-failed" and exc.name.endswith("NoSuchUnit"):
        return  # stopped and garbage-collected already: nothing to reset
    log.warning("after daemon-reload: cannot %s %s: %s", verb, unit, exc)


async def reload_manager(bus: MessageBus, *, apply: bool = True) -> None:
    """``systemctl daemon-reload``: returns after generators ran and units were reloaded.

    With ``apply`` (the default) the generated timers then match the new configuration
    (:func:`apply_steps`), waiting (bounded) for each job. A step systemd refuses (e.g. polkit)
    is logged as a warning, not raised: the reload itself has happened.
    """
    await _call(bus, MANAGER_PATH, MANAGER_IFACE, "Reload")
    if not apply:
        return
    body = await _call(
        bus, MANAGER_PATH, MANAGER_IFACE, "ListUnitsByPatterns", "asas", [[], [GENERATED_TIMERS]]
    )
    for verb, unit in apply_steps(body[0]):
        try:
            if verb == "reset-failed":
                await _call(bus, MANAGER_PATH, MANAGER_IFACE, _STEP_METHODS[verb], "s", [unit])
            else:
                reply = await _call(
                    bus, MANAGER_PATH, MANAGER_IFACE, _STEP_METHODS[verb], "ss", [unit, "replace"]
                )
                await wait_job(bus, str(reply[0]))
        except SystemdError as exc:
            step_failed(verb, unit, exc)


async def wait_job(bus: MessageBus, job: str, timeout: float = 10.0) -> bool:
    """Wait (bounded) until the job at object path ``job`` has finished; False on timeout.

    A finished job's object disappears; polling it avoids a signal subscription (and the race
    of subscribing after the job may already be gone).
    """
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await _call(bus, job, PROPS_IFACE, "Get", "ss", [JOB_IFACE, "State"])
        except SystemdError:
            return True
        await asyncio.sleep(0.02)
    return False


async def start_unit(bus: MessageBus, name: str, mode: str = "replace") -> str:
    """Queue a start job for ``name``; returns the job's object path (does not wait for it)."""
    body = await _call(bus, MANAGER_PATH, MANAGER_IFACE, "StartUnit", "ss", [name, mode])
    return str(body[0])


async def get_properties(bus: MessageBus, name: str, interface: str) -> dict[str, Any]:
    """All properties of ``interface`` on unit ``name``, unwrapped from their variants."""
    body = await _call(bus, unit_object_path(name), PROPS_IFACE, "GetAll", "s", [interface])
    return {key: variant.value for key, variant in body[0].items()}


async def unit_state(bus: MessageBus, name: str) -> UnitState:
    unit = await get_properties(bus, name, UNIT_IFACE)
    specific: dict[str, Any] | None = None
    if unit.get("LoadState") == "loaded" and name.endswith((".service", ".timer")):
        iface = SERVICE_IFACE if name.endswith(".service") else TIMER_IFACE
        specific = await get_properties(bus, name, iface)
    return UnitState.from_properties(name, unit, specific)


async def timer_state(bus: MessageBus, name: str) -> TimerState:
    unit = await get_properties(bus, name, UNIT_IFACE)
    timer = (
        await get_properties(bus, name, TIMER_IFACE) if unit.get("LoadState") == "loaded" else {}
    )
    return TimerState.from_properties(name, unit, timer)


async def list_unit_names(bus: MessageBus, patterns: list[str]) -> list[str]:
    """Names of loaded units matching shell-style ``patterns`` (``ListUnitsByPatterns``)."""
    body = await _call(
        bus, MANAGER_PATH, MANAGER_IFACE, "ListUnitsByPatterns", "asas", [[], patterns]
    )
    return sorted(str(row[0]) for row in body[0])
