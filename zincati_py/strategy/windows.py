"""Maintenance-window calendar math: pure functions of the config, a time zone and an instant.

Semantics (Zincati's, extended to cron windows):

- A window entry is a set of wall-clock start times in the periodic time zone: each listed
  weekday at ``start_time`` (weekly recurrence), or every fire time of ``cron`` (evaluated on
  the wall clock). Each start opens the wall-clock interval ``[start, start + length)``.
- An instant is inside the maintenance windows when the zone's wall clock *at that instant*
  reads a time inside some entry's wall-clock interval (Zincati checks the local minute of the
  week the same way). Windows may overlap and may cross day and week boundaries; overlapping
  or touching windows form one continuous window.
- Clock times are obeyed, so across DST changes a window can be:
  shorter (spring forward: the wall-clock hour that does not exist is lost; a window starting
  inside the gap opens at the transition), skipped (its whole wall-clock interval lies in the
  gap), or longer (fall back: a repeated wall-clock time is inside the window both times;
  a window ending inside the repeated hour closes when the clock reaches its end for the
  last time, and one partly covering the repeated hour can open twice).
- Consistency with systemd: the generated timer ``OnCalendar=Sat *-*-* 22:30:00 Zone`` fires at
  the first occurrence of a repeated start time, which is when the window opens here too; for
  a start time that does not exist systemd does not fire at all, while the window here opens at
  the transition if it extends past the gap. The agent therefore arms its own timer at the
  ``recheck_at`` the strategy returns, and systemd's timer is only an extra wake-up.

Instants are computed exactly (to the second of the zone's transitions) by splitting time at
the zone's UTC-offset changes; within a stretch of constant offset, wall time is a shift of
absolute time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zincati_py.config import Settings, WindowSettings
    from zincati_py.paths import Paths

__all__ = ["Calendar", "Position", "Span", "calendar_from_config", "minutes_until"]

_DAY = timedelta(days=1)
_HOUR = timedelta(hours=1)
# How far to look. Weekly windows reopen within ~2 weeks even when DST skips one; cron windows
# may be years apart (Feb 29 skips 2100).
MAX_LOOKAHEAD = timedelta(days=4096)
# An open window whose edge lies further than this away is reported as open-ended (None).
MAX_EDGE_SEARCH = timedelta(days=8)
# Window starts one search may enumerate: only cron windows firing every few minutes get near.
MAX_STARTS = 10_000


@dataclass(frozen=True)
class Span:
    """A continuous stretch of absolute time inside the windows, ``[start, end)``, UTC-aware."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Position:
    """Where an instant lies relative to the windows.

    ``start``/``end`` describe the window containing ``at`` when ``in_window``, else the next
    one. ``start`` is None when no window opens within :data:`MAX_LOOKAHEAD` (or, inside, when
    the window has been open for longer than :data:`MAX_EDGE_SEARCH`); ``end`` is None when
    the window stays open for longer than :data:`MAX_EDGE_SEARCH` after ``at``.
    """

    at: datetime
    in_window: bool
    start: datetime | None
    end: datetime | None

    @property
    def minutes_to_next_window(self) -> int | None:
        if self.in_window:
            return 0
        return None if self.start is None else minutes_until(self.at, self.start)


def minutes_until(at: datetime, then: datetime) -> int:
    """Whole minutes from ``at`` until ``then``, rounded up: waiting that long is enough, and
    a window that is not open yet is never reported as 0 minutes away."""
    return max(0, math.ceil((then - at).total_seconds() / 60))


def _normalized_cron(expr: str) -> str:
    # Aliases keep their crontab(5) meaning, exactly as the generated timers translate them
    # (croniter would hash them when given a hash id).
    from zincati_py.schedule.cron import expand_alias

    return expand_alias(expr)


