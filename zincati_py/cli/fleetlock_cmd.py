"""``zincati-py fleetlock serve|status|lock|unlock|release``: run or talk to a FleetLock server.

``lock``/``unlock`` speak the plain FleetLock protocol (any server); ``status`` and
``release`` use our server's admin API. Exit codes: 0 ok, 65 bad input (refused by the server
or invalid arguments), 69 server unreachable or failing (or the etcd backend's library
missing), 75 group full (lock not granted), 77 token missing or refused (401/403).
A bearer token is read from ``--token-file`` or ``$ZINCATI_PY_FLEETLOCK_TOKEN`` (never from
the command line, where other users could read it).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from zincati_py.cli import CliError, print_json

if TYPE_CHECKING:
    import httpx

    from zincati_py.fleetlock.client import (
        FleetLockAdminClient,
        FleetLockClient,
        FleetLockError,
    )

T = TypeVar("T")
TOKEN_ENV = "ZINCATI_PY_FLEETLOCK_TOKEN"


def register(sub: Any) -> None:
    parser = sub.add_parser("fleetlock", help="FleetLock reboot-slot server and client")
    fsub = parser.add_subparsers(dest="fleetlock_command", required=True, metavar="ACTION")

    serve = fsub.add_parser("serve", help="run the FleetLock server")
    serve.add_argument("--config", required=True, type=Path, help="server config (TOML)")
    serve.set_defaults(func=run_serve)

    def client_parser(name: str, help: str, *, node: bool, group_required: bool = True) -> Any:
        p = fsub.add_parser(name, help=help)
        p.add_argument("--url", required=True, help="server base URL (a directory)")
        p.add_argument("--unix-socket", type=Path, help="connect through this Unix socket")
        p.add_argument("--group", required=group_required, default=None, help="group")
        p.add_argument(
            "--id",
            required=node,
            default=None,
            dest="node_id",
            help="node id" if node else "only this node's slots",
        )
        p.add_argument("--token-file", type=Path, help=f"bearer token file (or ${TOKEN_ENV})")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")
        return p

    client_parser("status", "show groups, slots and holders", node=False, group_required=False)
    fsub.choices["status"].set_defaults(func=run_status)
    client_parser("lock", "take a reboot slot (pre-reboot)", node=True)
    fsub.choices["lock"].set_defaults(func=run_lock)
    client_parser("unlock", "release a reboot slot (steady-state)", node=True)
    fsub.choices["unlock"].set_defaults(func=run_unlock)
    client_parser("release", "force-release a node's slot (admin)", node=True)
    fsub.choices["release"].set_defaults(func=run_release)

    for name, help, extra in [
        ("pause", "refuse new slots in a group while holders finish (admin)", "reason"),
        ("resume", "grant slots in a paused group again (admin)", None),
        ("cooldown", "set a group's cooldown between reboots at runtime (admin)", "seconds"),
        ("hold", "let only one target version be granted in a group (admin)", "version"),
        ("unhold", "lift a group's version hold (admin)", None),
        ("resume-version", "lift the circuit breaker's halt of a version (admin)", "version"),
    ]:
        p = client_parser(name, help, node=False)
        if extra == "reason":
            p.add_argument("--reason", default=None, help="why (audit log, web view)")
        elif extra == "seconds":
            p.add_argument(
                "--seconds", type=float, default=None, help="seconds; omit: the configured value"
            )
        elif extra == "version":
            p.add_argument("--version", required=True, dest="target", help="target version")
        p.set_defaults(func=run_control, action=name.replace("-", "_"))
    p = client_parser("history", "the server's ledger of grants, releases, failures", node=False,
                      group_required=False)  # fmt: skip
    p.add_argument("--version", dest="target", default=None, help="only this version")
    p.add_argument("--since", default=None, help="Unix time, or a duration ago: 90s, 15m, 2h, 1d")
    p.add_argument("--limit", type=int, default=100, help="newest N events (default 100)")
    p.set_defaults(func=run_history)
    p = client_parser("rollouts", "per-version rollout progress (admin)", node=False,
                      group_required=False)  # fmt: skip
    p.set_defaults(func=run_rollouts)


def run_serve(args: argparse.Namespace) -> int:
    from zincati_py.fleetlock.config import ConfigError, load
    from zincati_py.fleetlock.service import serve

    try:
        config = load(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), os.EX_DATAERR) from None
    import asyncio
    import ssl

    from zincati_py.fleetlock.backends import BackendMissing

    try:
        asyncio.run(serve(config))
    except BackendMissing as exc:
        raise CliError(f"{args.config}: backend: {exc}", os.EX_UNAVAILABLE) from None
    except ssl.SSLError as exc:
        # The certificate and key don't load (wrong format, not a pair).
        raise CliError(f"{args.config}: tls: {exc}", os.EX_DATAERR) from None
    except OSError as exc:
        # Cannot listen (address in use, permissions) or open the store.
        raise CliError(f"{args.config}: listen: {exc}", os.EX_UNAVAILABLE) from None
    return os.EX_OK


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        try:
            token: str = args.token_file.read_text().strip()
        except OSError as exc:
            raise CliError(f"{args.token_file}: {exc.strerror}", os.EX_NOINPUT) from None
        if not token:
            raise CliError(f"{args.token_file}: the token file is empty", os.EX_DATAERR)
        return token
    return os.environ.get(TOKEN_ENV) or None


def _check_args(args: argparse.Namespace) -> None:
    from zincati_py.fleetlock.protocol import GROUP_PATTERN, GROUP_RE

    if not args.url.startswith(("http://", "https://")):
        raise CliError(f"--url: expected an http:// or https:// URL, got {args.url!r}")
    if args.group is not None and not GROUP_RE.fullmatch(args.group):
        raise CliError(f"--group: {args.group!r} must match {GROUP_PATTERN}")
    if getattr(args, "node_id", "x") == "":
        raise CliError("--id: must not be empty")


def _exit_code(err: FleetLockError) -> int:
    from zincati_py.fleetlock.protocol import Kind

    if err.status is None or err.status >= 500:
        return os.EX_UNAVAILABLE
    if err.kind == Kind.GROUP_FULL or err.status in (409, 423):
        return os.EX_TEMPFAIL
    if err.status in (401, 403):
        return os.EX_NOPERM
    return os.EX_DATAERR


def _call(args: argparse.Namespace, fn: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``fn(session)`` and turn a FleetLock failure into the CLI's error and exit code."""
    _check_args(args)
    import asyncio

    from zincati_py.fleetlock.client import FleetLockError, new_session

    async def main() -> T:
        uds = str(args.unix_socket) if args.unix_socket else None
        async with new_session(uds=uds) as session:
            return await fn(session)

    try:
        return asyncio.run(main())
    except FleetLockError as err:
        raise CliError(f"{args.url}: {err}", _exit_code(err)) from None


