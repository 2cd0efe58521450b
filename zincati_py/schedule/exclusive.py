"""Fleet-exclusive runs: a job's command runs only while it holds a FleetLock slot.

A job with ``exclusive_group = "G"`` runs as ``zincati-py schedule _exclusive ... -- ARGV``
(its ``ExecStart=``): before the command starts, the run takes a slot of group G on the
configured FleetLock server (``updates.fleet_lock.base_url``) under the id ``NODE:JOB``, so at
most the group's slots run at once across the whole fleet (1 slot: "on one node only"). The
slot is renewed while the command runs (every third of the lease the server grants, so a host
that dies stops renewing and its lease lapses), and released when the command ends, fails or
is stopped (systemd's SIGTERM at shutdown is passed on to the command, then the slot is
released). When no slot is free the run waits up to ``exclusive_wait_secs``; then it is
*skipped*: exit status :data:`SKIPPED` (the unit's ``SuccessExitStatus=``, so no retry and no
failure hook), a journal line naming the group's holders when the server says, and the
history records the run as ``skipped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

__all__ = ["SKIPPED", "lock_id", "run"]

log = logging.getLogger(__name__)

SKIPPED = 75  # EX_TEMPFAIL: the group was full for the whole wait
UNAVAILABLE = 69  # the lock server could not be asked: the run did not happen
RETRY_EVERY = 2.0  # seconds between attempts while waiting for a slot
RELEASE_ATTEMPTS = 3


def lock_id(node_id: str, job: str) -> str:
    """The FleetLock id of a job's runs on one node."""
    return f"{node_id}:{job}"


def _say(message: str) -> None:
    print(f"zincati-py: {message}", file=sys.stderr, flush=True)


async def _holders(url: str, group: str, token: str | None) -> str:
    """Who holds group's slots, if the server's admin API says (best effort)."""
    from zincati_py.fleetlock.client import FleetLockAdminClient, FleetLockError

    admin = FleetLockAdminClient(url, token=token)
    try:
        doc = await admin.group(group)
    except (FleetLockError, ValueError, TypeError):
        return ""
    finally:
        await admin.close()
    ids = [str(h.get("id")) for h in doc.get("holders", []) if isinstance(h, dict)]
    return f" (held by {', '.join(ids)})" if ids else ""


async def run(
    url: str,
    group: str,
    ident: str,
    wait_secs: int,
    argv: Sequence[str],
    *,
    token: str | None = None,
) -> int:
    """Take a slot, run ``argv`` renewing it, release it; the exit status of the run.
    ``token``: the lock server's bearer token, if it wants one."""
    from zincati_py.fleetlock.client import FleetLockClient, FleetLockError
    from zincati_py.fleetlock.protocol import Kind

    client = FleetLockClient(url, ident, group, token=token)
    try:
        deadline = time.monotonic() + wait_secs
        while True:
            try:
                grant = await client.pre_reboot()
                break
            except FleetLockError as exc:
                left = deadline - time.monotonic()
                if exc.kind == Kind.GROUP_FULL and left > 0:
                    await asyncio.sleep(min(RETRY_EVERY, left))
                    continue
                if exc.kind == Kind.GROUP_FULL:
                    held = await _holders(url, group, token)
                    _say(
                        f"skipped: every slot of group {group!r} is taken{held}"
                        + (f" after waiting {wait_secs}s" if wait_secs else "")
                    )
                    return SKIPPED
                _say(f"not run: the lock server {url} refused or did not answer: {exc}")
                return UNAVAILABLE
        return await _supervise(client, grant.lease_seconds, argv)
    finally:
        await client.close()


async def _supervise(client: object, lease: int | None, argv: Sequence[str]) -> int:
    from zincati_py.fleetlock.client import FleetLockClient, FleetLockError

    assert isinstance(client, FleetLockClient)
    loop = asyncio.get_running_loop()
    try:
        proc = await asyncio.create_subprocess_exec(*argv)
    except OSError as exc:
        _say(f"{argv[0]}: {exc.strerror or exc}")
        await _release(client)
        return 127 if isinstance(exc, FileNotFoundError) else 126

    def forward(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, forward, sig)

    async def renew() -> None:
        every = max(1.0, (lease or 60) / 3)
        while True:
            await asyncio.sleep(every)
            try:
                await client.pre_reboot()
            except FleetLockError as exc:  # keep going: the next renewal may succeed
                _say(f"could not renew the slot: {exc}")

    renewer = asyncio.create_task(renew())
    try:
        status = await proc.wait()
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await _release(client)
    return status if status >= 0 else 128 - status


async def _release(client: object) -> None:
    from zincati_py.fleetlock.client import FleetLockClient, FleetLockError

    assert isinstance(client, FleetLockClient)
    for attempt in range(RELEASE_ATTEMPTS):
        try:
            await client.steady_state()
            return
        except FleetLockError as exc:
            if attempt == RELEASE_ATTEMPTS - 1:
                _say(f"could not release the slot (its lease will lapse): {exc}")
            else:
                await asyncio.sleep(1)


def main(
    url: str,
    group: str,
    ident: str,
    wait_secs: int,
    argv: Sequence[str],
    *,
    token: str | None = None,
) -> int:
    # The command does not need the lock server's token: keep it out of its environment.
    os.environ.pop("CREDENTIALS_DIRECTORY", None)
    return asyncio.run(run(url, group, ident, wait_secs, argv, token=token))
