"""Robust aggregation (tinyfed.host.strategies.robust): each rule's arithmetic on hand-computed cases,
a poisoned minority of a buffer, the rule's options and checks. The known case of issue 17 (a board
sending norm-99 deltas that pass every check) runs in the engine beside sim:// boards in
tests/test_hostile_boards.py (it shares that module's prepared run)."""

from __future__ import annotations

import json
from typing import Any, get_args

import numpy as np
import pytest
from click.testing import CliRunner

from tinyfed.cli import cli
from tinyfed.commands.options import ROBUST_RULES as CLI_RULES
from tinyfed.errors import TinyfedError
from tinyfed.host.config import RobustName, StrategyParams
from tinyfed.host.simulator import Attack, StudyConfig
from tinyfed.host.strategies import StrategyParamError, get_strategy
from tinyfed.host.strategies.base import weighted_step
from tinyfed.host.strategies.robust import ROBUST_RULES, NormWindow, weighted_median, weighted_trimmed_mean
from tinyfed.host.updates import Update

RULES = ("norm-quantile", "median", "trimmed-mean")


def upd(task: int, delta: Any, *, n: int = 10, base: int = 0, variance: float = 0.0) -> Update:
    return Update(f"d{task}", task, base, n, 0.5, variance, np.asarray(delta, np.float32), 0)


def test_the_rules_are_spelled_alike_everywhere() -> None:
    assert CLI_RULES == ROBUST_RULES == get_args(RobustName)


def test_weighted_median_by_hand() -> None:
    v = np.array([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0], [4.0, 2.0], [100.0, 1.0]])
    out, chosen = weighted_median(v, np.ones(5))
    assert out.tolist() == [3.0, 3.0] and chosen[2].all() and chosen.sum() == 2
    out, _ = weighted_median(v[:4], np.ones(4))  # an even count: the two middle values averaged
    assert out.tolist() == [2.5, 3.5]
    # weights move the median: the last row holds 10 of 14, so it is the median of both columns
    out, _ = weighted_median(v, np.array([1.0, 1.0, 1.0, 1.0, 10.0]))
    assert out.tolist() == [100.0, 1.0]
    # nested subsets: a value only the rows carrying it vote on; a column nobody carries is 0
    carried = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 0], [0, 1, 0], [1, 1, 0]], bool)
    out, _ = weighted_median(np.c_[v, np.ones(5)], np.ones(5), carried)
    assert out.tolist() == [2.5, 2.5, 0.0]  # column 0: 1, 2, 3, 100; column 1: 4, 3, 2, 1


def test_weighted_trimmed_mean_by_hand() -> None:
    v = np.array([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0], [4.0, 2.0], [100.0, 1.0]])
    out, trimmed = weighted_trimmed_mean(v, np.ones(5), 0.2)  # beta K = 1: one value cut from each end
    assert out.tolist() == [3.0, 3.0]
    np.testing.assert_allclose(trimmed, [[1, 1], [0, 0], [0, 0], [0, 0], [1, 1]], atol=1e-12)
    out, trimmed = weighted_trimmed_mean(v, np.ones(5), 0.1)  # half of each end value is cut
    np.testing.assert_allclose(out, [(0.5 * 1 + 2 + 3 + 4 + 0.5 * 100) / 4, 3.0])
    np.testing.assert_allclose(trimmed[[0, 4]], 0.5)
    out, _ = weighted_trimmed_mean(v, np.ones(5), 0.0)
    np.testing.assert_allclose(out, v.mean(axis=0))
    # weights 3, 1, 1, 1, 2 (sum 8), beta 0.25: weight 2 cut from each end. Column 0 keeps 1 (1 of its 3),
    # 2, 3, 4 and cuts 100; column 1 (ascending 1, 2, 3, 4, 5 at weights 2, 1, 1, 1, 3) cuts 1, keeps 2, 3,
    # 4 and 1 of 5's 3
    out, _ = weighted_trimmed_mean(v, np.array([3.0, 1.0, 1.0, 1.0, 2.0]), 0.25)
    np.testing.assert_allclose(out, [(1 + 2 + 3 + 4) / 4, (2 + 3 + 4 + 5) / 4])


