"""The fleet simulator: determinism, the timing model, stragglers, the FedAvg barrier, memory at 10,000 devices."""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tinyfed.boards import get_board
from tinyfed.errors import TinyfedError
from tinyfed.firmware_bridge.link.framing import max_encoded_bytes
from tinyfed.host import simulator
from tinyfed.host.config import StrategyParams, checked
from tinyfed.host.engine import LocalTraining
from tinyfed.host.simulator import (
    Attack,
    Availability,
    LocalBackend,
    SimLimits,
    Simulation,
    Slowdown,
    Study,
    StudyConfig,
    make_fleet,
    parse_board_mix,
    train_step,
)
from tinyfed.host.strategies import get_strategy

MIX = {"nrf52840": 0.5, "apollo3": 0.5}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    cfg = StudyConfig(model="digits_cnn", clients=16, partition="iid", board_mix="nrf52840:0.5,apollo3:0.5",
                      stragglers=0.5, seed=0, target_accuracy=None, max_versions=6, eval_samples=120,
                      strategy_params=StrategyParams(buffer_size=4, clients_per_round=4))
    s = Study(cfg, work_dir=tmp_path_factory.mktemp("sim"))
    s.model("subset")
    s.model("dense")
    return s


def _run(study: Study, strategy: str, *, seed: int = 0, stragglers: float = 0.5, slowdown: str = "uniform:2:10",
         clients: int = 16, versions: int = 6, dropout: float = 0.0, availability: Availability | None = None,
         **params):
    fleet = make_fleet(study.shards, clients, MIX, stragglers, Slowdown.parse(slowdown), seed)
    strat = get_strategy(strategy, fleet_size=clients, ignore_extra=True,
                         **{"buffer_size": 4, "clients_per_round": 4, **params})
    model = study.model("subset" if strat.payload == "subset" else "dense")
    sim = Simulation(model, fleet, strat, limits=SimLimits(max_versions=versions), seed=seed, dropout=dropout,
                     availability=availability, record_trace=True)
    return sim, sim.run()


def test_same_seed_gives_the_same_events_and_model(study: Study) -> None:
    _, a = _run(study, "ftte")
    _, b = _run(study, "ftte")
    assert a.trace == b.trace and a.event_digest == b.event_digest
    assert np.array_equal(a.vector, b.vector)
    assert a.versions == 6 and a.board_steps > 0
    assert [h["accuracy"] for h in a.history] == [h["accuracy"] for h in b.history]


def test_another_seed_gives_another_run(study: Study) -> None:
    _, a = _run(study, "ftte", seed=0)
    _, b = _run(study, "ftte", seed=1)
    assert a.event_digest != b.event_digest
    assert not np.array_equal(a.vector, b.vector)


def test_a_task_takes_the_time_of_its_board_profile(study: Study) -> None:
    sim, res = _run(study, "fedbuff", versions=1)
    model = study.model("dense")
    first = {}
    for t, kind, task, device in res.trace:
        if kind == "dispatch" and t == 0.0:
            first[task] = device
    t_arrive, _, task, name = next(e for e in res.trace if e[1] == "arrive")
    dev = next(d for d in sim.fleet.devices if d.name == name)
    board = get_board(sim.fleet.boards[dev.board].name)
    # The client's framing, by hand (protocol v2: 20 bytes of counter and tag per request, a 16-byte
    # tag per answer): TRAIN_SET in (256 - 20 - 8) // 4 = 57-value requests, each acked with a u32;
    # TRAIN (21 bytes) and its 29-byte report; UPDATE_READ (6 bytes) in 240-byte pieces of the image
    # and its 32-byte update tag.

    def frame(n: int) -> int:
        return max_encoded_bytes(n) + 1

    per = (board.link.max_frame_bytes - 20 - 8) // 4
    chunks = [min(per, model.size - k) for k in range(0, model.size, per)]
    served = model.update_bytes + 32
    pieces = [min(240, served - k) for k in range(0, served, 240)]
    assert model.update_bytes == 24 + 4 * model.size  # float32 update image: header + values
    down = sum(frame(20 + 8 + 4 * c) for c in chunks) + frame(20 + 21) + len(pieces) * frame(20 + 6)
    up = len(chunks) * frame(16 + 4) + frame(16 + 29) + sum(frame(16 + p) for p in pieces)
    link_s = (down + up) * 10 / board.link.baud
    compute_s = len(dev.indices) * model.train_macs / (board.speed.fp32_flops_per_s / 2)
    assert t_arrive == pytest.approx(dev.factor * (link_s + compute_s), rel=1e-12)
    assert task in first


