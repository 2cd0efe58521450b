"""An rpm-ostree daemon double: the real D-Bus protocol over a scripted update stream.

Run it as ``python -m testbed.rpmostree --bus ADDRESS --root DIR --script FILE``
(or through :class:`RpmOstreeDouble` / :func:`install_activation`). It owns
``org.projectatomic.rpmostree1`` and serves the interface XML shipped in
``testbed/data/`` (a copy of ``../shared/dbus/org.projectatomic.rpmostree1.xml``):
introspection returns that XML and every call is checked against its signatures. Modelled
like rpm-ostreed:

- ``Sysroot`` (``Booted``, ``Deployments``, ``RegisterClient``, ``Reload``, ``GetOS``) and one
  OS object whose path clients must take from ``Booted``/``GetOS``;
- ``PropertiesChanged`` whenever a property value changes, no custom signals;
- idle exit: with no registered client and no transaction the process exits after
  ``idle_timeout`` seconds (D-Bus activation brings it back, see :func:`install_activation`);
- ``UpdateDeployment``/``Upgrade`` return a transaction address; the transaction is a
  peer-to-peer D-Bus server on an abstract Unix socket: the client ``Start()``s it and waits for
  ``Finished(success, error_message)``;
- on-disk state under ``--root`` the way ostree keeps it:
  ``ostree/deploy/<osname>/deploy/<checksum>.<serial>`` (+ ``.origin``),
  ``run/ostree/staged-deployment`` (JSON here, a GVariant in ostree) and the finalization lock
  ``run/ostree/staged-deployment-locked``, whose presence is what rpm-ostree reports as
  ``finalization-locked``. State is re-read from disk on every request, so edits made while the
  daemon was not running (or by :mod:`testbed.ostree`) are seen.

Script (JSON)::

    {"osname": "fedora-coreos", "origin": "fedora:fedora/x86_64/coreos/stable",
     "booted": {"version": "40.1", "checksum": "<hex, optional>"},
     "releases": [{"version": "40.2", "available_after_checks": 0}],
     "idle_timeout": 60, "transaction_delay": 0.05, "reboot_on_logind": true}

Releases are listed oldest first (a release may give its ``timestamp``). ``stream`` (default:
the origin ref's last part) is reported as ``fedora-coreos.stream`` in every deployment's
``base-commit-meta``. ``set-revision`` (``rpm-ostree deploy``) refuses an older commit unless
the ``allow-downgrade`` option is true, as rpm-ostreed does. ``available_after_checks`` N
makes a release visible to the (N+1)-th update check; without it the release appears only
through the control method ``PublishRelease``. Checksums default to the SHA-256 of the version.

Test-control interface ``io.github.zincatipy.Test.RpmOstree`` at
``/io/github/zincatipy/Test/RpmOstree`` (same bus name): ``PublishRelease(s version)``,
``Stage(s version, b locked)`` (another tool staged it), ``Reboot() -> s booted_version``,
``SetFailure(s message)`` (non-empty: transactions fail with it), ``GoIdle()`` (exit now as on
idle timeout), ``GetState() -> s json``. With ``reboot_on_logind`` the double also reboots when
the logind double (python-dbusmock) reports a ``Reboot``/``RebootWithFlags`` call through its
``org.freedesktop.DBus.Mock.MethodCalled`` signal, so the demo needs no glue.

A simulated reboot boots the staged deployment only if its finalization lock was released;
a locked staged deployment is discarded, as ostree-finalize-staged does. ``Rollback`` makes the
rollback deployment the default as rpm-ostreed does (both kept); the next reboot boots it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.introspection import Interface, Node

from testbed.bus import PrivateBus, call_method
from testbed.proc import start_with_ready_fd, stop_process

BUS_NAME = "org.projectatomic.rpmostree1"
SYSROOT_PATH = "/org/projectatomic/rpmostree1/Sysroot"
OS_PATH_PREFIX = "/org/projectatomic/rpmostree1/"
SYSROOT_IFACE = "org.projectatomic.rpmostree1.Sysroot"
OS_IFACE = "org.projectatomic.rpmostree1.OS"
TXN_IFACE = "org.projectatomic.rpmostree1.Transaction"
CONTROL_IFACE = "io.github.zincatipy.Test.RpmOstree"
CONTROL_PATH = "/io/github/zincatipy/Test/RpmOstree"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
STATE_REL = "var/lib/rpmostree-double/state.json"
STAGED_REL = "run/ostree/staged-deployment"
LOCK_REL = "run/ostree/staged-deployment-locked"

_CONTROL_XML = f"""<node>
  <interface name="{CONTROL_IFACE}">
    <method name="PublishRelease"><arg name="version" type="s" direction="in"/></method>
    <method name="Stage">
      <arg name="version" type="s" direction="in"/><arg name="locked" type="b" direction="in"/>
    </method>
    <method name="Reboot"><arg name="booted_version" type="s" direction="out"/></method>
    <method name="SetFailure"><arg name="message" type="s" direction="in"/></method>
    <method name="GoIdle"/>
    <method name="GetState"><arg name="state" type="s" direction="out"/></method>
  </interface>
