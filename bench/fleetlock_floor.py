"""The floor of the FleetLock server's stack: aiohttp answering ``POST /v1/pre-reboot`` and
``/v1/steady-state`` with one durable write per request and no FleetLock logic at all (no
auth, policy, queue, ledger, log line or metric).

    python bench/fleetlock_floor.py PORT sqlite:PATH    one transaction per request, WAL,
                                                        synchronous=FULL (as the server's)
    python bench/fleetlock_floor.py PORT etcd:URL       one aetcd put per request

``fleetlock_bench.py --floor`` runs it in the same paired rounds as the real servers: no
server on this stack can be faster, so the target ratios are checked against it too.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import urllib.parse
from collections.abc import Awaitable, Callable

from aiohttp import web

ANSWER = b'{"lease_seconds": 600}'


def sqlite_writer(path: str) -> Callable[[str, bytes], Awaitable[None]]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, doc TEXT)")

    async def write(group: str, doc: bytes) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO groups VALUES (?, ?)", (group, doc.decode()))
        conn.execute("COMMIT")

    return write


def etcd_writer(url: str) -> Callable[[str, bytes], Awaitable[None]]:
    import aetcd

    parts = urllib.parse.urlsplit(url)
    client = aetcd.Client(host=parts.hostname, port=parts.port)

    async def write(group: str, doc: bytes) -> None:
        await client.put(f"/floor/{group}".encode(), doc)

    return write


async def serve(port: int, backend: str) -> None:
    kind, _, where = backend.partition(":")
    write = sqlite_writer(where) if kind == "sqlite" else etcd_writer(where)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        await write(json.loads(body)["client_params"]["group"], body)
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/pre-reboot", handle)
    app.router.add_post("/v1/steady-state", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
