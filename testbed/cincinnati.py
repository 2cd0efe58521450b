"""A Cincinnati graph server double: real HTTP on loopback, serving a graph you describe.

Describe releases oldest first; the server builds the graph the way Fedora CoreOS's graph
builder does and answers ``GET …/v1/graph`` (any path prefix, so templated ``base_url`` paths
work) with ``{"nodes": [...], "edges": [...]}``::

    with GraphServer([GraphRelease("A"), GraphRelease("B", barrier=True), GraphRelease("C")])
        as server:
        server.base_url        # "http://127.0.0.1:PORT/"
        server.requests[-1]    # what the last client sent (path, query parameters, headers)

Graph rules:

- each release has an edge to every later release up to and including the next **barrier**
  (a node on A with A→B(barrier)→C is only offered B);
- a **dead-end** release (``deadend="reason"``) has no edges out, and carries
  ``org.fedoraproject.coreos.updates.deadend{,_reason}``;
- a release in a **phased rollout** (``rollout=p``, 0..1) is offered only to nodes whose
  ``rollout_wariness`` is at most ``p`` (nodes sending none count as ``default_wariness``);
- ``extra_edges`` adds edges by version (e.g. a downgrade edge B→A).

Faults: :meth:`GraphServer.fail` answers every request with a given status and body until
:meth:`GraphServer.heal`; a 2xx raw body serves a malformed graph. Checksums default to the
rpm-ostree double's (:func:`testbed.rpmostree.default_checksum`), so both doubles agree.

``python -m testbed.cincinnati --graph FILE [--port N] [--ready-fd FD]`` serves the releases
listed in a JSON file (``[{"version": ..., "barrier": ..., ...}]``), re-read on every request,
so the demo publishes a release by rewriting the file.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from testbed.rpmostree import default_checksum

SCHEME_KEY = "org.fedoraproject.coreos.scheme"
AGE_INDEX_KEY = "org.fedoraproject.coreos.releases.age_index"
DEADEND_KEY = "org.fedoraproject.coreos.updates.deadend"
DEADEND_REASON_KEY = "org.fedoraproject.coreos.updates.deadend_reason"
BARRIER_KEY = "org.fedoraproject.coreos.updates.barrier"


@dataclass
class GraphRelease:
    version: str
    checksum: str = ""  # "": default_checksum(version)
    barrier: bool = False
    deadend: str | None = None  # the dead-end reason
    rollout: float | None = None  # rollout progress; None: offered to every node
    age_index: int | None = None  # None: the position in the list
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def payload(self) -> str:
        return self.checksum or default_checksum(self.version)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GraphRelease:
        return cls(**raw)


@dataclass(frozen=True)
class Request:
    path: str
    params: dict[str, str]
    raw_query: str
    headers: dict[str, str]


class GraphServer:
    """The HTTP server in a background thread (``start``/``stop`` or ``with``)."""

    def __init__(
        self,
        releases: list[GraphRelease] | None = None,
        *,
        extra_edges: list[tuple[str, str]] | None = None,
        default_wariness: float = 0.5,
        host: str = "127.0.0.1",
        port: int = 0,
        graph_file: Path | None = None,
    ) -> None:
        self.releases = list(releases or [])
        self.extra_edges = list(extra_edges or [])
        self.default_wariness = default_wariness
        self.graph_file = graph_file
        self.requests: list[Request] = []
        self._fault: tuple[int, bytes, str] | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what it serves -------------------------------------------------------------------
    def set_releases(
        self, releases: list[GraphRelease], extra_edges: list[tuple[str, str]] | None = None
    ) -> None:
        with self._lock:
            self.releases = list(releases)
            if extra_edges is not None:
                self.extra_edges = list(extra_edges)

    def fail(self, status: int, body: bytes | str = b"", content_type: str = "text/plain") -> None:
        """Answer every request with ``status`` and ``body`` (a 2xx: a malformed graph)."""
        raw = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._fault = (status, raw, content_type)

    def heal(self) -> None:
        with self._lock:
            self._fault = None

    def graph(self, wariness: float | None = None) -> dict[str, Any]:
        """The graph a node with ``wariness`` (None: the default) is served."""
        with self._lock:
            releases = self._load()
            extra = list(self.extra_edges)
        w = self.default_wariness if wariness is None else wariness
        nodes = []
        for i, r in enumerate(releases):
            meta = {
                SCHEME_KEY: "checksum",
                AGE_INDEX_KEY: str(i if r.age_index is None else r.age_index),
                **r.metadata,
            }
            if r.barrier:
                meta[BARRIER_KEY] = "true"
            if r.deadend is not None:
                meta[DEADEND_KEY] = "true"
                meta[DEADEND_REASON_KEY] = r.deadend
            nodes.append({"version": r.version, "payload": r.payload, "metadata": meta})
        offered = [r.rollout is None or w <= r.rollout for r in releases]
        edges: list[list[int]] = []
        for i, r in enumerate(releases):
            if r.deadend is not None:
                continue
            for j in range(i + 1, len(releases)):
                if offered[j]:
                    edges.append([i, j])
                if releases[j].barrier:
                    break
        index = {r.version: i for i, r in enumerate(releases)}
        for a, b in extra:
            if [index[a], index[b]] not in edges:
                edges.append([index[a], index[b]])
        return {"nodes": nodes, "edges": edges}

    def _load(self) -> list[GraphRelease]:
        if self.graph_file is None:
            return list(self.releases)
        raw = json.loads(self.graph_file.read_text())
        return [GraphRelease.from_dict(r) for r in raw]

    def _answer(self, req: Request) -> tuple[int, bytes, str]:
        with self._lock:
            self.requests.append(req)
            fault = self._fault
        if fault is not None:
            return fault
        if not req.path.endswith("/v1/graph"):
            body = {"kind": "not_found", "value": f"no such path {req.path}"}
            return 404, json.dumps(body).encode(), "application/json"
        raw_w = req.params.get("rollout_wariness")
        try:
            wariness = None if raw_w is None else float(raw_w)
        except ValueError:
            body = {"kind": "invalid_params", "value": f"rollout_wariness {raw_w!r}"}
            return 400, json.dumps(body).encode(), "application/json"
        return 200, json.dumps(self.graph(wariness)).encode(), "application/json"


def _handler(server: GraphServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            req = Request(
                path=parts.path,
                params=dict(parse_qsl(parts.query, keep_blank_values=True)),
                raw_query=parts.query,
                headers={k.lower(): v for k, v in self.headers.items()},
            )
            status, body, ctype = server._answer(req)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests read server.requests, not stderr

    return Handler


def write_graph_file(path: Path, releases: list[GraphRelease]) -> None:
    """Atomically (re)write the release list ``python -m testbed.cincinnati`` serves."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps([asdict(r) for r in releases], indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.cincinnati")
    p.add_argument("--graph", type=Path, required=True, help="JSON list of releases")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-fd", type=int, default=None, help="write the port here when ready")
    args = p.parse_args(argv)
    server = GraphServer(graph_file=args.graph, port=args.port)
    if args.ready_fd is not None:
        os.write(args.ready_fd, f"{server.port}\n".encode())
        os.close(args.ready_fd)
    else:
        print(server.base_url, flush=True)
    try:
        server._server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
