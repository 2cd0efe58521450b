"""The real-host tier's operating system image: a Debian rootfs with systemd 252 as PID 1,
dbus-daemon, systemd-logind and polkitd, plus the wheels our code needs inside.

The rootfs is built once with ``mmdebstrap`` from the host's apt sources and cached as a
tarball whose name is a hash of everything that defines it (suite, variant, package list, apt
sources), under :data:`CACHE_DIR` (outside any checkout, so CI runs on the same machine reuse
it). Concurrent builders serialize on a lock file. Nothing of ours is in the tarball: each
container gets the checkout's current code installed on top (:mod:`testbed.realhost.install`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "ZINCATI_PY_REALHOST_CACHE"
CACHE_DIR = Path(os.environ.get(CACHE_ENV) or "/var/cache/zincati-py-testbed")

SUITE = "bookworm"
#: The Python of SUITE (bookworm's python3 is 3.11); checked against the rootfs when wheels are
#: built (container_python).
CONTAINER_PYTHON = "3.11"
VARIANT = "minbase"
# What the tier needs beyond minbase (which already has util-linux: setpriv, nsenter; bsdutils:
# script). systemd-sysv makes systemd PID 1; libpam-systemd registers PAM logins with logind
# (interactive sessions); polkitd brings pkcheck; python3-pip installs our wheels.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "polkitd",
    "libpam-systemd",
    "python3",
    "python3-pip",
    "procps",
    "iproute2",
)
HOST_TOOLS = ("mmdebstrap", "systemd-nspawn", "nsenter", "journalctl", "tar")


def missing_host_tools() -> list[str]:
    """What this machine lacks to run the tier (empty when it can)."""
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _apt_sources() -> str:
    """The host's apt sources (what mmdebstrap uses without a mirror argument)."""
    parts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in (".list", ".sources"):
            parts.append(f"# {path}\n{path.read_text(errors='replace')}")
    return "\n".join(parts)


def rootfs_key() -> str:
    spec = {"suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES)}
    spec["sources"] = _apt_sources()
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path}: held by another builder for {timeout:.0f} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def rootfs_tarball(cache_dir: Path = CACHE_DIR, timeout: float = 900.0) -> Path:
    """The cached rootfs tarball, built first if this package list has none yet."""
    tarball = cache_dir / f"rootfs-{SUITE}-{rootfs_key()}.tar"
    if tarball.exists():
        return tarball
    with _locked(cache_dir / ".rootfs.lock", timeout):
        if tarball.exists():  # another process built it while we waited
            return tarball
        tmp = tarball.with_name(f".{tarball.name}.{os.getpid()}.tmp")
        log = tarball.with_suffix(".log")
        cmd = [
            "mmdebstrap",
            f"--variant={VARIANT}",
            "--include=" + ",".join(PACKAGES),
            "--format=tar",
            SUITE,
            str(tmp),
        ]
        started = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"mmdebstrap failed ({proc.returncode}), {log}:\n{tail}")
        os.replace(tmp, tarball)
        with open(log, "a") as out:
            out.write(f"built in {time.monotonic() - started:.1f} s\n")
        # Older tarballs of other package lists are garbage now.
        for old in cache_dir.glob(f"rootfs-{SUITE}-*.tar"):
            if old != tarball:
                old.unlink(missing_ok=True)
    return tarball


def container_python(root: Path) -> str:
    """``3.11`` for a rootfs whose ``python3`` is Python 3.11 (must be CONTAINER_PYTHON)."""
    target = os.readlink(root / "usr/bin/python3")
    m = re.fullmatch(r"python(\d+\.\d+)", os.path.basename(target))
    if not m:
        raise RuntimeError(f"{root}/usr/bin/python3 -> {target}: no version in the name")
    if m.group(1) != CONTAINER_PYTHON:
        raise RuntimeError(f"{SUITE} rootfs has Python {m.group(1)}: update CONTAINER_PYTHON")
    return m.group(1)


def _wheel_python(version: str, checkout: Path) -> str:
    """A host interpreter of ``version`` with pip, to build wheels the container can install."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    for candidate in (checkout / f".venv-{version}/bin/python", shutil.which(f"python{version}")):
        if candidate and Path(candidate).exists():
            ok = subprocess.run(
                [str(candidate), "-m", "pip", "--version"], capture_output=True, timeout=60
            )
            if ok.returncode == 0:
                return str(candidate)
    raise RuntimeError(f"no Python {version} with pip on this machine to build the wheels")


SOURCE_ENV = "ZINCATI_PY_REALHOST_SOURCE"


def _copy_sources(checkout: Path, dest: Path) -> None:
    """The checkout's working tree (what is being tested) minus venvs, VCS and build output;
    the build then writes nothing into the checkout. With ``$ZINCATI_PY_REALHOST_SOURCE=HEAD``
    (any git revision) that commit instead: a tree others are editing stays out of the image."""
    rev = os.environ.get(SOURCE_ENV)
    if rev:
        dest.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(checkout), "archive", "--format=tar", rev],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        subprocess.run(["tar", "-C", str(dest), "-x"], input=archive.stdout, check=True)
        return
    ignore = shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
        ".ruff_cache", ".pytest_cache",
    )  # fmt: skip
    shutil.copytree(checkout, dest, ignore=ignore, symlinks=True)


def build_wheelhouse(checkout: Path, dest: Path, python_version: str, timeout: float = 600) -> Path:
    """Wheels of zincati-py, zincati-py-testbed and every dependency (pip's cache makes a rebuild
    take seconds), built on the host: the container has no network."""
    dest.mkdir(parents=True, exist_ok=True)
    py = _wheel_python(python_version, checkout)
    with tempfile.TemporaryDirectory(prefix="zpy-src-") as tmp:
        src = Path(tmp) / "src"
        _copy_sources(checkout, src)
        proc = subprocess.run(
            [py, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(dest),
             str(src), str(src / "testbed")],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dest


OURS = ("zincati_py-", "zincati_py_testbed-")


def deps_tree(rootfs: Path, wheelhouse: Path, cache_dir: Path = CACHE_DIR) -> Path:
    """The rootfs, extracted, with every dependency wheel already installed: a read-only
    directory (cached by rootfs and wheel names) that containers use as the lower layer of an
    overlay, so a container costs a mount and our two wheels, not an extraction."""
    from testbed.realhost.install import pip_install  # the one way wheels go in

    deps = sorted(p.name for p in wheelhouse.glob("*.whl") if not p.name.startswith(OURS))
    key = hashlib.sha256("\n".join([rootfs.name, *deps]).encode()).hexdigest()[:16]
    tree = cache_dir / f"rootfs-deps-{key}"
    if tree.is_dir():
        return tree
    with _locked(cache_dir / ".rootfs.lock", 900):
        if tree.is_dir():
            return tree
        work = Path(tempfile.mkdtemp(prefix=".deps-", dir=cache_dir))
        try:
            root = work / "root"
            root.mkdir()
            subprocess.run(["tar", "-C", str(root), "-xf", str(rootfs)], check=True, timeout=600)
            only_deps = work / "wheels"
            only_deps.mkdir()
            for name in deps:
                shutil.copy2(wheelhouse / name, only_deps / name)
            pip_install(root, only_deps, [f"/var/tmp/zpy-wheelhouse/{n}" for n in deps])
            os.rename(root, tree)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # Trees of other dependency sets may be lower layers of running containers (another
        # session, another checkout): only those unused for a day go.
        for old in cache_dir.glob("rootfs-deps-*"):
            if old != tree and time.time() - old.stat().st_atime > 86400:
                shutil.rmtree(old, ignore_errors=True)
    return tree
