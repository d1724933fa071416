"""The deployable int8 model of a run (``tinyfed.host.export``) on the har_cnn nRF52840 plan.

Writing the start vector back must give the plan's model byte for byte (so the write-back
adds no error of its own); a trained vector must give an int8 model, run through LiteRT, whose
test accuracy is within a point of the float master's; the frozen head must stay the plan's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tinyfed.errors import ModelError, TinyfedError
from tinyfed.host import export
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner import trainable as tfw


@pytest.fixture(scope="module")
def plan_case(har_training_case):
    plan_dir = Path(har_training_case.plan_json["fragments"][0]).parent
    frag = export.PlanFragments.from_dir(plan_dir)
    return har_training_case, frag, har_training_case.plan_json["cut_op"]


@pytest.fixture(scope="module")
def test_split():
    from tinyfed.models.zoo import get_zoo_model

    return get_zoo_model("har_cnn").test_split()


@pytest.fixture(scope="module")
def trained(plan_case):
    """w* after 4 epochs of SGD on the 8 case users' windows pooled (384 windows)."""
    from tinyfed.training import local_train

    case, _, _ = plan_case
    tail = case.float_tail()
    x = tail.dequantize_input(case._head(np.concatenate(case.users_x)))
    y = np.concatenate(case.users_y)
    res = local_train(tail, x, y, epochs=4, lr=np.float32(0.01), batch_size=16, seed=3)
    return np.concatenate([v.ravel() for v in res.values]).astype(np.float32)


def test_start_vector_reproduces_the_plan_bit_for_bit(plan_case, test_split) -> None:
    case, frag, _ = plan_case
    dep = export.deployable_model(frag, case.w0)
    assert dep.clipped == 0
    assert dep.model == frag.model and dep.tail == frag.tail and dep.frozen == frag.frozen
    req = export.requantize(frag.tail, frag.units(), case.w0)
    assert req.model == frag.tail and req.clipped == 0 and req.tensors == tuple(range(len(frag.units())))
    assert export.evaluate_int8(dep.model, test_split.x, test_split.y) == \
        export.evaluate_int8(frag.model, test_split.x, test_split.y)


def test_whole_model_start_vector_is_bit_exact(plan_case) -> None:
    _, frag, _ = plan_case
    units = tfw.whole_model_units(TfliteGraph.from_bytes(frag.model))
    w0 = np.concatenate([u.values.ravel() for u in units])
    dep = export.deployable_model(frag.model, w0)
    assert dep.clipped == 0 and dep.model == frag.model and dep.tail is None and dep.frozen is None
    assert len(dep.facts["tensors"]) == 2 * 6  # 4 conv + 2 dense layers, weights and biases


def test_trained_vector_int8_accuracy_tracks_the_float_master(plan_case, test_split, trained) -> None:
    case, frag, cut = plan_case
    float_acc0, _ = case.global_accuracy(case.w0)
    float_acc, float_loss = case.global_accuracy(trained)
    t = time.perf_counter()
    dep = export.deployable_model(frag, trained)
    int8_acc, int8_loss = export.evaluate_int8(dep.model, test_split.x, test_split.y)
    seconds = time.perf_counter() - t
    print(f"\nfloat master: {float_acc0:.4f} -> {float_acc:.4f} (loss {float_loss:.4f}); int8 LiteRT: {int8_acc:.4f} "
          f"(loss {int8_loss:.4f}); clipped {dep.clipped}; build + evaluate {seconds:.2f} s")
    assert dep.model != frag.model and float_acc != float_acc0  # the step did move the model
    assert abs(int8_acc - float_acc) <= 0.01
    assert TfliteGraph.from_bytes(dep.model).split(cut)[0] == frag.frozen  # the head is untouched
    # the tail written into the full model is the exported tail
    assert TfliteGraph.from_bytes(dep.model).split(cut)[1] == TfliteGraph.from_bytes(dep.tail).data
    score = export.int8_evaluator(frag, test_split.x, test_split.y)(trained)
    assert (score.metric, score.loss, score.clipped) == (int8_acc, int8_loss, dep.clipped)


def test_whole_model_perturbed_tracks_the_float_master(plan_case, test_split) -> None:
    """The baselines' path: every weight and bias moved a little, the whole model requantized."""
    from tinyfed.firmware_bridge.compile import local_data
    from tinyfed.training import FloatTail

    _, frag, _ = plan_case
    graph = TfliteGraph.from_bytes(frag.model)
    units = tfw.whole_model_units(graph)
    w0 = np.concatenate([u.values.ravel() for u in units])
    w = w0 * np.random.default_rng(5).normal(1.0, 0.02, w0.shape).astype(np.float32)
    dep = export.deployable_model(frag.model, w)
    int8_acc, _ = export.evaluate_int8(dep.model, test_split.x, test_split.y)
    tail = FloatTail.from_fragments(frag.model, tfw.encode(dep.units))
    t_in = graph.tensors[graph.inputs[0]]
    x = tail.dequantize_input(local_data.quantize_inputs(test_split.x, t_in.scales[0], t_in.zero_points[0]))
    float_acc = float((tail.forward(x, keep=False).reshape(len(x), -1).argmax(1) == test_split.y).mean())
    print(f"\nwhole model x N(1, 0.02): float master {float_acc:.4f}, int8 LiteRT {int8_acc:.4f}, "
          f"clipped {dep.clipped}")
    assert dep.clipped > 0  # scaling up a channel's extreme weight must clip it at +-127
    assert abs(int8_acc - float_acc) <= 0.01


