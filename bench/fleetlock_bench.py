"""FleetLock server benchmark: a real ``zincati-py fleetlock serve`` process per backend.

Measures, on loopback:
- sequential lock+release by one client, in paired rounds: every server of the run (each
  backend, and coreos/airlock on the same etcd with ``--airlock BINARY``) is started once, then
  the rounds alternate between them (A B B A A B ...: machine noise and drift hit all alike),
  each round in a fresh one-slot group. The client is lean so it is never the bottleneck: one
  keep-alive connection, a blocking socket, pre-encoded requests, a Content-Length read; it
  still checks every answer (status, body, ``fleet-lock-released`` where the server says it)
  and alternates two node ids, so a release that did not happen fails the next lock. Prints
  pairs/s per server (median, min, max over rounds), the per-round ratios etcd/airlock and
  sqlite/baseline (the SQLite server as it was when issue 17 was filed, ``--baseline REV``,
  run from ``git archive`` in the same rounds) (min/median/max), sqlite/560 (the issue's
  own unpaired figure), and per request: the client's own CPU, the server's CPU,
  etcd's CPU and etcd's unary gRPC calls (from etcd's /metrics). With ``--floor`` the rounds
  also run ``bench/fleetlock_floor.py`` per backend (aiohttp and one durable write per
  request, no FleetLock logic): the ratios no server on this stack can pass;
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
        [--scenarios throughput,rollout] [--sequential 1000] [--rounds 10]
        [--airlock BINARY] [--baseline REV] [--floor] [--nodes 1000] [--quick]

Exits 1 when a long-poll rollout misses a target (the throughput targets are printed, MET or
NOT MET, without changing the exit status).

Prints markdown tables on stdout. Every loop is bounded (request counts, a time budget).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
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
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


@dataclass(frozen=True)
class Served:
    """A running server: its base URL and process id (for its CPU time)."""

    url: str
    pid: int


@contextmanager
def server(backend: str, groups: dict[str, int], etcd: PrivateEtcd | None) -> Iterator[Served]:
    """A server process with ``groups``."""
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
        url = proc.start(timeout=20).url
        assert proc.process is not None
        yield Served(url, proc.process.pid)
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def airlock_server(binary: str, groups: dict[str, int], etcd: PrivateEtcd) -> Iterator[Served]:
    """coreos/airlock (``airlock serve``) on the same etcd, its own key space (airlock keeps
    one semaphore key per group, ``com.coreos.airlock/groups/GROUP/v1/semaphore``)."""
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
    with _spawned([binary, "serve", "--config", str(config)], port, workdir) as served:
        yield served


ETCD_SERVERS = ("etcd", "airlock", "floor-etcd")

# HEAD when issue 17 was filed: the server its "560 pairs/s today" was measured on.
BASELINE = "7c15ffe"


class BaselineMissing(Exception):
    """The baseline commit cannot be had (no git checkout, an unknown commit)."""


@contextmanager
def baseline_server(rev: str, groups: dict[str, int]) -> Iterator[Served]:
    """The SQLite server as it was at commit ``rev`` (its ``zincati_py`` by ``git archive``),
    run by this interpreter with that tree first on ``sys.path``: the same client, machine
    and rounds as today's server, so their ratio is a paired one."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "zincati_py"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise BaselineMissing(f"git archive {rev}: {archive.stderr.decode().strip()}")
    workdir = Path(tempfile.mkdtemp(prefix="zpy-flbase-"))
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive.stdout, check=True)
    port = free_port()
    lines = [f'listen = "127.0.0.1:{port}"', f'backend = "sqlite:{workdir / "fleetlock.db"}"']
    lines += ["[groups]", *(f"{name} = {slots}" for name, slots in groups.items())]
    config = workdir / "fleetlock.toml"
    config.write_text("\n".join(lines) + "\n")
    # Fails unless that tree, not the installed package, is the one imported.
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); import zincati_py; "
        "assert zincati_py.__file__.startswith(sys.path[0]), zincati_py.__file__; "
        "from zincati_py.cli import main; sys.exit(main())"
    )
    argv = [sys.executable, "-c", code, str(workdir), "fleetlock", "serve", "--config"]
    with _spawned([*argv, str(config)], port, workdir) as served:
        yield served


