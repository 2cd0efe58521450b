"""``zincati-py demo``: a sandboxed fleet doing one coordinated update, narrated live.

Each node looks like its own machine: a private system bus (``dbus-daemon``) carrying the
rpm-ostree double (booted on :data:`OLD_VERSION`; :data:`NEW_VERSION` is published shortly after
the start) and python-dbusmock's logind; its own root (``etc/machine-id``, fragments in
``etc/zincati/config.d/``, the deployments, ``/run``, ``/var/lib``); a real ``systemd --user``
manager that runs our generator on that root and whose environment points its units at the
node's system bus (so ``zincati-py-check.timer`` reaches that node's agent); and ``zincati-py
agent`` as a process. One ``zincati-py fleetlock serve`` (SQLite) gives group ``demo`` one slot.
One Cincinnati graph server double (:mod:`testbed.cincinnati`, real HTTP on loopback) is the
fleet's update graph: every node's ``[cincinnati] base_url`` points at it, so updates follow the
graph as on Fedora CoreOS. Publishing a release makes its commit available to every node's
rpm-ostree double (``PublishRelease``) and then adds it to the graph, with an edge from the
booted release.
Every node runs ``strategy = ["periodic", "fleet_lock"]`` with a maintenance window (a cron
window, to the second) opening shortly after the start.

Only our production programs run inside (agent, generator, the CLI in the timers' services,
the lock server); the doubles stand in for rpm-ostree and logind. When logind's double records
a ``Reboot`` call, the demo does what a reboot does: SIGKILL the agent, boot the staged
deployment (the double's ``Reboot`` control), clear ``/run/zincati-py``, start the agent again.

The timeline comes from the real sources, without polling where a signal exists: the agent's
``status.json`` (inotify), its ``READY=1`` (a notify socket, as systemd would get it), dbusmock's
``MethodCalled`` signal, the double's ``PropertiesChanged``, systemd's ``PropertiesChanged`` on
the timer units, process exits (pidfd). Slot holders come from the lock server's admin API
(``GET /v1/groups``, with the admin token the demo configures), the interface an operator uses;
it has no push, so it is asked every ``Timing.lock_poll`` seconds and at once after a node's
news (its agent's state, a reboot call; :data:`HOLDER_HINTS`): a holder that appears is a
grant, one that disappears is a release, or a lease expiry when it disappears after its
``expires_at``. The server's own log is kept in ``fleetlock.log`` for people, never parsed.

``--json`` prints one object per event: ``t`` (seconds since the start), ``node`` (null for
the fleet), ``event``, ``message`` (the text line) and event fields. Events: ``start``
(``workdir``), ``lock_server``, ``graph_server`` (``url``, ``releases``), ``node_up``,
``timers`` (``lines`` as ``systemctl --user list-timers`` prints them; ``timers``;
``details``: ``unit``, ``activates``, ``next``, ``last``),
``agent_started``/``agent_ready``/``agent_killed``/``agent_exited``, ``release_published``
(``version``, ``graph_edge``), ``timer_fired`` (``unit``, ``count``), ``check``, ``staged``
(``finalization_locked``),
``agent_state``/``agent_waiting`` (``state``, ``reason``), ``config``,
``slot_taken``/``slot_released`` (``holders``, ``expired``), ``finalization_unlocked``,
``reboot_call``, ``booted``, ``rebooted``, ``steady``, ``systemd_reloaded`` (then ``timers``
again), ``lock_server_*``, ``error``, ``teardown``; the last line is the ``summary`` (``ok``,
``reason``, ``nodes`` with ``from``/``to``/``waited_s``/``rebooted_at_s``/``reboots``/
``reboot_calls``, ``max_concurrent_holders``, ``pending``).

:class:`Fleet` is the orchestration, reused by the end-to-end tests through its hooks
(``fleet.hooks``, :meth:`Fleet.wait_event`) and fault helpers (:meth:`Fleet.kill_agent`,
:meth:`Fleet.start_agent`, :meth:`Fleet.kill_lock_server`, :meth:`Fleet.start_lock_server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from testbed.bus import PrivateBus
from testbed.cincinnati import GraphRelease, GraphServer
from testbed.logind import LogindDouble
from testbed.proc import agent_argv, zincati_py_argv
from testbed.rpmostree import RpmOstreeDouble
from testbed.systemd import UserManager

OLD_VERSION = "40.20251102.3.0"
NEW_VERSION = "40.20251116.3.0"
GROUP = "demo"
REBOOT_METHODS = ("Reboot", "RebootWithFlags")
TIMER_IFACE = "org.freedesktop.systemd1.Timer"
SYSROOT_PATH = "/org/projectatomic/rpmostree1/Sysroot"
#: A node's events after which its slot may have changed: the admin API is asked at once.
HOLDER_HINTS = frozenset({"agent_state", "agent_waiting", "reboot_call", "steady", "agent_killed"})


@dataclass(frozen=True)
class Timing:
    name: str
    # Check timer period; it also caps the fleet_lock retry backoff (next node's wait).
    steady_interval_secs: int
    publish_after: float  # the new release is published this long after the start
    window_lead: float  # the maintenance window opens this long after the start
    window_minutes: int
    lease_seconds: int  # short in --fast: a dead node frees the slot quickly
    lock_poll: float  # admin API poll interval (slot holders)
    timeout: float


FAST = Timing("fast", 2, 3.0, 12.0, 3, 10, 0.2, 120.0)
NORMAL = Timing("normal", 10, 15.0, 60.0, 10, 60, 0.5, 600.0)


def prerequisites() -> list[str]:
    """What this machine lacks to run the demo (empty: it can run)."""
    from testbed.logind import logind_double_available
    from testbed.systemd import user_manager_available

    missing = []
    if not user_manager_available():
        missing.append(
            "a systemd --user manager in a private mount namespace: needs root, "
            "/lib/systemd/systemd, unshare and dbus-daemon"
        )
    if not logind_double_available():
        missing.append("python3-dbusmock for /usr/bin/python3 (the logind double)")
    return missing


@dataclass
class Event:
    t: float  # seconds since the start
    node: str | None
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 3),
            "node": self.node,
            "event": self.kind,
            "message": self.message,
            **self.data,
        }


def _unescape_unit(path: str) -> str:
    # systemd bus paths escape every non-alphanumeric byte as _XX.
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m[1], 16)), path.rsplit("/", 1)[-1])


def _normalized(reason: str) -> str:
    """A reason without its numbers/times: retries that only change a delay are not news."""
    return re.sub(r"[0-9][0-9:.+T-]*", "#", reason)


class Node:
    """One sandboxed host. Observations are filled in by :class:`Fleet` as events arrive."""

    def __init__(self, fleet_dir: Path, index: int) -> None:
        self.index = index
        self.name = f"node{index}"
        self.dir = fleet_dir / self.name
        self.root = self.dir / "root"
        self.machine_id = secrets.token_hex(16)
        self.bus = PrivateBus("system", self.dir / "bus", log_file=self.dir / "dbus-daemon.log")
        self.double = RpmOstreeDouble(
            self.bus.address,
            self.root,
            {
                "osname": "fedora-coreos",
                "booted": {"version": OLD_VERSION},
                # Appears only when the demo publishes it (PublishRelease).
                "releases": [{"version": NEW_VERSION}],
                "idle_timeout": 0,
                "transaction_delay": 0.2,
                # The demo reboots the node itself: agent first, like a real reboot.
                "reboot_on_logind": False,
            },
            idle_timeout=0,
        )
        self.logind = LogindDouble(self.bus.address, self.dir / "logind.log")
        self.manager = UserManager(
            self.root,
            directory=self.dir / "systemd",
            environment={
                "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address,
                "ZINCATI_PY_ROOT": str(self.root),
            },
        )
        self.notify_path = self.dir / "notify.sock"
        self.notify_sock: socket.socket | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_boot = 0  # how many times an agent was started
        self.expect_exit = False
        self.node_id = ""
        self.watch_bus: Any = None  # dbus-fast MessageBus on the node's system bus
        self.manager_bus: Any = None  # on the user manager's bus
        # observations
        self.doc: dict[str, Any] | None = None
        self.booted_version = OLD_VERSION
        self.from_version = OLD_VERSION
        self.staged: tuple[str, bool] | None = None  # (version, finalization locked)
        self.staged_at: float | None = None
        self.reboot_calls: list[float] = []
        self.rebooted_at: float | None = None
        self.booted_new_at: float | None = None
        self.steady_at: float | None = None
        self.holding_since: float | None = None
        self.timer_fires: dict[str, int] = {}
        self.timer_last: dict[str, int] = {}
        self.last_check: str | None = None
        self.reasons_seen: set[str] = set()

    @property
    def status_file(self) -> Path:
        return self.root / "run/zincati-py/status.json"

    def write_config(self, name: str, text: str) -> None:
        """A fragment in ``etc/zincati/config.d`` (atomic, so the agent never reads half)."""
        d = self.root / "etc/zincati/config.d"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, d / name)

    def describe_pending(self) -> str:
        doc = self.doc or {}
        where = f"booted {self.booted_version}"
        if self.staged is not None:
            where += f", {self.staged[0]} staged"
        if self.holding_since is not None:
            where += f", holds the reboot slot since +{self.holding_since:.1f}s"
        state = doc.get("state", "no status yet")
        return f"{self.name}: {where}; agent {state}: {doc.get('reason', '')}"


@dataclass
class NodeResult:
    node: str
    from_version: str
    to_version: str
    waited_s: float | None
    rebooted_at_s: float | None
    reboots: int
    reboot_calls: int

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "from": self.from_version,
            "to": self.to_version,
            "waited_s": None if self.waited_s is None else round(self.waited_s, 1),
            "rebooted_at_s": None if self.rebooted_at_s is None else round(self.rebooted_at_s, 1),
            "reboots": self.reboots,
            "reboot_calls": self.reboot_calls,
        }


@dataclass
class Summary:
    ok: bool
    reason: str
    duration_s: float
    nodes: list[NodeResult]
    max_concurrent_holders: int
    pending: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "summary",
            "ok": self.ok,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 1),
            "max_concurrent_holders": self.max_concurrent_holders,
            "nodes": [n.to_json() for n in self.nodes],
            "pending": self.pending,
        }

    def table(self) -> str:
        rows = [("node", "from", "to", "waited (s)", "rebooted at")]
        for n in self.nodes:
            rows.append(
                (
                    n.node,
                    n.from_version,
                    n.to_version,
                    "-" if n.waited_s is None else f"{n.waited_s:.1f}",
                    "-" if n.rebooted_at_s is None else f"+{n.rebooted_at_s:.1f}s",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for r in rows:
            lines.append(
                "  ".join(
                    c.rjust(w) if i >= 3 else c.ljust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                ).rstrip()
            )
        return "\n".join(lines)


class Fleet:
    """The sandbox: lock server, nodes, observers. ``async with Fleet(...)`` or start/stop.

    ``emit`` receives every :class:`Event`; ``hooks`` (callables taking the event) run after
    it, for tests that inject faults at a precise moment. ``fragments`` (file name → TOML) are
    extra config fragments for every node, written before anything starts. ``required`` is
    the set of node names that must finish for :meth:`run` to succeed (default: all).
    """

    def __init__(
        self,
        nodes: int = 3,
        timing: Timing = FAST,
        *,
        workdir: Path | None = None,
        keep: bool = False,
        emit: Callable[[Event], None] | None = None,
        fragments: Mapping[str, str] | None = None,
    ) -> None:
        self.timing = timing
        self.fragments = dict(fragments or {})
        self.keep = keep
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="zpy-demo-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes = [Node(self.dir, i) for i in range(1, nodes + 1)]
        self.required = {n.name for n in self.nodes}
        self._emit = emit
        self.hooks: list[Callable[[Event], None]] = []
        self.events: list[Event] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        self._t0 = time.monotonic()
        self.start_wall = datetime.now(UTC)
        self.window_start = self.start_wall
        self.lock_port = 0
        self.lock_config = self.dir / "fleetlock.toml"
        self.lock_db = self.dir / "fleetlock.db"
        self.lock_log = self.dir / "fleetlock.log"
        self.lock_server: subprocess.Popen[bytes] | None = None
        self.lock_expect_exit = False
        # The fleet's update graph: only the booted release until the demo publishes one.
        self.graph: GraphServer | None = None
        # The admin API needs this token: the demo configures [auth] as a fleet should.
        self.admin_token = secrets.token_urlsafe(24)
        # Slot holders (node id -> when first listed) as the admin API lists them, with the
        # expiry it gave for each (None: no lease), and the most listed at once.
        self.holders: dict[str, float] = {}
        self._holder_expiry: dict[str, float | None] = {}
        self.max_holders = 0
        self.lock_reachable: bool | None = None
        self._progress = asyncio.Event()
        # Set by a node's own news (its agent's state, a reboot call): the holders are asked at
        # once, so a grant shows before what the agent does with it.
        self._ask_holders = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pidfds: list[int] = []
        self._lock_fds: list[int] = []
        self._starting: list[asyncio.Future[None]] = []
        self._notifier: Any = None
        self._http: Any = None
        self._stopped = False
        self.failures: list[str] = []

    # -- timeline -----------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self._t0

    def event(self, node: Node | None, kind: str, message: str, **data: Any) -> Event:
        ev = Event(self.now(), None if node is None else node.name, kind, message, data)
        self.events.append(ev)
        if self._emit is not None:
            self._emit(ev)
        for hook in list(self.hooks):
            hook(ev)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(ev):
                fut.set_result(ev)
        self._progress.set()
        if node is not None and kind in HOLDER_HINTS:
            self._ask_holders.set()
        return ev

    def find(self, kind: str, node: str | None = None) -> list[Event]:
        """Events so far of ``kind`` (and of ``node`` if given)."""
        return [e for e in self.events if e.kind == kind and (node is None or e.node == node)]

    async def wait_event(self, pred: Callable[[Event], bool], timeout: float) -> Event:
        """The first event from now on that satisfies ``pred``; TimeoutError after ``timeout``."""
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        entry = (pred, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove(entry)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.fail(f"internal error: {type(exc).__name__}: {exc}")

    def fail(self, reason: str) -> None:
        """Something that makes the run wrong happened: :meth:`run` ends with it at once."""
        self.failures.append(reason)
        self.event(None, "error", reason)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def node_by_id(self, node_id: str) -> Node | None:
        key = node_id.replace("-", "").lower()
        return next((n for n in self.nodes if n.node_id == key), None)

    # -- set-up -------------------------------------------------------------------------------
    @property
    def lock_url(self) -> str:
        return f"http://127.0.0.1:{self.lock_port}/"

    @property
    def graph_url(self) -> str:
        return "" if self.graph is None else self.graph.base_url

    def _fragment(self) -> str:
        w = self.window_start
        # Six fields, seconds last (croniter's order): opens once, at that second.
        cron = f"{w.minute} {w.hour} {w.day} {w.month} * {w.second}"
        return (
            "# Written by zincati-py demo.\n"
            f'[identity]\ngroup = "{GROUP}"\n\n'
            f"[agent.timing]\nsteady_interval_secs = {self.timing.steady_interval_secs}\n\n"
            '[updates]\nstrategy = ["periodic", "fleet_lock"]\n\n'
            f'[updates.fleet_lock]\nbase_url = "{self.lock_url}"\n\n'
            f'[cincinnati]\nbase_url = "{self.graph_url}"\n\n'
            '[updates.periodic]\ntime_zone = "UTC"\n\n'
            f'[[updates.periodic.window]]\ncron = "{cron}"\n'
            f"length_minutes = {self.timing.window_minutes}\n"
        )

    async def start(self) -> None:
        from testbed.etcd import free_port

        t = self.timing
        self._t0 = time.monotonic()
        self.start_wall = datetime.now(UTC)
        opens = self.start_wall + timedelta(seconds=t.window_lead)
        self.window_start = opens.replace(microsecond=0) + timedelta(seconds=1)
        self.event(
            None,
            "start",
            f"{len(self.nodes)} nodes, {t.name} timing, work dir {self.dir}",
            workdir=str(self.dir),
            nodes=[n.name for n in self.nodes],
            timing=t.name,
        )
        self.lock_port = free_port()
        # The admin token in a file of its own, readable by its owner only (a secret never
        # sits in the config); the config names it relative to itself.
        token_file = self.dir / "fleetlock-admin.token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as token:
            token.write(self.admin_token + "\n")
        self.lock_config.write_text(
            f'listen = "127.0.0.1:{self.lock_port}"\n'
            f'backend = "sqlite:{self.lock_db}"\n'
            'unknown_groups = "reject"\n\n'
            f"[groups]\n{GROUP} = {{ slots = 1, lease_seconds = {t.lease_seconds} }}\n\n"
            "# Any auth configured => the admin API needs this token (nodes lock without).\n"
            f'[auth]\nadmin_token_file = "{token_file.name}"\n'
        )
        await self.start_lock_server()
        self.graph = GraphServer([GraphRelease(OLD_VERSION)]).start()
        self.event(
            None,
            "graph_server",
            f"Cincinnati graph server double on {self.graph.base_url} (graph: {OLD_VERSION})",
            url=self.graph.base_url,
            releases=[OLD_VERSION],
        )
        import aiohttp

        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        self._spawn(self._poll_lock_server())
        await asyncio.gather(*(self._start_node(n) for n in self.nodes))
        self._spawn(self._publish_release())

    async def _start_node(self, node: Node) -> None:
        from zincati_py import config as config_mod

        node.dir.mkdir(parents=True, exist_ok=True)
        (node.root / "etc").mkdir(parents=True, exist_ok=True)
        (node.root / "etc/machine-id").write_text(node.machine_id + "\n")
        # The platform the graph is asked for (``ignition.platform.id``), as on a real host.
        (node.root / "proc").mkdir(parents=True, exist_ok=True)
        (node.root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz ignition.platform.id=qemu\n")
        node.write_config("50-demo.toml", self._fragment())
        for name, text in self.fragments.items():
            node.write_config(name, text)
        loaded = config_mod.load(node.root)
        if not loaded.ok:
            raise RuntimeError(f"{node.name}: demo config invalid: {loaded.errors}")
        node.node_id = (loaded.config.identity.node_uuid or "").replace("-", "").lower()
        (node.root / "run/zincati-py").mkdir(parents=True, exist_ok=True)
        # Shielded and remembered: if the start is cancelled (Ctrl-C), stop() waits for the
        # thread to finish starting before it stops what was started.
        starting = asyncio.get_running_loop().run_in_executor(
            None, self._start_node_processes, node
        )
        self._starting.append(starting)
        await asyncio.shield(starting)
        await self._watch_node_bus(node)
        await self._watch_manager(node)
        self._watch_status(node)
        self._open_notify(node)
        w = self.window_start
        self.event(
            node,
            "node_up",
            f"machine-id {node.machine_id[:8]}…, node id {node.node_id[:8]}…; booted "
            f"{OLD_VERSION}; system bus, rpm-ostree double, logind (dbusmock), "
            f"systemd --user (pid {node.manager.pid}) with our generator",
            machine_id=node.machine_id,
            node_id=node.node_id,
            booted=OLD_VERSION,
            manager_pid=node.manager.pid,
            window_start=w.isoformat(),
        )
        await self._list_timers(node)
        await self.start_agent(node)

    @staticmethod
    def _start_node_processes(node: Node) -> None:
        # Runs in a worker thread: blocking SIGINT here makes the children start with it
        # blocked, so a Ctrl-C on the terminal reaches the demo, which tears down in order, and
        # not the buses and doubles (systemd resets its mask; a user manager's SIGINT means
        # "exit", which the teardown tolerates).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        node.bus.start()
        node.double.start()
        node.logind.start()
        node.manager.start()

    async def _list_timers(self, node: Node) -> None:
        out = await asyncio.to_thread(node.manager.systemctl, "list-timers", "--all")
        lines = [ln for ln in out.splitlines() if ln.strip()]
        units = sorted(set(re.findall(r"zincati-py-[\w.-]+\.timer", out)))
        text = "systemctl --user list-timers:\n" + "\n".join(lines)
        details = [await self._timer_details(node, unit) for unit in units]
        self.event(node, "timers", text, lines=lines, timers=units, details=details)

    async def _timer_details(self, node: Node, unit: str) -> dict[str, Any]:
        """What list-timers shows for ``unit``, read from the manager over D-Bus."""
        from dbus_fast import Message, MessageType

        path = "/org/freedesktop/systemd1/unit/" + re.sub(
            r"[^A-Za-z0-9]", lambda m: f"_{ord(m[0]):02x}", unit
        )
        reply = await node.manager_bus.call(
            Message(
                destination="org.freedesktop.systemd1",
                path=path,
                interface="org.freedesktop.DBus.Properties",
                member="GetAll",
                signature="s",
                body=[TIMER_IFACE],
            )
        )
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            return {"unit": unit}
        props = {k: v.value for k, v in reply.body[0].items()}

        never = 2**64 - 1  # USEC_INFINITY: no next elapse (systemd's "n/a")

        def iso(usec: int) -> str | None:
            if not usec or usec == never:
                return None
            return datetime.fromtimestamp(usec / 1e6, UTC).isoformat()

        nxt = int(props.get("NextElapseUSecRealtime", 0))
        mono = int(props.get("NextElapseUSecMonotonic", 0))
        if not nxt and mono and mono != never:  # OnBootSec=/OnUnitActiveSec=: CLOCK_MONOTONIC
            nxt = int((time.time() + mono / 1e6 - time.monotonic()) * 1e6)
        return {
            "unit": unit,
            "activates": props.get("Unit"),
            "next": iso(nxt),
            "last": iso(int(props.get("LastTriggerUSec", 0))),
        }

    async def _publish_release(self) -> None:
        from testbed.rpmostree import control

        # The scenario's clock, not a poll: the release appears at a fixed point in the story.
        await asyncio.sleep(max(0.0, self.timing.publish_after - self.now()))
        # The commit first (every node can deploy it), then the graph edge that offers it.
        for node in self.nodes:
            await control(node.watch_bus, "PublishRelease", "s", NEW_VERSION)
        assert self.graph is not None
        self.graph.set_releases([GraphRelease(OLD_VERSION), GraphRelease(NEW_VERSION)])
        w = self.window_start
        self.event(
            None,
            "release_published",
            f"release {NEW_VERSION} published to the update graph ({OLD_VERSION} → "
            f"{NEW_VERSION}); the maintenance window opens at "
            f"{w:%H:%M:%S} UTC (+{(w - self.start_wall).total_seconds():.0f}s) for "
            f"{self.timing.window_minutes} min",
            version=NEW_VERSION,
            graph_edge=[OLD_VERSION, NEW_VERSION],
            window_start=w.isoformat(),
        )

    # -- processes ----------------------------------------------------------------------------
    def _watch_exit(self, proc: subprocess.Popen[bytes], on_exit: Callable[[int], None]) -> None:
        """Call ``on_exit(returncode)`` when ``proc`` exits (pidfd readable; no polling)."""
        fd = os.pidfd_open(proc.pid)
        self._pidfds.append(fd)
        loop = asyncio.get_running_loop()

        def ready() -> None:
            loop.remove_reader(fd)
            with contextlib.suppress(ValueError):
                self._pidfds.remove(fd)
            os.close(fd)
            on_exit(proc.wait())

        loop.add_reader(fd, ready)

    async def start_agent(self, node: Node) -> None:
        env = {
            **os.environ,
            "DBUS_SYSTEM_BUS_ADDRESS": node.bus.address,
            "NOTIFY_SOCKET": str(node.notify_path),
            # systemd is this node's user manager, not on the node's "system" bus: a valid
            # config change asks it to reload there, so the generator re-renders the timers.
            "ZINCATI_PY_SYSTEMD_BUS": node.manager.bus_address,
        }
        for var in ("ZINCATI_PY_ROOT", "WATCHDOG_USEC", "WATCHDOG_PID", "ZINCATI_PY_BUS_NAME"):
            env.pop(var, None)
        node.agent_boot += 1
        node.expect_exit = False
        with (node.dir / "agent.log").open("ab") as log:
            log.write(f"--- agent start #{node.agent_boot} at +{self.now():.2f}s\n".encode())
            log.flush()
            proc = subprocess.Popen(
                agent_argv(node.root, node.bus.address, node.double.ostree_command),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # like a service: not in the terminal's process group
            )
        node.agent = proc

        def exited(rc: int) -> None:
            if node.agent is proc:
                node.agent = None
            if not node.expect_exit:
                self.event(
                    node,
                    "agent_exited",
                    f"agent (pid {proc.pid}) exited unexpectedly with {rc}; see "
                    f"{node.dir / 'agent.log'}",
                    pid=proc.pid,
                    returncode=rc,
                )
                self.fail(f"{node.name}: the agent exited unexpectedly with {rc}")

        self._watch_exit(proc, exited)
        self.event(
            node,
            "agent_started",
            f"zincati-py agent started (pid {proc.pid}, boot #{node.agent_boot})",
            pid=proc.pid,
            boot=node.agent_boot,
        )

    async def kill_agent(self, node: Node, why: str = "fault injected") -> None:
        proc = node.agent
        if proc is None:
            return
        node.expect_exit = True
        node.agent = None
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        self.event(node, "agent_killed", f"agent (pid {proc.pid}) SIGKILLed: {why}", pid=proc.pid)

    async def start_lock_server(self) -> None:
        """Start (or restart, same port and database) the FleetLock server; wait for READY=1."""
        notify = self.dir / "fleetlock-notify.sock"
        with contextlib.suppress(FileNotFoundError):
            notify.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify))
        sock.setblocking(False)
        try:
            proc = subprocess.Popen(
                [*zincati_py_argv(), "fleetlock", "serve", "--config", str(self.lock_config)],
                env={**os.environ, "NOTIFY_SOCKET": str(notify)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            assert proc.stdout is not None
            fd = os.dup(proc.stdout.fileno())
            proc.stdout.close()
            os.set_blocking(fd, False)
            self._lock_fds.append(fd)
            asyncio.get_running_loop().add_reader(fd, self._read_lock_output, fd)
            self.lock_server = proc
            self.lock_expect_exit = False
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:  # datagrams until READY=1 (the server sends nothing else before)
                remaining = deadline - loop.time()
                if remaining <= 0 or proc.poll() is not None:
                    raise RuntimeError(
                        f"FleetLock server did not become ready: {self.lock_log.read_text()}"
                    )
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), remaining)
                if b"READY=1" in data.split(b"\n"):
                    break
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                notify.unlink()

        def exited(rc: int) -> None:
            if self.lock_server is proc:
                self.lock_server = None
            if not self.lock_expect_exit:
                self.event(None, "lock_server_exited", f"FleetLock server exited with {rc}")
                self.fail(f"the FleetLock server exited unexpectedly with {rc}")

        self._watch_exit(proc, exited)
        self.event(
            None,
            "lock_server",
            f"FleetLock server (pid {proc.pid}) on {self.lock_url}, SQLite {self.lock_db.name}; "
            f"group {GROUP!r}: 1 slot, lease {self.timing.lease_seconds}s",
            url=self.lock_url,
            pid=proc.pid,
            slots=1,
            lease_seconds=self.timing.lease_seconds,
        )

    async def kill_lock_server(self) -> None:
        proc = self.lock_server
        if proc is None:
            return
        self.lock_expect_exit = True
        self.lock_server = None
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        self.event(None, "lock_server_killed", f"FleetLock server (pid {proc.pid}) SIGKILLed")

    # -- observers ----------------------------------------------------------------------------
    async def _add_match(self, bus: Any, rule: str) -> None:
        from dbus_fast import Message

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

    async def _watch_node_bus(self, node: Node) -> None:
        from dbus_fast import BusType, MessageType
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_address=node.bus.address, bus_type=BusType.SYSTEM).connect()
        node.watch_bus = bus
        await self._add_match(
            bus,
            "type='signal',interface='org.freedesktop.DBus.Mock',member='MethodCalled',"
            "path='/org/freedesktop/login1'",
        )
        await self._add_match(
            bus,
            "type='signal',interface='org.freedesktop.DBus.Properties',"
            f"member='PropertiesChanged',path='{SYSROOT_PATH}'",
        )

        def handler(msg: Any) -> None:
            if msg.message_type != MessageType.SIGNAL:
                return
            if msg.member == "MethodCalled" and msg.body and msg.body[0] in REBOOT_METHODS:
                self._on_reboot_call(node, str(msg.body[0]))
            elif msg.member == "PropertiesChanged" and msg.path == SYSROOT_PATH:
                changed = msg.body[1]
                if "Deployments" in changed:
                    self._on_deployments(node, changed["Deployments"].value)

        bus.add_message_handler(handler)

    def _on_deployments(self, node: Node, deployments: list[dict[str, Any]]) -> None:
        def val(d: dict[str, Any], key: str) -> Any:
            v = d.get(key)
            return None if v is None else v.value

        booted = next((d for d in deployments if val(d, "booted")), None)
        staged = next((d for d in deployments if val(d, "staged")), None)
        if booted is not None and val(booted, "version") != node.booted_version:
            node.booted_version = str(val(booted, "version"))
            if node.booted_version == NEW_VERSION and node.booted_new_at is None:
                node.booted_new_at = self.now()
            self.event(
                node,
                "booted",
                f"booted deployment is now {node.booted_version}",
                version=node.booted_version,
            )
        new = None
        if staged is not None:
            new = (str(val(staged, "version")), bool(val(staged, "finalization-locked")))
        if new == node.staged:
            return
        old, node.staged = node.staged, new
        if new is None:
            return
        version, locked = new
        if old is not None and old[0] == version and old[1] and not locked:
            self.event(
                node,
                "finalization_unlocked",
                f"finalization lock of {version} released (ostree admin lock-finalization "
                "--unlock)",
                version=version,
            )
        elif old is None or old[0] != version:
            if node.staged_at is None and version == NEW_VERSION:
                node.staged_at = self.now()
            lock = "with the finalization lock" if locked else "WITHOUT a finalization lock"
            self.event(
                node,
                "staged",
                f"{version} staged by rpm-ostree {lock}",
                version=version,
                finalization_locked=locked,
            )

    def _on_reboot_call(self, node: Node, method: str) -> None:
        node.reboot_calls.append(self.now())
        others = [n.name for n in self.nodes if n is not node and self._in_flight(n)]
        self.event(
            node,
            "reboot_call",
            f"logind {method}() called by the agent"
            + (f" (WHILE {', '.join(others)} still rebooting)" if others else ""),
            method=method,
            concurrent=others,
        )
        self._spawn(self._reboot(node))

    def _in_flight(self, node: Node) -> bool:
        """Between its reboot call and its steady state after the reboot."""
        return bool(node.reboot_calls) and node.steady_at is None

    async def _reboot(self, node: Node) -> None:
        from testbed.rpmostree import control

        await self.kill_agent(node, "the host goes down for the reboot")
        (booted,) = await control(node.watch_bus, "Reboot")
        # /run is a tmpfs: nothing of the old boot's runtime state survives.
        for entry in (node.root / "run/zincati-py").iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        node.rebooted_at = self.now()
        self.event(
            node,
            "rebooted",
            f"simulated reboot: the double booted {booted}; /run cleared; starting the agent",
            booted=booted,
        )
        await self.start_agent(node)

    async def _watch_manager(self, node: Node) -> None:
        from dbus_fast import Message, MessageType
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_address=node.manager.bus_address).connect()
        node.manager_bus = bus
        # Subscribe: the manager then sends PropertiesChanged for units to this client.
        await bus.call(
            Message(
                destination="org.freedesktop.systemd1",
                path="/org/freedesktop/systemd1",
                interface="org.freedesktop.systemd1.Manager",
                member="Subscribe",
            )
        )
        await self._add_match(
            bus,
            "type='signal',interface='org.freedesktop.DBus.Properties',"
            f"member='PropertiesChanged',arg0='{TIMER_IFACE}'",
        )

        await self._add_match(
            bus,
            "type='signal',interface='org.freedesktop.systemd1.Manager',member='Reloading'",
        )

        def handler(msg: Any) -> None:
            if msg.message_type != MessageType.SIGNAL:
                return
            if msg.member == "Reloading" and msg.body == [False]:
                # daemon-reload finished: the generator re-rendered the timers.
                self.event(
                    node,
                    "systemd_reloaded",
                    "systemd --user reloaded (asked by the agent): generator re-ran",
                )
                self._spawn(self._list_timers(node))
                return
            if msg.member != "PropertiesChanged":
                return
            if msg.body[0] != TIMER_IFACE or "LastTriggerUSec" not in msg.body[1]:
                return
            last = int(msg.body[1]["LastTriggerUSec"].value)
            unit = _unescape_unit(str(msg.path))
            # The timer's other state changes repeat the same value: only a new one is a firing.
            if not last or node.timer_last.get(unit) == last:
                return
            node.timer_last[unit] = last
            count = node.timer_fires[unit] = node.timer_fires.get(unit, 0) + 1
            service = unit.removesuffix(".timer") + ".service"
            self.event(
                node,
                "timer_fired",
                f"{unit} fired (#{count}): systemd starts {service}",
                unit=unit,
                count=count,
            )

        bus.add_message_handler(handler)

    def _open_notify(self, node: Node) -> None:
        with contextlib.suppress(FileNotFoundError):
            node.notify_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(node.notify_path))
        sock.setblocking(False)
        node.notify_sock = sock

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                while True:
                    data = sock.recv(4096).decode(errors="replace")
                    fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
                    if fields.get("READY") == "1":
                        self.event(
                            node,
                            "agent_ready",
                            f"agent ready (sd_notify READY=1): {fields.get('STATUS', '')}",
                            boot=node.agent_boot,
                        )

        asyncio.get_running_loop().add_reader(sock.fileno(), readable)

    def _watch_status(self, node: Node) -> None:
        import pyinotify

        if self._notifier is None:
            self._wm = pyinotify.WatchManager()
            self._status_nodes: dict[str, Node] = {}

            def on_event(ev: Any) -> None:
                target = self._status_nodes.get(str(ev.path))
                if target is not None and ev.name == "status.json":
                    self._on_status(target)

            self._notifier = pyinotify.AsyncioNotifier(
                self._wm, asyncio.get_running_loop(), default_proc_fun=on_event
            )
        run_dir = node.status_file.parent
        self._status_nodes[str(run_dir)] = node
        self._wm.add_watch(str(run_dir), pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE)

    def _on_status(self, node: Node) -> None:
        from zincati_py.agent import status

        try:
            doc = status.read(node.status_file)
        except (OSError, ValueError):
            return
        if node.agent is None or doc.get("pid") != node.agent.pid:
            return  # the last words of a killed agent, or a file from before the reboot
        old, node.doc = node.doc, doc
        if old is not None and old.get("pid") != doc.get("pid"):
            old = None
        old = old or {}
        if doc.get("last_check") and doc.get("last_check") != node.last_check:
            # last_check persists across agent restarts: only a new check is news.
            node.last_check = doc["last_check"]
            self.event(
                node,
                "check",
                f"update check: {doc.get('last_check_result')}",
                result=doc.get("last_check_result"),
            )
        cfg, old_cfg = doc.get("config") or {}, old.get("config") or {}
        changed = (cfg.get("valid"), cfg.get("problems")) != (
            old_cfg.get("valid"),
            old_cfg.get("problems"),
        )
        # A valid config at the first status is not news; any change after is.
        if changed and (not cfg.get("valid", True) or old_cfg):
            problems = "; ".join(cfg.get("problems") or []) or "no problems"
            self.event(
                node,
                "config",
                f"configuration {'valid' if cfg.get('valid') else 'INVALID'}, in force: "
                f"{cfg.get('in_force')} ({problems})",
                valid=cfg.get("valid"),
                in_force=cfg.get("in_force"),
                problems=cfg.get("problems"),
            )
        from zincati_py.agent.machine import State

        state, reason = doc.get("state"), str(doc.get("reason", ""))
        # Each reason once per state: the agent re-evaluates on every event and republishes
        # the same few reasons (retry delays differ, hence the normalization).
        if state != old.get("state"):
            node.reasons_seen = {_normalized(reason)}
            self.event(node, "agent_state", f"{state}: {reason}", state=state, reason=reason)
        elif _normalized(reason) not in node.reasons_seen:
            node.reasons_seen.add(_normalized(reason))
            self.event(node, "agent_waiting", reason, state=state, reason=reason)
        booted = (doc.get("booted") or {}).get("version")
        if (
            state in (State.REPORTED_STEADY, State.NO_NEW_UPDATE)
            and booted == NEW_VERSION
            and node.reboot_calls
            and node.steady_at is None
        ):
            node.steady_at = self.now()
            done = sum(1 for n in self.nodes if n.steady_at is not None)
            self.event(
                node,
                "steady",
                f"steady state on {booted} reported to the lock server "
                f"[{done}/{len(self.nodes)} nodes updated]",
                version=booted,
            )

    def _read_lock_output(self, fd: int) -> None:
        """The server's log, into ``fleetlock.log`` (for people; the demo reads the API)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:  # the server exited
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
            self._lock_fds.remove(fd)
            return
        with self.lock_log.open("ab") as log:
            log.write(data)

    def _on_holders(self, listed: list[dict[str, Any]]) -> None:
        """One answer of the admin API: the group's live holders, compared with the last."""
        now_wall = time.time()
        current = {str(h["id"]).replace("-", "").lower(): h for h in listed}
        for hid in [h for h in self.holders if h not in current]:
            expires_at = self._holder_expiry.pop(hid, None)
            expired = expires_at is not None and now_wall >= expires_at
            self.holders.pop(hid)
            node = self.node_by_id(hid)
            if node is not None:
                node.holding_since = None
            self.event(
                node,
                "slot_released",
                "reboot slot freed: its lease expired"
                if expired
                else "released the reboot slot (FleetLock steady-state)",
                holder=hid,
                expired=expired,
            )
        for hid, h in current.items():
            expires = h.get("expires_at")
            self._holder_expiry[hid] = None if expires is None else float(expires)
            if hid in self.holders:
                continue
            self.holders[hid] = self.now()
            self.max_holders = max(self.max_holders, len(self.holders))
            node = self.node_by_id(hid)
            if node is not None:
                node.holding_since = self.now()
            self.event(
                node,
                "slot_taken",
                f"took the reboot slot of group {GROUP!r} (lease {self.timing.lease_seconds}s) "
                f"[{len(self.holders)}/1 slots in use]",
                holder=hid,
                holders=len(self.holders),
            )

    async def _poll_lock_server(self) -> None:
        # The admin API has no push: polled every lock_poll seconds for the group's holders
        # (grants, releases, expiries) and to say when the server does not answer. While it
        # does not, the last holders it listed stand.
        url = f"{self.lock_url}v1/groups"
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        while True:
            listed: list[dict[str, Any]] | None = None
            try:
                async with self._http.get(url, headers=headers) as resp:
                    status, doc = resp.status, await resp.json()
            except Exception:
                pass  # not listening (killed, restarting) or no answer in time: unreachable
            else:
                try:
                    assert status == 200, f"HTTP {status}: {doc}"
                    group = next(g for g in doc["groups"] if g["group"] == GROUP)
                    listed = list(group["holders"])
                except Exception as exc:  # a wrong answer (401: our token) is a demo bug
                    self.fail(f"the lock server's admin API answered unexpectedly: {exc!r}")
                    return
            reachable = listed is not None
            if reachable != self.lock_reachable:
                if self.lock_reachable is not None:
                    self.event(
                        None,
                        "lock_server_reachable" if reachable else "lock_server_unreachable",
                        "FleetLock admin API answers again"
                        if reachable
                        else "FleetLock admin API does not answer",
                    )
                self.lock_reachable = reachable
            if listed is not None:
                self._on_holders(listed)
            # Every lock_poll seconds, or at once when a node has news.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ask_holders.wait(), self.timing.lock_poll)
            self._ask_holders.clear()

    # -- the run ------------------------------------------------------------------------------
    def finished(self) -> bool:
        for n in self.nodes:
            if n.name in self.required and (n.steady_at is None or n.node_id in self.holders):
                return False
        return True

    async def run(self, timeout: float | None = None) -> Summary:
        """Wait until every required node updated and released its slot, then verify."""
        limit = self.timing.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not self.finished():
            if self.failures:
                pending = [n.describe_pending() for n in self.nodes if n.steady_at is None]
                return await self.summary("; ".join(self.failures), pending)
            remaining = deadline - loop.time()
            if remaining <= 0:
                pending = [
                    n.describe_pending()
                    for n in self.nodes
                    if n.name in self.required and n.steady_at is None
                ]
                return await self.summary(f"timed out after {limit:.0f}s", pending)
            self._progress.clear()
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the awaited event (events are frequent here), losing a Ctrl-C.
            waiter = asyncio.ensure_future(self._progress.wait())
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                waiter.cancel()
        return await self.summary(None, [])

    async def summary(self, failure: str | None, pending: list[str]) -> Summary:
        from testbed.logind import recorded_calls
        from testbed.rpmostree import control

        results = []
        problems = [failure] if failure else []
        for n in self.nodes:
            async with asyncio.timeout(10):  # the doubles answer in ms; never hang the verdict
                (raw,) = await control(n.watch_bus, "GetState")
                recorded = await recorded_calls(n.watch_bus)
            state = json.loads(raw)
            booted = next(
                d["version"] for d in state["deployments"] if d["checksum"] == state["booted"]
            )
            calls = [c for c in recorded if c.method in REBOOT_METHODS]
            waited = (
                n.reboot_calls[0] - n.staged_at
                if n.reboot_calls and n.staged_at is not None
                else None
            )
            results.append(
                NodeResult(
                    n.name,
                    n.from_version,
                    str(booted),
                    waited,
                    n.reboot_calls[0] if n.reboot_calls else None,
                    int(state["reboots"]),
                    len(calls),
                )
            )
            if n.name not in self.required:
                continue
            if booted != NEW_VERSION:
                problems.append(f"{n.name} booted {booted}, not {NEW_VERSION}")
            if state["reboots"] != 1 or len(calls) != 1:
                problems.append(
                    f"{n.name} rebooted {state['reboots']} times after {len(calls)} logind "
                    "reboot calls (expected exactly 1)"
                )
        problems += self.overlaps()
        if self.max_holders > 1:
            problems.append(f"the lock server's admin API listed {self.max_holders} holders")
        return Summary(
            ok=not problems,
            reason="; ".join(problems)
            or "every node updated exactly once, one at a time, to the newest version",
            duration_s=self.now(),
            nodes=results,
            max_concurrent_holders=self.max_holders,
            pending=pending,
        )

    def overlaps(self) -> list[str]:
        """Reboot calls that happened while another node was between its reboot and steady."""
        found = []
        for a in self.nodes:
            if not a.reboot_calls:
                continue
            a_end = a.steady_at if a.steady_at is not None else float("inf")
            for b in self.nodes:
                if b is a:
                    continue
                for t in b.reboot_calls:
                    if a.reboot_calls[0] < t < a_end:
                        found.append(
                            f"{b.name} called Reboot at +{t:.1f}s while {a.name} was rebooting "
                            f"(+{a.reboot_calls[0]:.1f}s until steady)"
                        )
        return found

    # -- teardown -----------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop everything started, by PID; idempotent. Removes the work dir unless ``keep``."""
        if self._stopped:
            return
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        loop = asyncio.get_running_loop()
        for fd in self._pidfds:
            loop.remove_reader(fd)
            os.close(fd)
        self._pidfds.clear()
        for fd in self._lock_fds:
            loop.remove_reader(fd)
            os.close(fd)
        self._lock_fds.clear()
        if self._notifier is not None:
            self._notifier.stop()
        if self._http is not None:
            await self._http.close()
        for n in self.nodes:
            n.expect_exit = True
            if n.notify_sock is not None:
                loop.remove_reader(n.notify_sock.fileno())
                n.notify_sock.close()
            for bus in (n.watch_bus, n.manager_bus):
                if bus is not None:
                    bus.disconnect()
        self.lock_expect_exit = True
        if self._starting:
            await asyncio.wait(self._starting, timeout=60)
            for f in self._starting:
                if f.done() and not f.cancelled():
                    f.exception()  # retrieved: a start cut short by Ctrl-C is expected to fail
        await asyncio.to_thread(self._stop_processes)
        if self._own_dir and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_processes(self) -> None:
        # Managers first, all at once: a timer-started ``zincati-py check`` then ends while its
        # agent still answers, and N nodes cost one stop, not N. Bounded at 3 s (then SIGKILL
        # of the manager and its processes): on hosts where systemd gets no cgroup-empty
        # notification (cgroup v1 in a container) it waits out DefaultTimeoutStopSec= for
        # services whose processes are already gone.
        managers = [
            threading.Thread(target=n.manager.stop, args=(3.0,), name=f"stop {n.name}")
            for n in self.nodes
        ]
        for t in managers:
            t.start()
        for t in managers:
            t.join()
        procs = [n.agent for n in self.nodes] + [self.lock_server]
        for p in procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            if p is not None:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for n in self.nodes:
            n.agent = None
            for stop in (n.logind.stop, n.double.stop, n.bus.stop):
                with contextlib.suppress(Exception):
                    stop()
        self.lock_server = None
        if self.graph is not None:
            self.graph.stop()
            self.graph = None

    async def __aenter__(self) -> Fleet:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -------------------------------------------------------------------------------------------
