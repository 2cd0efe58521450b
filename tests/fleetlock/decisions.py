"""Backend decisions as the tests hand them to ``Backend.apply``: a node's lock or release
under a policy, at a time (now unless given)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable
from typing import Any

from zincati_py.fleetlock.backends import Backend
from zincati_py.fleetlock.decide import LockRequest, Policy, decide_lock, decide_unlock


def lock(node: str, policy: Policy, now: float | None = None) -> Any:
    """``node`` asks for a slot with the policy's lease."""
    return functools.partial(
        decide_lock,
        request=LockRequest(node),
        policy=policy,
        lease_seconds=policy.lease_seconds,
        now=time.time() if now is None else now,
    )


def unlock(node: str, policy: Policy, now: float | None = None) -> Any:
    """``node`` releases its slot."""
    return functools.partial(
        decide_unlock, node=node, policy=policy, now=time.time() if now is None else now
    )


async def lock_all(
    backend: Backend, group: str, nodes: Iterable[str], policy: Policy, now: float
) -> list[Any]:
    """Every node of ``nodes`` asks at once (one batch for the backend); their outcomes."""
    return list(await asyncio.gather(*(backend.apply(group, lock(n, policy, now)) for n in nodes)))
