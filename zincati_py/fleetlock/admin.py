"""The lock server's admin API (admin token when auth is on; not part of FleetLock):

- ``GET v1/groups``, ``GET v1/groups/{group}``: slots, holders (age, lease left, target
  version), the queue, pause, cooldown, hold, halted versions, per-version counters;
- ``POST v1/admin/release``: force-release a node's slot;
- ``POST v1/admin/group`` ``{"group", "action", ...}``: ``pause`` (``reason``), ``resume``,
  ``cooldown`` (``seconds``, or null for the configured value), ``hold`` (``version``),
  ``unhold``, ``resume_version`` (``version``: lift a halt);
- ``GET v1/history?group=&node=&version=&since=&limit=``: the ledger;
- ``GET v1/rollouts?group=``: per target version, done/holding/failed/remaining, rate, ETA;
- ``GET ui``: the web view (:mod:`zincati_py.fleetlock.webui`).

Every change is audit-logged (logger ``zincati_py.fleetlock.audit``) and goes into the ledger.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from typing import Any

from aiohttp import web

from zincati_py.fleetlock import protocol
from zincati_py.fleetlock.decide import (
    Event,
    GroupState,
    Holder,
    decide_admin,
    decide_unlock,
)
from zincati_py.fleetlock.host import ServerHost
from zincati_py.fleetlock.protocol import Kind, ProtocolError

audit = logging.getLogger("zincati_py.fleetlock.audit")

ACTIONS = ("pause", "resume", "cooldown", "hold", "unhold", "resume_version")


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(doc).encode(), status=status, content_type="application/json"
    )


def holder_view(h: Holder, now: float) -> dict[str, Any]:
    return {
        "id": h.id,
        "acquired_at": h.acquired_at,
        "expires_at": h.expires_at,
        "age_seconds": round(now - h.acquired_at, 3),
        "expires_in_seconds": None if h.expires_at is None else round(h.expires_at - now, 3),
        "from_version": h.from_version,
        "to_version": h.to_version,
    }


def group_view(server: ServerHost, name: str, state: GroupState, now: float) -> dict[str, Any]:
    gc = server.config.group(name)
    live = sorted(
        (h for h in state.holders.values() if not h.expired(now)),
        key=lambda h: (h.acquired_at, h.id),
    )
    cooldown = state.cooldown_secs
    if cooldown is None:
        cooldown = gc.cooldown_secs if gc else 0.0
    return {
        "group": name,
        "configured": name in server.config.groups,
        "slots": gc.slots if gc else None,
        "lease_seconds": gc.lease_seconds if gc else None,
        "holders": [holder_view(h, now) for h in live],
        "queue": [
            {
                "id": w.id,
                "position": i + 1,
                "waiting_seconds": round(now - w.since, 3),
                "offered": w.offered is not None,
                "to_version": w.to_version,
            }
            for i, w in enumerate(state.queue)
        ],
        "paused": state.paused is not None or bool(gc and gc.paused),
        "pause": state.paused,
        "cooldown_secs": cooldown,
        "cooling_slots": sum(1 for t in state.released if now < t + cooldown),
        "hold": state.hold,
        "halted": state.halted,
        "versions": state.versions,
        "waiting_here": server.waiters.waiting(name),
    }


def add_routes(server: ServerHost, r: web.UrlDispatcher, p: str) -> None:
    async def groups(request: web.Request) -> web.Response:
        server.authorize_admin(request)
        states = await server.backend_call(server.backend.all_states())
        now = time.time()
        names = sorted(server.config.groups.keys() | states.keys())
        return _json(
            {"groups": [group_view(server, n, states.get(n, GroupState()), now) for n in names]}
        )

    async def group(request: web.Request) -> web.Response:
        server.authorize_admin(request)
        name = request.match_info["group"]
        if not protocol.GROUP_RE.fullmatch(name):
            raise ProtocolError(Kind.INVALID_BODY, f"group names match {protocol.GROUP_PATTERN}")
        state = await server.backend_call(server.backend.state(name))
        if server.config.group(name) is None and state.empty():
            raise ProtocolError(Kind.UNKNOWN_GROUP, f"unknown group {name!r}")
        return _json(group_view(server, name, state, time.time()))

    async def release(request: web.Request) -> web.Response:
        server.authorize_admin(request)
        params = await server.params(request)
        # No group check: an admin must be able to clear a group removed from the config.
        try:
            policy = server.policy(params.group)
        except ProtocolError:
            from zincati_py.fleetlock.decide import Policy

            policy = Policy(slots=0, lease_seconds=0)
        decide = functools.partial(
            decide_unlock,
            node=params.id,
            policy=policy,
            now=time.time(),
            forced=True,
            present=functools.partial(server.waiters.present, params.group),
        )
        outcome = await server.backend_call(server.backend.apply(params.group, decide))
        server.after(params.group, outcome)
        if outcome.released:
            server.metrics.admin_releases.labels(params.group).inc()
        audit.warning(
            "admin release: group=%s id=%s released=%s from=%s",
            params.group,
            params.id,
            outcome.released,
            request.remote or "unix-socket",
        )
        return _json({"released": outcome.released})

    async def control(request: web.Request) -> web.Response:
        server.authorize_admin(request)
        doc = protocol.loads(await request.read())
        if not isinstance(doc, dict):
            raise ProtocolError(Kind.INVALID_BODY, "expected a JSON object")
        name, action = doc.get("group"), doc.get("action")
        if not isinstance(name, str) or not protocol.GROUP_RE.fullmatch(name):
            raise ProtocolError(Kind.INVALID_BODY, f"'group' must match {protocol.GROUP_PATTERN}")
        if action not in ACTIONS:
            raise ProtocolError(Kind.INVALID_BODY, f"'action' must be one of {', '.join(ACTIONS)}")
        policy = server.policy(name)
        change = _change(action, doc, request.remote or "unix-socket")
        decide = functools.partial(
            decide_admin,
            policy=policy,
            now=time.time(),
            change=change,
            present=functools.partial(server.waiters.present, name),
        )
        outcome = await server.backend_call(server.backend.apply(name, decide), change=True)
        server.after(name, outcome)
        detail = {k: v for k, v in doc.items() if k not in ("group", "action")}
        audit.warning(
            "admin %s: group=%s %s changed=%s from=%s",
            action,
            name,
            json.dumps(detail, sort_keys=True),
            outcome.written,
            request.remote or "unix-socket",
        )
        state = await server.backend_call(server.backend.state(name))
        return _json(group_view(server, name, state, time.time()))

    async def history(request: web.Request) -> web.Response:
        server.authorize_admin(request)
        q = request.query
        since = _number(q.get("since"), "since")
        limit = int(_number(q.get("limit"), "limit") or 1000)
        events = await server.backend_call(
            server.backend.history(
                group=q.get("group") or None,
                node=q.get("node") or None,
                version=q.get("version") or None,
                since=since,
                limit=max(1, min(limit, 10_000)),
            )
        )
        return _json({"events": events})

    async def rollouts(request: web.Request) -> web.Response:
        server.authorize_admin(request)
        only = request.query.get("group") or None
        states = await server.backend_call(server.backend.all_states())
        now = time.time()
        out = []
        for name, state in sorted(states.items()):
            if only is not None and name != only:
                continue
            recent = await server.backend_call(
                server.backend.history(group=name, since=now - 3600, limit=10_000)
            )
            out.extend(rollout_rows(name, state, recent, now))
        return _json({"rollouts": out})

    async def ui(request: web.Request) -> web.Response:
        from zincati_py.fleetlock.webui import PAGE

        return web.Response(body=PAGE, content_type="text/html", charset="utf-8")

    r.add_get(f"{p}/{protocol.GROUPS}", groups, name="groups")
    r.add_get(f"{p}/{protocol.GROUPS}/{{group}}", group, name="group")
    r.add_post(f"{p}/{protocol.ADMIN_RELEASE}", release, name="admin-release")
    r.add_post(f"{p}/{protocol.ADMIN_GROUP}", control, name="admin-group")
    r.add_get(f"{p}/{protocol.HISTORY}", history, name="history")
    r.add_get(f"{p}/{protocol.ROLLOUTS}", rollouts, name="rollouts")
    r.add_get(f"{p}/ui", ui, name="ui")


def _number(raw: str | None, name: str) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ProtocolError(Kind.INVALID_BODY, f"query parameter {name!r} must be a number >= 0")
    return value


def _version_arg(doc: dict[str, Any]) -> str:
    version = doc.get("version")
    if not isinstance(version, str) or not version or not version.isprintable():
        raise ProtocolError(Kind.INVALID_BODY, "'version' must be a non-empty string")
    return version


def _change(action: str, doc: dict[str, Any], who: str) -> Any:
    """The state edit of an admin action: returns its ledger event, None if nothing changed."""
    now = time.time()
    version = _version_arg(doc) if action in ("hold", "resume_version") else None
    seconds = doc.get("seconds")
    bad_seconds = not isinstance(seconds, int | float) or isinstance(seconds, bool)
    if action == "cooldown" and seconds is not None and (bad_seconds or not 0 <= seconds <= 86400):
        raise ProtocolError(Kind.INVALID_BODY, "'seconds' must be 0..86400 or null")
    reason = doc.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise ProtocolError(Kind.INVALID_BODY, "'reason' must be a string (<= 500 characters)")

    def change(state: GroupState) -> Event | None:
        detail: dict[str, Any] = {"by": who}
        if action == "pause":
            if state.paused is not None:
                return None
            state.paused = {"reason": reason, "at": now}
            detail["reason"] = reason
        elif action == "resume":
            if state.paused is None:
                return None
            state.paused = None
        elif action == "cooldown":
            if state.cooldown_secs == seconds:
                return None
            state.cooldown_secs = None if seconds is None else float(seconds)
            detail["seconds"] = seconds
        elif action == "hold":
            if state.hold == version:
                return None
            state.hold = version
        elif action == "unhold":
            if state.hold is None:
                return None
            state.hold = None
        elif action == "resume_version":
            assert version is not None
            if state.halted.pop(version, None) is None:
                return None
            # Counting starts again: the failures that halted it are in the ledger.
            counts = state.versions.get(version, {})
            counts["failed"] = counts["expired"] = 0
        return Event(action, now, to_version=version, detail=detail)

    return change


def rollout_rows(
    group: str, state: GroupState, recent: list[dict[str, Any]], now: float
) -> list[dict[str, Any]]:
    """Per target version: done (healthy returns), holding, failed (failures + holders that
    never came back), remaining (queued towards it), rate (done per hour over the last hour)
    and ETA."""
    versions = set(state.versions) | {h.to_version for h in state.holders.values()}
    versions |= {w.to_version for w in state.queue}
    rows = []
    for version in sorted(v for v in versions if v is not None):
        counts = state.versions.get(version, {})
        holding = sum(1 for h in state.holders.values() if h.to_version == version)
        remaining = sum(1 for w in state.queue if w.to_version == version)
        done_recent = [
            e
            for e in recent
            if e.get("kind") == "release"
            and e.get("to_version") == version
            and e.get("health") == "healthy"
        ]
        span = (now - min(e["at"] for e in done_recent)) if done_recent else 0.0
        rate = len(done_recent) / span * 3600 if span > 0 else None
        rows.append(
            {
                "group": group,
                "version": version,
                "grants": counts.get("grants", 0),
                "done": counts.get("healthy", 0),
                "holding": holding,
                "failed": counts.get("failed", 0) + counts.get("expired", 0),
                "remaining": remaining,
                "rate_per_hour": None if rate is None else round(rate, 1),
                "eta_seconds": None if not rate else round((remaining + holding) / rate * 3600, 1),
                "halted": version in state.halted,
                "held": state.hold is not None and state.hold != version,
            }
        )
    return rows
