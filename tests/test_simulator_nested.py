"""Nested subsets in the fleet simulator: each board class trains its own superset of the core from
its own frozen fragment, and the server places every update at its class's positions."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfed.host.config import StrategyParams
from tinyfed.host.simulator import SimLimits, Simulation, Study, StudyConfig, train_step
from tinyfed.host.strategies import get_strategy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    cfg = StudyConfig(model="har_cnn", clients=8, partition="iid", board_mix="nrf52840:0.5,stm32l4r9:0.5",
                      stragglers=0.0, seed=0, target_accuracy=None, max_versions=3, eval_samples=60,
                      nested_subsets=True, core_budget=0.1,
                      strategy_params=StrategyParams(buffer_size=4, clients_per_round=4))
    return Study(cfg, work_dir=tmp_path_factory.mktemp("sim-nested"))


def test_each_class_trains_its_part_of_the_global_vector(study: Study) -> None:
    model = study.model("nested")
    assert model.classes is not None and set(model.classes) == {"nrf52840", "stm32l4r9"}
    small, big = model.classes["nrf52840"], model.classes["stm32l4r9"]
    assert small.size < big.size <= model.size
    assert set(small.index.tolist()) <= set(big.index.tolist())  # the core is in every class
    np.testing.assert_array_equal(small.w0, model.w0[small.index])
    # the big class's frozen fragment is shorter (its cut is earlier): more float work per sample
    assert big.train_macs > small.train_macs and big.frozen_macs < small.frozen_macs
    assert small.device_memory_bytes == model.device_memory_bytes  # the headline: the smallest board's
    whole = study.model("dense").device_memory_bytes
    assert small.device_memory_bytes <= 0.1 * whole < big.device_memory_bytes
    training = study.cfg.training.local_training()
    res = train_step(big, model.w0, np.arange(16), 1, 0, training, False)
    assert res.delta.size == big.size and np.abs(res.delta).sum() > 0


def test_a_nested_run_moves_values_of_every_class_and_reports_them(study: Study) -> None:
    cfg = study.cfg
    strategy = cfg.strategy("ftte")
    assert study.payload_of(strategy) == "nested"
    sim = study.simulation("ftte")
    result = sim.run(SimLimits(max_versions=10))
    model = study.model("nested")
    assert result.versions == 10 and result.updates_accepted >= 40
    moved = np.flatnonzero(result.vector != model.w0)
    assert model.classes is not None
    big_only = np.setdiff1d(model.classes["stm32l4r9"].index, model.classes["nrf52840"].index)
    assert np.intersect1d(moved, model.classes["nrf52840"].index).size > 0
    assert np.intersect1d(moved, big_only).size > 0
    assert set(result.classes) == {"nrf52840", "stm32l4r9"}
    assert result.classes["stm32l4r9"]["values"] == model.classes["stm32l4r9"].size
    assert result.to_dict()["classes"]["nrf52840"]["device_memory_bytes"] == result.device_memory_bytes
    # the upload of each board is its own class's update image
    for dev in sim.fleet.devices:
        board = sim.fleet.boards[dev.board].name
        _, up, _, _ = sim._link_cost(dev.board, True)
        assert up > model.classes[board].update_bytes


def test_a_nested_run_is_deterministic(study: Study) -> None:
    runs = []
    for _ in range(2):
        # FedBuff's weighting on the nested subsets
        strategy = get_strategy("fedbuff", fleet_size=study.cfg.clients, buffer_size=4, payload="subset")
        sim = Simulation(study.model("nested"), study.fleet, strategy, limits=SimLimits(max_versions=2), seed=3)
        runs.append(sim.run())
    assert runs[0].event_digest == runs[1].event_digest
    assert np.array_equal(runs[0].vector, runs[1].vector)


def test_a_refresh_recuts_each_class_from_the_global_vector(study: Study) -> None:
    """Every R versions each class's frozen fragment and tail constants become the global vector's:
    its features are then its samples through the fragment re-cut from the current vector, the
    refreshed fragment is charged to its devices' next download, and R=None keeps the run as it was."""
    from tinyfed.host.export import deployable_model
    from tinyfed.host.nested_refresh import NestedRefresh
    from tinyfed.models.tflite_graph import TfliteGraph

    model = study.model("nested")
    assert model.classes is not None and model.refresh is not None and model.inputs is not None
    small = model.classes["nrf52840"]
    setup = model.refresh.classes["nrf52840"]
    # at the start vector a re-cut gives back the provisioned fragment, byte for byte
    assert model.refresh.cut(model.w0)["nrf52840"].frozen == setup.frozen_tflite

    base = study.simulation("ftte").run(SimLimits(max_versions=4))
    sim = study.simulation("ftte")
    sim._init_refresh(2)
    sim._rows = {k: r[:64] for k, r in sim._rows.items()}  # a few samples: their features are what is checked
    # a global vector whose op-3/op-5 values (outside the core) moved far enough to change int8 bytes
    big_only = np.setdiff1d(model.classes["stm32l4r9"].index, small.index)
    moved = model.w0.copy()
    moved[big_only] += np.random.default_rng(0).normal(0, 0.2, big_only.size).astype(np.float32)
    sim.rounds.vector = moved
    sim._refresh()
    b = next(k for k, board in enumerate(sim.fleet.boards) if board.name == "nrf52840")
    new = sim._models[b]
    assert new is not small and sim._board_gen[b] == 1 and sim._frozen_gen[b] == 1
    frozen, _ = TfliteGraph.from_bytes(deployable_model(model.refresh.source, moved).model).split(setup.cut)
    expected = NestedRefresh.features(NestedRefresh.frozen_blob(frozen), new.tail, model.inputs[sim._rows[b]])
    np.testing.assert_array_equal(new.features[sim._rows[b]], expected)
    assert not np.array_equal(new.features[sim._rows[b]], small.features[sim._rows[b]])
    # the big class trains op 3 and op 5 itself: its constants outside its units did not move
    big = next(k for k, board in enumerate(sim.fleet.boards) if board.name == "stm32l4r9")
    assert sim._board_gen[big] == 0
    # a device of the refreshed class pays the fragment once, on its next task
    dev = next(i for i, d in enumerate(sim.fleet.devices) if d.board == b)
    down, up = sim._refresh_cost(dev)
    assert down > len(NestedRefresh.frozen_blob(frozen)) and up > 0
    assert sim._refresh_cost(next(i for i, d in enumerate(sim.fleet.devices) if d.board == big)) == (0, 0)

    # a run refreshed at version 3 charges the loads and differs from the plain one; armed but never
    # due, it is the plain run
    refreshed = study.simulation("ftte")
    refreshed._init_refresh(3)
    res = refreshed.run(SimLimits(max_versions=4))
    assert refreshed.refreshes == 1 and res.event_digest != base.event_digest
    assert res.bytes_down == base.bytes_down + refreshed.refresh_bytes_down  # loads only where int8 bytes moved
    idle = study.simulation("ftte")
    idle._init_refresh(1000)
    assert idle.run(SimLimits(max_versions=4)).event_digest == base.event_digest
