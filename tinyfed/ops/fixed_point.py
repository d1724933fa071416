"""TFLite's int8 fixed-point arithmetic, shared by the op modules' encoders and numpy kernels.

Host side (what TFLM's ``Prepare`` computes in double precision): :func:`quantize_multiplier`
and :func:`activation_range`. Twin side (what the int8 kernels compute): gemmlowp's
``SaturatingRoundingDoublingHighMul`` and ``RoundingDivideByPOT``, TFLM's
``MultiplyByQuantizedMultiplier`` and softmax's fixed-point exp and reciprocal, on int64 arrays
holding int32 values, so the numpy twin stays bit-exact with TFLM and the C engine.
"""

from __future__ import annotations

import math

import numpy as np

from tinyfed.errors import ModelError

__all__ = [
    "I32_MAX",
    "I32_MIN",
    "BIAS_SCALE_TOLERANCE",
    "activation_range",
    "bias_scale_mismatch",
    "clz32",
    "conv_multiplier",
    "dequantize",
    "downscale_multiplier16",
    "exp_on_negative_values",
    "frexp_multiplier",
    "input_radius",
    "logistic_q4",
    "multiply_by_quantized_multiplier",
    "one_minus_x_over_one_plus_x",
    "one_over_one_plus_x",
    "quantize",
    "quantize_multiplier",
    "rdbp",
    "rdbp16",
    "requantize",
    "saturating_left_shift16",
    "sdhm16",
    "srdhm",
    "srdhm16",
    "tanh_q4",
    "wrap16",
    "wrap32",
]

I32_MIN = -(1 << 31)
I32_MAX = (1 << 31) - 1


# --------------------------------------------------------------------------------------
# Host: TFLite / TFLM quantization arithmetic (what Prepare computes)
# --------------------------------------------------------------------------------------


