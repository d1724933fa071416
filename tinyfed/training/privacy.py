"""On-device differential privacy (``docs/privacy.md``): the mechanism every device runs after
local training, in numpy for the ``sim://`` twin and the simulator, and the host's accountant.

Mechanism (the firmware's ``privatize_update`` in ``firmware/src/train.c``): the float32 delta of
the trainable values is scaled to L2 norm at most C, then every coordinate gets i.i.d. Gaussian
noise of standard deviation sigma * C; the int8 quantization comes after, from the noised delta.

Guarantee the accountant reports: per device, two local datasets of that device are adjacent
whatever they hold (same size: the sample count is fixed by the host, so it is public). The
clipped delta has norm <= C for every dataset, so two of them differ by at most 2C: one
participation is the Gaussian mechanism with L2 sensitivity 2C and noise std sigma * C, i.e. noise
multiplier sigma / 2 relative to the sensitivity. A device's k participations compose (the
schedule is the host's and not secret: no amplification by sampling is claimed), and everything
after the noise (int8 rounding, weighting, aggregation, the published model) is post-processing.
The run's epsilon is the largest over devices, at the run's delta.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tinyfed.errors import TinyfedError


@dataclass(frozen=True)
class DPConfig:
    """A run's differential privacy: clip norm C, noise multiplier sigma, delta, optional budget."""

    clip: float
    noise: float
    delta: float = 1e-5
    epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise TinyfedError(f"DP clip norm {self.clip!r} must be a finite number > 0", fix="give --dp-clip C > 0")
        if not (math.isfinite(self.noise) and self.noise > 0):
            raise TinyfedError(f"DP noise multiplier {self.noise!r} must be a finite number > 0",
                               fix="give --dp-noise SIGMA > 0 (noise std is SIGMA * C)")
        if not 0 < self.delta < 1:
            raise TinyfedError(f"DP delta {self.delta!r} must lie strictly between 0 and 1",
                               fix="give --dp-delta below 1 / (samples per device), e.g. 1e-5")
        if self.epsilon_budget is not None and not (math.isfinite(self.epsilon_budget) and self.epsilon_budget > 0):
            raise TinyfedError(f"DP epsilon budget {self.epsilon_budget!r} must be a finite number > 0",
                               fix="give --dp-epsilon-budget E > 0, or leave it out")

    @property
    def noise_multiplier(self) -> float:
        """Noise std over the L2 sensitivity (2C under replacement of a device's whole dataset)."""
        return self.noise / 2.0


def expected_norm(config: DPConfig, values: int) -> float:
    """A bound the L2 norm of a noised update of ``values`` values stays under in practice:
    C * sqrt(1 + values * sigma^2) (clipped signal and the noise's root mean square), 20% over for
    the noise's spread (its norm concentrates within a few percent at these sizes) and int8 rounding."""
    return 1.2 * config.clip * math.sqrt(1.0 + values * config.noise ** 2)


def check_norm_bound(config: DPConfig | None, norm_bound: float | None, values: int) -> None:
    """Refuse a run whose update-norm check would reject the noised updates themselves."""
    if config is None or norm_bound is None:
        return
    need = expected_norm(config, values)
    if norm_bound < need:
        raise TinyfedError(
            f"the update norm bound {norm_bound:g} would reject the boards' noised updates: with clip {config.clip:g} "
            f"and noise {config.noise:g} over {values:,} values their norm is about {need / 1.2:.3g}",
            fix=f"raise the norm bound to at least {need:.3g} ([checks] norm_bound, --norm-bound), or lower "
                "--dp-clip / --dp-noise")


#: The firmware clips to C * (1 - 2^-16): its float32 norm is off by far less, so no clipped delta
#: exceeds C (``DP_CLIP_MARGIN`` in firmware/src/train.c).
CLIP_MARGIN = 1.0 - 2.0 ** -16


def privatize(delta: np.ndarray, clip: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """The board's mechanism on a float32 delta: clip to L2 norm ``clip`` (times CLIP_MARGIN, as the
    firmware does; the norm here in float64), then add N(0, (noise * clip)^2) per coordinate, in float32."""
    d = np.asarray(delta, np.float32).ravel()
    norm = math.sqrt(float(np.dot(d.astype(np.float64), d.astype(np.float64))))
    target = clip * CLIP_MARGIN
    factor = np.float32(target / norm) if norm > target else np.float32(1.0)
    std = np.float32(noise) * np.float32(clip)
    z = rng.standard_normal(d.size, dtype=np.float32) if std > 0 else np.zeros(d.size, np.float32)
    return (d * factor + std * z).astype(np.float32)


def noised_values(start: np.ndarray, values: np.ndarray, clip: float, noise: float,
                  rng: np.random.Generator) -> np.ndarray:
    """w* after the mechanism, as the board stores it: start + privatized(values - start)."""
    start = np.asarray(start, np.float32)
    d = (np.asarray(values, np.float32) - start).astype(np.float32)
    return (start + privatize(d, clip, noise, rng)).astype(np.float32)


class PrivacyAccountant:
    """Participations per device and the epsilon they spend, from Google's ``dp-accounting``.

    A device's k Gaussian releases (noise multiplier z = sigma / 2, see the module docstring)
    compose exactly to one Gaussian release of multiplier z / sqrt(k) (Gaussian DP: Dong, Roth and
    Su 2022, Corollary 3.3; dp-accounting's PLD accountant composes Gaussians the same way), whose
    epsilon at delta is the library's exact analytic Gaussian (``gaussian_mechanism``, Balle and
    Wang 2018, Theorem 8): the tightest (epsilon, delta) of this mechanism, without the PLD
    accountant's discretization (it agrees to 1e-8 and takes seconds per call at small z).
    Counts are taken when a task is dispatched (the board trains and sends whatever the host does
    with it), which over-counts a task that is later lost: never under-counts."""

    def __init__(self, config: DPConfig, counts: Mapping[str, int] | None = None) -> None:
        self.config = config
        self.counts: dict[str, int] = {str(k): int(v) for k, v in (counts or {}).items()}
        self._eps: dict[int, float] = {0: 0.0}

    def epsilon_of(self, participations: int) -> float:
        """Epsilon at the run's delta of one device after ``participations`` releases."""
        k = int(participations)
        if k not in self._eps:
            from dp_accounting import gaussian_mechanism

            z = self.config.noise_multiplier / math.sqrt(k)
            self._eps[k] = float(gaussian_mechanism.get_epsilon_gaussian(z, self.config.delta))
        return self._eps[k]

    @property
    def max_participations(self) -> int:
        return max(self.counts.values(), default=0)

    @property
    def epsilon(self) -> float:
        """The run's epsilon: the largest over devices."""
        return self.epsilon_of(self.max_participations)

    def allows(self, device: str) -> bool:
        """Whether ``device`` may take one more task within the budget (always, without one)."""
        budget = self.config.epsilon_budget
        return budget is None or self.epsilon_of(self.counts.get(device, 0) + 1) <= budget

    def participate(self, device: str) -> None:
        self.counts[device] = self.counts.get(device, 0) + 1

    def summary(self) -> dict[str, float | int | None]:
        """The figures a ``privacy`` event, the live view and the summary show."""
        return {"epsilon": round(self.epsilon, 6), "delta": self.config.delta, "clip": self.config.clip,
                "noise": self.config.noise, "max_participations": self.max_participations,
                "budget": self.config.epsilon_budget}