@pytest.fixture(scope="module")
def har_study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A study whose plan keeps a frozen head (digits_cnn is small enough to train whole on every board)."""
    cfg = StudyConfig(model="har_cnn", clients=8, partition="iid", board_mix="nrf52840:0.5,apollo3:0.5",
                      stragglers=0.5, seed=0, target_accuracy=None, max_versions=1, eval_samples=60,
                      strategy_params=StrategyParams(buffer_size=4, clients_per_round=4))
    s = Study(cfg, work_dir=tmp_path_factory.mktemp("sim-har"))
    s.model("subset")
    s.model("dense")
    return s


def test_ftte_time_counts_the_frozen_fragment_at_the_int8_rate(har_study: Study) -> None:
    study = har_study
    sim, _ = _run(study, "ftte", versions=1, clients=8)
    model = study.model("subset")
    dev = sim.fleet.devices[0]
    b = sim.fleet.boards[dev.board]
    board = get_board(b.name)
    per_sample = (model.frozen_macs / board.speed.int8_macs_per_s
                  + model.train_macs / (board.speed.fp32_flops_per_s / 2))
    _, _, link_s, sim_per_sample = sim._link_cost(dev.board, True)
    assert model.frozen_macs > 0 and sim_per_sample == pytest.approx(per_sample, rel=1e-12)
    assert model.update_bytes < study.model("dense").update_bytes / 4  # int8 w* vs float32 whole model
    assert sim.task_seconds(dev, True) == pytest.approx(dev.factor * (link_s + per_sample * len(dev.indices)))


def test_device_memory_counts_the_same_line_items_for_both_payloads(har_study: Study) -> None:
    from tinyfed.commands.simulate import ratios
    from tinyfed.models.tflite_graph import TfliteGraph
    from tinyfed.planner.config import TrainingConfig
    from tinyfed.planner.dense import plan_dense_model
    from tinyfed.planner.memory import memory_ratio

    sub, dense = har_study.model("subset").device_memory, har_study.model("dense").device_memory
    a, b = sub.as_dict(), dense.as_dict()
    assert list(a) == list(b) and a["total"] == sub.total and b["total"] == dense.total
    for lines in (a, b):
        assert lines["total"] == sum(v for k, v in lines.items() if k != "total")
    plan = har_study.subset_plan()
    assert plan.cut > 0 and a["arena_front"] == plan.arena > 0  # FTTE pays for its frozen head's arena
    graph = TfliteGraph.from_bytes(har_study.data.model_bytes, source="har_cnn")
    raw = sum(graph.tensors[t].nbytes for t in graph.inputs)
    assert b["arena_front"] == (raw + 7) // 8 * 8  # the whole model reads one raw int8 sample
    assert a["head_cache"] == b["head_cache"] == 0  # the cache lives in RAM the plan does not need
    # one sample's activations on both sides: the batch size changes neither figure
    assert plan_dense_model("har_cnn", TrainingConfig(batch_size=1)).step_memory == dense
    results = {}
    for name in ("ftte", "fedbuff"):
        sim = har_study.simulation(name)
        results[name] = sim.run(SimLimits(max_versions=1))
        sim.close()
    assert results["ftte"].device_memory_lines == a and results["fedbuff"].device_memory_lines == b
    ratio = ratios(results, base="fedbuff")["ftte"]["device_memory_bytes"]
    assert ratio == memory_ratio(sub, dense) == a["total"] / b["total"] < 1


def test_stragglers_slow_the_clock_not_the_math(study: Study) -> None:
    _, fast = _run(study, "ftte", stragglers=0.0)
    _, slow = _run(study, "ftte", stragglers=1.0, slowdown="fixed:2")  # x2 is exact in binary floating point
    assert np.array_equal(fast.vector, slow.vector)
    assert [(k, t, d) for _, k, t, d in fast.trace] == [(k, t, d) for _, k, t, d in slow.trace]
    assert [2 * h["sim_time_s"] for h in fast.history] == [h["sim_time_s"] for h in slow.history]
    assert slow.sim_seconds == 2 * fast.sim_seconds


def test_fedavg_waits_for_its_slowest_device_and_ftte_does_not(study: Study) -> None:
    # one device in 16 is 1000x slower; FedAvg samples every device, so each round waits for it
    sim, avg = _run(study, "fedavg", stragglers=1 / 16, slowdown="fixed:1000", versions=1, clients_per_round=16)
    slowest = max(sim.fleet.devices, key=lambda d: d.factor)
    straggler_s = sim.task_seconds(slowest, True)
    assert avg.history[1]["sim_time_s"] == pytest.approx(straggler_s)
    _, ftte = _run(study, "ftte", stragglers=1 / 16, slowdown="fixed:1000", versions=3)
    assert ftte.history[-1]["sim_time_s"] < straggler_s / 50


def test_dropped_tasks_are_lost_and_the_run_goes_on(study: Study) -> None:
    _, res = _run(study, "fedbuff", dropout=0.3, versions=3)
    assert res.updates_lost > 0 and res.versions == 3
    assert res.tasks >= res.updates_lost + res.board_steps


def test_ten_thousand_devices_fit_in_little_memory(study: Study) -> None:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fleet = make_fleet(study.shards, 10_000, MIX, 0.9, Slowdown.parse("lognormal:1:0.5"), 0)
    per_device = (tracemalloc.get_traced_memory()[0] - base) / 10_000
    strat = get_strategy("ftte", fleet_size=10_000, buffer_size=10)
    sim = Simulation(study.model("subset"), fleet, strat, limits=SimLimits(max_versions=2), seed=0)
    res = sim.run()  # 10,000 tasks dispatched at t = 0 share one vector; only the first arrivals train
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert per_device < 600, per_device
    assert res.versions == 2 and res.board_steps < 100 and res.tasks >= 10_000
    assert peak < 60e6, peak
    assert fleet.shared_shards


def test_bad_options_say_how_to_fix_them() -> None:
    with pytest.raises(TinyfedError, match="BOARD:SHARE"):
        parse_board_mix("nrf52840:-1")
    with pytest.raises(TinyfedError, match="uniform:LOW:HIGH"):
        Slowdown.parse("uniform:5:2")
    assert parse_board_mix("a:1,b:3") == {"a": 0.25, "b": 0.75}
    assert Slowdown.parse("fixed:3").draw(np.random.default_rng(0), 2).tolist() == [3.0, 3.0]


def test_cli_json_and_files(tmp_path, monkeypatch: pytest.MonkeyPatch, study: Study) -> None:
    from tinyfed.cli import cli

    monkeypatch.setattr(simulator.Study, "_build", lambda self, payload: study.model(payload))
    out = tmp_path / "sim"
    res = CliRunner().invoke(cli, ["simulate", "--model", "digits_cnn", "--count", "12", "--partition", "iid",
                                   "--board-mix", "nrf52840:0.5,apollo3:0.5", "--buffer-size", "4",
                                   "--clients-per-round", "4", "--target-accuracy", "0.2", "--max-versions", "3",
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert doc["study"]["horizon_s"] == max(r["sim_seconds"] for r in doc["results"].values())
    for name in ("ftte", "fedbuff", "fedavg"):
        r = doc["results"][name]
        for key in ("time_to_target_s", "reached_target", "final_accuracy", "device_memory_bytes",
                    "bytes_per_update", "bytes_total"):
            assert key in r
        assert math.isfinite(r["final_accuracy"])
    assert doc["ratios_to_fedavg"]["fedavg"]["bytes_per_update"] == 1.0
    dec = doc["decomposition"]  # only the headline's two variants ran: the factors that need others are None
    assert dec["headline"] == pytest.approx(doc["results"]["fedavg"]["time_to_target_s"]
                                            / doc["results"]["ftte"]["time_to_target_s"])
    assert dec["task_cost"] is None and dec["aggregation"] is None
    for f in ("summary.csv", "summary.md", "history.csv", "study.json", "accuracy_vs_time.png", "bytes_vs_time.png"):
        assert (out / f).stat().st_size > 0
    assert (out / "summary.md").read_text().startswith("| strategy | time to target (sim s) |")  # to paste
    # on a terminal or a pipe: each leg is named before its lines, and two tables instead of a raw 14-column one
    text = CliRunner().invoke(cli, ["simulate", "--model", "digits_cnn", "--count", "12", "--partition", "iid",
                                    "--buffer-size", "4", "--clients-per-round", "4", "--target-accuracy", "0.2",
                                    "--max-versions", "3"])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    to_target = lines.index(next(x for x in lines if x.startswith("-- to the target: each strategy until test "
                                                                   "accuracy 0.2")))
    horizon = lines.index(next(x for x in lines if x.startswith("-- to the common horizon: every strategy on to")))
    assert to_target < horizon and lines[to_target + 1].startswith("ftte: ") and lines[horizon + 1].startswith("ftte: ")
    assert "x FedAvg" in text.output and not any(x.startswith("| strategy") for x in lines)
    bad = CliRunner().invoke(cli, ["simulate", "--strategies", "ftte,nope"])
    assert bad.exit_code == 2 and "--strategies: 'nope' is not a strategy" in bad.output
    bad = CliRunner().invoke(cli, ["simulate", "--horizon", "soon"])
    assert bad.exit_code == 2 and "--horizon 'soon'" in bad.output
    bad = CliRunner().invoke(cli, ["simulate", "--availability", "3600:2"])
    assert bad.exit_code == 2 and "availability '3600:2'" in bad.output
    bad = CliRunner().invoke(cli, ["simulate", "--horizon", "-1"])
    assert bad.exit_code == 2 and "--horizon '-1'" in bad.output
    # the options take their config fields' ranges, so click refuses them as it reads the command line
    bad = CliRunner().invoke(cli, ["simulate", "--epochs", "0"])
    assert bad.exit_code == 2 and "Invalid value for '--epochs': 0 is not in the range 1<=x<=1000" in bad.output
    bad = CliRunner().invoke(cli, ["simulate", "--clients-per-round", "0"])
    assert bad.exit_code == 2 and "'--clients-per-round': 0 is not in the range 1<=x<=100000" in bad.output


def test_cli_several_studies_summarise_over_seeds(tmp_path, monkeypatch: pytest.MonkeyPatch, study: Study) -> None:
    from tinyfed.cli import cli

    monkeypatch.setattr(simulator.Study, "_build", lambda self, payload: study.model(payload))
    out = tmp_path / "fair"
    res = CliRunner().invoke(cli, ["simulate", "--model", "digits_cnn", "--count", "12", "--board-mix",
                                   "nrf52840:0.5,apollo3:0.5", "--buffer-size", "4", "--clients-per-round", "4",
                                   "--target-accuracy", "0.2", "--max-versions", "3", "--seeds", "0-1",
                                   "--partitions", "iid", "--workers", "1", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert [(r["split"], r["seed"]) for r in doc["studies"]] == [("iid", 0), ("iid", 1)]
    assert doc["studies"][0]["results"]["ftte"]["final_accuracy"] != doc["studies"][1]["results"]["ftte"][
        "final_accuracy"]
    row = next(r for r in doc["summary"]["rows"] if r["label"] == "ftte")
    finals = [r["results"]["ftte"]["final_accuracy"] for r in doc["studies"]]
    assert row["studies"] == 2 and row["final_accuracy"]["mean"] == pytest.approx(sum(finals) / 2)
    assert doc["studies"][0]["decomposition"]["headline"] is not None
    for f in ("fair_study.json", "fair_runs.csv", "fair_summary.csv"):
        assert (out / f).stat().st_size > 0
    bad = CliRunner().invoke(cli, ["simulate", "--seeds", "x"])
    assert bad.exit_code != 0 and "seeds 'x'" in bad.output


def test_a_study_trains_checks_and_aggregates_as_a_run_does() -> None:
    """One config system: the study holds the run config's tables, and the CLI's defaults are the study's."""
    from tinyfed.commands.simulate import simulate, study_config
    from tinyfed.host.config import RunConfig

    run, study = RunConfig(), StudyConfig()
    assert (study.training, study.strategy_params, study.checks, study.evaluation) == (
        run.training, run.strategy_params, run.checks, run.evaluation)
    assert study.strategy_params.clients_per_round == 10 == study.strategy("fedavg").params.clients_per_round
    params = simulate.make_context("simulate", []).params
    options = {k: v for k, v in params.items() if k not in ("backend", "address", "out_dir", "boards_dirs", "as_json")}
    assert study_config(options) == study
    record = study.record()  # study.json's config, flat as it always was
    assert [k for k in record if k not in StudyConfig.model_fields] == [
        "buffer_size", "clients_per_round", "server_lr", "norm_bound", "max_staleness", "evaluate_every"]
    assert record["training"] == run.training.model_dump() and record["strategies"] == ["ftte", "fedbuff", "fedavg"]


