/*
 * int8 SOFTMAX: TFLM's reference Softmax<int8, int8>, gemmlowp fixed-point exp and reciprocal.
 *
 * Params: p0 input multiplier, p1 input left shift, p2 diff_min (as TFLM's Prepare computes them).
 */
#include "../tfmb_internal.h"

static const char *softmax_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                    const tfmb_tensor_t *out)
{
    (void)m;
    if (t[0].rank < 1 || t[0].rank != out->rank) return "softmax shape bad at op";
    for (int i = 0; i < 4; ++i)
        if (t[0].d[i] != out->d[i]) return "softmax shape bad at op";
    if (op->p[0] < 0 || !tfmb_in_range(op->p[1], 0, 31) || op->p[2] > 0)
        return "softmax parameters bad at op";
    for (int k = 3; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

/* gemmlowp SaturatingRoundingMultiplyByPOT with a positive exponent. */
static int32_t sat_shl(int32_t x, int e)
{
    const int32_t threshold = (int32_t)((1u << (31 - e)) - 1u);
    if (x > threshold) return INT32_MAX;
    if (x < -threshold) return INT32_MIN;
    return tfmb_wshl(x, e);
}

/* exp(a) for a in [-1/4, 0), Q0.31 in and out. */
static int32_t exp_on_interval(int32_t a)
{
    const int32_t constant_term = 1895147668;   /* exp(-1/8) */
    const int32_t constant_1_over_3 = 715827883;
    const int32_t x = tfmb_wadd(a, 1 << 28); /* a + 1/8 */
    const int32_t x2 = tfmb_srdhm(x, x);
    const int32_t x3 = tfmb_srdhm(x2, x);
    const int32_t x4 = tfmb_srdhm(x2, x2);
    const int32_t x4_over_4 = tfmb_rdbp(x4, 2);
    const int32_t poly =
        tfmb_rdbp(tfmb_wadd(tfmb_srdhm(tfmb_wadd(x4_over_4, x3), constant_1_over_3), x2), 1);
    return tfmb_wadd(constant_term, tfmb_srdhm(constant_term, tfmb_wadd(x, poly)));
}

/* gemmlowp exp_on_negative_values: Q5.26 input (<= 0), Q0.31 output. */
static int32_t exp_on_negative_values(int32_t a)
{
    static const int32_t multipliers[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int32_t quarter = 1 << 24;
    const int32_t a_mod = tfmb_wsub(a & (quarter - 1), quarter);
    int32_t result = exp_on_interval(sat_shl(a_mod, 5));
    const int32_t remainder = tfmb_wsub(a_mod, a);
    for (int i = 0; i < 7; ++i) /* exponents -2 .. +4: bit 24 + i of the remainder */
        if (remainder & (int32_t)(1u << (24 + i))) result = tfmb_srdhm(result, multipliers[i]);
    return a == 0 ? INT32_MAX : result;
}

/* gemmlowp one_over_one_plus_x_for_x_in_0_1: Q0.31 in and out. */
static int32_t one_over_one_plus_x(int32_t a)
{
    const int64_t sum = (int64_t)a + (int64_t)INT32_MAX;
    const int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = tfmb_wadd(1515870810, tfmb_srdhm(half_den, -1010580540)); /* 48/17 - 32/17 d, Q2.29 */
    for (int i = 0; i < 3; ++i) {
        const int32_t hdx = tfmb_srdhm(half_den, x);
        const int32_t one_minus = tfmb_wsub(1 << 29, hdx);
        x = tfmb_wadd(x, sat_shl(tfmb_srdhm(x, one_minus), 2));
    }
    return sat_shl(x, 1);
}

static int clz32(uint32_t x)
{
    int n = 0;
    if (x == 0) return 32;
    while (!(x & 0x80000000u)) {
        x <<= 1;
        ++n;
    }
    return n;
}

static void softmax_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0];
    const int8_t *x = (const int8_t *)(c->arena + in->offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t mult = op->p[0], left = op->p[1], diff_min = op->p[2];
    const int32_t depth = in->d[in->rank - 1];
    const int32_t outer = (int32_t)(in->elems / (uint32_t)depth);

    for (int32_t r = 0; r < outer; ++r) {
        const int8_t *xr = x + r * depth;
        int8_t *yr = y + r * depth;
        int32_t max_v = -128;
        for (int32_t i = 0; i < depth; ++i)
            if (xr[i] > max_v) max_v = xr[i];
        uint32_t sum = 0; /* Q12.19 */
        for (int32_t i = 0; i < depth; ++i) {
            const int32_t diff = (int32_t)xr[i] - max_v;
            if (diff >= diff_min) {
                const int32_t scaled = tfmb_srdhm(tfmb_wshl(diff, (int)left), mult);
                sum += (uint32_t)tfmb_rdbp(exp_on_negative_values(scaled), 12);
            }
        }
        const int headroom = clz32(sum);
        const int num_bits_over_unit = 12 - headroom;
        const uint32_t shifted = headroom >= 32 ? 0u : (sum << headroom);
        const int32_t shifted_scale = one_over_one_plus_x((int32_t)(shifted - 0x80000000u));
        int exponent = num_bits_over_unit + 31 - 8;
        if (exponent > 31) exponent = 31; /* only reachable when the int32 sum wrapped */
        for (int32_t i = 0; i < depth; ++i) {
            const int32_t diff = (int32_t)xr[i] - max_v;
            if (diff >= diff_min) {
                const int32_t scaled = tfmb_srdhm(tfmb_wshl(diff, (int)left), mult);
                const int32_t e = exp_on_negative_values(scaled);
                const int32_t unsat = tfmb_rdbp(tfmb_srdhm(shifted_scale, e), exponent);
                yr[i] = (int8_t)tfmb_clamp(tfmb_wsub(unsat, 128), -128, 127);
            } else {
                yr[i] = -128;
            }
        }
    }
}

const tfmb_op_entry_t tfmb_op_softmax = {
    .code = TFMB_OP_SOFTMAX,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = softmax_validate,
    .eval = softmax_eval,
};
