"""What each request does to a group's state, decided once for every backend.

A group's state (:class:`GroupState`) is its holders plus what fleet control adds: the FIFO
queue of nodes waiting for a slot, the release times still cooling down, the runtime pause
and cooldown, per-version rollout counters, halted versions and a version hold. Backends
load and store a whole state atomically (SQLite: one transaction; etcd: one
compare-and-swap) together with the ledger events a decision emits. The ``decide_*``
functions return ``(new state or None for "write nothing", result)``.

Granting, in order (:func:`decide_lock`):

1. expired holders and queue entries of nodes that stopped asking are dropped;
2. a holder asking again renews its lease (only once less than half is left);
3. a paused group, a halted target version or a target other than the held one is refused;
4. ``free`` = slots - holders - slots still cooling down after a release;
5. the queue, in order, is offered the free slots: an entry keeps its offer for ``grace``
   seconds (long enough for a waiting client, bounded so that a head polling every five
   minutes cannot idle a slot); an entry whose offer lapsed keeps its place but blocks
   nobody until it asks again;
6. the requester is granted if it was offered a slot or a free slot is left over, else it
   joins (or stays in) the queue and is refused.

Holders never exceed slots: a grant needs ``free > 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from zincati_py.fleetlock.state import (
    Event,
    GroupState,
    Holder,
    LockOutcome,
    LockRequest,
    Policy,
    TickOutcome,
    UnlockOutcome,
    Waiter,
)

__all__ = [
    "Event",
    "GroupState",
    "Holder",
    "LockOutcome",
    "LockRequest",
    "Policy",
    "TickOutcome",
    "UnlockOutcome",
    "Waiter",
    "decide_admin",
    "decide_lock",
    "decide_tick",
    "decide_unlock",
]

T = TypeVar("T")


def _cooldown(state: GroupState, policy: Policy) -> float:
    return policy.cooldown_secs if state.cooldown_secs is None else state.cooldown_secs


def _count(state: GroupState, version: str | None, key: str) -> None:
    if version is None:
        return
    counts = state.versions.setdefault(version, {})
    counts[key] = counts.get(key, 0) + 1


def _check_halt(
    state: GroupState, policy: Policy, version: str | None, now: float, events: list[Event]
) -> None:
    if version is None or policy.max_failures <= 0 or version in state.halted:
        return
    counts = state.versions.get(version, {})
    failures = counts.get("failed", 0) + counts.get("expired", 0)
    if failures >= policy.max_failures:
        state.halted[version] = {"at": now, "failures": failures}
        events.append(Event("halt", now, to_version=version, detail={"failures": failures}))


def _release(
    state: GroupState, policy: Policy, holder: Holder, now: float, kind: str, events: list[Event]
) -> None:
    del state.holders[holder.id]
    if _cooldown(state, policy) > 0:
        state.released.append(now)
    detail: dict[str, Any] = {"held_secs": round(now - holder.acquired_at, 3)}
    events.append(Event(kind, now, holder.id, holder.from_version, holder.to_version, detail))


def _housekeep(state: GroupState, policy: Policy, now: float, events: list[Event]) -> bool:
    """Drop expired holders (counted as never back), stale queue entries and cooldowns
    that ran out. Returns whether anything changed."""
    changed = False
    for holder in [h for h in state.holders.values() if h.expired(now)]:
        _release(state, policy, holder, now, "expiry", events)
        _count(state, holder.to_version, "expired")
        _check_halt(state, policy, holder.to_version, now, events)
        changed = True
    queue = [w for w in state.queue if now - w.seen < policy.queue_ttl_secs]
    if len(queue) != len(state.queue):
        for w in state.queue:
            if now - w.seen >= policy.queue_ttl_secs:
                events.append(Event("queue_expiry", now, w.id, to_version=w.to_version))
        state.queue, changed = queue, True
    cooldown = _cooldown(state, policy)
    released = [t for t in state.released if now < t + cooldown]
    if len(released) != len(state.released):
        state.released, changed = released, True
    return changed


def _free(state: GroupState, policy: Policy, now: float) -> int:
    if state.paused is not None or policy.paused:
        return 0
    return policy.slots - len(state.holders) - len(state.released)


def _offer(state: GroupState, policy: Policy, now: float) -> tuple[tuple[str, ...], int, bool]:
    """Hold free slots for the queue's head entries: ``(offered ids, slots left over,
    whether an entry's offer time was set)``."""
    free = max(0, _free(state, policy, now))
    offered: list[str] = []
    changed = False
    for i, w in enumerate(state.queue):
        if len(offered) >= free:
            break
        if w.offered is None:
            state.queue[i] = w._replace(offered=now)
            changed = True
        elif now - w.offered >= policy.grace_secs:
            continue  # lapsed: keeps its place, blocks nobody
        offered.append(w.id)
    return tuple(offered), free - len(offered), changed


