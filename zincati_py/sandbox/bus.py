"""A private dbus-daemon on a Unix socket, for a test or demo "system" or "session" bus."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{bus_type}</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """Start with ``start()`` (or use as a context manager); ``address`` is the bus address.

    The daemon runs in the foreground of its own process so it can be killed by PID; its
    directory (socket + config) is removed on ``stop()``. ``log_file``: where the daemon's
    output goes (default: inherited; the demo keeps its terminal free of dbus-daemon's
    "Failed to set fd limit" warnings that way).
    """

    def __init__(
        self,
        bus_type: str = "system",
        directory: Path | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.bus_type = bus_type
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix=f"zpy-{bus_type}-bus-"))
        self.socket = self.directory / "bus"
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def start(self, timeout: float = 10.0) -> PrivateBus:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "bus.conf"
        config.write_text(_CONFIG.format(bus_type=self.bus_type, socket=self.socket))
        log = None if self.log_file is None else self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                ["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={config}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            if log is not None:
                log.close()
        # The socket file appears just before dbus-daemon listens: ready means a connect works.
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None:
                raise RuntimeError(f"dbus-daemon exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"dbus-daemon did not listen on {self.socket}")
            time.sleep(0.01)
        return self

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """Environment variables pointing clients at this bus."""
        var = "DBUS_SYSTEM_BUS_ADDRESS" if self.bus_type == "system" else "DBUS_SESSION_BUS_ADDRESS"
        return {var: self.address}

    def __enter__(self) -> PrivateBus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def dbus_daemon_available() -> bool:
    return shutil.which("dbus-daemon") is not None and os.name == "posix"
