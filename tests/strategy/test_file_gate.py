"""The ``file`` gate with real inotify events (every wait bounded)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from zincati_py.strategy.file import FileGate

MARKER = "/run/zincati-py/gate/reboot-ok"


def gate(node: Any, extra: str = "") -> FileGate:
    node.write(f'[updates]\nstrategy = "file"\n[updates.file]\npath = "{MARKER}"\n{extra}')
    strategy = node.build()
    assert isinstance(strategy, FileGate)
    return strategy


def now() -> datetime:
    return datetime.now(UTC)


def test_create_delete_move(node: Any) -> None:
    marker = node.root / MARKER.lstrip("/")
    marker.parent.mkdir(parents=True)

    async def scenario() -> None:
        g = gate(node)
        await g.start()
        try:
            denied = await g.can_finalize(now())
            assert not denied.allowed and denied.recheck_at is None
            assert denied.reason == f"marker file {marker} does not exist"

            marker.touch()
            assert await node.woken(1)
            assert node.wakes[0].startswith("file gate: IN_CREATE")
            assert (await g.can_finalize(now())).allowed

            n = len(node.wakes)
            marker.unlink()
            assert await node.woken(n + 1)
            assert not (await g.can_finalize(now())).allowed

            staged = marker.parent / ".reboot-ok.tmp"
            staged.write_text("x")  # another name in the directory: no wake
            n = len(node.wakes)
            assert await node.quiet(n)
            os.replace(staged, marker)  # moved in
            assert await node.woken(n + 1)
            assert (await g.can_finalize(now())).allowed
            n = len(node.wakes)
            os.replace(marker, marker.parent / "elsewhere")  # moved out
            assert await node.woken(n + 1)
            assert not (await g.can_finalize(now())).allowed
            status = g.status()
            assert status["allowed"] is False and "does not exist" in status["reason"]
            assert status["watching"] == str(marker.parent)
        finally:
            await g.stop()

    asyncio.run(scenario())


def test_max_age(node: Any) -> None:
    marker = node.root / MARKER.lstrip("/")
    marker.parent.mkdir(parents=True)
    marker.touch()
    old = time.time() - 120
    os.utime(marker, (old, old))

    async def scenario() -> None:
        g = gate(node, "max_age_secs = 60\n")
        await g.start()
        try:
            stale = await g.can_finalize(now())
            assert not stale.allowed and "older than 60s" in stale.reason
            assert stale.recheck_at is None  # only a touch changes it

            marker.touch()  # IN_ATTRIB
            assert await node.woken(1)
            fresh = await g.can_finalize(now())
            assert fresh.allowed
            mtime = datetime.fromtimestamp(marker.stat().st_mtime, UTC)
            assert fresh.recheck_at == mtime + timedelta(seconds=60)
            # At the expiry the same file no longer counts.
            assert not (await g.can_finalize(mtime + timedelta(seconds=60))).allowed
        finally:
            await g.stop()

    asyncio.run(scenario())


def test_missing_directories_are_followed(node: Any) -> None:
    marker = node.root / MARKER.lstrip("/")
    run = node.root / "run"
    shutil.rmtree(run, ignore_errors=True)

    async def scenario() -> None:
        g = gate(node)
        await g.start()
        try:
            assert g.status()["reason"] == "not asked yet"
            await g.can_finalize(now())
            assert g.status()["watching"] == str(node.root)

            marker.parent.mkdir(parents=True)
            assert await node.woken(1)
            await asyncio.sleep(0.1)
            assert (await g.can_finalize(now())).details["watching"] == str(marker.parent)
            n = len(node.wakes)
            marker.touch()
            assert await node.woken(n + 1)
            assert (await g.can_finalize(now())).allowed

            n = len(node.wakes)
            shutil.rmtree(run)  # the whole tree goes away
            assert await node.woken(n + 1)
            assert not (await g.can_finalize(now())).allowed
            marker.parent.mkdir(parents=True)
            n = len(node.wakes)
            await asyncio.sleep(0.1)
            marker.write_text("again")
            assert await node.woken(n + 1)
            assert (await g.can_finalize(now())).allowed
        finally:
            await g.stop()

    asyncio.run(scenario())


def test_directory_is_not_a_marker(node: Any) -> None:
    marker = node.root / MARKER.lstrip("/")
    marker.mkdir(parents=True)
    g = gate(node)
    verdict = asyncio.run(g.can_finalize(now()))
    assert not verdict.allowed and "is a directory" in verdict.reason


def test_root_prefix_applies(node: Any) -> None:
    # The configured absolute path is read under --root, never on the host.
    g = gate(node)
    assert g.marker == node.root / "run/zincati-py/gate/reboot-ok"
