"""Value checks shared by the validator and the job rules: each returns a message or None.

Also the two derivations validation needs: the node id from ``/etc/machine-id`` (as Zincati)
and a time zone name resolved as the agent will resolve it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable
from datetime import time
from pathlib import Path
from urllib.parse import urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:
    import zoneinfo

# Zincati's application id for deriving the node id from /etc/machine-id.
ZINCATI_APP_ID = "de35106b6ec24688b63afddaa156679b"
# The most seconds systemd (252) parses in a time span (OnBootSec=, TimeoutStartSec=,
# RandomizedDelaySec=, ...): 2^64 - 1 µs means infinity and one more second fails to parse, so
# systemd drops the setting ("Timer unit lacks value setting"). Every *_secs key is bounded by it.
SYSTEMD_MAX_SECS = 18_446_744_073_708
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def app_specific_id(machine_id: str, app_id: str = ZINCATI_APP_ID) -> str:
    """systemd's sd_id128_get_machine_app_specific(): HMAC-SHA256, first 16 bytes, UUIDv4."""
    digest = bytearray(
        hmac.new(bytes.fromhex(machine_id), bytes.fromhex(app_id), hashlib.sha256).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


def parse_weekday(name: str) -> int | None:
    lowered = name.strip().lower()
    for table in (WEEKDAYS, _FULL_WEEKDAYS):
        if lowered in table:
            return table.index(lowered)
    return None


def resolve_time_zone(name: str, localtime: Path) -> zoneinfo.ZoneInfo:
    """``UTC``, ``localtime`` (the zone ``localtime`` links to) or an IANA name.

    Raises ValueError with a user-facing message when the zone cannot be resolved.
    """
    import zoneinfo  # on first use: a configuration without zones does not need it

    if name == "localtime":
        if not os.path.lexists(localtime):
            return zoneinfo.ZoneInfo("UTC")  # systemd's rule: no /etc/localtime means UTC
        link = os.readlink(localtime) if localtime.is_symlink() else None
        try:
            target: Path | None = localtime.resolve(strict=True)
        except (OSError, RuntimeError):  # missing target or a loop (RuntimeError before 3.13)
            target = None  # dangling: Zincati fails here too, unless the link names a zone
        # The zone name is in the path ("…/zoneinfo/Europe/Berlin"); an image tree's link
        # ("../usr/share/zoneinfo/…") names it even when that tree has no zoneinfo of its own.
        for parts in (target.parts if target else (), Path(link).parts if link else ()):
            if "zoneinfo" in parts:
                iana = "/".join(parts[parts.index("zoneinfo") + 1 :])
                try:
                    return zoneinfo.ZoneInfo(iana)
                except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                    pass
        if target is None:
            raise ValueError(f"{localtime} links to {link!r}, which does not resolve")
        with target.open("rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def tz_problem(name: str, localtime: Path) -> str | None:
    try:
        resolve_time_zone(name, localtime)
    except (ValueError, OSError) as exc:
        return str(exc)
    return None


def cron_problem(expr: str, tz: str | None, hash_id: str | None) -> str | None:
    # Imported lazily: croniter is only needed when a cron expression is configured.
    from zincati_py.schedule import CronError, translate

    try:
        translate(expr, tz=tz, hash_id=hash_id)
    except CronError as exc:
        return str(exc)
    return None


def cron_order_warning(expr: str) -> str | None:
    """A warning for a six-field expression: its extra field is the seconds, given last."""
    if len(expr.split()) != 6:
        return None
    return (
        "six fields are read as minute hour day-of-month month day-of-week SECOND "
        "(croniter's order: seconds last, not first as in Quartz/Spring cron)"
    )


def at_least(minimum: int) -> Callable[[int], str | None]:
    return lambda v: None if v >= minimum else f"{v} must be >= {minimum}"


def seconds(minimum: int) -> Callable[[int], str | None]:
    """A number of seconds: at least ``minimum`` and no more than systemd accepts."""

    def check(value: int) -> str | None:
        if value < minimum:
            return f"{value} must be >= {minimum}"
        return too_many_seconds(value)

    return check


def too_many_seconds(value: int) -> str | None:
    if value > SYSTEMD_MAX_SECS:
        return f"{value} is more than systemd accepts (at most {SYSTEMD_MAX_SECS} seconds)"
    return None


def uuid_problem(value: str) -> str | None:
    text = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{32}", text) or re.fullmatch(
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", text
    ):
        return None
    return f"{value!r} is not 32 hex digits or a hyphenated UUID"


def url_problem(value: str) -> str | None:
    parts = urlsplit(value)
    if not value or not parts.scheme or not parts.netloc:
        return f"{value!r} must be a non-empty absolute URL (scheme://host/...)"
    if parts.scheme not in ("http", "https"):
        return f"{value!r}: scheme must be http or https"
    return None


def host_port_problem(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{value!r} must be HOST:PORT"
    return None


def parse_hhmm(text: str) -> time | None:
    match = re.fullmatch(r"(\d{1,2}):(\d{1,2})", text.strip())
    if not match:
        return None
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        return None
    return time(hour, minute)
