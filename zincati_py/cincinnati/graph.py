"""The update graph and the choice of a target, as pure functions (no I/O).

Graph JSON (a 2xx answer)::

    {"nodes": [{"version": str, "payload": str, "metadata": {str: str}}, ...],
     "edges": [[from_index, to_index], ...]}

Zincati's rules: the booted node is the one whose ``org.fedoraproject.coreos.scheme`` is the
booted scheme (``checksum``, or ``oci``) and whose ``payload`` is the booted checksum (or digest
pull-spec). Releases are ordered by ``org.fedoraproject.coreos.releases.age_index``. Targets
are the nodes at the far end of edges from the booted node; releases on the local deny-list are
dropped; the greatest remaining one is chosen, and if it is not newer than the booted release
it is a downgrade, taken only with ``allow_downgrade``. The booted node is a dead-end when its
``org.fedoraproject.coreos.updates.deadend`` is ``"true"`` (reason in ``…deadend_reason``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from zincati_py.cincinnati.errors import (
    FAILED_JSON_PARSING,
    FAILED_NODE_PARSING,
    CincinnatiError,
)

SCHEME_KEY = "org.fedoraproject.coreos.scheme"
AGE_INDEX_KEY = "org.fedoraproject.coreos.releases.age_index"
DEADEND_KEY = "org.fedoraproject.coreos.updates.deadend"
DEADEND_REASON_KEY = "org.fedoraproject.coreos.updates.deadend_reason"
SCHEME_CHECKSUM = "checksum"
SCHEME_OCI = "oci"

# Why a target was not chosen (``Target.dropped``).
DROP_DENYLIST = "deny-listed"
DROP_DOWNGRADE = "downgrade (allow_downgrade is false)"
DROP_OLDER = "older than the chosen target"
DROP_INVALID = "invalid node"


@dataclass(frozen=True)
class Node:
    index: int
    version: str
    payload: str
    metadata: Mapping[str, str]

    @property
    def scheme(self) -> str:
        return self.metadata.get(SCHEME_KEY, "")

    @property
    def age_index(self) -> int | None:
        raw = self.metadata.get(AGE_INDEX_KEY)
        try:
            return None if raw is None else int(raw)
        except ValueError:
            return None

    @property
    def deadend(self) -> bool:
        return self.metadata.get(DEADEND_KEY) == "true"

    @property
    def deadend_reason(self) -> str:
        return self.metadata.get(DEADEND_REASON_KEY, "")

    def problem(self) -> str | None:
        """Why this node cannot be a release Zincati would use, or None."""
        if self.scheme not in (SCHEME_CHECKSUM, SCHEME_OCI):
            return f"{SCHEME_KEY} is {self.metadata.get(SCHEME_KEY)!r}"
        if self.age_index is None:
            return f"{AGE_INDEX_KEY} is {self.metadata.get(AGE_INDEX_KEY)!r}, not an integer"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "payload": self.payload,
            "scheme": self.scheme,
            "age_index": self.age_index,
        }


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[tuple[int, int], ...]


def parse_error_body(body: bytes) -> tuple[str, str] | None:
    """``(kind, value)`` of a non-2xx answer's ``{"kind", "value"}`` body, if it is one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("kind"), str) and doc["kind"]:
        return doc["kind"], str(doc.get("value", ""))
    return None


