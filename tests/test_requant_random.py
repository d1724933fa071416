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

Adding an op (another branch's PAD, MEAN, MUL, LOGISTIC, ...) is one line in ``CASES``, e.g.::

    Case("MUL", _kernel_zoo, ("input", "input2", "output")),

with a base-model builder (any function returning converted ``.tflite`` bytes that hold the op;
cache it with ``functools.cache``). Roles: ``input`` and ``input2`` (the op's first and second
activation inputs), ``weights`` (a constant int8 input 1; a weighted op's bias follows as
input * weight scale, the converter's rule), ``output``; ``same`` ties a tensor's quantization to
another's where TFLM requires them equal (pooling); ``per_tensor`` collapses the weights' scales
to one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

    @property
    def id(self) -> str:
        return f"{self.op}-{self.base.__name__.strip('_')}{'-per-tensor' if self.per_tensor else ''}-{self.occurrence}"


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


def _tensors(graph: TfliteGraph, k: int) -> dict[str, int]:
    op = graph.ops[k]
    roles = {"input": op.inputs[0], "output": op.outputs[0]}
    if len(op.inputs) > 1 and op.inputs[1] >= 0:
        second = graph.tensors[op.inputs[1]]
        if not second.is_constant:
            roles["input2"] = op.inputs[1]
        elif second.type_name == "INT8" and second.scales:  # not an int32 shape, axis or paddings operand
            roles["weights"] = op.inputs[1]
    if "weights" in roles and len(op.inputs) > 2 and op.inputs[2] >= 0:
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
        else:
            q.scale = np.array([old[0] * 2.0 ** rng.uniform(-2, 2)], dtype=np.float32)
            q.zeroPoint = np.array([rng.integers(-128, 128)], dtype=np.int64)
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


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_random_quantization_matches_tflm(engine_lib, case: Case) -> None:  # noqa: F811
    piece, k = _cut(case.base(), case.op, case.occurrence)
    graph = TfliteGraph.from_bytes(piece)
    roles = _tensors(graph, k)
    assert set(case.vary) <= set(roles), f"{case.id}: the op has no {set(case.vary) - set(roles)}"
    rng = np.random.default_rng(abs(hash(case.id)) % (1 << 32))
    x_shape = graph.tensors[graph.inputs[0]].shape[1:]
    ran = refused = 0
    for trial in range(case.trials):
        model = graph.model_object
        _randomize(model, roles, case, rng)
        data = _pack(model)
        x = rng.integers(-128, 128, size=(BATCH, *x_shape)).astype(np.int8)
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
    assert ran >= case.trials // 2, f"{case.id}: only {ran} of {case.trials} trials ran ({refused} refused by both)"
