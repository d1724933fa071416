"""Requantization exactly as TFLM computes it, over thousands of random scale combinations per op.

Each :class:`Case` names an op, a converted base model that contains it and which of the op's
tensors get random scales and zero points. The op (with the few ops before it that give it a
single input) is cut out of the base model once; every trial rewrites the chosen tensors'
quantization in the flatbuffer (seeded), then TFLM (the ``tflite-micro`` reference kernels), the
numpy twin and, every few trials, the host-compiled C engine run the same random int8 inputs:
0 mismatches allowed. Where TFLM refuses a combination (say ADD's output rescale >= 1), tinyfed
must refuse it too, and the other way round. Random inputs rarely land where a multiplier a few
units off changes an output, so ops with a bias also run a probe per trial: every input at its
zero point and biases chosen where the rounding turns (:func:`_fragile_biases`); with the
float32-product bug of issue 13 put back, the probes fail on the first trial.

The first 256 input values of every trial are every int8 value, exhaustive for the one-input
ops. The ops that rescale their (centred) input by one ratio (QUANTIZE, RELU, LEAKY_RELU, MUL by
a constant, MEAN) run a probe of their own (``fragile``): every other trial takes an output scale
that puts one rescaled value next to where TFLM's rounding turns (:func:`_fragile_output_scale`);
with any of their multipliers from a float32 ratio of the scales, the fast share fails.

Adding an op is one line in ``CASES``, e.g.::

    Case("SQUARED_DIFFERENCE", _its_model, ("input", "input2", "output"), trials=40, slow_trials=1000),

with a base-model builder (any function returning converted ``.tflite`` bytes that hold the op;
cache it with ``functools.cache``). Roles: ``input``, ``input2``, ... (the op's activation inputs in
order), ``weights`` (a weighted op's constant int8 input 1; its bias follows as input * weight
scale, the converter's rule), ``constant`` (another op's int8 constant operand: MUL's, PADV2's fill),
``output``; ``same`` ties a tensor's quantization to another's where TFLM requires them equal
(pooling, PADV2's fill, CONCATENATION); ``zero_points`` keeps one fixed (LOGISTIC's output at -128);
``per_tensor`` collapses the weights' scales to one. A case of combinations TFLM refuses
(``min_ran=0``) passes when tinyfed refuses each too. ``slow_trials`` more run in the slow suite:
the fast share stays small, each newer op gets over 1,000 combinations in all.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_engine import c_run, engine_lib  # noqa: F401 (the session's host-compiled C engine)

from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.twin.kernels_np import run_blob
from tinyfed.models.tflite_graph import TfliteGraph, _pack
from tinyfed.models.tflm import TflmModel
from tinyfed.ops.fixed_point import conv_multiplier

FIXTURES = Path(__file__).with_name("fixtures") / "converters"
BATCH = 16
C_EVERY = 10  # every tenth trial also runs on the C engine


@functools.cache
def _classifier() -> bytes:
    """conv (per-channel), depthwise, max/avg pool, FC, softmax (TF 2.21 converter, committed)."""
    return (FIXTURES / "tf2.21.0_classifier_int8.tflite").read_bytes()


@functools.cache
def _classifier_old() -> bytes:
    """The same from the oldest converter (TF 2.12)."""
    return (FIXTURES / "tf2.12.0_classifier_int8.tflite").read_bytes()


@functools.cache
def _regressor() -> bytes:
    """Two FULLY_CONNECTED layers, the first with RELU."""
    return (FIXTURES / "tf2.21.0_regressor_int8.tflite").read_bytes()


@functools.cache
def _kernel_zoo() -> bytes:
    """ADD of two differently scaled branches, depth multiplier 2, softmax beta != 1 (tests/engine_models.py)."""
    from engine_models import kernel_zoo_int8

    return kernel_zoo_int8(per_channel=True)


def _named(name: str, build: Callable[[], bytes]) -> Callable[[], bytes]:
    """A session-cached base-model builder, named for the case ids."""
    cached = functools.cache(build)
    cached.__name__ = name
    return cached


def _mul(kind: str) -> Callable[[], bytes]:
    """MUL of two conv outputs (broadcast, fused RELU), of a tensor by itself, or by a constant."""
    from engine_models import mul_int8

    return _named(f"mul_{kind}", lambda: mul_int8(kind))


def _elementwise(kind: str) -> Callable[[], bytes]:
    """One converted elementwise op (tests/engine_models.py)."""
    from engine_models import elementwise_int8

    return _named(kind.lower(), lambda: elementwise_int8(kind))


@functools.cache
def _global_average_pool() -> bytes:
    """Keras GlobalAveragePooling2D after a conv: the converter's MEAN over axes 1, 2."""
    from engine_models import _convert, _tf

    keras = _tf().keras
    keras.utils.set_random_seed(3)
    inp = keras.Input(shape=(6, 7, 5), batch_size=1, name="x")
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, padding="same")(inp))
    return _convert(keras.Model(inp, out), (6, 7, 5))


