/*
 * int8 HARD_SWISH: TFLM's reference_ops::HardSwish<int8_t>, in int16 fixed point. The centred
 * input on a 128x finer grid is rescaled once to the (pre-shift) output scale and once to a
 * "reluish" factor: the input on a scale where 3.0 is 32768, saturated to [-1, 1] and mapped to
 * [0, 1]. Their truncating doubling high product, shifted right by the output exponent and
 * offset by the output zero point, is clamped to int8. Every intermediate is an int16_t as in
 * TFLM (sums wrap as an int16_t assignment does).
 *
 * Params: p0 input zero point, p1 output zero point, p2/p3 output multiplier (Q0.15) and
 * exponent (<= 0), p4/p5 reluish multiplier (Q0.15) and exponent.
 */
#include "../tfmb_internal.h"

static int16_t wrap16(int32_t v) { return (int16_t)(uint16_t)((uint32_t)v & 0xFFFFu); }

/* gemmlowp SaturatingRoundingDoublingHighMul for int16. */
static int16_t srdhm16(int16_t a, int16_t b)
{
    if (a == b && a == INT16_MIN) return INT16_MAX;
    const int32_t ab = (int32_t)a * (int32_t)b;
    const int32_t nudge = ab >= 0 ? (1 << 14) : (1 - (1 << 14));
    return wrap16((ab + nudge) / (1 << 15));
}

/* TFLite's SaturatingDoublingHighMul for int16: the doubled high half, truncated. */
static int16_t sdhm16(int16_t a, int16_t b)
{
    if (a == b && a == INT16_MIN) return INT16_MAX;
    return wrap16(((int32_t)a * (int32_t)b) / (1 << 15));
}

/* gemmlowp RoundingDivideByPOT on int16, exponent in [0, 31]: from 16 on the int16 mask is -1. */
static int16_t rdbp16(int16_t x, int exponent)
{
    const int32_t mask = exponent >= 16 ? -1 : (int32_t)((1u << exponent) - 1u);
    const int32_t remainder = (int32_t)x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return wrap16(((int32_t)x >> exponent) + (remainder > threshold ? 1 : 0));
}

/* TFLite's SaturatingLeftShift for int16: x * 2**amount clamped to int16. */
static int16_t sat_shl16(int16_t x, int amount)
{
    const int64_t r = (int64_t)x * ((int64_t)1 << amount);
    return (int16_t)(r > INT16_MAX ? INT16_MAX : (r < INT16_MIN ? INT16_MIN : r));
}

static const char *hard_swish_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                       const tfmb_tensor_t *out)
{
    (void)m;
    if (t[0].elems != out->elems) return "hard swish shapes differ at op";
    if (!tfmb_in_range(op->p[0], -128, 127) || !tfmb_in_range(op->p[1], -128, 127))
        return "zero point out of range at op";
    if (!tfmb_in_range(op->p[2], 0, INT16_MAX) || !tfmb_in_range(op->p[3], -31, 0) ||
        !tfmb_in_range(op->p[4], 0, INT16_MAX) || !tfmb_in_range(op->p[5], -31, 30))
        return "hard swish multiplier bad at op";
    for (int k = 6; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void hard_swish_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                            const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t in_zp = op->p[0], out_zp = op->p[1];
    const int16_t m_out = (int16_t)op->p[2], m_relu = (int16_t)op->p[4];
    const int e_out = (int)op->p[3], e_relu = (int)op->p[5];
    for (uint32_t i = 0; i < out->elems; ++i) {
        const int16_t hires = (int16_t)(((int32_t)x[i] - in_zp) * 128); /* |.| <= 255 * 128 */
        const int16_t preshift = srdhm16(hires, m_out);
        int16_t reluish = hires;
        if (e_relu > 0) reluish = sat_shl16(reluish, e_relu - 1);
        reluish = srdhm16(reluish, m_relu);
        if (e_relu > 0) reluish = sat_shl16(reluish, 1);
        if (e_relu < 0) reluish = rdbp16(reluish, -e_relu);
        reluish = (int16_t)(((int32_t)reluish + (1 << 15)) >> 1); /* [-1, 1] -> [0, 1] */
        const int16_t v = wrap16((int32_t)rdbp16(sdhm16(reluish, preshift), -e_out) + out_zp);
        y[i] = (int8_t)tfmb_clamp(v, -128, 127);
    }
}

static const tfmb_op_entry_t tfmb_op_hard_swish = {
    .code = TFMB_OP_HARD_SWISH,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = hard_swish_validate,
    .eval = hard_swish_eval,
};
TFMB_REGISTER_OP(tfmb_op_hard_swish);
