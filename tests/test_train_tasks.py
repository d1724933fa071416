"""Tasks beyond softmax classification on the training side (issue 13): the loss heads of the
float32 reference (FloatTail), the C engine's (firmware/engine/tftr_loss.c) against it, the
TFDS targets, and an FC autoencoder, an FC regressor and a multilabel model (LOGISTIC head)
trained on the ``sim://`` board.

The QEMU runs of the same sessions are in tests/test_train_tasks_qemu.py.
"""

from __future__ import annotations

import functools
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from task_models import (
    autoencoder_data,
    fc_autoencoder_int8,
    fc_classifier_int8,
    fc_multilabel_int8,
    fc_regressor_int8,
    multilabel_data,
    regression_data,
)
from test_train_engine import GRAD_TOL, LOSS_TOL, STEP_TOL, _flat, c_grads, c_open, c_predict, c_train, lib  # noqa: F401

from tinyfed.errors import DatasetError, ModelError
from tinyfed.firmware_bridge.compile import local_data
from tinyfed.firmware_bridge.compile.train_blob import compile_program, parse_program
from tinyfed.firmware_bridge.link.framing import Status
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner import trainable as tfw
from tinyfed.training import FloatTail, local_train
from tinyfed.training.tail import head_loss
from tinyfed.training.task import Loss, Task

# --------------------------------------------------------------------------------------
# Cases: a tail, its units, the tail's int8 inputs, the targets as the engine reads them
# (bytes per sample) and as FloatTail takes them
# --------------------------------------------------------------------------------------


def _quantized(model: bytes, x: np.ndarray) -> np.ndarray:
    g = TfliteGraph.from_bytes(model)
    t = g.tensors[g.inputs[0]]
    return local_data.quantize_inputs(x, t.scales[0], t.zero_points[0])


def regress_case(n: int = 24, seed: int = 0) -> dict:
    """The whole regressor as the program, every layer trainable; float32 targets."""
    model = fc_regressor_int8()
    g = TfliteGraph.from_bytes(model)
    xf, y = regression_data(n, seed)
    units = tfw.encode(tfw.whole_model_units(g))
    return {"tail": model, "tfw": units, "x": _quantized(model, xf), "program": compile_program(model, units),
            "bytes": np.ascontiguousarray(y, "<f4").view(np.uint8).reshape(n, -1), "y": y,
            "image": local_data.pack(_quantized(model, xf), y, kind=local_data.TARGET_REAL)}


def autoencode_case(n: int = 24, seed: int = 0, cut: int = 1) -> dict:
    """The autoencoder split after op ``cut``: the frozen head runs first, the tail trains on the
    model's own (dequantized) input as its target."""
    from tinyfed.models.tflm import TflmModel

    model = fc_autoencoder_int8()
    g = TfliteGraph.from_bytes(model)
    xq = _quantized(model, autoencoder_data(n, seed))
    t_in = g.tensors[g.inputs[0]]
    scale, zp = float(t_in.scales[0]), int(t_in.zero_points[0])
    head, tail = g.split(cut) if cut else (b"", model)
    tg = TfliteGraph.from_bytes(tail)
    units = tfw.encode(tfw.whole_model_units(tg))
    x_tail = np.asarray(TflmModel(head).run(xq)) if cut else xq
    target = ((xq.astype(np.int32) - zp) * np.float32(scale)).astype(np.float32)
    return {"tail": tail, "head": head, "tfw": units, "x": x_tail, "xq": xq, "y": target,
            "bytes": xq.view(np.uint8),
            "program": compile_program(tail, units, task=Task.AUTOENCODE, model_input=(scale, zp)),
            "image": local_data.pack(xq, None, kind=local_data.TARGET_INPUT)}


def softmax_mse_case(n: int = 16) -> dict:
    """A SOFTMAX output trained with MSE towards soft targets (the softmax's Jacobian backward)."""
    model = fc_classifier_int8()
    g = TfliteGraph.from_bytes(model)
    rng = np.random.default_rng(4)
    xq = _quantized(model, rng.normal(0, 1, (n, 6)).astype(np.float32))
    y = rng.dirichlet(np.ones(4), n).astype(np.float32)
    units = tfw.encode(tfw.whole_model_units(g))
    return {"tail": model, "tfw": units, "x": xq, "y": y, "bytes": np.ascontiguousarray(y, "<f4").view(np.uint8),
            "program": compile_program(model, units, task=Task.REGRESS)}


