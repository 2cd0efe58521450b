"""``/run/zincati-py/status.json``: what the agent is doing, replaced atomically on change.

Readers (``zincati-py status``, monitoring, the demo) open the file without talking to the
agent; ``os.replace`` guarantees they see a complete document. Schema (``schema`` = 1)::

    schema, pid, bus_name, updated_at         document meta (times are ISO 8601 UTC)
    state, state_since                        machine state (see agent.machine.State)
    action                                    none | report steady | check | finalize |
                                              await reboot
    reason, next, recheck_at                  why it is there / waits, what comes next, when
                                              it re-evaluates without an event (null: events)
    booted, staged                            {checksum, version} or null
    updates_enabled                           updates.enabled in force
    last_check, last_check_result             last completed update check
    reboot_requested, postponed, staged_by_us persisted decisions (see agent.persist; ``at``
                                              and ``since`` are Unix times)
    strategy                                  Strategy.status() of the strategy in force
    lock_state                                "held" | "not held" (fleet lock) | "none"
    next_window                               next maintenance window start, or null
    config {valid, in_force, loaded_at, fragments[], problems[]}
    health                                    {phase, release, from_release, started,
                                              deadline, reason, verdict, restarts, checks[],
                                              pre_reboot[], pre_reboot_reason, rolled_back[],
                                              problems[]}: see zincati_py.health.gate
    cincinnati                                null (updates from the deployment's origin) or
                                              {source, last_fetch, last_error, target, reason,
                                              deadend, deadend_reason, denylist[]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zincati_py.fsutil import atomic_write
from zincati_py.timefmt import iso_ts

SCHEMA = 1


iso = iso_ts  # (its callers' name)


def write(path: Path, doc: dict[str, Any]) -> None:
    # /run is volatile: atomic for readers, but no fsync (it would cost a disk flush per change).
    atomic_write(path, json.dumps(doc, indent=2, sort_keys=True) + "\n", durable=False)


def read(path: Path) -> dict[str, Any]:
    """The document; raises FileNotFoundError, or ValueError if it is not a status document."""
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a zincati-py status document (schema {SCHEMA})")
    return doc


def _dep(d: dict[str, Any] | None) -> str:
    if not d:
        return "none"
    short = str(d.get("checksum", ""))[:12]
    return f"{d['version']} ({short})" if d.get("version") else short


def describe(doc: dict[str, Any]) -> str:
    """Human-readable summary for ``zincati-py status``."""
    lines = [
        f"State:      {doc.get('state')} (since {doc.get('state_since')})",
        f"Doing:      {doc.get('reason')}",
        f"Next:       {doc.get('next')}",
    ]
    if doc.get("recheck_at"):
        lines.append(f"Re-check:   {doc['recheck_at']}")
    lines += [
        f"Booted:     {_dep(doc.get('booted'))}",
        f"Staged:     {_dep(doc.get('staged'))}",
        f"Updates:    {'enabled' if doc.get('updates_enabled') else 'disabled'}",
        f"Last check: {doc.get('last_check') or 'never'}"
        + (f" ({doc['last_check_result']})" if doc.get("last_check_result") else ""),
    ]
    graph = doc.get("cincinnati")
    if graph:
        lines.append(
            f"Graph:      {graph.get('source')} (last fetched {graph.get('last_fetch') or 'never'})"
        )
        target = graph.get("target")
        if graph.get("last_error"):
            lines.append(f"  last check failed: {graph['last_error']}")
        elif graph.get("reason"):
            lines.append(
                f"  {'target ' + target['version'] if target else 'no update'}: {graph['reason']}"
            )
        if graph.get("deadend"):
            lines.append(f"  DEAD-END: {graph.get('deadend_reason') or 'no reason given'}")
        if graph.get("denylist"):
            lines.append(f"  deny-listed: {', '.join(c[:12] for c in graph['denylist'])}")
    health = doc.get("health") or {}
    if health.get("phase") or health.get("pre_reboot_reason"):
        lines.append(
            f"Health:     {health.get('phase') or 'no gate'}"
            + (f" {health['release']}" if health.get("release") else "")
            + (f": {health['reason']}" if health.get("reason") else "")
        )
        for check in [*(health.get("checks") or ()), *(health.get("pre_reboot") or ())]:
            verdict = "ok" if check["ok"] else ("waiting" if check["pending"] else "FAILED")
            lines.append(f"  {check['kind']} {check['name']}: {verdict} ({check['detail']})")
            if check.get("output") and not check["ok"]:
                lines += [f"    | {line}" for line in check["output"].splitlines()[-5:]]
        if health.get("rolled_back"):
            lines.append(f"  rolled back once: {', '.join(c[:12] for c in health['rolled_back'])}")
    strat = doc.get("strategy") or {}
    if strat:
        lines.append(f"Strategy:   {strat.get('name')}: {strat.get('reason')}")
    if doc.get("lock_state") not in (None, "none"):
        lines.append(f"Lock:       {doc['lock_state']}")
    if doc.get("next_window"):
        lines.append(f"Window:     {doc['next_window']}")
    req = doc.get("reboot_requested")
    if req:
        lines.append(f"Reboot:     requested into {_dep(req)} at {iso(req.get('at'))}")
    cfg = doc.get("config") or {}
    valid = cfg.get("valid")
    lines.append(
        f"Config:     {'valid' if valid else 'INVALID'}, in force: {cfg.get('in_force')}"
        f" (loaded {cfg.get('loaded_at')})"
    )
    for problem in cfg.get("problems") or ():
        lines.append(f"  {problem}")
    lines.append(f"Agent:      pid {doc.get('pid')}, updated {doc.get('updated_at')}")
    return "\n".join(lines)