def _one_op(name: str, shape: tuple[int, ...], out_shape: tuple[int, ...], consts: list, opts: Any = None,
            pad_value: int | None = None) -> bytes:
    """A hand-built graph of one op (tests/_op_models.py): int8 in and out at scale 0.05, zero point 3;
    ``consts`` its int32 operands; ``pad_value`` PADV2's int8 fill (quantized as the output)."""
    from _op_models import GraphBuilder

    g = GraphBuilder()
    x, y = g.act(shape, 0.05, 3), g.act(out_shape, 0.05, 3)
    operands = [g.const(c) for c in consts]
    if pad_value is not None:
        operands.append(g.const(np.array(pad_value), "INT8", 0.05, 3))
    g.op(name, [x, *operands], [y], opts)
    return g.build([x], [y])


@functools.cache
def _mean_keep() -> bytes:
    from _op_models import options

    return _one_op("MEAN", (1, 5, 7, 6), (1, 1, 1, 6), [[1, 2]], options("ReducerOptions", keepDims=True))


@functools.cache
def _mean_last_axis() -> bytes:
    from _op_models import options

    return _one_op("MEAN", (1, 4, 3, 9), (1, 4, 3), [[-1]], options("ReducerOptions", keepDims=False))


@functools.cache
def _requantize() -> bytes:
    """QUANTIZE int8 -> int8 (a converter inserts it where two scales meet)."""
    return _one_op("QUANTIZE", (1, 4, 5, 6), (1, 4, 5, 6), [])


_PADS = [[0, 0], [1, 2], [0, 1], [2, 0]]


@functools.cache
def _pad() -> bytes:
    return _one_op("PAD", (1, 5, 6, 3), (1, 8, 7, 5), [_PADS])


@functools.cache
def _padv2() -> bytes:
    return _one_op("PADV2", (1, 5, 6, 3), (1, 8, 7, 5), [_PADS], pad_value=-77)


def _concatenation(n: int, axis: int) -> Callable[[], bytes]:
    """x -> ``n`` QUANTIZE branches -> CONCATENATION along ``axis`` (as converted models requantize
    their inputs to the output's scale)."""

    def build() -> bytes:
        from _op_models import GraphBuilder, options

        g = GraphBuilder()
        shape = (1, 3, 4, 5)
        x = g.act(shape, 0.05, 3)
        branches = []
        for _ in range(n):
            branches.append(g.act(shape, 0.07, -5))
            g.op("QUANTIZE", [x], [branches[-1]])
        y = g.act(tuple(d * n if i == axis % 4 else d for i, d in enumerate(shape)), 0.07, -5)
        g.op("CONCATENATION", branches, [y], options("ConcatenationOptions", axis=axis))
        return g.build([x], [y])

    return _named(f"concatenation_{n}_axis{axis}", build)


