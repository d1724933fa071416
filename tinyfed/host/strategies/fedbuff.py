"""FedBuff (Nguyen et al., 2022) as FTTE's asynchronous baseline: the same buffer, no variance term.

Dense payload by default: the whole model in float32 goes out and comes back, which is what FTTE's
subset and int8 updates are measured against (``docs/ftte.md``, section 5). With ``payload =
"subset"`` (the variant ``fedbuff@subset``) it trains FTTE's w* and is FTTE with gamma = 0.
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
from tinyfed.host.strategies.ftte import staleness_factor
from tinyfed.host.updates import Update


@dataclass(frozen=True)
class FedBuffParams(ServerParams):
    """K = ``buffer_size``, eta_g = ``server_lr``, a = ``staleness_exponent`` (0.5: the paper's
    1/sqrt(1 + tau)); ``concurrency`` as FTTE's. The shared knobs are :class:`ServerParams`'."""

    buffer_size: int = 10
    server_lr: float = 1.0
    staleness_exponent: float = 0.5
    concurrency: int | None = None

    def __post_init__(self) -> None:
        store_int(self, "buffer_size", 1)
        store_float(self, "staleness_exponent", low=0.0)
        store_optional_int(self, "concurrency", 1)
        self.check_server()


class FedBuff(BufferedStrategy):
    """w_i = n_i * (1 + tau_i)^-a (a = 0.5: n_i / sqrt(1 + tau_i)); step = eta_g * sum(w_i * delta_i) / sum(w_i)."""

    name = "fedbuff"
    listing_order = 1
    default_payload = "dense"
    Params = FedBuffParams

    def weights(self, updates: list[Update], staleness: np.ndarray) -> np.ndarray:
        a = self.params.staleness_exponent
        if a == 0.5:  # the paper's form, computed as it always was (the same bits as before the exponent)
            return sample_counts(updates) / np.sqrt(1.0 + staleness.astype(np.float64))
        return sample_counts(updates) * staleness_factor(staleness, a)
