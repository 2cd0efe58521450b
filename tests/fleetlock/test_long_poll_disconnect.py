"""A long-polling ``pre-reboot`` (header ``fleet-lock-wait``) whose client went away is never
handed a slot: it leaves the wait at once, its queue entry keeps its place but holds no slot
(an offer that lapsed), and a slot granted to it in a write that raced with the disconnect
is given back at once. Raw loopback sockets close or half-close (``shutdown(SHUT_WR)``) the
connection; servers in-process and as a real process, on both backends."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from zincati_py.fleetlock.decide import (
    GroupState,
    Holder,
    Policy,
    Waiter,
    decide_tick,
    decide_unlock,
)
from zincati_py.fleetlock.waiters import lapse

HEADER = {"fleet-lock-protocol": "true"}
CONFIG = "[groups]\ndefault = 1\n"


def raw_pre_reboot(node: str, wait: float) -> bytes:
    body = json.dumps({"client_params": {"id": node, "group": "default"}}).encode()
    head = (
        "POST /v1/pre-reboot HTTP/1.1\r\nHost: 127.0.0.1\r\nfleet-lock-protocol: true\r\n"
        f"fleet-lock-wait: {wait:g}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def address(base: str) -> tuple[str, int]:
    """(host, port) of a server's base URL."""
    host, port = base.split("//")[1].split("/")[0].rsplit(":", 1)
    return host, int(port)


async def a_holds_b_waits(s: aiohttp.ClientSession, base: str) -> socket.socket:
    """``a`` holds the one slot; ``b`` long-polls over a raw socket (returned open) and is
    counted as waiting here."""
    assert (await post(s, base + "v1/pre-reboot", "a"))[0] == 200
    sock = socket.create_connection(address(base), timeout=5)
    try:
        sock.sendall(raw_pre_reboot("b", 60))
        assert await until(lambda: _waiting(s, base, 1), 5)
    except BaseException:
        sock.close()
        raise
    return sock


async def release_a_handing_b(server: Any) -> Any:
    """``a``'s release decided as if ``b``'s request waited here: the slot is handed to
    ``b`` (the outcome, not yet given to ``server.after``)."""
    decide = functools.partial(
        decide_unlock,
        node="a",
        policy=server.policy("default"),
        now=time.time(),
        present=frozenset({"b"}),
    )
    outcome = await server.backend.apply("default", decide)
    assert [h.id for h in outcome.handed] == ["b"]
    return outcome


async def post(
    s: aiohttp.ClientSession, url: str, node: str, wait: float | None = None
) -> tuple[int, Any]:
    headers = dict(HEADER)
    if wait is not None:
        headers["fleet-lock-wait"] = f"{wait:g}"
    body = json.dumps({"client_params": {"id": node, "group": "default"}})
    async with s.post(url, data=body, headers=headers) as r:
        raw = await r.read()
        return r.status, json.loads(raw) if raw else None


