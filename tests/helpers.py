"""Helpers shared by the test areas (``from tests.helpers import zpy``): the installed
entry points run as a user runs them, in a real subprocess."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping

from testbed.proc import zincati_py_argv

#: Bus addresses that fail fast: a ``zincati-py`` that must not reach any bus.
NO_BUS = {
    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/zincati-py-test-bus",
    "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/zincati-py-test-bus",
}


def zpy(
    *args: str,
    env: Mapping[str, str] | None = None,
    unset: Iterable[str] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``zincati-py ARGS`` with ``os.environ`` minus ``unset`` plus ``env``; stdout and stderr
    captured as text; any exit code returned, not raised."""
    drop = set(unset)
    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update(env or {})
    return subprocess.run(
        [*zincati_py_argv(), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