@dataclass(frozen=True)
class Case:
    """One op under random quantization (see the module doc)."""

    op: str
    base: Callable[[], bytes]
    vary: tuple[str, ...]
    same: tuple[tuple[str, str], ...] = ()
    per_tensor: bool = False
    trials: int = 200
    occurrence: int = 0  # which of the base model's ops of that name
    zero_points: tuple[tuple[str, int], ...] = ()  # zero points kept fixed (TFLM's LOGISTIC output: -128)
    slow_trials: int = 0  # more trials in the slow suite (seeded apart from the fast ones)
    min_ran: float = 0.5  # the share of trials both must run (0: a case of combinations both refuse)
    tag: str = ""  # tells apart cases of one op and base model
    fragile: bool = False  # every other trial, an output scale that puts a value next to a rounding half

    @property
    def id(self) -> str:
        kind = "-per-tensor" if self.per_tensor else ""
        return f"{self.op}-{self.base.__name__.strip('_')}{kind}-{self.occurrence}{f'-{self.tag}' if self.tag else ''}"


CASES = [
    Case("CONV_2D", _classifier, ("input", "weights", "output")),
    Case("CONV_2D", _classifier, ("input", "weights", "output"), per_tensor=True),
    Case("CONV_2D", _classifier_old, ("input", "weights", "output")),
    Case("DEPTHWISE_CONV_2D", _classifier, ("input", "weights", "output")),
    Case("DEPTHWISE_CONV_2D", _classifier, ("input", "weights", "output"), per_tensor=True),
    Case("DEPTHWISE_CONV_2D", _kernel_zoo, ("input", "weights", "output"), trials=100),  # multiplier 2, dilation 2
    Case("FULLY_CONNECTED", _regressor, ("input", "weights", "output")),
    Case("FULLY_CONNECTED", _regressor, ("input", "weights", "output"), per_tensor=True),
    Case("FULLY_CONNECTED", _regressor, ("input", "weights", "output"), per_tensor=True, occurrence=1),
    Case("FULLY_CONNECTED", _classifier, ("input", "weights", "output"), per_tensor=True),
    Case("ADD", _kernel_zoo, ("input", "input2", "output")),
    Case("SOFTMAX", _classifier, ("input",)),
    Case("SOFTMAX", _kernel_zoo, ("input",)),  # beta 1.7
    Case("AVERAGE_POOL_2D", _kernel_zoo, ("input",), same=(("input", "output"),)),
    Case("MAX_POOL_2D", _classifier, ("input",), same=(("input", "output"),)),
    # the newer ops: a small share here, the bulk (>= 1,000 combinations per op) in the slow suite
    Case("MUL", _mul("broadcast"), ("input", "input2", "output"), trials=30, slow_trials=300),
    Case("MUL", _mul("fused_relu"), ("input", "input2", "output"), trials=30, slow_trials=300),
    Case("MUL", _mul("constant"), ("input", "constant", "output"), trials=20, slow_trials=200, fragile=True),
    Case("MUL", _mul("constant_scalar"), ("input", "constant", "output"), trials=10, slow_trials=100,
         fragile=True),
    Case("MUL", _mul("constant_first"), ("input", "constant", "output"), trials=10, slow_trials=100,
         fragile=True),
    Case("MUL", _mul("square"), ("input", "output"), trials=10, slow_trials=100),
    Case("LOGISTIC", _elementwise("LOGISTIC"), ("input",), trials=30, slow_trials=450),
    Case("LOGISTIC", _elementwise("LOGISTIC"), ("input", "output"), zero_points=(("output", -128),), trials=30,
         slow_trials=450, tag="any-output-scale"),  # TFLM checks only the zero point; its grid stays 1/256
    Case("LOGISTIC", _elementwise("LOGISTIC"), ("input", "output"), trials=10, slow_trials=100, min_ran=0,
         tag="output-zero-point"),  # TFLM requires -128: both refuse (1 in 256 runs)
    Case("TANH", _elementwise("TANH"), ("input", "output"), trials=40, slow_trials=1000),
    Case("RELU", _elementwise("RELU"), ("input", "output"), trials=40, slow_trials=1000, fragile=True),
    Case("RELU6", _elementwise("RELU6"), ("input", "output"), trials=40, slow_trials=1000),  # copies: no rescale
    Case("LEAKY_RELU", _elementwise("LEAKY_RELU"), ("input", "output"), trials=40, slow_trials=1000, fragile=True),
    Case("HARD_SWISH", _elementwise("HARD_SWISH"), ("input", "output"), trials=40, slow_trials=1000),
    Case("MEAN", _global_average_pool, ("input", "output"), trials=20, slow_trials=400),
    Case("MEAN", _mean_keep, ("input", "output"), trials=20, slow_trials=300, fragile=True),
    Case("MEAN", _mean_last_axis, ("input", "output"), trials=20, slow_trials=300, fragile=True),
    Case("QUANTIZE", _requantize, ("input", "output"), trials=40, slow_trials=1000, fragile=True),
    Case("PAD", _pad, ("input",), same=(("input", "output"),), trials=20, slow_trials=500),
    Case("PAD", _pad, ("input", "output"), trials=20, slow_trials=500, tag="requantized"),  # TFLM copies the values
    Case("PADV2", _padv2, ("input",), same=(("input", "output"), ("input", "constant")), trials=20, slow_trials=500),
    Case("PADV2", _padv2, ("input", "output"), same=(("output", "constant"),), trials=20, slow_trials=500,
         tag="requantized"),
    Case("PADV2", _padv2, ("input", "output", "constant"), trials=10, slow_trials=50, min_ran=0,
         tag="fill-unlike-output"),  # TFLM requires the fill quantized as the output: both refuse
    Case("CONCATENATION", _concatenation(2, -1), ("output",), same=(("output", "input"), ("output", "input2")),
         trials=20, slow_trials=500),
    Case("CONCATENATION", _concatenation(3, 1), ("output",),
         same=(("output", "input"), ("output", "input2"), ("output", "input3")), trials=20, slow_trials=500),
    Case("CONCATENATION", _concatenation(2, -1), ("input", "input2", "output"), trials=10, slow_trials=50, min_ran=0,
         tag="inputs-unlike-output"),  # TFLM does not rescale: both refuse
]


