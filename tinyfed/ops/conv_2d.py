"""CONV_2D: int8 OHWI filter, int32 bias, per-channel or per-tensor scales.

The functions take ``depthwise`` because DEPTHWISE_CONV_2D (``depthwise_conv_2d.py``) shares
every rule but its filter layout (1HWC, depth multiplier) and its arithmetic per channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tinyfed.firmware_bridge.compile.layout import padding_name, window_geometry
from tinyfed.ops import windows
from tinyfed.ops.base import BlobRecord, OpSpec, ProgramRecord, WeightLayout, kernel_scratch_bytes
from tinyfed.ops.fixed_point import activation_range, conv_multiplier, requantize

if TYPE_CHECKING:  # pragma: no cover
    from tinyfed.firmware_bridge.compile.blob import BlobBuilder, BlobInfo, BlobOp
    from tinyfed.firmware_bridge.compile.train_blob import ProgramBuilder
    from tinyfed.models.tflite_graph import OpInfo, TensorInfo
    from tinyfed.training.tail import Backward, FloatTail

_CHUNK = 256  # samples per convolution chunk in the twin (bounds the im2col memory)


# ---- TFMB ---------------------------------------------------------------------------------


def _channel_multipliers(b: BlobBuilder, op: OpInfo, x: TensorInfo, w: TensorInfo, out: TensorInfo,
                         n_out: int) -> tuple[list[int], list[int]]:
    n_scales = len(w.scales)
    if n_scales not in (1, n_out):
        raise b.fail(op, f"{n_scales} filter scales for {n_out} output channels")
    ms, ss = [], []
    for c in range(n_out):
        fscale = w.scales[c if n_scales > 1 else 0]
        m, s = conv_multiplier(x.scales[0], fscale, out.scales[0])
        ms.append(m)
        ss.append(s)
    return ms, ss


def encode_blob(b: BlobBuilder, op: OpInfo, out: TensorInfo, depthwise: bool = False) -> BlobRecord:
    """Prepare's work for an int8 (depthwise) convolution: padding, multipliers, activation range."""
    opts = op.options
    x, w, inputs = b.weighted_inputs(op, "filter")
    if len(x.shape) != 4 or len(w.shape) != 4 or len(out.shape) != 4:
        raise b.fail(op, "input, filter and output must be 4-D")
    n_out = out.shape[3]
    sh, sw = opts.get("stride", (1, 1))
    dh, dw = opts.get("dilation", (1, 1))
    fh, fw = w.shape[1], w.shape[2]
    oh, pad_h, _ = window_geometry(x.shape[1], fh, sh, dh, opts.get("padding", "VALID"))
    ow, pad_w, _ = window_geometry(x.shape[2], fw, sw, dw, opts.get("padding", "VALID"))
    if (oh, ow) != tuple(out.shape[1:3]):
        raise b.fail(op, f"output {out.shape} disagrees with the padding rule ({oh}x{ow})")
    mult = 0
    if depthwise:
        if x.shape[3] == 0 or n_out % x.shape[3] or w.shape[3] != n_out or w.shape[0] != 1:
            raise b.fail(op, f"filter {w.shape} does not map {x.shape[3]} input to {n_out} output channels")
        mult = n_out // x.shape[3]
    elif w.shape[3] != x.shape[3]:
        raise b.fail(op, "grouped convolution is not supported")
    ms, ss = _channel_multipliers(b, op, x, w, out, n_out)
    amin, amax = activation_range(opts.get("activation", "NONE"), out.scales[0], out.zero_points[0])
    return BlobRecord(inputs, (-x.zero_points[0], out.zero_points[0], amin, amax, sh, sw, dh, dw,
                                      pad_h, pad_w, b.int32s(ms), b.int32s(ss), mult))


# ---- TFTR ---------------------------------------------------------------------------------


