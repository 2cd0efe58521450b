"""The agent's update check when ``[cincinnati] base_url`` is set: graph, target, stage.

The agent's check step calls :meth:`GraphUpdates.check` instead of rpm-ostree's "stage the
newest commit of the ref". It reads the booted deployment, asks the graph (every graph error is
"no update this check": counted by kind, no faster retry), and stages the chosen release by
checksum (rpm-ostree's deploy of a revision, finalization locked, no downgrade unless allowed).
A target whose scheme is ``oci`` (a container image) is not supported: logged, not staged,
not deny-listed.
A release that fails to stage is deny-listed for this boot, so the next check moves on instead
of failing on it again. Once something is staged the agent does not check again before the
reboot (the state machine only checks with nothing staged), as Zincati.

``store`` is the agent's persisted state (``zincati_py.agent.persist.Store``: its record's
``extra`` and ``failed``, and ``commit``), taken by duck typing so this package imports nothing
of the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zincati_py.cincinnati.check import (
    BootedFacts,
    GraphCheck,
    denylist,
    denylist_add,
)
from zincati_py.cincinnati.graph import SCHEME_OCI
from zincati_py.cincinnati.metrics import CincinnatiMetrics
from zincati_py.timefmt import iso_ts

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from zincati_py.config import Settings
    from zincati_py.dbus.rpmostree import RpmOstree

log = logging.getLogger("zincati_py.agent")


@dataclass(frozen=True)
class GraphStage:
    """What a graph check did: ``staged`` (the adapter's Deployment) or None, and the text for
    the agent's ``last_check_result``."""

    staged: Any
    result: str


class GraphUpdates:
    def __init__(
        self,
        root: Path,
        store: Any,
        boot_id: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.boot_id = boot_id
        self.metrics = CincinnatiMetrics()
        self.graph = GraphCheck(root, self.metrics)
        if registry is not None:
            registry.register(self.metrics)

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return bool(settings.cincinnati_base_url)

    def for_settings(
        self, settings: Settings
    ) -> Callable[[RpmOstree], Awaitable[GraphStage]] | None:
        """The check step for ``settings``: None when updates come from the origin."""
        if not self.enabled(settings):
            return None

        async def step(rpm: RpmOstree) -> GraphStage:
            return await self.check(rpm, settings)

        return step

    def _record(self) -> Any:
        return self.store.record  # persist.Store's newest record

    def denylist(self) -> set[str]:
        rec = self._record()
        return denylist(rec.extra, rec.failed, self.boot_id)

    async def check(self, rpm: RpmOstree, settings: Settings) -> GraphStage:
        """One check. Raises only what rpm-ostree raises outside a failed transaction
        (unreachable, timeout): the caller retries those as any check failure."""
        from zincati_py.dbus.rpmostree import TransactionFailed

        facts = BootedFacts.from_deployment(await rpm.booted())
        outcome = await self.graph.run(settings, facts, denylist=self.denylist())
        target = outcome.target
        if target is None:
            return GraphStage(None, outcome.summary)
        if target.scheme == SCHEME_OCI:
            # Rebasing to a container image (ostree-unverified-registry:<pull-spec>) is not
            # implemented: deploying its pull-spec as a revision always fails. Not staged and
            # not deny-listed (the release is not at fault); said on every check.
            log.warning(
                "update graph: target %s is an OCI image (%s): not supported by zincati-py"
                " (it deploys ostree commits by checksum); not staged",
                target.version,
                target.payload,
            )
            return GraphStage(None, f"graph target {target.version} is an OCI image: unsupported")
        log.info(
            "staging %s (%s) from the update graph (finalization locked)",
            target.version,
            target.payload,
        )
        try:
            staged = await rpm.stage_update(
                revision=f"revision={target.payload}",
                allow_downgrade=settings.updates.allow_downgrade,
            )
        except TransactionFailed as exc:
            log.error("staging %s failed: %s; deny-listed until reboot", target.version, exc)
            extra = denylist_add(self._record().extra, target.payload, self.boot_id)
            await self.store.commit(extra=extra)
            return GraphStage(None, f"failed to stage {target.version}: {exc} (deny-listed)")
        if staged is None or staged.checksum != target.payload:
            got = "nothing" if staged is None else staged.checksum
            return GraphStage(staged, f"staging {target.version} left {got} staged")
        return GraphStage(staged, f"staged {target.version} from the update graph")

    def status(self, settings: Settings) -> dict[str, Any] | None:
        """The ``cincinnati`` part of the status document (None: origin-based updates)."""
        if not self.enabled(settings):
            return None
        doc = self.graph.status(settings.cincinnati_base_url)
        doc["last_fetch"] = iso_ts(doc["last_fetch"])
        doc["denylist"] = sorted(self.denylist())
        return doc

    def properties(self, settings: Settings) -> dict[str, str]:
        """The D-Bus API's graph properties (all strings, "" when unknown)."""
        doc = self.status(settings) or {}
        target = doc.get("target")
        deadend = doc.get("deadend")
        return {
            "UpdateGraph": str(doc.get("source") or ""),
            "UpdateGraphFetched": str(doc.get("last_fetch") or ""),
            "UpdateTarget": f"{target['version']} ({target['payload']})" if target else "",
            "DeadEnd": ""
            if deadend is None
            else (f"yes: {doc.get('deadend_reason') or ''}" if deadend else "no"),
        }
