"""Configuration reload: the settings and strategy in force, replaced when the files change.

Owns the configuration in force (the last valid one; the defaults until one was valid), the
load result shown in the status, the strategy built from it, and the inotify watch on the
config directories. A valid change replaces the strategy and asks systemd to reload so the
generator re-renders the timers; an invalid one is reported and the last good one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zincati_py import config as config_mod
from zincati_py.agent import status
from zincati_py.agent.core import Host
from zincati_py.strategy import Strategy, StrategyContext, build

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

    from zincati_py.inotify import ConfigWatch
    from zincati_py.metrics import AgentMetrics
    from zincati_py.paths import Paths

log = logging.getLogger("zincati_py.agent")


class ConfigReloader:
    def __init__(
        self, host: Host, paths: Paths, metrics: AgentMetrics, systemd_bus: str | None
    ) -> None:
        self.host = host
        self.paths = paths
        self.metrics = metrics
        # None: systemd on the agent's system bus (``attach``), else this address.
        self.systemd_bus = systemd_bus
        self.bus: MessageBus | None = None
        result = config_mod.load(paths)
        self.config = result.config
        self.result = result
        # Invalid at startup: run and report, but no reboot until a valid config is loaded.
        self.ever_valid = result.ok
        self.loaded_at = time.time()
        self.strategy: Strategy | None = None
        # The facts a steady-state report carries (the health keeper's, set by the agent).
        self.report: Callable[[], dict[str, str]] = dict
        self._watcher: ConfigWatch | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._dirty = False

    async def start(self, bus: MessageBus) -> None:
        """Start the strategy in force and watch the config directories."""
        from zincati_py.inotify import ConfigWatch

        self.bus = bus
        await self._replace_strategy()
        self._watcher = ConfigWatch(self.paths.config_dirs, self.on_change)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        if self.strategy is not None:
            with contextlib.suppress(Exception):
                await self.strategy.stop()

    def report_startup(self) -> None:
        if not self.result.ok:
            for problem in self.result.errors:
                log.error("configuration: %s", problem)
            log.error("configuration invalid at startup: running, but never rebooting until fixed")
        self.metrics.config_valid = int(self.result.ok)

    # -- reloading ------------------------------------------------------------------------
    def on_change(self, reason: str) -> None:
        log.debug("configuration directories changed: %s", reason)
        self._dirty = True
        if self._reloader is None or self._reloader.done():
            self._reloader = self.host.spawn(self._reload_loop())

    async def _reload_loop(self) -> None:
        # One load at a time, applied in order: a slow stale load must never overwrite a newer
        # one. Changes during a load cause exactly one more.
        while self._dirty:
            self._dirty = False
            await self._reload()

    async def _reload(self) -> None:
        result = await asyncio.to_thread(config_mod.load, self.paths)
        async with self.host.claim("configuration changed"):
            self.result = result
            self.loaded_at = time.time()
            if not result.ok:
                for problem in result.errors:
                    log.error("configuration: %s", problem)
                log.error("configuration invalid: keeping the last good configuration in force")
                self.metrics.config_valid = 0
            else:
                self.metrics.config_valid = 1
                first_valid = not self.ever_valid
                self.ever_valid = True
                if result.config != self.config or first_valid:
                    log.info("configuration changed: applying it")
                    self.config = result.config
                    await self._replace_strategy()
                    self.host.spawn(self._reload_systemd())
        self.host.wake("configuration changed")

    async def _replace_strategy(self) -> None:
        old = self.strategy
        if old is not None:
            try:
                await old.stop()
            except Exception as exc:
                log.warning("stopping strategy %s failed: %s", old.name, exc)
        self.strategy = build(
            StrategyContext(self.config, self.paths, self.host.wake, lambda: self.report())
        )
        await self.strategy.start()
        self.metrics.updates_enabled = int(self.config.updates.enabled)
        self.metrics.allow_downgrade = int(self.config.updates.allow_downgrade)
        log.info(
            "strategy %s in force; updates %s",
            self.strategy.name,
            "enabled" if self.config.updates.enabled else "disabled",
        )

    async def _reload_systemd(self) -> None:
        """Ask systemd to reload so the generator re-renders the timers from the new config.

        systemd is reached on the agent's system bus, or on ``--systemd-bus`` (the test bed's
        user manager, whose bus is not the private "system" bus the doubles live on).
        """
        from zincati_py.dbus import systemd

        try:
            if self.systemd_bus:
                bus = await systemd.connect(address=self.systemd_bus)
                try:
                    await systemd.reload_manager(bus)
                finally:
                    bus.disconnect()
            else:
                assert self.bus is not None
                await systemd.reload_manager(self.bus)
            log.info("asked systemd to reload (the generator re-renders the timers)")
        except Exception as exc:
            log.warning("could not ask systemd to reload (timers keep the old schedule): %s", exc)

    # -- reporting ------------------------------------------------------------------------
    def doc(self) -> dict[str, Any]:
        """The ``config`` part of the status document."""
        r = self.result
        if r.ok:
            in_force = "configuration on disk"
        elif self.ever_valid:
            in_force = "last good configuration"
        else:
            in_force = "defaults for invalid keys (no reboots until the configuration is valid)"
        return {
            "valid": r.ok,
            "in_force": in_force,
            "loaded_at": status.iso(self.loaded_at),
            "fragments": [str(f) for f in r.fragments],
            "problems": [str(p) for p in r.problems],
        }
