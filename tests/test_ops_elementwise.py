"""LOGISTIC, TANH, RELU, RELU6, LEAKY_RELU, HARD_SWISH and MUL in the int8 engines: the numpy twin
and the host-built C engine against TFLM (the ``tflite-micro`` wheel), bit for bit, on inputs
covering the whole int8 range, over input and output quantizations rewritten in the model file
(so TFLM and tinyfed read the same parameters); where TFLM refuses a quantization, tinyfed
refuses it too, with the op named."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_engine
from engine_models import (
    ELEMENTWISE_KINDS,
    ELEMENTWISE_SHAPE,
    ELEMENTWISE_TAIL_SHAPE,
    MUL_KINDS,
    elementwise_int8,
    elementwise_tail_int8,
    mul_int8,
    requantized,
)
from test_engine import assert_same, c_run

from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.twin.kernels_np import run_blob
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.models.tflm import TflmModel

engine_lib = test_engine.engine_lib  # the host-built C engine (a session fixture)

_SCALES_IN = (0.0004, 0.0303, 0.11, 0.9)
_ZPS_IN = (-128, -7, 127)
_SCALES_OUT = (0.0039, 0.0159, 0.3)
_ZPS_OUT = (-128, 0, 90)


def _inputs(n_random: int = 5) -> np.ndarray:
    """Every int8 value at every position of the first 256 elements, then random samples."""
    size = int(np.prod(ELEMENTWISE_SHAPE))
    sweep = np.resize(np.arange(-128, 128), 3 * size).reshape(3, *ELEMENTWISE_SHAPE)
    rand = np.random.default_rng(0).integers(-128, 128, size=(n_random, *ELEMENTWISE_SHAPE))
    return np.concatenate([sweep, rand]).astype(np.int8)


def _tflm_or_refusal(model: bytes, x: np.ndarray) -> np.ndarray | None:
    try:
        return TflmModel(model).run(x)
    except ModelError:
        return None


def _compare(engine_lib, model: bytes, x: np.ndarray, what: str) -> bool:
    """C == numpy == TFLM; True when compared, False when both TFLM and tinyfed refuse."""
    ref = _tflm_or_refusal(model, x)
    if ref is None:
        with pytest.raises(ModelError, match=r"op \d+ [A-Z_]+:"):
            compile_blob(model)
        return False
    blob = compile_blob(model)
    assert_same(run_blob(blob, x), ref, f"{what}: numpy twin vs TFLM")
    assert_same(c_run(engine_lib, blob, x), ref, f"{what}: C engine vs TFLM")
    return True


@pytest.mark.parametrize("kind", ELEMENTWISE_KINDS)
def test_elementwise_bit_exact(engine_lib, kind: str) -> None:
    model = elementwise_int8(kind)
    g = TfliteGraph.from_bytes(model)
    assert g.op_names() == [kind]
    t_in, t_out = g.inputs[0], g.outputs[0]
    x = _inputs()
    fixed_out = {"LOGISTIC": (1 / 256, -128), "TANH": (1 / 128, 0)}.get(kind)
    outs = [fixed_out] if fixed_out else list(itertools.product(_SCALES_OUT, _ZPS_OUT))
    compared = 0
    for (s_in, z_in), (s_out, z_out) in itertools.product(itertools.product(_SCALES_IN, _ZPS_IN), outs):
        m = requantized(model, {t_in: (s_in, z_in), t_out: (s_out, z_out)})
        compared += _compare(engine_lib, m, x, f"{kind} in ({s_in}, {z_in}) out ({s_out}, {z_out})")
    assert compared >= len(outs) * len(_SCALES_IN) * len(_ZPS_IN) * 3 // 4


def test_logistic_refuses_what_tflm_refuses() -> None:
    """TFLM's LOGISTIC needs the output zero point -128; HARD_SWISH an output scale of at
    least input scale / 128."""
    g = TfliteGraph.from_bytes(elementwise_int8("LOGISTIC"))
    bad = requantized(elementwise_int8("LOGISTIC"), {g.outputs[0]: (1 / 256, 0)})
    assert _tflm_or_refusal(bad, _inputs(0)) is None
    with pytest.raises(ModelError, match="op 0 LOGISTIC: output zero point is 0"):
        compile_blob(bad)
    g = TfliteGraph.from_bytes(elementwise_int8("HARD_SWISH"))
    bad = requantized(elementwise_int8("HARD_SWISH"), {g.inputs[0]: (0.9, 0), g.outputs[0]: (0.004, 0)})
    assert _tflm_or_refusal(bad, _inputs(0)) is None
    with pytest.raises(ModelError, match="op 0 HARD_SWISH: output scale"):
        compile_blob(bad)


@pytest.mark.parametrize("kind", MUL_KINDS)
def test_mul_bit_exact(engine_lib, kind: str) -> None:
    model = mul_int8(kind)
    g = TfliteGraph.from_bytes(model)
    mul = g.ops[-1]
    assert mul.name == "MUL"
    shapes = [tuple(g.tensors[t].shape) for t in mul.inputs]
    constant = [g.tensors[t].is_constant for t in mul.inputs]
    want = {"broadcast": [(1, 4, 5, 6), (1, 1, 1, 6)], "constant": [(1, 4, 5, 6), (6,)],
            "constant_2d": [(1, 4, 5, 6), (5, 6)], "constant_first": [(6,), (1, 4, 5, 6)]}
    assert shapes == want.get(kind, [(1, 4, 5, 6)] * 2)
    assert constant == [kind == "constant_first", kind in ("constant", "constant_2d")]
    assert mul.options["activation"] == ("RELU" if kind == "fused_relu" else "NONE")
    x = _inputs()
    rng = np.random.default_rng(len(kind))
    for s1, s2, s_out in itertools.product((0.003, 0.05, 0.7), (0.01, 0.2), (0.002, 0.05, 0.9)):
        z1, z2, z_out = (int(v) for v in rng.integers(-128, 128, size=3))
        q = {mul.outputs[0]: (s_out, z_out), mul.inputs[0]: (s1, z1), mul.inputs[1]: (s2, z2)}
        assert _compare(engine_lib, requantized(model, q), x, f"MUL {kind} {s1} * {s2} -> {s_out}")


def test_network_of_elementwise_ops_bit_exact(engine_lib) -> None:
    """Every op in one converted network (calibrated scales, MUL with a fused RELU6 and with a
    broadcast operand): the full model and each single-output prefix."""
    model = elementwise_tail_int8()
    g = TfliteGraph.from_bytes(model)
    assert set(ELEMENTWISE_KINDS) | {"MUL"} <= set(g.op_names())
    x = np.random.default_rng(4).integers(-128, 128, size=(300, *ELEMENTWISE_TAIL_SHAPE)).astype(np.int8)
    checked = 0
    for k in range(1, len(g.ops) + 1):
        try:
            frag = g.extract(0, k)
            compile_blob(frag)
        except ModelError:
            continue  # a prefix ending between the MUL's two branches has two outputs
        assert _compare(engine_lib, frag, x, f"prefix of {k} ops")
        checked += 1
    assert checked >= len(g.ops) - 2
