"""etcd v3 backend (for HA: several servers can share one etcd cluster).

One key per group, ``{key_prefix}groups/{group}``, holding ``{"holders": [...]}``. A change is
one transaction comparing the key's ``mod_revision`` with the one read (compare-and-swap); a
request that changes nothing (re-lock early in the lease, unlock of a slot not held, lock of a
full group) writes nothing. The etcd client (aetcd, gRPC) is created once and reused.

Races: writes of this process for one group are serialised by an asyncio lock (read-only
outcomes skip it), so a CAS loses only to a stale view or to another server instance; then
it takes the current value from the failed transaction and retries, a bounded number of times
with jittered backoff. A client never sees the race.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import grpc  # type: ignore[import-untyped]

from zincati_py.fleetlock.backends import (
    Backend,
    BackendUnavailable,
    Holder,
    LockOutcome,
    UnlockOutcome,
    decide_expire,
    decide_lock,
    decide_unlock,
)

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
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # group -> (holders, mod_revision) as this process last saw them; a hint only: every
        # write is a compare-and-swap against the revision, so a stale entry costs a retry.
        self._cache: dict[str, tuple[dict[str, Holder], int]] = {}
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
    def _decode(value: bytes) -> dict[str, Holder]:
        doc = json.loads(value)
        return {h["id"]: Holder.from_json(h) for h in doc["holders"]}

    async def _read(self, group: str) -> tuple[dict[str, Holder], int]:
        got = await self._call("get", self._key(group))
        state = ({}, 0) if got is None else (self._decode(got.value), int(got.mod_revision))
        self._cache[group] = state
        return state

    async def _swap(
        self, group: str, decide: Callable[[dict[str, Holder]], tuple[dict[str, Holder] | None, T]]
    ) -> T:
        """Read, decide, compare-and-swap; repeat on a lost race. ``decide(holders)`` returns
        ``(new holders or None, result)``."""
        key = self._key(group)
        # Decide on the last state this process saw: when this server is the only writer (the
        # usual case) a change costs one transaction and no read. An answer that changes
        # nothing is only given from state read during this request (linearizable).
        cached = self._cache.get(group)
        if cached is None:
            (holders, revision), confirmed = await self._read(group), True
        else:
            (holders, revision), confirmed = cached, False
        new, result = decide(holders)
        if new is None and not confirmed:
            (holders, revision), confirmed = await self._read(group), True
            new, result = decide(holders)
        if new is None:
            return result
        async with self._locks[group]:
            cached = self._cache.get(group)
            if cached is not None and cached[1] != revision:
                # Another request of ours wrote while we waited for the lock.
                (holders, revision), confirmed = cached, False
            for attempt in range(CAS_ATTEMPTS):
                new, result = decide(holders)
                if new is None:
                    if confirmed:
                        return result
                    (holders, revision), confirmed = await self._read(group), True
                    continue
                tx = self._client(self._current).transactions
                if new:
                    doc = {"holders": [h.to_json() for h in new.values()]}
                    write = tx.put(key, json.dumps(doc, separators=(",", ":")).encode())
                else:
                    write = tx.delete(key)
                ok, responses = await self._call(
                    "transaction",
                    compare=[tx.mod(key) == revision],
                    success=[write],
                    failure=[tx.get(key)],
                )
                if ok:
                    # A deleted key compares as mod_revision 0.
                    rev = int(responses[0].response_put.header.revision) if new else 0
                    self._cache[group] = (new, rev)
                    return result
                # Lost to a stale view: the failure branch carries the current value.
                self.conflicts += 1
                current = responses[0] if responses else []
                if current:
                    value, meta = current[0]
                    holders, revision = self._decode(value), int(meta.mod_revision)
                else:
                    holders, revision = {}, 0
                self._cache[group], confirmed = (holders, revision), True
                # A first loss is usually a stale cache; more mean another server instance
                # keeps writing: back off with jitter.
                if attempt > 0:
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise BackendUnavailable(
            f"etcd: group {group!r} still contended after {CAS_ATTEMPTS} tries"
        )

    async def lock(
        self, group: str, node_id: str, slots: int, lease_seconds: int, now: float
    ) -> LockOutcome:
        return await self._swap(group, lambda h: decide_lock(h, node_id, slots, lease_seconds, now))

    async def unlock(self, group: str, node_id: str, now: float) -> UnlockOutcome:
        return await self._swap(group, lambda h: decide_unlock(h, node_id, now))

    async def expire(self, group: str, now: float) -> tuple[Holder, ...]:
        return await self._swap(group, lambda h: decide_expire(h, now))

    async def holders(self, group: str) -> list[Holder]:
        found, _ = await self._read(group)
        return sorted(found.values(), key=lambda h: (h.acquired_at, h.id))

    async def all_holders(self) -> dict[str, list[Holder]]:
        base = self.prefix + b"groups/"
        found = await self._call("get_prefix", base)
        out: dict[str, list[Holder]] = {}
        for kv in found:
            group = kv.key[len(base) :].decode()
            out[group] = sorted(
                self._decode(kv.value).values(), key=lambda h: (h.acquired_at, h.id)
            )
        return out

    async def ping(self) -> None:
        await self._call("get", self.prefix + b"ping")

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
