"""``fleet_lock``: take a reboot slot from a FleetLock server before rebooting.

Lifecycle (Zincati's, plus leases):

- ``can_finalize``: ``pre-reboot`` until granted, saying it can wait ``lock_wait_secs``
  (header ``fleet-lock-wait``): our server then answers when this node reaches the head of
  the group's fair queue and a slot frees, so a fleet rolls without polling. A full group
  (409, or 423 from some servers)
  and any failure (no answer, 5xx, other 4xx) deny with ``recheck_at`` = now + capped
  exponential backoff with jitter; the strategy never sleeps in the caller. A grant resets the
  backoff. Re-asking while holding re-sends ``pre-reboot`` (idempotent), confirming the slot.
- Leases: if a grant carries ``lease_seconds``, a background task re-sends ``pre-reboot`` at
  2/3 of the lease while the slot is held (failed renewals retry before expiry); if the server
  answers "group full" the slot was lost, and the agent is woken to ask again. Servers that
  send no lease are never re-contacted.
- ``abort``: the reboot will not happen: ``steady-state`` releases the slot; if that fails, a
  background task retries with backoff until it succeeds or the slot is wanted again.
- ``report_steady``: after boot, ``steady-state`` until it succeeds. Until the first
  ``pre-reboot`` of this process, a release is made by a short-lived child process, so an
  agent in a steady state never loads the HTTP stack (httpx and what it imports).
- Auth: with ``updates.fleet_lock.token_file`` (an absolute path) or ``token_credential`` (a
  systemd credential of the agent's unit, ``$CREDENTIALS_DIRECTORY/NAME``), every request
  carries ``Authorization: Bearer TOKEN``. The token is read when the client is made and
  again after a 401/403 (rotation needs no restart); a file other users can read is warned
  about once.

``base_url`` is a directory: ``https://host/fleet`` and ``https://host/fleet/`` both lead to
``https://host/fleet/v1/pre-reboot`` (see :mod:`zincati_py.fleetlock.client`). Whether a slot is
held is in ``status()["holds_slot"]``; persisting it across an agent crash is the agent's job
(it then calls ``abort`` or ``report_steady``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from zincati_py.backoff import Backoff
from zincati_py.fleetlock.client import FleetLockClient, FleetLockError, directory_url
from zincati_py.fleetlock.oneshot import steady_state_once
from zincati_py.fleetlock.protocol import Kind
from zincati_py.fleetlock.secrets import (
    SecretError,
    credential_path,
    read_token,
    readable_by_others,
)
from zincati_py.strategy.base import Strategy, StrategyContext, Verdict

log = logging.getLogger("zincati_py.strategy.fleet_lock")

# Statuses meaning "the group is full, wait your turn" rather than "something is wrong".
_FULL_STATUSES = frozenset({409, 423})


def _is_full(exc: FleetLockError) -> bool:
    return exc.kind == Kind.GROUP_FULL or exc.status in _FULL_STATUSES


class FleetLock(Strategy):
    name = "fleet_lock"
    remote = True
    # First retry delay; the cap is ``agent.timing.steady_interval_secs``.
    initial_backoff_secs: ClassVar[float] = 5.0
    # Renew a lease when this fraction of it has passed.
    renew_fraction: ClassVar[float] = 2 / 3
    # How long our lock server may hold a pre-reboot while the group is full (its fair
    # queue answers as soon as this node's turn comes); other servers answer at once.
    lock_wait_secs: ClassVar[float] = 30.0
    # Releases (the steady-state report) made before this strategy ever asked for a slot go
    # through a child process (``steady_state_once``): an agent in a steady state then never
    # loads the HTTP stack (about 5.5 MiB resident for good, issue 17). The first pre-reboot
    # makes the client, which every later call uses.
    release_out_of_process: ClassVar[bool] = True

    def __init__(self, ctx: StrategyContext) -> None:
        super().__init__(ctx)
        config = ctx.config
        self.base_url = config.updates.fleet_lock.base_url
        self.token_file = config.updates.fleet_lock.token_file
        self.token_credential = config.updates.fleet_lock.token_credential
        self._warned_readable = False
        self.node_id = config.identity.node_uuid
        self.group = config.identity.group
        cap = float(config.agent.timing.steady_interval_secs)
        initial = min(self.initial_backoff_secs, cap)
        self._lock_backoff = Backoff(initial, cap)
        self._release_backoff = Backoff(initial, cap)
        self._client: FleetLockClient | None = None
        self.holds_slot = False
        self.lease_seconds: int | None = None
        self.lease_expires_at: datetime | None = None
        self.renewals = 0
        self.last_error: str | None = None
        self.steady: Verdict | None = None
        self.halted_version: str | None = None  # the target our server refused as halted
        self._renewal: asyncio.Task[None] | None = None
        self._release: asyncio.Task[None] | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def _problem(self) -> str | None:
        if self.base_url is None:
            return "updates.fleet_lock.base_url is not configured"
        if self.node_id is None:
            return "no node id (identity.node_uuid, or /etc/machine-id to derive it)"
        return None

    def _token(self) -> str | None:
        """The configured bearer token (raises FleetLockError when it cannot be read)."""
        try:
            if self.token_file is not None:
                path = Path(self.token_file)
                secret = read_token(path, "file")
                mode = readable_by_others(path)
                if mode is not None and not self._warned_readable:
                    self._warned_readable = True
                    log.warning("%s holds the FleetLock token and others can read it (%s)",
                                path, mode)  # fmt: skip
                return secret.value
            if self.token_credential is not None:
                return read_token(credential_path(self.token_credential), "credential").value
        except SecretError as exc:
            raise FleetLockError("token", f"cannot read the FleetLock token: {exc}", None) from None
        return None

    def _get_client(self) -> FleetLockClient:
        if self._client is None:
            assert self.base_url is not None and self.node_id is not None
            self._client = FleetLockClient(
                self.base_url, self.node_id, self.group, token=self._token()
            )
        return self._client

    async def _auth_failed(self, exc: FleetLockError) -> None:
        """A 401/403: the next attempt re-reads the token (it may have been rotated)."""
        if exc.status in (401, 403) and self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro, name=f"fleet_lock {what}")

    @staticmethod
    async def _cancel(task: asyncio.Task[None] | None) -> None:
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise  # the caller is cancelled too (e.g. an interrupted can_finalize)

    async def _cancel_renewal(self) -> None:
        task, self._renewal = self._renewal, None
        if task is not asyncio.current_task():
            await self._cancel(task)

    def _lost_slot(self) -> None:
        self.holds_slot = False
        self.lease_seconds = None
        self.lease_expires_at = None

    # -- the strategy --------------------------------------------------------------------------

    async def stop(self) -> None:
        await self._cancel_renewal()
        task, self._release = self._release, None
        await self._cancel(task)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _can_finalize(self, now: datetime) -> Verdict:
        problem = self._problem()
        if problem is not None:
            return Verdict(False, f"cannot ask for a reboot slot: {problem}")
        # The slot is wanted again: a pending release must not undo the new grant.
        task, self._release = self._release, None
        releasing = task is not None and not task.done()
        try:
            await self._cancel(task)
            grant = await self._get_client().pre_reboot(
                self._lock_report(), wait=self.lock_wait_secs
            )
        except asyncio.CancelledError:
            # The caller gave up the ask (the agent had other work, or stops): nothing changed
            # here (a slot granted meanwhile is found held on the next ask: pre-reboot is
            # idempotent; a lease keeps its renewal), but a release it replaced is owed again.
            if releasing:
                self._release = self._spawn(self._release_until_done(), "release")
            raise
        except FleetLockError as exc:
            await self._auth_failed(exc)
            delay = self._lock_backoff.next_delay()
            retry = now + timedelta(seconds=delay)
            self.last_error = str(exc)
            if exc.kind == "rollout_halted":
                # Our server's circuit breaker stopped this target after failures elsewhere:
                # the agent treats the staged release as deny-listed for now (status()
                # "halted_version"), so a newer one can replace it.
                self.halted_version = self._lock_report().get("to_version")
                await self._cancel_renewal()
                self._lost_slot()
                reason = f"the lock server halted the rollout of {self.halted_version}: {exc.value}"
            elif _is_full(exc):
                await self._cancel_renewal()
                self._lost_slot()
                reason = f"reboot slot not granted, group {self.group!r} is full: {exc.value}"
            else:
                reason = f"pre-reboot failed: {exc}"
            return Verdict(False, f"{reason}; asking again in {delay:.0f}s", retry, self._details())
        self._lock_backoff.reset()
        self.last_error = None
        self.halted_version = None
        if not self.holds_slot:
            log.info(
                "reboot slot granted by %s (group %s)", self._get_client().base_url, self.group
            )
        self.holds_slot = True
        await self._cancel_renewal()
        self._granted(grant.lease_seconds)
        lease = "" if self.lease_seconds is None else f", lease {self.lease_seconds}s renewed"
        return Verdict(
            True,
            f"reboot slot held in group {self.group!r}{lease}",
            details=self._details(),
        )

    def _lock_report(self) -> dict[str, str]:
        """``from_version``/``to_version`` for ``pre-reboot`` (our server's circuit breaker
        refuses a halted target; other servers ignore the keys)."""
        facts = self.ctx.report()
        out = {
            "from_version": facts.get("booted_version"),
            "to_version": facts.get("staged_version"),
        }
        return {k: v for k, v in out.items() if v}

    def _granted(self, lease_seconds: int | None) -> None:
        """Record a grant or renewal and arm the next renewal if the server sent a lease."""
        if not lease_seconds:  # None, or 0 ("never expires")
            self.lease_seconds = None
            self.lease_expires_at = None
            return
        self.lease_seconds = lease_seconds
        self.lease_expires_at = datetime.now(UTC) + timedelta(seconds=lease_seconds)
        self._renewal = self._spawn(
            self._renew_after(lease_seconds * self.renew_fraction), "lease renewal"
        )

    async def _renew_after(self, delay: float) -> None:
        backoff = Backoff(min(1.0, delay), max(1.0, delay))
        while True:
            await asyncio.sleep(delay)
            try:
                grant = await self._get_client().pre_reboot(self._lock_report())
            except FleetLockError as exc:
                self.last_error = f"lease renewal: {exc}"
                if _is_full(exc):
                    log.warning("reboot slot lost (lease renewal refused): %s", exc)
                    self._renewal = None
                    self._lost_slot()
                    self.ctx.wake("fleet_lock slot lost at lease renewal")
                    return
                # Retry well before expiry: at most a third of what is left.
                left = (
                    (self.lease_expires_at - datetime.now(UTC)).total_seconds()
                    if self.lease_expires_at is not None
                    else 0.0
                )
                delay = min(backoff.next_delay(), max(0.5, left / 3))
                log.warning("lease renewal failed, retrying in %.1fs: %s", delay, exc)
                continue
            self.renewals += 1
            self.last_error = None
            self._renewal = None
            self._granted(grant.lease_seconds)
            return

    async def abort(self) -> None:
        await self._cancel_renewal()
        if self._problem() is not None:
            return
        if not await self._try_release("abort"):
            task, self._release = self._release, None
            await self._cancel(task)
            self._release = self._spawn(self._release_until_done(), "release")

    async def _steady_state(self, report: dict[str, str] | None) -> None:
        if self._client is None and self.release_out_of_process:
            assert self.base_url is not None and self.node_id is not None
            await steady_state_once(
                self.base_url, self.node_id, self.group, report, token=self._token()
            )
            return
        await self._get_client().steady_state(report)

    async def _try_release(self, why: str, report: dict[str, str] | None = None) -> bool:
        try:
            await self._steady_state(report)
        except FleetLockError as exc:
            await self._auth_failed(exc)
            self.last_error = f"release ({why}): {exc}"
            log.warning("could not release the reboot slot (%s): %s", why, exc)
            return False
        if self.holds_slot:
            log.info("reboot slot released (%s)", why)
        self._lost_slot()
        self._release_backoff.reset()
        self.last_error = None
        return True

    async def _release_until_done(self) -> None:
        while True:
            await asyncio.sleep(self._release_backoff.next_delay())
            if await self._try_release("abort, retried"):
                self._release = None
                return

    async def report_steady(self) -> Verdict:
        problem = self._problem()
        if problem is not None:
            self.steady = Verdict(False, f"cannot report steady state: {problem}")
            return self.steady
        await self._cancel_renewal()
        # booted_version, and after an update's health gate its verdict (the lock server's
        # rollout circuit breaker counts it against the version this node's slot was for).
        report = {k: v for k, v in self.ctx.report().items() if k != "staged_version"}
        if await self._try_release("steady state", report):
            self._lock_backoff.reset()
            self.steady = Verdict(True, "steady state reported, no reboot slot held")
        else:
            delay = self._release_backoff.next_delay()
            self.steady = Verdict(
                False,
                f"steady-state failed: {self.last_error}; retrying in {delay:.0f}s",
                datetime.now(UTC) + timedelta(seconds=delay),
            )
        return self.steady

    def _details(self) -> dict[str, Any]:
        return {
            "holds_slot": self.holds_slot,
            "lease_seconds": self.lease_seconds,
            "lease_expires_at": None
            if self.lease_expires_at is None
            else self.lease_expires_at.isoformat(),
        }

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update(self._details())
        out.update(
            {
                "base_url": None if self.base_url is None else directory_url(self.base_url),
                "group": self.group,
                "node_id": self.node_id,
                "token": "file"
                if self.token_file is not None
                else "credential"
                if self.token_credential is not None
                else None,
                "renewals": self.renewals,
                "release_pending": self._release is not None and not self._release.done(),
                "last_error": self.last_error,
                "steady_state": None if self.steady is None else self.steady.reason,
                "halted_version": self.halted_version,
            }
        )
        return out