def _client(args: argparse.Namespace, session: httpx.AsyncClient) -> FleetLockClient:
    """The protocol client for ``args``' URL, node and group."""
    from zincati_py.fleetlock.client import FleetLockClient

    return FleetLockClient(
        args.url,
        args.node_id,
        args.group,
        session=session,
        timeout=args.timeout,
        token=_token(args),
    )


def _admin(args: argparse.Namespace, session: httpx.AsyncClient) -> FleetLockAdminClient:
    """The admin API client for ``args``' URL."""
    from zincati_py.fleetlock.client import FleetLockAdminClient

    return FleetLockAdminClient(args.url, session=session, timeout=args.timeout, token=_token(args))


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    if args.json:
        print_json(doc)
    else:
        print(text)


def run_lock(args: argparse.Namespace) -> int:
    async def go(session: httpx.AsyncClient) -> int | None:
        return (await _client(args, session).pre_reboot()).lease_seconds

    lease = _call(args, go)
    lease_text = "no lease" if lease is None else f"lease {lease}s"
    _emit(
        args,
        {"granted": True, "group": args.group, "id": args.node_id, "lease_seconds": lease},
        f"granted: {args.node_id} holds a slot in {args.group} ({lease_text})",
    )
    return os.EX_OK


def run_unlock(args: argparse.Namespace) -> int:
    async def go(session: httpx.AsyncClient) -> bool | None:
        return await _client(args, session).steady_state()

    released = _call(args, go)
    who = f"{args.node_id} holds no slot in {args.group}"
    text = {
        True: f"released: {args.node_id}'s slot in {args.group}; {who}",
        False: f"nothing to release: {who} (it held none)",
        None: f"{who} (the server does not say whether it held one)",
    }[released]
    _emit(args, {"released": released, "group": args.group, "id": args.node_id}, text)
    return os.EX_OK


