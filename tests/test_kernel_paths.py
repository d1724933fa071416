"""The optimised int8 kernel paths against TFLite Micro and against the plain-C reference, bit for bit.

The DSP-extension kernels (``firmware/engine/ops/*_dsp.c``: CONV_2D, FULLY_CONNECTED...) are compiled
on the host with tfmb_simd.h's portable intrinsics (fixture ``engine_lib_dsp``), so their logic (the
int16 im2col in SXTB16 order, the channel / pixel pairs, K tails, odd channels and pixels, the shorter
requantization) is checked here on many inputs; the inline assembly of the real build runs on QEMU
``mps2-an386`` in the slow test at the end.

1. Every zoo model (and its frozen heads), the engine test models and the field look-alikes: 0
   mismatching outputs against TFLM and against the plain-C build on random inputs.
2. Random CONV_2D / FULLY_CONNECTED shapes written directly as ``.tflite`` (``_op_models``): strides,
   SAME / VALID padding, dilation, 1..67 input channels, odd output channels, K % 4 != 0, batches > 1
   and a nonzero weights offset for FULLY_CONNECTED, activation ranges.
3. (slow) The firmware's DSP build on QEMU ``mps2-an386``: section 2's shapes against TFLM. The
   pretrained field look-alikes run on the same build (and on the Cortex-M55's) in
   ``test_field_models.py``, the look-alikes with random weights on the M55 in ``test_kernels_mve.py``.

Inputs per model: ``TINYFED_KERNEL_INPUTS`` (default 200; ``bench`` runs 2,000).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_engine
from _op_models import GraphBuilder, options
from test_engine import c_open, c_run

from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.models.tflm import TflmModel

engine_lib = test_engine.engine_lib  # plain C (the reference kernels)
engine_lib_dsp = test_engine.engine_lib_dsp  # DSP kernels, portable intrinsics

#: random inputs per model in the suite (the bench sets 2000)
INPUTS = int(os.environ.get("TINYFED_KERNEL_INPUTS", "200"))
#: per random op shape (each is small)
OP_INPUTS = 48
#: field look-alikes whose Keras conversion takes long on a busy 2-core host
SLOW_CONVERT = {"mobilenet_vww"}


def mismatched(got: np.ndarray, want: np.ndarray) -> int:
    """Samples with any output value different."""
    n = want.shape[0]
    return int(np.count_nonzero(np.any(np.asarray(got).reshape(n, -1) != np.asarray(want).reshape(n, -1), axis=1)))


def inputs_for(model: bytes, n: int, seed: int) -> np.ndarray:
    """``n`` random int8 inputs, the first two at the extremes (every tap saturated one way)."""
    g = TfliteGraph.from_bytes(model)
    shape = tuple(g.tensors[g.inputs[0]].shape[1:])
    x = np.random.default_rng(seed).integers(-128, 128, size=(n, *shape)).astype(np.int8)
    x[0] = -128
    if n > 1:
        x[1] = 127
    return x


def check_paths(lib_c, lib_dsp, model: bytes, n: int, seed: int, what: str) -> None:
    """The DSP build agrees with TFLM and with the plain-C build on every one of ``n`` inputs."""
    blob = compile_blob(model)
    status, _, msg, _ = c_open(lib_dsp, blob)
    assert status == 0, f"{what}: the engine refuses the blob: {msg}"
    x = inputs_for(model, n, seed)
    want = np.asarray(TflmModel(model).run(x))
    dsp = c_run(lib_dsp, blob, x)
    ref = c_run(lib_c, blob, x)
    assert mismatched(dsp, ref) == 0, f"{what}: DSP kernels differ from the plain-C kernels"
    assert mismatched(dsp, want) == 0, f"{what}: DSP kernels differ from TFLM"


def test_the_dsp_build_runs_the_dsp_kernels(engine_lib, engine_lib_dsp) -> None:
    engine_lib_dsp.tfmb_kernel_path.restype = engine_lib.tfmb_kernel_path.restype = ctypes.c_char_p
    assert engine_lib_dsp.tfmb_kernel_path() == b"dsp"
    assert engine_lib.tfmb_kernel_path() == b"c"


# --------------------------------------------------------------------------------------
# 1. Whole models
# --------------------------------------------------------------------------------------


def _zoo_models() -> list[str]:
    from tinyfed.models.zoo import ZOO_NAMES

    return list(ZOO_NAMES)


@pytest.mark.parametrize("name", _zoo_models())
def test_zoo_model_and_its_heads(engine_lib, engine_lib_dsp, name: str) -> None:
    """The whole zoo model and three heads a plan may freeze (the first, middle and last cut points)."""
    from tinyfed.models.zoo import get_zoo_model

    model = get_zoo_model(name).int8_tflite()
    check_paths(engine_lib, engine_lib_dsp, model, INPUTS, 1, name)
    graph = TfliteGraph.from_bytes(model)
    cuts = sorted(graph.cut_points())
    for k in sorted({cuts[0], cuts[len(cuts) // 2], cuts[-1]}):
        head, _ = graph.split(k)
        check_paths(engine_lib, engine_lib_dsp, head, max(INPUTS // 8, 8), 2 + k, f"{name} head of {k} ops")


@pytest.mark.parametrize("per_channel", [True, False])
def test_engine_kernel_zoo(engine_lib, engine_lib_dsp, per_channel: bool) -> None:
    from engine_models import kernel_zoo_int8

    check_paths(engine_lib, engine_lib_dsp, kernel_zoo_int8(per_channel), INPUTS, 3, f"kernel zoo {per_channel}")


@functools.cache
def field_tflite(name: str) -> bytes:
    """The look-alike converted with its freshly initialised weights (the kernels' arithmetic does not
    depend on training; the QEMU test below uses the pretrained ones)."""
    from field_models import SPECS, _keras

    from tinyfed.models.convert import convert_keras_to_int8

    keras = _keras()
    keras.utils.set_random_seed(13)
    spec = SPECS[name]
    data = spec.data()
    tflite = convert_keras_to_int8(spec.build(), data.x[:64])
    try:
        compile_blob(tflite)
    except ModelError:
        # an untrained head's logits can be too flat for TFLM's int8 SOFTMAX (mobilenet_vww's): the
        # graph up to the softmax then (the kernels under test are all before it)
        graph = TfliteGraph.from_bytes(tflite)
        tflite, _ = graph.split(max(graph.cut_points()))
    return tflite


def _field_params() -> list:
    from field_models import FIELD_MODELS

    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CONVERT else n for n in FIELD_MODELS]


@pytest.mark.parametrize("name", _field_params())
def test_field_look_alike(engine_lib, engine_lib_dsp, name: str) -> None:
    check_paths(engine_lib, engine_lib_dsp, field_tflite(name), INPUTS, 4, name)


# --------------------------------------------------------------------------------------
# 2. Random op shapes, written directly
# --------------------------------------------------------------------------------------


def _per_channel(g: GraphBuilder, idx: int, scales: np.ndarray, dim: int = 0) -> None:
    """Give tensor ``idx`` per-channel quantization along ``dim`` (zero points 0)."""
    q = g.tensors[idx].quantization
    q.scale = [float(s) for s in scales]
    q.zeroPoint = [0] * len(scales)
    q.quantizedDimension = dim


def _out_size(size: int, k: int, stride: int, dil: int, same: bool) -> int:
    eff = (k - 1) * dil + 1
    return -(-size // stride) if same else (size - eff) // stride + 1


_ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU6": 3}


def conv_model(rng: np.random.Generator, ih: int, iw: int, ic: int, oc: int, fh: int, fw: int, stride: tuple,
               dil: tuple, same: bool, bias: bool = True, act: str = "NONE", spread: float = 1.0) -> bytes:
    """One int8 CONV_2D with per-channel weights, random scales and zero points; ``spread`` scales the
    output scale (tiny: multipliers above 1, a left shift; huge: right shifts beyond 23)."""
    oh = _out_size(ih, fh, stride[0], dil[0], same)
    ow = _out_size(iw, fw, stride[1], dil[1], same)
    s_in = float(0.02 * np.exp(rng.uniform(-1, 1)))
    s_w = 0.01 * np.exp(rng.uniform(-1, 1, size=oc))
    k = fh * fw * ic
    s_out = float(np.sqrt(k) * 73 * 74 * s_in * np.median(s_w) / 40) * spread  # sums over ~40 steps
    g = GraphBuilder()
    x = g.act((1, ih, iw, ic), s_in, int(rng.integers(-128, 128)))
    w = g.const(rng.integers(-127, 128, size=(oc, fh, fw, ic)), "INT8", 1.0, 0)
    _per_channel(g, w, s_w)
    ins = [x, w]
    if bias:
        b = g.const(rng.integers(-30000, 30000, size=oc), "INT32", 1.0, 0)
        _per_channel(g, b, s_in * s_w)
        ins.append(b)
    y = g.act((1, oh, ow, oc), s_out, int(rng.integers(-100, 100)))
    g.op("CONV_2D", ins, [y], options("Conv2DOptions", padding=0 if same else 1, strideH=stride[0], strideW=stride[1],
                                      dilationHFactor=dil[0], dilationWFactor=dil[1],
                                      fusedActivationFunction=_ACTIVATIONS[act]))
    return g.build([x], [y])


def fc_model(rng: np.random.Generator, depth: int, n_out: int, rows: int = 1, w_zp: int = 0,
             per_channel: bool = True, bias: bool = True, act: str = "NONE") -> bytes:
    """One int8 FULLY_CONNECTED on ``rows`` input rows; a nonzero ``w_zp`` needs per-tensor weights."""
    s_in = float(0.02 * np.exp(rng.uniform(-1, 1)))
    s_w = 0.01 * np.exp(rng.uniform(-1, 1, size=n_out if per_channel else 1))
    s_out = float(np.sqrt(depth) * 73 * 74 * s_in * np.median(s_w) / 40)
    g = GraphBuilder()
    shape_in = (1, rows, depth) if rows > 1 else (1, depth)
    x = g.act(shape_in, s_in, int(rng.integers(-128, 128)))
    w = g.const(rng.integers(-127, 128, size=(n_out, depth)), "INT8", float(s_w[0]), w_zp)
    if per_channel:
        _per_channel(g, w, s_w)
    ins = [x, w]
    if bias:
        b = g.const(rng.integers(-30000, 30000, size=n_out), "INT32", float(s_in * s_w[0]), 0)
        if per_channel:
            _per_channel(g, b, s_in * s_w)
        ins.append(b)
    y = g.act((rows, n_out) if rows > 1 else (1, n_out), s_out, int(rng.integers(-100, 100)))
    g.op("FULLY_CONNECTED", ins, [y], options("FullyConnectedOptions", fusedActivationFunction=_ACTIVATIONS[act]))
    return g.build([x], [y])


#: (ih, iw, ic, oc, fh, fw, stride, dilation, same) — the field's layer kinds and the awkward cases
CONV_SHAPES = [
    (8, 8, 16, 16, 3, 3, (1, 1), (1, 1), True),     # ResNet block, pixels even
    (7, 5, 8, 9, 3, 3, (2, 2), (1, 1), True),       # odd pixel count, odd channels, stride 2
    (9, 6, 3, 8, 3, 3, (2, 2), (1, 1), True),       # RGB first layer (K = 27: K % 4 = 3)
    (13, 10, 1, 12, 10, 4, (2, 2), (1, 1), True),   # DS-CNN's first layer (ic = 1)
    (5, 5, 64, 33, 1, 1, (1, 1), (1, 1), False),    # pointwise, odd channels
    (4, 6, 67, 6, 1, 1, (1, 1), (1, 1), True),      # ic = 67: K % 4 = 3, value by value
    (6, 7, 5, 7, 3, 3, (1, 1), (2, 2), True),       # dilation, ic = 5
    (9, 9, 4, 4, 3, 2, (1, 2), (2, 1), False),      # VALID, mixed stride / dilation
    (3, 3, 2, 3, 5, 5, (1, 1), (1, 1), True),       # filter larger than the input (mostly padding)
    (1, 1, 12, 5, 1, 1, (1, 1), (1, 1), True),      # a single pixel
    (6, 1, 6, 16, 5, 1, (1, 1), (1, 1), True),      # har_cnn-like (k, 1) taps, ic = 6
    (5, 4, 40, 8, 3, 3, (1, 1), (1, 1), True),      # K = 360, ic % 4 == 0: the word-wise im2col
    (4, 4, 20, 3, 3, 3, (1, 1), (1, 1), False),     # K = 180, 3 channels
    (5, 5, 30, 2, 2, 3, (1, 1), (1, 1), True),      # ic = 30, K = 180 with ic % 4 != 0
    (9, 7, 16, 10, 1, 1, (2, 2), (1, 1), True),     # strided 1x1 (a ResNet projection), odd pixels
    (3, 7, 3, 6, 3, 3, (1, 1), (1, 1), True),       # K = 27 with 6 channels: the last pair's copy
]


def _shape_id(s: tuple) -> str:
    return "x".join(map(str, s[:6])) + f"-s{s[6][0]}{s[6][1]}-d{s[7][0]}{s[7][1]}-{'same' if s[8] else 'valid'}"


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=_shape_id)
def test_conv_2d_shapes(engine_lib, engine_lib_dsp, shape: tuple) -> None:
    rng = np.random.default_rng(CONV_SHAPES.index(shape))
    check_paths(engine_lib, engine_lib_dsp, conv_model(rng, *shape), OP_INPUTS, 5, f"conv {shape}")


def test_conv_2d_random_shapes(engine_lib, engine_lib_dsp) -> None:
    """Random shapes, with and without bias, under each activation."""
    rng = np.random.default_rng(11)
    for i in range(12):
        fh, fw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        same = bool(rng.integers(0, 2))
        ih = int(rng.integers(max(1, (fh - 1) * dil[0] + 1), 10))
        iw = int(rng.integers(max(1, (fw - 1) * dil[1] + 1), 10))
        shape = (ih, iw, int(rng.integers(1, 68)), int(rng.integers(1, 20)), fh, fw,
                 (int(rng.integers(1, 3)), int(rng.integers(1, 3))), dil, same)
        model = conv_model(rng, *shape, bias=bool(i % 3), act=list(_ACTIVATIONS)[i % 3])
        check_paths(engine_lib, engine_lib_dsp, model, 24, i, f"conv {shape}")


@pytest.mark.parametrize("spread", [2.0**-14, 2.0**-3, 2.0**14, 2.0**17, 2.0**22])
def test_conv_2d_requantization_shifts(engine_lib, engine_lib_dsp, spread: float) -> None:
    """Output scales far from the sums' spread: left shifts, and right shifts around the fast route's
    limit of 23 (outputs mostly at a clamp or at the zero point)."""
    rng = np.random.default_rng(int(np.log2(spread)) + 50)
    model = conv_model(rng, 6, 6, 8, 6, 3, 3, (1, 1), (1, 1), True, spread=spread)
    check_paths(engine_lib, engine_lib_dsp, model, OP_INPUTS, 8, f"conv spread {spread}")


@pytest.mark.parametrize(("depth", "n_out", "rows"), [(64, 16, 1), (37, 5, 1), (1, 3, 1), (256, 33, 1),
                                                     (10, 4, 3), (67, 7, 2), (3, 1, 1)])
def test_fully_connected_shapes(engine_lib, engine_lib_dsp, depth: int, n_out: int, rows: int) -> None:
    rng = np.random.default_rng(depth * 1000 + n_out * 10 + rows)
    for per_channel, bias, act in ((True, True, "NONE"), (False, False, "RELU")):
        model = fc_model(rng, depth, n_out, rows, per_channel=per_channel, bias=bias, act=act)
        check_paths(engine_lib, engine_lib_dsp, model, OP_INPUTS, 6, f"fc {depth}x{n_out}x{rows} {per_channel}")


def test_fully_connected_with_a_weights_offset_runs_the_reference(engine_lib, engine_lib_dsp) -> None:
    """A nonzero weights zero point (per-tensor weights): the entry falls back to the reference kernel."""
    rng = np.random.default_rng(12)
    model = fc_model(rng, 24, 6, 2, w_zp=5, per_channel=False)
    check_paths(engine_lib, engine_lib_dsp, model, OP_INPUTS, 7, "fc with a weights offset")


# --------------------------------------------------------------------------------------
# 3. The firmware on QEMU (the DSP build with its inline assembly)
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def an386_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The firmware for mps2-an386 (Cortex-M4F: the DSP kernels with their assembly)."""
    import shutil

    from _run_shared import run_firmware

    if not shutil.which("arm-none-eabi-gcc") or not shutil.which("qemu-system-arm"):
        pytest.fail("the QEMU tests need arm-none-eabi-gcc and qemu-system-arm")
    return run_firmware(tmp_path_factory, "mps2-an386").elf


