"""``zincati-py windows``: the configured maintenance windows and where an instant lies.

Works whatever ``updates.strategy`` is (a note on stderr says when the windows are not
enforced), so windows can be checked before switching to ``periodic``. Semantics (DST,
half-open windows) are those of :mod:`zincati_py.strategy.windows`.

``--json`` prints one object with exactly these keys:

- ``in_window``: bool, whether ``--at`` (default now) is inside a window;
- ``minutes_to_next_window``: 0 inside; otherwise whole minutes until the next window opens,
  rounded up (so never 0 outside); null when no window opens within the search horizon;
- ``next_window_start``: ISO 8601 with offset, in the windows' time zone: the start of the
  window containing ``--at`` when inside, else of the next one; null if unknown;
- ``time_zone``: the resolved zone (``localtime`` shows the zone /etc/localtime links to);
- ``windows``: each configured entry as in ``config show`` (``days``/``start_time`` or
  ``cron``, ``length_minutes``) plus ``source`` (its fragment) and ``next_start``/``next_end``
  (its current or next occurrence, null if beyond the horizon).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, tzinfo
from typing import Any

from zincati_py.cli import CliError, add_root_argument, print_json


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "windows",
        help="show the maintenance windows and whether an instant is inside one",
        description=(
            "Show the configured maintenance windows ([[updates.periodic.window]]) and, at an "
            "instant (default now), whether it is inside one and when the next opens. Exit 65 "
            "if the windows or their time zone are invalid."
        ),
    )
    parser.add_argument(
        "--at",
        metavar="ISO8601",
        help="the instant to evaluate (default now); without an offset it is read in the "
        "windows' time zone",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add_root_argument(parser)
    parser.set_defaults(func=run)


def _iso(t: datetime | None, tz: tzinfo) -> str | None:
    return None if t is None else t.astimezone(tz).isoformat()


def _zone_name(tz: tzinfo) -> str:
    return getattr(tz, "key", None) or str(tz)


def run(args: argparse.Namespace) -> int:
    from zincati_py.cli import load_config
    from zincati_py.strategy.windows import Calendar, calendar_from_config

    result = load_config(args.root)
    problems = [p for p in result.problems if p.key.startswith("updates.periodic")]
    if problems:
        for problem in problems:
            print(f"zincati-py: {problem}", file=sys.stderr)
        return os.EX_DATAERR
    try:
        calendar = calendar_from_config(result.config, result.paths)
    except ValueError as exc:
        raise CliError(f"updates.periodic.time_zone: {exc}") from None
    tz = calendar.tz
    at = _parse_at(args.at, tz)

    if "periodic" not in result.config.updates.strategy:
        strategy = ", ".join(result.config.updates.strategy)
        print(
            f"zincati-py: note: updates.strategy is {strategy}: these windows are not enforced",
            file=sys.stderr,
        )

    pos = calendar.position(at)
    entries: list[dict[str, Any]] = []
    for window in calendar.windows:
        own = Calendar([window], tz, hash_id=calendar.hash_id).position(at)
        entries.append(
            {
                **window.as_dict(),
                "source": None if window.source is None else str(window.source),
                "next_start": _iso(own.start, tz),
                "next_end": _iso(own.end, tz),
            }
        )
    doc = {
        "in_window": pos.in_window,
        "minutes_to_next_window": pos.minutes_to_next_window,
        "next_window_start": _iso(pos.start, tz),
        "time_zone": _zone_name(tz),
        "windows": entries,
    }
    if args.json:
        print_json(doc)
        return 0

    print(f"time zone: {doc['time_zone']}")
    print(f"at: {at.astimezone(tz).isoformat()}")
    if pos.in_window:
        until = _iso(pos.end, tz) or "beyond the search horizon"
        print(f"in window: yes (since {doc['next_window_start'] or 'long ago'}, until {until})")
    elif pos.start is None:
        print("in window: no; no window opens in the foreseeable future")
    else:
        print(
            f"in window: no; next opens {doc['next_window_start']} "
            f"(in {doc['minutes_to_next_window']} minutes)"
        )
    if not entries:
        print("no maintenance windows configured")
    for entry in entries:
        when = (
            f"cron {entry['cron']!r}"
            if "cron" in entry
            else f"{','.join(entry['days'])} {entry['start_time']}"
        )
        span = f"{entry['next_start'] or '?'} .. {entry['next_end'] or '?'}"
        print(f"  {when} for {entry['length_minutes']} min: next {span}  ({entry['source']})")
    return 0


def _parse_at(text: str | None, tz: tzinfo) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--at: {text!r} is not an ISO 8601 date and time", os.EX_USAGE) from None
    return at.replace(tzinfo=tz) if at.tzinfo is None else at