@contextmanager
def floor_server(backend: str, etcd: PrivateEtcd | None) -> Iterator[Served]:
    """``bench/fleetlock_floor.py``: aiohttp and one durable write per request, nothing else."""
    workdir = Path(tempfile.mkdtemp(prefix="zpy-flfloor-"))
    port = free_port()
    where = f"sqlite:{workdir / 'floor.db'}" if etcd is None else f"etcd:{etcd.url}"
    floor = Path(__file__).with_name("fleetlock_floor.py")
    with _spawned([sys.executable, str(floor), str(port), where], port, workdir) as served:
        yield served


@contextmanager
def _spawned(argv: list[str], port: int, workdir: Path) -> Iterator[Served]:
    """``argv`` started, served once it listens on ``port``; stopped and ``workdir`` removed
    after."""
    log = workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_ready(proc, listening, what=Path(argv[0]).name, timeout=20, log=log)
        yield Served(f"http://127.0.0.1:{port}/", proc.pid)
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime


def etcd_unary_calls(etcd: PrivateEtcd) -> int:
    """Every unary gRPC call etcd has answered so far (Range, Txn, Put, LeaseGrant, ...:
    the round trips its clients paid), from its Prometheus metrics."""
    with urllib.request.urlopen(f"{etcd.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{") and 'grpc_type="unary"' in line:
            total += int(float(line.rpartition(" ")[2]))
    return total


class LeanClient:
    """The sequential client: one keep-alive HTTP/1.1 connection on a blocking socket, the
    requests encoded once, an answer read by its Content-Length. Every answer is checked:
    ``pre-reboot`` must be 200 (with ``lease_seconds`` in the body from ``ours``, an empty
    body from airlock, any from the baseline), ``steady-state`` 200 (with
    ``fleet-lock-released: true`` from ``ours``, empty from airlock). Pairs alternate two
    node ids in a one-slot group, so a release that did not happen makes the other node's
    next lock fail."""

    def __init__(self, url: str, *, ours: bool | None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.ours = ours
        self.sock: socket.socket | None = None
        self.buf = b""

    def requests(self, group: str) -> list[tuple[bytes, bytes]]:
        """Per node id: pre-encoded (lock, release) requests."""
        out = []
        for node in ("bench-a", "bench-b"):
            body = json.dumps({"client_params": {"id": node, "group": group}}).encode()
            head = (
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nfleet-lock-protocol: true\r\n"
                "Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
            )
            lock, release = (
                head.format(path=f"{self.prefix}/v1/{op}", host=self.host, n=len(body)).encode()
                + body
                for op in ("pre-reboot", "steady-state")
            )
            out.append((lock, release))
        return out

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def _exchange(self, request: bytes) -> tuple[int, bytes, bytes]:
        """Send one request, read one answer: (status, header block, body)."""
        if self.sock is None:
            self.connect()
        sock = self.sock
        assert sock is not None
        sock.sendall(request)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv(sock)
        head = buf[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError("answer without Content-Length")
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop > 0 else None])
        need = end + 4 + length
        while len(buf) < need:
            buf += self._recv(sock)
        self.buf = buf[need:]
        return int(head[9:12]), head, buf[end + 4 : need]

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def lock(self, request: bytes) -> bool:
        status, _, body = self._exchange(request)
        if self.ours is None:
            return status == 200
        return status == 200 and (b'"lease_seconds"' in body if self.ours else body == b"")

    def release(self, request: bytes) -> bool:
        status, head, body = self._exchange(request)
        if self.ours is None:
            return status == 200
        if self.ours:
            return status == 200 and b"\r\nfleet-lock-released: true" in head
        return status == 200 and body == b""


