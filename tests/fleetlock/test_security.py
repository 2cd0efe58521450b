"""Issue 11, lock server: each attack or admin mistake reproduced against a real server.

1. admin API open when node tokens are set without an admin token;
2. tokens from files and systemd credentials, warnings for readable files, no token in logs;
4. slow and too many clients (half-open connections) vs ``/healthz``;
5. input edges (a group with a trailing newline, 60,000 nested ``[``);
6. an ambiguous 503 with etcd stalled: the answer says so, a retry by the same id is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testbed.etcd import PrivateEtcd, etcd_available, free_port
from testbed.lockserver import LockServerProcess
from zincati_py.fleetlock.config import ConfigError, load
from zincati_py.fleetlock.protocol import Kind
from zincati_py.fleetlock.server import FleetLockServer

HEADER = {"fleet-lock-protocol": "true"}
UNIT = Path(__file__).resolve().parents[2] / "units" / "zincati-py-fleetlock.service"
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def body(node: str, group: str = "default") -> bytes:
    return json.dumps({"client_params": {"id": node, "group": group}}).encode()


async def post(
    s: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with s.post(url, data=data, headers=HEADER if headers is None else headers) as r:
        raw = await r.read()
        return r.status, json.loads(raw) if raw else None


def bearer(token: str, protocol: bool = True) -> dict[str, str]:
    return {**(HEADER if protocol else {}), "Authorization": f"Bearer {token}"}


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


# -- 1. the admin API ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        'shared_token = "s"\n',
        '[auth.nodes]\na = "ta"\n',
        'shared_token = "s"\n[auth.nodes]\na = "t"\n',
    ],
)
def test_node_tokens_without_admin_token_refuse_to_load(tmp_path: Path, auth: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[auth]\n" + auth)
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert exc.value.key == "auth.admin_token"
    assert "required when shared_token or [auth.nodes] is set" in str(exc.value)


@sqlite_only
def test_with_auth_the_admin_api_needs_the_admin_token(serve: Callable[..., Any]) -> None:
    """The attack: force-release node a's slot without any token, then b is granted in a
    1-slot group. Now both admin endpoints answer 401 and a keeps its slot."""

    async def scenario() -> None:
        cfg = (
            '[groups]\ndefault = 1\n[auth]\nadmin_token = "adm"\nshared_token = "shared"\n'
            '[auth.nodes]\na = "ta"\n'
        )
        async with serve(cfg) as srv, aiohttp.ClientSession() as s:
            assert (await post(s, srv.url + "v1/pre-reboot", body("a"), bearer("ta")))[0] == 200
            status, err = await post(s, srv.url + "v1/admin/release", body("a"), {})
            assert (status, err["kind"]) == (401, Kind.UNAUTHORIZED)
            async with s.get(srv.url + "v1/groups") as r:
                assert r.status == 401
            status, err = await post(s, srv.url + "v1/pre-reboot", body("b"), bearer("shared"))
            assert (status, err["kind"]) == (409, Kind.GROUP_FULL)

    run(scenario())


@sqlite_only
def test_no_auth_warns_at_start(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        with caplog.at_level(logging.WARNING, logger="zincati_py.fleetlock.server"):
            async with serve():
                pass

    run(scenario())
    (warning,) = [r.getMessage() for r in caplog.records if "no [auth]" in r.getMessage()]
    assert "force-release" in warning


# -- 2. secrets ---------------------------------------------------------------------------------


def _token_file(path: Path, token: str, mode: int) -> Path:
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


@sqlite_only
def test_tokens_from_files_and_credentials(
    serve: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    _token_file(creds / "fl-shared", "shared-from-cred", 0o400)
    _token_file(creds / "node-b", "b-from-cred", 0o400)
    _token_file(tmp_path / "admin.token", "admin-from-file", 0o600)
    _token_file(tmp_path / "a.token", "a-from-file", 0o644)  # readable by others: a warning
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = (
        '[groups]\ndefault = 5\n[auth]\nadmin_token_file = "admin.token"\n'
        'shared_token_credential = "fl-shared"\n[auth.nodes]\na = { file = "a.token" }\n'
        'b = { credential = "node-b" }\n'
    )

    async def scenario() -> None:
        with caplog.at_level(logging.WARNING, logger="zincati_py.fleetlock.server"):
            async with serve(cfg) as srv, aiohttp.ClientSession() as s:
                pre = srv.url + "v1/pre-reboot"
                assert (await post(s, pre, body("a"), bearer("a-from-file")))[0] == 200
                assert (await post(s, pre, body("b"), bearer("b-from-cred")))[0] == 200
                assert (await post(s, pre, body("c"), bearer("shared-from-cred")))[0] == 200
                assert (await post(s, pre, body("b"), bearer("a-from-file")))[0] == 403
                status, doc = await post(
                    s, srv.url + "v1/admin/release", body("a"), bearer("admin-from-file", False)
                )
                assert (status, doc) == (200, {"released": True})

    run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    readable = [w for w in warnings if "other users can read" in w]
    assert len(readable) == 1 and "a.token" in readable[0] and "mode 0644" in readable[0]
    assert "auth.nodes.a" in readable[0]


@pytest.mark.parametrize(
    ("auth", "key", "message"),
    [
        (
            'admin_token_credential = "adm"\n',
            "auth.admin_token_credential",
            "$CREDENTIALS_DIRECTORY",
        ),
        ('admin_token_file = "missing"\n', "auth.admin_token_file", "No such file"),
        ('admin_token_file = "empty"\n', "auth.admin_token_file", "empty"),
        ('admin_token = "x"\nadmin_token_file = "t"\n', "auth.admin_token", "not both"),
        ('admin_token = "a b"\n', "auth.admin_token", "without spaces"),
        ('admin_token = "x"\n[auth.nodes]\nn = { path = "t" }\n', "auth.nodes.n.path", "unknown"),
        ('admin_token = "x"\n[auth.nodes]\nn = { credential = "../t" }\n', "auth.nodes.n", "name"),
    ],
)
def test_token_source_errors_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str, key: str, message: str
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "empty").write_text("\n")
    path = tmp_path / "c.toml"
    path.write_text("[auth]\n" + auth)
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert exc.value.key == key
    assert message in str(exc.value)


def test_inline_tokens_in_a_world_readable_config_warn(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nadmin_token = "adm"\n')
    path.chmod(0o644)
    (warning,) = load(path).warnings
    assert "holds inline tokens" in warning and "mode 0644" in warning
    path.chmod(0o640)
    assert load(path).warnings == ()


@sqlite_only
def test_tokens_never_reach_the_log(tmp_path: Path, backend: Any) -> None:
    """Every token-handling path, at debug level, in a real server process: good, wrong and
    other nodes' tokens, admin calls, a reload, a config error on reload, shutdown."""
    tokens = {"admin": "ADMIN-SECRET-1", "shared": "SHARED-SECRET-2", "n1": "NODE-SECRET-3"}
    _token_file(tmp_path / "admin.token", tokens["admin"], 0o600)
    port = free_port()
    config = tmp_path / "fl.toml"
    text = (
        f'listen = "127.0.0.1:{port}"\n{backend.top}[auth]\nadmin_token_file = "admin.token"\n'
        f'shared_token = "{tokens["shared"]}"\n[auth.nodes]\nn1 = "{tokens["n1"]}"\n'
    )
    config.write_text(text)
    config.chmod(0o600)
    srv = LockServerProcess(config, port, tmp_path / "server.log", options=["-v"])
    srv.start()
    try:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as s:
                pre = srv.url + "v1/pre-reboot"
                for node, token in [
                    ("n1", tokens["n1"]),
                    ("n2", tokens["n1"]),
                    ("n2", tokens["shared"]),
                    ("n3", "WRONG-SECRET-4"),
                ]:
                    await post(s, pre, body(node), bearer(token))
                for token in (tokens["admin"], tokens["n1"]):
                    await post(s, srv.url + "v1/admin/release", body("n1"), bearer(token, False))
                    async with s.get(srv.url + "v1/groups", headers=bearer(token, False)):
                        pass

        run(scenario())
        assert srv.process is not None
        config.write_text(text.replace("[auth.nodes]", "[auth.nodes]\nbad = 7"))
        srv.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        config.write_text(text)
        srv.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
    finally:
        assert srv.stop() == 0
    log = srv.log.read_text()
    assert "reload failed" in log and "reloaded" in log
    for secret in [*tokens.values(), "WRONG-SECRET-4"]:
        assert secret not in log
    assert "SECRET" not in repr(load(config))


