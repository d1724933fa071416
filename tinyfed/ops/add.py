"""ADD: elementwise sum of two int8 tensors of the same shape (no broadcasting), TFLM's rescaling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord
from tinyfed.ops.fixed_point import (
    activation_range,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    wrap32,
)

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail

_LEFT_SHIFT = 20  # TFLM's int8 ADD works on inputs shifted left by 20 bits


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Both inputs rescaled to twice the larger input scale, the sum rescaled to the output."""
    x1, x1_id = b.activation_input(op, 0, "input 1")
    x2, x2_id = b.activation_input(op, 1, "input 2")
    inputs = (x1_id, x2_id)
    if not (x1.shape == x2.shape == out.shape):
        raise b.fail(op, f"shapes {x1.shape} + {x2.shape} -> {out.shape}: the engine's ADD does not broadcast",
                     "give both inputs the output's shape")
    twice_max = 2.0 * float(max(np.float32(x1.scales[0]), np.float32(x2.scales[0])))
    r1 = float(x1.scales[0]) / twice_max
    r2 = float(x2.scales[0]) / twice_max
    ro = twice_max / (float(1 << _LEFT_SHIFT) * float(out.scales[0]))
    if not (0 < ro < 1.0):
        raise b.fail(op, "the output rescaling is not smaller than one (TFLM refuses it)")
    m1, s1 = quantize_multiplier(r1)
    m2, s2 = quantize_multiplier(r2)
    mo, so = quantize_multiplier(ro)
    amin, amax = activation_range(op.options.get("activation", "NONE"), out.scales[0], out.zero_points[0])
    return BlobRecord(inputs, (-x1.zero_points[0], -x2.zero_points[0], amin, amax, out.zero_points[0], _LEFT_SHIFT,
                               m1, s1, m2, s2, mo, so))


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    g, ins = b.graph, op.inputs
    second = b.activation(op, ins[1], "second input")
    sizes = {g.tensors[t].size for t in (ins[0], ins[1], op.outputs[0])}
    if len(sizes) != 1 or tuple(g.tensors[ins[0]].shape) != tuple(g.tensors[ins[1]].shape):
        raise b.fail(op, f"broadcasting ADD ({list(g.tensors[ins[0]].shape)} + {list(g.tensors[ins[1]].shape)})"
                     " is not supported", "use inputs of the same shape")
    return ProgramRecord((second,))


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    return out


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    off1, off2, lo, hi, out_off, left, m1, s1, m2, s2, mo, so = op.params[:12]
    va = wrap32((xs[0].astype(np.int64) + off1) << left)
    vb = wrap32((xs[1].astype(np.int64) + off2) << left)
    ra = multiply_by_quantized_multiplier(va, m1, s1)
    rb = multiply_by_quantized_multiplier(vb, m2, s2)
    raw = multiply_by_quantized_multiplier(wrap32(ra + rb), mo, so) + out_off
    return np.clip(raw, lo, hi).astype(np.int8).reshape(xs[0].shape[0], *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    return xs[0] + xs[1], ()


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """Each activation input gets the output gradient, summed over the axes it was broadcast along."""
    for t in op.inputs[:2]:
        if t in step.vals:
            shp = step.vals[t].shape
            gr = gz
            while gr.ndim > len(shp):
                gr = gr.sum(axis=0)
            axes = tuple(i for i, (a, b) in enumerate(zip(gr.shape, shp, strict=True)) if b == 1 and a != 1)
            if axes:
                gr = gr.sum(axis=axes, keepdims=True)
            step.add_grad(t, gr)


SPEC = OpSpec(
    name="ADD", code=0, arity=2, options=("activation",),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(64, 0),
)
