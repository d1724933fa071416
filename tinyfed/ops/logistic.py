"""LOGISTIC: the sigmoid, TFLM's int8 kernel (gemmlowp fixed point on a Q4.27 rescaled input).

TFLM's Prepare requires the output zero point -128 and computes the output on a 1/256 grid
whatever the output scale says (the converter always gives it 1/256). As the last op of a
multi-label head its float32 backward is the task's loss head (``tinyfed.training.task``);
here it is the plain chain rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tinyfed.ops import unary
from tinyfed.ops.base import BlobRecord, OpSpec
from tinyfed.ops.fixed_point import (
    frexp_multiplier,
    input_radius,
    logistic_q4,
    multiply_by_quantized_multiplier,
    rdbp,
)

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail

_INPUT_INTEGER_BITS = 4  # TFLM rescales the int8 input to Q4.27


def q4_rescaling(b: BlobBuilder, op: OpInfo, scale: float) -> tuple[int, int, int]:
    """TFLM's Prepare for the int8 LOGISTIC and TANH: the input multiplier and left shift to Q4.27
    (``frexp`` of scale * 2**27) and the input radius beyond which the output saturates."""
    mult, shift = frexp_multiplier(float(scale) * float(1 << (31 - _INPUT_INTEGER_BITS)))
    if shift < -31:
        raise b.fail(op, f"input scale {scale} is too small for TFLM's Q4.27 rescaling",
                     "quantize the input with a larger scale")
    radius = input_radius(_INPUT_INTEGER_BITS, shift)  # 0 from shift 31 on: every input saturates
    return mult, min(shift, 31), min(radius, 1 << 30)  # an int8 difference never reaches 2**30


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Params: input zero point, input radius, input multiplier, input left shift."""
    x, x_id = unary.elementwise_input(b, op, out)
    if out.zero_points[0] != -128:
        raise b.fail(op, f"output zero point is {out.zero_points[0]}; TFLM's int8 LOGISTIC requires -128",
                     "convert the model again with full-int8 quantization (the converter fixes it at -128)")
    mult, shift, radius = q4_rescaling(b, op, x.scales[0])
    return BlobRecord((x_id,), (x.zero_points[0], radius, mult, shift))


def saturating_q4(x: np.ndarray, params: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centred input rescaled to Q4.27 and the masks of inputs at or beyond minus / plus the radius."""
    zp, radius, mult, shift = params[:4]
    v = x.astype(np.int64) - zp
    low, high = v <= -radius, v >= radius
    inside = np.where(low | high, 0, v)  # saturated inputs never reach the rescaling (it could overflow)
    return multiply_by_quantized_multiplier(inside, mult, shift), low, high


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    q4, low, high = saturating_q4(xs[0], op.params)
    y = np.clip(rdbp(logistic_q4(q4), 23) - 128, -128, 127)
    y = np.where(low, -128, np.where(high, 127, y))
    return y.astype(np.int8).reshape(xs[0].shape[0], *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    one = tail.dtype.type(1)
    return one / (one + np.exp(-xs[0])), ()


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """d sigmoid(x) / dx = y (1 - y), from the saved output."""
    y = step.saved_output[op.index][0]
    step.add_grad(op.inputs[0], gz * (y * (1 - y)))


SPEC = OpSpec(
    name="LOGISTIC", code=14, arity=1, options=(),
    encode_blob=encode_blob, encode_program=unary.encode_program, read_program=unary.read_program,
    macs=unary.macs, run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(16, 0), fused_activation=False,
)
