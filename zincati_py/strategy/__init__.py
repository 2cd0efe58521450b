"""Reboot strategies: one module each, built from ``updates.strategy``.

Several names compose: every listed strategy must allow, local gates first, remote last.
"""

from __future__ import annotations

import importlib

from zincati_py.strategy.base import Strategy, StrategyContext, Verdict

__all__ = ["Strategy", "StrategyContext", "Verdict", "build"]

# Imported lazily so an agent with the default strategy never loads the HTTP client.
_CLASSES = {
    "immediate": "zincati_py.strategy.immediate:Immediate",
    "periodic": "zincati_py.strategy.periodic:Periodic",
    "fleet_lock": "zincati_py.strategy.fleet_lock:FleetLock",
    "file": "zincati_py.strategy.file:FileGate",
    "marker_file": "zincati_py.strategy.marker_file:MarkerFile",
}


def strategy_class(name: str) -> type[Strategy]:
    module, _, attr = _CLASSES[name].partition(":")
    cls: type[Strategy] = getattr(importlib.import_module(module), attr)
    return cls


def build(ctx: StrategyContext) -> Strategy:
    """The strategy for ``ctx.config.updates.strategy`` (a composition if several)."""
    strategies = [strategy_class(name)(ctx) for name in ctx.config.updates.strategy]
    if len(strategies) == 1:
        return strategies[0]
    from zincati_py.strategy.composite import Composite

    return Composite(ctx, strategies)
