r"""A group's stored state and what decisions report (see :mod:`zincati_py.fleetlock.decide`).

Everything here is serialisable: backends store a :class:`GroupState` as JSON (etcd) or as
holder rows plus a JSON document (SQLite); ledger :class:`Event`\ s are JSON too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Holder:
    id: str
    acquired_at: float
    # None: the holder's lease never expires (lease_seconds = 0).
    expires_at: float | None
    from_version: str | None = None
    to_version: str | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "id": self.id,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
        }
        if self.from_version is not None:
            doc["from_version"] = self.from_version
        if self.to_version is not None:
            doc["to_version"] = self.to_version
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Holder:
        acquired = doc["acquired_at"]
        expires = doc.get("expires_at")
        if not isinstance(doc["id"], str) or not isinstance(acquired, int | float):
            raise ValueError(f"bad holder record: {doc!r}")
        if expires is not None and not isinstance(expires, int | float):
            raise ValueError(f"bad holder record: {doc!r}")
        return cls(
            id=doc["id"],
            acquired_at=float(acquired),
            expires_at=expires,
            from_version=_opt_str(doc.get("from_version")),
            to_version=_opt_str(doc.get("to_version")),
        )


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class Waiter(NamedTuple):
    """A queue entry: ``since`` joined, ``seen`` last asked, ``offered`` since when a free
    slot is held for it (None: none yet). A tuple: a queue of thousands parses fast."""

    id: str
    since: float
    seen: float
    offered: float | None = None
    to_version: str | None = None

    def to_json(self) -> list[Any]:
        return list(self)

    @classmethod
    def from_json(cls, doc: list[Any]) -> Waiter:
        return cls(*doc[:5])


@dataclass(frozen=True)
class Policy:
    """A group's configured behaviour (from the server config)."""

    slots: int
    lease_seconds: int
    cooldown_secs: float = 0.0
    grace_secs: float = 30.0
    queue_ttl_secs: float = 900.0
    paused: bool = False
    max_failures: int = 0  # 0: the circuit breaker is off


@dataclass(frozen=True)
class Event:
    """A ledger entry: grant, release, expiry, forced_release, failure, halt, pause, ..."""

    kind: str
    at: float
    node: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self, group: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"at": self.at, "group": group, "kind": self.kind}
        for key in ("node", "from_version", "to_version"):
            value = getattr(self, key)
            if value is not None:
                doc[key] = value
        doc.update(self.detail)
        return doc


@dataclass
class GroupState:
    holders: dict[str, Holder] = field(default_factory=dict)
    queue: list[Waiter] = field(default_factory=list)
    # Release times whose cooldown may still run (a slot freed at t is usable at t+cooldown).
    released: list[float] = field(default_factory=list)
    paused: dict[str, Any] | None = None
    cooldown_secs: float | None = None  # runtime override of the configured cooldown
    hold: str | None = None  # only this target version may be granted (our clients)
    halted: dict[str, dict[str, Any]] = field(default_factory=dict)
    # target version -> {"grants", "healthy", "failed", "expired"}
    versions: dict[str, dict[str, int]] = field(default_factory=dict)

    def copy(self) -> GroupState:
        return GroupState(
            dict(self.holders),
            list(self.queue),
            list(self.released),
            None if self.paused is None else dict(self.paused),
            self.cooldown_secs,
            self.hold,
            {k: dict(v) for k, v in self.halted.items()},
            {k: dict(v) for k, v in self.versions.items()},
        )

    def extras_json(self, *, queue: bool = True) -> dict[str, Any]:
        """Everything but the holders (SQLite keeps holders and the queue in rows)."""
        doc: dict[str, Any] = {}
        if self.queue and queue:
            doc["queue"] = [w.to_json() for w in self.queue]
        if self.released:
            doc["released"] = self.released
        if self.paused is not None:
            doc["paused"] = self.paused
        if self.cooldown_secs is not None:
            doc["cooldown_secs"] = self.cooldown_secs
        if self.hold is not None:
            doc["hold"] = self.hold
        if self.halted:
            doc["halted"] = self.halted
        if self.versions:
            doc["versions"] = self.versions
        return doc

    def to_json(self) -> dict[str, Any]:
        return {"holders": [h.to_json() for h in self.holders.values()], **self.extras_json()}

    @classmethod
    def from_json(
        cls,
        doc: dict[str, Any],
        holders: dict[str, Holder] | None = None,
        queue: list[Waiter] | None = None,
    ) -> GroupState:
        if holders is None:
            holders = {h["id"]: Holder.from_json(h) for h in doc.get("holders", [])}
        return cls(
            holders=holders,
            queue=queue
            if queue is not None
            else [Waiter.from_json(w) for w in doc.get("queue", [])],
            released=[float(t) for t in doc.get("released", [])],
            paused=doc.get("paused"),
            cooldown_secs=doc.get("cooldown_secs"),
            hold=doc.get("hold"),
            halted=dict(doc.get("halted", {})),
            versions={k: dict(v) for k, v in doc.get("versions", {}).items()},
        )

    def empty(self) -> bool:
        return not self.holders and not self.extras_json()


@dataclass(frozen=True)
class LockRequest:
    node: str
    from_version: str | None = None
    to_version: str | None = None


@dataclass(frozen=True)
class LockOutcome:
    granted: bool
    holder: Holder | None
    expired: tuple[Holder, ...] = ()
    holders: int = 0
    written: bool = False
    # Refusals: "group_full" (queued), "group_paused", "rollout_halted", "version_held".
    refusal: str | None = None
    position: int | None = None  # 1-based place in the queue when refused as full
    queue_length: int = 0
    offered: tuple[str, ...] = ()
    next_change: float | None = None
    events: tuple[Event, ...] = ()
    handed: tuple[Holder, ...] = ()

    def lease_seconds(self, now: float) -> int | None:
        if self.holder is None or self.holder.expires_at is None:
            return None
        return max(0, math.ceil(self.holder.expires_at - now - 1e-6))


@dataclass(frozen=True)
class UnlockOutcome:
    released: bool
    expired: tuple[Holder, ...] = ()
    written: bool = False
    offered: tuple[str, ...] = ()
    next_change: float | None = None
    events: tuple[Event, ...] = ()
    holder: Holder | None = None
    handed: tuple[Holder, ...] = ()


@dataclass(frozen=True)
class TickOutcome:
    """A time-driven re-evaluation (sweeper, timers, admin changes)."""

    expired: tuple[Holder, ...] = ()
    offered: tuple[str, ...] = ()
    next_change: float | None = None
    events: tuple[Event, ...] = ()
    written: bool = False
    handed: tuple[Holder, ...] = ()
