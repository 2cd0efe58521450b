"""Agent metrics in Prometheus text format, on a Unix socket and optionally over TCP.

Names follow Zincati where the meaning is the same (``zincati_update_agent_*``,
``zincati_rpm_ostree_*``), so existing dashboards keep working; metrics of our own are
``zincati_py_*``. Zincati's counters carry no ``_total`` suffix, which prometheus-client's
``Counter`` would add, so the values live in plain attributes and a collector renders them
with the exact names.

Like Zincati, the Unix socket (``/run/zincati-py/public/metrics.promsock``) writes the
exposition to every client that connects (``socat - UNIX-CONNECT:...``); the optional TCP
listener (``agent.metrics.listen = "HOST:PORT"``) speaks minimal HTTP for a Prometheus scraper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AgentMetrics:
    """Current values, set by the agent; rendered on every scrape.

    prometheus-client (with what it imports: about 4 MiB of resident memory) is loaded at the
    first scrape, not at start: an agent nobody scrapes never loads it. Other collectors join
    through :meth:`register`; :attr:`registry` is the prometheus-client registry (loading it).
    """

    def __init__(self) -> None:
        self.updates_enabled = 0
        self.allow_downgrade = 0
        self.latest_state_change = 0.0
        self.last_refresh = 0.0
        self.finalization_attempts = 0
        self.finalization_successes = 0
        self.finalization_blocked: dict[str, int] = {}
        self.deploy_attempts = 0
        self.deploy_failures = 0
        self.state = "start"
        self.config_valid = 1
        self.reboots_requested = 0
        self.update_checks = 0
        self.update_check_failures = 0
        self.decision_latency = 0.0
        self._collectors: list[Any] = [self]  # a prometheus-client Collector each
        self._registry: CollectorRegistry | None = None
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def on_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Await ``refresh`` before every scrape: for collectors whose values are read from
        elsewhere (systemd) when asked, never polled."""
        self._refreshers.append(refresh)

    async def refresh(self) -> None:
        for refresh in self._refreshers:
            try:
                async with asyncio.timeout(5):
                    await refresh()
            except Exception as exc:  # metrics are an extra: the scrape still answers
                log.warning("metrics: refresh failed: %s", exc)

    def register(self, collector: Any) -> None:
        """Render ``collector`` (a prometheus-client ``Collector``) with these metrics."""
        if self._registry is not None:
            self._registry.register(collector)
        else:
            self._collectors.append(collector)

    @property
    def registry(self) -> CollectorRegistry:
        """The prometheus-client registry holding these metrics (loads prometheus-client)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=False)
            for collector in self._collectors:
                registry.register(collector)
            self._registry = registry
        return self._registry

    def blocked(self, reason: str) -> None:
        self.finalization_blocked[reason] = self.finalization_blocked.get(reason, 0) + 1

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import Metric

        def one(name: str, doc: str, kind: str, value: float, sample: str | None = None) -> Metric:
            m = Metric(name, doc, kind)
            m.add_sample(sample or name, {}, value)
            return m

        yield one(
            "zincati_update_agent_updates_enabled",
            "Whether auto-updates logic is enabled.",
            "gauge",
            self.updates_enabled,
        )
        yield one(
            "zincati_update_agent_updates_allow_downgrade",
            "Whether downgrades via auto-updates logic are allowed.",
            "gauge",
            self.allow_downgrade,
        )
        yield one(
            "zincati_update_agent_latest_state_change_timestamp",
            "UTC timestamp of update-agent last state change.",
            "gauge",
            int(self.latest_state_change),
        )
        yield one(
            "zincati_update_agent_last_refresh_timestamp",
            "UTC timestamp of update-agent last refresh (evaluation).",
            "gauge",
            int(self.last_refresh),
        )
        yield one(
            "zincati_update_agent_finalization_attempts",
            "Total number of attempts to finalize a staged deployment by the update agent.",
            "counter",
            self.finalization_attempts,
        )
        yield one(
            "zincati_update_agent_finalization_successes",
            "Total number of successful update finalizations by the update agent.",
            "counter",
            self.finalization_successes,
        )
        blocked = Metric(
            "zincati_update_agent_finalization_blocked_count",
            "Total number of finalization attempts blocked due to reasons unrelated to update "
            "strategy.",
            "counter",
        )
        for reason, count in sorted(self.finalization_blocked.items()):
            blocked.add_sample(blocked.name, {"reason": reason}, count)
        yield blocked
        yield one(
            "zincati_rpm_ostree_deploy_attempts",
            "Total number of 'rpm-ostree deploy' attempts.",
            "counter",
            self.deploy_attempts,
            "zincati_rpm_ostree_deploy_attempts_total",
        )
        yield one(
            "zincati_rpm_ostree_deploy_failures",
            "Total number of 'rpm-ostree deploy' failures.",
            "counter",
            self.deploy_failures,
            "zincati_rpm_ostree_deploy_failures_total",
        )
        state = Metric(
            "zincati_py_state", "Current update state machine state (1 = current).", "gauge"
        )
        state.add_sample(state.name, {"state": self.state}, 1)
        yield state
        yield one(
            "zincati_py_config_valid",
            "Whether the configuration on disk is valid (0: the last good one is in force).",
            "gauge",
            self.config_valid,
        )
        yield one(
            "zincati_py_reboots_requested",
            "Reboots requested from logind.",
            "counter",
            self.reboots_requested,
            "zincati_py_reboots_requested_total",
        )
        yield one(
            "zincati_py_update_checks",
            "Update checks run.",
            "counter",
            self.update_checks,
            "zincati_py_update_checks_total",
        )
        yield one(
            "zincati_py_update_check_failures",
            "Update checks that failed.",
            "counter",
            self.update_check_failures,
            "zincati_py_update_check_failures_total",
        )
        yield one(
            "zincati_py_decision_latency_seconds",
            "Time from the last event (signal, wake) to the decision it led to.",
            "gauge",
            self.decision_latency,
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """``path`` usable for bind/connect even beyond sun_path's 108 bytes (deep --root trees):
    through the ``/proc/self/fd`` link of an open descriptor of its directory."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


class Exporter:
    """Serves ``metrics.render()`` on a Unix socket and, optionally, on TCP as HTTP."""

    def __init__(self, metrics: AgentMetrics, socket_path: Path, listen: str | None) -> None:
        self.metrics = metrics
        self.socket_path = socket_path
        self.listen = listen
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_path.parent, 0o755)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with short_path(self.socket_path) as path:
            server = await asyncio.start_unix_server(self._dump, path=path)
        # Public like Zincati's: connecting to a Unix socket needs write permission.
        os.chmod(self.socket_path, 0o666)
        self._servers.append(server)
        if self.listen:
            host, _, port = self.listen.rpartition(":")
            try:
                tcp = await asyncio.start_server(self._http, host.strip("[]") or None, int(port))
            except (OSError, ValueError) as exc:
                # Metrics are an extra: a busy port must not stop updates.
                log.error("metrics: cannot listen on %s: %s", self.listen, exc)
            else:
                self._servers.append(tcp)

    async def _dump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.metrics.refresh()
            writer.write(self.metrics.render())
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # Bounded: a client that never finishes its request is dropped.
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
            method = request.split(b" ", 1)[0]
            if method == b"GET":
                await self.metrics.refresh()
            body = self.metrics.render() if method == b"GET" else b""
            status = "200 OK" if method in (b"GET", b"HEAD") else "405 Method Not Allowed"
            if method == b"HEAD":
                body = b""
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
