"""Shared wire helpers (``zincati_py.fleetlock.protocol``) used by both client and server."""

from __future__ import annotations

import pytest

from zincati_py.fleetlock.protocol import (
    ClientParams,
    Kind,
    ProtocolError,
    kind_for_status,
    parse_error_body,
    parse_lease_seconds,
)


def test_client_params_round_trip() -> None:
    params = ClientParams(id="3f1c", group="workers.eu-1")
    assert ClientParams.from_body(params.to_body()) == params


def test_client_params_ignore_extra_keys() -> None:
    raw = b'{"client_params": {"id": "a", "group": "g", "extra": 1}, "more": true}'
    assert ClientParams.from_body(raw) == ClientParams("a", "g")


@pytest.mark.parametrize(
    ("raw", "lease"),
    [
        (b'{"lease_seconds": 1800}', 1800),
        (b'{"lease_seconds": 0}', 0),
        (b"{}", None),
        (b'{"lease_seconds": -5}', None),
        (b'{"lease_seconds": "60"}', None),
        (b'{"lease_seconds": true}', None),
        (b'{"lease_seconds": 1.5}', None),
        (b"[60]", None),
        (b"OK", None),
        (b"", None),
    ],
)
def test_parse_lease_seconds(raw: bytes, lease: int | None) -> None:
    assert parse_lease_seconds(raw) == lease


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        (409, b'{"kind": "group_full", "value": "all 1 slots"}', ("group_full", "all 1 slots")),
        (500, b'{"kind": "failed_lock", "value": "etcd"}', ("failed_lock", "etcd")),
        (404, b"404: Not Found", (Kind.NOT_FOUND, "404: Not Found")),
        (503, b"", (Kind.BACKEND_UNAVAILABLE, "HTTP 503")),
        (418, b"teapot", ("http_418", "teapot")),
        (400, b'{"value": "no kind"}', ("http_400", '{"value": "no kind"}')),
    ],
)
def test_parse_error_body(status: int, raw: bytes, expected: tuple[str, str]) -> None:
    assert parse_error_body(status, raw) == expected


def test_every_server_kind_maps_back_from_its_status() -> None:
    # A client seeing only a status reports the kind the server would have sent (where the
    # status is unambiguous).
    for status in (401, 403, 405, 409, 413, 500, 503):
        kind = kind_for_status(status)
        assert ProtocolError(kind, "").status == status
