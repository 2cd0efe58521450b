"""Storage for groups' states: the interface every backend implements.

A backend loads and stores one group's :class:`~zincati_py.fleetlock.decide.GroupState`
atomically (SQLite: one transaction; etcd: one compare-and-swap), together with the ledger
events of that change; what a request does to the state is decided in
:mod:`zincati_py.fleetlock.decide`, once, so backends cannot disagree.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from zincati_py.fleetlock.decide import (
    Event,
    GroupState,
    Holder,
    LockOutcome,
    UnlockOutcome,
)

__all__ = [
    "Backend",
    "BackendMissing",
    "BackendUnavailable",
    "Decide",
    "Event",
    "GroupState",
    "Holder",
    "LedgerQuery",
    "LockOutcome",
    "UnlockOutcome",
    "events_of",
    "open_backend",
]

T = TypeVar("T")
# state -> (new state, or None for "write nothing"; the caller's result, with .events)
Decide = Callable[[GroupState], tuple[GroupState | None, T]]


class BackendUnavailable(Exception):
    """The store could not be reached or did not answer in time (HTTP 503)."""


class BackendMissing(Exception):
    """The configured backend's client library is not installed."""


def events_of(result: Any) -> tuple[Event, ...]:
    events = getattr(result, "events", ())
    return tuple(events) if isinstance(events, tuple) else ()


@dataclass(frozen=True)
class LedgerQuery:
    """Which ledger events ``Backend.history`` returns: the newest ``limit`` matching."""

    group: str | None = None
    node: str | None = None
    version: str | None = None
    since: float | None = None
    limit: int = 1000

    def matches(self, doc: dict[str, Any]) -> bool:
        return (
            (self.group is None or doc.get("group") == self.group)
            and (self.node is None or doc.get("node") == self.node)
            and (
                self.version is None
                or self.version in (doc.get("to_version"), doc.get("from_version"))
            )
            and (self.since is None or doc.get("at", 0) >= self.since)
        )


class Backend(ABC):
    """Atomic per-group changes. Every method may raise :class:`BackendUnavailable`."""

    @abstractmethod
    async def apply(self, group: str, decide: Decide[T]) -> T:
        """Apply ``decide`` to the group's state atomically; store its events with it."""

    @abstractmethod
    async def state(self, group: str) -> GroupState:
        """The group's stored state (expired holders included: callers filter by time)."""

    @abstractmethod
    async def all_states(self) -> dict[str, GroupState]:
        """Every group that has a stored state."""

    async def history(
        self,
        *,
        group: str | None = None,
        node: str | None = None,
        version: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Ledger events, oldest first (the newest ``limit`` of those matching)."""
        return await self._history(LedgerQuery(group, node, version, since, limit))

    @abstractmethod
    async def _history(self, query: LedgerQuery) -> list[dict[str, Any]]:
        """What :meth:`history` returns, for one query."""

    @abstractmethod
    async def ping(self) -> None:
        """A round trip to the store (``/readyz``)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def holders(self, group: str) -> list[Holder]:
        found = (await self.state(group)).holders
        return sorted(found.values(), key=lambda h: (h.acquired_at, h.id))

    async def all_holders(self) -> dict[str, list[Holder]]:
        return {
            g: sorted(s.holders.values(), key=lambda h: (h.acquired_at, h.id))
            for g, s in (await self.all_states()).items()
            if s.holders
        }


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
