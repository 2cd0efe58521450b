"""The agent's decisions that must survive a crash, in ``<state_dir>/state.json``.

Every change is written atomically and durably (fsync of file and directory) *before* the
action it records is taken, so a SIGKILL at any point leaves either the old or the new
record, never a half-written one, and a restarted agent never repeats a reboot it already
asked for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from zincati_py.fsutil import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def boot_id() -> str:
    """This kernel boot's random id (changes on every real reboot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Staged:
    """An update this agent staged."""

    checksum: str
    version: str | None
    at: float


@dataclass(frozen=True)
class RebootRequest:
    """ "Reboot requested into ``checksum``", written before logind's Reboot is called."""

    checksum: str
    version: str | None
    # The booted deployment when the reboot was requested: still booted means not rebooted yet.
    from_checksum: str
    at: float
    boot_id: str
    # True once logind accepted the call (False: the agent died between record and call).
    called: bool = False


@dataclass(frozen=True)
class Postponement:
    """Interactive sessions were warned about a reboot into ``checksum`` at ``since``."""

    checksum: str
    since: float


@dataclass(frozen=True)
class State:
    staged_by_us: Staged | None = None
    reboot_requested: RebootRequest | None = None
    postponed: Postponement | None = None
    # Updates we rebooted into that did not come up: never finalized again automatically.
    failed: tuple[str, ...] = ()
    last_check: float | None = None
    last_check_result: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failed"] = list(self.failed)
        out["version"] = FORMAT_VERSION
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> State:
        def opt(kind: Any, key: str) -> Any:
            value = raw.get(key)
            return None if value is None else kind(**value)

        return cls(
            staged_by_us=opt(Staged, "staged_by_us"),
            reboot_requested=opt(RebootRequest, "reboot_requested"),
            postponed=opt(Postponement, "postponed"),
            failed=tuple(raw.get("failed") or ()),
            last_check=raw.get("last_check"),
            last_check_result=raw.get("last_check_result"),
            extra=dict(raw.get("extra") or {}),
        )


class Store:
    """Load once, then ``update(**changes)`` writes through before returning."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.json"
        self.state = self._load()

    def _load(self) -> State:
        try:
            raw = json.loads(self.path.read_text())
            if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported format {raw.get('version')!r}")
            return State.from_dict(raw)
        except FileNotFoundError:
            return State()
        except (OSError, ValueError, TypeError) as exc:
            # Keep the unreadable file for inspection rather than silently overwrite it.
            keep = self.path.with_name(f"state.json.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, keep)
            log.error("%s: unreadable (%s); kept as %s, starting afresh", self.path, exc, keep)
            return State()

    def update(self, **changes: Any) -> State:
        new = replace(self.state, **changes)
        if new != self.state:
            atomic_write(
                self.path,
                json.dumps(new.as_dict(), indent=2, sort_keys=True) + "\n",
                mode=0o600,
                durable=True,
            )
            self.state = new
        return new
