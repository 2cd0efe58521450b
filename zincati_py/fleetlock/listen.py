"""Where the lock server listens: TCP (TLS when configured) and unix sockets, each behind its
connection guard (:mod:`~zincati_py.fleetlock.guard`); stale socket files of a killed server."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from zincati_py.fleetlock.config import ServerSettings
from zincati_py.fleetlock.guard import GuardedRunner, GuardedSite, Listener, fd_budget

log = logging.getLogger("zincati_py.fleetlock.server")


def ssl_context(config: ServerSettings) -> ssl.SSLContext | None:
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return ctx


async def start(
    app: web.Application, config: ServerSettings
) -> tuple[GuardedRunner, list[Listener]]:
    """Listen on every configured address; on failure nothing is left listening."""
    ctx = ssl_context(config)
    limits = config.limits
    limit, backlog = fd_budget(limits.connections_per_listener, len(config.listen))
    if limit < limits.connections_per_listener:
        log.warning(
            "open-file limit too low for %d connections per listener: %d each (raise LimitNOFILE=)",
            limits.connections_per_listener,
            limit,
        )
    runner = GuardedRunner(
        app,
        access_log=None,
        handle_signals=False,
        header_timeout=limits.header_timeout_secs,
    )
    await runner.setup()
    listeners: list[Listener] = []
    bound: list[Path] = []
    try:
        for spec in config.listen:
            listener = Listener(str(spec), limit)
            listeners.append(listener)
            if spec.path is not None:
                remove_stale_socket(spec.path)
                spec.path.parent.mkdir(parents=True, exist_ok=True)
            site = GuardedSite(
                runner,
                listener,
                host=spec.host,
                port=spec.port,
                path=spec.path,
                ssl_context=None if spec.path is not None else ctx,
                backlog=backlog,
            )
            await site.start()
            if spec.path is not None:
                bound.append(spec.path)
    except BaseException:
        await runner.cleanup()
        for path in bound:  # ours only: not the socket of a server already listening there
            if path.is_socket():
                path.unlink()
        raise
    return runner, listeners


def format_address(addr: Any) -> str:
    if isinstance(addr, str):
        return f"unix:{addr}"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def remove_stale_socket(path: Path) -> None:
    """A SIGKILLed server leaves its socket file behind; remove it unless someone listens."""
    if not path.is_socket():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()
            return
    raise OSError(f"{path}: another server is listening there")