@dataclass
class SeqRound:
    """One server's sequential round."""

    pairs: int
    seconds: float
    latencies: list[float]
    errors: int
    client_cpu: float
    server_cpu: float
    etcd_cpu: float | None
    etcd_calls: int | None

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds


def sequential_round(
    client: LeanClient, group: str, pairs: int, pid: int, etcd: PrivateEtcd | None
) -> SeqRound:
    """``pairs`` lock+release pairs by ``client`` in the fresh one-slot ``group``."""
    reqs = client.requests(group)
    client.connect()  # outside the clock; the other server's round may have idled it out
    latencies: list[float] = []
    errors = 0
    calls = etcd_unary_calls(etcd) if etcd is not None else 0
    etcd_cpu = cpu_seconds(etcd.process.pid) if etcd is not None and etcd.process else 0.0
    server_cpu = cpu_seconds(pid)
    client_cpu = time.process_time()
    clock = time.perf_counter
    start = clock()
    deadline = start + BUDGET
    for i in range(pairs):
        lock, release = reqs[i & 1]
        for send, request in ((client.lock, lock), (client.release, release)):
            t = clock()
            try:
                ok = send(request)
            except (OSError, ValueError):  # counted; the next request reconnects
                ok = False
                client.close()
            latencies.append(clock() - t)
            errors += not ok
        if clock() > deadline:
            break
    seconds = clock() - start
    client_cpu = time.process_time() - client_cpu
    server_cpu = cpu_seconds(pid) - server_cpu
    client.close()
    if etcd is not None and etcd.process is not None:
        return SeqRound(
            len(latencies) // 2,
            seconds,
            latencies,
            errors,
            client_cpu,
            server_cpu,
            cpu_seconds(etcd.process.pid) - etcd_cpu,
            etcd_unary_calls(etcd) - calls,
        )
    return SeqRound(
        len(latencies) // 2, seconds, latencies, errors, client_cpu, server_cpu, None, None
    )


def paired_sequential(
    servers: dict[str, tuple[Served, bool | None]],
    etcd_of: dict[str, PrivateEtcd | None],
    pairs: int,
    rounds: int,
) -> dict[str, list[SeqRound]]:
    """``rounds`` rounds of ``pairs`` pairs on every server, interleaved A B B A A B ...
    (a warm-up round first, not counted, in group ``seq-w``); round N uses group ``seq-rN``."""
    names = list(servers)
    clients = {name: LeanClient(s.url, ours=ours) for name, (s, ours) in servers.items()}
    results: dict[str, list[SeqRound]] = {name: [] for name in names}
    for name in names:
        sequential_round(clients[name], "seq-w", min(pairs, 50), servers[name][0].pid, None)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            result = sequential_round(
                clients[name], f"seq-r{r}", pairs, servers[name][0].pid, etcd_of[name]
            )
            results[name].append(result)
            print(
                f"round {r} {name}: {result.rate:.0f} pairs/s, {result.errors} errors",
                file=sys.stderr,
            )
    return results


def spread(values: list[float], fmt: str = ".2f", unit: str = "") -> str:
    """``MEDIAN (min MIN, max MAX)``."""
    med, low, high = statistics.median(values), min(values), max(values)
    return f"{med:{fmt}}{unit} (min {low:{fmt}}{unit}, max {high:{fmt}}{unit})"


