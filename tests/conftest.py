"""Shared pytest fixtures. Each block is owned by one area; keep blocks separate."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# ---- systemd user manager (owner: generator/schedule CLI; testbed/systemd.py) ----
from testbed.systemd import UserManager, user_manager_available

# ---- test tiers: markers, the fast tier, every test runs in CI (owner: newcomer) ----
# Two tiers. The fast tier is what plain `pytest` runs, as any user on a laptop, in well under a
# minute: the pure tests (state machine, config, cron translation, windows, protocol, the
# in-process lock server). The full tier adds the tests that need root or real components, and
# the slow ones (our programs as processes, fleets, real-time leases). Those carry markers
# (registered in pyproject.toml), added here (1) from the fixtures a test uses, anywhere in its
# fixture closure (FIXTURE_MARKS, PARAM_MARKS), (2) from its `skipif(..., reason="needs X")`
# (REASON_MARKS: the house convention for a missing tool), (3) for what neither shows, by test
# path (PATH_MARKS), or (4) written on the test. Plain `pytest` skips every marked test with the
# reason; `pytest --real` runs them where the components exist (a missing one skips, as
# before); the project's test command (tests/run.sh, what .ci/run calls) sets
# ZINCATI_PY_REQUIRE_ALL=1: every tier runs and a skip is a failure, so CI can never pass by not
# running a test. `pytest -m "not full"` is the fast tier, `pytest --real -m etcd` one part.
REQUIRE_ALL = os.environ.get("ZINCATI_PY_REQUIRE_ALL") == "1"

#: Each marker of the full tier and what it needs (the text of a fast-tier skip).
FULL_TIER = {
    "root": "needs root (private mount namespaces, other users' files)",
    "systemd": "needs a real systemd (user manager, systemd-analyze)",
    "dbus": "needs dbus-daemon (private buses)",
    "dbusmock": "needs python3-dbusmock under /usr/bin/python3 (the logind double)",
    "etcd": "needs etcd (Debian etcd-server)",
    "rpm": "needs rpmbuild and rpmlint",
    "nodejs": "needs node (the polkit rules are JavaScript)",
    "realhost": "boots systemd-nspawn containers (the real-host tier)",
    "browser": "needs chromium and chromedriver (web pages in a headless browser)",
    "slow": "takes seconds (our programs as processes, fleets, real-time leases)",
}
#: Fixture (anywhere in a test's fixture closure) -> markers.
FIXTURE_MARKS: dict[str, tuple[str, ...]] = {
    "user_manager_factory": ("root", "systemd", "dbus"),
    "system_bus": ("dbus",),
    "logind_factory": ("dbusmock",),
    "node_factory": ("dbus", "dbusmock"),  # tests/agent: an agent beside both doubles
    "fleet_factory": ("dbus", "dbusmock"),
    "graph_node": ("dbus", "dbusmock"),  # tests/cincinnati
    "etcd": ("etcd",),
    "_needs_sandbox": ("root", "systemd", "dbus", "dbusmock"),  # tests/e2e: the demo's fleet
    "realhost_image": ("root", "realhost"),
    "subprocess_server": ("slow",),  # tests/fleetlock: `fleetlock serve` processes
    "command": ("slow",),  # tests/fleetlock: the same, started by the test
    "lock_server": ("slow",),  # tests/strategy: a real lock server process per test
}
#: (fixture, parameter) -> markers, for a parametrized fixture that needs a component for one
#: of its values only (fleetlock's `backend`: sqlite is pure, etcd is not).
PARAM_MARKS: dict[tuple[str, str], tuple[str, ...]] = {("backend", "etcd"): ("etcd",)}
#: Words of a `skipif` reason -> markers.
REASON_MARKS = {
    "root": ("root",),
    "systemd-analyze": ("systemd",),
    "etcd": ("etcd",),
    "dbus-daemon": ("dbus",),
    "dbusmock": ("dbusmock",),
    "chromium": ("browser",),
}
#: Test file, or file::test (any parameters), -> markers: what no fixture or skipif shows.
PATH_MARKS: dict[str, tuple[str, ...]] = {
    "tests/fleetlock/test_etcd_tls.py": ("etcd",),  # its own TLS etcd
    "tests/schedule/test_schedule_differential.py": ("systemd",),  # vs systemd-analyze
    "tests/schedule/test_schedule_preview.py": ("systemd",),  # previews are systemd's
    "tests/agent/test_parts.py::test_polkit_check_against_dbusmock_polkitd": ("dbus", "dbusmock"),
    "tests/strategy/test_marker_file.py::test_owner_is_not_checked": ("root",),
    # zincati-py run as a process per step: 0.3-4 s a test, measured.
    "tests/cli/test_schedule_files.py": ("slow",),
    "tests/config/test_config_cli.py": ("slow",),
    "tests/cincinnati/test_updates_cmd.py": ("slow",),
    "tests/fleetlock/test_cli.py": ("slow",),
    "tests/fleetlock/test_queue.py": ("slow",),  # queue deadlines, grace and cooldown: ~1.3 s each
    # real-time waits: leases, sweeps, a slow client.
    "tests/fleetlock/test_protocol.py::test_lease_renewal": ("slow",),
    "tests/fleetlock/test_protocol.py::test_lease_expiry_frees_a_vanished_nodes_slot": ("slow",),
    "tests/fleetlock/test_protocol.py::test_sweeper_frees_expired_slots_without_requests": (
        "slow",
    ),
    "tests/fleetlock/test_security.py::test_healthz_answers_under_a_slow_client_attack": ("slow",),
}
ROOTDIR = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real",
        action="store_true",
        help="also run the full tier (tests marked " + "/".join(FULL_TIER) + ") where the "
        "components exist; tests/run.sh runs it and fails on any skip",
    )


def _needs(item: pytest.Item) -> set[str]:
    needs = {m.name for m in item.iter_markers() if m.name in FULL_TIER}
    for fixture in getattr(item, "fixturenames", ()):
        needs.update(FIXTURE_MARKS.get(fixture, ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for (fixture, value), marks in PARAM_MARKS.items():
            if callspec.params.get(fixture) == value:
                needs.update(marks)
    for mark in item.iter_markers("skipif"):
        reason = str(mark.kwargs.get("reason", ""))
        for word, marks in REASON_MARKS.items():
            if re.search(rf"\b{re.escape(word)}\b", reason):
                needs.update(marks)
    path = Path(str(item.path)).resolve()
    rel = path.relative_to(ROOTDIR).as_posix() if path.is_relative_to(ROOTDIR) else str(path)
    name = getattr(item, "originalname", item.name)
    needs.update(PATH_MARKS.get(rel, ()))
    needs.update(PATH_MARKS.get(f"{rel}::{name}", ()))
    return needs


_FULL_TIER_SKIPPED: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_full = REQUIRE_ALL or bool(config.getoption("--real"))
    for item in items:
        needs = _needs(item)
        if not needs:
            continue
        for name in sorted(needs):
            item.add_marker(name)
        item.add_marker("full")
        if not run_full:
            what = "; ".join(FULL_TIER[n] for n in FULL_TIER if n in needs)
            reason = f"full tier: {what}; runs in tests/run.sh, or pytest --real"
            item.add_marker(pytest.mark.skip(reason=reason))
            _FULL_TIER_SKIPPED.append(item.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Said last, where it is seen: a green fast tier is not a green suite.
    if _FULL_TIER_SKIPPED:
        terminalreporter.write_line(
            f"fast tier only: {len(_FULL_TIER_SKIPPED)} full-tier tests not run "
            "(pytest --real here, or bash tests/run.sh for all with skips failing)",
            yellow=True,
            bold=True,
        )


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
