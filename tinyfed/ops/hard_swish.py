"""HARD_SWISH: x * relu6(x + 3) / 6, TFLM's int8 kernel (int16 fixed point: the input on a
128x finer grid, a "reluish" factor in [0, 1] and the output multiplier, both Q0.15)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tinyfed.ops import unary
from tinyfed.ops.base import BlobRecord, OpSpec
from tinyfed.ops.fixed_point import (
    downscale_multiplier16,
    quantize_multiplier,
    rdbp16,
    saturating_left_shift16,
    sdhm16,
    srdhm16,
    wrap16,
)

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """Params: input and output zero points, output multiplier (Q0.15) and exponent, reluish
    multiplier (Q0.15) and exponent; the scale ratios in float32 as TFLM's Prepare computes them."""
    x, x_id = unary.elementwise_input(b, op, out)
    hires = np.float32(1.0 / 128.0) * np.float32(x.scales[0])
    m_out, e_out = quantize_multiplier(float(hires / np.float32(out.scales[0])))
    if e_out > 0:
        raise b.fail(op, f"output scale {out.scales[0]} is below input scale / 128 (TFLM refuses it)",
                     "quantize the output with a larger scale")
    m_relu, e_relu = quantize_multiplier(float(hires / np.float32(3.0 / 32768.0)))
    return BlobRecord((x_id,), (x.zero_points[0], out.zero_points[0], downscale_multiplier16(m_out), e_out,
                                downscale_multiplier16(m_relu), e_relu))


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    in_zp, out_zp, m_out, e_out, m_relu, e_relu = op.params[:6]
    hires = wrap16((xs[0].astype(np.int64) - in_zp) * 128)
    preshift = srdhm16(hires, m_out)
    reluish = hires
    if e_relu > 0:
        reluish = saturating_left_shift16(reluish, e_relu - 1)
    reluish = srdhm16(reluish, m_relu)
    if e_relu > 0:
        reluish = saturating_left_shift16(reluish, 1)
    if e_relu < 0:
        reluish = rdbp16(reluish, -e_relu)
    reluish = (reluish + (1 << 15)) >> 1
    y = wrap16(rdbp16(sdhm16(reluish, preshift), -e_out) + out_zp)
    return np.clip(y, -128, 127).astype(np.int8).reshape(xs[0].shape[0], *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    x = xs[0]
    return x * np.clip(x + 3, 0, 6) / 6, ()


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    """0 below -3, 1 above 3, (2x + 3) / 6 between."""
    x = step.vals[op.inputs[0]]
    d = np.where(x < -3, 0, np.where(x > 3, 1, (2 * x + 3) / 6)).astype(gz.dtype, copy=False)
    step.add_grad(op.inputs[0], gz * d)


SPEC = OpSpec(
    name="HARD_SWISH", code=117, arity=1, options=(),
    encode_blob=encode_blob, encode_program=unary.encode_program, read_program=unary.read_program,
    macs=unary.macs, run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(16, 0), fused_activation=False,
)
