"""Bearer-token checks of the lock server (tokens come from :mod:`.secrets` via the config).

Any token configured: lock/unlock need the shared token, the node's own token or the admin
token (another node's token is 403); admin endpoints need the admin token. No ``[auth]``:
open (the server warns at start). Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from zincati_py.fleetlock.config import ServerSettings
from zincati_py.fleetlock.protocol import Kind, ProtocolError


def bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def authorize_node(cfg: ServerSettings, request: web.Request, node_id: str) -> None:
    if not cfg.node_auth:
        return
    token = bearer(request)
    if same(token, cfg.admin_token) or same(token, cfg.shared_token):
        return
    if same(token, cfg.node_tokens.get(node_id)):
        return
    if token is not None and any(same(token, t) for t in cfg.node_tokens.values()):
        raise ProtocolError(Kind.FORBIDDEN, f"this token may not act for node {node_id!r}")
    raise ProtocolError(Kind.UNAUTHORIZED, "a valid bearer token is required")


def authorize_admin(cfg: ServerSettings, request: web.Request) -> None:
    if not cfg.auth:
        return  # no [auth] at all: open, as the start-up warning says
    token = bearer(request)
    if same(token, cfg.admin_token):
        return
    if token is None:
        raise ProtocolError(Kind.UNAUTHORIZED, "the admin bearer token is required")
    raise ProtocolError(Kind.FORBIDDEN, "this token is not the admin token")
