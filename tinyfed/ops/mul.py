"""MUL: elementwise product of two int8 tensors with TFLM's broadcasting (shapes right-aligned to
4-D, size-1 dimensions repeated) and fused activation; either operand may be a per-tensor int8
constant (the blob puts the activation first: the product commutes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tinyfed.ops import unary
from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord
from tinyfed.ops.fixed_point import activation_range, multiply_by_quantized_multiplier, quantize_multiplier

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail

_MAX_RANK = 4  # TFLM's int8 MUL broadcasts over at most 4 dimensions


def _operands(b: BlobBuilder, op: OpInfo) -> tuple[tuple[TensorInfo, int], tuple[TensorInfo, int]]:
    """Both operands (the activation first) with their blob ids."""
    g = b.graph
    first, second = op.inputs[0], op.inputs[1]
    if g.tensors[first].is_constant and g.tensors[second].is_constant:
        raise b.fail(op, "both operands are constants", "fold the product into a constant when converting")
    if g.tensors[first].is_constant:
        first, second = second, first
    x, x_id = b.activation(op, first, "input"), b.id(first)
    c = g.tensors[second]
    if c.is_constant:
        if len(c.scales) != 1 or len(c.shape) > _MAX_RANK:
            raise b.fail(op, f"constant operand tensor {second} must be per-tensor quantized with rank <= 4",
                         "convert with per-tensor quantization of the constant")
        c_id = b.constant(op, second, "INT8", "constant operand")
    else:
        c, c_id = b.activation(op, second, "second input"), b.id(second)
    return (x, x_id), (c, c_id)


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Params: minus the zero points of both operands, the output zero point, the multiplier and
    shift of s1 * s2 / s_out (double, as TFLM's Prepare) and the activation range."""
    (x, x_id), (c, c_id) = _operands(b, op)
    try:
        shape = np.broadcast_shapes(tuple(x.shape), tuple(c.shape))
    except ValueError:
        shape = None
    if shape != tuple(out.shape) or len(out.shape) > _MAX_RANK:
        raise b.fail(op, f"shapes {list(x.shape)} * {list(c.shape)} -> {list(out.shape)} do not broadcast "
                     "as TFLM's MUL does (right-aligned, size-1 dimensions, rank <= 4)",
                     "reshape the operands to broadcastable shapes of rank <= 4")
    m, s = quantize_multiplier(float(x.scales[0]) * float(c.scales[0]) / float(out.scales[0]))
    lo, hi = activation_range(op.options.get("activation", "NONE"), out.scales[0], out.zero_points[0])
    return BlobRecord((x_id, c_id), (-x.zero_points[0], -c.zero_points[0], out.zero_points[0], m, s, lo, hi))


def _extended(a: np.ndarray, shape: tuple[int, ...], batched: bool, rank: int) -> np.ndarray:
    """An operand batch first, its tensor shape right-aligned to ``rank`` dimensions."""
    pad = (1,) * (rank - len(shape)) + tuple(shape)
    return a.reshape(a.shape[0] if batched else 1, *pad)


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    off1, off2, out_off, m, s, lo, hi = op.params[:7]
    t1, t2 = info.tensors[op.inputs[0]], info.tensors[op.inputs[1]]
    rank = max(len(out_shape), 1)
    a = _extended(xs[0], t1.shape, True, rank).astype(np.int64) + off1
    c = _extended(np.asarray(xs[1])[None] if t2.constant else xs[1], t2.shape, not t2.constant, rank)
    prod = a * (c.astype(np.int64) + off2)
    y = multiply_by_quantized_multiplier(prod, m, s) + out_off
    return np.clip(y, lo, hi).astype(np.int8).reshape(xs[0].shape[0], *out_shape)


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    """The second operand: an activation or a per-tensor int8 constant (its values dequantized
    by the engine); broadcasting follows from the tensors' shapes."""
    g = b.graph
    t = op.inputs[1]
    info = g.tensors[t]
    if info.is_constant:
        if len(info.scales) != 1 or len(info.shape) > _MAX_RANK:
            raise b.fail(op, f"constant operand tensor {t} must be per-tensor int8 of rank <= 4",
                         "convert with per-tensor quantization of the constant")
        second = b.param(op, t, 0, "INT8", "constant operand")
    else:
        second = b.activation(op, t, "second input")
    shapes = [tuple(g.tensors[k].shape) for k in (op.inputs[0], t, op.outputs[0])]
    if len(shapes[2]) > _MAX_RANK or np.broadcast_shapes(shapes[0], shapes[1]) != shapes[2]:
        raise b.fail(op, f"shapes {list(shapes[0])} * {list(shapes[1])} -> {list(shapes[2])} do not broadcast")
    return ProgramRecord((second,))


def _value_shape(tail: FloatTail, t: int, batch: int, rank: int) -> tuple[int, ...]:
    """The float tail's array shape of operand ``t`` right-aligned to the output's rank (an
    activation's leading dimension is the batch; a constant keeps its own)."""
    shape = tuple(tail.graph.tensors[t].shape)
    if tail.graph.tensors[t].is_constant:
        return (1,) * (rank - len(shape)) + shape
    return (batch,) + (1,) * (rank - len(shape)) + shape[1:]


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    rank = len(tail.graph.tensors[op.outputs[0]].shape)
    a = xs[0].reshape(_value_shape(tail, op.inputs[0], batch, rank))
    c = xs[1].reshape(_value_shape(tail, op.inputs[1], batch, rank))
    out_shape = (batch,) + tuple(tail.graph.tensors[op.outputs[0]].shape[1:])
    return (a * c).reshape(out_shape), (a, c)


def _reduce_to(gr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a gradient over the axes an operand was broadcast along."""
    axes = tuple(i for i, (n, k) in enumerate(zip(gr.shape, shape, strict=True)) if k == 1 and n != 1)
    return gr.sum(axis=axes, keepdims=True) if axes else gr


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """Each activation operand gets the output gradient times the other operand, summed over the
    axes it was broadcast along."""
    a, c = step.saved(op)
    g = gz.reshape(np.broadcast_shapes(a.shape, c.shape))
    for t, other, mine in ((op.inputs[0], c, a), (op.inputs[1], a, c)):
        if t in step.vals:
            step.add_grad(t, _reduce_to(g * other, mine.shape).reshape(step.vals[t].shape))


SPEC = OpSpec(
    name="MUL", code=18, arity=2, options=("activation",),
    encode_blob=encode_blob, encode_program=encode_program, read_program=unary.read_program, macs=unary.macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(36, 0),
)
