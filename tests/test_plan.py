"""The planner end to end on the zoo: fragments, measured RAM, the FTTE saving, and the fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinyfed.boards import get_board, load_fleet, single_board_fleet
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.models.tflm import TflmModel, chain, measure_arena, quantize
from tinyfed.planner import trainable as tfw
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import Plan, make_plan, model_ram_budget
from tinyfed.planner.sources import load_model_source

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def har_source():
    """har_cnn's model source; its int8 model comes from the run's shared cache (conftest)."""
    return load_model_source("har_cnn", None, TrainingConfig())


@pytest.fixture(scope="session")
def har_plan(har_source, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    out = tmp_path_factory.mktemp("plan_har")
    return make_plan(har_source, single_board_fleet(get_board("nrf52840")), TrainingConfig(), out)


@pytest.fixture(scope="session")
def har_head_plan(har_source, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    """A plan with a frozen int8 head, ranked nearest the output first."""
    out = tmp_path_factory.mktemp("plan_har_head")
    plan = make_plan(har_source, single_board_fleet(get_board("nrf52840")), TrainingConfig(importance="depth"), out)
    assert plan.cut > 0
    return plan


def _quantized_test_inputs(model_bytes: bytes) -> np.ndarray:
    from tinyfed.models.zoo import get_zoo_model

    x = get_zoo_model("har_cnn").test_split().x
    details = TflmModel(model_bytes).input_details[0]
    qp = details["quantization_parameters"]
    scale, zero_point = qp["scales"][0], qp["zero_points"][0]
    return quantize(x, float(scale), int(zero_point))


def test_har_cnn_fits_nrf52840_with_the_ftte_saving(har_plan: Plan) -> None:
    assert har_plan.fits
    assert har_plan.trainable_params > 0
    assert har_plan.importance_method == "fisher" == har_plan.config.importance
    # one sample's activations (not a batch's) and the 64 KiB program store bound w* (issue 13)
    assert har_plan.training.total <= 0.40 * har_plan.full_training.total
    fit = har_plan.fits_by_board["nrf52840"]
    assert fit.ram_used <= fit.board.ram_bytes and fit.flash_used <= fit.board.flash_bytes
    # The firmware's arena (head arena plus training state) stays within M_min.
    assert har_plan.arena + har_plan.training.total <= har_plan.m_min_bytes


def test_tflm_arena_is_reported_beside_the_firmwares(har_head_plan: Plan) -> None:
    measured_arena = measure_arena(har_head_plan.files["frozen"].read_bytes()).bytes
    assert measured_arena == har_head_plan.tflm_arena_measured
    assert abs(har_head_plan.tflm_arena_estimated - measured_arena) <= 0.10 * measured_arena
    assert har_head_plan.fits_by_board["nrf52840"].ram_lines["inference_arena"] == har_head_plan.arena


def test_fragments_chain_bit_exactly_on_the_whole_test_split(har_head_plan: Plan) -> None:
    har_plan = har_head_plan
    full = har_plan.files["model"].read_bytes()
    head = har_plan.files["frozen"].read_bytes()
    tail = har_plan.files["tail"].read_bytes()
    x = _quantized_test_inputs(full)
    assert len(x) > 500
    expected = TflmModel(full).run(x)
    got = chain([head, tail], x)
    np.testing.assert_array_equal(got, expected)
    assert len(head) + len(tail) < len(full) + 4096  # no duplicated weights


def test_frozen_fragment_holds_no_trainable_op(har_head_plan: Plan) -> None:
    har_plan = har_head_plan
    head = TfliteGraph.from_bytes(har_plan.files["frozen"].read_bytes())
    tail = TfliteGraph.from_bytes(har_plan.files["tail"].read_bytes())
    assert len(head.ops) == har_plan.cut
    assert len(head.ops) + len(tail.ops) == len(har_plan.facts)
    assert min(har_plan.selection.layers) >= har_plan.cut


def test_trainable_file_matches_plan_and_tail_weights(har_plan: Plan) -> None:
    units = tfw.decode(har_plan.files["trainable"].read_bytes())
    assert sum(u.values.size for u in units) == har_plan.trainable_params
    tail = TfliteGraph.from_bytes(har_plan.files["tail"].read_bytes())
    for u in units:
        info = tail.tensors[u.tensor_index]
        q = tail.constant_data(u.tensor_index)
        moved = np.moveaxis(q, u.axis, 0).reshape(q.shape[u.axis], -1).astype(np.float64)
        scales = np.broadcast_to(np.array(info.scales), (moved.shape[0],))
        zps = np.broadcast_to(np.array(info.zero_points), (moved.shape[0],))
        expect = (moved - zps[:, None]) * scales[:, None]
        np.testing.assert_allclose(u.values, expect[list(u.channels)], rtol=1e-6)


def test_plan_json_is_complete(har_plan: Plan) -> None:
    doc = json.loads(har_plan.files["plan"].read_text())
    for key in ("fits", "m_min_bytes", "boards", "trainable_params", "total_params", "fragments", "units", "layers"):
        assert key in doc
    board = doc["boards"]["nrf52840"]
    for key in ("ram_bytes_used", "ram_bytes_budget", "flash_bytes_used", "flash_bytes_budget"):
        assert isinstance(board[key], int)
    assert sum(u["params"] for u in doc["units"]) == doc["trainable_params"]
    assert all(Path(p).is_file() for p in doc["fragments"])


def test_fleet_m_min_is_the_smallest_budget(har_source, tmp_path: Path) -> None:
    fleet = load_fleet("smartwatch")
    plan = make_plan(har_source, fleet, TrainingConfig(), None, measure=False)
    budgets = {b.name: model_ram_budget(b) for b in fleet.boards}
    assert plan.m_min_bytes == min(budgets.values())
    assert budgets[plan.m_min_board] == plan.m_min_bytes
    assert set(plan.fits_by_board) == {b.name for b in fleet.boards}
    # Every board trains the same w*, so the same training state is on every board.
    lines = {name: fit.ram_lines["float32_weights"] for name, fit in plan.fits_by_board.items()}
    assert len(set(lines.values())) == 1


def test_bigger_budget_trains_more(har_source) -> None:
    cfg = TrainingConfig(batch_size=4)
    small = make_plan(har_source, single_board_fleet(get_board("nrf52840")), cfg, None, measure=False)
    big = make_plan(har_source, single_board_fleet(get_board("stm32l4r9")), cfg, None, measure=False)
    assert big.trainable_params > small.trainable_params
    assert small.trainable_params > 0


def test_full_training_does_not_fit_and_says_why(har_source) -> None:
    plan = make_plan(har_source, single_board_fleet(get_board("nrf52840")), TrainingConfig(), None, measure=False,
                     trainable="full")
    assert not plan.fits
    assert any("nrf52840: RAM needs" in p and "KiB over (largest line" in p for p in plan.problems)
    assert any("largest trainable subset" in s for s in plan.suggestions)
    assert any("board" in s for s in plan.suggestions)


def test_depth_fallback_without_float_model(har_source) -> None:
    from tinyfed.planner.plan import ModelSource

    bare = ModelSource(name="har.tflite", kind="tflite", tflite=har_source.tflite)
    plan = make_plan(bare, single_board_fleet(get_board("nrf52840")), TrainingConfig(), None, measure=False)
    assert plan.importance_method == "depth"
    assert plan.fits and plan.trainable_params > 0
    # Nearest the output first: the last weighted layer is fully trained.
    last = max(plan.selection.layers)
    layer = plan.selection.layers[last]
    assert layer.bias and len(layer.channels) == plan.facts[last].out_channels


def test_digits_plans_with_its_depthwise_layer(tmp_path: Path) -> None:
    source = load_model_source("digits_cnn", None, TrainingConfig())
    plan = make_plan(source, single_board_fleet(get_board("nrf52840")), TrainingConfig(), tmp_path)
    assert plan.fits
    assert "DEPTHWISE_CONV_2D" in [f.name for f in plan.facts]
    full = plan.files["model"].read_bytes()
    from tinyfed.models.zoo import get_zoo_model

    x = get_zoo_model("digits_cnn").test_split().x
    details = TflmModel(full).input_details[0]["quantization_parameters"]
    xq = quantize(x, float(details["scales"][0]), int(details["zero_points"][0]))
    parts = [plan.files[k].read_bytes() for k in ("frozen", "tail") if k in plan.files]
    np.testing.assert_array_equal(chain(parts, xq), TflmModel(full).run(xq))


def test_the_dense_plan_is_the_whole_model_the_ftte_plan_compares_with(har_source) -> None:
    from tinyfed.errors import PlanError
    from tinyfed.planner.dense import plan_dense

    plan = make_plan(har_source, single_board_fleet(get_board("nrf52840")), TrainingConfig(), None, measure=False)
    dense = plan_dense(har_source.tflite, "har_cnn", TrainingConfig())
    assert dense.training == plan.full_training  # one memory model for "every layer"
    assert sum(u.values.size for u in dense.units) == plan.total_params
    assert (dense.ram_bytes, dense.program_bytes) == (707_064, 254_960)
    an386, large = get_board("mps2-an386"), get_board("mps2-an386-large")
    assert dense.fits(large) and not dense.fits(an386)
    assert dense.emulated_board(an386) is not an386 and dense.emulated_board(an386).name == "mps2-an386-large"
    with pytest.raises(PlanError, match="needs 707,064 bytes of RAM") as info:
        dense.check_fits([large, an386])
    assert info.value.source == "mps2-an386" and "--strategy ftte" in (info.value.fix or "")


def test_nested_subsets_per_board_class(har_source, tmp_path: Path) -> None:
    """Under a core cap of 0.1 of whole-model training memory, the smallest board trains the core and
    the bigger ones supersets of it, each with its own cut, fragments and slice of the global vector."""
    from tinyfed.boards.fleet import ResolvedFleet
    from tinyfed.planner.nested import is_superset

    names = ["nrf52840", "apollo3", "stm32l4r9"]
    fleet = ResolvedFleet(name="mix", entries=[(get_board(b), 2) for b in names], description="mix")
    plan = make_plan(har_source, fleet, TrainingConfig(), tmp_path, measure=False, core_budget=0.1, nested=True)
    assert plan.fits and plan.nested is not None
    nested = plan.nested
    assert plan.training.total <= 0.1 * plan.full_training.total
    core = nested.class_of("nrf52840")
    assert core.values == plan.trainable_params and core.training.total == plan.training.total
    values = [nested.class_of(b).values for b in names]
    assert values == sorted(values) and values[0] < values[-1]
    for b in names:
        c = nested.class_of(b)
        assert is_superset(c.selection, plan.selection)
        assert c.ram_used <= get_board(b).ram_bytes and not c.problems
        assert len(set(c.index.tolist())) == c.values and int(c.index.max()) < nested.size
        units = tfw.decode((tmp_path / "nested" / b / "trainable.tfw").read_bytes())
        assert sum(u.values.size for u in units) == c.values
    assert nested.cut == min(c.cut for c in nested.classes.values()) < plan.cut
    global_units = tfw.decode((tmp_path / "nested" / "global" / "trainable.tfw").read_bytes())
    assert sum(u.values.size for u in global_units) == nested.size
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["core_budget_bytes"] == int(0.1 * plan.full_training.total)
    assert doc["nested"]["classes"]["stm32l4r9"]["values"] == values[-1]
    assert doc["nested"]["classes"]["nrf52840"]["training_memory_ratio"] <= 0.1