def test_training_is_a_pure_function_of_the_task(study: Study) -> None:
    model = study.model("subset")
    idx = study.shards[0]
    a = train_step(model, model.w0, idx, 7, 0, LocalTraining(), False)
    b = train_step(model, model.w0.copy(), idx.copy(), 7, 0, LocalTraining(), False)
    c = train_step(model, model.w0, idx, 8, 0, LocalTraining(), False)
    assert np.array_equal(a.delta, b.delta) and a.loss == b.loss and a.wire_bytes == model.update_bytes
    assert not np.array_equal(a.delta, c.delta)


class _ReverseBatchBackend(LocalBackend):
    """Trains every pending task at the first result asked for, newest first: another order, as a
    parallel backend would see it."""

    def __init__(self) -> None:
        super().__init__()
        self.done: dict[int, object] = {}

    def finish(self, task_id: int):
        if task_id not in self.done:
            for tid in sorted(self._pending, reverse=True):
                self.done[tid] = train_step(*self._pending.pop(tid))
        self.steps += 1
        return self.done.pop(task_id)


def test_the_training_order_of_a_backend_does_not_change_the_run(study: Study) -> None:
    runs = []
    for backend in (LocalBackend(), _ReverseBatchBackend()):
        fleet = make_fleet(study.shards, 16, MIX, 0.5, Slowdown.parse("uniform:2:10"), 0)
        strat = get_strategy("fedbuff", fleet_size=16, buffer_size=4)
        runs.append(Simulation(study.model("dense"), fleet, strat, limits=SimLimits(max_versions=4), seed=0,
                               backend=backend).run())
    assert runs[0].event_digest == runs[1].event_digest
    assert np.array_equal(runs[0].vector, runs[1].vector)


