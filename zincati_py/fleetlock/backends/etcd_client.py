"""The etcd backend's connection: aetcd clients (plaintext or TLS) for the endpoints listed
in the backend URL, one call at a time on the current one, failing over to the next.

Transactions, the backend's hot path, go straight to the client's generated gRPC stub with
a request the backend built (:meth:`Endpoints.txn`): aetcd's ``transaction`` rebuilds every
operation from its own wrappers and wraps every key read in the response, which cost more
per request than the rest of the backend's work. Errors are mapped by aetcd's own mapping,
so failover and "outcome unknown" are decided exactly as for aetcd's methods."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import grpc  # type: ignore[import-untyped]

from zincati_py.fleetlock.backends import BackendUnavailable

RPC_TIMEOUT = 5

_UNAVAILABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
)


def _mapped(error: grpc.aio.AioRpcError) -> Exception:
    """The aetcd exception aetcd's methods raise for ``error``."""
    try:
        aetcd.exceptions._handle_exception(error)
    except Exception as mapped:  # it always raises: that is its answer
        return mapped
    return RuntimeError(f"aetcd did not map {error!r}")


class _TlsClient(aetcd.Client):  # type: ignore[misc]
    """aetcd 1.0 opens only plaintext channels; this opens a TLS one, the rest is aetcd's."""

    def __init__(self, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        self.channel = aetcd.rpc.secure_channel(
            target, self._credentials, options=self._options.items()
        )
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self._connected.set()


def _read_bytes(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class Endpoints:
    """``urls``: comma-separated ``http(s)://HOST:PORT``; TLS files as configured."""

    def __init__(
        self,
        urls: str,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self._endpoints: list[tuple[str, int, bool]] = []
        for url in urls.split(","):
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an etcd URL: {url!r}")
            self._endpoints.append((parts.hostname, parts.port or 2379, parts.scheme == "https"))
        self._credentials: grpc.ChannelCredentials | None = None
        if ca_file or cert_file or any(tls for _, _, tls in self._endpoints):
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_bytes(ca_file),
                private_key=_read_bytes(key_file),
                certificate_chain=_read_bytes(cert_file),
            )
        self._clients: dict[int, Any] = {}
        self._current = 0
        # Round trips to etcd (calls, failovers included), for tests and diagnostics.
        self.calls = 0

    def _client(self, index: int) -> Any:
        client = self._clients.get(index)
        if client is None:
            host, port, tls = self._endpoints[index]
            if tls or self._credentials is not None:
                assert self._credentials is not None
                client = _TlsClient(self._credentials, host=host, port=port, timeout=RPC_TIMEOUT)
            else:
                client = aetcd.Client(host=host, port=port, timeout=RPC_TIMEOUT)
            self._clients[index] = client
        return client

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call an aetcd method on the current endpoint, failing over to the next ones."""
        return await self._failover(lambda client: getattr(client, method)(*args, **kwargs))

    async def txn(self, request: Any) -> Any:
        """One ``TxnRequest`` (``aetcd.rpc``) on the current endpoint, failing over to the
        next ones, as :meth:`call`; the ``TxnResponse`` as etcd sent it."""

        async def send(client: Any) -> Any:
            await client.connect()
            return await client.kvstub.Txn(request, timeout=RPC_TIMEOUT, metadata=client.metadata)

        return await self._failover(send)

    async def _failover(self, attempt: Callable[[Any], Awaitable[Any]]) -> Any:
        """``attempt(client)`` on the current endpoint, then the next ones while an endpoint
        is unavailable; any other error is etcd's answer (no failover)."""
        last: Exception | None = None
        for step in range(len(self._endpoints)):
            index = (self._current + step) % len(self._endpoints)
            self.calls += 1
            try:
                try:
                    result = await attempt(self._client(index))
                except grpc.aio.AioRpcError as error:  # the stub's own, mapped as aetcd does
                    mapped = _mapped(error)
                    if isinstance(mapped, aetcd.exceptions.ClientError):
                        raise mapped from error
                    raise BackendUnavailable(f"etcd: {mapped}") from error
            except _UNAVAILABLE as exc:
                last = exc
                continue
            except aetcd.exceptions.ClientError as exc:
                raise BackendUnavailable(f"etcd: {exc}") from exc
            self._current = index
            return result
        raise BackendUnavailable(f"etcd unreachable: {last}")

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
