"""RELU6 (standalone): TFLM's int8 kernel clamps the input to its own quantized 0 and 6 and
copies it, ignoring the output quantization (the converter gives both the same)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tinyfed.ops import unary
from tinyfed.ops.base import BlobRecord, OpSpec
from tinyfed.ops.fixed_point import _round_away

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Params: the input's quantized 0 and 6 (``FloatToQuantizedType``: float32 division, rounded
    half away from zero, clamped to int8)."""
    x, x_id = unary.elementwise_input(b, op, out)
    zp = x.zero_points[0]
    six = zp + _round_away(float(np.float32(6.0) / np.float32(x.scales[0])))
    return BlobRecord((x_id,), (zp, int(np.clip(six, -128, 127))))


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    zero, six = op.params[:2]
    y = np.clip(xs[0], zero, six)  # zero <= six: six is zero plus a non-negative count of steps
    return y.astype(np.int8).reshape(xs[0].shape[0], *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    return np.clip(xs[0], 0, 6), ()


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """The gradient passes where the input lies strictly between 0 and 6."""
    x = step.vals[op.inputs[0]]
    step.add_grad(op.inputs[0], gz * ((x > 0) & (x < 6)))


SPEC = OpSpec(
    name="RELU6", code=21, arity=1, options=(),
    encode_blob=encode_blob, encode_program=unary.encode_program, read_program=unary.read_program,
    macs=unary.macs, run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(4, 0), fused_activation=False,
)
