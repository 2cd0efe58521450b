"""Fleet-exclusive runs: a job's command runs only while its node holds a FleetLock slot.

A job with ``exclusive_group = "G"`` gets a second unit, ``zincati-py-slot-NAME.service``
(:func:`zincati_py.schedule.units.slot_unit`), which alone talks to the lock server and alone
gets its token. Three roles of ``zincati-py schedule _exclusive``:

hold (the slot unit's ``ExecStart=``, ``Type=notify``, always root: no ``User=``)
    The job's unit ``Wants=`` and is ordered ``After=`` the slot unit, so a run starts it
    first. Takes a slot of group G on ``updates.fleet_lock.base_url`` under the id
    ``NODE:JOB`` (waiting up to ``exclusive_wait_secs``), says ``READY=1``, renews the slot
    every third of the lease, and releases it when stopped: ``StopWhenUnneeded=``, once the run
    and its retries are over (or, at shutdown, after the command). No slot after the wait:
    exit :data:`SKIPPED` (the journal names the holders only where the server's admin API
    answers without a token: with auth on it says "held by another node"). Server refused or
    unreachable: exit :data:`UNAVAILABLE`. The slot is **lost** when a renewal finds the group
    full (the lease lapsed or an admin force-released it, and another node took it), or when
    no renewal succeeded for longer than the lease (another node may hold it by now): a
    critical journal line, exit :data:`LOST`.
check (the job's ``ExecCondition=+``, root)
    Reads the slot unit's state: holding → 0 (the command runs); skipped → :data:`SKIPPED`
    (``ExecCondition=`` 1-254: the command does not run, the unit does not fail; ``_record``
    sees ``$SERVICE_RESULT=exec-condition``, records ``skipped``); anything else → 255 (the
    unit fails: retries and the failure hook apply).
ended (the slot unit's ``ExecStopPost=``)
    After a :data:`LOST` exit, stops the job's service: systemd sends the command SIGTERM
    (then SIGKILL past ``TimeoutStopSec=``), the run ends ``signal`` (failed: the failure hook
    fires, no retry) and ``_record`` marks it ``lost_slot``. Running here, after the slot
    unit's result is set, makes that mark deterministic.

Why two units: the command may run as an unprivileged ``User=``/``DynamicUser=`` in the job's
sandbox; whatever the command's unit can read (``LoadCredential=``, its environment) that user
can read. The token stays in the slot unit, which runs as root, and the command's unit has no
credential. The command is the job's own ``ExecStart=``, so systemd applies exactly the job's
user and sandbox to it (no privilege dropping by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable

__all__ = ["LOST", "SKIPPED", "UNAVAILABLE", "hold", "lock_id"]

SKIPPED = 75  # EX_TEMPFAIL: the group was full for the whole wait
UNAVAILABLE = 69  # the lock server could not be asked: the run did not happen
LOST = 76  # the slot was lost while the command ran: the command is stopped
CONDITION_FAILED = 255  # ExecCondition=: fail the unit (1-254 only skip the command)
RETRY_EVERY = 2.0  # seconds between attempts while waiting for a slot
RELEASE_ATTEMPTS = 3
DEFAULT_LEASE = 60  # seconds, when the server sends none


def lock_id(node_id: str, job: str) -> str:
    """The FleetLock id of a job's runs on one node."""
    return f"{node_id}:{job}"


def say(message: str, *, priority: int = 4) -> None:
    """One journal line (``<N>``: its syslog priority; 2 = critical)."""
    print(f"<{priority}>zincati-py: {message}", file=sys.stderr, flush=True)


async def _holders(url: str, group: str, token: str | None) -> str:
    """Who holds the group's slots. Only asked when no token is configured: with auth on the
    admin API refuses the node's (or the shared) token, and the run never has the admin's."""
    if token is not None:
        return " (held by another node)"
    from zincati_py.fleetlock.client import FleetLockAdminClient, FleetLockError

    admin = FleetLockAdminClient(url)
    try:
        doc = await admin.group(group)
    except (FleetLockError, ValueError, TypeError):
        return " (held by another node)"
    finally:
        await admin.close()
    ids = [str(h.get("id")) for h in doc.get("holders", []) if isinstance(h, dict)]
    return f" (held by {', '.join(ids)})" if ids else " (held by another node)"


