"""The low-level client against our real server over loopback (plus a stand-in for the
non-protocol answers a proxy or another server may give)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web  # the stand-in server only; the client is httpx

from testbed.etcd import free_port
from zincati_py.fleetlock import protocol
from zincati_py.fleetlock.client import (
    FleetLockAdminClient,
    FleetLockClient,
    FleetLockError,
    LockGrant,
    new_session,
)
from zincati_py.fleetlock.protocol import Kind

# The client does not care which backend: SQLite keeps these fast.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@sqlite_only
def test_lock_unlock_and_errors(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("lease_seconds = 900\n[groups]\nworkers = 1\n") as srv:
            a = FleetLockClient(srv.url, "a", "workers")
            b = FleetLockClient(srv.url, "b", "workers")
            try:
                assert await a.pre_reboot() == LockGrant(lease_seconds=900)
                again = (await a.pre_reboot()).lease_seconds
                assert again is not None and 895 <= again <= 900
                with pytest.raises(FleetLockError) as exc:
                    await b.pre_reboot()
                assert exc.value.status == 409
                assert exc.value.kind == Kind.GROUP_FULL
                assert "workers" in exc.value.value
                await b.steady_state()
                await a.steady_state()
                await a.steady_state()
                assert await b.pre_reboot() == LockGrant(lease_seconds=900)
                bad = FleetLockClient(srv.url, "a", "no such/group")
                with pytest.raises(FleetLockError) as exc:
                    await bad.pre_reboot()
                assert (exc.value.status, exc.value.kind) == (400, Kind.INVALID_BODY)
                await bad.close()
            finally:
                await a.close()
                await b.close()

    run(scenario())


@sqlite_only
def test_base_url_is_a_directory(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve('prefix = "/fleet"\n') as srv:
            without_slash = srv.url.rstrip("/")
            assert without_slash.endswith("/fleet")
            client = FleetLockClient(without_slash, "a", "default")
            assert client.base_url == srv.url
            try:
                await client.pre_reboot()
                await client.steady_state()
            finally:
                await client.close()

    run(scenario())


@sqlite_only
def test_no_lease_when_the_server_sends_none(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("lease_seconds = 0\n") as srv:
            client = FleetLockClient(srv.url, "a", "default")
            try:
                assert await client.pre_reboot() == LockGrant(lease_seconds=None)
            finally:
                await client.close()

    run(scenario())


@sqlite_only
def test_token(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        cfg = '[auth]\nadmin_token = "adm"\n[auth.nodes]\na = "secret-a"\n'
        async with serve(cfg) as srv:
            good = FleetLockClient(srv.url, "a", "default", token="secret-a")
            none = FleetLockClient(srv.url, "a", "default")
            other = FleetLockClient(srv.url, "b", "default", token="secret-a")
            try:
                await good.pre_reboot()
                for client, status, kind in [
                    (none, 401, Kind.UNAUTHORIZED),
                    (other, 403, Kind.FORBIDDEN),
                ]:
                    with pytest.raises(FleetLockError) as exc:
                        await client.steady_state()
                    assert (exc.value.status, exc.value.kind) == (status, kind)
            finally:
                for c in (good, none, other):
                    await c.close()

    run(scenario())


def test_transport_errors_have_no_status() -> None:
    async def scenario() -> None:
        client = FleetLockClient(f"http://127.0.0.1:{free_port()}/", "a", "default", timeout=2)
        try:
            with pytest.raises(FleetLockError) as exc:
                await client.pre_reboot()
            assert exc.value.status is None and exc.value.kind == Kind.TRANSPORT
        finally:
            await client.close()

    run(scenario())


@asynccontextmanager
async def stand_in(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    """Not our server: a plain aiohttp app answering every POST with ``handler``."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/base"
    finally:
        await runner.cleanup()