def _qemu_mismatches(client, model: bytes, n: int, seed: int) -> int:
    x = inputs_for(model, n, seed)
    want = np.asarray(TflmModel(model).run(x))
    client.load_fragment(compile_blob(model))
    got = np.stack([client.infer(x[i : i + 1]) for i in range(len(x))])
    return mismatched(got, want)


def _op_cases() -> list[tuple[str, bytes]]:
    """Section 2's op models, for the firmware."""
    cases = [(f"conv {_shape_id(sh)}", conv_model(np.random.default_rng(i), *sh)) for i, sh in enumerate(CONV_SHAPES)]
    rng = np.random.default_rng(21)
    for i in range(12):
        fh, fw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        shape = (int(rng.integers((fh - 1) * dil[0] + 1, 10)), int(rng.integers((fw - 1) * dil[1] + 1, 10)),
                 int(rng.integers(1, 68)), int(rng.integers(1, 20)), fh, fw,
                 (int(rng.integers(1, 3)), int(rng.integers(1, 3))), dil, bool(rng.integers(0, 2)))
        cases.append((f"conv random {i}", conv_model(rng, *shape, bias=bool(i % 3), act=list(_ACTIVATIONS)[i % 3])))
    for spread in (2.0**-14, 2.0**14, 2.0**22):
        cases.append((f"conv spread {spread}", conv_model(rng, 6, 6, 8, 6, 3, 3, (1, 1), (1, 1), True, spread=spread)))
    for depth, n_out, rows in ((64, 16, 1), (37, 5, 1), (256, 33, 1), (10, 4, 3), (67, 7, 2)):
        cases.append((f"fc {depth}x{n_out}x{rows}", fc_model(rng, depth, n_out, rows, act="RELU")))
    cases.append(("fc weights offset", fc_model(rng, 24, 6, 2, w_zp=5, per_channel=False)))
    return cases


@pytest.mark.slow
def test_op_shapes_on_qemu_mps2_an386(an386_elf: Path) -> None:
    """Section 2's shapes on the Cortex-M4F firmware: the assembly's odd channels, K tails, shifts."""
    from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
    from tinyfed.firmware_bridge.link.client import BoardClient

    cases = _op_cases()
    with launch_qemu("mps2-an386", an386_elf) as emu, BoardClient(emu.url, name=emu.url, timeout=60.0) as client:
        bad = {what: _qemu_mismatches(client, model, 16, 10) for what, model in cases}
    assert bad == {what: 0 for what, _ in cases}
