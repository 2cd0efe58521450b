"""The agent tests' sandboxed nodes (tests/agent/conftest.py), reused for the health gate."""

from __future__ import annotations

from tests.agent.conftest import fleet_factory, node, node_factory

__all__ = ["fleet_factory", "node", "node_factory"]