def test_non_protocol_answers() -> None:
    seen: list[tuple[str, str, bytes]] = []
    content_types: set[str] = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.get(protocol.HEADER, ""), await request.read()))
        content_types.add(request.content_type)
        node = (await request.json())["client_params"]["id"]
        if node == "html":
            return web.Response(status=502, text="<html>Bad Gateway</html>")
        if node == "empty":
            return web.Response(status=423)
        if node == "odd-json":
            return web.json_response({"kind": "busy", "value": {"n": 1}}, status=429)
        if node == "slow":
            await asyncio.sleep(1)
        if node == "no-content":
            return web.Response(status=204)
        return web.Response(text="OK")  # a 200 without JSON: success, no lease

    async def scenario() -> None:
        async with stand_in(handler) as url:
            expect = {
                "html": (502, "http_502", "<html>Bad Gateway</html>"),
                "empty": (423, Kind.GROUP_FULL, "HTTP 423"),
                "odd-json": (429, "busy", '{"n": 1}'),
            }
            for node, (status, kind, value) in expect.items():
                client = FleetLockClient(url, node, "g")
                with pytest.raises(FleetLockError) as exc:
                    await client.pre_reboot()
                assert (exc.value.status, exc.value.kind, exc.value.value) == (status, kind, value)
                await client.close()
            for node in ("no-content", "plain"):
                client = FleetLockClient(url, node, "g")
                assert await client.pre_reboot() == LockGrant(lease_seconds=None)
                await client.steady_state()
                await client.close()
            slow = FleetLockClient(url, "slow", "g", timeout=0.3)
            with pytest.raises(FleetLockError) as exc:
                await slow.pre_reboot()
            assert exc.value.status is None and exc.value.kind == Kind.TRANSPORT
            await slow.close()
        path, header, body = seen[0]
        assert path == "/base/v1/pre-reboot" and header == "true"
        assert body == b'{"client_params": {"id": "html", "group": "g"}}'
        assert content_types == {"application/json"}
        assert ("/base/v1/steady-state", "true") in [(p, h) for p, h, _ in seen]

    run(scenario())


@sqlite_only
def test_borrowed_session_stays_open(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve() as srv, httpx.AsyncClient() as session:
            client = FleetLockClient(srv.url, "a", "default", session=session)
            await client.pre_reboot()
            await client.close()
            assert not session.is_closed
            admin = FleetLockAdminClient(srv.url, session=session)
            assert [g["group"] for g in await admin.groups()] == ["default"]
            assert await admin.release("default", "a") is True
            assert await admin.release("default", "a") is False
            assert (await admin.group("default"))["holders"] == []

    run(scenario())


@sqlite_only
def test_unix_socket_and_tcp_together(serve: Callable[..., Any], tmp_path: Path) -> None:
    sock = tmp_path / "run" / "fleetlock.sock"

    async def scenario() -> None:
        async with serve(f'listen = ["127.0.0.1:0", "unix:{sock}"]\n') as srv:
            assert f"unix:{sock}" in srv.server.addresses
            async with new_session(uds=str(sock)) as session:
                over_unix = FleetLockClient("http://localhost/", "a", "default", session=session)
                await over_unix.pre_reboot()
            over_tcp = FleetLockClient(srv.url, "b", "default")
            with pytest.raises(FleetLockError) as exc:
                await over_tcp.pre_reboot()
            assert exc.value.status == 409
            await over_tcp.close()

    run(scenario())
    assert not sock.exists(), "a clean stop removes the socket file"
    # A SIGKILLed server leaves its socket behind; the next start must not trip over it.
    run(scenario_after_stale(serve, sock))


async def scenario_after_stale(serve: Callable[..., Any], sock: Path) -> None:
    import socket as socketlib

    stale = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # bound, never listening: what a killed process leaves
    async with serve(f'listen = "unix:{sock}"\n') as srv:
        assert srv.server.addresses == [f"unix:{sock}"]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@sqlite_only
def test_tls(
    serve: Callable[..., Any], certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate

    async def scenario() -> None:
        async with serve(f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n') as srv:
            assert srv.url.startswith("https://127.0.0.1:")
            trusting = ssl.create_default_context(cafile=str(cert))
            async with new_session(verify=trusting) as s:
                client = FleetLockClient(srv.url, "a", "default", session=s)
                assert (await client.pre_reboot()).lease_seconds == 1800
            # An own session verifies against the system trust store (OpenSSL's default
            # paths, which SSL_CERT_FILE overrides), not against a bundled one.
            with monkeypatch.context() as m:
                m.setenv("SSL_CERT_FILE", str(cert))
                system = FleetLockClient(srv.url, "a", "default")
                assert (await system.pre_reboot()).lease_seconds == 1800
                await system.close()
            # Without trusting the certificate: a transport (TLS) error, no status.
            untrusting = FleetLockClient(srv.url, "b", "default")
            with pytest.raises(FleetLockError) as exc:
                await untrusting.pre_reboot()
            assert exc.value.status is None
            await untrusting.close()
            plain = FleetLockClient(srv.url.replace("https", "http"), "b", "default", timeout=3)
            with pytest.raises(FleetLockError) as exc:
                await plain.pre_reboot()
            assert exc.value.status in (None, 400)
            await plain.close()

    run(scenario())
