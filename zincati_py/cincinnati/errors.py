"""Errors of an update check against the graph: each means "no update this check".

``kind`` is Zincati's machine-friendly kind (the ``kind`` label of
``zincati_cincinnati_update_checks_errors_total``): the server's own ``kind`` when a non-2xx
answer carries a ``{"kind", "value"}`` body, else one of the constants below.
"""

from __future__ import annotations

# Zincati's kinds (cincinnati/client.rs, CincinnatiError::error_kind).
GENERIC_HTTP = "generic_http"
CLIENT_BUILDER = "client_builder"
FAILED_REQUEST = "failed_request"
FAILED_JSON_PARSING = "failed_json_parsing"
FAILED_NODE_PARSING = "failed_node_parsing"
# Kinds that mean the answer was there but wrong (the CLI exits 65 rather than 69).
MALFORMED_KINDS = frozenset({FAILED_JSON_PARSING, FAILED_NODE_PARSING})


class CincinnatiError(Exception):
    """The graph could not be fetched or understood; ``kind`` names why."""

    def __init__(self, kind: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def malformed(self) -> bool:
        """The server answered, but with a graph that is not one."""
        return self.kind in MALFORMED_KINDS

    def __str__(self) -> str:
        return f"{self.kind}: {self.args[0]}"
