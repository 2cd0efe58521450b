"""The FleetLock wire protocol, every status and kind, on both backends (in-process server on
loopback, raw HTTP requests)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aetcd
import aiohttp
import pytest

from zincati_py.fleetlock.config import load
from zincati_py.fleetlock.protocol import Kind

HEADER = {"fleet-lock-protocol": "true"}


def body(node: str, group: str = "default") -> bytes:
    return json.dumps({"client_params": {"id": node, "group": group}}).encode()


async def post(
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any]:
    async with session.post(
        url, data=data, headers=HEADER if headers is None else headers, **kwargs
    ) as r:
        raw = await r.read()
        return r.status, json.loads(raw) if raw else None


async def get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.get(url, **kwargs) as r:
        return r.status, json.loads(await r.read())


async def lock(
    s: aiohttp.ClientSession, url: str, node: str, group: str = "default"
) -> tuple[int, Any]:
    return await post(s, url + "v1/pre-reboot", body(node, group))


async def unlock(
    s: aiohttp.ClientSession, url: str, node: str, group: str = "default"
) -> tuple[int, Any]:
    return await post(s, url + "v1/steady-state", body(node, group))


async def holders(s: aiohttp.ClientSession, url: str, group: str = "default") -> list[str]:
    status, doc = await get(s, url + f"v1/groups/{group}")
    assert status == 200, doc
    return [h["id"] for h in doc["holders"]]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_lock_relock_unlock_cycle(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("[groups]\ndefault = 1\n") as srv, aiohttp.ClientSession() as s:
            assert await lock(s, srv.url, "a") == (200, {"lease_seconds": 1800})
            # Recursive: the holder locks again (and hears the time left on its lease).
            status, doc = await lock(s, srv.url, "a")
            assert status == 200 and 1795 <= doc["lease_seconds"] <= 1800
            status, err = await lock(s, srv.url, "b")
            assert status == 409 and err["kind"] == Kind.GROUP_FULL
            assert "default" in err["value"]
            # UnlockIfHeld: a non-holder's unlock succeeds and changes nothing.
            assert await unlock(s, srv.url, "b") == (200, {})
            assert await holders(s, srv.url) == ["a"]
            assert await unlock(s, srv.url, "a") == (200, {})
            assert await unlock(s, srv.url, "a") == (200, {})
            assert await lock(s, srv.url, "b") == (200, {"lease_seconds": 1800})
            assert await holders(s, srv.url) == ["b"]

    run(scenario())


def test_header_is_required_exactly(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve() as srv, aiohttp.ClientSession() as s:
            for headers in ({}, {"fleet-lock-protocol": "True"}, {"fleet-lock-protocol": "1"}):
                for path in ("v1/pre-reboot", "v1/steady-state"):
                    status, err = await post(s, srv.url + path, body("a"), headers)
                    assert (status, err["kind"]) == (400, Kind.INVALID_HEADER), headers
            assert await holders(s, srv.url) == []

    run(scenario())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"id": "a", "group": "default"}',
        b'{"client_params": "a"}',
        b'{"client_params": {"group": "default"}}',
        b'{"client_params": {"id": "", "group": "default"}}',
        b'{"client_params": {"id": 7, "group": "default"}}',
        b'{"client_params": {"id": "a"}}',
        b'{"client_params": {"id": "a", "group": "bad group"}}',
        b'{"client_params": {"id": "a", "group": "x/y"}}',
        b'{"client_params": {"id": "a\\nb", "group": "default"}}',
        b"\xff\xfe",
    ],
)
def test_bad_bodies_are_400_invalid_body(serve: Callable[..., Any], raw: bytes) -> None:
    async def scenario() -> None:
        async with serve() as srv, aiohttp.ClientSession() as s:
            for path in ("v1/pre-reboot", "v1/steady-state"):
                status, err = await post(s, srv.url + path, raw)
                assert (status, err["kind"]) == (400, Kind.INVALID_BODY)
                assert err["value"]

    run(scenario())


def test_body_parsed_whatever_the_content_type(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("[groups]\ndefault = 3\n") as srv, aiohttp.ClientSession() as s:
            # Zincati sends no Content-Type at all.
            status, _ = await post(
                s, srv.url + "v1/pre-reboot", body("a"), skip_auto_headers=["Content-Type"]
            )
            assert status == 200
            for i, ctype in enumerate(["application/x-www-form-urlencoded", "text/plain"]):
                headers = {**HEADER, "Content-Type": ctype}
                assert (await post(s, srv.url + "v1/pre-reboot", body(f"n{i}"), headers))[0] == 200
            assert sorted(await holders(s, srv.url)) == ["a", "n0", "n1"]

    run(scenario())


def test_unknown_groups_reject_and_create(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        cfg = 'unknown_groups = "reject"\n[groups]\nknown = 1\n'
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            for op in (lock, unlock):
                status, err = await op(s, srv.url, "a", "nope")
                assert (status, err["kind"]) == (404, Kind.UNKNOWN_GROUP)
            status, err = await get(s, srv.url + "v1/groups/nope")
            assert (status, err["kind"]) == (404, Kind.UNKNOWN_GROUP)
            assert (await lock(s, srv.url, "a", "known"))[0] == 200
        cfg = 'unknown_groups = "create"\ndefault_slots = 2\nlease_seconds = 60\n'
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            assert await lock(s, srv.url, "a", "fresh") == (200, {"lease_seconds": 60})
            assert (await lock(s, srv.url, "b", "fresh"))[0] == 200
            assert (await lock(s, srv.url, "c", "fresh"))[0] == 409
            status, doc = await get(s, srv.url + "v1/groups/fresh")
            assert status == 200 and doc["slots"] == 2 and doc["configured"] is False

    run(scenario())


def test_wrong_method_unknown_path_and_oversized_body(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve() as srv, aiohttp.ClientSession() as s:
            for path in ("v1/pre-reboot", "v1/steady-state", "v1/admin/release"):
                async with s.get(srv.url + path, headers=HEADER) as r:
                    err = json.loads(await r.read())
                    assert (r.status, err["kind"]) == (405, Kind.METHOD_NOT_ALLOWED)
                    assert "POST" in r.headers["Allow"]
            status, err = await post(s, srv.url + "v1/nothing", body("a"))
            assert (status, err["kind"]) == (404, Kind.NOT_FOUND)
            big = json.dumps({"client_params": {"id": "a", "group": "g"}, "pad": "x" * 100_000})
            status, err = await post(s, srv.url + "v1/pre-reboot", big.encode())
            assert (status, err["kind"]) == (413, Kind.BODY_TOO_LARGE)

    run(scenario())


def test_prefix(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve('prefix = "/fleet/lock/"\n') as srv, aiohttp.ClientSession() as s:
            assert srv.url.endswith("/fleet/lock/")
            assert (await lock(s, srv.url, "a"))[0] == 200
            root = srv.url.removesuffix("fleet/lock/")
            assert (await lock(s, root, "a"))[0] == 404

    run(scenario())


def test_no_write_for_noop_requests(
    serve: Callable[..., Any], backend: Any, tmp_path: Path
) -> None:
    """Re-lock early in the lease, unlock of a slot not held and a queued node asking again
    write nothing to the store (checked with the store's own change counters)."""

    async def scenario() -> None:
        async with serve("[groups]\ndefault = 1\n") as srv, aiohttp.ClientSession() as s:
            assert (await lock(s, srv.url, "a"))[0] == 200
            if backend.name == "etcd":
                etcd = aetcd.Client(host="127.0.0.1", port=backend.etcd.client_port)

                async def version() -> int:
                    # The cluster revision moves with every write anywhere in etcd.
                    got = await etcd.get_prefix(backend.key_prefix.encode())
                    return int(got.header.revision)
            else:
                db = sqlite3.connect(tmp_path / "state" / "fleetlock.db")

                async def version() -> int:
                    # data_version changes when another connection commits.
                    return int(db.execute("PRAGMA data_version").fetchone()[0])

            # A refusal writes once: b joins the group's queue.
            assert (await lock(s, srv.url, "b"))[0] == 409
            before = await version()
            assert (await lock(s, srv.url, "a"))[0] == 200
            assert (await lock(s, srv.url, "b"))[0] == 409
            assert (await unlock(s, srv.url, "zz", "other"))[0] == 200
            assert await version() == before
            assert (await unlock(s, srv.url, "b"))[0] == 200  # leaves the queue
            assert await version() != before
            before = await version()
            assert (await unlock(s, srv.url, "b"))[0] == 200
            assert await version() == before
            assert (await unlock(s, srv.url, "a"))[0] == 200
            assert await version() != before
            if backend.name == "etcd":
                await etcd.close()
            else:
                db.close()

    run(scenario())


def test_backend_unavailable_is_503(tmp_path: Path, backend: Any) -> None:
    from testbed.etcd import free_port
    from zincati_py.fleetlock.server import FleetLockServer

    async def scenario(spec: str) -> None:
        path = tmp_path / "c.toml"
        path.write_text(f'listen = "127.0.0.1:0"\nbackend = "{spec}"\n')
        server = FleetLockServer(load(path))
        addr = (await server.start())[0]
        url = f"http://{addr}/"
        try:
            async with aiohttp.ClientSession() as s:
                for op in (lock, unlock):
                    status, err = await op(s, url, "a")
                    assert (status, err["kind"]) == (503, Kind.BACKEND_UNAVAILABLE)
                status, err = await get(s, url + "readyz")
                assert (status, err["kind"]) == (503, Kind.BACKEND_UNAVAILABLE)
                assert (await get(s, url + "healthz")) == (200, {"status": "ok"})
                async with s.get(url + "metrics") as r:
                    assert "fleetlock_backend_up 0.0" in await r.text()
        finally:
            await server.stop()

    if backend.name == "sqlite":
        blocker = tmp_path / "file"
        blocker.write_text("a file where the database directory should be")
        run(scenario(f"sqlite:{blocker}/sub/db"))
    else:
        run(scenario(f"etcd:http://127.0.0.1:{free_port()}"))


def test_slots_follow_config_and_shrinking_evicts_nobody(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with (
            serve("[groups]\ndefault = 3\n", name="c.toml") as srv,
            aiohttp.ClientSession() as s,
        ):
            for n in "abc":
                assert (await lock(s, srv.url, n))[0] == 200
            # Shrink to 1 (SIGHUP-style reload): nobody is evicted, newcomers wait.
            srv.config_path.write_text(
                srv.config_path.read_text().replace("default = 3", "default = 1")
            )
            srv.server.reload(load(srv.config_path))
            assert sorted(await holders(s, srv.url)) == ["a", "b", "c"]
            assert (await lock(s, srv.url, "a"))[0] == 200
            assert (await lock(s, srv.url, "d"))[0] == 409
            await unlock(s, srv.url, "a")
            await unlock(s, srv.url, "b")
            assert (await lock(s, srv.url, "d"))[0] == 409
            await unlock(s, srv.url, "c")
            assert (await lock(s, srv.url, "d"))[0] == 200
            assert (await get(s, srv.url + "v1/groups/default"))[1]["slots"] == 1
        # A restart with a bigger value takes it (airlock kept the first value forever).
        async with serve("[groups]\ndefault = 2\n") as srv, aiohttp.ClientSession() as s:
            assert await holders(s, srv.url) == ["d"]
            assert (await lock(s, srv.url, "e"))[0] == 200
            assert (await lock(s, srv.url, "f"))[0] == 409

    run(scenario())


def test_lease_expiry_frees_a_vanished_nodes_slot(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        cfg = "lease_seconds = 1800\n[groups]\ndefault = { slots = 1, lease_seconds = 2 }\n"
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            assert await lock(s, srv.url, "gone") == (200, {"lease_seconds": 2})
            assert (await lock(s, srv.url, "b"))[0] == 409
            deadline = time.monotonic() + 10
            while (await lock(s, srv.url, "b"))[0] != 200:
                assert time.monotonic() < deadline, "the lease never expired"
                await asyncio.sleep(0.1)
            assert await holders(s, srv.url) == ["b"]
            async with s.get(srv.url + "metrics") as r:
                assert 'fleetlock_lease_expiries_total{group="default"} 1.0' in await r.text()

    run(scenario())


def test_sweeper_frees_expired_slots_without_requests(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("lease_seconds = 1\n") as srv, aiohttp.ClientSession() as s:
            assert (await lock(s, srv.url, "gone", "g1"))[0] == 200
            deadline = time.monotonic() + 10
            while True:
                # Read the store directly: views hide expired holders anyway.
                if not await srv.server.backend.holders("g1"):
                    break
                assert time.monotonic() < deadline, "the sweeper never freed the slot"
                await asyncio.sleep(0.1)
            async with s.get(srv.url + "metrics") as r:
                assert 'fleetlock_lease_expiries_total{group="g1"} 1.0' in await r.text()

    run(scenario())


def test_lease_renewal(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("lease_seconds = 4\n") as srv, aiohttp.ClientSession() as s:
            assert await lock(s, srv.url, "a") == (200, {"lease_seconds": 4})
            first = (await get(s, srv.url + "v1/groups/default"))[1]["holders"][0]
            # Early re-lock: no renewal, the body says how long is left.
            status, doc = await lock(s, srv.url, "a")
            assert status == 200 and doc["lease_seconds"] in (3, 4)
            again = (await get(s, srv.url + "v1/groups/default"))[1]["holders"][0]
            assert again["expires_at"] == first["expires_at"]
            await asyncio.sleep(2.2)
            # Less than half left: renewed to a full lease, acquisition time kept.
            assert await lock(s, srv.url, "a") == (200, {"lease_seconds": 4})
            renewed = (await get(s, srv.url + "v1/groups/default"))[1]["holders"][0]
            assert renewed["expires_at"] > first["expires_at"] + 2
            assert renewed["acquired_at"] == first["acquired_at"]
            await asyncio.sleep(2.2)
            # Still held thanks to the renewal, past the original expiry.
            assert await holders(s, srv.url) == ["a"]

    run(scenario())


def test_zero_lease_never_expires(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("lease_seconds = 0\n") as srv, aiohttp.ClientSession() as s:
            assert await lock(s, srv.url, "a") == (200, {})
            doc = (await get(s, srv.url + "v1/groups/default"))[1]
            assert doc["holders"][0]["expires_at"] is None

    run(scenario())


def test_admin_views_and_release_with_audit(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        cfg = (
            "lease_seconds = 600\n[groups]\ndefault = 2\n"
            "workers = { slots = 5, lease_seconds = 60 }\n"
        )
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            await lock(s, srv.url, "a")
            await lock(s, srv.url, "w1", "workers")
            await lock(s, srv.url, "x", "adhoc")
            status, doc = await get(s, srv.url + "v1/groups")
            assert status == 200
            by_name = {g["group"]: g for g in doc["groups"]}
            assert sorted(by_name) == ["adhoc", "default", "workers"]
            assert by_name["workers"]["slots"] == 5 and by_name["workers"]["lease_seconds"] == 60
            assert by_name["adhoc"]["configured"] is False
            (holder,) = by_name["default"]["holders"]
            assert holder["id"] == "a" and 0 <= holder["age_seconds"] < 10
            assert 590 < holder["expires_in_seconds"] <= 600
            assert holder["expires_at"] - holder["acquired_at"] == pytest.approx(600)
            status, err = await get(s, srv.url + "v1/groups/bad%20name")
            assert (status, err["kind"]) == (400, Kind.INVALID_BODY)

            with caplog.at_level(logging.INFO, logger="zincati_py.fleetlock.audit"):
                status, doc = await post(s, srv.url + "v1/admin/release", body("w1", "workers"), {})
                assert (status, doc) == (200, {"released": True})
                status, doc = await post(s, srv.url + "v1/admin/release", body("w1", "workers"), {})
                assert (status, doc) == (200, {"released": False})
            audit = [
                r.getMessage() for r in caplog.records if r.name == "zincati_py.fleetlock.audit"
            ]
            assert len(audit) == 2
            assert "group=workers id=w1 released=True from=127.0.0.1" in audit[0]
            assert await holders(s, srv.url, "workers") == []
            status, err = await post(s, srv.url + "v1/admin/release", b"{}", {})
            assert (status, err["kind"]) == (400, Kind.INVALID_BODY)

    run(scenario())


def test_tokens(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        cfg = (
            '[groups]\ndefault = 5\n[auth]\nadmin_token = "adm"\nshared_token = "shared"\n'
            '[auth.nodes]\na = "tok-a"\nb = "tok-b"\n'
        )

        def auth(token: str, protocol: bool = True) -> dict[str, str]:
            return {**(HEADER if protocol else {}), "Authorization": f"Bearer {token}"}

        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            pre, steady = srv.url + "v1/pre-reboot", srv.url + "v1/steady-state"
            async with s.post(pre, data=body("a"), headers=HEADER) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
                assert json.loads(await r.read())["kind"] == Kind.UNAUTHORIZED
            status, err = await post(s, pre, body("a"), auth("wrong"))
            assert (status, err["kind"]) == (401, Kind.UNAUTHORIZED)
            # b's token can neither take nor release a's slot.
            status, err = await post(s, pre, body("a"), auth("tok-b"))
            assert (status, err["kind"]) == (403, Kind.FORBIDDEN)
            assert (await post(s, pre, body("a"), auth("tok-a")))[0] == 200
            status, err = await post(s, steady, body("a"), auth("tok-b"))
            assert (status, err["kind"]) == (403, Kind.FORBIDDEN)
            # The shared and the admin token act for any node.
            assert (await post(s, pre, body("c"), auth("shared")))[0] == 200
            assert (await post(s, pre, body("d"), auth("adm")))[0] == 200
            # Admin endpoints: admin token only.
            groups = srv.url + "v1/groups"
            status, err = await get(s, groups)
            assert (status, err["kind"]) == (401, Kind.UNAUTHORIZED)
            for token in ("tok-a", "shared"):
                status, err = await get(s, groups, headers=auth(token, False))
                assert (status, err["kind"]) == (403, Kind.FORBIDDEN)
                status, err = await post(
                    s, srv.url + "v1/admin/release", body("a"), auth(token, False)
                )
                assert (status, err["kind"]) == (403, Kind.FORBIDDEN)
            status, doc = await get(s, srv.url + "v1/groups/default", headers=auth("adm", False))
            assert sorted(h["id"] for h in doc["holders"]) == ["a", "c", "d"]
            status, doc = await post(s, srv.url + "v1/admin/release", body("a"), auth("adm", False))
            assert (status, doc) == (200, {"released": True})
            assert (await post(s, steady, body("c"), auth("shared")))[0] == 200
            status, doc = await get(s, srv.url + "v1/groups/default", headers=auth("adm", False))
            assert [h["id"] for h in doc["holders"]] == ["d"]
            # Probes stay open for load balancers and scrapers.
            assert (await get(s, srv.url + "healthz"))[0] == 200

    run(scenario())


def test_probes_and_metrics(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("[groups]\ndefault = 2\nbig = 10\n") as srv, aiohttp.ClientSession() as s:
            assert await get(s, srv.url + "healthz") == (200, {"status": "ok"})
            assert await get(s, srv.url + "readyz") == (200, {"status": "ok"})
            await lock(s, srv.url, "a")
            await lock(s, srv.url, "b")
            await lock(s, srv.url, "c")
            await post(s, srv.url + "v1/pre-reboot", body("a"), {})
            async with s.get(srv.url + "metrics") as r:
                assert r.status == 200
                text = await r.text()
            for line in [
                'fleetlock_group_slots{group="default"} 2.0',
                'fleetlock_group_slots{group="big"} 10.0',
                'fleetlock_group_holders{group="default"} 2.0',
                'fleetlock_group_holders{group="big"} 0.0',
                'fleetlock_requests_total{endpoint="pre-reboot",kind="ok"} 2.0',
                'fleetlock_requests_total{endpoint="pre-reboot",kind="group_full"} 1.0',
                'fleetlock_requests_total{endpoint="pre-reboot",kind="invalid_header"} 1.0',
                'fleetlock_request_duration_seconds_count{endpoint="pre-reboot"} 4.0',
                "fleetlock_backend_up 1.0",
            ]:
                assert line in text, line
            age = next(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith('fleetlock_group_oldest_holder_age_seconds{group="default"}')
            )
            assert 0 <= age < 10

    run(scenario())
