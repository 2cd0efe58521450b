"""The shipped sandboxes, applied by a real systemd: what the services need still works and
what they must not do is refused.

A real systemd (a user manager from testbed/systemd.py) runs
``sandbox_probe.py`` with the ``[Service]`` sandbox of each unit as shipped, minus what only
a system manager can apply here:

- ``User=``/``Group=``: the probe runs as the manager's user (root here); with
  ``CapabilityBoundingSet=`` empty it holds no capability, which the probe checks.
- ``ProtectHome=yes``: the interpreter running the tests lives under /root/.pyenv, which
  that setting hides (on a host the interpreter is /usr/bin/python3).
- ``Type=notify``, ``WatchdogSec=``, ``Restart*=``, ``ExecStart=`` and ``Environment=``:
  the probe is a oneshot.

Where this machine's kernel cannot apply ``ProtectKernelTunables=``/``ProtectKernelLogs=`` over a
full procfs (a sandboxed CI kernel whose /proc refuses the bind mounts: status 226, checked with
a canary unit first; ``ProcSubset=pid`` hides those paths, so units that set it are unaffected),
those two are not applied either; the real-host tier runs the shipped unit as it is, on a real
PID 1 (tests/realhost).

And it adds one line for the probe only: when the venv or the checkout (editable installs
import from it) lives under ``/tmp`` or ``/var/tmp`` (a clone under /tmp), which
``PrivateTmp=yes`` replaces with an empty directory, ``BindReadOnlyPaths=`` puts them back,
read-only (on a host the program lives under /usr, which the sandbox keeps).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.proc import venv_script
from testbed.systemd import UserManager

HERE = Path(__file__).resolve().parent
UNITS = HERE.parent.parent / "units"
NOT_APPLIED = re.compile(
    r"^(Type|ExecStart|User|Group|Restart|RestartSec|WatchdogSec|Environment|ProtectHome)="
)
EROFS, EAFNOSUPPORT = 30, 97
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


def program_binds() -> list[str]:
    """The sandbox lines that let the test's own interpreter and code run in it: a
    ``BindReadOnlyPaths=`` for those of the venv, the base interpreter and the checkout that
    ``PrivateTmp=`` would hide; nothing when none is under /tmp or /var/tmp."""
    programs = (Path(sys.prefix), Path(sys.base_prefix), HERE.parent.parent)
    # As named (ExecStart= uses these) and with symlinks resolved (what the kernel opens).
    candidates = {q for p in programs for q in (Path(os.path.abspath(p)), p.resolve())}
    hidden = sorted(str(p) for p in candidates if any(p.is_relative_to(tmp) for tmp in PRIVATE_TMP))
    if not hidden:
        return []
    for path in hidden:
        assert not re.search(r"[\s%$\\\"']", path), f"unsupported path for a unit file: {path}"
    return ["BindReadOnlyPaths=" + " ".join(hidden)]


KERNEL_PROC = ("ProtectKernelTunables", "ProtectKernelLogs")


def applicable(manager: UserManager, service: list[str]) -> list[str]:
    """``service`` minus NOT_APPLIED, and minus KERNEL_PROC when the unit mounts a full procfs
    (no ``ProcSubset=pid``) and a canary shows this kernel refuses those protections on it."""
    kept = [line for line in service if not NOT_APPLIED.match(line)]
    if any(line.startswith("ProcSubset=pid") for line in kept):
        return kept
    canary = "canary-kernel-proc.service"
    (manager.unit_dir / canary).write_text(
        "[Service]\nType=oneshot\nExecStart=/bin/true\nProtectProc=invisible\n"
        + "".join(f"{key}=yes\n" for key in KERNEL_PROC)
    )
    manager.daemon_reload()
    manager.systemctl("start", canary, check=False, timeout=60)
    status = manager.systemctl("show", "-p", "ExecMainStatus", canary)
    if "ExecMainStatus=226" not in status:
        return kept
    return [line for line in kept if line.split("=", 1)[0] not in KERNEL_PROC]


def probe(manager: UserManager, unit: str, modules: list[str]) -> dict[str, object]:
    text = (UNITS / unit).read_text()
    service = text.split("[Service]\n", 1)[1].split("\n[", 1)[0]
    kept = applicable(manager, service.splitlines())
    assert any(line.startswith("SystemCallFilter=") for line in kept)
    name = f"probe-{unit}"
    exec_start = " ".join([sys.executable, str(HERE / "sandbox_probe.py"), *modules])
    (manager.unit_dir / name).write_text(
        "[Service]\nType=oneshot\n"
        + f"ExecStart={exec_start}\n"
        + "\n".join(kept + program_binds())
        + "\n"
    )
    manager.daemon_reload()
    manager.systemctl("start", name, check=False, timeout=60)
    status = manager.systemctl("show", "-p", "Result", "-p", "ExecMainStatus", name)
    log = manager.log_file.read_text()
    assert "Result=success" in status, f"{status}\n{log[-3000:]}"
    lines = [line for line in log.splitlines() if line.startswith("PROBE ")]
    assert len(lines) == 1, log[-3000:]
    result: dict[str, object] = json.loads(lines[0].removeprefix("PROBE "))
    return result


def common(result: dict[str, object]) -> None:
    assert result["ctypes_callback"] == 7
    assert result["AF_UNIX"] is True
    assert result["AF_INET"] is True and result["AF_INET6"] is True
    assert result["AF_NETLINK"] == EAFNOSUPPORT and result["AF_PACKET"] == EAFNOSUPPORT
    assert result["getaddrinfo"] is True
    assert result["state_write"] is True and result["sqlite_state"] is True
    assert result["etc_write"] == EROFS and result["usr_write"] == EROFS
    assert result["capabilities"] == 0


@pytest.fixture
def manager(user_manager_factory: Callable[..., UserManager]) -> UserManager:
    return user_manager_factory(None)


def test_agent_sandbox(manager: UserManager) -> None:
    modules = ["zincati_py.agent.service", "dbus_fast", "pyinotify", "prometheus_client"]
    result = probe(manager, "zincati-py.service", modules)
    common(result)
    assert result["imports"] == modules
    assert result["inotify_etc"] is True
    assert result["runtime_write"] is True and result["runtime_unix_listen"] is True


def test_fleetlock_sandbox(manager: UserManager) -> None:
    modules = ["zincati_py.fleetlock.server", "aiohttp", "aetcd"]
    result = probe(manager, "zincati-py-fleetlock.service", modules)
    common(result)
    assert result["imports"] == modules
    assert result["listen_tcp"] is True


def test_fleetlock_server_serves_inside_its_sandbox(manager: UserManager) -> None:
    """The real server under the shipped sandbox: it listens, takes a lock, stores it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Everything of the test manager is under /tmp, which PrivateTmp= hides, except what
    # systemd mounts in: the state directory. A user manager puts it under ~/.config
    # (systemd < 254) or ~/.local/state; the config goes into both candidates and names the
    # database relative to itself.
    candidates = [manager.config_home, manager.home / ".local" / "state"]
    for base in candidates:
        (base / "zincati-py-fleetlock").mkdir(parents=True, exist_ok=True)
        (base / "zincati-py-fleetlock" / "fleetlock.toml").write_text(
            f'listen = ["127.0.0.1:{port}"]\nbackend = "sqlite:locks.db"\n'
        )
    config = "${STATE_DIRECTORY}/fleetlock.toml"
    text = (UNITS / "zincati-py-fleetlock.service").read_text()
    service = text.split("[Service]\n", 1)[1].split("\n[", 1)[0]
    kept = applicable(manager, service.splitlines())
    exe = venv_script("zincati-py")
    (manager.unit_dir / "lockserver.service").write_text(
        f"[Service]\nExecStart={exe} fleetlock serve --config {config}\n"
        + "\n".join(kept + program_binds())
        + "\n"
    )
    manager.daemon_reload()
    manager.systemctl("start", "lockserver.service")
    body = json.dumps({"client_params": {"id": "node-1", "group": "default"}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/pre-reboot",
        data=body,
        headers={"fleet-lock-protocol": "true", "content-type": "application/json"},
        method="POST",
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
            break
        except (ConnectionError, urllib.error.URLError) as exc:
            state_now = manager.systemctl("show", "-p", "ActiveState", "lockserver.service")
            assert "ActiveState=active" in state_now, manager.log_file.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no answer on port {port}: {exc}"
            time.sleep(0.2)
    stored = [base for base in candidates if (base / "zincati-py-fleetlock/locks.db").is_file()]
    assert len(stored) == 1
    manager.systemctl("stop", "lockserver.service")