def test_norm_window_starts_with_the_first_buffer_and_slides() -> None:
    w = NormWindow(4)
    assert w.bound(np.array([1.0, 3.0]), 0.5) == 2.0  # empty window: the first buffer's own median
    assert w.bound(np.array([5.0, 7.0]), 0.5) == 4.0  # 1, 3, 5, 7
    assert w.bound(np.array([9.0]), 1.0) == 9.0 and list(w.norms) == [3.0, 5.0, 7.0, 9.0]


def _step(rule: str, updates: list[Update], **params: Any) -> tuple[np.ndarray, dict[str, Any]]:
    strategy = get_strategy("fedbuff", buffer_size=len(updates), staleness_exponent=0.0, robust=rule, **params)
    out = [strategy.on_update(u, 0) for u in updates]
    agg = out[-1]
    assert agg is not None and all(a is None for a in out[:-1])
    return agg.step, agg.robust


def test_each_rule_in_a_strategy_step_by_hand() -> None:
    ups = [upd(0, [1.0, -1.0], n=1), upd(1, [2.0, 0.0], n=1), upd(2, [3.0, 1.0], n=2), upd(3, [30.0, 40.0], n=1)]
    step, report = _step("none", ups)
    np.testing.assert_allclose(step, [(1 + 2 + 6 + 30) / 5, (-1 + 0 + 2 + 40) / 5], rtol=1e-6)
    assert report == {"rule": "none"}
    # norms 1.414, 2, 3.162, 50; the window's median 2.581: the last two are scaled down to it
    step, report = _step("norm-quantile", ups)
    bound = (2.0 + np.sqrt(10.0)) / 2
    scaled3, scaled4 = np.array([3.0, 1.0]) * bound / np.sqrt(10.0), np.array([30.0, 40.0]) * bound / 50.0
    np.testing.assert_allclose(step, (np.array([1.0, -1.0]) + [2.0, 0.0] + 2 * scaled3 + scaled4) / 5, rtol=1e-6)
    assert report["clipped"] == [2, 3] and report["bound"] == pytest.approx(bound, abs=1e-6)
    # weighted median: weights 1, 1, 2, 1 (half 2.5): column 0 sorted 1, 2, 3 (cum 4) -> 3; column 1 -1, 0, 1 -> 1
    step, report = _step("median", ups)
    np.testing.assert_allclose(step, [3.0, 1.0])
    assert report["chosen"] == [0.0, 0.0, 1.0, 0.0]
    # trimmed mean, beta 0.2 of weight 5 = 1 from each end: 1 and 30 in column 0, -1 and 40 in column 1
    step, report = _step("trimmed-mean", ups, trim_fraction=0.2)
    np.testing.assert_allclose(step, [(2 + 6) / 3, (0 + 2) / 3], rtol=1e-6)
    assert report["trimmed"] == [1.0, 0.0, 0.0, 1.0]


def test_staleness_keeps_its_meaning_under_the_median() -> None:
    """FTTE's staleness weight decides where the weighted median falls, as it decides the mean."""
    ups = [upd(0, [1.0], base=4), upd(1, [2.0], base=0), upd(2, [3.0], base=0)]
    flat = get_strategy("ftte", buffer_size=3, robust="median", staleness_exponent=0.0)
    aged = get_strategy("ftte", buffer_size=3, robust="median", staleness_exponent=2.0)
    assert [flat.on_update(u, 4) for u in ups][-1].step.tolist() == [2.0]
    # the fresh update holds 1 against the stale ones' 1/25 + 1/25: the median is its value
    assert [aged.on_update(u, 4) for u in ups][-1].step.tolist() == [1.0]


