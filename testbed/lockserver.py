"""``zincati-py fleetlock serve`` as a real process on a fixed loopback port, restartable on
that port, for tests and benchmarks. Torn down by PID."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from testbed.proc import Harness, stop_process, wait_ready, zincati_py_argv


@dataclass
class LockServerProcess(Harness):
    """``config``: the server's TOML (its ``listen`` is 127.0.0.1:``port``, its ``prefix``
    ``prefix``); ``log``: where its output goes (appended across restarts); ``starts``: when
    each start became ready (``time.monotonic()``)."""

    config: Path
    port: int
    log: Path
    prefix: str = ""
    process: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The base URL with its trailing slash."""
        return f"http://127.0.0.1:{self.port}{self.prefix}/"

    def start(self, timeout: float = 15.0) -> LockServerProcess:
        """Start the server; return once ``/readyz`` answers 200."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*zincati_py_argv(), "fleetlock", "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_ready(self.process, self._ready, what="server", timeout=timeout, log=self.log)
        except TimeoutError:
            self.stop()
            raise
        self.starts.append(time.monotonic())
        return self

    def _ready(self) -> bool:
        ready = f"http://127.0.0.1:{self.port}{self.prefix}/readyz"
        try:
            with urllib.request.urlopen(ready, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown handler runs)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after 10 s); the exit code, ``None`` if not running."""
        rc = stop_process(self.process, 10)
        self.process = None
        return rc
