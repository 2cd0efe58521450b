"""``zincati-py fleetlock serve``: a FleetLock server (the successor of coreos/airlock).

Wire-compatible with Zincati's client and airlock, plus leases, admin endpoints, tokens,
health/readiness probes and Prometheus metrics. State lives in a :mod:`backends` store; this
module only maps HTTP to backend operations and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from zincati_py.fleetlock import admin, auth, listen, probes, protocol
from zincati_py.fleetlock.backends import Backend, BackendUnavailable, Holder, open_backend
from zincati_py.fleetlock.config import GroupSettings, ServerSettings
from zincati_py.fleetlock.decide import (
    LockOutcome,
    LockRequest,
    Policy,
    decide_lock,
    decide_tick,
    decide_unlock,
)
from zincati_py.fleetlock.guard import GuardedServer, Listener, closed
from zincati_py.fleetlock.metrics import ServerMetrics
from zincati_py.fleetlock.protocol import ClientParams, Kind, ProtocolError
from zincati_py.fleetlock.waiters import RECHECK_SECS, Waiters

log = logging.getLogger("zincati_py.fleetlock.server")
audit = logging.getLogger("zincati_py.fleetlock.audit")

MAX_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own HTTP errors, as protocol kinds.
_HTTP_KINDS = {404: Kind.NOT_FOUND, 405: Kind.METHOD_NOT_ALLOWED, 413: Kind.BODY_TOO_LARGE}


def _ok(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _error(
    kind: str, value: str, status: int | None = None, extra: dict[str, Any] | None = None
) -> web.Response:
    resp = web.Response(
        body=protocol.error_body(kind, value, extra),
        status=status or protocol.STATUS.get(kind, 500),
        content_type="application/json",
    )
    if kind == Kind.UNAUTHORIZED:
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class FleetLockServer:
    """The HTTP application around one backend. ``start()`` listens, ``stop()`` closes."""

    def __init__(self, config: ServerSettings, backend: Backend | None = None) -> None:
        self.config = config
        self.backend = backend or open_backend(config.backend, **config.backend_options())
        self.metrics = ServerMetrics()
        # Policies made from the config in force (a reload brings another config).
        self._policies: tuple[ServerSettings, dict[str, Policy]] = (config, {})
        self.waiters = Waiters(self.tick, self)
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.addresses: list[str] = []
        self.listeners: list[Listener] = []

    # -- application -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        p = self.config.prefix
        r = app.router
        r.add_post(f"{p}/{protocol.PRE_REBOOT}", self._pre_reboot, name="pre-reboot")
        r.add_post(f"{p}/{protocol.STEADY_STATE}", self._steady_state, name="steady-state")
        admin.add_routes(self, r, p)
        probes.add_routes(self, r, p)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route.name or "other"
        manager = self._runner.server if self._runner is not None else None
        guarded = isinstance(manager, GuardedServer) and request.protocol is not None
        if guarded:
            assert isinstance(manager, GuardedServer)
            manager.request_started(request.protocol)
        try:
            return await self._handle(request, handler, route, started)
        finally:
            if guarded:
                assert isinstance(manager, GuardedServer)
                manager.request_done(request.protocol)

    async def _handle(
        self, request: web.Request, handler: Handler, route: str, started: float
    ) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            kind = "ok"
        except ProtocolError as exc:
            kind = exc.kind
            resp = _error(exc.kind, exc.value, extra=exc.extra)
        except BackendUnavailable as exc:
            kind = Kind.BACKEND_UNAVAILABLE
            log.warning("backend unavailable: %s", exc)
            resp = _error(kind, str(exc))
        except web.HTTPException as exc:
            kind = _HTTP_KINDS.get(exc.status, f"http_{exc.status}")
            resp = _error(kind, exc.reason, exc.status)
            if exc.status == 405:
                resp.headers["Allow"] = exc.headers.get("Allow", "")
        except Exception:
            log.exception("internal error handling %s %s", request.method, request.path)
            kind = Kind.INTERNAL
            resp = _error(kind, "internal server error")
        if route != "metrics":
            self.metrics.request_done(route, kind, time.perf_counter() - started)
        return resp

    async def _params(self, request: web.Request, *, need_header: bool = True) -> ClientParams:
        if need_header and request.headers.get(protocol.HEADER) != "true":
            raise ProtocolError(
                Kind.INVALID_HEADER, f"header '{protocol.HEADER}: true' is required"
            )
        if request.content.is_eof():  # the whole body is in: no timer to arm
            return ClientParams.from_body(await request.read())
        try:
            async with asyncio.timeout(self.config.limits.body_timeout_secs):
                raw = await request.read()
        except TimeoutError:
            raise ProtocolError(
                Kind.REQUEST_TIMEOUT,
                f"the body did not arrive within {self.config.limits.body_timeout_secs:g}s",
            ) from None
        return ClientParams.from_body(raw)

    def _authorize_node(self, request: web.Request, node_id: str) -> None:
        auth.authorize_node(self.config, request, node_id)

    def _authorize_admin(self, request: web.Request) -> None:
        auth.authorize_admin(self.config, request)

    def authorize_admin(self, request: web.Request) -> None:
        self._authorize_admin(request)

    async def params(self, request: web.Request) -> ClientParams:
        return await self._params(request, need_header=False)

    async def backend_call(self, op: Awaitable[Any], *, change: bool = False) -> Any:
        return await self._backend(op, change=change)

    def _group_config(self, group: str) -> GroupSettings:
        found = self.config.group(group)
        if found is None:
            raise ProtocolError(Kind.UNKNOWN_GROUP, f"unknown group {group!r}")
        return found

    async def _backend(self, op: Awaitable[Any], *, change: bool = False) -> Any:
        """Await a backend call, bounded. For a ``change`` (lock, unlock), a failure may come
        after the store applied it: the answer says the outcome is unknown, and a retry by the
        same node is safe (locking a held slot and releasing a free one change nothing)."""
        timeout = self.config.limits.backend_timeout_secs
        try:
            # asyncio.timeout, not wait_for: no task of its own per request.
            async with asyncio.timeout(timeout):
                return await op
        except TimeoutError:
            what = f"the store did not answer within {timeout:g}s"
        except BackendUnavailable as exc:
            if not change:
                raise
            what = str(exc)
        if change:
            what += "; the outcome is unknown (the change may have been applied): retry"
        raise BackendUnavailable(what)

    def _note_expired(self, group: str, expired: tuple[Holder, ...]) -> None:
        for h in expired:
            self.metrics.lease_expiries.labels(group).inc()
            log.info("lease of %s in group %s expired; slot freed", h.id, group)

    # -- FleetLock protocol --------------------------------------------------------------------

    def policy(self, group: str) -> Policy:
        """The group's configured behaviour; ProtocolError for an unknown group."""
        if self._policies[0] is not self.config:
            self._policies = (self.config, {})
        found = self._policies[1].get(group)
        if found is None:
            found = self._policies[1][group] = self._policy(group)
        return found

    def _policy(self, group: str) -> Policy:
        gc = self._group_config(group)
        q = self.config.queue
        return Policy(
            slots=gc.slots,
            lease_seconds=gc.lease_seconds,
            cooldown_secs=gc.cooldown_secs,
            grace_secs=q.grace_secs,
            queue_ttl_secs=q.expiry_secs,
            paused=gc.paused,
            max_failures=gc.max_failures,
        )

    def _wait_secs(self, request: web.Request) -> float:
        raw = request.headers.get(protocol.WAIT_HEADER)
        if raw is None:
            return 0.0
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not math.isfinite(value) or value < 0:
            raise ProtocolError(
                Kind.INVALID_HEADER, f"header '{protocol.WAIT_HEADER}' must be seconds >= 0"
            )
        return min(value, self.config.queue.max_wait_secs)

    def after(self, group: str, outcome: Any) -> None:
        """Bookkeeping after any decision: expiries, ledger-worthy events in the log and
        metrics, waking the waiters offered a slot, the group's next timer."""
        self._note_expired(group, outcome.expired)
        for event in outcome.events:
            if event.kind == "grant":
                self.metrics.granted(group, event.detail.get("waited_secs", 0))
                log.info("slot in group %s granted to %s", group, event.node)
            elif event.kind == "release":
                log.info("slot in group %s released by %s", group, event.node)
            elif event.kind == "failure":
                self.metrics.failures.labels(group, event.to_version or "").inc()
                log.warning("%s reported a failed update to %s", event.node, event.to_version)
            elif event.kind == "halt":
                audit.warning(
                    "rollout of %s halted in group %s after %s failures",
                    event.to_version,
                    group,
                    event.detail.get("failures"),
                )
        for holder in outcome.handed:
            if not self.waiters.hand_over(group, holder):
                # Its request went away meanwhile: the lease (or its next ask) settles it.
                log.debug(
                    "slot handed to %s in group %s, whose request had ended", holder.id, group
                )
        self.waiters.wake(group, outcome.offered)
        self.waiters.schedule(group, outcome.next_change)

    async def tick(self, group: str) -> None:
        """Re-evaluate a group now (timers, the sweeper, admin changes)."""
        try:
            policy = self.policy(group)
        except ProtocolError:
            return
        now = time.time()
        try:
            outcome = await self._backend(
                self.backend.apply(
                    group,
                    functools.partial(
                        decide_tick,
                        policy=policy,
                        now=now,
                        present=functools.partial(self.waiters.present, group),
                    ),
                )
            )
        except BackendUnavailable as exc:
            log.warning("re-evaluating group %s failed: %s", group, exc)
            return
        self.after(group, outcome)

    # -- FleetLock protocol --------------------------------------------------------------------

    async def _pre_reboot(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._authorize_node(request, params.id)
        policy = self.policy(params.group)
        wait = self._wait_secs(request)
        deadline = time.monotonic() + wait
        lock = LockRequest(params.id, params.from_version, params.to_version)
        while True:
            now = time.time()
            decide = functools.partial(
                decide_lock,
                request=lock,
                policy=policy,
                lease_seconds=policy.lease_seconds,
                now=now,
                present=functools.partial(self.waiters.present, params.group),
            )
            asked = time.monotonic()
            outcome = await self._backend(self.backend.apply(params.group, decide), change=True)
            self.after(params.group, outcome)
            if params.id in outcome.offered:
                self.waiters.unwake(params.group, params.id)
            if outcome.granted:
                break
            left = deadline - time.monotonic()
            waitable = outcome.refusal in (Kind.GROUP_FULL, Kind.GROUP_PAUSED)
            if not waitable or left <= 0 or _client_gone(request):
                if waitable and wait > 0 and _client_gone(request):
                    await self.waiters.abandon(params.group, params.id)
                raise self._refusal(params.group, policy, outcome, extended=wait > 0)
            handed = await self.waiters.wait(
                params.group,
                params.id,
                min(left, RECHECK_SECS),
                outcome.next_change,
                alive=lambda: not _client_gone(request),
                closed=closed(request),
                asked=asked,
            )
            if isinstance(handed, Holder):
                # Granted in the write that freed the slot.
                now = time.time()
                outcome = LockOutcome(True, handed)
                if _client_gone(request):
                    # Nobody to tell: give the slot back rather than idle it for a lease.
                    await self.waiters.abandon(params.group, params.id, handed)
                break
            if _client_gone(request):
                # Never ask again for a client that went away: it would be granted a slot
                # nobody hears of. Its queue entry stops holding slots (waiters.abandon).
                await self.waiters.abandon(params.group, params.id)
                raise self._refusal(params.group, policy, outcome, extended=True)
        lease = outcome.lease_seconds(now)
        # What json.dumps writes, byte for byte.
        return _ok(b"{}" if lease is None else b'{"lease_seconds": %d}' % lease)

    def _refusal(
        self, group: str, policy: Policy, outcome: LockOutcome, *, extended: bool
    ) -> ProtocolError:
        kind = outcome.refusal or Kind.GROUP_FULL
        value = {
            Kind.GROUP_FULL: f"all {policy.slots} reboot slot(s) of group {group!r} are taken",
            Kind.GROUP_PAUSED: f"group {group!r} is paused: no new reboot slots",
            Kind.ROLLOUT_HALTED: f"the rollout of this version is halted in group {group!r}",
            Kind.VERSION_HELD: f"group {group!r} is held at another version",
        }.get(kind, kind)
        extra = (
            {"position": outcome.position, "queue_length": outcome.queue_length}
            if extended and outcome.position is not None
            else None
        )
        return ProtocolError(kind, value, extra)

    async def _steady_state(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._authorize_node(request, params.id)
        policy = self.policy(params.group)
        decide = functools.partial(
            decide_unlock,
            node=params.id,
            policy=policy,
            now=time.time(),
            booted_version=params.booted_version,
            health=params.health,
            failed_version=params.failed_version,
            present=functools.partial(self.waiters.present, params.group),
        )
        outcome = await self._backend(self.backend.apply(params.group, decide), change=True)
        self.after(params.group, outcome)
        resp = _ok(b"{}")
        resp.headers[protocol.RELEASED_HEADER] = "true" if outcome.released else "false"
        return resp

    # -- lease sweeper -------------------------------------------------------------------------

    def _sweep_interval(self) -> float:
        leases = [g.lease_seconds for g in self.config.groups.values()]
        leases.append(self.config.lease_seconds)
        positive = [lease for lease in leases if lease > 0]
        return min(30.0, max(0.5, min(positive) / 4)) if positive else 30.0

    async def sweep_once(self) -> None:
        """Free the slots of holders whose lease ran out, drop queue entries of nodes that
        stopped asking (requests do it too, lazily)."""
        now = time.time()
        ttl = self.config.queue.expiry_secs
        for group, state in (await self._backend(self.backend.all_states())).items():
            if (
                any(h.expired(now) for h in state.holders.values())
                or any(now - w.seen >= ttl for w in state.queue)
                or state.released
            ):
                await self.tick(group)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval())
            try:
                await self.sweep_once()
            except BackendUnavailable as exc:
                log.warning("lease sweep skipped: %s", exc)

    # -- lifecycle -----------------------------------------------------------------------------

    def reload(self, config: ServerSettings) -> None:
        """Take new slots, leases and tokens (listen addresses and backend need a restart)."""
        kept = replace(
            config,
            listen=self.config.listen,
            backend=self.config.backend,
            prefix=self.config.prefix,
            tls_cert_file=self.config.tls_cert_file,
            tls_key_file=self.config.tls_key_file,
        )
        self.config = kept

    def _log_start_warnings(self) -> None:
        for warning in self.config.warnings:
            log.warning("%s", warning)
        if not self.config.auth:
            log.warning(
                "%s: no [auth] configured: any client that can connect may lock and release "
                "any node's slot and use the admin API (force-release included)",
                self.config.path,
            )

    async def start(self) -> list[str]:
        """Listen on every configured address; returns them as bound (TCP port 0 resolved)."""
        try:
            runner, self.listeners = await listen.start(self.app, self.config)
        except BaseException:
            await self.stop()
            raise
        self._runner = runner
        self.addresses = [listen.format_address(a) for a in runner.addresses]
        self._log_start_warnings()
        self._sweeper = asyncio.create_task(self._sweep_forever())
        return self.addresses

    async def stop(self) -> None:
        await self.waiters.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            # aiohttp leaves socket files behind; a stale one would only confuse clients.
            for listen in self.config.listen:
                if listen.path is not None and listen.path.is_socket():
                    listen.path.unlink()
        await self.backend.close()