# --------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------


def _cut(base: bytes, name: str, occurrence: int) -> tuple[bytes, int]:
    """The op with just enough ops before it that the piece has one input; and the op's index in it."""
    g = TfliteGraph.from_bytes(base)
    k = [op.index for op in g.ops if op.name == name][occurrence]
    first = k
    while True:
        piece = TfliteGraph.from_bytes(g.extract(first, k + 1))
        if len(piece.inputs) == 1:
            return piece.data, k - first
        first -= 1


_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _tensors(graph: TfliteGraph, k: int) -> dict[str, int]:
    """The op's tensors by role: its activation inputs in order (``input``, ``input2``, ...), an int8
    constant operand (``weights`` of a weighted op, else ``constant``), a weighted op's ``bias``."""
    op = graph.ops[k]
    roles = {"output": op.outputs[0]}
    present = [t for t in op.inputs if t >= 0]
    activations = [t for t in present if not graph.tensors[t].is_constant]
    for i, t in enumerate(activations):
        roles["input" if i == 0 else f"input{i + 1}"] = t
    int8_constants = [t for t in present if graph.tensors[t].is_constant and graph.tensors[t].type_name == "INT8"
                      and graph.tensors[t].scales]  # not an int32 shape, axis or paddings operand
    if int8_constants:
        roles["weights" if op.name in _WEIGHTED else "constant"] = int8_constants[0]
    if op.name in _WEIGHTED and len(op.inputs) > 2 and op.inputs[2] >= 0:
        roles["bias"] = op.inputs[2]
    return roles


