"""Fetch the update graph over HTTP (httpx, imported on first use: the agent's idle memory).

``GET <graph URL>?<query>`` with ``accept: application/json``, redirects followed (as
reqwest, Zincati's client, does), bounded in time and size. Every failure is a
:class:`CincinnatiError` with Zincati's ``kind``: ``failed_request`` (no answer),
the server's ``kind`` or ``generic_http`` (non-2xx), ``failed_json_parsing`` /
``failed_node_parsing`` (not a graph).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zincati_py.cincinnati.errors import (
    FAILED_JSON_PARSING,
    FAILED_REQUEST,
    GENERIC_HTTP,
    CincinnatiError,
)
from zincati_py.cincinnati.graph import Graph, parse_error_body, parse_graph
from zincati_py.cincinnati.request import HEADERS

if TYPE_CHECKING:
    import httpx

TIMEOUT_SECS = 30.0
MAX_BODY = 32 * 1024 * 1024


async def fetch_graph(
    url: str,
    params: dict[str, str],
    *,
    timeout: float = TIMEOUT_SECS,
    client: httpx.AsyncClient | None = None,
) -> Graph:
    """The graph at ``url``; raises :class:`CincinnatiError` for every kind of failure."""
    import httpx

    own = client is None
    session = client or httpx.AsyncClient(follow_redirects=True, timeout=timeout)
    try:
        try:
            async with session.stream("GET", url, params=params, headers=HEADERS) as resp:
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise CincinnatiError(
                            FAILED_JSON_PARSING, f"answer larger than {MAX_BODY} bytes"
                        )
                status = resp.status_code
        except httpx.HTTPError as exc:
            raise CincinnatiError(
                FAILED_REQUEST, f"GET {url}: {type(exc).__name__}: {exc}".rstrip(": ")
            ) from None
    finally:
        if own:
            await session.aclose()
    if not 200 <= status < 300:
        err = parse_error_body(bytes(body))
        if err is not None:
            kind, value = err
            raise CincinnatiError(kind, f"HTTP {status} from {url}: {value}", status=status)
        raise CincinnatiError(GENERIC_HTTP, f"HTTP {status} from {url}", status=status)
    return parse_graph(bytes(body))
