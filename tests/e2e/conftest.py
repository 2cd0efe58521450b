"""End-to-end fixtures: the whole product in the demo's sandbox (testbed/demo.py).

Each test runs a real fleet (systemd --user managers with our generator, private system buses,
the rpm-ostree and logind doubles, ``zincati-py agent`` processes, ``zincati-py fleetlock
serve``). Every wait is bounded; on failure the agents' and the lock server's logs are shown.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.demo import Fleet, prerequisites


@pytest.fixture(autouse=True)
def _needs_sandbox() -> None:
    missing = prerequisites()
    if missing:
        pytest.skip("; ".join(missing))


def strays(marker: str) -> list[str]:
    """Processes whose command line or environment mentions ``marker`` (a fleet's work dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline or marker.encode() in environ:
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {argv}")
    return found


def logs(directory: Path) -> str:
    parts = []
    for path in sorted(directory.glob("*.log")) + sorted(directory.glob("node*/agent.log")):
        text = path.read_text(errors="replace")
        parts.append(f"===== {path} (last 60 lines)\n" + "\n".join(text.splitlines()[-60:]))
    return "\n".join(parts)


def timeline(fleet: Fleet) -> str:
    return "\n".join(
        f"{e.t:7.2f} {e.node or 'fleet':6} {e.kind}: {e.message}" for e in fleet.events
    )


@pytest.fixture
def fleet_run(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``fleet_run(scenario, **fleet_kwargs)``: start a Fleet in ``tmp_path/"fleet"``, run
    ``await scenario(fleet)`` (which returns what the test asserts on), always tear down, and
    check that no process of the fleet survives."""
    workdir = tmp_path / "fleet"

    def run(scenario: Callable[[Fleet], Awaitable[Any]], **kwargs: Any) -> Any:
        async def go() -> Any:
            fleet = Fleet(workdir=workdir, **kwargs)
            try:
                await fleet.start()
                return await scenario(fleet)
            except BaseException:
                print(timeline(fleet))
                print(logs(workdir))
                raise
            finally:
                await fleet.stop()

        result = asyncio.run(go())
        left = strays(str(workdir))
        assert not left, f"processes left running after teardown: {left}"
        return result

    yield run
