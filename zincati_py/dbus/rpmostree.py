"""The rpm-ostree adapter: deployments, change notifications, staging and the finalization lock.

Talks to rpm-ostreed (``org.projectatomic.rpmostree1``) over dbus-fast. Facts it is built on:

- rpm-ostreed is D-Bus/systemd activated and exits after ~60 s idle unless a client called
  ``RegisterClient``; we register only for the duration of a transaction, so reads may activate
  it and it may vanish between calls. Each read first calls ``Sysroot.Reload`` (documented as
  the way to sync with the daemon) so the answer reflects the sysroot on disk.
- It emits no custom signals: changes arrive as ``PropertiesChanged`` on the Sysroot/OS
  objects. Changes made while it was not running are seen through inotify on the deployments
  directory and ``/run/ostree`` (the staged deployment and its finalization lock), so
  :meth:`RpmOstree.on_change` covers both. Nothing polls.
- Long operations return a transaction address: a private peer-to-peer D-Bus server. We
  connect (no ``Hello``: there is no bus daemon), call ``Start()`` and wait for
  ``Finished(success, error_message)`` (:mod:`zincati_py.dbus.rpmostree_txn`).
- The OS object path comes from ``Sysroot.Booted``; it is never built from the osname.

Usage::

    ro = RpmOstree(root="/")
    await ro.connect(bus)                    # a connected system-bus MessageBus
    unsubscribe = ro.on_change(lambda reason: ...)
    staged = await ro.stage_update()         # Deployment (finalization locked) or None
    await ro.unlock_finalization(staged)     # right before asking logind to reboot
    await ro.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from zincati_py.dbus.busdaemon import bus_msg
from zincati_py.dbus.rpmostree_txn import RpmOstreeError, TransactionFailed, run_transaction
from zincati_py.deployment import Deployment
from zincati_py.inotify import DirWatch

log = logging.getLogger(__name__)

__all__ = [
    "Deployment",
    "RpmOstree",
    "RpmOstreeError",
    "RpmOstreeUnavailable",
    "TransactionFailed",
    "run_transaction",
]

BUS_NAME = "org.projectatomic.rpmostree1"
SYSROOT_PATH = "/org/projectatomic/rpmostree1/Sysroot"
SYSROOT_IFACE = "org.projectatomic.rpmostree1.Sysroot"
OS_IFACE = "org.projectatomic.rpmostree1.OS"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
_PATH_NAMESPACE = "/org/projectatomic/rpmostree1"
_UNAVAILABLE = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.ChildExited",
    "org.freedesktop.DBus.Error.Spawn.Failed",
    "org.freedesktop.DBus.Error.TimedOut",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
}
# Files in /run/ostree whose changes matter (ostree's runstate, see ostree-sysroot-private.h).
_RUN_FILES = {"staged-deployment", "staged-deployment-locked"}


class RpmOstreeUnavailable(RpmOstreeError):
    """rpm-ostreed is not on the bus and could not be activated (or the call timed out)."""


def deployment(d: dict[str, Variant]) -> Deployment:
    """One entry of ``Sysroot.Deployments`` (rpm-ostreed's deployment dictionary)."""

    def get(key: str, default: Any) -> Any:
        v = d.get(key)
        return default if v is None else v.value

    return Deployment(
        id=str(get("id", "")),
        osname=str(get("osname", "")),
        checksum=str(get("checksum", "")),
        version=str(get("version", "")) or None,
        booted=bool(get("booted", False)),
        staged=bool(get("staged", False)),
        # rpm-ostree only sets this key when true.
        finalization_locked=bool(get("finalization-locked", False)),
        origin=str(get("origin", "")),
        timestamp=int(get("timestamp", 0)),
        serial=int(get("serial", 0)),
        base_checksum=str(get("base-checksum", "")),
        stream=str(getattr(get("base-commit-meta", {}).get("fedora-coreos.stream"), "value", "")),
        container_image_reference=str(get("container-image-reference", "")),
        container_image_reference_digest=str(get("container-image-reference-digest", "")),
    )


ChangeCallback = Callable[[str], None]


class RpmOstree:
    """Async client of rpm-ostreed for one sysroot.

    ``root`` is the sysroot prefix used for the inotify watches and passed to ``ostree`` as
    ``--sysroot`` when not ``/``. ``ostree_command`` is the argv prefix of ostree (the sandbox
    passes its stand-in). ``call_timeout`` bounds every D-Bus call, activation included.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        *,
        ostree_command: Sequence[str] = ("ostree",),
        client_id: str = "zincati-py",
        call_timeout: float = 30.0,
    ) -> None:
        self.root = Path(root)
        self.ostree_command = tuple(ostree_command)
        self.client_id = client_id
        self.call_timeout = call_timeout
        self._bus: MessageBus | None = None
        self._owner: str | None = None
        self._callbacks: list[ChangeCallback] = []
        self._rules: list[str] = []
        self._watcher: DirWatch | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self, bus: MessageBus) -> None:
        """Subscribe to rpm-ostreed's signals and start the inotify watches.

        Works whether or not rpm-ostreed is running; it is not activated here.
        """
        self._bus = bus
        bus.add_message_handler(self._on_message)
        self._rules = [
            f"type='signal',sender='{BUS_NAME}',interface='{PROPS_IFACE}',"
            f"member='PropertiesChanged',path_namespace='{_PATH_NAMESPACE}'",
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{BUS_NAME}'",
        ]
        for rule in self._rules:
            await self._bus_call("AddMatch", "s", rule)
        reply = await self._raw_call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetNameOwner",
                signature="s",
                body=[BUS_NAME],
            )
        )
        self._owner = reply.body[0] if reply.message_type == MessageType.METHOD_RETURN else None
        self._watcher = DirWatch(
            self._watch_targets,
            self._notify,
            accept=self._watch_accepts,
            describe=lambda p: os.path.relpath(p, self.root),
        )

    async def close(self) -> None:
        """Drop the subscriptions and watches; the bus stays open (it is the caller's)."""
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.remove_message_handler(self._on_message)
            if bus.connected:
                for rule in self._rules:
                    with contextlib.suppress(Exception):
                        await self._call_on(bus, bus_msg("RemoveMatch", "s", rule))
        self._callbacks.clear()

    # -- reads ----------------------------------------------------------------------------
    async def deployments(self) -> list[Deployment]:
        """All deployments in boot order (a staged one first), synced with the disk."""
        await self._call(SYSROOT_PATH, SYSROOT_IFACE, "Reload")
        value = await self._get(SYSROOT_PATH, SYSROOT_IFACE, "Deployments")
        return [deployment(d) for d in value]

    async def booted(self) -> Deployment:
        """The booted deployment, read from the booted OS object (path from ``Booted``)."""
        await self._call(SYSROOT_PATH, SYSROOT_IFACE, "Reload")
        os_path = await self._os_path()
        value = await self._get(os_path, OS_IFACE, "BootedDeployment")
        if not value:
            raise RpmOstreeError("rpm-ostree reports no booted deployment")
        return deployment(value)

    async def staged(self) -> Deployment | None:
        """The staged deployment, if any."""
        return next((d for d in await self.deployments() if d.staged), None)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(reason)`` whenever deployment state may have changed.

        Sources: ``PropertiesChanged`` from rpm-ostreed (one call per signal), rpm-ostreed
        appearing/vanishing, and inotify events on the deployments directories and
        ``/run/ostree`` (one call per read burst). One change usually produces several calls:
        treat them as "re-read state", e.g. by waking a task that calls :meth:`deployments`.
        Callbacks run in the event loop and must not block. Returns an unsubscribe function.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    # -- operations -----------------------------------------------------------------------
    async def stage_update(
        self,
        *,
        revision: str | None = None,
        allow_downgrade: bool | None = None,
        timeout: float = 1800.0,
    ) -> Deployment | None:
        """Stage the newest update (or ``revision``) with the finalization lock set.

        ``revision`` (``revision=CHECKSUM``) is rpm-ostree's ``deploy`` of a revision, as Zincati
        runs it: ``skip-branch-check`` and, unless ``allow_downgrade``, no downgrade.
        Runs ``UpdateDeployment`` with ``lock-finalization`` as a transaction, registered as a
        client only meanwhile. Returns the staged deployment afterwards (also when it had been
        staged before), ``None`` when there is nothing to stage. Raises
        :class:`TransactionFailed` if rpm-ostree reports failure, :class:`RpmOstreeUnavailable`
        if it cannot be reached, :class:`TimeoutError` after ``timeout`` seconds (the
        transaction is cancelled).
        """
        await self._call(
            SYSROOT_PATH,
            SYSROOT_IFACE,
            "RegisterClient",
            "a{sv}",
            {"id": Variant("s", self.client_id)},
        )
        try:
            os_path = await self._os_path()
            modifiers = {} if revision is None else {"set-revision": Variant("s", revision)}
            options = {
                "lock-finalization": Variant("b", True),
                "initiating-command-line": Variant("s", self.client_id),
            }
            if revision is not None:
                options["skip-branch-check"] = Variant("b", True)
            if allow_downgrade is not None:
                options["allow-downgrade"] = Variant("b", allow_downgrade)
            reply = await self._call(
                os_path, OS_IFACE, "UpdateDeployment", "a{sv}a{sv}", modifiers, options
            )
            await run_transaction(str(reply[0]), timeout)
        finally:
            with contextlib.suppress(RpmOstreeError):
                await self._call(SYSROOT_PATH, SYSROOT_IFACE, "UnregisterClient", "a{sv}", {})
        return await self.staged()

    async def unlock_finalization(self, deployment: Deployment) -> None:
        """Release the finalization lock of ``deployment``, which must be the staged one.

        Uses ``ostree admin lock-finalization --unlock``: the documented interface (ostree ≥
        2023.8). It takes ostree's sysroot lock and updates everything ostree keeps for the
        lock (the staged-deployment record and ``/run/ostree/staged-deployment-locked``), where
        deleting the file by hand would bypass both. rpm-ostree's ``FinalizeDeployment`` is not
        used because it reboots at once through systemd, past logind's inhibitors and our
        warnings. Idempotent; verifies the result through rpm-ostreed.
        """
        current = await self.staged()
        if current is None or current.checksum != deployment.checksum:
            got = "nothing" if current is None else f"{current.version} ({current.checksum})"
            raise RpmOstreeError(
                f"cannot unlock {deployment.version} ({deployment.checksum}): {got} is staged"
            )
        if not current.finalization_locked:
            return
        argv = [*self.ostree_command, "admin", "lock-finalization", "--unlock"]
        if self.root != Path("/"):
            argv.append(f"--sysroot={self.root}")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.call_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RpmOstreeError(f"{' '.join(argv)}: timed out") from None
        if proc.returncode != 0:
            detail = (err or out).decode(errors="replace").strip()
            raise RpmOstreeError(f"{' '.join(argv)} failed ({proc.returncode}): {detail}")
        after = await self.staged()
        if after is None or after.checksum != deployment.checksum or after.finalization_locked:
            raise RpmOstreeError(f"{deployment.version} is still finalization-locked after unlock")

    async def rollback(self, timeout: float = 600.0) -> None:
        """Make the rollback deployment the default one (rpm-ostree's ``Rollback`` of the
        booted OS, as ``rpm-ostree rollback`` without ``--reboot``), as a transaction.

        rpm-ostree's rollback toggles (called again, it makes the other one the default
        again): the caller checks the deployment order first. Raises as :meth:`stage_update`.
        """
        await self._call(
            SYSROOT_PATH,
            SYSROOT_IFACE,
            "RegisterClient",
            "a{sv}",
            {"id": Variant("s", self.client_id)},
        )
        try:
            os_path = await self._os_path()
            reply = await self._call(os_path, OS_IFACE, "Rollback", "a{sv}", {})
            await run_transaction(str(reply[0]), timeout)
        finally:
            with contextlib.suppress(RpmOstreeError):
                await self._call(SYSROOT_PATH, SYSROOT_IFACE, "UnregisterClient", "a{sv}", {})

    # -- internals ------------------------------------------------------------------------
    def _watch_targets(self) -> list[Path]:
        """``/run/ostree`` and every ``ostree/deploy/<os>/deploy`` (a deployment is a whole
        OS tree: not recursive)."""
        deploy_root = self.root / "ostree/deploy"
        targets = [self.root / "run/ostree", deploy_root]
        if deploy_root.is_dir():
            targets += sorted(p / "deploy" for p in deploy_root.iterdir() if p.is_dir())
        return targets

    def _watch_accepts(self, path: Path) -> bool:
        return path.parent != self.root / "run/ostree" or path.name in _RUN_FILES

    def _notify(self, reason: str) -> None:
        for cb in list(self._callbacks):
            try:
                cb(reason)
            except Exception:  # one bad subscriber must not silence the others
                log.exception("rpm-ostree change callback failed")

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
            if msg.body[0] == BUS_NAME:
                self._owner = msg.body[2] or None
                self._notify("rpm-ostreed " + ("started" if self._owner else "exited"))
        elif (
            msg.member == "PropertiesChanged"
            and msg.interface == PROPS_IFACE
            and msg.sender == self._owner
            and str(msg.path).startswith(_PATH_NAMESPACE)
        ):
            names = sorted([*msg.body[1], *msg.body[2]])
            self._notify(f"PropertiesChanged {msg.body[0].rsplit('.', 1)[-1]}: {', '.join(names)}")

    async def _os_path(self) -> str:
        return str(await self._get(SYSROOT_PATH, SYSROOT_IFACE, "Booted"))

    async def _get(self, path: str, iface: str, prop: str) -> Any:
        (variant,) = await self._call(path, PROPS_IFACE, "Get", "ss", iface, prop, iface_for=iface)
        return variant.value

    async def _call(
        self,
        path: str,
        iface: str,
        member: str,
        signature: str = "",
        *body: Any,
        iface_for: str | None = None,
    ) -> list[Any]:
        msg = Message(
            destination=BUS_NAME,
            path=path,
            interface=iface,
            member=member,
            signature=signature,
            body=list(body),
        )
        reply = await self._raw_call(msg)
        if reply.message_type == MessageType.ERROR:
            what = f"{iface_for or iface}.{member} on {path}"
            text = reply.body[0] if reply.body else ""
            if reply.error_name in _UNAVAILABLE:
                raise RpmOstreeUnavailable(f"rpm-ostreed unavailable ({what}): {text}")
            raise RpmOstreeError(f"{what}: {reply.error_name}: {text}")
        return list(reply.body)

    async def _raw_call(self, msg: Message) -> Message:
        if self._bus is None:
            raise RpmOstreeError("not connected")
        return await self._call_on(self._bus, msg)

    async def _call_on(self, bus: MessageBus, msg: Message) -> Message:
        try:
            reply = await asyncio.wait_for(bus.call(msg), self.call_timeout)
        except TimeoutError:
            raise RpmOstreeUnavailable(
                f"no reply to {msg.interface}.{msg.member} within {self.call_timeout}s"
            ) from None
        except (EOFError, OSError) as e:
            raise RpmOstreeUnavailable(f"D-Bus connection lost: {e}") from e
        if reply is None:
            raise RpmOstreeError(f"no reply to {msg.member}")
        return reply

    async def _bus_call(self, member: str, signature: str, *body: Any) -> None:
        reply = await self._raw_call(bus_msg(member, signature, *body))
        if reply.message_type == MessageType.ERROR:
            raise RpmOstreeError(f"{member}: {reply.error_name}: {reply.body}")
