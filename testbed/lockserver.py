"""``zincati-py fleetlock serve`` as a real process on a fixed loopback port, restartable on
that port, for tests and benchmarks. Torn down by PID."""

from __future__ import annotations

import os
import resource
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
    each start became ready (``time.monotonic()``); ``options``: arguments before
    ``fleetlock`` (``["-v"]``); ``env``: extra environment; ``nofile``: the process's
    open-file limit (soft and hard)."""

    config: Path
    port: int
    log: Path
    prefix: str = ""
    process: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    nofile: int | None = None

    @property
    def url(self) -> str:
        """The base URL with its trailing slash."""
        return f"http://127.0.0.1:{self.port}{self.prefix}/"

    def start(self, timeout: float = 15.0) -> LockServerProcess:
        """Start the server; return once ``/readyz`` answers 200."""
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *zincati_py_argv(),
                    *self.options,
                    "fleetlock",
                    "serve",
                    "--config",
                    str(self.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                preexec_fn=limit if nofile is not None else None,
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
