"""Child-process plumbing shared by the sandbox harnesses, the tests and the benchmarks:
where this environment's executables are, start-up waits, and teardown by PID."""

from __future__ import annotations

import abc
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


def venv_script(name: str) -> Path:
    """The console script ``name`` installed beside the running interpreter (the venv's)."""
    return Path(sys.executable).parent / name


def zincati_py_argv() -> list[str]:
    """Argv of this environment's ``zincati-py`` (its script, else ``python -c`` the CLI)."""
    script = venv_script("zincati-py")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from zincati_py.cli import main; sys.exit(main())"]


def agent_argv(root: Path, system_bus: str, ostree_command: Sequence[str]) -> list[str]:
    """Argv of ``zincati-py agent`` for one sandboxed node (its root, bus and ostree stand-in)."""
    return [
        *zincati_py_argv(),
        "-v",
        "agent",
        "--root",
        str(root),
        "--system-bus",
        system_bus,
        "--ostree-command",
        " ".join(ostree_command),
    ]


def stop_process(
    process: subprocess.Popen[bytes] | None,
    timeout: float = 5.0,
    before_kill: Callable[[], None] | None = None,
) -> int | None:
    """SIGTERM, up to ``timeout`` s for the exit, then SIGKILL (``before_kill`` runs first);
    returns the exit code (``None`` for no process). A process that has exited is only reaped."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            if before_kill is not None:
                before_kill()
            process.kill()
            process.wait()
    return process.returncode


def wait_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    interval: float = 0.05,
    log: Path | None = None,
) -> None:
    """Poll ``ready()`` every ``interval`` s until it holds. ``RuntimeError`` if ``process``
    exits first, ``TimeoutError`` after ``timeout`` s (both quote ``log`` if given); stopping
    what was started is the caller's part."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}{_quote_log(log)}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout}s{_quote_log(log)}")
        time.sleep(interval)


def _quote_log(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        return ": " + log.read_text(errors="replace")
    except OSError:
        return ""


def start_with_ready_fd(
    argv: Callable[[int], list[str]],
    *,
    what: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv(fd)``, ``fd`` the write end of a pipe the child inherits; return once the
    child writes ``READY`` to it. A child that does not within ``timeout`` s is stopped and
    ``RuntimeError`` raised."""
    rfd, wfd = os.pipe()
    try:
        process = subprocess.Popen(argv(wfd), env=env, pass_fds=(wfd,), stdin=subprocess.DEVNULL)
        os.close(wfd)
        ready, _, _ = select.select([rfd], [], [], timeout)
        if not ready or not os.read(rfd, 16).startswith(b"READY"):
            stop_process(process)
            raise RuntimeError(f"{what} did not come up")
    finally:
        os.close(rfd)
    return process


class Harness(abc.ABC):
    """``with Harness() as h``: ``start()`` on entry, ``stop()`` on exit."""

    @abc.abstractmethod
    def start(self) -> object: ...

    @abc.abstractmethod
    def stop(self) -> object: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