</node>"""


def interface_xml() -> str:
    """The rpm-ostree interface XML shipped as package data."""
    return (
        resources.files("testbed")
        .joinpath("data/org.projectatomic.rpmostree1.xml")
        .read_text(encoding="utf-8")
    )


def os_object_path(osname: str) -> str:
    """rpm-ostreed escapes the osname into one path element (fedora-coreos → fedora_coreos)."""
    return OS_PATH_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", osname)


def default_checksum(version: str) -> str:
    return hashlib.sha256(version.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# On-disk model (shared by the daemon, the ``ostree`` stand-in and tests that edit state offline)


@dataclass
class Release:
    version: str
    checksum: str
    timestamp: int
    available_after_checks: int | None


@dataclass
class Script:
    osname: str
    origin: str
    booted: Release
    releases: list[Release]
    idle_timeout: float = 60.0
    transaction_delay: float = 0.05
    reboot_on_logind: bool = True
    # The base commits' ``fedora-coreos.stream`` metadata (default: the origin ref's last part).
    stream: str = ""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Script:
        base_ts = 1_700_000_000

        def rel(entry: dict[str, Any], index: int) -> Release:
            version = str(entry["version"])
            after = entry.get("available_after_checks")
            return Release(
                version=version,
                checksum=str(entry.get("checksum") or default_checksum(version)),
                timestamp=int(entry.get("timestamp", base_ts + index * 86400)),
                available_after_checks=None if after is None else int(after),
            )

        return cls(
            osname=str(raw.get("osname", "fedora-coreos")),
            origin=str(raw.get("origin", "fedora:fedora/x86_64/coreos/stable")),
            booted=rel(raw["booted"], 0),
            releases=[rel(e, i + 1) for i, e in enumerate(raw.get("releases", []))],
            idle_timeout=float(raw.get("idle_timeout", 60.0)),
            transaction_delay=float(raw.get("transaction_delay", 0.05)),
            reboot_on_logind=bool(raw.get("reboot_on_logind", True)),
            stream=str(
                raw.get("stream")
                or str(raw.get("origin", "fedora:fedora/x86_64/coreos/stable")).rsplit("/", 1)[-1]
            ),
        )

    @classmethod
    def load(cls, path: Path) -> Script:
        return cls.from_dict(json.loads(path.read_text()))

    def release(self, version_or_checksum: str) -> Release:
        for r in [self.booted, *self.releases]:
            if version_or_checksum in (r.version, r.checksum):
                return r
        raise KeyError(f"no release {version_or_checksum!r} in the script")


def _write_json(path: Path, data: object) -> None:
    # Atomic: the adapter's inotify watch must never see a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


class Sysroot:
    """The double's view of ``--root``: deployments on disk plus its bookkeeping file."""

    def __init__(self, root: Path, script: Script) -> None:
        self.root = root
        self.script = script
        self.state_file = root / STATE_REL
        self.deploy_dir = root / "ostree/deploy" / script.osname / "deploy"
        self.staged_file = root / STAGED_REL
        self.lock_file = root / LOCK_REL

    # bookkeeping: ordered non-staged deployments, booted checksum, checks, published releases
    def load(self) -> dict[str, Any]:
        if self.state_file.exists():
            state: dict[str, Any] = json.loads(self.state_file.read_text())
            return state
        b = self.script.booted
        state = {
            "deployments": [self._entry(b, serial=0)],
            "booted": b.checksum,
            "checks": 0,
            "published": [],
            "reboots": 0,
        }
        self._materialise(state["deployments"][0])
        self.save(state)
        return state

    def save(self, state: dict[str, Any]) -> None:
        _write_json(self.state_file, state)

    def _entry(self, r: Release, serial: int) -> dict[str, Any]:
        return {
            "osname": self.script.osname,
            "checksum": r.checksum,
            "version": r.version,
            "timestamp": r.timestamp,
            "origin": self.script.origin,
            "serial": serial,
        }

    def _dir_for(self, entry: dict[str, Any]) -> Path:
        return self.deploy_dir / f"{entry['checksum']}.{entry['serial']}"

    def _materialise(self, entry: dict[str, Any]) -> None:
        d = self._dir_for(entry)
        (d / "usr/lib").mkdir(parents=True, exist_ok=True)
        (d / "usr/lib/os-release").write_text(f"VERSION_ID={entry['version']}\n")
        origin = d.with_name(d.name + ".origin")
        origin.write_text(f"[origin]\nrefspec={entry['origin']}\n")

    def _remove(self, entry: dict[str, Any]) -> None:
        d = self._dir_for(entry)
        shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            d.with_name(d.name + ".origin").unlink()

    def staged(self) -> dict[str, Any] | None:
        try:
            staged: dict[str, Any] = json.loads(self.staged_file.read_text())
        except FileNotFoundError:
            return None
        return staged

    def stage(self, r: Release, locked: bool) -> dict[str, Any]:
        """What ``ostree admin deploy --stage [--lock-finalization]`` leaves behind."""
        state = self.load()
        old = self.staged()
        if old is not None:
            self._remove(old)
        used = {d["serial"] for d in state["deployments"] if d["checksum"] == r.checksum}
        entry = self._entry(r, serial=max(used) + 1 if used else 0)
        self._materialise(entry)
        # Lock first so no observer ever sees an unlocked staged deployment we meant locked.
        if locked:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            self.lock_file.touch()
        else:
            with contextlib.suppress(FileNotFoundError):
                self.lock_file.unlink()
        _write_json(self.staged_file, entry)
        return entry

    def rollback(self) -> None:
        """What rpm-ostree's ``Rollback`` does (rollback_transaction_execute): the deployment
        after the booted one (the rollback deployment) becomes the default; without one, but
        with one before it (a rollback done already), the booted one goes back on top. Every
        deployment is kept; a staged one is dropped (the deployment list is rewritten)."""
        state = self.load()
        deps = state["deployments"]
        at = next(i for i, d in enumerate(deps) if d["checksum"] == state["booted"])
        if at + 1 < len(deps):
            first = deps.pop(at + 1)
        elif at > 0:
            first = deps.pop(at)
        else:
            raise ValueError("No rollback deployment found")
        deps.insert(0, first)
        staged = self.staged()
        if staged is not None:
            self._remove(staged)
        for f in (self.staged_file, self.lock_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        self.save(state)

    def boot_default(self) -> dict[str, Any] | None:
        """At boot, without a staged deployment to finalize (the bootloader's part): the
        default deployment (the first; another one after a ``Rollback``) is the one booted.
        Returns it when that changed the booted deployment."""
        state = self.load()
        default = state["deployments"][0]
        if self.staged() is not None or default["checksum"] == state["booted"]:
            return None
        state["booted"] = default["checksum"]
        state["reboots"] += 1
        self.save(state)
        return dict(default)

    def reboot(self) -> dict[str, Any]:
        """Finalize (if unlocked) and boot; /run is a tmpfs, so the staged state vanishes.
        Without a finalized staged deployment the default one (the first) boots: after a
        rollback that is the previous deployment, and both are kept."""
        state = self.load()
        staged = self.staged()
        booted = next(d for d in state["deployments"] if d["checksum"] == state["booted"])
        default = state["deployments"][0]
        if staged is not None and not self.lock_file.exists():
            keep = [staged, booted]
            state["booted"] = staged["checksum"]
        elif default is not booted:
            keep = list(state["deployments"])
            state["booted"] = default["checksum"]
            if staged is not None:
                self._remove(staged)
        else:
            # A reboot into the same default changes no deployment (ostree keeps the rollback
            # deployment); only a staged one that was not finalized goes.
            keep = list(state["deployments"])
            if staged is not None:
                self._remove(staged)
        for d in state["deployments"]:
            if d not in keep:
                self._remove(d)
        state["deployments"] = keep
        state["reboots"] += 1
        for f in (self.staged_file, self.lock_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        self.save(state)
        return next(d for d in keep if d["checksum"] == state["booted"])

    def deployment_variants(self) -> list[dict[str, Variant]]:
        """``Sysroot.Deployments`` in boot order (staged first), rpm-ostreed's keys."""
        state = self.load()
        staged = self.staged()
        out: list[dict[str, Variant]] = []
        entries = ([staged] if staged else []) + list(state["deployments"])
        for e in entries:
            is_staged = e is staged
            v = {
                "id": Variant("s", f"{e['osname']}-{e['checksum']}.{e['serial']}"),
                "osname": Variant("s", e["osname"]),
                "serial": Variant("i", int(e["serial"])),
                "checksum": Variant("s", e["checksum"]),
                "version": Variant("s", e["version"]),
                "timestamp": Variant("t", int(e["timestamp"])),
                "origin": Variant("s", e["origin"]),
                "booted": Variant("b", not is_staged and e["checksum"] == state["booted"]),
                "staged": Variant("b", is_staged),
                "pinned": Variant("b", False),
                "unlocked": Variant("s", "none"),
                "packages": Variant("as", []),
                "requested-packages": Variant("as", []),
                "base-commit-meta": Variant(
                    "a{sv}",
                    {
                        "fedora-coreos.stream": Variant("s", self.script.stream),
                        "version": Variant("s", e["version"]),
                    },
                ),
            }
            # rpm-ostree sets the key only when true (lock file present for the staged one).
            if is_staged and self.lock_file.exists():
                v["finalization-locked"] = Variant("b", True)
            out.append(v)
        return out


# ---------------------------------------------------------------------------------------------
# Peer-to-peer transaction server


class _PeerBus(MessageBus):
    """A dbus-fast connection over an accepted, already authenticated p2p socket (no Hello)."""

    def attach(self, sock: socket.socket) -> None:
        from dbus_fast.aio.message_bus import _MessageWriter
        from dbus_fast.aio.message_reader import build_message_reader

        sock.setblocking(False)
        self._sock = sock
        self._stream = sock.makefile("rwb")
        self._fd = sock.fileno()
        self._writer = _MessageWriter(self)
        self.unique_name = ":peer"
        self._loop.add_reader(
            self._fd,
            build_message_reader(
                self._sock, self._process_message, self._finalize, self._negotiate_unix_fd
            ),
        )


async def _server_auth(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bool:
    """Server side of the SASL handshake, as rpm-ostreed's transaction server does it.

    rpm-ostreed creates the server with ``g_dbus_server_new_sync(..., G_DBUS_SERVER_FLAGS_NONE,
    guid, NULL /* no GDBusAuthObserver */, ...)``: GDBus then accepts EXTERNAL for *any* uid
    whose claim matches the kernel's ``SO_PEERCRED`` (no ``..._REQUIRE_SAME_USER`` flag), and
    refuses ANONYMOUS. Who may start a transaction at all is decided on the system bus (bus
    policy, polkit) when the client calls ``UpdateDeployment``; the socket address is handed
    only to that caller. So Zincati (user ``zincati``) and our agent (user ``zincati-py``) stage
    through a daemon running as root. A claim that differs from the peer's real uid is refused.
    """
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    guid = uuid.uuid4().hex

    async def line() -> bytes:
        buf = b""
        # One byte at a time: the first D-Bus message may follow BEGIN in the same packet.
        while not buf.endswith(b"\r\n"):
            ch = await loop.sock_recv(sock, 1)
            if not ch or len(buf) > 1024:
                raise ConnectionError("peer hung up during auth")
            buf += ch
        return buf[:-2]

    if await loop.sock_recv(sock, 1) != b"\0":
        return False
    authenticated = False
    while True:
        words = (await line()).split()
        if not words:
            continue
        cmd = words[0]
        if cmd == b"AUTH" and len(words) >= 2 and words[1] == b"EXTERNAL":
            claimed = bytes.fromhex(words[2].decode()).decode() if len(words) > 2 else str(uid)
            if claimed != str(uid):
                await loop.sock_sendall(sock, b"REJECTED EXTERNAL\r\n")
                continue
            authenticated = True
            await loop.sock_sendall(sock, b"OK " + guid.encode() + b"\r\n")
        elif cmd == b"AUTH":
            await loop.sock_sendall(sock, b"REJECTED EXTERNAL\r\n")
        elif cmd == b"NEGOTIATE_UNIX_FD":
            await loop.sock_sendall(sock, b"AGREE_UNIX_FD\r\n")
        elif cmd == b"BEGIN":
            return authenticated  # BEGIN before OK: GDBus drops the connection
        elif cmd == b"CANCEL":
            await loop.sock_sendall(sock, b"REJECTED EXTERNAL\r\n")
        else:
            await loop.sock_sendall(sock, b"ERROR\r\n")


class Transaction:
    """One long operation; its address is ``unix:abstract=...`` served until finished."""

    def __init__(
        self,
        title: str,
        work: Callable[[], tuple[bool, str]],
        delay: float,
        on_done: Callable[[Transaction], None],
    ) -> None:
        self.title = title
        self._work = work
        self._delay = delay
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._name = f"rpmostree-double-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.address = f"unix:abstract={self._name}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + self._name)
        self._listener.listen(8)
        self._listener.setblocking(False)
        self._peers: list[_PeerBus] = []
        self._result: tuple[bool, str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._accept_task = self._loop.create_task(self._accept())
        # rpm-ostreed aborts a transaction nobody connects to; don't leak it forever.
        self._abandon = self._loop.call_later(60.0, self._finish, (False, "abandoned"))

    async def _accept(self) -> None:
        while True:
            sock, _ = await self._loop.sock_accept(self._listener)
            try:
                ok = await asyncio.wait_for(_server_auth(self._loop, sock), 10)
            except (OSError, TimeoutError, ValueError, ConnectionError):
                ok = False
            if not ok:
                sock.close()
                continue
            bus = _PeerBus(bus_address=self.address)
            bus.attach(sock)
            bus.add_message_handler(functools.partial(self._handle, bus))
            self._peers.append(bus)

    def _handle(self, bus: _PeerBus, msg: Message) -> Message | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        if msg.interface not in (TXN_IFACE, None):
            return None  # Introspect/Peer: dbus-fast's defaults answer
        if msg.member == "Start" and msg.signature == "":
            if self._result is not None:
                # Late client: tell it the outcome right away.
                self._loop.call_soon(self._emit_finished, bus, self._result)
                return Message.new_method_return(msg, "b", [False])
            started = self._task is None
            if started:
                self._abandon.cancel()
                self._task = self._loop.create_task(self._run())
            return Message.new_method_return(msg, "b", [started])
        if msg.member == "Cancel" and msg.signature == "":
            self.cancel()
            return Message.new_method_return(msg)
        return Message.new_error(
            msg, "org.freedesktop.DBus.Error.UnknownMethod", f"no method {msg.member}"
        )

    @staticmethod
    def _emit_finished(bus: _PeerBus, result: tuple[bool, str]) -> None:
        bus.send(Message.new_signal("/", TXN_IFACE, "Finished", "bs", list(result)))

    def cancel(self) -> None:
        if self._result is None:
            if self._task is not None:
                self._task.cancel()
            self._finish((False, "Transaction cancelled"))

    async def _run(self) -> None:
        await asyncio.sleep(self._delay)
        try:
            result = self._work()
        except Exception as e:  # the daemon reports failures, it does not die of them
            result = (False, f"{type(e).__name__}: {e}")
        self._finish(result)

    def _finish(self, result: tuple[bool, str]) -> None:
        if self._result is not None:
            return
        self._result = result
        for bus in self._peers:
            self._emit_finished(bus, result)
        self._on_done(self)
        # Let the Finished signals flush before the server goes away.
        self._loop.call_later(1.0, self.close)

    def close(self) -> None:
        self._abandon.cancel()
        self._accept_task.cancel()
        self._listener.close()
        for bus in self._peers:
            bus.disconnect()
        self._peers.clear()


# ---------------------------------------------------------------------------------------------
# The daemon


class DBusError(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


class Daemon:
    def __init__(self, bus: MessageBus, sysroot: Sysroot) -> None:
        self.bus = bus
        self.sysroot = sysroot
        self.script = sysroot.script
        self.os_path = os_object_path(self.script.osname)
        node = Node.parse(interface_xml())
        self.ifaces: dict[str, Interface] = {i.name: i for i in node.interfaces}
        self.ifaces[CONTROL_IFACE] = Node.parse(_CONTROL_XML).interfaces[0]
        self.clients: set[str] = set()
        self.failure = ""
        self.transaction: Transaction | None = None
        self.txn_info: tuple[str, str, str] = ("", "", "")
        self._last: dict[tuple[str, str], Any] = {}
        self._idle: asyncio.TimerHandle | None = None
        self.exit = asyncio.get_running_loop().create_future()

    # -- properties -----------------------------------------------------------------------
    def properties(self, path: str, iface: str) -> dict[str, Variant]:
        if (path, iface) == (SYSROOT_PATH, SYSROOT_IFACE):
            return {
                "Booted": Variant("o", self.os_path),
                "Path": Variant("s", str(self.sysroot.root)),
                "ActiveTransaction": Variant("(sss)", list(self.txn_info)),
                "ActiveTransactionPath": Variant(
                    "s", self.transaction.address if self.transaction else ""
                ),
                "AutomaticUpdatePolicy": Variant("s", "none"),
                "Deployments": Variant("aa{sv}", self.sysroot.deployment_variants()),
            }
        if (path, iface) == (self.os_path, OS_IFACE):
            deps = self.sysroot.deployment_variants()
            booted = next(d for d in deps if d["booted"].value)
            rollback = [d for d in deps if not d["booted"].value and not d["staged"].value]
            return {
                "BootedDeployment": Variant("a{sv}", booted),
                "DefaultDeployment": Variant("a{sv}", deps[0]),
                "RollbackDeployment": Variant("a{sv}", rollback[0] if rollback else {}),
                "CachedUpdate": Variant("a{sv}", {}),
                "HasCachedUpdateRpmDiff": Variant("b", False),
                "Name": Variant("s", self.script.osname),
            }
        raise DBusError("org.freedesktop.DBus.Error.UnknownInterface", f"no {iface} at {path}")

    def sync_properties(self) -> None:
        """Emit PropertiesChanged for every value that differs from what was last seen."""
        for path, iface in ((SYSROOT_PATH, SYSROOT_IFACE), (self.os_path, OS_IFACE)):
            props = self.properties(path, iface)
            changed = {}
            for name, var in props.items():
                key = (path, name)
                if self._last.get(key) != var.value:
                    if key in self._last:
                        changed[name] = var
                    self._last[key] = var.value
            if changed:
                self.bus.send(
                    Message.new_signal(
                        path,
                        PROPS_IFACE,
                        "PropertiesChanged",
                        "sa{sv}as",
                        [iface, changed, []],
                    )
                )

    # -- idle exit ------------------------------------------------------------------------
    def touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self.clients and self.transaction is None and self.script.idle_timeout > 0:
            self._idle = asyncio.get_running_loop().call_later(
                self.script.idle_timeout, self.go_idle
            )

    def go_idle(self) -> None:
        if not self.exit.done():
            self.exit.set_result(None)

    # -- message dispatch -----------------------------------------------------------------
    def handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type == MessageType.SIGNAL:
            self._on_signal(msg)
            return None
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        if msg.interface != CONTROL_IFACE:
            self.touch()
        try:
            result = self._dispatch(msg)
        except DBusError as e:
            return Message.new_error(msg, e.name, e.text)
        if result is None:  # answered later
            return True
        signature, body = result
        self.sync_properties()
        return Message.new_method_return(msg, signature, body)

    def _on_signal(self, msg: Message) -> None:
        if msg.member == "NameOwnerChanged" and msg.body[0] in self.clients and not msg.body[2]:
            # rpm-ostreed drops registrations of clients that left the bus.
            self.clients.discard(msg.body[0])
            self.touch()
        elif (
            msg.member == "MethodCalled"
            and msg.interface == "org.freedesktop.DBus.Mock"
            and msg.path == "/org/freedesktop/login1"
            and msg.body[0] in ("Reboot", "RebootWithFlags")
            and self.script.reboot_on_logind
        ):
            self.reboot()

    def _check_args(self, msg: Message, iface: Interface) -> None:
        for m in iface.methods:
            if m.name == msg.member:
                expected = "".join(str(a.signature) for a in m.in_args)
                if msg.signature != expected:
                    raise DBusError(
                        "org.freedesktop.DBus.Error.InvalidArgs",
                        f"{msg.member} takes ({expected}), got ({msg.signature})",
                    )
                return
        raise DBusError("org.freedesktop.DBus.Error.UnknownMethod", f"no method {msg.member}")

    def _dispatch(self, msg: Message) -> tuple[str, list[Any]] | None:
        path, iface, member = str(msg.path), msg.interface, msg.member
        if iface == "org.freedesktop.DBus.Introspectable" and member == "Introspect":
            return "s", [self._introspect(path)]
        if iface == "org.freedesktop.DBus.Peer":
            return ("s", [uuid.uuid4().hex]) if member == "GetMachineId" else ("", [])
        if iface == PROPS_IFACE:
            return self._props_call(msg)
        known = {
            SYSROOT_PATH: (SYSROOT_IFACE,),
            self.os_path: (OS_IFACE, "org.projectatomic.rpmostree1.OSExperimental"),
            CONTROL_PATH: (CONTROL_IFACE,),
        }
        if path not in known or (iface is not None and iface not in known[path]):
            raise DBusError("org.freedesktop.DBus.Error.UnknownObject", f"no {iface} at {path}")
        iface = iface or known[path][0]
        self._check_args(msg, self.ifaces[iface])
        handler = getattr(self, f"_m_{iface.rsplit('.', 1)[-1]}_{member}", None)
        if handler is None:
            raise DBusError(
                "org.freedesktop.DBus.Error.NotSupported",
                f"{iface}.{member} is not implemented by the rpm-ostree double",
            )
        result: tuple[str, list[Any]] | None = handler(msg)
        return result

    def _introspect(self, path: str) -> str:
        if path == SYSROOT_PATH:
            ifaces = [SYSROOT_IFACE]
        elif path == self.os_path:
            ifaces = [OS_IFACE, "org.projectatomic.rpmostree1.OSExperimental"]
        elif path == CONTROL_PATH:
            ifaces = [CONTROL_IFACE]
        else:
            prefix = path.rstrip("/") + "/"
            kids = {
                p[len(prefix) :].split("/")[0]
                for p in (SYSROOT_PATH, self.os_path, CONTROL_PATH)
                if p.startswith(prefix)
            }
            node = Node(path)
            node.nodes = [Node(k) for k in sorted(kids)]
            return str(node.tostring())
        node = Node(path, interfaces=[self.ifaces[i] for i in ifaces])
        return str(node.tostring())

    def _props_call(self, msg: Message) -> tuple[str, list[Any]]:
        if msg.member == "GetAll" and msg.signature == "s":
            return "a{sv}", [self.properties(str(msg.path), msg.body[0])]
        if msg.member == "Get" and msg.signature == "ss":
            props = self.properties(str(msg.path), msg.body[0])
            if msg.body[1] not in props:
                raise DBusError("org.freedesktop.DBus.Error.UnknownProperty", msg.body[1])
            return "v", [props[msg.body[1]]]
        if msg.member == "Set":
            raise DBusError("org.freedesktop.DBus.Error.PropertyReadOnly", "read-only")
        raise DBusError("org.freedesktop.DBus.Error.UnknownMethod", str(msg.member))

    # -- Sysroot --------------------------------------------------------------------------
    def _m_Sysroot_RegisterClient(self, msg: Message) -> tuple[str, list[Any]]:
        assert msg.sender is not None
        self.clients.add(msg.sender)
        self.touch()
        return "", []

    def _m_Sysroot_UnregisterClient(self, msg: Message) -> tuple[str, list[Any]]:
        self.clients.discard(str(msg.sender))
        self.touch()
        return "", []

    def _m_Sysroot_Reload(self, msg: Message) -> tuple[str, list[Any]]:
        return "", []  # properties are re-read from disk after every call

    def _m_Sysroot_ReloadConfig(self, msg: Message) -> tuple[str, list[Any]]:
        return "", []

    def _m_Sysroot_GetOS(self, msg: Message) -> tuple[str, list[Any]]:
        if msg.body[0] not in ("", self.script.osname):
            raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"No such OS {msg.body[0]}")
        return "o", [self.os_path]

    # -- OS -------------------------------------------------------------------------------
    def _m_OS_UpdateDeployment(self, msg: Message) -> tuple[str, list[Any]]:
        modifiers: dict[str, Variant] = msg.body[0]
        options: dict[str, Variant] = msg.body[1]
        return self._new_transaction(msg, "update", modifiers, options)

    def _m_OS_Upgrade(self, msg: Message) -> tuple[str, list[Any]]:
        return self._new_transaction(msg, "upgrade", {}, msg.body[0])

    def _new_transaction(
        self, msg: Message, title: str, modifiers: dict[str, Variant], options: dict[str, Variant]
    ) -> tuple[str, list[Any]]:
        if self.transaction is not None:
            raise DBusError(
                "org.freedesktop.DBus.Error.Failed",
                f"Transaction in progress: {self.transaction.title}",
            )
        unsupported = set(modifiers) - {"set-revision"}
        if unsupported:
            raise DBusError(
                "org.freedesktop.DBus.Error.NotSupported",
                f"modifiers not modelled by the double: {sorted(unsupported)}",
            )
        revision = modifiers["set-revision"].value if "set-revision" in modifiers else None
        lock = bool(options["lock-finalization"].value) if "lock-finalization" in options else False
        dry = any(bool(options[k].value) for k in ("dry-run", "download-only") if k in options)
        # rpm-ostreed's default: no downgrade unless "allow-downgrade" (the deploy CLI's
        # --disallow-downgrade sends false).
        downgrade = "allow-downgrade" in options and bool(options["allow-downgrade"].value)

        def work() -> tuple[bool, str]:
            return self._update(revision, lock, dry, downgrade)

        txn = Transaction(title, work, self.script.transaction_delay, self._txn_done)
        self.transaction = txn
        self.txn_info = (str(msg.member), str(msg.sender), SYSROOT_PATH)
        self.touch()
        return "s", [txn.address]

    def _m_OS_Rollback(self, msg: Message) -> tuple[str, list[Any]]:
        txn = self.transaction
        if txn is not None and txn.title == "rollback" and self.txn_info[0] == "Rollback":
            # rpm-ostreed (prep_for_txn): a compatible invocation while the transaction is
            # pending gets that transaction's address (its first caller may have died).
            return "s", [txn.address]
        if self.transaction is not None:
            raise DBusError(
                "org.freedesktop.DBus.Error.Failed",
                f"Transaction in progress: {self.transaction.title}",
            )

        def work() -> tuple[bool, str]:
            if self.failure:
                return False, self.failure
            try:
                self.sysroot.rollback()
            except ValueError as exc:
                return False, str(exc)
            return True, ""

        txn = Transaction("rollback", work, self.script.transaction_delay, self._txn_done)
        self.transaction = txn
        self.txn_info = (str(msg.member), str(msg.sender), SYSROOT_PATH)
        self.touch()
        return "s", [txn.address]

    def _txn_done(self, txn: Transaction) -> None:
        if self.transaction is txn:
            self.transaction = None
            self.txn_info = ("", "", "")
        self.sync_properties()
        self.touch()

    def _update(
        self, revision: str | None, lock: bool, dry: bool, allow_downgrade: bool = False
    ) -> tuple[bool, str]:
        if self.failure:
            return False, self.failure
        state = self.sysroot.load()
        state["checks"] += 1
        self.sysroot.save(state)
        if revision is not None:
            target = self.script.release(re.sub(r"^(revision|version)=", "", revision))
            booted = self.script.release(state["booted"])
            if target.timestamp < booted.timestamp and not allow_downgrade:
                # ostree's sysroot upgrader refuses an older commit without ALLOW_OLDER.
                return False, (
                    f"Upgrade target revision '{target.checksum}' with timestamp "
                    f"'{target.timestamp}' is chronologically older than current revision "
                    f"'{booted.checksum}' with timestamp '{booted.timestamp}'; use "
                    "--allow-downgrade to permit"
                )
        else:
            available = [
                r
                for r in self.script.releases
                if r.version in state["published"]
                or (
                    r.available_after_checks is not None
                    and state["checks"] > r.available_after_checks
                )
            ]
            booted_idx = self._index(state["booted"])
            newer = [r for r in available if self._index(r.checksum) > booted_idx]
            if not newer:
                return True, "No upgrade available."
            target = newer[-1]
        staged = self.sysroot.staged()
        if target.checksum == state["booted"] or (
            staged is not None and staged["checksum"] == target.checksum
        ):
            return True, "No change."
        if dry:
            return True, f"Would deploy {target.version}"
        self.sysroot.stage(target, lock)
        return True, ""

    def _index(self, checksum: str) -> int:
        order = [self.script.booted, *self.script.releases]
        return next((i for i, r in enumerate(order) if r.checksum == checksum), -1)

    # -- test control ---------------------------------------------------------------------
    def _m_RpmOstree_PublishRelease(self, msg: Message) -> tuple[str, list[Any]]:
        r = self._release(msg.body[0])
        state = self.sysroot.load()
        if r.version not in state["published"]:
            state["published"].append(r.version)
            self.sysroot.save(state)
        return "", []

    def _m_RpmOstree_Stage(self, msg: Message) -> tuple[str, list[Any]]:
        self.sysroot.stage(self._release(msg.body[0]), bool(msg.body[1]))
        return "", []

    def _m_RpmOstree_Reboot(self, msg: Message) -> tuple[str, list[Any]]:
        return "s", [self.reboot()]

    def _m_RpmOstree_SetFailure(self, msg: Message) -> tuple[str, list[Any]]:
        self.failure = msg.body[0]
        return "", []

    def _m_RpmOstree_GoIdle(self, msg: Message) -> tuple[str, list[Any]]:
        # Exit right after the reply is sent.
        asyncio.get_running_loop().call_soon(self.go_idle)
        return "", []

    def _m_RpmOstree_GetState(self, msg: Message) -> tuple[str, list[Any]]:
        state = self.sysroot.load()
        staged = self.sysroot.staged()
        state["staged"] = staged
        state["finalization_locked"] = staged is not None and self.sysroot.lock_file.exists()
        state["clients"] = sorted(self.clients)
        return "s", [json.dumps(state, sort_keys=True)]

    def _release(self, version: str) -> Release:
        try:
            return self.script.release(version)
        except KeyError as e:
            raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", str(e)) from None

    def reboot(self) -> str:
        booted = self.sysroot.reboot()
        self.clients.clear()  # nothing survives a reboot
        self.sync_properties()
        self.touch()
        return str(booted["version"])


async def serve(bus_address: str, root: Path, script: Script, ready_fd: int | None = None) -> int:
    bus = await MessageBus(bus_address=bus_address).connect()
    daemon = Daemon(bus, Sysroot(root, script))
    daemon.sysroot.load()
    daemon.sync_properties()  # prime the change tracker
    bus.add_message_handler(daemon.handle)
    rules = [
        "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'",
        "type='signal',interface='org.freedesktop.DBus.Mock',member='MethodCalled',"
        "path='/org/freedesktop/login1'",
    ]
    for rule in rules:
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[rule],
            )
        )
    from dbus_fast import RequestNameReply

    reply = await bus.request_name(BUS_NAME)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        print(f"rpm-ostree double: could not own {BUS_NAME}: {reply}", file=sys.stderr)
        bus.disconnect()
        return os.EX_UNAVAILABLE
    daemon.touch()
    if ready_fd is not None:
        os.write(ready_fd, b"READY\n")
        os.close(ready_fd)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.go_idle)
    disconnected = loop.create_task(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
    await asyncio.wait([daemon.exit, disconnected], return_when=asyncio.FIRST_COMPLETED)
    if disconnected.done() and not disconnected.cancelled():
        # The bus went away (dbus-daemon stopping at shutdown): EOFError, expected; retrieved
        # here so asyncio does not log "Task exception was never retrieved" with a traceback.
        disconnected.exception()
    if daemon.transaction is not None:
        daemon.transaction.close()
    if not disconnected.done():
        await bus.release_name(BUS_NAME)
        bus.disconnect()
        disconnected.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.rpmostree")
    p.add_argument("--bus", required=True, help="D-Bus address of the (private) system bus")
    p.add_argument("--root", required=True, type=Path, help="sysroot prefix")
    p.add_argument("--script", required=True, type=Path, help="update stream (JSON)")
    p.add_argument("--idle-timeout", type=float, help="override the script's idle_timeout")
    p.add_argument("--ready-fd", type=int, help="write READY to this fd once the name is owned")
    args = p.parse_args(argv)
    script = Script.load(args.script)
    if args.idle_timeout is not None:
        script.idle_timeout = args.idle_timeout
    return asyncio.run(serve(args.bus, args.root, script, args.ready_fd))


# ---------------------------------------------------------------------------------------------
# Harness helpers


@dataclass
class RpmOstreeDouble:
    """Start/stop the double as a child process: ``RpmOstreeDouble(address, root, script).start()``.

    ``script`` is a dict (written to ``<root>/../rpmostree-script.json``) or a path. ``start()``
    returns once the bus name is owned. A double that exited on idle is started again by
    ``start()`` (or by D-Bus activation after :func:`install_activation`).
    """

    bus_address: str
    root: Path
    script: dict[str, Any] | Path
    idle_timeout: float | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def script_path(self) -> Path:
        if isinstance(self.script, Path):
            return self.script
        path = self.root.parent / f"{self.root.name}-rpmostree-script.json"
        _write_json(path, self.script)  # always: a stale script from an earlier run must not win
        return path

    @property
    def ostree_command(self) -> tuple[str, ...]:
        """Argv prefix of the ``ostree`` stand-in operating on this double's root."""
        return (sys.executable, "-m", "testbed.ostree")

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "testbed.rpmostree",
            "--bus",
            self.bus_address,
            "--root",
            str(self.root),
            "--script",
            str(self.script_path),
        ]
        if self.idle_timeout is not None:
            cmd += ["--idle-timeout", str(self.idle_timeout)]
        return cmd

    def start(self, timeout: float = 10.0) -> RpmOstreeDouble:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = None  # until it is up (a failed start leaves none)
        self.process = start_with_ready_fd(
            lambda ready_fd: [*self.command(), "--ready-fd", str(ready_fd)],
            what="rpm-ostree double",
            timeout=timeout,
        )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit (e.g. on idle); returns its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def sysroot(self) -> Sysroot:
        """Offline access to the on-disk state (e.g. to stage while the daemon is idle)."""
        return Sysroot(self.root, Script.load(self.script_path))


