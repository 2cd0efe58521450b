"""The update graph (``[cincinnati] base_url``) as the loop uses it: made on first need.

The Cincinnati client (``zincati_py.cincinnati``) is loaded only once a configuration in force
sets ``[cincinnati] base_url``; before that, updates come from the deployment's origin and the
package (with prometheus-client, which its metrics import) is never loaded. Its metrics are in
the exposition from the start all the same (zeros until the graph is used), as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zincati_py.agent.persist import Store
    from zincati_py.agent.publish import Publisher
    from zincati_py.cincinnati.updater import GraphUpdates
    from zincati_py.config import Settings
    from zincati_py.dbus.rpmostree import RpmOstree
    from zincati_py.metrics import AgentMetrics


class UpdateGraph:
    def __init__(
        self,
        root: Path,
        store: Store,
        boot_id: str,
        metrics: AgentMetrics,
        publish: Publisher,
    ) -> None:
        self.root = root
        self.store = store
        self.boot_id = boot_id
        self.publish = publish
        self.updates: GraphUpdates | None = None
        metrics.register(self)

    def follow(self, settings: Settings) -> None:
        """Make the graph client if ``settings`` use it (kept once made, as it counts)."""
        if self.updates is None and settings.cincinnati_base_url:
            from zincati_py.cincinnati.updater import GraphUpdates

            self.updates = GraphUpdates(self.root, self.store, self.boot_id)
            self.publish.graph = self.updates

    def check_step(self, settings: Settings) -> Callable[[RpmOstree], Awaitable[Any]] | None:
        """The check step for ``settings`` (None: rpm-ostree's own update check)."""
        self.follow(settings)
        return None if self.updates is None else self.updates.for_settings(settings)

    def collect(self) -> Iterator[Any]:
        """prometheus-client collector protocol (called at a scrape only)."""
        from zincati_py.cincinnati.metrics import CincinnatiMetrics

        metrics = self.updates.metrics if self.updates is not None else CincinnatiMetrics()
        yield from metrics.collect()
