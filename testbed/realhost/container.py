"""A booted ``systemd-nspawn`` container: systemd 252 as PID 1, driven from the host.

There is no host systemd to ask for a scope, so nspawn is started from a shell that first
moves itself into a cgroup of its own (``/sys/fs/cgroup/unified/zincati-py-testbed/NAME`` on
this hybrid host, ``/sys/fs/cgroup/...`` on a pure cgroup v2 one), and
``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`` gives the container pure cgroup v2, like Fedora.
A reboot inside makes nspawn exit 133: the caller boots it again
(:meth:`Container.expect_reboot`), as ``systemd-nspawn@.service`` does.
SIGTERM to nspawn is an orderly poweroff. Commands run inside through ``nsenter -a`` on the
container's PID 1; journals are read from ``ROOT/var/log/journal`` on the host. Every wait is
bounded; :meth:`Container.close` always leaves no process and no cgroup behind.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

REBOOT_EXIT = 133
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    pass


def _cgroup_roots() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # pure cgroup v2
        return [base]
    roots = [base / "unified"] if (base / "unified/cgroup.procs").exists() else []
    if (base / "systemd/cgroup.procs").exists():  # the name=systemd v1 hierarchy of hybrid hosts
        roots.append(base / "systemd")
    return roots


def _rmtree_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir():
            _rmtree_cgroup(child)
    with contextlib.suppress(OSError):
        path.rmdir()


class Container:
    """``Container(root, name, logdir).boot()``; ``run([...])``; ``close()``."""

    def __init__(
        self,
        root: Path,
        name: str,
        logdir: Path,
        mounts: Sequence[Path] = (),
        netns: Path | None = None,
    ) -> None:
        self.root = root
        #: A network namespace shared with other containers (a fleet on one loopback), else
        #: ``--private-network``.
        self.netns = netns
        #: Mounted for this container (its overlay root): unmounted by :meth:`discard_root`.
        self.mounts = list(mounts)
        self.name = name
        self.logdir = logdir
        self.process: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.boots = 0
        # Unique per container object: two sessions may boot containers of the same name at
        # once (CI and a developer), and close() kills whatever is in these cgroups.
        unique = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        #: nspawn's machine name (its hostname, its /run/systemd/nspawn/propagate/ directory).
        self.machine = f"{name[:50]}-{uuid.uuid4().hex[:6]}"
        self.cgroups = [r / "zincati-py-testbed" / unique for r in _cgroup_roots()]
        self._spawned: list[subprocess.Popen[str]] = []
        #: Seconds each step took: "make" (install), "boot" (one per boot), "poweroff".
        self.timings: dict[str, list[float]] = {}

    def _timed(self, what: str, started: float) -> None:
        self.timings.setdefault(what, []).append(round(time.monotonic() - started, 2))

    # ---- lifecycle -------------------------------------------------------------------------
    def boot(self, timeout: float = 120.0) -> Self:
        """Start nspawn and return once ``systemctl is-system-running --wait`` answers."""
        if self.process is not None and self.process.poll() is None:
            raise ContainerError(f"{self.name}: already running")
        self.boots += 1
        started = time.monotonic()
        self.logdir.mkdir(parents=True, exist_ok=True)
        for cg in self.cgroups:
            cg.mkdir(parents=True, exist_ok=True)
        moves = "; ".join(
            f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))}" for cg in self.cgroups
        )
        nspawn = [
            "systemd-nspawn", "-b", "-D", str(self.root), f"--machine={self.machine}",
            "--register=no", "--keep-unit", "--console=pipe", "--link-journal=no",
            "--private-network" if self.netns is None else f"--network-namespace-path={self.netns}",
        ]  # fmt: skip
        console = open(self.logdir / f"console-{self.boots}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        self.process = subprocess.Popen(
            ["sh", "-c", f'{moves}; exec "$@"', "sh", *nspawn],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            env=env,
        )
        console.close()
        self.leader = self._find_leader(timeout=30)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            proc = self.run(
                ["systemctl", "is-system-running", "--wait"],
                check=False,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                self._timed("boot", started)
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.2)  # the bus may not be up for the first call
        raise ContainerError(
            f"{self.name}: boot {self.boots} did not finish in {timeout:.0f} s (state {state!r},"
            f" nspawn {self.process.poll()})\n{self.journal('-b', '-p', 'warning', tail=80)}"
        )

    def _find_leader(self, timeout: float) -> int:
        """The container's PID 1 (nspawn's child running in a pid namespace of its own)."""
        assert self.process is not None
        own_ns = os.readlink("/proc/self/ns/pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ContainerError(
                    f"{self.name}: nspawn exited with {self.process.returncode}:\n" + self.console()
                )
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    if ppid != self.process.pid:
                        continue
                    if os.readlink(f"/proc/{entry}/ns/pid") == own_ns:
                        continue
                    if Path(f"/proc/{entry}/comm").read_text().strip() != "systemd":
                        continue
                except (OSError, IndexError, ValueError):
                    continue
                return int(entry)
            time.sleep(0.05)
        raise ContainerError(f"{self.name}: no container PID 1 after {timeout:.0f} s")

    def wait_exit(self, timeout: float) -> int:
        """Wait (bounded) for nspawn to exit; its exit code (133: the container rebooted)."""
        assert self.process is not None
        try:
            rc = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(f"{self.name}: still running after {timeout:.0f} s") from None
        self.leader = None
        return rc

    def expect_reboot(self, timeout: float = 120.0, boot_timeout: float = 120.0) -> Self:
        """Wait for the container to reboot (nspawn exits 133) and boot it again."""
        rc = self.wait_exit(timeout)
        if rc != REBOOT_EXIT:
            raise ContainerError(f"{self.name}: nspawn exited {rc}, not {REBOOT_EXIT} (reboot)")
        return self.boot(boot_timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poweroff(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to nspawn (orderly poweroff); SIGKILL after ``timeout``. Its exit code."""
        rc = None
        if self.process is not None:
            started = time.monotonic()
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
                self._timed("poweroff", started)
            rc = self.process.returncode
        self.leader = None
        return rc

    def close(self) -> None:
        for proc in self._spawned:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        self._spawned.clear()
        self.poweroff()
        for cg in self.cgroups:
            # A container whose nspawn had to be SIGKILLed may leave processes: kill what is
            # left in its cgroup (cgroup v2's cgroup.kill; a no-op when empty), then remove it.
            kill = cg / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    kill.write_text("1")
                deadline = time.monotonic() + 10
                while (cg / "cgroup.events").exists() and time.monotonic() < deadline:
                    if "populated 0" in (cg / "cgroup.events").read_text():
                        break
                    time.sleep(0.1)
            _rmtree_cgroup(cg)

    def discard_root(self) -> None:
        """After :meth:`close`: keep the journal (``logdir/journal``), remove the rootfs."""
        if self.running():
            raise ContainerError(f"{self.name}: still running")
        journal = self.root / "var/log/journal"
        if journal.is_dir():
            shutil.move(str(journal), str(self.logdir / "journal"))
        for mount in reversed(self.mounts):
            subprocess.run(["umount", str(mount)], check=False, capture_output=True, timeout=60)
        self.mounts.clear()
        for leftover in (self.root, self.root.parent / "upper", self.root.parent / "work"):
            shutil.rmtree(leftover, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- commands inside -------------------------------------------------------------------
    def argv(
        self, argv: Sequence[str], user: str | None = None, env: Mapping[str, str] | None = None
    ) -> list[str]:
        if self.leader is None:
            raise ContainerError(f"{self.name}: not running")
        base = {"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
        base["HOME"] = "/root" if user is None else "/"
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i"]
        cmd += [f"{k}={v}" for k, v in {**base, **(env or {})}.items()]
        if user is not None:  # its uid, primary group and groups; no PAM session (runuser)
            cmd += ["runuser", "-u", user, "--"]
        return cmd + list(argv)

    def run(
        self,
        argv: Sequence[str],
        user: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside (as root, or as ``user`` without a login session)."""
        cmd = self.argv(argv, user, env)
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ContainerError(f"{self.name}: {shlex.join(argv)}: no exit in {timeout} s") from e
        if check and proc.returncode != 0:
            raise ContainerError(
                f"{self.name}: {shlex.join(argv)}{f' (as {user})' if user else ''}: exit"
                f" {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], **kwargs)  # type: ignore[arg-type]

    def spawn(self, argv: Sequence[str], user: str | None = None) -> subprocess.Popen[str]:
        """Start ``argv`` inside in the background; killed (at the latest) by :meth:`close`."""
        proc = subprocess.Popen(
            self.argv(argv, user),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._spawned.append(proc)
        return proc

    def wait_for(
        self, what: str, predicate: Callable[[], object], timeout: float, interval: float = 0.25
    ) -> object:
        """Poll ``predicate`` (bounded) until it returns something true; that value."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise ContainerError(f"{self.name}: {what}: not within {timeout:.0f} s (last: {last!r})")

    # ---- logs ------------------------------------------------------------------------------
    def journal(self, *args: str, tail: int | None = None) -> str:
        """``journalctl -D ROOT/var/log/journal ARGS`` on the host (works when it is down)."""
        directory = self.root / "var/log/journal"
        if not directory.is_dir():  # discarded: the kept copy
            directory = self.logdir / "journal"
        cmd = ["journalctl", "-D", str(directory), "--no-pager", "-q"]
        cmd += ["-o", "short-monotonic", *args]
        if tail is not None:
            cmd += ["-n", str(tail)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return proc.stdout + proc.stderr

    def console(self) -> str:
        parts = []
        for path in sorted(self.logdir.glob("console-*.log")):
            parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)
