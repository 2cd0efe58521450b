"""The generator's memo: an unchanged boot replays the last run instead of recomputing it.

The generator runs on every boot and every daemon-reload, nearly always on the same
fragments. Its output is a pure function of its inputs, so the last run's output (unit texts,
``timers.target.wants`` entries, the lines it logged) is kept with a fingerprint of every
input; when the fingerprint matches, the generator writes that output again without loading
the configuration, importing tomllib, croniter, zoneinfo or dataclasses.

The fingerprint (:func:`inputs`) holds, exactly:

- every entry of the three config directories: name, file type, a symlink's target, and the
  full contents of each ``*.toml`` regular file (compared byte for byte, no hash);
- ``etc/machine-id``'s contents (the node id hashes ``H`` and names the node);
- ``etc/localtime``: the link and the identity of the link and of its target;
- what the output names: the root prefix, the ``zincati-py`` executable, the manager scope;
- the environment (:func:`environment`): zincati-py's version, the interpreter, the time zone
  database (each directory on the zoneinfo search path and its ``tzdata.zi``, which a tzdata
  update replaces; ``PYTHONTZPATH``);
- the code: the identity (device, inode, size, times) of the file of every module the computing
  run loaded that is not the standard library's (zincati-py's own, croniter, dateutil, ...:
  :func:`loaded_modules`), checked before anything else is used.

When the inputs changed, the cron translations of the last runs are still good while the
environment and the code are unchanged: they are keyed by expression, zone and hash id
(``zincati_py.schedule.cron.MEMO``), so a changed configuration whose cron expressions were
all seen before does not import croniter either.

Anything unexpected (a fragment that cannot be read, a directory that cannot be listed, a
file over the size limit) makes the run uncacheable: the generator then computes as before.

Where: ``zincati-py-generator/cache`` (``cache-user`` for a user manager's generator) in
``ROOT/run`` and in ``ROOT/var/cache``. Generators run very early: ``/run`` is writable but
emptied at every boot, ``/var`` is kept but may be read-only (or not mounted yet) at boot. So
a run reads ``/run`` first, then ``/var/cache``, and a computing run writes both where it can:
a boot replays what the last ``daemon-reload`` of the previous boot computed, when ``/var`` is
there to read. A user manager's generator that cannot write ``/run`` uses
``$XDG_RUNTIME_DIR/zincati-py-generator`` only. The directory is created 0700
and used only when it is a real directory owned by the running user and not writable by
anyone else; the file is opened with ``O_NOFOLLOW`` relative to it and must be owned by the
running user too, since replayed texts go into unit files unchecked. The file is written
atomically (temp file + rename); a failure to read or write it only costs the time saved.

Imported on every boot: only builtin modules (``marshal``, ``os``, ``stat``, ``sys``) and
:mod:`zincati_py.envhooks` (``os`` only), where ``ZINCATI_PY_ROOT`` is read.
"""

from __future__ import annotations

import marshal
import os
import stat
import sys

from zincati_py import envhooks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["CacheDir", "Replay", "environment", "inputs", "load", "open_dirs", "save"]

# Bump when the file's layout or the meaning of a fingerprint part changes.
FORMAT = 1
DIR_NAME = "zincati-py-generator"
FILE_NAME = "cache"
# As zincati_py.paths (not imported: its dataclass costs more than this whole module).
CONFIG_DIRS = ("usr/lib/zincati/config.d", "run/zincati/config.d", "etc/zincati/config.d")
# As zincati_py.config.fragments.MAX_FRAGMENT_BYTES: larger files are not cached.
MAX_FRAGMENT_BYTES = 256 * 1024
# Cron translations kept across runs.
MAX_TRANSLATIONS = 1000


class Uncacheable(Exception):
    """An input could not be fingerprinted exactly; compute without the memo."""


def resolve_root() -> str:
    """As zincati_py.paths.resolve_root() with no argument: ``$ZINCATI_PY_ROOT`` or ``/``."""
    return envhooks.get(envhooks.ROOT) or "/"


