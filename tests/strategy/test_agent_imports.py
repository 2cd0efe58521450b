"""The agent process never loads aiohttp (only the lock server does): its FleetLock client is
httpx, about 6 MiB less resident memory in a long-running process (bench/agent_idle.py)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import asyncio, sys
import zincati_py.cli, zincati_py.cli.agent_cmd
import zincati_py.agent.service
import zincati_py.strategy.fleet_lock
from zincati_py.fleetlock.client import FleetLockClient, FleetLockError

async def main():
    # An unreachable server: the client builds its HTTP session and makes a real attempt.
    client = FleetLockClient("http://127.0.0.1:9/", "a", "default", timeout=2)
    try:
        await client.pre_reboot()
    except FleetLockError as exc:
        assert exc.status is None, exc
    finally:
        await client.close()

asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] == "aiohttp"), "httpx" in sys.modules)
"""


def test_agent_and_fleet_lock_strategy_do_not_import_aiohttp() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] True", f"aiohttp loaded (or httpx not): {proc.stdout}"
