"""numpy twin of the firmware's int8 engine: runs a TFMB blob on a batch, bit-exact.

Same integer arithmetic as ``firmware/engine/`` and TFLM's reference int8 kernels
(``MultiplyByQuantizedMultiplier`` = SaturatingRoundingDoublingHighMul + RoundingDivideByPOT,
gemmlowp fixed point for softmax), evaluated on int64 arrays and vectorized over the batch.
Convolutions use float64 matrix products: every partial sum is an integer below 2**53, so
they are exact. Accumulators are wrapped to int32 like the C engine's.

This backs the in-process simulated board (``sim://``).
"""

from __future__ import annotations

import numpy as np

from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import NONE, OP_CODES, BlobInfo, parse_blob

__all__ = ["multiply_by_quantized_multiplier", "run_blob", "run_info"]

_I32_MIN = -(1 << 31)
_I32_MAX = (1 << 31) - 1
_CHUNK = 256  # samples per convolution chunk (bounds the im2col memory)


# --------------------------------------------------------------------------------------
# Fixed-point primitives (int64 arrays holding int32 values)
# --------------------------------------------------------------------------------------


def _wrap32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    if x.size == 0 or (x.min() >= _I32_MIN and x.max() <= _I32_MAX):
        return x
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _srdhm(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul for int32.

    ``(a*b + nudge) / 2**31`` truncated, nudge = 2**30 or 1 - 2**30 by the sign of a*b;
    for a negative product truncation equals flooring after adding 2**31 - 1, so both cases
    are ``floor((a*b + 2**30) / 2**31)``.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    q = a * b
    q += 1 << 30
    q >>= 31
    overflow = (a == _I32_MIN) & (b == _I32_MIN)
    if overflow.any():
        q = np.where(overflow, _I32_MAX, q)
    return q


def _rdbp(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """RoundingDivideByPOT (round half away from zero)."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > thr)


def multiply_by_quantized_multiplier(x: np.ndarray, m: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return _rdbp(_srdhm(_wrap32(np.asarray(x, dtype=np.int64) << left), m), right)


def _sat_shl(x: np.ndarray, e: int) -> np.ndarray:
    """SaturatingRoundingMultiplyByPOT with a positive exponent."""
    thr = (1 << (31 - e)) - 1
    r = _wrap32(x << e)
    r = np.where(x > thr, _I32_MAX, r)
    return np.where(x < -thr, _I32_MIN, r)


def _exp_on_interval(a: np.ndarray) -> np.ndarray:
    """gemmlowp exp_on_interval_between_negative_one_quarter_and_0_excl (Q0.31)."""
    constant_term = 1895147668
    one_third = 715827883
    x = a + (1 << 28)
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    x4_over_4 = _rdbp(x4, 2)
    inner = _rdbp(_srdhm(x4_over_4 + x3, one_third) + x2, 1)
    return constant_term + _srdhm(constant_term, x + inner)


def _exp_on_negative_values(a: np.ndarray) -> np.ndarray:
    """gemmlowp exp_on_negative_values for a Q5.26 input, Q0.31 output."""
    frac = 26
    quarter = 1 << (frac - 2)
    a_mod = (a & (quarter - 1)) - quarter
    result = _exp_on_interval(_sat_shl(a_mod, 5))
    remainder = a_mod - a
    for exponent, mult in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                           (2, 39332535), (3, 720401), (4, 242)):
        bit = (remainder & (1 << (frac + exponent))) != 0
        result = np.where(bit, _srdhm(result, mult), result)
    return np.where(a == 0, _I32_MAX, result)


def _one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1 (Q0.31 in and out)."""
    s = a + _I32_MAX
    half_den = np.where(s >= 0, (s + 1) // 2, -((-(s - 1)) // 2))  # (sum + sign) / 2, truncating
    x = 1515870810 + _srdhm(half_den, -1010580540)
    one_q2 = 1 << 29
    for _ in range(3):
        hdx = _srdhm(half_den, x)
        one_minus = one_q2 - hdx
        x = x + _sat_shl(_srdhm(x, one_minus), 2)
    return _sat_shl(x, 1)


def _clz32(x: np.ndarray) -> np.ndarray:
    """Count leading zeros of uint32 values (32 for 0)."""
    u = np.asarray(x, dtype=np.int64) & 0xFFFFFFFF
    _, e = np.frexp(u.astype(np.float64))  # u = m * 2**e, m in [0.5, 1): e = bit length (exact)
    return np.where(u == 0, 32, 32 - e.astype(np.int64))


# --------------------------------------------------------------------------------------
# Kernels (arrays: batch-first; each sample has the blob tensor's shape)
# --------------------------------------------------------------------------------------


def _requant(acc: np.ndarray, m: np.ndarray, s: np.ndarray, out_off: int, lo: int, hi: int) -> np.ndarray:
    y = multiply_by_quantized_multiplier(_wrap32(acc), m, s) + out_off
    return np.clip(y, lo, hi).astype(np.int8)


def _windows(xp: np.ndarray, fy: int, fx: int, dil: tuple[int, int], stride: tuple[int, int], oh: int, ow: int):
    y0 = fy * dil[0]
    x0 = fx * dil[1]
    return xp[:, y0 : y0 + (oh - 1) * stride[0] + 1 : stride[0], x0 : x0 + (ow - 1) * stride[1] + 1 : stride[1], :]


def _pad_input(x: np.ndarray, pad: tuple[int, int], need: tuple[int, int], fill) -> np.ndarray:
    n, h, w, c = x.shape
    ph = max(h + pad[0], need[0])
    pw = max(w + pad[1], need[1])
    xp = np.full((n, ph, pw, c), fill, dtype=x.dtype)
    xp[:, pad[0] : pad[0] + h, pad[1] : pad[1] + w, :] = x
    return xp


def _conv(info: BlobInfo, op, x: np.ndarray, out_shape, depthwise: bool) -> np.ndarray:
    p = op.params
    in_off, out_off, lo, hi, sh, sw, dh, dw, pad_h, pad_w, m_off, s_off, mult = p[:13]
    w = info.constant(op.inputs[1]).astype(np.float64)
    n_out = out_shape[3]
    bias = info.constant(op.inputs[2]).astype(np.int64) if op.inputs[2] != NONE else np.zeros(n_out, np.int64)
    ms = info.int32_array(m_off, n_out).astype(np.int64)
    ss = info.int32_array(s_off, n_out).astype(np.int64)
    b = x.shape[0]
    xs = x.reshape(-1, *x.shape[-3:]).astype(np.float64) + in_off  # (B*N, H, W, C)
    oh, ow = out_shape[1], out_shape[2]
    fh, fw = (w.shape[1], w.shape[2])
    need = ((oh - 1) * sh + (fh - 1) * dh + 1, (ow - 1) * sw + (fw - 1) * dw + 1)
    outs = []
    for start in range(0, xs.shape[0], _CHUNK):
        xp = _pad_input(xs[start : start + _CHUNK], (pad_h, pad_w), need, 0.0)
        # TFLM: in = out*stride - pad + dil*f; padded index = in + pad.
        if depthwise:
            src = np.arange(n_out) // mult
            acc = np.zeros((xp.shape[0], oh, ow, n_out), dtype=np.float64)
            for fy in range(fh):
                for fx in range(fw):
                    win = _windows(xp, fy, fx, (dh, dw), (sh, sw), oh, ow)[..., src]
                    acc += win * w[0, fy, fx, :]
        else:
            cols = [_windows(xp, fy, fx, (dh, dw), (sh, sw), oh, ow) for fy in range(fh) for fx in range(fw)]
            patches = np.stack(cols, axis=3).reshape(xp.shape[0] * oh * ow, -1)
            acc = (patches @ w.reshape(n_out, -1).T).reshape(xp.shape[0], oh, ow, n_out)
        outs.append(acc)
    acc = np.concatenate(outs, axis=0).astype(np.int64) + bias
    return _requant(acc, ms, ss, out_off, lo, hi).reshape(b, *out_shape)


def _fc(info: BlobInfo, op, x: np.ndarray, out_shape) -> np.ndarray:
    in_off, out_off, lo, hi, f_off = op.params[:5]
    m_off, s_off = op.params[10:12]
    w = info.constant(op.inputs[1]).astype(np.float64) + f_off
    n_out, depth = w.shape
    bias = info.constant(op.inputs[2]).astype(np.int64) if op.inputs[2] != NONE else np.zeros(n_out, np.int64)
    ms = info.int32_array(m_off, n_out).astype(np.int64)
    ss = info.int32_array(s_off, n_out).astype(np.int64)
    b = x.shape[0]
    xs = x.reshape(-1, depth).astype(np.float64) + in_off
    acc = (xs @ w.T).astype(np.int64) + bias
    return _requant(acc, ms, ss, out_off, lo, hi).reshape(b, *out_shape)


def _pool(op, x: np.ndarray, out_shape, is_max: bool) -> np.ndarray:
    lo, hi, sh, sw, fh, fw, pad_h, pad_w = op.params[2:10]
    b = x.shape[0]
    xs = x.reshape(-1, *x.shape[-3:]).astype(np.int64)
    oh, ow = out_shape[1], out_shape[2]
    need = ((oh - 1) * sh + fh, (ow - 1) * sw + fw)
    if is_max:
        xp = _pad_input(xs, (pad_h, pad_w), need, np.int64(-1 << 20))
        acc = np.full((xs.shape[0], oh, ow, xs.shape[3]), -128, dtype=np.int64)
        for fy in range(fh):
            for fx in range(fw):
                acc = np.maximum(acc, _windows(xp, fy, fx, (1, 1), (sh, sw), oh, ow))
        y = acc
    else:
        xp = _pad_input(xs, (pad_h, pad_w), need, np.int64(0))
        mask = _pad_input(np.ones((1, *xs.shape[1:3], 1), np.int64), (pad_h, pad_w), need, np.int64(0))
        acc = np.zeros((xs.shape[0], oh, ow, xs.shape[3]), dtype=np.int64)
        cnt = np.zeros((1, oh, ow, 1), dtype=np.int64)
        for fy in range(fh):
            for fx in range(fw):
                acc += _windows(xp, fy, fx, (1, 1), (sh, sw), oh, ow)
                cnt += _windows(mask, fy, fx, (1, 1), (sh, sw), oh, ow)
        cnt = np.maximum(cnt, 1)
        half = cnt // 2
        pos = (acc + half) // cnt
        neg_num = acc - half  # <= 0
        neg = -((-neg_num) // cnt)
        y = np.where(acc > 0, pos, neg)
    return np.clip(y, lo, hi).astype(np.int8).reshape(b, *out_shape)


def _softmax(op, x: np.ndarray) -> np.ndarray:
    mult, left, diff_min = op.params[:3]
    shape = x.shape
    depth = shape[-1]
    v = x.reshape(-1, depth).astype(np.int64)
    diff = v - v.max(axis=1, keepdims=True)
    ok = diff >= diff_min
    rescaled = _srdhm(_wrap32(diff << left), mult)
    e = _exp_on_negative_values(rescaled)
    e_acc = np.where(ok, _rdbp(e, 12), 0)
    total = _wrap32(e_acc.sum(axis=1, keepdims=True))
    headroom = _clz32(total)
    num_bits_over_unit = 12 - headroom
    shifted_minus_one = _wrap32(((total & 0xFFFFFFFF) << headroom) - (1 << 31))
    scale = _one_over_one_plus_x(shifted_minus_one)
    unsat = _rdbp(_srdhm(scale, e), num_bits_over_unit + 31 - 8)
    out = np.clip(unsat - 128, -128, 127)
    out = np.where(ok, out, -128)
    return out.astype(np.int8).reshape(shape)


def _add(op, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    off1, off2, lo, hi, out_off, left, m1, s1, m2, s2, mo, so = op.params[:12]
    va = _wrap32((a.astype(np.int64) + off1) << left)
    vb = _wrap32((b.astype(np.int64) + off2) << left)
    ra = multiply_by_quantized_multiplier(va, m1, s1)
    rb = multiply_by_quantized_multiplier(vb, m2, s2)
    raw = multiply_by_quantized_multiplier(_wrap32(ra + rb), mo, so) + out_off
    return np.clip(raw, lo, hi).astype(np.int8)


# --------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------


def run_info(info: BlobInfo, x_int8: np.ndarray) -> np.ndarray:
    """Run a parsed blob on a batch (see :func:`run_blob`)."""
    x = np.asarray(x_int8)
    if x.dtype != np.int8:
        raise ModelError(f"input is {x.dtype}, the blob takes int8", fix="quantize the input first")
    in_shape = info.input_shape
    per = int(np.prod(in_shape)) if in_shape else 1
    sample = in_shape[1:] if in_shape and in_shape[0] == 1 else in_shape
    if x.ndim == len(sample) and tuple(x.shape) == tuple(sample) and len(sample) < len(in_shape):
        x = x[None]
    if x.size % per or tuple(x.shape[1:]) != tuple(sample):
        raise ModelError(f"input has shape {x.shape}, expected (batch, {', '.join(map(str, sample))})",
                         fix="pass a batch-first int8 array whose samples have the blob's input shape")
    batch = x.shape[0]
    values: dict[int, np.ndarray] = {info.input_tensor: x.reshape(batch, *in_shape)}
    for op in info.ops:
        out_t = info.tensors[op.output]
        shape = out_t.shape
        src = values[op.inputs[0]]
        if op.code == OP_CODES["CONV_2D"]:
            y = _conv(info, op, src, shape, depthwise=False)
        elif op.code == OP_CODES["DEPTHWISE_CONV_2D"]:
            y = _conv(info, op, src, shape, depthwise=True)
        elif op.code == OP_CODES["FULLY_CONNECTED"]:
            y = _fc(info, op, src, shape)
        elif op.code == OP_CODES["MAX_POOL_2D"]:
            y = _pool(op, src, shape, is_max=True)
        elif op.code == OP_CODES["AVERAGE_POOL_2D"]:
            y = _pool(op, src, shape, is_max=False)
        elif op.code == OP_CODES["RESHAPE"]:
            y = src.reshape(batch, *shape)
        elif op.code == OP_CODES["SOFTMAX"]:
            y = _softmax(op, src)
        elif op.code == OP_CODES["ADD"]:
            y = _add(op, src, values[op.inputs[1]]).reshape(batch, *shape)
        else:
            raise ModelError(f"op {op.index} has code {op.code}, which the engine does not run")
        values[op.output] = y
    out = values[info.output_tensor]
    out_shape = info.output_shape
    if out_shape and out_shape[0] == 1:
        return out.reshape(batch, *out_shape[1:]) if len(out_shape) > 1 else out.reshape(batch)
    return out


def run_blob(blob_bytes: bytes, x_int8_batch: np.ndarray) -> np.ndarray:
    """Run a TFMB blob on a batch of int8 inputs; returns the int8 outputs, batch first.

    Shapes follow :meth:`tinyfed.models.tflm.TflmModel.run`: a blob whose input has shape
    ``(1, H, W, C)`` takes ``(batch, H, W, C)`` and returns ``(batch, *output_shape[1:])``.
    """
    return run_info(parse_blob(blob_bytes), x_int8_batch)
