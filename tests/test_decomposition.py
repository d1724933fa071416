"""The headline's decomposition (task cost x asynchrony x aggregation): a pure function of the results."""

from __future__ import annotations

import pytest

from tinyfed.host.decomposition import decomposition, format_decomposition

#: times to target of the five variants, chosen so every factor is a different number
TIMES = {"ftte": 2.0, "fedbuff@subset": 3.0, "fedbuff": 45.0, "fedavg@subset+overselect": 12.0,
         "fedavg@subset": 60.0, "fedavg": 1200.0}


def _results(times: dict[str, float | None]) -> dict[str, dict]:
    return {k: {"time_to_target_s": t, "reached_target": t is not None} for k, t in times.items()}


def test_each_factor_divides_the_pair_that_differs_in_one_thing() -> None:
    d = decomposition(_results(TIMES))
    assert d["task_cost"] == 15.0  # fedbuff / fedbuff@subset
    assert d["asynchrony"] == 4.0  # fedavg@subset+overselect / fedbuff@subset
    assert d["asynchrony_no_overselect"] == 20.0  # fedavg@subset / fedbuff@subset
    assert d["aggregation"] == 1.5  # fedbuff@subset / ftte
    assert d["headline"] == 600.0 and d["task_cost_synchronous"] == 20.0
    assert d["product"] == pytest.approx(15 * 4 * 1.5)
    assert d["product_no_overselect"] == pytest.approx(450.0)
    # the headline is the product without over-selection times the interaction, exactly
    assert d["interaction"] == pytest.approx(d["task_cost_synchronous"] / d["task_cost"])
    assert d["headline"] == pytest.approx(d["product_no_overselect"] * d["interaction"])


def test_a_missing_or_unreached_variant_leaves_its_factors_none() -> None:
    times = {k: v for k, v in TIMES.items() if k != "fedavg@subset+overselect"}
    times["fedbuff"] = None  # ran, did not reach the target
    d = decomposition(_results(times))
    assert d["asynchrony"] is None and d["product"] is None and d["task_cost"] is None
    assert d["aggregation"] == 1.5 and d["headline"] == 600.0
    text = format_decomposition(d)
    assert "aggregation T(fedbuff@subset)/T(ftte) 1.5x" in text and "task cost T(fedbuff)/T(fedbuff@subset) -" in text


def test_default_payloads_may_be_spelled_out() -> None:
    spelled = {{"ftte": "ftte@subset", "fedbuff": "fedbuff@dense", "fedavg": "fedavg@dense"}.get(k, k): v
               for k, v in TIMES.items()}
    assert decomposition(_results(spelled)) == decomposition(_results(TIMES))