async def hold(
    url: str,
    group: str,
    ident: str,
    wait_secs: int,
    *,
    token: str | None = None,
    ready: Callable[[], None] = lambda: None,
) -> int:
    """Take a slot, call ``ready``, renew it until SIGTERM/SIGINT, release it; the exit status
    (0 released after a stop, :data:`SKIPPED`, :data:`UNAVAILABLE` or :data:`LOST`)."""
    from zincati_py.fleetlock.client import FleetLockClient

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    client = FleetLockClient(url, ident, group, token=token)
    try:
        taken = await _take(client, url, group, wait_secs, token, stop)
        if not isinstance(taken, tuple):
            return taken
        lease, granted_at = taken
        ready()
        status = await _renew(client, group, lease, granted_at, stop)
        if status == 0:
            await _release(client)
        return status
    finally:
        await client.close()


async def _take(
    client: object, url: str, group: str, wait_secs: int, token: str | None, stop: asyncio.Event
) -> int | tuple[int, float]:
    """(lease, when granted), or the exit status when there is no slot."""
    from zincati_py.fleetlock.client import FleetLockClient, FleetLockError
    from zincati_py.fleetlock.protocol import Kind

    assert isinstance(client, FleetLockClient)
    deadline = time.monotonic() + wait_secs
    while True:
        if stop.is_set():
            return 0  # stopped while waiting (shutdown): nothing held, nothing to run
        try:
            grant = await client.pre_reboot()
            return grant.lease_seconds or DEFAULT_LEASE, time.monotonic()
        except FleetLockError as exc:
            left = deadline - time.monotonic()
            if exc.kind == Kind.GROUP_FULL and left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(RETRY_EVERY, left))
                continue
            if exc.kind == Kind.GROUP_FULL:
                held = await _holders(url, group, token)
                say(
                    f"skipped: every slot of group {group!r} is taken{held}"
                    + (f" after waiting {wait_secs}s" if wait_secs else "")
                )
                return SKIPPED
            say(f"not run: the lock server {url} refused or did not answer: {exc}", priority=3)
            return UNAVAILABLE


async def _renew(
    client: object, group: str, lease: int, granted_at: float, stop: asyncio.Event
) -> int:
    """Renew every third of the lease until ``stop``: 0, or :data:`LOST`."""
    from zincati_py.fleetlock.client import FleetLockClient, FleetLockError
    from zincati_py.fleetlock.protocol import Kind

    assert isinstance(client, FleetLockClient)
    last_ok = granted_at
    while True:
        every = max(1.0, lease / 3)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return 0
        try:
            # Bounded by what is left of the lease: a hung request must not outlive it.
            left = max(0.5, last_ok + lease - time.monotonic())
            grant = await asyncio.wait_for(client.pre_reboot(), left)
            last_ok = time.monotonic()
            lease = grant.lease_seconds or lease
            continue
        except FleetLockError as exc:
            if exc.kind == Kind.GROUP_FULL:
                say(
                    f"lost its slot of group {group!r}: another node holds it now ({exc}); "
                    "stopping the command",
                    priority=2,
                )
                return LOST
            problem = str(exc)
        except TimeoutError:
            problem = "the lock server did not answer in time"
        silent = time.monotonic() - last_ok
        if silent > lease:
            say(
                f"lost its slot of group {group!r}: no renewal succeeded for {silent:.0f}s, "
                f"longer than the {lease}s lease ({problem}); stopping the command",
                priority=2,
            )
            return LOST
        say(f"could not renew the slot of group {group!r} (retrying): {problem}")


async def _release(client: object) -> None:
    from zincati_py.fleetlock.client import FleetLockClient, FleetLockError

    assert isinstance(client, FleetLockClient)
    for attempt in range(RELEASE_ATTEMPTS):
        try:
            await client.steady_state()
            return
        except FleetLockError as exc:
            if attempt == RELEASE_ATTEMPTS - 1:
                say(f"could not release the slot (its lease will lapse): {exc}")
            else:
                await asyncio.sleep(1)


def main(
    url: str,
    group: str,
    ident: str,
    wait_secs: int,
    *,
    token: str | None = None,
) -> int:
    """The slot unit's process: :func:`hold`, ``READY=1`` once the slot is held."""
    from zincati_py.agent.notify import Notifier

    notifier = Notifier()

    def ready() -> None:
        notifier.send(READY="1", STATUS=f"holding a slot of group {group}")

    return asyncio.run(hold(url, group, ident, wait_secs, token=token, ready=ready))
