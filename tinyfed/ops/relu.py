"""RELU (standalone): TFLM's int8 kernel requantizes the input to the output scale (a multiplier
from the two scales) before clamping at the output's zero, so it is not an identity clamp when
input and output quantizations differ."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tinyfed.ops import unary
from tinyfed.ops.base import BlobRecord, OpSpec
from tinyfed.ops.fixed_point import multiply_by_quantized_multiplier, quantize_multiplier

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Params: input zero point, output zero point, multiplier, shift (input scale / output scale,
    in double as TFLM's Prepare), activation minimum (the output zero point) and maximum."""
    x, x_id = unary.elementwise_input(b, op, out)
    m, s = quantize_multiplier(float(x.scales[0]) / float(out.scales[0]))
    out_zp = out.zero_points[0]
    return BlobRecord((x_id,), (x.zero_points[0], out_zp, m, s, max(-128, out_zp), 127))


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    in_zp, out_zp, m, s, lo, hi = op.params[:6]
    y = out_zp + multiply_by_quantized_multiplier(xs[0].astype(np.int64) - in_zp, m, s)
    return np.clip(y, lo, hi).astype(np.int8).reshape(xs[0].shape[0], *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    return np.maximum(xs[0], 0), ()


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """The gradient passes where the input is positive."""
    step.add_grad(op.inputs[0], gz * (step.vals[op.inputs[0]] > 0))


SPEC = OpSpec(
    name="RELU", code=19, arity=1, options=(),
    encode_blob=encode_blob, encode_program=unary.encode_program, read_program=unary.read_program,
    macs=unary.macs, run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(32, 0), fused_activation=False,
)