def multilabel_case(n: int = 24, seed: int = 0) -> dict:
    """The whole multilabel model (FC, FC + LOGISTIC) as the program; 0/1 label bytes."""
    model = fc_multilabel_int8()
    g = TfliteGraph.from_bytes(model)
    xf, y = multilabel_data(n, seed)
    units = tfw.encode(tfw.whole_model_units(g))
    return {"tail": model, "tfw": units, "x": _quantized(model, xf), "y": y, "bytes": y.astype(np.uint8),
            "program": compile_program(model, units),
            "image": local_data.pack(_quantized(model, xf), y, kind=local_data.TARGET_LABELS)}


@functools.cache
def _planned(which: str) -> dict[str, bytes]:
    """``tinyfed plan``'s files for the nRF52840 (the planner picks w*; these models fit whole)."""
    from tinyfed.boards import get_board, single_board_fleet
    from tinyfed.planner.config import TrainingConfig
    from tinyfed.planner.plan import make_plan
    from tinyfed.planner.sources import load_model_source

    out = Path(tempfile.mkdtemp(prefix=f"task_plan_{which}_"))
    model = out / f"{which}.tflite"
    model.write_bytes(fc_autoencoder_int8() if which == "autoencode" else fc_regressor_int8())
    plan = make_plan(load_model_source(str(model), None, TrainingConfig()), single_board_fleet(get_board("nrf52840")),
                     TrainingConfig(), out / "plan", measure=False)
    return {k: Path(v).read_bytes() for k, v in plan.files.items() if k in ("frozen", "tail", "trainable")}


def planned_case(which: str, n: int = 64, seed: int = 7) -> dict:
    """A planned autoencoder or regressor: the plan's tail and w*, compiled for the task."""
    files = _planned(which)
    head, tail, units = files.get("frozen", b""), files["tail"], files["trainable"]
    model = fc_autoencoder_int8() if which == "autoencode" else fc_regressor_int8()
    g = TfliteGraph.from_bytes(model)
    t_in = g.tensors[g.inputs[0]]
    scale, zp = float(t_in.scales[0]), int(t_in.zero_points[0])
    if which == "autoencode":
        xq = _quantized(model, autoencoder_data(n, seed))
        y = ((xq.astype(np.int32) - zp) * np.float32(scale)).astype(np.float32)
        image = local_data.pack(xq, None, kind=local_data.TARGET_INPUT)
        task = Task.AUTOENCODE
    else:
        xf, y = regression_data(n, seed)
        xq = _quantized(model, xf)
        image = local_data.pack(xq, y, kind=local_data.TARGET_REAL)
        task = Task.REGRESS
    if head:
        from tinyfed.models.tflm import TflmModel

        x_tail = np.asarray(TflmModel(head).run(xq))
    else:
        x_tail = xq
    return {"tail": tail, "head": head, "tfw": units, "x": x_tail, "y": y, "image": image,
            "program": compile_program(tail, units, task=task, model_input=(scale, zp))}


CASES = {"regress": regress_case, "autoencode_split": autoencode_case,
         "autoencode_whole": lambda: autoencode_case(cut=0), "softmax_mse": softmax_mse_case}


# --------------------------------------------------------------------------------------
# FloatTail
# --------------------------------------------------------------------------------------


