"""``periodic``: reboot only inside the configured maintenance windows.

The calendar math (and the DST rules) live in :mod:`zincati_py.strategy.windows`. Outside a
window the verdict's ``recheck_at`` is the next opening (the generated window timer also wakes
the agent then); inside, it is the closing time, so the agent notices when the window closes.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from zincati_py.strategy.base import Strategy, StrategyContext, Verdict
from zincati_py.strategy.windows import MAX_EDGE_SEARCH, Calendar, calendar_from_config


class Periodic(Strategy):
    name = "periodic"

    def __init__(self, ctx: StrategyContext) -> None:
        super().__init__(ctx)
        self.calendar: Calendar | None = None
        self.problem: str | None = None
        try:
            self.calendar = calendar_from_config(ctx.config, ctx.paths)
        except ValueError as exc:
            self.problem = str(exc)

    async def _can_finalize(self, now: datetime) -> Verdict:
        if self.calendar is None:
            return Verdict(False, f"maintenance windows unusable: {self.problem}")
        if not self.calendar.windows:
            return Verdict(False, "no valid maintenance window is configured")
        tz = self.calendar.tz
        # Usually microseconds, but a window chained from very frequent cron fires can take
        # a good fraction of a second: keep the agent's loop free meanwhile.
        pos = await asyncio.to_thread(self.calendar.position, now)
        details: dict[str, Any] = {
            "time_zone": self.ctx.config.updates.periodic.time_zone,
            "in_window": pos.in_window,
            "minutes_to_next_window": pos.minutes_to_next_window,
            "next_window_start": None
            if pos.start is None
            else pos.start.astimezone(tz).isoformat(),
            "window_end": None if pos.end is None else pos.end.astimezone(tz).isoformat(),
        }
        if pos.in_window:
            if pos.end is None:
                # Open for longer than the search reaches: look again when it has moved on.
                return Verdict(
                    True,
                    f"inside a maintenance window open for more than {MAX_EDGE_SEARCH.days} days",
                    recheck_at=now + MAX_EDGE_SEARCH,
                    details=details,
                )
            return Verdict(
                True,
                f"inside a maintenance window until {details['window_end']}",
                recheck_at=pos.end,
                details=details,
            )
        if pos.start is None:
            return Verdict(
                False,
                "outside maintenance windows; none opens in the foreseeable future",
                None,
                details,
            )
        return Verdict(
            False,
            f"outside maintenance windows; next opens at {details['next_window_start']}",
            recheck_at=pos.start,
            details=details,
        )