def _randomize(model, roles: dict[str, int], case: Case, rng: np.random.Generator) -> None:
    """New scales (the old times 2**U(-2, 2), float32) and zero points for the case's tensors, in place."""
    tensors = model.subgraphs[0].tensors
    for role in case.vary:
        q = tensors[roles[role]].quantization
        old = np.asarray(q.scale, dtype=np.float64)
        if role == "weights":
            if case.per_tensor:
                old = old[:1] if len(old) == 1 else np.array([old.max()])
            q.scale = (old * 2.0 ** rng.uniform(-2, 2, size=old.shape)).astype(np.float32)
            q.zeroPoint = np.zeros(len(q.scale), dtype=np.int64)
            q.quantizedDimension = q.quantizedDimension if len(q.scale) > 1 else 0
        else:  # an activation or a per-tensor constant operand (MUL's, PADV2's pad value)
            q.scale = np.array([old[0] * 2.0 ** rng.uniform(-2, 2)], dtype=np.float32)
            q.zeroPoint = np.array([rng.integers(-128, 128)], dtype=np.int64)
    for role, zp in case.zero_points:
        tensors[roles[role]].quantization.zeroPoint = np.array([zp], dtype=np.int64)
    for src, dst in case.same:
        a, b = tensors[roles[src]].quantization, tensors[roles[dst]].quantization
        b.scale, b.zeroPoint = np.array(a.scale, np.float32), np.array(a.zeroPoint, np.int64)
    if "bias" in roles:
        x_scale = np.float32(tensors[roles["input"]].quantization.scale[0])
        w_scales = np.asarray(tensors[roles["weights"]].quantization.scale, dtype=np.float32)
        bias = tensors[roles["bias"]].quantization
        n = len(np.asarray(bias.scale))
        if len(w_scales) in (1, n):
            bias.scale = np.broadcast_to(x_scale * w_scales, (n,)).astype(np.float32)
        bias.zeroPoint = np.zeros(n, dtype=np.int64)


def _nearest_to_half(m: int, shift: int, limit: int, count: int, sign: int) -> list[int]:
    """The ``count`` accumulators ``sign * (1..limit)`` whose ``acc * M`` lies closest to where TFLM's rounding turns.

    TFLM rounds ``acc * 2**left * M`` to 31 bits less (``SaturatingRoundingDoublingHighMul``),
    then by ``right`` more bits, halves away from zero (``RoundingDivideByPOT``): the output
    turns where the remainder modulo ``2**(31 + right)`` is half of it, less (positive) or more
    (negative) the first rounding's 2**30. Baby steps ``i * M`` (i < S) sorted, giant steps
    ``j * S * M``: for each j the best i by binary search (exact integer arithmetic).
    """
    right = max(-shift, 0)
    period = 1 << (31 + right)  # below 2**49 for the probe's rescales (>= 1e-5): int64 products stay exact
    turn = period // 2 - (sign << 30 if right else 0)
    mm = (m << max(shift, 0)) % period
    s = int(np.sqrt(limit)) + 1
    baby = np.arange(s, dtype=np.int64) * mm % period
    order = np.argsort(baby, kind="stable")
    keys = baby[order]
    j = np.arange(s, dtype=np.int64)
    targets = (turn - j * (s * mm % period)) % period
    at = np.searchsorted(keys, targets)
    cand_j = np.concatenate([j, j])
    cand_i = order[np.concatenate([(at - 1) % s, at % s])]
    gap = (baby[cand_i] - np.concatenate([targets, targets])) % period
    dist = np.minimum(gap, period - gap)
    acc = cand_i + cand_j * s
    ok = (acc > 0) & (acc <= limit)
    best = np.argsort(dist[ok], kind="stable")[:count]
    return [int(a) for a in acc[ok][best]]


