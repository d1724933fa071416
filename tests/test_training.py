"""The float32 reference of the device step: gradients, agreement with int8/Keras, learning, update format."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner import trainable as tfw
from tinyfed.training import (
    FloatTail,
    average_deltas,
    dense_model_bytes,
    dequantize,
    local_train,
    quantize_update,
    update_variance,
)


def _all_units_tfw(tail_bytes: bytes) -> bytes:
    """A .tfw selecting every weight and bias of the tail (all channels)."""
    g = TfliteGraph.from_bytes(tail_bytes)
    ft = FloatTail(g, [])
    units = []
    for op in g.ops:
        w, b = g.weight_tensor(op), g.bias_tensor(op)
        if w is not None:
            ax = g.output_channel_axis(op)
            v = np.moveaxis(ft.params[w.index], ax, 0)
            n = v.shape[0]
            units.append(tfw.TrainableUnit(op.index, w.index, tfw.KIND_WEIGHTS, ax, tuple(range(n)), n,
                                           v.reshape(n, -1)))
        if b is not None:
            v = ft.params[b.index]
            units.append(tfw.TrainableUnit(op.index, b.index, tfw.KIND_BIAS, 0, tuple(range(v.shape[0])), v.shape[0],
                                           v.reshape(-1, 1)))
    return tfw.encode(units)


@pytest.fixture(scope="module")
def zoo_tail():
    from engine_models import kernel_zoo_int8

    model = kernel_zoo_int8()
    return model, TfliteGraph.from_bytes(model)


@pytest.mark.slow
@pytest.mark.parametrize("cut", [0, 1])
def test_gradient_check(zoo_tail, cut):
    """Analytic gradients vs central differences (float64) through conv (relu6), depthwise (dm 2,
    dilation 2), two 1x1 convs, add, avg pool, max pool, reshape, fc (relu), fc, softmax."""
    model, g = zoo_tail
    tail = model if cut == 0 else g.split(cut)[1]
    ft = FloatTail.from_fragments(tail, _all_units_tfw(tail)).copy(np.float64)
    names = [o.name for o in ft.graph.ops]
    for need in ("DEPTHWISE_CONV_2D", "CONV_2D", "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "SOFTMAX"):
        assert need in names
    rng = np.random.default_rng(0)
    shape = ft.graph.tensors[ft.graph.inputs[0]].shape
    x = rng.normal(0, 1.5, size=(3,) + tuple(shape[1:]))
    y = rng.integers(0, 5, size=3)
    _, grads = ft.loss_and_grads(x, y)
    assert set(grads) == set(ft.params)
    worst = 0.0
    eps = 1e-6
    for t, p in ft.params.items():
        flat = p.reshape(-1)
        gflat = grads[t].reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, 6), replace=False)
        for i in picks:
            old = flat[i]
            flat[i] = old + eps
            lp = ft.loss(x, y)
            flat[i] = old - eps
            lm = ft.loss(x, y)
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            err = abs(num - gflat[i]) / max(abs(num) + abs(gflat[i]), 1e-6)
            worst = max(worst, err if abs(num) + abs(gflat[i]) > 1e-7 else 0.0)
    print(f"gradient check (cut {cut}): worst relative error {worst:.2e}")
    assert worst < 1e-5


@pytest.mark.slow
def test_masks_follow_units(zoo_tail):
    """Only the selected channels are trainable; others get zero gradient."""
    _model, g = zoo_tail
    tail = g.split(1)[1]
    tg = TfliteGraph.from_bytes(tail)
    fc = next(o for o in tg.ops if o.name == "FULLY_CONNECTED")
    w = tg.weight_tensor(fc)
    ft0 = FloatTail(tg, [])
    vals = ft0.params[w.index][[1, 4]] + 0.5
    unit = tfw.TrainableUnit(fc.index, w.index, 0, 0, (1, 4), w.shape[0], vals.astype(np.float32))
    ft = FloatTail.from_fragments(tail, tfw.encode([unit]))
    assert ft.trainable_params == 2 * w.shape[1]
    np.testing.assert_array_equal(ft.params[w.index][[1, 4]], vals)
    x = np.random.default_rng(1).normal(size=(2,) + tuple(tg.tensors[tg.inputs[0]].shape[1:]))
    _, grads = ft.loss_and_grads(x, np.array([0, 1]))
    gw = grads[w.index]
    assert np.all(gw[[0, 2, 3, 5]] == 0) and np.any(gw[[1, 4]] != 0)
    np.testing.assert_array_equal(ft.unit_values()[0], vals)


def test_max_pool_picks_the_first_maximum_like_argmax():
    """The tap-by-tap max pool against argmax over stacked windows: ties go to the first tap,
    a NaN wins (the first NaN), -0.0 and 0.0 tie; the values are the very elements (bits)."""
    from tinyfed.ops.max_pool_2d import _keep, _max_pool

    rng = np.random.default_rng(0)
    other_nan = np.array([0xFFC00123], np.uint32).view(np.float32)[0]  # another NaN payload
    for dtype in (np.float32, np.float64):
        for k in (1, 2, 4, 9):
            c5 = rng.integers(-2, 3, size=(3, 2, 40, k, 7)).astype(dtype)  # few values: many ties
            c5[rng.random(c5.shape) < 0.05] = np.nan
            c5[rng.random(c5.shape) < 0.05] = other_nan
            c5[rng.random(c5.shape) < 0.1] = -0.0
            c5[rng.random(c5.shape) < 0.05] = -np.inf
            z, arg = _max_pool([c5[:, :, :, t, :] for t in range(k)])
            want = c5.argmax(axis=3)
            np.testing.assert_array_equal(arg, want)
            assert z.tobytes() == np.take_along_axis(c5, want[:, :, :, None, :], axis=3)[:, :, :, 0, :].tobytes()
            g = c5[:, :, :, 0, :]  # a gradient with NaNs and both zeros
            for t in range(k):
                assert _keep(arg == t, g).tobytes() == np.where(arg == t, g, dtype(0)).tobytes()


@pytest.mark.slow
def test_unit_values_of_scattered_channels_on_a_later_axis(zoo_tail):
    """Units on the channel axis 3 (depthwise weights) with channels out of order and with
    consecutive ones: read, write and gradients address exactly those channels, and what is
    read is a copy (writing to it leaves the tail alone)."""
    _model, g = zoo_tail
    dw = next(o for o in g.ops if o.name == "DEPTHWISE_CONV_2D")
    w = g.weight_tensor(dw)
    ft0 = FloatTail(g, [])
    ax = g.output_channel_axis(dw)
    assert ax == 3
    c = w.shape[ax]
    picks = [(c - 1, 0, 2), tuple(range(1, c))]
    for ch in picks:
        base = np.moveaxis(ft0.params[w.index], ax, 0)[list(ch)].reshape(len(ch), -1)
        unit = tfw.TrainableUnit(dw.index, w.index, tfw.KIND_WEIGHTS, ax, ch, c, (base + 1).astype(np.float32))
        ft = FloatTail(g, [unit])
        got = ft.unit_values()[0]
        np.testing.assert_array_equal(got, base + 1)
        got += 5  # a copy: the tail keeps its values
        np.testing.assert_array_equal(ft.unit_values()[0], base + 1)
        ft.set_unit_values([base - 2])
        moved = np.moveaxis(ft.params[w.index], ax, 0)
        np.testing.assert_array_equal(moved[list(ch)].reshape(len(ch), -1), base - 2)
        others = [i for i in range(c) if i not in ch]
        np.testing.assert_array_equal(moved[others], np.moveaxis(ft0.params[w.index], ax, 0)[others])
        grads = {w.index: np.arange(ft.params[w.index].size, dtype=np.float32).reshape(ft.params[w.index].shape)}
        want = np.moveaxis(grads[w.index], ax, 0)[list(ch)].reshape(len(ch), -1)
        np.testing.assert_array_equal(ft.unit_grads(grads)[0], want)
        copied = ft.copy()
        copied.set_unit_values([base])
        np.testing.assert_array_equal(ft.unit_values()[0], base - 2)  # copies do not share values


# ---- har_cnn plan ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def har(tmp_path_factory):
    """har_cnn's nRF52840 plan and its heads' outputs (the int8 model from the run's shared cache)."""
    from tinyfed.boards import get_board, single_board_fleet
    from tinyfed.models.tflm import TflmModel
    from tinyfed.models.zoo import get_zoo_model
    from tinyfed.planner.config import TrainingConfig
    from tinyfed.planner.plan import make_plan
    from tinyfed.planner.sources import load_model_source

    out = tmp_path_factory.mktemp("plan")
    plan = make_plan(load_model_source("har_cnn", None, TrainingConfig()), single_board_fleet(get_board("nrf52840")),
                     TrainingConfig(), out, measure=False)
    files = {k: Path(plan.files[k]).read_bytes() for k in ("frozen", "tail", "trainable")}
    zm = get_zoo_model("har_cnn")
    head = TflmModel(files["frozen"])
    test = zm.test_split()
    clients = zm.client_split()
    parts = zm.client_partitions("natural")[:8]
    sel = np.concatenate(parts)
    h_test = head.run_float(test.x)
    h_cli = np.zeros((len(clients.y),) + h_test.shape[1:], np.int8)
    h_cli[sel] = head.run_float(clients.x[sel])
    return {"files": files, "test": test, "h_test": h_test, "clients": clients, "h_cli": h_cli, "parts": parts}


@pytest.mark.slow
def test_forward_matches_int8_tail(har):
    from tinyfed.models.tflm import TflmModel

    files = har["files"]
    ft = FloatTail.from_fragments(files["tail"], files["trainable"])
    tm = TflmModel(files["tail"])
    q = tm.run(har["h_test"])
    od = tm.output_details[0]["quantization_parameters"]
    s, z = float(od["scales"][0]), int(od["zero_points"][0])
    p_int8 = (q.astype(np.float32) - z) * s
    p = ft.forward(ft.dequantize_input(har["h_test"]), keep=False).reshape(p_int8.shape)
    diff = np.abs(p - p_int8)
    agree = np.mean(p.argmax(1) == p_int8.argmax(1))
    per = diff.max(axis=1)
    print(f"float vs int8 tail: max |dp| {diff.max():.4f} ({diff.max() / s:.1f} LSB), "
          f"99th pct {np.quantile(per, 0.99) / s:.1f} LSB, 95th {np.quantile(per, 0.95) / s:.1f} LSB, "
          f"median {np.median(per) / s:.2f} LSB, argmax agreement {agree:.4f}")
    # With every activation rounded to its int8 grid, the float tail reproduces the int8 graph
    # to within the rounding differences of its fixed-point arithmetic.
    pq = ft.forward(ft.dequantize_input(har["h_test"]), keep=False, fake_quant=True).reshape(p_int8.shape)
    dq = np.abs(pq - p_int8)
    within = float(np.mean(dq <= 1.01 * s))
    print(f"fake-quantized float vs int8 tail: max {dq.max() / s:.1f} LSB, mean {dq.mean() / s:.3f} LSB, "
          f"{within:.4%} within 1 LSB")
    # the tail holds a convolution and an average pool since issue 13's plan: a 1-LSB rounding difference
    # there (fixed-point multipliers vs a float round) reaches the softmax through two layers more
    # (measured: mean 0.153 LSB, 98.4% within 1 LSB; 0.03 and 99.7% for the dense-only tail before)
    assert dq.mean() < 0.25 * s and within > 0.98
    assert np.median(per) <= 2 * s and np.quantile(per, 0.95) <= 12 * s
    assert agree > 0.98


def _tf_step(ft: FloatTail, x, y, lr):
    """The same masked SGD step with TensorFlow ops and a Keras loss."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    g = ft.graph
    params = {t: tf.Variable(v.astype(np.float32)) for t, v in ft.params.items()}
    with tf.GradientTape() as tape:
        vals = {g.inputs[0]: tf.constant(x, tf.float32)}
        for op in g.ops:
            o = op.options
            a = vals[op.inputs[0]]
            act = o.get("activation", "NONE")
            if op.name == "CONV_2D":
                w = tf.transpose(params[op.inputs[1]], (1, 2, 3, 0))
                z = tf.nn.conv2d(a, w, (1, *o["stride"], 1), o["padding"], dilations=(1, *o["dilation"], 1))
                z = z + params[op.inputs[2]]
            elif op.name == "DEPTHWISE_CONV_2D":
                w = params[op.inputs[1]]
                c = a.shape[-1]
                w = tf.reshape(w[0], (w.shape[1], w.shape[2], c, w.shape[3] // c))
                z = tf.nn.depthwise_conv2d(a, w, (1, *o["stride"], 1), o["padding"], dilations=o["dilation"])
                z = z + params[op.inputs[2]]
            elif op.name == "FULLY_CONNECTED":
                w = params[op.inputs[1]]
                z = tf.matmul(tf.reshape(a, (-1, w.shape[1])), w, transpose_b=True) + params[op.inputs[2]]
            elif op.name == "ADD":
                z = a + vals[op.inputs[1]]
            elif op.name == "AVERAGE_POOL_2D":
                z = tf.nn.avg_pool2d(a, o["filter"], o["stride"], o["padding"])
            elif op.name == "MAX_POOL_2D":
                z = tf.nn.max_pool2d(a, o["filter"], o["stride"], o["padding"])
            elif op.name == "RESHAPE":
                z = tf.reshape(a, (-1, *g.tensors[op.outputs[0]].shape[1:]))
            elif op.name == "SOFTMAX":
                logits = tf.reshape(a, (len(y), -1)) * float(o.get("beta", 1.0))
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
                break
            if act == "RELU":
                z = tf.nn.relu(z)
            elif act == "RELU6":
                z = tf.nn.relu6(z)
            vals[op.outputs[0]] = z
    grads = tape.gradient(loss, list(params.values()))
    new = {}
    for (t, v), gr in zip(params.items(), grads, strict=True):
        gr = np.zeros(v.shape, np.float32) if gr is None else gr.numpy()
        new[t] = v.numpy() - lr * gr * ft.masks[t]
    return float(loss), new


@pytest.mark.slow
def test_one_step_matches_keras(har):
    files = har["files"]
    ft = FloatTail.from_fragments(files["tail"], files["trainable"])
    idx = har["parts"][0][:32]
    x = ft.dequantize_input(har["h_cli"][idx])
    y = har["clients"].y[idx]
    lr = 0.1
    res = local_train(ft, x, y, epochs=1, lr=lr, batch_size=len(y), seed=0)
    tf_loss, tf_new = _tf_step(ft, x, y, lr)
    worst = 0.0
    for t in ft.params:
        d_np = res.tail.params[t] - ft.params[t]
        d_tf = tf_new[t] - ft.params[t]
        assert np.all(d_np[~ft.masks[t]] == 0)
        if ft.masks[t].any():
            scale = np.abs(tf_new[t]).max()
            worst = max(worst, float(np.abs(res.tail.params[t] - tf_new[t]).max() / scale))
            assert np.abs(d_tf).max() > 0
    print(f"one SGD step vs TF/Keras: loss {res.loss:.6f} vs {tf_loss:.6f}, worst relative diff {worst:.2e}")
    assert abs(res.loss - tf_loss) <= 1e-4 * abs(tf_loss)
    assert worst < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("cut", [0, 1])
def test_one_step_matches_keras_conv_tail(zoo_tail, cut):
    """The same check on a tail with conv (relu6), depthwise, add, pools and reshape, all trainable."""
    model, g = zoo_tail
    tail = model if cut == 0 else g.split(cut)[1]
    ft = FloatTail.from_fragments(tail, _all_units_tfw(tail))
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1.5, size=(8,) + tuple(ft.graph.tensors[ft.graph.inputs[0]].shape[1:])).astype(np.float32)
    y = rng.integers(0, 5, size=8)
    res = local_train(ft, x, y, epochs=1, lr=0.05, batch_size=8, seed=0)
    tf_loss, tf_new = _tf_step(ft, x, y, 0.05)
    worst = max(float(np.abs(res.tail.params[t] - tf_new[t]).max() / np.abs(tf_new[t]).max()) for t in ft.params)
    moved = min(float(np.abs(tf_new[t] - ft.params[t]).max()) for t in ft.params)
    print(f"conv tail (cut {cut}) one SGD step vs TF/Keras: loss {res.loss:.6f} vs {tf_loss:.6f}, "
          f"worst relative diff {worst:.2e}")
    assert moved > 0
    assert abs(res.loss - tf_loss) <= 1e-4 * abs(tf_loss)
    assert worst < 1e-4


@pytest.mark.slow
def test_learning_signal(har):
    """8 users train 1 epoch from the pretrained point; the sample-weighted mean of their
    int8-quantized deltas improves the model on those users' held-out (later-in-time) windows."""
    files = har["files"]
    ft = FloatTail.from_fragments(files["tail"], files["trainable"])
    test, clients = har["test"], har["clients"]
    users = np.unique(clients.groups[np.concatenate(har["parts"])])
    mine = np.isin(test.groups, users)

    def evaluate(t, m):
        yt = test.y[m]
        p = t.forward(ft.dequantize_input(har["h_test"][m]), keep=False).reshape(len(yt), -1)
        return float(np.mean(p.argmax(1) == yt)), float(-np.mean(np.log(np.maximum(p[np.arange(len(yt)), yt], 1e-30))))

    deltas, ns, losses = [], [], []
    for k, part in enumerate(har["parts"]):
        res = local_train(ft, ft.dequantize_input(har["h_cli"][part]), clients.y[part], epochs=1, lr=0.01,
                          batch_size=16, seed=k)
        deltas.append(dequantize(quantize_update(res.deltas)))
        ns.append(res.n)
        losses.append(res.loss)
    avg = average_deltas(deltas, ns)
    new = ft.copy()
    new.set_unit_values([v + d for v, d in zip(ft.unit_values(), avg, strict=True)])
    acc0, ce0 = evaluate(ft, mine)
    acc1, ce1 = evaluate(new, mine)
    all0, all1 = evaluate(ft, slice(None)), evaluate(new, slice(None))
    print(f"learning signal (users {users.tolist()}, n={ns}, mean local loss {np.mean(losses):.4f}): "
          f"their {mine.sum()} test windows: acc {acc0:.4f} -> {acc1:.4f}, CE {ce0:.4f} -> {ce1:.4f}; "
          f"whole test split (all users): acc {all0[0]:.4f} -> {all1[0]:.4f}, CE {all0[1]:.4f} -> {all1[1]:.4f}")
    assert ce1 < ce0 - 0.05
    assert acc1 > acc0


def test_quantize_update_roundtrip():
    rng = np.random.default_rng(0)
    deltas = [rng.normal(0, 0.01, size=(8, 20)).astype(np.float32), rng.normal(0, 1e-4, size=(6, 1)).astype(np.float32)]
    deltas[0][3] = 0.0
    for per_channel in (False, True):
        qu = quantize_update(deltas, per_channel=per_channel)
        back = dequantize(qu)
        for d, b, q, s in zip(deltas, back, qu.q, qu.scales, strict=True):
            assert q.dtype == np.int8 and q.shape == d.shape
            bound = (s[:, None] if per_channel else s[0]) / 2 * (1 + 1e-6)
            assert np.all(np.abs(d.reshape(d.shape[0], -1) - b.reshape(d.shape[0], -1)) <= bound)
        assert np.all(np.isfinite(np.concatenate([b.ravel() for b in back])))
    zero = quantize_update([np.zeros((4, 3), np.float32)])
    assert zero.scales[0][0] == 0 and not np.any(zero.q[0])
    assert np.all(dequantize(zero)[0] == 0)
    zpc = quantize_update([np.zeros((4, 3), np.float32)], per_channel=True)
    assert np.all(zpc.scales[0] == 0) and np.all(np.isfinite(dequantize(zpc)[0]))
    assert update_variance([np.zeros(3), np.ones(1)]) == pytest.approx(np.var([0, 0, 0, 1]))


@pytest.mark.slow
def test_update_bytes_vs_dense(har):
    files = har["files"]
    ft = FloatTail.from_fragments(files["tail"], files["trainable"])
    qu = quantize_update([np.ones_like(v) for v in ft.unit_values()])
    dense = dense_model_bytes(files["frozen"], files["tail"])
    ratio = qu.nbytes / dense
    print(f"int8 update {qu.nbytes} B ({ft.trainable_params} params) vs dense float32 {dense} B: ratio {ratio:.4f}")
    assert ratio < 0.31


@pytest.mark.slow
def test_local_train_is_seeded_and_masked(zoo_tail):
    """Same seed -> same result; another seed shuffles differently; frozen elements never move."""
    from tinyfed.training import Update

    _model, g = zoo_tail
    tail = g.split(1)[1]
    tg = TfliteGraph.from_bytes(tail)
    fc = [o for o in tg.ops if o.name == "FULLY_CONNECTED"][-1]
    b = tg.bias_tensor(fc)
    ft0 = FloatTail(tg, [])
    unit = tfw.TrainableUnit(fc.index, b.index, tfw.KIND_BIAS, 0, tuple(range(b.shape[0])), b.shape[0],
                             ft0.params[b.index].reshape(-1, 1))
    ft = FloatTail.from_fragments(tail, tfw.encode([unit]))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10,) + tuple(tg.tensors[tg.inputs[0]].shape[1:]))
    y = rng.integers(0, 5, size=10)
    r1 = local_train(ft, x, y, epochs=2, lr=0.1, batch_size=4, seed=5)
    r2 = local_train(ft, x, y, epochs=2, lr=0.1, batch_size=4, seed=5)
    r3 = local_train(ft, x, y, epochs=2, lr=0.1, batch_size=4, seed=6)
    np.testing.assert_array_equal(r1.deltas[0], r2.deltas[0])
    assert not np.array_equal(r1.deltas[0], r3.deltas[0])
    assert r1.n == 10 and np.isfinite(r1.loss) and r1.deltas[0].shape == (b.shape[0], 1)
    for t in ft.params:
        if t != b.index:
            np.testing.assert_array_equal(r1.tail.params[t], ft.params[t])
    np.testing.assert_array_equal(ft.unit_values()[0], unit.values)  # the input tail is untouched
    up = Update.from_result(r1, version=3)
    assert up.version == 3 and up.n == 10 and up.variance == pytest.approx(float(np.var(r1.deltas[0])))
