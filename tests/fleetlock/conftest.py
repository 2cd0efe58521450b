"""FleetLock fixtures: a real etcd (testbed/etcd.py), servers in-process on
loopback, servers as real ``zincati-py fleetlock serve`` subprocesses."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed.etcd import PrivateEtcd, etcd_available, free_port
from testbed.lockserver import LockServerProcess
from testbed.proc import zincati_py_argv
from zincati_py.fleetlock.config import load
from zincati_py.fleetlock.server import FleetLockServer

_prefix_counter = itertools.count()


@pytest.fixture(scope="session")
def etcd() -> Iterator[PrivateEtcd]:
    if not etcd_available():
        pytest.skip("needs etcd (Debian package etcd-server)")
    with PrivateEtcd() as server:
        yield server


@dataclass
class Backend:
    """A backend for the config: ``top`` holds its top-level lines, ``tables`` its tables."""

    name: str
    top: str
    etcd: PrivateEtcd | None = None
    key_prefix: str | None = None
    tables: str = ""


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f'backend = "sqlite:{tmp_path / "state" / "fleetlock.db"}"\n')
    server: PrivateEtcd = request.getfixturevalue("etcd")
    # One etcd for the session; each test gets its own key namespace.
    key_prefix = f"/test-{os.getpid()}-{next(_prefix_counter)}/"
    return Backend(
        "etcd",
        f'backend = "etcd:{server.url}"\n',
        server,
        key_prefix,
        f'[etcd]\nkey_prefix = "{key_prefix}"\n',
    )


def write_config(path: Path, body: str, backend: Backend) -> Path:
    """Config = the backend's top-level line, ``body``, then the backend's tables."""
    path.write_text(backend.top + body + "\n" + backend.tables)
    return path


@dataclass
class InProcess:
    server: FleetLockServer
    url: str
    config_path: Path


@pytest.fixture
def serve(tmp_path: Path, backend: Backend) -> Callable[..., Any]:
    """``async with serve(body) as s``: a server in this event loop on 127.0.0.1:<random>."""
    counter = itertools.count()

    @contextlib.asynccontextmanager
    async def start(body: str = "", *, name: str | None = None) -> AsyncIterator[InProcess]:
        if "listen" not in body:
            body = 'listen = "127.0.0.1:0"\n' + body
        path = write_config(tmp_path / (name or f"server{next(counter)}.toml"), body, backend)
        server = FleetLockServer(load(path))
        addresses = await server.start()
        tcp = [a for a in addresses if not a.startswith("unix:")]
        scheme = "https" if server.config.tls_cert_file else "http"
        url = f"{scheme}://{tcp[0]}{server.config.prefix}/" if tcp else ""
        try:
            yield InProcess(server, url, path)
        finally:
            await server.stop()

    return start


@pytest.fixture
def command() -> list[str]:
    """Argv of the installed ``zincati-py`` of the interpreter running the tests."""
    return zincati_py_argv()


@pytest.fixture
def subprocess_server(
    tmp_path: Path, backend: Backend
) -> Iterator[Callable[[str], LockServerProcess]]:
    """``subprocess_server(body)`` starts a real server process; stopped at teardown."""
    started: list[LockServerProcess] = []

    def start(body: str) -> LockServerProcess:
        port = free_port()
        path = write_config(
            tmp_path / f"sub{len(started)}.toml", f'listen = "127.0.0.1:{port}"\n' + body, backend
        )
        srv = LockServerProcess(path, port, tmp_path / f"sub{len(started)}.log")
        started.append(srv)
        srv.start()
        return srv

    yield start
    for srv in started:
        srv.stop()