def install_activation(bus: PrivateBus, double: RpmOstreeDouble) -> Path:
    """Make dbus-daemon start the double on demand, as systemd activates rpm-ostreed.

    Adds a ``<servicedir>`` to the running :class:`PrivateBus`'s config and reloads it
    (``ReloadConfig``); from then on any call to ``org.projectatomic.rpmostree1`` starts
    ``double.command()`` if it is not running. Returns the service file.
    """
    service_dir = bus.directory / "services"
    service_dir.mkdir(exist_ok=True)
    service = service_dir / f"{BUS_NAME}.service"
    exec_line = " ".join(_quote(a) for a in double.command())
    service.write_text(f"[D-BUS Service]\nName={BUS_NAME}\nExec={exec_line}\n")
    config = bus.directory / "bus.conf"
    text = config.read_text()
    tag = f"<servicedir>{service_dir}</servicedir>"
    if tag not in text:
        config.write_text(text.replace("</busconfig>", f"  {tag}\n</busconfig>"))
    subprocess.run(
        [
            "dbus-send",
            f"--bus={bus.address}",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ReloadConfig",
        ],
        check=True,
        capture_output=True,
        timeout=10,
    )
    return service


def _quote(arg: str) -> str:
    # dbus-daemon splits Exec= like a shell (g_shell_parse_argv rules).
    return "'" + arg.replace("'", "'\\''") + "'" if re.search(r"[^\w@%+=:,./-]", arg) else arg


async def control(bus: MessageBus, member: str, signature: str = "", *body: Any) -> list[Any]:
    """Call a method of the double's test-control interface; returns the reply body."""
    reply = await call_method(bus, BUS_NAME, CONTROL_PATH, CONTROL_IFACE, member, signature, *body)
    return list(reply.body)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
