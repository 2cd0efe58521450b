"""The FleetLock server's TOML config, validated into :class:`ServerSettings`.

Example::

    listen = ["127.0.0.1:8080", "unix:/run/zincati-py/fleetlock.sock"]
    prefix = ""                      # HTTP path prefix, e.g. "/fleetlock"
    backend = "sqlite:/var/lib/zincati-py-fleetlock/locks.db"   # or "etcd:http://h1:2379,http://h2:2379"
    default_slots = 1
    lease_seconds = 1800             # 0: leases never expire
    unknown_groups = "create"        # or "reject"

    cooldown_secs = 0                # a freed slot is granted again only after this
    max_failures = 0                 # halt a target version after this many failures (0: off)

    [groups]
    default = 2
    workers = { slots = 10, lease_seconds = 900, cooldown_secs = 60, paused = false,
                max_failures = 3 }

    [queue]                          # the fair queue of a full group
    grace_secs = 30                  # a freed slot is held this long for the queue's head
    expiry_secs = 900                # a queued node that stops asking leaves the queue
    max_wait_secs = 60               # longest long-poll (request header fleet-lock-wait)

    [tls]                            # serve HTTPS
    cert_file = "server.crt"
    key_file = "server.key"

    [etcd]                           # client TLS to etcd, key namespace
    ca_file = "ca.crt"
    cert_file = "client.crt"
    key_file = "client.key"
    key_prefix = "/zincati-py/fleetlock/"

    [limits]                         # slow or too many clients
    connections_per_listener = 4096  # lowered to fit the open-file limit at start
    header_timeout_secs = 10         # a connection must send a request's headers in time
    body_timeout_secs = 10           # and its body
    backend_timeout_secs = 10        # a store answer later than this is a 503

    [auth]                           # optional bearer tokens; any token => admin_token needed
    admin_token_file = "admin.token" # admin endpoints (and any node)
    shared_token_credential = "fleetlock-shared"   # lock/unlock for any node id
    [auth.nodes]
    "node-id" = { file = "/etc/zincati-py/fleetlock.d/node-id.token" }  # this node id only

Each token is ``NAME = "inline"`` (discouraged: the config file then holds a secret),
``NAME_file = "PATH"`` (first line of the file) or ``NAME_credential = "CRED"`` (a systemd
credential, ``$CREDENTIALS_DIRECTORY/CRED``, from ``LoadCredential=`` in the unit); a node's
token is a string or ``{ file = ... }`` / ``{ credential = ... }``. Files readable by other
users are reported as warnings at start.

Relative file paths are relative to the config file's directory.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zincati_py.fleetlock.protocol import GROUP_PATTERN, GROUP_RE
from zincati_py.fleetlock.secrets import TokenReader, readable_by_others

DEFAULT_LEASE_SECONDS = 1800
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_BACKEND = "sqlite:/var/lib/zincati-py-fleetlock/locks.db"
DEFAULT_ETCD_KEY_PREFIX = "/zincati-py/fleetlock/"
TOKEN_KEYS = ("admin_token", "shared_token")


class ConfigError(Exception):
    def __init__(self, path: Path, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}: {message}")
        self.path = path
        self.key = key


@dataclass(frozen=True)
class GroupSettings:
    slots: int
    lease_seconds: int
    cooldown_secs: float = 0.0
    paused: bool = False
    max_failures: int = 0


@dataclass(frozen=True)
class QueueSettings:
    grace_secs: float = 30.0
    expiry_secs: float = 900.0
    max_wait_secs: float = 60.0


@dataclass(frozen=True)
class Listen:
    """A TCP ``host``/``port`` or a Unix socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return (
            f"[{self.host}]:{self.port}"
            if self.host and ":" in self.host
            else f"{self.host}:{self.port}"
        )


@dataclass(frozen=True)
class Limits:
    connections_per_listener: int = 4096
    header_timeout_secs: float = 10.0
    body_timeout_secs: float = 10.0
    backend_timeout_secs: float = 10.0