# -- 4. slow clients ------------------------------------------------------------------------------


def test_unit_raises_the_open_file_limit_above_the_default_connection_limit() -> None:
    (value,) = re.findall(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.M)
    assert int(value) >= 4096 + 64


async def _slowloris(port: int, stop: asyncio.Event, opened: list[int]) -> None:
    """One half-open request: a header line per second, never the blank line."""
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    opened.append(1)
    try:
        writer.write(b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\n")
        n = 0
        while not stop.is_set():
            await writer.drain()
            n += 1
            writer.write(f"X-Slow-{n}: {n}\r\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    except OSError:
        pass  # closed by the server: reconnect like an attacker would
    finally:
        writer.close()
    if not stop.is_set():
        await _slowloris(port, stop, opened)


async def _healthz(port: int) -> float:
    """Seconds a fresh connection takes to get ``/healthz`` answered 200 (raises otherwise)."""
    start = time.monotonic()
    async with asyncio.timeout(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status = await reader.readline()
        writer.close()
    assert status.startswith(b"HTTP/1.1 200"), status
    return time.monotonic() - start


@sqlite_only
def test_healthz_answers_under_a_slow_client_attack(tmp_path: Path, backend: Any) -> None:
    """300 half-open connections (more than the server's 256 descriptors) each sending a
    header line per second, for 8 s: a fresh ``/healthz`` is answered every time."""
    port = free_port()
    config = tmp_path / "fl.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\n{backend.top}'
        "[limits]\nconnections_per_listener = 1000\nheader_timeout_secs = 2\n"
    )
    srv = LockServerProcess(config, port, tmp_path / "server.log", nofile=256)
    srv.start()

    async def scenario() -> list[float]:
        stop = asyncio.Event()
        opened: list[int] = []
        attackers = [asyncio.create_task(_slowloris(port, stop, opened)) for _ in range(300)]
        await asyncio.sleep(1.5)
        assert len(opened) >= 250  # the attack is under way
        times = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            times.append(await _healthz(port))
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*attackers)
        return times

    try:
        times = run(scenario())
    finally:
        srv.stop()
    assert len(times) >= 10 and max(times) < 1.5, times
    log = srv.log.read_text()
    assert "open-file limit too low" in log and "Traceback" not in log


@sqlite_only
def test_a_body_that_never_arrives_is_408(serve: Callable[..., Any]) -> None:
    async def scenario() -> None:
        async with serve("[limits]\nbody_timeout_secs = 0.5\n") as srv:
            host, port = srv.url.split("/")[2].split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            async with asyncio.timeout(5):
                status = await reader.readline()
            writer.close()
            assert status.startswith(b"HTTP/1.1 408"), status

    run(scenario())


# -- 5. input edges ---------------------------------------------------------------------------


@sqlite_only
def test_group_with_trailing_newline_and_deep_nesting_are_400(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with serve() as srv, aiohttp.ClientSession() as s:
            for path in ("v1/pre-reboot", "v1/steady-state"):
                status, err = await post(s, srv.url + path, body("a", "default\n"))
                assert (status, err["kind"]) == (400, Kind.INVALID_BODY)
                status, err = await post(s, srv.url + path, b"[" * 60_000)
                assert (status, err["kind"]) == (400, Kind.INVALID_BODY)
            async with s.get(srv.url + "v1/groups/default%0A") as r:
                assert r.status == 400
            async with s.get(srv.url + "v1/groups") as r:
                assert [g["group"] for g in (await r.json())["groups"]] == []

    with caplog.at_level(logging.DEBUG):
        run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_config_group_with_trailing_newline_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[groups]\n"default\\n" = 1\n')
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert exc.value.key == "groups.default\n"


# -- 6. ambiguous 503 -----------------------------------------------------------------------


@pytest.mark.skipif(not etcd_available(), reason="needs etcd (Debian package etcd-server)")
def test_stalled_etcd_503_says_outcome_unknown_and_retry_is_safe(tmp_path: Path) -> None:
    async def scenario(etcd: PrivateEtcd) -> None:
        path = tmp_path / "c.toml"
        path.write_text(
            f'listen = "127.0.0.1:0"\nbackend = "etcd:{etcd.url}"\n'
            "[limits]\nbackend_timeout_secs = 1\n[groups]\ndefault = 1\n"
        )
        server = FleetLockServer(load(path))
        url = f"http://{(await server.start())[0]}/"
        assert etcd.process is not None
        try:
            async with aiohttp.ClientSession() as s:
                assert (await post(s, url + "v1/pre-reboot", body("warm")))[0] == 200
                assert (await post(s, url + "v1/steady-state", body("warm")))[0] == 200
                etcd.process.send_signal(signal.SIGSTOP)
                try:
                    status, err = await post(s, url + "v1/pre-reboot", body("a"))
                finally:
                    etcd.process.send_signal(signal.SIGCONT)
                assert (status, err["kind"]) == (503, Kind.BACKEND_UNAVAILABLE)
                assert "outcome is unknown" in err["value"] and "retry" in err["value"]
                # Whether or not the write landed, the same node's retry succeeds ...
                deadline = time.monotonic() + 15
                while (status := (await post(s, url + "v1/pre-reboot", body("a")))[0]) == 503:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
                assert status == 200
                # ... and holds the one slot: nobody else gets it.
                status, err = await post(s, url + "v1/pre-reboot", body("b"))
                assert (status, err["kind"]) == (409, Kind.GROUP_FULL)
                async with s.get(url + "v1/groups/default") as r:
                    assert [h["id"] for h in (await r.json())["holders"]] == ["a"]
                # The same holds for a release: a retry of steady-state is a no-op success.
                assert (await post(s, url + "v1/steady-state", body("a")))[0] == 200
                assert (await post(s, url + "v1/steady-state", body("a")))[0] == 200
        finally:
            await server.stop()

    with PrivateEtcd() as etcd:
        run(scenario(etcd))


def test_the_package_installs_the_config_0640_for_the_service_group() -> None:
    spec = (UNIT.parents[1] / "packaging" / "zincati-py.spec").read_text()
    assert re.search(
        r"^%attr\(0640,root,zincati-py-fleetlock\) %config\(noreplace\) "
        r"%\{_sysconfdir\}/zincati-py/fleetlock\.toml$",
        spec,
        re.M,
    )
    assert "install -D -p -m 0640 packaging/fleetlock.toml" in spec
