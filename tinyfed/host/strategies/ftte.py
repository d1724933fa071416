"""FTTE's server step: a buffer of K updates weighted by sample count, staleness and variance.

Old updates were computed against a model that has moved on, and noisy ones (high variance of
the delta) tend to come from devices whose data disagrees with the fleet's; both count for less
(``docs/ftte.md``, section 4). Only w* travels: the payload is the trainable subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyfed.host.strategies.base import (
    BufferedStrategy,
    ServerParams,
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
    (payload, server optimizer) are :class:`ServerParams`'."""

    buffer_size: int = 10
    staleness_exponent: float = 0.5
    variance_gamma: float = 1.0
    server_lr: float = 1.0
    concurrency: int | None = None

    def __post_init__(self) -> None:
        store_int(self, "buffer_size", 1)
        store_float(self, "staleness_exponent", low=0.0)
        store_float(self, "variance_gamma", low=0.0)
        store_optional_int(self, "concurrency", 1)
        self.check_server()


def staleness_factor(staleness: np.ndarray, exponent: float) -> np.ndarray:
    """s(tau) = (1 + tau)^(-a)."""
    return (1.0 + staleness.astype(np.float64)) ** (-exponent)


def variance_factor(variances: np.ndarray, exponent: float) -> np.ndarray:
    """g(var) = min(1, median / var)^gamma; var = 0 gives 1 (so an all-zero buffer is all ones).

    The median is over the updates being aggregated, so at least one update (the one at the
    median) keeps g = 1 and the weights never all vanish."""
    var = variances.astype(np.float64)
    median = float(np.median(var))
    ratio = np.ones_like(var)
    positive = var > 0
    ratio[positive] = np.minimum(1.0, median / var[positive])
    return ratio**exponent


class FTTE(BufferedStrategy):
    """w_i = n_i * s(tau_i) * g(var_i); step = eta_g * sum(w_i * delta_i) / sum(w_i)."""

    name = "ftte"
    listing_order = 0
    default_payload = "subset"
    Params = FTTEParams

    def weights(self, updates: list[Update], staleness: np.ndarray) -> np.ndarray:
        n = sample_counts(updates)
        var = np.array([u.variance for u in updates], dtype=np.float64)
        p = self.params
        return n * staleness_factor(staleness, p.staleness_exponent) * variance_factor(var, p.variance_gamma)