def test_a_run_continued_in_pieces_is_the_run_made_in_one(study: Study) -> None:
    _, whole = _run(study, "fedbuff", versions=6)
    fleet = make_fleet(study.shards, 16, MIX, 0.5, Slowdown.parse("uniform:2:10"), 0)
    strat = get_strategy("fedbuff", fleet_size=16, buffer_size=4, clients_per_round=4, ignore_extra=True)
    sim = Simulation(study.model("dense"), fleet, strat, limits=SimLimits(max_versions=2), seed=0, record_trace=True)
    first = sim.run()
    assert first.versions == 2 and first.event_digest != whole.event_digest
    halfway = whole.trace[len(first.trace) + 5][0]  # a moment between two events of the third version
    sim.run(SimLimits(max_sim_seconds=halfway, stop_at_target=False))
    assert sim.now == halfway
    rest = sim.run(SimLimits(max_versions=6))
    assert rest.trace == whole.trace and rest.event_digest == whole.event_digest
    assert np.array_equal(rest.vector, whole.vector)
    assert [h["accuracy"] for h in rest.history] == [h["accuracy"] for h in whole.history]


def test_a_study_takes_every_final_accuracy_at_one_horizon(study: Study) -> None:
    cfg = StudyConfig(**{**study.cfg.model_dump(), "target_accuracy": 0.3, "max_versions": 40, "horizon": "auto"})
    s = Study(cfg, work_dir=study.work_dir)
    s._models = study._models  # the same plan and frozen outputs
    results = s.run_all()
    stops = {name: s.simulation(name).run(cfg.limits()).sim_seconds for name in cfg.strategies}  # first legs again
    # auto: the latest stop / 0.9, so every end window (the last tenth) starts after every time to target
    assert s.horizon_s == pytest.approx(max(stops.values()) / (1 - simulator.END_WINDOW))
    assert s.horizon_s * (1 - simulator.END_WINDOW) >= max(r.time_to_target_s for r in results.values())
    for name, r in results.items():
        assert r.sim_seconds == pytest.approx(s.horizon_s) and r.reached_target, name
        assert 0 < r.bytes_to_target <= r.bytes_total
        before = [h for h in r.history if h["sim_time_s"] < 0.9 * r.sim_seconds]
        holding = [h["accuracy"] for h in [*before[-1:], *r.history[len(before):]]]  # the versions of the last tenth
        assert min(holding) <= r.end_accuracy_mean <= max(holding), name
        past = [h for h in r.history if h["sim_time_s"] > r.time_to_target_s]
        # past the target the curve is sampled on a grid of the horizon, not at every version
        assert len(past) <= 2 * simulator.HORIZON_EVALUATIONS + 1
        assert r.sim_seconds > stops[name], name  # every run goes on past its own stop
        if r.versions > r.versions_to_target:
            assert past, name
    one = Simulation(s.model("subset"), s.fleet, cfg.strategy("ftte"), seed=cfg.seed,
                     limits=SimLimits(max_sim_seconds=s.horizon_s, stop_at_target=False))
    straight = one.run()  # the two legs are one run to the horizon
    assert straight.event_digest == results["ftte"].event_digest
    assert np.array_equal(straight.vector, results["ftte"].vector)
    with pytest.raises(TinyfedError, match="horizon: horizon -5.0 is not understood"):
        checked(StudyConfig, {**cfg.model_dump(), "horizon": -5.0}, "a test")


