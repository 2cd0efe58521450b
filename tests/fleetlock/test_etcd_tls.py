"""The etcd backend over TLS with client certificates (etcd started with
--client-cert-auth by testbed/etcd.py)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.etcd import EtcdTls, PrivateEtcd, etcd_available
from zincati_py.fleetlock.client import FleetLockAdminClient, FleetLockClient, FleetLockError
from zincati_py.fleetlock.config import load
from zincati_py.fleetlock.server import FleetLockServer


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> EtcdTls:
    # Extensions as strict verifiers (Python 3.13's VERIFY_X509_STRICT) want them.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))  # fmt: skip
    common = "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\nbasicConstraints=CA:FALSE\n"
    for name, ext in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ]:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        extfile = d / f"{name}.ext"
        extfile.write_text(common + ext + "\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(extfile), "-out", str(d / f"{name}.crt"))  # fmt: skip
    return EtcdTls(
        ca=d / "ca.crt",
        cert=d / "server.crt",
        key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
    )


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[PrivateEtcd]:
    if not etcd_available():
        pytest.skip("needs etcd (Debian package etcd-server)")
    pki = tmp_path / "pki"
    pki.mkdir()
    with PrivateEtcd(tls=make_pki(pki)) as server:
        yield server


def test_etcd_backend_over_tls(tls_etcd: PrivateEtcd, tmp_path: Path) -> None:
    assert tls_etcd.tls is not None and tls_etcd.url.startswith("https://")
    tls = tls_etcd.tls

    async def scenario(config: Path) -> tuple[int | None, ...]:
        server = FleetLockServer(load(config))
        url = f"http://{(await server.start())[0]}/"
        try:
            async with httpx.AsyncClient() as s:
                a = FleetLockClient(url, "a", "default", session=s)
                b = FleetLockClient(url, "b", "default", session=s)
                admin = FleetLockAdminClient(url, session=s)
                try:
                    await a.pre_reboot()
                except FleetLockError as err:
                    return (err.status,)
                with pytest.raises(FleetLockError) as exc:
                    await b.pre_reboot()
                holders = [h["id"] for h in (await admin.group("default"))["holders"]]
                assert holders == ["a"]
                await a.steady_state()
                await b.pre_reboot()
                return (200, exc.value.status)
        finally:
            await server.stop()

    good = tmp_path / "good.toml"
    good.write_text(
        f'listen = "127.0.0.1:0"\nbackend = "etcd:{tls_etcd.url}"\n[groups]\ndefault = 1\n'
        f'[etcd]\nca_file = "{tls.ca}"\ncert_file = "{tls.client_cert}"\n'
        f'key_file = "{tls.client_key}"\n'
    )
    assert asyncio.run(asyncio.wait_for(scenario(good), 60)) == (200, 409)

    # Without a client certificate etcd refuses the connection: 503, never a grant.
    no_cert = tmp_path / "no-cert.toml"
    no_cert.write_text(
        f'listen = "127.0.0.1:0"\nbackend = "etcd:{tls_etcd.url}"\n[etcd]\nca_file = "{tls.ca}"\n'
    )
    assert asyncio.run(asyncio.wait_for(scenario(no_cert), 60)) == (503,)
