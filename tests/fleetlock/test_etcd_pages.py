"""The etcd backend's queue pages on a real etcd: a grant or release in a long queue rewrites
the small group document and one page; a server upgraded in place reads the previous layout
(the queue inside the group document) and moves it to pages without losing holders or
order; a document written by a server that predates pages owns the queue again."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aetcd

from testbed.etcd import PrivateEtcd
from tests.fleetlock.decisions import lock_all, unlock
from zincati_py.fleetlock.backends.etcd import EtcdBackend
from zincati_py.fleetlock.backends.etcd_layout import MARKER, queue_base
from zincati_py.fleetlock.client import FleetLockClient, FleetLockError, new_session
from zincati_py.fleetlock.config import load
from zincati_py.fleetlock.decide import Policy
from zincati_py.fleetlock.server import FleetLockServer


def _etcd_client(etcd: PrivateEtcd) -> aetcd.Client:
    return aetcd.Client(host="127.0.0.1", port=etcd.client_port)


async def _keys(client: aetcd.Client, prefix: bytes) -> dict[bytes, tuple[bytes, int]]:
    found = await client.get_prefix(prefix)
    return {kv.key: (kv.value, int(kv.mod_revision)) for kv in found}


def test_a_release_in_a_long_queue_rewrites_the_document_and_one_page(
    etcd: PrivateEtcd, tmp_path: Path
) -> None:
    prefix = f"/pages-{tmp_path.name}/"
    policy = Policy(slots=2, lease_seconds=600)

    async def scenario() -> tuple[int, int, list[str], list[str], list[str], Any]:
        backend = EtcdBackend(etcd.url, key_prefix=prefix)
        client = _etcd_client(etcd)
        try:
            now = time.time()
            nodes = [f"n{i:03d}" for i in range(300)]
            outcomes = await lock_all(backend, "g", nodes, policy, now)
            granted = sorted(f"n{i:03d}" for i, o in enumerate(outcomes) if o.granted)
            qbase = queue_base(prefix.encode(), "g")
            before = await _keys(client, qbase)
            await backend.apply("g", unlock(granted[0], policy, now + 1))
            after = await _keys(client, qbase)
            touched = [k.decode() for k in after if after[k][1] != before.get(k, (b"", 0))[1]]
            doc = await client.get(prefix.encode() + b"groups/g")
            fresh = EtcdBackend(etcd.url, key_prefix=prefix)
            try:
                state = await fresh.state("g")
            finally:
                await fresh.close()
            return len(before), len(doc.value), touched, granted, sorted(state.holders), state
        finally:
            await client.close()
            await backend.close()

    pages, doc_size, touched, granted, holders, state = asyncio.run(
        asyncio.wait_for(scenario(), 60)
    )
    assert pages == 5  # 298 queued: 64 per page
    assert doc_size < 1000
    # The head (the first page) is offered the freed slot: that page and the document only.
    assert len(touched) == 1 and touched[0].endswith("/000000000000")
    assert holders == granted[1:]
    assert len(state.queue) == 298 and state.queue[0].offered is not None
    assert all(w.offered is None for w in state.queue[1:])


def _server(tmp_path: Path, etcd: PrivateEtcd, prefix: str) -> FleetLockServer:
    path = tmp_path / "server.toml"
    path.write_text(
        f'listen = "127.0.0.1:0"\nbackend = "etcd:{etcd.url}"\n[groups]\ng = 1\n'
        f'[etcd]\nkey_prefix = "{prefix}"\n'
    )
    return FleetLockServer(load(path))


async def _ask(client: FleetLockClient) -> str:
    try:
        await client.pre_reboot()
    except FleetLockError as exc:
        return exc.kind
    return "granted"


def _old_document(holder: str, queue: list[str], now: float) -> bytes:
    """A group as the backend stored it before pages: the queue inside the document."""
    doc: dict[str, Any] = {
        "holders": [{"id": holder, "acquired_at": now, "expires_at": now + 600}],
        "queue": [[node, now + i, now + i, None, None] for i, node in enumerate(queue)],
    }
    return json.dumps(doc).encode()


def test_a_server_upgraded_in_place_keeps_the_previous_layouts_holders_and_queue(
    etcd: PrivateEtcd, tmp_path: Path
) -> None:
    prefix = f"/upgrade-{tmp_path.name}/"
    key = prefix.encode() + b"groups/g"

    async def scenario() -> tuple[list[str], dict[str, Any], list[list[str]]]:
        client = _etcd_client(etcd)
        now = time.time()
        await client.put(key, _old_document("h", ["n1", "n2", "n3"], now))
        server = _server(tmp_path, etcd, prefix)
        url = f"http://{(await server.start())[0]}/"
        answers = []
        try:
            async with new_session() as session:
                node = {n: FleetLockClient(url, n, "g", session=session) for n in ("h", "n1", "n2")}
                answers.append(await _ask(node["n2"]))  # queued behind n1: the slot is h's
                assert await node["h"].steady_state() is True  # h held it: released
                answers.append(await _ask(node["n2"]))  # n1 is offered the free slot first
                answers.append(await _ask(node["n1"]))
            doc = json.loads((await client.get(key)).value)
            found = await client.get_prefix(queue_base(prefix.encode(), "g"))
            pages = [[w[0] for w in json.loads(kv.value)] for kv in found]
        finally:
            await server.stop()
            await client.close()
        return answers, doc, pages

    answers, doc, pages = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert answers == ["group_full", "group_full", "granted"]
    assert [h["id"] for h in doc["holders"]] == ["n1"]
    assert "queue" not in doc and len(doc[MARKER]) == 1
    assert pages == [["n2", "n3"]]


def test_a_document_without_pages_owns_the_queue_and_stale_pages_go(
    etcd: PrivateEtcd, tmp_path: Path
) -> None:
    """A server that predates pages, sharing the etcd, rewrote the group (its document has
    no page list): its queue is the queue; the pages left behind are ignored, then deleted."""
    prefix = f"/older-{tmp_path.name}/"
    key = prefix.encode() + b"groups/g"

    async def scenario() -> tuple[list[str], list[str], int]:
        client = _etcd_client(etcd)
        now = time.time()
        server = _server(tmp_path, etcd, prefix)
        url = f"http://{(await server.start())[0]}/"
        answers = []
        try:
            async with new_session() as session:
                node = {n: FleetLockClient(url, n, "g", session=session) for n in "abcxy"}
                for n in "abc":
                    answers.append(await _ask(node[n]))  # a holds, b and c queue (pages)
                # The older server's write: holder x, queue [y] in the document.
                await client.put(key, _old_document("x", ["y"], now))
                answers.append(await _ask(node["b"]))  # b joins behind y
                assert await node["x"].steady_state() is True
                answers.append(await _ask(node["b"]))  # y is offered the slot first
                answers.append(await _ask(node["y"]))
            found = await client.get_prefix(queue_base(prefix.encode(), "g"))
            pages = [w[0] for kv in found for w in json.loads(kv.value)]
            doc = json.loads((await client.get(key)).value)
        finally:
            await server.stop()
            await client.close()
        return answers, pages, len(doc[MARKER])

    answers, pages, listed = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert answers == ["granted", "group_full", "group_full", "group_full", "group_full", "granted"]
    assert pages == ["b"]  # c's entry went with the pages the older server's write orphaned
    assert listed == 1
