"""LEAKY_RELU: TFLM's int8 kernel requantizes non-negative inputs with input scale / output scale
and negative ones with alpha * input scale / output scale (both in double precision: the
``tflite-micro`` reference computes them so; float32 products differ by one LSB on some inputs).
A negative alpha's multiplier is applied by magnitude and the result negated, as TFLM does
(rounding a tie toward zero where a signed multiplier would round it up)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops import unary
from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord
from tinyfed.ops.fixed_point import multiply_by_quantized_multiplier, quantize_multiplier

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail


def _alpha(op: OpInfo) -> float:
    return float(np.float32(op.options.get("alpha", 0.2)))


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Params: input zero point, output zero point, alpha multiplier and shift, identity multiplier
    and shift."""
    x, x_id = unary.elementwise_input(b, op, out)
    s_in, s_out, alpha = np.float32(x.scales[0]), np.float32(out.scales[0]), np.float32(_alpha(op))
    ma, sa = quantize_multiplier(float(s_in) * float(alpha) / float(s_out))
    mi, si = quantize_multiplier(float(s_in) / float(s_out))
    return BlobRecord((x_id,), (x.zero_points[0], out.zero_points[0], ma, sa, mi, si))


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    in_zp, out_zp, ma, sa, mi, si = op.params[:6]
    v = xs[0].astype(np.int64) - in_zp
    # a negative alpha multiplier: TFLM scales by its magnitude and negates the result
    scaled_alpha = multiply_by_quantized_multiplier(v, abs(ma), sa)
    negative_part = -scaled_alpha if ma < 0 else scaled_alpha
    y = out_zp + np.where(v >= 0, multiply_by_quantized_multiplier(v, mi, si), negative_part)
    return np.clip(y, -128, 127).astype(np.int8).reshape(xs[0].shape[0], *out_shape)


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    """Alpha as the bits of a float32."""
    unary.encode_program(b, op)
    return ProgramRecord((), (struct.unpack("<i", struct.pack("<f", _alpha(op)))[0],))


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {"alpha": struct.unpack("<f", struct.pack("<i", p[0]))[0]}


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    alpha = tail.dtype.type(_alpha(op))
    x = xs[0]
    return np.where(x > 0, x, x * alpha), (alpha,)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """1 where the input is positive, alpha elsewhere."""
    (alpha,) = step.saved(op)
    step.add_grad(op.inputs[0], np.where(step.vals[op.inputs[0]] > 0, gz, gz * alpha))


SPEC = OpSpec(
    name="LEAKY_RELU", code=98, arity=1, options=("alpha",),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program,
    macs=unary.macs, run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(28, 0), fused_activation=False,
)