def _online_at(sim: Simulation, device: int, t: float) -> bool:
    """The availability model by hand: device i is at phase_i + t of its cycle."""
    a = sim.availability
    phase = np.random.default_rng([sim.seed, 0xA7A1]).uniform(0.0, a.period_s, len(sim.fleet.devices))[device]
    return (phase + t) % a.period_s < a.online * a.period_s


def test_devices_work_only_inside_their_availability_windows(study: Study) -> None:
    fleet = make_fleet(study.shards, 16, MIX, 0.5, Slowdown.parse("uniform:2:10"), 0)
    probe = Simulation(study.model("subset"), fleet, get_strategy("ftte", fleet_size=16, buffer_size=4), seed=0)
    typical = float(np.median([probe.task_seconds(d, True) for d in fleet.devices]))
    availability = Availability(period_s=3 * typical, online=0.5)
    sim = Simulation(study.model("subset"), fleet, get_strategy("ftte", fleet_size=16, buffer_size=4), seed=0,
                     availability=availability, limits=SimLimits(max_versions=8), record_trace=True)
    res = sim.run()
    index = {d.name: i for i, d in enumerate(fleet.devices)}
    dispatched: dict[int, tuple[float, int]] = {}
    cut = 0
    for t, kind, task, name in res.trace:
        if kind == "dispatch":
            i = index[name]
            assert _online_at(sim, i, t + 1e-9), (name, t)
            dispatched[task] = (t, i)
        elif kind == "arrive":
            start, i = dispatched[task]
            assert _online_at(sim, i, (start + t) / 2)  # it worked inside one window
        elif kind == "lost":
            start, i = dispatched[task]
            assert not _online_at(sim, i, t + 1e-6)  # lost exactly when its window closed
            cut += 1
        elif kind == "online":
            assert _online_at(sim, task, t + 1e-9) and not _online_at(sim, task, t - 1e-6)
    assert res.versions == 8 and cut == res.updates_lost == res.updates_lost_offline > 0
    # always available is no availability model at all
    _, plain = _run(study, "ftte", versions=8)
    _, always = _run(study, "ftte", versions=8, availability=Availability.parse("always"))
    assert plain.event_digest == always.event_digest
    assert Availability.parse("3600:0.25") == Availability(3600.0, 0.25)
    for bad in ("3600", "0:0.5", "3600:0", "3600:1.5", "x:y"):
        with pytest.raises(TinyfedError, match="PERIOD:FRACTION"):
            Availability.parse(bad)


