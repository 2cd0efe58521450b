"""The rpm-ostree double's transaction socket authenticates like rpm-ostreed (issue 12).

rpm-ostreed (root) serves transactions to clients of any uid that proves its uid with SASL
EXTERNAL; Zincati and our agent run as their own unprivileged users. The double once accepted
only its own uid (``REJECTED EXTERNAL``). These run the server half of the handshake against a
client process really running as another uid; no container needed (root only, for setpriv).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

from testbed.rpmostree import _server_auth

CLIENT = r"""
import socket, sys
name, claim = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("\0" + name)
s.sendall(b"\0AUTH EXTERNAL " + claim.encode().hex().encode() + b"\r\n")
s.settimeout(10)
print(s.recv(200).decode().strip())
s.sendall(b"BEGIN\r\n")
s.recv(1)  # until the server is done with the socket
"""

# The client runs as another uid: the system Python (a venv's interpreter may live where that
# uid cannot read, or need a library path only root's environment has). Stdlib only.
CLIENT_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
    ),
]


def handshake(uid: int, claim: str) -> tuple[bool, str]:
    """Run the double's server side against a client running as ``uid`` claiming ``claim``."""
    name = f"zpy-auth-test-{uuid.uuid4().hex[:8]}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(1)
    listener.setblocking(False)

    async def serve() -> bool:
        loop = asyncio.get_running_loop()
        sock, _ = await asyncio.wait_for(loop.sock_accept(listener), 10)
        with sock:
            return await asyncio.wait_for(_server_auth(loop, sock), 10)

    client = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            CLIENT_PYTHON,
            "-I",
            "-c",
            CLIENT,
            name,
            claim,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ok = asyncio.run(serve())
        out, _ = client.communicate(timeout=10)
    finally:
        listener.close()
        if client.poll() is None:
            client.kill()
            client.wait(5)
    return ok, out.strip()


def test_other_uid_with_true_claim_is_accepted() -> None:
    ok, reply = handshake(65534, "65534")
    assert reply.startswith("OK "), reply
    assert ok


def test_forged_claim_is_rejected() -> None:
    ok, reply = handshake(65534, "0")
    assert reply == "REJECTED EXTERNAL", reply
    assert not ok  # and a BEGIN after the rejection does not get it in
