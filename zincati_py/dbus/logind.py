"""The logind adapter: may we reboot, who is blocking it, who is logged in, warn them, reboot.

Talks to ``org.freedesktop.login1`` (see org.freedesktop.login1(5)) over dbus-fast.

- Block inhibitors: ``ListInhibitors`` for the details; waiting for their release follows the
  Manager's ``BlockInhibited`` property, which logind updates with ``PropertiesChanged`` when
  an inhibitor starts or stops. No polling.
- Interactive sessions: user-class sessions with a TTY (local consoles and SSH logins, which
  logind gives a ``pts/N``) or a graphical type (x11/wayland/mir). Remote sessions are
  included — an admin logged in over SSH is exactly who should be warned — and marked with
  ``Session.remote`` so a caller can treat them differently. Only ``user*`` classes count
  (not greeter, lock-screen, background, manager), and sessions that are closing do not.
  Logins and logouts arrive as the Manager's ``SessionNew``/``SessionRemoved`` signals
  (:meth:`Logind.on_sessions_changed`), so a postponement can end as soon as the last
  interactive session does. No polling.
- Warnings: logind's own wall mechanism. :meth:`Logind.warn_sessions` sets the wall message
  and schedules a ``dry-reboot`` at the planned time, so logind broadcasts the message with
  the time to every TTY without ever rebooting by itself; :meth:`Logind.cancel_warning` drops
  it. The reboot itself is :meth:`Logind.reboot`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from zincati_py.dbus.busdaemon import bus_msg

BUS_NAME = "org.freedesktop.login1"
MANAGER_PATH = "/org/freedesktop/login1"
MANAGER_IFACE = "org.freedesktop.login1.Manager"
SESSION_IFACE = "org.freedesktop.login1.Session"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
GRAPHICAL_TYPES = frozenset({"x11", "wayland", "mir"})
_SESSION_SIGNALS = ("SessionNew", "SessionRemoved")

log = logging.getLogger(__name__)


class LogindError(Exception):
    """logind refused a call or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class Inhibitor:
    """One entry of ``ListInhibitors``; ``what`` is a tuple of the colon-separated kinds."""

    what: tuple[str, ...]
    who: str
    why: str
    mode: str
    uid: int
    pid: int


@dataclass(frozen=True)
class Session:
    """A logind session and the properties that make it interactive."""

    id: str
    uid: int
    user: str
    seat: str
    tty: str
    type: str
    session_class: str
    remote: bool
    remote_host: str
    state: str
    path: str

    @property
    def interactive(self) -> bool:
        return (
            self.session_class.startswith("user")  # user, user-early, user-incomplete
            and self.state != "closing"
            and (bool(self.tty) or self.type in GRAPHICAL_TYPES)
        )

    def describe(self) -> str:
        """Human-readable, for logs: ``core on pts/0 from 10.0.0.1 (session 3)``."""
        where = self.tty or self.type
        origin = f" from {self.remote_host}" if self.remote and self.remote_host else ""
        return f"{self.user} on {where}{origin} (session {self.id})"


