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
from test_engine import _field_corruptions, _recrc, assert_same, c_run, run_fuzz

from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.twin.kernels_np import run_blob
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.models.tflm import TflmModel

engine_lib = test_engine.engine_lib  # the host-built C engine (a session fixture)
fuzz_exe = test_engine.fuzz_exe  # the same, an executable with sanitizers (a session fixture)

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
            "constant_2d": [(1, 4, 5, 6), (5, 6)], "constant_scalar": [(1, 4, 5, 6), ()],
            "constant_first": [(6,), (1, 4, 5, 6)]}
    assert shapes == want.get(kind, [(1, 4, 5, 6)] * 2)
    assert constant == [kind == "constant_first", kind.startswith("constant") and kind != "constant_first"]
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


@pytest.mark.slow
@pytest.mark.parametrize("board", ["mps2-an386", "mps3-an547"])
def test_network_of_elementwise_ops_on_qemu(board: str) -> None:
    """The firmware built for the board, in QEMU, runs the network bit-exact with TFLM."""
    import shutil

    from tinyfed.firmware_bridge.emulate.build import build_firmware
    from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
    from tinyfed.firmware_bridge.link.client import BoardClient

    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("qemu-system-arm or arm-none-eabi-gcc is not installed (make setup)")
    model = elementwise_tail_int8()
    x = np.random.default_rng(5).integers(-128, 128, size=(24, *ELEMENTWISE_TAIL_SHAPE)).astype(np.int8)
    want = TflmModel(model).run(x)
    with launch_qemu(board, Path(build_firmware(board)), ready_timeout=300.0) as emu, BoardClient(emu.url) as c:
        c.load_fragment(compile_blob(model))
        got = np.stack([c.infer(x[i : i + 1]) for i in range(len(x))])
    assert_same(got, want, f"{board}: firmware in QEMU vs TFLM")


def _random_quantization(rng: np.random.Generator) -> tuple[float, int]:
    """A scale log-uniform over 1e-5 .. 10 (as float32) and any int8 zero point."""
    return float(np.float32(10.0 ** rng.uniform(-5, 1))), int(rng.integers(-128, 128))


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*ELEMENTWISE_KINDS, "MUL"])
def test_random_quantizations_bit_exact(kind: str) -> None:
    """Hundreds of random input / output quantizations per op, numpy twin against TFLM (the
    C engine runs the same records: the curated sets above compare it)."""
    model = mul_int8("broadcast") if kind == "MUL" else elementwise_int8(kind)
    g = TfliteGraph.from_bytes(model)
    op = g.ops[-1]
    x = _inputs(2)
    rng = np.random.default_rng(sum(map(ord, kind)))
    compared = 0
    for _ in range(300):
        q = {t: _random_quantization(rng) for t in (*op.inputs[: 2 if kind == "MUL" else 1], op.outputs[0])}
        if kind == "LOGISTIC":
            q[op.outputs[0]] = (1 / 256, -128)
        m = requantized(model, q)
        ref = _tflm_or_refusal(m, x)
        if ref is None:
            with pytest.raises(ModelError, match=rf"op \d+ {kind}:"):
                compile_blob(m)
            continue
        assert_same(run_blob(compile_blob(m), x), ref, f"{kind} {q}")
        compared += 1
    assert compared >= 150


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.7])
def test_leaky_relu_alphas_bit_exact(engine_lib, alpha: float) -> None:
    """A zero, negative or above-one alpha (a negative alpha multiplier, a shift above 0)."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(elementwise_int8("LEAKY_RELU")))
    obj.subgraphs[0].operators[0].builtinOptions.alpha = alpha
    model = bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
    g = TfliteGraph.from_bytes(model)
    assert g.ops[0].options["alpha"] == pytest.approx(alpha)
    for s_in, s_out in ((0.03, 0.02), (0.01, 0.05)):
        m = requantized(model, {g.inputs[0]: (s_in, 3), g.outputs[0]: (s_out, -9)})
        assert _compare(engine_lib, m, _inputs(), f"LEAKY_RELU alpha {alpha} {s_in} -> {s_out}")


def test_corrupted_blobs_rejected_without_crashing(fuzz_exe, tmp_path: Path) -> None:
    """The new kernels' record checks: every corrupted field of the network's blob (and of MUL by a
    constant) is refused, and random byte flips with a fixed CRC neither crash nor touch memory
    out of bounds (sanitizers); whatever opens is invoked."""
    blobs = [compile_blob(elementwise_tail_int8()), compile_blob(mul_int8("constant_2d"))]
    corrupted = [c for b in blobs for c in _field_corruptions(b)]
    statuses, _ = run_fuzz(fuzz_exe, corrupted, tmp_path)
    accepted = [i for i, s in enumerate(statuses) if s == 0]
    assert not accepted, f"{len(accepted)} of {len(corrupted)} corrupted blobs opened (first: {accepted[:5]})"
    rng = np.random.default_rng(13)
    flipped = []
    for i in range(1500):
        b = bytearray(blobs[i % 2])
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        flipped.append(_recrc(b))
    statuses, _ = run_fuzz(fuzz_exe, flipped, tmp_path)
    assert sum(s != 0 for s in statuses) > len(flipped) // 4
