"""FleetLock server benchmark: a real ``zincati-py fleetlock serve`` process per backend.

Measures, on loopback:
- sequential lock+release by one client: requests/s, p50/p99 latency per request;
- concurrent lock+release by C clients in one group with C slots (every lock granted, so all
  writes hit the same group record: the worst case for etcd compare-and-swap);
- a fleet rollout (issue 15): N nodes (default 1000) start at once, S slots, each "reboots"
  for R seconds once it holds a slot; once with long-poll grants (header fleet-lock-wait: the
  fair queue) and once polling naively (no header, every ``--poll`` s, jittered), side by
  side. Reports makespan / (⌈N/S⌉·R), requests per node, the longest wait of any node against
  the ideal position-based wait (⌈N/S⌉-1)·R, and the most concurrent holders seen (client
  accounting and the server's own view). The clients are hand-written keep-alive HTTP/1.1
  connections, so that the benchmark, not the server, is never the bottleneck.

    .venv-3.11/bin/python bench/fleetlock_bench.py [--backends sqlite,etcd]
        [--scenarios throughput,rollout] [--nodes 1000] [--quick]

Exits 1 when a long-poll rollout misses a target.

Prints markdown tables on stdout. Every loop is bounded (request counts, a time budget).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from testbed.etcd import PrivateEtcd, free_port
from testbed.lockserver import LockServerProcess
from testbed.proc import stop_process, wait_ready
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
    lines += ["[queue]", "max_wait_secs = 600", "[groups]"]
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


@contextmanager
def airlock_server(binary: str, groups: dict[str, int], etcd: PrivateEtcd) -> Iterator[str]:
    """coreos/airlock (``airlock serve``) on the same etcd, its own key space (airlock keeps
    its semaphores under ``com.coreos.airlock/``); yields its base URL."""
    workdir = Path(tempfile.mkdtemp(prefix="zpy-airlock-"))
    port = free_port()
    lines = [
        "[status]",
        "enabled = false",
        "[service]",
        'address = "127.0.0.1"',
        f"port = {port}",
        "tls = false",
        "[etcd3]",
        f'endpoints = ["{etcd.url}"]',
        "[lock]",
        'default_group_name = "default"',
        "default_slots = 1",
    ]
    for name, slots in groups.items():
        lines += ["[[lock.groups]]", f'name = "{name}"', f"slots = {slots}"]
    config = workdir / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    log = workdir / "airlock.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_ready(proc, listening, what="airlock", timeout=20, log=log)
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop_process(proc)
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


class RawNode:
    """One node's keep-alive HTTP/1.1 connection, spoken by hand: a thousand of these cost
    the benchmark almost nothing (an httpx client per request saturated a core first)."""

    def __init__(self, host: str, port: int, prefix: str, node: str, group: str) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.body = json.dumps({"client_params": {"id": node, "group": group}}).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.requests = 0

    async def post(self, path: str, wait: float | None = None) -> int:
        self.requests += 1
        for attempt in range(3):
            try:
                if self.writer is None or self.writer.is_closing():
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                head = (
                    f"POST {self.prefix}/{path} HTTP/1.1\r\nHost: {self.host}\r\n"
                    f"fleet-lock-protocol: true\r\nContent-Length: {len(self.body)}\r\n"
                )
                if wait is not None:
                    head += f"fleet-lock-wait: {wait:g}\r\n"
                self.writer.write(head.encode() + b"\r\n" + self.body)
                await self.writer.drain()
                status = int((await self.reader.readline()).split()[1])
                length = 0
                while (line := await self.reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await self.reader.readexactly(length)
                return status
            except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
                # The server closed an idle keep-alive connection: reconnect and resend
                # (pre-reboot and steady-state are idempotent).
                if self.writer is not None:
                    self.writer.close()
                self.writer = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Rollout:
    mode: str
    nodes: int
    slots: int
    reboot: float
    makespan: float
    longest_wait: float
    max_client: int
    max_server: int
    requests: int
    errors: int

    def row(self, backend: str) -> str:
        rounds = math.ceil(self.nodes / self.slots)
        ideal = rounds * self.reboot
        ideal_wait = (rounds - 1) * self.reboot
        return (
            f"| {backend} | {self.mode} | {self.nodes} | {self.slots} | {self.reboot:g} "
            f"| {self.makespan:.2f} | {ideal:.2f} | **{self.makespan / ideal:.3f}** "
            f"| **{self.requests / self.nodes:.2f}** | {self.longest_wait:.2f} "
            f"| **{self.longest_wait / ideal_wait:.3f}** | {self.max_client} | {self.max_server} "
            f"| {self.errors} |"
        )

    def meets_targets(self) -> bool:
        rounds = math.ceil(self.nodes / self.slots)
        return (
            self.makespan <= 1.05 * rounds * self.reboot
            and self.requests / self.nodes <= 3
            and self.longest_wait <= 1.1 * (rounds - 1) * self.reboot
            and self.max_client <= self.slots
            and self.max_server <= self.slots
            and self.errors == 0
        )


async def rollout(
    url: str, group: str, n: int, s: int, reboot: float, poll: float, *, wait: float | None
) -> Rollout:
    """Every node starts at once, takes a slot (long-polling when ``wait``, else polling
    every ``poll`` seconds, jittered, as Zincati would), "reboots" for ``reboot`` seconds,
    then releases."""
    parts = urllib.parse.urlsplit(url)
    host, port, prefix = parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/")
    holding: set[str] = set()
    stats = {"max_client": 0, "max_server": 0, "errors": 0}
    waits: list[float] = []
    nodes = [RawNode(host, port, prefix, f"node-{i:04d}", group) for i in range(n)]
    start = 0.0

    async def node(raw: RawNode, name: str) -> None:
        while True:
            status = await raw.post("v1/pre-reboot", wait)
            if status == 200:
                break
            if status != 409:
                stats["errors"] += 1
            if wait is None:
                await asyncio.sleep(random.uniform(0.5 * poll, 1.5 * poll))
        waits.append(time.perf_counter() - start)
        holding.add(name)
        stats["max_client"] = max(stats["max_client"], len(holding))
        await asyncio.sleep(reboot)  # the reboot; back up, the node releases its slot
        holding.discard(name)
        while await raw.post("v1/steady-state") != 200:
            stats["errors"] += 1
            await asyncio.sleep(poll)
        raw.close()

    async def monitor(admin: FleetLockAdminClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                doc = await admin.group(group)
            except FleetLockError:
                continue  # a saturated server (naive polling) answers the monitor late
            stats["max_server"] = max(stats["max_server"], len(doc["holders"]))
            await asyncio.sleep(0.25)

    async with new_session() as session:
        stop = asyncio.Event()
        watcher = asyncio.create_task(monitor(FleetLockAdminClient(url, session=session), stop))
        start = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(node(raw, f"node-{i:04d}") for i, raw in enumerate(nodes))), BUDGET
        )
        makespan = time.perf_counter() - start
        stop.set()
        await watcher
    return Rollout(
        "long-poll" if wait is not None else f"polling every {poll:g}s",
        n,
        s,
        reboot,
        makespan,
        max(waits),
        stats["max_client"],
        stats["max_server"],
        sum(raw.requests for raw in nodes),
        stats["errors"],
    )


def _raise_fd_limit() -> None:
    """A thousand client connections need more than the usual 1,024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,etcd")
    parser.add_argument(
        "--scenarios", default="throughput,rollout", help="throughput, rollout or both"
    )
    parser.add_argument("--sequential", type=int, default=1000, help="lock+release cycles")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients")
    parser.add_argument("--cycles", type=int, default=20, help="cycles per concurrent client")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--reboot", type=float, default=0.5, help="simulated reboot seconds")
    parser.add_argument("--poll", type=float, default=0.5, help="naive poll interval, seconds")
    parser.add_argument("--wait", type=float, default=120, help="long-poll seconds per request")
    parser.add_argument(
        "--modes", default="fleet,naive", help="rollout clients: fleet (long-poll), naive"
    )
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument(
        "--airlock",
        metavar="BINARY",
        help="also run coreos/airlock (this binary) on the same etcd: throughput rows and "
        "the etcd/airlock ratio (README: how to build it)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sequential, args.clients, args.cycles = 100, 10, 5
        args.nodes, args.slots, args.reboot = 100, 5, 0.2
    backends = [b for b in args.backends.split(",") if b]
    scenarios = set(args.scenarios.split(","))
    _raise_fd_limit()

    throughput_rows: list[str] = []
    rollout_rows: list[str] = []
    pairs: dict[str, float] = {}  # backend -> sequential lock+unlock pairs/s
    met = True
    need_etcd = "etcd" in backends or args.airlock is not None
    etcd = PrivateEtcd().start() if need_etcd else None
    try:
        for backend in backends:
            groups = {"seq": 1, "conc": args.clients, "fleet": args.slots, "naive": args.slots}
            with server(backend, groups, etcd) as url:
                if "throughput" in scenarios:
                    seq = asyncio.run(lock_release(url, "seq", 1, args.sequential))
                    throughput_rows.append(seq.row(backend, "sequential, 1 client"))
                    pairs[backend] = seq.requests / 2 / seq.seconds
                    conc = asyncio.run(lock_release(url, "conc", args.clients, args.cycles))
                    throughput_rows.append(
                        conc.row(backend, f"concurrent, {args.clients} clients, one group")
                    )
                if "rollout" in scenarios:
                    modes = [("fleet", args.wait), ("naive", None)]
                    for group, wait in [m for m in modes if m[0] in args.modes.split(",")]:
                        try:
                            result = asyncio.run(
                                rollout(url, group, args.nodes, args.slots, args.reboot,
                                        args.poll, wait=wait)
                            )  # fmt: skip
                        except TimeoutError:
                            mode = "long-poll" if wait else f"polling every {args.poll:g}s"
                            row = f"| {backend} | {mode} | {args.nodes} | did not finish in "
                            rollout_rows.append(row + f"{BUDGET:g} s |")
                            met = met and wait is None
                            print(rollout_rows[-1], file=sys.stderr)
                            continue
                        if wait is not None:
                            met = met and result.meets_targets()
                        rollout_rows.append(result.row(backend))
                        print(rollout_rows[-1], file=sys.stderr)
                print(f"done: {backend}", file=sys.stderr)
        if args.airlock is not None and "throughput" in scenarios:
            assert etcd is not None
            groups = {"seq": 1, "conc": args.clients}
            with airlock_server(args.airlock, groups, etcd) as url:
                seq = asyncio.run(lock_release(url, "seq", 1, args.sequential))
                throughput_rows.append(seq.row("airlock (etcd)", "sequential, 1 client"))
                pairs["airlock"] = seq.requests / 2 / seq.seconds
                conc = asyncio.run(lock_release(url, "conc", args.clients, args.cycles))
                throughput_rows.append(
                    conc.row("airlock (etcd)", f"concurrent, {args.clients} clients, one group")
                )
            print("done: airlock", file=sys.stderr)
    finally:
        if etcd is not None:
            etcd.stop()

    if throughput_rows:
        print("| backend | scenario | requests | req/s | p50 ms | p99 ms | errors |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(throughput_rows))
        print()
        for name, rate in pairs.items():
            print(f"sequential {name}: {rate:.0f} lock+unlock pairs/s")
        if "sqlite" in pairs:
            print(f"sqlite / 560 pairs/s (before group commit): {pairs['sqlite'] / 560:.2f}x")
        if "etcd" in pairs and "airlock" in pairs:
            print(f"etcd / airlock on the same etcd: {pairs['etcd'] / pairs['airlock']:.2f}x")
        print()
    if rollout_rows:
        print(
            "| backend | clients | N | S | R s | makespan s | ⌈N/S⌉·R s | makespan ratio "
            "| requests/node | longest wait s | longest wait / (⌈N/S⌉-1)·R "
            "| max holders (client) | max holders (server) | errors |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
              "| ---: | ---: | ---: |")  # fmt: skip
        print("\n".join(rollout_rows))
        print()
        print(
            "targets (long-poll rows): makespan <= 1.05x, <= 3 requests/node, longest wait "
            f"<= 1.1x, holders <= S: {'MET' if met else 'NOT MET'}"
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
