"""zincati_py.lazytls: the agent starts without OpenSSL, and TLS works once something needs it.

Each case runs in a fresh interpreter (the deferral must come before asyncio is imported).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.agent_harness import Node

IDLE = """
import sys
early = "ipaddress" in sys.modules  # a dev venv's editable-install hook imports it at start
from zincati_py import lazytls
assert lazytls.defer() is True
import asyncio, hashlib, hmac
import zincati_py.agent.service, zincati_py.dbus.rpmostree, zincati_py.dbus.logind
loaded = [m for m in ("_ssl", "_hashlib", "_md5", "_sha1", "_blake2") if m in sys.modules]
assert not loaded, loaded
assert type(sys.modules["ssl"]).__name__ == "_OnFirstUse"  # loaded on first use
assert type(sys.modules["hashlib"]).__name__ == "_OnFirstUse"  # loaded on first use
assert type(sys.modules["hmac"]).__name__ == "_OnFirstUse"
# ipaddress too (urllib.parse imports it on Python >= 3.12, dbus-fast imports urllib.parse)
import ipaddress, urllib.parse
assert early or type(sys.modules["ipaddress"]).__name__ == "_OnFirstUse"
assert urllib.parse.urlsplit("http://[::1]:80/").hostname == "::1"
assert ipaddress.ip_address("::1").version == 6 and ipaddress.IPv4Address("1.2.3.4").packed
assert type(sys.modules["ipaddress"]).__name__ == "module"
# dbus-fast's introspection XML: ElementTree loaded when a document is first parsed or written
import dbus_fast, dbus_fast.aio
assert type(sys.modules["xml.etree.ElementTree"]).__name__ == "_OnFirstUse"
assert "xml.etree.ElementPath" not in sys.modules and "pyexpat" not in sys.modules
from dbus_fast import introspection as intr
doc = '<node><interface name="a.b"><method name="M"><arg type="s" name="x"/></method>'
doc += '</interface></node>'
try:
    intr.Node.parse("<node><bad")
except Exception as exc:  # expat's error, as dbus-fast reports it
    assert type(exc).__name__ == "ParseError" and "unclosed token" in str(exc), exc
node = intr.Node.parse(doc)
assert node.interfaces[0].methods[0].in_args[0].signature == "s"
import xml.etree.ElementTree as ET
assert isinstance(node.to_xml(), ET.Element) and '<method name="M">' in node.tostring()
# Python's own hash implementations: the same digests.
assert hashlib.sha256(b"zincati").hexdigest().startswith("6b1edc84")
assert hashlib.md5(b"").hexdigest() == "d41d8cd98f00b204e9800998ecf8427e"
assert hmac.new(b"k", b"m", "sha256").hexdigest().startswith("b6")
assert hashlib.sha256 is sys.modules["hashlib"].sha256 and "_hashlib" not in sys.modules
from zincati_py.config.checks import app_specific_id  # systemd's documented example
assert app_specific_id("0" * 31 + "1", "1" * 32)
assert lazytls.defer() is False  # once only
print("ok")
"""

TLS = """
import sys
from zincati_py import lazytls
assert lazytls.defer() is True
import asyncio, asyncio.sslproto, asyncio.base_events, asyncio.selector_events
assert asyncio.base_events.ssl is None and type(sys.modules["ssl"]).__name__ == "_OnFirstUse"
assert type(asyncio.sslproto).__name__ == "_OnFirstUse"  # imported for a TLS transport
import httpx, httpcore, anyio.streams.tls  # the HTTP stack binds ssl: still no OpenSSL
import ssl
assert "_ssl" not in sys.modules and asyncio.selector_events.ssl is None
ssl.PROTOCOL_TLS_CLIENT  # first use: the real module, handed to asyncio
assert "_ssl" in sys.modules
real = sys.modules["ssl"]
for mod in (asyncio.sslproto, asyncio.base_events, asyncio.selector_events):
    assert mod.ssl is real, mod
assert ssl.SSLContext is real.SSLContext and ssl.CERT_NONE is real.CERT_NONE
assert asyncio.sslproto.SSLAgainErrors == (ssl.SSLWantReadError, ssl.SSLSyscallError)
# what anyio bound at import (for its annotations) behaves as the real class
assert isinstance(ssl.create_default_context(), anyio.streams.tls.SSLContext)
CERT, KEY = sys.argv[1], sys.argv[2]

