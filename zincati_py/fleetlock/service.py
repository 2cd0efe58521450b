"""``zincati-py fleetlock serve``: run a :class:`~zincati_py.fleetlock.server.FleetLockServer`
as a service: sd_notify READY=1 once every listener is bound (the unit is ``Type=notify``),
SIGHUP reloads the config, SIGTERM/SIGINT stop it gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

from zincati_py.fleetlock.config import ConfigError, ServerSettings
from zincati_py.fleetlock.config import load as load_config
from zincati_py.fleetlock.server import FleetLockServer

log = logging.getLogger("zincati_py.fleetlock.server")


def _sd_notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(message.encode(), address)


async def serve(config: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads the config file."""
    server = FleetLockServer(config)
    addresses = await server.start()
    log.info("FleetLock server listening on %s (backend %s)", ", ".join(addresses), config.backend)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            server.reload(load_config(config.path))
            log.info("reloaded %s", config.path)
        except ConfigError as exc:
            log.error("reload failed, keeping the previous config: %s", exc)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    _sd_notify("READY=1")
    try:
        await stop.wait()
    finally:
        _sd_notify("STOPPING=1")
        log.info("shutting down")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.stop()
