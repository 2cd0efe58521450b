"""A real ``systemd --user`` manager in a private mount namespace, for tests and the demo.

Why a user manager: it is a complete systemd (timers, generators, the ``org.freedesktop.systemd1``
D-Bus API, ``systemctl``) that runs without being PID 1. Three things make it work on a host
without systemd as init (containers, CI):

* ``/run/systemd/system`` must exist (``sd_booted()``); it is created on a tmpfs mounted over
  ``/run/systemd`` inside a private mount namespace (``unshare -m``), so the host is untouched.
* The manager's session bus is a private ``dbus-daemon`` it runs itself (our own
  ``dbus.socket``/``dbus.service``, see below) on ``$XDG_RUNTIME_DIR/bus``. That directory is a
  plain temp dir, not under ``/run/systemd``, so processes outside the namespace reach the bus,
  the manager's private socket (``$XDG_RUNTIME_DIR/systemd/private``) and everything else by
  path.
* ``SYSTEMD_GENERATOR_PATH`` names a directory holding only our generator (a wrapper script
  that execs ``zincati-py-generator`` with ``ZINCATI_PY_ROOT`` set), so the manager runs it on
  start and on every daemon-reload and no host generator runs. The user manager passes its own
  environment (minus ``PATH``) to generators; the wrapper keeps ``ZINCATI_PY_ROOT`` out of the
  environment of the services it starts.

Clients use :meth:`UserManager.env` (``XDG_RUNTIME_DIR`` + ``DBUS_SESSION_BUS_ADDRESS``):
``systemctl --user``, ``zincati-py ... --user``, pystemd's ``DBusAddress(address)`` and
dbus-fast's ``MessageBus(bus_address=address)`` all work from outside the namespace.

The unshare process execs the shell that execs systemd, so the manager has one PID for its
whole life. Each manager gets its own cgroup, so several can run side by side. Teardown: SIGTERM
(the user manager stops its units, the bus included, and exits), SIGKILL after a timeout, then
SIGKILL for any process the manager had started that is still alive; all by PID.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from testbed.bus import BUS_CONFIG
from testbed.proc import Harness, stop_process, venv_script

SYSTEMD_BINARY = Path("/lib/systemd/systemd")

# Inside the namespace: hide the host's /run/systemd and claim "booted with systemd"; then move
# into our own cgroups (best effort) and exec the manager.
_NAMESPACE_SCRIPT = (
    "set -e; mkdir -p /run/systemd; mount -t tmpfs -o mode=0755 tmpfs /run/systemd; "
    'mkdir -p /run/systemd/system; {join_cgroups}exec "$@"'
)

# The session bus, run by the manager itself as dbus.socket + dbus.service: a user manager only
# connects to its API bus once units with exactly those names are running (manager.c,
# manager_dbus_is_running()), so an externally started dbus-daemon would never see it. Ours
# override the distribution's (no dependency on dbus-user-session) and use a permissive policy.
_BUS_CONFIG = BUS_CONFIG.format(bus_type="session", listen="systemd:")
_DBUS_SOCKET = """[Unit]
Description=zincati-py sandbox session bus socket

[Socket]
ListenStream=%t/bus
"""
# A host that booted has reached boot-complete.target (the agent's post-update health gate waits
# for it on the manager it is given); this manager reaches it at start, as a booted host did.
_BOOT_COMPLETE = """[Unit]
Description=zincati-py test bed: boot complete (this manager started, as a host that booted)
"""
_DBUS_SERVICE = """[Unit]
Description=zincati-py sandbox session bus
Requires=dbus.socket