# Narration


class Narrator:
    """Prints events as a timeline (text) or as JSON lines."""

    def __init__(self, out: TextIO, as_json: bool, kept: bool = False) -> None:
        self.out = out
        self.as_json = as_json
        self.kept = kept
        self.quiet_timer_fires: set[str] = set()

    def __call__(self, ev: Event) -> None:
        if self.as_json:
            self.out.write(json.dumps(ev.to_json(), sort_keys=True) + "\n")
            self.out.flush()
            return
        if ev.kind == "timer_fired" and ev.data.get("unit") == "zincati-py-check.timer":
            # The check timer fires every steady_interval_secs: show its first firings only.
            key = f"{ev.node}"
            count = int(ev.data.get("count", 0))
            if key in self.quiet_timer_fires:
                return
            if count >= 2:
                self.quiet_timer_fires.add(key)
                self._line(ev, ev.message + " (further check-timer runs not shown)")
                return
        self._line(ev, ev.message)

    def _line(self, ev: Event, message: str) -> None:
        first, *rest = message.splitlines() or [""]
        prefix = f"{'+' + format(ev.t, '.2f') + 's':>9}  {ev.node or 'fleet':<7} "
        self.out.write(prefix + first + "\n")
        for line in rest:
            self.out.write(" " * len(prefix) + "  " + line + "\n")
        self.out.flush()

    def summary(self, s: Summary) -> None:
        if self.as_json:
            self.out.write(json.dumps(s.to_json(), sort_keys=True) + "\n")
            self.out.flush()
            return
        self.out.write("\n" + s.table() + "\n\n")
        verdict = "OK" if s.ok else "FAILED"
        self.out.write(
            f"{verdict}: {s.reason} (max {s.max_concurrent_holders} slot holder(s) seen, "
            f"{s.duration_s:.1f}s)\n"
        )
        for p in s.pending:
            self.out.write(f"  still pending: {p}\n")
        if not s.ok and not self.kept:
            self.out.write("(run with --keep to keep the work directory: logs, roots, configs)\n")
        self.out.flush()