async def group(s: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with s.get(base + "v1/groups/default") as r:
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
        return doc


async def until(predicate: Callable[[], Any], secs: float) -> bool:
    """Poll an async predicate every 50 ms for at most ``secs``."""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def gone_waiter_frees_the_slot(base: str, how: str) -> None:
    """Holder ``a``; ``b`` long-polls over a raw socket, then closes or half-closes it; ``a``
    releases: ``c`` is granted within about a second (before: the slot went to ``b``, held
    for the lease, or was kept for ``b`` for the queue's grace)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        pre, steady = base + "v1/pre-reboot", base + "v1/steady-state"
        assert (await post(s, pre, "a"))[0] == 200
        sock = socket.create_connection(address(base), timeout=5)
        try:
            sock.sendall(raw_pre_reboot("b", 60))

            async def b_waits() -> bool:
                doc = await group(s, base)
                return doc["waiting_here"] == 1 and [w["id"] for w in doc["queue"]] == ["b"]

            assert await until(b_waits, 5), await group(s, base)
            if how == "close":
                sock.close()
            else:
                sock.shutdown(socket.SHUT_WR)

            async def b_left() -> bool:
                return (await group(s, base))["waiting_here"] == 0

            left = await until(b_left, 3)  # asserted below, after what matters most
            released = time.monotonic()
            status, doc = await post(s, steady, "a")
            assert status == 200
            status, doc = await post(s, pre, "c", wait=3)
            assert status == 200, doc
            assert time.monotonic() - released < 1.5
            view = await group(s, base)
            assert [h["id"] for h in view["holders"]] == ["c"]
            assert left, "the gone request still waited"
            # b keeps its place (it may come back, as our agent does after interrupting a
            # wait) but holds no slot.
            assert [(w["id"], w["position"]) for w in view["queue"]] == [("b", 1)]
            if how == "shutdown":
                # Nothing was answered on the half-closed connection but its end.
                sock.setblocking(False)
                loop = asyncio.get_running_loop()
                assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 5) == b""
        finally:
            sock.close()
        # b asks again: it is next (c releases, b is granted).
        assert (await post(s, pre, "b"))[0] == 409
        waiting = asyncio.create_task(post(s, pre, "b", wait=10))
        await asyncio.sleep(0.3)
        assert (await post(s, steady, "c"))[0] == 200
        assert (await asyncio.wait_for(waiting, 5))[0] == 200


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_closed_long_poll_is_not_handed_the_slot(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve(CONFIG) as srv:
            await gone_waiter_frees_the_slot(srv.url, "close")

    run(scenario())


def test_half_closed_long_poll_is_not_handed_the_slot(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve(CONFIG) as srv:
            await gone_waiter_frees_the_slot(srv.url, "shutdown")

    run(scenario())


def test_closed_long_poll_on_a_server_process(subprocess_server: Callable[[str], Any]) -> None:
    srv = subprocess_server(CONFIG)
    run(gone_waiter_frees_the_slot(srv.url, "close"))


def test_request_closed_before_it_was_read_does_not_hold_the_head(
    serve: Callable[..., Any],
) -> None:
    """The request and the end of the connection arrive together: it is queued, and does not
    keep the slot from the others for the queue's grace once the holder releases."""

    async def scenario() -> None:
        async with serve(CONFIG) as srv, aiohttp.ClientSession() as s:
            pre, steady = srv.url + "v1/pre-reboot", srv.url + "v1/steady-state"
            assert (await post(s, pre, "a"))[0] == 200
            with socket.create_connection(address(srv.url), timeout=5) as sock:
                sock.sendall(raw_pre_reboot("b", 60))

            async def b_queued() -> bool:
                return [w["id"] for w in (await group(s, srv.url))["queue"]] == ["b"]

            assert await until(b_queued, 5)
            assert await until(lambda: _no_waiter(s, srv.url), 3)
            assert (await post(s, steady, "a"))[0] == 200
            status, doc = await post(s, pre, "c", wait=3)
            assert status == 200, doc

    run(scenario())


async def _no_waiter(s: aiohttp.ClientSession, base: str) -> bool:
    return (await group(s, base))["waiting_here"] == 0


def test_hand_over_racing_the_disconnect_gives_the_slot_back(
    serve: Callable[..., Any],
) -> None:
    """A decision that asked who waits here just before ``b``'s client went away grants ``b``
    the slot it freed; with nobody left to hand it to, it is given back at once."""

    async def scenario() -> None:
        async with serve(CONFIG) as srv, aiohttp.ClientSession() as s:
            pre = srv.url + "v1/pre-reboot"
            server = srv.server
            (await a_holds_b_waits(s, srv.url)).close()  # b's client goes away
            assert await until(lambda: _waiting(s, srv.url, 0), 3)
            # Its entry stops holding slots (the lapse is in the store once its ledger event
            # is: b's ask must come after it, or the lapse lands after the restarted offer);
            assert await until(lambda: _abandoned(s, srv.url, "b"), 3)
            # as the store saw it before that (b asks again without waiting, which restarts
            # its entry's offer):
            assert (await post(s, pre, "b"))[0] == 409
            # a's release, decided while b's request was (said to be) waiting here.
            outcome = await release_a_handing_b(server)
            server.after("default", outcome)  # nobody waits for it here: given back

            async def free() -> bool:
                return (await group(s, srv.url))["holders"] == []

            assert await until(free, 2), await group(s, srv.url)
            status, doc = await post(s, pre, "c", wait=2)
            assert status == 200, doc

    run(scenario())


def test_hand_over_to_a_request_whose_client_just_went_away_gives_the_slot_back(
    serve: Callable[..., Any],
) -> None:
    """The narrow window: ``b``'s connection is lost (its request no longer alive) but the
    waiting request has not left the wait yet when the write that freed ``a``'s slot,
    decided while ``b`` still waited here, hands the slot to it. The slot is given back at
    once (before: nobody gave it back, since the request was still parked; it woke to ask
    again, found itself gone and only lapsed a queue entry it no longer had: ``b`` held the
    slot for the whole lease, and ``c`` was refused)."""

    async def scenario() -> None:
        async with serve(CONFIG) as srv, aiohttp.ClientSession() as s:
            pre = srv.url + "v1/pre-reboot"
            server = srv.server
            with await a_holds_b_waits(s, srv.url) as sock:
                # b's connection, as the server sees it.
                (transport,) = [
                    c.transport
                    for listener in server.listeners
                    for c in listener.conns.values()
                    if c.transport.get_extra_info("peername") == sock.getsockname()
                ]
                outcome = await release_a_handing_b(server)
                # In one step of the event loop: the connection is lost (the request's
                # transport goes), then the outcome is handed over; b's request is still
                # parked (it runs its wake-up only later).
                transport.abort()
                assert server.waiters.waiting("default") == 1
                server.after("default", outcome)

            async def free() -> bool:
                return (await group(s, srv.url))["holders"] == []

            assert await until(free, 3), await group(s, srv.url)
            status, doc = await post(s, pre, "c", wait=2)
            assert status == 200, doc
            history = await s.get(srv.url + "v1/history?node=b")
            kinds = [e["kind"] for e in (await history.json())["events"]]
            assert kinds[-2:] == ["grant", "release"], kinds

    run(scenario())


def test_long_poll_is_still_answered(serve: Callable[..., Any]) -> None:
    """A client that keeps its connection gets the slot as soon as the holder releases,
    over a raw socket and over aiohttp."""

    async def scenario() -> None:
        async with serve(CONFIG) as srv, aiohttp.ClientSession() as s:
            pre, steady = srv.url + "v1/pre-reboot", srv.url + "v1/steady-state"
            assert (await post(s, pre, "a"))[0] == 200
            reader, writer = await asyncio.open_connection(*address(srv.url))
            try:
                writer.write(raw_pre_reboot("b", 30))
                await writer.drain()
                c = asyncio.create_task(post(s, pre, "c", wait=30))
                assert await until(lambda: _waiting(s, srv.url, 2), 5), await group(s, srv.url)
                released = time.monotonic()
                assert (await post(s, steady, "a"))[0] == 200
                status_line = await asyncio.wait_for(reader.readline(), 5)
                assert status_line.startswith(b"HTTP/1.1 200"), status_line
                assert time.monotonic() - released < 1.5
                assert not c.done()
                assert (await post(s, steady, "b"))[0] == 200
                assert (await asyncio.wait_for(c, 5))[0] == 200
            finally:
                writer.close()

    run(scenario())


async def _abandoned(s: aiohttp.ClientSession, base: str, node: str) -> bool:
    async with s.get(base + f"v1/history?node={node}") as r:
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
    return any(e["kind"] == "wait_abandoned" for e in doc["events"])


async def _waiting(s: aiohttp.ClientSession, base: str, n: int) -> bool:
    return (await group(s, base))["waiting_here"] == n


def test_an_abandoned_entry_lapses_and_wakes_no_timer() -> None:
    """Pure: the change a gone waiter makes (waiters.lapse) leaves the entry in place and
    lets the next node be granted; a lapsed offer is no future change (before, its past
    time re-armed the group's timer every 10 ms while anyone waited)."""
    now = 1000.0
    policy = Policy(slots=1, lease_seconds=1800, grace_secs=30.0)
    state = GroupState(
        holders={"a": Holder("a", now - 5, now + 1795)},
        queue=[Waiter("b", now - 4, now - 4), Waiter("c", now - 3, now - 3)],
    )
    change = lapse("b", policy.grace_secs, now)
    new = state.copy()
    event = change(new)
    assert event is not None and event.kind == "wait_abandoned" and event.node == "b"
    assert change(new) is None  # lapsed already: nothing more to write
    assert lapse("nobody", policy.grace_secs, now)(new) is None
    assert [w.id for w in new.queue] == ["b", "c"]
    _, tick = decide_tick(new, policy, now + 1)
    assert tick.next_change == now + 1795  # the lease, not b's lapsed offer
    # a releases: c, waiting here, is granted; b keeps its place.
    after, outcome = decide_unlock(new, "a", policy, now + 2, present=frozenset({"c"}))
    assert after is not None
    assert [h.id for h in outcome.handed] == ["c"]
    assert [w.id for w in after.queue] == ["b"]
