"""sd_notify(3) over ``$NOTIFY_SOCKET``: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

Why not ``pystemd.daemon.notify``: importing it pulls lxml (about 7 MiB of resident memory in
an otherwise idle daemon) for what is one datagram on a Unix socket. The protocol is tiny and
stable: a datagram of newline-separated ``KEY=VALUE`` lines to the socket named by
``$NOTIFY_SOCKET``, where a leading ``@`` means an abstract socket name.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications when running under a ``Type=notify`` unit; a no-op otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if raw.startswith("@"):
            self.address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self.address = raw
        self.watchdog_usec = self._watchdog(env)
        self._sock: socket.socket | None = None

    @staticmethod
    def _watchdog(env: os._Environ[str] | dict[str, str]) -> int | None:
        # systemd sets WATCHDOG_PID so a child that inherited the variables does not ping for us.
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        return usec if usec > 0 else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines (``send(READY="1", STATUS="...")``); False if not sent."""
        if self.address is None:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                # Non-blocking: a manager that does not read (full queue) must never stall the
                # event loop; a dropped notification is retried by the next one.
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            # The manager going away must never take the agent down with it.
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        # STATUS= is a single line in `systemctl status`.
        return self.send(STATUS=status.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def stopping(self) -> bool:
        return self.send(STOPPING="1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
