"""Issue 15, fleet control on the lock server, on both backends: the fair FIFO queue
(polling and long-polling clients, grace, expiry, SIGKILL), pause/resume, cooldown, the
rollout circuit breaker and version holds, the ledger and rollout summaries, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.fleetlock import decisions
from zincati_py.fleetlock.protocol import Kind

HEADER = {"fleet-lock-protocol": "true"}


def body(node: str, group: str = "default", **extra: str) -> bytes:
    return json.dumps({"client_params": {"id": node, "group": group, **extra}}).encode()


async def call(
    s: aiohttp.ClientSession, url: str, raw: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with s.post(url, data=raw, headers=HEADER if headers is None else headers) as r:
        data = await r.read()
        return r.status, json.loads(data) if data else None


async def lock(
    s: aiohttp.ClientSession, url: str, node: str, wait: float | None = None, **extra: str
) -> tuple[int, Any]:
    headers = dict(HEADER)
    if wait is not None:
        headers["fleet-lock-wait"] = str(wait)
    return await call(s, url + "v1/pre-reboot", body(node, **extra), headers)


async def unlock(s: aiohttp.ClientSession, url: str, node: str, **extra: str) -> tuple[int, Any]:
    return await call(s, url + "v1/steady-state", body(node, **extra))


async def admin(s: aiohttp.ClientSession, url: str, **doc: Any) -> dict[str, Any]:
    async with s.post(url + "v1/admin/group", json={"group": "default", **doc}) as r:
        assert r.status == 200, await r.text()
        result: dict[str, Any] = await r.json()
        return result


async def view(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with s.get(url + "v1/groups/default") as r:
        result: dict[str, Any] = await r.json()
        return result


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


def test_fifo_for_polling_clients_exactly_as_zincati_sees_it(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("[groups]\ndefault = 1\n") as srv, aiohttp.ClientSession() as s:
            assert (await lock(s, srv.url, "a"))[0] == 200
            for node in "bcd":
                # Zincati-shaped: no header, no extra keys, the body as before.
                async with s.post(
                    srv.url + "v1/pre-reboot",
                    data=json.dumps(
                        {"client_params": {"id": node, "group": "default"}}, indent=2
                    ).encode(),
                    headers=HEADER,
                    skip_auto_headers=["Content-Type"],
                ) as r:
                    assert r.status == 409
                    assert json.loads(await r.read()) == {
                        "kind": "group_full",
                        "value": "all 1 reboot slot(s) of group 'default' are taken",
                    }
            assert [w["id"] for w in (await view(s, srv.url))["queue"]] == ["b", "c", "d"]
            assert (await unlock(s, srv.url, "a"))[0] == 200
            # The freed slot is held for the head: d and c ask first and are refused.
            assert (await lock(s, srv.url, "d"))[0] == 409
            assert (await lock(s, srv.url, "c"))[0] == 409
            assert (await lock(s, srv.url, "b"))[0] == 200
            assert (await unlock(s, srv.url, "b"))[0] == 200
            assert (await lock(s, srv.url, "d"))[0] == 409
            assert (await lock(s, srv.url, "c"))[0] == 200

    run(scenario())


def test_long_poll_grants_in_order_and_refuses_at_the_deadline(
    serve: Callable[..., Any],
) -> None:
    async def scenario() -> None:
        async with serve("[groups]\ndefault = 1\n") as srv, aiohttp.ClientSession() as s:
            assert (await lock(s, srv.url, "a"))[0] == 200
            b = asyncio.create_task(lock(s, srv.url, "b", wait=20))
            await asyncio.sleep(0.3)
            c = asyncio.create_task(lock(s, srv.url, "c", wait=20))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            status, doc = await lock(s, srv.url, "late", wait=0.5)
            assert status == 409 and 0.4 < time.monotonic() - started < 5
            assert doc == {
                "kind": "group_full",
                "value": "all 1 reboot slot(s) of group 'default' are taken",
                "position": 3,
                "queue_length": 3,
            }
            await unlock(s, srv.url, "late")  # gives up its place
            assert not b.done() and not c.done()
            released = time.monotonic()
            assert (await unlock(s, srv.url, "a"))[0] == 200
            assert (await asyncio.wait_for(b, 5))[0] == 200
            assert time.monotonic() - released < 1.5
            assert not c.done()
            assert (await unlock(s, srv.url, "b"))[0] == 200
            assert (await asyncio.wait_for(c, 5))[0] == 200

    run(scenario())


def test_grace_bounds_how_long_a_slot_is_held_for_an_absent_head(
    serve: Callable[..., Any],
) -> None:
    async def scenario() -> None:
        cfg = "[groups]\ndefault = 1\n[queue]\ngrace_secs = 1\n"
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            await lock(s, srv.url, "a")
            assert (await lock(s, srv.url, "head"))[0] == 409
            await unlock(s, srv.url, "a")
            assert (await lock(s, srv.url, "other"))[0] == 409
            await asyncio.sleep(1.2)
            # The head did not come back in time: the slot is not idled for it any longer.
            assert (await lock(s, srv.url, "other"))[0] == 200
            queue = (await view(s, srv.url))["queue"]
            assert [w["id"] for w in queue] == ["head"]  # it keeps its place

    run(scenario())


def test_queue_entries_of_nodes_that_stopped_asking_expire(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        cfg = "[groups]\ndefault = 1\n[queue]\nexpiry_secs = 1\n"
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            await lock(s, srv.url, "a")
            assert (await lock(s, srv.url, "gone"))[0] == 409
            await asyncio.sleep(1.2)
            assert (await lock(s, srv.url, "here"))[0] == 409
            await unlock(s, srv.url, "a")
            assert (await lock(s, srv.url, "here"))[0] == 200
            events = await history(s, srv.url, node="gone")
            assert [e["kind"] for e in events] == ["queue_expiry"]

    run(scenario())


async def history(s: aiohttp.ClientSession, url: str, **query: str) -> list[dict[str, Any]]:
    async with s.get(url + "v1/history", params=query) as r:
        assert r.status == 200
        events: list[dict[str, Any]] = (await r.json())["events"]
        return events


def test_fifo_order_survives_a_sigkill(subprocess_server: Callable[[str], Any]) -> None:
    srv = subprocess_server("[groups]\ndefault = 1\n")

    async def before() -> None:
        async with aiohttp.ClientSession() as s:
            assert (await lock(s, srv.url, "a"))[0] == 200
            for node in ("n1", "n2", "n3"):
                assert (await lock(s, srv.url, node))[0] == 409

    async def after() -> None:
        async with aiohttp.ClientSession() as s:
            assert (await unlock(s, srv.url, "a"))[0] == 200
            assert (await lock(s, srv.url, "n3", wait=0.2))[0] == 409
            assert (await lock(s, srv.url, "n2"))[0] == 409
            assert (await lock(s, srv.url, "n1"))[0] == 200
            assert (await lock(s, srv.url, "n2"))[0] == 409

    run(before())
    srv.kill()
    srv.start()
    run(after())


def test_pause_resume_and_cooldown(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with serve("[groups]\ndefault = 2\n") as srv, aiohttp.ClientSession() as s:
            assert (await lock(s, srv.url, "a"))[0] == 200
            doc = await admin(s, srv.url, action="pause", reason="bad week")
            assert doc["paused"] and doc["pause"]["reason"] == "bad week"
            status, err = await lock(s, srv.url, "b")
            assert (status, err["kind"]) == (409, Kind.GROUP_PAUSED)
            # Holders finish: renewing and releasing still work.
            assert (await lock(s, srv.url, "a"))[0] == 200
            assert (await unlock(s, srv.url, "a"))[0] == 200
            waiting = asyncio.create_task(lock(s, srv.url, "b", wait=10))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await admin(s, srv.url, action="resume")
            assert (await asyncio.wait_for(waiting, 5))[0] == 200
            # Cooldown at runtime: a freed slot is granted again only after it.
            await admin(s, srv.url, action="cooldown", seconds=1)
            await unlock(s, srv.url, "b")
            assert (await lock(s, srv.url, "c"))[0] == 200  # the other slot was free
            assert (await lock(s, srv.url, "d"))[0] == 409  # b's slot cools down
            started = time.monotonic()
            assert (await lock(s, srv.url, "d", wait=5))[0] == 200
            assert 0.3 < time.monotonic() - started < 3
            kinds = [e["kind"] for e in await history(s, srv.url)]
            assert {"pause", "resume", "cooldown"} <= set(kinds)

    with caplog.at_level(logging.INFO, logger="zincati_py.fleetlock.audit"):
        run(scenario())
    audit = [r.getMessage() for r in caplog.records if r.name == "zincati_py.fleetlock.audit"]
    assert any(m.startswith("admin pause: group=default") and "bad week" in m for m in audit)
    assert any(m.startswith("admin resume: group=default") for m in audit)


def test_configured_pause_and_cooldown(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        cfg = "[groups]\ndefault = { slots = 1, paused = true }\nfast = { cooldown_secs = 1 }\n"
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            status, err = await lock(s, srv.url, "a")
            assert (status, err["kind"]) == (409, Kind.GROUP_PAUSED)
            assert (await view(s, srv.url))["paused"] is True
            fast = srv.url + "v1/pre-reboot"
            assert (await call(s, fast, body("x", "fast")))[0] == 200
            await call(s, srv.url + "v1/steady-state", body("x", "fast"))
            assert (await call(s, fast, body("y", "fast")))[0] == 409
            await asyncio.sleep(1.1)
            assert (await call(s, fast, body("y", "fast")))[0] == 200

    run(scenario())


def test_circuit_breaker_halts_a_version_while_another_rolls(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        cfg = "max_failures = 2\n[groups]\ndefault = 5\n"
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            url = srv.url
            v2 = {"from_version": "1", "to_version": "2"}
            for node in ("n1", "n2", "n3"):
                assert (await lock(s, url, node, **v2))[0] == 200
            assert (await unlock(s, url, "n1", booted_version="2", health="healthy"))[0] == 200
            assert (await unlock(s, url, "n2", booted_version="1", health="failed"))[0] == 200
            assert (await lock(s, url, "n4", **v2))[0] == 200
            # Rolled back to 1: a failure even though it says healthy.
            assert (await unlock(s, url, "n3", booted_version="1", health="healthy"))[0] == 200
            status, err = await lock(s, url, "n5", **v2)
            assert (status, err["kind"]) == (409, Kind.ROLLOUT_HALTED)
            # Another version still rolls; clients that send no version are unaffected.
            assert (await lock(s, url, "n6", from_version="1", to_version="3"))[0] == 200
            assert (await lock(s, url, "zincati"))[0] == 200
            doc = await view(s, url)
            assert list(doc["halted"]) == ["2"]
            assert doc["versions"]["2"] == {"grants": 4, "healthy": 1, "failed": 2}
            async with s.get(url + "v1/rollouts") as r:
                rows = {row["version"]: row for row in (await r.json())["rollouts"]}
            assert rows["2"]["halted"] and rows["2"]["done"] == 1 and rows["2"]["failed"] == 2
            assert rows["2"]["holding"] == 1 and rows["3"]["holding"] == 1
            async with s.get(url + "metrics") as r:
                text = await r.text()
            assert 'fleetlock_version_halted{group="default",version="2"} 1.0' in text
            assert 'fleetlock_update_failures_total{group="default",version="2"} 2.0' in text
            await admin(s, url, action="resume_version", version="2")
            assert (await lock(s, url, "n5", **v2))[0] == 200
            # A hold: only version 3 may be the target.
            await admin(s, url, action="hold", version="3")
            await unlock(s, url, "n5")
            status, err = await lock(s, url, "n7", **v2)
            assert (status, err["kind"]) == (409, Kind.VERSION_HELD)
            assert (await lock(s, url, "n7", from_version="1", to_version="3"))[0] == 200
            kinds = [e["kind"] for e in await history(s, url, version="2")]
            assert kinds.count("failure") == 2 and "halt" in kinds and "resume_version" in kinds
            (grant,) = [e for e in await history(s, url, node="n1") if e["kind"] == "release"]
            assert grant["health"] == "healthy" and grant["downtime_secs"] >= 0

    run(scenario())


def test_never_came_back_counts_as_a_failure(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        cfg = "[groups]\ndefault = { slots = 2, lease_seconds = 1, max_failures = 1 }\n"
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            assert (await lock(s, srv.url, "lost", to_version="9"))[0] == 200
            await asyncio.sleep(1.2)
            status, err = await lock(s, srv.url, "next", to_version="9")
            assert (status, err["kind"]) == (409, Kind.ROLLOUT_HALTED)
            events = await history(s, srv.url)
            kinds = [e["kind"] for e in events]
            assert kinds[-2:] == ["expiry", "halt"], events

    run(scenario())


def test_queue_metrics_and_admin_auth(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        cfg = '[groups]\ndefault = 1\n[auth]\nadmin_token = "adm"\nshared_token = "sh"\n'
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            auth = {**HEADER, "Authorization": "Bearer sh"}
            await call(s, srv.url + "v1/pre-reboot", body("a"), auth)
            await call(s, srv.url + "v1/pre-reboot", body("b"), auth)
            for path in ("v1/history", "v1/rollouts", "ui"):
                async with s.get(srv.url + path) as r:
                    assert r.status == (200 if path == "ui" else 401), path
            async with s.post(srv.url + "v1/admin/group", json={"group": "default"}) as r:
                assert r.status == 401
            async with s.get(srv.url + "metrics") as r:
                text = await r.text()
            assert 'fleetlock_queue_length{group="default"} 1.0' in text
            assert 'fleetlock_group_paused{group="default"} 0.0' in text
            assert 'fleetlock_grants_total{group="default"} 1.0' in text
            assert "fleetlock_queue_oldest_wait_seconds" in text

    run(scenario())


def test_breaker_counts_our_agents_steady_state_report(serve: Callable[..., Any]) -> None:
    """Our agent announces no target at pre-reboot; its steady-state report names the
    version that failed (health gate) or the healthy one it booted."""

    async def scenario() -> None:
        cfg = "max_failures = 1\n[groups]\ndefault = 3\n"
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            for node in ("ok", "bad"):
                assert (await lock(s, srv.url, node))[0] == 200
            assert (await unlock(s, srv.url, "ok", booted_version="41", health="healthy"))[0] == 200
            report = {"booted_version": "40", "health": "failed", "failed_version": "41"}
            assert (await unlock(s, srv.url, "bad", **report))[0] == 200
            doc = await view(s, srv.url)
            assert doc["versions"]["41"] == {"healthy": 1, "failed": 1}
            assert list(doc["halted"]) == ["41"]
            status, err = await lock(s, srv.url, "next", to_version="41")
            assert (status, err["kind"]) == (409, Kind.ROLLOUT_HALTED)

    run(scenario())


def test_sqlite_queue_rows_keep_their_order_when_read_afresh(tmp_path: Any) -> None:
    """SQLite stores queue entries as rows (only changed ones are written): a fresh reader
    sees the same order, a node that left and asked again at the back."""
    from zincati_py.fleetlock.backends.sqlite import SqliteBackend
    from zincati_py.fleetlock.decide import Policy

    policy = Policy(slots=1, lease_seconds=60)

    async def scenario() -> list[str]:
        backend = SqliteBackend(str(tmp_path / "q.db"))
        now = time.time()
        for i, node in enumerate(["holder", "a", "b", "c"]):
            await backend.apply("g", decisions.lock(node, policy, now + i))
        await backend.apply("g", decisions.unlock("a", policy, now + 5))
        await backend.apply("g", decisions.lock("a", policy, now + 6))
        await backend.close()
        fresh = SqliteBackend(str(tmp_path / "q.db"))
        try:
            return [w.id for w in (await fresh.state("g")).queue]
        finally:
            await fresh.close()

    assert run(scenario()) == ["b", "c", "a"]


def test_a_change_with_many_ledger_events(serve: Callable[..., Any]) -> None:
    """150 queue entries expire in one change: etcd takes at most 128 operations per
    transaction, so such a change stores its events under one key (it answered 503)."""

    async def scenario() -> None:
        cfg = "[groups]\ndefault = 1\n[queue]\nexpiry_secs = 1\n"
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            await lock(s, srv.url, "holder")
            statuses = await asyncio.gather(*(lock(s, srv.url, f"n{i:03d}") for i in range(150)))
            assert {status for status, _ in statuses} == {409}
            await asyncio.sleep(1.2)
            assert (await unlock(s, srv.url, "holder"))[0] == 200
            assert (await lock(s, srv.url, "late"))[0] == 200
            kinds = [e["kind"] for e in await history(s, srv.url)]
            assert kinds.count("queue_expiry") == 150
            assert kinds[-1] == "grant"

    run(scenario())


def test_sqlite_group_commit_shares_transactions_and_answers_after_commit(
    tmp_path: Any,
) -> None:
    """Issue 17: concurrent changes share fsynced transactions; every answered grant is in
    the file (a fresh reader sees it)."""
    from zincati_py.fleetlock.backends.sqlite import SqliteBackend
    from zincati_py.fleetlock.decide import Policy

    policy = Policy(slots=100, lease_seconds=600)

    async def scenario() -> tuple[int, int, set[str], set[str]]:
        backend = SqliteBackend(str(tmp_path / "gc.db"))
        now = time.time()
        outcomes = await decisions.lock_all(backend, "g", [f"n{i}" for i in range(60)], policy, now)
        granted = {o.holder.id for o in outcomes if o.granted and o.holder is not None}
        commits, changes = backend.commits, backend.changes
        await backend.close()
        fresh = SqliteBackend(str(tmp_path / "gc.db"))
        try:
            stored = set((await fresh.state("g")).holders)
        finally:
            await fresh.close()
        return commits, changes, granted, stored

    commits, changes, granted, stored = run(scenario())
    assert changes == 60 and len(granted) == 60
    assert commits < changes  # several changes per transaction
    assert stored == granted
