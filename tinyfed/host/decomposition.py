"""The headline of a study taken apart: task cost x asynchrony x aggregation.

"FTTE reaches the target in x of FedAvg's time" mixes three effects, each isolated by a pair of
variants that differ in one thing only (time to target T of each label):

- task cost = T(fedbuff) / T(fedbuff@subset): the same asynchronous strategy on the whole model
  (float32 updates, every layer trained) and on w* (int8 updates behind the frozen fragment);
- asynchrony = T(fedavg@subset+overselect) / T(fedbuff@subset): the same w* and the same plain
  weighting, a synchronous round (with 2x over-selection, as production FL systems run it) against
  a buffer; also without over-selection, T(fedavg@subset) / T(fedbuff@subset);
- aggregation = T(fedbuff@subset) / T(ftte): the same payload and asynchrony, FTTE's staleness and
  variance weighting against FedBuff's.

The headline is T(fedavg) / T(ftte) (dense FedAvg, no over-selection). Their product with the
asynchrony factor taken without over-selection differs from the headline only by the interaction
T(fedavg)/T(fedavg@subset) over T(fedbuff)/T(fedbuff@subset): how much more a cheap task saves a
synchronous round (which waits for its slowest device) than a buffer. ``interaction`` reports it.
A factor is None when a variant is missing from the results or did not reach the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Label spellings of each role (a strategy's default payload may be written out or left implicit).
ROLES: dict[str, tuple[str, ...]] = {
    "ftte": ("ftte", "ftte@subset"),
    "fedbuff_subset": ("fedbuff@subset",),
    "fedbuff_dense": ("fedbuff", "fedbuff@dense"),
    "fedavg_subset_overselect": ("fedavg@subset+overselect",),
    "fedavg_subset": ("fedavg@subset",),
    "fedavg_dense": ("fedavg", "fedavg@dense"),
}

#: The factors in the order they are printed, with what each divides.
FACTORS: tuple[tuple[str, str, str], ...] = (
    ("task_cost", "fedbuff_dense", "fedbuff_subset"),
    ("asynchrony", "fedavg_subset_overselect", "fedbuff_subset"),
    ("asynchrony_no_overselect", "fedavg_subset", "fedbuff_subset"),
    ("aggregation", "fedbuff_subset", "ftte"),
    ("task_cost_synchronous", "fedavg_dense", "fedavg_subset"),
    ("headline", "fedavg_dense", "ftte"),
)


def time_to_target(result: Any) -> float | None:
    """A result's time to target (a SimResult, or its ``to_dict()``); None when it was not reached."""
    if isinstance(result, Mapping):
        t = result.get("time_to_target_s")
        reached = result.get("reached_target", t is not None)
    else:
        t, reached = getattr(result, "time_to_target_s", None), getattr(result, "reached_target", True)
    return float(t) if t is not None and reached else None


def role_times(results: Mapping[str, Any]) -> dict[str, float | None]:
    """Each role's time to target, from the first of its spellings present in ``results``."""
    out: dict[str, float | None] = {}
    for role, labels in ROLES.items():
        label = next((x for x in labels if x in results), None)
        out[role] = time_to_target(results[label]) if label is not None else None
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def _mul(*xs: float | None) -> float | None:
    out = 1.0
    for x in xs:
        if x is None:
            return None
        out *= x
    return out


def decomposition(results: Mapping[str, Any]) -> dict[str, float | None]:
    """The factors of the headline from ``results`` keyed by variant label (SimResults or their dicts).

    ``product`` = task cost x asynchrony (with over-selection) x aggregation;
    ``product_no_overselect`` uses the asynchrony without over-selection, and
    ``interaction`` = headline / product_no_overselect (1.0 when task cost is the same factor for a
    synchronous round and for a buffer)."""
    t = role_times(results)
    out: dict[str, float | None] = {name: _div(t[num], t[den]) for name, num, den in FACTORS}
    out["product"] = _mul(out["task_cost"], out["asynchrony"], out["aggregation"])
    out["product_no_overselect"] = _mul(out["task_cost"], out["asynchrony_no_overselect"], out["aggregation"])
    out["interaction"] = _div(out["headline"], out["product_no_overselect"])
    return out


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}x"


def format_decomposition(dec: Mapping[str, float | None]) -> str:
    """Two lines under the study's table: the headline and its factors (``-`` where a variant is missing)."""
    return (f"decomposition of the headline T(fedavg)/T(ftte) = {_x(dec['headline'])}: "
            f"task cost T(fedbuff)/T(fedbuff@subset) {_x(dec['task_cost'])} "
            f"(synchronous: T(fedavg)/T(fedavg@subset) {_x(dec['task_cost_synchronous'])}), "
            f"asynchrony T(fedavg@subset+overselect)/T(fedbuff@subset) {_x(dec['asynchrony'])} "
            f"(no over-selection {_x(dec['asynchrony_no_overselect'])}), "
            f"aggregation T(fedbuff@subset)/T(ftte) {_x(dec['aggregation'])}\n"
            f"product {_x(dec['product'])} (no over-selection {_x(dec['product_no_overselect'])}; "
            f"headline / that = {_x(dec['interaction'])}, the task cost's interaction with the synchronous round)")
