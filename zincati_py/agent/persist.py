"""The agent's decisions that must survive a crash, in ``<state_dir>/state.json``.

Every change is written atomically and durably (fsync of file and directory) *before* the
action it records is taken, so a SIGKILL at any point leaves either the old or the new
record, never a half-written one, and a restarted agent never repeats a reboot it already
asked for. Coroutines use :meth:`Store.commit`, which does the fsync in a worker thread (the
event loop keeps running) and returns once the change is durable; they act after awaiting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from zincati_py.fsutil import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """This kernel boot's random id (changes on every real reboot); "" if unknown."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def sweep_temp_files(path: Path) -> list[Path]:
    """Remove what interrupted atomic writes of ``path`` left beside it (``fsutil.atomic_write``
    writes ``.NAME.XXXXXXXX.tmp`` and renames it; a SIGKILL in between leaves it behind).

    Only for the one writer of ``path``: call it once that writer is known to be alone (the
    agent, after taking its bus name), or another writer's write in flight would fail.
    """
    removed: list[Path] = []
    try:
        leftovers = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return removed
    for tmp in leftovers:
        try:
            tmp.unlink()  # unlink never follows a symlink
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("%s: cannot remove a leftover temp file: %s", tmp, exc)
            continue
        log.info("removed %s, left by an interrupted write", tmp)
        removed.append(tmp)
    return removed


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
    # Written True durably right before logind's Reboot is called: False means the agent
    # stopped before asking (the reboot that may follow is not ours, and says nothing about
    # the update); True means it asked, or was about to.
    called: bool = False


@dataclass(frozen=True)
class Postponement:
    """Interactive sessions were warned about a reboot into ``checksum`` at ``since``."""

    checksum: str
    since: float


@dataclass(frozen=True)
class Record:
    """What ``state.json`` holds (``agent.machine.State`` is the update state, not this)."""

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
    def from_dict(cls, raw: dict[str, Any]) -> Record:
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


class StateWriteError(OSError):
    """A change could not be made durable; it is not in force (the last durable state is)."""


class Store:
    """Load once, then record changes durably before acting on them.

    ``record`` is always the newest decided state, so a decision builds on the ones before it
    even while their write is still running. Writes happen one at a time, each of the newest
    state, so the file only moves forward. A failed write puts ``record`` back to what the
    file holds, and every change that was not in the file yet fails for its caller (none of
    them is acted on).
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.json"
        self.record = self._load()
        self._gen = 0  # generation of ``record``; each change makes a new one
        self._durable = self.record  # what the file holds ...
        self._durable_gen = 0  # ... and its generation
        self._lost: list[tuple[int, int]] = []  # (after, upto]: generations a failure discarded
        self._state_lock = threading.Lock()  # guards the fields above; never held during I/O
        self._write_lock = threading.Lock()  # one writer at a time

    def _load(self) -> Record:
        try:
            raw = json.loads(self.path.read_text())
            if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported format {raw.get('version')!r}")
            return Record.from_dict(raw)
        except FileNotFoundError:
            return Record()
        except (OSError, ValueError, TypeError) as exc:
            # Keep the unreadable file for inspection rather than silently overwrite it.
            keep = self.path.with_name(f"state.json.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, keep)
            log.error("%s: unreadable (%s); kept as %s, starting afresh", self.path, exc, keep)
            return Record()

    def update(self, **changes: Any) -> Record:
        """Record ``changes``; durable when it returns. Blocks on the fsync: for callers that
        are not coroutines (coroutines await :meth:`commit`)."""
        new, gen = self._decide(changes)
        self._make_durable(gen)
        return new

    def commit(self, **changes: Any) -> Coroutine[Any, Any, Record]:
        """Record ``changes`` now (``record`` has them at once); await the result to know they
        are durable. The fsync runs in a worker thread, off the event loop."""
        new, gen = self._decide(changes)

        async def durable() -> Record:
            await asyncio.to_thread(self._make_durable, gen)
            return new

        return durable()

    def _decide(self, changes: dict[str, Any]) -> tuple[Record, int]:
        with self._state_lock:
            new = replace(self.record, **changes)
            if new != self.record:
                self._gen += 1
                self.record = new
            return new, self._gen

    def _make_durable(self, gen: int) -> None:
        """Return once generation ``gen`` (or a newer one) is in the file."""
        with self._write_lock:
            with self._state_lock:
                if any(after < gen <= upto for after, upto in self._lost):
                    raise StateWriteError(f"{self.path}: the change was not saved (see above)")
                if self._durable_gen >= gen:
                    return
                state, state_gen = self.record, self._gen
            try:
                atomic_write(
                    self.path,
                    json.dumps(state.as_dict(), indent=2, sort_keys=True) + "\n",
                    mode=0o600,
                    durable=True,
                )
            except OSError as exc:
                with self._state_lock:
                    self._lost.append((self._durable_gen, self._gen))
                    self._gen += 1  # the file's state again, as a new generation
                    self.record, self._durable_gen = self._durable, self._gen
                log.error("%s: cannot save the agent's state: %s", self.path, exc)
                raise StateWriteError(f"{self.path}: cannot save the agent's state: {exc}") from exc
            with self._state_lock:
                self._durable, self._durable_gen = state, state_gen
