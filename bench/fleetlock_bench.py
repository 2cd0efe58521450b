"""FleetLock server benchmark: a real ``zincati-py fleetlock serve`` process per backend.

Measures, on loopback:
- sequential lock+release by one client: requests/s, p50/p99 latency per request;
- concurrent lock+release by C clients in one group with C slots (every lock granted, so all
  writes hit the same group record: the worst case for etcd compare-and-swap);
- a fleet rollout: N nodes, S slots, each "reboots" for R seconds once it holds a slot and
  polls while waiting; reports makespan / (ceil(N/S) * R) and the most concurrent holders
  seen (client accounting and the server's own view).

    .venv-3.11/bin/python bench/fleetlock_bench.py [--backends sqlite,etcd] [--quick]

Prints markdown tables on stdout. Every loop is bounded (request counts, a time budget).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from testbed.etcd import PrivateEtcd, free_port
from testbed.lockserver import LockServerProcess
from zincati_py.fleetlock.client import (
    FleetLockAdminClient,
    FleetLockClient,
    FleetLockError,
    new_session,
)

BUDGET = 300.0  # seconds for any one scenario


@contextmanager
def server(backend: str, groups: dict[str, int], etcd: PrivateEtcd | None) -> Iterator[str]:
    """A server process with ``groups``; yields its base URL."""
    workdir = Path(tempfile.mkdtemp(prefix="zpy-flbench-"))
    port = free_port()
    lines = [f'listen = "127.0.0.1:{port}"']
    if backend == "sqlite":
        lines.append(f'backend = "sqlite:{workdir / "fleetlock.db"}"')
    else:
        assert etcd is not None
        lines.append(f'backend = "etcd:{etcd.url}"')
    lines.append("[groups]")
    lines += [f"{name} = {slots}" for name, slots in groups.items()]
    if backend == "etcd":
        lines += ["[etcd]", f'key_prefix = "/bench-{port}/"']
    config = workdir / "fleetlock.toml"
    config.write_text("\n".join(lines) + "\n")
    proc = LockServerProcess(config, port, workdir / "server.log")
    try:
        yield proc.start(timeout=20).url
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Throughput:
    requests: int
    seconds: float
    latencies: list[float]
    errors: int

    def row(self, backend: str, scenario: str) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] * 1000
        rate = self.requests / self.seconds
        return (
            f"| {backend} | {scenario} | {self.requests} | {rate:.0f} | {p50:.2f} | {p99:.2f} "
            f"| {self.errors} |"
        )


async def _cycle(client: FleetLockClient, latencies: list[float], cycles: int) -> int:
    """``cycles`` lock+release pairs; returns how many requests failed (any error)."""
    errors = 0
    for _ in range(cycles):
        for op in (client.pre_reboot, client.steady_state):
            t = time.perf_counter()
            try:
                await op()
            except FleetLockError:
                errors += 1
            latencies.append(time.perf_counter() - t)
    return errors


async def lock_release(url: str, group: str, clients: int, cycles: int) -> Throughput:
    latencies: list[float] = []
    async with new_session(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)
    ) as session:
        nodes = [FleetLockClient(url, f"n{i}", group, session=session) for i in range(clients)]
        # Warm-up: connections opened, code paths hot.
        await asyncio.gather(*(_cycle(c, [], 2) for c in nodes))
        start = time.perf_counter()
        errors = await asyncio.wait_for(
            asyncio.gather(*(_cycle(c, latencies, cycles) for c in nodes)), BUDGET
        )
        elapsed = time.perf_counter() - start
    return Throughput(len(latencies), elapsed, latencies, sum(errors))


@dataclass
class Rollout:
    nodes: int
    slots: int
    reboot: float
    makespan: float
    max_client: int
    max_server: int
    requests: int
    errors: int

    def row(self, backend: str) -> str:
        ideal = math.ceil(self.nodes / self.slots) * self.reboot
        return (
            f"| {backend} | {self.nodes} | {self.slots} | {self.reboot:g} | {self.makespan:.2f} "
            f"| {ideal:.2f} | {self.makespan / ideal:.3f} | {self.max_client} | {self.max_server} "
            f"| {self.requests} | {self.errors} |"
        )


async def rollout(url: str, group: str, n: int, s: int, reboot: float, poll: float) -> Rollout:
    holding: set[str] = set()
    stats = {"max_client": 0, "max_server": 0, "requests": 0, "errors": 0}

    async def node(session: httpx.AsyncClient, name: str) -> None:
        client = FleetLockClient(url, name, group, session=session)
        while True:
            stats["requests"] += 1
            try:
                await client.pre_reboot()
                break
            except FleetLockError as err:
                if err.status != 409:
                    stats["errors"] += 1
            await asyncio.sleep(random.uniform(0.5 * poll, 1.5 * poll))
        holding.add(name)
        stats["max_client"] = max(stats["max_client"], len(holding))
        await asyncio.sleep(reboot)  # the reboot; back up, the node releases its slot
        holding.discard(name)
        while True:
            stats["requests"] += 1
            try:
                await client.steady_state()
                return
            except FleetLockError:
                stats["errors"] += 1
                await asyncio.sleep(poll)

    async def monitor(admin: FleetLockAdminClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            doc = await admin.group(group)
            stats["max_server"] = max(stats["max_server"], len(doc["holders"]))
            await asyncio.sleep(0.05)

    async with new_session(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)
    ) as session:
        stop = asyncio.Event()
        watcher = asyncio.create_task(monitor(FleetLockAdminClient(url, session=session), stop))
        start = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(node(session, f"node-{i:04d}") for i in range(n))), BUDGET
        )
        makespan = time.perf_counter() - start
        stop.set()
        await watcher
    return Rollout(n, s, reboot, makespan, stats["max_client"], stats["max_server"],
                   stats["requests"], stats["errors"])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,etcd")
    parser.add_argument("--sequential", type=int, default=1000, help="lock+release cycles")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients")
    parser.add_argument("--cycles", type=int, default=20, help="cycles per concurrent client")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--reboot", type=float, default=2.0, help="simulated reboot seconds")
    parser.add_argument("--poll", type=float, default=0.05, help="mean poll interval, seconds")
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.sequential, args.clients, args.cycles = 100, 10, 5
        args.nodes, args.slots, args.reboot = 20, 5, 0.5
    backends = [b for b in args.backends.split(",") if b]

    throughput_rows: list[str] = []
    rollout_rows: list[str] = []
    etcd = PrivateEtcd().start() if "etcd" in backends else None
    try:
        for backend in backends:
            groups = {"seq": 1, "conc": args.clients, "fleet": args.slots}
            with server(backend, groups, etcd) as url:
                seq = asyncio.run(lock_release(url, "seq", 1, args.sequential))
                throughput_rows.append(seq.row(backend, "sequential, 1 client"))
                conc = asyncio.run(lock_release(url, "conc", args.clients, args.cycles))
                throughput_rows.append(
                    conc.row(backend, f"concurrent, {args.clients} clients, one group")
                )
                result = asyncio.run(
                    rollout(url, "fleet", args.nodes, args.slots, args.reboot, args.poll)
                )
                rollout_rows.append(result.row(backend))
                print(f"done: {backend}", file=sys.stderr)
    finally:
        if etcd is not None:
            etcd.stop()

    print("| backend | scenario | requests | req/s | p50 ms | p99 ms | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(throughput_rows))
    print()
    print(
        "| backend | nodes N | slots S | reboot R s | makespan s | ceil(N/S)*R s | ratio "
        "| max holders (client) | max holders (server) | requests | errors |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rollout_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
