"""FTTE's server step: a buffer of K updates weighted by sample count, staleness and update statistics.

Old updates were computed against a model that has moved on, so they count for less
(``docs/ftte.md``, section 4). The paper also weights by the variance of each update; measured
on tinyfed's fleets, that variance is the update's squared size (var_i ~ ||delta_i||^2 / d) and
follows the device's local loss, so it mostly takes weight from the devices the model fits worst
("How FTTE's weighting was chosen" in ``docs/strategies.md``). A floor (0.5 by default) keeps
it from taking more than half an update's weight. Its exponent, the floor, and a weight by
agreement with the buffer's mean direction are parameters. Only w* travels: the payload is the
trainable subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyfed.host.strategies.base import (
    BufferedStrategy,
    ServerParams,
    StrategyParamError,
    nested_size,
    sample_counts,
    store_float,
    store_int,
    store_optional_int,
)
from tinyfed.host.updates import Update


@dataclass(frozen=True)
class FTTEParams(ServerParams):
    """K = ``buffer_size``, a = ``staleness_exponent``, gamma = ``variance_gamma``, eta_g = ``server_lr``;
    ``concurrency``: most devices training at once (None: every idle one). The shared knobs
    (payload, server optimizer) are :class:`ServerParams`'.

    ``variance_floor`` (g_min) is the least the variance factor may take before its exponent;
    ``agreement_exponent`` (beta) weights each update by max(0, cos(delta_i, buffer mean))^beta.
    The defaults (gamma 1, floor 0.5, no agreement term) are the best-measured member of the family
    searched at the study's horizon (``docs/strategies.md``, "How FTTE's weighting was
    chosen"); ``variance_floor = 0`` is the weighting without a floor, and ``variance_gamma = 0,
    agreement_exponent = 0, staleness_exponent = 0.5`` is FedBuff's.
    """

    buffer_size: int = 10
    staleness_exponent: float = 0.5
    variance_gamma: float = 1.0
    variance_floor: float = 0.5
    agreement_exponent: float = 0.0
    server_lr: float = 1.0
    concurrency: int | None = None

    def __post_init__(self) -> None:
        store_int(self, "buffer_size", 1)
        store_float(self, "staleness_exponent", low=0.0)
        store_float(self, "variance_gamma", low=0.0)
        store_float(self, "variance_floor", low=0.0)
        if self.variance_floor > 1.0:
            raise StrategyParamError(f"variance_floor = {self.variance_floor!r} is out of range",
                                     fix="use a number from 0 (no floor) to 1 (no variance term)")
        store_float(self, "agreement_exponent", low=0.0)
        store_optional_int(self, "concurrency", 1)
        self.check_server()


def staleness_factor(staleness: np.ndarray, exponent: float) -> np.ndarray:
    """s(tau) = (1 + tau)^(-a)."""
    return (1.0 + staleness.astype(np.float64)) ** (-exponent)


def variance_factor(variances: np.ndarray, exponent: float, floor: float = 0.0) -> np.ndarray:
    """g(var) = max(g_min, min(1, median / var))^gamma; var = 0 gives 1 (so an all-zero buffer is all ones).

    The median is over the updates being aggregated, so at least one update (the one at the
    median) keeps g = 1 and the weights never all vanish."""
    var = variances.astype(np.float64)
    median = float(np.median(var))
    ratio = np.ones_like(var)
    positive = var > 0
    ratio[positive] = np.minimum(1.0, median / var[positive])
    return np.maximum(ratio, floor) ** exponent


def agreement_factor(deltas: np.ndarray, weights: np.ndarray, exponent: float) -> np.ndarray:
    """max(0, cos(delta_i, m))^beta, m = the buffer's mean delta under ``weights``.

    An update pointing against the buffer's consensus gets nothing, one along it its full weight.
    When m = 0 (every delta zero, or they cancel exactly) there is no direction to agree with and
    every factor is 1. Otherwise sum_i w_i cos_i ||delta_i|| = ||m|| * sum(w) > 0, so at least one
    update keeps a positive weight."""
    if exponent == 0.0:
        return np.ones(len(deltas))
    mean = weights @ deltas / weights.sum()
    mean_norm = float(np.linalg.norm(mean))
    if mean_norm == 0.0:
        return np.ones(len(deltas))
    norms = np.linalg.norm(deltas, axis=1)
    cos = np.zeros(len(deltas))
    nonzero = norms > 0
    cos[nonzero] = (deltas[nonzero] @ mean) / (norms[nonzero] * mean_norm)
    return np.maximum(cos, 0.0) ** exponent


class FTTE(BufferedStrategy):
    """w_i = n_i * s(tau_i) * g(var_i) * c_i; step = eta_g * sum(w_i * delta_i) / sum(w_i)."""

    name = "ftte"
    listing_order = 0
    default_payload = "subset"
    Params = FTTEParams

    def weights(self, updates: list[Update], staleness: np.ndarray) -> np.ndarray:
        n = sample_counts(updates)
        var = np.array([u.variance for u in updates], dtype=np.float64)
        p = self.params
        w = n * staleness_factor(staleness, p.staleness_exponent) * variance_factor(var, p.variance_gamma,
                                                                                    p.variance_floor)
        if p.agreement_exponent > 0.0:
            size = self.vector_size if self.vector_size is not None else nested_size(updates)
            deltas = np.stack([self._full(u, size) for u in updates])
            w = w * agreement_factor(deltas, w, p.agreement_exponent)
        return w

    @staticmethod
    def _full(u: Update, size: int) -> np.ndarray:
        """The update's delta in the global vector's ``size`` positions (nested subsets: zeros where it
        carries nothing)."""
        if u.index is None:
            return u.delta.astype(np.float64)
        full = np.zeros(size, np.float64)
        full[u.index] = u.delta
        return full
