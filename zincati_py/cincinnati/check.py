"""One update check against the graph, as the agent runs it (and ``zincati-py updates``).

:class:`GraphCheck` fetches the graph for this node, plans the target, keeps the dead-end MOTD
and Zincati's metrics in line, and remembers what it saw for ``zincati-py status`` and the
D-Bus API. It never raises for a graph problem: every error is "no update this check", logged
and counted by kind; the caller waits for the next check (no faster retry).

Identity (:func:`node_identity`): stream and version of the booted deployment from its metadata
as rpm-ostree reports it (``fedora-coreos.stream`` in the base commit metadata), the base
checksum (or, for an OCI deployment, the digest pull-spec), ``ignition.platform.id`` from the
kernel command line, the architecture from ``uname``, group, node id and wariness from the
configuration.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zincati_py.cincinnati import client
from zincati_py.cincinnati.errors import CLIENT_BUILDER, CincinnatiError
from zincati_py.cincinnati.graph import SCHEME_CHECKSUM, SCHEME_OCI, Booted, Node, Plan, plan
from zincati_py.cincinnati.metrics import CincinnatiMetrics
from zincati_py.cincinnati.motd import DeadendMotd
from zincati_py.cincinnati.request import NodeIdentity, graph_url, query

if TYPE_CHECKING:
    from zincati_py.config import Settings

log = logging.getLogger(__name__)

PLATFORM_ARG = "ignition.platform.id="


def kernel_platform(root: Path) -> str:
    """``ignition.platform.id`` from ``<root>/proc/cmdline`` ("" if absent)."""
    try:
        cmdline = (root / "proc/cmdline").read_text()
    except OSError:
        return ""
    for arg in cmdline.split():
        if arg.startswith(PLATFORM_ARG):
            return arg[len(PLATFORM_ARG) :]
    return ""


def basearch() -> str:
    return os.uname().machine


def oci_pullspec(reference: str, digest: str) -> str:
    """``quay.io/x/y@sha256:…`` from rpm-ostree's container image reference and digest."""
    if reference.startswith("ostree-unverified-registry:"):
        image = reference.removeprefix("ostree-unverified-registry:")
    elif "docker://" in reference:
        image = reference.rsplit("docker://", 1)[-1]
    else:
        image = reference.rsplit("registry:", 1)[-1]
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:  # a tag, not a registry port
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return f"{name}@{digest}"


@dataclass(frozen=True)
class BootedFacts:
    """What the graph request needs from the booted deployment."""

    version: str
    checksum: str  # base checksum (the commit before local layering)
    stream: str
    oci_pullspec: str | None = None

    @classmethod
    def from_deployment(cls, dep: Any) -> BootedFacts:
        """From the rpm-ostree adapter's ``Deployment`` (``base_checksum``, ``stream`` from the
        base commit's ``fedora-coreos.stream``, ``container_image_reference[_digest]``)."""
        ref = getattr(dep, "container_image_reference", "") or ""
        digest = getattr(dep, "container_image_reference_digest", "") or ""
        return cls(
            version=str(dep.version or ""),
            checksum=str(getattr(dep, "base_checksum", "") or dep.checksum),
            stream=str(getattr(dep, "stream", "") or ""),
            oci_pullspec=oci_pullspec(ref, digest) if ref and digest else None,
        )

    @property
    def booted(self) -> Booted:
        if self.oci_pullspec:
            return Booted(self.version, self.oci_pullspec, SCHEME_OCI)
        return Booted(self.version, self.checksum, SCHEME_CHECKSUM)


def node_identity(
    settings: Settings, facts: BootedFacts, *, platform: str, arch: str | None = None
) -> NodeIdentity:
    ident = settings.identity
    if not ident.node_uuid:
        raise CincinnatiError(
            CLIENT_BUILDER, "no node id: set identity.node_uuid or provide /etc/machine-id"
        )
    return NodeIdentity(
        basearch=arch or basearch(),
        stream=facts.stream,
        platform=platform,
        group=ident.group,
        node_uuid=ident.node_uuid,
        os_version=facts.version,
        os_checksum=facts.oci_pullspec or facts.checksum,
        rollout_wariness=ident.rollout_wariness,
        oci=bool(facts.oci_pullspec),
    )


