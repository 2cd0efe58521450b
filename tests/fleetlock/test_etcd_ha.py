"""etcd for HA: two server instances on one etcd (their compare-and-swaps really race), and
failover across the endpoints listed in the backend URL."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import httpx

from testbed.etcd import PrivateEtcd, free_port
from zincati_py.fleetlock.backends.etcd import EtcdBackend
from zincati_py.fleetlock.client import (
    FleetLockAdminClient,
    FleetLockClient,
    FleetLockError,
    new_session,
)
from zincati_py.fleetlock.config import load
from zincati_py.fleetlock.server import FleetLockServer


def config(tmp_path: Path, name: str, backend: str, body: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'listen = "127.0.0.1:0"\nbackend = "{backend}"\n{body}\n'
        f'[etcd]\nkey_prefix = "/ha-{tmp_path.name}/"\n'
    )
    return path


def test_two_servers_one_etcd_never_overcommit(etcd: PrivateEtcd, tmp_path: Path) -> None:
    slots, nodes, cycles = 3, 60, 3

    async def scenario() -> tuple[int, int, list[str], dict[str, int], int]:
        servers = [
            FleetLockServer(load(config(tmp_path, n, f"etcd:{etcd.url}", f"[groups]\ng = {slots}")))
            for n in ("a", "b")
        ]
        urls = [f"http://{(await s.start())[0]}/" for s in servers]
        holding: set[str] = set()
        max_client = max_server = 0
        errors: list[str] = []
        done: dict[str, int] = {}
        deadline = time.monotonic() + 60
        try:
            async with new_session(
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)
            ) as s:

                async def node(i: int) -> None:
                    nonlocal max_client
                    name = f"n{i}"
                    # Each node talks to both servers, so a slot taken through one server is
                    # released through the other.
                    clients = [FleetLockClient(u, name, "g", session=s) for u in urls]
                    done[name] = 0
                    for c in range(cycles):
                        while True:
                            assert time.monotonic() < deadline, f"{name} starved"
                            try:
                                await clients[(i + c) % 2].pre_reboot()
                                break
                            except FleetLockError as err:
                                if err.status != 409:
                                    errors.append(str(err))
                            await asyncio.sleep(random.uniform(0.005, 0.03))
                        holding.add(name)
                        max_client = max(max_client, len(holding))
                        await asyncio.sleep(0.002)
                        holding.discard(name)
                        try:
                            await clients[(i + c + 1) % 2].steady_state()
                        except FleetLockError as err:
                            errors.append(str(err))
                        done[name] += 1

                async def monitor(stop: asyncio.Event) -> None:
                    nonlocal max_server
                    admin = FleetLockAdminClient(urls[0], session=s)
                    while not stop.is_set():
                        doc = await admin.group("g")
                        max_server = max(max_server, len(doc["holders"]))
                        await asyncio.sleep(0.005)

                stop = asyncio.Event()
                watcher = asyncio.create_task(monitor(stop))
                await asyncio.gather(*(node(i) for i in range(nodes)))
                stop.set()
                await watcher
                assert (await FleetLockAdminClient(urls[1], session=s).group("g"))["holders"] == []
            conflicts = sum(
                srv.backend.conflicts for srv in servers if isinstance(srv.backend, EtcdBackend)
            )
        finally:
            for server in servers:
                await server.stop()
        return max_client, max_server, errors, done, conflicts

    max_client, max_server, errors, done, conflicts = asyncio.run(asyncio.wait_for(scenario(), 90))
    # The servers really raced each other, and no client saw it.
    assert conflicts > 0
    assert errors == []
    assert done == {f"n{i}": cycles for i in range(nodes)}
    assert 1 <= max_client <= slots and 1 <= max_server <= slots


def test_failover_to_the_next_endpoint(etcd: PrivateEtcd, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        server = FleetLockServer(load(config(tmp_path, "f", f"etcd:{dead},{etcd.url}")))
        url = f"http://{(await server.start())[0]}/"
        try:
            client = FleetLockClient(url, "a", "default")
            assert (await client.pre_reboot()).lease_seconds == 1800
            await client.steady_state()
            await client.close()
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
