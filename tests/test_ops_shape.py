"""The ops that move or reduce data: QUANTIZE (int8 -> int8), MEAN, PAD / PADV2, CONCATENATION,
SQUEEZE, EXPAND_DIMS, STRIDED_SLICE.

int8: each op, on hand-built graphs (``_op_models``) with random shapes, scales and edge cases,
and on Keras models converted to full int8, runs bit-exact against TFLite Micro on the numpy
twin and on the host-compiled C engine. float32: a trainable tail through the ops checks
FloatTail's gradients against finite differences and the C training engine against FloatTail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_engine
import test_train_engine
from _op_models import GraphBuilder, options
from test_engine import c_open, c_run, run_fuzz
from test_train_engine import c_open as c_open_train

from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.twin.kernels_np import run_blob
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.models.tflm import TflmModel

N = 64  # random inputs per case
engine_lib = test_engine.engine_lib  # the host builds of the int8 and training engines (session fixtures)
fuzz_exe = test_engine.fuzz_exe
lib = test_train_engine.lib


def _scale(rng: np.random.Generator, around: float = 0.05) -> float:
    return float(around * np.exp(rng.uniform(-3, 3)))


def _check(lib, model: bytes, rng: np.random.Generator, what: str, n: int = N) -> np.ndarray:
    """TFLM, the numpy twin and the C engine agree bit for bit on ``n`` random int8 inputs."""
    blob = compile_blob(model)
    status, _, msg, _ = c_open(lib, blob)
    assert status == 0, f"{what}: the C engine refuses the blob: {msg}"
    ref_model = TflmModel(model)
    g = TfliteGraph.from_bytes(model)
    in_shape = g.tensors[g.inputs[0]].shape
    x = rng.integers(-128, 128, size=(n, *in_shape[1:])).astype(np.int8)
    x[0] = -128
    x[1] = 127
    ref = np.asarray(ref_model.run(x))
    twin = run_blob(blob, x)
    c = c_run(lib, blob, x)
    assert np.array_equal(twin.reshape(ref.shape), ref), f"{what}: twin differs from TFLM on " \
        f"{np.count_nonzero(twin.reshape(ref.shape) != ref)} values"
    assert np.array_equal(c.reshape(ref.shape), ref), f"{what}: C engine differs from TFLM"
    return ref


def _unary(name: str, shape: tuple[int, ...], oshape: tuple[int, ...], sq: tuple[float, int], so: tuple[float, int],
           consts: list, opts=None) -> bytes:
    g = GraphBuilder()
    x = g.act(shape, *sq)
    y = g.act(oshape, *so)
    g.op(name, [x, *[g.const(c) if not isinstance(c, int) or c >= 0 else c for c in consts]], [y], opts)
    return g.build([x], [y])


# --------------------------------------------------------------------------------------
# QUANTIZE int8 -> int8
# --------------------------------------------------------------------------------------


def test_quantize_requantizes_as_tflm(engine_lib) -> None:
    rng = np.random.default_rng(1)
    for trial in range(12):
        shape = (1, *rng.integers(1, 7, size=int(rng.integers(1, 4))).tolist())
        s_in = _scale(rng)
        s_out = s_in * float(np.exp(rng.uniform(-5, 5))) if trial else s_in  # trial 0: the same scale
        m = _unary("QUANTIZE", shape, shape, (s_in, int(rng.integers(-128, 128))),
                   (s_out, int(rng.integers(-128, 128))), [])
        _check(engine_lib, m, rng, f"QUANTIZE {shape} {s_in:.3g} -> {s_out:.3g}")


# --------------------------------------------------------------------------------------
# MEAN
# --------------------------------------------------------------------------------------

_MEAN_CASES = [
    ((1, 5, 7, 6), [1, 2], True), ((1, 5, 7, 6), [1, 2], False), ((1, 5, 7, 6), [2, 1], False),
    ((1, 4, 3, 9), [-1], False), ((1, 4, 3, 9), [-1], True), ((1, 4, 3, 9), [3, -3], True),
    ((1, 6, 5, 2), [1], False), ((1, 8, 3), [1], False), ((1, 8, 3), [-2, 2], True), ((1, 12), [1], True),
    ((1, 6, 6, 4), [0, 3], False), ((1, 31, 17, 3), [1, 2], False), ((1, 2, 2, 2), [2, 2], False),
]


@pytest.mark.parametrize("shape, axes, keep", _MEAN_CASES)
def test_mean_matches_tflm(engine_lib, shape: tuple[int, ...], axes: list[int], keep: bool) -> None:
    rng = np.random.default_rng(len(shape) * 100 + sum(axes) + keep)
    res = {(a + len(shape)) % len(shape) for a in axes}
    oshape = tuple(1 if i in res else n for i, n in enumerate(shape)) if keep else tuple(
        n for i, n in enumerate(shape) if i not in res)
    for _ in range(3):
        s_in = _scale(rng)
        m = _unary("MEAN", shape, oshape, (s_in, int(rng.integers(-128, 128))),
                   (s_in * float(np.exp(rng.uniform(-3, 2))), int(rng.integers(-128, 128))), [axes],
                   options("ReducerOptions", keepDims=keep))
        _check(engine_lib, m, rng, f"MEAN {shape} axes {axes} keep {keep}")


def test_mean_over_three_axes_is_refused() -> None:
    m = _unary("MEAN", (1, 3, 4, 5), (1,), (0.1, 0), (0.1, 0), [[1, 2, 3]], options("ReducerOptions", keepDims=False))
    with pytest.raises(ModelError, match=r"op 0 MEAN: reduces 3 axes .* at most 2"):
        compile_blob(m)


# --------------------------------------------------------------------------------------
# PAD / PADV2
# --------------------------------------------------------------------------------------

_PAD_CASES = [
    ((1, 5, 6, 3), [[0, 0], [1, 2], [0, 1], [0, 0]]), ((1, 5, 6, 3), [[0, 0], [0, 0], [0, 0], [2, 1]]),
    ((1, 4, 4, 2), [[0, 0], [3, 3], [3, 3], [0, 0]]), ((1, 7, 2), [[0, 0], [2, 0], [0, 5]]), ((1, 6), [[0, 0], [1, 4]]),
    ((1, 3, 3, 1), [[1, 0], [0, 0], [0, 1], [0, 0]]),
]


@pytest.mark.parametrize("shape, pads", _PAD_CASES)
def test_pad_matches_tflm(engine_lib, shape: tuple[int, ...], pads: list[list[int]]) -> None:
    rng = np.random.default_rng(sum(map(sum, pads)))
    oshape = tuple(n + a + b for n, (a, b) in zip(shape, pads, strict=True))
    q = (_scale(rng), int(rng.integers(-128, 128)))
    _check(engine_lib, _unary("PAD", shape, oshape, q, q, [pads]), rng, f"PAD {shape} {pads}")
    g = GraphBuilder()
    x, y = g.act(shape, *q), g.act(oshape, *q)
    g.op("PADV2", [x, g.const(pads), g.const(np.array(int(rng.integers(-128, 128))), "INT8", *q)], [y])
    _check(engine_lib, g.build([x], [y]), rng, f"PADV2 {shape} {pads}")


def test_negative_pads_are_refused() -> None:
    m = _unary("PAD", (1, 5, 6, 3), (1, 4, 6, 3), (0.1, 0), (0.1, 0), [[[0, 0], [-1, 0], [0, 0], [0, 0]]])
    with pytest.raises(ModelError, match="op 0 PAD: negative paddings"):
        compile_blob(m)


# --------------------------------------------------------------------------------------
# CONCATENATION (with QUANTIZE branches: a graph has one input)
# --------------------------------------------------------------------------------------


def _concat_graph(rng: np.random.Generator, shape: tuple[int, ...], sizes: list[int], axis: int,
                  same_scale: bool) -> bytes:
    """x -> one PAD or QUANTIZE branch per input (its own size along ``axis``, its own scale unless
    ``same_scale``) -> CONCATENATION."""
    g = GraphBuilder()
    q_in = (_scale(rng), int(rng.integers(-128, 128)))
    q_out = (_scale(rng), int(rng.integers(-128, 128)))
    x = g.act(shape, *q_in)
    rank = len(shape)
    ax = axis % rank
    branches = []
    for k, n in enumerate(sizes):
        q = q_out if same_scale else (_scale(rng), int(rng.integers(-128, 128)))
        mid = g.act(shape, *q)
        g.op("QUANTIZE", [x], [mid])
        if n != shape[ax]:
            pads = [[0, 0] for _ in range(rank)]
            pads[ax] = [0, n - shape[ax]] if k % 2 else [n - shape[ax], 0]
            padded = g.act(tuple(n if i == ax else d for i, d in enumerate(shape)), *q)
            g.op("PAD", [mid, g.const(pads)], [padded])
            mid = padded
        branches.append(mid)
    oshape = tuple(sum(sizes) if i == ax else d for i, d in enumerate(shape))
    y = g.act(oshape, *q_out)
    g.op("CONCATENATION", branches, [y], options("ConcatenationOptions", axis=axis))
    return g.build([x], [y])


_CONCAT_CASES = [
    ((1, 4, 5, 3), [3, 3], -1, True), ((1, 4, 5, 3), [3, 5, 4, 3, 6], -1, True), ((1, 4, 5, 3), [5, 6], 2, True),
    ((1, 4, 5, 3), [4, 7, 4], 1, True), ((1, 4, 5, 3), [1, 1], 0, True), ((1, 2, 6), [2, 3, 2, 2, 4], 1, True),
    ((1, 7), [7, 9, 7, 8, 7, 7, 10, 7, 7, 7], -1, True),
]


@pytest.mark.parametrize("shape, sizes, axis, same_scale", _CONCAT_CASES)
def test_concatenation_matches_tflm(engine_lib, shape: tuple[int, ...], sizes: list[int], axis: int,
                                    same_scale: bool) -> None:
    """Inputs of different scales reach the concatenation through QUANTIZE ops (as converted models do)."""
    rng = np.random.default_rng(len(sizes) * 10 + axis + 5 * same_scale)
    m = _concat_graph(rng, shape, sizes, axis, same_scale)
    _check(engine_lib, m, rng, f"CONCATENATION of {len(sizes)} along {axis} (same scale: {same_scale})")


def test_concatenation_limits_agree_between_host_and_engines() -> None:
    """TFLM's ten inputs: the host's limit is the int8 engine's; the training engine's is its three slots."""
    import re

    from tinyfed.ops import concatenation

    src = (test_engine.ENGINE / "ops" / "concatenation.c").read_text()
    assert int(re.search(r"#define TFMB_CONCAT_MAX (\d+)", src).group(1)) == concatenation.MAX_INPUTS == 10
    assert concatenation.MAX_TRAIN_INPUTS == 3


def test_concatenation_of_inputs_quantized_unlike_the_output_is_refused_as_tflm_does() -> None:
    m = _concat_graph(np.random.default_rng(0), (1, 4, 5, 3), [3, 4, 3, 5, 3], 3, False)
    with pytest.raises(ModelError, match="CONCATENATION: input tensor .* unlike the output"):
        compile_blob(m)
    with pytest.raises(ModelError, match="concatenation"):
        TflmModel(m)


def test_concatenation_of_eleven_inputs_is_refused() -> None:
    g = GraphBuilder()
    x = g.act((1, 2), 0.1, 0)
    y = g.act((1, 22), 0.1, 0)
    g.op("CONCATENATION", [x] * 11, [y], options("ConcatenationOptions", axis=1))
    with pytest.raises(ModelError, match="op 0 CONCATENATION: has 11 inputs; TFLM concatenates at most 10"):
        compile_blob(g.build([x], [y]))


# --------------------------------------------------------------------------------------
# Trainable tails: FloatTail against finite differences, the C training engine against FloatTail
# --------------------------------------------------------------------------------------


def _tail_case(name: str):
    from _shape_tails import hand_tail_int8, keras_tail_int8
    from test_train_engine import _everything

    model = {"keras": keras_tail_int8, "hand": hand_tail_int8}[name]()
    g = TfliteGraph.from_bytes(model)
    rng = np.random.default_rng(9)
    x = rng.integers(-100, 100, size=(10, *g.tensors[g.inputs[0]].shape[1:])).astype(np.int8)
    y = rng.integers(0, g.tensors[g.outputs[0]].size, size=10)
    return model, _everything(model), x, y


@pytest.mark.parametrize("name", ["keras", "hand"])
def test_tail_gradients_match_finite_differences(name: str) -> None:
    from tinyfed.training import FloatTail

    model, tfw_b, x, y = _tail_case(name)
    g = TfliteGraph.from_bytes(model)
    assert {"MEAN", "CONCATENATION"} <= set(g.op_names()) and ({"PAD", "PADV2"} & set(g.op_names()))
    ft = FloatTail.from_fragments(model, tfw_b, dtype=np.float64)
    xf = ft.dequantize_input(x)
    _, grads = ft.loss_and_grads(xf, y)
    first = g.weight_tensor(g.ops[0]).index  # the first op's weights: every op's backward lies between
    rng = np.random.default_rng(2)
    flat = ft.params[first].reshape(-1)
    for i in rng.choice(flat.size, size=8, replace=False):
        keep = flat[i]
        flat[i] = keep + 1e-6
        up = ft.loss(xf, y)
        flat[i] = keep - 1e-6
        down = ft.loss(xf, y)
        flat[i] = keep
        fd = (up - down) / 2e-6
        assert abs(fd - grads[first].reshape(-1)[i]) <= 1e-6 + 1e-4 * abs(fd), f"{name}: weight {i}"


@pytest.mark.parametrize("name", ["keras", "hand"])
def test_tail_c_training_engine_matches_floattail(lib, name: str) -> None:
    """Per-sample loss, the batch gradient of w* and the predictions of the C engine (sim:// trains
    through the same program, read back) agree with FloatTail."""
    from test_train_engine import c_grads, c_predict

    from tinyfed.firmware_bridge.compile.program_tail import program_tail
    from tinyfed.firmware_bridge.compile.train_blob import compile_program
    from tinyfed.training import FloatTail

    model, tfw_b, x, y = _tail_case(name)
    blob = compile_program(model, tfw_b)
    status, _, msg, _ = c_open_train(lib, blob)
    assert status == 0, msg
    for ft in (FloatTail.from_fragments(model, tfw_b), program_tail(blob)[0]):
        xf = ft.dequantize_input(x)
        p = ft.forward(xf, keep=False).reshape(len(y), -1)
        ref_loss = -np.log(np.maximum(p[np.arange(len(y)), y], 1e-30))
        loss, pred, grad, _ = c_grads(lib, blob, x, y)
        _, grads = ft.loss_and_grads(xf, y)
        ref = np.concatenate([np.ravel(a) for a in ft.unit_grads(grads)]) * len(y)
        assert np.abs(ref).max() > 0
        assert float(np.max(np.abs(loss - ref_loss) / np.maximum(1.0, ref_loss))) <= 1e-5
        assert float(np.abs(grad - ref).max() / np.abs(ref).max()) <= 1e-4
        assert np.array_equal(c_predict(lib, blob, x, y)[1], pred)


def test_tail_int8_bit_exact(engine_lib) -> None:
    for name in ("keras", "hand"):
        model, _, _, _ = _tail_case(name)
        _check(engine_lib, model, np.random.default_rng(4), f"{name} tail int8")


def test_corrupted_concatenation_lists_are_refused_and_flips_never_crash(fuzz_exe, tmp_path: Path) -> None:
    """Every field of the CONCATENATION list (id, arena offset, row length) and its params, set
    wrong, is refused by ``tfmb_open``; random byte flips (CRC fixed) in the shape ops' blobs never
    crash the sanitizer build, and whatever opens runs on an exactly sized arena."""
    import struct

    from tinyfed.firmware_bridge.compile.blob import parse_blob

    rng = np.random.default_rng(12)
    blob = compile_blob(_concat_graph(rng, (1, 4, 5, 3), [3, 5, 4, 3, 6], -1, True))
    info = parse_blob(blob)
    cat = next(o for o in info.ops if o.name == "CONCATENATION")
    n, _, listing, outer = cat.params[:4]
    op_at = test_engine.HEADER_BYTES + len(info.tensors) * test_engine.TENSOR_BYTES + cat.index * test_engine.OP_BYTES
    bad = []
    entries = info.int32_array(listing, 3 * n).reshape(n, 3)
    for k in range(n):
        for field, value in ((0, len(info.tensors)), (0, cat.output), (4, int(entries[k, 1]) + 1), (8, 1)):
            b = bytearray(blob)
            struct.pack_into("<i", b, info.data_offset + listing + 12 * k + field, value)
            bad.append(test_engine._recrc(b))
    for param, value in ((0, 11), (0, n - 1), (1, 2), (2, info.data_bytes), (2, listing + 2), (3, outer + 1)):
        b = bytearray(blob)
        struct.pack_into("<i", b, op_at + 16 + 4 * param, value)
        bad.append(test_engine._recrc(b))
    statuses, _ = run_fuzz(fuzz_exe, bad, tmp_path)
    assert all(st != 0 for st in statuses), [i for i, st in enumerate(statuses) if st == 0]

    from _shape_tails import hand_tail_int8

    bases = [blob, compile_blob(hand_tail_int8()),
             compile_blob(_unary("STRIDED_SLICE", (1, 6, 7, 4), _slice_shape(*_SLICE_CASES[1]), (0.1, 3), (0.1, 3),
                                 _SLICE_CASES[1][1:4], options("StridedSliceOptions")))]
    flipped = []
    for i in range(1500):
        src = bases[i % len(bases)]
        b = bytearray(src)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(16, len(src)))] ^= int(rng.integers(1, 256))
        flipped.append(test_engine._recrc(b))
    run_fuzz(fuzz_exe, flipped, tmp_path)  # asserts a clean exit: no crash, no sanitizer report


# --------------------------------------------------------------------------------------
# STRIDED_SLICE, SQUEEZE, EXPAND_DIMS
# --------------------------------------------------------------------------------------

_SLICE_CASES = [  # shape, begin, end, strides, begin_mask, end_mask, shrink_axis_mask
    ((1, 6, 7, 4), [0, 1, 0, 0], [1, 5, 7, 4], [1, 1, 2, 1], 0, 0, 0),
    ((1, 6, 7, 4), [0, -2, 0, 1], [1, 0, -1, 3], [1, -1, 3, 1], 0, 0, 0),
    ((1, 6, 7, 4), [0, 0, 6, 3], [1, 6, 0, 0], [1, 2, -2, -1], 3, 0, 0),
    ((1, 6, 7, 4), [0, 0, 0, 0], [0, 0, 0, 0], [1, -1, -3, -1], 15, 15, 0),
    ((1, 6, 7, 4), [0, 2, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], 1, 15, 0),
    ((1, 6, 7, 4), [0, 3, 0, -1], [1, 4, 7, 0], [1, 1, 1, 1], 0, 4, 8),
    ((1, 6, 7, 4), [0, -1, 0, 0], [1, 0, 7, 4], [1, 1, 1, 1], 0, 0, 2),
    ((1, 9, 5), [0, 8, 4], [1, -100, -100], [1, -3, -2], 0, 0, 0),
    ((1, 10), [0, -7], [1, 100], [1, 2], 0, 0, 0),
]


def _slice_shape(shape, begin, end, strides, bm, em, sm) -> tuple[int, ...]:
    from tinyfed.ops.strided_slice import _axis

    out = []
    for k, n in enumerate(shape):
        _, count = _axis(begin[k], end[k], strides[k], n, (bm, em, sm), k)
        if not sm >> k & 1:
            out.append(count)
    return tuple(out)


@pytest.mark.parametrize("case", _SLICE_CASES)
def test_strided_slice_matches_tflm(engine_lib, case) -> None:
    shape, begin, end, strides, bm, em, sm = case
    rng = np.random.default_rng(abs(sum(begin)) + bm)
    q = (_scale(rng), int(rng.integers(-128, 128)))
    m = _unary("STRIDED_SLICE", shape, _slice_shape(*case), q, q, [begin, end, strides],
               options("StridedSliceOptions", beginMask=bm, endMask=em, shrinkAxisMask=sm))
    _check(engine_lib, m, rng, f"STRIDED_SLICE {case}")


def test_squeeze_and_expand_dims_match_tflm(engine_lib) -> None:
    rng = np.random.default_rng(8)
    q = (0.07, -3)
    g = GraphBuilder()
    x = g.act((1, 4, 1, 3), *q)
    s = g.act((1, 4, 3), *q)
    g.op("SQUEEZE", [x], [s], options("SqueezeOptions", squeezeDims=[2]))
    e = g.act((1, 4, 3, 1), *q)
    g.op("EXPAND_DIMS", [s, g.const(np.array([-1], np.int32))], [e])
    y = g.act((1, 4, 3, 1), 0.05, 7)
    g.op("QUANTIZE", [e], [y])  # something to compute after the aliases
    m = g.build([x], [y])
    from tinyfed.firmware_bridge.compile.blob import parse_blob

    info = parse_blob(compile_blob(m))
    assert {t.offset for t in info.tensors[:3]} == {info.tensors[0].offset}  # both alias the input's bytes
    _check(engine_lib, m, rng, "SQUEEZE + EXPAND_DIMS")


# --------------------------------------------------------------------------------------
# The arena model's op data
# --------------------------------------------------------------------------------------


def test_tflm_op_data_is_what_tflm_allocates(tmp_path: Path) -> None:
    """Each op's ``tflm_op_data``: TFLM's persistent buffer bytes of a one-op model (64-bit host)
    minus those of a RESHAPE (no op data), within the buffers' 16-byte alignment."""
    from tinyfed import ops
    from tinyfed.models.tflm import _probe_once, _runtime

    q = (0.1, 0)
    models = {
        "RESHAPE": _unary("RESHAPE", (1, 4, 4, 3), (1, 4, 4, 3), q, q, [[1, 4, 4, 3]],
                          options("ReshapeOptions", newShape=[1, 4, 4, 3])),
        "QUANTIZE": _unary("QUANTIZE", (1, 4, 4, 3), (1, 4, 4, 3), q, (0.2, 1), []),
        "MEAN": _unary("MEAN", (1, 4, 4, 3), (1, 3), q, (0.05, 0), [[1, 2]], options("ReducerOptions")),
        "PAD": _unary("PAD", (1, 4, 4, 3), (1, 5, 4, 3), q, q, [[[0, 0], [1, 0], [0, 0], [0, 0]]]),
        "STRIDED_SLICE": _unary("STRIDED_SLICE", (1, 4, 4, 3), (1, 2, 4, 3), q, q,
                                [[0, 0, 0, 0], [1, 2, 4, 3], [1, 1, 1, 1]], options("StridedSliceOptions")),
        "SQUEEZE": _unary("SQUEEZE", (1, 4, 1, 3), (1, 4, 3), q, q, [], options("SqueezeOptions", squeezeDims=[2])),
    }
    g = GraphBuilder()
    x, y = g.act((1, 4, 4, 3), *q), g.act((1, 4, 4, 6), *q)
    g.op("CONCATENATION", [x, x], [y], options("ConcatenationOptions", axis=3))
    models["CONCATENATION"] = g.build([x], [y])
    rt = _runtime()
    persistent = {}
    for name, m in models.items():
        res = _probe_once(rt, m, 1, 1 << 16, str(tmp_path / f"{name}.log"))
        assert res["ok"], f"{name}: {res}"
        persistent[name] = res["allocations"]["Persistent buffer data"]
    for name, used in persistent.items():
        measured = used - persistent["RESHAPE"]
        assert abs(ops.get(name).tflm_op_data[0] - measured) <= 12, f"{name}: TFLM allocates {measured} B of op data"


