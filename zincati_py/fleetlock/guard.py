"""Connection limits for the lock server: slow and too many clients cannot starve it.

aiohttp bounds header sizes but not the time a client takes to send them, nor the number of
connections: 1,100 half-open connections each sending a header line per second exhausted
1,024 file descriptors and ``/healthz`` failed for as long as that lasted. Here:

- a connection must deliver a request's headers within ``header_timeout`` of connecting or of
  its previous response (the same bound closes idle keep-alive connections); the body is
  bounded by the handler (``body_timeout``);
- each listener holds at most ``limit`` connections. A connection beyond it evicts the
  listener's oldest connection still waiting for headers (slow clients go first; a request
  being handled, such as a long poll, is never cut); if every one is busy, the new one is
  closed at once;
- the limit is lowered at start to fit the process's open-file limit
  (:func:`fd_budget`), so accepting never fails for lack of descriptors;
- a long poll learns at once that its client went away (:func:`closed`): aiohttp does not
  cancel a handler whose connection is lost, it only drops the transport.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("zincati_py.fleetlock.server")

# Descriptors kept free for everything else: the store, etcd channels, logging, the listeners.
RESERVED_FDS = 64


def accept_backlog(soft_limit: int) -> int:
    """The listen backlog, which is also how many connections asyncio accepts in one go
    (before any can be evicted): small when descriptors are scarce."""
    return max(8, min(128, (soft_limit - RESERVED_FDS) // 8))


def fd_budget(wanted: int, listeners: int) -> tuple[int, int]:
    """``(connections per listener, backlog)`` that fit under the open-file limit, raising
    the soft limit towards the hard one first, as far as ``wanted`` needs. Evicted
    connections close one loop iteration after the burst that accepted newcomers, so up to
    three bursts are kept in reserve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = (wanted + 3 * 128) * listeners + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted, 128
    backlog = accept_backlog(soft)
    per_listener = (soft - RESERVED_FDS) // max(1, listeners) - 3 * backlog
    return max(1, min(wanted, per_listener)), backlog


@dataclass(eq=False)
class _Conn:
    handler: RequestHandler
    transport: asyncio.BaseTransport
    listener: Listener
    # Armed while the connection waits for a request's headers; None while one is handled.
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Listener:
    """One listening address: its limit and live connections (oldest first)."""

    name: str
    limit: int
    conns: dict[RequestHandler, _Conn] = field(default_factory=dict)
    evicted: int = 0
    refused: int = 0


class _Handler(RequestHandler):
    __slots__ = ("listener", "lost")
    listener: Listener
    # Made by closed(): done once the connection is lost.
    lost: asyncio.Future[None] | None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)


def closed(request: web.BaseRequest) -> asyncio.Future[None] | None:
    """A future done once the client of ``request`` is gone: its connection closed, reset or
    half-closed (aiohttp closes a connection whose client shut its sending side down, so no
    answer can be sent either). None for a connection not accepted through a
    :class:`GuardedSite` (check ``request.transport`` then)."""
    handler = request.protocol
    if not isinstance(handler, _Handler):
        return None
    if handler.lost is None:
        handler.lost = asyncio.get_running_loop().create_future()
        if handler.transport is None:  # lost before anyone asked
            handler.lost.set_result(None)
    return handler.lost


class GuardedServer(web.Server):
    """aiohttp's connection manager, plus per-listener limits and a header deadline."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._by_handler: dict[RequestHandler, _Conn] = {}

    def factory_for(self, listener: Listener) -> Callable[[], RequestHandler]:
        """The protocol factory of one listener (asyncio calls it, then ``connection_made``)."""

        def make() -> RequestHandler:
            # The listener travels with the handler: asyncio makes a whole accept burst's
            # protocols before it calls any connection_made.
            handler = _Handler(self, loop=self._loop, **self._kwargs)
            handler.listener = listener
            handler.lost = None
            return handler

        return make

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        listener = handler.listener if isinstance(handler, _Handler) else None
        if listener is None:  # not made through factory_for: nothing to enforce
            return
        conn = _Conn(handler, transport, listener)
        self._by_handler[handler] = conn
        if len(listener.conns) >= listener.limit:
            victim = next((c for c in listener.conns.values() if c.timer is not None), None)
            if victim is None:
                listener.refused += 1
                self._drop(conn, "refused")
                return
            listener.evicted += 1
            self._drop(victim, "evicted")
        listener.conns[handler] = conn
        self._arm(conn)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        conn = self._by_handler.pop(handler, None)
        if conn is not None:
            self._disarm(conn)
            conn.listener.conns.pop(handler, None)

    def request_started(self, handler: RequestHandler) -> None:
        """Headers are in: the deadline no longer applies while the request is handled."""
        conn = self._by_handler.get(handler)
        if conn is not None:
            self._disarm(conn)

    def request_done(self, handler: RequestHandler) -> None:
        """Answered: the next request's headers (or the connection's end) are due in time."""
        conn = self._by_handler.get(handler)
        if conn is not None and conn.handler in conn.listener.conns:
            self._arm(conn)

    def _arm(self, conn: _Conn) -> None:
        self._disarm(conn)
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_later(self.header_timeout, self._drop, conn, "header timeout")

    @staticmethod
    def _disarm(conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _drop(self, conn: _Conn, why: str) -> None:
        self._disarm(conn)
        conn.listener.conns.pop(conn.handler, None)
        log.debug("closing a connection on %s: %s", conn.listener.name, why)
        conn.transport.abort()  # type: ignore[attr-defined]


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connection manager is a :class:`GuardedServer`."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        guarded = GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            header_timeout=self._header_timeout,
            **server._kwargs,
        )
        return guarded


class GuardedSite(web.BaseSite):
    """A TCP or Unix listener whose connections go through a :class:`Listener`."""

    def __init__(
        self,
        runner: GuardedRunner,
        listener: Listener,
        *,
        host: str | None = None,
        port: int | None = None,
        path: Path | None = None,
        ssl_context: SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self.listener = listener
        self._host, self._port, self._path = host, port, path

    @property
    def name(self) -> str:
        return self.listener.name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert isinstance(server, GuardedServer)
        factory = server.factory_for(self.listener)
        loop = asyncio.get_running_loop()
        if self._path is not None:
            self._server = await loop.create_unix_server(
                factory, str(self._path), ssl=self._ssl_context, backlog=self._backlog
            )
        else:
            assert self._port is not None
            self._server = await loop.create_server(
                factory,
                self._host,
                self._port,
                ssl=self._ssl_context,
                backlog=self._backlog,
                reuse_address=True,
                # A TLS handshake comes before any header: bound it the same way.
                ssl_handshake_timeout=server.header_timeout if self._ssl_context else None,
            )