async def run_demo(
    nodes: int,
    fast: bool,
    as_json: bool,
    keep: bool,
    out: TextIO = sys.stdout,
    workdir: Path | None = None,
) -> int:
    """The ``zincati-py demo`` command: 0 if the rollout was correct, 1 if not, 130 on Ctrl-C."""
    narrator = Narrator(out, as_json, keep)
    timing = FAST if fast else NORMAL
    loop = asyncio.get_running_loop()
    interrupted: list[str] = []
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        interrupted.append(sig.name)
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    fleet = Fleet(nodes, timing, workdir=workdir, keep=keep, emit=narrator)

    async def work() -> Summary:
        await fleet.start()
        return await fleet.run()

    summary: Summary | None = None
    task = asyncio.ensure_future(work())
    try:
        first: list[asyncio.Future[Any]] = [task, stop]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            # Bounded: a start-up step running in a thread finishes before it notices.
            await asyncio.wait({task}, timeout=60)
        elif task.exception() is None:
            summary = task.result()
        else:
            exc = task.exception()
            narrator(Event(fleet.now(), None, "error", f"demo failed: {type(exc).__name__}: {exc}"))
            summary = Summary(
                False, f"{type(exc).__name__}: {exc}", fleet.now(), [], fleet.max_holders
            )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        pending = [n.describe_pending() for n in fleet.nodes if n.steady_at is None]
        await fleet.stop()
        where = f"; work dir kept: {fleet.dir}" if keep else ""
        narrator(Event(fleet.now(), None, "teardown", f"everything stopped{where}"))
    if interrupted:
        summary = Summary(
            False,
            f"interrupted by {interrupted[0]}",
            fleet.now(),
            [],
            fleet.max_holders,
            pending,
        )
        narrator.summary(summary)
        return 130
    assert summary is not None
    narrator.summary(summary)
    return 0 if summary.ok else 1
