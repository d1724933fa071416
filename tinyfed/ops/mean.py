"""MEAN: the average over up to two axes (Keras GlobalAveragePooling2D converts to it), with or
without ``keep_dims``.

TFLM's int8 kernel sums the raw int8 values in int32, subtracts ``zp_in * n`` and rescales by
``scale_in / scale_out`` folded with ``1 / n`` into one multiplier (its ``QuantizedMeanOrSum``).
TFLM resolves at most two distinct axes; a MEAN over more is refused, as TFLM cannot run it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord
from tinyfed.ops.fixed_point import multiply_by_quantized_multiplier, quantize_multiplier, wrap32

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.layout import FragmentBuilder
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail

_MAX_AXES = 2  # TFLM's kMaxNumberOfReducedAxis


def reduced_axes(b: FragmentBuilder, op: OpInfo) -> tuple[int, ...]:
    """The distinct reduced axes (negative ones resolved), ascending; refuses what TFLM refuses."""
    g = b.graph
    x = g.tensors[op.inputs[0]]
    if len(op.inputs) < 2 or op.inputs[1] < 0 or not g.tensors[op.inputs[1]].is_constant:
        raise b.fail(op, "the axes are not a constant tensor (TFLM needs them at Prepare)")
    rank = len(x.shape)
    axes: list[int] = []
    for a in np.asarray(g.constant_data(op.inputs[1])).reshape(-1).tolist():
        k = int(a) + rank if a < 0 else int(a)
        if not 0 <= k < rank:
            raise b.fail(op, f"axis {a} is out of range for an input of rank {rank}")
        if k not in axes:
            axes.append(k)
    if len(axes) > _MAX_AXES:
        raise b.fail(op, f"reduces {len(axes)} axes {sorted(axes)}; TFLM's MEAN reduces at most {_MAX_AXES}",
                     "reduce over at most two axes (e.g. a GlobalAveragePooling2D over height and width)")
    return tuple(sorted(axes))


def _mask(axes: tuple[int, ...]) -> int:
    return sum(1 << a for a in axes)


def _axes_of(mask: int) -> tuple[int, ...]:
    return tuple(a for a in range(4) if mask >> a & 1)


def mean_multiplier(ratio: float, count: int) -> tuple[int, int]:
    """TFLM's multiplier of ``ratio / count``: ``QuantizeMultiplier(ratio)``, then ``1 / count``
    folded in by an integer division after a left shift of at most ``floor(log2(count))`` bits."""
    m, s = quantize_multiplier(ratio)
    shift = min(count.bit_length() - 1, 32, 31 + s)
    return int((m << shift) // count), s - shift


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    x, x_id = b.activation_input(op)
    axes = reduced_axes(b, op)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    if out.size * count != x.size:
        raise b.fail(op, f"output {list(out.shape)} disagrees with a mean of {list(x.shape)} over axes {list(axes)}")
    m, s = mean_multiplier(float(x.scales[0]) / float(out.scales[0]), count)
    return BlobRecord((x_id,), (-x.zero_points[0], out.zero_points[0], -128, 127, _mask(axes), count, m, s))


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    axes = reduced_axes(b, op)
    if 0 in axes:
        raise b.fail(op, "reduces the batch axis; the engine trains one sample at a time",
                     "reduce over the other axes")
    return ProgramRecord((), (_mask(axes),))


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {"axes": _axes_of(p[0])}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    return out * (graph.tensors[op.inputs[0]].size // max(1, graph.tensors[op.outputs[0]].size))


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    """The int32 sum of the raw values (wrapping), minus ``zp_in * n``, rescaled, saturated."""
    in_off, out_zp, lo, hi, mask, count, m, s = op.params[:8]
    x = xs[0]
    in_shape = info.tensors[op.inputs[0]].shape
    v = x.astype(np.int64).reshape(x.shape[0], *in_shape, *(1,) * (4 - len(in_shape)))
    acc = wrap32(v.sum(axis=tuple(1 + a for a in _axes_of(mask))) + in_off * count)
    y = multiply_by_quantized_multiplier(acc, m, s) + out_zp
    return np.clip(y, lo, hi).astype(np.int8).reshape(x.shape[0], *out_shape)


def _axes(tail: FloatTail, op: OpInfo) -> tuple[int, ...]:
    axes = op.options.get("axes")
    if axes is None:
        g = tail.graph
        rank = len(g.tensors[op.inputs[0]].shape)
        axes = tuple(sorted({int(a) % rank for a in np.asarray(g.constant_data(op.inputs[1])).reshape(-1)}))
    return tuple(axes)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    x = xs[0]
    axes = _axes(tail, op)
    z = x.mean(axis=axes, keepdims=True, dtype=tail.dtype).astype(tail.dtype, copy=False)
    return z.reshape((batch,) + tuple(tail.graph.tensors[op.outputs[0]].shape[1:])), (x.shape, axes)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """Each input gets its output's gradient divided by the count averaged."""
    xshape, axes = step.saved(op)
    count = int(np.prod([xshape[a] for a in axes]))
    kept = tuple(1 if a in axes else n for a, n in enumerate(xshape))
    g = np.broadcast_to(gz.reshape(kept) / np.asarray(count, gz.dtype), xshape)
    step.add_grad(op.inputs[0], np.ascontiguousarray(g))


SPEC = OpSpec(
    name="MEAN", code=40, arity=1, options=("keep_dims",),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(40, 0), fused_activation=False,
)
