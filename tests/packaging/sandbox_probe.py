"""Run inside a shipped unit's sandbox by test_sandbox.py; prints one ``PROBE {json}`` line.

It does what the service needs to do (import its modules, watch with inotify, open the socket
families it uses, write its own directories) and tries what the sandbox must refuse, and
reports each outcome: True for success, the errno for a refusal.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import socket
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path


def attempt(action: Callable[[], object]) -> object:
    try:
        action()
    except OSError as exc:
        return exc.errno
    return True


def open_socket(family: str) -> None:
    kind = socket.SOCK_RAW if family == "AF_PACKET" else socket.SOCK_DGRAM
    socket.socket(getattr(socket, family), kind).close()


def listen_tcp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()


def listen_unix(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()


def watch(path: str) -> None:
    import pyinotify

    manager = pyinotify.WatchManager()
    if manager.add_watch(path, pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO).get(path, -1) <= 0:
        raise OSError(0, "inotify watch failed")


def use_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("create table t (x)")


async def resolve() -> int:
    return len(await asyncio.get_running_loop().getaddrinfo("localhost", 443))


def capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise OSError(0, "no CapEff")


def main() -> None:
    modules = sys.argv[1:]
    result: dict[str, object] = {}
    for name in modules:
        __import__(name)
    result["imports"] = modules
    # libffi closures under MemoryDenyWriteExecute= (pyinotify and pystemd use ctypes).
    callback = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)
    result["ctypes_callback"] = callback()
    result["inotify_etc"] = attempt(lambda: watch("/etc"))
    for family in ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"):
        result[family] = attempt(lambda f=family: open_socket(f))  # type: ignore[misc]
    result["getaddrinfo"] = asyncio.run(resolve()) > 0
    result["listen_tcp"] = attempt(listen_tcp)
    state = Path(os.environ["STATE_DIRECTORY"])
    result["state_write"] = attempt(lambda: (state / "probe").write_text("1"))
    result["sqlite_state"] = attempt(lambda: use_sqlite(state / "probe.db"))
    if "RUNTIME_DIRECTORY" in os.environ:
        run = Path(os.environ["RUNTIME_DIRECTORY"])
        (run / "public").mkdir(exist_ok=True)
        result["runtime_write"] = attempt(lambda: (run / "status.json").write_text("{}"))
        result["runtime_unix_listen"] = attempt(lambda: listen_unix(run / "public" / "probe.sock"))
    result["etc_write"] = attempt(lambda: Path("/etc/zincati-py-probe").write_text("x"))
    result["usr_write"] = attempt(lambda: Path("/usr/zincati-py-probe").write_text("x"))
    result["capabilities"] = capabilities()
    result["uid"] = os.getuid()
    print("PROBE " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
