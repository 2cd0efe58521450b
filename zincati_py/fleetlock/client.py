"""Low-level async FleetLock client: one HTTP attempt per call, no retries.

Retries, backoff and lease renewal belong to the caller (the ``fleet_lock`` strategy).

Built on httpx, not aiohttp: this client lives in the long-running agent, where httpx costs
about 6 MiB less resident memory (``bench/agent_idle.py``); the agent never imports aiohttp
(only the lock server does). As with aiohttp before: certificates are verified against the
system trust store (``ssl.create_default_context()``, so ``SSL_CERT_FILE``/``SSL_CERT_DIR``
apply; not certifi's bundle), proxy variables are ignored, redirects are followed, and
``timeout`` bounds the whole call.

``base_url`` is treated as a directory: ``https://host/fleet`` and ``https://host/fleet/`` both
lead to ``https://host/fleet/v1/pre-reboot``. (Zincati joins paths RFC 3986-style, so for it a
base URL without a trailing slash loses its last segment; we don't.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from zincati_py.fleetlock import protocol
from zincati_py.fleetlock.protocol import ClientParams, Kind

if TYPE_CHECKING:
    import httpx

# httpx logs every request at INFO and httpcore every connection step at DEBUG; callers log
# what matters (grants, failures), so the journal and the CLI's stderr stay quiet.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class FleetLockError(Exception):
    """A failed FleetLock call. ``status`` is None when no HTTP answer came (transport error)."""

    def __init__(self, kind: str, value: str, status: int | None) -> None:
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"{kind} ({where}): {value}")
        self.kind = kind
        self.value = value
        self.status = status


@dataclass(frozen=True)
class LockGrant:
    """A granted (or renewed) slot; ``lease_seconds`` is None when the server sent no lease."""

    lease_seconds: int | None


def directory_url(base_url: str) -> str:
    return base_url if base_url.endswith("/") else base_url + "/"


# httpx hands a ``verify`` that is neither a bool nor a str to httpcore as the SSL context, and
# httpcore's None means "none made yet". Only for a transport that never makes a TLS connection.
_NO_SSL_CONTEXT: Any = None


_Make = Callable[[], "httpx.AsyncBaseTransport"]


@cache
def _made_on_first_use() -> Callable[[_Make], httpx.AsyncBaseTransport]:
    """The transport class (httpx imported when a session is made, not with this module)."""
    import httpx

    class MadeOnFirstUse(httpx.AsyncBaseTransport):
        """A transport made when the first request needs it."""

        def __init__(self, make: _Make) -> None:
            self._make = make
            self._transport: httpx.AsyncBaseTransport | None = None

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if self._transport is None:
                self._transport = self._make()
            return await self._transport.handle_async_request(request)

        async def aclose(self) -> None:
            if self._transport is not None:
                await self._transport.aclose()

    return MadeOnFirstUse


def new_session(
    *,
    uds: str | None = None,
    verify: ssl.SSLContext | bool | None = None,
    base_url: str | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` configured like the one a client creates for itself.

    ``uds`` connects through a Unix socket (the URL's host then only names the server);
    ``verify`` defaults to the system trust store; other arguments go to the client.
    ``base_url``: what the session is for. For an http:// URL (and the default ``verify``) no
    SSL context is made, so the trust store is not read and, in the agent, OpenSSL is not even
    loaded (``zincati_py.lazytls``, about 6.5 MiB); a request that does go to https (a
    redirect) gets a transport made then, verified against the system trust store as always.
    """
    import httpx

    if verify is None and uds is None and (base_url or "").lower().startswith("http://"):
        kwargs["transport"] = httpx.AsyncHTTPTransport(verify=_NO_SSL_CONTEXT, trust_env=False)
        kwargs["mounts"] = {
            "https://": _made_on_first_use()(
                lambda: httpx.AsyncHTTPTransport(
                    verify=ssl.create_default_context(), trust_env=False
                )
            )
        }
        return httpx.AsyncClient(trust_env=False, **kwargs)
    if verify is None:
        verify = ssl.create_default_context()
    if uds is not None:
        kwargs["transport"] = httpx.AsyncHTTPTransport(uds=uds, verify=verify)
    return httpx.AsyncClient(verify=verify, trust_env=False, **kwargs)


class _Http:
    """Shared plumbing: an owned or borrowed session, one request, error mapping."""

    def __init__(
        self,
        base_url: str,
        *,
        session: httpx.AsyncClient | None,
        timeout: float,
        token: str | None,
    ) -> None:
        self.base_url = directory_url(base_url)
        self._session = session
        self._own_session = session is None
        self._timeout = timeout
        self._token = token

    def _get_session(self) -> httpx.AsyncClient:
        if self._session is None:
            self._session = new_session(base_url=self.base_url)
        return self._session

    async def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        return (await self.request_full(method, path, body)).content

    async def request_full(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        wait: float | None = None,
    ) -> httpx.Response:
        """One request; the response if it is a success, else FleetLockError. ``wait``: the
        server may hold the request that long (long poll); the timeout grows by as much."""
        headers = {protocol.HEADER: "true"}
        timeout = self._timeout
        if wait:
            headers[protocol.WAIT_HEADER] = f"{wait:g}"
            timeout += wait
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        import httpx

        try:
            async with asyncio.timeout(timeout):
                resp = await self._get_session().request(
                    method,
                    self.base_url + path,
                    content=body,
                    headers=headers,
                    timeout=timeout,
                    follow_redirects=True,
                )
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise FleetLockError(Kind.TRANSPORT, str(exc) or type(exc).__name__, None) from exc
        raw = resp.content
        if 200 <= resp.status_code < 300:
            return resp
        kind, value = protocol.parse_error_body(resp.status_code, raw)
        raise FleetLockError(kind, value, resp.status_code)

    async def request_json(self, method: str, path: str, body: bytes | None = None) -> Any:
        raw = await self.request(method, path, body)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FleetLockError(Kind.INVALID_BODY, f"server sent no JSON: {exc}", 200) from None

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.aclose()
            self._session = None


