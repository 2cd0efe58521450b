"""What this node tells the lock server, and what the lock server told it back.

``facts`` feeds ``StrategyContext.report`` (the ``fleet_lock`` strategy's optional FleetLock
keys, which other servers ignore): ``booted_version`` always; ``staged_version`` for
``pre-reboot``'s ``to_version`` (never sent with ``steady-state``); and while a gate verdict is
owed, ``health`` ("healthy" or "failed") plus, for a failure, ``failed_version`` and ``reason``.

``halted`` reads the strategy's status back: when our lock server refused the staged release
because its rollout is halted (the circuit breaker, after failures on other nodes), that
release is deny-listed for the machine while it stays staged, so it is never finalized and a
requested check may stage a newer release in its place.

``write_motd`` keeps the rollback's line in ``/run/motd.d`` (atomic; removed once an update
passes its gate).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from zincati_py.health.gate import REPORT, GateRecord, Phase


def _find(tree: Any, key: str) -> Any:
    """The first value of ``key`` in a strategy's status (a composite nests its members)."""
    if isinstance(tree, dict):
        if tree.get(key) is not None:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        return next((v for v in (_find(t, key) for t in tree) if v is not None), None)
    return None


def halted(staged: Any, strategy: Any) -> tuple[str, ...]:
    if staged is None or strategy is None:
        return ()
    version = _find(strategy.status(), "halted_version")
    return (staged.checksum,) if version and version in (staged.version, staged.checksum) else ()


def facts(booted: Any, staged: Any, rec: GateRecord | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if booted is not None:
        out["booted_version"] = booted.version or booted.checksum
    if staged is not None:
        out["staged_version"] = staged.version or staged.checksum
    if rec is not None and rec.phase in REPORT:
        out["health"] = REPORT[rec.phase]
        if rec.phase is not Phase.PASSED:
            out["failed_version"] = rec.version or rec.checksum
            out["reason"] = rec.reason[:200]
    return out


log = logging.getLogger("zincati_py.agent")


def write_motd(path: Path, text: str | None) -> None:
    """Write (atomically) or, with None, remove the MOTD file; a failure is only logged."""
    from zincati_py.fsutil import atomic_write

    try:
        if text is not None:
            atomic_write(path, text, mode=0o644, durable=False)
        elif path.exists():
            path.unlink()
            log.info("removed %s: an update passed its health gate", path)
    except OSError as exc:
        log.error("%s: %s", path, exc)
