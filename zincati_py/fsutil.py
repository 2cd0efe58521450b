"""Atomic file replacement, so readers never see a half-written file and a crash loses nothing."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Not tempfile.mkstemp: tempfile imports shutil, bz2, lzma and random (about 1 MiB resident in
# the long-running agent) for what is one exclusive create of a random name.
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _temp_file(directory: Path, name: str) -> tuple[int, str]:
    """A new file ``.NAME.XXXXXXXXXXXX.tmp`` in ``directory`` (mode 0600), as mkstemp makes."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: no free temporary file name for {name}")


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``.

    ``durable`` fsyncs the file and its directory: needed for state that must survive a crash
    (the agent's decisions), not for files in /run.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = _temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
