"""Robust aggregation rules: what a step does with a buffer's deltas beyond weighting them.

Every strategy computes its weights first (FTTE's n * staleness * variance, FedBuff's, FedAvg's
n); a rule then decides how the weighted deltas become the pseudo-gradient:

- ``none``: the weighted mean (the strategies' own step, bit for bit);
- ``norm-quantile``: each delta is scaled down to the q-quantile of the norms of the last W
  accepted updates across the fleet (this buffer's included), then weighted as before;
- ``median``: the weighted coordinate-wise median (each coordinate's value where the cumulative
  weight crosses half; the two middle values averaged on an exact tie);
- ``trimmed-mean``: the weighted coordinate-wise trimmed mean (beta of the weight trimmed from each
  end of every coordinate, the rest averaged by weight).

Weighted forms keep the weights' meaning: with equal weights they are the textbook median and
trimmed mean; a stale or high-variance update counts for less in where the median falls as it
does in the mean. ``docs/strategies.md`` ("Robust aggregation") gives what each rule costs and how
many malicious boards it tolerates. Pure and deterministic, as strategies are.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from tinyfed.host.updates import Update

ROBUST_RULES = ("none", "norm-quantile", "median", "trimmed-mean")
DEFAULT_ROBUST_QUANTILE = 0.5
DEFAULT_ROBUST_WINDOW = 100
DEFAULT_TRIM_FRACTION = 0.1

#: Relative slack on "the cumulative weight reaches half" (float sums of equal weights are not exact).
_TIE = 1e-9


def dense_matrix(updates: list[Update], size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The buffer's deltas as a (K, size) float64 matrix, and which values each update carries (None:
    every update carries every value; nested subsets leave the rest 0 and unmarked)."""
    values = np.zeros((len(updates), size), np.float64)
    if all(u.index is None for u in updates):
        for i, u in enumerate(updates):
            values[i] = u.delta
        return values, None
    carried = np.zeros((len(updates), size), bool)
    for i, u in enumerate(updates):
        where = slice(None) if u.index is None else u.index
        values[i, where] = u.delta
        carried[i, where] = True
    return values, carried


