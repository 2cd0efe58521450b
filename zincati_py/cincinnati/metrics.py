"""Zincati's Cincinnati metrics, as a prometheus-client collector the agent registers.

Names and help texts follow Zincati (``zincati_cincinnati_*``). Counters are rendered with a
``_total`` sample like Zincati's ``IntCounter``s named ``…_total``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class CincinnatiMetrics(Collector):
    """Current values, set by :class:`zincati_py.cincinnati.check.GraphCheck`."""

    def __init__(self) -> None:
        self.graph_nodes = 0
        self.graph_edges = 0
        self.booted_deadend = 0
        self.ignored_targets = 0
        self.update_checks = 0
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> Metric:
            m = Metric(name, doc, "gauge")
            m.add_sample(name, {}, value)
            return m

        yield gauge(
            "zincati_cincinnati_graph_nodes_count",
            "Number of nodes in Cincinnati update graph.",
            self.graph_nodes,
        )
        yield gauge(
            "zincati_cincinnati_graph_edges_count",
            "Number of edges in Cincinnati update graph.",
            self.graph_edges,
        )
        yield gauge(
            "zincati_cincinnati_booted_release_is_deadend",
            "Whether currently booted OS release is a dead-end.",
            self.booted_deadend,
        )
        yield gauge(
            "zincati_cincinnati_ignored_update_targets",
            "Number of ignored targets among update targets found.",
            self.ignored_targets,
        )
        checks = Metric(
            "zincati_cincinnati_update_checks",
            "Total number of checks for updates to the upstream Cincinnati server.",
            "counter",
        )
        checks.add_sample("zincati_cincinnati_update_checks_total", {}, self.update_checks)
        yield checks
        errors = Metric(
            "zincati_cincinnati_update_checks_errors",
            "Total number of errors while checking for updates.",
            "counter",
        )
        for kind, count in sorted(self.errors.items()):
            errors.add_sample(
                "zincati_cincinnati_update_checks_errors_total", {"kind": kind}, count
            )
        yield errors
