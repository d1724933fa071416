"""QUANTIZE between two int8 scales: the requantization converters insert mid-graph.

TFLM's int8 -> int8 QUANTIZE rescales ``x - zp_in`` by ``scale_in / scale_out`` (a double
product quantized as ``QuantizeMultiplier`` does), adds ``zp_out`` and saturates. A float
input (the model's input edge) is not an int8 activation: the fragment never starts with it.
In the float32 tail the op is the identity (both tensors hold the same real values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord
from tinyfed.ops.fixed_point import multiply_by_quantized_multiplier, quantize_multiplier

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Input offset, output zero point and the multiplier of scale_in / scale_out (double, as TFLM)."""
    x, x_id = b.activation_input(op)
    if x.size != out.size:
        raise b.fail(op, f"input {list(x.shape)} and output {list(out.shape)} sizes differ")
    m, s = quantize_multiplier(float(x.scales[0]) / float(out.scales[0]))
    return BlobRecord((x_id,), (-x.zero_points[0], out.zero_points[0], -128, 127, m, s))


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    if b.graph.tensors[op.inputs[0]].size != b.graph.tensors[op.outputs[0]].size:
        raise b.fail(op, "input and output sizes differ")
    return ProgramRecord()


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    return out


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    in_off, out_zp, lo, hi, m, s = op.params[:6]
    y = multiply_by_quantized_multiplier(xs[0].astype(np.int64) + in_off, m, s) + out_zp
    return np.clip(y, lo, hi).astype(np.int8).reshape(xs[0].shape[0], *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    return xs[0].reshape((batch,) + tuple(tail.graph.tensors[op.outputs[0]].shape[1:])), (xs[0].shape,)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    (xshape,) = step.saved(op)
    step.add_grad(op.inputs[0], gz.reshape(xshape))


SPEC = OpSpec(
    name="QUANTIZE", code=114, arity=1, options=(),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(40, 0), fused_activation=False,
)