def _sorted_columns(values: np.ndarray, weights: np.ndarray,
                    carried: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each column's values sorted, their weights in the same order (0 where not carried), and the
    sort order (rows of the original matrix)."""
    w = np.broadcast_to(weights[:, None], values.shape).astype(np.float64)
    if carried is not None:
        w = np.where(carried, w, 0.0)
    order = np.argsort(values, axis=0, kind="stable")
    return np.take_along_axis(values, order, 0), np.take_along_axis(w, order, 0), order


def weighted_median(values: np.ndarray, weights: np.ndarray,
                    carried: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the value where the cumulative weight (values in ascending order) first reaches half
    the column's weight, averaged with the one where it first passes half (they differ on an exact tie:
    equal weights and an even count give the textbook median). A column no update carries is 0.

    Also returns which entries the median took its value from (K, size) bool, for the event."""
    v, w, order = _sorted_columns(values, weights, carried)
    cum = np.cumsum(w, axis=0)
    total = cum[-1]
    half = total / 2.0
    k = len(values)
    lower = np.minimum((cum < half * (1 - _TIE)).sum(axis=0), k - 1)
    upper = np.minimum((cum <= half * (1 + _TIE)).sum(axis=0), k - 1)
    cols = np.arange(values.shape[1])
    out = (v[lower, cols] + v[upper, cols]) / 2.0
    out[total <= 0] = 0.0
    chosen = np.zeros(values.shape, bool)
    chosen[order[lower, cols], cols] = True
    chosen[order[upper, cols], cols] = True
    chosen[:, total <= 0] = False
    return out, chosen


def weighted_trimmed_mean(values: np.ndarray, weights: np.ndarray, beta: float,
                          carried: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the weighted mean after a fraction ``beta`` (< 0.5) of the column's weight is cut
    from each end of its values in ascending order; an entry straddling a cut keeps the part inside.
    Equal weights and an integer beta * K drop the beta * K lowest and highest values, as the textbook
    trimmed mean does. A column no update carries is 0.

    Also returns the fraction of each entry's weight that was trimmed (K, size), for the event."""
    v, w, order = _sorted_columns(values, weights, carried)
    cum = np.cumsum(w, axis=0)
    before = cum - w
    total = cum[-1]
    cut = beta * total
    kept = np.clip(np.minimum(cum, total - cut) - np.maximum(before, cut), 0.0, None)
    mass = kept.sum(axis=0)
    out = np.zeros(values.shape[1])
    ok = mass > 0
    out[ok] = (kept * v).sum(axis=0)[ok] / mass[ok]
    frac = np.zeros(values.shape)
    positive = w > 0
    frac[positive] = 1.0 - kept[positive] / w[positive]
    trimmed = np.zeros(values.shape)
    np.put_along_axis(trimmed, order, frac, 0)
    return out, trimmed


class NormWindow:
    """The pre-clip norms of the last ``size`` accepted updates across the fleet, oldest first.

    It starts empty. A step adds its own buffer's norms before taking the quantile, so the first
    step is bounded by the q-quantile of its own K norms and every later one by the window's. The
    norms are recorded before clipping: recording clipped ones would let the bound only fall."""

    def __init__(self, size: int) -> None:
        self.norms: deque[float] = deque(maxlen=size)

    def bound(self, new_norms: np.ndarray, quantile: float) -> float:
        """Record ``new_norms`` and return the q-quantile of the window (numpy's linear interpolation)."""
        self.norms.extend(float(x) for x in new_norms)
        return float(np.quantile(np.fromiter(self.norms, np.float64), quantile))

    def state(self) -> list[float]:
        return list(self.norms)

    def load(self, norms: list[float]) -> None:
        self.norms.clear()
        self.norms.extend(float(x) for x in norms)


class RobustRule:
    """One strategy's rule (``params.robust`` and its knobs) and the state it keeps across steps.

    :meth:`combine` turns a buffer and its weights into the pseudo-gradient (the step at rate 1) and a
    report of what the rule did (the aggregation event's ``robust``)."""

    def __init__(self, rule: str, quantile: float, window: int, trim_fraction: float) -> None:
        self.rule, self.quantile, self.trim_fraction = rule, quantile, trim_fraction
        self.window = NormWindow(window) if rule == "norm-quantile" else None

    def combine(self, updates: list[Update], weights: np.ndarray, size: int,
                weighted_mean: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """The rule's float32 pseudo-gradient of ``updates`` under ``weights`` (a vector of ``size``
        values) and its report. ``weighted_mean(updates, weights)`` is the strategies' weighted mean."""
        if self.rule == "norm-quantile":
            assert self.window is not None
            norms = np.array([float(np.linalg.norm(u.delta.astype(np.float64))) for u in updates])
            bound = self.window.bound(norms, self.quantile)
            clipped = []
            scaled = []
            for u, norm in zip(updates, norms, strict=True):
                if norm > bound > 0 or (bound == 0 and norm > 0):
                    clipped.append(u.task_id)
                    factor = bound / norm
                    u = Update(u.device_id, u.task_id, u.base_version, u.n, u.loss, u.variance,
                               u.delta.astype(np.float64) * factor, u.wire_bytes, u.index)
                scaled.append(u)
            report = {"rule": self.rule, "quantile": self.quantile, "bound": round(bound, 6),
                      "window": len(self.window.norms), "clipped": clipped,
                      "norms": [round(float(x), 6) for x in norms]}
            return weighted_mean(scaled, weights), report
        values, carried = dense_matrix(updates, size)
        if self.rule == "median":
            out, chosen = weighted_median(values, weights, carried)
            used = chosen.mean(axis=1) if carried is None else chosen.sum(axis=1) / np.maximum(carried.sum(axis=1), 1)
            report = {"rule": self.rule, "chosen": [round(float(x), 4) for x in used]}
        else:
            out, trimmed = weighted_trimmed_mean(values, weights, self.trim_fraction, carried)
            cut = trimmed.mean(axis=1) if carried is None else \
                (trimmed * carried).sum(axis=1) / np.maximum(carried.sum(axis=1), 1)
            report = {"rule": self.rule, "trim_fraction": self.trim_fraction,
                      "trimmed": [round(float(x), 4) for x in cut]}
        return out.astype(np.float32), report

    def state(self) -> dict[str, Any]:
        return {"rule": self.rule, "norms": self.window.state() if self.window is not None else []}

    def load(self, state: dict[str, Any] | None) -> None:
        if self.window is not None and state is not None:
            self.window.load(state.get("norms", []))
