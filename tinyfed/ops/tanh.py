"""TANH: TFLM's int8 kernel (gemmlowp fixed point on a Q4.27 rescaled input, output on a 1/128
grid around zero, whatever the output quantization says: TFLM checks neither)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tinyfed.ops import unary
from tinyfed.ops.base import BlobRecord, OpSpec
from tinyfed.ops.fixed_point import rdbp, tanh_q4
from tinyfed.ops.logistic import q4_rescaling, saturating_q4

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Params: input zero point, input radius, input multiplier, input left shift."""
    x, x_id = unary.elementwise_input(b, op, out)
    mult, shift, radius = q4_rescaling(b, op, x.scales[0])
    return BlobRecord((x_id,), (x.zero_points[0], radius, mult, shift))


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    q4, low, high = saturating_q4(xs[0], op.params)
    y = np.clip(rdbp(tanh_q4(q4), 24), -128, 127)
    y = np.where(low, -128, np.where(high, 127, y))
    return y.astype(np.int8).reshape(xs[0].shape[0], *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    return np.tanh(xs[0]), ()


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """d tanh(x) / dx = 1 - y**2, from the saved output."""
    y = step.saved_output[op.index][0]
    step.add_grad(op.inputs[0], gz * (1 - y * y))


SPEC = OpSpec(
    name="TANH", code=28, arity=1, options=(),
    encode_blob=encode_blob, encode_program=unary.encode_program, read_program=unary.read_program,
    macs=unary.macs, run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(16, 0), fused_activation=False,
)
