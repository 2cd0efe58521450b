"""A FleetLock steady-state report made by a one-shot child process (issue 17).

The agent's one FleetLock request in a steady state is the steady-state report at start. Made
in the agent, it would load the HTTP stack for good: httpx, httpcore, anyio (and its asyncio
backend), h11, idna, email, http.client... about 5.5 MiB of resident memory that a
long-running agent keeps although it may not make another request for weeks (imported
modules are never unloaded, and what they allocated fragments the heap:
bench/agent_idle.py). A child process (this interpreter, the same environment) makes it
instead with :class:`~zincati_py.fleetlock.client.FleetLockClient` and exits: same request,
same answer, same :class:`~zincati_py.fleetlock.client.FleetLockError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from typing import Any

from zincati_py.fleetlock.client import FleetLockClient, FleetLockError
from zincati_py.fleetlock.protocol import Kind

# What the child runs: the request on stdin, the outcome on stdout, one JSON document each.
_CHILD = "from zincati_py.fleetlock.oneshot import _child_main; _child_main()"
# How long the child may take to start, on top of the request's own timeout.
_CHILD_START_SECS = 30.0

log = logging.getLogger("zincati_py.fleetlock.oneshot")


async def steady_state_once(
    base_url: str,
    node_id: str,
    group: str,
    report: dict[str, str] | None = None,
    *,
    timeout: float = 10.0,
    token: str | None = None,
) -> bool | None:
    """:meth:`FleetLockClient.steady_state` made by a child process (this interpreter, the same
    environment), so the caller never loads the HTTP stack for it (httpx, httpcore, anyio, h11,
    idna, email...: about 5.5 MiB that stays resident once imported, bench/agent_idle.py).

    For the agent, whose one request in a steady state is this report at start: it then idles
    without an HTTP client. Same request, same answer, same :class:`FleetLockError` (kind,
    value, status); the token goes through the child's stdin, never its command line or
    environment. If no child can be run or it answers nothing usable, the report is made here,
    as before. Cancelling the call kills the child."""
    request = json.dumps(
        {
            "base_url": base_url,
            "node_id": node_id,
            "group": group,
            "report": report,
            "timeout": timeout,
            "token": token,
        }
    ).encode()
    answer = await _run_child(request, timeout + _CHILD_START_SECS)
    if answer is None:
        # The child may have sent the report before it failed: steady-state is idempotent,
        # so sending it again is safe (it may then say "nothing released").
        return await _report_here(base_url, node_id, group, report, timeout, token)
    if "error" in answer:
        kind, value, status = answer["error"]
        raise FleetLockError(str(kind), str(value), None if status is None else int(status))
    released = answer.get("released")
    return released if isinstance(released, bool) else None


async def _report_here(
    base_url: str,
    node_id: str,
    group: str,
    report: dict[str, str] | None,
    timeout: float,
    token: str | None,
) -> bool | None:
    """The report made in this process (the child's, or the caller's when no child can)."""
    client = FleetLockClient(base_url, node_id, group, timeout=timeout, token=token)
    try:
        return await client.steady_state(report)
    finally:
        await client.close()


async def _run_child(request: bytes, bound: float) -> dict[str, Any] | None:
    """The child's answer; None if it could not run or said nothing usable (logged)."""
    if not sys.executable:
        return None
    # This interpreter's isolation, and never the working directory on the path ("-P").
    flags = ["-I"] if sys.flags.isolated else ["-s", "-P"] if sys.flags.no_user_site else ["-P"]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *flags,
            "-c",
            _CHILD,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd="/",
            env=_child_env(),
        )
    except OSError as exc:
        log.debug("steady-state report made in this process (no child: %s)", exc)
        return None
    try:
        async with asyncio.timeout(bound):
            out, err = await proc.communicate(request)
    except BaseException as exc:  # timed out, or the caller gave up
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            raise FleetLockError(Kind.TRANSPORT, f"no answer in {bound:g} s", None) from None
        raise
    try:
        answer = json.loads(out)
        if isinstance(answer, dict) and ("error" in answer or "released" in answer):
            return answer
    except ValueError:
        pass
    lines = err.decode(errors="replace").strip().splitlines()
    log.debug(
        "steady-state report made in this process (the child exited %s: %s)",
        proc.returncode,
        lines[-1] if lines else "no output",
    )
    return None


def _child_env() -> dict[str, str]:
    """The agent's environment without what systemd passed to the agent itself (its notify
    socket, watchdog, socket activation): the child must not speak for the agent."""
    own = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")
    return {k: v for k, v in os.environ.items() if not k.startswith(own)}


def _child_main() -> None:
    """The child of :func:`steady_state_once`: one report, its outcome on stdout."""
    req = json.loads(sys.stdin.buffer.read())

    async def report() -> dict[str, Any]:
        try:
            released = await _report_here(
                req["base_url"],
                req["node_id"],
                req["group"],
                req["report"],
                float(req["timeout"]),
                req["token"],
            )
        except FleetLockError as exc:
            return {"error": [exc.kind, exc.value, exc.status]}
        return {"released": released}

    sys.stdout.write(json.dumps(asyncio.run(report())))