def sequential_report(results: dict[str, list[SeqRound]], rounds: int, pairs: int) -> list[str]:
    """The sequential table and the paired ratios, as lines."""
    lines = [
        f"sequential lock+release, 1 client, {rounds} paired rounds of {pairs} pairs "
        "(median (min, max) over rounds; CPU and etcd calls per request, all rounds):",
        "",
        "| server | pairs/s | p50 ms | p99 ms | client CPU µs | server CPU µs | etcd CPU µs "
        "| etcd calls | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rs in results.items():
        lat = sorted(x for r in rs for x in r.latencies)
        n = len(lat)
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(n - 1, math.ceil(0.99 * n) - 1)] * 1000
        client = sum(r.client_cpu for r in rs) / n * 1e6
        srv = sum(r.server_cpu for r in rs) / n * 1e6
        etcd_cpu = [r.etcd_cpu for r in rs if r.etcd_cpu is not None]
        calls = [r.etcd_calls for r in rs if r.etcd_calls is not None]
        lines.append(
            f"| {name} | {spread([r.rate for r in rs], '.0f')} | {p50:.2f} | {p99:.2f} "
            f"| {client:.0f} | {srv:.0f} "
            f"| {f'{sum(etcd_cpu) / n * 1e6:.0f}' if etcd_cpu else '—'} "
            f"| {f'{sum(calls) / n:.2f}' if calls else '—'} | {sum(r.errors for r in rs)} |"
        )
    lines.append("")
    return lines


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