# --------------------------------------------------------------------------------------
# On the emulated boards (the firmware built for Cortex-M4F and Cortex-M55)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("board", ["mps2-an386", "mps3-an547"])
def test_shape_ops_bit_exact_on_qemu(board: str) -> None:
    import shutil

    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("needs qemu-system-arm and gcc-arm-none-eabi (make test installs both)")
    from _shape_tails import hand_tail_int8, keras_tail_int8

    from tinyfed.firmware_bridge.emulate.emulator import EmulatorFleet
    from tinyfed.firmware_bridge.link.client import BoardClient

    rng = np.random.default_rng(6)
    models = {
        "keras tail": keras_tail_int8(), "hand tail": hand_tail_int8(),
        "concat of 5": _concat_graph(rng, (1, 4, 5, 3), [3, 5, 4, 3, 6], -1, True),
        "strided slice": _unary("STRIDED_SLICE", (1, 6, 7, 4), _slice_shape(*_SLICE_CASES[1]), (0.1, 3), (0.1, 3),
                                _SLICE_CASES[1][1:4], options("StridedSliceOptions")),
        "mean": _unary("MEAN", (1, 5, 7, 6), (1, 6), (0.05, -7), (0.02, 4), [[1, 2]], options("ReducerOptions")),
    }
    with EmulatorFleet(board, 1) as fleet, BoardClient(fleet.boards[0].url) as client:
        for what, m in models.items():
            g = TfliteGraph.from_bytes(m)
            x = rng.integers(-128, 128, size=(24, *g.tensors[g.inputs[0]].shape[1:])).astype(np.int8)
            want = np.asarray(TflmModel(m).run(x)).reshape(len(x), -1)
            client.load_fragment(compile_blob(m))
            got = np.stack([client.infer(x[i : i + 1]) for i in range(len(x))]).reshape(len(x), -1)
            assert np.array_equal(got, want), f"{board} {what}: {np.count_nonzero(got != want)} values differ"