def run_release(args: argparse.Namespace) -> int:
    async def go(session: httpx.AsyncClient) -> bool:
        return await _admin(args, session).release(args.group, args.node_id)

    held = _call(args, go)
    _emit(
        args,
        {"released": held, "group": args.group, "id": args.node_id},
        f"released {args.node_id} from {args.group}"
        if held
        else f"{args.node_id} held no slot in {args.group}",
    )
    return os.EX_OK


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def run_status(args: argparse.Namespace) -> int:
    async def go(session: httpx.AsyncClient) -> list[dict[str, Any]]:
        admin = _admin(args, session)
        if args.group is not None:
            return [await admin.group(args.group)]
        return await admin.groups()

    groups = _call(args, go)
    if args.node_id is not None:
        for g in groups:
            g["holders"] = [h for h in g.get("holders") or [] if h.get("id") == args.node_id]
        holding = [g.get("group") for g in groups if g["holders"]]
        if args.json:
            _emit(
                args,
                {"id": args.node_id, "holds": holding, "groups": groups, "at": time.time()},
                "",
            )
            return os.EX_OK
        lines = []
        for g in groups:
            for h in g["holders"]:
                lines.append(
                    f"{args.node_id} holds a slot in {g.get('group')}: held "
                    f"{_duration(h.get('age_seconds'))}, expires in "
                    f"{_duration(h.get('expires_in_seconds'))}"
                )
        where = f" in {args.group}" if args.group is not None else ""
        print("\n".join(lines) or f"{args.node_id} holds no slot{where}")
        return os.EX_OK
    if args.json:
        _emit(args, {"groups": groups, "at": time.time()}, "")
        return os.EX_OK
    lines = [f"{'GROUP':<24} {'SLOTS':>5} {'HOLDERS':>7}"]
    for g in groups:
        slots = "-" if g.get("slots") is None else str(g["slots"])
        holders = g.get("holders") or []
        lines.append(f"{g.get('group', '?'):<24} {slots:>5} {len(holders):>7}")
        for h in holders:
            lines.append(
                f"  {h.get('id')}  held {_duration(h.get('age_seconds'))}"
                f"  expires in {_duration(h.get('expires_in_seconds'))}"
            )
    print("\n".join(lines))
    return os.EX_OK


def run_control(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.action == "pause" and args.reason is not None:
        extra["reason"] = args.reason
    if args.action == "cooldown":
        extra["seconds"] = args.seconds
    if args.action in ("hold", "resume_version"):
        extra["version"] = args.target

    async def go(session: httpx.AsyncClient) -> dict[str, Any]:
        return await _admin(args, session).control(args.group, args.action, **extra)

    doc = _call(args, go)
    state = "paused" if doc.get("paused") else "open"
    halted = ", ".join(sorted(doc.get("halted") or {})) or "none"
    _emit(
        args,
        doc,
        f"{args.group}: {state}, cooldown {doc.get('cooldown_secs')}s, hold "
        f"{doc.get('hold') or 'none'}, halted {halted}",
    )
    return os.EX_OK


def _since(raw: str | None) -> float | None:
    if raw is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if raw[-1:] in units:
            return time.time() - float(raw[:-1]) * units[raw[-1]]
        return float(raw)
    except ValueError:
        raise CliError(f"--since: {raw!r}: expected a Unix time or 90s/15m/2h/1d") from None


def run_history(args: argparse.Namespace) -> int:
    since = _since(args.since)

    async def go(session: httpx.AsyncClient) -> list[dict[str, Any]]:
        return await _admin(args, session).history(
            group=args.group, node=args.node_id, version=args.target, since=since, limit=args.limit
        )

    events = _call(args, go)
    if args.json:
        print_json({"events": events})
        return os.EX_OK
    lines = []
    for e in events:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("at", 0)))
        versions = ""
        if e.get("from_version") or e.get("to_version"):
            versions = f" {e.get('from_version') or '?'} -> {e.get('to_version') or '?'}"
        detail = " ".join(
            f"{k}={v}"
            for k, v in e.items()
            if k not in ("at", "group", "kind", "node", "from_version", "to_version")
        )
        lines.append(
            f"{at} {e.get('group')} {e.get('kind')} {e.get('node') or '-'}{versions} {detail}"
        )
    print("\n".join(lines) or "no events")
    return os.EX_OK


def run_rollouts(args: argparse.Namespace) -> int:
    async def go(session: httpx.AsyncClient) -> list[dict[str, Any]]:
        return await _admin(args, session).rollouts(args.group)

    rows = _call(args, go)
    if args.json:
        print_json({"rollouts": rows})
        return os.EX_OK
    lines = [
        f"{'GROUP':<16} {'VERSION':<20} {'DONE':>5} {'HOLDING':>7} {'FAILED':>6} "
        f"{'REMAINING':>9} {'RATE/H':>7} {'ETA':>9} STATE"
    ]
    for r in rows:
        state = "halted" if r.get("halted") else "held" if r.get("held") else "rolling"
        rate = "-" if r.get("rate_per_hour") is None else f"{r['rate_per_hour']:g}"
        lines.append(
            f"{r.get('group', '?'):<16} {r.get('version', '?'):<20} {r.get('done', 0):>5} "
            f"{r.get('holding', 0):>7} {r.get('failed', 0):>6} {r.get('remaining', 0):>9} "
            f"{rate:>7} {_duration(r.get('eta_seconds')) if r.get('eta_seconds') else '-':>9} "
            f"{state}"
        )
    print("\n".join(lines))
    return os.EX_OK