@dataclass(frozen=True)
class CheckOutcome:
    target: Node | None
    plan: Plan | None
    error: CincinnatiError | None
    summary: str  # one line: the agent's last_check_result


class GraphCheck:
    """The agent's graph collaborator: one instance per agent, one :meth:`run` per check."""

    def __init__(self, root: Path, metrics: CincinnatiMetrics | None = None) -> None:
        self.root = root
        self.metrics = metrics or CincinnatiMetrics()
        self.motd = DeadendMotd(root)
        self.url: str | None = None
        self.last_fetch: float | None = None  # time of the last graph answer (2xx)
        self.last: CheckOutcome | None = None

    async def run(
        self,
        settings: Settings,
        facts: BootedFacts,
        *,
        denylist: Collection[str] = (),
        arch: str | None = None,
        timeout: float = client.TIMEOUT_SECS,
    ) -> CheckOutcome:
        assert settings.cincinnati_base_url is not None
        self.metrics.update_checks += 1
        try:
            identity = node_identity(
                settings, facts, platform=kernel_platform(self.root), arch=arch
            )
            self.url = graph_url(settings.cincinnati_base_url, identity.url_variables())
            graph = await client.fetch_graph(self.url, query(identity), timeout=timeout)
            self.last_fetch = time.time()
            self.metrics.graph_nodes = len(graph.nodes)
            self.metrics.graph_edges = len(graph.edges)
            result = plan(
                graph,
                facts.booted,
                denylist=denylist,
                allow_downgrade=settings.updates.allow_downgrade,
            )
        except CincinnatiError as exc:
            self.metrics.error(exc.kind)
            log.error("update graph %s: %s (no update this check)", self.url or "", exc)
            outcome = CheckOutcome(None, None, exc, f"graph error: {exc}")
            self.last = outcome
            return outcome
        self.metrics.ignored_targets = result.ignored
        for warning in result.warnings:
            log.warning("update graph: %s", warning)
        if result.booted is None:
            log.warning("update graph: %s", result.reason)
        else:
            self.metrics.booted_deadend = int(result.deadend)
            self.motd.update(result.deadend, result.deadend_reason)
        if result.chosen is not None:
            log.info("update graph: target %s (%s)", result.chosen.version, result.reason)
            summary = f"graph target {result.chosen.version}"
        else:
            log.info("update graph: no update (%s)", result.reason)
            summary = f"no new update ({result.reason})"
        outcome = CheckOutcome(result.chosen, result, None, summary)
        self.last = outcome
        return outcome

    def status(self, base_url: str | None) -> dict[str, Any]:
        """For ``zincati-py status`` and the D-Bus API (times as Unix seconds)."""
        last = self.last
        p = last.plan if last is not None else None
        return {
            "source": self.url or base_url,
            "last_fetch": self.last_fetch,
            "last_error": str(last.error) if last is not None and last.error else None,
            "target": None if p is None or p.chosen is None else p.chosen.as_dict(),
            "reason": None if p is None else p.reason,
            "deadend": None if p is None or p.booted is None else p.deadend,
            "deadend_reason": p.deadend_reason if p is not None and p.deadend else None,
        }


# The deny-list the agent keeps in its persisted state (``extra``): releases that failed to
# stage, each with the boot it failed in. Like Zincati's in-memory list it lasts until the
# next reboot, but an agent restart within the boot does not retry a release that failed.
DENYLIST_KEY = "cincinnati_denylist"


def denylist(extra: Mapping[str, Any], failed: Iterable[str], boot_id: str) -> set[str]:
    """Checksums never to update to: ``failed`` (rebooted into, did not come up) and the
    releases that failed to stage in this boot."""
    out = set(failed)
    for entry in extra.get(DENYLIST_KEY) or ():
        if isinstance(entry, list) and len(entry) == 2 and entry[1] == boot_id:
            out.add(str(entry[0]))
    return out


def denylist_add(extra: Mapping[str, Any], checksum: str, boot_id: str) -> dict[str, Any]:
    """``extra`` with ``checksum`` deny-listed for this boot (other boots' entries dropped)."""
    kept = [
        e
        for e in extra.get(DENYLIST_KEY) or ()
        if isinstance(e, list) and len(e) == 2 and e[1] == boot_id and e[0] != checksum
    ]
    return {**extra, DENYLIST_KEY: [*kept, [checksum, boot_id]]}