def _numeric_check(ft: FloatTail, x: np.ndarray, y: np.ndarray, picks: int = 12) -> float:
    """Largest relative difference between analytic and central-difference gradients (float64)."""
    _, grads = ft.loss_and_grads(x, y)
    rng = np.random.default_rng(0)
    worst = 0.0
    for t, g in grads.items():
        flat = ft.params[t].reshape(-1)
        for i in rng.choice(flat.size, size=min(picks, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + 1e-6
            lp = ft.loss(x, y)
            flat[i] = old - 1e-6
            lm = ft.loss(x, y)
            flat[i] = old
            num = (lp - lm) / 2e-6
            worst = max(worst, abs(num - g.reshape(-1)[i]) / max(1e-6, abs(num), abs(g.reshape(-1)[i])))
    return worst


@pytest.mark.parametrize("name", ["regress", "autoencode_whole", "softmax_mse"])
def test_floattail_mse_gradients_match_finite_differences(name: str) -> None:
    c = CASES[name]()
    ft = FloatTail.from_fragments(c["tail"], c["tfw"], np.float64, loss=Loss.MSE)
    x = ft.dequantize_input(c["x"])
    assert ft.loss_kind is Loss.MSE
    worst = _numeric_check(ft, x, c["y"].reshape(len(x), -1).astype(np.float64))
    print(f"{name}: worst relative gradient error {worst:.1e}")
    assert worst < 1e-5


def test_floattail_bce_gradients_match_finite_differences() -> None:
    c = multilabel_case()
    ft = FloatTail.from_fragments(c["tail"], c["tfw"], np.float64)
    assert ft.loss_kind is Loss.SIGMOID_BCE and ft.graph.ops[-1].name == "LOGISTIC"
    worst = _numeric_check(ft, ft.dequantize_input(c["x"]), c["y"])
    print(f"multilabel: worst relative gradient error {worst:.1e}")
    assert worst < 1e-5


def test_loss_defaults_and_refusals_follow_the_last_op() -> None:
    reg = TfliteGraph.from_bytes(fc_regressor_int8())
    cls = TfliteGraph.from_bytes(fc_classifier_int8())
    assert FloatTail(reg, []).loss_kind is Loss.MSE
    assert FloatTail(cls, []).loss_kind is Loss.SOFTMAX_CE
    assert FloatTail(cls, [], loss=Loss.MSE).loss_kind is Loss.MSE
    for loss in (Loss.SOFTMAX_CE, Loss.SIGMOID_BCE):
        with pytest.raises(ModelError, match="last op is .* this tail ends with FULLY_CONNECTED"):
            FloatTail(reg, [], loss=loss)
    with pytest.raises(ModelError, match="needs a tail whose last op is LOGISTIC"):
        compile_program(fc_classifier_int8(), tfw.encode([]), task=Task.MULTILABEL)
    ft = FloatTail(reg, [])
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ModelError, match="2 values per sample"):
        ft.loss(x, np.zeros((3, 3), np.float32))
    with pytest.raises(ModelError, match="one integer class per sample"):
        FloatTail(cls, []).loss(np.zeros((2, 6), np.float32), np.zeros((2, 4), np.float32))


def test_sigmoid_bce_head_is_stable_and_its_gradient_is_p_minus_y() -> None:
    """The BCE head from the logits: finite for |z| = 100 and more, equal to -log(p) / -log(1 - p)
    where those are accurate, and its derivative in z is (sigmoid(z) - y) / k per sample."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (5, 7))
    y = rng.integers(0, 2, (5, 7)).astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    ref = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    np.testing.assert_allclose(head_loss(Loss.SIGMOID_BCE, p, z, y), ref, rtol=1e-12)
    big = np.array([[100.0, -100.0, 1e4]])
    losses = head_loss(Loss.SIGMOID_BCE, 1 / (1 + np.exp(-big)), big, np.array([[0.0, 1.0, 1.0]]))
    assert np.isfinite(losses).all() and losses[0] == pytest.approx((100 + 100 + 0) / 3)
    k = z.shape[1]
    for i, j in [(0, 0), (2, 3), (4, 6)]:
        zp, zm = z.copy(), z.copy()
        zp[i, j] += 1e-6
        zm[i, j] -= 1e-6
        num = (head_loss(Loss.SIGMOID_BCE, p, zp, y)[i] - head_loss(Loss.SIGMOID_BCE, p, zm, y)[i]) / 2e-6
        assert num == pytest.approx((p[i, j] - y[i, j]) / k, rel=1e-6)


# --------------------------------------------------------------------------------------
# The C engine against FloatTail
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_c_engine_mse_matches_floattail(lib, name: str) -> None:  # noqa: F811
    c = CASES[name]()
    blob = c["program"]
    status, _, msg, _ = c_open(lib, blob)
    assert status == 0, msg
    info = parse_program(blob)
    assert info.loss is Loss.MSE and info.target_bytes == c["bytes"].shape[1]
    ft = FloatTail.from_fragments(c["tail"], c["tfw"], loss=Loss.MSE)
    xf = ft.dequantize_input(c["x"])
    n = len(xf)
    y = c["y"].reshape(n, -1)
    ref_loss = ft.sample_losses(xf, y)[0]
    loss, correct, grad, _ = c_grads(lib, blob, c["x"], c["bytes"])
    _, grads = ft.loss_and_grads(xf, y)
    ref = _flat(ft.unit_grads(grads)) * n
    loss_err = float(np.max(np.abs(loss - ref_loss) / np.maximum(1.0, ref_loss)))
    grad_err = float(np.abs(grad - ref).max() / np.abs(ref).max())
    print(f"{name}: loss rel err {loss_err:.1e}, grad rel err {grad_err:.1e}")
    assert loss_err <= LOSS_TOL and grad_err <= GRAD_TOL and np.abs(ref).max() > 0
    assert not correct.any()  # no "correct" for MSE
    ploss, _ = c_predict(lib, blob, c["x"], c["bytes"])
    np.testing.assert_array_equal(ploss, loss)
    # a few SGD steps in the same order
    lr, bs, seed = 0.05, 8, 2
    rng = np.random.default_rng(seed)
    order, bounds = [], [0]
    for _ in range(2):
        perm = rng.permutation(n)
        for k in range(0, n, bs):
            order.extend(perm[k:k + bs])
            bounds.append(len(order))
    res = local_train(ft, xf, y, epochs=2, lr=lr, batch_size=bs, seed=seed)
    values, losses = c_train(lib, blob, c["x"], c["bytes"], np.array(order), np.array(bounds), lr)
    ref_delta = _flat(res.deltas)
    err = float(np.abs((values - _flat(ft.unit_values())) - ref_delta).max() / np.abs(ref_delta).max())
    assert err <= STEP_TOL
    assert abs(float(losses.mean()) - res.loss) <= 1e-4 * max(1.0, res.loss)


def test_c_engine_bce_matches_floattail(lib) -> None:  # noqa: F811
    c = multilabel_case(32)
    blob = c["program"]
    status, _, msg, _ = c_open(lib, blob)
    assert status == 0, msg
    info = parse_program(blob)
    assert (info.loss, info.target_kind, info.target_bytes) == (Loss.SIGMOID_BCE, local_data.TARGET_LABELS, 4)
    ft = FloatTail.from_fragments(c["tail"], c["tfw"])
    xf = ft.dequantize_input(c["x"])
    n = len(xf)
    ref_loss, p = ft.sample_losses(xf, c["y"])
    loss, correct, grad, _ = c_grads(lib, blob, c["x"], c["bytes"])
    _, grads = ft.loss_and_grads(xf, c["y"])
    ref = _flat(ft.unit_grads(grads)) * n
    loss_err = float(np.max(np.abs(loss - ref_loss) / np.maximum(1.0, ref_loss)))
    grad_err = float(np.abs(grad - ref).max() / np.abs(ref).max())
    print(f"multilabel: loss rel err {loss_err:.1e}, grad rel err {grad_err:.1e}")
    assert loss_err <= LOSS_TOL and grad_err <= GRAD_TOL and np.abs(ref).max() > 0
    exact = ((p >= 0.5) == (c["y"] != 0)).all(axis=1)
    clear = (np.abs(p - 0.5) > 1e-4).all(axis=1)
    np.testing.assert_array_equal(correct[clear], exact[clear])
    lr, bs, seed = 0.1, 8, 2
    rng = np.random.default_rng(seed)
    order, bounds = [], [0]
    for _ in range(2):
        perm = rng.permutation(n)
        for k in range(0, n, bs):
            order.extend(perm[k:k + bs])
            bounds.append(len(order))
    res = local_train(ft, xf, c["y"], epochs=2, lr=lr, batch_size=bs, seed=seed)
    values, losses = c_train(lib, blob, c["x"], c["bytes"], np.array(order), np.array(bounds), lr)
    ref_delta = _flat(res.deltas)
    assert float(np.abs((values - _flat(ft.unit_values())) - ref_delta).max() / np.abs(ref_delta).max()) <= STEP_TOL
    assert abs(float(losses.mean()) - res.loss) <= 1e-4 * max(1.0, res.loss)


def test_c_engine_refuses_bad_loss_fields(lib) -> None:  # noqa: F811
    blob = regress_case()["program"]

    def opened(**fields: int | float) -> tuple[int, str]:
        b = bytearray(blob)
        offsets = {"loss": (84, "<B"), "kind": (85, "<B"), "reserved": (86, "<B"), "scale": (88, "<f"),
                   "zp": (92, "<i")}
        for k, v in fields.items():
            struct.pack_into(offsets[k][1], b, offsets[k][0], v)
        status, _, msg, _ = c_open(lib, bytes(b))
        return status, msg

    assert opened() == (0, "")
    assert opened(loss=0)[1].startswith("softmax cross-entropy needs class targets")
    assert opened(loss=0, kind=0)[1].startswith("softmax cross-entropy needs SOFTMAX")
    assert opened(loss=1, kind=1)[1].startswith("sigmoid cross-entropy needs LOGISTIC")
    assert opened(loss=3)[1].startswith("loss kind unknown")
    assert opened(kind=1)[1].startswith("mse needs real or input targets")
    assert opened(kind=3)[1].startswith("target quantization bad")  # INPUT with scale 0
    assert opened(scale=0.5)[1].startswith("target quantization set")
    assert opened(reserved=1)[1].startswith("header reserved")
    assert opened(kind=3, scale=0.1, zp=-129)[1].startswith("target quantization bad")
    assert opened(kind=3, scale=0.1, zp=-3)[0] == 0
    assert all(opened(**f)[0] == Status.BAD_MODEL for f in ({"loss": 0}, {"kind": 3}, {"reserved": 1}))


# --------------------------------------------------------------------------------------
# Local data (TFDS v2)
# --------------------------------------------------------------------------------------


def test_tfds_targets_round_trip_per_kind() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (5, 6)).astype(np.int8)
    labels = rng.integers(0, 2, (5, 3))
    reals = rng.normal(0, 1, (5, 2, 1)).astype(np.float32)
    d = local_data.unpack(local_data.pack(x, labels, kind=local_data.TARGET_LABELS))
    assert d.kind == local_data.TARGET_LABELS and d.classes == 3 and np.array_equal(d.y, labels)
    d = local_data.unpack(local_data.pack(x, reals, kind=local_data.TARGET_REAL))
    assert d.kind == local_data.TARGET_REAL and d.classes == 2 and np.array_equal(d.y, reals.reshape(5, 2))
    d = local_data.unpack(local_data.pack(x, None, kind=local_data.TARGET_INPUT))
    assert d.kind == local_data.TARGET_INPUT and d.classes == 6 and d.y.shape == (5, 0) and np.array_equal(d.x, x)
    d = local_data.unpack(local_data.pack(x, np.arange(5) % 3, 3))
    assert d.kind == local_data.TARGET_CLASS and d.classes == 3 and list(d.y) == [0, 1, 2, 0, 1]
    # an image of INPUT targets is as large as its samples: no target bytes
    assert len(local_data.pack(x, None, kind=local_data.TARGET_INPUT)) == local_data.HEADER_BYTES + x.size


def test_tfds_refuses_targets_the_board_would_refuse() -> None:
    x = np.zeros((3, 4), np.int8)
    with pytest.raises(DatasetError, match="0 or 1"):
        local_data.pack(x, np.array([[0, 2], [1, 0], [0, 0]]), kind=local_data.TARGET_LABELS)
    with pytest.raises(DatasetError, match="finite"):
        local_data.pack(x, np.array([[0.0], [np.nan], [1.0]]), kind=local_data.TARGET_REAL)
    with pytest.raises(DatasetError, match="3 samples but 2 targets"):
        local_data.pack(x, np.zeros((2, 1)), kind=local_data.TARGET_REAL)
    with pytest.raises(DatasetError, match="labels must be"):
        local_data.pack(x, np.array([0, 1, 3]), 3)
    # damage past the CRC: a label byte of 2, a NaN target (CRC recomputed, as a forger would)
    image = bytearray(local_data.pack(x, np.array([[0], [1], [1]]), kind=local_data.TARGET_LABELS))
    image[local_data.HEADER_BYTES + 1] = 2
    struct.pack_into("<I", image, 16, __import__("zlib").crc32(bytes(image[local_data.HEADER_BYTES:])))
    with pytest.raises(DatasetError, match="not 0 or 1"):
        local_data.unpack(bytes(image))
    old = bytearray(local_data.pack(x, np.array([0, 1, 1]), 2))
    old[4] = 1  # version 1
    with pytest.raises(DatasetError, match="TFDS v2"):
        local_data.unpack(bytes(old))


# --------------------------------------------------------------------------------------
# On the sim:// board
# --------------------------------------------------------------------------------------


def board_session(url: str, c: dict, params, name: str, *, load_data: bool = True) -> tuple:
    """Provision (fragment if any, program, data unless preloaded), set w* at version 1, EVALUATE,
    TRAIN, read the update, EVALUATE again (w* is then the trained values)."""
    from tinyfed.firmware_bridge.compile.blob import compile_blob
    from tinyfed.firmware_bridge.link.client import BoardClient

    w0 = np.concatenate([u.values.ravel() for u in tfw.decode(c["tfw"])]).astype(np.float32)
    with BoardClient(url, name=name, timeout=5.0) as client:
        client.hello()
        if c.get("head"):
            client.load_fragment(compile_blob(c["head"]))
        client.load_program(c["program"])
        if load_data:
            client.load_data(c["image"])
        client.set_weights(1, w0)
        before = client.evaluate()
        report = client.train(params, timeout=600.0)
        update = client.read_update(report.update_bytes)
        after = client.evaluate()
    return before, report, update, after


def reference_update(c: dict, params) -> tuple[np.ndarray, float, list[tuple[int, int]]]:
    """FloatTail's local_train in the board's sample order, quantized as the board does."""
    from tinyfed.firmware_bridge.link.train_link import DeviceUpdate, quantize_flat
    from tinyfed.firmware_bridge.twin import shuffle

    ft = FloatTail.from_fragments(c["tail"], c["tfw"], loss=parse_program(c["program"]).loss)
    xf = ft.dequantize_input(c["x"])
    shapes = [(len(u.channels), u.values_per_channel) for u in ft.units]
    r = local_train(ft, xf, c["y"], epochs=params.epochs, lr=np.float32(params.lr), batch_size=params.batch_size,
                    seed=params.seed, order=shuffle.epoch_order)
    delta = np.concatenate([d.ravel() for d in r.deltas]).astype(np.float32)
    q, s = quantize_flat(delta, shapes, params.per_channel)
    return DeviceUpdate(0, 0, 0, 0, q, s, params.per_channel).dense(shapes), r.loss, shapes


TASK_PARAMS = {"regress": dict(epochs=4, batch_size=8, lr=0.1, seed=3),
               "autoencode_split": dict(epochs=4, batch_size=8, lr=0.3, seed=5),
               "multilabel": dict(epochs=4, batch_size=8, lr=0.5, seed=6),
               "planned_autoencode": dict(epochs=4, batch_size=8, lr=0.3, seed=8),
               "planned_regress": dict(epochs=4, batch_size=8, lr=0.1, seed=9)}


def task_case(name: str) -> dict:
    if name.startswith("planned_"):
        return planned_case(name.removeprefix("planned_"))
    return {"regress": regress_case, "autoencode_split": autoencode_case, "multilabel": multilabel_case}[name](64, 7)


@pytest.mark.parametrize("name", list(TASK_PARAMS))
def test_sim_board_trains_a_task_without_softmax(name: str) -> None:
    from tinyfed.firmware_bridge.link.train_link import TrainParams
    from tinyfed.firmware_bridge.twin.sim import forget_sim_boards

    c = task_case(name)
    params = TrainParams(version=1, per_channel=True, **TASK_PARAMS[name])
    forget_sim_boards()
    before, report, update, after = board_session(f"sim://mps2-an386?name={name}", c, params, f"sim-{name}")
    ref, ref_loss, shapes = reference_update(c, params)
    print(f"{name} on sim://: mean loss {before.loss:.4f} -> {after.loss:.4f} (train {report.loss:.4f})")
    assert before.n == after.n == 64
    if name == "multilabel":  # "correct": every label right
        assert after.correct > before.correct
    else:
        assert before.correct == after.correct == 0
    assert after.loss < 0.85 * before.loss
    assert report.loss == pytest.approx(ref_loss, rel=1e-5)
    assert np.abs(update.dense(shapes) - ref).max() <= 1e-6


def test_sim_board_refuses_data_of_another_task() -> None:
    from tinyfed.firmware_bridge.link.client import BoardClient
    from tinyfed.firmware_bridge.link.errors import DeviceError
    from tinyfed.firmware_bridge.link.train_link import TrainParams
    from tinyfed.firmware_bridge.twin.sim import forget_sim_boards

    c = regress_case(8)
    forget_sim_boards()
    with BoardClient("sim://mps2-an386?name=mismatch", name="sim-mismatch") as client:
        client.hello()
        client.load_program(c["program"])
        client.load_data(local_data.pack(c["x"], np.arange(8) % 2, 2))  # class targets
        with pytest.raises(DeviceError) as e:
            client.train(TrainParams(version=0, epochs=1, batch_size=4, lr=0.1, seed=0))
        assert e.value.status == Status.NO_DATA and "program target kind 2" in str(e.value)
        client.load_data(local_data.pack(c["x"], np.zeros((8, 3), np.float32), kind=local_data.TARGET_REAL))
        with pytest.raises(DeviceError) as e:
            client.evaluate()
        assert e.value.status == Status.NO_DATA and "program outputs 2" in str(e.value)
