"""FleetLock wire types shared by the client and the server.

The protocol (coreos/zincati docs/development/fleetlock/protocol.md): ``POST v1/pre-reboot``
takes a reboot slot, ``POST v1/steady-state`` releases it, both with the header
``fleet-lock-protocol: true`` and the body ``{"client_params": {"id": ..., "group": ...}}``.
Any 2xx is success; errors carry ``{"kind": ..., "value": ...}``.

Our extensions, all optional, ignored by other implementations, absent from Zincati's requests
(which are answered exactly as before):

- a ``pre-reboot`` success body carries ``{"lease_seconds": N}``, the seconds from now until
  the slot is taken back unless the holder renews (re-sends ``pre-reboot``) or releases it;
- request header ``fleet-lock-wait: SECONDS``: the client can wait; a full group answers when
  the client reaches the head of the queue and a slot is free, or refuses at the deadline
  (``group_full`` with ``position`` and ``queue_length``);
- ``client_params`` may carry ``from_version``/``to_version`` (``pre-reboot``) and
  ``booted_version``/``health`` ("healthy" or "failed", ``steady-state``): the rollout
  circuit breaker's inputs;
- ``steady-state`` answers the header ``fleet-lock-released: true|false``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

HEADER: Final = "fleet-lock-protocol"
# Our server's answer to steady-state says whether a slot was released ("true"/"false"), in a
# header so that the body stays exactly what Zincati and airlock expect.
RELEASED_HEADER: Final = "fleet-lock-released"
WAIT_HEADER: Final = "fleet-lock-wait"
HISTORY: Final = "v1/history"
ROLLOUTS: Final = "v1/rollouts"
ADMIN_GROUP: Final = "v1/admin/group"
HEALTH_VALUES: Final = ("healthy", "failed")
PRE_REBOOT: Final = "v1/pre-reboot"
STEADY_STATE: Final = "v1/steady-state"
GROUPS: Final = "v1/groups"
ADMIN_RELEASE: Final = "v1/admin/release"

# Always used with fullmatch: with match, "$" also matches before a trailing newline.
GROUP_RE: Final = re.compile(r"[a-zA-Z0-9.-]+")
GROUP_PATTERN: Final = "^[a-zA-Z0-9.-]+$"
MAX_ID_LENGTH: Final = 256


class Kind:
    """Error kinds the server sends, with the HTTP status each goes with."""

    INVALID_HEADER: Final = "invalid_header"
    INVALID_BODY: Final = "invalid_body"
    UNAUTHORIZED: Final = "unauthorized"
    FORBIDDEN: Final = "forbidden"
    UNKNOWN_GROUP: Final = "unknown_group"
    NOT_FOUND: Final = "not_found"
    METHOD_NOT_ALLOWED: Final = "method_not_allowed"
    GROUP_FULL: Final = "group_full"
    BODY_TOO_LARGE: Final = "body_too_large"
    INTERNAL: Final = "internal_error"
    BACKEND_UNAVAILABLE: Final = "backend_unavailable"
    REQUEST_TIMEOUT: Final = "request_timeout"
    GROUP_PAUSED: Final = "group_paused"
    ROLLOUT_HALTED: Final = "rollout_halted"
    VERSION_HELD: Final = "version_held"
    # Client side only: no HTTP answer at all (connection refused, timeout, TLS failure).
    TRANSPORT: Final = "transport"


STATUS: Final[dict[str, int]] = {
    Kind.INVALID_HEADER: 400,
    Kind.INVALID_BODY: 400,
    Kind.UNAUTHORIZED: 401,
    Kind.FORBIDDEN: 403,
    Kind.UNKNOWN_GROUP: 404,
    Kind.NOT_FOUND: 404,
    Kind.METHOD_NOT_ALLOWED: 405,
    Kind.GROUP_FULL: 409,
    Kind.BODY_TOO_LARGE: 413,
    Kind.INTERNAL: 500,
    Kind.BACKEND_UNAVAILABLE: 503,
    Kind.REQUEST_TIMEOUT: 408,
    Kind.GROUP_PAUSED: 409,
    Kind.ROLLOUT_HALTED: 409,
    Kind.VERSION_HELD: 409,
}


class ProtocolError(Exception):
    """A request the server refuses: ``kind`` and ``value`` go into the error body."""

    def __init__(self, kind: str, value: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"{kind}: {value}")
        self.kind = kind
        self.value = value
        # More keys for the error body (only for clients that use our extensions).
        self.extra = extra or {}

    @property
    def status(self) -> int:
        return STATUS.get(self.kind, 500)


_INVALID: Final = object()


def loads(raw: bytes | str) -> Any:
    """``json.loads``, or ``_INVALID`` for anything that is not JSON, including input nested
    too deeply for the parser (``[[[[...`` raises RecursionError, not ValueError)."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _INVALID


_OPTIONAL = ("from_version", "to_version", "booted_version", "health", "failed_version")


@dataclass(frozen=True)
class ClientParams:
    id: str
    group: str
    from_version: str | None = None
    to_version: str | None = None
    booted_version: str | None = None
    health: str | None = None
    failed_version: str | None = None

    def to_body(self) -> bytes:
        params = {"id": self.id, "group": self.group}
        params.update({k: v for k in _OPTIONAL if (v := getattr(self, k)) is not None})
        return json.dumps({"client_params": params}).encode()

    @classmethod
    def from_body(cls, raw: bytes) -> ClientParams:
        """Parse a request body whatever its Content-Type (Zincati sends none)."""
        doc = loads(raw)
        if doc is _INVALID:
            raise ProtocolError(Kind.INVALID_BODY, "body is not JSON (or nested too deeply)")
        params = doc.get("client_params") if isinstance(doc, dict) else None
        if not isinstance(params, dict):
            raise ProtocolError(Kind.INVALID_BODY, "missing object 'client_params'")
        node_id = params.get("id")
        group = params.get("group")
        if not isinstance(node_id, str) or not node_id:
            raise ProtocolError(Kind.INVALID_BODY, "'client_params.id' must be a non-empty string")
        if len(node_id) > MAX_ID_LENGTH or not node_id.isprintable():
            raise ProtocolError(
                Kind.INVALID_BODY,
                f"'client_params.id' must be printable and at most {MAX_ID_LENGTH} characters",
            )
        if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
            raise ProtocolError(
                Kind.INVALID_BODY, f"'client_params.group' must match {GROUP_PATTERN}"
            )
        extra: dict[str, str] = {}
        for key in _OPTIONAL:
            value = params.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
                raise ProtocolError(
                    Kind.INVALID_BODY, f"'client_params.{key}' must be a non-empty string"
                )
            if not value.isprintable():
                raise ProtocolError(Kind.INVALID_BODY, f"'client_params.{key}' is not printable")
            extra[key] = value
        if extra.get("health") not in (None, *HEALTH_VALUES):
            raise ProtocolError(
                Kind.INVALID_BODY, "'client_params.health' must be 'healthy' or 'failed'"
            )
        return cls(id=node_id, group=group, **extra)


def error_body(kind: str, value: str, extra: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"kind": kind, "value": value, **(extra or {})}).encode()


_FALLBACK_KINDS: Final[dict[int, str]] = {
    401: Kind.UNAUTHORIZED,
    403: Kind.FORBIDDEN,
    404: Kind.NOT_FOUND,
    405: Kind.METHOD_NOT_ALLOWED,
    409: Kind.GROUP_FULL,
    413: Kind.BODY_TOO_LARGE,
    423: Kind.GROUP_FULL,
    500: Kind.INTERNAL,
    503: Kind.BACKEND_UNAVAILABLE,
}


def kind_for_status(status: int) -> str:
    """The kind a client reports when an error response has no usable ``{kind, value}``."""
    return _FALLBACK_KINDS.get(status, f"http_{status}")


def parse_error_body(status: int, raw: bytes) -> tuple[str, str]:
    """``(kind, value)`` of an error response, falling back to the status when the body isn't
    the protocol's JSON (a proxy's HTML page, an empty body)."""
    doc = loads(raw)
    if isinstance(doc, dict) and isinstance(doc.get("kind"), str):
        value = doc.get("value")
        return doc["kind"], value if isinstance(value, str) else json.dumps(value)
    text = raw.decode("utf-8", "replace").strip()
    return kind_for_status(status), text[:200] or f"HTTP {status}"


def parse_lease_seconds(raw: bytes) -> int | None:
    """``lease_seconds`` from a ``pre-reboot`` success body, if it carries a usable one."""
    doc = loads(raw)
    value = doc.get("lease_seconds") if isinstance(doc, dict) else None
    # bool is an int subclass; a JSON true is not a lease.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
