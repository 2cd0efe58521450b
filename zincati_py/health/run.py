"""Running health checks without blocking the event loop.

Commands and ``health.d`` executables run as asyncio subprocesses (argv, never a shell; stdin
``/dev/null``; stdout and stderr together, the last :data:`MAX_OUTPUT` bytes kept), each in its
own session so a timeout kills its whole process group. Units are asked of systemd through the
agent's adapter (``zincati_py.dbus.systemd``). A :class:`Result` says ok, failed, or still
pending (a unit still starting, ``boot-complete.target`` not reached yet): only the gate waits
on pending results, until its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

MAX_OUTPUT = 4096
BOOT_COMPLETE = "boot-complete.target"


@dataclass(frozen=True)
class Result:
    name: str  # unit name, program path or health.d file
    kind: str  # "boot-complete" | "unit" | "command" | "required" | "wanted"
    ok: bool
    detail: str  # "active", "exit status 1", "timed out after 5 s", ...
    output: str = ""
    pending: bool = False  # not decided yet: the gate waits (until its deadline)
    at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        verdict = "ok" if self.ok else ("waiting" if self.pending else "FAILED")
        return f"{self.kind} {self.name}: {verdict} ({self.detail})"


async def run_command(
    argv: Sequence[str],
    kind: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Result:
    """Run ``argv``; ok when it exits 0 within ``timeout`` seconds."""
    label = name or argv[0]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except OSError as exc:
        return Result(label, kind, False, f"cannot run: {exc.strerror or exc}", at=time.time())
    assert proc.stdout is not None
    tail = bytearray()

    async def read() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            tail.extend(chunk)
            del tail[:-MAX_OUTPUT]

    try:
        await asyncio.wait_for(asyncio.gather(read(), proc.wait()), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        out = tail.decode(errors="replace").strip()
        return Result(label, kind, False, f"timed out after {timeout:g} s", out, at=time.time())
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    out = tail.decode(errors="replace").strip()
    code = proc.returncode
    if code == 0:
        return Result(label, kind, True, "exit status 0", out, at=time.time())
    detail = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    return Result(label, kind, False, detail, out, at=time.time())


async def unit_result(bus: MessageBus, unit: str, kind: str, *, wait: bool) -> Result:
    """A unit's state as a check: "active" is ok; "failed" fails; anything else is pending
    when ``wait`` (the gate, right after boot) and a failure otherwise (pre-reboot)."""
    from zincati_py.dbus import systemd

    try:
        state = await systemd.unit_state(bus, unit)
    except systemd.SystemdError as exc:
        return Result(unit, kind, False, f"cannot ask systemd: {exc}", pending=wait, at=time.time())
    detail = f"{state.active_state}" + (f" ({state.sub_state})" if state.sub_state else "")
    if state.result and state.result != "success":
        detail += f", result {state.result}"
    if not state.exists:
        # Pending for the gate, not failed: a unit may appear after boot (a daemon-reload by
        # provisioning), and the deadline still fails a unit that never does. A name that is
        # not on the system before the update never reaches the gate: the pre-reboot side
        # postpones the update instead (see prereboot.py), so a typo cannot roll back and
        # deny-list every release.
        detail = f"no such unit ({state.load_state})"
        return Result(unit, kind, False, detail, pending=wait, at=time.time())
    if state.active_state in ("active", "reloading"):
        return Result(unit, kind, True, detail, at=time.time())
    if state.active_state == "failed" or not wait:
        return Result(unit, kind, False, detail, at=time.time())
    return Result(unit, kind, False, detail, pending=True, at=time.time())
