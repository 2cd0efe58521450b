"""How the agent was started: its options (command line, then environment hooks) and the
error that ends a start."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from zincati_py import envhooks
from zincati_py.agent.api import BUS_NAME
from zincati_py.paths import Paths


class StartupError(Exception):
    """The agent cannot start; ``code`` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Options:
    paths: Paths
    bus_address: str | None = None
    bus_name: str = BUS_NAME
    ostree_command: tuple[str, ...] = ("ostree",)
    systemd_bus: str | None = None  # None: systemd on the system bus
    boot_id: str | None = None  # None: read /proc/sys/kernel/random/boot_id

    @classmethod
    def from_env(
        cls,
        root: str | None,
        bus_address: str | None,
        bus_name: str | None,
        ostree_command: str | None,
        systemd_bus: str | None = None,
    ) -> Options:
        cmd = ostree_command or envhooks.get(envhooks.OSTREE_COMMAND) or "ostree"
        return cls(
            paths=Paths.from_root(root),
            bus_address=bus_address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or None,
            bus_name=bus_name or envhooks.get(envhooks.BUS_NAME) or BUS_NAME,
            ostree_command=tuple(shlex.split(cmd)),
            systemd_bus=systemd_bus or envhooks.get(envhooks.SYSTEMD_BUS),
        )
