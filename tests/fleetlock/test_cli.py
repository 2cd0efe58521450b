"""``zincati-py fleetlock ...`` as a user runs it: real processes, exit codes, output."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed.etcd import free_port
from tests import helpers

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def zpy() -> Run:
    return functools.partial(helpers.zpy, timeout=30)


@sqlite_only
def test_lock_unlock_status_release(zpy: Run, subprocess_server: Callable[[str], Any]) -> None:
    srv = subprocess_server("lease_seconds = 600\n[groups]\nworkers = 1\n")
    url = srv.url
    r = zpy("fleetlock", "lock", "--url", url, "--group", "workers", "--id", "n1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "granted: n1 holds a slot in workers (lease 600s)\n"
    r = zpy("fleetlock", "lock", "--url", url, "--group", "workers", "--id", "n2", "--json")
    assert r.returncode == 75
    assert r.stdout == ""
    assert "group_full (HTTP 409)" in r.stderr and r.stderr.startswith("zincati-py: ")

    r = zpy("fleetlock", "status", "--url", url, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (workers,) = [g for g in doc["groups"] if g["group"] == "workers"]
    assert workers["slots"] == 1 and [h["id"] for h in workers["holders"]] == ["n1"]
    r = zpy("fleetlock", "status", "--url", url, "--group", "workers")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["GROUP", "SLOTS", "HOLDERS"]
    assert lines[1].split() == ["workers", "1", "1"]
    assert lines[2].split()[:2] == ["n1", "held"]
    assert re.search(r"expires in (9m[0-5]\ds|10m00s)$", lines[2]), lines[2]

    r = zpy("fleetlock", "release", "--url", url, "--group", "workers", "--id", "n1", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"released": True, "group": "workers", "id": "n1"}
    r = zpy("fleetlock", "release", "--url", url, "--group", "workers", "--id", "n1")
    assert r.returncode == 0 and "held no slot" in r.stdout
    r = zpy("fleetlock", "lock", "--url", url, "--group", "workers", "--id", "n2", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {
        "granted": True,
        "group": "workers",
        "id": "n2",
        "lease_seconds": 600,
    }
    r = zpy("fleetlock", "status", "--url", url, "--id", "n2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("n2 holds a slot in workers: held ")
    r = zpy("fleetlock", "status", "--url", url, "--id", "n1", "--group", "workers", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["holds"] == []
    r = zpy("fleetlock", "unlock", "--url", url, "--group", "workers", "--id", "n2")
    assert r.returncode == 0
    assert r.stdout == "released: n2's slot in workers; n2 holds no slot in workers\n"
    # Issue 11 item 13: the same text whether or not a slot was held left the admin guessing.
    r = zpy("fleetlock", "unlock", "--url", url, "--group", "workers", "--id", "n2")
    assert r.returncode == 0
    assert r.stdout == "nothing to release: n2 holds no slot in workers (it held none)\n"
    r = zpy("fleetlock", "unlock", "--url", url, "--group", "workers", "--id", "n2", "--json")
    assert json.loads(r.stdout) == {"released": False, "group": "workers", "id": "n2"}
    r = zpy("fleetlock", "status", "--url", url, "--id", "n2")
    assert r.stdout == "n2 holds no slot\n"
    doc = json.loads(zpy("fleetlock", "status", "--url", url, "--json").stdout)
    assert [g["holders"] for g in doc["groups"]] == [[]]


@sqlite_only
def test_bad_input_and_unreachable(zpy: Run, subprocess_server: Callable[[str], Any]) -> None:
    srv = subprocess_server('unknown_groups = "reject"\n[groups]\ng = 1\n')
    base = ["--url", srv.url, "--id", "n1"]
    r = zpy("fleetlock", "lock", *base, "--group", "bad group")
    assert r.returncode == 65 and "--group" in r.stderr
    r = zpy("fleetlock", "lock", *base, "--group", "nope")
    assert r.returncode == 65 and "unknown_group (HTTP 404)" in r.stderr
    r = zpy("fleetlock", "lock", "--url", "ftp://x/", "--id", "n1", "--group", "g")
    assert r.returncode == 65 and "--url" in r.stderr
    dead = f"http://127.0.0.1:{free_port()}/"
    for action in ("lock", "unlock", "release"):
        r = zpy("fleetlock", action, "--url", dead, "--group", "g", "--id", "n1")
        assert r.returncode == 69, (action, r.stderr)
        assert "transport (no answer)" in r.stderr
    r = zpy("fleetlock", "status", "--url", dead, "--json")
    assert r.returncode == 69 and r.stdout == ""


@sqlite_only
def test_tokens_from_env_and_file(
    zpy: Run, subprocess_server: Callable[[str], Any], tmp_path: Path
) -> None:
    srv = subprocess_server('[auth]\nadmin_token = "adm"\n[auth.nodes]\nn1 = "t1"\n')
    args = ["--url", srv.url, "--group", "default", "--id", "n1"]
    # 401 and 403 are EX_NOPERM (77), not "bad input" (issue 11 item 13).
    r = zpy("fleetlock", "lock", *args)
    assert r.returncode == 77 and "unauthorized (HTTP 401)" in r.stderr
    env = {"ZINCATI_PY_FLEETLOCK_TOKEN": "t1"}
    assert zpy("fleetlock", "lock", *args, env=env).returncode == 0
    token_file = tmp_path / "admin.token"
    token_file.write_text("adm\n")
    r = zpy("fleetlock", "status", "--url", srv.url, "--token-file", str(token_file), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["groups"][0]["holders"][0]["id"] == "n1"
    r = zpy("fleetlock", "status", "--url", srv.url, env=env)
    assert r.returncode == 77 and "forbidden (HTTP 403)" in r.stderr


@sqlite_only
def test_sigterm_is_graceful_and_sighup_reloads(
    zpy: Run, subprocess_server: Callable[[str], Any]
) -> None:
    srv = subprocess_server("[groups]\ng = 1\n")
    args = ["--url", srv.url, "--group", "g"]
    assert zpy("fleetlock", "lock", *args, "--id", "a").returncode == 0
    assert zpy("fleetlock", "lock", *args, "--id", "b").returncode == 75
    srv.config.write_text(srv.config.read_text().replace("g = 1", "g = 2"))
    assert srv.process is not None
    srv.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while zpy("fleetlock", "lock", *args, "--id", "b").returncode != 0:
        assert time.monotonic() < deadline, "SIGHUP did not reload the slots"
        time.sleep(0.1)
    assert srv.stop() == 0
    log = srv.log.read_text()
    assert "reloaded" in log and "shutting down" in log
    assert "Traceback" not in log


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("default_slots = 0\n", "default_slots: must be >= 1"),
        ('listen = "nowhere"\n', "listen: 'nowhere'"),
        ("colour = 1\n", "colour: unknown key"),
        ('[groups]\ng = "two"\n', "groups.g: must be an integer"),
        ("[groups]\ng = { slots = 1, slot = 2 }\n", "groups.g.slot: unknown key"),
        ('unknown_groups = "maybe"\n', "unknown_groups: must be 'reject' or 'create'"),
        ('[tls]\ncert_file = "missing.crt"\nkey_file = "missing.key"\n', "tls.cert_file: no such"),
        ('backend = "redis:x"\n', "backend: unknown backend 'redis'"),
        ("lease_seconds = -1\n", "lease_seconds: must be >= 0"),
        ("[auth]\nadmin_token = 7\n", "auth.admin_token: must be a non-empty string"),
        ("listen = [\n", "(syntax)"),
    ],
)
def test_invalid_config_exits_65_before_listening(
    command: list[str], tmp_path: Path, body: str, key: str
) -> None:
    port = free_port()
    config = tmp_path / "fleetlock.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\n' if "listen" not in body else "")
    config.write_text(config.read_text() + body)
    proc = subprocess.Popen(
        [*command, "fleetlock", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 65, err
    assert err == f"zincati-py: {config}: {key}" + err.split(key, 1)[1]
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""
    assert not _port_open(port)


def test_missing_config_file(zpy: Run, tmp_path: Path) -> None:
    r = zpy("fleetlock", "serve", "--config", str(tmp_path / "none.toml"))
    assert r.returncode == 65
    assert r.stderr.startswith(f"zincati-py: {tmp_path / 'none.toml'}: (file): ")


def test_unix_socket_and_sd_notify(zpy: Run, command: list[str], tmp_path: Path) -> None:
    sock, notify = tmp_path / "fleetlock.sock", tmp_path / "notify"
    config = tmp_path / "fleetlock.toml"
    config.write_text(f'listen = "unix:{sock}"\nbackend = "sqlite:{tmp_path / "db"}"\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(20)
        proc = subprocess.Popen(
            [*command, "fleetlock", "serve", "--config", str(config)],
            env={**os.environ, "NOTIFY_SOCKET": str(notify)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # READY=1 only once it listens: the very next request must work.
            assert listener.recv(64) == b"READY=1"
            via = ["--url", "http://localhost/", "--unix-socket", str(sock)]
            r = zpy("fleetlock", "lock", *via, "--group", "default", "--id", "n1")
            assert r.returncode == 0, r.stderr
            r = zpy("fleetlock", "status", *via, "--json")
            assert json.loads(r.stdout)["groups"][0]["holders"][0]["id"] == "n1"
            proc.send_signal(signal.SIGTERM)
            assert listener.recv(64) == b"STOPPING=1"
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not sock.exists()


def test_unusable_tls_files_exit_65(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "c.crt").write_text("not a certificate\n")
    (tmp_path / "c.key").write_text("not a key\n")
    config = tmp_path / "fleetlock.toml"
    port = free_port()
    config.write_text(
        f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:db"\n'
        '[tls]\ncert_file = "c.crt"\nkey_file = "c.key"\n'
    )
    r = subprocess.run(
        [*command, "fleetlock", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 65
    assert r.stderr.startswith(f"zincati-py: {config}: tls: ")
    assert not _port_open(port)


def test_etcd_backend_without_aetcd_is_one_line_exit_69(tmp_path: Path) -> None:
    """Issue 11 item 13: a traceback when aetcd is not installed."""
    import sys

    config = tmp_path / "fleetlock.toml"
    port = free_port()
    config.write_text(f'listen = "127.0.0.1:{port}"\nbackend = "etcd:http://127.0.0.1:1"\n')
    no_aetcd = (
        "import sys; sys.modules['aetcd'] = None; from zincati_py.cli import main; sys.exit(main())"
    )
    r = subprocess.run(
        [sys.executable, "-c", no_aetcd, "fleetlock", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 69, r.stderr
    assert r.stderr == (
        f"zincati-py: {config}: backend: backend 'etcd:' needs the Python package aetcd "
        "(aetcd cannot be imported): install python3-aetcd (or pip install aetcd)\n"
    )
    assert not _port_open(port)


@sqlite_only
def test_group_control_history_and_rollouts(
    zpy: Run, subprocess_server: Callable[[str], Any]
) -> None:
    """Issue 15 from the command line: pause/resume/cooldown/hold, history, rollouts."""
    srv = subprocess_server("[groups]\nworkers = 2\n")
    base = ["--url", srv.url, "--group", "workers"]
    r = zpy("fleetlock", "pause", *base, "--reason", "change freeze")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("workers: paused, cooldown 0")
    r = zpy("fleetlock", "lock", *base, "--id", "n1")
    assert r.returncode == 75 and "group_paused (HTTP 409)" in r.stderr
    assert zpy("fleetlock", "resume", *base).stdout.startswith("workers: open")
    r = zpy("fleetlock", "cooldown", *base, "--seconds", "30", "--json")
    assert json.loads(r.stdout)["cooldown_secs"] == 30
    r = zpy("fleetlock", "hold", *base, "--version", "40.1")
    assert "hold 40.1" in r.stdout
    assert zpy("fleetlock", "lock", *base, "--id", "n1").returncode == 0
    assert zpy("fleetlock", "unlock", *base, "--id", "n1").returncode == 0
    r = zpy("fleetlock", "history", "--url", srv.url, "--group", "workers", "--json")
    kinds = [e["kind"] for e in json.loads(r.stdout)["events"]]
    assert kinds == ["pause", "resume", "cooldown", "hold", "grant", "release"]
    r = zpy("fleetlock", "history", "--url", srv.url, "--id", "n1", "--since", "1h")
    assert r.returncode == 0
    assert [line.split()[3] for line in r.stdout.splitlines()] == ["grant", "release"]
    r = zpy("fleetlock", "rollouts", "--url", srv.url)
    assert r.returncode == 0 and r.stdout.split()[0] == "GROUP"
    r = zpy("fleetlock", "history", "--url", srv.url, "--since", "soon")
    assert r.returncode == 65 and "--since" in r.stderr
