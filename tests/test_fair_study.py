"""The fair study's summary: spread over seeds, ratios to the same-w* baselines, the goals checked."""

from __future__ import annotations

import pytest

from tinyfed.errors import TinyfedError
from tinyfed.host.fair_study import (
    Split,
    format_summary,
    parse_seeds,
    parse_splits,
    spread,
    study_configs,
    summarize,
)


def _res(t: float | None, end: float, final: float | None = None) -> dict:
    return {"time_to_target_s": t, "reached_target": t is not None, "end_accuracy_mean": end,
            "final_accuracy": end if final is None else final}


def _record(split: str, seed: int, ftte: tuple, buff: tuple, sync: tuple) -> dict:
    results = {"ftte": _res(*ftte), "fedbuff@subset": _res(*buff), "fedavg@subset+overselect": _res(*sync)}
    return {"split": split, "seed": seed, "horizon_s": 100.0, "results": results, "decomposition": {"aggregation":
            buff[0] / ftte[0] if ftte[0] and buff[0] else None}}


def test_the_goals_are_checked_on_the_per_seed_ratios_and_gaps() -> None:
    records = [  # natural: FTTE 0.7 and 0.75 of FedBuff-on-w*'s time, +1 and +0.2 points: every goal met
        _record("natural", 0, (7.0, 0.90), (10.0, 0.89), (100.0, 0.88)),
        _record("natural", 1, (15.0, 0.882), (20.0, 0.88), (100.0, 0.88)),
        # iid: 0.9 of FedBuff's time, and one seed 0.6 points below: both goals missed
        _record("iid", 0, (9.0, 0.894), (10.0, 0.90), (40.0, 0.88)),
        _record("iid", 1, (18.0, 0.93), (20.0, 0.90), (40.0, 0.88))]
    s = summarize(records)
    goals = {(g["split"], g["goal"].split(" <=")[0].split(" >=")[0]): g for g in s["goals"]}
    nat_time = goals[("natural", "time ftte / fedbuff@subset")]
    assert nat_time["value"] == pytest.approx(0.725) and nat_time["worst"] == pytest.approx(0.75) and nat_time["met"]
    assert goals[("natural", "time ftte / fedavg@subset+overselect")]["value"] == pytest.approx(0.11)
    nat_acc = goals[("natural", "end_accuracy_mean ftte - fedbuff@subset")]
    assert nat_acc["value"] == pytest.approx(0.6) and nat_acc["worst"] == pytest.approx(0.2) and nat_acc["met"]
    assert not goals[("iid", "time ftte / fedbuff@subset")]["met"]
    iid_acc = goals[("iid", "end_accuracy_mean ftte - fedbuff@subset")]
    assert iid_acc["value"] == pytest.approx(1.2) and iid_acc["worst"] == pytest.approx(-0.6) and not iid_acc["met"]
    # the time ratio of a variant of every study, spread over seeds; "all" pools the splits
    row = next(r for r in s["rows"] if r["split"] == "all" and r["label"] == "ftte")
    assert row["studies"] == 4 and row["time_vs_fedbuff@subset"]["max"] == pytest.approx(0.9)
    assert s["decomposition"]["natural"]["aggregation"]["mean"] == pytest.approx((10 / 7 + 20 / 15) / 2)
    text = format_summary(s, 0.8)
    assert "| natural | ftte | 2 | 2 | 11.0 [7.0-15.0] |" in text and "MISSED" in text


def test_a_seed_where_ftte_misses_its_target_fails_the_time_goal() -> None:
    s = summarize([_record("iid", 0, (None, 0.9), (10.0, 0.9), (40.0, 0.9)),
                   _record("iid", 1, (1.0, 0.9), (10.0, 0.9), (40.0, 0.9))])
    g = next(g for g in s["goals"] if g["goal"].startswith("time ftte / fedbuff@subset"))
    assert g["value"] == pytest.approx(0.1) and g["seeds"] == 1 and g["met"] is False
    assert next(r for r in s["rows"] if r["label"] == "ftte")["reached"] == 1


def test_options_and_configs() -> None:
    from tinyfed.host.simulator import StudyConfig

    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    assert parse_splits("natural,iid,dirichlet:0.1,dirichlet:0.5") == [
        Split("natural"), Split("iid"), Split("dirichlet", 0.1), Split("dirichlet", 0.5)]
    for bad in ("x", "dirichlet:-1", "iid:3"):
        with pytest.raises(TinyfedError, match="data split"):
            parse_splits(bad)
    with pytest.raises(TinyfedError, match="seeds"):
        parse_seeds("a-b")
    jobs = study_configs(StudyConfig(), [0, 1], parse_splits("iid,dirichlet:0.1"))
    assert [(c.seed, c.partition, c.alpha, label) for c, label in jobs] == [
        (0, "iid", 0.5, "iid"), (1, "iid", 0.5, "iid"), (0, "dirichlet", 0.1, "dirichlet:0.1"),
        (1, "dirichlet", 0.1, "dirichlet:0.1")]
    assert spread([1.0, None, 3.0]) == {"n": 2, "mean": 2.0, "min": 1.0, "max": 3.0, "std": 1.0}


def test_finished_studies_are_kept_and_a_rerun_with_the_same_config_reuses_them(tmp_path) -> None:
    from tinyfed.host.fair_study import run_fair_study
    from tinyfed.host.simulator import StudyConfig

    ran: list[tuple[int, str]] = []

    def worker(cfg, split: str) -> dict:
        ran.append((cfg.seed, split))
        return _record(split, cfg.seed, (10.0 + cfg.seed, 0.8), (12.0, 0.8), (60.0, 0.7))

    base, cache = StudyConfig(), tmp_path / "studies"
    splits = parse_splits("iid,dirichlet:0.1")
    first = run_fair_study(base, [0, 1], splits, workers=1, worker=worker, cache=cache)
    assert len(ran) == 4 and len(list(cache.glob("*.json"))) == 4
    ran.clear()
    (cache / "iid_seed1.json").unlink()  # as if the run was stopped before this study finished
    again = run_fair_study(base, [0, 1], splits, workers=1, worker=worker, cache=cache)
    assert ran == [(1, "iid")]
    assert [(r["split"], r["seed"], r["results"]["ftte"]["time_to_target_s"]) for r in again] == [
        (r["split"], r["seed"], r["results"]["ftte"]["time_to_target_s"]) for r in first]
    ran.clear()
    run_fair_study(base.model_copy(update={"eval_samples": 123}), [0], splits[:1], workers=1, worker=worker,
                   cache=cache)
    assert ran == [(0, "iid")]  # another config: the kept record is not reused
    ran.clear()
    kept = run_fair_study(base, [0, 1, 2], splits, workers=1, worker=worker, cache=cache, run_missing=False)
    # iid seed 0 now holds the other config's record, seed 2 was never run: both left out, neither run
    assert ran == [] and [(r["split"], r["seed"]) for r in kept] == [("iid", 1), ("dirichlet:0.1", 0),
                                                                     ("dirichlet:0.1", 1)]
