"""Strategy fixtures: a real ``zincati-py fleetlock serve`` (SQLite) on loopback, restartable
on the same port, and the config tree of the node under test."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed.etcd import free_port
from testbed.lockserver import LockServerProcess
from zincati_py.config import load
from zincati_py.strategy import Strategy, StrategyContext, build

NODE = "0123456789abcdef0123456789abcdef"


@dataclass
class LockServer(LockServerProcess):
    @property
    def url(self) -> str:
        """The base URL without a trailing slash: the client must treat it as a directory."""
        return f"http://127.0.0.1:{self.port}"

    def requests(self, endpoint: str) -> int:
        """How many requests the server answered on ``endpoint`` (its own metrics)."""
        with urllib.request.urlopen(f"{self.url}{self.prefix}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        pattern = rf'^fleetlock_requests_total\{{endpoint="{endpoint}",kind="[^"]*"\}} (\S+)$'
        return sum(int(float(m)) for m in re.findall(pattern, text, re.MULTILINE))


@dataclass
class Node:
    """The config tree of one node and what its strategies asked the agent to wake for."""

    root: Path
    node_id: str = NODE
    wakes: list[str] = field(default_factory=list)

    def write(self, text: str, name: str = "50-test.toml") -> None:
        (self.root / "etc/zincati/config.d" / name).write_text(text)

    def fleet_lock(
        self,
        url: str,
        *,
        group: str = "default",
        cap_secs: int = 8,
        strategy: str | list[str] = "fleet_lock",
    ) -> None:
        """Configure this node for ``strategy`` against the FleetLock server at ``url``;
        ``cap_secs`` (steady_interval_secs) caps the retry backoff."""
        self.write(
            f'[identity]\nnode_uuid = "{NODE}"\ngroup = "{group}"\n'
            f"[agent.timing]\nsteady_interval_secs = {cap_secs}\n"
            f"[updates]\nstrategy = {strategy!r}\n"
            f'[updates.fleet_lock]\nbase_url = "{url}"\n',
            "40-fleet-lock.toml",
        )

    def build(self) -> Strategy:
        result = load(self.root)
        assert result.ok, [str(p) for p in result.problems]
        return build(StrategyContext(result.config, result.paths, self.wakes.append))

    async def woken(self, count: int, timeout: float = 5.0) -> bool:
        """Wait (bounded) until the strategies have woken the agent ``count`` times in all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.wakes) >= count:
                return True
            await asyncio.sleep(0.02)
        return len(self.wakes) >= count

    async def quiet(self, count: int, period: float = 0.3) -> bool:
        """No wake beyond ``count`` during ``period`` seconds of running the loop."""
        await asyncio.sleep(period)
        return len(self.wakes) == count


@pytest.fixture
def lock_server(tmp_path: Path) -> Iterator[Callable[..., LockServer]]:
    """``lock_server(body)``: a running server whose config is ``body`` (TOML) plus listen and
    an SQLite backend; every one started is stopped at teardown."""
    started: list[LockServer] = []

    def start(body: str = "", *, prefix: str = "") -> LockServer:
        n = len(started)
        path = tmp_path / f"fleetlock{n}.toml"
        port = free_port()
        path.write_text(
            f'listen = "127.0.0.1:{port}"\nprefix = "{prefix}"\n'
            f'backend = "sqlite:{tmp_path / f"fleetlock{n}.db"}"\n' + body
        )
        server = LockServer(path, port, tmp_path / f"fleetlock{n}.log", prefix)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def node(config_root: Path) -> Node:
    return Node(config_root)