def _under(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def _identity(path: str, follow: bool = True) -> tuple[int, ...] | str:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        return f"errno {exc.errno}"
    return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(path: str) -> bytes | str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"errno {exc.errno}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Uncacheable(path)
        data = b""
        while len(data) <= MAX_FRAGMENT_BYTES:
            chunk = os.read(fd, MAX_FRAGMENT_BYTES + 1 - len(data))
            if not chunk:
                return data
            data += chunk
        raise Uncacheable(path)  # too large: the loader reports it; not worth caching
    finally:
        os.close(fd)


def _config_dirs(root: str) -> list[object]:
    out: list[object] = []
    for rel in CONFIG_DIRS:
        directory = _under(root, rel)
        try:
            names = sorted(os.listdir(directory), key=os.fsencode)
        except FileNotFoundError:
            out.append((rel, None))
            continue
        except OSError as exc:
            raise Uncacheable(directory) from exc
        out.append((rel, len(names)))
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise Uncacheable(path) from exc
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out.append((name, kind, os.readlink(path)))
            elif stat.S_ISREG(st.st_mode) and name.endswith(".toml"):
                content = _read(path)
                if isinstance(content, str):
                    raise Uncacheable(path)  # unreadable: the loader says why
                out.append((name, kind, content))
            else:
                out.append((name, kind))
    return out


def _localtime(root: str) -> list[object]:
    localtime = _under(root, "etc/localtime")
    try:
        link: str | None = os.readlink(localtime)
    except OSError:
        link = None
    return [link, _identity(localtime, follow=False), _identity(localtime)]


def environment(tzpath: list[str]) -> tuple[object, ...]:
    """What a cron translation depends on besides its key and the code: the interpreter and
    the time zone database."""
    from zincati_py import __version__

    zones: list[object] = [os.environ.get("PYTHONTZPATH")]
    for directory in tzpath:
        zones.append((directory, _identity(directory), _identity(f"{directory}/tzdata.zi")))
    return (
        FORMAT,
        __version__,
        sys.version,
        sys.executable,
        tuple(zones),
    )


def inputs(root: str, executable: str, user: bool, env: tuple[object, ...]) -> tuple[object, ...]:
    """Everything the generator's output depends on (see the module docstring): ``env``
    (from :func:`environment`) and what this run reads and names. Raises Uncacheable."""
    return (
        env,
        root,
        executable,
        user,
        tuple(_config_dirs(root)),
        _read(_under(root, "etc/machine-id")),
        tuple(_localtime(root)),
    )


class CacheDir:
    """The cache directory, opened safely (or not at all: ``open_dir`` returns None), and the
    file's name in it: one per manager scope (root's user manager shares the directory with
    the system manager; their inputs differ)."""

    def __init__(self, fd: int, user: bool) -> None:
        self.fd = fd
        self.file = f"{FILE_NAME}-user" if user else FILE_NAME

    def close(self) -> None:
        os.close(self.fd)


def _cache_dir_paths(root: str, user: bool) -> list[str]:
    """Where the memo is kept, freshest first: ``/run`` (always writable when generators run,
    but emptied at every boot) and ``/var/cache`` (kept across boots; it may be read-only or
    not mounted yet when the generator runs at boot: then it is only read, or not used)."""
    run = _under(root, "run")
    if user and os.geteuid() != 0 and not os.access(run, os.W_OK):
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        return [os.path.join(runtime, DIR_NAME)] if runtime else []
    return [os.path.join(run, DIR_NAME), os.path.join(_under(root, "var/cache"), DIR_NAME)]


def open_dirs(root: str, user: bool) -> list[CacheDir]:
    """The memo's directories that exist or could be created (0700) and are ours alone."""
    out = []
    for path in _cache_dir_paths(root, user):
        directory = open_dir(path, user)
        if directory is not None:
            out.append(directory)
    return out


def open_dir(path: str, user: bool) -> CacheDir | None:
    """The directory at ``path`` (created 0700 if its parent exists) if it is ours alone."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        try:
            os.mkdir(path, 0o700)
            fd = os.open(path, flags)
        except OSError:
            return None
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        return None
    return CacheDir(fd, user)


class Replay:
    """A cache file's contents: the last run's fingerprint and output."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.inputs: tuple[object, ...] = doc["inputs"]
        self.environment: tuple[object, ...] = doc["environment"]
        self.translations: dict[Any, Any] = doc["translations"]
        self.tzpath: list[str] = doc["tzpath"]
        self.modules: dict[str, object] = doc["modules"]
        self.units: dict[str, str] = doc["units"]
        self.timers: list[str] = doc["timers"]
        self.log: list[str] = doc["log"]

    def code_unchanged(self) -> bool:
        """Every module file the computing run(s) loaded is still the same file."""
        return all(_identity(path) == identity for path, identity in self.modules.items())


def load(directory: CacheDir) -> Replay | None:
    """The cache file's contents, or None when there is none or it is not ours or not valid."""
    try:
        fd = os.open(
            directory.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.fd
        )
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            doc = marshal.load(f)
        return Replay(doc)
    except Exception:  # a damaged or foreign file is no cache at all
        return None
    finally:
        os.close(fd)


def loaded_modules() -> dict[str, object]:
    """File → identity of every module loaded in this process that is not the standard
    library's: zincati-py's own and the third-party ones (site-packages)."""
    out: dict[str, object] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        ours = name == "zincati_py" or name.startswith("zincati_py.")
        if ours or "/site-packages/" in path or "/dist-packages/" in path:
            out[path] = _identity(path)
    return out


def save(
    directory: CacheDir,
    *,
    fingerprint: tuple[object, ...] | None,
    environment: tuple[object, ...],
    translations: dict[Any, Any],
    tzpath: list[str],
    units: dict[str, str],
    timers: list[str],
    log: list[str],
    modules: dict[str, object],
) -> None:
    """Write the cache file atomically (raises OSError; callers ignore it). A None
    ``fingerprint`` keeps the translations only (the run's inputs could not be fingerprinted)."""
    doc = {
        "inputs": fingerprint,
        "environment": environment,
        "translations": translations,
        "tzpath": tzpath,
        "modules": modules,
        "units": units,
        "timers": timers,
        "log": log,
    }
    data = marshal.dumps(doc)
    tmp = f".{directory.file}.{os.getpid()}"
    # Left by a run killed while writing (early-boot PIDs repeat). No contextlib: see above.
    try:  # noqa: SIM105
        os.unlink(tmp, dir_fd=directory.fd)
    except FileNotFoundError:
        pass
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=directory.fd,
    )
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, directory.file, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
    except BaseException:
        try:  # noqa: SIM105 (contextlib is an import this module does without)
            os.unlink(tmp, dir_fd=directory.fd)
        except OSError:
            pass
        raise
