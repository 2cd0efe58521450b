"""Shared pytest fixtures. Each block is owned by one area; keep blocks separate."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# ---- systemd user manager (owner: generator/schedule CLI; testbed/systemd.py) ----
from testbed.systemd import UserManager, user_manager_available

# ---- every test runs in CI (owner: lead) ----
# Tests skip when a real component is missing (dbus-daemon, systemd, dbusmock, etcd, rpmbuild),
# so a partial developer machine can still run the rest. The project's test command
# (tests/run.sh, what .ci/run calls) installs everything and sets ZINCATI_PY_REQUIRE_ALL=1:
# there a skip is a failure, so CI can never pass by not running a test.
REQUIRE_ALL = os.environ.get("ZINCATI_PY_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but ZINCATI_PY_REQUIRE_ALL=1 requires every test: {reason}"


# (systemd user manager block continues)
requires_user_manager = pytest.mark.skipif(
    not user_manager_available(), reason="needs root, unshare, dbus-daemon and systemd"
)


@pytest.fixture
def config_root(tmp_path: Path) -> Path:
    """An empty ``--root`` with the three config directories created."""
    root = tmp_path / "root"
    for rel in ("usr/lib/zincati/config.d", "run/zincati/config.d", "etc/zincati/config.d"):
        (root / rel).mkdir(parents=True)
    return root


@pytest.fixture
def user_manager_factory() -> Iterator[Callable[..., UserManager]]:
    """Start ``UserManager(config_root, ...)`` instances; all are stopped at teardown."""
    if not user_manager_available():
        pytest.skip("needs root, unshare, dbus-daemon and systemd")
    started: list[UserManager] = []

    def start(config_root: Path | None = None, **kwargs: object) -> UserManager:
        manager = UserManager(config_root, **kwargs)  # type: ignore[arg-type]
        started.append(manager)
        return manager.start()

    yield start
    for manager in reversed(started):
        manager.stop()


@pytest.fixture
def user_manager(
    user_manager_factory: Callable[..., UserManager], config_root: Path
) -> UserManager:
    """A running user manager whose generator reads ``config_root``."""
    return user_manager_factory(config_root)


# ---- end systemd user manager ----


# ---- D-Bus peers (owner: dbus adapters; testbed/{bus,rpmostree,logind}.py) ----
import socket  # noqa: E402
import time  # noqa: E402

from testbed.bus import PrivateBus, dbus_daemon_available  # noqa: E402
from testbed.logind import LogindDouble, logind_double_available  # noqa: E402
from testbed.rpmostree import RpmOstreeDouble  # noqa: E402

#: A booted release and one newer release that the first update check finds.
RPMOSTREE_SCRIPT: dict[str, object] = {
    "osname": "fedora-coreos",
    "booted": {"version": "40.20240101.3.0"},
    "releases": [{"version": "40.20240115.3.0", "available_after_checks": 0}],
    "transaction_delay": 0.02,
}


@pytest.fixture
def system_bus() -> Iterator[PrivateBus]:
    """A private dbus-daemon of type "system"; ``system_bus.address`` for clients."""
    if not dbus_daemon_available():
        pytest.skip("needs dbus-daemon")
    with PrivateBus("system") as bus:
        _wait_listening(bus.socket)
        yield bus


def _wait_listening(path: Path, timeout: float = 5.0) -> None:
    # PrivateBus returns once the socket file exists, which is a moment before dbus-daemon
    # listen()s on it; a client connecting in that window gets ECONNREFUSED.
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.005)


@pytest.fixture
def rpmostree_factory(
    system_bus: PrivateBus, tmp_path: Path
) -> Iterator[Callable[..., RpmOstreeDouble]]:
    """``rpmostree_factory(script=None, *, idle_timeout=None, start=True)`` → a double on
    ``system_bus`` with its sysroot at ``tmp_path/"sysroot"``; stopped at teardown."""
    made: list[RpmOstreeDouble] = []

    def make(
        script: dict[str, object] | None = None,
        *,
        idle_timeout: float | None = None,
        start: bool = True,
    ) -> RpmOstreeDouble:
        double = RpmOstreeDouble(
            system_bus.address,
            tmp_path / f"sysroot{len(made) or ''}",
            dict(script or RPMOSTREE_SCRIPT),
            idle_timeout=idle_timeout,
        )
        made.append(double)
        return double.start() if start else double

    yield make
    for double in made:
        double.stop()


@pytest.fixture
def rpmostree_double(rpmostree_factory: Callable[..., RpmOstreeDouble]) -> RpmOstreeDouble:
    """The rpm-ostree double running ``RPMOSTREE_SCRIPT`` (no idle exit)."""
    return rpmostree_factory(idle_timeout=0)


@pytest.fixture
def logind_factory(system_bus: PrivateBus, tmp_path: Path) -> Iterator[Callable[..., LogindDouble]]:
    """``logind_factory(**template_parameters)`` → dbusmock logind on ``system_bus``, logging
    calls to ``tmp_path/"logind.log"``; stopped at teardown."""
    if not logind_double_available():
        pytest.skip("needs /usr/bin/python3 with python3-dbusmock")
    made: list[LogindDouble] = []

    def make(**parameters: object) -> LogindDouble:
        double = LogindDouble(
            system_bus.address,
            log_path=tmp_path / f"logind{len(made) or ''}.log",
            parameters=dict(parameters),
        )
        made.append(double)
        return double.start()

    yield make
    for double in made:
        double.stop()


@pytest.fixture
def logind_double(logind_factory: Callable[..., LogindDouble]) -> LogindDouble:
    """The logind double with the template defaults (CanReboot=yes, no sessions)."""
    return logind_factory()


# ---- end D-Bus peers ----
