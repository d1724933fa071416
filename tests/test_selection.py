"""The memory model and the greedy choice of w*, on synthetic layers (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfed.errors import PlanError
from tinyfed.firmware_bridge.compile.train_blob import WorkArea
from tinyfed.planner import trainable as tfw
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.importance import LayerImportance
from tinyfed.planner.memory import LayerFacts, LayerSelection, Selection, cut_for, training_memory
from tinyfed.planner.selection import greedy_select, ram_cost


def _facts() -> list[LayerFacts]:
    # conv(16 ch) -> conv(32 ch) -> reshape -> fc(64) -> fc(6) -> softmax, sequential.
    return [
        LayerFacts(0, "CONV_2D", 16 * 5 * 6, 16, 16, 16 * 5 * 6 + 64, 128 * 6, 128 * 16),
        LayerFacts(1, "CONV_2D", 32 * 5 * 16, 32, 32, 32 * 5 * 16 + 128, 128 * 16, 64 * 32),
        LayerFacts(2, "RESHAPE", 0, 0, 0, 0, 64 * 32, 64 * 32),
        LayerFacts(3, "FULLY_CONNECTED", 64 * 2048, 64, 64, 64 * 2048 + 256, 2048, 64),
        LayerFacts(4, "FULLY_CONNECTED", 6 * 64, 6, 6, 6 * 64 + 24, 64, 6),
        LayerFacts(5, "SOFTMAX", 0, 0, 0, 0, 6, 6),
    ]


def _importance(facts: list[LayerFacts]) -> dict[int, LayerImportance]:
    rng = np.random.default_rng(0)
    return {
        f.index: LayerImportance(rng.random(f.out_channels) * (f.index + 1), float(f.index + 1))
        for f in facts
        if f.trainable
    }


CUTS = [0, 1, 2, 3, 4, 5]


class _Layout:
    """A synthetic firmware layout: a head arena growing with the cut, and a one-sample work area
    holding the float32 input of every tail op from the first trainable one, plus a weight row."""

    def __init__(self, facts: list[LayerFacts]) -> None:
        self.facts = facts

    def front(self, cut: int) -> int:
        return 0 if cut == 0 else 4096 + 16 * cut

    def work(self, cut: int, first_op: int) -> WorkArea:
        tail = self.facts[cut:]
        row = 4 * max(f.params_per_channel for f in tail)
        work = 4 * sum(f.input_elems for f in self.facts[first_op:]) + 4 * tail[-1].output_elems + row
        return WorkArea(work, row, 0)


_arena = _Layout(_facts())


def test_training_memory_counts_every_line() -> None:
    facts = _facts()
    cfg = TrainingConfig(batch_size=4, optimizer="momentum")
    sel = Selection({4: LayerSelection(True, (0, 1, 2))})
    mem = training_memory(facts, sel, cfg, WorkArea(1004, 256, 0))
    params = 3 * 64 + 6
    assert mem.weights == mem.start == mem.gradients == 4 * params  # values, start, accumulated gradient
    assert mem.optimizer == 4 * params
    assert mem.activations == 1004 - 256 and mem.scratch == 256
    assert mem.update_scales == 4 * (3 + 6)  # one scale per trained channel, the bias's too
    assert (12 * params + 1004 + mem.padding) % 8 == 0 and 0 <= mem.padding < 8
    assert mem.total == sum(v for k, v in mem.as_dict().items() if k != "total")


def test_the_batch_size_costs_no_ram() -> None:
    facts = _facts()
    sel = Selection({1: LayerSelection(True, ())})
    work = _arena.work(1, 1)
    one = training_memory(facts, sel, TrainingConfig(batch_size=1), work)
    many = training_memory(facts, sel, TrainingConfig(batch_size=512), work)
    assert one == many and one.activations + one.scratch == work.work_bytes


def test_cut_is_last_clean_boundary_before_first_trainable_op() -> None:
    assert cut_for(3, [0, 1, 2, 3, 4], 6) == 3
    assert cut_for(3, [0, 1, 4], 6) == 1
    assert cut_for(None, [0, 1], 6) == 6


@pytest.mark.parametrize("budget", [6_000, 20_000, 80_000, 400_000, 3_000_000])
def test_greedy_respects_budget_and_grows_with_it(budget: int) -> None:
    facts = _facts()
    cfg = TrainingConfig(batch_size=8)
    sel, steps = greedy_select(facts, _importance(facts), budget, cfg, CUTS, _arena)
    cost = ram_cost(facts, sel, cfg, CUTS, _arena)
    assert cost.total <= budget
    # not monotonic: a step that moves the cut earlier gives the head's arena back
    assert all(s.ram_after <= budget for s in steps)
    if steps:
        assert steps[-1].ram_after == cost.total
    bigger, _ = greedy_select(facts, _importance(facts), budget * 2, cfg, CUTS, _arena)
    assert bigger.params(facts) >= sel.params(facts)


def test_greedy_takes_whole_model_when_budget_is_unlimited() -> None:
    facts = _facts()
    sel, _ = greedy_select(facts, _importance(facts), 10**12, TrainingConfig(), CUTS, _arena)
    assert sel.params(facts) == sum(f.params for f in facts)


def test_greedy_prefers_late_layers_when_early_ones_cost_activations() -> None:
    facts = _facts()
    cfg = TrainingConfig()
    flat = {f.index: LayerImportance(np.ones(f.out_channels), 1.0) for f in facts if f.trainable}
    sel, _ = greedy_select(facts, flat, 20_000, cfg, CUTS, _arena)  # one sample of the convs: ~28 KB
    assert sel.first_op() is not None and sel.first_op() >= 3


def test_weight_units_take_most_important_channels_first() -> None:
    facts = _facts()
    imp = _importance(facts)
    sel, steps = greedy_select(facts, imp, 8_000, TrainingConfig(batch_size=1), CUTS, _arena)
    for op, layer in sel.layers.items():
        if layer.channels:
            ranked = set(np.argsort(-imp[op].channel, kind="stable")[: len(layer.channels)].tolist())
            assert set(layer.channels) == ranked


def test_trainable_file_round_trip_and_crc() -> None:
    units = [
        tfw.TrainableUnit(2, 7, tfw.KIND_WEIGHTS, 0, (1, 4, 5), 8, np.arange(15, dtype=np.float32).reshape(3, 5)),
        tfw.TrainableUnit(2, 8, tfw.KIND_BIAS, 0, tuple(range(8)), 8,
                          np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1)),
    ]
    blob = tfw.encode(units)
    back = tfw.decode(blob)
    assert [(u.op_index, u.tensor_index, u.kind, u.channels) for u in back] == [
        (u.op_index, u.tensor_index, u.kind, u.channels) for u in units
    ]
    for a, b in zip(back, units, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
    corrupt = bytearray(blob)
    corrupt[-1] ^= 0x40
    with pytest.raises(PlanError, match="CRC"):
        tfw.decode(bytes(corrupt))
    with pytest.raises(PlanError, match="header"):
        tfw.decode(blob[:5])


def test_dequantize_per_channel() -> None:
    q = np.array([[10, -10], [4, 2]], dtype=np.int8)  # 2 output channels on axis 0
    out = tfw.dequantize_channels(q, np.array([0.5, 0.25]), np.array([0, 0]), 0)
    np.testing.assert_allclose(out, [[5.0, -5.0], [1.0, 0.5]])


@pytest.mark.parametrize("core_budget,class_budget", [(8_000, 40_000), (20_000, 400_000), (8_000, 3_000_000)])
def test_a_class_grows_a_superset_of_the_core(core_budget: int, class_budget: int) -> None:
    from tinyfed.planner.nested import is_superset
    from tinyfed.planner.selection import select

    facts = _facts()
    cfg = TrainingConfig(batch_size=8)
    core, _ = select(facts, _importance(facts), core_budget, cfg, CUTS, _arena)
    big, _ = select(facts, _importance(facts), class_budget, cfg, CUTS, _arena, start=core)
    assert core.params(facts) > 0
    assert is_superset(big, core)
    assert big.params(facts) > core.params(facts)
    assert ram_cost(facts, big, cfg, CUTS, _arena).total <= class_budget
    # a class with the core's budget gains nothing
    same, _ = select(facts, _importance(facts), core_budget, cfg, CUTS, _arena, start=core)
    assert same.params(facts) == core.params(facts)


def test_a_training_budget_caps_the_core() -> None:
    from tinyfed.planner.selection import select

    facts = _facts()
    cfg = TrainingConfig(batch_size=8)
    free, _ = select(facts, _importance(facts), 400_000, cfg, CUTS, _arena)
    cap = ram_cost(facts, free, cfg, CUTS, _arena).training.total // 3
    capped, _ = select(facts, _importance(facts), 400_000, cfg, CUTS, _arena, training_budget=cap)
    assert 0 < capped.params(facts) < free.params(facts)
    assert ram_cost(facts, capped, cfg, CUTS, _arena).training.total <= cap


def test_the_global_index_places_each_class_in_the_union() -> None:
    from tinyfed.planner.nested import global_units, index_in, union

    facts = _facts()
    a = Selection({4: LayerSelection(True, tuple(range(6))), 3: LayerSelection(False, (1, 5))})
    b = Selection({4: LayerSelection(True, tuple(range(6))), 3: LayerSelection(True, (0, 5, 9))})
    units = global_units(facts, union([a, b]))
    size = sum(u.size for u in units)
    ppc = facts[3].params_per_channel
    # op 3: channels (0, 1, 5, 9) then its bias (64), op 4: 6 channels then 6 biases
    assert size == 4 * ppc + 64 + 6 * facts[4].params_per_channel + 6
    ia, ib = index_in(units, facts, a), index_in(units, facts, b)
    assert ia.size == a.params(facts) and ib.size == b.params(facts)
    assert len(set(ia.tolist())) == ia.size and ia.max() < size
    # a's channel 1 is the union's second row of op 3, its channel 5 the third
    assert ia[0] == ppc and ia[ppc] == 2 * ppc
    # every value of the union is carried by some class
    assert set(ia.tolist()) | set(ib.tolist()) == set(range(size))
