"""The agent's own D-Bus API.

Name ``io.github.zincatipy.Agent1`` (a per-node suffix such as ``….Agent1.node2`` lets several
agents share one bus in the sandbox), object ``/io/github/zincatipy/Agent1``, interface
``io.github.zincatipy.Agent1``:

* properties (read-only, ``PropertiesChanged`` emitted): ``State`` s, ``Reason`` s,
  ``BootedVersion`` s, ``StagedVersion`` s, ``LastCheck`` s (ISO 8601 or ""),
  ``NextWindow`` s (ISO 8601 or ""), ``LockState`` s; with ``[cincinnati] base_url``:
  ``UpdateGraph`` s (the graph URL), ``UpdateGraphFetched`` s (ISO 8601 of the last graph
  answer), ``UpdateTarget`` s ("VERSION (CHECKSUM)" the graph chose, or ""), ``DeadEnd`` s
  ("no", "yes: REASON", or "" before the first answer)
* ``CheckNow()``: run an update check now (what ``zincati-py-check.timer`` triggers)
* ``Wake(s reason)``: re-evaluate now (window timers: ``zincati-py wake window``)
* ``RebootNow() -> s``: reboot into the staged update now, skipping the strategy and the
  interactive-session postponement (block inhibitors still hold). Privileged: allowed for
  callers whose bus connection belongs to uid 0 (``GetConnectionUnixUser``); any other caller
  needs polkit's ``io.github.zincatipy.reboot-now`` (packaging/polkit), asked with
  ``CheckAuthorization`` about the caller's bus name (interactive if the call carries
  ALLOW_INTERACTIVE_AUTHORIZATION). polkit unreachable means refused.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusStr
from dbus_fast.constants import ErrorType, PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

log = logging.getLogger(__name__)

BUS_NAME = "io.github.zincatipy.Agent1"
OBJECT_PATH = "/io/github/zincatipy/Agent1"
INTERFACE = "io.github.zincatipy.Agent1"
ERROR_PREFIX = "io.github.zincatipy.Agent1.Error"
REBOOT_NOW_ACTION = "io.github.zincatipy.reboot-now"

PROPERTIES = ("State", "Reason", "BootedVersion", "StagedVersion", "LastCheck", "NextWindow")
GRAPH_PROPERTIES = ("UpdateGraph", "UpdateGraphFetched", "UpdateTarget", "DeadEnd")


class RefusedError(Exception):
    """RebootNow cannot proceed; the message says why."""


class AgentInterface(ServiceInterface):
    def __init__(
        self,
        check_now: Callable[[], Awaitable[None]],
        wake: Callable[[str], None],
        reboot_now: Callable[[], Awaitable[str]],
    ) -> None:
        super().__init__(INTERFACE)
        self._check_now = check_now
        self._wake = wake
        self._reboot_now = reboot_now
        self._values: dict[str, str] = dict.fromkeys(
            (*PROPERTIES, "LockState", *GRAPH_PROPERTIES), ""
        )
        self._values["State"] = "start"
        self._values["LockState"] = "none"
        self._tasks: set[asyncio.Task[None]] = set()

    def set(self, **values: str) -> None:
        """Update properties; emits PropertiesChanged for those that changed."""
        changed = {k: v for k, v in values.items() if self._values.get(k) != v}
        if changed:
            self._values.update(changed)
            self.emit_properties_changed(changed)

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self._values["State"]

    @dbus_property(access=PropertyAccess.READ)
    def Reason(self) -> DBusStr:
        return self._values["Reason"]

    @dbus_property(access=PropertyAccess.READ)
    def BootedVersion(self) -> DBusStr:
        return self._values["BootedVersion"]

    @dbus_property(access=PropertyAccess.READ)
    def StagedVersion(self) -> DBusStr:
        return self._values["StagedVersion"]

    @dbus_property(access=PropertyAccess.READ)
    def LastCheck(self) -> DBusStr:
        return self._values["LastCheck"]

    @dbus_property(access=PropertyAccess.READ)
    def NextWindow(self) -> DBusStr:
        return self._values["NextWindow"]

    @dbus_property(access=PropertyAccess.READ)
    def LockState(self) -> DBusStr:
        return self._values["LockState"]

    @dbus_property(access=PropertyAccess.READ)
    def UpdateGraph(self) -> DBusStr:
        return self._values["UpdateGraph"]

    @dbus_property(access=PropertyAccess.READ)
    def UpdateGraphFetched(self) -> DBusStr:
        return self._values["UpdateGraphFetched"]

    @dbus_property(access=PropertyAccess.READ)
    def UpdateTarget(self) -> DBusStr:
        return self._values["UpdateTarget"]

    @dbus_property(access=PropertyAccess.READ)
    def DeadEnd(self) -> DBusStr:
        return self._values["DeadEnd"]

    @dbus_method()
    async def CheckNow(self) -> None:
        await self._check_now()

    @dbus_method()
    def Wake(self, reason: DBusStr) -> None:
        self._wake(reason or "api")

    @dbus_method()
    def RebootNow(self) -> DBusStr:
        # Only reached if the privileged handler installed by ``export`` is missing: refuse
        # rather than reboot without knowing who asked.
        raise DBusError(ErrorType.ACCESS_DENIED, "RebootNow needs the caller's credentials")

    def intercept(self, bus: MessageBus) -> Callable[[Message], bool]:
        """A bus message handler answering RebootNow after checking the caller's uid.

        dbus-fast's method handlers do not see the sender, so this runs first and marks the
        call handled; the reply is sent when the (asynchronous) check and reboot finish.
        """

        def handler(msg: Message) -> bool:
            if (
                msg.message_type is not MessageType.METHOD_CALL
                or msg.member != "RebootNow"
                or msg.path != OBJECT_PATH
                or msg.interface not in (INTERFACE, None)
            ):
                return False
            task = asyncio.get_running_loop().create_task(self._privileged(bus, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True

        return handler

    async def _privileged(self, bus: MessageBus, msg: Message) -> None:
        reply: Message
        try:
            sender = msg.sender or ""
            uid = await caller_uid(bus, sender)
            interactive = bool(msg.flags.value & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION.value)
            if uid != 0 and not await polkit_allows(bus, sender, REBOOT_NOW_ACTION, interactive):
                log.warning("RebootNow refused: caller %s (uid %s) is not authorized", sender, uid)
                reply = Message.new_error(
                    msg,
                    ErrorType.ACCESS_DENIED.value,
                    f"RebootNow needs uid 0 or polkit {REBOOT_NOW_ACTION} (caller uid {uid})",
                )
            else:
                log.info("RebootNow requested by %s (uid %s)", sender, uid)
                outcome = await self._reboot_now()
                reply = Message.new_method_return(msg, "s", [outcome])
        except RefusedError as exc:
            reply = Message.new_error(msg, f"{ERROR_PREFIX}.Refused", str(exc))
        except Exception as exc:
            log.exception("RebootNow failed")
            reply = Message.new_error(msg, f"{ERROR_PREFIX}.Failed", str(exc))
        if msg.flags.value & 0x1 == 0:  # NO_REPLY_EXPECTED not set
            bus.send(reply)


async def caller_uid(bus: MessageBus, sender: str) -> int:
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="GetConnectionUnixUser",
            signature="s",
            body=[sender],
        )
    )
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        detail: Any = None if reply is None else reply.body
        raise RuntimeError(f"GetConnectionUnixUser({sender}) failed: {detail}")
    return int(reply.body[0])


async def polkit_allows(bus: MessageBus, sender: str, action: str, interactive: bool) -> bool:
    """polkit's CheckAuthorization for the bus name ``sender``; False if polkit says no or
    cannot be asked (fail closed). ``interactive`` lets a polkit agent prompt the caller."""
    msg = Message(
        destination="org.freedesktop.PolicyKit1",
        path="/org/freedesktop/PolicyKit1/Authority",
        interface="org.freedesktop.PolicyKit1.Authority",
        member="CheckAuthorization",
        signature="(sa{sv})sa{ss}us",
        body=[
            ["system-bus-name", {"name": Variant("s", sender)}],
            action,
            {},
            1 if interactive else 0,  # AllowUserInteraction
            "",
        ],
    )
    try:
        # Bounded: an interactive authentication waits for a human, but not forever.
        reply = await asyncio.wait_for(bus.call(msg), 300 if interactive else 30)
    except TimeoutError:
        log.warning("polkit did not answer for %s within the time limit", sender)
        return False
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        detail = None if reply is None else f"{reply.error_name}: {reply.body}"
        log.warning("polkit CheckAuthorization for %s failed: %s", sender, detail)
        return False
    authorized, _challenge, _details = reply.body[0]
    return bool(authorized)


def export(bus: MessageBus, iface: AgentInterface) -> None:
    bus.add_message_handler(iface.intercept(bus))
    bus.export(OBJECT_PATH, iface)
