"""Harness for agent tests: the agent as a real subprocess against real peers.

A ``Node`` (the ``node`` fixture in conftest.py) is one sandboxed host: the private bus
(``system_bus`` from tests/conftest.py), the rpm-ostree double (its sysroot doubles as the
agent's ``--root``), python-dbusmock's logind (``testbed.logind``) and
``node.agent(...)`` to start ``zincati-py agent``. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from testbed.bus import PrivateBus
from testbed.proc import agent_argv, zincati_py_argv
from testbed.rpmostree import RpmOstreeDouble

ZPY = tuple(zincati_py_argv())
AGENT_BUS_NAME = "io.github.zincatipy.Agent1"


def dbus_call(
    address: str,
    dest: str,
    path: str,
    iface: str,
    member: str,
    signature: str = "",
    *body: Any,
    timeout: float = 10.0,
) -> list[Any]:
    """One method call on a fresh connection; raises RuntimeError on a D-Bus error."""
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    async def go() -> list[Any]:
        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        try:
            reply = await asyncio.wait_for(
                bus.call(
                    Message(
                        destination=dest,
                        path=path,
                        interface=iface,
                        member=member,
                        signature=signature,
                        body=list(body),
                    )
                ),
                timeout,
            )
        finally:
            bus.disconnect()
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}: {reply.body}")
        return list(reply.body)

    return asyncio.run(go())


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` (test side only) until truthy; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class AgentProcess:
    def __init__(
        self, node: Node, env: dict[str, str], log: Path, ostree_command: Sequence[str]
    ) -> None:
        self.node = node
        self.log_path = log
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            agent_argv(node.root, node.bus.address, ostree_command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        self._log.close()
        return self.process.returncode


class Node:
    """One sandboxed host: root, bus, rpm-ostree double, logind mock, agents started;
    ``systemd_bus``: its systemd manager's bus (the test bed's user manager, where
    boot-complete.target is reached as on a booted host), the agents' ``--systemd-bus``."""

    def __init__(
        self,
        bus: PrivateBus,
        double: RpmOstreeDouble,
        logind: Any,
        tmp: Path,
        systemd_bus: str | None = None,
    ) -> None:
        self.bus = bus
        self.systemd_bus = systemd_bus
        self.double = double
        self.logind = logind
        self.root = double.root
        self.tmp = tmp
        self.agents: list[AgentProcess] = []
        self.config_dir = self.root / "etc/zincati/config.d"

    def write_config(self, name: str, text: str) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.config_dir / name)

    def agent(self, ostree_command: Sequence[str] | None = None, **env: str) -> AgentProcess:
        """Start ``zincati-py agent`` (``ostree_command``: instead of the double's stand-in)."""
        manager = {"ZINCATI_PY_SYSTEMD_BUS": self.systemd_bus} if self.systemd_bus else {}
        full = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address, **manager, **env}
        full.pop("NOTIFY_SOCKET", None) if "NOTIFY_SOCKET" not in env else None
        a = AgentProcess(
            self,
            full,
            self.tmp / f"agent-{len(self.agents)}.log",
            ostree_command or self.double.ostree_command,
        )
        self.agents.append(a)
        return a

    # -- observations ---------------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.root / "run/zincati-py/status.json").read_text()))
        except (FileNotFoundError, ValueError):
            return None

    def wait_state(
        self,
        *states: str,
        timeout: float = 15.0,
        agent: AgentProcess | None = None,
        booted: str | None = None,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if agent is not None and not agent.alive():
                raise AssertionError(f"agent exited:\n{agent.log()}")
            doc = self.status()
            if (
                doc
                and doc["state"] in states
                and (agent is None or doc["pid"] == agent.pid)
                and (booted is None or (doc.get("booted") or {}).get("version") == booted)
            ):
                return doc
            return None

        try:
            result: dict[str, Any] = wait_for(check, timeout, f"state in {states}")
        except AssertionError:
            logs = "\n".join(a.log() for a in self.agents)
            raise AssertionError(f"no state {states}; status: {self.status()}\n{logs}") from None
        return result

    def wait_reason(self, needle: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first status whose reason says ``needle``. Returned rather than read again:
        the next evaluation rewrites the reason ("asking the strategy ...") meanwhile."""

        def check() -> dict[str, Any] | None:
            doc = self.status()
            return doc if doc and needle in str(doc.get("reason")) else None

        result: dict[str, Any] = wait_for(check, timeout, f"a reason saying {needle!r}")
        return result

    def control(self, member: str, signature: str = "", *body: Any) -> list[Any]:
        from testbed.rpmostree import BUS_NAME, CONTROL_IFACE, CONTROL_PATH

        return dbus_call(
            self.bus.address, BUS_NAME, CONTROL_PATH, CONTROL_IFACE, member, signature, *body
        )

    def double_state(self) -> dict[str, Any]:
        return dict(json.loads(self.control("GetState")[0]))

    def booted_version(self) -> str:
        state = self.double_state()
        for d in state["deployments"]:
            if d["checksum"] == state["booted"]:
                return str(d["version"])
        raise AssertionError(f"no booted deployment in {state}")

    def logind_calls(self, method: str) -> list[Any]:
        from testbed.logind import recorded_calls

        return self._on_bus(lambda bus: recorded_calls(bus, method))

    def add_session(self, session_id: str, **kw: Any) -> None:
        from testbed.logind import add_session

        self._on_bus(lambda bus: add_session(bus, session_id, **kw))

    def remove_session(self, session_id: str) -> None:
        from testbed.logind import remove_session

        self._on_bus(lambda bus: remove_session(bus, session_id))

    def _on_bus(self, fn: Callable[[Any], Any], *, fds: bool = False) -> Any:
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        async def go() -> Any:
            bus = await MessageBus(
                bus_address=self.bus.address, bus_type=BusType.SYSTEM, negotiate_unix_fd=fds
            ).connect()
            try:
                return await asyncio.wait_for(fn(bus), 10)
            finally:
                bus.disconnect()

        return asyncio.run(go())

    def inhibit(
        self,
        what: str = "shutdown",
        who: str = "backup",
        why: str = "nightly",
        uid: int | None = None,
    ) -> int:
        """A block inhibitor held until the returned fd is closed (``uid``: as that user)."""
        from testbed.logind import inhibit

        fd: int = self._on_bus(lambda bus: inhibit(bus, what, who, why, "block", uid), fds=True)
        return fd

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ZPY, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address},
        )

    def metric(self, name: str) -> float | None:
        import socket

        from zincati_py.metrics import short_path

        path = self.root / "run/zincati-py/public/metrics.promsock"
        with socket.socket(socket.AF_UNIX) as s, short_path(path) as short:
            s.settimeout(5)
            s.connect(short)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        for line in data.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


class SignalRecorder:
    """Records D-Bus signals matching ``rule`` (named ``member``) on a background connection
    (its own thread and event loop) while the ``with`` block runs."""

    def __init__(self, address: str, rule: str, member: str) -> None:
        import threading

        self.address = address
        self.rule = rule
        self.member = member
        self.signals: list[Any] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.run(self._listen())

    async def _listen(self) -> None:
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        bus = await MessageBus(bus_address=self.address, bus_type=BusType.SYSTEM).connect()

        def handler(msg: Message) -> None:
            # The bus also sends NameAcquired etc. to every connection: keep only matches.
            if msg.message_type is MessageType.SIGNAL and msg.member == self.member:
                self.signals.append(msg)

        bus.add_message_handler(handler)
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[self.rule],
            )
        )
        self._ready.set()
        await self._stop.wait()
        bus.disconnect()

    def __enter__(self) -> SignalRecorder:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("signal recorder did not connect")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
