"""Aggregation strategies: one interface (``Strategy``), one module per strategy, one registry.

To add a strategy, subclass ``Strategy`` (or ``BufferedStrategy``) in a new module of this
package: every concrete subclass with a ``name`` found here is in ``STRATEGIES``
(``docs/strategies.md`` has the details).

A *variant* is a strategy with a payload or modifier named in its label,
``NAME[@subset|@dense][+overselect]`` (``fedbuff@subset``, ``fedavg@subset+overselect``):
:func:`parse_variant` reads a label, :func:`build_variant` builds it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import pkgutil
from dataclasses import dataclass
from typing import Any

from tinyfed.host.strategies.base import (
    PAYLOADS,
    SERVER_OPTIMIZERS,
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


#: The factor ``+overselect`` over-selects by unless told otherwise (a study's ``overselect_factor``).
DEFAULT_OVERSELECT_FACTOR = 2.0
OVERSELECT = "overselect"


@dataclass(frozen=True)
class Variant:
    """A strategy label read: the registry ``name``, the ``payload`` it names (None: the strategy's
    default), whether it over-selects, and the ``label`` itself (what results are keyed by)."""

    name: str
    payload: str | None
    overselect: bool
    label: str


def parse_variant(text: str) -> Variant:
    """``NAME[@subset|@dense][+overselect]`` as a :class:`Variant`; a StrategyError with a fix otherwise.

    ``+overselect`` needs a strategy with an ``overselect_factor`` (FedAvg)."""
    label = str(text).strip()
    spelling = "write NAME[@subset|@dense][+overselect], e.g. fedbuff@subset or fedavg@subset+overselect"
    head, *mods = label.split("+")
    name, at, payload = head.partition("@")
    if not name:
        raise StrategyError(f"strategy label {text!r} names no strategy", fix=spelling)
    cls = STRATEGIES.get(name)
    if cls is None:
        close = next(iter(difflib.get_close_matches(name, list(STRATEGIES), n=1, cutoff=0.6)), None)
        known = ", ".join(STRATEGIES)
        where = "" if name == label else f" (in label '{label}')"
        raise StrategyError(f"'{name}'{where} is not a strategy; known strategies: {known}",
                            fix=f"did you mean '{close}'?" if close else f"use one of: {known}")
    if at and payload not in PAYLOADS:
        raise StrategyError(f"strategy label {label!r} names payload {payload!r}",
                            fix=f"use @subset (w* only, int8 updates) or @dense (the whole model); {spelling}")
    bad = [m for m in mods if m != OVERSELECT]
    if bad or len(mods) > 1:
        what = f"the unknown modifier +{bad[0]}" if bad else f"+{OVERSELECT} more than once"
        raise StrategyError(f"strategy label {label!r} has {what}",
                            fix=f"the one modifier is +{OVERSELECT}, given once after the payload; {spelling}")
    overselect = bool(mods)
    if overselect and "overselect_factor" not in cls.Params.__dataclass_fields__:
        takes = [n for n, c in STRATEGIES.items() if "overselect_factor" in c.Params.__dataclass_fields__]
        raise StrategyError(f"{name} does not sample rounds, so {label!r} cannot over-select",
                            fix=f"+{OVERSELECT} is for {', '.join(takes)}; drop it from {name}")
    return Variant(name, payload or None, overselect, label)


def build_variant(variant: Variant | str, *, fleet_size: int | None = None,
                  overselect_factor: float = DEFAULT_OVERSELECT_FACTOR, ignore_extra: bool = True,
                  **params: Any) -> Strategy:
    """The strategy of ``variant`` (a :class:`Variant` or a label) with ``params``; it reports under the
    variant's label. The label's payload takes precedence over a ``payload`` in ``params``.
    ``overselect_factor`` is the factor a ``+overselect`` label samples by (a config table's
    ``overselect_factor`` lands here); a label without it keeps the strategy's own (1: none)."""
    v = parse_variant(variant) if isinstance(variant, str) else variant
    given = dict(params)
    if v.payload is not None:
        given["payload"] = v.payload
    if v.overselect:
        if not (isinstance(overselect_factor, (int, float)) and math.isfinite(overselect_factor)
                and overselect_factor >= 1.0):
            raise StrategyParamError(f"{v.label} over-selects by overselect_factor = {overselect_factor!r}",
                                     fix="give an overselect_factor >= 1 (e.g. 2.0)")
        given["overselect_factor"] = float(overselect_factor)
    strategy = get_strategy(v.name, fleet_size=fleet_size, ignore_extra=ignore_extra, **given)
    strategy.label = v.label
    return strategy


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
    "DEFAULT_OVERSELECT_FACTOR",
    "PAYLOADS",
    "SERVER_OPTIMIZERS",
    "Strategy",
    "StrategyError",
    "StrategyParamError",
    "Variant",
    "build_variant",
    "get_strategy",
    "parse_variant",
]