[Service]
ExecStart={dbus_daemon} --nofork --nopidfile --config-file={config}
"""


def user_manager_available() -> bool:
    """True if this machine can run the harness (root for ``unshare -m``, systemd, dbus)."""
    return (
        os.geteuid() == 0
        and SYSTEMD_BINARY.exists()
        and shutil.which("unshare") is not None
        and shutil.which("dbus-daemon") is not None
    )


def default_generator() -> Path:
    """The ``zincati-py-generator`` installed beside the running interpreter (the venv's)."""
    return venv_script("zincati-py-generator")


class UserManager(Harness):
    """A ``systemd --user`` instance with its own runtime/home/config dirs and D-Bus.

    ``config_root``: the ``ZINCATI_PY_ROOT`` the generator reads (``None``: no generator runs).
    ``generator``: the executable to wrap (default: :func:`default_generator`).
    ``directory``: where runtime/home/config live (default: a new temp dir, removed on stop).
    ``environment``: extra variables for the manager, hence for every unit it starts.

    After :meth:`start`: ``pid`` (the manager), ``bus_address`` (its session bus),
    ``runtime_dir``, ``unit_dir`` (``~/.config/systemd/user``, for extra units),
    ``generator_output`` (the late dir our generator writes), ``log_file`` (manager stderr,
    generator stderr and unit output).
    """

    def __init__(
        self,
        config_root: Path | None = None,
        *,
        generator: Path | None = None,
        directory: Path | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.config_root = config_root
        self.generator = generator or default_generator()
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="zpy-user-manager-"))
        self.runtime_dir = self.directory / "runtime"
        self.home = self.directory / "home"
        self.config_home = self.home / ".config"
        self.unit_dir = self.config_home / "systemd" / "user"
        self.generator_dir = self.directory / "generators"
        self.log_file = self.directory / "manager.log"
        self.environment = dict(environment or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._cgroups: list[Path] = []
        self._cgroup_token = f"{os.getpid()}-{secrets.token_hex(6)}"

    @property
    def bus_address(self) -> str:
        """The session bus the manager is on (``org.freedesktop.systemd1``)."""
        return f"unix:path={self.runtime_dir / 'bus'}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("user manager not started")
        return self.process.pid

    @property
    def generator_output(self) -> Path:
        """The ``late`` directory: where generators write units for a user manager."""
        return self.runtime_dir / "systemd" / "generator.late"

    def env(self) -> dict[str, str]:
        """Variables that point a client (``systemctl --user``, pystemd, dbus-fast) here."""
        return {
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
        }

    def client_env(self) -> dict[str, str]:
        """``os.environ`` plus :meth:`env`: for subprocesses that talk to this manager."""
        return {**os.environ, **self.env()}

    def _prepare(self) -> None:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.chmod(0o700)
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        bus_config = self.directory / "bus.conf"
        bus_config.write_text(_BUS_CONFIG)
        (self.unit_dir / "dbus.socket").write_text(_DBUS_SOCKET)
        (self.unit_dir / "dbus.service").write_text(
            _DBUS_SERVICE.format(
                dbus_daemon=shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon",
                config=bus_config,
            )
        )
        wants = self.unit_dir / "sockets.target.wants"
        wants.mkdir(exist_ok=True)
        if not (wants / "dbus.socket").is_symlink():
            (wants / "dbus.socket").symlink_to("../dbus.socket")
        (self.unit_dir / "boot-complete.target").write_text(_BOOT_COMPLETE)
        default_wants = self.unit_dir / "default.target.wants"
        default_wants.mkdir(exist_ok=True)
        if not (default_wants / "boot-complete.target").is_symlink():
            (default_wants / "boot-complete.target").symlink_to("../boot-complete.target")
        # Unit output lands in our log file (there is no journald here); bounded teardown.
        # (--default-standard-output= on the command line is not applied to user managers.)
        (self.config_home / "systemd" / "user.conf").write_text(
            "[Manager]\nDefaultStandardOutput=inherit\nDefaultStandardError=inherit\n"
            "DefaultTimeoutStopSec=5s\n"
        )
        self.generator_dir.mkdir(parents=True, exist_ok=True)
        (self.directory / "environment-generators").mkdir(exist_ok=True)
        if self.config_root is not None:
            wrapper = self.generator_dir / "zincati-py-generator"
            wrapper.write_text(
                "#!/bin/sh\n"
                f"ZINCATI_PY_ROOT={shlex.quote(str(self.config_root))}\n"
                "export ZINCATI_PY_ROOT\n"
                f'exec {shlex.quote(str(self.generator))} "$@"\n'
            )
            wrapper.chmod(0o755)

    def _make_cgroups(self) -> list[Path]:
        """Create a cgroup per hierarchy systemd tracks processes in, below our own.

        A user manager roots its units at its own cgroup (minus ``/init.scope``); without this,
        two managers on one machine would share ``/app.slice/NAME.service`` and stopping a unit
        in one would kill the other's processes.
        """
        made: list[Path] = []
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return made
        base = Path("/sys/fs/cgroup")
        for line in lines:
            _, controllers, cgpath = line.split(":", 2)
            if controllers == "name=systemd":
                mount = base / "systemd"
            elif controllers == "":
                mount = base if (base / "cgroup.controllers").exists() else base / "unified"
            else:
                continue
            # Unique per instance: callers may reuse directory names (the demo's node dirs).
            target = mount / cgpath.lstrip("/") / f"zincati-py-sandbox-{self._cgroup_token}"
            try:
                target.mkdir()
            except OSError:
                continue
            made.append(target)
        return made

    def _remove_cgroups(self) -> None:
        # Children first; systemd normally removes its own, this catches a killed manager.
        for top in self._cgroups:
            for sub in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
        self._cgroups = []

    def _manager_env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_CONFIG_HOME": str(self.config_home),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "XDG_STATE_HOME": str(self.home / ".local" / "state"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
            # Only our generator; no environment generators from the host.
            "SYSTEMD_GENERATOR_PATH": str(self.generator_dir),
            "SYSTEMD_ENVIRONMENT_GENERATOR_PATH": str(self.directory / "environment-generators"),
        }
        env.update(self.environment)
        return env

    def start(self, timeout: float = 30.0) -> UserManager:
        """Start bus and manager; return once the manager's state is running (or degraded)."""
        self._prepare()
        self._cgroups = self._make_cgroups()
        join = "".join(
            f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))} || true; " for cg in self._cgroups
        )
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "/bin/sh",
                    "-c",
                    _NAMESPACE_SCRIPT.format(join_cgroups=join),
                    "sh",
                    str(SYSTEMD_BINARY),
                    "--user",
                    "--log-target=console",
                    "--log-color=no",
                ],
                env=self._manager_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.home,
            )
        finally:
            log.close()
        try:
            self.wait_running(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def system_state(self) -> str | None:
        """``SystemState`` read over the bus, or ``None`` while the manager is not on it.

        Reading it over the bus (not the private socket ``systemctl --user`` prefers) is what
        proves D-Bus clients will work; the first connection also activates dbus.service.
        """
        from pystemd.dbusexc import DBusBaseError
        from pystemd.dbuslib import DBusAddress

        try:
            with DBusAddress(self.bus_address.encode()) as bus:
                state = bus.get_property(
                    b"org.freedesktop.systemd1",
                    b"/org/freedesktop/systemd1",
                    b"org.freedesktop.systemd1.Manager",
                    b"SystemState",
                    b"s",
                )
        except DBusBaseError:
            return None
        return state.decode() if isinstance(state, bytes) else str(state)

    def wait_running(self, timeout: float = 30.0) -> str:
        """Block until start-up has finished (state ``running`` or ``degraded``)."""
        deadline = time.monotonic() + timeout
        state: str | None = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(
                    f"systemd --user exited early; see {self.log_file}:\n{self.log()}"
                )
            # Ask over the bus only once the bus daemon runs: a call to a socket nobody serves
            # would block for sd-bus's 25 s method timeout. The private socket answers at once.
            bus = self.systemctl("is-active", "dbus.service", check=False, timeout=5).strip()
            if bus == "failed":
                raise RuntimeError(f"the sandbox's dbus.service failed; see {self.log_file}")
            if bus == "inactive":  # socket-activated: nobody has connected yet
                self.systemctl("start", "--no-block", "dbus.service", check=False, timeout=5)
            state = self.system_state() if bus == "active" else None
            if state in ("running", "degraded"):
                return state
            time.sleep(0.05)
        raise TimeoutError(f"systemd --user not running after {timeout}s (state {state!r})")

    def systemctl(self, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        """Run ``systemctl --user ARGS`` against this manager and return its stdout."""
        out = subprocess.run(
            ["systemctl", "--user", "--no-pager", *args],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and out.returncode != 0:
            raise subprocess.CalledProcessError(out.returncode, out.args, out.stdout, out.stderr)
        return out.stdout

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _descendants(self) -> list[tuple[int, str]]:
        """(pid, start time) of every process below the manager, for teardown by PID."""
        children: dict[int, list[int]] = {}
        starts: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # Fields after the parenthesised command name: state, ppid, ... starttime (22nd).
            fields = stat.rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            starts[int(entry)] = fields[19]
        found: list[tuple[int, str]] = []
        todo = [self.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append((child, starts[child]))
                todo.append(child)
        return found

    @staticmethod
    def _kill_if_same(pid: int, start: str) -> None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat.rsplit(")", 1)[1].split()[19] == start:  # not a recycled PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the manager (gracefully, then by force), leftovers, and the bus; by PID."""
        if self.process is not None:
            leftovers: list[tuple[int, str]] = []
            if self.process.poll() is None:
                leftovers = self._descendants()

                def recount() -> None:
                    leftovers[:] = self._descendants()

                stop_process(self.process, timeout, before_kill=recount)
            for pid, start in leftovers:
                self._kill_if_same(pid, start)
            self.process = None
        self._remove_cgroups()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
