"""etcd v3 backend (for HA: several servers can share one etcd cluster).

One key per group, ``{key_prefix}groups/{group}``, holding the group's state
(``{"holders": [...], "queue": [...], ...}``). A change is one transaction comparing the key's
``mod_revision`` with the one seen (compare-and-swap), which also puts the change's ledger
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
    LedgerQuery,
    events_of,
)

T = TypeVar("T")


CAS_ATTEMPTS = 32
LEDGER_KEYS_PER_TXN = 100
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


def _micros(value: Any) -> int:
    """A ledger key's time: the event's, or the first event's of a packed list."""
    first = value[0] if isinstance(value, list) else value
    return int(first["at"] * 1e6)


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
        # Compare-and-swaps lost (and retried), and round trips to etcd (calls, failovers
        # included), for tests and diagnostics.
        self.conflicts = 0
        self.calls = 0

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
            self.calls += 1
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

    async def _read(self, group: str) -> tuple[GroupState, int]:
        got = await self._call("get", self._key(group))
        found = (
            (GroupState(), 0) if got is None else (self._decode(got.value), int(got.mod_revision))
        )
        self._cache[group] = found
        return found

    def _current_of(self, responses: Any) -> tuple[GroupState, int]:
        """The group's value carried by a transaction's failure branch (``[get key]``)."""
        current = responses[0] if responses else []
        if current:
            value, meta = current[0]
            return self._decode(value), int(meta.mod_revision)
        return GroupState(), 0

    async def _confirm(self, group: str) -> tuple[GroupState, int]:
        """The group's current state, read linearizably but transferred and parsed only when
        it changed since this process last saw it: one transaction comparing the key's
        ``mod_revision`` with the cached one (success: nothing to return; failure: the value).
        A queue of a thousand nodes is a 60 KB document: a plain get of it for every request
        that changes nothing (a long-poll waiter re-asking) cost more than the writes."""
        cached = self._cache.get(group)
        if cached is None:
            return await self._read(group)
        tx = self._client(self._current).transactions
        key = self._key(group)
        ok, responses = await self._call(
            "transaction", compare=[tx.mod(key) == cached[1]], success=[], failure=[tx.get(key)]
        )
        if ok:
            return cached
        found = self._current_of(responses)
        self._cache[group] = found
        return found

    async def _swap(self, group: str, decide: Decide[T]) -> T:
        """Apply ``decide`` (holders -> (new holders or None, result)) to the group atomically.

        Decides first on the last state this process saw: when this server is the only writer
        (the usual case) a change then costs one transaction and no read. An answer that
        changes nothing is only given from state read during this request (linearizable).
        Changes go through the group's batch (see :meth:`_flush`).
        """
        cached = self._cache.get(group)
        if cached is None:
            state, _ = await self._read(group)
            confirmed = True
        else:
            state, confirmed = cached[0], False
        new, result = decide(state)
        if new is None and not confirmed:
            fresh, _ = await self._confirm(group)
            if fresh is not state:  # someone else wrote: decide on what is there now
                state = fresh
                new, result = decide(state)
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
                (holders, revision), confirmed = await self._confirm(group), True
                continue
            tx = self._client(self._current).transactions
            keep = not state.empty()
            if keep:
                doc = state.to_json()
                write = tx.put(key, json.dumps(doc, separators=(",", ":")).encode())
            else:
                write = tx.delete(key)
            # Keys sort by time, then by order within this change. etcd refuses transactions
            # of more than 128 operations (--max-txn-ops): a change with many events (a batch
            # of grants, a queue expiring at once) stores them as one list under one key.
            events = [e.to_json(group) for result in results for e in events_of(result)]
            tag = os.urandom(4).hex()
            values: list[Any] = [events] if len(events) > LEDGER_KEYS_PER_TXN else events
            ledger = [
                tx.put(
                    self.prefix + f"ledger/{_micros(value):020d}-{tag}-{i:05d}".encode(),
                    json.dumps(value, separators=(",", ":")).encode(),
                )
                for i, value in enumerate(values)
            ]
            ok, responses = await self._call(
                "transaction",
                compare=[tx.mod(key) == revision],
                success=[write, *ledger],
                failure=[tx.get(key)],
            )
            if ok:
                # A deleted key compares as mod_revision 0.
                rev = int(responses[0].response_put.header.revision) if keep else 0
                self._cache[group] = (state, rev)
                return results
            # Lost to a stale view: the failure branch carries the current value.
            self.conflicts += 1
            holders, revision = self._current_of(responses)
            self._cache[group], confirmed = (holders, revision), True
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
        return {kv.key[len(base) :].decode(): self._decode(kv.value) for kv in found}

    async def _history(self, query: LedgerQuery) -> list[dict[str, Any]]:
        found = await self._call("get_prefix", self.prefix + b"ledger/")
        # Keys sort by time, then by the order of events within one change.
        events = []
        for kv in sorted(found, key=lambda kv: kv.key):
            value = json.loads(kv.value)
            events.extend(value if isinstance(value, list) else [value])
        matching = [e for e in events if query.matches(e)]
        return matching[-query.limit :]

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