def encode_program(b: ProgramBuilder, op: OpInfo, depthwise: bool = False) -> ProgramRecord:
    """Strides, dilations, the pad before (SAME/VALID) and the depth multiplier; filter and bias as parameters."""
    g, o, ins, out_t = b.graph, op.options, list(op.inputs), op.outputs[0]
    _, h, w, c = b.batch1(op, ins[0])
    _, oh, ow, oc = b.batch1(op, out_t)
    filt = b.param(op, ins[1], 3 if depthwise else 0, "INT8", "filter")
    bias = b.param(op, ins[2], 0, "INT32", "bias") if len(ins) > 2 and ins[2] >= 0 else None
    f = g.tensors[ins[1]].shape
    if len(f) != 4:
        raise b.fail(op, f"filter {list(f)} is not 4-D")
    mult = 0
    if depthwise:
        if f[0] != 1 or f[3] != oc or oc % c:
            raise b.fail(op, f"depthwise filter {list(f)} does not map {c} to {oc} channels")
        mult = oc // c
    elif f[0] != oc or f[3] != c:
        raise b.fail(op, f"filter {list(f)} does not map {c} to {oc} channels (grouped convolution?)")
    if bias is not None and g.tensors[ins[2]].size != oc:
        raise b.fail(op, "bias size differs from the output channels")
    sh, sw = o.get("stride", (1, 1))
    dh, dwl = o.get("dilation", (1, 1))
    pad = o.get("padding", "VALID")
    eh, pt, _ = window_geometry(h, f[1], sh, dh, pad)
    ew, pl, _ = window_geometry(w, f[2], sw, dwl, pad)
    if (eh, ew) != (oh, ow):
        raise b.fail(op, f"output {oh}x{ow} disagrees with the {pad} padding rule ({eh}x{ew})")
    return ProgramRecord((filt, bias), (sh, sw, dh, dwl, pt, pl, mult))


def read_program(tensors: list[Any], ins: list[int], out: int, p: list[int]) -> dict[str, Any]:
    x, w, y = tensors[ins[0]].shape, tensors[ins[1]].shape, tensors[out].shape
    sh, sw, dh, dw, pt, pl = p[:6]
    return {"stride": (sh, sw), "dilation": (dh, dw),
            "padding": padding_name(x, y, (w[1], w[2]), (sh, sw), (dh, dw), (pt, pl))}


def macs(graph: Any, op: OpInfo, out: int) -> int:
    _, kh, kw, cin = graph.tensors[op.inputs[1]].shape
    return out * kh * kw * cin


# ---- numpy int8 twin ----------------------------------------------------------------------


def run_int8(info: BlobInfo, op: BlobOp, xs: list[np.ndarray], out_shape: tuple[int, ...],
             depthwise: bool = False) -> np.ndarray:
    """Float matrix products of integers, exact, then requantize.

    Every partial sum of an output is an integer no larger than ``terms * max|x + in_off| * max|w|``;
    below 2**24 float32 holds each one exactly (in any summation order), so the products run in
    float32 (half the memory traffic, twice BLAS's speed), else in float64 (exact below 2**53)."""
    x = xs[0]
    in_off, out_off, lo, hi, sh, sw, dh, dw, pad_h, pad_w, m_off, s_off, mult = op.params[:13]
    wq = info.constant(op.inputs[1])
    n_out = out_shape[3]
    bias = info.constant(op.inputs[2]).astype(np.int64) if op.has_input(2) else np.zeros(n_out, np.int64)
    ms = info.int32_array(m_off, n_out).astype(np.int64)
    ss = info.int32_array(s_off, n_out).astype(np.int64)
    b = x.shape[0]
    fh, fw = (wq.shape[1], wq.shape[2])
    terms = fh * fw * (1 if depthwise else x.shape[-1])
    x_peak = max(abs(int(x.min()) + in_off), abs(int(x.max()) + in_off)) if x.size else 0
    w_peak = int(np.abs(wq.astype(np.int64)).max()) if wq.size else 0
    dtype = np.float32 if terms * x_peak * w_peak < 1 << 24 else np.float64
    w = wq.astype(dtype)
    xs64 = np.add(x.reshape(-1, *x.shape[-3:]), in_off, dtype=dtype)  # (B*N, H, W, C)
    oh, ow = out_shape[1], out_shape[2]
    need = ((oh - 1) * sh + (fh - 1) * dh + 1, (ow - 1) * sw + (fw - 1) * dw + 1)
    outs = []
    for start in range(0, xs64.shape[0], _CHUNK):
        xp = windows.pad_int8(xs64[start : start + _CHUNK], (pad_h, pad_w), need, 0.0)
        # TFLM: in = out*stride - pad + dil*f; padded index = in + pad.
        if depthwise:
            src = np.arange(n_out) // mult
            acc = np.zeros((xp.shape[0], oh, ow, n_out), dtype=dtype)
            for fy in range(fh):
                for fx in range(fw):
                    win = windows.int8_tap(xp, fy, fx, (dh, dw), (sh, sw), oh, ow)[..., src]
                    acc += win * w[0, fy, fx, :]
        else:
            cols = [windows.int8_tap(xp, fy, fx, (dh, dw), (sh, sw), oh, ow) for fy in range(fh) for fx in range(fw)]
            patches = np.stack(cols, axis=3).reshape(xp.shape[0] * oh * ow, -1)
            acc = (patches @ w.reshape(n_out, -1).T).reshape(xp.shape[0], oh, ow, n_out)
        outs.append(acc)
    total = np.concatenate(outs, axis=0).astype(np.int64) + bias
    return requantize(total, ms, ss, out_off, lo, hi).reshape(b, *out_shape)


