"""Prometheus metrics of one FleetLock server, on its own registry (never the global one, so
several servers in one process, as in tests and benchmarks, don't collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from zincati_py.fleetlock.decide import GroupState


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fleetlock_requests",
            "Requests by endpoint and outcome kind ('ok' or the error kind).",
            ["endpoint", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "fleetlock_request_duration_seconds",
            "Request handling time by endpoint.",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.lease_expiries = Counter(
            "fleetlock_lease_expiries",
            "Holders that lost their slot because their lease ran out.",
            ["group"],
            registry=r,
        )
        self.admin_releases = Counter(
            "fleetlock_admin_releases", "Slots force-released by an admin.", ["group"], registry=r
        )
        self.slots = Gauge(
            "fleetlock_group_slots", "Reboot slots per group.", ["group"], registry=r
        )
        self.holders = Gauge(
            "fleetlock_group_holders", "Current slot holders per group.", ["group"], registry=r
        )
        self.oldest_age = Gauge(
            "fleetlock_group_oldest_holder_age_seconds",
            "Age of the group's oldest slot holder (0 when none).",
            ["group"],
            registry=r,
        )
        self.grants = Counter("fleetlock_grants", "Reboot slots granted.", ["group"], registry=r)
        self.queue_wait = Histogram(
            "fleetlock_queue_wait_seconds",
            "Time from joining the queue to the grant.",
            ["group"],
            buckets=(0, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        self.failures = Counter(
            "fleetlock_update_failures",
            "Failed updates reported at steady-state, by target version.",
            ["group", "version"],
            registry=r,
        )
        self.queue_length = Gauge(
            "fleetlock_queue_length", "Nodes waiting in the group's queue.", ["group"], registry=r
        )
        self.queue_oldest = Gauge(
            "fleetlock_queue_oldest_wait_seconds",
            "How long the queue's head has waited (0 when empty).",
            ["group"],
            registry=r,
        )
        self.paused = Gauge(
            "fleetlock_group_paused", "1 if the group is paused.", ["group"], registry=r
        )
        self.halted = Gauge(
            "fleetlock_version_halted",
            "1 for a target version whose rollout the circuit breaker halted.",
            ["group", "version"],
            registry=r,
        )
        self.backend_up = Gauge(
            "fleetlock_backend_up", "1 if the last backend read for /metrics succeeded.", registry=r
        )
        # Labelled children kept: ``labels()`` per request costs a lock and a tuple; the
        # labels on the request path (endpoints, kinds, groups) are a short fixed list.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(self, endpoint: str, kind: str, seconds: float) -> None:
        """Count one answered request."""
        self._child(self.requests, endpoint, kind).inc()
        self._child(self.latency, endpoint).observe(seconds)

    def granted(self, group: str, waited_secs: float) -> None:
        self._child(self.grants, group).inc()
        self._child(self.queue_wait, group).observe(waited_secs)

    def set_groups(
        self,
        slots: dict[str, int | None],
        states: dict[str, GroupState],
        paused: set[str],
        now: float,
    ) -> None:
        """Replace the per-group gauges with a fresh snapshot (groups come and go)."""
        gauges = (self.slots, self.holders, self.oldest_age, self.queue_length)
        for gauge in (*gauges, self.queue_oldest, self.paused, self.halted):
            gauge.clear()
        for group in sorted(slots.keys() | states.keys()):
            state = states.get(group, GroupState())
            live = [h for h in state.holders.values() if not h.expired(now)]
            count = slots.get(group)
            if count is not None:
                self.slots.labels(group).set(count)
            self.holders.labels(group).set(len(live))
            oldest = min((h.acquired_at for h in live), default=now)
            self.oldest_age.labels(group).set(max(0.0, now - oldest))
            self.queue_length.labels(group).set(len(state.queue))
            head = min((w.since for w in state.queue), default=now)
            self.queue_oldest.labels(group).set(max(0.0, now - head))
            self.paused.labels(group).set(int(state.paused is not None or group in paused))
            for version in state.halted:
                self.halted.labels(group, version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
