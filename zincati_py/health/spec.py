"""What a configured health check is: a systemd unit name or a command line (pure).

``[agent.health] pre_reboot`` entries and ``required_units`` are checked here by the
configuration validator (so ``config check`` names the file and key) and parsed here by the
agent. A unit name is what systemd accepts as one (``NAME.TYPE``, ``NAME@INSTANCE.TYPE``); a
command line is split like a shell would (``shlex``, no shell runs it) and its program must be
an absolute path: the agent never searches ``$PATH``. Control characters are refused in both
(they reach the journal, the status file and hook environments).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from zincati_py.unitfile import control_characters

UNIT_TYPES = (
    "service",
    "socket",
    "target",
    "mount",
    "automount",
    "swap",
    "path",
    "timer",
    "device",
    "slice",
    "scope",
)
# systemd's unit_name_is_valid(): [A-Za-z0-9:_.\\-] plus one '@' for templates, at most 255.
UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(" + "|".join(UNIT_TYPES) + r")$")
MAX_TIMEOUT_SECS = 24 * 3600
# Update events an [agent.hooks] command is run for (HOOK_EVENT in its environment).
EVENTS = ("staged", "reboot", "booted", "rolled-back", "dead-end")


@dataclass(frozen=True)
class Check:
    """One configured check: ``unit`` (must be active) or ``argv`` (must exit 0)."""

    text: str
    unit: str | None = None
    argv: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.unit or self.argv[0].rsplit("/", 1)[-1]


def is_unit_name(text: str) -> bool:
    return len(text) <= 255 and UNIT_RE.fullmatch(text) is not None


def unit_problem(text: object) -> str | None:
    if not isinstance(text, str):
        return f"{text!r} is not a string"
    bad = control_characters(text)
    if bad:
        return f"{text!r} contains control characters ({' '.join(bad)})"
    if not is_unit_name(text):
        return f"{text!r} is not a unit name (NAME.{'|'.join(UNIT_TYPES[:3])}|...)"
    return None


def parse(text: str) -> Check:
    """A ``pre_reboot`` entry as a Check; ValueError (user-facing message) if it is neither."""
    bad = control_characters(text)
    if bad:
        raise ValueError(f"{text!r} contains control characters ({' '.join(bad)})")
    if is_unit_name(text):
        return Check(text, unit=text)
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a command line: {exc}") from None
    if not argv:
        raise ValueError("empty command")
    if not argv[0].startswith("/"):
        raise ValueError(
            f"{text!r}: neither a unit name nor a command with an absolute program path"
        )
    return Check(text, argv=argv)


def check_problem(text: object) -> str | None:
    if not isinstance(text, str):
        return f"{text!r} is not a string"
    try:
        parse(text)
    except ValueError as exc:
        return str(exc)
    return None
