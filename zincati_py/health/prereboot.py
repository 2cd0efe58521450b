"""``[agent.health] pre_reboot``: checks that must pass before the agent asks its strategy
(and so a fleet-lock slot) for a reboot.

A unit name must be active; a command must exit 0 within ``timeout_secs`` (an asyncio
subprocess, never blocking the loop; its environment names the staged version in
``ZINCATI_PY_VERSION``). A failure postpones the reboot with the reason and each check's output
in ``status``; the checks run again at the next evaluation, which the returned recheck time
guarantees (a backoff from 5 s to 5 min) when no event comes first: no polling loop of its own.

``[agent.health] required_units`` are looked up here too, on the system about to update: a
name systemd does not know (``not-found``: a typo, or a unit removed) postpones the update
with that reason. The gate after the update would wait for the unit until its deadline and then
roll back and deny-list the release, and every release after it, although none of them is at
fault; ``config check`` cannot tell (the units of the release booted after the update are not
known before it is). A unit the new release no longer ships still fails its gate: that is a
regression of the release.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from zincati_py.backoff import Backoff
from zincati_py.health import spec
from zincati_py.health.run import Result, run_command, unit_result

if TYPE_CHECKING:
    from dbus_fast.aio import MessageBus

    from zincati_py.config import Settings

log = logging.getLogger("zincati_py.agent")

Outcome = tuple[str, float | None] | None
SystemdBus = Callable[[], Awaitable[tuple["MessageBus | None", bool]]]


class PreReboot:
    def __init__(self) -> None:
        self.results: list[Result] = []
        self.reason: str | None = None
        self._backoff = Backoff(5.0, 300.0)

    async def run(
        self,
        config: Settings,
        staged_version: str | None,
        systemd: SystemdBus,
        environ: Callable[[str, Any, str], dict[str, str]],
    ) -> Outcome:
        checks = [spec.parse(t) for t in config.agent.health.pre_reboot]
        required = list(config.agent.health.required_units)
        if not checks and not required:
            self.results, self.reason = [], None
            return None
        timeout = float(config.agent.health.timeout_secs)
        env = environ("pre-reboot", None, "")
        env["ZINCATI_PY_VERSION"] = staged_version or ""
        results: list[Result] = []
        bus, owned = None, False
        try:
            for check in checks:
                if check.unit is not None:
                    if bus is None:
                        bus, owned = await systemd()
                    assert bus is not None
                    results.append(await unit_result(bus, check.unit, "unit", wait=False))
                else:
                    results.append(await run_command(check.argv, "command", timeout, env))
            for unit in required:
                if bus is None:
                    bus, owned = await systemd()
                if bus is not None:
                    results.append(await _known(bus, unit))
        except Exception as exc:
            results.append(Result("systemd", "unit", False, f"unreachable: {exc}"))
        finally:
            if owned and bus is not None:
                bus.disconnect()
        self.results = results
        failed = [r for r in results if not r.ok]
        if not failed:
            self._backoff.reset()
            if self.reason is not None:
                log.info("pre-reboot checks pass again")
            self.reason = None
            return None
        reason = "pre-reboot check failed: " + "; ".join(r.line() for r in failed)
        if reason != self.reason:
            log.warning("%s: reboot postponed", reason)
        self.reason = reason
        return (reason, time.time() + self._backoff.next_delay())


async def _known(bus: MessageBus, unit: str) -> Result:
    """A ``required_units`` entry: ok unless systemd says there is no such unit (any other
    state is the gate's business, after the update)."""
    result = await unit_result(bus, unit, "required unit", wait=True)
    if result.ok or not result.detail.startswith("no such unit"):
        known = result.detail if result.detail.startswith("cannot ask") else "known to systemd"
        return Result(unit, "required unit", True, known, at=result.at)
    detail = (
        f"{result.detail} on this system: the update's health gate would wait for it, fail and "
        "roll back; fix [agent.health] required_units"
    )
    return Result(unit, "required unit", False, detail, at=result.at)
