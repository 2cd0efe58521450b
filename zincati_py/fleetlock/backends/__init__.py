"""Storage for reboot slots: the decision logic shared by every backend, and the interface.

A group's state is the set of its holders. Backends only load and store that set atomically
(SQLite: one transaction; etcd: one compare-and-swap); what a request does to it is decided
here, once, by the ``decide_*`` functions (``(new holders or None for "write nothing",
outcome)``), so backends cannot disagree.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass


class BackendUnavailable(Exception):
    """The store could not be reached or did not answer in time (HTTP 503)."""


class BackendMissing(Exception):
    """The configured backend's client library is not installed."""


@dataclass(frozen=True)
class Holder:
    id: str
    acquired_at: float
    # None: the holder's lease never expires (lease_seconds = 0).
    expires_at: float | None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "acquired_at": self.acquired_at, "expires_at": self.expires_at}

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Holder:
        acquired = doc["acquired_at"]
        expires = doc.get("expires_at")
        if not isinstance(doc["id"], str) or not isinstance(acquired, int | float):
            raise ValueError(f"bad holder record: {doc!r}")
        if expires is not None and not isinstance(expires, int | float):
            raise ValueError(f"bad holder record: {doc!r}")
        return cls(id=doc["id"], acquired_at=float(acquired), expires_at=expires)


@dataclass(frozen=True)
class LockOutcome:
    granted: bool
    # The caller's holder record after the operation (None when not granted).
    holder: Holder | None
    # Holders whose lease had run out and that this operation removed.
    expired: tuple[Holder, ...] = ()
    # Live holders after the operation.
    holders: int = 0
    # Whether the store was written; a holder re-locking well inside its lease is not.
    written: bool = False

    def lease_seconds(self, now: float) -> int | None:
        if self.holder is None or self.holder.expires_at is None:
            return None
        return max(0, math.ceil(self.holder.expires_at - now - 1e-6))


@dataclass(frozen=True)
class UnlockOutcome:
    released: bool
    expired: tuple[Holder, ...] = ()
    written: bool = False


def _split_expired(
    holders: dict[str, Holder], now: float
) -> tuple[dict[str, Holder], tuple[Holder, ...]]:
    live = {k: h for k, h in holders.items() if not h.expired(now)}
    gone = tuple(h for h in holders.values() if h.expired(now))
    return live, gone


def decide_lock(
    holders: dict[str, Holder], node_id: str, slots: int, lease_seconds: int, now: float
) -> tuple[dict[str, Holder] | None, LockOutcome]:
    """RecursiveLock with leases.

    A holder re-locking renews its lease, but only once less than half of it is left: a
    re-lock early in the lease writes nothing (and reports the time left), while a client
    renewing "well before expiry" always gets a fresh full lease. Expired holders are dropped
    first so they never count against the slots. Slots only gate new holders: lowering them
    never evicts anyone.
    """
    live, gone = _split_expired(holders, now)
    expires = now + lease_seconds if lease_seconds > 0 else None
    mine = live.get(node_id)
    if mine is not None:
        stale = (mine.expires_at is None) != (expires is None) or (
            mine.expires_at is not None and mine.expires_at - now < lease_seconds / 2
        )
        if stale:
            mine = Holder(node_id, mine.acquired_at, expires)
            live[node_id] = mine
        write = stale or bool(gone)
        outcome = LockOutcome(True, mine, gone, len(live), write)
        return (live if write else None), outcome
    if len(live) >= slots:
        outcome = LockOutcome(False, None, gone, len(live), bool(gone))
        return (live if gone else None), outcome
    mine = Holder(node_id, now, expires)
    live[node_id] = mine
    return live, LockOutcome(True, mine, gone, len(live), True)


def decide_unlock(
    holders: dict[str, Holder], node_id: str, now: float
) -> tuple[dict[str, Holder] | None, UnlockOutcome]:
    """UnlockIfHeld: releasing a slot one does not hold succeeds and writes nothing."""
    live, gone = _split_expired(holders, now)
    released = live.pop(node_id, None) is not None
    write = released or bool(gone)
    return (live if write else None), UnlockOutcome(released, gone, write)


def decide_expire(
    holders: dict[str, Holder], now: float
) -> tuple[dict[str, Holder] | None, tuple[Holder, ...]]:
    live, gone = _split_expired(holders, now)
    return (live if gone else None), gone


class Backend(ABC):
    """Atomic per-group operations. Every method may raise :class:`BackendUnavailable`."""

    @abstractmethod
    async def lock(
        self, group: str, node_id: str, slots: int, lease_seconds: int, now: float
    ) -> LockOutcome: ...

    @abstractmethod
    async def unlock(self, group: str, node_id: str, now: float) -> UnlockOutcome: ...

    @abstractmethod
    async def expire(self, group: str, now: float) -> tuple[Holder, ...]:
        """Drop the group's expired holders; returns them."""

    @abstractmethod
    async def holders(self, group: str) -> list[Holder]:
        """Stored holders (expired ones included: callers filter by time)."""

    @abstractmethod
    async def all_holders(self) -> dict[str, list[Holder]]:
        """Every group that has stored holders."""

    @abstractmethod
    async def ping(self) -> None:
        """A round trip to the store (``/readyz``)."""

    @abstractmethod
    async def close(self) -> None: ...


def open_backend(spec: str, **options: str | None) -> Backend:
    """``sqlite:PATH`` or ``etcd:http://HOST:PORT,...``; ``options``: etcd TLS files, key prefix."""
    scheme, _, rest = spec.partition(":")
    if scheme == "sqlite":
        from zincati_py.fleetlock.backends.sqlite import SqliteBackend

        return SqliteBackend(rest)
    if scheme == "etcd":
        try:
            from zincati_py.fleetlock.backends.etcd import EtcdBackend
        except ImportError as exc:
            missing = exc.name or "aetcd"
            raise BackendMissing(
                f"backend 'etcd:' needs the Python package aetcd ({missing} cannot be "
                "imported): install python3-aetcd (or pip install aetcd)"
            ) from None

        return EtcdBackend(rest, **options)
    raise ValueError(f"unknown backend {scheme!r} (expected 'sqlite:PATH' or 'etcd:URL,...')")
