"""base_url templating, the v1/graph join and the query formats (fast tier)."""

from __future__ import annotations

import pytest

from zincati_py.cincinnati.errors import CincinnatiError
from zincati_py.cincinnati.request import (
    HEADERS,
    NodeIdentity,
    graph_url,
    is_templated,
    query,
    substitute,
)

VARS = {"basearch": "x86_64", "group": "canary", "platform": "qemu", "stream": "testing"}


def ident(**kw: object) -> NodeIdentity:
    base: dict[str, object] = {
        "basearch": "x86_64",
        "stream": "stable",
        "platform": "metal",
        "group": "default",
        "node_uuid": "E0F3745B108F471CBD4883C6FBED8CDD",
        "os_version": "40.20240101.3.0",
        "os_checksum": "a" * 64,
    }
    base.update(kw)
    return NodeIdentity(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "templated"),
    [
        ("https://h/${stream}", True),
        ("https://h/}${stream}", False),  # a '}' before the first '${'
        ("https://h/$stream", False),
        ("https://h/${stream", False),
        ("https://h/", False),
        ("${x}", True),
    ],
)
def test_is_templated(text: str, templated: bool) -> None:
    assert is_templated(text) is templated


@pytest.mark.parametrize(
    ("base", "url"),
    [
        (
            "https://updates.coreos.fedoraproject.org",
            "https://updates.coreos.fedoraproject.org/v1/graph",
        ),
        ("https://h/", "https://h/v1/graph"),
        # RFC 3986: without a trailing slash the last segment is replaced.
        ("https://h/a/b", "https://h/a/v1/graph"),
        ("https://h/a/b/", "https://h/a/b/v1/graph"),
        ("http://127.0.0.1:8080/x?q=1", "http://127.0.0.1:8080/v1/graph"),
        ("https://h/${stream}/${basearch}/", "https://h/testing/x86_64/v1/graph"),
        ("https://h/${group}-${platform}/", "https://h/canary-qemu/v1/graph"),
        # unknown variables stay verbatim
        ("https://h/${nope}/${stream}/", "https://h/${nope}/testing/v1/graph"),
        # not templated: nothing is substituted, '${stream}' stays
        ("https://h/}/${stream}/", "https://h/}/${stream}/v1/graph"),
    ],
)
def test_graph_url(base: str, url: str) -> None:
    assert graph_url(base, VARS) == url


@pytest.mark.parametrize("base", ["updates.example", "ftp://h/", "https://", "/v1/"])
def test_graph_url_refuses_non_http(base: str) -> None:
    with pytest.raises(CincinnatiError) as e:
        graph_url(base, VARS)
    assert e.value.kind == "client_builder"


def test_substitute_refuses_values_that_template() -> None:
    with pytest.raises(CincinnatiError):
        substitute("${stream}", {"stream": "${group}"})


def test_query_formats() -> None:
    q = query(ident(rollout_wariness=0.5))
    assert q == {
        "basearch": "x86_64",
        "os_version": "40.20240101.3.0",
        "group": "default",
        "node_uuid": "e0f3745b108f471cbd4883c6fbed8cdd",
        "platform": "metal",
        "stream": "stable",
        "os_checksum": "a" * 64,
        "rollout_wariness": "0.500000",
    }
    assert HEADERS == {"accept": "application/json"}


def test_query_wariness_only_when_configured_and_oci() -> None:
    q = query(ident(rollout_wariness=None))
    assert "rollout_wariness" not in q and "oci" not in q
    assert query(ident(rollout_wariness=1))["rollout_wariness"] == "1.000000"
    assert query(ident(rollout_wariness=0.0000004))["rollout_wariness"] == "0.000000"
    q = query(ident(oci=True, os_checksum="quay.io/fedora/fedora-coreos@sha256:" + "b" * 64))
    assert q["oci"] == "true"
    assert q["os_checksum"].startswith("quay.io/fedora/fedora-coreos@sha256:")


def test_query_uuid_with_dashes_is_normalised_and_bad_refused() -> None:
    assert query(ident(node_uuid="e0f3745b-108f-471c-bd48-83c6fbed8cdd"))["node_uuid"] == (
        "e0f3745b108f471cbd4883c6fbed8cdd"
    )
    with pytest.raises(CincinnatiError):
        query(ident(node_uuid="xyz"))


@pytest.mark.parametrize(
    "bad",
    ["e0f3745b108f471cbd4883c6fbed8cdd\n", "e0f3745b108f471cbd4883c6fbed8cdd0", " e0f3745b"],
)
def test_query_uuid_whole_string_only(bad: str) -> None:
    # A trailing newline passed re.match with '$' (review finding 13).
    with pytest.raises(CincinnatiError):
        query(ident(node_uuid=bad))
