"""``[agent.hooks]``: admin commands run on update events, in a generated systemd unit.

Events (``spec.EVENTS``): ``staged`` (an update staged), ``reboot`` (a reboot is imminent:
``ZINCATI_PY_WHEN`` is when, ``ZINCATI_PY_REASON`` why), ``booted`` (booted into a new
release), ``rolled-back`` (its health gate failed and the previous deployment is booted again),
``dead-end`` (the booted release is a dead-end). For an event in ``events`` (every event when
empty) the agent writes ``/run/zincati-py/hooks/INSTANCE.env`` (``ZINCATI_PY_EVENT``,
``ZINCATI_PY_VERSION``, ``ZINCATI_PY_FROM_VERSION``, ``ZINCATI_PY_REASON``,
``ZINCATI_PY_WHEN``; control characters in a value become spaces) and starts
``zincati-py-hook@INSTANCE.service``, the template the generator renders from ``commands``
(:mod:`zincati_py.health.units`): a static unit from root's configuration, so polkit can let
the unprivileged agent start exactly it (a transient unit's properties would be the agent's to
choose, root included). Firing never waits and never fails the update: a start systemd refuses
is logged, and a failing command is systemd's to record (``journalctl -u``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zincati_py.cincinnati.motd import MOTD_REL
from zincati_py.timefmt import iso_ts
from zincati_py.unitfile import control_characters

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

    from zincati_py.config import Settings

log = logging.getLogger("zincati_py.agent")

SystemdBus = Callable[[], Awaitable[tuple["MessageBus | None", bool]]]
FIELDS = ("version", "from_version", "reason", "when")


def clean(value: str) -> str:
    """A value for an environment assignment: control characters become spaces."""
    if not control_characters(value):
        return value
    return "".join(" " if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F else c for c in value)


def environment(event: str, fields: dict[str, str]) -> list[str]:
    env = [f"ZINCATI_PY_EVENT={event}"]
    env += [f"ZINCATI_PY_{k.upper()}={clean(fields.get(k, ''))}" for k in FIELDS]
    return env


def shell_assignment(assignment: str) -> str:
    """``NAME=value`` as a line ``sh`` reads back exactly (the hook unit's loader)."""
    import shlex

    name, _, value = assignment.partition("=")
    return f"{name}={shlex.quote(value)}"


class Hooks:
    def __init__(self, settings: Any, systemd: SystemdBus, directory: Path) -> None:
        self.settings = settings  # .config: the Settings in force
        self.systemd = systemd
        self.directory = directory  # where the instances' environment files go
        self.fired = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def fire(
        self, event: str, fields: dict[str, str], *, wait: bool = False
    ) -> asyncio.Task[None] | None:
        """Run the hooks for ``event`` in the background (returns at once); with ``wait`` the
        task ends once systemd finished the hook unit (or gave up), for the caller to await
        a bounded time."""
        config: Settings = self.settings.config
        hooks = config.agent.hooks
        if not hooks.commands or (hooks.events and event not in hooks.events):
            return None
        task = asyncio.get_running_loop().create_task(self._run(event, fields, wait))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _sweep(self, now: float) -> None:
        """Environment files of earlier instances (their units are long done)."""
        try:
            old = [p for p in self.directory.glob("*.env") if p.lstat().st_mtime < now - 3600]
        except OSError:
            return
        for path in old:
            with contextlib.suppress(OSError):
                path.unlink()

    async def _run(self, event: str, fields: dict[str, str], wait: bool = False) -> None:
        from zincati_py.dbus import systemd
        from zincati_py.fsutil import atomic_write
        from zincati_py.health.units import unit_name

        self.fired += 1
        now = time.time()
        instance = f"{event}-{int(now)}-{os.getpid()}-{self.fired}"
        unit = unit_name(instance)
        bus, owned = None, False
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            self._sweep(now)
            text = "".join(f"{shell_assignment(a)}\n" for a in environment(event, fields))
            atomic_write(self.directory / f"{instance}.env", text, mode=0o600, durable=False)
            bus, owned = await self.systemd()
            if bus is None:
                raise RuntimeError("no bus")
            job = await systemd.start_unit(bus, unit)
            log.info("hooks for event %s started: %s", event, unit)
            if wait:
                limit = float(self.settings.config.agent.hooks.timeout_secs)
                await systemd.wait_job(bus, job, limit)
        except Exception as exc:
            log.warning("hooks for event %s not run (%s): %s", event, unit, exc)
        finally:
            if owned and bus is not None:
                bus.disconnect()


DEADEND_MOTD_REL = MOTD_REL  # the graph client's dead-end MOTD
FIRED_KEY = "health_hooks_fired"
# How long a reboot waits for the "reboot" hooks to finish.
REBOOT_HOOK_WAIT_SECS = 30


class Events:
    """Which update events happened, for :class:`Hooks`. ``store`` and ``deployments`` are the
    agent's (duck-typed): "staged" is fired once per update this agent staged, "dead-end" once
    per dead-end text (``/run/motd.d/85-zincati-deadend.motd``, the graph client's), both
    remembered durably under ``extra["health_hooks_fired"]``; the rest by the health keeper."""

    def __init__(self, root: Path, store: Any, deployments: Any, hooks: Hooks) -> None:
        self.root = root
        self.store = store
        self.deployments = deployments
        self.hooks = hooks

    def _booted(self) -> str:
        booted = self.deployments.booted
        return str(booted.version or booted.checksum) if booted is not None else ""

    def fire(self, event: str, **fields: str) -> None:
        self.hooks.fire(event, fields)

    async def reboot_imminent(
        self,
        version: str,
        reason: str,
        when: float | None = None,
        from_version: str | None = None,
    ) -> None:
        """The "reboot" hooks, waited for (at most :data:`REBOOT_HOOK_WAIT_SECS`): a reboot
        right after starting them would stop them with the rest of the system."""
        at = iso_ts(when if when is not None else time.time())
        fields = {
            "version": version,
            "from_version": self._booted() if from_version is None else from_version,
            "reason": reason,
            "when": at,
        }
        task = self.hooks.fire("reboot", fields, wait=True)
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), REBOOT_HOOK_WAIT_SECS)
        except TimeoutError:
            log.warning("reboot hooks still running after %d s: rebooting", REBOOT_HOOK_WAIT_SECS)

    async def watch(self) -> None:
        if not self.hooks.settings.config.agent.hooks.commands:
            return  # nothing to fire: nothing to remember either
        seen = dict(self.store.record.extra.get(FIRED_KEY) or {})
        now_seen = dict(seen)
        ours = self.store.record.staged_by_us
        staged = self.deployments.staged
        if (
            ours is not None
            and staged is not None
            and staged.checksum == ours.checksum
            and seen.get("staged") != ours.checksum
        ):
            now_seen["staged"] = ours.checksum
            self.fire(
                "staged",
                version=staged.version or staged.checksum,
                from_version=self._booted(),
                reason="update staged (finalization locked)",
            )
        try:
            deadend = (self.root / DEADEND_MOTD_REL).read_text().strip()
        except OSError:
            deadend = ""
        if deadend != seen.get("deadend", ""):
            now_seen["deadend"] = deadend
            if deadend:
                self.fire("dead-end", version=self._booted(), reason=deadend)
        if now_seen != seen:
            await self.store.commit(extra={**self.store.record.extra, FIRED_KEY: now_seen})