class FleetLockClient:
    """One node's FleetLock calls. Each method makes exactly one attempt and raises
    :class:`FleetLockError` on any failure (HTTP error or transport error)."""

    def __init__(
        self,
        base_url: str,
        node_id: str,
        group: str,
        *,
        session: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        token: str | None = None,
    ) -> None:
        self._http = _Http(base_url, session=session, timeout=timeout, token=token)
        self._body = ClientParams(id=node_id, group=group).to_body()

    @property
    def base_url(self) -> str:
        return self._http.base_url

    async def pre_reboot(
        self, report: dict[str, str] | None = None, *, wait: float | None = None
    ) -> LockGrant:
        """Take (or renew) a reboot slot. ``report``: optional ``client_params`` keys
        (``from_version``, ``to_version``); ``wait``: seconds our server may hold the request
        while the group is full (a fair queue; other servers answer at once)."""
        body = self._body
        if report:
            doc = json.loads(body)
            doc["client_params"].update(report)
            body = json.dumps(doc).encode()
        resp = await self._http.request_full("POST", protocol.PRE_REBOOT, body, wait=wait)
        return LockGrant(lease_seconds=protocol.parse_lease_seconds(resp.content))

    async def steady_state(self, report: dict[str, str] | None = None) -> bool | None:
        """Release the slot; succeeds when the node holds none. Returns whether a slot was
        released, or None when the server does not say (Zincati's protocol doesn't).
        ``report``: optional ``client_params`` keys (``booted_version``, ``health``, ...),
        which servers that do not know them ignore."""
        body = self._body
        if report:
            doc = json.loads(body)
            doc["client_params"].update(report)
            body = json.dumps(doc).encode()
        resp = await self._http.request_full("POST", protocol.STEADY_STATE, body)
        released = resp.headers.get(protocol.RELEASED_HEADER)
        return None if released not in ("true", "false") else released == "true"

    async def close(self) -> None:
        """Close the session if the client created it (a passed-in session is left open)."""
        await self._http.close()


class FleetLockAdminClient:
    """Our server's admin API (not part of the FleetLock protocol)."""

    def __init__(
        self,
        base_url: str,
        *,
        session: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        token: str | None = None,
    ) -> None:
        self._http = _Http(base_url, session=session, timeout=timeout, token=token)

    async def groups(self) -> list[dict[str, Any]]:
        doc = await self._http.request_json("GET", protocol.GROUPS)
        groups = doc.get("groups") if isinstance(doc, dict) else None
        if not isinstance(groups, list):
            raise FleetLockError(Kind.INVALID_BODY, "expected {'groups': [...]}", 200)
        return groups

    async def group(self, name: str) -> dict[str, Any]:
        doc = await self._http.request_json("GET", f"{protocol.GROUPS}/{name}")
        if not isinstance(doc, dict):
            raise FleetLockError(Kind.INVALID_BODY, "expected a JSON object", 200)
        return doc

    async def release(self, group: str, node_id: str) -> bool:
        """Force-release ``node_id``'s slot; returns whether it held one."""
        body = ClientParams(id=node_id, group=group).to_body()
        doc = await self._http.request_json("POST", protocol.ADMIN_RELEASE, body)
        return bool(doc.get("released")) if isinstance(doc, dict) else False

    async def control(self, group: str, action: str, **args: Any) -> dict[str, Any]:
        """A group action (pause, resume, cooldown, hold, unhold, resume_version); returns
        the group's view after it."""
        body = json.dumps({"group": group, "action": action, **args}).encode()
        doc = await self._http.request_json("POST", protocol.ADMIN_GROUP, body)
        if not isinstance(doc, dict):
            raise FleetLockError(Kind.INVALID_BODY, "expected a JSON object", 200)
        return doc

    async def history(self, **query: str | float | None) -> list[dict[str, Any]]:
        params = "&".join(
            f"{k}={urllib.parse.quote(str(v))}" for k, v in query.items() if v is not None
        )
        doc = await self._http.request_json("GET", f"{protocol.HISTORY}?{params}")
        events = doc.get("events") if isinstance(doc, dict) else None
        if not isinstance(events, list):
            raise FleetLockError(Kind.INVALID_BODY, "expected {'events': [...]}", 200)
        return events

    async def rollouts(self, group: str | None = None) -> list[dict[str, Any]]:
        path = protocol.ROLLOUTS + ("" if group is None else f"?group={group}")
        doc = await self._http.request_json("GET", path)
        rows = doc.get("rollouts") if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise FleetLockError(Kind.INVALID_BODY, "expected {'rollouts': [...]}", 200)
        return rows

    async def close(self) -> None:
        await self._http.close()