class Logind:
    """Async client of systemd-logind. ``connect(bus)`` with a system-bus ``MessageBus``."""

    def __init__(self, *, call_timeout: float = 30.0) -> None:
        self.call_timeout = call_timeout
        self._bus: MessageBus | None = None
        self._rules = [
            f"type='signal',sender='{BUS_NAME}',interface='{PROPS_IFACE}',"
            f"member='PropertiesChanged',path='{MANAGER_PATH}',arg0='{MANAGER_IFACE}'",
            *(
                f"type='signal',sender='{BUS_NAME}',interface='{MANAGER_IFACE}',"
                f"member='{member}',path='{MANAGER_PATH}'"
                for member in _SESSION_SIGNALS
            ),
        ]
        self._waiters: list[Callable[[dict[str, Variant], list[str]], None]] = []
        self._session_callbacks: list[Callable[[str], None]] = []

    async def connect(self, bus: MessageBus) -> None:
        """Subscribe to the Manager's PropertiesChanged (for :meth:`wait_block_released`) and
        its ``SessionNew``/``SessionRemoved`` (for :meth:`on_sessions_changed`)."""
        self._bus = bus
        bus.add_message_handler(self._on_message)
        for rule in self._rules:
            reply = await self._raw(bus_msg("AddMatch", "s", rule))
            if reply.message_type == MessageType.ERROR:
                raise LogindError(f"AddMatch: {reply.error_name}: {reply.body}")

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.remove_message_handler(self._on_message)
            if bus.connected:
                for rule in self._rules:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(bus.call(bus_msg("RemoveMatch", "s", rule)), 5)
        self._session_callbacks.clear()

    # -- queries --------------------------------------------------------------------------
    async def can_reboot(self) -> str:
        """logind's answer: ``yes``, ``no``, ``challenge`` (needs authentication) or ``na``."""
        (answer,) = await self._call(MANAGER_PATH, MANAGER_IFACE, "CanReboot")
        return str(answer)

    async def block_inhibitors(self, what: str = "shutdown") -> list[Inhibitor]:
        """Active inhibitors in ``block`` mode that include ``what``."""
        (rows,) = await self._call(MANAGER_PATH, MANAGER_IFACE, "ListInhibitors")
        found = [
            Inhibitor(tuple(w.split(":")), who, why, mode, int(uid), int(pid))
            for w, who, why, mode, uid, pid in rows
        ]
        return [i for i in found if i.mode == "block" and what in i.what]

    async def blocked(self, what: str = "shutdown") -> bool:
        """Whether ``what`` is in the Manager's ``BlockInhibited`` property."""
        return what in (await self._block_inhibited()).split(":")

    async def wait_block_released(self, timeout: float, what: str = "shutdown") -> bool:
        """Wait until no block inhibitor covers ``what``; True if released, False on timeout.

        Subscribes before reading the current value, so a release between the two is not
        lost; then waits for ``PropertiesChanged`` of ``BlockInhibited``.
        """
        loop = asyncio.get_running_loop()
        released: asyncio.Future[None] = loop.create_future()
        refresh: asyncio.Queue[None] = asyncio.Queue()

        def waiter(changed: dict[str, Variant], invalidated: list[str]) -> None:
            if "BlockInhibited" in changed:
                still = what in str(changed["BlockInhibited"].value).split(":")
                if not still and not released.done():
                    released.set_result(None)
            elif "BlockInhibited" in invalidated:
                refresh.put_nowait(None)  # value not sent: read it

        self._waiters.append(waiter)
        try:
            deadline = loop.time() + timeout
            if not await self.blocked(what):
                return True
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    return False
                getter = loop.create_task(refresh.get())
                done, _ = await asyncio.wait(
                    {released, getter}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                getter.cancel()
                if released in done:
                    return True
                if getter in done and not await self.blocked(what):
                    return True
                if not done:
                    return False
        finally:
            self._waiters.remove(waiter)

    async def sessions(self) -> list[Session]:
        """All sessions with their properties."""
        (rows,) = await self._call(MANAGER_PATH, MANAGER_IFACE, "ListSessions")
        out = []
        for session_id, uid, user, seat, path in rows:
            try:
                (props,) = await self._call(path, PROPS_IFACE, "GetAll", "s", SESSION_IFACE)
            except LogindError:
                continue  # the session ended between the two calls

            def get(name: str, default: Any, props: dict[str, Variant] = props) -> Any:
                v = props.get(name)
                return default if v is None else v.value

            out.append(
                Session(
                    id=str(session_id),
                    uid=int(uid),
                    user=str(user),
                    seat=str(seat),
                    tty=str(get("TTY", "")),
                    type=str(get("Type", "")),
                    session_class=str(get("Class", "user")),
                    remote=bool(get("Remote", False)),
                    remote_host=str(get("RemoteHost", "")),
                    state=str(get("State", "")),
                    path=str(path),
                )
            )
        return out

    async def interactive_sessions(self) -> list[Session]:
        """Sessions a reboot would interrupt (see the module docstring for the rule)."""
        return [s for s in await self.sessions() if s.interactive]

    def on_sessions_changed(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(reason)`` on each ``SessionNew``/``SessionRemoved`` signal.

        ``reason`` names the signal and the session id (``"SessionRemoved 3"``). The signals
        say nothing about whether the session is interactive: treat a call as "ask
        :meth:`interactive_sessions` again". Subscribe before that first read so a logout in
        between is not lost. Callbacks run in the event loop and must not block. Returns an
        unsubscribe function.
        """
        self._session_callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._session_callbacks:
                self._session_callbacks.remove(callback)

        return unsubscribe

    # -- actions --------------------------------------------------------------------------
    async def warn_sessions(self, message: str, reboot_at: float | None = None) -> None:
        """Broadcast ``message`` to logged-in users through logind's wall mechanism.

        ``reboot_at`` (Unix time, default now) is announced as the reboot time. Implemented as
        ``SetWallMessage(message, true)`` + ``ScheduleShutdown("dry-reboot", usec)``: logind
        walls at scheduling and as the time approaches, and a dry run never reboots.
        """
        await self._call(MANAGER_PATH, MANAGER_IFACE, "SetWallMessage", "sb", message, True)
        when = time.time() if reboot_at is None else reboot_at
        usec = max(0, int(when * 1_000_000))
        await self._call(MANAGER_PATH, MANAGER_IFACE, "ScheduleShutdown", "st", "dry-reboot", usec)

    async def cancel_warning(self) -> bool:
        """Cancel a scheduled (dry-run) shutdown; True if one was pending."""
        (was,) = await self._call(MANAGER_PATH, MANAGER_IFACE, "CancelScheduledShutdown")
        return bool(was)

    async def reboot(self, interactive: bool = False) -> None:
        """Ask logind to reboot now (``Reboot(interactive)``)."""
        await self._call(MANAGER_PATH, MANAGER_IFACE, "Reboot", "b", interactive)

    # -- internals ------------------------------------------------------------------------
    async def _block_inhibited(self) -> str:
        (v,) = await self._call(
            MANAGER_PATH, PROPS_IFACE, "Get", "ss", MANAGER_IFACE, "BlockInhibited"
        )
        return str(v.value)

    def _on_message(self, msg: Message) -> None:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.member in _SESSION_SIGNALS
            and msg.path == MANAGER_PATH
            and msg.interface == MANAGER_IFACE
            and msg.body
        ):
            reason = f"{msg.member} {msg.body[0]}"
            for callback in list(self._session_callbacks):
                try:
                    callback(reason)
                except Exception:  # one bad subscriber must not silence the others
                    log.exception("logind session callback failed")
        elif (
            msg.message_type == MessageType.SIGNAL
            and msg.member == "PropertiesChanged"
            and msg.path == MANAGER_PATH
            and msg.interface == PROPS_IFACE
            and msg.body
            and msg.body[0] == MANAGER_IFACE
        ):
            for waiter in list(self._waiters):
                waiter(msg.body[1], msg.body[2])

    async def _call(
        self, path: str, iface: str, member: str, signature: str = "", *body: Any
    ) -> list[Any]:
        reply = await self._raw(
            Message(
                destination=BUS_NAME,
                path=path,
                interface=iface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise LogindError(f"logind {member}: {reply.error_name}: {text}")
        return list(reply.body)

    async def _raw(self, msg: Message) -> Message:
        if self._bus is None:
            raise LogindError("not connected")
        try:
            reply = await asyncio.wait_for(self._bus.call(msg), self.call_timeout)
        except TimeoutError:
            raise LogindError(f"logind {msg.member}: no reply in {self.call_timeout}s") from None
        except (EOFError, OSError) as e:
            raise LogindError(f"logind {msg.member}: D-Bus connection lost: {e}") from e
        if reply is None:
            raise LogindError(f"logind {msg.member}: no reply")
        return reply
