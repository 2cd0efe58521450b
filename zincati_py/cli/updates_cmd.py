"""``zincati-py updates [--json]``: plan locally what the agent's next update check would do.

Fetches the Cincinnati graph exactly as the agent would (same URL, query and rules) and prints
the booted release, whether it is a dead-end and why, every edge target with its age index, the
chosen target and why the others were dropped (deny-list, downgrade, older). Nothing is staged,
no MOTD is written.

The booted release comes from rpm-ostree (D-Bus) unless ``--booted-version`` or
``--booted-checksum`` is given: then "what would a node on X do?" is answered without it
(a missing checksum or version is looked up in the graph; ``--stream`` is required then, as
the stream is the booted deployment's). ``--stream``, ``--basearch``, ``--group``,
``--platform`` and ``--url`` override the node's own values.

Exit status: 0 with a target, 0 with "none" when there is no update, 64 on bad usage, 65 on a
malformed graph or an invalid ``base_url``, 69 when the graph (or rpm-ostree) cannot be
reached. With ``--json`` an error is also a JSON document on stdout:
``{"error": MESSAGE, "exit_status": N}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any

from zincati_py.cli import CliError, add_root_argument, print_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "updates",
        help="plan locally: the Cincinnati graph's answer for this node (or another)",
        description="Fetch the update graph as the agent would and show its decision.",
    )
    add_root_argument(p)
    p.add_argument("--json", action="store_true", help="print the plan as one JSON document")
    p.add_argument("--url", default=None, help="graph base URL (default: [cincinnati] base_url)")
    p.add_argument("--booted-version", default=None, help="plan for a node booted on VERSION")
    p.add_argument("--booted-checksum", default=None, help="plan for a node booted on CHECKSUM")
    p.add_argument("--stream", default=None, help="the node's stream")
    p.add_argument("--basearch", default=None, help="the node's architecture (default: uname)")
    p.add_argument("--group", default=None, help="the node's group (default: identity.group)")
    p.add_argument("--platform", default=None, help="ignition.platform.id (default: cmdline)")
    p.add_argument(
        "--system-bus",
        metavar="ADDRESS",
        default=None,
        help="system bus address for rpm-ostree (default: $DBUS_SYSTEM_BUS_ADDRESS)",
    )
    p.add_argument("--timeout", type=_seconds, default=30.0, help="HTTP timeout in seconds (> 0)")
    p.set_defaults(func=cmd_updates)


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (``nan``, ``inf``, 0 and negatives refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def cmd_updates(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request

    try:
        return asyncio.run(_plan(args))
    except CliError as exc:
        if args.json:  # the one document on stdout; the message goes to stderr as always
            print_json({"error": str(exc), "exit_status": exc.code})
        raise


async def _booted_from_rpmostree(args: argparse.Namespace, root: Any) -> Any:
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    from zincati_py.cincinnati.check import BootedFacts
    from zincati_py.dbus.rpmostree import RpmOstree, RpmOstreeError

    address = args.system_bus or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or None
    hint = "(--booted-checksum/--booted-version plan without it)"
    try:
        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    except Exception as exc:
        raise CliError(
            f"cannot connect to the system bus: {exc} {hint}", os.EX_UNAVAILABLE
        ) from None
    ro = RpmOstree(root, call_timeout=30)
    try:
        await ro.connect(bus)
        dep = await ro.booted()
    except RpmOstreeError as exc:
        raise CliError(f"rpm-ostree: {exc} {hint}", os.EX_UNAVAILABLE) from None
    finally:
        await ro.close()
        bus.disconnect()
    return BootedFacts.from_deployment(dep)


def _denylist(paths: Any) -> tuple[set[str], str | None]:
    """The agent's deny-list (its state file is root's: unreadable means none, noted)."""
    import json

    from zincati_py.agent.persist import boot_id
    from zincati_py.cincinnati.check import denylist

    path = paths.state_dir / "state.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return set(), None
    except (OSError, ValueError) as exc:
        return set(), f"agent state {path} unreadable ({exc}): deny-list not applied"
    if not isinstance(raw, dict):
        return set(), None
    return denylist(raw.get("extra") or {}, raw.get("failed") or (), boot_id()), None


async def _plan(args: argparse.Namespace) -> int:
    from zincati_py import config as config_mod
    from zincati_py.cincinnati import client
    from zincati_py.cincinnati.check import BootedFacts, kernel_platform, node_identity
    from zincati_py.cincinnati.errors import CLIENT_BUILDER, CincinnatiError
    from zincati_py.cincinnati.graph import plan
    from zincati_py.cincinnati.request import graph_url, query
    from zincati_py.paths import Paths

    paths = Paths.from_root(args.root)
    result = config_mod.load(paths)
    settings = result.config
    base_url = args.url or settings.cincinnati_base_url
    if not base_url:
        raise CliError(
            "no [cincinnati] base_url configured (and no --url): this node updates from its "
            "deployment's origin, not from a graph",
            os.EX_DATAERR,
        )
    what_if = args.booted_version is not None or args.booted_checksum is not None
    if what_if and args.stream is None:
        raise CliError(
            "--booted-version/--booted-checksum need --stream (the stream is the booted "
            "deployment's, which a what-if node does not have)",
            os.EX_USAGE,
        )
    if what_if:
        facts = BootedFacts(args.booted_version or "", args.booted_checksum or "", "")
    else:
        facts = await _booted_from_rpmostree(args, paths.root)
    if args.stream is not None:
        facts = dataclasses.replace(facts, stream=args.stream)
    if args.group is not None:
        ident = dataclasses.replace(settings.identity, group=args.group)
        settings = dataclasses.replace(settings, identity=ident)
    deny, note = _denylist(paths)
    notes = [str(p) for p in result.errors] + ([note] if note else [])
    platform = args.platform if args.platform is not None else kernel_platform(paths.root)
    try:
        identity = node_identity(settings, facts, platform=platform, arch=args.basearch)
        url = graph_url(base_url, identity.url_variables())
        params = query(identity)
        graph = await client.fetch_graph(url, params, timeout=args.timeout)
        if what_if and not (facts.checksum and facts.version):
            # Complete the what-if node from the graph (by version, or by checksum).
            for n in graph.nodes:
                if (facts.checksum and n.payload == facts.checksum) or (
                    not facts.checksum and n.version == facts.version
                ):
                    facts = dataclasses.replace(facts, version=n.version, checksum=n.payload)
                    break
        decided = plan(
            graph,
            facts.booted,
            denylist=deny,
            allow_downgrade=settings.updates.allow_downgrade,
        )
    except CincinnatiError as exc:
        code = os.EX_DATAERR if exc.malformed or exc.kind == CLIENT_BUILDER else os.EX_UNAVAILABLE
        raise CliError(f"update graph: {exc}", code) from None
    doc: dict[str, Any] = {
        "url": url,
        "query": params,
        "node": dataclasses.asdict(facts),
        "allow_downgrade": settings.updates.allow_downgrade,
        "denylist": sorted(deny),
        **decided.as_dict(),
        "notes": notes,
    }
    if args.json:
        print_json(doc)
        return 0
    print(_describe(doc))
    return 0


def _age(d: dict[str, Any]) -> str:
    return "?" if d.get("age_index") is None else str(d["age_index"])


def _describe(doc: dict[str, Any]) -> str:
    g = doc["graph"]
    node = doc["node"]
    lines = [f"Graph:      {doc['url']} ({g['nodes']} nodes, {g['edges']} edges)"]
    b = doc["booted"]
    if b is None:
        lines.append(
            f"Booted:     {node['version'] or '?'} ({node['checksum'] or '?'}): not in the graph"
        )
    else:
        lines.append(f"Booted:     {b['version']} (payload {b['payload']}, age index {_age(b)})")
    if doc["deadend"]:
        lines.append(f"Dead-end:   yes: {doc['deadend_reason']}")
    else:
        lines.append("Dead-end:   no")
    if doc["targets"]:
        lines.append("Targets:")
        width = max(len(t["version"]) for t in doc["targets"])
        for t in doc["targets"]:
            verdict = "chosen" if t["dropped"] is None else f"dropped: {t['dropped']}"
            lines.append(f"  {t['version']:<{width}}  age index {_age(t):>4}  {verdict}")
    else:
        lines.append("Targets:    none")
    chosen = doc["chosen"]
    lines.append(f"Update:     {chosen['version'] if chosen else 'none'}: {doc['reason']}")
    for w in doc["warnings"]:
        lines.append(f"Warning:    {w}")
    for n in doc["notes"]:
        lines.append(f"Note:       {n}")
    return "\n".join(lines)
