"""Probes and metrics of the lock server: ``/healthz`` (the process answers), ``/readyz``
(a round trip to the store), ``/metrics`` (Prometheus). Open to all, auth or not."""

from __future__ import annotations

import time

from aiohttp import web

from zincati_py.fleetlock.backends import BackendUnavailable
from zincati_py.fleetlock.host import ServerHost


def _json_ok() -> web.Response:
    return web.json_response({"status": "ok"})


def add_routes(server: ServerHost, r: web.UrlDispatcher, p: str) -> None:
    async def _healthz(request: web.Request) -> web.Response:
        return _json_ok()

    async def _readyz(request: web.Request) -> web.Response:
        await server.backend_call(server.backend.ping())
        return _json_ok()

    async def _metrics(request: web.Request) -> web.Response:
        slots: dict[str, int | None] = {n: g.slots for n, g in server.config.groups.items()}
        try:
            states = await server.backend_call(server.backend.all_states())
            server.metrics.backend_up.set(1)
        except BackendUnavailable:
            states = {}
            server.metrics.backend_up.set(0)
        for name in states:
            gc = server.config.group(name)
            slots.setdefault(name, gc.slots if gc else None)
        paused = {n for n, g in server.config.groups.items() if g.paused}
        server.metrics.set_groups(slots, states, paused, time.time())
        return web.Response(
            body=server.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    r.add_get(f"{p}/healthz", _healthz, name="healthz")
    r.add_get(f"{p}/readyz", _readyz, name="readyz")
    r.add_get(f"{p}/metrics", _metrics, name="metrics")
