"""The real-host tier: zincati-py on a real systemd 252 PID 1 in a ``systemd-nspawn`` container.

Real dbus-daemon, systemd-logind, polkitd and systemd inside; our files laid out by the RPM
spec's own ``%install``; only rpm-ostree/ostree (absent from Debian) are the test bed's
stand-ins. Typical use (what ``tests/realhost`` fixtures do)::

    image = prepare_image(checkout, workdir)            # cached rootfs + this tree's wheels
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
import shutil
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
    tarball: Path
    wheelhouse: Path
    timings: dict[str, float]


def _extract(tarball: Path, root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True, timeout=300)


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
    return Image(checkout, tarball, wheelhouse, timings)


def make_host(
    image: Image,
    workdir: Path,
    name: str,
    *,
    script: Mapping[str, Any],
    fragments: Mapping[str, str] | None = None,
    enable: Iterable[str] = ("zincati-py.service",),
) -> Container:
    """A rootfs with the project installed the RPM way, ready to :meth:`Container.boot`.

    ``script`` is the rpm-ostree double's update stream (see :mod:`testbed.rpmostree`),
    ``fragments`` admin config fragments for ``/etc/zincati/config.d``, ``enable`` the units
    the image's preset enables (``ostree-finalize-staged.path`` always is).
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", name):
        raise ValueError(f"container name {name!r}: lower-case letters, digits, '-'")
    started = time.monotonic()
    root = workdir / "root"
    _extract(image.tarball, root)
    install_rpm_layout(root, image.checkout, image.wheelhouse)
    install_standins(root, image.wheelhouse, {"reboot_on_logind": False, **script})
    enable_units(root, [*enable, "ostree-finalize-staged.path"])
    write_fragments(root, fragments or {})
    set_machine_id(root)
    host = Container(root, name, workdir / "logs")
    host.timings["make"] = [round(time.monotonic() - started, 2)]
    return host