# ---------------------------------------------------------------- variants: payloads, deadlines, over-selection

def test_fedbuff_on_the_subset_is_ftte_without_the_variance_term(har_study: Study) -> None:
    """fedbuff@subset trains what FTTE trains (w*, int8 updates, head cache) and weights as FTTE with gamma 0."""
    study = har_study
    fleet = make_fleet(study.shards, 8, MIX, 0.5, Slowdown.parse("uniform:2:10"), 0)
    runs = {}
    for label, params in (("fedbuff@subset", {}), ("ftte", {"variance_gamma": 0.0}), ("ftte", {})):
        strat = study.cfg.strategy(label) if not params else get_strategy("ftte", fleet_size=8, buffer_size=4,
                                                                         **params)
        assert strat.payload == "subset" and strat.params.buffer_size == 4
        sim = Simulation(study.model(strat.payload), fleet, strat, limits=SimLimits(max_versions=4), seed=0,
                         record_trace=True)
        assert sim.float_update is False
        runs[(label, tuple(params))] = sim.run()
    fb, flat, ftte = runs[("fedbuff@subset", ())], runs[("ftte", ("variance_gamma",))], runs[("ftte", ())]
    assert fb.strategy == "fedbuff@subset" and fb.payload == "subset"
    assert fb.event_digest == flat.event_digest and np.array_equal(fb.vector, flat.vector)
    assert fb.bytes_per_update == ftte.bytes_per_update and fb.device_memory_bytes == ftte.device_memory_bytes
    assert not np.array_equal(fb.vector, ftte.vector)  # the variance term does change the run


