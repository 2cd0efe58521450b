"""The interface between the agent and its reboot strategies.

The agent owns the update state machine; a strategy only answers "may this node reboot into
the staged update now?" and, after boot, "steady state reached" (where a remote lock is
released). Strategies never sleep or poll: an answer that will change with the clock carries
``recheck_at`` (the agent arms one timer), and an answer that changes on an event (a marker
file appearing, a lease to renew) calls ``ctx.wake(reason)`` to make the agent ask again.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from zincati_py.config import Settings
from zincati_py.paths import Paths


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    # Why, in words an admin reads in `zincati-py status` and the journal.
    reason: str
    # When the answer may change without any event (window opens or closes, retry after a
    # backoff, lease renewal). None: only events change it.
    recheck_at: datetime | None = None
    # Strategy-specific facts for `status --json` (e.g. next window, lease expiry).
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StrategyContext:
    config: Settings
    paths: Paths
    # Ask the agent to re-evaluate now; safe to call from any coroutine or callback in the
    # agent's event loop.
    wake: Callable[[str], None]
    # What a steady-state report may tell a remote peer about this node (booted_version, and
    # after an update's health gate: health "healthy"/"failed", failed_version, reason).
    report: Callable[[], dict[str, str]] = dict


class Strategy(abc.ABC):
    name: ClassVar[str]
    # Local gates are evaluated before remote ones, so a remote lock is only requested when
    # every local gate already allows (no slot is taken outside a window).
    remote: ClassVar[bool] = False

    def __init__(self, ctx: StrategyContext) -> None:
        self.ctx = ctx
        self.last: Verdict | None = None

    async def start(self) -> None:
        """Set up watches (inotify, timers). Called once before the first question."""

    async def stop(self) -> None:
        """Release watches and connections (not remote locks: see ``abort``)."""

    async def can_finalize(self, now: datetime) -> Verdict:
        """May the staged update be finalized and rebooted into now?

        Remote strategies take their lock here (idempotently). Records the answer in ``last``.
        """
        verdict = await self._can_finalize(now)
        self.last = verdict
        return verdict

    @abc.abstractmethod
    async def _can_finalize(self, now: datetime) -> Verdict: ...

    async def abort(self) -> None:
        """A reboot allowed by ``can_finalize`` will not happen now: release what was taken."""

    async def report_steady(self) -> Verdict:
        """The booted deployment is healthy. ``allowed`` False means "not yet, retry"."""
        return Verdict(True, "nothing to report")

    def status(self) -> dict[str, Any]:
        """Why this strategy currently says yes or no, for ``zincati-py status``."""
        last = self.last
        return {
            "name": self.name,
            "allowed": None if last is None else last.allowed,
            "reason": "not asked yet" if last is None else last.reason,
            "recheck_at": None
            if last is None or last.recheck_at is None
            else last.recheck_at.isoformat(),
            **({} if last is None else last.details),
        }
