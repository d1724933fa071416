"""SOFTMAX: int8 output of scale 1/256 and zero point -128 (TFLM's rule); the tail's last op.
Under cross-entropy the loss head's gradient enters below it (``training.tail.head_gradient``);
under the mean squared error its float backward is the softmax's Jacobian."""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord
from tinyfed.ops.fixed_point import (
    clz32,
    exp_on_negative_values,
    one_over_one_plus_x,
    quantize_multiplier,
    rdbp,
    srdhm,
    wrap32,
)

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    """TFLM's int8 softmax setup: the input multiplier of beta * scale in Q5.26 and the diff radius."""
    x, x_id = b.activation_input(op)
    if x.shape != out.shape:
        raise b.fail(op, "input and output shapes differ")
    if out.zero_points[0] != -128 or out.scales[0] != 1.0 / 256:  # TFLM: exactly 1.f / 256
        raise b.fail(op, f"output scale {out.scales[0]:.9g} and zero point {out.zero_points[0]}: TFLM's int8 softmax "
                         "requires exactly 1/256 and -128", "convert again (the converter writes 1/256 and -128)")
    beta = float(op.options.get("beta", 1.0))
    real = min(beta * float(x.scales[0]) * float(1 << 26), float((1 << 31) - 1))
    if not real > 1.0:
        raise b.fail(op, "beta * input scale is too small for TFLM's int8 softmax")
    m, left = quantize_multiplier(real)
    radius = math.floor(1.0 * ((1 << 5) - 1) * float(1 << 26) / float(1 << left))
    return BlobRecord((x_id,), (m, left, -radius))


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    """Beta as the bits of a float32."""
    beta = float(op.options.get("beta", 1.0))
    return ProgramRecord((), (struct.unpack("<i", struct.pack("<f", beta))[0],))


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {"beta": struct.unpack("<f", struct.pack("<i", p[0]))[0]}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    return out


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    """gemmlowp fixed point as TFLM's reference int8 softmax: exp of the differences to the row
    maximum, their sum's reciprocal, rescaled to 1/256 steps."""
    mult, left, diff_min = op.params[:3]
    shape = xs[0].shape
    depth = shape[-1]
    v = xs[0].reshape(-1, depth).astype(np.int64)
    diff = v - v.max(axis=1, keepdims=True)
    ok = diff >= diff_min
    rescaled = srdhm(wrap32(diff << left), mult)
    e = exp_on_negative_values(rescaled)
    e_acc = np.where(ok, rdbp(e, 12), 0)
    total = wrap32(e_acc.sum(axis=1, keepdims=True))
    headroom = clz32(total)
    num_bits_over_unit = 12 - headroom
    shifted_minus_one = wrap32(((total & 0xFFFFFFFF) << headroom) - (1 << 31))
    scale = one_over_one_plus_x(shifted_minus_one)
    unsat = rdbp(srdhm(scale, e), num_bits_over_unit + 31 - 8)
    out = np.clip(unsat - 128, -128, 127)
    out = np.where(ok, out, -128)
    return out.astype(np.int8).reshape(shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    xin = xs[0]
    beta = float(op.options.get("beta", 1.0))
    zz = xin.reshape(batch, -1)
    if beta != 1.0:  # x * 1.0 is x
        zz = zz * beta
    zz = zz - zz.max(axis=1, keepdims=True)
    e = np.exp(zz)
    return (e / e.sum(axis=1, keepdims=True)).reshape(xin.shape), (beta,)


def float_backward(step: Backward, op: OpInfo, gz: Any) -> None:
    """The softmax's Jacobian applied to the output gradient: beta p (g - sum(g p))."""
    (beta,) = step.saved(op)
    p = step.saved_output[op.index][0]
    n = p.shape[0]
    p2, g2 = p.reshape(n, -1), np.asarray(gz).reshape(n, -1)
    gx = p2 * (g2 - (g2 * p2).sum(axis=1, keepdims=True))
    if beta != 1.0:  # x * 1.0 is x
        gx = beta * gx
    step.add_grad(op.inputs[0], gx.reshape(p.shape).astype(step.tail.dtype, copy=False))


SPEC = OpSpec(
    name="SOFTMAX", code=25, arity=1, options=("beta",),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(68, 0), fused_activation=False,
)
