"""``immediate``: reboot as soon as an update is staged (Zincati's default)."""

from __future__ import annotations

from datetime import datetime

from zincati_py.strategy.base import Strategy, Verdict


class Immediate(Strategy):
    name = "immediate"

    async def _can_finalize(self, now: datetime) -> Verdict:
        return Verdict(True, "immediate strategy always allows")