def test_fedavg_overselection_closes_each_round_at_m_arrivals(study: Study) -> None:
    sim, res = _run(study, "fedavg", versions=3, clients_per_round=4, overselect_factor=2.0)
    rounds: list[list[tuple[float, str, int]]] = [[]]
    for t, kind, task, _device in res.trace:
        if kind == "step":
            rounds.append([])
        else:
            rounds[-1].append((t, kind, task))
    assert len([e for e in rounds[0] if e[1] == "dispatch"]) == 8  # the first round samples ceil(2 * 4) of 16
    assert len([e for e in rounds[0] if e[1] == "arrive"]) == 4  # the step comes with the 4th arrival
    assert sim.strategy.counters["ignored"] > 0  # later arrivals of a closed round are ignored, not applied
    _, plain = _run(study, "fedavg", versions=3, clients_per_round=4)
    assert plain.sim_seconds > res.sim_seconds  # waiting for every sampled straggler takes longer


def test_late_arrivals_fedavg_will_ignore_are_not_trained_and_change_nothing(study: Study, monkeypatch) -> None:
    from tinyfed.host.strategies.base import Strategy
    from tinyfed.host.strategies.fedavg import FedAvg

    def counted(*, skip: bool):
        if not skip:  # the loop before: every late arrival trained, then ignored by on_update
            monkeypatch.setattr(FedAvg, "will_ignore", Strategy.will_ignore)
        sim, res = _run(study, "fedavg", versions=4, clients_per_round=4, overselect_factor=2.0)
        monkeypatch.undo()
        return sim, res

    skipping_sim, skipping = counted(skip=True)
    training_sim, training = counted(skip=False)
    assert skipping.event_digest == training.event_digest and np.array_equal(skipping.vector, training.vector)
    assert skipping_sim.strategy.counters == training_sim.strategy.counters
    assert skipping_sim.strategy.counters["ignored"] > 0
    assert skipping.board_steps == training.board_steps  # the boards did train them: the simulated run is the same
    assert skipping.host_trainings < training.host_trainings  # the host does not spend time on updates nobody reads


def test_fedavg_deadline_is_an_event_at_dispatch_plus_deadline(study: Study) -> None:
    fleet = make_fleet(study.shards, 16, MIX, 0.5, Slowdown.parse("uniform:2:10"), 0)
    probe = Simulation(study.model("dense"), fleet, get_strategy("fedavg", fleet_size=16), seed=0)
    deadline = float(np.median([probe.task_seconds(d, True) for d in fleet.devices]))
    runs = [_run(study, "fedavg", versions=4, clients_per_round=4, round_deadline_s=deadline)[1] for _ in range(2)]
    res = runs[0]
    assert res.event_digest == runs[1].event_digest and res.versions == 4
    round_start, closed_at_deadline = 0.0, 0
    for i, (t, kind, _task, _device) in enumerate(res.trace):
        if kind == "dispatch" and (i == 0 or res.trace[i - 1][1] != "dispatch"):
            round_start = t  # a round's tasks are dispatched together
        if kind == "step":
            assert t <= round_start + deadline + 1e-9  # no round outlives its deadline
            if res.trace[i - 1][1] == "deadline":
                closed_at_deadline += 1
                assert res.trace[i - 1][0] == pytest.approx(round_start + deadline)
    assert closed_at_deadline > 0
    _, plain = _run(study, "fedavg", versions=4, clients_per_round=4)
    assert "deadline" not in {kind for _, kind, _, _ in plain.trace}


