"""FedBuff (Nguyen et al., 2022) as FTTE's asynchronous baseline: the same buffer, no variance term.

Dense payload: the whole model in float32 goes out and comes back, which is what FTTE's subset
and int8 updates are measured against (``docs/ftte.md``, section 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyfed.host.strategies.base import BufferedStrategy, sample_counts, store_float, store_int
from tinyfed.host.updates import Update


@dataclass(frozen=True)
class FedBuffParams:
    """K = ``buffer_size``, eta_g = ``server_lr``; the staleness discount is fixed at 1/sqrt(1 + tau)."""

    buffer_size: int = 10
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        store_int(self, "buffer_size", 1)
        store_float(self, "server_lr", low=0.0, low_open=True)


class FedBuff(BufferedStrategy):
    """w_i = n_i / sqrt(1 + tau_i); step = eta_g * sum(w_i * delta_i) / sum(w_i)."""

    name = "fedbuff"
    listing_order = 1
    payload = "dense"
    Params = FedBuffParams

    def weights(self, updates: list[Update], staleness: np.ndarray) -> np.ndarray:
        return sample_counts(updates) / np.sqrt(1.0 + staleness.astype(np.float64))