def parse_graph(body: bytes | str) -> Graph:
    """The graph of a 2xx answer; :class:`CincinnatiError` if it is not one."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise CincinnatiError(FAILED_JSON_PARSING, f"graph is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CincinnatiError(FAILED_JSON_PARSING, "graph is not a JSON object")
    raw_nodes, raw_edges = doc.get("nodes"), doc.get("edges")
    if not isinstance(raw_nodes, list) or not isinstance(raw_edges, list):
        raise CincinnatiError(FAILED_JSON_PARSING, "graph needs the lists 'nodes' and 'edges'")
    nodes: list[Node] = []
    for i, n in enumerate(raw_nodes):
        if not isinstance(n, dict):
            raise CincinnatiError(FAILED_JSON_PARSING, f"node {i} is not an object")
        version, payload, meta = n.get("version"), n.get("payload"), n.get("metadata")
        if not isinstance(version, str) or not isinstance(payload, str):
            raise CincinnatiError(
                FAILED_JSON_PARSING, f"node {i}: 'version' and 'payload' must be strings"
            )
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise CincinnatiError(
                FAILED_JSON_PARSING, f"node {i}: 'metadata' must map strings to strings"
            )
        nodes.append(Node(i, version, payload, dict(meta)))
    edges: list[tuple[int, int]] = []
    for e in raw_edges:
        if (
            not isinstance(e, list)
            or len(e) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in e)
        ):
            raise CincinnatiError(FAILED_JSON_PARSING, f"edge {e!r} is not a pair of node indices")
        a, b = e
        if not (0 <= a < len(nodes) and 0 <= b < len(nodes)):
            raise CincinnatiError(FAILED_NODE_PARSING, f"edge {e!r} names a node not in the graph")
        edges.append((a, b))
    return Graph(tuple(nodes), tuple(edges))


@dataclass(frozen=True)
class Booted:
    """The booted release as rpm-ostree reports it."""

    version: str
    payload: str  # base checksum, or the digest pull-spec for OCI
    scheme: str = SCHEME_CHECKSUM


@dataclass(frozen=True)
class Target:
    node: Node
    dropped: str | None = None  # None: the chosen one, or a candidate before choosing

    def as_dict(self) -> dict[str, Any]:
        return {**self.node.as_dict(), "dropped": self.dropped}


@dataclass(frozen=True)
class Plan:
    """What a check decided, with every reason (``zincati-py updates`` prints all of it)."""

    nodes_count: int
    edges_count: int
    booted: Node | None
    targets: tuple[Target, ...] = ()
    chosen: Node | None = None
    reason: str = ""
    ignored: int = 0  # targets dropped by the deny-list (Zincati's ignored_update_targets)
    warnings: tuple[str, ...] = field(default=())

    @property
    def deadend(self) -> bool:
        return self.booted is not None and self.booted.deadend

    @property
    def deadend_reason(self) -> str:
        return self.booted.deadend_reason if self.booted is not None else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "graph": {"nodes": self.nodes_count, "edges": self.edges_count},
            "booted": None if self.booted is None else self.booted.as_dict(),
            "deadend": self.deadend,
            "deadend_reason": self.deadend_reason if self.deadend else None,
            "targets": [t.as_dict() for t in self.targets],
            "chosen": None if self.chosen is None else self.chosen.as_dict(),
            "reason": self.reason,
            "ignored": self.ignored,
            "warnings": list(self.warnings),
        }


def find_booted(graph: Graph, booted: Booted) -> Node | None:
    return next(
        (n for n in graph.nodes if n.scheme == booted.scheme and n.payload == booted.payload),
        None,
    )


def plan(
    graph: Graph,
    booted: Booted,
    *,
    denylist: Collection[str] = (),
    allow_downgrade: bool = False,
) -> Plan:
    """Choose the update target for ``booted`` (``chosen`` None: no update, ``reason`` why).

    ``denylist`` holds payloads (checksums) never to update to again. Raises
    :class:`CincinnatiError` (``failed_node_parsing``) when the booted node is invalid.
    """
    nodes_count, edges_count = len(graph.nodes), len(graph.edges)
    node = find_booted(graph, booted)
    if node is None:
        return Plan(
            nodes_count=nodes_count,
            edges_count=edges_count,
            booted=None,
            reason=f"booted release {booted.version} ({booted.payload}) is not in the graph",
        )
    problem = node.problem()
    if problem is not None:
        raise CincinnatiError(FAILED_NODE_PARSING, f"booted node {node.version}: {problem}")
    booted_age = node.age_index
    assert booted_age is not None
    far = sorted({b for a, b in graph.edges if a == node.index})
    targets: list[Target] = []
    warnings: list[str] = []
    candidates: list[Node] = []
    ignored = 0
    for i in far:
        t = graph.nodes[i]
        bad = t.problem()
        if bad is not None:
            warnings.append(f"target {t.version}: {bad}")
            targets.append(Target(t, f"{DROP_INVALID}: {bad}"))
        elif t.payload in denylist:
            ignored += 1
            targets.append(Target(t, DROP_DENYLIST))
        else:
            candidates.append(t)
    chosen: Node | None = None
    if candidates:
        best = max(candidates, key=lambda n: (n.age_index or 0, n.index))
        for c in candidates:
            if c is not best:
                targets.append(Target(c, DROP_OLDER))
        if (best.age_index or 0) <= booted_age and not allow_downgrade:
            targets.append(Target(best, DROP_DOWNGRADE))
            reason = (
                f"{best.version} (age index {best.age_index}) is not newer than the booted "
                f"{node.version} (age index {booted_age}): a downgrade, and allow_downgrade "
                "is false"
            )
        else:
            chosen = best
            targets.append(Target(best))
            kind = "newest" if (best.age_index or 0) > booted_age else "downgrade (allowed)"
            reason = f"{best.version} is the {kind} target of {node.version}"
    elif not far:
        reason = f"{node.version} is up to date (no edge from it in the graph)"
    else:
        reason = f"every target of {node.version} was dropped"
    targets.sort(key=lambda t: (t.node.age_index or 0, t.node.index))
    return Plan(
        nodes_count=nodes_count,
        edges_count=edges_count,
        booted=node,
        targets=tuple(targets),
        chosen=chosen,
        reason=reason,
        ignored=ignored,
        warnings=tuple(warnings),
    )
