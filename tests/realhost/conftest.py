"""Real-host tier fixtures: zincati-py in booted systemd-nspawn containers (testbed.realhost).

One container per test module (booting is cheap, installing and tearing down is what costs), so
the tests of a module share a host and run in file order. A failing test gets the journal of
our units (all boots) and the failed units attached to its report. Marker: ``realhost``; run
only this tier with ``pytest -m realhost``, leave it out with ``-m 'not realhost'``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.realhost import Container, Image, make_host, missing_host_tools, prepare_image
from testbed.realhost.image import CONTAINER_PYTHON

CHECKOUT = Path(__file__).resolve().parents[2]
ACTIVE: list[Container] = []
TIMINGS: list[str] = []
JOURNAL_UNITS = (
    "zincati-py.service", "zincati-py-*", "rpm-ostreed.service", "ostree-finalize-staged.service",
    "polkit.service", "systemd-logind.service", "dbus.service",
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "realhost: boots systemd-nspawn containers (root, systemd-container, mmdebstrap)"
    )


HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
DESELECTED: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the container tests; run them once per CI run, not once per host interpreter.

    The containers run Debian's Python (``CONTAINER_PYTHON``) whatever drives them, so a second
    host interpreter would boot the same containers again (minutes) to prove nothing new: under
    another interpreter they are deselected (said in the summary; not a skip), unless
    ``ZINCATI_PY_REALHOST=1``.
    """
    keep, drop = [], []
    for item in items:
        if "realhost_image" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realhost)
            if HOST_PYTHON != CONTAINER_PYTHON and os.environ.get("ZINCATI_PY_REALHOST") != "1":
                drop.append(item)
                continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        DESELECTED.append(
            f"{len(drop)} container tests deselected: host Python {HOST_PYTHON}, the containers run"
            f" {CONTAINER_PYTHON} (they run under a {CONTAINER_PYTHON} host interpreter;"
            " ZINCATI_PY_REALHOST=1 forces them)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and ACTIVE:
        for host in ACTIVE:
            args = [a for u in JOURNAL_UNITS for a in ("-u", u)]
            report.sections.append(
                (f"journal of {host.name} (our units, all boots)", host.journal(*args, tail=250))
            )
            if host.running():
                failed = host.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
                report.sections.append((f"failed units of {host.name}", failed or "(none)"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in DESELECTED:
        terminalreporter.write_line(f"real-host tier: {line}")
    if TIMINGS:
        terminalreporter.write_sep("-", "real-host tier timings (s)")
        for line in TIMINGS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def realhost_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    missing = missing_host_tools()
    if missing:
        pytest.skip("real-host tier needs: " + ", ".join(missing))
    image = prepare_image(CHECKOUT, tmp_path_factory.mktemp("realhost-image"))
    TIMINGS.append(
        f"image: rootfs {image.timings['rootfs']:.1f} ({image.lower}),"
        f" wheels {image.timings['wheels']:.1f}, deps {image.timings['deps']:.1f}"
    )
    return image


HostFactory = Callable[..., Container]


@pytest.fixture(scope="module")
def host_factory(
    realhost_image: Image, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[HostFactory]:
    """``host_factory(script=..., fragments=..., enable=...)``: a booted container, powered off
    and removed at the end of the module."""
    hosts: list[Container] = []
    stem = re.sub(r"[^a-z0-9]+", "-", request.module.__name__.rsplit(".", 1)[-1].lower())

    def make(**kwargs: Any) -> Container:
        name = f"zpy-{stem}-{len(hosts) + 1}"[:40].strip("-")
        workdir = tmp_path_factory.mktemp(name)
        host = make_host(realhost_image, workdir, name, **kwargs)
        hosts.append(host)
        ACTIVE.append(host)
        host.boot()
        return host

    try:
        yield make
    finally:
        for host in hosts:
            host.close()
            host.discard_root()  # ~400 MB each; the journal stays in its logs directory
            ACTIVE.remove(host)
            TIMINGS.append(f"{host.name}: {host.timings}")