async def main():
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(CERT, KEY)

    async def answer(reader, writer):
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=CERT)
    # asyncio streams over TLS
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
    writer.write(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    assert (await reader.read()).endswith(b"ok")
    writer.close()
    # the agent's HTTP client (the fleet-lock and update-graph clients use it)
    async with httpx.AsyncClient(verify=client_ctx) as client:
        r = await client.get(f"https://127.0.0.1:{port}/")
        assert r.status_code == 200 and r.text == "ok", r
    # and a certificate it does not trust is refused
    async with httpx.AsyncClient(verify=ssl.create_default_context()) as client:
        try:
            await client.get(f"https://127.0.0.1:{port}/")
        except httpx.ConnectError as exc:
            assert "CERTIFICATE_VERIFY_FAILED" in str(exc), exc
        else:
            raise AssertionError("an untrusted certificate was accepted")
    server.close()
    await server.wait_closed()

asyncio.run(asyncio.wait_for(main(), 30))
print("ok")
"""


def run(code: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_idle_agent_loads_no_openssl() -> None:
    run(IDLE)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, (
        "the openssl command (Debian/Fedora: package openssl) makes the test certificate"
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_works_once_ssl_is_imported(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    run(TLS, str(cert), str(key))


def test_building_the_cli_loads_no_asyncio() -> None:
    """Every command's module is imported to build the parser: none may import asyncio (and
    with it OpenSSL) at module level, or ``zincati-py agent`` could not defer it."""
    run(
        "import sys\n"
        "from zincati_py.cli import build_parser\n"
        "build_parser()\n"
        "loaded = [m for m in ('asyncio', 'ssl', '_hashlib') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )


def test_the_running_agent_has_no_openssl_mapped(node: Node) -> None:
    agent = node.agent()
    node.wait_state("reported steady", agent=agent)
    maps = Path(f"/proc/{agent.pid}/maps").read_text()
    mapped = sorted({line.rsplit("/", 1)[-1] for line in maps.splitlines() if "/" in line})
    assert not [m for m in mapped if m.startswith(("libssl", "libcrypto", "_ssl", "_hashlib"))], (
        mapped
    )


FLEET_LOCK = """
import os, sys
from zincati_py import lazytls
assert lazytls.defer() is True
import asyncio
from zincati_py.fleetlock.client import FleetLockClient, FleetLockError
import zincati_py.strategy.fleet_lock
assert "_ssl" not in sys.modules
CERT, KEY = sys.argv[1], sys.argv[2]
BODY = b"HTTP/1.1 %s\\r\\nContent-Length: 2\\r\\n%sConnection: close\\r\\n\\r\\n{}"

async def serve(ssl_ctx=None, location=None):
    async def answer(reader, writer):
        await reader.readuntil(b"\\r\\n\\r\\n")
        if location:
            writer.write(BODY % (b"307 Temporary Redirect", b"Location: %s\\r\\n" % location))
        else:
            writer.write(BODY % (b"200 OK", b""))
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ssl_ctx)
    return server, server.sockets[0].getsockname()[1]

async def main():
    # http:// base URL: requests work and OpenSSL is never loaded.
    server, port = await serve()
    client = FleetLockClient(f"http://127.0.0.1:{port}", "node", "default")
    await client.pre_reboot()
    await client.steady_state()
    await client.close()
    server.close()
    assert "_ssl" not in sys.modules, "OpenSSL loaded for plain HTTP"
    import ssl
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(CERT, KEY)
    tls, tls_port = await serve(server_ctx)
    url = f"https://127.0.0.1:{tls_port}"
    # https:// with a certificate the system trust store does not hold: refused.
    client = FleetLockClient(url, "node", "default")
    try:
        await client.pre_reboot()
    except FleetLockError as exc:
        assert "CERTIFICATE_VERIFY_FAILED" in str(exc), exc
    else:
        raise AssertionError("an untrusted certificate was accepted (https base URL)")
    await client.close()
    # http:// redirected to that https server: verified as well, and refused.
    hop, hop_port = await serve(location=url.encode() + b"/v1/pre-reboot")
    client = FleetLockClient(f"http://127.0.0.1:{hop_port}", "node", "default")
    try:
        await client.pre_reboot()
    except FleetLockError as exc:
        assert "CERTIFICATE_VERIFY_FAILED" in str(exc), exc
    else:
        raise AssertionError("an untrusted certificate was accepted (redirect to https)")
    await client.close()
    # Trusted (SSL_CERT_FILE, which the system trust store honours): both work.
    os.environ["SSL_CERT_FILE"] = CERT
    for base in (url, f"http://127.0.0.1:{hop_port}"):
        client = FleetLockClient(base, "node", "default")
        await client.pre_reboot()
        await client.close()
    for s in (hop, tls):
        s.close()

asyncio.run(asyncio.wait_for(main(), 30))
print("ok")
"""


def test_fleet_lock_client_pays_for_tls_only_for_https(certificate: tuple[Path, Path]) -> None:
    """http:// base URL: no OpenSSL at all; https (or a redirect to it): verified as ever."""
    cert, key = certificate
    run(FLEET_LOCK, str(cert), str(key))