def _fragile_biases(model, roles: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """Per output channel, an accumulator whose fixed-point product lies closest to a rounding half.

    With every input at its zero point the accumulator is the bias. These biases put each
    channel's ``acc * M`` (M the 31-bit multiplier) next to the point where TFLM's rounding
    turns, so a multiplier off by one unit (a float32 product of the scales is off by tens) or
    a rounding rule off by one changes the output. The probe has an output scale of its own that
    makes the rescale small (1e-5 to 1e-4: millions of accumulators keep the output in range).
    """
    tensors = model.subgraphs[0].tensors
    s_in = tensors[roles["input"]].quantization.scale[0]
    w_max = float(np.max(tensors[roles["weights"]].quantization.scale))
    tensors[roles["output"]].quantization.scale = np.array([s_in * w_max * 10 ** rng.uniform(4, 5)], np.float32)
    s_out = tensors[roles["output"]].quantization.scale[0]
    zp_out = int(tensors[roles["output"]].quantization.zeroPoint[0])
    n = int(np.prod(np.asarray(tensors[roles["bias"]].shape)))
    w_scales = np.broadcast_to(np.asarray(tensors[roles["weights"]].quantization.scale, np.float32), (n,))
    sign = 1 if zp_out <= 0 else -1  # toward the larger side of the int8 range (and past a RELU's floor)
    out: list[int] = []
    per_tensor = len(set(w_scales.tolist())) == 1
    for c in range(1 if per_tensor else n):
        m, shift = conv_multiplier(s_in, w_scales[c], s_out)
        real = float(s_in) * float(w_scales[c]) / float(s_out)
        limit = min(int(((126 - zp_out) if sign > 0 else (zp_out + 127)) / real), 1 << 26)
        out += [sign * a for a in _nearest_to_half(m, shift, limit, n if per_tensor else 1, sign)]
    return np.resize(np.asarray(out, dtype=np.int64), n)


def _fragile_output_scale(model, graph: TfliteGraph, op_index: int, roles: dict[str, int], x: np.ndarray,
                           rng: np.random.Generator) -> None:
    """An output scale putting one input's rescaled value next to where rounding turns, in place.

    For the ops that rescale ``v = x - zp_in`` (times a constant operand's centred value, for MUL;
    summed over the reduced axes, for MEAN) by ``s_in (* s_c) / s_out (/ count)``: pick a ``v > 0``
    the trial feeds and an output ``k`` in range. TFLM rounds ``v * M`` to 31 bits less, then by
    ``right`` more bits (halves away from zero), so the output turns from ``k`` to ``k + 1`` where
    the real rescaled value is ``k + 1/2 - 2**-(right + 1)`` (``right`` from the ratio's exponent
    and, for MEAN, the ``floor(log2(count))`` bits folded into the multiplier). Of the 33 float32
    neighbours of the ``s_out`` that hits that point, the closest (about 1e-9 relative): a
    multiplier from a float32 product of the scales (off by up to 6e-8) or a rounding rule off by
    one lands on the other side about half the time.
    """
    tensors = model.subgraphs[0].tensors
    q_in, q_out = tensors[roles["input"]].quantization, tensors[roles["output"]].quantization
    centred = x.astype(np.float64) - float(q_in.zeroPoint[0])
    factor = float(q_in.scale[0])
    if "constant" in roles:
        q_c = tensors[roles["constant"]].quantization
        c = np.asarray(graph.constant_data(roles["constant"]), np.float64) - float(q_c.zeroPoint[0])
        centred = centred * np.broadcast_to(c, centred.shape)
        factor *= float(q_c.scale[0])
    op = graph.ops[op_index]
    count = 1
    if op.name == "MEAN":  # axes of the tensor (batch first) are axes of x; v is the sum
        rank = len(graph.tensors[op.inputs[0]].shape)
        axes = tuple({int(a) % rank for a in np.asarray(graph.constant_data(op.inputs[1])).reshape(-1)})
        count = int(np.prod([centred.shape[a] for a in axes]))
        centred = centred.sum(axis=axes)
        factor /= count
    values = centred.reshape(-1)[:256]
    values = values[values > 0]
    room = 126 - int(q_out.zeroPoint[0])
    if not len(values) or room < 0:
        return
    v, k = float(rng.choice(values)), int(rng.integers(0, room + 1))
    right = max(count.bit_length() - 1 - math.frexp((k + 0.5) * count / v)[1], 0)
    turn = k + 0.5 - (0.5 ** (right + 1) if right else 0.0)
    near = np.float32(factor * v / turn)
    candidates = (near + np.arange(-16, 17) * np.spacing(near)).astype(np.float32)  # float32 neighbours
    miss = np.abs(v * factor / candidates.astype(np.float64) - turn)
    q_out.scale = np.array([candidates[np.argmin(miss)]], dtype=np.float32)


def _with_biases(model, roles: dict[str, int], biases: np.ndarray) -> bytes:
    bias = model.subgraphs[0].tensors[roles["bias"]]
    model.buffers[bias.buffer].data = np.frombuffer(biases.astype("<i4").tobytes(), dtype=np.uint8)
    return _pack(model)


def _tinyfed(model: bytes, x: np.ndarray) -> np.ndarray | str:
    try:
        return run_blob(compile_blob(model), x)
    except ModelError as e:
        return str(e)


def _tflm(model: bytes, x: np.ndarray) -> np.ndarray | str:
    try:
        return TflmModel(model).run(x)
    except ModelError as e:
        return str(e)


def _check_case(engine_lib, case: Case, trials: int, salt: str) -> None:  # noqa: F811, C901
    """``trials`` random quantizations of the case's op: TFLM and tinyfed agree on every output or both refuse."""
    piece, k = _cut(case.base(), case.op, case.occurrence)
    graph = TfliteGraph.from_bytes(piece)
    roles = _tensors(graph, k)
    assert set(case.vary) <= set(roles), f"{case.id}: the op has no {set(case.vary) - set(roles)}"
    assert not case.fragile or roles["input"] == graph.inputs[0], f"{case.id}: fragile needs the op first"
    rng = np.random.default_rng(zlib.crc32((case.id + salt).encode()))  # str hash() changes per process
    x_shape = graph.tensors[graph.inputs[0]].shape[1:]
    every_int8 = np.arange(-128, 128, dtype=np.int8)
    ran = refused = 0
    for trial in range(trials):
        model = graph.model_object
        _randomize(model, roles, case, rng)
        data = _pack(model)
        x = rng.integers(-128, 128, size=(BATCH, *x_shape)).astype(np.int8)
        if x.size >= every_int8.size:  # every int8 input value (exhaustive for the one-input ops)
            x.reshape(-1)[: every_int8.size] = every_int8
        if case.fragile and trial % 2:
            _fragile_output_scale(model, graph, k, roles, x, rng)
            data = _pack(model)
        want, got = _tflm(data, x), _tinyfed(data, x)
        if isinstance(want, str) or isinstance(got, str):
            assert isinstance(want, str) and isinstance(got, str), (
                f"{case.id} trial {trial}: TFLM {'refuses' if isinstance(want, str) else 'runs'} "
                f"({want if isinstance(want, str) else 'ok'}), tinyfed {got if isinstance(got, str) else 'runs'}")
            refused += 1
            continue
        diff = np.count_nonzero(got.reshape(want.shape) != want)
        assert diff == 0, f"{case.id} trial {trial}: the twin differs from TFLM on {diff} of {want.size} values"
        if "bias" in roles:  # every input at its zero point: the accumulators are the (fragile) biases
            probe = _with_biases(model, roles, _fragile_biases(model, roles, rng))
            zero = np.full((1, *x_shape), model.subgraphs[0].tensors[roles["input"]].quantization.zeroPoint[0], np.int8)
            p_want, p_got = _tflm(probe, zero), _tinyfed(probe, zero)
            assert not isinstance(p_want, str) and not isinstance(p_got, str), (p_want, p_got)
            diff = np.count_nonzero(p_got.reshape(p_want.shape) != p_want)
            assert diff == 0, f"{case.id} trial {trial}: on rounding-fragile accumulators the twin differs on {diff}"
        if trial % C_EVERY == 0:
            engine = c_run(engine_lib, compile_blob(data), x)
            diff = np.count_nonzero(engine.reshape(want.shape) != want)
            assert diff == 0, f"{case.id} trial {trial}: the C engine differs from TFLM on {diff} values"
        ran += 1
    assert ran >= trials * case.min_ran, f"{case.id}: only {ran} of {trials} trials ran ({refused} refused by both)"
    assert case.min_ran or refused, f"{case.id}: no combination refused, yet the case is one of refusals"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_random_quantization_matches_tflm(engine_lib, case: Case) -> None:  # noqa: F811
    _check_case(engine_lib, case, case.trials, "")


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.slow_trials], ids=lambda c: c.id)
def test_many_random_quantizations_match_tflm(engine_lib, case: Case) -> None:  # noqa: F811
    """The bulk of the newer ops' combinations (the fast suite runs a small share)."""
    _check_case(engine_lib, case, case.slow_trials, "slow")
