"""Several strategies at once (``strategy = ["periodic", "fleet_lock"]``): all must allow.

Local gates are asked first and remote ones last (a stable sort on ``remote``), and the
evaluation stops at the first denial, so a remote lock is only requested when every local
gate already allows: no reboot slot is taken outside a maintenance window. If a later gate
denies after earlier ones allowed, the earlier ones are aborted (a slot they took is released).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from zincati_py.strategy.base import Strategy, StrategyContext, Verdict


def _earliest(times: list[datetime | None]) -> datetime | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


class Composite(Strategy):
    name = "composite"

    def __init__(self, ctx: StrategyContext, strategies: Sequence[Strategy]) -> None:
        super().__init__(ctx)
        self.strategies = tuple(sorted(strategies, key=lambda s: s.remote))

    async def start(self) -> None:
        for strategy in self.strategies:
            await strategy.start()

    async def stop(self) -> None:
        for strategy in reversed(self.strategies):
            await strategy.stop()

    async def _can_finalize(self, now: datetime) -> Verdict:
        allowed: list[tuple[Strategy, Verdict]] = []
        for strategy in self.strategies:
            verdict = await strategy.can_finalize(now)
            if not verdict.allowed:
                for earlier, _ in reversed(allowed):
                    await earlier.abort()
                skipped = [s.name for s in self.strategies[len(allowed) + 1 :]]
                return Verdict(
                    False,
                    f"{strategy.name}: {verdict.reason}",
                    # Only the denying gate's answer matters until it changes; the gates
                    # after it were not asked.
                    recheck_at=verdict.recheck_at,
                    details={"denied_by": strategy.name, "not_asked": skipped},
                )
            allowed.append((strategy, verdict))
        return Verdict(
            True,
            "; ".join(f"{s.name}: {v.reason}" for s, v in allowed),
            # Any part changing its mind changes the whole answer.
            recheck_at=_earliest([v.recheck_at for _, v in allowed]),
            details={"denied_by": None, "not_asked": []},
        )

    async def abort(self) -> None:
        for strategy in reversed(self.strategies):
            await strategy.abort()

    async def report_steady(self) -> Verdict:
        verdicts = await asyncio.gather(*(s.report_steady() for s in self.strategies))
        pending = [(s, v) for s, v in zip(self.strategies, verdicts, strict=True) if not v.allowed]
        if not pending:
            return Verdict(True, "every strategy reported steady state")
        return Verdict(
            False,
            "; ".join(f"{s.name}: {v.reason}" for s, v in pending),
            recheck_at=_earliest([v.recheck_at for _, v in pending]),
        )

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["order"] = [s.name for s in self.strategies]
        out["strategies"] = [s.status() for s in self.strategies]
        return out