def _round_away(x: float) -> int:
    """``std::round``: halves away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier`` (double): ``real ~= m * 2**(shift - 31)``."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = _round_away(q * (1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    if shift > 30:
        shift, q_fixed = 30, (1 << 31) - 1
    return int(q_fixed), int(shift)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype | type = np.int8) -> np.ndarray:
    """TFLite's QUANTIZE of float data: ``round_half_away(f32(x) / f32(scale)) + zp``, clamped.

    The one rule for every float sample the host hands to an int8 model (a float-interface
    model's QUANTIZE edge, local training data, evaluation data). TFLM's reference kernel
    divides in float32 and rounds with ``std::round`` (halves away from zero, unlike
    ``np.round``); measured equal on 320,000 values at and beside every half step.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        v = (np.asarray(x, dtype=np.float32) / np.float32(scale)).astype(np.float64)
        r = np.trunc(v + np.copysign(0.5, v)) + int(zero_point)
    info = np.iinfo(dtype)
    return np.clip(np.nan_to_num(r, nan=float(info.min)), info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite's DEQUANTIZE: ``(q - zp) * scale`` as float32 (TFLM's double product rounds the same)."""
    return ((np.asarray(q, dtype=np.int32) - int(zero_point)) * np.float32(scale)).astype(np.float32)


def conv_multiplier(input_scale: float, filter_scale: float, output_scale: float) -> tuple[int, int]:
    """The requantization of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED, per tensor and per channel.

    TFLM widens each float32 scale to double before it multiplies (``input * filter / output``);
    a float32 product rounds differently (1,462,485,078 instead of 1,462,485,049 in one
    layer) and moves an output by one LSB on some inputs. Python floats are doubles and the
    scales are float32 values, so this is TFLM's arithmetic exactly.
    """
    return quantize_multiplier(float(input_scale) * float(filter_scale) / float(output_scale))


#: TFLM's ``GetQuantizedConvolutionMultipler`` refuses ``|input*filter - bias| / output`` above this
BIAS_SCALE_TOLERANCE = 0.02


def bias_scale_mismatch(input_scale: float, filter_scale: float, bias_scale: float, output_scale: float) -> float:
    """``|input * filter - bias| / output`` in double, the quantity TFLM bounds for per-tensor weights."""
    return abs(float(input_scale) * float(filter_scale) - float(bias_scale)) / float(output_scale)


def activation_range(act: str | None, scale: float, zp: int) -> tuple[int, int]:
    """``CalculateActivationRangeQuantized`` for int8 outputs (float32 division, std::round)."""
    qmin, qmax = -128, 127

    def q(f: float) -> int:
        return zp + _round_away(float(np.float32(f) / np.float32(scale)))

    if act in ("NONE", None):
        return qmin, qmax
    if act == "RELU":
        return max(qmin, q(0.0)), qmax
    if act == "RELU6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if act == "RELU_N1_TO_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise ModelError(f"fused activation {act} is not supported by the firmware engine",
                     fix="use NONE, RELU, RELU6 or RELU_N1_TO_1")


# --------------------------------------------------------------------------------------
# Twin: fixed-point primitives (int64 arrays holding int32 values)
# --------------------------------------------------------------------------------------


def wrap32(x: np.ndarray) -> np.ndarray:
    """Wrap to int32 like the C engine's accumulators."""
    x = np.asarray(x, dtype=np.int64)
    if x.size == 0 or (x.min() >= I32_MIN and x.max() <= I32_MAX):
        return x
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def srdhm(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
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
    # the one product that saturates is I32_MIN * I32_MIN: look at the smaller operand first (a
    # per-channel multiplier is never I32_MIN), so the activations are scanned only when it is there
    if (a if a.size <= b.size else b).min(initial=0) == I32_MIN:
        overflow = (a == I32_MIN) & (b == I32_MIN)
        if overflow.any():
            q = np.where(overflow, I32_MAX, q)
    return q


def rdbp(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """RoundingDivideByPOT (round half away from zero).

    gemmlowp's ``(x >> e) + (remainder > threshold)`` is ``(x + 2**(e-1) - [x < 0]) >> e`` for
    ``e > 0`` (and ``x`` for ``e = 0``): one temporary array instead of six, computed in place,
    since this runs on every output of every int8 layer of the numpy twin.
    """
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    if e.shape != x.shape and np.broadcast_shapes(x.shape, e.shape) != x.shape:
        x = np.broadcast_to(x, np.broadcast_shapes(x.shape, e.shape))
    t = x >> 63  # -1 for a negative x: its halves round down, away from zero
    if (e == 0).any():
        t &= np.where(e > 0, np.int64(-1), np.int64(0))  # no rounding where nothing is divided
    t += x
    t += (np.int64(1) << e) >> 1
    t >>= e
    return t


def _scale_wrapped(x: np.ndarray, m: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """:func:`multiply_by_quantized_multiplier` of an ``x`` already wrapped to int32."""
    shift = np.asarray(shift, dtype=np.int64)
    if (shift > 0).any():  # a left shift only for multipliers above 1 (rare): skip the pass otherwise
        x = wrap32(x << np.maximum(shift, 0))
    return rdbp(srdhm(x, m), np.maximum(-shift, 0))


def multiply_by_quantized_multiplier(x: np.ndarray, m: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """TFLM's ``MultiplyByQuantizedMultiplier``: ``x * m * 2**(shift - 31)``, rounded as TFLM does."""
    return _scale_wrapped(wrap32(np.asarray(x, dtype=np.int64)), m, shift)


def requantize(acc: np.ndarray, m: np.ndarray, s: np.ndarray, out_off: int, lo: int, hi: int) -> np.ndarray:
    """int32 accumulators to int8 outputs: rescale, add the output zero point, clamp."""
    y = _scale_wrapped(wrap32(acc), m, s)
    y += out_off
    np.clip(y, lo, hi, out=y)
    return y.astype(np.int8)


def _sat_shl(x: np.ndarray, e: int) -> np.ndarray:
    """SaturatingRoundingMultiplyByPOT with a positive exponent."""
    thr = (1 << (31 - e)) - 1
    r = wrap32(x << e)
    r = np.where(x > thr, I32_MAX, r)
    return np.where(x < -thr, I32_MIN, r)


def _exp_on_interval(a: np.ndarray) -> np.ndarray:
    """gemmlowp exp_on_interval_between_negative_one_quarter_and_0_excl (Q0.31)."""
    constant_term = 1895147668
    one_third = 715827883
    x = a + (1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rdbp(x4, 2)
    inner = rdbp(srdhm(x4_over_4 + x3, one_third) + x2, 1)
    return constant_term + srdhm(constant_term, x + inner)


def exp_on_negative_values(a: np.ndarray, integer_bits: int = 5) -> np.ndarray:
    """gemmlowp exp_on_negative_values for a Q(integer_bits).(31 - integer_bits) input, Q0.31 output
    (softmax uses 5 integer bits, logistic 4)."""
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a = np.asarray(a, dtype=np.int64)
    a_mod = (a & (quarter - 1)) - quarter
    result = _exp_on_interval(_sat_shl(a_mod, integer_bits))
    remainder = a_mod - a
    for exponent, mult in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                           (2, 39332535), (3, 720401), (4, 242)):
        if exponent >= integer_bits:
            break
        bit = (remainder & (1 << (frac + exponent))) != 0
        result = np.where(bit, srdhm(result, mult), result)
    return np.where(a == 0, I32_MAX, result)


def _newton_reciprocal(half_den: np.ndarray) -> np.ndarray:
    """gemmlowp's Newton-Raphson estimate of 1 / (2 * half_den) in Q2.29 (three iterations)."""
    x = 1515870810 + srdhm(half_den, -1010580540)
    one_q2 = 1 << 29
    for _ in range(3):
        hdx = srdhm(half_den, x)
        one_minus = one_q2 - hdx
        x = x + _sat_shl(srdhm(x, one_minus), 2)
    return x


def _rounding_half_sum_with_one(a: np.ndarray) -> np.ndarray:
    """gemmlowp RoundingHalfSum(a, One) for Q0.31: (a + INT32_MAX + sign) / 2, truncating."""
    s = np.asarray(a, dtype=np.int64) + I32_MAX
    return np.where(s >= 0, (s + 1) // 2, -((-(s - 1)) // 2))


def one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1 (Q0.31 in and out)."""
    return _sat_shl(_newton_reciprocal(_rounding_half_sum_with_one(a)), 1)


def one_minus_x_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """gemmlowp one_minus_x_over_one_plus_x_for_x_in_0_1 (Q0.31 in and out)."""
    return _sat_shl(_newton_reciprocal(_rounding_half_sum_with_one(a)) - (1 << 29), 2)


def logistic_q4(a: np.ndarray) -> np.ndarray:
    """gemmlowp logistic of a Q4.27 input (raw int32 values), Q0.31 output."""
    a = np.asarray(a, dtype=np.int64)
    positive = a > 0
    magnitude = np.where(positive, a, -a)
    result_if_positive = one_over_one_plus_x(exp_on_negative_values(-magnitude, 4))
    result = np.where(positive, result_if_positive, I32_MAX - result_if_positive)
    return np.where(a == 0, 1 << 30, result)


def tanh_q4(a: np.ndarray) -> np.ndarray:
    """gemmlowp tanh of a Q4.27 input (raw int32 values), Q0.31 output: exp of twice the negated
    magnitude (the same raw bits read as Q5.26), then (1 - e) / (1 + e)."""
    a = np.asarray(a, dtype=np.int64)
    negative = a < 0
    neg_magnitude = np.where(negative, a, -a)
    t = one_minus_x_over_one_plus_x(exp_on_negative_values(neg_magnitude, 5))
    return np.where(a == 0, 0, np.where(negative, -t, t))


def input_radius(integer_bits: int, left_shift: int, total_signed_bits: int = 31) -> int:
    """TFLite's ``CalculateInputRadius``: the largest input magnitude the fixed-point
    logistic / tanh rescaling keeps finite (beyond it the output saturates)."""
    max_rescaled = (1.0 * ((1 << integer_bits) - 1) * float(1 << (total_signed_bits - integer_bits))
                    / math.ldexp(1.0, left_shift))
    return int(math.floor(max_rescaled))


def frexp_multiplier(real: float) -> tuple[int, int]:
    """The logistic / tanh input multiplier as TFLM's Prepare derives it: ``std::frexp`` and
    the mantissa rounded to Q0.31, without QuantizeMultiplier's clamping of the shift."""
    q, shift = math.frexp(real)
    return _round_away(q * (1 << 31)), shift


# --------------------------------------------------------------------------------------
# Twin: int16 fixed point (HARD_SWISH), on int64 arrays holding int16 values
# --------------------------------------------------------------------------------------


def wrap16(x: np.ndarray | int) -> np.ndarray:
    """Wrap to int16 like a C ``int16_t`` assignment."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + (1 << 15)) & 0xFFFF) - (1 << 15)


def srdhm16(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul for int16."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    q = wrap16(np.trunc((ab + nudge) / (1 << 15)).astype(np.int64))
    return np.where((a == -(1 << 15)) & (b == -(1 << 15)), (1 << 15) - 1, q)


def sdhm16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite's SaturatingDoublingHighMul for int16 (truncating, not rounding)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    q = wrap16(np.trunc((a * b) / (1 << 15)).astype(np.int64))
    return np.where((a == -(1 << 15)) & (b == -(1 << 15)), (1 << 15) - 1, q)


def rdbp16(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT on int16 values: the mask is an int16, so an exponent of 16
    or more gives a mask of -1 (as the C++ template computes it)."""
    x = np.asarray(x, dtype=np.int64)
    mask = -1 if exponent >= 16 else (1 << exponent) - 1
    rem = wrap16(x & mask)
    thr = (mask >> 1) + (x < 0)
    return wrap16((x >> exponent) + (rem > thr))


def saturating_left_shift16(x: np.ndarray, amount: int) -> np.ndarray:
    """TFLite's SaturatingLeftShift for int16: ``x * 2**amount`` clamped to int16."""
    return np.clip(np.asarray(x, dtype=np.int64) << amount, -(1 << 15), (1 << 15) - 1)


def downscale_multiplier16(m: int) -> int:
    """TFLite's DownScaleInt32ToInt16Multiplier: a Q0.31 multiplier rounded to Q0.15."""
    if m >= I32_MAX - (1 << 15):
        return (1 << 15) - 1
    return (m + (1 << 15)) >> 16


def clz32(x: np.ndarray) -> np.ndarray:
    """Count leading zeros of uint32 values (32 for 0)."""
    u = np.asarray(x, dtype=np.int64) & 0xFFFFFFFF
    _, e = np.frexp(u.astype(np.float64))  # u = m * 2**e, m in [0.5, 1): e = bit length (exact)
    return np.where(u == 0, 32, 32 - e.astype(np.int64))
