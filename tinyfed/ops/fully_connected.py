"""FULLY_CONNECTED: int8 (out, in) weights, int32 bias, per-tensor or per-channel scales."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord, WeightLayout, kernel_scratch_bytes
from tinyfed.ops.fixed_point import (
    BIAS_SCALE_TOLERANCE,
    activation_range,
    bias_scale_mismatch,
    conv_multiplier,
    requantize,
)

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail


def _multipliers(b: BlobBuilder, op: OpInfo, x: TensorInfo, w: TensorInfo, out: TensorInfo,
                 n_out: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """TFLM's rule per tensor and per channel (:func:`conv_multiplier`); per-tensor weights also bound
    the bias scale's distance from input * weights, as TFLM's ``GetQuantizedConvolutionMultipler`` does."""
    n_scales = len(w.scales)
    if n_scales == 1:
        _check_bias_scale(b, op, x, w, out)
        ms, ss = zip(*[conv_multiplier(x.scales[0], w.scales[0], out.scales[0])] * n_out, strict=True)
    elif n_scales == n_out:
        pairs = [conv_multiplier(x.scales[0], s, out.scales[0]) for s in w.scales]
        ms, ss = zip(*pairs, strict=True)
    else:
        raise b.fail(op, f"{n_scales} weight scales for {n_out} outputs")
    return ms, ss


def _check_bias_scale(b: BlobBuilder, op: OpInfo, x: TensorInfo, w: TensorInfo, out: TensorInfo) -> None:
    """TFLM refuses a per-tensor FULLY_CONNECTED whose bias scale strays from input * weight scale."""
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return
    bias = b.graph.tensors[op.inputs[2]]
    bias_scale = bias.scales[0] if bias.scales else 0.0
    gap = bias_scale_mismatch(x.scales[0], w.scales[0], bias_scale, out.scales[0])
    if gap > BIAS_SCALE_TOLERANCE:
        raise b.fail(op, f"bias '{bias.name}' scale {bias_scale:.6g} differs from input * weight scale "
                         f"{float(x.scales[0]) * float(w.scales[0]):.6g} by {gap:.3g} output steps "
                         f"(TFLM refuses above {BIAS_SCALE_TOLERANCE})",
                     "re-quantize the bias with scale = input scale * weight scale (the converter's rule)")


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo) -> BlobRecord:
    opts = op.options
    x, w, inputs = b.weighted_inputs(op, "weights")
    if len(w.shape) != 2:
        raise b.fail(op, "weights must be 2-D")
    n_out, depth = w.shape
    if out.shape[-1] != n_out or x.size != (out.size // n_out) * depth:
        raise b.fail(op, f"input {x.shape} / output {out.shape} disagree with weights {w.shape}")
    if opts.get("weights_format", 0) != 0:
        raise b.fail(op, "shuffled weights are not supported")
    ms, ss = _multipliers(b, op, x, w, out, n_out)
    amin, amax = activation_range(opts.get("activation", "NONE"), out.scales[0], out.zero_points[0])
    return BlobRecord(inputs, (-x.zero_points[0], out.zero_points[0], amin, amax, -w.zero_points[0],
                                      0, 0, 0, 0, 0, b.int32s(ms), b.int32s(ss)))


def encode_program(b: ProgramBuilder, op: OpInfo) -> ProgramRecord:
    g, o, ins, out_t = b.graph, op.options, list(op.inputs), op.outputs[0]
    weights = b.param(op, ins[1], 0, "INT8", "weights")
    bias = b.param(op, ins[2], 0, "INT32", "bias") if len(ins) > 2 and ins[2] >= 0 else None
    wshape = g.tensors[ins[1]].shape
    if len(wshape) != 2:
        raise b.fail(op, "weights must be 2-D")
    if o.get("weights_format", 0) != 0:
        raise b.fail(op, "shuffled weights are not supported")
    nout, depth = wshape
    xo, yo = g.tensors[ins[0]].size, g.tensors[out_t].size
    if yo % nout or xo != yo // nout * depth:
        raise b.fail(op, "input/output sizes disagree with the weights")
    if bias is not None and g.tensors[ins[2]].size != nout:
        raise b.fail(op, "bias size differs from the outputs")
    return ProgramRecord((weights, bias))


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    return {}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    return out * graph.tensors[op.inputs[1]].shape[-1]


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    x = xs[0]
    in_off, out_off, lo, hi, f_off = op.params[:5]
    m_off, s_off = op.params[10:12]
    w = info.constant(op.inputs[1]).astype(np.float64) + f_off
    n_out, depth = w.shape
    bias = info.constant(op.inputs[2]).astype(np.int64) if op.has_input(2) else np.zeros(n_out, np.int64)
    ms = info.int32_array(m_off, n_out).astype(np.int64)
    ss = info.int32_array(s_off, n_out).astype(np.int64)
    b = x.shape[0]
    x2 = x.reshape(-1, depth).astype(np.float64) + in_off
    acc = (x2 @ w.T).astype(np.int64) + bias
    return requantize(acc, ms, ss, out_off, lo, hi).reshape(b, *out_shape)


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int) -> tuple[np.ndarray, tuple]:
    xin = xs[0]
    w = tail.params[op.inputs[1]]
    b = tail.params[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    x2 = xin.reshape(-1, w.shape[1])
    z = x2 @ w.T
    if b is not None:
        z += b
    return z, (x2, xin.shape, z.shape)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray) -> None:
    x2, xshape, zshape = step.saved(op)
    gz = gz.reshape(zshape)
    w = step.tail.params[op.inputs[1]]
    step.grads[op.inputs[1]] = gz.T @ x2
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        step.grads[op.inputs[2]] = gz.sum(axis=0)
    if step.needs_input_grad(op):
        step.add_grad(op.inputs[0], (gz @ w).reshape(xshape))


def _keras_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras (in, out) -> TFLite (out, in)."""
    return kernel.T


def _scratch_bytes(g: Any, op: OpInfo) -> int:
    """The optimised kernels' im2col / expanded-input scratch (``kernel_scratch_bytes``)."""
    return kernel_scratch_bytes(int(g.tensors[op.inputs[1]].shape[-1]), 1)


SPEC = OpSpec(
    name="FULLY_CONNECTED", code=9, arity=1, options=("activation", "weights_format"),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(88, 8), weights=WeightLayout(weight_input=1, bias_input=2, channel_axis=0),
    scratch_bytes=_scratch_bytes,
    keras_layer="Dense", keras_kernel=_keras_kernel,
)