# Nodes whose request waits on this server: a set, or a function asked at decision time (a
# decision may run a little after the request that made it, batched with others).
Present = frozenset[str] | Callable[[], frozenset[str]]


def _handoff(
    state: GroupState,
    policy: Policy,
    now: float,
    present: Present,
    events: list[Event],
    exclude: str | None = None,
) -> tuple[tuple[str, ...], tuple[Holder, ...], bool]:
    """Offer free slots to the queue (:func:`_offer`), and grant them at once to offered
    nodes whose request is waiting on this server right now (``present``): the slot passes
    to the head in the same write that freed it. Returns ``(offered, granted, changed)``."""
    offered, _, changed = _offer(state, policy, now)
    granted: list[Holder] = []
    here: frozenset[str] = frozenset()
    if offered:
        here = (present() if callable(present) else present) - {exclude}
    for node in offered:
        if node not in here:
            continue
        w = next(w for w in state.queue if w.id == node)
        state.queue = [q for q in state.queue if q.id != node]
        expires = now + policy.lease_seconds if policy.lease_seconds > 0 else None
        holder = Holder(node, now, expires, None, w.to_version)
        state.holders[node] = holder
        _count(state, w.to_version, "grants")
        events.append(
            Event("grant", now, node, None, w.to_version, {"waited_secs": round(now - w.since, 3)})
        )
        granted.append(holder)
    if granted:
        changed = True
        offered = tuple(n for n in offered if n not in here)
    return offered, tuple(granted), changed


def _next_change(state: GroupState, policy: Policy, now: float) -> float | None:
    """When time alone next changes who may be granted (an offer that lapsed already
    changes nothing more: a past time would have the server re-evaluate in a loop)."""
    times = [h.expires_at for h in state.holders.values() if h.expires_at is not None]
    cooldown = _cooldown(state, policy)
    times += [t + cooldown for t in state.released]
    times += [
        w.offered + policy.grace_secs
        for w in state.queue
        if w.offered is not None and w.offered + policy.grace_secs > now
    ]
    return min(times) if times else None


def decide_lock(
    state: GroupState,
    request: LockRequest,
    policy: Policy,
    lease_seconds: int,
    now: float,
    present: Present = frozenset(),
) -> tuple[GroupState | None, LockOutcome]:
    new = state.copy()
    events: list[Event] = []
    changed = _housekeep(new, policy, now, events)
    gone = tuple(h for h in state.holders.values() if h.expired(now))
    node = request.node
    expires = now + lease_seconds if lease_seconds > 0 else None
    mine = new.holders.get(node)

    def done(outcome: LockOutcome) -> tuple[GroupState | None, LockOutcome]:
        offered, handed, offer_changed = _handoff(new, policy, now, present, events, node)
        write = changed or offer_changed or outcome.written
        # Built, not dataclasses.replace()d: this runs for every request.
        outcome = LockOutcome(
            outcome.granted,
            outcome.holder,
            expired=gone,
            holders=len(new.holders),
            written=write,
            refusal=outcome.refusal,
            position=outcome.position,
            queue_length=len(new.queue),
            offered=offered,
            next_change=_next_change(new, policy, now),
            events=tuple(events),
            handed=handed,
        )
        return (new if write else None), outcome

    if mine is not None:
        stale = (mine.expires_at is None) != (expires is None) or (
            mine.expires_at is not None and mine.expires_at - now < lease_seconds / 2
        )
        if stale:
            mine = replace(mine, expires_at=expires)
            new.holders[node] = mine
        return done(LockOutcome(True, mine, written=stale))

    refusal = None
    if new.paused is not None or policy.paused:
        refusal = "group_paused"
    elif request.to_version is not None and request.to_version in new.halted:
        refusal = "rollout_halted"
    elif request.to_version is not None and new.hold not in (None, request.to_version):
        refusal = "version_held"
    if refusal in ("rollout_halted", "version_held"):
        before = len(new.queue)
        new.queue = [w for w in new.queue if w.id != node]
        return done(LockOutcome(False, None, refusal=refusal, written=len(new.queue) != before))

    # Asking again: the entry is live, and an offer that lapsed while it was away restarts.
    index = next((i for i, w in enumerate(new.queue) if w.id == node), None)
    wrote = False
    if index is not None:
        w = new.queue[index]
        refreshed = w._replace(
            seen=now if now - w.seen > policy.queue_ttl_secs / 4 else w.seen,
            offered=None
            if w.offered is not None and now - w.offered >= policy.grace_secs
            else w.offered,
            to_version=request.to_version,
        )
        if refreshed != w:
            new.queue[index], wrote = refreshed, True
    if refusal is None:
        offered, left, offer_changed = _offer(new, policy, now)
        wrote = wrote or offer_changed
        if node in offered or left > 0:
            new.queue = [w for w in new.queue if w.id != node]
            mine = Holder(node, now, expires, request.from_version, request.to_version)
            new.holders[node] = mine
            _count(new, request.to_version, "grants")
            waited = 0.0 if index is None else now - state.queue[index].since
            events.append(
                Event(
                    "grant",
                    now,
                    node,
                    request.from_version,
                    request.to_version,
                    {"waited_secs": round(waited, 3)},
                )
            )
            return done(LockOutcome(True, mine, written=True))
        refusal = "group_full"
    if index is None:
        new.queue.append(Waiter(node, now, now, None, request.to_version))
        index, wrote = len(new.queue) - 1, True
    position = next(i for i, w in enumerate(new.queue) if w.id == node) + 1
    return done(LockOutcome(False, None, refusal=refusal, position=position, written=wrote))