# ---- FloatTail ----------------------------------------------------------------------------


def float_forward(tail: FloatTail, op: OpInfo, xs: list[np.ndarray], batch: int,
                  depthwise: bool = False) -> tuple[np.ndarray, tuple]:
    xin, o = xs[0], op.options
    w = tail.params[op.inputs[1]]
    b = tail.params[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    s, d = tuple(o["stride"]), tuple(o.get("dilation", (1, 1)))
    kh, kw = (w.shape[1], w.shape[2])
    cols, geom = windows.patches(xin, kh, kw, s, d, o["padding"])
    if not depthwise:
        z = cols.reshape(-1, kh * kw * w.shape[3]) @ w.reshape(w.shape[0], -1).T
        z = z.reshape(cols.shape[:3] + (w.shape[0],))
    else:
        m = w.shape[3] // xin.shape[3]
        colr = np.repeat(cols, m, axis=-1) if m > 1 else cols
        z = np.einsum("nhwijc,ijc->nhwc", colr, w[0], optimize=True)
    if b is not None:
        z += b  # z is the fresh product: no second array
    return z, (cols, geom)


def float_backward(step: Backward, op: OpInfo, gz: np.ndarray, depthwise: bool = False) -> None:
    cols, geom = step.saved(op)
    o = op.options
    w = step.tail.params[op.inputs[1]]
    s, d = tuple(o["stride"]), tuple(o.get("dilation", (1, 1)))
    kh, kw = w.shape[1], w.shape[2]
    need_dx = step.needs_input_grad(op)
    if not depthwise:
        g2 = gz.reshape(-1, w.shape[0])
        step.grads[op.inputs[1]] = (g2.T @ cols.reshape(-1, kh * kw * w.shape[3])).reshape(w.shape)
        if need_dx:
            dcols = (g2 @ w.reshape(w.shape[0], -1)).reshape(cols.shape)
    else:
        c = cols.shape[-1]
        m = w.shape[3] // c
        colr = np.repeat(cols, m, axis=-1) if m > 1 else cols
        step.grads[op.inputs[1]] = np.einsum("nhwc,nhwijc->ijc", gz, colr, optimize=True)[None]
        if need_dx:
            dcr = np.einsum("nhwc,ijc->nhwijc", gz, w[0], optimize=True)
            dcols = dcr.reshape(dcr.shape[:5] + (c, m)).sum(axis=-1)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        step.grads[op.inputs[2]] = gz.sum(axis=(0, 1, 2))
    if need_dx:
        step.add_grad(op.inputs[0], windows.unpatch(dcols, geom, s, d))


def _keras_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras (kh, kw, cin, cout) -> TFLite OHWI (cout, kh, kw, cin)."""
    return np.transpose(kernel, (3, 0, 1, 2))


def _scratch_bytes(g: Any, op: OpInfo) -> int:
    """The optimised kernels' im2col / expanded-input scratch (``kernel_scratch_bytes``)."""
    return kernel_scratch_bytes(int(np.prod(g.tensors[op.inputs[1]].shape[1:])), 2)


SPEC = OpSpec(
    name="CONV_2D", code=3, arity=1,
    options=("stride", "dilation", "padding", "activation"),
    encode_blob=encode_blob, encode_program=encode_program, read_program=read_program, macs=macs,
    run_int8=run_int8, float_forward=float_forward, float_backward=float_backward,
    tflm_op_data=(76, 8), weights=WeightLayout(weight_input=1, bias_input=2, channel_axis=0),
    scratch_bytes=_scratch_bytes,
    keras_layer="Conv2D", keras_kernel=_keras_kernel,
)
