"""On-device differential privacy (docs/privacy.md): the accountant against published formulas,
the epsilon budget stop, and epsilon across a resume. The mechanism itself is checked through a
board's link (tests/_privacy_checks.py) on ``sim://`` in test_train_link.py and on QEMU in
test_train_qemu.py, where the training case is already built."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from tinyfed.errors import TinyfedError
from tinyfed.firmware_bridge.twin.sim import forget_sim_boards
from tinyfed.host.engine import PRIVACY_BUDGET, Engine, Limits, LocalTraining, latest_checkpoint
from tinyfed.host.events import EventLog, read_events
from tinyfed.host.setup import DeviceSpec, prepare_run
from tinyfed.host.strategies import get_strategy
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


@pytest.fixture(scope="module")
def dp_board(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    if "TINYFED_CACHE_DIR" not in os.environ:
        mp.setenv("TINYFED_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    devices = [DeviceSpec("solo", "sim://mps2-an386?name=dpsolo", "mps2-an386")]
    setup = prepare_run("har_cnn", devices, "subset", work_dir=tmp_path_factory.mktemp("setup"), max_windows=16)
    yield setup, devices
    mp.undo()


def _engine(setup, devices, events: EventLog, versions: int, dp: DPConfig, **kw) -> Engine:
    return Engine(setup, devices, get_strategy("ftte", buffer_size=1), events,
                  training=LocalTraining(epochs=1, lr=0.005, dp=dp), limits=Limits(max_versions=versions), seed=3,
                  norm_bound=1e4, **kw)


def test_budget_stops_the_run_and_resume_keeps_epsilon(dp_board, tmp_path: Path) -> None:
    setup, devices = dp_board
    dp = DPConfig(clip=0.05, noise=1.0, delta=1e-5)
    eps = PrivacyAccountant(dp).epsilon_of
    # a budget that allows 3 participations of the one board: the run stops at version 3 of 10
    forget_sim_boards()
    with EventLog(tmp_path / "budget") as events:
        result = _engine(setup, devices, events, 10, DPConfig(0.05, 1.0, 1e-5, epsilon_budget=eps(3) + 1e-9)).run()
    assert result.versions == 3 and result.stop_reason == PRIVACY_BUDGET
    assert result.epsilon == pytest.approx(eps(3)) and result.to_dict()["delta"] == 1e-5
    evs = list(read_events(tmp_path / "budget"))
    privacy = [e for e in evs if e["kind"] == "privacy"]
    assert [e["max_participations"] for e in privacy] == [1, 2, 3]
    assert evs[-1]["kind"] == "run_end" and evs[-1]["stop_reason"] == PRIVACY_BUDGET
    arrivals = [e for e in evs if e["kind"] == "arrival"]
    assert all(e["loss"] == 0.0 and e["variance"] > 0 for e in arrivals)  # the host's variance of the noised delta

    # two versions, then a dispatch the crash lost after the checkpoint: the resume counts all three
    forget_sim_boards()
    run = tmp_path / "resume"
    with EventLog(run) as events:
        first = _engine(setup, devices, events, 2, dp).run()
        events.append("dispatch", task=99, device="solo", version=2)
    assert first.epsilon == pytest.approx(eps(2))
    ck = latest_checkpoint(run)
    assert ck.strategy_state["engine"]["privacy"] == {"counts": {"solo": 2}}
    forget_sim_boards()
    with EventLog(run) as events:
        resumed = _engine(setup, devices, events, 4, dp, resume_from=ck)
        assert resumed.privacy is not None and resumed.privacy.counts == {"solo": 3}
        second = resumed.run()
    assert second.versions == 4 and second.epsilon == pytest.approx(eps(5))
    # a DP run resumes only with DP
    with EventLog(run) as events, pytest.raises(TinyfedError, match="differential privacy"):
        Engine(setup, devices, get_strategy("ftte", buffer_size=1), events, norm_bound=1e4,
               resume_from=latest_checkpoint(run))
    assert np.isfinite(second.vector).all()