def decide_unlock(
    state: GroupState,
    node: str,
    policy: Policy,
    now: float,
    *,
    forced: bool = False,
    booted_version: str | None = None,
    health: str | None = None,
    failed_version: str | None = None,
    present: Present = frozenset(),
) -> tuple[GroupState | None, UnlockOutcome]:
    """UnlockIfHeld: releasing a slot one does not hold succeeds (and leaves the queue)."""
    new = state.copy()
    events: list[Event] = []
    changed = _housekeep(new, policy, now, events)
    gone = tuple(h for h in state.holders.values() if h.expired(now))
    holder = new.holders.get(node)
    if holder is not None:
        _release(new, policy, holder, now, "forced_release" if forced else "release", events)
        # The target: as announced at pre-reboot, else what the report says (our agent
        # reports the version that failed, or the healthy one it booted).
        version = holder.to_version or (
            failed_version if health == "failed" else booted_version if health else None
        )
        if not forced and version is not None and health is not None:
            failed = health != "healthy" or (
                booted_version is not None and booted_version != version
            )
            _count(new, version, "failed" if failed else "healthy")
            if failed:
                events.append(
                    Event(
                        "failure",
                        now,
                        node,
                        holder.from_version,
                        version,
                        {"booted_version": booted_version, "health": health},
                    )
                )
                _check_halt(new, policy, version, now, events)
            else:
                events[-1].detail["downtime_secs"] = round(now - holder.acquired_at, 3)
                events[-1].detail["health"] = health
        changed = True
    before = len(new.queue)
    new.queue = [w for w in new.queue if w.id != node]
    changed = changed or len(new.queue) != before
    offered, handed, offer_changed = _handoff(new, policy, now, present, events, node)
    write = changed or offer_changed
    outcome = UnlockOutcome(
        holder is not None,
        gone,
        write,
        offered,
        _next_change(new, policy, now),
        tuple(events),
        holder,
        handed,
    )
    return (new if write else None), outcome


def decide_tick(
    state: GroupState, policy: Policy, now: float, present: Present = frozenset()
) -> tuple[GroupState | None, TickOutcome]:
    new = state.copy()
    events: list[Event] = []
    changed = _housekeep(new, policy, now, events)
    gone = tuple(h for h in state.holders.values() if h.expired(now))
    offered, handed, offer_changed = _handoff(new, policy, now, present, events)
    write = changed or offer_changed
    outcome = TickOutcome(
        gone, offered, _next_change(new, policy, now), tuple(events), write, handed
    )
    return (new if write else None), outcome


def decide_admin(
    state: GroupState,
    policy: Policy,
    now: float,
    change: Callable[[GroupState], Event | None],
    present: Present = frozenset(),
) -> tuple[GroupState | None, TickOutcome]:
    """An admin change (pause, resume, cooldown, hold, halt resume): ``change`` edits the
    state and returns its ledger event (None: nothing changed)."""
    new = state.copy()
    event = change(new)
    if event is None:
        return decide_tick(state, policy, now, present)
    events: list[Event] = [event]
    _housekeep(new, policy, now, events)
    gone = tuple(h for h in state.holders.values() if h.expired(now))
    offered, handed, _ = _handoff(new, policy, now, present, events)
    return new, TickOutcome(
        gone, offered, _next_change(new, policy, now), tuple(events), True, handed
    )