def test_a_study_runs_variants_under_their_labels(tmp_path, monkeypatch: pytest.MonkeyPatch, study: Study) -> None:
    from tinyfed.cli import cli

    monkeypatch.setattr(simulator.Study, "_build", lambda self, payload: study.model(payload))
    labels = "ftte,fedbuff@subset,fedavg@subset+overselect,fedavg"
    res = CliRunner().invoke(cli, ["simulate", "--model", "digits_cnn", "--count", "12", "--partition", "iid",
                                   "--board-mix", "nrf52840:0.5,apollo3:0.5", "--buffer-size", "4",
                                   "--clients-per-round", "3", "--target-accuracy", "0.2", "--max-versions", "2",
                                   "--horizon", "none", "--strategies", labels, "--server-optimizer", "momentum",
                                   "--server-momentum", "0.5", "--concurrency", "6", "--overselect-factor", "1.5",
                                   "--variance-floor", "0.25", "--agreement-exponent", "1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert list(doc["strategies"]) == labels.split(",") == list(doc["results"])
    s = doc["strategies"]
    assert [s[k]["payload"] for k in s] == ["subset", "subset", "subset", "dense"]
    assert s["fedavg@subset+overselect"]["params"]["overselect_factor"] == 1.5 and s["fedavg"]["params"][
        "overselect_factor"] == 1.0
    assert s["fedbuff@subset"]["name"] == "fedbuff" and s["fedbuff@subset"]["params"]["concurrency"] == 6
    assert all(v["params"]["server_optimizer"] == "momentum" for v in s.values())
    assert s["ftte"]["strategy"] == "ftte" and s["fedbuff@subset"]["strategy"] == "fedbuff@subset"
    assert s["ftte"]["params"]["variance_floor"] == 0.25 and s["ftte"]["params"]["agreement_exponent"] == 1.0
    bad = CliRunner().invoke(cli, ["simulate", "--strategies", "ftte,ftte+overselect"])
    assert bad.exit_code == 2 and "ftte does not sample rounds" in bad.output
    bad = CliRunner().invoke(cli, ["simulate", "--strategies", "ftte,fedbuff@subset,ftte"])
    assert bad.exit_code == 2 and "given more than once" in bad.output
    with pytest.raises(TinyfedError, match="top level"):
        checked(StudyConfig, {"strategy_params": {"round_deadline_s": 5.0}}, "a test")


@pytest.mark.parametrize("spec", ["sign-flip", "scale:3"])
def test_attacking_boards_send_their_honest_update_transformed(study: Study, spec: str) -> None:
    """The first step's updates (all trained from version 0, so the same training with or without an
    attack): an attacking board's delta is its honest delta times the factor, with the variance of
    what it sends; every other board's is untouched."""
    attack = Attack.parse(spec, 0.5)
    firsts = []
    for a in (Attack(), attack):
        sim = study.simulation("ftte")
        sim.attack, sim.attackers = a, a.devices(len(study.fleet.devices), study.cfg.seed)
        seen: list[Any] = []
        original = sim.strategy.on_update
        sim.strategy.on_update = lambda u, v, seen=seen, original=original: (seen.append(u), original(u, v))[1]
        sim.run(SimLimits(max_versions=1))
        sim.close()
        firsts.append({u.key: u for u in seen if u.base_version == 0})
    clean, attacked = firsts
    index = {d.name: i for i, d in enumerate(study.fleet.devices)}
    bad = [k for k in clean if index[k[0]] in attack.devices(len(index), study.cfg.seed)]
    assert bad and len(bad) < len(clean) and set(clean) == set(attacked)
    for key, u in clean.items():
        f = attack.factor if key in bad else 1.0
        np.testing.assert_allclose(attacked[key].delta, f * u.delta, rtol=1e-6)
        assert attacked[key].variance == pytest.approx(f * f * u.variance)
