"""Aggregation strategies: one interface (``Strategy``), one module per strategy, one registry.

To add a strategy, subclass ``Strategy`` (or ``BufferedStrategy``) in a new module of this
package: every concrete subclass with a ``name`` found here is in ``STRATEGIES``
(``docs/strategies.md`` has the details).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from tinyfed.host.strategies.base import (
    Aggregate,
    BufferedStrategy,
    Strategy,
    StrategyError,
    StrategyParamError,
)
from tinyfed.host.strategies.fedavg import FedAvg, FedAvgParams
from tinyfed.host.strategies.fedbuff import FedBuff, FedBuffParams
from tinyfed.host.strategies.ftte import FTTE, FTTEParams


def _discover() -> dict[str, type[Strategy]]:
    """Every concrete ``Strategy`` subclass defined in a module of this package, by name."""
    found: dict[str, type[Strategy]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in vars(module).values():
            if (inspect.isclass(cls) and issubclass(cls, Strategy) and cls.__module__ == module.__name__
                    and not inspect.isabstract(cls) and "name" in vars(cls)):
                found[cls.name] = cls
    return {cls.name: cls for cls in sorted(found.values(), key=lambda c: (c.listing_order, c.name))}


STRATEGIES: dict[str, type[Strategy]] = _discover()


def get_strategy(name: str, *, fleet_size: int | None = None, ignore_extra: bool = False, **params: Any) -> Strategy:
    """Build a strategy by name; ``params`` are the fields of its ``Params`` dataclass.

    An unknown parameter is an error (a typo would otherwise run with a default silently), unless
    ``ignore_extra``: then a config table holding every strategy's knobs can be passed whole."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise StrategyError(f"unknown strategy {name!r}", fix=f"use one of: {', '.join(sorted(STRATEGIES))}")
    known = set(cls.Params.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if ignore_extra:
        params = {k: v for k, v in params.items() if k in known}
    elif unknown:
        raise StrategyError(f"{name} has no parameter(s) {', '.join(unknown)}",
                            fix=f"its parameters are: {', '.join(sorted(known))}")
    return cls(cls.Params(**params), fleet_size=fleet_size)


__all__ = [
    "FTTE",
    "STRATEGIES",
    "Aggregate",
    "BufferedStrategy",
    "FTTEParams",
    "FedAvg",
    "FedAvgParams",
    "FedBuff",
    "FedBuffParams",
    "Strategy",
    "StrategyError",
    "StrategyParamError",
    "get_strategy",
]
