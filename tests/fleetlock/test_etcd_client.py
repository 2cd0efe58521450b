"""The etcd backend's connection (:mod:`zincati_py.fleetlock.backends.etcd_client`): a
transaction etcd refuses is an error of this request, not of the endpoint (no failover); an
endpoint that does not answer is skipped."""

from __future__ import annotations

import asyncio

import pytest
from aetcd import rpc

from testbed.etcd import PrivateEtcd, free_port
from zincati_py.fleetlock.backends import BackendUnavailable
from zincati_py.fleetlock.backends.etcd_client import Endpoints


def _put(key: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"v"))


def test_a_refused_transaction_is_not_retried_on_the_next_endpoint(etcd: PrivateEtcd) -> None:
    async def scenario() -> tuple[str, int]:
        endpoints = Endpoints(f"{etcd.url},{etcd.url}")
        try:
            # etcd refuses a transaction writing one key twice (InvalidArgument).
            twice = rpc.TxnRequest(success=[_put(b"/client-twice"), _put(b"/client-twice")])
            with pytest.raises(BackendUnavailable) as refused:
                await endpoints.txn(twice)
            return str(refused.value), endpoints.calls
        finally:
            await endpoints.close()

    message, calls = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert message.startswith("etcd: ") and "duplicate key" in message, message
    assert calls == 1


def test_a_transaction_fails_over_past_a_dead_endpoint_and_stays_there(
    etcd: PrivateEtcd,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> tuple[bool, int, int]:
        endpoints = Endpoints(f"{dead},{etcd.url}")
        try:
            request = rpc.TxnRequest(success=[_put(b"/client-failover")])
            first = await endpoints.txn(request)
            after_first = endpoints.calls
            await endpoints.txn(request)
            return bool(first.succeeded), after_first, endpoints.calls - after_first
        finally:
            await endpoints.close()

    succeeded, first, second = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert succeeded
    assert first == 2  # the dead endpoint, then the live one
    assert second == 1  # straight to the live one