@pytest.mark.parametrize("attack", ["sign-flip", "scale"])
@pytest.mark.parametrize("rule", RULES)
def test_a_poisoned_minority_leaves_the_step_near_the_honest_mean(rule: str, attack: str) -> None:
    """K = 10, two poisoned updates (the honest mean negated, or times 50): each rule's step stays within a
    third of the honest mean's norm of it; the plain weighted mean does not. Norm bounding is the
    exception it is documented to be: a sign flip inside the bound passes it as it passes the mean."""
    rng = np.random.default_rng(0)
    mean = rng.normal(size=200)
    honest = [upd(i, mean + 0.3 * rng.normal(size=200)) for i in range(8)]
    bad = -mean if attack == "sign-flip" else 50.0 * mean
    ups = honest + [upd(8 + i, bad) for i in range(2)]
    target = np.mean([u.delta for u in honest], axis=0)
    plain, _ = _step("none", ups)
    robust, report = _step(rule, ups, trim_fraction=0.2)
    gap = float(np.linalg.norm(robust - target) / np.linalg.norm(target))
    plain_gap = float(np.linalg.norm(plain - target) / np.linalg.norm(target))
    assert plain_gap > 0.35
    if rule == "norm-quantile" and attack == "sign-flip":
        assert not {8, 9} & set(report["clipped"]) and gap == pytest.approx(plain_gap, rel=0.1)
        return
    assert gap < 0.34, gap
    if rule == "trimmed-mean":
        assert min(report["trimmed"][8:]) > max(report["trimmed"][:8]), report
    if rule == "norm-quantile" and attack == "scale":
        assert set(report["clipped"]) >= {8, 9}


def test_the_norm_window_survives_a_checkpoint() -> None:
    a = get_strategy("ftte", buffer_size=2, robust="norm-quantile", robust_window=3)
    for t, d in enumerate([[1.0], [2.0], [4.0]]):
        a.on_update(upd(t, d), 0)
    state = json.loads(json.dumps({k: v for k, v in a.state_dict().items() if k != "deltas"}))
    b = get_strategy("ftte", buffer_size=2, robust="norm-quantile", robust_window=3)
    b.load_state_dict({**state, "deltas": a.state_dict()["deltas"]})
    assert state["robust"]["norms"] == [1.0, 2.0] and list(b.robust.window.norms) == [1.0, 2.0]
    sa, sb = a.on_update(upd(9, [8.0]), 1), b.on_update(upd(9, [8.0]), 1)
    assert sa is not None and sb is not None and sa.step.tolist() == sb.step.tolist()
    assert sa.robust["bound"] == 4.0  # window 2, 4, 8 (the oldest norm slid out)


@pytest.mark.parametrize(("key", "value"), [("robust", "krum"), ("robust_quantile", 0.0), ("robust_quantile", 1.5),
                                            ("robust_window", 0), ("trim_fraction", 0.5), ("trim_fraction", -0.1)])
def test_out_of_range_robust_knobs_are_refused(key: str, value: Any) -> None:
    with pytest.raises(StrategyParamError, match=key):
        get_strategy("fedavg", **{key: value})
    with pytest.raises(ValueError, match=key):
        StrategyParams(**{key: value})


def test_the_command_lines_check_the_ranges() -> None:
    runner = CliRunner()
    for command in (["simulate"], ["run", "--simulate", "2"]):
        out = runner.invoke(cli, [*command, "--trim-fraction", "0.5"])
        assert out.exit_code == 2 and "--trim-fraction" in out.output, out.output
        out = runner.invoke(cli, [*command, "--robust", "mean"])
        assert out.exit_code == 2 and "--robust" in out.output, out.output


def test_without_a_rule_the_step_is_the_weighted_mean_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    ups = [upd(i, rng.normal(size=50), n=int(rng.integers(1, 9))) for i in range(5)]
    step, _ = _step("none", ups)
    assert step.tobytes() == weighted_step(ups, np.array([u.n for u in ups], np.float64), 1.0).tobytes()


def test_attack_specs_and_their_seeded_boards() -> None:
    assert Attack.parse("sign-flip", 0.2).factor == -1.0 and Attack.parse("scale:10", 0.2).factor == 10.0
    for bad in ("scale:1", "scale:x", "flip", "scale:inf"):
        with pytest.raises(TinyfedError):
            Attack.parse(bad, 0.2)
    a = Attack.parse("sign-flip", 0.2)
    assert a.devices(500, 3) == a.devices(500, 3) and len(a.devices(500, 3)) == 100
    assert a.devices(500, 3) != a.devices(500, 4) and not Attack.parse("none", 0.2).devices(500, 3)
    with pytest.raises(ValueError, match="attack"):
        StudyConfig(attack="flip")