class Calendar:
    """The windows of one ``[updates.periodic]`` section in one time zone."""

    def __init__(
        self, windows: Sequence[WindowSettings], tz: tzinfo, *, hash_id: str | None = None
    ) -> None:
        self.windows = tuple(windows)
        self.tz = tz
        self.hash_id = hash_id

    # -- wall-clock side -----------------------------------------------------------------------

    def _starts(self, window: WindowSettings, lo: datetime, hi: datetime) -> Iterator[datetime]:
        """Naive wall-clock starts ``s`` of ``window`` with ``s < hi`` and ``s + length > lo``."""
        length = timedelta(minutes=window.length_minutes)
        if window.cron is not None:
            from croniter import croniter

            # get_next is strictly after its base: exactly the s > lo - length we need.
            it = croniter(_normalized_cron(window.cron), lo - length, hash_id=self.hash_id)
            while (s := it.get_next(datetime)) < hi:
                yield s
            return
        assert window.start_time is not None
        day: date = (lo - length).date()
        while (s := datetime.combine(day, window.start_time)) < hi:
            if day.weekday() in window.days and s + length > lo:
                yield s
            day += _DAY

    def _wall_intervals(
        self, lo: datetime, hi: datetime, budget: _Budget | None = None
    ) -> list[tuple[datetime, datetime]]:
        """The union of every window's wall-clock intervals meeting ``[lo, hi)``, merged."""
        raw = []
        for w in self.windows:
            length = timedelta(minutes=w.length_minutes)
            for s in self._starts(w, lo, hi):
                raw.append((s, s + length))
                if budget is not None:
                    budget.left -= 1
        return _merge(raw)

    # -- absolute side -------------------------------------------------------------------------

    def _offset(self, t: datetime) -> timedelta:
        offset = t.astimezone(self.tz).utcoffset()
        return offset if offset is not None else timedelta(0)

    def _segments(self, a: datetime, b: datetime) -> list[tuple[datetime, datetime, timedelta]]:
        """``[a, b)`` split where the zone's UTC offset changes: (start, end, offset) each.

        Offsets are sampled hourly and each change is bisected to the second (tzdata
        transitions are whole seconds, and no zone changes offset twice within an hour).
        """
        cuts: list[datetime] = []
        t, off = a, self._offset(a)
        while t < b:
            u = min(t + _HOUR, b)
            off_u = self._offset(u)
            if off_u != off:
                lo, hi = int(t.timestamp()), math.ceil(u.timestamp())
                while hi - lo > 1:  # invariant: offset(lo) == off, offset(hi) != off
                    mid = (lo + hi) // 2
                    if self._offset(datetime.fromtimestamp(mid, UTC)) == off:
                        lo = mid
                    else:
                        hi = mid
                cut = datetime.fromtimestamp(hi, UTC)
                if a < cut < b:
                    cuts.append(cut)
            t, off = u, off_u
        edges = [a, *cuts, b]
        return [(s, e, self._offset(s)) for s, e in itertools.pairwise(edges)]

    def spans(self, a: datetime, b: datetime, budget: _Budget | None = None) -> list[Span]:
        """The absolute stretches inside the windows, within ``[a, b)`` (clipped to it)."""
        a, b = a.astimezone(UTC), b.astimezone(UTC)
        if b <= a or not self.windows:
            return []
        segments = self._segments(a, b)
        offsets = [off for _, _, off in segments]
        # Exactly the wall times instants in [a, b) show (no margin to enumerate needlessly).
        naive_a, naive_b = a.replace(tzinfo=None), b.replace(tzinfo=None)
        walls = self._wall_intervals(naive_a + min(offsets), naive_b + max(offsets), budget)
        pieces: list[tuple[datetime, datetime]] = []
        for seg_start, seg_end, off in segments:
            for ws, we in walls:
                start = max(seg_start, (ws - off).replace(tzinfo=UTC))
                end = min(seg_end, (we - off).replace(tzinfo=UTC))
                if start < end:
                    pieces.append((start, end))
        return [Span(s, e) for s, e in _merge(pieces)]

    def position(self, at: datetime) -> Position:
        """Is ``at`` inside a window; when does it close, or when does the next one open?

        The search grows outwards from ``at`` in doubling steps, each step computing only the
        new stretch. A window chained from very frequent cron fires stops the search after
        :data:`MAX_STARTS` window starts; its unknown edges are then reported as None.
        """
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        at = at.astimezone(UTC)
        budget = _Budget(MAX_STARTS)
        # Start small: a frequent cron window costs per start, a weekly one nothing.
        lo, hi = at - _HOUR, at + _HOUR
        known = self.spans(lo, hi, budget)

        def grow_forward(limit: timedelta) -> None:
            nonlocal hi, known
            new_hi = min(hi + (hi - at), at + limit)
            known = _join(known, self.spans(hi, new_hi, budget))
            hi = new_hi

        def grow_back() -> None:
            nonlocal lo, known
            new_lo = max(lo - (at - lo), at - MAX_EDGE_SEARCH)
            known = _join(self.spans(new_lo, lo, budget), known)
            lo = new_lo

        while True:
            current = next((s for s in known if s.start <= at < s.end), None)
            if current is not None:
                open_before, open_after = current.start <= lo, current.end >= hi
                more_back = open_before and at - lo < MAX_EDGE_SEARCH and budget.left > 0
                more_fwd = open_after and hi - at < MAX_EDGE_SEARCH and budget.left > 0
                if more_back:
                    grow_back()
                if more_fwd:
                    grow_forward(MAX_EDGE_SEARCH)
                if more_back or more_fwd:
                    continue
                return Position(
                    at,
                    True,
                    None if open_before else current.start,
                    None if open_after else current.end,
                )
            upcoming = next((s for s in known if s.start > at), None)
            if upcoming is not None:
                open_after = upcoming.end >= hi
                if (
                    open_after
                    and hi - upcoming.start < MAX_EDGE_SEARCH
                    and hi - at < MAX_LOOKAHEAD
                    and budget.left > 0
                ):
                    grow_forward(MAX_LOOKAHEAD)
                    continue
                return Position(at, False, upcoming.start, None if open_after else upcoming.end)
            if hi - at >= MAX_LOOKAHEAD or budget.left <= 0:
                return Position(at, False, None, None)
            grow_forward(MAX_LOOKAHEAD)


class _Budget:
    """Window starts a search may still enumerate (croniter costs ~25 us per fire)."""

    def __init__(self, left: int) -> None:
        self.left = left


def _join(first: list[Span], second: list[Span]) -> list[Span]:
    """Spans of two adjacent ranges; pieces touching at the shared edge become one."""
    return [Span(s, e) for s, e in _merge([(x.start, x.end) for x in first + second])]


def _merge(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Sorted union; touching intervals join (``[a, b)`` + ``[b, c)`` is ``[a, c)``)."""
    out: list[tuple[datetime, datetime]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def calendar_from_config(config: Settings, paths: Paths) -> Calendar:
    """The configured windows in the configured zone. Raises ValueError (user-facing message)
    when the zone cannot be resolved."""
    from zincati_py.config import resolve_time_zone

    periodic = config.updates.periodic
    try:
        tz = resolve_time_zone(periodic.time_zone, paths.localtime)
    except OSError as exc:
        raise ValueError(f"time zone {periodic.time_zone!r}: {exc}") from exc
    return Calendar(periodic.windows, tz, hash_id=config.identity.node_uuid)
