"""The server config file: every key read, relative paths resolved, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from zincati_py.fleetlock.config import ConfigError, GroupSettings, Listen, load


def test_full_config(tmp_path: Path) -> None:
    for name in ("srv.crt", "srv.key", "ca.crt", "cl.crt", "cl.key"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "fleetlock.toml"
    path.write_text(
        """
listen = ["127.0.0.1:8080", "[::1]:9090", "unix:/run/zpy/fleetlock.sock"]
prefix = "/fleet/"
backend = "etcd:http://10.0.0.1:2379,https://etcd.example:2379"
default_slots = 3
lease_seconds = 600
unknown_groups = "reject"

[groups]
default = 2
workers = { slots = 10, lease_seconds = 900 }
canary = { lease_seconds = 60 }

[tls]
cert_file = "srv.crt"
key_file = "srv.key"

[etcd]
ca_file = "ca.crt"
cert_file = "cl.crt"
key_file = "cl.key"
key_prefix = "/mine/"

[auth]
admin_token = "adm"
shared_token = "shared"
[auth.nodes]
"node-1" = "t1"
"""
    )
    cfg = load(path)
    assert cfg.listen == (
        Listen("127.0.0.1", 8080),
        Listen("::1", 9090),
        Listen(path=Path("/run/zpy/fleetlock.sock")),
    )
    assert [str(listen) for listen in cfg.listen] == [
        "127.0.0.1:8080",
        "[::1]:9090",
        "unix:/run/zpy/fleetlock.sock",
    ]
    assert cfg.prefix == "/fleet"
    assert cfg.groups == {
        "default": GroupSettings(2, 600),
        "workers": GroupSettings(10, 900),
        "canary": GroupSettings(3, 60),
    }
    assert cfg.group("other") is None
    assert cfg.tls_cert_file == tmp_path / "srv.crt"
    assert cfg.backend_options() == {
        "ca_file": str(tmp_path / "ca.crt"),
        "cert_file": str(tmp_path / "cl.crt"),
        "key_file": str(tmp_path / "cl.key"),
        "key_prefix": "/mine/",
    }
    assert cfg.node_auth and cfg.node_tokens == {"node-1": "t1"}


def test_defaults_and_relative_sqlite_path(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('backend = "sqlite:state/fl.db"\n')
    cfg = load(path)
    assert cfg.backend == f"sqlite:{tmp_path / 'state/fl.db'}"
    assert cfg.listen == (Listen("127.0.0.1", 8080),)
    assert cfg.lease_seconds == 1800 and cfg.default_slots == 1
    assert cfg.unknown_groups == "create"
    assert cfg.group("anything") == GroupSettings(1, 1800)
    assert not cfg.node_auth and cfg.backend_options() == {}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('prefix = "fleet"\n', "prefix"),
        ('backend = "sqlite:"\n', "backend"),
        ('backend = "etcd:10.0.0.1:2379"\n', "backend"),
        ("listen = []\n", "listen"),
        ('listen = "unix:relative.sock"\n', "listen"),
        ('listen = "127.0.0.1:99999"\n', "listen"),
        ("default_slots = true\n", "default_slots"),
        ('[groups]\n"bad name" = 1\n', "groups.bad name"),
        ("[groups]\ng = { slots = 0 }\n", "groups.g.slots"),
        ('[tls]\ncert_file = "x"\n', "tls.cert_file"),
        ("tls = 1\n", "tls"),
        ("[etcd]\nfoo = 1\n", "etcd.foo"),
        ('[etcd]\nkey_prefix = ""\n', "etcd.key_prefix"),
        ("[auth.nodes]\nn = 1\n", "auth.nodes.n"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert exc.value.key == key
    assert str(exc.value).startswith(f"{path}: {key}: ")