def _machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"{stamp}, {os.cpu_count()} CPUs, load average {load}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,etcd")
    parser.add_argument(
        "--scenarios", default="throughput,rollout", help="throughput, rollout or both"
    )
    parser.add_argument(
        "--sequential", type=int, default=1000, help="lock+release pairs per server, all rounds"
    )
    parser.add_argument(
        "--rounds", type=int, default=10, help="paired sequential rounds (servers alternate)"
    )
    parser.add_argument(
        "--clients", type=int, default=100, help="concurrent clients (0: no concurrent rows)"
    )
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
        help="also run coreos/airlock (this binary) on the same etcd, in the same paired "
        "sequential rounds: its rows and the etcd/airlock ratio (README: how to build it)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        default=BASELINE,
        help="also run the SQLite server as it was at this commit (default: when issue 17 was "
        "filed), in the same paired sequential rounds: the sqlite/baseline ratio ('' to skip)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run bench/fleetlock_floor.py per backend (aiohttp and one durable write "
        "per request, no FleetLock logic) in the same rounds: the ratios the stack allows",
    )
    args = parser.parse_args()
    if args.quick:
        args.sequential, args.rounds, args.clients, args.cycles = 200, 4, 10, 5
        args.nodes, args.slots, args.reboot = 100, 5, 0.2
    rounds = max(1, args.rounds)
    per_round = max(1, args.sequential // rounds)
    backends = [b for b in args.backends.split(",") if b]
    scenarios = set(args.scenarios.split(","))
    _raise_fd_limit()
    at_start = _machine()
    print(f"machine at start: {at_start}", file=sys.stderr)

    throughput_rows: list[str] = []
    rollout_rows: list[str] = []
    seq_lines: list[str] = []
    rates: dict[str, list[float]] = {}  # server -> sequential pairs/s per round
    etcd_calls: dict[str, float] = {}  # server -> etcd unary calls per request
    met = True
    airlock = args.airlock is not None and "throughput" in scenarios
    baseline = bool(args.baseline) and "sqlite" in backends and "throughput" in scenarios
    need_etcd = "etcd" in backends or airlock
    etcd = PrivateEtcd().start() if need_etcd else None
    try:
        with ExitStack() as stack:
            seq_groups = {"seq-w": 1, **{f"seq-r{r}": 1 for r in range(rounds)}}
            servers: dict[str, tuple[Served, bool | None]] = {}
            for backend in backends:
                groups = {
                    **seq_groups,
                    "conc": max(1, args.clients),
                    "fleet": args.slots,
                    "naive": args.slots,
                }
                servers[backend] = (stack.enter_context(server(backend, groups, etcd)), True)
            if airlock:
                assert etcd is not None
                groups = {**seq_groups, "conc": max(1, args.clients)}
                served = stack.enter_context(airlock_server(args.airlock, groups, etcd))
                servers["airlock"] = (served, False)
            if baseline:
                try:
                    served = stack.enter_context(baseline_server(args.baseline, seq_groups))
                    servers["baseline"] = (served, None)
                except BaselineMissing as exc:
                    print(f"no baseline server: {exc}", file=sys.stderr)
            if args.floor and "throughput" in scenarios:
                for backend in backends:
                    at = etcd if backend == "etcd" else None
                    servers[f"floor-{backend}"] = (
                        stack.enter_context(floor_server(backend, at)),
                        None,
                    )
            if "throughput" in scenarios:
                etcd_of = {n: etcd if n in ETCD_SERVERS else None for n in servers}
                seq = paired_sequential(servers, etcd_of, per_round, rounds)
                seq_lines = sequential_report(seq, rounds, per_round)
                for name, rs in seq.items():
                    label = "airlock (etcd)" if name == "airlock" else name
                    total = Throughput(
                        sum(len(r.latencies) for r in rs),
                        sum(r.seconds for r in rs),
                        [x for r in rs for x in r.latencies],
                        sum(r.errors for r in rs),
                    )
                    throughput_rows.append(total.row(label, "sequential, 1 client"))
                    rates[name] = [r.rate for r in rs]
                    calls = [r.etcd_calls for r in rs if r.etcd_calls is not None]
                    if calls:
                        etcd_calls[name] = sum(calls) / len(total.latencies)
                if args.clients > 0:
                    for name, (served, _) in servers.items():
                        label = "airlock (etcd)" if name == "airlock" else name
                        conc = asyncio.run(
                            lock_release(served.url, "conc", args.clients, args.cycles)
                        )
                        throughput_rows.append(
                            conc.row(label, f"concurrent, {args.clients} clients, one group")
                        )
                        print(f"done: {name} concurrent", file=sys.stderr)
            if "rollout" in scenarios:
                for backend in backends:
                    url = servers[backend][0].url
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
                    print(f"done: {backend} rollout", file=sys.stderr)
    finally:
        if etcd is not None:
            etcd.stop()

    print(f"machine at start: {at_start}; at the end: {_machine()}")
    print()
    if throughput_rows:
        print("\n".join(seq_lines))
        print("| backend | scenario | requests | req/s | p50 ms | p99 ms | errors |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(throughput_rows))
        print()
        for name, per in rates.items():
            print(
                f"sequential {name}: {statistics.median(per):.0f} lock+unlock pairs/s "
                f"(median of {len(per)} rounds, min {min(per):.0f}, max {max(per):.0f})"
            )
        base = f"the server at {args.baseline}"
        paired = [  # (server, peer, the peer said, the target ratio)
            ("sqlite", "baseline", base, 1.5),
            ("etcd", "airlock", "airlock on the same etcd", 3.0),
            ("floor-sqlite", "baseline", f"{base} (the most this stack allows)", None),
            ("floor-etcd", "airlock", "airlock (the most this stack allows)", None),
        ]
        for name, peer, said, want in paired:
            if name in rates and peer in rates:
                ratios = [a / b for a, b in zip(rates[name], rates[peer], strict=True)]
                verdict = ""
                if want is not None:
                    met_it = statistics.median(ratios) >= want
                    verdict = f" (median; target >= {want:g}x: {'MET' if met_it else 'NOT MET'})"
                print(f"{name} / {said}, paired rounds: {spread(ratios, '.2f', 'x')}{verdict}")
        if "sqlite" in rates:
            # The figure, measured once with a slower client: not a paired ratio.
            ratios = [r / 560 for r in rates["sqlite"]]
            print(
                f"sqlite / the issue's 560 pairs/s (unpaired, for reference): "
                f"{spread(ratios, '.2f', 'x')}"
            )
        for name, per_request in etcd_calls.items():
            target = " (target <= 1.2: " + ("MET)" if per_request <= 1.2 else "NOT MET)")
            print(
                f"etcd calls per request, {name}: {per_request:.2f}"
                + (target if name == "etcd" else "")
            )
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
