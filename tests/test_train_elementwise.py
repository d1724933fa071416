"""LOGISTIC, TANH, RELU, RELU6, LEAKY_RELU, HARD_SWISH and MUL (broadcast, constant operand, fused
activation) in a trainable tail: FloatTail's backward against finite differences (float64),
and the C float32 training engine against FloatTail (loss, accumulated gradient, SGD steps)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_train_engine
from engine_models import ELEMENTWISE_TAIL_SHAPE, elementwise_tail_int8, mul_tail_int8
from test_train_engine import GRAD_TOL, LOSS_TOL, STEP_TOL, _everything, _flat, c_grads, c_open, c_train

from tinyfed.firmware_bridge.compile.train_blob import compile_program, parse_program
from tinyfed.training import FloatTail, local_train

lib = test_train_engine.lib  # the host-built C training engine (a session fixture)

OPS = {"HARD_SWISH", "MUL", "TANH", "RELU6", "LEAKY_RELU", "RELU", "LOGISTIC"}


def _case(n: int = 16, model: str = "elementwise") -> tuple[bytes, bytes, np.ndarray, np.ndarray]:
    """A tail with every unit trainable, int8 inputs and labels: the network through every op, or
    ``mul`` (MUL of a tensor by itself, MUL by a scalar constant)."""
    tail = mul_tail_int8() if model == "mul" else elementwise_tail_int8()
    shape = (12,) if model == "mul" else ELEMENTWISE_TAIL_SHAPE
    rng = np.random.default_rng(8)
    x = rng.integers(-128, 128, size=(n, *shape)).astype(np.int8)
    return tail, _everything(tail), x, rng.integers(0, 4, size=n)


@pytest.mark.parametrize("model", ["elementwise", "mul"])
def test_floattail_gradient_matches_finite_differences(model: str) -> None:
    tail, tfw_b, x, y = _case(6, model)
    ft = FloatTail.from_fragments(tail, tfw_b, dtype=np.float64)
    assert (OPS if model == "elementwise" else {"MUL"}) <= set(ft.graph.op_names())
    xf = ft.dequantize_input(x)
    _, grads = ft.loss_and_grads(xf, y)
    analytic = ft.unit_grads(grads)
    values = ft.unit_values()
    rng = np.random.default_rng(1)
    eps, checked = 1e-6, 0
    for k in sorted({0, 1, 2, 3, len(values) - 2} & set(range(len(values)))):  # the first op's units, later ones
        for idx in rng.choice(values[k].size, size=min(6, values[k].size), replace=False):
            plus = [v.copy() for v in values]
            minus = [v.copy() for v in values]
            plus[k].flat[idx] += eps
            minus[k].flat[idx] -= eps
            ft.set_unit_values(plus)
            lp = ft.loss(xf, y)
            ft.set_unit_values(minus)
            lm = ft.loss(xf, y)
            numeric = (lp - lm) / (2 * eps)
            assert analytic[k].flat[idx] == pytest.approx(numeric, rel=1e-4, abs=1e-7), (k, idx)
            checked += 1
    ft.set_unit_values(values)
    assert checked >= 12


@pytest.mark.parametrize("model", ["elementwise", "mul"])
def test_c_engine_matches_floattail(lib, model: str) -> None:
    tail, tfw_b, x, y = _case(model=model)
    blob = compile_program(tail, tfw_b)
    status, _, msg, _ = c_open(lib, blob)
    assert status == 0, msg
    ft = FloatTail.from_fragments(tail, tfw_b)
    xf = ft.dequantize_input(x)
    p = ft.forward(xf, keep=False).reshape(len(y), -1)
    ref_loss = -np.log(np.maximum(p[np.arange(len(y)), y], 1e-30))
    loss, _, grad, start = c_grads(lib, blob, x, y)
    np.testing.assert_array_equal(start, _flat(ft.unit_values()))
    assert float(np.max(np.abs(loss - ref_loss) / np.maximum(1.0, ref_loss))) <= LOSS_TOL
    _, grads = ft.loss_and_grads(xf, y)
    ref = _flat(ft.unit_grads(grads)) * len(y)  # numpy averages; the engine sums
    assert np.abs(ref).max() > 0
    assert float(np.abs(grad - ref).max() / np.abs(ref).max()) <= GRAD_TOL
    assert parse_program(blob).trainable_count == ft.trainable_params


def test_c_sgd_matches_local_train(lib) -> None:
    tail, tfw_b, x, y = _case()
    blob = compile_program(tail, tfw_b)
    ft = FloatTail.from_fragments(tail, tfw_b)
    lr, bs, epochs, seed = 0.05, 4, 2, 3
    rng = np.random.default_rng(seed)  # local_train's sample order, passed to the engine explicitly
    order, bounds = [], [0]
    for _ in range(epochs):
        perm = rng.permutation(len(y))
        for k in range(0, len(y), bs):
            order.extend(perm[k : k + bs])
            bounds.append(len(order))
    res = local_train(ft, ft.dequantize_input(x), y, epochs=epochs, lr=lr, batch_size=bs, seed=seed)
    values, losses = c_train(lib, blob, x, y, np.array(order), np.array(bounds), lr)
    ref_delta = _flat(res.deltas)
    assert np.abs(ref_delta).max() > 0
    assert float(np.abs((values - _flat(ft.unit_values())) - ref_delta).max() / np.abs(ref_delta).max()) <= STEP_TOL
    assert abs(float(losses.mean()) - res.loss) <= 1e-4 * max(1.0, res.loss)


@pytest.mark.parametrize("model", ["elementwise", "mul"])
def test_sim_board_trains_the_same_tail_from_the_program(model: str) -> None:
    """The sim:// board rebuilds the tail from the TFTR program alone (LEAKY_RELU's alpha, MUL's
    constant operand, scalar or not, and fused activation): the same loss and gradients as from
    the plan files."""
    from tinyfed.firmware_bridge.compile.program_tail import program_tail

    tail, tfw_b, x, y = _case(8, model)
    ref = FloatTail.from_fragments(tail, tfw_b)
    sim, _, _ = program_tail(compile_program(tail, tfw_b))
    xf = ref.dequantize_input(x)
    loss_ref, grads_ref = ref.loss_and_grads(xf, y)
    loss_sim, grads_sim = sim.loss_and_grads(xf, y)
    assert loss_sim == loss_ref
    for a, b in zip(sim.unit_grads(grads_sim), ref.unit_grads(grads_ref), strict=True):
        np.testing.assert_array_equal(a, b)