@dataclass(frozen=True)
class ServerSettings:
    path: Path
    listen: tuple[Listen, ...] = (Listen("127.0.0.1", 8080),)
    prefix: str = ""
    backend: str = DEFAULT_BACKEND
    default_slots: int = 1
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    groups: dict[str, GroupSettings] = field(default_factory=dict)
    unknown_groups: str = "create"
    cooldown_secs: float = 0.0
    max_failures: int = 0
    queue: QueueSettings = field(default_factory=QueueSettings)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    etcd_ca_file: Path | None = None
    etcd_cert_file: Path | None = None
    etcd_key_file: Path | None = None
    etcd_key_prefix: str = DEFAULT_ETCD_KEY_PREFIX
    admin_token: str | None = field(default=None, repr=False)
    shared_token: str | None = field(default=None, repr=False)
    node_tokens: dict[str, str] = field(default_factory=dict, repr=False)
    limits: Limits = field(default_factory=Limits)
    # Problems that don't stop the server (logged at start): token files others can read.
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # Tokens never appear in a repr (and so in no log line or traceback).
        return f"ServerSettings(path={self.path!r}, backend={self.backend!r}, auth={self.auth})"

    @property
    def auth(self) -> bool:
        """Whether any token is configured (then every admin endpoint needs the admin token)."""
        return self.admin_token is not None or self.node_auth

    def group(self, name: str) -> GroupSettings | None:
        """The group's settings, or None if it is unknown and unknown groups are rejected."""
        found = self.groups.get(name)
        if found is not None:
            return found
        if self.unknown_groups == "create":
            return GroupSettings(
                self.default_slots, self.lease_seconds, self.cooldown_secs, False, self.max_failures
            )
        return None

    @property
    def node_auth(self) -> bool:
        """Whether lock/unlock requests need a bearer token."""
        return self.shared_token is not None or bool(self.node_tokens)

    def backend_options(self) -> dict[str, str | None]:
        if not self.backend.startswith("etcd:"):
            return {}
        return {
            "ca_file": str(self.etcd_ca_file) if self.etcd_ca_file else None,
            "cert_file": str(self.etcd_cert_file) if self.etcd_cert_file else None,
            "key_file": str(self.etcd_key_file) if self.etcd_key_file else None,
            "key_prefix": self.etcd_key_prefix,
        }


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, key, message)

    def table(self, doc: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        for k in value:
            if k not in allowed:
                raise self.fail(f"{key}.{k}", "unknown key")
        return value

    def int_(self, doc: dict[str, Any], key: str, name: str, default: int, minimum: int) -> int:
        value = doc.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(name, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.fail(name, f"must be >= {minimum}, got {value}")
        return value

    def str_(self, doc: dict[str, Any], key: str, name: str) -> str | None:
        value = doc.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.fail(name, "must be a non-empty string")
        return value

    def file(self, doc: dict[str, Any], key: str, name: str) -> Path | None:
        value = self.str_(doc, key, name)
        if value is None:
            return None
        path = self.path.parent / value
        if not path.is_file():
            raise self.fail(name, f"no such file: {path}")
        return path

    def seconds(
        self,
        doc: dict[str, Any],
        key: str,
        table: str = "limits",
        default: float = 10,
        low: float = 0.1,
        high: float = 3600,
    ) -> float:
        name = f"{table}.{key}" if table else key
        value = doc.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(name, f"must be a number of seconds, got {value!r}")
        if not low <= value <= high:
            raise self.fail(name, f"must be between {low:g} and {high:g} seconds, got {value}")
        return float(value)

    def bool_(self, doc: dict[str, Any], key: str, name: str) -> bool:
        value = doc.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value

    def listen(self, value: object) -> tuple[Listen, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.fail("listen", "must be an address or a non-empty list of addresses")
        out = []
        for item in items:
            if not isinstance(item, str):
                raise self.fail("listen", f"not an address: {item!r}")
            if item.startswith("unix:"):
                sock = item[len("unix:") :]
                if not sock.startswith("/"):
                    raise self.fail("listen", f"{item!r}: the socket path must be absolute")
                out.append(Listen(path=Path(sock)))
                continue
            host, sep, port = item.rpartition(":")
            host = host.removeprefix("[").removesuffix("]")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise self.fail(
                    "listen", f"{item!r}: expected 'HOST:PORT', '[V6ADDR]:PORT' or 'unix:/PATH'"
                )
            out.append(Listen(host=host, port=int(port)))
        return tuple(out)


_TOP = {
    "listen",
    "prefix",
    "backend",
    "default_slots",
    "lease_seconds",
    "groups",
    "unknown_groups",
    "tls",
    "etcd",
    "auth",
    "limits",
    "cooldown_secs",
    "max_failures",
    "queue",
}


def load(path: Path) -> ServerSettings:
    """Read and validate ``path``; raises :class:`ConfigError` naming the file and key."""
    r = _Reader(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(path, "(file)", exc.strerror or str(exc)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "(syntax)", str(exc)) from None
    for key in doc:
        if key not in _TOP:
            raise r.fail(key, "unknown key")

    prefix = doc.get("prefix", "")
    if not isinstance(prefix, str) or (prefix and not prefix.startswith("/")):
        raise r.fail("prefix", "must be empty or a path starting with '/'")
    prefix = prefix.rstrip("/")

    backend = doc.get("backend", DEFAULT_BACKEND)
    if not isinstance(backend, str):
        raise r.fail("backend", "must be a string")
    scheme, _, rest = backend.partition(":")
    if scheme == "sqlite":
        if not rest:
            raise r.fail("backend", "expected 'sqlite:PATH'")
        backend = f"sqlite:{path.parent / rest}"
    elif scheme == "etcd":
        urls = rest.split(",")
        if not rest or not all(u.startswith(("http://", "https://")) for u in urls):
            raise r.fail("backend", "expected 'etcd:http://HOST:PORT,...' (http or https URLs)")
    else:
        raise r.fail("backend", f"unknown backend {scheme!r}: use 'sqlite:PATH' or 'etcd:URL,...'")

    default_slots = r.int_(doc, "default_slots", "default_slots", 1, 1)
    lease = r.int_(doc, "lease_seconds", "lease_seconds", DEFAULT_LEASE_SECONDS, 0)
    cooldown = r.seconds(doc, "cooldown_secs", "", 0, 0, 86400)
    max_failures = r.int_(doc, "max_failures", "max_failures", 0, 0)
    queue_doc = r.table(doc, "queue", {"grace_secs", "expiry_secs", "max_wait_secs"})
    queue = QueueSettings(
        grace_secs=r.seconds(queue_doc, "grace_secs", "queue", 30, 0, 86400),
        expiry_secs=r.seconds(queue_doc, "expiry_secs", "queue", 900, 1, 7 * 86400),
        max_wait_secs=r.seconds(queue_doc, "max_wait_secs", "queue", 60, 0, 600),
    )

    unknown = doc.get("unknown_groups", "create")
    if unknown not in ("reject", "create"):
        raise r.fail("unknown_groups", f"must be 'reject' or 'create', got {unknown!r}")

    groups: dict[str, GroupSettings] = {}
    raw_groups = doc.get("groups", {})
    if not isinstance(raw_groups, dict):
        raise r.fail("groups", "must be a table")
    for name, value in raw_groups.items():
        key = f"groups.{name}"
        if not GROUP_RE.fullmatch(name):
            raise r.fail(key, f"group names must match {GROUP_PATTERN}")
        if isinstance(value, dict):
            for k in value:
                if k not in ("slots", "lease_seconds", "cooldown_secs", "paused", "max_failures"):
                    raise r.fail(f"{key}.{k}", "unknown key")
            groups[name] = GroupSettings(
                r.int_(value, "slots", f"{key}.slots", default_slots, 1),
                r.int_(value, "lease_seconds", f"{key}.lease_seconds", lease, 0),
                r.seconds(value, "cooldown_secs", key, cooldown, 0, 86400),
                r.bool_(value, "paused", f"{key}.paused"),
                r.int_(value, "max_failures", f"{key}.max_failures", max_failures, 0),
            )
        else:
            slots = r.int_(raw_groups, name, key, default_slots, 1)
            groups[name] = GroupSettings(slots, lease, cooldown, False, max_failures)

    tls = r.table(doc, "tls", {"cert_file", "key_file"})
    cert = r.file(tls, "cert_file", "tls.cert_file")
    key_file = r.file(tls, "key_file", "tls.key_file")
    if (cert is None) != (key_file is None):
        raise r.fail("tls", "set both cert_file and key_file, or neither")

    etcd = r.table(doc, "etcd", {"ca_file", "cert_file", "key_file", "key_prefix"})
    etcd_prefix = etcd.get("key_prefix", DEFAULT_ETCD_KEY_PREFIX)
    if not isinstance(etcd_prefix, str) or not etcd_prefix:
        raise r.fail("etcd.key_prefix", "must be a non-empty string")
    etcd_cert = r.file(etcd, "cert_file", "etcd.cert_file")
    etcd_key = r.file(etcd, "key_file", "etcd.key_file")
    if (etcd_cert is None) != (etcd_key is None):
        raise r.fail("etcd", "set both cert_file and key_file, or neither")

    auth_keys = {"nodes"} | {f"{k}{s}" for k in TOKEN_KEYS for s in ("", "_file", "_credential")}
    auth = r.table(doc, "auth", auth_keys)
    tokens = TokenReader(path, r.fail)
    admin = tokens.token(auth, "admin_token")
    shared = tokens.token(auth, "shared_token")
    nodes = tokens.node_tokens(auth.get("nodes", {}))
    warnings = tokens.warnings
    if (shared is not None or nodes) and admin is None:
        raise r.fail(
            "auth.admin_token",
            "required when shared_token or [auth.nodes] is set (otherwise anyone who can "
            "connect could force-release any slot): set admin_token_file or "
            "admin_token_credential",
        )
    if any(s.origin == "inline" for s in [admin, shared, *nodes.values()] if s is not None):
        mode = readable_by_others(path)
        if mode is not None:
            warnings.append(
                f"{path}: auth: holds inline tokens and other users can read it ({mode}); "
                "chmod 0640 it, or move the tokens to *_file or *_credential"
            )

    limits_doc = r.table(
        doc,
        "limits",
        {
            "connections_per_listener",
            "header_timeout_secs",
            "body_timeout_secs",
            "backend_timeout_secs",
        },
    )
    limits = Limits(
        connections_per_listener=r.int_(
            limits_doc, "connections_per_listener", "limits.connections_per_listener", 4096, 1
        ),
        header_timeout_secs=r.seconds(limits_doc, "header_timeout_secs"),
        body_timeout_secs=r.seconds(limits_doc, "body_timeout_secs"),
        backend_timeout_secs=r.seconds(limits_doc, "backend_timeout_secs"),
    )

    return ServerSettings(
        path=path,
        listen=r.listen(doc.get("listen", DEFAULT_LISTEN)),
        prefix=prefix,
        backend=backend,
        default_slots=default_slots,
        lease_seconds=lease,
        groups=groups,
        unknown_groups=unknown,
        tls_cert_file=cert,
        tls_key_file=key_file,
        etcd_ca_file=r.file(etcd, "ca_file", "etcd.ca_file"),
        etcd_cert_file=etcd_cert,
        etcd_key_file=etcd_key,
        etcd_key_prefix=etcd_prefix,
        admin_token=None if admin is None else admin.value,
        shared_token=None if shared is None else shared.value,
        node_tokens={node: secret.value for node, secret in nodes.items()},
        limits=limits,
        warnings=tuple(warnings),
        cooldown_secs=cooldown,
        max_failures=max_failures,
        queue=queue,
    )
