"""A private single-member etcd on 127.0.0.1 (random free ports, temp data dir), for tests,
benchmarks and demos. Torn down by PID; the data dir is removed on ``stop()``."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from testbed.proc import Harness, stop_process, wait_ready


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class EtcdTls:
    """Serve clients over TLS with ``cert``/``key`` and require client certificates signed
    by ``ca``; ``client_cert``/``client_key`` are what the health check presents."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


class PrivateEtcd(Harness):
    """Start with ``start()`` (or use as a context manager); ``url`` is the client URL."""

    def __init__(self, directory: Path | None = None, tls: EtcdTls | None = None) -> None:
        self.tls = tls
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="zpy-etcd-"))
        self.client_port = 0
        self.peer_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0, attempts: int = 3) -> PrivateEtcd:
        # A port picked free can be taken before etcd binds it: retry with fresh ports.
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> PrivateEtcd:
        self.client_port, self.peer_port = free_port(), free_port()
        data = self.directory / "data"
        shutil.rmtree(data, ignore_errors=True)
        log = (self.directory / "etcd.log").open("wb")
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = subprocess.Popen(
            [
                "etcd",
                "--name=zpy",
                f"--data-dir={data}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=zpy={peer}",
                "--log-level=error",
                "--logger=zap",
                *self._tls_args(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_ready(
                self.process,
                self._healthy,
                what=f"etcd on {self.url}",
                timeout=timeout,
                log=self.directory / "etcd.log",
            )
        except TimeoutError:
            self.stop()
            raise
        except RuntimeError:  # exited (a port taken meanwhile): start() retries
            self.process = None
            raise
        return self

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.cert}",
            f"--key-file={self.tls.key}",
            f"--trusted-ca-file={self.tls.ca}",
            "--client-cert-auth",
        ]

    def _healthy(self) -> bool:
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1, context=context) as resp:
                return b'"true"' in resp.read()
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
        if self._own_dir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.directory)


def etcd_available() -> bool:
    return shutil.which("etcd") is not None
