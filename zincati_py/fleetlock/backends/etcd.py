"""etcd v3 backend (for HA: several servers can share one etcd cluster).

A group is a small document, ``{key_prefix}groups/{group}``, plus its queue in pages of 64
entries (:mod:`~zincati_py.fleetlock.backends.etcd_layout`). A change is one transaction
comparing the document's ``mod_revision`` with the one seen (compare-and-swap) that puts
the document, the queue pages the change touched and the change's ledger events
(``{key_prefix}ledger/{microseconds}-{random}-{index}``); its failure branch reads the group
back. A request that changes nothing (re-lock early in the lease, unlock of a slot not held,
a queued node asking again) writes nothing: it is confirmed by one compare of the
document's revision, which transfers the group only if another instance changed it. The etcd
client (aetcd, gRPC) is created once and reused (:mod:`.etcd_client`).

Writes of this process for one group are group-committed: while one transaction is in flight,
further requests queue and then go into the next transaction together (decided in order on
the same state), so concurrent requests do not race each other and throughput does not
collapse to one round trip per request. A CAS can then only lose to a stale view or to another
server instance; it takes the current value from the failed transaction and retries, a
bounded number of times with jittered backoff. A client never sees the race.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

from aetcd import rpc

from zincati_py.fleetlock.backends import (
    Backend,
    BackendUnavailable,
    Decide,
    GroupState,
    LedgerQuery,
    events_of,
)
from zincati_py.fleetlock.backends.etcd_client import Endpoints
from zincati_py.fleetlock.backends.etcd_layout import (
    Layout,
    decode,
    encode_doc,
    encode_page,
    group_of_queue_key,
    page_key,
    plan,
    queue_base,
    range_end,
)

T = TypeVar("T")

CAS_ATTEMPTS = 32
# etcd refuses transactions of more than 128 operations (--max-txn-ops).
MAX_TXN_OPS = 128


def _micros(value: Any) -> int:
    """A ledger key's time: the event's, or the first event's of a packed list."""
    first = value[0] if isinstance(value, list) else value
    return int(first["at"] * 1e6)


@dataclass(frozen=True)
class _Seen:
    """A group as this process last saw it: ``revision`` is its document's ``mod_revision``
    (0: no document), which every change of the group moves."""

    state: GroupState
    revision: int
    layout: Layout


class _Keys(NamedTuple):
    """A group's document key, its pages' key prefix, and the operations reading both
    (``aetcd.rpc`` messages, built once: a request copies them)."""

    doc: bytes
    queue: bytes
    reads: list[Any]


def _put(key: bytes, value: bytes) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def _delete(key: bytes, end: bytes | None = None) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))


def _get(key: bytes, end: bytes | None = None) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=end))


def _mod_is(key: bytes, revision: int) -> Any:
    """Compare: the key's ``mod_revision`` is ``revision`` (0: no such key)."""
    return rpc.Compare(
        key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=revision
    )