def test_clipping_is_counted_and_only_unit_channels_change(plan_case) -> None:
    _, frag, _ = plan_case
    tail = TfliteGraph.from_bytes(frag.tail)
    units = frag.units()
    w_unit = next(u for u in units if u.kind == tfw.KIND_WEIGHTS and len(tail.tensors[u.tensor_index].shape) == 2)
    b_unit = next(u for u in units if u.kind == tfw.KIND_BIAS)
    # a unit of two channels of the first weight tensor, and its bias
    sub = [tfw.TrainableUnit(w_unit.op_index, w_unit.tensor_index, w_unit.kind, w_unit.axis, (1, 3),
                             w_unit.tensor_channels, w_unit.values[[1, 3]].copy()),
           tfw.TrainableUnit(b_unit.op_index, b_unit.tensor_index, b_unit.kind, b_unit.axis, (2,),
                             b_unit.tensor_channels, b_unit.values[[2]].copy())]
    w = np.concatenate([u.values.ravel() for u in sub]).astype(np.float32)
    per = w_unit.values_per_channel
    w[0] = 1e3  # far beyond 127 steps of any weight scale
    w[per + 5] = -1e3
    w[per + 6] += float(tail.tensors[w_unit.tensor_index].scales[3])  # one step up, in range
    w[-1] = 1e12  # beyond int32 at the bias scale
    req = export.requantize(frag.tail, sub, w)
    assert req.clipped == 3
    new = TfliteGraph.from_bytes(req.model)
    old_w, new_w = tail.constant_data(w_unit.tensor_index), new.constant_data(w_unit.tensor_index)
    assert new_w[1, 0] == 127 and new_w[3, 5] == -127
    assert int(new_w[3, 6]) == min(int(old_w[3, 6]) + 1, 127)
    changed_rows = sorted(set(np.nonzero(old_w != new_w)[0].tolist()))
    assert changed_rows == [1, 3]
    old_b, new_b = tail.constant_data(b_unit.tensor_index), new.constant_data(b_unit.tensor_index)
    assert new_b[2] == np.iinfo(np.int32).max and np.array_equal(np.delete(old_b, 2), np.delete(new_b, 2))


def test_export_run_writes_model_and_fragments(plan_case, trained, tmp_path) -> None:
    _, frag, cut = plan_case
    out = tmp_path / "run"
    res = export.export_run(out, frag, trained, facts={"version": 3})
    names = sorted(p.name for p in out.iterdir())
    assert names == ["export.json", "final_int8.tflite", "frozen.tflite", "tail.tflite", "trainable.tfw"]
    assert (out / "frozen.tflite").read_bytes() == frag.frozen
    final = (out / "final_int8.tflite").read_bytes()
    head, tail = TfliteGraph.from_bytes(final).split(cut)
    assert head == frag.frozen and tail == (out / "tail.tflite").read_bytes()
    units = tfw.decode((out / "trainable.tfw").read_bytes())
    assert np.array_equal(np.concatenate([u.values.ravel() for u in units]), trained)
    assert [(u.op_index, u.tensor_index, u.channels) for u in units] == \
        [(u.op_index, u.tensor_index, u.channels) for u in frag.units()]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["clipped"] == res.clipped and manifest["version"] == 3 and manifest["payload"] == "subset"
    assert manifest["files"]["final_int8.tflite"]["bytes"] == len(final)
    # the baseline: only the final model
    base = export.export_run(tmp_path / "base", frag.model, np.concatenate(
        [u.values.ravel() for u in tfw.whole_model_units(TfliteGraph.from_bytes(frag.model))]))
    assert sorted(base.files) == ["final", "manifest"] and base.files["final"].read_bytes() == frag.model


def test_refusals(plan_case, tmp_path) -> None:
    case, frag, _ = plan_case
    with pytest.raises(TinyfedError, match="vector has 3 values"):
        export.deployable_model(frag, np.zeros(3, np.float32))
    bad = case.w0.copy()
    bad[7] = np.nan
    with pytest.raises(TinyfedError, match="non-finite"):
        export.deployable_model(frag, bad)
    swapped = export.PlanFragments(frag.tail, frag.frozen, frag.model, frag.trainable)
    with pytest.raises(ModelError, match="more than the model"):
        export.deployable_model(swapped, case.w0)
    with pytest.raises(TinyfedError, match="do not fit the model input"):
        export.evaluate_int8(frag.model, np.zeros((2, 5), np.float32), np.zeros(2))
    with pytest.raises(TinyfedError, match="lacks"):
        export.PlanFragments.from_dir(tmp_path)
