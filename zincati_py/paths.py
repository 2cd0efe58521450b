"""Where zincati-py reads and writes, all under one optional root prefix.

The prefix (``--root`` or ``ZINCATI_PY_ROOT``, see :mod:`zincati_py.envhooks`) lets image
builders inspect an image tree and lets tests and the test bed run several nodes on one machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zincati_py import envhooks

ROOT_ENV = envhooks.ROOT

# Zincati's order: a file in a later directory replaces the same name in an earlier one.
CONFIG_DIRS = ("usr/lib/zincati/config.d", "run/zincati/config.d", "etc/zincati/config.d")


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The prefix to use: the explicit argument, else ``$ZINCATI_PY_ROOT``, else ``/``."""
    if root is None or str(root) == "":
        root = envhooks.get(ROOT_ENV) or "/"
    return Path(root)


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def from_root(cls, root: str | os.PathLike[str] | None = None) -> Paths:
        return cls(resolve_root(root))

    def _under(self, rel: str) -> Path:
        return self.root / rel

    @property
    def config_dirs(self) -> tuple[Path, ...]:
        return tuple(self._under(d) for d in CONFIG_DIRS)

    @property
    def admin_config_dir(self) -> Path:
        """Where the CLI writes fragments (``/etc`` wins over ``/run`` and ``/usr/lib``)."""
        return self.config_dirs[-1]

    @property
    def machine_id(self) -> Path:
        return self._under("etc/machine-id")

    @property
    def localtime(self) -> Path:
        return self._under("etc/localtime")

    @property
    def boot_id(self) -> Path:
        """The kernel's id of this boot (under the prefix too: a test bed plays reboots)."""
        return self._under("proc/sys/kernel/random/boot_id")

    @property
    def state_dir(self) -> Path:
        """Persistent agent state that must survive a crash or reboot."""
        return self._under("var/lib/zincati-py")

    @property
    def schedule_history_dir(self) -> Path:
        """Run records of ``[[schedule]]`` jobs, written by root's ``ExecStopPost=`` hook: a
        directory only root writes (not the agent's ``state_dir``, which its user controls)."""
        return self._under("var/lib/zincati-py-schedule/history")

    @property
    def run_dir(self) -> Path:
        """Volatile state: status.json and the public metrics socket."""
        return self._under("run/zincati-py")

    @property
    def status_file(self) -> Path:
        return self.run_dir / "status.json"

    @property
    def metrics_socket(self) -> Path:
        return self.run_dir / "public" / "metrics.promsock"