class _Change(NamedTuple):
    decide: Decide[Any]
    future: asyncio.Future[Any]
    # The decision already made on ``base`` (the state seen when the request came): the
    # transaction reuses it if it starts from that same state.
    base: GroupState | None = None
    decided: tuple[GroupState | None, Any] | None = None


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
        self._etcd = Endpoints(urls, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        # Requests waiting for the group's next transaction, and the task committing them.
        self._pending: defaultdict[str, list[_Change]] = defaultdict(list)
        self._flushers: dict[str, asyncio.Task[None]] = {}
        # Groups whose transaction in flight writes (their cached state is about to change).
        self._writing: set[str] = set()
        # Reads of groups this process had not seen, in flight (a burst waits for one).
        self._reading: dict[str, asyncio.Future[_Seen]] = {}
        self._group_keys: dict[str, _Keys] = {}
        # A hint only: every write is a compare-and-swap against the revision, so a stale
        # entry costs a retry.
        self._cache: dict[str, _Seen] = {}
        # Compare-and-swaps lost (and retried), for tests and diagnostics.
        self.conflicts = 0

    @property
    def calls(self) -> int:
        """Round trips to etcd so far (failovers included)."""
        return self._etcd.calls

    def _keys(self, group: str) -> _Keys:
        keys = self._group_keys.get(group)
        if keys is None:
            doc, base = self.prefix + b"groups/" + group.encode(), queue_base(self.prefix, group)
            keys = _Keys(doc, base, [_get(doc), _get(base, range_end(base))])
            self._group_keys[group] = keys
        return keys

    def _key(self, group: str) -> bytes:
        return self._keys(group).doc

    def _reads(self, group: str) -> list[Any]:
        """Reading a group: its document and its queue pages (at one revision in a
        transaction)."""
        return self._keys(group).reads

    def _seen_of(self, group: str, responses: Any) -> _Seen:
        """The group carried by a transaction's :meth:`_reads` (its ``ResponseOp`` list);
        what this process knows already (same document revision: its own write) is not
        parsed again."""
        docs, pages = responses[0].response_range.kvs, responses[1].response_range.kvs
        base = self._keys(group).queue
        found = [(int(kv.key[len(base) :]), kv.value, int(kv.mod_revision)) for kv in pages]
        if not docs:
            return self._decoded(group, None, 0, found)
        return self._decoded(group, docs[0].value, int(docs[0].mod_revision), found)

    def _decoded(
        self, group: str, doc: bytes | None, revision: int, pages: list[tuple[int, bytes, int]]
    ) -> _Seen:
        """The group from its document (None: none stored) at ``revision`` and its queue
        ``pages`` (number, value, mod_revision); the cached one if it is that revision."""
        known = self._cache.get(group)
        if doc is not None and known is not None and known.revision == revision:
            return known
        state, layout = decode(doc, pages, None if known is None else known.layout)
        return _Seen(state, revision, layout)

    def _remember(self, group: str, seen: _Seen) -> _Seen:
        """Keep ``seen`` unless this process already knows a newer revision (a read that
        started before this process's own write may come back after it). A missing document
        (revision 0) is always kept: the group emptied is deleted, by any instance, so no
        revision order tells a stale absence from a new one; a stale one costs one failed
        compare, whose failure branch brings the current state."""
        known = self._cache.get(group)
        if known is None or seen.revision == 0 or seen.revision >= known.revision:
            self._cache[group] = seen
        return seen

    async def _read(self, group: str) -> _Seen:
        response = await self._etcd.txn(rpc.TxnRequest(success=self._reads(group)))
        return self._remember(group, self._seen_of(group, response.responses))

    async def _current(self, group: str) -> tuple[_Seen, bool]:
        """The group as cached (not confirmed), else read (:meth:`_first_read`)."""
        cached = self._cache.get(group)
        if cached is None:
            return await self._first_read(group)
        return cached, False

    async def _first_read(self, group: str) -> tuple[_Seen, bool]:
        """The group read for a request finding nothing cached, and whether that read started
        after the request came (a request that joins a read already in flight does not
        answer "no change" from it without a compare: it may predate another's write)."""
        reading = self._reading.get(group)
        if reading is not None:
            return await asyncio.shield(reading), False
        task = asyncio.ensure_future(self._read(group))

        def finished(t: asyncio.Future[_Seen]) -> None:
            # Shared until the read ends, even if the request that started it is cancelled.
            if self._reading.get(group) is t:
                del self._reading[group]
            # Its error reaches every request awaiting it; none left (cancelled): nobody to tell.
            if not t.cancelled():
                t.exception()

        task.add_done_callback(finished)
        self._reading[group] = task
        return await asyncio.shield(task), True

    async def _confirm(self, group: str) -> _Seen:
        """The group's current state, read linearizably but transferred and parsed only when
        it changed since this process last saw it: one transaction comparing the document's
        ``mod_revision`` with the cached one (success: nothing to return; failure: the group).
        """
        cached = self._cache.get(group)
        if cached is None:
            return await self._read(group)
        response = await self._etcd.txn(
            rpc.TxnRequest(
                compare=[_mod_is(self._key(group), cached.revision)], failure=self._reads(group)
            )
        )
        if response.succeeded:
            return cached
        return self._remember(group, self._seen_of(group, response.responses))

    async def _swap(self, group: str, decide: Decide[T]) -> T:
        """Apply ``decide`` (state -> (new state or None, result)) to the group atomically.

        Decides first on the last state this process saw, then goes through the group's
        batch (see :meth:`_flush`), whose transaction reuses that decision if it starts from
        the same state: when this server is the only writer (the usual case) a change costs
        one transaction and no read, and an answer that changes nothing one compare of the
        document's revision, shared by every such answer waiting at the time (an answer is
        only given from state confirmed after the request came: linearizable). While a write
        of the group is in flight, the request goes into the next transaction undecided (a
        decision now would be on a state about to change).
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if group in self._writing:
            undecided: T = await self._enqueue(group, _Change(decide, future))
            return undecided
        seen, confirmed = await self._current(group)
        new, result = decide(seen.state)
        if new is None and confirmed:
            return result
        outcome: T = await self._enqueue(group, _Change(decide, future, seen.state, (new, result)))
        return outcome

    async def _enqueue(self, group: str, change: _Change) -> Any:
        self._pending[group].append(change)
        if group not in self._flushers:
            self._flushers[group] = asyncio.create_task(self._flush(group))
        return await change.future

    async def _flush(self, group: str) -> None:
        """Group commit: every request queued for the group while a transaction was in flight
        goes into the next one, decided in arrival order, one compare-and-swap for all."""
        batch: list[_Change] = []
        try:
            while self._pending.get(group):
                batch = self._pending.pop(group)
                try:
                    results = await self._commit(group, batch)
                except Exception as exc:
                    for change in batch:
                        if not change.future.done():
                            change.future.set_exception(exc)
                    continue
                for change, result in zip(batch, results, strict=True):
                    if not change.future.done():
                        change.future.set_result(result)
                batch = []
        finally:
            del self._flushers[group]
            # Only on cancellation (shutdown) can requests be left waiting.
            for change in batch + self._pending.pop(group, []):
                if not change.future.done():
                    change.future.set_exception(BackendUnavailable("etcd backend closed"))

    async def _commit(self, group: str, changes: list[_Change]) -> list[Any]:
        seen, confirmed = await self._current(group)
        for attempt in range(CAS_ATTEMPTS):
            state: GroupState | None = None
            results = []
            for change in changes:
                if change.base is seen.state and change.decided and change.decided[0] is None:
                    # An answer that changes nothing, decided on the state this transaction
                    # compares against: it holds at that compare, before this batch's writes
                    # (its request and theirs were all pending then). Not decided again
                    # after them: a queue's waiters re-check in bursts of hundreds.
                    results.append(change.decided[1])
                    continue
                base = seen.state if state is None else state
                if change.base is base and change.decided is not None:
                    new, result = change.decided
                else:
                    new, result = change.decide(base)
                state = new if new is not None else state
                results.append(result)
            if state is None:
                if confirmed:
                    return results
                seen, confirmed = await self._confirm(group), True
                continue
            self._writing.add(group)
            try:
                ok, responses = await self._write(group, seen, state, results)
            finally:
                self._writing.discard(group)
            if ok:
                return results
            # Lost to a stale view: the failure branch carries the current group.
            self.conflicts += 1
            seen, confirmed = self._remember(group, self._seen_of(group, responses)), True
            # A first loss is usually a stale cache; more mean another server instance keeps
            # writing: back off with jitter.
            if attempt > 0:
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise BackendUnavailable(
            f"etcd: group {group!r} still contended after {CAS_ATTEMPTS} tries"
        )

    async def _write(
        self, group: str, seen: _Seen, state: GroupState, results: list[Any]
    ) -> tuple[bool, Any]:
        """One compare-and-swap of the group from ``seen`` to ``state``; on success the cache
        holds ``state``."""
        key = self._key(group)
        keep = not state.empty()
        pages = plan(seen.layout, state.queue)
        base = self._keys(group).queue
        ops = [_put(key, encode_doc(state, pages.layout)) if keep else _delete(key)]
        ops += [_put(page_key(base, p.number), encode_page(p)) for p in pages.puts]
        ops += [_delete(page_key(base, n)) for n in pages.deletes]
        if pages.delete_range is not None:
            first, last = pages.delete_range
            ops.append(_delete(page_key(base, first), page_key(base, last + 1)))
        # Keys sort by time, then by order within this change. A change with more events
        # than the transaction has room for (a queue expiring at once) stores them as one
        # list under one key.
        events = [e.to_json(group) for result in results for e in events_of(result)]
        tag = os.urandom(4).hex()
        values: list[Any] = events if len(ops) + len(events) <= MAX_TXN_OPS else [events]
        ops += [
            _put(
                self.prefix + f"ledger/{_micros(value):020d}-{tag}-{i:05d}".encode(),
                json.dumps(value, separators=(",", ":")).encode(),
            )
            for i, value in enumerate(values)
        ]
        response = await self._etcd.txn(
            rpc.TxnRequest(
                compare=[_mod_is(key, seen.revision)], success=ops, failure=self._reads(group)
            )
        )
        ok, responses = bool(response.succeeded), response.responses
        if ok:
            # The revision of the transaction's writes (every key it wrote has it).
            written = int(response.header.revision)
            layout = Layout(
                tuple(
                    p if p.mod_revision else replace(p, mod_revision=written)
                    for p in pages.layout.pages
                )
            )
            # A deleted key compares as mod_revision 0.
            self._cache[group] = _Seen(state, written if keep else 0, layout)
        return ok, responses

    async def apply(self, group: str, decide: Decide[T]) -> T:
        return await self._swap(group, decide)

    async def state(self, group: str) -> GroupState:
        return (await self._read(group)).state

    async def all_states(self) -> dict[str, GroupState]:
        groups, queues = self.prefix + b"groups/", self.prefix + b"queues/"
        response = await self._etcd.txn(
            rpc.TxnRequest(
                success=[_get(groups, range_end(groups)), _get(queues, range_end(queues))]
            )
        )
        docs, pages = (r.response_range.kvs for r in response.responses)
        by_group: defaultdict[str, list[tuple[int, bytes, int]]] = defaultdict(list)
        for kv in pages:
            found = group_of_queue_key(self.prefix, kv.key)
            if found is not None:
                by_group[found[0]].append((found[1], kv.value, int(kv.mod_revision)))
        states = {}
        for kv in docs:
            group = kv.key[len(groups) :].decode()
            states[group] = self._decoded(
                group, kv.value, int(kv.mod_revision), by_group[group]
            ).state
        return states

    async def _history(self, query: LedgerQuery) -> list[dict[str, Any]]:
        found = await self._etcd.call("get_prefix", self.prefix + b"ledger/")
        # Keys sort by time, then by the order of events within one change.
        events = []
        for kv in sorted(found, key=lambda kv: kv.key):
            value = json.loads(kv.value)
            events.extend(value if isinstance(value, list) else [value])
        matching = [e for e in events if query.matches(e)]
        return matching[-query.limit :]

    async def ping(self) -> None:
        await self._etcd.call("get", self.prefix + b"ping")

    async def close(self) -> None:
        for task in list(self._flushers.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for reading in list(self._reading.values()):
            reading.cancel()
        await self._etcd.close()
