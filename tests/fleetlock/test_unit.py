"""The shipped lock server unit under a real systemd (user manager): ``Type=notify`` with
READY=1 only once listening (issue 12: ``Type=simple`` reported it started ≈ 0.5 s before it
listened and an agent's first release failed), and its hardening score."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from testbed.etcd import free_port
from testbed.proc import venv_script
from testbed.systemd import UserManager

UNIT = Path(__file__).resolve().parents[2] / "units" / "zincati-py-fleetlock.service"


def unit_settings() -> dict[str, str]:
    out = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, value)
    return out


def test_unit_is_type_notify_and_hardened() -> None:
    settings = unit_settings()
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert shutil.which("systemd-analyze")
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
    assert found is not None and float(found.group(1)) <= 1.5, out[-500:]


def test_start_returns_once_the_server_answers(
    user_manager_factory: Callable[..., UserManager], tmp_path: Path
) -> None:
    """``systemctl start`` returns after READY=1; the very first request is answered."""
    manager = user_manager_factory(None)
    port = free_port()
    config = tmp_path / "fleetlock.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\nbackend = "sqlite:{tmp_path / "locks.db"}"\n')
    s = unit_settings()
    (manager.unit_dir / "fl.service").write_text(
        "[Service]\n"
        f"Type={s['Type']}\nNotifyAccess={s['NotifyAccess']}\nLimitNOFILE={s['LimitNOFILE']}\n"
        f"ExecStart={venv_script('zincati-py')} fleetlock serve --config {config}\n"
        # The start itself takes the interpreter's import time: make it visible.
        "ExecStartPre=/bin/sleep 0.3\n"
    )
    manager.daemon_reload()
    manager.systemctl("start", "fl.service", timeout=60)
    body = json.dumps({"client_params": {"id": "n1", "group": "default"}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/steady-state",
        data=body,
        headers={"fleet-lock-protocol": "true"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # no retry: it must answer
        assert response.status == 200
    state = manager.systemctl("show", "-p", "ActiveState,StatusErrno", "fl.service")
    assert "ActiveState=active" in state
    manager.systemctl("stop", "fl.service")
