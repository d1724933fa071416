"""The DSP-extension window kernels (depthwise conv, max/average pooling, add) against the plain-C
reference kernels and TFLM, bit for bit.

Random single-op int8 models (hand-built with ``_op_models.GraphBuilder``, so every case is exactly
the op under test: any shape, stride, padding, dilation, depth multiplier, channel count 1..67,
fused activation, zero point and per-channel scale) run on the host build of the DSP kernels
(portable intrinsics, ``engine_lib_dsp``), the plain-C build (``engine_lib``) and TFLite Micro. The
slow test runs a few of them on QEMU ``mps2-an386`` (the real Cortex-M4 instructions).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_engine
from _op_models import GraphBuilder, options
from ai_edge_litert import schema_py_generated as fb
from test_engine import c_open, c_run

from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.models.tflm import TflmModel

engine_lib = test_engine.engine_lib  # session fixtures: the plain-C and the DSP host builds
engine_lib_dsp = test_engine.engine_lib_dsp

N = 12  # random inputs per case
ACTS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")


def _act(name: str) -> int:
    return int(getattr(fb.ActivationFunctionType, name))


def _out_size(size: int, k: int, stride: int, dil: int, same: bool) -> int:
    eff = (k - 1) * dil + 1
    return -(-size // stride) if same else (size - eff) // stride + 1


def _scale(rng: np.random.Generator, around: float = 0.05) -> float:
    return float(around * np.exp(rng.uniform(-2, 2)))


@dataclass
class Case:
    """A random single-op model and what it is, for failure messages."""

    model: bytes
    what: str
    tflm: bool = True  # False: TFLM's Python interpreter crashes on it (a depthwise conv without bias)


def depthwise_case(rng: np.random.Generator, *, fh: int = 3, fw: int = 3, stride: tuple[int, int] = (1, 1),
                   dil: tuple[int, int] = (1, 1), same: bool = True, dm: int = 1, ch: int = 8,
                   hw: tuple[int, int] = (7, 6), act: str = "NONE", big_scale: bool = False,
                   bias: bool = True) -> Case:
    """DEPTHWISE_CONV_2D with per-channel weight scales; ``big_scale`` makes some channels' effective
    multiplier exceed 1 (a left shift in the requantization)."""
    g = GraphBuilder()
    ih, iw = hw
    oc = ch * dm
    oh = _out_size(ih, fh, stride[0], dil[0], same)
    ow = _out_size(iw, fw, stride[1], dil[1], same)
    s_in, zp_in = _scale(rng), int(rng.integers(-128, 128))
    s_out, zp_out = _scale(rng, 0.1), int(rng.integers(-128, 128))
    w = rng.integers(-127, 128, size=(1, fh, fw, oc)).astype(np.int8)
    w_scales = np.array([_scale(rng, 0.01) for _ in range(oc)])
    if big_scale:
        w_scales[:: 2] *= 60 * s_out / (s_in * 0.01)
    x = g.act((1, ih, iw, ch), s_in, zp_in)
    wt = g.const(w, "INT8")
    q = fb.QuantizationParametersT()
    q.scale = [float(s) for s in w_scales]
    q.zeroPoint = [0] * oc
    q.quantizedDimension = 3
    g.tensors[wt].quantization = q
    inputs = [x, wt]
    if bias:
        b = g.const(rng.integers(-3000, 3000, size=oc).astype(np.int32), "INT32")
        qb = fb.QuantizationParametersT()
        qb.scale = [float(s_in * s) for s in w_scales]
        qb.zeroPoint = [0] * oc
        qb.quantizedDimension = 0
        g.tensors[b].quantization = qb
        inputs.append(b)
    else:
        inputs.append(-1)
    y = g.act((1, oh, ow, oc), s_out, zp_out)
    opts = options("DepthwiseConv2DOptions", padding=0 if same else 1, strideH=stride[0], strideW=stride[1],
                   depthMultiplier=dm, fusedActivationFunction=_act(act), dilationHFactor=dil[0],
                   dilationWFactor=dil[1])
    g.op("DEPTHWISE_CONV_2D", inputs, [y], opts)
    what = (f"dw {fh}x{fw} s{stride} d{dil} {'SAME' if same else 'VALID'} dm{dm} ch{ch} in{hw} {act}"
            f"{' big' if big_scale else ''}{'' if bias else ' nobias'}")
    return Case(g.build([x], [y]), what, tflm=bias)


def pool_case(rng: np.random.Generator, kind: str, *, fh: int = 2, fw: int = 2, stride: tuple[int, int] = (2, 2),
              same: bool = False, ch: int = 8, hw: tuple[int, int] = (6, 6), act: str = "NONE") -> Case:
    """MAX_POOL_2D / AVERAGE_POOL_2D (input and output share their quantization, as TFLite requires)."""
    g = GraphBuilder()
    ih, iw = hw
    oh = _out_size(ih, fh, stride[0], 1, same)
    ow = _out_size(iw, fw, stride[1], 1, same)
    s, zp = _scale(rng), int(rng.integers(-128, 128))
    x = g.act((1, ih, iw, ch), s, zp)
    y = g.act((1, oh, ow, ch), s, zp)
    opts = options("Pool2DOptions", padding=0 if same else 1, strideH=stride[0], strideW=stride[1],
                   filterHeight=fh, filterWidth=fw, fusedActivationFunction=_act(act))
    g.op(kind, [x], [y], opts)
    return Case(g.build([x], [y]), f"{kind} {fh}x{fw} s{stride} {'SAME' if same else 'VALID'} ch{ch} in{hw} {act}")


def add_case(rng: np.random.Generator, shape: tuple[int, ...], act: str = "NONE", ratio: float | None = None) -> Case:
    """ADD of two independent, differently quantized activations: the two halves of the input's last
    axis (STRIDED_SLICE), the second requantized (QUANTIZE) to its own scale and zero point
    (``ratio`` times the first's: a tiny one gives an input shift beyond 23, the general path)."""
    g = GraphBuilder()
    s_x, zp_x = _scale(rng), int(rng.integers(-128, 128))
    wide = (*shape[:-1], 2 * shape[-1])
    x = g.act(wide, s_x, zp_x)
    a = g.act(shape, s_x, zp_x)
    b0 = g.act(shape, s_x, zp_x)
    b = g.act(shape, _scale(rng) if ratio is None else s_x * ratio, int(rng.integers(-128, 128)))
    y = g.act(shape, _scale(rng, 0.08), int(rng.integers(-128, 128)))
    zeros, ones = [0] * len(shape), [1] * len(shape)
    half = [*shape[:-1], shape[-1]]
    g.op("STRIDED_SLICE", [x, g.const(zeros), g.const(half), g.const(ones)], [a], options("StridedSliceOptions"))
    g.op("STRIDED_SLICE", [x, g.const([*zeros[:-1], shape[-1]]), g.const(list(wide)), g.const(ones)], [b0],
         options("StridedSliceOptions"))
    g.op("QUANTIZE", [b0], [b])
    g.op("ADD", [a, b], [y], options("AddOptions", fusedActivationFunction=_act(act)))
    return Case(g.build([x], [y]), f"ADD {shape} {act}")


def _inputs(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> np.ndarray:
    x = rng.integers(-128, 128, size=(n, *shape[1:])).astype(np.int8)
    x[0] = -128
    x[1] = 127
    return x


def check(case: Case, libs: list, rng: np.random.Generator, n: int = N) -> None:
    """The DSP and plain-C builds equal TFLM on ``n`` random inputs (extremes included); the
    plain-C build (itself checked against TFLM everywhere else) stands in where TFLM cannot run."""
    blob = compile_blob(case.model)
    graph = TfliteGraph.from_bytes(case.model)
    shape = tuple(graph.tensors[graph.inputs[0]].shape)
    x = _inputs(rng, shape, n)
    if case.tflm:
        want = np.asarray(TflmModel(case.model).run(x))
    else:
        want = c_run(libs[-1], blob, x)
    for lib in libs:
        status, _, msg, _ = c_open(lib, blob)
        assert status == 0, f"{case.what}: refused: {msg}"
        got = c_run(lib, blob, x).reshape(want.shape)
        bad = np.count_nonzero(got != want)
        assert bad == 0, f"{case.what}: {bad} of {want.size} values differ from TFLM"


def depthwise_cases(seed: int = 1) -> list[Case]:
    """Fixed edge cases, then random ones."""
    rng = np.random.default_rng(seed)
    cases = [
        depthwise_case(rng, ch=64, hw=(25, 5)),  # DS-CNN's
        depthwise_case(rng, ch=8, hw=(12, 12), stride=(2, 2)),  # MobileNet's strided
        depthwise_case(rng, ch=64, hw=(3, 3), act="RELU6"),  # MobileNet's last: borders everywhere
        depthwise_case(rng, ch=16, hw=(2, 2), stride=(2, 2)),
        depthwise_case(rng, ch=4, hw=(1, 1)),
        depthwise_case(rng, ch=5, hw=(5, 5), dm=3, dil=(2, 2)),
        depthwise_case(rng, ch=12, hw=(9, 9), fh=5, fw=5, big_scale=True),
        depthwise_case(rng, ch=8, hw=(9, 10), fh=1, fw=9, same=False),
        depthwise_case(rng, ch=8, hw=(10, 10), fh=9, fw=9, same=True),  # 81 taps: the scalar path
        depthwise_case(rng, ch=67, hw=(6, 5), bias=False, act="RELU"),
        depthwise_case(rng, ch=4, hw=(8, 8), dil=(3, 2), stride=(2, 3), same=False),
        depthwise_case(rng, ch=12, hw=(9, 8), fh=7, fw=7, act="RELU6"),  # 49 taps: the packed path's largest
        depthwise_case(rng, ch=6, hw=(5, 5), dm=2, bias=False),
    ]
    for _ in range(28):
        fh, fw = (int(v) for v in rng.integers(1, 6, size=2))
        dil = tuple(int(v) for v in rng.integers(1, 3, size=2))
        same = bool(rng.integers(0, 2))
        sizes = rng.integers(1, 11, size=2)
        hw = tuple(int(max(v, (k - 1) * d + 1)) for v, k, d in zip(sizes, (fh, fw), dil, strict=True))
        cases.append(depthwise_case(
            rng, fh=fh, fw=fw, stride=tuple(int(v) for v in rng.integers(1, 4, size=2)), dil=dil, same=same,
            dm=int(rng.choice([1, 1, 1, 2, 4])), ch=int(rng.integers(1, 68)), hw=hw,
            act=str(rng.choice(ACTS)), big_scale=bool(rng.integers(0, 4) == 0), bias=bool(rng.integers(0, 5))))
    return cases


def test_depthwise_dsp_bit_exact(engine_lib, engine_lib_dsp) -> None:
    rng = np.random.default_rng(21)
    for case in depthwise_cases():
        check(case, [engine_lib_dsp, engine_lib], rng)


def pool_cases(seed: int = 2) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        cases += [
            pool_case(rng, kind, ch=16, hw=(32, 32)),
            pool_case(rng, kind, fh=8, fw=8, stride=(8, 8), ch=64, hw=(8, 8)),  # global
            pool_case(rng, kind, fh=25, fw=5, stride=(1, 1), ch=64, hw=(25, 5)),  # DS-CNN's
            pool_case(rng, kind, fh=3, fw=3, stride=(2, 2), same=True, ch=7, hw=(7, 7), act="RELU"),
            pool_case(rng, kind, fh=17, fw=17, stride=(1, 1), ch=5, hw=(17, 17)),  # 289 taps: wide sums
        ]
        for _ in range(14):
            fh, fw = (int(v) for v in rng.integers(1, 6, size=2))
            same = bool(rng.integers(0, 2))
            hw = tuple(int(max(v, k)) for v, k in zip(rng.integers(1, 12, size=2), (fh, fw), strict=True))
            cases.append(pool_case(rng, kind, fh=fh, fw=fw, stride=tuple(int(v) for v in rng.integers(1, 4, size=2)),
                                   same=same, ch=int(rng.integers(1, 68)), hw=hw, act=str(rng.choice(ACTS))))
    return cases


def test_pool_dsp_bit_exact(engine_lib, engine_lib_dsp) -> None:
    rng = np.random.default_rng(22)
    for case in pool_cases():
        check(case, [engine_lib_dsp, engine_lib], rng)


def add_cases(seed: int = 3) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = [add_case(rng, (1, 16, 16, 16)), add_case(rng, (1, 1, 1, 1)), add_case(rng, (1, 3, 5, 7), "RELU"),
             add_case(rng, (1, 4, 4, 8), ratio=1.0), add_case(rng, (1, 4, 4, 9), ratio=1e-9)]
    for _ in range(12):
        rank = int(rng.integers(2, 5))
        shape = (1, *(int(v) for v in rng.integers(1, 9, size=rank - 1)))
        cases.append(add_case(rng, shape, str(rng.choice(ACTS))))
    return cases


def test_add_dsp_bit_exact(engine_lib, engine_lib_dsp) -> None:
    rng = np.random.default_rng(23)
    for case in add_cases():
        check(case, [engine_lib_dsp, engine_lib], rng, n=24)


# --------------------------------------------------------------------------------------
# On QEMU mps2-an386 (Cortex-M4F): the real DSP instructions, and the instruction count
# --------------------------------------------------------------------------------------


def _board_clock(client) -> int:
    """The clock the firmware's cycle counter runs at (its BENCH answer, as bench/speed.py reads it)."""
    import struct

    from tinyfed.firmware_bridge.link.framing import Command

    answer = client.request(Command.BENCH, struct.pack("<H", 1))
    return int(struct.unpack_from("<IIIII", answer)[4])


@pytest.mark.slow
def test_window_kernels_on_qemu_m4() -> None:
    """A few cases of each op on the Cortex-M4F firmware equal TFLM, and the DS-CNN depthwise layer
    takes at most 8 instructions per MAC under ``-icount`` (the plain-C kernel takes about 22)."""
    import shutil

    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("needs qemu-system-arm and gcc-arm-none-eabi (make setup installs both)")
    from tinyfed.firmware_bridge.emulate.build import build_firmware
    from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
    from tinyfed.firmware_bridge.link.client import BoardClient

    rng = np.random.default_rng(31)
    dscnn = depthwise_case(rng, ch=64, hw=(25, 5), act="RELU")
    cases = [dscnn, *depthwise_cases(seed=4)[1:9], *pool_cases(seed=5)[:5], *pool_cases(seed=5)[19:24],
             *add_cases(seed=6)[:5]]
    elf = build_firmware("mps2-an386").elf
    with launch_qemu("mps2-an386", elf, extra_args=("-icount", "shift=4")) as emu, \
            BoardClient(emu.url, name="m4", timeout=120.0) as client:
        clock = _board_clock(client)
        for case in cases:
            graph = TfliteGraph.from_bytes(case.model)
            shape = tuple(graph.tensors[graph.inputs[0]].shape)
            x = _inputs(rng, shape, 4)
            client.load_fragment(compile_blob(case.model))
            got = np.stack([client.infer(x[i : i + 1]) for i in range(len(x))])
            if case is dscnn:
                insn = client.last_cycles * 1e9 / clock / 16  # -icount shift=4: 16 ns per instruction
                per_mac = insn / (25 * 5 * 64 * 9)
                assert per_mac <= 8.0, f"DS-CNN depthwise layer: {per_mac:.2f} instructions per MAC"
            if case.tflm:
                want = np.asarray(TflmModel(case.model).run(x))
                bad = np.count_nonzero(got.reshape(want.shape) != want)
                assert bad == 0, f"{case.what}: {bad} of {want.size} values differ from TFLM on the M4"
        stats = client.ram_stats()  # the kernels keep their taps and tables on the stack
        assert stats.stack_peak < stats.stack_bytes, f"stack peak {stats.stack_peak} of {stats.stack_bytes} bytes"
        print(f"stack peak {stats.stack_peak} of {stats.stack_bytes} bytes")
