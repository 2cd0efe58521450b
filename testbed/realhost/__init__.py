"""The real-host tier: zincati-py on a real systemd 252 PID 1 in a ``systemd-nspawn`` container.

Real dbus-daemon, systemd-logind, polkitd and systemd inside; our files laid out by the RPM
spec's own ``%install``; only rpm-ostree/ostree (absent from Debian) are the test bed's
stand-ins. Typical use (what ``tests/realhost`` fixtures do)::

    image = prepare_image(checkout, workdir)   # cached rootfs (+ deps) + this tree's wheels
    host = make_host(image, workdir / "h1", "zpy-h1", script={...}, fragments={...})
    with host.boot():
        host.run(["zincati-py", "status"])
        host.run(["systemctl", "reboot"], check=False)
        host.expect_reboot()
        print(host.journal("-b", "-1", "-u", "zincati-py.service"))

Modules: :mod:`.image` (rootfs cache, wheels), :mod:`.install` (RPM layout, stand-ins,
presets), :mod:`.container` (boot, run, reboot, journals, teardown).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.realhost.container import Container, ContainerError
from testbed.realhost.image import (
    build_wheelhouse,
    container_python,
    deps_tree,
    missing_host_tools,
    rootfs_tarball,
)
from testbed.realhost.install import (
    enable_units,
    install_rpm_layout,
    install_standins,
    set_machine_id,
    write_fragments,
)

__all__ = [
    "Container",
    "ContainerError",
    "Image",
    "make_host",
    "missing_host_tools",
    "prepare_image",
]


@dataclass(frozen=True)
class Image:
    checkout: Path
    #: The read-only rootfs with the dependencies (lower layer of every container's overlay).
    lower: Path
    wheelhouse: Path
    timings: dict[str, float]


def _overlay(lower: Path, workdir: Path) -> Path:
    """``workdir/root``: an overlay of ``lower`` whose writes land in ``workdir/upper``."""
    root, upper, work = workdir / "root", workdir / "upper", workdir / "work"
    for d in (root, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={upper},workdir={work}", str(root)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return root


def prepare_image(checkout: Path, workdir: Path) -> Image:
    """The cached rootfs (built on first use) and wheels of the checkout's current tree."""
    timings = {}
    t = time.monotonic()
    tarball = rootfs_tarball()
    timings["rootfs"] = time.monotonic() - t
    t = time.monotonic()
    probe = workdir / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    # Only usr/bin/python3 is needed to learn the container's Python version.
    subprocess.run(
        ["tar", "-C", str(probe), "-xf", str(tarball), "./usr/bin/python3"],
        check=True, timeout=120,
    )  # fmt: skip
    version = container_python(probe)
    wheelhouse = build_wheelhouse(checkout, workdir / "wheelhouse", version)
    timings["wheels"] = time.monotonic() - t
    t = time.monotonic()
    with_deps = deps_tree(tarball, wheelhouse)
    timings["deps"] = time.monotonic() - t
    return Image(checkout, with_deps, wheelhouse, timings)


def make_host(
    image: Image,
    workdir: Path,
    name: str,
    *,
    script: Mapping[str, Any],
    fragments: Mapping[str, str] | None = None,
    enable: Iterable[str] = ("zincati-py.service",),
    netns: Path | None = None,
) -> Container:
    """A rootfs with the project installed the RPM way, ready to :meth:`Container.boot`.

    ``script`` is the rpm-ostree double's update stream (see :mod:`testbed.rpmostree`),
    ``fragments`` admin config fragments for ``/etc/zincati/config.d``, ``enable`` the units
    the image's preset enables (``ostree-finalize-staged.path`` always is), ``netns`` a network
    namespace to share with other containers (default: a private one).
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", name):
        raise ValueError(f"container name {name!r}: lower-case letters, digits, '-'")
    started = time.monotonic()
    root = _overlay(image.lower, workdir)
    host = Container(root, name, workdir / "logs", mounts=[root], netns=netns)
    install_rpm_layout(root, image.checkout, image.wheelhouse)
    install_standins(root, image.wheelhouse, {"reboot_on_logind": False, **script})
    enable_units(root, [*enable, "ostree-finalize-staged.path"])
    write_fragments(root, fragments or {})
    set_machine_id(root)
    host.timings["make"] = [round(time.monotonic() - started, 2)]
    return host
