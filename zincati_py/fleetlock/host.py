"""What the admin API and the probes need of the lock server (:class:`ServerHost`).

:mod:`~zincati_py.fleetlock.admin` and :mod:`~zincati_py.fleetlock.probes` add routes to the
server's application; they see it only through this protocol, so neither imports
:mod:`~zincati_py.fleetlock.server` (which imports both).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from aiohttp import web

from zincati_py.fleetlock.backends import Backend
from zincati_py.fleetlock.config import ServerSettings
from zincati_py.fleetlock.decide import Policy
from zincati_py.fleetlock.metrics import ServerMetrics
from zincati_py.fleetlock.protocol import ClientParams
from zincati_py.fleetlock.waiters import Waiters


class ServerHost(Protocol):
    """The lock server as its route modules see it."""

    config: ServerSettings
    backend: Backend
    metrics: ServerMetrics
    waiters: Waiters

    def authorize_admin(self, request: web.Request) -> None:
        """Raise ProtocolError unless the request carries the admin token (when auth is on)."""

    async def params(self, request: web.Request) -> ClientParams:
        """The request's FleetLock body (no FleetLock header required)."""

    async def backend_call(self, op: Awaitable[Any], *, change: bool = False) -> Any:
        """Await a backend call, bounded (BackendUnavailable past the limit)."""

    def policy(self, group: str) -> Policy:
        """The group's configured behaviour; ProtocolError for an unknown group."""

    def after(self, group: str, outcome: Any) -> None:
        """Bookkeeping after any decision (log, metrics, waiters, timers)."""
