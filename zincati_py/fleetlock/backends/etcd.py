"""etcd v3 backend (for HA: several servers can share one etcd cluster).

One key per group, ``{key_prefix}groups/{group}``, holding the group's state but its queue
(``{"holders": [...], ...}``), and one key per queue entry,
``{key_prefix}queue/{group}/{order}`` (a change writes only the entries it changed: a
1,000-node queue is not rewritten on every grant). A change is one transaction comparing the
group key's ``mod_revision`` with the one seen (compare-and-swap; every change puts the group
key, so entries never change without it), which also puts the changed entries and the ledger
events (``{key_prefix}ledger/{microseconds}-{random}-{index}``); a request that changes nothing
(re-lock early in the lease, unlock of a slot not held, a queued node asking again) writes
nothing. The etcd client (aetcd, gRPC) is created once and reused.

Writes of this process for one group are group-committed: while one transaction is in flight,
further changes queue and then go into the next transaction together (decided in order on the
same state), so concurrent requests do not race each other and throughput does not collapse
to one round trip per request. A CAS can then only lose to a stale view or to another server
instance; it takes the current value from the failed transaction and retries, a bounded number
of times with jittered backoff. A client never sees the race.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections import defaultdict
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import grpc  # type: ignore[import-untyped]

from zincati_py.fleetlock.backends import (
    Backend,
    BackendUnavailable,
    Decide,
    GroupState,
    events_of,
    history_filter,
)
from zincati_py.fleetlock.state import Waiter

T = TypeVar("T")

CAS_ATTEMPTS = 32
RPC_TIMEOUT = 5

_UNAVAILABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
)


class _TlsClient(aetcd.Client):  # type: ignore[misc]
    """aetcd 1.0 opens only plaintext channels; this opens a TLS one, the rest is aetcd's."""

    def __init__(self, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        self.channel = aetcd.rpc.secure_channel(
            target, self._credentials, options=self._options.items()
        )
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self._connected.set()


def _read_bytes(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class EtcdBackend(Backend):
    def __init__(
        self,
        urls: str,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        key_prefix: str | None = None,
    ) -> None:
        self.prefix = (key_prefix or "/zincati-py/fleetlock/").encode()
        self._endpoints: list[tuple[str, int, bool]] = []
        for url in urls.split(","):
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an etcd URL: {url!r}")
            self._endpoints.append((parts.hostname, parts.port or 2379, parts.scheme == "https"))
        self._credentials: grpc.ChannelCredentials | None = None
        if ca_file or cert_file or any(tls for _, _, tls in self._endpoints):
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_bytes(ca_file),
                private_key=_read_bytes(key_file),
                certificate_chain=_read_bytes(cert_file),
            )
        self._clients: dict[int, Any] = {}
        self._current = 0
        # Changes waiting for the group's next transaction, and the task committing them.
        self._pending: defaultdict[str, list[tuple[Decide[Any], asyncio.Future[Any]]]] = (
            defaultdict(list)
        )
        self._flushers: dict[str, asyncio.Task[None]] = {}
        # group -> (state, mod_revision) as this process last saw them; a hint only: every
        # write is a compare-and-swap against the revision, so a stale entry costs a retry.
        self._cache: dict[str, tuple[GroupState, int]] = {}
        # group -> queue entry id -> its order number (key suffix), for the cached state.
        self._orders: dict[str, dict[str, int]] = {}
        # Compare-and-swaps lost (and retried), for tests and diagnostics.
        self.conflicts = 0

    def _key(self, group: str) -> bytes:
        return self.prefix + b"groups/" + group.encode()

    def _client(self, index: int) -> Any:
        client = self._clients.get(index)
        if client is None:
            host, port, tls = self._endpoints[index]
            if tls or self._credentials is not None:
                assert self._credentials is not None
                client = _TlsClient(self._credentials, host=host, port=port, timeout=RPC_TIMEOUT)
            else:
                client = aetcd.Client(host=host, port=port, timeout=RPC_TIMEOUT)
            self._clients[index] = client
        return client

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call an aetcd method on the current endpoint, failing over to the next ones."""
        last: Exception | None = None
        for step in range(len(self._endpoints)):
            index = (self._current + step) % len(self._endpoints)
            try:
                result = await getattr(self._client(index), method)(*args, **kwargs)
            except _UNAVAILABLE as exc:
                last = exc
                continue
            except aetcd.exceptions.ClientError as exc:
                raise BackendUnavailable(f"etcd: {exc}") from exc
            self._current = index
            return result
        raise BackendUnavailable(f"etcd unreachable: {last}")

    @staticmethod
    def _decode(value: bytes) -> GroupState:
        return GroupState.from_json(json.loads(value))

    def _qstart(self, group: str) -> bytes:
        return self.prefix + b"queue/" + group.encode() + b"/"

    def _qkey(self, group: str, order: int) -> bytes:
        return self._qstart(group) + f"{order:016d}".encode()

    def _reads(self, tx: Any, group: str) -> list[Any]:
        """The group key and its queue entries, as transaction operations (one snapshot)."""
        start = self._qstart(group)
        return [tx.get(self._key(group)), tx.get(start, start[:-1] + b"0")]

    def _parse(self, group: str, responses: list[Any]) -> tuple[GroupState, int]:
        """State and revision from :meth:`_reads`' responses; caches both."""
        found, entries = responses[0], responses[1]
        doc = json.loads(found[0][0]) if found else {}
        revision = int(found[0][1].mod_revision) if found else 0
        start = self._qstart(group)
        queue, orders = [], {}
        for value, meta in sorted(entries, key=lambda e: bytes(e[1].key)):
            waiter = Waiter.from_json(json.loads(value))
            orders[waiter.id] = int(bytes(meta.key)[len(start) :])
            queue.append(waiter)
        # A group document from before queue keys carries its queue inline.
        state = GroupState.from_json(doc, None, queue if queue or "queue" not in doc else None)
        self._cache[group] = (state, revision)
        self._orders[group] = orders
        return state, revision

    async def _read(self, group: str) -> tuple[GroupState, int]:
        tx = self._client(self._current).transactions
        _, responses = await self._call(
            "transaction", compare=[], success=self._reads(tx, group), failure=[]
        )
        return self._parse(group, responses)

    def _queue_ops(
        self, tx: Any, group: str, old: GroupState, new: GroupState
    ) -> tuple[list[Any], dict[str, int]]:
        """Puts and deletes that turn ``old``'s queue keys into ``new``'s; the new orders."""
        orders = self._orders.get(group, {})
        before = {w.id: w for w in old.queue}
        # An entry that left and joined again (a new ``since``) goes to the back.
        rejoined = {w.id for w in new.queue if w.id in before and before[w.id].since != w.since}
        left = (before.keys() - {w.id for w in new.queue}) | rejoined
        ops = [tx.delete(self._qkey(group, orders[n])) for n in left if n in orders]
        kept = {n: o for n, o in orders.items() if n not in left}
        last = max(orders.values(), default=0)
        out: dict[str, int] = {}
        for w in new.queue:
            value = json.dumps(w.to_json(), separators=(",", ":")).encode()
            if w.id in kept:
                out[w.id] = kept[w.id]
                if before.get(w.id) != w:
                    ops.append(tx.put(self._qkey(group, kept[w.id]), value))
            else:
                last += 1
                out[w.id] = last
                ops.append(tx.put(self._qkey(group, last), value))
        return ops, out

    async def _swap(self, group: str, decide: Decide[T]) -> T:
        """Apply ``decide`` (holders -> (new holders or None, result)) to the group atomically.

        Decides first on the last state this process saw: when this server is the only writer
        (the usual case) a change then costs one transaction and no read. An answer that
        changes nothing is only given from state read during this request (linearizable).
        Changes go through the group's batch (see :meth:`_flush`).
        """
        cached = self._cache.get(group)
        if cached is None:
            holders, _ = await self._read(group)
            confirmed = True
        else:
            holders, confirmed = cached[0], False
        new, result = decide(holders)
        if new is None and not confirmed:
            holders, _ = await self._read(group)
            new, result = decide(holders)
        if new is None:
            return result
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[group].append((decide, future))
        if group not in self._flushers:
            self._flushers[group] = asyncio.create_task(self._flush(group))
        outcome: T = await future
        return outcome

    async def _flush(self, group: str) -> None:
        """Group commit: every change queued for the group while a transaction was in flight
        goes into the next one, decided in arrival order, one compare-and-swap for all."""
        batch: list[tuple[Decide[Any], asyncio.Future[Any]]] = []
        try:
            while self._pending.get(group):
                batch = self._pending.pop(group)
                try:
                    results = await self._commit(group, [d for d, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                batch = []
        finally:
            del self._flushers[group]
            # Only on cancellation (shutdown) can requests be left waiting.
            for _, future in batch + self._pending.pop(group, []):
                if not future.done():
                    future.set_exception(BackendUnavailable("etcd backend closed"))

    async def _commit(self, group: str, decides: list[Decide[Any]]) -> list[Any]:
        key = self._key(group)
        cached = self._cache.get(group)
        if cached is None:
            (holders, revision), confirmed = await self._read(group), True
        else:
            (holders, revision), confirmed = cached, False
        for attempt in range(CAS_ATTEMPTS):
            state: GroupState | None = None
            results = []
            for decide in decides:
                new, result = decide(holders if state is None else state)
                state = new if new is not None else state
                results.append(result)
            if state is None:
                if confirmed:
                    return results
                (holders, revision), confirmed = await self._read(group), True
                continue
            tx = self._client(self._current).transactions
            keep = not state.empty()
            if keep:
                doc = {
                    "holders": [h.to_json() for h in state.holders.values()],
                    **state.extras_json(queue=False),
                }
                write = tx.put(key, json.dumps(doc, separators=(",", ":")).encode())
            else:
                write = tx.delete(key)
            queue_ops, orders = self._queue_ops(tx, group, holders, state)
            # Keys sort by time, then by order within this change.
            events = [e for result in results for e in events_of(result)]
            tag = os.urandom(4).hex()
            ledger = [
                tx.put(
                    self.prefix + f"ledger/{int(e.at * 1e6):020d}-{tag}-{i:05d}".encode(),
                    json.dumps(e.to_json(group), separators=(",", ":")).encode(),
                )
                for i, e in enumerate(events)
            ]
            ok, responses = await self._call(
                "transaction",
                compare=[tx.mod(key) == revision],
                success=[write, *queue_ops, *ledger],
                failure=self._reads(tx, group),
            )
            if ok:
                # A deleted key compares as mod_revision 0.
                rev = int(responses[0].response_put.header.revision) if keep else 0
                self._cache[group] = (state, rev)
                self._orders[group] = orders
                return results
            # Lost to a stale view: the failure branch carries the current value.
            self.conflicts += 1
            (holders, revision), confirmed = self._parse(group, responses), True
            # A first loss is usually a stale cache; more mean another server instance keeps
            # writing: back off with jitter.
            if attempt > 0:
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise BackendUnavailable(
            f"etcd: group {group!r} still contended after {CAS_ATTEMPTS} tries"
        )

    async def apply(self, group: str, decide: Decide[T]) -> T:
        return await self._swap(group, decide)

    async def state(self, group: str) -> GroupState:
        found, _ = await self._read(group)
        return found

    async def all_states(self) -> dict[str, GroupState]:
        base = self.prefix + b"groups/"
        found = await self._call("get_prefix", base)
        names = [kv.key[len(base) :].decode() for kv in found]
        return {name: (await self._read(name))[0] for name in names}

    async def history(
        self,
        *,
        group: str | None = None,
        node: str | None = None,
        version: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        found = await self._call("get_prefix", self.prefix + b"ledger/")
        # Keys sort by time, then by the order of events within one change.
        events = [json.loads(kv.value) for kv in sorted(found, key=lambda kv: kv.key)]
        matching = [e for e in events if history_filter(e, group, node, version, since)]
        return matching[-limit:]

    async def ping(self) -> None:
        await self._call("get", self.prefix + b"ping")

    async def close(self) -> None:
        for task in list(self._flushers.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
