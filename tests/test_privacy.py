"""On-device differential privacy (docs/privacy.md): the accountant against published formulas.
The mechanism itself is checked through a board's link (tests/_privacy_checks.py) on ``sim://``
in test_train_link.py and on QEMU in test_train_qemu.py, where the training case is already
built; the epsilon budget stop and epsilon across a resume in test_resume.py, on its board."""

from __future__ import annotations

import math

import pytest
from scipy.stats import norm

from tinyfed.errors import TinyfedError
from tinyfed.training.privacy import DPConfig, PrivacyAccountant


def _balle_wang_delta(eps: float, mu: float) -> float:
    """delta(eps) of the Gaussian mechanism with sensitivity / std = mu: Balle and Wang, "Improving
    the Gaussian mechanism for differential privacy", ICML 2018, Theorem 8 (the same curve is
    Dong, Roth and Su's mu-GDP, JRSS-B 2022, Corollary 2.13), evaluated here with scipy alone."""
    return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))


def test_accountant_matches_the_published_gaussian_mechanism() -> None:
    # One participation, sigma = 2 (noise multiplier 1 for sensitivity 2C): the accountant's
    # epsilon at delta 1e-5 puts Balle and Wang's delta(eps) exactly at 1e-5.
    acc = PrivacyAccountant(DPConfig(clip=0.1, noise=2.0, delta=1e-5))
    eps = acc.epsilon_of(1)
    assert _balle_wang_delta(eps, 1.0) == pytest.approx(1e-5, rel=1e-6)
    assert eps == pytest.approx(4.3772, abs=1e-4)
    # k participations compose to mu * sqrt(k) (Dong, Roth and Su, Corollary 3.3)
    assert _balle_wang_delta(acc.epsilon_of(9), 3.0) == pytest.approx(1e-5, rel=1e-6)
    # The classical calibration (Dwork and Roth, "The Algorithmic Foundations of Differential
    # Privacy", 2014, Theorem A.1): noise std sqrt(2 ln(1.25 / delta)) * sensitivity / eps is
    # (eps, delta)-DP for eps < 1; the exact accountant may only be tighter.
    target, delta = 0.5, 1e-5
    std_over_sensitivity = math.sqrt(2 * math.log(1.25 / delta)) / target
    classical = PrivacyAccountant(DPConfig(clip=1.0, noise=2 * std_over_sensitivity, delta=delta))
    assert 0.3 < classical.epsilon_of(1) <= target
    # and the library's RDP accountant, a looser bound of the same mechanism, is never below it
    from dp_accounting import GaussianDpEvent, SelfComposedDpEvent
    from dp_accounting.rdp import RdpAccountant

    rdp = RdpAccountant()
    rdp.compose(SelfComposedDpEvent(GaussianDpEvent(1.0), 9))
    assert acc.epsilon_of(9) <= rdp.get_epsilon(1e-5) < 1.3 * acc.epsilon_of(9)
    # the run's epsilon is the largest device's; the budget refuses the participation that would pass it
    acc.counts.update(a=2, b=5)
    assert acc.epsilon == acc.epsilon_of(5)
    budgeted = PrivacyAccountant(DPConfig(0.1, 2.0, 1e-5, epsilon_budget=acc.epsilon_of(3)), {"a": 2, "b": 3})
    assert budgeted.allows("a") and not budgeted.allows("b")
    with pytest.raises(TinyfedError, match="noise"):
        DPConfig(clip=0.1, noise=0.0)
